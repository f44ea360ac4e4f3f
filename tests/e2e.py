# -*- test-case-name: tests.test_e2e_cluster,tests.test_e2e_peer_port -*-
"""
Real-process clusters for the end-to-end tests (and the failover bench).

L{RealCluster} writes a cluster file with free loopback ports and runs one
real node per C{[node:ID]} section, each the command an operator types::

    twistd -n --pidfile= kvnode --config FILE --node ID

(run as C{sys.executable -c ...}, since C{twisted.scripts.twistd} has no
C{__main__} block), spawned on the running reactor.  Every node's standard
output and error are kept in memory and appended to C{ID.log} in the
cluster's directory.  The helpers return L{Deferred}s, and every wait is a
poll on the real reactor with a deadline, never a sleep::

    cluster = RealCluster(3, self.mktemp(), election_timeout="1s")
    self.addCleanup(cluster.stop_all)
    await cluster.start()                 # all nodes at once, then a leader
    leader = await cluster.wait_for_leader()
    reply = await cluster.request("PUT", "n2", "/kv/greeting", b"hello")
    await cluster.kill(leader)            # SIGKILL
    await cluster.restart(leader)         # the same node, empty

No node outlives the harness: L{RealCluster.stop_all} (registered with
C{addCleanup} before anything starts) stops every node, SIGTERM first and
SIGKILL for stragglers, and waits until each has exited; each node also
asks the kernel to kill it if the process that started it dies (Linux).

A test that needs the nodes calls L{RealCluster.start}, which raises
L{SkipTest} when C{twistd} has no C{kvnode} plugin.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from typing import Any, Iterable, Mapping, Optional, Sequence, Union
from urllib.parse import quote

import treq
from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    ensureDeferred,
)
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers

from tests.polling import WaitTimeout, poll
from twisted_kv.app import nodeprocess
from twisted_kv.app.certs import create_certificates
from twisted_kv.app.nodeprocess import NodeProcess, describe_exit
from twisted_kv.client._logic import authorization
from twisted_kv.client.txclient import trust_root
from twisted_kv.core.config import load_config

__all__ = [
    "NodeDied",
    "RealCluster",
    "Reply",
    "free_ports",
    "keys_covering_partitions",
    "kv_path",
    "node_command",
    "run_twistd",
    "write_config",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHECK_PLUGIN = (
    "import sys\n"
    "from twisted.application.service import IServiceMaker\n"
    "from twisted.plugin import getPlugins\n"
    "sys.exit(0 if any(p.tapname == 'kvnode' for p in getPlugins(IServiceMaker)) else 3)\n"
)

_plugin_found: Optional[bool] = None

#: What a node's output says when one of its ports was taken meanwhile.
_PORT_TAKEN = (b"CannotListenError", b"Address already in use", b"cannot listen")


class NodeDied(AssertionError):
    """
    A node process ended without being asked to.
    """


# -- pure helpers (also used by bench/failover.py) ----------------------------


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """
    C{count} distinct ports that were free a moment ago: each is bound
    (port 0, so the kernel picks), all are read while still bound, then
    all are closed.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_config(
    path: str,
    node_ports: Sequence[tuple[str, int, int, int]],
    *,
    name: str = "e2e",
    secret: str = "e2e-secret-not-for-production",
    replicas: str = "majority",
    ftp_users: Optional[dict[str, str]] = None,
    host: str = "127.0.0.1",
    hosts: Optional[Mapping[str, str]] = None,
    tls: bool = False,
    node_keys: Optional[Mapping[str, Mapping[str, str]]] = None,
    users: Optional[Mapping[str, Mapping[str, str]]] = None,
    **tunables: Any,
) -> str:
    """
    Write a cluster file (the format the README's Configuration section
    documents).

    @param node_ports: C{(node id, http_port, peer_port, ftp_port)} per node.
    @param hosts: the address of each node that does not listen on C{host}.
    @param node_keys: further keys of some nodes' sections, e.g.
        C{{"n1": {"bind": "0.0.0.0"}}}.
    @param replicas: copies of each key, C{"majority"} or a number.
    @param ftp_users: user name to password spec; C{alice = plain:wonderland}
        by default.
    @param tls: add a C{[tls]} section naming C{certs/ca.pem},
        C{certs/NODE.pem} and C{certs/NODE.key} (as C{kvctl certs create
        certs} writes them).
    @param users: user name to the keys of its C{[user:NAME]} section.
    @param tunables: further C{[cluster]} keys, e.g. C{election_timeout="1s"}.
    @return: the file's text.
    """
    if ftp_users is None:
        ftp_users = {"alice": "plain:wonderland"}
    lines = [
        "; written by tests/e2e.py",
        "[cluster]",
        f"name = {name}",
        f"secret = {secret}",
        f"replicas = {replicas}",
        f"data_dir = {tunables.pop('data_dir', '')}".rstrip(" "),
    ]
    lines += [f"{key} = {value}" for key, value in tunables.items()]
    for node_id, http_port, peer_port, ftp_port in node_ports:
        lines += [
            "",
            f"[node:{node_id}]",
            f"host = {(hosts or {}).get(node_id, host)}",
            f"http_port = {http_port}",
            f"peer_port = {peer_port}",
            f"ftp_port = {ftp_port}",
        ]
        lines += [f"{key} = {value}" for key, value in (node_keys or {}).get(node_id, {}).items()]
    lines += ["", "[ftp_users]"] + [f"{user} = {spec}" for user, spec in ftp_users.items()]
    if tls:
        lines += ["", "[tls]", "ca = certs/ca.pem", "cert = certs/{node}.pem", "key = certs/{node}.key"]
    for user, keys in (users or {}).items():
        lines += ["", f"[user:{user}]"] + [f"{key} = {value}" for key, value in keys.items()]
    text = "\n".join(lines) + "\n"
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    return text


