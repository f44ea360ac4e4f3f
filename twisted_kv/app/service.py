# -*- test-case-name: tests.test_service -*-
"""
One node's service tree, on one reactor: the peer links, the node itself, the
HTTP site (API, C{/ws}, C{/files}, dashboard) and the FTP server.

Dependencies are built first and passed in; the services are then attached in
start order (peers, node, change feed, front ends) and stop in reverse.
"""

from __future__ import annotations

import gc
import os
import random
import socket
import time
from typing import Any, Callable, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool

from twisted_kv._compat import raise_listen_errors
from twisted_kv.cluster.coordinator import Coordinator
from twisted_kv.cluster.durable import NodeDisk
from twisted_kv.cluster.node import Node
from twisted_kv.core.config import ClusterConfig, NodeConfig, format_address
from twisted_kv.core.membership import new_incarnation
from twisted_kv.core.roster import Roster
from twisted_kv.core.users import LoginThrottle
from twisted_kv.files import FileSystem, OrphanCollector
from twisted_kv.files.events import file_event_for
from twisted_kv.ftp.server import build_ftp_factory
from twisted_kv.logins import Logins, check_in_threads, password_pool
from twisted_kv.peer.links import PeerLinks
from twisted_kv.storage.fs import OSFileSystem
from twisted_kv.storage.worker import LogWorker
from twisted_kv.tls import NodeTLS, TLSSetupError, load_node_tls, tls_server_factory
from twisted_kv.web.admin import admin_resource
from twisted_kv.web.dashboard import dashboard_resource
from twisted_kv.web.files_http import files_resource
from twisted_kv.web.auth import Guard
from twisted_kv.web.site import build_site
from twisted_kv.web.status import NodeStatus
from twisted_kv.ws.server import build_ws_resource


def listen_endpoint(host: str, port: int) -> str:
    """
    The endpoint description listening on C{host}:C{port} (IPv6 escaped).
    """
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"


#: The config keys of a node's listening ports, in the order they are checked.
_PORT_KEYS = ("http_port", "peer_port", "ftp_port")


def _cannot_listen(me: NodeConfig, port: int, error: OSError) -> str:
    """
    The one line reporting that node C{me} cannot listen on C{port}.
    """
    key = next((key for key in _PORT_KEYS if getattr(me, key) == port), "port")
    reason = os.strerror(error.errno).lower() if error.errno else str(error)
    return (
        f"kvnode {me.node_id}: cannot listen on {format_address(me.listen_host, port)}"
        f" ({key}): {reason}"
    )


def check_ports(me: NodeConfig, *, _socket: Callable[[int, int], Any] = socket.socket) -> None:
    """
    Bind each of node C{me}'s ports once, and let go: twistd listens only
    after it has started logging, so a port in use found then is reported
    in the log, after twistd's own start-up lines; found here, from
    C{makeService}, it is one line on standard error, like a config error.

    @param _socket: makes the sockets (tests).
    @raise SystemExit: with that line, if a port cannot be bound.
    """
    family = socket.AF_INET6 if isIPv6Address(me.listen_host) else socket.AF_INET
    for key in _PORT_KEYS:
        port = getattr(me, key)
        with _socket(family, socket.SOCK_STREAM) as probe:
            if os.name == "posix":
                # As Twisted's listenTCP does: a port left in TIME_WAIT is free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((me.listen_host, port))
            except OSError as error:
                raise SystemExit(_cannot_listen(me, port, error)) from None


class _Running(Service):
    """
    Starts and stops something that has C{start()} and C{stop()}.
    """

    def __init__(self, name: str, start: Callable[[], None], stop: Callable[[], Any]) -> None:
        self.setName(name)
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> Any:
        super().stopService()
        return self._stop()


def _listening(name: str, reactor: Any, host: str, port: int, factory: Any) -> IService:
    service = StreamServerEndpointService(
        serverFromString(reactor, listen_endpoint(host, port)), factory
    )
    raise_listen_errors(service)
    service.setName(name)
    return service


class NodeService(MultiService):
    """
    A node's services; a port that cannot be listened on (taken since
    L{check_ports}) ends the process at once with one line naming the node,
    the address and the key.
    """

    def __init__(self, me: NodeConfig) -> None:
        super().__init__()
        self._me = me

    def privilegedStartService(self) -> None:
        self._naming_the_port(super().privilegedStartService)

    def startService(self) -> None:
        self._naming_the_port(super().startService)

    def _naming_the_port(self, start: Callable[[], None]) -> None:
        try:
            start()
        except CannotListenError as error:
            raise SystemExit(_cannot_listen(self._me, error.port, error.socketError)) from None


def open_disk(config: ClusterConfig, node_id: str, reactor: Any) -> Optional[NodeDisk]:
    """
    Node C{node_id}'s data directory, recovered, or C{None} without
    C{data_dir}.

    @raise SystemExit: with one line naming the file, if it cannot be read
        (a damaged one is moved aside: see L{NodeDisk.open}).
    """
    path = config.node_data_dir(node_id)
    if path is None:
        return None
    # The log's commits on a thread of their own (see LogWorker), ended
    # once the node stopped (it syncs everything on its way out).
    worker = LogWorker(reactor, f"log of {node_id}")
    reactor.addSystemEventTrigger("after", "shutdown", worker.stop)
    try:
        return NodeDisk.open(
            OSFileSystem(),
            path,
            config.fsync,
            # the reactor's pool, asked for only once there is work for it
            lambda work: deferToThreadPool(reactor, reactor.getThreadPool(), work),
            reactor,
            config.partitions,
            lambda work: blockingCallFromThread(reactor, work),
            worker,
        )
    except OSError as error:
        raise SystemExit(
            f"kvnode {node_id}: cannot use {error.filename or path}: {error.strerror or error}"
        ) from None


