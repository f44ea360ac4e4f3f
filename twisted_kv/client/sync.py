# -*- test-case-name: tests.test_client -*-
"""
A small synchronous Python client for a twisted_kv cluster.

It speaks the HTTP API and the C{/ws} change feed (docs/websocket.md) to any one
node (every node answers for the whole cluster)::

    from twisted_kv.client.sync import Client

    with Client("http://127.0.0.1:7001") as kv:
        version = kv.put("users/alice", '{"name": "Alice"}',
                         content_type="application/json")
        value = kv.get("users/alice")        # Value(data, content_type, version)
        kv.put("users/alice", b"...", if_match=value.version)
        for key in kv.keys("users/"):
            print(key)
        kv.delete("users/alice")
        with kv.watch("users/") as events:   # blocks, one dict per change
            for event in events:
                print(event["type"], event["key"], event["revision"])

Failures are the typed exceptions of L{twisted_kv.errors}, chosen by the
HTTP status (L{KeyNotFound} for 404, L{PreconditionFailed} for 412,
L{Unavailable} for 503, ...); network failures are the usual C{OSError}s.

The HTTP requests and the interpretation of their answers are shared with
L{twisted_kv.client.txclient.TxClient}, the Twisted flavour, which returns
Deferreds; this module only adds a keep-alive C{http.client} connection.
A L{Client} is not thread-safe: use one per thread.
"""

from __future__ import annotations

import http.client
import json
import queue
import select
import socket
import threading
import time
from typing import Any, Callable, Generic, Iterator, Mapping, Optional, Sequence, TypeVar, Union
from urllib.parse import quote, urlencode, urlsplit

from attrs import frozen

from twisted_kv import errors
from twisted_kv.core.keyspace import check_user_key

__all__ = ["Client", "Page", "Value", "Watch"]

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:7001"