def node_command(config_path: str, node_id: str) -> list[str]:
    """
    The command line of one node: C{twistd -n --pidfile= kvnode ...} with
    this Python, as C{kvcluster} runs it, dying with the harness, but in
    the harness's process group.
    """
    return nodeprocess.node_command(config_path, node_id, own_group=False)


def node_environment() -> dict[str, str]:
    """
    The nodes' environment: C{kvcluster}'s (see
    L{nodeprocess.node_environment}), with the repository on C{PYTHONPATH}
    (so the plugin is found even without an install) and this process's
    pid, which a node started by this process checks.
    """
    env = nodeprocess.node_environment(os.environ, parent=os.getpid())
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


def kv_path(key: str) -> str:
    """
    The request path of C{key}: C{/kv/} and the key, percent-encoded as
    UTF-8 with C{/} kept.
    """
    return "/kv/" + quote(key, safe="/")


def keys_covering_partitions(prefix: str, partitions: int = 64) -> list[str]:
    """
    One client key per partition of the key space (C{partitions} is the
    cluster's C{partitions} setting), named C{PREFIX<n>}: writing all of
    them needs every partition's primary.
    """
    from twisted_kv.core.keyspace import user_key
    from twisted_kv.core.placement import partition_of

    chosen: dict[int, str] = {}
    n = 0
    while len(chosen) < partitions:
        key = f"{prefix}{n}"
        chosen.setdefault(partition_of(user_key(key), partitions), key)
        n += 1
    return [chosen[p] for p in sorted(chosen)]


def run_twistd(args: Sequence[str], cwd: Optional[str] = None, reactor: Any = None) -> Deferred:
    """
    Run C{twistd ARGS} to completion, as the nodes are run.

    @return: a L{Deferred} firing with C{(stdout, stderr, exit code or
        signal)}, the outputs as text.
    """
    reactor = reactor or _global_reactor
    d = getProcessOutputAndValue(
        sys.executable,
        nodeprocess.twistd_command(args, own_group=False)[1:],
        env=node_environment(),
        path=cwd,
        reactor=reactor,
    )
    return d.addCallback(
        lambda r: (r[0].decode("utf-8", "replace"), r[1].decode("utf-8", "replace"), r[2])
    )


