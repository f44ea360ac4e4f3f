# -*- test-case-name: tests.test_client_logic -*-
"""
What both clients know of the API, without any I/O: the HTTP requests they
send, how an answer becomes a result or a typed exception, what the frames
of a C{/ws} watch mean, and in which order a watch tries the nodes.

L{twisted_kv.client.sync} and L{twisted_kv.client.txclient} are thin layers
over this module: one sends a L{Request} over C{http.client}, the other over
treq, and both hand the L{Response} back to L{result_of}.  L{Calls} writes
the calls of the API once for both, over their C{_call}.
"""

from __future__ import annotations

import base64
import json
from abc import ABC, abstractmethod
from enum import Enum, auto
from typing import Any, Callable, Generic, Mapping, Optional, Sequence, TypeVar, Union
from urllib.parse import quote, urlencode, urlsplit

from attrs import frozen

from twisted_kv import errors
from twisted_kv.core.backup import BackupRecord, DumpPage
from twisted_kv.core.keyspace import check_user_key
from twisted_kv.core.records import parse_version

__all__ = [
    "DEFAULT_URL",
    "Calls",
    "Data",
    "Frame",
    "NodeRing",
    "Page",
    "Request",
    "Response",
    "Value",
    "WatchPosition",
    "authorization",
    "close_reason",
    "cluster_request",
    "conditions",
    "delete_request",
    "error_for",
    "get_request",
    "list_request",
    "put_request",
    "restore_request",
    "result_of",
    "snapshot_page_request",
    "snapshot_partitions_request",
    "token_request",
    "watch_op",
    "ws_url",
]

T = TypeVar("T")

# A value to store: text is sent as UTF-8.
Data = Union[bytes, str]

DEFAULT_URL = "http://127.0.0.1:7001"

_ERRORS = {
    cls.status: cls
    for cls in (
        errors.InvalidRequest,
        errors.Unauthorized,
        errors.Forbidden,
        errors.TooManyLogins,
        errors.KeyNotFound,
        errors.KeyExists,
        errors.PreconditionFailed,
        errors.ValueTooLarge,
        errors.Unavailable,
        errors.OutcomeUnknown,
        errors.InsufficientStorage,
        errors.SnapshotExpired,
    )
}


@frozen
class Value:
    """
    A value read from the store.

    @ivar data: the value's bytes.
    @ivar content_type: the C{Content-Type} it was stored with.
    @ivar version: its version (the ETag without quotes), for C{if_match}.
    @ivar degraded: C{True} when no majority of the cluster answered, so the
        value may not be the latest.
    """

    data: bytes
    content_type: str
    version: str
    degraded: bool = False

    @property
    def text(self) -> str:
        """
        The value decoded as UTF-8.
        """
        return self.data.decode("utf-8")


@frozen
class Page:
    """
    One page of a key listing; pass C{next} as C{start_after} for the next
    page, C{None} on the last page.
    """

    keys: list[str]
    next: Optional[str]