_ERRORS = {
    cls.status: cls
    for cls in (
        errors.InvalidRequest,
        errors.KeyNotFound,
        errors.KeyExists,
        errors.PreconditionFailed,
        errors.ValueTooLarge,
        errors.Unavailable,
        errors.OutcomeUnknown,
        errors.InsufficientStorage,
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
    with the status the HTTP API gives that failure.
    """
    try:
        message = json.loads(response.body)["message"]
    except (ValueError, KeyError, TypeError):
        message = response.body.decode("utf-8", "replace").strip() or f"HTTP {response.status}"
    cls = _ERRORS.get(response.status)
    if cls is errors.Unavailable:
        try:
            retry_after = float(response.headers.get("retry-after", "1"))
        except ValueError:
            retry_after = 1.0
        return errors.Unavailable(message, retry_after=retry_after)
    if cls is None:
        error = errors.KVError(message)
        error.status = response.status
        return error
    return cls(message)


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


def put_request(
    key: str,
    value: Union[bytes, str],
    content_type: Optional[str] = None,
    ttl: Optional[float] = None,
    if_match: Optional[str] = None,
    if_none_match: bool = False,
    create: bool = False,
) -> Request[str]:
    if isinstance(value, str):
        value = value.encode("utf-8")
        content_type = content_type or "text/plain; charset=utf-8"
    headers = {"Content-Type": content_type or "application/octet-stream"}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"'
    if if_none_match:
        headers["If-None-Match"] = "*"
    return Request(
        "POST" if create else "PUT",
        _key_path(key) + _query(ttl=ttl),
        headers,
        value,
        _version,
    )


def delete_request(key: str, if_match: Optional[str] = None) -> Request[None]:
    headers = {} if if_match is None else {"If-Match": f'"{if_match}"'}
    return Request("DELETE", _key_path(key), headers, None, lambda response: None)


def list_request(
    prefix: str = "", limit: Optional[int] = None, start_after: Optional[str] = None
) -> Request[Page]:
    def page(response: Response) -> Page:
        listing = _json(response)
        return Page(list(listing["keys"]), listing["next"])

    return Request(
        "GET", "/kv" + _query(prefix=prefix, limit=limit, start_after=start_after), {}, None, page
    )


def cluster_request() -> Request[dict]:
    return Request("GET", "/cluster", {}, None, _json)


def ws_url(url: str) -> str:
    """
    The C{/ws} URL of the node at C{url} (C{http://...} or C{https://...}).
    """
    parts = urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/ws"


class Client:
    """
    A blocking client for one node, over one keep-alive HTTP connection.

    @param url: the node, e.g. C{http://127.0.0.1:7001}.
    @param timeout: seconds to wait for the node on each request.
    """

    def __init__(self, url: str = DEFAULT_URL, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        self.url = url
        self._timeout = timeout
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._connection: Optional[http.client.HTTPConnection] = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """
        Close the HTTP connection (a later call opens a new one).
        """
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def get(self, key: str) -> Value:
        """
        Read C{key}.

        @raise errors.KeyNotFound: there is no such key.
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
    ) -> str:
        """
        Store C{value} (text is sent as UTF-8) under C{key}.

        @param ttl: seconds after which the key disappears.
        @param if_match: only replace this version of the key.
        @param if_none_match: only create the key.
        @return: the new version.
        @raise errors.PreconditionFailed: C{if_match} / C{if_none_match} did
            not hold.
        """
        return self._call(put_request(key, value, content_type, ttl, if_match, if_none_match))

    def create(
        self,
        key: str,
        value: Union[bytes, str],
        *,
        content_type: Optional[str] = None,
        ttl: Optional[float] = None,
    ) -> str:
        """
        Store C{value} under C{key}, which must not exist (C{POST}).

        @return: the new version.
        @raise errors.KeyExists: the key exists.
        """
        return self._call(put_request(key, value, content_type, ttl, create=True))

    def delete(self, key: str, *, if_match: Optional[str] = None) -> None:
        """
        Remove C{key}.

        @raise errors.KeyNotFound: there is no such key.
        @raise errors.PreconditionFailed: it is not at version C{if_match}.
        """
        self._call(delete_request(key, if_match))

    def list(
        self, prefix: str = "", *, limit: Optional[int] = None, start_after: Optional[str] = None
    ) -> Page:
        """
        One page of the keys starting with C{prefix}, in key order.
        """
        return self._call(list_request(prefix, limit, start_after))

    def keys(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[str]:
        """
        Every key starting with C{prefix}, in key order, fetched a page at a
        time.
        """
        start_after = None
        while True:
            page = self.list(prefix, limit=page_size, start_after=start_after)
            yield from page.keys
            if page.next is None:
                return
            start_after = page.next

    def cluster(self) -> dict:
        """
        The node's view of the cluster (C{GET /cluster}).
        """
        return self._call(cluster_request())

    def watch(
        self,
        prefix: str = "",
        *,
        since: Optional[int] = None,
        files: bool = False,
        timeout: float = 10.0,
        others: Sequence[str] = (),
        on_lost: Callable[[str, str, str], None] = lambda url, reason, next_url: None,
        on_watching: Callable[[str], None] = lambda url: None,
    ) -> Watch:
        """
        Follow the changes of the keys starting with C{prefix} (of the files
        whose path starts with it if C{files}) over C{/ws}.

        @param since: start with the changes after this revision.
        @param timeout: seconds to wait for the node to accept the watch.
        @param others: the URLs of other nodes to move to when the
            connection is lost.
        @param on_lost: called with a node's URL, why its connection was
            lost (or could not be made) and the URL of the node tried next.
        @param on_watching: called with a node's URL each time it has
            answered the watch.
        @return: a L{Watch}, active when returned: iterate over it, and
            close it when done.  The callbacks run in the iterating thread,
            in order with the changes.
        @raise TimeoutError: the node did not accept the watch in time.
        """
        return Watch(self.url, prefix, since, files, timeout, others, on_lost, on_watching)

    def _call(self, request: Request[T]) -> T:
        return result_of(request, self._send(request))

    def _send(self, request: Request[Any]) -> Response:
        connection = self._connection
        if connection is not None and connection.sock is not None and _closed_by_peer(connection.sock):
            # The node closed the idle keep-alive connection: open a new one
            # rather than send a request that might or might not arrive (and
            # so could not be retried safely).
            self.close()
        if self._connection is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._connection = cls(self._netloc, timeout=self._timeout)
        try:
            self._connection.request(
                request.method, request.target, body=request.body, headers=dict(request.headers)
            )
            answer = self._connection.getresponse()
            body = answer.read()
        except BaseException:
            self.close()
            raise
        headers = {name.lower(): value for name, value in answer.getheaders()}
        if answer.will_close:
            self.close()
        return Response(answer.status, headers, body)


def _closed_by_peer(sock: socket.socket) -> bool:
    """
    Whether an idle connection is readable: the node closed it (a node sends
    nothing unasked, so anything else is as good a reason to drop it).
    """
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


_reactor_lock = threading.Lock()


def _reactor_in_thread() -> Any:
    """
    The global reactor, running in another thread: started in a daemon
    thread unless the program already runs it.

    @raise RuntimeError: called from the reactor's own thread, which a
        blocking call would freeze; use L{twisted_kv.client.txclient} there.
    """
    from twisted.internet import reactor
    from twisted.python.threadable import isInIOThread

    with _reactor_lock:
        if not reactor.running:
            started = threading.Event()
            reactor.callWhenRunning(started.set)
            threading.Thread(
                target=reactor.run,
                kwargs={"installSignalHandlers": False},
                name="twisted_kv reactor",
                daemon=True,
            ).start()
            started.wait()
    if isInIOThread():
        raise RuntimeError("a blocking watch cannot run in the reactor thread: use TxClient.watch")
    return reactor


class Watch:
    """
    A blocking iterator over the change frames of C{/ws} (C{put},
    C{delete}, C{expire}, C{file} and C{compacted}, as dicts).

    It runs a L{twisted_kv.client.txclient.Watcher} on a reactor in a background
    thread, which reconnects after a lost connection (to the next node, given
    others) and resumes after the last revision received.  Its connection
    callbacks are queued with the changes, and run by the iterating thread.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        since: Optional[int],
        files: bool,
        timeout: float,
        others: Sequence[str],
        on_lost: Callable[[str, str, str], None],
        on_watching: Callable[[str], None],
    ) -> None:
        from twisted.internet.defer import TimeoutError as DeferredTimeout
        from twisted.internet.threads import blockingCallFromThread

        from twisted_kv.client.txclient import Watcher

        self._events: queue.Queue[Union[dict, Callable[[], None]]] = queue.Queue()
        self._reactor = _reactor_in_thread()
        self._call = blockingCallFromThread
        self._closed = False

        def start() -> Any:
            self._watcher = Watcher(
                url,
                self._events.put,
                prefix,
                since=since,
                files=files,
                reactor=self._reactor,
                others=others,
                on_lost=lambda *args: self._events.put(lambda: on_lost(*args)),
                on_watching=lambda *args: self._events.put(lambda: on_watching(*args)),
            )
            self._watcher.start()
            return self._watcher.when_watching().addTimeout(timeout, self._reactor)

        try:
            self._call(self._reactor, start)
        except DeferredTimeout:
            self.close()
            raise TimeoutError(f"{url} did not accept the watch within {timeout} s") from None

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[dict]:
        while True:
            event = self.next_event()
            assert event is not None
            yield event

    def next_event(self, timeout: Optional[float] = None) -> Optional[dict]:
        """
        The next change, waiting at most C{timeout} seconds (C{None}: for
        ever); the connection callbacks queued before it run first.

        @return: the change, or C{None} if none came in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._events.get(timeout=remaining)
            except queue.Empty:
                return None
            if isinstance(item, dict):
                return item
            item()

    @property
    def revision(self) -> Optional[int]:
        """
        The revision the watch would resume after.
        """
        return self._watcher.revision

    def close(self) -> None:
        """
        Stop watching and close the connection (once).
        """
        if not self._closed:
            self._closed = True
            self._call(self._reactor, self._watcher.stop)
