# -*- test-case-name: tests.test_launcher -*-
"""
C{kvcluster}: run every node of a cluster file on this machine.

    kvcluster [CONFIG]            (default: etc/cluster-local.ini)
    python -m twisted_kv.app.launcher [CONFIG]

It starts one C{twistd -n --pidfile= kvnode --config CONFIG --node ID} per
node of the file, with the same Python, and shows each node's output with
the node id in front of every line.  It asks the nodes for C{GET /cluster}
until one reports a leader, then prints the leader and every node's HTTP,
WebSocket and FTP URLs.  Ctrl-C (or SIGTERM, or SIGHUP) stops every node:
SIGTERM first, SIGKILL for any node still running after C{--stop-timeout}
seconds; then C{kvcluster} exits with status 0.

Before starting anything it checks that every port of every node can be
listened on: if one is in use (most likely by the same cluster, already
running) it says so in one line and exits with status 1.  Only a node it
started and that holds its own HTTP port counts as reporting the leader.
If a node exits before the cluster has a leader, every node is stopped and
C{kvcluster} exits with status 1.  A node that exits later is reported in
one line, with the command that restarts it, since stopping nodes is how
failures are tried out: SIGUSR1 (C{kill -USR1 PID}, the pid of
C{kvcluster}) starts again every node that has ended, under C{kvcluster} as
before, so that its output shows here and Ctrl-C stops it.  (A signal,
rather than commands read from the terminal, works as well for a
C{kvcluster} in the background, and needs no thread nor terminal mode.)

Each node runs in its own process group, so a Ctrl-C in the terminal
reaches C{kvcluster} only, which then stops each node exactly once.  Output
that can no longer be written (C{kvcluster | tee} after the Ctrl-C ended
C{tee}, a closed terminal) is dropped, never a reason to leave a node
running; and on Linux the kernel kills every node if C{kvcluster} itself
dies, even by SIGKILL.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import socket
import sys
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from twisted_kv.app.nodeprocess import (
    NodeProcess,
    describe_exit,
    node_command,
    node_environment,
)
from twisted_kv.core.config import ClusterConfig, ConfigError, NodeConfig, load_config
from twisted_kv.core.users import issue_token, token_key

DEFAULT_CONFIG = os.path.join("etc", "cluster-local.ini")

#: Longest partial line kept from a node before it is shown anyway.
_MAX_LINE = 64 * 1024

Writer = Callable[[str], None]
Fetcher = Callable[[str], "Deferred[Any]"]
Listener = Callable[[str, int], None]


def listen_once(host: str, port: int) -> None:
    """
    Listen on C{host:port} as a node would (with C{SO_REUSEADDR}, as
    Twisted does), and close at once.

    @raise OSError: as a node would fail.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen()


def port_problem(nodes: Iterable[NodeConfig], listen: Listener = listen_once) -> Optional[str]:
    """
    Why a port of C{nodes} cannot be listened on, or C{None}: checked
    before any node starts, so that a cluster already running is one clear
    line rather than every node failing (and is never taken for the
    cluster being started).

    @param listen: tries one C{(host, port)}, raising L{OSError}.
    """
    for node in nodes:
        for kind, port in (
            ("http", node.http_port),
            ("peer", node.peer_port),
            ("ftp", node.ftp_port),
        ):
            try:
                listen(node.host, port)
            except OSError as e:
                where = f"port {port} ({node.node_id} {kind})"
                if e.errno == errno.EADDRINUSE:
                    return f"{where} is in use: is the cluster already running?"
                return f"cannot listen on {node.host} {where}: {e.strerror or e}"
    return None


def listens_on(pid: int, port: int) -> bool:
    """
    Whether process C{pid} has a TCP socket listening on C{port}: what
    tells a node that C{kvcluster} started from another process answering
    on its port.  Read from Linux's C{/proc}; elsewhere, C{True}.
    """
    sockets = set()
    tables = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as file:
                rows = file.read().splitlines()[1:]
        except OSError:
            continue
        tables += 1
        for row in rows:
            # sl local_address rem_address st ... inode; st 0A is LISTEN.
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    if not tables:
        return True
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{descriptor}") in sockets:
                return True
        except OSError:
            pass
    return False


def leader_of(cluster: Any) -> tuple[Optional[str], Optional[int]]:
    """
    The leader and term from a node's C{GET /cluster} answer.

    @param cluster: the decoded JSON.
    @return: C{(leader id, term)}; either is C{None} when not reported.
    """
    if not isinstance(cluster, dict):
        return None, None
    leader = cluster.get("leader")
    if isinstance(leader, dict):
        leader = leader.get("id")
    term = cluster.get("term")
    return (
        leader if isinstance(leader, str) and leader else None,
        term if isinstance(term, int) and not isinstance(term, bool) else None,
    )


