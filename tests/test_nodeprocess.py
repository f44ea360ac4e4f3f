# -*- test-case-name: tests.test_nodeprocess -*-
"""
Tests for L{twisted_kv.app.nodeprocess}: how C{kvcluster} and the
end-to-end harness start a node and watch it.  No process is started: the
protocol runs on a fake transport.
"""

from __future__ import annotations

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.app.nodeprocess import (
    PARENT_VARIABLE,
    PYPY_GC_SETTINGS,
    NodeProcess,
    describe_exit,
    node_command,
    node_environment,
    twistd_command,
)

_MAIN = "from twisted_kv.app.nodeprocess import run_node; run_node()"


class CommandTests(SynchronousTestCase):
    """
    Command lines and environments.
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

    def test_same_group(self) -> None:
        """
        A node may stay in the process group of the process that starts it.
        """
        self.assertEqual(
            twistd_command(["--help"], python="/py", own_group=False),
            [
                "/py", "-c",
                "from twisted_kv.app.nodeprocess import run_node; run_node(own_group=False)",
                "--help",
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

    def test_environment_parent(self) -> None:
        """
        The environment of a node to spawn names its parent's pid.
        """
        self.assertEqual(node_environment({}, parent=42)[PARENT_VARIABLE], "42")

    def test_environment_collector_tuned_by_user(self) -> None:
        """
        PyPy collector settings given in the environment are kept.
        """
        environ = {"PYPY_GC_NURSERY": "64MB", "PYPY_GC_INCREMENT_STEP": "4MB"}
        self.assertEqual(
            {name: node_environment(environ)[name] for name in environ}, environ
        )

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

    def __init__(self, pid: int, exited: bool = False) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.stdin_closed = False
        self.exited = exited

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(name)


class NodeProcessTests(SynchronousTestCase):
    """
    L{NodeProcess} on a fake transport.
    """

    def setUp(self) -> None:
        self.received: list[tuple[int, bytes]] = []
        self.events: list[object] = []
        self.process = NodeProcess(
            "n1",
            lambda fd, data: self.received.append((fd, data)),
            lambda process, reason: self.events.append((process, reason)),
        )
        self.transport = FakeProcessTransport(7)
        self.process.makeConnection(self.transport)

    def test_output(self) -> None:
        """
        Standard input is closed at once; output is handed on as it comes,
        with its file descriptor.
        """
        self.process.childDataReceived(1, b"hel")
        self.process.childDataReceived(2, b"oops")
        self.assertEqual(
            (self.transport.stdin_closed, self.received, self.process.pid),
            (True, [(1, b"hel"), (2, b"oops")], 7),
        )

    def test_end(self) -> None:
        """
        The end is reported to the callback, then to every waiter, and the
        process is no longer running; a waiter that comes later fires at
        once.
        """
        early = self.process.when_ended()
        early.addCallback(self.events.append)
        reason = Failure(ProcessDone(0))
        self.assertTrue(self.process.running)
        self.process.processEnded(reason)
        self.assertEqual(self.events, [(self.process, reason), None])
        self.assertFalse(self.process.running)
        self.assertIs(self.process.ended, reason)
        self.assertIsNone(self.successResultOf(self.process.when_ended()))

    def test_signal(self) -> None:
        """
        Signals reach a running process; a process that has gone, by the
        transport's account or by its end, gets none and raises nothing.
        """
        self.process.signal("TERM")
        self.transport.exited = True
        self.process.signal("KILL")
        self.process.processEnded(Failure(ProcessTerminated(signal=15)))
        self.transport.exited = False
        self.process.signal("KILL")
        self.assertEqual(self.transport.signals, ["TERM"])
