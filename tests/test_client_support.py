# -*- test-case-name: tests.test_client -*-
"""
A one-process node for the client, kvctl and dashboard tests (no tests here).

L{serve} listens on a loopback port with the node's site
(L{twisted_kv.web.site.build_site}) over a L{LocalKeyValue}, with
C{/ws}, C{/files} and the dashboard mounted, and a C{/cluster} answer chosen by the
test.  Every server-side connection is tracked, so that a test's cleanup can
close them and leave a clean reactor.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.core.roster import (
    ADD,
    describe,
    first_roster,
    node_from_fields,
    request_add,
    request_remove,
)
from twisted_kv.errors import KVError
from twisted_kv.interfaces import Health, IClusterStatus
from twisted_kv.web.admin import admin_resource
from twisted_kv.web.dashboard import dashboard_resource
from twisted_kv.web.files_http import files_resource
from twisted_kv.web.site import build_site
from twisted_kv.testing import cluster_config
from twisted_kv.ws.server import build_ws_resource


def three_nodes(executed: int = 0) -> dict:
    """
    A C{/cluster} answer for a three-node cluster led by n2, n3 dead (the
    primaries of its 8 partitions moved to the others).
    """
    return {
        "self": "n1",
        "leader": "n2",
        "term": 3,
        "nodes": [
            {"id": "n1", "state": "alive", "primaries": 4, "http": "http://127.0.0.1:7001", "keys": 10,
             "file_records": 3, "synced": True, "executed": executed, "silent_for": 0.0},
            {"id": "n2", "state": "alive", "primaries": 4, "http": "http://127.0.0.1:7002", "keys": 12,
             "file_records": 3, "synced": True, "executed": 2 * executed, "silent_for": 0.1},
            {"id": "n3", "state": "dead", "primaries": 0, "http": "http://127.0.0.1:7003", "keys": None,
             "file_records": None, "synced": False, "executed": 4, "silent_for": 12.5},
        ],
        "summary": {"nodes": 3, "alive": 2, "suspect": 0, "dead": 1, "in_sync": 2, "majority": 2,
                    "can_lose": 0, "replicas": 2, "text": "2 of 3 alive: can lose 0 more"},
    }


@implementer(IClusterStatus)
class _Status:
    """
    A node's status with a C{/cluster} answer chosen by the test.
    """

    def __init__(self, node: Node) -> None:
        self._node = node

    def cluster_view(self) -> dict:
        return self._node.cluster

    def health(self) -> Health:
        return Health(None, "", {})

    def metrics(self) -> list:
        return []

    def members_view(self) -> dict:
        """
        The membership, each member the primary of as many partitions as
        the C{/cluster} answer says (a node not in it, of none).
        """
        primaries = {node["id"]: node["primaries"] for node in self._node.cluster["nodes"]}
        view = describe(self._node.roster)
        members = [{**member, "primaries": primaries.get(member["id"], 0)} for member in view["members"]]
        return {**view, "members": members, "moving_partitions": []}

    def change_members(self, kind: str, node: Any) -> Deferred[dict]:
        """
        The change, by the membership rules, at once.
        """
        try:
            if kind == ADD:
                self._node.roster = request_add(self._node.roster, node_from_fields(node))
            else:
                self._node.roster = request_remove(self._node.roster, node, cluster_config(3))
        except KVError as error:
            return fail(error)
        return succeed(self.members_view())


class _Tracked(ProtocolWrapper):
    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.factory.lost(self)


class _TrackingFactory(WrappingFactory):
    """
    Keeps a Deferred per open connection, fired when it is lost.
    """

    protocol = _Tracked

    def __init__(self, wrapped: Site) -> None:
        super().__init__(wrapped)
        self.open: dict[_Tracked, Deferred[None]] = {}
        self.accepted = 0

    def registerProtocol(self, protocol: _Tracked) -> None:
        super().registerProtocol(protocol)
        self.open[protocol] = Deferred()
        self.accepted += 1

    def lost(self, protocol: _Tracked) -> None:
        self.open.pop(protocol).callback(None)

    def close_all(self) -> Deferred[Any]:
        waiting = list(self.open.values())
        for protocol in list(self.open):
            protocol.transport.loseConnection()
        return gatherResults(waiting)


class Node:
    """
    A listening test node.

    @ivar url: its base URL, C{http://127.0.0.1:PORT}.
    @ivar kv: its store, whose TTLs follow L{kv_clock}, a L{Clock}, unless
        the store was given.
    @ivar cluster: the C{/cluster} answer, which the test may change.
    @ivar roster: the membership, changed by C{/cluster/nodes} as the
        cluster's rules say (L{twisted_kv.core.roster}), at once.
    """

    def __init__(self, reactor: Any, kv: Optional[LocalKeyValue] = None, **ws_options: Any) -> None:
        self.kv_clock = Clock()
        self.kv = LocalKeyValue(self.kv_clock) if kv is None else kv
        self.cluster = three_nodes()
        self.roster = first_roster(cluster_config(3))
        ws, self.ws_service = build_ws_resource(self.kv, clock=reactor, **ws_options)
        site = build_site(
            self.kv,
            _Status(self),
            clock=reactor,
            children={
                b"ws": ws,
                b"": dashboard_resource(),
                b"files": files_resource(self.kv, clock=reactor),
                b"admin": admin_resource(self.kv),
            },
        )
        self._factory = _TrackingFactory(site)
        self.ws_service.startService()
        self._port: IListeningPort = reactor.listenTCP(0, self._factory, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self._port.getHost().port}"

    @property
    def connections(self) -> int:
        """
        How many connections the node has accepted.
        """
        return self._factory.accepted

    def close_connections(self) -> Deferred[Any]:
        """
        Close every connection from the node's side; fires once they are
        closed.
        """
        return self._factory.close_all()

    @inlineCallbacks
    def stop(self) -> Any:
        """
        Close every connection and stop listening (once).
        """
        if not self.ws_service.running:
            return
        yield self.ws_service.stopService()
        yield self._factory.close_all()
        yield self._port.stopListening()


def serve(
    test: Any, reactor: Any = None, kv: Optional[LocalKeyValue] = None, **ws_options: Any
) -> Node:
    """
    Start a L{Node} that is stopped when C{test} ends.

    @param kv: the store, to share one between several nodes (by default, a
        new one).
    """
    if reactor is None:
        from twisted.internet import reactor
    node = Node(reactor, kv, **ws_options)
    test.addCleanup(node.stop)
    return node