def describe_cluster(
    config: ClusterConfig, leader: Optional[str], term: Optional[int]
) -> list[str]:
    """
    The lines printed once the cluster is up: the leader, then a table of
    every node's URLs, the leader marked with C{*}.
    """
    if leader is None:
        headline = f"cluster {config.name!r}: no leader reported yet; the nodes keep trying"
    else:
        headline = f"cluster {config.name!r} is up; the leader is {leader}"
        if term is not None:
            headline += f" (term {term})"
    rows = [("", "node", "HTTP API and dashboard", "WebSocket", "FTP")]
    for node in config.nodes:
        rows.append(
            (
                "*" if node.node_id == leader else "",
                node.node_id,
                node.http_url + "/",
                node.ws_url,
                node.ftp_url + "/",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    table = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in rows
    ]
    return [headline, *table]


class LineBuffer:
    """
    Turns a stream of bytes into lines, each with a prefix.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        """
        Add output; return the complete lines it finishes.
        """
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        if len(self._pending) > _MAX_LINE:
            lines.append(self._pending)
            self._pending = b""
        return [self._line(line) for line in lines]

    def flush(self) -> list[str]:
        """
        Return the last, unfinished line, if any.
        """
        pending, self._pending = self._pending, b""
        return [self._line(pending)] if pending else []

    def _line(self, raw: bytes) -> str:
        return self._prefix + raw.rstrip(b"\r").decode("utf-8", "replace")


class Launcher:
    """
    Starts, watches and stops the nodes of one cluster file.

    @param reactor: spawns processes and tells the time
        (C{IReactorProcess} and C{IReactorTime}).
    @param fetch: C{url -> Deferred} firing with the decoded JSON of a
        C{GET}, used for C{/cluster}.
    @param out: writes one line of ordinary output.
    @param err: writes one line of error output.  Neither may stop the
        launcher: a write that fails (the pipe or terminal that showed the
        output is gone) is dropped.
    @param listens: C{(pid, port) -> bool}, whether that process listens on
        that port: only a node that C{kvcluster} started and that holds its
        HTTP port is believed.

    @ivar finished: fires with C{None} once the nodes were stopped on
        request, or fails with C{SystemExit(1)} when the cluster could not
        start or every node died on its own.
    """

    def __init__(
        self,
        config: ClusterConfig,
        reactor: Any,
        fetch: Fetcher,
        out: Writer,
        err: Writer,
        *,
        python: str = sys.executable,
        environ: Mapping[str, str] = os.environ,
        poll_interval: float = 0.5,
        leader_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        listens: Callable[[int, int], bool] = listens_on,
    ) -> None:
        self._config = config
        self._reactor = reactor
        self._fetch = fetch
        self._out = _tolerant(out)
        self._err = _tolerant(err)
        self._python = python
        self._environ = environ
        self._poll_interval = poll_interval
        self._leader_timeout = leader_timeout
        self._stop_timeout = stop_timeout
        self._listens = listens
        self.processes: list[NodeProcess] = []
        self.finished: Deferred[None] = Deferred()
        self._poller: Optional[LoopingCall] = None
        self._leader_found = False
        self._leader_warning: Any = None
        self._stopping = False
        self._stopped = False
        self._stop_waiters: list[Deferred[None]] = []
        self._kill_call: Any = None
        self._failed = False

    def _say(self, line: str) -> None:
        self._out(f"kvcluster: {line}")

    def start(self) -> None:
        """
        Spawn every node and start asking for a leader.
        """
        self.processes = [self._spawn(node) for node in self._config.nodes]
        self._say(
            f"starting {len(self.processes)} nodes of {self._config.path}: "
            + ", ".join(f"{p.node_id} (pid {p.pid})" for p in self.processes)
            + "; Ctrl-C stops them all"
        )
        self._poller = LoopingCall(self._poll)
        self._poller.clock = self._reactor
        self._poller.start(self._poll_interval, now=False).addErrback(self._poll_failed)
        self._leader_warning = self._reactor.callLater(
            self._leader_timeout, self._no_leader_yet
        )

    def _spawn(self, node: NodeConfig) -> NodeProcess:
        width = max(len(node_id) for node_id in self._config.node_ids)
        prefix = f"{node.node_id.ljust(width)} | "
        lines = {1: (LineBuffer(prefix), self._out), 2: (LineBuffer(prefix), self._err)}

        def received(fd: int, data: bytes) -> None:
            buffer, write = lines.get(fd, lines[1])
            for line in buffer.feed(data):
                write(line)

        def ended(process: NodeProcess, reason: Failure) -> None:
            for buffer, write in lines.values():
                for line in buffer.flush():
                    write(line)
            self._node_ended(process, reason)

        process = NodeProcess(node.node_id, received, ended)
        argv = node_command(self._config.path, node.node_id, self._python)
        env = node_environment(self._environ, parent=os.getpid())
        self._reactor.spawnProcess(process, argv[0], argv, env=env)
        return process

    def restart(self) -> None:
        """
        Start again every node that has ended, as it was started first (on
        C{kvcluster}'s SIGUSR1): it prints with the same prefix and is
        stopped with the others.  Nothing happens once stopping has begun.
        """
        if self._stopping:
            return
        ended = [i for i, p in enumerate(self.processes) if p.ended is not None]
        if not ended:
            self._say("every node is running; nothing to restart")
        for index in ended:
            process = self.processes[index] = self._spawn(self._config.nodes[index])
            self._say(f"restarting {process.node_id} (pid {process.pid})")

    def _poll(self) -> Deferred[Any]:
        """
        Ask every node for C{/cluster}; report the cluster once one of the
        nodes started here knows its leader.
        """
        queries = [
            self._fetch(node.http_url + "/cluster").addCallbacks(
                leader_of, lambda failure: (None, None)
            )
            for node in self._config.nodes
        ]

        def answered(results: list[tuple[bool, Any]]) -> None:
            for (ok, (leader, term)), node, process in zip(
                results, self._config.nodes, self.processes
            ):
                if (
                    ok
                    and leader is not None
                    and not self._leader_found
                    and not self._stopping
                    and self._listens(process.pid, node.http_port)
                ):
                    self._found_leader(leader, term)
                    return

        return DeferredList(queries, consumeErrors=True).addCallback(answered)

    def _poll_failed(self, failure: Failure) -> None:
        self._err(f"kvcluster: polling the nodes failed: {failure.getErrorMessage()}")

    def _found_leader(self, leader: str, term: Optional[int]) -> None:
        self._leader_found = True
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        if self._leader_warning is not None and self._leader_warning.active():
            self._leader_warning.cancel()
        for line in describe_cluster(self._config, leader, term):
            self._say(line)

    def _no_leader_yet(self) -> None:
        self._say(f"no leader reported after {self._leader_timeout:g}s")
        for line in describe_cluster(self._config, None, None):
            self._say(line)

    def _node_ended(self, process: NodeProcess, reason: Failure) -> None:
        how = describe_exit(reason)
        if self._stopping:
            self._say(f"{process.node_id} {how}")
            if all(p.ended is not None for p in self.processes):
                self._all_stopped()
            return
        all_ended = all(p.ended is not None for p in self.processes)
        if self._leader_found and not all_ended:
            how += f"; restart it with: kill -USR1 {os.getpid()}"
        self._err(f"kvcluster: {process.node_id} {how}")
        if not self._leader_found:
            self._err(
                f"kvcluster: {process.node_id} stopped before the cluster had a"
                " leader; stopping the other nodes"
            )
            self._fail()
        elif all_ended:
            self._err("kvcluster: every node has exited")
            self._fail()

    def _fail(self) -> None:
        self._failed = True
        self.stop().addCallback(lambda _: self.finished.errback(SystemExit(1)))

    def stop(self) -> Deferred[None]:
        """
        Stop every node: SIGTERM now, SIGKILL for those still running after
        the stop timeout.  Safe to call any number of times.

        @return: a Deferred firing with C{None} once every node has ended.
        """
        if self._stopped:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stop_waiters.append(waiter)
        if not self._stopping:
            self._begin_stop()
        return waiter

    def _begin_stop(self) -> None:
        self._stopping = True
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        if self._leader_warning is not None and self._leader_warning.active():
            self._leader_warning.cancel()
        running = [p for p in self.processes if p.ended is None]
        if not running:
            self._all_stopped()
            return
        for process in running:
            process.signal("TERM")
        self._kill_call = self._reactor.callLater(self._stop_timeout, self._kill)
        self._say(f"stopping {', '.join(p.node_id for p in running)}")

    def _kill(self) -> None:
        for process in self.processes:
            if process.ended is None:
                self._err(
                    f"kvcluster: {process.node_id} still running after"
                    f" {self._stop_timeout:g}s; killing it"
                )
                process.signal("KILL")

    def _all_stopped(self) -> None:
        self._stopped = True
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if not self._failed and not self.finished.called:
            self._say("every node has stopped")
            self.finished.callback(None)


def _fetch_json(
    reactor: Any, cacert: Optional[str] = None, headers: Mapping[str, str] = MappingProxyType({})
) -> Fetcher:
    """
    A L{Fetcher} over real HTTP (HTTPS trusting the CA file C{cacert}),
    without keep-alive, giving up quickly, sending C{headers} with every
    request.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    from twisted_kv.client.txclient import trust_root

    try:
        trust = trust_root(cacert)
    except (OSError, ValueError):
        trust = None  # the nodes refuse to start, each with one line saying why
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, BrowserLikePolicyForHTTPS(trust), connectTimeout=2, pool=pool)
    client = HTTPClient(agent)

    def fetch(url: str) -> Deferred[Any]:
        d = client.get(url, headers=dict(headers), timeout=2)
        d.addCallback(lambda response: response.content())
        d.addCallback(lambda body: json.loads(body.decode("utf-8")))
        return d

    return fetch


def launcher_credentials(config: ClusterConfig, now: float, lifetime: float) -> dict[str, str]:
    """
    The headers that let C{kvcluster} read C{/cluster} from nodes with
    users: a token for the file's first user, signed with the cluster
    secret it read from the file too, valid for C{lifetime} seconds.
    """
    if not config.users:
        return {}
    user = next(iter(config.users.values()))
    token = issue_token(token_key(config.secret), user, math.ceil(now + lifetime))
    return {"Authorization": f"Bearer {token}"}


def _tolerant(write: Writer) -> Writer:
    """
    C{write}, dropping the lines it fails to write: output that nobody reads
    any more is no reason to leave nodes running.
    """

    def tolerant(line: str) -> None:
        try:
            write(line)
        except (OSError, ValueError):
            pass

    return tolerant


def _write_line(stream: Any) -> Writer:
    """
    Write lines to C{stream}, each at once.  Once a write fails (a closed
    pipe or terminal), the stream's file descriptor is pointed at
    C{/dev/null}, so that what stays buffered, flushed again at exit, adds
    no second error and no exit status of its own.
    """

    def write(line: str) -> None:
        try:
            stream.write(line + "\n")
            stream.flush()
        except BlockingIOError:
            raise  # A slow reader, not a gone one: only this line is lost.
        except (OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
            raise

    return write


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse C{kvcluster}'s command line.
    """
    parser = argparse.ArgumentParser(
        prog="kvcluster",
        description="Run every node of a twisted_kv cluster file on this machine.",
    )
    parser.add_argument(
        "config",
        nargs="?",
        default=DEFAULT_CONFIG,
        help=f"the cluster file (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on stop, SIGKILL nodes still running after this long (default: 10)",
    )
    parser.add_argument(
        "--leader-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="warn if no leader is reported within this long (default: 60)",
    )
    return parser.parse_args(list(argv))


#: The signals that stop the nodes.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _run(
    reactor: Any,
    config: ClusterConfig,
    arguments: argparse.Namespace,
    ignored: Sequence[int],
) -> Deferred[None]:
    launcher = Launcher(
        config,
        reactor,
        _fetch_json(
            reactor,
            None if config.tls is None else config.tls.ca,
            # Leader polling ends within the leader timeout.
            launcher_credentials(config, reactor.seconds(), arguments.leader_timeout + 60),
        ),
        _write_line(sys.stdout),
        _write_line(sys.stderr),
        leader_timeout=arguments.leader_timeout,
        stop_timeout=arguments.stop_timeout,
    )
    reactor.addSystemEventTrigger("before", "shutdown", launcher.stop)
    reactor.callWhenRunning(_handle_signals, reactor, launcher, ignored)
    launcher.start()
    return launcher.finished


def _handle_signals(reactor: Any, launcher: Launcher, ignored: Sequence[int]) -> None:
    """
    Stop every node on SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal was
    closed), C{kvcluster} then exiting once they have ended; restart the
    nodes that have ended on SIGUSR1.  Called once the reactor runs, after
    it has set its own handlers.

    @param ignored: the signals to leave ignored, as they were when
        C{kvcluster} started (C{nohup}, a background job of a script).
    """

    def stop(signum: int, frame: Any) -> None:
        reactor.callFromThread(launcher.stop)

    def restart(signum: int, frame: Any) -> None:
        reactor.callFromThread(launcher.restart)

    for signum in _STOP_SIGNALS:
        if signum not in ignored:
            signal.signal(signum, stop)
    signal.signal(signal.SIGUSR1, restart)


def main(argv: Optional[Iterable[str]] = None) -> None:
    """
    The C{kvcluster} console script.
    """
    from twisted.internet import task

    ignored = [s for s in _STOP_SIGNALS if signal.getsignal(s) == signal.SIG_IGN]
    arguments = parse_arguments(sys.argv[1:] if argv is None else list(argv))
    try:
        config = load_config(arguments.config)
    except ConfigError as e:
        raise SystemExit(f"kvcluster: {e}")
    problem = port_problem(config.nodes)
    if problem is not None:
        raise SystemExit(f"kvcluster: {problem}")
    task.react(_run, (config, arguments, ignored))


if __name__ == "__main__":
    main()
