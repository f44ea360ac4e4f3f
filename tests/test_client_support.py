# -*- test-case-name: tests.test_client -*-
"""
A one-process node for the client, kvctl and dashboard tests (no tests here).

L{serve} listens on a loopback port with a twisted.web site holding C{/ws},
the dashboard and L{FakeAPI}: the parts of the HTTP API of CONTRACT.md
section 3 that clients use, over a L{LocalKeyValue}, and a C{/cluster}
answer chosen by the test.  Every server-side connection is tracked, so
that a test's cleanup can close them and leave a clean reactor.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from klein import Klein
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from twisted_kv.core import keyspace
from twisted_kv.core.records import format_version
from twisted_kv.errors import InvalidRequest, KeyNotFound, KVError, Unavailable
from twisted_kv.frontends.dashboard import dashboard_resource
from twisted_kv.frontends.ws import build_ws_resource
from twisted_kv.local import LocalKeyValue


def three_nodes(executed: int = 0) -> dict:
    """
    A C{/cluster} answer for a three-node cluster led by n2.
    """
    return {
        "self": "n1",
        "leader": "n2",
        "term": 3,
        "nodes": [
            {"id": "n1", "state": "alive", "http": "http://127.0.0.1:7001", "keys": 10,
             "synced": True, "executed": executed},
            {"id": "n2", "state": "alive", "http": "http://127.0.0.1:7002", "keys": 12,
             "synced": True, "executed": 2 * executed},
            {"id": "n3", "state": "suspect", "http": "http://127.0.0.1:7003", "keys": 0,
             "synced": False, "executed": 0},
        ],
    }


class FakeAPI:
    """
    C{/kv} and C{/cluster} over a L{LocalKeyValue}.
    """

    app = Klein()

    def __init__(self, kv: LocalKeyValue, cluster_view: Callable[[], dict]) -> None:
        self._kv = kv
        self._cluster_view = cluster_view

    @app.handle_errors(KVError)
    def _error(self, request: Any, failure: Failure) -> bytes:
        error = failure.value
        request.setResponseCode(error.status)
        if isinstance(error, Unavailable):
            request.setHeader("Retry-After", str(int(error.retry_after)))
        return self._json(request, {"error": error.code, "message": error.message})

    @staticmethod
    def _json(request: Any, body: Any) -> bytes:
        request.setHeader("Content-Type", "application/json")
        return json.dumps(body).encode("utf-8")

    @staticmethod
    def _if_match(request: Any) -> Optional[str]:
        header = request.getHeader("If-Match")
        return None if header is None else header.strip().strip('"')

    @app.route("/kv/<path:key>", methods=["GET", "HEAD"], branch=False)
    @inlineCallbacks
    def read(self, request: Any, key: str) -> Any:
        result = yield self._kv.get(keyspace.user_key(key))
        if result.record is None:
            raise KeyNotFound(f"no key {key!r}")
        request.setHeader("Content-Type", result.record.content_type)
        request.setHeader("ETag", f'"{format_version(result.record.version)}"')
        return result.record.value

    @app.route("/kv/<path:key>", methods=["PUT", "POST"], branch=False)
    @inlineCallbacks
    def write(self, request: Any, key: str) -> Any:
        ttl = request.args.get(b"ttl", [None])[0]
        try:
            ttl = None if ttl is None else float(ttl)
        except ValueError:
            raise InvalidRequest("bad ttl") from None
        written = yield self._kv.put(
            keyspace.user_key(key),
            request.content.read(),
            (request.getHeader("Content-Type") or "application/octet-stream"),
            ttl=ttl,
            if_match=self._if_match(request),
            if_none_match=request.getHeader("If-None-Match") == "*",
            create_only=request.method == b"POST",
        )
        request.setResponseCode(201 if written.created else 200)
        request.setHeader("ETag", f'"{written.version}"')
        return self._json(request, {"key": key, "version": written.version})

    @app.route("/kv/<path:key>", methods=["DELETE"], branch=False)
    @inlineCallbacks
    def remove(self, request: Any, key: str) -> Any:
        yield self._kv.delete(keyspace.user_key(key), if_match=self._if_match(request))
        request.setResponseCode(204)
        return b""

    @app.route("/kv", methods=["GET"])
    @inlineCallbacks
    def listing(self, request: Any) -> Any:
        def arg(name: bytes) -> Optional[str]:
            value = request.args.get(name, [None])[0]
            return None if value is None else value.decode("utf-8")

        try:
            limit = int(arg(b"limit") or 1000)
        except ValueError:
            raise InvalidRequest("bad limit") from None
        if not 1 <= limit <= 10000:
            raise InvalidRequest("bad limit")
        start_after = arg(b"start_after")
        page = yield self._kv.list_keys(
            keyspace.USER + (arg(b"prefix") or ""),
            None if start_after is None else keyspace.USER + start_after,
            limit,
        )
        return self._json(
            request,
            {"keys": [keyspace.name_of(k) for k in page.keys], "next": keyspace.to_user(page.next)},
        )

    @app.route("/cluster", methods=["GET"])
    def cluster(self, request: Any) -> bytes:
        return self._json(request, self._cluster_view())


class _Root(Resource):
    """
    Named children (C{ws}, the dashboard), then everything else to the API.
    """

    def __init__(self, api: Any) -> None:
        super().__init__()
        self._api = api

    def getChild(self, path: bytes, request: Any) -> Any:
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self._api


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

    def registerProtocol(self, protocol: _Tracked) -> None:
        super().registerProtocol(protocol)
        self.open[protocol] = Deferred()

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
    @ivar kv: its store.
    @ivar cluster: the C{/cluster} answer, which the test may change.
    """

    def __init__(self, reactor: Any, **ws_options: Any) -> None:
        self.kv = LocalKeyValue(reactor)
        self.cluster = three_nodes()
        ws, self.ws_service = build_ws_resource(self.kv, clock=reactor, **ws_options)
        root = _Root(FakeAPI(self.kv, lambda: self.cluster).app.resource())
        root.putChild(b"ws", ws)
        root.putChild(b"", dashboard_resource())
        self._factory = _TrackingFactory(Site(root, reactor=reactor))
        self.ws_service.startService()
        self._port: IListeningPort = reactor.listenTCP(0, self._factory, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self._port.getHost().port}"

    @inlineCallbacks
    def stop(self) -> Any:
        """
        Close every connection and stop listening.
        """
        yield self.ws_service.stopService()
        yield self._factory.close_all()
        yield self._port.stopListening()


def serve(test: Any, reactor: Any = None, **ws_options: Any) -> Node:
    """
    Start a L{Node} that is stopped when C{test} ends.
    """
    if reactor is None:
        from twisted.internet import reactor
    node = Node(reactor, **ws_options)
    test.addCleanup(node.stop)
    return node
