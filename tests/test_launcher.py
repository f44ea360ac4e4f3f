# -*- test-case-name: tests.test_launcher -*-
"""
Tests for L{twisted_kv.app.launcher}, the C{kvcluster} command.

The launcher runs here on a L{Clock} with recorded process spawns and
scripted C{/cluster} answers: no process is started and no port opened,
except in L{RealLauncherTests}, which runs C{kvcluster} itself with real
nodes, as a user does, and signals it as a terminal would.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import (
    ConnectionRefusedError,
    ProcessDone,
    ProcessTerminated,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.e2e import free_ports, write_config
from tests.e2e import node_environment as e2e_node_environment
from tests.polling import poll
from tests.test_nodeprocess import FakeProcessTransport
from twisted_kv.app.launcher import (
    DEFAULT_CONFIG,
    Launcher,
    LineBuffer,
    _write_line,
    describe_cluster,
    launcher_credentials,
    leader_of,
    listens_on,
    parse_arguments,
    port_problem,
)
from twisted_kv.app.nodeprocess import (
    PARENT_VARIABLE,
    NodeProcess,
    node_command,
    node_environment,
)
from twisted_kv.core.config import load_config, parse_config
from twisted_kv.core.users import token_key, verify_token
from twisted_kv.errors import BadToken

_CONFIG_TEXT = "[cluster]\nname = demo\nsecret = s\n" + "".join(
    f"[node:{node_id}]\nhost = 127.0.0.1\nhttp_port = {7001 + i}\n"
    f"peer_port = {7101 + i}\nftp_port = {7201 + i}\n"
    for i, node_id in enumerate(["n1", "n2", "node3"])
)
_CONFIG = parse_config(_CONFIG_TEXT, "etc/demo.ini")

class CredentialTests(SynchronousTestCase):
    """
    L{launcher_credentials}: how kvcluster reads C{/cluster} from nodes
    with users.
    """

    def test_token(self) -> None:
        """
        With users, a bearer token for the first user, signed with the
        cluster secret, valid for the lifetime given; without, nothing.
        """
        config = parse_config(
            _CONFIG_TEXT + "[user:ann]\npassword = plain:a\n[user:bo]\npassword = plain:b\n",
            "etc/demo.ini",
        )
        [header] = launcher_credentials(config, 1000.0, 90.0).values()
        scheme, token = header.split(" ")
        self.assertEqual(scheme, "Bearer")
        key = token_key(b"s")
        self.assertEqual(verify_token(key, token, config.users, 1089.0).name, "ann")
        self.assertRaises(BadToken, verify_token, key, token, config.users, 1090.0)
        self.assertEqual(launcher_credentials(_CONFIG, 1000.0, 90.0), {})


class PureTests(SynchronousTestCase):
    """
    Command lines, output lines and answers, without any process.
    """

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

    def test_ports_free(self) -> None:
        """
        Every port of every node is tried, in file order; when all can be
        listened on there is no problem.
        """
        tried: list[tuple[str, int]] = []
        self.assertIsNone(
            port_problem(_CONFIG.nodes, lambda host, port: tried.append((host, port)))
        )
        self.assertEqual(
            tried,
            [("127.0.0.1", port) for i in range(3) for port in (7001 + i, 7101 + i, 7201 + i)],
        )

    def test_port_in_use(self) -> None:
        """
        The first port already in use is named, with its node and use, as
        the sign of a cluster already running.
        """

        def listen(host: str, port: int) -> None:
            if port in (7202, 7003):
                raise OSError(errno.EADDRINUSE, "Address already in use")

        self.assertEqual(
            port_problem(_CONFIG.nodes, listen),
            "port 7202 (n2 ftp) is in use: is the cluster already running?",
        )

    def test_port_unavailable(self) -> None:
        """
        Any other reason not to listen is given as the system words it.
        """

        def listen(host: str, port: int) -> None:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

        self.assertEqual(
            port_problem(_CONFIG.nodes, listen),
            "cannot listen on 127.0.0.1 port 7001 (n1 http): Cannot assign requested address",
        )



class WriteLineTests(SynchronousTestCase):
    """
    C{kvcluster}'s own standard output and error.
    """

    def test_pipe_closed(self) -> None:
        """
        Once a line cannot be written because the reader has gone, the
        stream's descriptor points at C{/dev/null}: what stays buffered and
        what comes next go nowhere, without another error.
        """
        read_end, write_end = os.pipe()
        stream = os.fdopen(write_end, "w")
        self.addCleanup(stream.close)
        write = _write_line(stream)
        write("read")
        self.assertEqual(os.read(read_end, 100), b"read\n")
        os.close(read_end)
        self.assertRaises(BrokenPipeError, write, "not read")
        self.assertEqual(os.fstat(write_end).st_rdev, os.stat(os.devnull).st_rdev)
        write("not read either")
        stream.flush()


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
        transport = FakeProcessTransport(101 + len(self.transports))
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
        # The (pid, port) pairs where something else than the process
        # listens.
        self.strangers: set[tuple[int, int]] = set()
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
            listens=self.listens,
        )

    def listens(self, pid: int, port: int) -> bool:
        return (pid, port) not in self.strangers

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
                 {**node_environment({"HOME": "/root"}), PARENT_VARIABLE: str(os.getpid())})
                for node_id in ["n1", "n2", "node3"]
            ],
        )
        self.assertEqual([t.stdin_closed for t in self.reactor.transports], [True] * 3)
        self.assertEqual(
            self.out,
            [
                "kvcluster: starting 3 nodes of etc/demo.ini: n1 (pid 101), n2 (pid 102),"
                " node3 (pid 103); Ctrl-C stops them all"
            ],
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

    def test_leader_from_another_process(self) -> None:
        """
        An answer is believed only from a node started here that listens on
        its HTTP port itself, never from another process answering there
        (the node started here then fails to listen).
        """
        self.launcher.start()
        del self.out[:]
        self.strangers.add((101, 7001))
        self.answers["http://127.0.0.1:7001/cluster"] = {"leader": "n9", "term": 7}
        self.reactor.advance(0.5)
        self.assertEqual(self.out, [])
        self.answers["http://127.0.0.1:7003/cluster"] = {"leader": "node3", "term": 2}
        self.reactor.advance(0.5)
        self.assertEqual(
            self.out[:1], ["kvcluster: cluster 'demo' is up; the leader is node3 (term 2)"]
        )

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

    def test_output_fails(self) -> None:
        """
        Output that can no longer be written (the pipe or terminal is gone)
        is dropped: the nodes are stopped all the same, and C{finished}
        fires.
        """
        broken = []

        def out(line: str) -> None:
            if broken:
                raise BrokenPipeError(32, "Broken pipe")
            self.out.append(line)

        def err(line: str) -> None:
            if broken:
                raise ValueError("I/O operation on closed file")
            self.err.append(line)

        self.launcher = Launcher(
            _CONFIG, self.reactor, self.fetch, out, err, python="/py", environ={}
        )
        self.launcher.start()
        n2 = self.reactor.spawned[1][0]
        broken.append(True)
        n2.childDataReceived(1, b"a line nobody reads\n")
        n2.childDataReceived(2, b"nor this one\n")
        d = self.launcher.stop()
        self.assertEqual([t.signals for t in self.reactor.transports], [["TERM"]] * 3)
        for index in range(3):
            self.end(index, ProcessDone(0))
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(self.launcher.finished))
        self.assertEqual((len(self.out), self.err), (1, []))

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
        self.assertEqual(
            self.err,
            [f"kvcluster: n2 ended by SIGKILL; restart it with: kill -USR1 {os.getpid()}"],
        )
        self.assertEqual([t.signals for t in self.reactor.transports], [[], [], []])
        self.assertNoResult(self.launcher.finished)
        self.end(0, ProcessDone(0))
        self.end(2, ProcessDone(0))
        self.assertEqual(
            self.err[-2:],
            ["kvcluster: node3 exited with status 0", "kvcluster: every node has exited"],
        )
        self.assertEqual(self.failureResultOf(self.launcher.finished, SystemExit).value.code, 1)

    def test_restart(self) -> None:
        """
        C{restart} starts again the nodes that have ended, as they were
        started first; the new processes show their output with the same
        prefix, and are stopped with the others.
        """
        self.answers["http://127.0.0.1:7001/cluster"] = {"leader": "n1", "term": 1}
        self.launcher.start()
        self.reactor.advance(0.5)
        self.end(1, ProcessTerminated(signal=9))
        self.end(2, ProcessDone(0))
        del self.out[:]
        self.launcher.restart()
        self.assertEqual(
            self.out,
            ["kvcluster: restarting n2 (pid 104)", "kvcluster: restarting node3 (pid 105)"],
        )
        self.assertEqual(
            [spawn[1:] for spawn in self.reactor.spawned[3:]],
            [spawn[1:] for spawn in self.reactor.spawned[1:3]],
        )
        self.reactor.spawned[3][0].childDataReceived(1, b"back\n")
        self.assertEqual(self.out[-1], "n2    | back")
        del self.out[:]
        d = self.launcher.stop()
        self.assertEqual(
            [t.signals for t in self.reactor.transports], [["TERM"], [], [], ["TERM"], ["TERM"]]
        )
        for index in (0, 3, 4):
            self.end(index, ProcessDone(0))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.out[0], "kvcluster: stopping n1, n2, node3")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_restart_nothing_ended(self) -> None:
        """
        With every node running, C{restart} says so and starts nothing.
        """
        self.launcher.start()
        del self.out[:]
        self.launcher.restart()
        self.assertEqual(
            (self.out, len(self.reactor.spawned)),
            (["kvcluster: every node is running; nothing to restart"], 3),
        )

    def test_restart_while_stopping(self) -> None:
        """
        Once stopping has begun, C{restart} starts nothing.
        """
        self.launcher.start()
        self.launcher.stop()
        self.end(1, ProcessDone(0))
        self.launcher.restart()
        self.assertEqual(len(self.reactor.spawned), 3)


#: Copies C{kvcluster}'s output to the file named by its argument until the
#: cluster is up, then exits: what C{kvcluster | head} does to it.
_COPY_UNTIL_UP = (
    "import sys\n"
    "with open(sys.argv[1], 'w') as out:\n"
    "    for line in sys.stdin:\n"
    "        out.write(line)\n"
    "        out.flush()\n"
    "        if ' is up; ' in line:\n"
    "            break\n"
)


def _restore_signals() -> None:
    """
    Give C{kvcluster} the default signal dispositions a terminal gives it,
    whatever this test runner ignores.
    """
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def _children(pid: int) -> dict[int, str]:
    """
    The running node processes whose parent is C{pid}: pid to node id.
    """
    nodes = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and "--node" in argv:
            nodes[int(entry)] = argv[argv.index("--node") + 1]
    return nodes


def _alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _accepts(port: int) -> bool:
    """
    Whether something accepts TCP connections on C{127.0.0.1:port}.
    """
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class RealLauncherTests(TestCase):
    """
    C{kvcluster} as a user runs it: a real process with three real nodes on
    free loopback ports, signalled as a terminal would.  Linux only (the
    nodes are found through C{/proc}).
    """

    timeout = 120

    def setUp(self) -> None:
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("needs Linux /proc")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config_path = os.path.join(self.directory, "cluster.ini")
        ports = free_ports(9)
        write_config(
            self.config_path,
            [(f"n{i + 1}", *ports[3 * i : 3 * i + 3]) for i in range(3)],
            election_timeout="1s",
        )
        self.config = load_config(self.config_path)
        self.out_path = os.path.join(self.directory, "out")
        self.err_path = os.path.join(self.directory, "err")
        self.seen: dict[int, str] = {}
        self.addCleanup(self._kill_leftovers)

    def _kill_leftovers(self) -> None:
        for pid in self.seen:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def launch(self, output_reader: bool = False) -> subprocess.Popen:
        """
        Start C{kvcluster} on the cluster file, standard error to a file,
        standard output to a file or, with C{output_reader}, into a process
        that copies it to that file and exits once the cluster is up.
        """
        argv = [sys.executable, "-m", "twisted_kv.app.launcher", self.config_path]
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            kvcluster = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if output_reader else out,
                stderr=err,
                env=e2e_node_environment(),
                preexec_fn=_restore_signals,
            )
        self.seen[kvcluster.pid] = "kvcluster"
        self.addCleanup(lambda: kvcluster.poll() is None and kvcluster.kill())
        if output_reader:
            self.reader = subprocess.Popen(
                [sys.executable, "-c", _COPY_UNTIL_UP, self.out_path], stdin=kvcluster.stdout
            )
            assert kvcluster.stdout is not None
            kvcluster.stdout.close()
            self.addCleanup(lambda: self.reader.poll() is None and self.reader.kill())
        return kvcluster

    def output(self) -> str:
        with open(self.out_path) as out:
            return out.read()

    def errors(self) -> str:
        with open(self.err_path) as err:
            return err.read()

    async def wait_until_up(self, kvcluster: subprocess.Popen) -> dict[int, str]:
        """
        Wait until C{kvcluster} reports the cluster up; return its nodes,
        pid to node id.
        """

        async def up() -> Optional[bool]:
            if kvcluster.poll() is not None:
                raise AssertionError(f"kvcluster exited: {self.errors()}")
            return True if " is up; " in self.output() else None

        await poll(up, 60, "kvcluster to report the cluster up")
        nodes = _children(kvcluster.pid)
        self.seen.update(nodes)
        self.assertEqual(sorted(nodes.values()), ["n1", "n2", "n3"])
        return nodes

    async def exit_status(self, kvcluster: subprocess.Popen) -> int:
        """
        Wait for C{kvcluster} to exit; return its exit status.
        """

        async def exited() -> Optional[int]:
            return kvcluster.poll()

        return await poll(exited, 30, "kvcluster to exit")

    async def assert_stopped(self, kvcluster: subprocess.Popen, status: int) -> None:
        """
        Wait for C{kvcluster} to exit with C{status}, then check that no
        node it ever ran is left and that every port is free.
        """
        self.assertEqual(await self.exit_status(kvcluster), status, self.errors())

        async def gone() -> Optional[bool]:
            return None if any(_alive(pid) for pid in self.seen) else True

        try:
            await poll(gone, 15, "every node to end")
        except AssertionError:
            left = {pid: node for pid, node in self.seen.items() if _alive(pid)}
            self.fail(f"still running: {left}; kvcluster's errors: {self.errors()}")
        ports = [
            port
            for node in self.config.nodes
            for port in (node.http_port, node.peer_port, node.ftp_port)
        ]
        self.assertEqual([port for port in ports if _accepts(port)], [])

    async def stop_with_output_gone(self, signum: signal.Signals) -> None:
        """
        Run C{kvcluster} piped into a process that exits once the cluster is
        up, then send it C{signum}: it still stops every node and exits 0.
        """
        kvcluster = self.launch(output_reader=True)
        await self.wait_until_up(kvcluster)

        async def reader_gone() -> Optional[int]:
            return self.reader.poll()

        await poll(reader_gone, 10, "the reader to exit")
        kvcluster.send_signal(signum)
        await self.assert_stopped(kvcluster, 0)
        self.assertNotIn("Traceback", self.errors())

    async def test_interrupt_output_gone(self) -> None:
        """
        Ctrl-C in C{kvcluster ... | tee out} ends C{tee} first: C{kvcluster}
        stops its nodes all the same.
        """
        await self.stop_with_output_gone(signal.SIGINT)

    async def test_hangup_output_gone(self) -> None:
        """
        A closed terminal (SIGHUP, and output that fails) stops every node.
        """
        await self.stop_with_output_gone(signal.SIGHUP)

    async def test_terminate(self) -> None:
        """
        SIGTERM stops every node, and C{kvcluster} exits 0.
        """
        kvcluster = self.launch()
        await self.wait_until_up(kvcluster)
        kvcluster.terminate()
        await self.assert_stopped(kvcluster, 0)
        self.assertIn("kvcluster: every node has stopped", self.output())

    async def test_killed(self) -> None:
        """
        The nodes die with C{kvcluster}, even when it is killed outright.
        """
        kvcluster = self.launch()
        await self.wait_until_up(kvcluster)
        kvcluster.kill()
        await self.assert_stopped(kvcluster, -signal.SIGKILL)

    async def test_port_taken(self) -> None:
        """
        When a port of the file is in use (say, by the cluster already
        running), C{kvcluster} refuses at once with one line and exit
        status 1, and starts no node.
        """
        n2 = self.config.nodes[1]
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", n2.ftp_port))
            taken.listen()
            kvcluster = self.launch()
            status = await self.exit_status(kvcluster)
        self.assertEqual(
            (status, self.output(), self.errors()),
            (
                1,
                "",
                f"kvcluster: port {n2.ftp_port} (n2 ftp) is in use:"
                " is the cluster already running?\n",
            ),
        )

    def test_listens_on(self) -> None:
        """
        L{listens_on} tells which process listens on a port.
        """
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            port = listening.getsockname()[1]
            self.assertEqual(
                [listens_on(os.getpid(), port), listens_on(os.getppid(), port)],
                [True, False],
            )
        self.assertFalse(listens_on(os.getpid(), port))

    async def test_restart(self) -> None:
        """
        A node that dies is reported with the command that restarts it;
        that command (SIGUSR1) starts it again under C{kvcluster}, which
        then stops it with the others.
        """
        kvcluster = self.launch()
        nodes = await self.wait_until_up(kvcluster)
        (n2,) = [pid for pid, node in nodes.items() if node == "n2"]
        os.kill(n2, signal.SIGKILL)
        reported = f"kvcluster: n2 ended by SIGKILL; restart it with: kill -USR1 {kvcluster.pid}\n"

        async def died() -> Optional[bool]:
            return True if reported in self.errors() else None

        await poll(died, 15, "kvcluster to report n2's end")
        kvcluster.send_signal(signal.SIGUSR1)
        http_port = self.config.nodes[1].http_port

        async def back() -> Optional[int]:
            pids = [pid for pid, node in _children(kvcluster.pid).items() if node == "n2"]
            return pids[0] if pids and _accepts(http_port) else None

        restarted = await poll(back, 30, "n2 to be back")
        self.seen[restarted] = "n2"
        self.assertIn(f"kvcluster: restarting n2 (pid {restarted})\n", self.output())
        kvcluster.send_signal(signal.SIGINT)
        await self.assert_stopped(kvcluster, 0)
        self.assertIn("kvcluster: stopping n1, n2, n3\n", self.output())
