# -*- test-case-name: tests.test_ws -*-
"""
Live change notifications over WebSocket at C{/ws}, on every node, for
changes made through any node (see docs/websocket.md).

The wire protocol, one JSON object per text frame.

Client to server::

    {"op": "watch", "prefix": P}                 watch client keys starting with P
    {"op": "watch", "prefix": P, "since": R}     ... and first replay the changes after
                                                 revision R that the history still holds
    {"op": "unwatch", "prefix": P}
    {"op": "watch_files", "path": P}             watch files whose path starts with P
    {"op": "watch_files", "path": P, "since": R}
    {"op": "unwatch_files", "path": P}

An empty prefix (or path) watches everything.

Server to client::

    {"type": "watching", "prefix": P, "revision": R}    answer to watch; R is the
    {"type": "watching", "path": P, "revision": R}      revision of the newest change
    {"type": "unwatched", "prefix": P, "revision": R}   this node handed its watchers
    {"type": "unwatched", "path": P, "revision": R}     (0 before any)
    {"type": "put", "key", "version", "revision", "value", "encoding", "content_type"}
    {"type": "delete", "key", "version", "revision"}
    {"type": "expire", "key", "version", "revision"}
    {"type": "file", "op", "path", "size", "revision", ...}   ("from" on a rename)
    {"type": "compacted", "revision": R}     the changes after C{since} are no longer all
                                             held: re-list, then follow the live stream,
                                             which goes on after revision R
    {"type": "error", "message": M}          a malformed frame, an unknown op, too many
                                             watches; the connection stays open

After a C{watch} with C{since}, the C{watching} answer comes first, then the
replayed changes (or C{compacted}), then the live ones: no change is missing
and none is sent twice.  A change matching several watches of one connection
is sent once.  C{value} is the value's text when it is valid UTF-8
(C{"encoding": "utf-8"}), else its base64 (C{"encoding": "base64"}).

Limits: each connection holds at most C{max_watches} watches, and at most
C{max_queue} frames / C{max_queue_bytes} bytes waiting for a client that
reads too slowly; past that the server closes the connection with code 1013
(try again later; the client may resume with C{since}).  The server pings
every C{ping_interval} seconds and drops a connection that does not answer
within C{ping_timeout}.  A browser may only connect from a page of the same
origin (host and port) as the node.

Layout: L{WatchHub} receives the store's changes while anyone watches, asks
the store for replays (the store keeps the history) and fans changes out to
one L{WatchSession} per connection, which speaks the protocol above without
any I/O; L{_WatchProtocol} is the thin Autobahn adapter, and
L{_Outbox} applies the transport's flow control.
"""

from __future__ import annotations

import base64
import json
import struct
from collections import deque
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from attrs import frozen
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource
from zope.interface import implementer

from twisted_kv._autobahn_timer import ClockTimer, cancel_close_timeout
from twisted_kv._compat import use_timer
from twisted_kv.core import keyspace
from twisted_kv.core.records import Change, format_version
from twisted_kv.core.users import EVERYTHING, Grant, grant_of
from twisted_kv.interfaces import ChangeEvent, IKeyValue

__all__ = [
    "WatchHub",
    "WatchService",
    "WatchSession",
    "build_ws_resource",
    "event_frame",
]

log = Logger()

FileEventFor = Callable[[Change], Optional[dict]]

# The first byte of an unfragmented text frame (RFC 6455 section 5.2).
_FIN_TEXT = 0x81

# Close codes (RFC 6455 section 7.4).
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013

_MAX_PREFIX_BYTES = 4096


class _Event:
    """
    One change as the watchers see it.

    Its frame is built when first needed, then shared by every connection.

    @ivar kind: C{"key"} (matched by C{watch}) or C{"file"} (by C{watch_files}).
    @ivar names: the client key, or the file path and, for a rename, the old
        path: a watch matches when one of them starts with its prefix.
    """

    __slots__ = ("revision", "kind", "names", "_change", "_frame")

    def __init__(
        self,
        revision: int,
        kind: str,
        names: tuple[str, ...],
        change: Optional[Change] = None,
        frame: Optional[bytes] = None,
    ) -> None:
        """
        @param change: a change to a client key, whose frame is built when
            first needed.
        @param frame: or the frame, already built.
        """
        self.revision = revision
        self.kind = kind
        self.names = names
        self._change = change
        self._frame = frame

    def frame(self) -> bytes:
        """
        The whole WebSocket frame, built once and then shared by every
        connection; the change it came from is then let go.
        """
        if self._frame is None:
            assert self._change is not None
            self._frame = _frame(_key_message(self._change, self.revision))
            self._change = None
        return self._frame


