# -*- test-case-name: tests.test_site -*-
"""
The web site of a node: the HTTP API that every node serves for the whole
cluster (C{/kv}, C{/cluster}, C{/health}, C{/metrics}), with the
WebSocket feed, the files resource and the dashboard mounted beside it.

Requests for C{/kv} and C{/kv/{key}} go straight to L{KeyValueResource}, a
leaf that reads the key from the raw path, without resource traversal.  For
the others, the root dispatches on the first path segment with one
dictionary lookup:

  - each name given in C{children} (C{ws}, C{files}, and C{b""} for C{GET /});
  - anything else: the Klein application L{NodeAPI} (C{/cluster},
    C{/health}, C{/live}, C{/metrics}, and JSON C{404}/C{405} for the rest).

Keeping Klein and the traversal off the C{/kv} path matters for speed (see
C{bench/http_local.py} and docs/performance.md) and for correctness: a router
would merge slashes or split on C{%2F}.

The site's requests bound the body of a C{/kv/{key}} write by the store's
C{max_value_bytes} without buffering more: a C{Content-Length} over the limit
is answered C{413} as soon as the headers are in (no C{100 Continue}, no body
read, then the connection is closed), and a chunked body growing past the
limit is counted and dropped, then answered C{413}.  The site also feeds
L{HTTPMetrics} with every answered request instead of writing an access log.
"""

from __future__ import annotations

from io import BytesIO
from types import MappingProxyType
from typing import Mapping, Optional, Sequence

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site, version

from twisted_kv._compat import (
    keep_form_body,
    pending_request_target,
    use_fast_request_line_parser,
)
from twisted_kv.errors import ValueTooLarge
from twisted_kv.interfaces import IClusterStatus, IKeyValue
from twisted_kv.sending import send
from twisted_kv.web.auth import Guard, TokenResource
from twisted_kv.web.errors import ErrorResource, NoSuchResource
from twisted_kv.web.http_api import HTTPMetrics, KeyValueResource, NodeAPI
from twisted_kv.web.metrics import node_registry

_KV = b"kv"
_AUTH = b"auth"
_LIST_PATH = b"/kv"
_KEY_PATH = b"/kv/"


