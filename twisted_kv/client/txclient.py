# -*- test-case-name: tests.test_client -*-
"""
The Twisted flavour of L{twisted_kv.client.sync}: the same calls on treq,
returning Deferreds, and L{Watcher}, which follows C{/ws} across
reconnections.

    client = TxClient("http://127.0.0.1:7001")
    version = yield client.put("users/alice", b"...")
    value = yield client.get("users/alice")
    watcher = client.watch(print, "users/")       # each change, as a dict
    ...
    yield watcher.stop()
    yield client.close()

Every call's Deferred fires with what the synchronous call returns, and fails
with the same typed exceptions of L{twisted_kv.errors}.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional, Sequence, Union
from urllib.parse import urlsplit

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import error
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient
from zope.interface import implementer

from twisted_kv._autobahn_timer import ClockTimer, cancel_close_timeout
from twisted_kv.client.sync import (
    DEFAULT_URL,
    Page,
    Request,
    Response,
    T,
    Value,
    cluster_request,
    delete_request,
    get_request,
    list_request,
    put_request,
    result_of,
    ws_url,
)
from twisted_kv.core.records import parse_version

__all__ = ["TxClient", "Watcher"]

log = Logger()

# The frames handed to a watcher's callback; "watching" and "unwatched" are
# the watcher's own business.
_CHANGES = frozenset({"put", "delete", "expire", "file", "compacted"})


class TxClient:
    """
    A client for one node, whose calls return Deferreds.

    @param url: the node, e.g. C{http://127.0.0.1:7001}.
    @param reactor: the reactor (the global one by default).
    @param http: the treq client to send requests with (by default one with
        a pool of persistent connections, closed by L{close}).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        reactor: Any = None,
        http: Optional[HTTPClient] = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.url = url.rstrip("/")
        self._reactor = reactor
        self._pool: Optional[HTTPConnectionPool] = None
        if http is None:
            self._pool = HTTPConnectionPool(reactor)
            http = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = http

    def close(self) -> Deferred[None]:
        """
        Close the pooled connections.
        """
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()

    def get(self, key: str) -> Deferred[Value]:
        """
        Read C{key}: fires with a L{Value}, fails with L{KeyNotFound}.
        """
        return self._call(get_request(key))

    def put(
        self,
        key: str,
        value: Union[bytes, str],
        *,
        content_type: Optional[str] = None,
        ttl: Optional[float] = None,
        if_match: Optional[str] = None,
        if_none_match: bool = False,
    ) -> Deferred[str]:
        """
        Store C{value} under C{key}: fires with the new version, fails with
        L{PreconditionFailed} when a condition does not hold.
        """
        return self._call(put_request(key, value, content_type, ttl, if_match, if_none_match))

    def create(
        self,
        key: str,
        value: Union[bytes, str],
        *,
        content_type: Optional[str] = None,
        ttl: Optional[float] = None,
    ) -> Deferred[str]:
        """
        Create C{key}: fires with the new version, fails with L{KeyExists}.
        """
        return self._call(put_request(key, value, content_type, ttl, create=True))

    def delete(self, key: str, *, if_match: Optional[str] = None) -> Deferred[None]:
        """
        Remove C{key}: fires with C{None}, fails with L{KeyNotFound} or
        L{PreconditionFailed}.
        """
        return self._call(delete_request(key, if_match))

    def list(
        self, prefix: str = "", *, limit: Optional[int] = None, start_after: Optional[str] = None
    ) -> Deferred[Page]:
        """
        One page of the keys starting with C{prefix}: fires with a L{Page}.
        """
        return self._call(list_request(prefix, limit, start_after))

    @inlineCallbacks
    def keys(self, prefix: str = "", *, page_size: int = 1000) -> Any:
        """
        Every key starting with C{prefix}, page by page: fires with the list.
        """
        keys: list[str] = []
        start_after = None
        while True:
            page = yield self.list(prefix, limit=page_size, start_after=start_after)
            keys.extend(page.keys)
            if page.next is None:
                return keys
            start_after = page.next

    def cluster(self) -> Deferred[dict]:
        """
        The node's view of the cluster: fires with the C{/cluster} object.
        """
        return self._call(cluster_request())

    def watch(
        self,
        on_event: Callable[[dict], None],
        prefix: str = "",
        *,
        since: Optional[int] = None,
        files: bool = False,
    ) -> Watcher:
        """
        Call C{on_event} with each change of the keys starting with C{prefix}
        (of the files whose path starts with it if C{files}), from now or
        after revision C{since}, until the returned L{Watcher} is stopped.
        """
        watcher = Watcher(self.url, on_event, prefix, since=since, files=files, reactor=self._reactor)
        watcher.start()
        return watcher

    def _call(self, request: Request[T]) -> Deferred[T]:
        sent = self._http.request(
            request.method, self.url + request.target, headers=dict(request.headers), data=request.body
        )
        return sent.addCallback(self._read).addCallback(lambda response: result_of(request, response))

    @staticmethod
    def _read(response: Any) -> Deferred[Response]:
        headers = {
            name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        return treq.content(response).addCallback(
            lambda body: Response(response.code, headers, body)
        )


class _WatchClientProtocol(WebSocketClientProtocol):
    """
    One connection of a L{Watcher}: sends its watches once open, and hands
    it every frame.
    """

    factory: _WatchClientFactory

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[_WatchClientProtocol] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def onOpen(self) -> None:
        self.factory.watcher._opened(self)
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.watcher._received(json.loads(payload))

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        cancel_close_timeout(self)
        self.factory.watcher._closed(self, _close_reason(code, reason))
        if not self.opened.called:
            self.opened.errback(ConnectionClosed(f"WebSocket handshake failed: {code} {reason}"))
        self.closed.callback(None)


class _WatchClientFactory(WebSocketClientFactory):
    """
    Builds the connections of one L{Watcher} (its C{watcher} attribute).
    """

    protocol = _WatchClientProtocol


def _endpoint(url: str, reactor: Any) -> IStreamClientEndpoint:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    endpoint = HostnameEndpoint(reactor, host, parts.port or (443 if secure else 80))
    if secure:
        return wrapClientTLS(optionsForClientTLS(host), endpoint)
    return endpoint


def _failure_reason(failure: Failure) -> str:
    """
    Why a connection attempt failed, in a few words.
    """
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.TimeoutError):
        return "timed out"
    return failure.getErrorMessage()


def _close_reason(code: Optional[int], reason: Optional[str]) -> str:
    """
    Why an open WebSocket connection closed, in a few words.
    """
    if code is None or code == 1006:
        return "connection lost"
    return f"closed {code}: {reason}" if reason else f"closed {code}"


@implementer(IStreamClientEndpoint)
class _Nodes:
    """
    Connects to one node of a list: the same one until a connection to it
    fails or is lost (L{move}), then the next, round and round.  A failed
    attempt is reported to C{failed}, with a short reason, first.
    """

    def __init__(self, urls: Sequence[str], reactor: Any, failed: Callable[[str], None]) -> None:
        self._urls = list(urls)
        self._current = 0
        self._reactor = reactor
        self._failed = failed

    @property
    def url(self) -> str:
        return self._urls[self._current]

    def __len__(self) -> int:
        return len(self._urls)

    def move(self) -> str:
        """
        Make the next node the current one: returns its URL.
        """
        self._current = (self._current + 1) % len(self._urls)
        return self.url

    def connect(self, factory: Any) -> Deferred[Any]:
        def report(failure: Failure) -> Failure:
            self._failed(_failure_reason(failure))
            return failure

        return _endpoint(self.url, self._reactor).connect(factory).addErrback(report)


class Watcher:
    """
    Follows the changes of some keys, or files, over C{/ws}, reconnecting
    when the connection is lost and resuming after the last revision
    received, so that no change is missed or repeated (the node says
    C{compacted} when it no longer holds them all).

    Given several nodes, it moves to the next one whenever a connection is
    lost or cannot be made; it tries each node once without waiting, then
    backs off.

    @ivar revision: the revision to resume after: the last change received,
        else the revision at which the first watch began (C{None} before).
    """

    def __init__(
        self,
        url: str,
        on_event: Callable[[dict], None],
        prefix: str = "",
        *,
        since: Optional[int] = None,
        files: bool = False,
        reactor: Any = None,
        retry_policy: Callable[[int], float] = backoffPolicy(maxDelay=10.0),
        others: Sequence[str] = (),
        on_lost: Callable[[str, str, str], None] = lambda url, reason, next_url: None,
        on_watching: Callable[[str], None] = lambda url: None,
    ) -> None:
        """
        @param url: the node's HTTP URL.
        @param on_event: called with each C{put}, C{delete}, C{expire},
            C{file} and C{compacted} frame.
        @param prefix: watch the keys starting with it, or the file paths if
            C{files}.
        @param retry_policy: seconds to wait before reconnection attempt N,
            once every node has been tried.
        @param others: the HTTP URLs of the cluster's other nodes.
        @param on_lost: called with a node's URL, why its connection was
            lost (or could not be made) and the URL of the node tried next.
        @param on_watching: called with a node's URL when it has answered
            the watch (on every connection).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.revision = since
        self._on_event = on_event
        self._on_lost = on_lost
        self._on_watching = on_watching
        self._versions: dict[str, int] = {}
        # One watch per connection: its replay and live changes then come in
        # revision order, and the last revision is a safe place to resume.
        self._op = {"op": "watch_files", "path": prefix} if files else {"op": "watch", "prefix": prefix}
        factory = _WatchClientFactory(ws_url(url), reactor=reactor)
        factory._batched_timer = ClockTimer(reactor)
        # The client-side drop timeout runs on txaio's global reactor; the
        # server drops the connection itself.
        factory.setProtocolOptions(serverConnectionDropTimeout=0)
        factory.watcher = self
        self._factory = factory
        self._nodes = _Nodes([url, *(other for other in others if other != url)], reactor, self._failed)
        self._service = ClientService(
            self._nodes,
            factory,
            retryPolicy=lambda attempt: (
                0.0 if attempt < len(self._nodes) else retry_policy(attempt - len(self._nodes) + 1)
            ),
            clock=reactor,
            prepareConnection=lambda protocol: protocol.opened,
        )
        self._protocol: Optional[_WatchClientProtocol] = None
        self._watching = False
        self._stopping = False
        self._waiting: list[Deferred[None]] = []

    def start(self) -> None:
        """
        Connect, and keep connected until L{stop}.
        """
        self._service.startService()

    def stop(self) -> Deferred[None]:
        """
        Close the connection and stop reconnecting: fires once closed.
        """
        self._stopping = True
        protocol = self._protocol
        if protocol is None:
            return self._service.stopService()
        protocol.sendClose(1000)
        return protocol.closed.addCallback(lambda _: self._service.stopService())

    def when_watching(self) -> Deferred[None]:
        """
        Fires once the node has answered the watch on the current connection
        (at once if it has).
        """
        if self._watching:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append(waiter)
        return waiter

    def _opened(self, protocol: _WatchClientProtocol) -> None:
        self._protocol = protocol
        op = self._op if self.revision is None else {**self._op, "since": self.revision}
        protocol.sendMessage(json.dumps(op).encode("utf-8"))

    def _closed(self, protocol: _WatchClientProtocol, reason: str) -> None:
        if protocol is self._protocol:
            self._protocol = None
            self._watching = False
        self._failed(reason)

    def _failed(self, reason: str) -> None:
        """
        The connection to the current node was lost or could not be made:
        the next attempt goes to the next node.
        """
        if not self._stopping:
            url, next_url = self._nodes.url, self._nodes.move()
            # The WebSocket handshake names the node connected to (the other
            # session parameters are reset: only the user agent was set).
            self._factory.setSessionParameters(url=ws_url(next_url), useragent=self._factory.useragent)
            self._on_lost(url, reason, next_url)

    def _received(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "watching":
            if self.revision is None:
                self.revision = frame["revision"]
            self._watching = True
            self._on_watching(self._nodes.url)
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.callback(None)
        elif kind == "error":
            log.error("The node refused a watch: {message}", message=frame.get("message"))
        elif kind in _CHANGES:
            revision = frame["revision"]
            if self.revision is not None and revision <= self.revision:
                if kind != "compacted":
                    return
                # A node behind the one this watch came from goes on after
                # its own revision: the changes up to ours are not new.
                revision = self.revision
            self.revision = revision
            if self._repeated(frame):
                return
            self._on_event(frame)

    def _repeated(self, frame: dict) -> bool:
        """
        Whether C{frame} is a key change no newer than one already delivered
        (a change numbered twice around a leader failover).
        """
        key, version = frame.get("key"), parse_version(frame.get("version", ""))
        if key is None or version is None:
            return False
        if self._versions.get(key, -1) >= version:
            return True
        self._versions[key] = version
        return False