def _frame(message: dict) -> bytes:
    """
    C{message} as a WebSocket text frame from a server: unmasked, in one
    piece (RFC 6455 section 5.2).

    Built once per change, the same bytes go to every watcher: Autobahn's
    C{sendMessage} costs far more than the write itself, for each of them.
    """
    payload = json.dumps(message, separators=(",", ":")).encode("ascii")
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", _FIN_TEXT, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, length)
    return header + payload


def event_frame(
    event: ChangeEvent, file_event_for: FileEventFor
) -> Optional[dict[str, Any]]:
    """
    The frame that announces C{event} to watchers.

    @param file_event_for: turns a change in the file namespace into a file
        frame without its revision, or C{None} for changes that are not
        visible as a file operation (a chunk written, ...).
    @return: the frame as a JSON-ready dict, or C{None} when the change is
        not visible to clients.
    """
    change = event.change
    namespace = keyspace.namespace_of(change.key)
    if namespace == keyspace.FILES:
        return _file_message(event, file_event_for)
    if namespace != keyspace.USER:
        return None
    return _key_message(change, event.revision)


def _file_message(event: ChangeEvent, file_event_for: FileEventFor) -> Optional[dict[str, Any]]:
    frame = file_event_for(event.change)
    if frame is None:
        return None
    return {**frame, "revision": event.revision}


def _key_message(change: Change, revision: int) -> dict[str, Any]:
    """
    The frame announcing a change to a client key.
    """
    frame = {
        "type": change.kind,
        "key": keyspace.name_of(change.key),
        "version": format_version(change.version),
        "revision": revision,
    }
    if change.kind == "put" and change.record is not None:
        value = change.record.value
        try:
            frame["value"], frame["encoding"] = value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            frame["value"] = base64.b64encode(value).decode("ascii")
            frame["encoding"] = "base64"
        frame["content_type"] = change.record.content_type
    return frame


def _to_event(
    event: ChangeEvent, file_event_for: FileEventFor
) -> Optional[_Event]:
    """
    What watchers need to match C{event}, without building its frame; or
    C{None} when the change is not visible to clients.
    """
    change = event.change
    namespace = keyspace.namespace_of(change.key)
    if namespace == keyspace.USER:
        return _Event(event.revision, "key", (keyspace.name_of(change.key),), change=change)
    if namespace != keyspace.FILES:
        return None
    message = _file_message(event, file_event_for)
    if message is None:
        return None
    # The message is needed now for its paths, and file changes are few:
    # their frames are built at once.
    names = (message["path"],) + ((message["from"],) if "from" in message else ())
    return _Event(event.revision, "file", names, frame=_frame(message))


def _no_file_events(change: Change) -> None:
    return None


def _load_file_event_for() -> FileEventFor:
    """
    The file service's change-to-frame mapping, imported here so that this
    module does not depend on the file service being installed.
    """
    try:
        from twisted_kv.files.events import file_event_for
    except ImportError:
        log.warn(
            "twisted_kv.files.events is not available: file changes are not "
            "announced over /ws"
        )
        return _no_file_events
    return file_event_for


