# -*- test-case-name: tests.test_launcher -*-
"""
Tests for L{twisted_kv.launcher}, the C{kvcluster} command.

The launcher runs here on a L{Clock} with recorded process spawns and
scripted C{/cluster} answers: no process is started and no port opened.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core.config import parse_config
from twisted_kv.launcher import (
    DEFAULT_CONFIG,
    Launcher,
    LineBuffer,
    NodeProcess,
    PYPY_GC_SETTINGS,
    describe_cluster,
    describe_exit,
    leader_of,
    node_command,
    node_environment,
    parse_arguments,
)

_CONFIG = parse_config(
    "[cluster]\nname = demo\nsecret = s\n"
    + "".join(
        f"[node:{node_id}]\nhost = 127.0.0.1\nhttp_port = {7001 + i}\n"
        f"peer_port = {7101 + i}\nftp_port = {7201 + i}\n"
        for i, node_id in enumerate(["n1", "n2", "node3"])
    ),
    "etc/demo.ini",
)

_MAIN = (
    "import os, sys; os.setpgrp(); sys.argv[0] = 'twistd'; "
    "from twisted.scripts.twistd import run; run()"
)


class PureTests(SynchronousTestCase):
    """
    Command lines, output lines and answers, without any process.
    """

    def test_node_command(self) -> None:
        """
        A node runs twistd in the foreground, without a pid file, with the
        given Python and the cluster file as the user named it.
        """
        self.assertEqual(
            node_command("etc/demo.ini", "n2", python="/venv/bin/python"),
            [
                "/venv/bin/python", "-c", _MAIN,
                "-n", "--pidfile=", "kvnode", "--config", "etc/demo.ini", "--node", "n2",
            ],
        )

    def test_environment(self) -> None:
        """
        Nodes inherit the environment, with unbuffered Python output and
        PyPy's collector tuned.
        """
        environ = {"PATH": "/bin", "PYTHONUNBUFFERED": "0"}
        self.assertEqual(
            node_environment(environ),
            {"PATH": "/bin", "PYTHONUNBUFFERED": "1", **PYPY_GC_SETTINGS},
        )
        self.assertEqual(environ, {"PATH": "/bin", "PYTHONUNBUFFERED": "0"})

    def test_environment_collector_tuned_by_user(self) -> None:
        """
        PyPy collector settings given in the environment are kept.
        """
        environ = {"PYPY_GC_NURSERY": "64MB", "PYPY_GC_INCREMENT_STEP": "4MB"}
        self.assertEqual(
            {name: node_environment(environ)[name] for name in environ}, environ
        )

    def test_arguments(self) -> None:
        """
        The cluster file defaults to C{etc/cluster-local.ini}.
        """
        self.assertEqual(
            vars(parse_arguments([])),
            {"config": DEFAULT_CONFIG, "stop_timeout": 10.0, "leader_timeout": 60.0},
        )
        self.assertEqual(DEFAULT_CONFIG, "etc/cluster-local.ini")
        self.assertEqual(
            vars(parse_arguments(["x.ini", "--stop-timeout", "3"])),
            {"config": "x.ini", "stop_timeout": 3.0, "leader_timeout": 60.0},
        )

    def test_leader_of(self) -> None:
        """
        The leader id and term of a C{/cluster} answer, when there are.
        """
        self.assertEqual(
            [
                leader_of({"self": "n1", "leader": "n2", "term": 3, "nodes": []}),
                leader_of({"leader": {"id": "n3"}, "term": 4}),
                leader_of({"leader": None, "term": 0}),
                leader_of({"leader": "", "term": True}),
                leader_of({}),
                leader_of(["n1"]),
            ],
            [("n2", 3), ("n3", 4), (None, 0), (None, None), (None, None), (None, None)],
        )

    def test_describe(self) -> None:
        """
        The summary names the leader and lists every node's URLs.
        """
        self.assertEqual(
            describe_cluster(_CONFIG, "n2", 3),
            [
                "cluster 'demo' is up; the leader is n2 (term 3)",
                "   node   HTTP API and dashboard  WebSocket               FTP",
                "   n1     http://127.0.0.1:7001/  ws://127.0.0.1:7001/ws  ftp://127.0.0.1:7201/",
                "*  n2     http://127.0.0.1:7002/  ws://127.0.0.1:7002/ws  ftp://127.0.0.1:7202/",
                "   node3  http://127.0.0.1:7003/  ws://127.0.0.1:7003/ws  ftp://127.0.0.1:7203/",
            ],
        )

    def test_describe_no_leader(self) -> None:
        """
        Without a leader the table is shown all the same.
        """
        lines = describe_cluster(_CONFIG, None, None)
        self.assertEqual(
            lines[0], "cluster 'demo': no leader reported yet; the nodes keep trying"
        )
        self.assertEqual(len(lines), 5)
        self.assertFalse(any(line.startswith("*") for line in lines))

    def test_line_buffer(self) -> None:
        """
        Output is cut into prefixed lines, whatever the chunks; CRLF and
        invalid UTF-8 are tolerated and the unfinished tail is kept.
        """
        buffer = LineBuffer("n1 | ")
        self.assertEqual(buffer.feed(b"partition le"), [])
        self.assertEqual(
            buffer.feed(b"ader elected: n2\r\nsecond\n\xff\nta"),
            ["n1 | partition leader elected: n2", "n1 | second", "n1 | \ufffd"],
        )
        self.assertEqual(buffer.flush(), ["n1 | ta"])
        self.assertEqual(buffer.flush(), [])

    def test_line_buffer_long(self) -> None:
        """
        An endless line is shown in pieces instead of held forever.
        """
        buffer = LineBuffer("")
        self.assertEqual(len(buffer.feed(b"x" * 70000)), 1)
        self.assertEqual(buffer.flush(), [])

    def test_describe_exit(self) -> None:
        """
        Exit statuses and signals in words.
        """
        self.assertEqual(
            [
                describe_exit(Failure(ProcessDone(0))),
                describe_exit(Failure(ProcessTerminated(exitCode=1))),
                describe_exit(Failure(ProcessTerminated(signal=9))),
                describe_exit(Failure(ProcessTerminated(signal=200))),
            ],
            ["exited with status 0", "exited with status 1", "ended by SIGKILL", "ended by signal 200"],
        )


class FakeProcessTransport:
    """
    The process transport the fake reactor hands to a protocol.
    """

    def __init__(self, exited: bool = False) -> None:
        self.signals: list[str] = []
        self.stdin_closed = False
        self.exited = exited

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(name)


class FakeProcessReactor(Clock):
    """
    A clock that records process spawns instead of running them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[NodeProcess, str, list[str], dict[str, str]]] = []
        self.transports: list[FakeProcessTransport] = []

    def spawnProcess(
        self, protocol: NodeProcess, executable: str, args: list[str], env: dict[str, str]
    ) -> FakeProcessTransport:
        transport = FakeProcessTransport()
        self.spawned.append((protocol, executable, args, env))
        self.transports.append(transport)
        protocol.makeConnection(transport)
        return transport


