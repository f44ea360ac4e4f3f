"""
What the benchmarks in this directory share: child processes that are always
cleaned up, free loopback ports, a twisted_kv cluster, an etcd cluster and a
Redis server started from scratch, a fast HTTP loader, wrk runs, CPU time
read from /proc and C{/ws} watchers.

Nothing here imports twisted_kv: the nodes run in their own processes, with
the interpreter the caller chooses (CPython or PyPy), and are driven over
HTTP only.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterable, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint

from twisted_kv.app.nodeprocess import node_environment

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
LUA = os.path.join(BENCH, "lua")

#: Ports this benchmark may use (other users of the machine keep out of it).
PORT_RANGE = range(7400, 7700)

#: Where the runs on this machine claim ports from L{PORT_RANGE}: one lock
#: file a port (L{Ports}).
PORT_LOCKS = os.path.join(tempfile.gettempdir(), "kvbench-ports")

#: Environment variable naming a file where every child's process group is
#: recorded, so that bench/run can still kill them if this process dies.
REGISTRY_ENV = "KVBENCH_PGIDS"

VALUE = b"x" * 100


class Interrupted(Exception):
    """
    A signal asked the benchmark to stop.
    """


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    """
    Turn SIGTERM and SIGHUP into L{Interrupted}, and SIGINT too, so that
    every C{finally} runs and every child is stopped.
    """
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _raise_interrupted)


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG = 1: the child gets SIGKILL if this process dies,
    # even by SIGKILL, so that no node outlives a killed benchmark.
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except Exception:
        pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Processes:
    """
    Every child process of a benchmark run.  Each runs in its own session
    (so a Ctrl-C in the terminal reaches only the benchmark, which then stops
    them in order), is killed by the kernel if the benchmark dies, and is
    listed in the registry file for bench/run's trap.
    """

    def __init__(self) -> None:
        self._children: list[subprocess.Popen] = []
        self._registry = os.environ.get(REGISTRY_ENV)
        self._directories: list[str] = []

    def remove_at_exit(self, directory: str) -> None:
        """
        Remove C{directory} in L{stop_all}, once every child is gone.
        """
        self._directories.append(directory)

    def start(
        self,
        argv: list[str],
        logfile: str,
        env: Optional[dict[str, str]] = None,
        cwd: Optional[str] = None,
    ) -> subprocess.Popen:
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._children.append(proc)
        if self._registry:
            with open(self._registry, "a") as registry:
                registry.write(f"{proc.pid}\n")
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        """
        SIGTERM the child's process group, then SIGKILL it if it is still
        there after C{timeout} seconds.
        """
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def kill(self, proc: subprocess.Popen) -> None:
        """
        SIGKILL the child alone, at once (a crash, for failover).
        """
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop_all(self) -> None:
        # Ignore further signals while cleaning up: a second Ctrl-C or a
        # SIGTERM from bench/run must not leave children behind.
        previous = {
            signum: signal.signal(signum, signal.SIG_IGN)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            for proc in reversed(self._children):
                if proc.poll() is None:
                    _signal_group(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            for proc in reversed(self._children):
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            for proc in self._children:
                _signal_group(proc.pid, signal.SIGKILL)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            self._children.clear()
            for directory in self._directories:
                shutil.rmtree(directory, ignore_errors=True)
            self._directories.clear()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class Ports:
    """
    Free TCP ports on 127.0.0.1 from C{candidates}, each handed out once,
    and to one run at a time: a port is free only if nothing is bound to it
    and no other run claimed it.  A port's child process listens on it only
    later, so a run claims each port it takes with an exclusive C{flock} of
    the port's file in C{lock_dir}, held until L{release} (or until the
    process ends, even killed: the kernel drops the lock with it).  A
    C{flock} belongs to its open file, so two L{Ports} in one process
    exclude each other as two runs do.
    """

    def __init__(self, candidates: Iterable[int] = PORT_RANGE, lock_dir: str = PORT_LOCKS) -> None:
        self._range = candidates
        self._candidates = iter(candidates)
        self._lock_dir = lock_dir
        os.makedirs(lock_dir, exist_ok=True)
        try:
            os.chmod(lock_dir, 0o777)  # every user's runs claim ports there
        except PermissionError:
            pass  # another user's, made so by their first run
        self._claims: list[int] = []

    def take(self) -> int:
        for port in self._candidates:
            claim = self._claim(port)
            if claim is None:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    os.close(claim)
                    continue
            self._claims.append(claim)
            return port
        raise RuntimeError(f"no free port left in {self._range}")

    def _claim(self, port: int) -> Optional[int]:
        """
        The open lock file of C{port}, locked, or C{None} if another run
        holds it.
        """
        claim = os.open(os.path.join(self._lock_dir, f"{port}.lock"), os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(claim)
            return None
        return claim

    def release(self) -> None:
        """
        Let other runs take the ports handed out, once nothing listens on
        them any more.
        """
        for claim in self._claims:
            os.close(claim)
        self._claims.clear()


def run_in_workdir(
    workdir: str, keep: bool, body: Callable[[Processes, Ports], int],
) -> int:
    """
    Run C{body} with a fresh L{Processes} and L{Ports} and return its exit
    status (130 if a signal interrupted it); whatever happens, stop every
    child it started, then remove C{workdir} unless C{keep}.
    """
    processes = Processes()
    ports = Ports()
    started = time.monotonic()
    status = 0
    try:
        status = body(processes, ports)
    except Interrupted as why:
        log(f"interrupted ({why}); stopping every process")
        status = 130
    finally:
        processes.stop_all()
        ports.release()
        if keep:
            log(f"logs and cluster files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        log(f"done in {time.monotonic() - started:.0f} s")
    return status


# -- HTTP, small and synchronous, for control requests ----------------------


def http(
    method: str, url: str, body: Optional[bytes] = None, timeout: float = 5.0,
    headers: Optional[dict[str, str]] = None, context: Optional[ssl.SSLContext] = None,
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def http_json(
    method: str, url: str, payload: object = None, timeout: float = 5.0,
    context: Optional[ssl.SSLContext] = None,
) -> object:
    body = None if payload is None else json.dumps(payload).encode()
    status, data = http(method, url, body, timeout, {"Content-Type": "application/json"}, context)
    if status // 100 != 2:
        raise RuntimeError(f"{method} {url}: {status} {data[:200]!r}")
    return json.loads(data)


def wait_for(what: str, check: Callable[[], object], timeout: float, step: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as error:  # not up yet
            last = error
            result = None
        if result:
            return result
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


# -- /proc -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU time of process C{pid} so far.
    """
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def machine() -> dict[str, object]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/meminfo") as info:
        total = int(info.readline().split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(total / 2**30, 1),
        "load": os.getloadavg(),
        "kernel": os.uname().release,
    }