class WatchHub:
    """
    The node's subscriber to the store while any connection watches: hands
    each change to every session that watches, and asks the store for the
    changes a resuming watch missed.  It keeps no history: the store does
    (the partition leader, once for the whole cluster, in encoded form).

    Revisions only grow; a change whose revision is not above the last one
    seen is a duplicate and is dropped.

    @ivar revision: the revision of the newest change seen, 0 before any
        (changes are seen only while someone watches).
    """

    def __init__(self, kv: IKeyValue, file_event_for: FileEventFor = _no_file_events) -> None:
        self._kv = kv
        self._file_event_for = file_event_for
        self._running = False
        self._subscribed = False
        # whether a change arrived since the hub subscribed: until then,
        # where the stream starts is unknown
        self.started = False
        self.revision = 0
        # the sessions with at least one watch
        self._watching: set[WatchSession] = set()

    def start(self) -> None:
        """
        Start serving: the store's changes are received from the first
        watch on.
        """
        self._running = True
        self._update_subscription()

    def stop(self) -> None:
        """
        Stop receiving the store's changes.
        """
        self._running = False
        self._update_subscription()

    def watching(self, session: WatchSession, watches: bool) -> None:
        """
        C{session} now has watches, or none.
        """
        if watches:
            self._watching.add(session)
        else:
            self._watching.discard(session)
        self._update_subscription()

    def remove(self, session: WatchSession) -> None:
        self.watching(session, False)

    def _update_subscription(self) -> None:
        """
        Listen to the store exactly while running with a watch: a node
        nobody watches decodes no change.
        """
        wanted = self._running and bool(self._watching)
        if wanted and not self._subscribed:
            self.started = False
            self._kv.subscribe(self._received)
        elif self._subscribed and not wanted:
            self._kv.unsubscribe(self._received)
        self._subscribed = wanted

    def since(self, revision: int) -> Deferred[tuple[Optional[list[_Event]], Optional[int]]]:
        """
        The changes after C{revision} up to the newest delivered here,
        oldest first, as the store still holds them.

        @return: a Deferred firing with the changes, or C{None} when some
            change after C{revision} is no longer held, or may be repeated;
            and the revision after which the hub hands out every change
            (C{None} until known).
        """
        return self._kv.replay(revision).addCallback(self._replayed)

    def _replayed(
        self, replayed: tuple[Optional[list[ChangeEvent]], Optional[int]]
    ) -> tuple[Optional[list[_Event]], Optional[int]]:
        changes, newest = replayed
        if changes is None:
            return None, newest
        events = []
        for change_event in changes:
            event = self._event(change_event)
            if event is not None:
                events.append(event)
        return events, newest

    def _event(self, change_event: ChangeEvent) -> Optional[_Event]:
        try:
            return _to_event(change_event, self._file_event_for)
        except Exception:
            log.failure("Cannot announce {change!r}", change=change_event.change)
            return None

    def _received(self, change_event: ChangeEvent) -> None:
        if change_event.revision <= self.revision:
            return
        if not self.started:
            # Every change after the one numbered before this one arrives.
            self.started = True
            for session in list(self._watching):
                session.started(change_event.previous)
        if change_event.gap:
            # This node missed changes: every watcher must re-read.
            for session in list(self._watching):
                session.missed(change_event.previous)
        self.revision = change_event.revision
        event = self._event(change_event)
        if event is None:
            return
        for session in list(self._watching):
            try:
                session.deliver(event)
            except Exception:
                log.failure("Cannot deliver a change to a watcher")


class _BadRequest(Exception):
    """
    A frame that does not follow the protocol; the message goes back to the
    client in an C{error} frame.
    """


@frozen
class _Op:
    """
    What one client op does: the kind of change it watches, the field naming
    the prefix, and whether it adds or removes a watch.
    """

    kind: str
    field: str
    adds: bool


_OPS = {
    "watch": _Op("key", "prefix", True),
    "unwatch": _Op("key", "prefix", False),
    "watch_files": _Op("file", "path", True),
    "unwatch_files": _Op("file", "path", False),
}