@frozen
class Response:
    """
    An HTTP answer, however it was received.

    @ivar headers: header values by lower-case name.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes


@frozen
class Request(Generic[T]):
    """
    An HTTP request of the API, and how to read its successful answer.

    @ivar target: the path and query string.
    @ivar result: turns a 2xx L{Response} into the call's result.
    """

    method: str
    target: str
    headers: Mapping[str, str]
    body: Optional[bytes]
    result: Callable[[Response], T]


def error_for(response: Response) -> errors.KVError:
    """
    The typed exception for an error answer: C{{"error", "message"}} JSON
    with the status the HTTP API gives that error.
    """
    try:
        message = json.loads(response.body)["message"]
    except (ValueError, KeyError, TypeError):
        message = response.body.decode("utf-8", "replace").strip() or f"HTTP {response.status}"
    cls = _ERRORS.get(response.status)
    if cls is errors.Unavailable or cls is errors.TooManyLogins:
        try:
            retry_after = float(response.headers.get("retry-after", "1"))
        except ValueError:
            retry_after = 1.0
        return cls(message, retry_after=retry_after)
    if cls is None:
        error = errors.KVError(message)
        error.status = response.status
        return error
    return cls(message)


def authorization(user: Optional[str] = None, token: Optional[str] = None) -> dict[str, str]:
    """
    The headers that authenticate a client: HTTP Basic for C{user} given as
    C{NAME:PASSWORD}, or C{token} from L{token_request} as a bearer token;
    none for neither.

    @raise ValueError: both are given, or C{user} has no C{:}.
    """
    if user is not None and token is not None:
        raise ValueError("give a user or a token, not both")
    if token is not None:
        return {"Authorization": f"Bearer {token}"}
    if user is None:
        return {}
    if ":" not in user:
        raise ValueError("the user must be given as NAME:PASSWORD")
    encoded = base64.b64encode(user.encode("utf-8")).decode("ascii")
    return {"Authorization": f"Basic {encoded}"}


def result_of(request: Request[T], response: Response) -> T:
    """
    The result of C{request} given its C{response}.

    @raise errors.KVError: the response is an error.
    """
    if response.status >= 400:
        raise error_for(response)
    return request.result(response)


def _key_path(key: str) -> str:
    # Every reserved character is escaped, "/" included: the server decodes
    # the whole rest of the path, and no dot-segment can be normalised away.
    return "/kv/" + quote(check_user_key(key), safe="")


def _version(response: Response) -> str:
    return str(json.loads(response.body)["version"])


def _query(**params: Any) -> str:
    present = {name: value for name, value in params.items() if value is not None}
    return "?" + urlencode(present) if present else ""


def _json(response: Response) -> Any:
    return json.loads(response.body)


def get_request(key: str) -> Request[Value]:
    def value(response: Response) -> Value:
        return Value(
            response.body,
            response.headers.get("content-type", "application/octet-stream"),
            response.headers.get("etag", "").strip('"'),
            response.headers.get("x-kv-degraded", "").lower() == "true",
        )

    return Request("GET", _key_path(key), {}, None, value)


def conditions(if_match: Optional[str] = None, if_none_match: bool = False) -> dict[str, str]:
    """
    The headers of a conditional write.

    @param if_match: only if the key is at this version (sent as its ETag).
    @param if_none_match: only if the key does not exist.
    """
    headers = {}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"'
    if if_none_match:
        headers["If-None-Match"] = "*"
    return headers


def put_request(
    key: str,
    value: Data,
    content_type: Optional[str] = None,
    ttl: Optional[float] = None,
    only_if: Optional[Mapping[str, str]] = None,
    create: bool = False,
) -> Request[str]:
    """
    Store C{value} under C{key}: C{PUT}, or C{POST} to C{create}.

    @param only_if: the L{conditions} of the write.
    """
    if isinstance(value, str):
        value = value.encode("utf-8")
        content_type = content_type or "text/plain; charset=utf-8"
    headers = {"Content-Type": content_type or "application/octet-stream", **(only_if or {})}
    return Request(
        "POST" if create else "PUT",
        _key_path(key) + _query(ttl=ttl),
        headers,
        value,
        _version,
    )


def delete_request(key: str, if_match: Optional[str] = None) -> Request[None]:
    return Request("DELETE", _key_path(key), conditions(if_match), None, lambda response: None)


def list_request(
    prefix: str = "", limit: Optional[int] = None, start_after: Optional[str] = None
) -> Request[Page]:
    def page(response: Response) -> Page:
        listing = _json(response)
        return Page(list(listing["keys"]), listing["next"])

    return Request(
        "GET", "/kv" + _query(prefix=prefix, limit=limit, start_after=start_after), {}, None, page
    )


def token_request() -> Request[dict]:
    """
    C{POST /auth/token}: C{{"token", "expires"}}, with Basic credentials.
    """
    return Request("POST", "/auth/token", {}, None, _json)


def cluster_request() -> Request[dict]:
    return Request("GET", "/cluster", {}, None, _json)


def members_request() -> Request[dict]:
    return Request("GET", "/cluster/nodes", {}, None, _json)


def add_member_request(fields: Mapping[str, Any]) -> Request[dict]:
    body = json.dumps(dict(fields)).encode("utf-8")
    return Request("POST", "/cluster/nodes", {"Content-Type": "application/json"}, body, _json)


def remove_member_request(node_id: str) -> Request[dict]:
    return Request("DELETE", "/cluster/nodes/" + quote(node_id, safe=""), {}, None, _json)


def snapshot_partitions_request() -> Request[int]:
    return Request("GET", "/admin/snapshot", {}, None, lambda response: int(_json(response)["partitions"]))


def snapshot_page_request(
    partition: int, dump: Optional[str] = None, after: Optional[str] = None, limit: Optional[int] = None
) -> Request[DumpPage]:
    target = f"/admin/snapshot/partitions/{partition}" + _query(dump=dump, after=after, limit=limit)
    return Request("GET", target, {}, None, lambda response: DumpPage.from_json(_json(response)))


def restore_request(records: Sequence[BackupRecord], batch_id: Optional[str] = None) -> Request[dict]:
    fields: dict = {"records": [record.to_json() for record in records]}
    if batch_id is not None:
        fields["id"] = batch_id
    body = json.dumps(fields).encode("utf-8")
    return Request("POST", "/admin/restore", {"Content-Type": "application/json"}, body, _json)


class Calls(ABC):
    """
    The calls of the API, written once for both clients: each builds its
    L{Request} and hands it to C{_call}, which sends it and reads the
    answer.  L{twisted_kv.client.sync.Client} returns the result itself,
    L{twisted_kv.client.txclient.TxClient} a Deferred that fires with it;
    both raise (or fail with) the typed exceptions of L{twisted_kv.errors}.
    """

    @abstractmethod
    def _call(self, request: Request[Any]) -> Any:
        """
        Send C{request}: its result (see L{result_of}), or a Deferred of it.
        """

    def get(self, key: str) -> Any:
        """
        Read C{key}: a L{Value}.

        @raise errors.KeyNotFound: there is no such key.
        """
        return self._call(get_request(key))

    def put(
        self,
        key: str,
        value: Data,
        *,
        content_type: Optional[str] = None,
        ttl: Optional[float] = None,
        if_match: Optional[str] = None,
        if_none_match: bool = False,
    ) -> Any:
        """
        Store C{value} (text is sent as UTF-8) under C{key}: the new version.

        @param ttl: seconds after which the key disappears.
        @param if_match: only replace this version of the key.
        @param if_none_match: only create the key.
        @raise errors.PreconditionFailed: C{if_match} / C{if_none_match} did
            not hold.
        """
        only_if = conditions(if_match, if_none_match)
        return self._call(put_request(key, value, content_type, ttl, only_if))

    def create(
        self, key: str, value: Data, *, content_type: Optional[str] = None, ttl: Optional[float] = None
    ) -> Any:
        """
        Store C{value} under C{key}, which must not exist (C{POST}): the new
        version.

        @raise errors.KeyExists: the key exists.
        """
        return self._call(put_request(key, value, content_type, ttl, create=True))

    def delete(self, key: str, *, if_match: Optional[str] = None) -> Any:
        """
        Remove C{key}: C{None}.

        @raise errors.KeyNotFound: there is no such key.
        @raise errors.PreconditionFailed: it is not at version C{if_match}.
        """
        return self._call(delete_request(key, if_match))

    def list(
        self, prefix: str = "", *, limit: Optional[int] = None, start_after: Optional[str] = None
    ) -> Any:
        """
        One page of the keys starting with C{prefix}, in key order: a
        L{Page}.
        """
        return self._call(list_request(prefix, limit, start_after))

    def token(self) -> Any:
        """
        A bearer token for the client's user (C{{"token", "expires"}}):
        every node accepts it until it expires.
        """
        return self._call(token_request())

    def cluster(self) -> Any:
        """
        The node's view of the cluster (C{GET /cluster}): a dict.
        """
        return self._call(cluster_request())

    def members(self) -> Any:
        """
        The cluster's members and the change in progress (C{GET
        /cluster/nodes}): a dict.
        """
        return self._call(members_request())

    def add_member(self, fields: Mapping[str, Any]) -> Any:
        """
        Add the node C{fields} describe (C{id}, C{host}, C{http_port},
        C{peer_port}, C{ftp_port}); answers the membership once the change
        is committed (its data then moves).
        """
        return self._call(add_member_request(fields))

    def remove_member(self, node_id: str) -> Any:
        """
        Remove node C{node_id} once its copies moved to the others.
        """
        return self._call(remove_member_request(node_id))

    def snapshot_partitions(self) -> Any:
        """
        How many partitions a backup dumps (C{GET /admin/snapshot}).
        """
        return self._call(snapshot_partitions_request())

    def snapshot_page(
        self, partition: int, dump: Optional[str] = None, after: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> Any:
        """
        A page of a partition's dump (a new dump without C{dump}): a
        L{twisted_kv.core.backup.DumpPage}; raises (fails with)
        L{errors.SnapshotExpired} when the dump must start again.
        """
        return self._call(snapshot_page_request(partition, dump, after, limit))

    def restore(self, records: Sequence[BackupRecord], batch_id: Optional[str] = None) -> Any:
        """
        Write C{records} (C{POST /admin/restore}): C{{"written", "skipped"}}.
        The same batch sent again under the same C{batch_id} writes no
        record twice.
        """
        return self._call(restore_request(records, batch_id))


def ws_url(url: str) -> str:
    """
    The C{/ws} URL of the node at C{url} (C{http://...} or C{https://...}).
    """
    parts = urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/ws"


def watch_op(prefix: str, files: bool, since: Optional[int]) -> dict[str, Any]:
    """
    The one watch a connection sends: its replay and live changes then come
    in revision order, and the last revision is a safe place to resume.

    @param since: the revision to resume after, C{None} to start now.
    """
    op: dict[str, Any] = (
        {"op": "watch_files", "path": prefix} if files else {"op": "watch", "prefix": prefix}
    )
    return op if since is None else {**op, "since": since}


class Frame(Enum):
    """
    What a frame received over C{/ws} means to a watch.
    """

    WATCHING = auto()
    """The node answered the watch."""
    CHANGE = auto()
    """A change (or C{compacted}) to hand to the watch's callback."""
    REFUSED = auto()
    """The node refused the watch (an C{error} frame)."""
    IGNORED = auto()
    """Nothing new: a change already delivered, or a frame of no interest."""


# The frames handed to a watch's callback; "watching" and "unwatched" are
# the watch's own business.
_CHANGES = frozenset({"put", "delete", "expire", "file", "compacted"})


class WatchPosition:
    """
    Where a watch stands in the change feed, across connections and nodes,
    so that no change is missed or repeated.

    @ivar revision: the revision to resume after: the last change received,
        else the revision at which the first watch began (C{None} before).
    """

    def __init__(self, since: Optional[int] = None) -> None:
        self.revision = since
        self._versions: dict[str, int] = {}

    def receive(self, frame: dict) -> Frame:
        """
        Take in a frame of the node: what it means to the watch.
        """
        kind = frame.get("type")
        if kind == "watching":
            if self.revision is None:
                self.revision = frame["revision"]
            return Frame.WATCHING
        if kind == "error":
            return Frame.REFUSED
        if kind not in _CHANGES:
            return Frame.IGNORED
        revision = frame["revision"]
        if self.revision is not None and revision <= self.revision:
            if kind != "compacted":
                return Frame.IGNORED
            # A node behind the one this watch came from goes on after its
            # own revision: the changes up to ours are not new.
            revision = self.revision
        self.revision = revision
        return Frame.IGNORED if self._repeated(frame) else Frame.CHANGE

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


class NodeRing:
    """
    The nodes a watch connects to: the same one until a connection to it
    fails or is lost (L{move}), then the next, round and round, the first
    node given first and once.
    """

    def __init__(self, url: str, others: Sequence[str] = ()) -> None:
        self._urls = [url, *(other for other in others if other != url)]
        self._current = 0

    @property
    def url(self) -> str:
        """
        The current node's URL.
        """
        return self._urls[self._current]

    def __len__(self) -> int:
        return len(self._urls)

    def move(self) -> str:
        """
        Make the next node the current one: returns its URL.
        """
        self._current = (self._current + 1) % len(self._urls)
        return self.url


def close_reason(code: Optional[int], reason: Optional[str]) -> str:
    """
    Why an open WebSocket connection closed, in a few words.
    """
    if code is None or code == 1006:
        return "connection lost"
    return f"closed {code}: {reason}" if reason else f"closed {code}"