class LauncherTests(SynchronousTestCase):
    """
    L{Launcher} on a fake reactor.
    """

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.out: list[str] = []
        self.err: list[str] = []
        self.fetches: list[str] = []
        # What each URL answers next: a value, an exception, or None for
        # an answer that never comes.
        self.answers: dict[str, Any] = {}
        self.launcher = Launcher(
            _CONFIG,
            self.reactor,
            self.fetch,
            self.out.append,
            self.err.append,
            python="/py",
            environ={"HOME": "/root"},
            poll_interval=0.5,
            leader_timeout=30.0,
            stop_timeout=10.0,
        )

    def fetch(self, url: str) -> Deferred[Any]:
        self.fetches.append(url)
        answer = self.answers.get(url, ConnectionRefusedError())
        if isinstance(answer, Exception):
            return fail(answer)
        if answer is None:
            return Deferred()
        return succeed(answer)

    def end(self, index: int, reason: Exception) -> None:
        """
        Process number C{index} ends.
        """
        self.reactor.transports[index].exited = True
        self.reactor.spawned[index][0].processEnded(Failure(reason))

    def test_spawns(self) -> None:
        """
        One twistd per node, in file order, with closed stdin.
        """
        self.launcher.start()
        self.assertEqual(
            [(exe, args, env) for _, exe, args, env in self.reactor.spawned],
            [
                ("/py", node_command("etc/demo.ini", node_id, "/py"),
                 node_environment({"HOME": "/root"}))
                for node_id in ["n1", "n2", "node3"]
            ],
        )
        self.assertEqual([t.stdin_closed for t in self.reactor.transports], [True] * 3)
        self.assertEqual(
            self.out,
            ["kvcluster: starting 3 nodes of etc/demo.ini (n1, n2, node3); Ctrl-C stops them all"],
        )

    def test_prefixed_output(self) -> None:
        """
        Each node's output lines carry its id, padded to the longest id;
        standard error goes to standard error.
        """
        self.launcher.start()
        del self.out[:]
        n1, n3 = self.reactor.spawned[0][0], self.reactor.spawned[2][0]
        n1.childDataReceived(1, b"partition leader elected: n1 (term 1)\nhal")
        n3.childDataReceived(2, b"oops\n")
        n1.childDataReceived(1, b"f\n")
        self.assertEqual(
            (self.out, self.err),
            (
                ["n1    | partition leader elected: n1 (term 1)", "n1    | half"],
                ["node3 | oops"],
            ),
        )

    def test_leader(self) -> None:
        """
        The nodes are polled until one reports a leader; then the summary is
        printed once and polling stops.
        """
        self.launcher.start()
        del self.out[:]
        self.reactor.advance(0.5)
        self.assertEqual(
            self.fetches,
            [
                "http://127.0.0.1:7001/cluster",
                "http://127.0.0.1:7002/cluster",
                "http://127.0.0.1:7003/cluster",
            ],
        )
        self.assertEqual(self.out, [])
        self.answers["http://127.0.0.1:7002/cluster"] = {"leader": None, "term": 0}
        self.reactor.advance(0.5)
        self.assertEqual(self.out, [])
        self.answers["http://127.0.0.1:7003/cluster"] = {"leader": "n1", "term": 2}
        self.reactor.advance(0.5)
        self.assertEqual(
            self.out,
            ["kvcluster: " + line for line in describe_cluster(_CONFIG, "n1", 2)],
        )
        del self.fetches[:]
        self.reactor.advance(60)
        self.assertEqual((self.fetches, self.reactor.getDelayedCalls()), ([], []))

    def test_slow_answers(self) -> None:
        """
        A poll round waits for its answers before the next starts.
        """
        self.answers["http://127.0.0.1:7001/cluster"] = None
        self.launcher.start()
        self.reactor.advance(0.5)
        self.reactor.advance(0.5)
        self.assertEqual(len(self.fetches), 3)

    def test_no_leader(self) -> None:
        """
        Without a leader after the leader timeout, the URLs are printed with
        a warning and polling goes on.
        """
        self.launcher.start()
        del self.out[:]
        self.reactor.pump([0.5] * 60)
        self.assertEqual(
            self.out,
            ["kvcluster: no leader reported after 30s"]
            + ["kvcluster: " + line for line in describe_cluster(_CONFIG, None, None)],
        )
        self.answers["http://127.0.0.1:7001/cluster"] = {"leader": "n3", "term": 9}
        self.reactor.advance(0.5)
        self.assertIn("kvcluster: cluster 'demo' is up; the leader is n3 (term 9)", self.out)

    def test_stop(self) -> None:
        """
        Stopping sends SIGTERM to every node and fires once they all have
        ended; C{finished} then fires with C{None} (exit status 0).
        """
        self.launcher.start()
        d = self.launcher.stop()
        self.assertEqual([t.signals for t in self.reactor.transports], [["TERM"]] * 3)
        self.assertNoResult(d)
        self.end(0, ProcessDone(0))
        self.end(1, ProcessTerminated(exitCode=1))
        self.assertNoResult(d)
        self.end(2, ProcessTerminated(signal=15))
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(self.launcher.finished))
        self.assertEqual(
            self.out[-5:],
            [
                "kvcluster: stopping n1, n2, node3",
                "kvcluster: n1 exited with status 0",
                "kvcluster: n2 exited with status 1",
                "kvcluster: node3 ended by SIGTERM",
                "kvcluster: every node has stopped",
            ],
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(self.successResultOf(self.launcher.stop()))

    def test_stop_twice(self) -> None:
        """
        A second stop (say, the reactor's shutdown after Ctrl-C) signals
        nobody again and fires with the first.
        """
        self.launcher.start()
        first, second = self.launcher.stop(), self.launcher.stop()
        self.assertEqual([t.signals for t in self.reactor.transports], [["TERM"]] * 3)
        for index in range(3):
            self.end(index, ProcessDone(0))
        self.assertEqual(
            (self.successResultOf(first), self.successResultOf(second)), (None, None)
        )

    def test_kill(self) -> None:
        """
        Nodes still running after the stop timeout get SIGKILL; a node that
        has gone meanwhile is left alone.
        """
        self.launcher.start()
        d = self.launcher.stop()
        self.end(0, ProcessDone(0))
        self.reactor.transports[1].exited = True  # gone, not yet reaped
        self.reactor.advance(10)
        self.assertEqual(
            [t.signals for t in self.reactor.transports], [["TERM"], ["TERM"], ["TERM", "KILL"]]
        )
        self.assertEqual(
            self.err,
            [
                "kvcluster: n2 still running after 10s; killing it",
                "kvcluster: node3 still running after 10s; killing it",
            ],
        )
        self.end(1, ProcessDone(0))
        self.end(2, ProcessTerminated(signal=9))
        self.assertIsNone(self.successResultOf(d))

    def test_node_dies_during_startup(self) -> None:
        """
        A node that exits before there is a leader stops the whole cluster,
        and C{finished} fails with C{SystemExit(1)}.
        """
        self.launcher.start()
        self.end(1, ProcessTerminated(exitCode=1))
        self.assertEqual(
            self.err,
            [
                "kvcluster: n2 exited with status 1",
                "kvcluster: n2 stopped before the cluster had a leader; stopping the other nodes",
            ],
        )
        self.assertEqual([t.signals for t in self.reactor.transports], [["TERM"], [], ["TERM"]])
        self.assertNoResult(self.launcher.finished)
        self.end(0, ProcessDone(0))
        self.end(2, ProcessDone(0))
        failure = self.failureResultOf(self.launcher.finished, SystemExit)
        self.assertEqual(failure.value.code, 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(self.successResultOf(self.launcher.stop()))

    def test_node_dies_later(self) -> None:
        """
        Once the cluster is up, a node that exits is reported and the others
        keep running; when the last one goes, C{finished} fails.
        """
        self.answers["http://127.0.0.1:7001/cluster"] = {"leader": "n1", "term": 1}
        self.launcher.start()
        self.reactor.advance(0.5)
        self.end(1, ProcessTerminated(signal=9))
        self.assertEqual(self.err, ["kvcluster: n2 ended by SIGKILL"])
        self.assertEqual([t.signals for t in self.reactor.transports], [[], [], []])
        self.assertNoResult(self.launcher.finished)
        self.end(0, ProcessDone(0))
        self.end(2, ProcessDone(0))
        self.assertEqual(self.err[-1], "kvcluster: every node has exited")
        self.assertEqual(self.failureResultOf(self.launcher.finished, SystemExit).value.code, 1)
