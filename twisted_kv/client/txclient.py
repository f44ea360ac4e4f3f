# -*- test-case-name: tests.test_client -*-
"""
The Twisted flavour of L{twisted_kv.client.sync}: the same calls on treq,
returning Deferreds, and L{Watcher}, which follows C{/ws} across
reconnections and nodes.

    client = TxClient("http://127.0.0.1:7001")
    version = yield client.put("users/alice", b"...")
    value = yield client.get("users/alice")
    watcher = client.watch(print, "users/")       # each change, as a dict
    ...
    yield watcher.stop()
    yield client.close()

Every call's Deferred fires with what the synchronous call returns, and fails
with the same typed exceptions of L{twisted_kv.errors}: the calls, their
requests and the meaning of the answers and of the watch frames are those of
L{twisted_kv.client._logic}; this module sends and receives them.
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence
from urllib.parse import urlsplit

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from treq.client import HTTPClient
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import error
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from zope.interface import implementer

from twisted_kv._autobahn_timer import ClockTimer, cancel_close_timeout
from twisted_kv._compat import use_timer
from twisted_kv.client._logic import (
    DEFAULT_URL,
    Calls,
    Frame,
    NodeRing,
    Request,
    Response,
    T,
    WatchPosition,
    authorization,
    close_reason,
    result_of,
    watch_op,
    ws_url,
)

__all__ = ["TxClient", "Watcher"]

log = Logger()


class TxClient(Calls):
    """
    A client for one node, whose calls return Deferreds.

    @param url: the node, e.g. C{http://127.0.0.1:7001}.
    @param reactor: the reactor (the global one by default).
    @param http: the treq client to send requests with (by default one with
        a pool of persistent connections, closed by L{close}).
    @param cacert: a PEM file of the CA to trust for https and wss (a
        cluster's C{[tls]} C{ca}) instead of the system's.
    @param user: C{NAME:PASSWORD}, sent as HTTP Basic; or
    @param token: a bearer token (see L{Calls.token}).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        reactor: Any = None,
        http: Optional[HTTPClient] = None,
        cacert: Optional[str] = None,
        user: Optional[str] = None,
        token: Optional[str] = None,
    ) -> None:
        self._authorization = authorization(user, token)
        if reactor is None:
            from twisted.internet import reactor
        self.url = url.rstrip("/")
        self._reactor = reactor
        self._cacert = cacert
        self._pool: Optional[HTTPConnectionPool] = None
        if http is None:
            self._pool = HTTPConnectionPool(reactor)
            http = HTTPClient(
                Agent(
                    reactor,
                    BrowserLikePolicyForHTTPS(trust_root(cacert)),
                    pool=self._pool,
                )
            )
        self._http = http

    def close(self) -> Deferred[None]:
        """
        Close the pooled connections.
        """
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()

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
        watcher = Watcher(
            self.url,
            on_event,
            prefix,
            since=since,
            files=files,
            reactor=self._reactor,
            headers=self._authorization,
            cacert=self._cacert,
        )
        watcher.start()
        return watcher

    def _call(self, request: Request[T]) -> Deferred[T]:
        sent = self._http.request(
            request.method,
            self.url + request.target,
            headers={**self._authorization, **request.headers},
            data=request.body,
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
        self.factory.watcher._closed(self, close_reason(code, reason))
        if not self.opened.called:
            self.opened.errback(ConnectionClosed(f"WebSocket handshake failed: {code} {reason}"))
        self.closed.callback(None)


class _WatchClientFactory(WebSocketClientFactory):
    """
    Builds the connections of one L{Watcher} (its C{watcher} attribute).
    """

    protocol = _WatchClientProtocol


def trust_root(cacert: Optional[str]) -> Optional[Certificate]:
    """
    The CA certificate in the PEM file C{cacert}, or C{None} (the
    system's CAs) without one.

    @raise OSError: the file cannot be read.
    @raise ValueError: it holds no PEM certificate.
    """
    if cacert is None:
        return None
    with open(cacert, "rb") as f:
        pem = f.read()
    try:
        return Certificate.loadPEM(pem)
    except Exception:
        raise ValueError(f"{cacert}: not a PEM certificate") from None


def _endpoint(url: str, reactor: Any, cacert: Optional[str] = None) -> IStreamClientEndpoint:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    endpoint = HostnameEndpoint(reactor, host, parts.port or (443 if secure else 80))
    if secure:
        return wrapClientTLS(optionsForClientTLS(host, trustRoot=trust_root(cacert)), endpoint)
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


@implementer(IStreamClientEndpoint)
class _Nodes:
    """
    Connects to the current node of a L{NodeRing}; a failed attempt is
    reported to C{failed}, with a short reason.
    """

    def __init__(
        self, ring: NodeRing, reactor: Any, failed: Callable[[str], None], cacert: Optional[str]
    ) -> None:
        self._ring = ring
        self._reactor = reactor
        self._failed = failed
        self._cacert = cacert

    def connect(self, factory: Any) -> Deferred[Any]:
        def report(failure: Failure) -> Failure:
            self._failed(_failure_reason(failure))
            return failure

        endpoint = _endpoint(self._ring.url, self._reactor, self._cacert)
        return endpoint.connect(factory).addErrback(report)


class Watcher:
    """
    Follows the changes of some keys, or files, over C{/ws}, reconnecting
    when the connection is lost and resuming after the last revision
    received, so that no change is missed or repeated (the node says
    C{compacted} when it no longer holds them all).

    Given several nodes, it moves to the next one whenever a connection is
    lost or cannot be made; it tries each node once without waiting, then
    backs off.

    The frames are read by a L{WatchPosition}, the nodes taken in the
    order of a L{NodeRing}.
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
        cacert: Optional[str] = None,
        headers: Mapping[str, str] = MappingProxyType({}),
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
        @param cacert: a PEM file of the CA to trust for wss instead of the
            system's.
        @param headers: sent with every WebSocket upgrade request (the
            credentials, see L{authorization}).
        """
        if reactor is None:
            from twisted.internet import reactor
        self._position = WatchPosition(since)
        self._on_event = on_event
        self._on_lost = on_lost
        self._on_watching = on_watching
        self._prefix = prefix
        self._files = files
        self._headers = dict(headers)
        factory = _WatchClientFactory(ws_url(url), reactor=reactor, headers=self._headers)
        use_timer(factory, ClockTimer(reactor))
        # The client-side drop timeout runs on txaio's global reactor; the
        # server drops the connection itself.
        factory.setProtocolOptions(serverConnectionDropTimeout=0)
        factory.watcher = self
        self._factory = factory
        self._nodes = NodeRing(url, others)
        self._service = ClientService(
            _Nodes(self._nodes, reactor, self._failed, cacert),
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

    @property
    def revision(self) -> Optional[int]:
        """
        The revision to resume after: the last change received, else the
        revision at which the first watch began (C{None} before).
        """
        return self._position.revision

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
        op = watch_op(self._prefix, self._files, self._position.revision)
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
            # session parameters are reset: only the user agent and the
            # headers were set).
            self._factory.setSessionParameters(
                url=ws_url(next_url), useragent=self._factory.useragent, headers=self._headers
            )
            self._on_lost(url, reason, next_url)

    def _received(self, frame: dict) -> None:
        meaning = self._position.receive(frame)
        if meaning is Frame.WATCHING:
            self._watching = True
            self._on_watching(self._nodes.url)
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.callback(None)
        elif meaning is Frame.REFUSED:
            log.error("The node refused a watch: {message}", message=frame.get("message"))
        elif meaning is Frame.CHANGE:
            self._on_event(frame)
