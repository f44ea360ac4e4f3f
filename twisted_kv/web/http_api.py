# -*- test-case-name: tests.test_http_api -*-
"""
The HTTP API of a node, which every node serves for the whole cluster, as
twisted.web resources.

Two parts, both reached through L{twisted_kv.web.site.build_site}:

  - L{KeyValueResource} answers C{/kv} (the key listing) and C{/kv/{key}}.
    It is the hot path of the product, so it is a plain leaf resource: the
    key is the raw request path after C{/kv/}, percent-decoded to bytes and
    then decoded as UTF-8, with no router in between that could merge
    slashes, split on C{%2F} or resolve C{..}.

  - L{NodeAPI} is a Klein application for everything else: C{/cluster},
    C{/health}, C{/live}, C{/metrics}, and JSON C{404}/C{405} answers for
    any path no other resource claims.

Every error answer, from either part, is made by
L{twisted_kv.web.errors.render_failure}, which C{/files} shares: the one
mapping from failures to statuses, C{Retry-After} and C{Allow} headers and
the JSON body C{{"error": code, "message": text}}.  The one exception is the
C{503} of C{/health}, a status report rather than a failed request, whose
body adds the reason and what it was decided from.

Conditional requests follow RFC 9110 section 13, parsed and evaluated by
L{twisted_kv.web.conditions} (which C{/files} shares too).  When the store can check a
precondition itself (no C{If-Match}, or C{If-Match} naming one strong
entity-tag; no C{If-None-Match}, or C{If-None-Match: *} on a PUT), the write
is one store operation.  Any other precondition (C{If-Match: *}, lists of
entity-tags, C{If-None-Match} with entity-tags) is evaluated on a read, and
the write is then made conditional on the version that read found, so a
concurrent writer makes it fail and the evaluation starts again.  GET and
HEAD answer C{304} (with the ETag, no body) when C{If-None-Match} matches.
A C{412} carries the C{ETag} of the key's current version (read again after
the store refused a write), so that the client can retry without a GET.

Reads of a key written with a TTL carry C{X-KV-TTL}, the seconds it has left
by this node's clock.  There is no C{Expires} header: it would tell caches
that the value stays fresh until then, though any write may replace it.

A query parameter the request does not take is a C{400}, as an unknown key
in the cluster file is an error: a misspelt C{?tll=5} must not store the key
without its TTL.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Iterable, Optional
from urllib.parse import unquote_to_bytes

from klein import Klein
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from twisted_kv.core.keyspace import USER, name_of, to_user, user_key
from twisted_kv.core.records import format_version
from twisted_kv.core.roster import ADD, REMOVE, node_from_fields
from twisted_kv.core.users import grant_of
from twisted_kv.errors import (
    InvalidRequest,
    KeyNotFound,
    PreconditionFailed,
    Unavailable,
    ValueTooLarge,
)
from twisted_kv.interfaces import (
    IClusterStatus,
    IKeyValue,
    KeyPage,
    ReadResult,
    WriteResult,
)
from twisted_kv.web.conditions import (
    Preconditions,
    etag,
    preconditions,
    tag_current,
    write_conditionally,
)
from twisted_kv.web.errors import (
    JSON_TYPE,
    MethodNotAllowed,
    render_failure,
    send_failure,
    to_json,
)
from twisted_kv.web.metrics import EXPOSITION_TYPE, Counts, Histogram, Metric, render

DEFAULT_CONTENT_TYPE = "application/octet-stream"

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000

_KEY_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")
_LIST_METHODS = ("GET", "HEAD")

# The query parameters each request takes; any other is refused, so that a
# misspelt one (?tll=5) never silently changes what a request does.
_WRITE_PARAMETERS = frozenset({b"ttl"})
_KEY_PARAMETERS = {b"PUT": _WRITE_PARAMETERS, b"POST": _WRITE_PARAMETERS}
_LIST_PARAMETERS = frozenset({b"prefix", b"limit", b"start_after"})
_NO_PARAMETERS: frozenset[bytes] = frozenset()


def _send(
    request: IRequest, code: int, body: bytes, content_type: bytes, tag: Optional[bytes] = None
) -> None:
    """
    Answer C{request} with C{body}, unless its client has gone away.
    """
    if request.channel is None:
        return
    request.setResponseCode(code)
    headers = request.responseHeaders
    headers.setRawHeaders(b"Content-Type", [content_type])
    headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    if tag is not None:
        headers.setRawHeaders(b"ETag", [tag])
    request.write(body)
    request.finish()


def _send_empty(request: IRequest, code: int) -> None:
    """
    Answer C{request} with a bodiless C{204} or C{304}.
    """
    if request.channel is None:
        return
    request.setResponseCode(code)
    request.finish()


def check_query(request: IRequest, accepted: frozenset[bytes], resource: str) -> None:
    """
    Refuse a query parameter that the request does not take.

    @param accepted: the names of the parameters it takes.
    @param resource: the path it was made on, as documented
        (C{"/kv/{key}"}), for the message.
    @raise InvalidRequest: the query names another parameter, or names one
        without a value (twisted.web leaves C{?ttl} out of C{request.args}).
    """
    named: set[bytes] = set()
    bare: set[bytes] = set()
    for element in request.uri.partition(b"?")[2].split(b"&"):
        if element:
            name, equals, _ = element.partition(b"=")
            (named if equals else bare).add(unquote_to_bytes(name.replace(b"+", b" ")))
    unknown = sorted((named | bare) - accepted)
    if unknown:
        names = ", ".join(repr(name.decode("utf-8", "replace")) for name in unknown)
        target = f"{request.method.decode('ascii', 'replace')} {resource}"
        if accepted:
            takes = f"{target} accepts only {', '.join(sorted(n.decode() for n in accepted))}"
        else:
            takes = f"{target} takes no query parameters"
        plural = "s" if len(unknown) > 1 else ""
        raise InvalidRequest(f"unknown query parameter{plural} {names}: {takes}")
    if bare:
        name = min(bare).decode("utf-8", "replace")
        raise InvalidRequest(f"query parameter {name!r} has no value (expected {name}=...)")


def _query(request: IRequest, name: bytes) -> Optional[bytes]:
    """
    The one value of query parameter C{name}, or C{None} when absent.

    @raise InvalidRequest: the parameter is given more than once.
    """
    values = request.args.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise InvalidRequest(f"{name.decode('ascii')} is given more than once")
    return values[0]


def _query_text(request: IRequest, name: bytes) -> Optional[str]:
    value = _query(request, name)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{name.decode('ascii')} is not valid UTF-8") from None


_DECIMAL = re.compile(rb"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _ttl(request: IRequest) -> Optional[float]:
    """
    The C{?ttl=S} of a write: a positive, finite decimal number of seconds.
    """
    value = _query(request, b"ttl")
    if value is None:
        return None
    ttl = float(value) if _DECIMAL.fullmatch(value) else 0.0
    if not (0 < ttl < math.inf):
        raise InvalidRequest("ttl must be a positive number of seconds")
    return ttl


def _limit(request: IRequest) -> int:
    value = _query(request, b"limit")
    if value is None:
        return DEFAULT_LIMIT
    limit = int(value) if value.isdigit() and len(value) < 10 else 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return limit


def client_key(raw: bytes) -> str:
    """
    The client key named by C{raw}, the request path after C{/kv/}.

    @raise InvalidRequest: it is not UTF-8 once percent-decoded.
    """
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the key is not valid UTF-8") from None


def _value(request: IRequest, max_bytes: int) -> bytes:
    """
    The body of a write, refused from its C{Content-Length} before it is
    read when it is too large.
    """
    length = request.getHeader(b"Content-Length")
    if length is not None and int(length) > max_bytes:
        raise ValueTooLarge(f"the value exceeds {max_bytes} bytes")
    return request.content.read()


def _content_type(request: IRequest) -> str:
    content_type = request.getHeader(b"Content-Type")
    return content_type.decode("latin-1") if content_type else DEFAULT_CONTENT_TYPE


_DEGRADED = b"X-KV-Degraded"
# The seconds a key written with a TTL has left, on reads of it.
_TTL = b"X-KV-TTL"


class KeyValueResource(Resource):
    """
    C{/kv} (listing keys) and C{/kv/{key}} (one key), over an L{IKeyValue}.

    The key is everything after the second C{/} of the raw request path, so
    this resource is mounted as a leaf directly under the root.  Its clock
    tells the seconds left to keys written with a TTL.
    """

    isLeaf = True

    def __init__(self, kv: IKeyValue, clock: IReactorTime) -> None:
        super().__init__()
        self._kv = kv
        self._clock = clock
        self._handlers: dict[bytes, Callable[[IRequest, str], Deferred[None]]] = {
            b"GET": self._get,
            b"HEAD": self._get,
            b"PUT": self._put,
            b"POST": self._post,
            b"DELETE": self._delete,
        }

    def render(self, request: IRequest) -> int:
        try:
            path = request.path
            slash = path.find(b"/", 1)
            if slash < 0:
                answered = self._list(request)
            else:
                handler = self._handlers.get(request.method)
                if handler is None:
                    raise MethodNotAllowed(_KEY_METHODS)
                if b"?" in request.uri:
                    parameters = _KEY_PARAMETERS.get(request.method, _NO_PARAMETERS)
                    check_query(request, parameters, "/kv/{key}")
                answered = handler(request, client_key(path[slash + 1 :]))
        except Exception:
            answered = fail()
        answered.addErrback(lambda failure: send_failure(request, failure))
        return NOT_DONE_YET

    def _list(self, request: IRequest) -> Deferred[None]:
        if request.method not in (b"GET", b"HEAD"):
            raise MethodNotAllowed(_LIST_METHODS)
        check_query(request, _LIST_PARAMETERS, "/kv")
        prefix = _query_text(request, b"prefix") or ""
        start_after = _query_text(request, b"start_after")
        limit = _limit(request)
        prefixes = grant_of(request).listable(prefix)
        if prefixes == [prefix]:
            listed = self._kv.list_keys(
                USER + prefix, user_key(start_after) if start_after else None, limit
            )
        else:
            listed = Deferred.fromCoroutine(self._list_within(prefixes, start_after, limit))
        return listed.addCallback(self._listed, request)

    async def _list_within(
        self, prefixes: list[str], start_after: Optional[str], limit: int
    ) -> KeyPage:
        """
        One page of the keys under C{prefixes} (in key order, none a prefix
        of another), listed one prefix after the other: the keys a user may
        read of a wider listing, and no other key, not even as C{next}.
        """
        keys: list[str] = []
        degraded = False
        after = user_key(start_after) if start_after else None
        for prefix in prefixes:
            page = await self._kv.list_keys(USER + prefix, after, limit - len(keys))
            keys.extend(page.keys)
            degraded = degraded or page.degraded
            if len(keys) == limit:
                more = page.next is not None or prefix != prefixes[-1]
                return KeyPage(keys, keys[-1] if more else None, degraded)
        return KeyPage(keys, None, degraded)

    @staticmethod
    def _listed(page: KeyPage, request: IRequest) -> None:
        if page.degraded:
            request.setHeader(_DEGRADED, b"true")
        body = {"keys": [name_of(key) for key in page.keys], "next": to_user(page.next)}
        _send(request, 200, to_json(body), JSON_TYPE)

    def _get(self, request: IRequest, key: str) -> Deferred[None]:
        conditions = preconditions(request)
        return self._kv.get(user_key(key)).addCallback(self._got, request, key, conditions)

    def _got(
        self, result: ReadResult, request: IRequest, key: str, conditions: Preconditions
    ) -> None:
        headers = request.responseHeaders
        if result.degraded:
            headers.setRawHeaders(_DEGRADED, [b"true"])
        record = result.record
        if record is None:
            raise KeyNotFound(f"no key {key!r}")
        version = format_version(record.version)
        # Every answer from here on (200, 304, 412) tells the current version.
        headers.setRawHeaders(b"ETag", [etag(version)])
        if record.expires_at is not None:
            remaining = max(0.0, record.expires_at - self._clock.seconds())
            headers.setRawHeaders(_TTL, [b"%.3f" % remaining])
        if not conditions.evaluate(version):
            _send_empty(request, 304)
            return
        content_type = record.content_type.encode("latin-1", "replace")
        _send(request, 200, record.value, content_type)

    def _post(self, request: IRequest, key: str) -> Deferred[None]:
        return self._put(request, key, create_only=True)

    def _put(self, request: IRequest, key: str, create_only: bool = False) -> Deferred[None]:
        store_key = user_key(key)
        value = _value(request, self._kv.max_value_bytes)
        content_type = _content_type(request)
        ttl = _ttl(request)
        conditions = preconditions(request)

        def put(if_match: Optional[str], if_none_match: bool) -> Deferred[WriteResult]:
            return self._kv.put(
                store_key, value, content_type, ttl, if_match, if_none_match, create_only
            )

        if conditions.store_checkable(none_match_any=True):
            written = put(conditions.version, conditions.if_none_match is not None)
        else:
            written = self._conditionally(
                store_key, conditions, lambda version: put(version, version is None)
            )
        written.addErrback(self._tag_current, request, store_key)
        return written.addCallback(self._written, request, key)

    @staticmethod
    def _written(result: WriteResult, request: IRequest, key: str) -> None:
        body = to_json({"key": key, "version": result.version})
        _send(request, 201 if result.created else 200, body, JSON_TYPE, etag(result.version))

    def _delete(self, request: IRequest, key: str) -> Deferred[None]:
        store_key = user_key(key)
        conditions = preconditions(request)
        if conditions.store_checkable(none_match_any=False):
            deleted = self._kv.delete(store_key, conditions.version)
        else:

            def delete(version: Optional[str]) -> Deferred[str]:
                if version is None:
                    return fail(KeyNotFound(f"no key {key!r}"))
                return self._kv.delete(store_key, version)

            deleted = self._conditionally(store_key, conditions, delete)
        deleted.addErrback(self._tag_current, request, store_key)
        return deleted.addCallback(lambda _: _send_empty(request, 204))

    def _tag_current(self, failure: Failure, request: IRequest, store_key: str) -> Deferred[None]:
        """
        Give the C{412} answering a failed precondition the C{ETag} of the
        key's current version (see L{tag_current}).

        @return: a Deferred failing with C{failure}.
        """
        failure.trap(PreconditionFailed)
        tagged = Deferred.fromCoroutine(tag_current(request, lambda: self._current(store_key)))
        return tagged.addCallback(lambda _: failure)

    async def _current(self, store_key: str) -> tuple[Optional[str], bool]:
        """
        The current version of C{store_key} (C{None}: no such key) and
        whether the read of it is degraded.
        """
        result = await self._kv.get(store_key)
        record = result.record
        return None if record is None else format_version(record.version), result.degraded

    def _conditionally(
        self,
        store_key: str,
        conditions: Preconditions,
        write: Callable[[Optional[str]], Deferred[Any]],
    ) -> Deferred[Any]:
        """
        Evaluate C{conditions} on a read of C{store_key}, then C{write},
        conditional on the version read; start again when a concurrent write
        made that condition fail.

        @param write: called with the version read (C{None}: no such key);
            returns a Deferred that fails with L{PreconditionFailed} if the
            key no longer is at that version.
        @return: a Deferred firing with the result of C{write}, or failing
            with L{PreconditionFailed}, with L{Unavailable} when the read is
            degraded or the key kept changing, or with C{write}'s failures.
        """
        return Deferred.fromCoroutine(
            write_conditionally(conditions, lambda: self._current(store_key), write, "the key")
        )


# The label of each method; any other is counted as "other", so clients
# cannot add series at will.
_METHOD_LABELS = {
    method: method.decode("ascii")
    for method in (b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"OPTIONS", b"PATCH")
}


class HTTPMetrics:
    """
    Counts of answered HTTP requests by method and status code, and a
    histogram of their latencies by handler and method.  A handler is the
    first segment of the request path (C{/kv}, C{/cluster}, C{/ws}, C{/}),
    or C{other} for one the site does not serve and for targets that are not
    a path (C{*}, an absolute URI).
    """

    def __init__(self, segments: Iterable[bytes]) -> None:
        """
        @param segments: the first path segments the site serves.
        """
        self._handlers = {segment: "/" + segment.decode("ascii") for segment in segments}
        self._requests = Counts(
            "twisted_kv_http_requests_total",
            "HTTP requests answered, by method and status code.",
            ["method", "code"],
        )
        self._latency = Histogram(
            "twisted_kv_http_request_duration_seconds",
            "Time to answer an HTTP request, in seconds, by handler and method.",
            ["handler", "method"],
        )

    def observe(self, method: bytes, path: bytes, code: int, seconds: float) -> None:
        """
        Record one request for C{path} answered with C{code} after
        C{seconds}.
        """
        label = _METHOD_LABELS.get(method, "other")
        self._requests.inc((label, code))
        # An absolute path splits into b"", its first segment, the rest.
        segments = path.split(b"/", 2)
        if segments[0] or len(segments) == 1:
            handler = "other"
        else:
            handler = self._handlers.get(segments[1], "other")
        self._latency.observe((handler, label), seconds)

    def collect(self) -> Iterable[Metric]:
        """
        The request counts and the latency histogram, when scraped.
        """
        yield from self._requests.collect()
        yield from self._latency.collect()


class NodeAPI:
    """
    The Klein application for C{/cluster}, C{/health}, C{/live} and
    C{/metrics}; it also answers every path no other resource claims, with
    a JSON C{404}.

    C{/health} is for load balancers: C{200} while the node serves reads and
    writes, else C{503}.  C{/live} is for supervisors: C{200} whenever the
    process answers at all.
    """

    _app = Klein()

    def __init__(self, status: IClusterStatus, registry: CollectorRegistry) -> None:
        """
        @param status: the node behind C{/cluster} and C{/health}.
        @param registry: the node's metrics, for C{/metrics}.
        """
        self._status = status
        self._registry = registry

    @classmethod
    def segments(cls) -> set[bytes]:
        """
        The first path segments of the application's routes.
        """
        return {rule.rule.split("/")[1].encode("ascii") for rule in cls._app.url_map.iter_rules()}

    def resource(self) -> IResource:
        """
        The resource serving this application.
        """
        return self._app.resource()

    @_app.route("/cluster", methods=["GET"])
    def _cluster(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", JSON_TYPE)
        return to_json(self._status.cluster_view())

    @_app.route("/cluster/nodes", methods=["GET"])
    def _members(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", JSON_TYPE)
        return to_json(self._status.members_view())

    @_app.route("/cluster/nodes", methods=["POST"])
    def _add_member(self, request: IRequest) -> Deferred[bytes]:
        try:
            fields = json.loads(request.content.read())
        except ValueError as error:
            raise InvalidRequest(f"the body is not JSON: {error}") from None
        node_from_fields(fields)  # malformed: 400 here, before asking the leader
        return self._change_members(request, ADD, fields)

    @_app.route("/cluster/nodes/<node_id>", methods=["DELETE"])
    def _remove_member(self, request: IRequest, node_id: str) -> Deferred[bytes]:
        return self._change_members(request, REMOVE, node_id)

    def _change_members(self, request: IRequest, kind: str, node: Any) -> Deferred[bytes]:
        """
        Every membership change enters here, and only here: the place for
        the check that the user may change the membership (§9's C{admin}).
        Answers C{202} once the change is committed: the data then moves,
        and C{/cluster} shows what still does.
        """

        def accepted(view: dict) -> bytes:
            request.setResponseCode(202)
            request.setHeader(b"Content-Type", JSON_TYPE)
            return to_json(view)

        return self._status.change_members(kind, node).addCallback(accepted)

    @_app.route("/health", methods=["GET"])
    def _health(self, request: IRequest) -> bytes:
        health = self._status.health()
        request.setHeader(b"Content-Type", JSON_TYPE)
        if health.problem is None:
            return to_json({"status": "ok", **health.details})
        request.setResponseCode(503)
        request.setHeader(b"Retry-After", b"1")
        return to_json(
            {
                "error": Unavailable.code,
                "message": health.message,
                "reason": health.problem,
                **health.details,
            }
        )

    @_app.route("/live", methods=["GET"])
    def _live(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", JSON_TYPE)
        return to_json({"status": "ok"})

    @_app.route("/metrics", methods=["GET"])
    def _metrics(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", EXPOSITION_TYPE)
        return render(self._registry)

    @_app.handle_errors(Exception)
    def _failed(self, request: IRequest, failure: Failure) -> bytes:
        return render_failure(request, failure)
