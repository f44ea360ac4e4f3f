# -*- test-case-name: tests.test_client -*-
"""
A small synchronous Python client for a twisted_kv cluster.

It speaks the HTTP API and the C{/ws} change feed (docs/websocket.md) to any one
node (every node answers for the whole cluster)::

    from twisted_kv.client import Client

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

The calls, their HTTP requests and the interpretation of the answers are
those of L{twisted_kv.client._logic}, shared with
L{twisted_kv.client.txclient.TxClient}, the Twisted flavour; this module
only adds a keep-alive C{http.client} connection, and a blocking L{Watch}
over the Twisted L{Watcher} run in a reactor thread.  A L{Client} is not
thread-safe: use one per thread.
"""

from __future__ import annotations

import http.client
import queue
import select
import socket
import ssl
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union
from urllib.parse import urlsplit

from twisted_kv.client._logic import (
    DEFAULT_URL,
    Calls,
    Request,
    Response,
    T,
    authorization,
    result_of,
)

__all__ = ["Client", "Watch"]


class Client(Calls):
    """
    A blocking client for one node, over one keep-alive HTTP connection.

    @param url: the node, e.g. C{http://127.0.0.1:7001}.
    @param timeout: seconds to wait for the node on each request.
    @param cacert: a PEM file of the CA to trust for https and wss (a
        cluster's C{[tls]} C{ca}) instead of the system's.
    @param user: C{NAME:PASSWORD}, sent as HTTP Basic; or
    @param token: a bearer token (see L{Calls.token}).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        timeout: float = 10.0,
        cacert: Optional[str] = None,
        *,
        user: Optional[str] = None,
        token: Optional[str] = None,
    ) -> None:
        self._authorization = authorization(user, token)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        self.url = url
        self._timeout = timeout
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._cacert = cacert
        self._tls = ssl.create_default_context(cafile=cacert) if parts.scheme == "https" else None
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
        return Watch(
            self.url, prefix, since, files, timeout, others, on_lost, on_watching,
            self._authorization, self._cacert,
        )

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
            if self._tls is not None:
                self._connection = http.client.HTTPSConnection(
                    self._netloc, timeout=self._timeout, context=self._tls
                )
            else:
                self._connection = http.client.HTTPConnection(self._netloc, timeout=self._timeout)
        try:
            self._connection.request(
                request.method,
                request.target,
                body=request.body,
                headers={**self._authorization, **request.headers},
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
        headers: Mapping[str, str],
        cacert: Optional[str] = None,
    ) -> None:
        # Twisted is loaded only when a watch starts: the other calls, and
        # kvctl's start, do without it.
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
                headers=headers,
                cacert=cacert,
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
