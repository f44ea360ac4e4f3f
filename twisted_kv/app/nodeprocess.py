# -*- test-case-name: tests.test_nodeprocess,tests.test_launcher -*-
"""
One node as a child process: its command line, its environment, the main it
runs, and the L{ProcessProtocol} that watches it.

C{kvcluster} (L{twisted_kv.app.launcher}) starts its nodes with these, and
so does the end-to-end test harness, so that the nodes the tests run are
started exactly as an operator's are.  Both need a node that never outlives
the process that started it: the node asks the Linux kernel to SIGKILL it
when its parent dies (C{PR_SET_PDEATHSIG}), and exits at once if its parent
is already gone by then.  They differ in what they do with the output
(C{kvcluster} prefixes each line with the node id; the harness keeps the
bytes) and in the process group: C{kvcluster} puts each node in a group of
its own, so that a Ctrl-C in the terminal reaches C{kvcluster} only, which
then stops each node exactly once.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

#: The environment variable that gives a node the pid of the process that
#: started it.
PARENT_VARIABLE = "KVCLUSTER_PID"

#: Linux C{prctl} option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1

# PyPy's collector, tuned for a node unless the environment says otherwise.
# PYPY_GC_NURSERY: PyPy sizes its young generation from the CPU's cache, half
# of the L3 cache, 240 MB on virtual machines that report a 480 MB one.  That
# memory, filled by the first requests, holds no key; with 8 MB a node serves
# as fast and holds a key in a third of the memory.
# PYPY_GC_INCREMENT_STEP: how much of the old generation one step of a major
# collection marks, twice the nursery by default.  Each step pauses the node;
# 1 MB steps cut its p99 latency from 20-45 ms to 4-19 ms, at no cost in
# throughput (memory per key grows from about 500 bytes to 600; setting
# PYPY_GC_MAJOR_COLLECT=1.4 takes it back, for 20-30 % of the throughput).
# CPython ignores both.
PYPY_GC_SETTINGS = {"PYPY_GC_NURSERY": "8MB", "PYPY_GC_INCREMENT_STEP": "1MB"}


def run_node(own_group: bool = True) -> None:
    """
    The main of a node process: twistd, killed by the kernel when the
    process that started it dies (Linux), so that no node outlives it
    however it ends.

    @param own_group: put the node in a process group of its own, so that
        a Ctrl-C in the terminal reaches only the process that started it.
    """
    if own_group:
        os.setpgrp()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # Not Linux: only a parent that lives to stop its nodes does.
    if os.environ.pop(PARENT_VARIABLE, "") != str(os.getppid()):
        sys.exit("the process that started this node ended before it started")
    sys.argv[0] = "twistd"
    from twisted.scripts.twistd import run

    run()


def twistd_command(
    args: Sequence[str], python: str = sys.executable, own_group: bool = True
) -> list[str]:
    """
    The command line that runs C{twistd ARGS} through L{run_node}: Python's
    C{-c}, since C{twisted.scripts.twistd} has no C{__main__} block.

    @param python: the interpreter; by default the one running this code.
    @param own_group: see L{run_node}.
    """
    main = f"from {__name__} import run_node; run_node({'' if own_group else 'own_group=False'})"
    return [python, "-c", main, *args]


def node_command(
    config_path: str, node_id: str, python: str = sys.executable, own_group: bool = True
) -> list[str]:
    """
    The command line that runs one node in the foreground, as an operator
    would: C{twistd -n --pidfile= kvnode --config CONFIG --node ID}.

    @param config_path: the cluster file, as the user named it.
    @param python: the interpreter; by default the one running this code.
    @param own_group: see L{run_node}.
    """
    args = ["-n", "--pidfile=", "kvnode", "--config", config_path, "--node", node_id]
    return twistd_command(args, python, own_group)


def node_environment(
    environ: Mapping[str, str], parent: Optional[int] = None
) -> dict[str, str]:
    """
    The environment of a node process: C{environ}, with unbuffered output
    so that log lines show up as they are written, and PyPy's collector
    tuned for short pauses and little memory unless C{environ} tunes it.

    @param parent: the pid of the process that spawns the node, which
        L{run_node} checks; C{None} for an environment that is only read.
    """
    env = dict(environ)
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in PYPY_GC_SETTINGS.items():
        env.setdefault(name, value)
    if parent is not None:
        env[PARENT_VARIABLE] = str(parent)
    return env


def describe_exit(reason: Failure) -> str:
    """
    How a process ended, in words.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = f"signal {value.signal}"
            return f"ended by {name}"
        return f"exited with status {value.exitCode}"
    return f"ended: {value}"


def _ignore_end(process: "NodeProcess", reason: Failure) -> None:
    pass


class NodeProcess(ProcessProtocol):
    """
    One run of one node process: hands on its output as it comes, and tells
    when it has ended.  Its standard input is closed at once.

    @ivar node_id: the node it runs.
    @ivar ended: C{None} while running, then how the process ended.
    """

    def __init__(
        self,
        node_id: str,
        received: Callable[[int, bytes], None],
        on_end: Callable[["NodeProcess", Failure], None] = _ignore_end,
    ) -> None:
        """
        @param received: called with C{(file descriptor, bytes)} for each
            piece of output (1 for standard output, 2 for standard error).
        @param on_end: called with this process and how it ended, once it
            has exited and its pipes are closed (after the last output).
        """
        self.node_id = node_id
        self._received = received
        self._on_end = on_end
        self.ended: Optional[Failure] = None
        self._waiters: list[Deferred[None]] = []

    @property
    def running(self) -> bool:
        """
        Whether the process has not ended yet.
        """
        return self.ended is None

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._received(childFD, data)

    def processEnded(self, reason: Failure) -> None:
        self.ended = reason
        self._on_end(self, reason)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def when_ended(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once the process has ended (at once if it
        has).
        """
        d: Deferred[None] = Deferred()
        if self.ended is not None:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    @property
    def pid(self) -> int:
        """
        The process id.
        """
        return self.transport.pid  # type: ignore[union-attr]

    def signal(self, name: str) -> None:
        """
        Send signal C{name} (C{"TERM"}, C{"KILL"}) unless the process has
        already gone.
        """
        if self.ended is not None:
            return
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except (ProcessExitedAlready, OSError):
            pass