class Reply:
    """
    A whole HTTP answer.

    @ivar status: the status code.
    @ivar headers: the L{Headers}.
    @ivar body: the body, as bytes.
    @ivar elapsed: seconds from sending the request to the end of the body.
    """

    def __init__(self, status: int, headers: Headers, body: bytes, elapsed: float) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = elapsed

    def header(self, name: str) -> Optional[str]:
        """
        The first value of header C{name}, or C{None}.
        """
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:200]!r}>"


class RealCluster:
    """
    A cluster of real C{twistd kvnode} processes on loopback.

    @ivar node_ids: C{n1} ... C{nSIZE}, in file order.
    @ivar directory: where the cluster file and the logs are.
    @ivar config_path: the cluster file.
    @ivar secret: the cluster secret.
    @ivar ports: node id to C{(http_port, peer_port, ftp_port)}.
    @ivar http: a treq L{treq.client.HTTPClient} whose connections are
        closed by L{stop_all}.
    @ivar ca_path: with C{tls}, the cluster's CA certificate (the nodes'
        certificates and keys are beside it, made by C{kvctl certs
        create}); C{None} without.
    @ivar credentials: the headers sent with the cluster's own requests
        (and by default with L{request}): Basic for C{login}, when given.
    """

    def __init__(
        self,
        size: int,
        tmpdir: str,
        *,
        reactor: Any = None,
        name: str = "e2e",
        secret: str = "e2e-secret-not-for-production",
        replicas: Any = "majority",
        ftp_users: Optional[dict[str, str]] = None,
        tls: bool = False,
        users: Optional[Mapping[str, Mapping[str, str]]] = None,
        login: Optional[str] = None,
        **tunables: Any,
    ) -> None:
        """
        @param users: the C{[user:NAME]} sections: user name to their keys.
        @param login: C{NAME:PASSWORD} of the user the cluster's own
            requests log in as (one that may read C{/cluster}).
        """
        self.reactor = reactor or _global_reactor
        self.tls = tls
        self.users = users
        self.credentials = authorization(user=login)
        self.node_ids = [f"n{i}" for i in range(1, size + 1)]
        self.directory = os.path.abspath(tmpdir)
        os.makedirs(self.directory, exist_ok=True)
        self.config_path = os.path.join(self.directory, "cluster.ini")
        self.name = name
        self.secret = secret
        self.replicas = replicas
        self.ftp_users = ftp_users
        self.tunables = tunables
        self.ports: dict[str, tuple[int, int, int]] = {}
        self._processes: dict[str, NodeProcess] = {}
        #: Where each node's current run starts in its output.
        self._run_start: dict[str, int] = {}
        #: The nodes asked to end, whose end is no failure.
        self._ending: set[str] = set()
        self._output: dict[str, bytearray] = {node_id: bytearray() for node_id in self.node_ids}
        self._stopping = False
        self.pool = HTTPConnectionPool(self.reactor, persistent=True)
        self.pool.maxPersistentPerHost = 16
        self.pool.retryAutomatically = False
        #: The nodes added while the cluster runs, each with the member it
        #: joined through (C{--join}).
        self.joined: dict[str, str] = {}
        self.join_config_path = os.path.join(self.directory, "join.ini")
        self._write_config()
        self.ca_path: Optional[str] = None
        if tls:
            self.ca_path = os.path.join(self.directory, "certs", "ca.pem")
            create_certificates(load_config(self.config_path), os.path.dirname(self.ca_path))
        self.http = HTTPClient(
            Agent(self.reactor, BrowserLikePolicyForHTTPS(trust_root(self.ca_path)), pool=self.pool)
        )

    # -- addresses ------------------------------------------------------------

    def host(self, node_id: str) -> str:
        """
        The address node C{node_id} listens on.
        """
        return "127.0.0.1"

    def url(self, node_id: str, path: str = "") -> str:
        """
        The URL of C{path} on node C{node_id}'s HTTP port.
        """
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host(node_id)}:{self.ports[node_id][0]}{path}"

    def ws_url(self, node_id: str) -> str:
        """
        The WebSocket URL (C{/ws}) of node C{node_id}.
        """
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{self.host(node_id)}:{self.ports[node_id][0]}/ws"

    def ftp_url(self, node_id: str, user: str = "alice", password: str = "wonderland") -> str:
        """
        The FTP URL of node C{node_id}, with credentials (the default user
        of L{write_config}).
        """
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"ftp://{credentials}@{self.host(node_id)}:{self.ports[node_id][2]}/"

    def http_port(self, node_id: str) -> int:
        return self.ports[node_id][0]

    def peer_port(self, node_id: str) -> int:
        return self.ports[node_id][1]

    def ftp_port(self, node_id: str) -> int:
        return self.ports[node_id][2]

    # -- processes ----------------------------------------------------------

    def running(self, node_id: str) -> bool:
        process = self._processes.get(node_id)
        return process is not None and process.running

    def live_nodes(self) -> list[str]:
        """
        The nodes whose process is running, in file order.
        """
        return [node_id for node_id in self.node_ids if self.running(node_id)]

    def logs(self, node_id: str, since: int = 0) -> str:
        """
        Everything node C{node_id} wrote, over all its runs, as text.

        @param since: a L{log_size} taken earlier: only what came after it.
        """
        return bytes(self._output[node_id][since:]).decode("utf-8", "replace")

    def log_size(self, node_id: str) -> int:
        """
        A position in node C{node_id}'s output, for L{logs}'s C{since}.
        """
        return len(self._output[node_id])

    def log_path(self, node_id: str) -> str:
        return os.path.join(self.directory, f"{node_id}.log")

    def start(self) -> Deferred[str]:
        """
        Start every node at once and wait for an agreed leader and every node
        in sync (L{wait_for_leader}).  If a node cannot listen (another
        program took one of the free ports meanwhile), start over with new
        ports, twice at most.

        @return: fires with the leader's id; fails with L{SkipTest} when
            twistd has no C{kvnode} plugin, L{NodeDied} when a node ends
            (with its log's tail) and L{WaitTimeout} when the nodes do not
            settle within 30 seconds.
        """
        return ensureDeferred(self._start())

    async def _start(self, timeout: float = 30.0) -> str:
        await self._require_plugin()
        for attempt in range(3):
            for node_id in self.node_ids:
                self._spawn(node_id)
            try:
                await poll(self._all_healthy, timeout, "every node to serve /health")
            except _PortTaken:
                if attempt == 2:
                    raise
                await self._stop_all_processes(kill=True)
                self._write_config()
                continue
            return await self.wait_for_leader(timeout=timeout)
        raise AssertionError("unreachable")

    async def _require_plugin(self) -> None:
        global _plugin_found
        if _plugin_found is None:
            _, _, code = await getProcessOutputAndValue(
                sys.executable, ["-c", _CHECK_PLUGIN], env=node_environment(), reactor=self.reactor
            )
            _plugin_found = code == 0
        if not _plugin_found:
            raise SkipTest("twistd has no kvnode plugin (pip install -e . first)")

    def _choose_ports(self) -> dict[str, tuple[int, int, int]]:
        """
        The HTTP, peer and FTP ports of every node: free loopback ports.
        """
        ports = free_ports(3 * len(self.node_ids))
        return {
            node_id: (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2])
            for i, node_id in enumerate(self.node_ids)
        }

    def _write_config(self) -> None:
        self.ports = self._choose_ports()
        write_config(
            self.config_path,
            [(node_id, *self.ports[node_id]) for node_id in self.node_ids],
            hosts={node_id: self.host(node_id) for node_id in self.node_ids},
            node_keys={node_id: self._node_keys(node_id) for node_id in self.node_ids},
            name=self.name,
            secret=self.secret,
            replicas=str(self.replicas),
            ftp_users=self.ftp_users,
            tls=self.tls,
            users=self.users,
            **self.tunables,
        )

    def _node_keys(self, node_id: str) -> dict[str, str]:
        """
        Keys of node C{node_id}'s section besides its host and ports: none.
        """
        return {}

    def _spawn(self, node_id: str) -> NodeProcess:
        if self.running(node_id):
            raise RuntimeError(f"{node_id} is already running")
        if self._stopping:
            raise RuntimeError("the cluster is being stopped")
        log_path = self.log_path(node_id)
        output = self._output[node_id]
        banner = f"=== e2e harness: starting {node_id} ===\n".encode()
        output += banner
        with open(log_path, "ab") as file:
            file.write(banner)

        def received(fd: int, data: bytes) -> None:
            output.extend(data)
            with open(log_path, "ab") as file:
                file.write(data)

        process = NodeProcess(node_id, received)
        self._processes[node_id] = process
        self._run_start[node_id] = len(output)
        self._ending.discard(node_id)
        command = self._command(node_id)
        self.reactor.spawnProcess(
            process, command[0], command, env=node_environment(), path=self.directory
        )
        return process

    def _command(self, node_id: str) -> list[str]:
        """
        The command line that runs node C{node_id}, the program first: an
        added node's names only C{[cluster]} and the member to join through.
        """
        if node_id in self.joined:
            via = self.joined[node_id]
            return node_command(self.join_config_path, node_id) + ["--join", self.url(via)]
        return node_command(self.config_path, node_id)

    # -- membership -------------------------------------------------------------

    def add_node(self, node_id: str, via: str, timeout: float = 30.0) -> Deferred[None]:
        """
        Add node C{node_id} on free ports through node C{via} (C{POST
        /cluster/nodes}), start it with C{--join} and wait until it serves
        C{/health}.
        """

        async def add() -> None:
            http, peer, ftp = free_ports(3)
            fields = {"id": node_id, "host": self.host(node_id), "http_port": http,
                      "peer_port": peer, "ftp_port": ftp}
            reply = await self._change_members(
                "POST", via, "/cluster/nodes", json.dumps(fields).encode()
            )
            if reply.status != 202:
                raise AssertionError(f"adding {node_id}: {reply!r}")
            self.ports[node_id] = (http, peer, ftp)
            self.joined[node_id] = via
            self.node_ids.append(node_id)
            self._output[node_id] = bytearray()
            write_config(
                self.join_config_path, [], name=self.name, secret=self.secret,
                replicas=str(self.replicas), ftp_users=self.ftp_users, **self.tunables,
            )
            await self.restart(node_id, timeout)

        return ensureDeferred(add())

    def remove_node(self, node_id: str, via: str) -> Deferred[Reply]:
        """
        Ask node C{via} to remove node C{node_id} (C{DELETE
        /cluster/nodes/ID}); the answer comes once the change is committed,
        while the node's copies move (L{change_done}).
        """
        return ensureDeferred(self._change_members("DELETE", via, f"/cluster/nodes/{node_id}"))

    async def _change_members(
        self, method: str, via: str, path: str, body: Optional[bytes] = None, timeout: float = 15.0
    ) -> Reply:
        """
        Send a membership change, again while it is answered C{503} (refused
        before anything was done: say, while a leader is being elected).
        """

        async def sent() -> Optional[Reply]:
            reply = await self.request(
                method, via, path, body, {"Content-Type": "application/json"}, timeout=timeout
            )
            return None if reply.status == 503 else reply

        return await poll(sent, timeout, f"{method} {path} through {via}", reactor=self.reactor)

    def change_done(self, via: str, timeout: float = 30.0) -> Deferred[dict]:
        """
        Wait until node C{via}'s C{/cluster} shows no membership change in
        progress and no partition moving; fire with that view.
        """

        async def done() -> Optional[dict]:
            view = await self._try(self.cluster_view(via, timeout=2))
            if view is None or view["change"] is not None or view["moving_partitions"]:
                return None
            return view

        return ensureDeferred(poll(done, timeout, "the membership change to end", reactor=self.reactor))

    def forget(self, node_id: str) -> Deferred[None]:
        """
        Stop node C{node_id}, removed from the cluster, and count it no
        more among the nodes.
        """
        self.node_ids.remove(node_id)
        return self.stop(node_id)

    def _check_alive(self, nodes: Iterable[str]) -> None:
        """
        Fail at once if a node that should be running has ended.
        """
        for node_id in nodes:
            process = self._processes.get(node_id)
            if process is not None and process.ended is not None and node_id not in self._ending:
                raise NodeDied(
                    f"{node_id} ended unexpectedly ({describe_exit(process.ended)}); "
                    f"log {self.log_path(node_id)}:\n{self.tail(node_id)}"
                )

    def tail(self, node_id: str, lines: int = 30) -> str:
        """
        The last C{lines} lines node C{node_id} wrote.
        """
        return "\n".join(self.logs(node_id).splitlines()[-lines:])

    async def _all_healthy(self) -> Optional[bool]:
        for node_id in self.node_ids:
            output = self._output[node_id][self._run_start[node_id]:]
            if any(sign in output for sign in _PORT_TAKEN):
                raise _PortTaken(node_id)
        self._check_alive(self.node_ids)
        replies = await self._gather(
            [self.request("GET", node_id, "/health", timeout=2) for node_id in self.node_ids]
        )
        return True if all(r is not None and r.status == 200 for r in replies) else None

    def signal(self, node_id: str, name: Union[str, int]) -> None:
        """
        Send a signal to a node's process, if it runs: C{"STOP"} and
        C{signal.SIGCONT} (Twisted names only a few signals) pause and
        resume it without closing its connections.
        """
        process = self._processes.get(node_id)
        if process is not None:
            process.signal(name)

    def kill(self, *node_ids: str) -> Deferred[None]:
        """
        SIGKILL the given nodes, all in the same instant, and wait until
        they have exited.
        """
        for node_id in node_ids:
            self._ending.add(node_id)
            self._processes[node_id].signal("KILL")
        return self._gather_ends(node_ids)

    def stop(self, node_id: str, timeout: float = 10.0) -> Deferred[None]:
        """
        SIGTERM node C{node_id} and wait until it has exited (SIGKILL after
        C{timeout} seconds).
        """
        return ensureDeferred(self._stop(self._processes[node_id], timeout))

    async def _stop(self, process: NodeProcess, timeout: float, kill: bool = False) -> None:
        self._ending.add(process.node_id)
        process.signal("KILL" if kill else "TERM")
        timer = self.reactor.callLater(timeout, process.signal, "KILL")
        try:
            await process.when_ended()
        finally:
            if timer.active():
                timer.cancel()

    def restart(self, node_id: str, timeout: float = 30.0) -> Deferred[None]:
        """
        Start node C{node_id} again (it must have ended), empty as a new
        process is, and wait until it serves C{/health}.
        """

        async def restart() -> None:
            self._spawn(node_id)

            async def healthy() -> Optional[bool]:
                self._check_alive([node_id])
                reply = await self._try(self.request("GET", node_id, "/health", timeout=2))
                return True if reply is not None and reply.status == 200 else None

            await poll(healthy, timeout, f"{node_id} to serve /health again")

        return ensureDeferred(restart())

    def stop_all(self, timeout: float = 10.0) -> Deferred[None]:
        """
        Stop every node (SIGTERM, then SIGKILL after C{timeout} seconds),
        wait until each has exited, and close the HTTP connections.  For
        C{addCleanup}: safe to call at any time, any number of times.
        """

        async def stop_all() -> None:
            self._stopping = True
            try:
                await self._stop_all_processes(timeout=timeout)
            finally:
                await self.pool.closeCachedConnections()

        return ensureDeferred(stop_all())

    async def _stop_all_processes(self, timeout: float = 10.0, kill: bool = False) -> None:
        await DeferredList(
            [
                ensureDeferred(self._stop(process, timeout, kill=kill))
                for process in list(self._processes.values())
                if process.running
            ]
        )

    def _gather_ends(self, node_ids: Iterable[str]) -> Deferred[None]:
        d = DeferredList([self._processes[n].when_ended() for n in node_ids])
        return d.addCallback(lambda _: None)

    # -- HTTP -------------------------------------------------------------------

    def request(
        self,
        method: str,
        node_id: str,
        path: str,
        data: Optional[bytes] = None,
        headers: Optional[dict[str, str]] = None,
        timeout: float = 15.0,
    ) -> Deferred[Reply]:
        """
        Send one request to node C{node_id} and read the whole answer.

        @param path: the path and query, already percent-encoded.
        @param headers: by default L{credentials}.
        @param timeout: seconds until the request is abandoned (it then
            fails with L{twisted.internet.defer.CancelledError}).
        """
        if headers is None:
            headers = self.credentials

        async def request() -> Reply:
            started = self.reactor.seconds()
            response = await self.http.request(
                method,
                self.url(node_id, path).encode("ascii"),
                data=data,
                headers=Headers({name: [value] for name, value in (headers or {}).items()}),
                timeout=timeout,
            )
            body = await treq.content(response)
            return Reply(response.code, response.headers, body, self.reactor.seconds() - started)

        return ensureDeferred(request())

    async def _try(self, d: Deferred[Any]) -> Any:
        """
        The result of C{d}, or C{None} if it failed (refused, cancelled...).
        """
        try:
            return await d
        except Exception:
            return None

    async def _gather(self, ds: Sequence[Deferred[Any]]) -> list[Any]:
        results = await DeferredList([ensureDeferred(self._try(d)) for d in ds])
        return [value for _, value in results]

    def cluster_view(self, node_id: str, timeout: float = 5.0) -> Deferred[Any]:
        """
        Node C{node_id}'s C{GET /cluster}, decoded.
        """
        return self.request("GET", node_id, "/cluster", timeout=timeout).addCallback(
            lambda reply: reply.json()
        )

    async def _views(self, nodes: Sequence[str]) -> list[Optional[dict]]:
        self._check_alive(nodes)
        return await self._gather([self.cluster_view(n, timeout=2) for n in nodes])

    def leader(self, timeout: float = 15.0) -> Deferred[str]:
        """
        Wait until every live node reports the same leader, itself live,
        and return it (without waiting for synchronisation).
        """
        return ensureDeferred(self._wait_agreement(timeout, synced=False))

    def wait_for_leader(self, timeout: float = 20.0) -> Deferred[str]:
        """
        Poll every live node's C{/cluster} every 0.1 s until all of them
        agree on one leader, itself live, and every live node is reported
        C{"alive"} and C{"synced": true} by every live node.

        @return: fires with the leader's id.
        @raise WaitTimeout: with the last views and log tails.
        """
        return ensureDeferred(self._wait_agreement(timeout, synced=True))

    async def _wait_agreement(self, timeout: float, synced: bool) -> str:
        last: list[Any] = []

        async def agreed() -> Optional[str]:
            live = self.live_nodes()
            answers = await self._views(live)
            last[:] = [answers]
            views = [view for view in answers if view is not None]
            if not live or len(views) < len(live):
                return None
            leaders = {v.get("leader") for v in views}
            if len(leaders) != 1:
                return None
            (leader,) = leaders
            if leader not in live:
                return None
            if synced:
                for view in views:
                    entries = {entry["id"]: entry for entry in view.get("nodes", [])}
                    for node_id in live:
                        entry = entries.get(node_id)
                        if entry is None or entry.get("state") != "alive":
                            return None
                        if not entry.get("synced"):
                            return None
            return leader

        try:
            return await poll(
                agreed, timeout, "a leader agreed by every live node", reactor=self.reactor
            )
        except WaitTimeout as e:
            details = "\n".join(
                f"--- {n}:\n{self.tail(n, 15)}" for n in self.live_nodes()
            )
            raise WaitTimeout(f"{e}; last views: {json.dumps(last)}\n{details}") from None

    def wait_for_log(
        self, node_id: str, pattern: str, since: int = 0, timeout: float = 15.0
    ) -> Deferred[re.Match]:
        """
        Wait until node C{node_id}'s output after position C{since} matches
        the regular expression C{pattern}; fire with the match.
        """
        compiled = re.compile(pattern)

        async def found() -> Optional[re.Match]:
            return compiled.search(self.logs(node_id, since))

        what = f"{pattern!r} in {node_id}'s log"
        return ensureDeferred(poll(found, timeout, what, reactor=self.reactor))

    def metrics(self, node_id: str) -> Deferred[dict[tuple[str, str], float]]:
        """
        Node C{node_id}'s C{/metrics}, as C{(metric name, node label) ->
        value} for the samples labelled with a node.
        """
        def parse(reply: Reply) -> dict[tuple[str, str], float]:
            assert reply.status == 200, reply
            return {
                (sample.name, sample.labels["node"]): sample.value
                for family in text_string_to_metric_families(reply.body.decode())
                for sample in family.samples
                if "node" in sample.labels
            }

        return self.request("GET", node_id, "/metrics", timeout=5).addCallback(parse)

    # -- bulk key helpers -------------------------------------------------------

    def write_keys(
        self,
        values: Mapping[str, bytes],
        nodes: Optional[Sequence[str]] = None,
        concurrency: int = 8,
    ) -> Deferred[dict[str, str]]:
        """
        PUT every key of C{values}, spread over C{nodes} (the live ones by
        default), C{concurrency} at a time.

        @return: fires with the version of each key.
        @raise AssertionError: a write was not acknowledged with 2xx.
        """
        targets = list(nodes or self.live_nodes())
        lock = DeferredSemaphore(concurrency)
        versions: dict[str, str] = {}

        async def put(index: int, key: str, value: bytes) -> None:
            reply = await self.request(
                "PUT", targets[index % len(targets)], kv_path(key), value,
                {"Content-Type": "application/octet-stream"},
            )
            if reply.status not in (200, 201):
                raise AssertionError(f"PUT {key!r}: {reply!r}")
            versions[key] = reply.json()["version"]

        async def all_puts() -> dict[str, str]:
            await _all(
                [
                    lock.run(put, i, k, v)
                    for i, (k, v) in enumerate(values.items())
                ]
            )
            return versions

        return ensureDeferred(all_puts())

    def read_keys(
        self,
        expected: Mapping[str, Optional[bytes]],
        nodes: Optional[Sequence[str]] = None,
        concurrency: int = 8,
    ) -> Deferred[list[str]]:
        """
        GET every key of C{expected} from every node of C{nodes} (the live
        ones by default), and compare: a value must come back as is, C{None}
        means C{404}.

        @return: fires with one line per disagreement (empty if none).
        """
        targets = list(nodes or self.live_nodes())
        lock = DeferredSemaphore(concurrency)
        problems: list[str] = []

        async def get(node_id: str, key: str, value: Optional[bytes]) -> None:
            try:
                reply = await self.request("GET", node_id, kv_path(key))
            except Exception as e:
                problems.append(f"{node_id} GET {key!r}: {e!r}")
                return
            if value is None:
                if reply.status != 404:
                    problems.append(f"{node_id} GET {key!r}: expected 404, got {reply!r}")
            elif reply.status != 200 or reply.body != value:
                problems.append(f"{node_id} GET {key!r}: expected 200 {value!r}, got {reply!r}")

        async def all_gets() -> list[str]:
            await _all(
                [
                    lock.run(get, n, k, v)
                    for k, v in expected.items()
                    for n in targets
                ]
            )
            return sorted(problems)

        return ensureDeferred(all_gets())


class _PortTaken(Exception):
    """
    A node could not listen on one of its ports.
    """


async def _all(ds: Sequence[Deferred[Any]]) -> None:
    """
    Wait for every Deferred; then raise the first failure, if any.
    """
    results = await DeferredList(list(ds), consumeErrors=True)
    for ok, value in results:
        if not ok:
            value.raiseException()