def version(argv: list[str]) -> str:
    """
    The first line a program's version command (C{argv}) prints, or C{?}
    if it cannot be run or prints nothing.
    """
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"


# -- twisted_kv --------------------------------------------------------------

_TWISTD = (
    "import sys; sys.argv[0] = 'twistd'; "
    "from twisted.scripts.twistd import run; run()"
)

class Runtime:
    """
    The interpreter a twisted_kv node runs under.

    @ivar name: C{cpython} or C{pypy3}.
    @ivar python: the interpreter's path.
    """

    def __init__(self, name: str, python: str) -> None:
        self.name = name
        self.python = python

    @property
    def label(self) -> str:
        return {"cpython": "CPython", "pypy3": "PyPy"}.get(self.name, self.name)

    def environment(self, workdir: str) -> dict[str, str]:
        env = node_environment(os.environ)
        path = [ROOT]
        if env.get("PYTHONPATH"):
            path.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(path)
        env.pop(REGISTRY_ENV, None)
        return env


class KvCluster:
    """
    A three-node twisted_kv cluster on 127.0.0.1, its cluster file in
    C{workdir}, every tunable at its default (all guarantees on).

    With C{data_dir}, the nodes keep their data there (node nX in
    C{data_dir/nX/}) with the given C{fsync} policy; without it, in memory.
    C{settings} adds further C{[cluster]} lines (C{replicas = 3}).  With
    C{tls_dir} (a folder made by C{kvctl certs create} for 127.0.0.1), the
    cluster has a C{[tls]} section: HTTPS, FTPS and mutual TLS between peers.
    """

    def __init__(
        self,
        processes: Processes,
        ports: Ports,
        workdir: str,
        runtime: Runtime,
        name: str = "bench",
        wrapper: Optional[list[str]] = None,
        extra_env: Optional[dict[str, Callable[[str], str]]] = None,
        data_dir: Optional[str] = None,
        fsync: str = "always",
        settings: Optional[dict[str, str]] = None,
        tls_dir: Optional[str] = None,
    ) -> None:
        self.processes = processes
        self.tls = tls_context(tls_dir)
        self.workdir = os.path.join(workdir, name)
        os.makedirs(self.workdir, exist_ok=True)
        self.runtime = runtime
        self.partitions = 64
        self.node_ids = ["n1", "n2", "n3"]
        self.http_ports = {}
        self.data_dir = os.path.abspath(data_dir) if data_dir else None
        self.fsync = fsync if data_dir else None
        lines = [
            "[cluster]",
            f"name = {name}",
            f"secret = {name}-{os.urandom(8).hex()}",
        ]
        if self.data_dir:
            lines += [f"data_dir = {self.data_dir}", f"fsync = {fsync}"]
        lines += [f"{key} = {value}" for key, value in (settings or {}).items()]
        lines.append("")
        for node in self.node_ids:
            self.http_ports[node] = ports.take()
            lines += [
                f"[node:{node}]",
                "host = 127.0.0.1",
                f"http_port = {self.http_ports[node]}",
                f"peer_port = {ports.take()}",
                f"ftp_port = {ports.take()}",
                "",
            ]
        if tls_dir:
            folder = os.path.abspath(tls_dir)
            lines += ["[tls]", f"ca = {folder}/ca.pem", f"cert = {folder}/{{node}}.pem",
                      f"key = {folder}/{{node}}.key", ""]
        self.config = os.path.join(self.workdir, "cluster.ini")
        with open(self.config, "w") as out:
            out.write("\n".join(lines))
        self._wrapper = wrapper or ["-c", _TWISTD]
        self._extra_env = extra_env or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.leader: Optional[str] = None

    def url(self, node: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.http_ports[node]}"

    def log(self, node: str) -> str:
        return os.path.join(self.workdir, f"{node}.log")

    def node_data_dir(self, node: str) -> Optional[str]:
        return os.path.join(self.data_dir, node) if self.data_dir else None

    def start_node(self, node: str) -> subprocess.Popen:
        """
        Start node C{node} (again), its output appended to its log.
        """
        node_env = self.runtime.environment(self.workdir)
        for key, make in self._extra_env.items():
            node_env[key] = make(node)
        argv = [self.runtime.python, *self._wrapper, "-n", "--pidfile=", "kvnode",
                "--config", self.config, "--node", node]
        self.procs[node] = self.processes.start(argv, self.log(node), node_env, self.workdir)
        return self.procs[node]

    def stop_node(self, node: str, timeout: float = 60.0) -> None:
        """
        SIGTERM node C{node} and wait for it to exit (SIGKILL after
        C{timeout} seconds).
        """
        self.processes.stop(self.procs[node], timeout)

    def start(self, timeout: float = 90.0) -> None:
        for node in self.node_ids:
            self.start_node(node)
        try:
            self.wait_ready(timeout)
        except BaseException:
            for node in self.node_ids:
                log(f"{node} log tail:\n" + tail(self.log(node)))
            raise

    def cluster_view(self, node: str, timeout: float = 2.0) -> dict:
        view = http_json("GET", self.url(node) + "/cluster", timeout=timeout, context=self.tls)
        assert isinstance(view, dict)
        return view

    def wait_ready(self, timeout: float) -> None:
        """
        Wait until every node agrees on a leader and reports every node
        alive and synced, and a write through the leader succeeds.
        """

        def ready() -> Optional[str]:
            for node, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"twisted_kv node {node} exited ({proc.returncode})")
            leaders = set()
            for node in self.node_ids:
                view = self.cluster_view(node)
                leaders.add(view.get("leader"))
                states = {n["id"]: (n["state"], n["synced"]) for n in view["nodes"]}
                if any(states.get(n) != ("alive", True) for n in self.node_ids):
                    return None
            if len(leaders) != 1 or None in leaders:
                return None
            return leaders.pop()

        leader = wait_for("a twisted_kv leader", ready, timeout)
        assert isinstance(leader, str)
        self.leader = leader
        wait_for(
            "a first write",
            lambda: http("PUT", self.url(leader) + "/kv/bench/ready", b"1", context=self.tls)[0] // 100
            == 2,
            timeout,
        )

    def current_leader(self) -> str:
        leader = self.cluster_view(self.node_ids[0])["leader"]
        assert isinstance(leader, str)
        self.leader = leader
        return leader

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs.values() if proc.poll() is None]

    def stop(self) -> None:
        for proc in self.procs.values():
            self.processes.stop(proc)