class WatchSession:
    """
    One client's watches, without I/O: frames in through L{received}, frames
    out through the C{send} callable.

    Each watch remembers the revision after which it covers changes, so that
    a replay for a new watch skips changes already sent for another one
    (C{None} until the hub's stream starts: it covers none yet).
    While a replay is on its way, the session holds back everything else
    (changes, the client's next frames) and handles it afterwards, in order.
    """

    def __init__(
        self,
        hub: WatchHub,
        send: Callable[[bytes], None],
        max_watches: int,
        grant: Grant = EVERYTHING,
    ) -> None:
        """
        @param grant: what the client may read: no change to another key or
            file reaches it.
        """
        self._hub = hub
        self._grant = grant
        self._send = send
        self._max_watches = max_watches
        self._watches: dict[str, dict[str, Optional[int]]] = {"key": {}, "file": {}}
        self._replaying = False
        self._backlog: deque[tuple[Callable[[Any], None], Any]] = deque()

    def _handle_in_order(self, handler: Callable[[Any], None], argument: Any) -> None:
        if self._replaying:
            self._backlog.append((handler, argument))
        else:
            handler(argument)

    def started(self, previous: int) -> None:
        """
        The hub's stream starts after revision C{previous}: the watches made
        before cover every change after it.
        """
        self._handle_in_order(self._started, previous)

    def _started(self, previous: int) -> None:
        for watches in self._watches.values():
            for prefix, after in watches.items():
                if after is None:
                    watches[prefix] = previous

    def missed(self, revision: int) -> None:
        """
        The node missed changes up to C{revision}: tell the client to re-read
        (C{compacted}) rather than leave a silent gap.
        """
        self._handle_in_order(self._missed, revision)

    def _missed(self, revision: int) -> None:
        if any(self._watches.values()):
            self._reply({"type": "compacted", "revision": revision})

    def deliver(self, event: _Event) -> None:
        """
        Send C{event} if any watch matches it.
        """
        self._handle_in_order(self._deliver, event)

    def _deliver(self, event: _Event) -> None:
        if self._covered(event):
            self._send(event.frame())

    def _readable(self, event: _Event) -> bool:
        """
        Whether the client may read everything C{event} names (both paths
        of a rename).
        """
        allowed = self._grant.may_read if event.kind == "key" else self._grant.may_use_file
        return all(allowed(name) for name in event.names)

    def _covered(self, event: _Event) -> bool:
        if not self._readable(event):
            return False
        for prefix, after in self._watches[event.kind].items():
            if after is not None and event.revision > after:
                for name in event.names:
                    if name.startswith(prefix):
                        return True
        return False

    def received(self, payload: bytes, is_binary: bool) -> None:
        """
        Handle one frame from the client.
        """
        self._handle_in_order(self._received, (payload, is_binary))

    def _received(self, frame: tuple[bytes, bool]) -> None:
        try:
            self._handle(self._parse(*frame))
        except _BadRequest as error:
            self._reply({"type": "error", "message": str(error)})

    def _parse(self, payload: bytes, is_binary: bool) -> dict:
        if is_binary:
            raise _BadRequest("binary frames are not supported: send JSON text")
        try:
            message = json.loads(payload)
        except ValueError:
            raise _BadRequest("the frame is not valid JSON") from None
        if not isinstance(message, dict):
            raise _BadRequest("the frame is not a JSON object")
        return message

    def _handle(self, message: dict) -> None:
        name = message.get("op")
        op = _OPS.get(name) if isinstance(name, str) else None
        if op is None:
            raise _BadRequest(f"unknown op {name!r}: expected one of {', '.join(_OPS)}")
        prefix = message.get(op.field)
        if not isinstance(prefix, str):
            raise _BadRequest(f"{name!r} needs a string {op.field!r}")
        if len(prefix.encode("utf-8", "surrogatepass")) > _MAX_PREFIX_BYTES:
            raise _BadRequest(f"{op.field!r} is longer than {_MAX_PREFIX_BYTES} bytes")
        if op.adds:
            self._watch(op, prefix, message.get("since"))
        else:
            self._watches[op.kind].pop(prefix, None)
            self._hub.watching(self, any(self._watches.values()))
            self._reply({"type": "unwatched", op.field: prefix, "revision": self._hub.revision})

    def _watch(self, op: _Op, prefix: str, since: object) -> None:
        if since is not None and (
            not isinstance(since, int) or isinstance(since, bool) or since < 0
        ):
            raise _BadRequest("'since' must be a revision: an integer >= 0")
        watches = self._watches[op.kind]
        if prefix not in watches and sum(map(len, self._watches.values())) >= self._max_watches:
            raise _BadRequest(f"too many watches: at most {self._max_watches} per connection")
        current = self._hub.revision
        self._reply({"type": "watching", op.field: prefix, "revision": current})
        # Listening before the replay is asked for: the replay then ends
        # at the newest change the hub has handed out.
        self._hub.watching(self, True)
        if since is None:
            self._start_watch(watches, prefix, current if self._hub.started else None)
            return
        self._replaying = True
        self._hub.since(since).addCallback(self._replayed, op, prefix, since, current)

    def _replayed(
        self,
        replayed: tuple[Optional[list[_Event]], Optional[int]],
        op: _Op,
        prefix: str,
        since: int,
        current: int,
    ) -> None:
        """
        Send what a resuming watch missed, start it, then handle what was
        held back meanwhile, except the changes the replay already sent.
        """
        replay, newest = replayed
        watches = self._watches[op.kind]
        sent: set[int] = set()
        after: Optional[int]
        if replay is None:
            # The live stream goes on after the newest revision the store
            # knows here: the client re-reads, then follows it.
            after = newest if newest is not None else current if self._hub.started else None
            self._reply({"type": "compacted", "revision": current if after is None else after})
        else:
            for event in replay:
                if (
                    event.kind == op.kind
                    and any(name.startswith(prefix) for name in event.names)
                    and self._readable(event)
                    and not self._covered(event)
                ):
                    self._send(event.frame())
                    sent.add(event.revision)
            # A client ahead of this node (which lags behind the one it
            # came from) must not get the changes up to since again.
            after = since
        self._start_watch(watches, prefix, after)
        self._replaying = False
        while self._backlog and not self._replaying:
            handler, argument = self._backlog.popleft()
            if handler == self._deliver and argument.revision in sent:
                continue
            handler(argument)

    @staticmethod
    def _start_watch(watches: dict[str, Optional[int]], prefix: str, after: Optional[int]) -> None:
        """
        Watch C{prefix} from C{after} on, or from earlier if it already was.
        """
        if prefix not in watches:
            watches[prefix] = after
            return
        known = [a for a in (after, watches[prefix]) if a is not None]
        watches[prefix] = min(known) if known else None

    def _reply(self, message: dict) -> None:
        self._send(_frame(message))