class _Root(Resource):
    """
    Dispatch the first path segment to a mounted resource, or hand the whole
    path to a fallback resource that does its own routing.
    """

    def __init__(self, routes: Mapping[bytes, IResource], fallback: IResource) -> None:
        super().__init__()
        self._routes = dict(routes)
        self._fallback = fallback
        self._not_found = ErrorResource(NoSuchResource())

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        child = self._routes.get(name)
        if child is not None:
            return child
        request.postpath.insert(0, request.prepath.pop())
        try:
            b"/".join(request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            return self._not_found
        return self._fallback


class _BoundedBody:
    """
    The body of a C{/kv/{key}} request, held in memory up to C{limit} bytes.

    Past the limit the bytes are only counted, and reading the body raises
    L{ValueTooLarge}.  Within it, L{read} returns the buffer itself, so the
    value is never held twice.
    """

    def __init__(self, limit: int) -> None:
        self._buffer: Optional[BytesIO] = BytesIO()
        self._limit = limit
        self._size = 0

    def write(self, data: bytes) -> None:
        self._size += len(data)
        if self._buffer is None:
            return
        if self._size > self._limit:
            self._buffer = None
        else:
            self._buffer.write(data)

    def tell(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = 0) -> int:
        """
        Do nothing: L{read} always returns the whole body.
        """
        return 0

    def read(self) -> bytes:
        """
        The whole body.

        @raise ValueTooLarge: it is longer than the limit.
        """
        if self._buffer is None:
            raise ValueTooLarge(f"the value exceeds {self._limit} bytes")
        return self._buffer.getvalue()

    def close(self) -> None:
        self._buffer = None


class _Request(Request):
    """
    A request of a L{_Site}: bounds the body of C{/kv/{key}} writes, and
    notes when it started being processed, for the latency metrics.
    """

    started = 0.0

    def gotLength(self, length: Optional[int]) -> None:
        # Channels that do not tell the target this early (HTTP/2) buffer
        # /kv bodies whole, then refuse them.
        if not pending_request_target(self.channel).startswith(_KEY_PATH):
            super().gotLength(length)
            return
        limit = self.channel.site.max_value_bytes
        keep_form_body(self)
        self.content = _BoundedBody(limit)
        if length is not None and length > limit:
            # A request without a body is processed as soon as its headers
            # are in: answer now, without inviting or reading the body, and
            # close the connection after the answer.
            self.requestHeaders.removeHeader(b"Expect")
            self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            self.channel.persistent = False
            self.channel.length = 0

    def process(self) -> None:
        """
        Set the C{Server} and C{Date} headers every answer carries, let
        the site's guard admit the request (it answers the requests it
        refuses, and may take a while over a password), then serve it.
        """
        site = self.channel.site
        self.started = now = site.reactor.seconds()
        self.setHeader(b"Server", version)
        self.setHeader(b"Date", site.date_header(now))
        if site.guard is None:
            self._serve()
        else:
            site.guard.admit(self, self._serve)

    def _serve(self) -> None:
        """
        Hand C{/kv} requests straight to the key-value resource; others go
        through the site's resource traversal.  A client gone while its
        password was being checked is served nothing.

        The key-value resource reads the raw path, so splitting and
        unquoting its segments for the traversal would be wasted, and so
        would formatting the C{Date} header anew for every request.
        """
        if self.channel is None:
            return
        site = self.channel.site
        path = self.path
        kv_resource = site.kv_resource
        if kv_resource is None or (path != _LIST_PATH and not path.startswith(_KEY_PATH)):
            channel = self.channel
            super().process()
            if channel.transport is None:
                channel.stop_idle_timer()
            return
        self.site = site
        self.sitepath = []
        self.prepath = [_KV]
        self.postpath = []
        try:
            self.render(kv_resource)
        except BaseException:
            self.processingFailed(Failure())


class _Channel(HTTPChannel):
    """
    An HTTP/1.1 connection of a L{_Site}.

    Its addresses are looked up once: twisted.web asks for both on every
    request, and the transport builds a new address object each time.

    Its idle timeout (C{TimeoutMixin}'s, which twisted.web suspends while
    a request is being answered) is one timer per connection, looked at
    only when it fires: twisted.web cancels its timer when a request is in
    and schedules a new one when the answer is out, two changes to the
    reactor's timer heap per request.  Suspending and resuming it here only
    note the time; when the timer fires, it closes the connection if it has
    been idle for the whole timeout, and is set again for the rest of it
    otherwise.

    An answer goes out in one piece: its head is built at once
    (twisted.web hands the transport a list of every name, separator and
    value, which the transport checks and counts one by one) and held
    until the first bytes of the body join it, or the answer ends without
    any.  It goes straight to the socket when the transport holds nothing
    (L{twisted_kv.sending.send}): an answer then costs one C{send}, no
    change to what the reactor watches, and no pass through its loop.
    """

    _host: Optional[IAddress] = None
    _peer: Optional[IAddress] = None
    _idle_timer: Optional[IDelayedCall] = None
    _idle_period: Optional[float] = None
    _active_at = 0.0
    # the head of the answer being written, until its body joins it
    _head: Optional[bytes] = None

    def setTimeout(self, period: Optional[float]) -> Optional[float]:
        previous = self.timeOut
        self.timeOut = period
        self._active_at = self.site.reactor.seconds()
        if period is not None:
            self._idle_period = period
            if self._idle_timer is None:
                self._idle_timer = self.callLater(period, self._idle_check)
        return previous

    def resetTimeout(self) -> None:
        if self.timeOut is not None:
            self._active_at = self.site.reactor.seconds()

    def _idle_check(self) -> None:
        """
        Close the connection if it has been idle for the whole timeout, or
        look again when it would be.
        """
        self._idle_timer = None
        period = self._idle_period
        if period is None or self.transport is None:
            return
        if self.timeOut is None:
            # A request is being answered: not idle.
            self._idle_timer = self.callLater(period, self._idle_check)
            return
        idle = self.site.reactor.seconds() - self._active_at
        if idle >= period:
            self.timeoutConnection()
        else:
            self._idle_timer = self.callLater(period - idle, self._idle_check)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.stop_idle_timer()

    def stop_idle_timer(self) -> None:
        """
        Stop the idle timeout for good: the connection is closed, or a
        resource took it over (the WebSocket upgrade takes the transport
        away from the channel, which then hears nothing more of it).
        """
        self._idle_period = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: object) -> None:
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        lines = [b"%s %s %s" % (version, code, reason)]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines.append(b"%s: %s" % (name, value))
        lines.append(b"\r\n")
        self._head = b"\r\n".join(lines)

    def write(self, data: bytes) -> None:
        send(self.transport, self._after_head(data))

    def writeSequence(self, iovec: Sequence[bytes]) -> None:
        send(self.transport, self._after_head(b"".join(iovec)))

    def requestDone(self, request: Request) -> None:
        if self._head is not None:
            # an answer without a body: a HEAD, a 204 or a 304
            send(self.transport, self._after_head(b""))
        super().requestDone(request)

    def _after_head(self, data: bytes) -> bytes:
        """
        C{data}, behind the head held back if there is one.
        """
        head, self._head = self._head, None
        return data if head is None else head + data

    def getHost(self) -> IAddress:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> IAddress:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer


class _Site(Site):
    """
    The site of a node.

    @ivar kv_resource: the resource answering C{/kv} and C{/kv/{key}}, or
        C{None} to have the root resource route them too.
    @ivar max_value_bytes: the largest C{/kv/{key}} body accepted.
    @ivar guard: admits every request, or C{None} when the cluster has no
        users.
    """

    requestFactory = _Request
    # Plain HTTP/1.1: HTTP/2 would only be negotiated over TLS, which the
    # site is never served over.
    protocol = _Channel

    def __init__(
        self,
        resource: IResource,
        *,
        kv_resource: Optional[IResource],
        clock: IReactorTime,
        max_value_bytes: int,
        metrics: HTTPMetrics,
        guard: Optional[Guard],
    ) -> None:
        super().__init__(resource, reactor=clock)
        self.guard = guard
        self.kv_resource = kv_resource
        self.max_value_bytes = max_value_bytes
        self._metrics = metrics
        self._date: tuple[int, bytes] = (-1, b"")

    def date_header(self, now: float) -> bytes:
        """
        The C{Date} header for an answer made at C{now}, formatted once a
        second.
        """
        second = int(now)
        if self._date[0] != second:
            self._date = (second, datetimeToString(second))
        return self._date[1]

    def log(self, request: Request) -> None:
        """
        Record the answered C{request} in the HTTP metrics.
        """
        self._metrics.observe(
            request.method, request.path, request.code, self.reactor.seconds() - request.started
        )


def build_site(
    kv: IKeyValue,
    status: IClusterStatus,
    *,
    clock: IReactorTime,
    children: Mapping[bytes, IResource] = MappingProxyType({}),
    guard: Optional[Guard] = None,
) -> Site:
    """
    The web site serving the HTTP API of a node.

    @param kv: the store behind C{/kv}.
    @param status: the node and cluster information behind C{/cluster},
        C{/health} and C{/metrics}, which also shows the site's HTTP
        metrics and the process's, from a registry of the site's own.
    @param clock: times requests for the metrics and the connections'
        timeouts.
    @param children: resources mounted as top-level path segments, such as
        C{b"ws"} and C{b"files"}; C{b""} answers C{GET /}.  Paths under no
        resource are answered with a JSON C{404}.
    @param guard: admits or refuses every request (users and their
        rights), and then C{POST /auth/token} gives out tokens; C{None}:
        every request is served.
    @return: the site; its C{resource} is the root resource, which serves
        everything but the site's own handling of request bodies and metrics.
    @raise ValueError: C{children} names C{b"kv"}.
    """
    if _KV in children:
        raise ValueError("/kv is served by the key-value API")
    use_fast_request_line_parser()
    if guard is not None:
        children = {**children, _AUTH: TokenResource(guard)}
    metrics = HTTPMetrics([*children, _KV, *NodeAPI.segments()])
    registry = node_registry(status.metrics, metrics)
    kv_resource = KeyValueResource(kv, clock)
    root = _Root({**children, _KV: kv_resource}, NodeAPI(status, registry).resource())
    return _Site(
        root,
        kv_resource=kv_resource,
        clock=clock,
        max_value_bytes=kv.max_value_bytes,
        metrics=metrics,
        guard=guard,
    )