# -- etcd --------------------------------------------------------------------


class EtcdCluster:
    """
    A three-member etcd cluster on 127.0.0.1 with its data on tmpfs, or in
    C{datadir} if given (etcd fsyncs its write-ahead log before it answers
    a write, so on a disk each write waits for the disk).  With C{tls_dir}
    (a folder made by C{kvctl certs create} for 127.0.0.1: C{ca.pem},
    C{n1.pem}, C{n1.key}, ...), clients and peers speak TLS, peers with
    client certificates (C{--peer-client-cert-auth}).
    """

    def __init__(self, processes: Processes, ports: Ports, workdir: str,
                 datadir: Optional[str] = None, name: str = "etcd",
                 tls_dir: Optional[str] = None) -> None:
        self.processes = processes
        self.tls = tls_context(tls_dir)
        self.tls_dir = os.path.abspath(tls_dir) if tls_dir else None
        self.workdir = os.path.join(workdir, name)
        os.makedirs(self.workdir, exist_ok=True)
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.datadir = os.path.abspath(datadir) if datadir else os.path.join(
            shm or self.workdir, f"kvbench-etcd-{os.getpid()}-{os.urandom(4).hex()}"
        )
        processes.remove_at_exit(self.datadir)
        self.names = ["e1", "e2", "e3"]
        self.client_ports = {name: ports.take() for name in self.names}
        self.peer_ports = {name: ports.take() for name in self.names}
        self.procs: dict[str, subprocess.Popen] = {}

    def url(self, name: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_ports[name]}"

    def peer_url(self, name: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.peer_ports[name]}"

    def _tls_options(self, name: str) -> list[str]:
        if self.tls_dir is None:
            return []
        cert = os.path.join(self.tls_dir, f"n{self.names.index(name) + 1}")
        ca = os.path.join(self.tls_dir, "ca.pem")
        return [
            "--cert-file", cert + ".pem", "--key-file", cert + ".key",
            "--peer-cert-file", cert + ".pem", "--peer-key-file", cert + ".key",
            "--peer-trusted-ca-file", ca, "--peer-client-cert-auth",
        ]

    def start(self, timeout: float = 60.0) -> None:
        cluster = ",".join(f"{name}={self.peer_url(name)}" for name in self.names)
        token = f"kvbench-{os.urandom(4).hex()}"
        for name in self.names:
            argv = [
                "etcd", "--name", name,
                "--data-dir", os.path.join(self.datadir, name),
                "--listen-client-urls", self.url(name),
                "--advertise-client-urls", self.url(name),
                "--listen-peer-urls", self.peer_url(name),
                "--initial-advertise-peer-urls", self.peer_url(name),
                "--initial-cluster", cluster,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
                "--log-level", "warn",
                *self._tls_options(name),
            ]
            self.procs[name] = self.processes.start(
                argv, os.path.join(self.workdir, f"{name}.log"), cwd=self.workdir
            )
        wait_for("etcd", lambda: all(self._put_ok(name) for name in self.names), timeout)

    def _put_ok(self, name: str) -> bool:
        for proc_name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"etcd {proc_name} exited ({proc.returncode})")
        http_json("POST", self.url(name) + "/v3/kv/put", {"key": b64(b"bench/ready"), "value": b64(b"1")},
                  context=self.tls)
        return True

    def leader(self) -> str:
        """
        The name of the member that is the Raft leader.
        """
        for name in self.names:
            status = http_json("POST", self.url(name) + "/v3/maintenance/status", {}, context=self.tls)
            assert isinstance(status, dict)
            if status.get("leader") == status["header"]["member_id"]:
                return name
        raise RuntimeError("etcd reports no leader")

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs.values() if proc.poll() is None]

    def stop(self) -> None:
        for proc in self.procs.values():
            self.processes.stop(proc)
        shutil.rmtree(self.datadir, ignore_errors=True)