@implementer(IPushProducer)
class _Outbox:
    """
    The frames waiting for one connection's transport.

    Registered as the transport's streaming producer: while the transport's
    buffer is full it pauses us, and frames wait here, up to C{max_frames}
    frames and C{max_bytes} bytes; one more and C{overflow} is called (once)
    and everything queued is dropped.
    """

    def __init__(
        self,
        send: Callable[[bytes], None],
        overflow: Callable[[str], None],
        max_frames: int,
        max_bytes: int,
    ) -> None:
        self._send = send
        self._overflow = overflow
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._paused = False
        self._closed = False

    def push(self, frame: bytes) -> None:
        """
        Send C{frame} now, or queue it while the transport is full.
        """
        if self._closed:
            return
        if not self._paused and not self._queue:
            self._send(frame)
            return
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if len(self._queue) > self._max_frames or self._queued_bytes > self._max_bytes:
            reason = (
                f"too slow: more than {self._max_frames} frames or "
                f"{self._max_bytes} bytes waiting"
            )
            self.stopProducing()
            self._overflow(reason)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._queue and not self._paused and not self._closed:
            frame = self._queue.popleft()
            self._queued_bytes -= len(frame)
            self._send(frame)

    def stopProducing(self) -> None:
        self._closed = True
        self._queue.clear()
        self._queued_bytes = 0


def _same_origin(origin: str, host: Optional[str]) -> bool:
    """
    Whether a browser's C{Origin} names the host and port it connected to.
    """
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and host is not None and netloc.lower() == host.lower()


class _WatchProtocol(WebSocketServerProtocol):
    """
    One C{/ws} connection: frames to and from a L{WatchSession}, outgoing
    frames through an L{_Outbox}.
    """

    factory: _WatchFactory
    _session: Optional[WatchSession] = None
    grant: Grant = EVERYTHING

    def onConnect(self, request: Any) -> None:
        origin = request.headers.get("origin")
        if origin is not None and not _same_origin(origin, request.headers.get("host")):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "cross-origin WebSocket refused")
        if not self.factory.running:
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "the node is stopping")

    def onOpen(self) -> None:
        factory = self.factory
        if not factory.running:
            self.close(CLOSE_GOING_AWAY, "the node is stopping")
            return
        self._outbox = _Outbox(
            self._send_frame, self._overflowed, factory.max_queue, factory.max_queue_bytes
        )
        # Over twisted.web the HTTP channel is still the transport's producer.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self._outbox, True)
        self._session = WatchSession(
            factory.hub, self._outbox.push, factory.max_watches, self.grant
        )
        factory.opened(self, self._session)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._session is not None:
            self._session.received(payload, isBinary)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        cancel_close_timeout(self)
        if self._session is not None:
            self._outbox.stopProducing()
            self.factory.closed(self, self._session)
            self._session = None

    def close(self, code: int, reason: str) -> None:
        """
        Stop sending changes and start the closing handshake.
        """
        if self._session is not None:
            self.factory.hub.remove(self._session)
        # sendClose() only takes 1000 and 3000-4999; RFC 6455 lets a server
        # use the codes of section 7.4.1, up to 123 bytes of reason.
        self.sendCloseFrame(code, reason.encode("utf-8")[:123])

    def _send_frame(self, frame: bytes) -> None:
        # A whole frame, written as is: the factory negotiates no extension
        # (compression) that would change the framing.
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.transport.write(frame)

    def _overflowed(self, reason: str) -> None:
        log.info("Closing slow watcher {peer}: {reason}", peer=self.peer, reason=reason)
        self.close(CLOSE_TRY_AGAIN_LATER, reason)