def node_tls(config: ClusterConfig, node_id: str) -> Optional[NodeTLS]:
    """
    Node C{node_id}'s checked TLS credentials, or C{None} without C{[tls]}.

    @raise SystemExit: with one line naming the unusable file: a node that
        cannot speak TLS must not start, nor fail at its first handshake.
    """
    if config.tls is None:
        return None
    try:
        return load_node_tls(config.tls, node_id)
    except TLSSetupError as error:
        raise SystemExit(f"kvnode {node_id}: [tls] {error}") from None


def boot_id() -> str:
    """
    What identifies this boot of the machine (Linux's C{boot_id}): a node
    killed and restarted on the same boot lost nothing it wrote.  Where it
    cannot be read, a value no other start has, as if the machine rebooted.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return f"unknown {random.SystemRandom().getrandbits(64):x}"


def tune_collector() -> None:
    """
    Set CPython's collector as a node wants it.

    A full collection walks every tracked object of the node: about 65 ms
    at an entry node under PUT load.  With CPython's default thresholds it
    ran every 3 s there and put the p99 latency at 53 ms instead of 14 ms.
    Requests leave no reference cycles, so collecting the young generation
    less often lets little survive into the older ones.
    """
    if hasattr(gc, "set_threshold"):  # PyPy's collector has no generations to tune
        gc.set_threshold(50_000, 20, 100)


def build_node_service(
    config: ClusterConfig, node_id: str, reactor: Any, joined: Optional[Roster] = None
) -> NodeService:
    """
    Everything node C{node_id} of C{config} runs.

    @param joined: the membership of the cluster this node was added to,
        as fetched with C{--join}; the file's nodes otherwise.
    """
    tls = node_tls(config, node_id)
    tune_collector()
    # Read leases promised before a restart are measured from here.
    restarted_at = time.monotonic()
    disk = open_disk(config, node_id, reactor)
    incarnation = new_incarnation(reactor.seconds(), random.SystemRandom().getrandbits(63))
    if disk is not None:
        incarnation = disk.incarnation(incarnation, boot_id())
    node = Node(
        config,
        node_id,
        clock=reactor,
        incarnation=incarnation,
        lease_clock=time.monotonic,
        disk=disk,
        roster=joined,
        restarted_at=restarted_at,
    )
    # The file (or, for a node that joined, the cluster) says where this
    # node listens, with its own keys (bind, FTP's passive address); the
    # membership the node holds (its data directory's may be newer than the
    # file's) says where its peers are.
    me: NodeConfig = config.node(node_id)
    links = PeerLinks(
        node_id=node_id,
        incarnation=node.incarnation,
        cluster_name=config.name,
        secret=config.secret,
        peers={n.node_id: (n.host, n.peer_port) for n in node.roster.nodes if n.node_id != node_id},
        handler=node,
        reactor=reactor,
        listen_endpoint=listen_endpoint(me.listen_host, me.peer_port),
        tls=tls,
    )
    links.setName("peers")
    node.messenger = links
    kv = Coordinator(node, reactor)
    ws_resource, ws_service = build_ws_resource(kv, clock=reactor, file_event_for=file_event_for)
    ws_service.setName("changes")
    # One count of failed logins per address for HTTP and FTP, and the
    # threads their passwords are checked in, off the reactor.
    passwords = password_pool()
    logins = Logins(LoginThrottle(), reactor, check_in_threads(reactor, passwords))
    guard = Guard(config.users, config.secret, logins, reactor) if config.users else None
    site = build_site(
        kv,
        NodeStatus(node, reactor),
        clock=reactor,
        children={
            b"ws": ws_resource,
            b"files": files_resource(kv, clock=reactor, max_file_bytes=config.max_file_bytes),
            b"admin": admin_resource(kv),
            b"": dashboard_resource(token_login=guard is not None),
        },
        guard=guard,
    )
    ftp_factory = build_ftp_factory(
        kv,
        config.ftp_users,
        clock=reactor,
        max_file_bytes=config.max_file_bytes,
        anonymous=config.anonymous_ftp,
        tls=None if tls is None else tls.server,
        passive_address=me.ftp_passive_address,
        passive_ports=me.ftp_passive_ports,
        accounts=config.users,
        logins=logins,
    )
    collector = OrphanCollector(
        FileSystem(kv, reactor, max_file_bytes=config.max_file_bytes), reactor
    )

    top = NodeService(me)
    for child in (
        links,
        _Running("node", node.start, node.stop),
        ws_service,
        _Running("password-checks", passwords.start, passwords.stop),
        _listening(
            "http", reactor, me.listen_host, me.http_port,
            site if tls is None else tls_server_factory(tls.server, site, reactor),
        ),
        _listening("ftp", reactor, me.listen_host, me.ftp_port, ftp_factory),
        _Running("orphan-collector", collector.start, collector.stop),
    ):
        child.setServiceParent(top)
    return top