def tls_context(tls_dir: Optional[str]) -> Optional[ssl.SSLContext]:
    """
    A client context trusting the CA of C{tls_dir} (C{ca.pem}), or C{None}
    without one.
    """
    if not tls_dir:
        return None
    return ssl.create_default_context(cafile=os.path.join(tls_dir, "ca.pem"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- Redis -------------------------------------------------------------------


class Redis:
    def __init__(self, processes: Processes, ports: Ports, workdir: str) -> None:
        self.processes = processes
        self.workdir = os.path.join(workdir, "redis")
        os.makedirs(self.workdir, exist_ok=True)
        self.port = ports.take()
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        argv = [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--dir", self.workdir,
            "--protected-mode", "yes",
        ]
        self.proc = self.processes.start(argv, os.path.join(self.workdir, "redis.log"))

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")

        wait_for("redis", ping, 30)

    def stop(self) -> None:
        if self.proc is not None:
            self.processes.stop(self.proc)


# -- a fast HTTP/1.1 keep-alive loader ---------------------------------------


class LoadResult:
    def __init__(self) -> None:
        self.ok = 0
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.seconds = 0.0

    @property
    def failed(self) -> int:
        return sum(self.statuses.values()) + self.errors

    def __repr__(self) -> str:
        return (f"{self.ok} ok in {self.seconds:.1f} s "
                f"({self.ok / max(self.seconds, 1e-9):.0f}/s), other statuses {self.statuses}, "
                f"errors {self.errors}")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _load(
    targets: list[tuple[str, int]],
    make: Callable[[int], bytes],
    count: int,
    connections: int,
    result: LoadResult,
    on_done: Optional[Callable[[int, int], None]] = None,
    tls: Optional[ssl.SSLContext] = None,
) -> None:
    counter = iter(range(count))

    async def worker(index: int) -> None:
        host, port = targets[index % len(targets)]
        reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        try:
            for i in counter:
                writer.write(make(i))
                status, _ = await _read_response(reader)
                if status // 100 == 2:
                    result.ok += 1
                else:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                if on_done is not None:
                    on_done(i, status)
        finally:
            writer.close()

    outcomes = await asyncio.gather(
        *(worker(i) for i in range(connections)), return_exceptions=True
    )
    result.errors += sum(1 for outcome in outcomes if isinstance(outcome, BaseException))


def load(
    targets: list[tuple[str, int]],
    make: Callable[[int], bytes],
    count: int,
    connections: int = 64,
    progress: Optional[str] = None,
    tls: Optional[ssl.SSLContext] = None,
) -> LoadResult:
    """
    Send C{count} requests C{make(0) .. make(count - 1)} (raw HTTP/1.1
    bytes) over C{connections} keep-alive connections (TLS with the client
    context C{tls}), spread over C{targets}.
    """
    result = LoadResult()
    started = time.monotonic()
    last = [started]

    def on_done(i: int, status: int) -> None:
        now = time.monotonic()
        if progress and now - last[0] > 10:
            last[0] = now
            log(f"{progress}: {result.ok}/{count} in {now - started:.0f} s")

    asyncio.run(_load(targets, make, count, connections, result, on_done, tls))
    result.seconds = time.monotonic() - started
    return result


def kv_put_request(key: str, value: bytes = VALUE) -> bytes:
    return (
        f"PUT /kv/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(value)}\r\n\r\n"
    ).encode() + value


def kv_delete_request(key: str) -> bytes:
    return f"DELETE /kv/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def etcd_put_request(key: str, value: bytes = VALUE) -> bytes:
    body = json.dumps({"key": b64(key.encode()), "value": b64(value)}).encode()
    return (
        f"POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# -- wrk ----------------------------------------------------------------------


def run_wrk(
    url: str,
    script: str,
    args: list[str],
    connections: int,
    duration: float,
    server_pids: Iterable[int],
    threads: int = 2,
    options: Iterable[str] = (),
) -> dict:
    """
    One wrk run (with the further wrk C{options}, such as C{-H}); returns
    its figures plus the CPU time the server processes used per request.
    """
    pids = list(server_pids)
    before = sum(cpu_seconds(pid) for pid in pids)
    argv = [
        "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration:g}s",
        "--timeout", "10s", *options, "-s", os.path.join(LUA, script), url, "--", *args,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    after = sum(cpu_seconds(pid) for pid in pids)
    for line in done.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            figures = json.loads(line[len("BENCHJSON "):])
            break
    else:
        raise RuntimeError(f"wrk printed no figures: {done.stdout}\n{done.stderr}")
    seconds = figures["duration_us"] / 1e6
    requests = figures["requests"]
    return {
        "ops": requests / seconds if seconds else 0.0,
        "p50_ms": figures["p50_us"] / 1000,
        "p99_ms": figures["p99_us"] / 1000,
        "requests": requests,
        "non2xx": figures["non2xx"],
        "errors": figures["connect"] + figures["read"] + figures["write"] + figures["timeout"],
        "cpu_us_per_op": (after - before) * 1e6 / requests if requests else 0.0,
    }


# -- WebSocket watchers -------------------------------------------------------


class Watcher(WebSocketClientProtocol):
    """
    Watches C{factory.prefix} and counts the C{put} frames without decoding
    them, so that counting stays cheaper than the node's sending.  With
    C{factory.timed}, also notes when each key arrives and fires its waiter
    in C{factory.waiting} with that time.
    """

    factory: WatcherFactory
    close_code: Optional[int] = None
    close_reason: Optional[str] = None

    def onOpen(self) -> None:
        self.received = 0
        self.arrivals: dict[str, float] = {}
        self.sendMessage(json.dumps({"op": "watch", "prefix": self.factory.prefix}).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not payload.startswith(b'{"type":"put"'):
            if json.loads(payload)["type"] == "watching":
                self.factory.ready.callback(self)
            return
        self.received += 1
        if self.factory.timed:
            key = json.loads(payload)["key"]
            arrived = self.arrivals[key] = time.perf_counter()
            waiter = self.factory.waiting.pop(key, None)
            if waiter is not None:
                waiter.callback(arrived)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self.close_code = code if code is not None else 1006
        self.close_reason = reason


class WatcherFactory(WebSocketClientFactory):
    """
    Settings of one L{Watcher}; C{ready} fires with it once it is watching.
    """

    protocol = Watcher

    def __init__(self, url: str, reactor: Any, prefix: str, timed: bool) -> None:
        super().__init__(url, reactor=reactor)
        self.setProtocolOptions(utf8validateIncoming=False)
        self.prefix = prefix
        self.timed = timed
        self.waiting: dict[str, defer.Deferred[float]] = {}
        self.ready: defer.Deferred[Watcher] = defer.Deferred()


def connect_watcher(
    reactor: Any, url: str, prefix: str, timed: bool = False
) -> defer.Deferred[Watcher]:
    """
    A L{Watcher} of C{prefix} at C{url} (C{ws://host:port/ws}), once the
    node has confirmed the watch.
    """
    factory = WatcherFactory(url, reactor, prefix, timed)
    connecting = TCP4ClientEndpoint(reactor, factory.host, factory.port).connect(factory)
    return connecting.addCallback(lambda _: factory.ready)


def percentile(values: list[float], fraction: float) -> float:
    """
    The value C{fraction} of the way through C{values}, sorted.
    """
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def filesystem_type(path: str) -> str:
    """
    The type of the file system holding C{path} (C{ext4}, C{tmpfs}, ...), as
    the kernel's mount table names it; C{stat -f} where there is none.  (C{stat
    -f} alone says C{ext2/ext3} for ext4: the three share a magic number.)
    """
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as mounts:
            found = mount_type(mounts.read(), os.path.realpath(path))
    except OSError:
        found = "?"
    if found != "?":
        return found
    try:
        done = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True,
                              text=True, timeout=10)
        return done.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def mount_type(mounts: str, path: str) -> str:
    """
    The type of the file system that C{path} (absolute, symbolic links
    resolved) is on, from C{mounts}, the text of C{/proc/mounts}: that of
    the mount point holding it most closely (the longest), and of the last
    entry for it (a later mount on the same point hides the earlier ones);
    C{"?"} if none holds it.  Mount points there spell a space, tab,
    newline or backslash as an octal escape (C{\\040}).
    """
    found, longest = "?", -1
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda octal: chr(int(octal.group(1), 8)), fields[1])
        inside = point == "/" or path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= longest:
            found, longest = fields[2], len(point)
    return found


def directory_bytes(path: str) -> int:
    """
    The bytes the files under C{path} hold (their sizes, not the blocks).
    """
    total = 0
    for parent, _, names in os.walk(path):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(parent, name))
            except OSError:
                pass
    return total


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as source:
            return b"\n".join(source.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def keys_for_partitions(partitions: int, prefix: str) -> list[str]:
    """
    One client key per partition: C{result[p]} hashes to partition C{p}
    (twisted_kv hashes the store key, "k" + the client key, with CRC-32).
    """
    import zlib

    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        key = f"{prefix}{i}"
        found.setdefault(zlib.crc32(("k" + key).encode()) % partitions, key)
        i += 1
    return [found[p] for p in range(partitions)]


def shuffled(items: list) -> list:
    items = list(items)
    random.shuffle(items)
    return items