class _WatchFactory(WebSocketServerFactory):
    """
    Autobahn's factory for L{_WatchProtocol}, holding the limits and the open
    connections.
    """

    protocol = _WatchProtocol

    def __init__(
        self,
        hub: WatchHub,
        clock: IReactorTime,
        max_queue: int,
        max_queue_bytes: int,
        max_watches: int,
    ) -> None:
        super().__init__(server="twisted_kv", reactor=clock)
        use_timer(self, ClockTimer(clock))
        self.hub = hub
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_watches = max_watches
        self.running = False
        # The grant of the upgrade request being rendered (see _WatchResource).
        self.upgrading = EVERYTHING
        self._open: dict[_WatchProtocol, Deferred[None]] = {}

    def buildProtocol(self, addr: Any) -> _WatchProtocol:
        protocol = super().buildProtocol(addr)
        protocol.grant = self.upgrading
        return protocol

    def opened(self, protocol: _WatchProtocol, session: WatchSession) -> None:
        self._open[protocol] = Deferred()

    def closed(self, protocol: _WatchProtocol, session: WatchSession) -> None:
        self.hub.remove(session)
        waiter = self._open.pop(protocol, None)
        if waiter is not None:
            waiter.callback(None)

    def close_all(self, code: int, reason: str) -> Deferred[Any]:
        """
        Close every connection.

        @return: a Deferred firing once they are all gone.
        """
        waiters = list(self._open.values())
        for protocol in list(self._open):
            protocol.close(code, reason)
        return gatherResults(waiters)

    @property
    def connections(self) -> int:
        """
        The number of open connections.
        """
        return len(self._open)


class _WatchResource(WebSocketResource):
    """
    Autobahn's resource, giving each connection the grant of the upgrade
    request that opened it.
    """

    _factory: _WatchFactory

    def render(self, request: Any) -> Any:
        self._factory.upgrading = grant_of(request)
        try:
            return super().render(request)
        finally:
            self._factory.upgrading = EVERYTHING


class WatchService(Service):
    """
    Starts and stops C{/ws}: receives the store's changes while running, and
    closes every connection (code 1001) when stopped.
    """

    def __init__(self, hub: WatchHub, factory: _WatchFactory) -> None:
        self._hub = hub
        self.factory = factory

    def startService(self) -> None:
        super().startService()
        self._hub.start()
        self.factory.doStart()
        self.factory.running = True

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.factory.running = False
        self._hub.stop()
        closing = self.factory.close_all(CLOSE_GOING_AWAY, "the node is stopping")
        return closing.addCallback(lambda _: self.factory.doStop())


def build_ws_resource(
    kv: IKeyValue,
    *,
    clock: IReactorTime,
    max_queue: int = 10000,
    max_queue_bytes: int = 16 * 1024 * 1024,
    max_watches: int = 100,
    ping_interval: float = 20.0,
    ping_timeout: float = 10.0,
    max_frame_bytes: int = 64 * 1024,
    file_event_for: Optional[FileEventFor] = None,
) -> tuple[IResource, WatchService]:
    """
    Build the C{/ws} endpoint over C{kv}.

    @param clock: drives handshake, close and keep-alive timeouts.
    @param max_queue: frames that may wait for a slow client before it is
        disconnected; see also C{max_queue_bytes}.
    @param max_watches: watches per connection.
    @param ping_interval: seconds between keep-alive pings (0: none).
    @param ping_timeout: seconds to wait for the pong before dropping the
        connection.
    @param max_frame_bytes: largest frame (and message) accepted from clients.
    @param file_event_for: turns file-namespace changes into file frames (see
        L{event_frame}); by default C{twisted_kv.files.events.file_event_for}
        when the file service is installed.
    @return: the resource to mount at C{/ws} in the HTTP site, and the
        service that must run for it to work (a child of the node service).
    """
    if file_event_for is None:
        file_event_for = _load_file_event_for()
    hub = WatchHub(kv, file_event_for)
    factory = _WatchFactory(hub, clock, max_queue, max_queue_bytes, max_watches)
    factory.setProtocolOptions(
        autoPingInterval=ping_interval,
        autoPingTimeout=ping_timeout,
        maxFramePayloadSize=max_frame_bytes,
        maxMessagePayloadSize=max_frame_bytes,
        # Tell a client why it is cut off (1007, 1009, ...) rather than
        # just dropping the TCP connection.
        failByDrop=False,
        # No compression: frames are built once and written as they are.
        perMessageCompressionAccept=lambda offers: None,
    )
    return _WatchResource(factory), WatchService(hub, factory)

