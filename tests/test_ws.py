# -*- test-case-name: tests.test_ws -*-
"""
Tests for L{twisted_kv.ws.server}: the C{/ws} protocol, driven in memory.

Each test mounts the WebSocket resource in a twisted.web L{Site}, as the node
does, and joins Autobahn clients to it with L{twisted.test.iosim} pumps that
are flushed synchronously; every timer runs on a L{Clock}.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from twisted_kv._autobahn_timer import ClockTimer
from twisted_kv._compat import use_timer
from twisted_kv.cluster.feed import ChangeHistory, Replayed
from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.core import keyspace
from twisted_kv.core.records import Change, Record, make_version
from twisted_kv.core.replica import encode_change
from twisted_kv.interfaces import REVISION_TERM_SHIFT, ChangeEvent, revision_term
from twisted_kv.wire.codec import encode as encode_message
from twisted_kv.ws import server as ws
from twisted_kv.ws.server import (
    WatchHub,
    WatchSession,
    _Outbox,
    build_ws_resource,
    event_frame,
)


class _Feed:
    """
    The change feed of an L{IKeyValue}, alone: tests choose the revisions.
    Its history holds the changes emitted since the last gap, up to
    C{history} of them.
    """

    def __init__(self, history: int = 10000) -> None:
        self.listeners: list = []
        self.size = history
        self.history: Optional[ChangeHistory] = None

    def replay(self, after: int) -> Deferred[Replayed]:
        if self.history is None:
            return succeed((None, None))
        return succeed((self.history.since(after), self.history.newest))

    def subscribe(self, listener: Any) -> None:
        self.listeners.append(listener)

    def unsubscribe(self, listener: Any) -> None:
        self.listeners.remove(listener)

    def emit(
        self, change: Change, revision: int, gap: bool = False, previous: Optional[int] = None
    ) -> None:
        event = ChangeEvent(change, revision, gap, revision - 1 if previous is None else previous)
        if (
            self.history is None
            or gap
            or event.previous != self.history.newest
            or revision_term(revision) != revision_term(self.history.newest)
        ):
            # A gap, or a new leader: its history starts with its term.
            self.history = ChangeHistory(event.previous, self.size)
        self.history.add(revision, event.previous, 1, encode_message([encode_change(change)]), False)
        for listener in list(self.listeners):
            listener(event)


def _put(key: str, value: bytes = b"v", seq: int = 1) -> Change:
    version = make_version(1, seq)
    return Change("put", keyspace.user_key(key), version, Record(value, "text/plain", version), True)


def _delete(key: str, seq: int = 1, kind: str = "delete") -> Change:
    return Change(kind, keyspace.user_key(key), make_version(1, seq), None)


def _file_change(name: str, seq: int = 1) -> Change:
    version = make_version(1, seq)
    return Change("put", keyspace.file_key(name), version, Record(b"m", "x", version))


def _file_event_for(change: Change) -> Optional[dict]:
    """
    A stand-in for the file service's mapping: manifests (names starting with
    C{"m"}) are files, other file-namespace keys are invisible chunks.
    """
    name = keyspace.name_of(change.key)
    if not name.startswith("m"):
        return None
    old, _, path = name[1:].rpartition(">")
    event = {"type": "file", "op": "renamed" if old else "stored", "path": path, "size": 1}
    if old:
        event["from"] = old
    return event


class _Client(WebSocketClientProtocol):
    """
    A WebSocket client that records what it receives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict] = []
        self.opened = False
        self.close_status: Optional[tuple[Optional[int], Optional[str]]] = None

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self.close_status = (code, reason)

    def op(self, **message: Any) -> None:
        self.sendMessage(json.dumps(message).encode("utf-8"))

    def take(self) -> list[dict]:
        """
        The frames received since the last call.
        """
        received, self.received = self.received, []
        return received


class _Node:
    """
    A Site with C{/ws} over a change feed, and the means to connect clients.
    """

    def __init__(self, kv: Any = None, clock: Optional[Clock] = None, **options: Any) -> None:
        self.clock = Clock() if clock is None else clock
        self.kv = _Feed() if kv is None else kv
        options.setdefault("file_event_for", _file_event_for)
        resource, self.service = build_ws_resource(self.kv, clock=self.clock, **options)
        root = Resource()
        root.putChild(b"ws", resource)
        self.site = Site(root, reactor=self.clock)
        self.service.startService()
        self.pumps: list[iosim.IOPump] = []

    def connect(self, origin: Optional[str] = None) -> tuple[_Client, iosim.IOPump]:
        """
        Open a WebSocket connection to C{/ws}.
        """
        factory = WebSocketClientFactory("ws://127.0.0.1:7001/ws", origin=origin, reactor=self.clock)
        factory.protocol = _Client
        use_timer(factory, ClockTimer(self.clock))
        address = IPv4Address("TCP", "127.0.0.1", 7001)
        server = self.site.buildProtocol(address)
        client = factory.buildProtocol(address)
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            clock=self.clock,
        )
        self.pumps.append(pump)
        return client, pump

    def watcher(self, **watch: Any) -> tuple[_Client, iosim.IOPump]:
        """
        A client that has sent one C{watch} op, with its answer consumed.
        """
        client, pump = self.connect()
        client.op(op="watch", **watch)
        pump.flush()
        client.take()
        return client, pump

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def stop(self) -> None:
        """
        Stop the service and let every connection close.
        """
        stopped = self.service.stopService()
        self.flush()
        self.clock.advance(0)
        assert stopped.called


class _NodeMixin:
    """
    Builds L{_Node}s that are stopped at the end of the test, after which no
    timer may be left and the store must have no listener.
    """

    def make_node(self, **options: Any) -> _Node:
        node = _Node(**options)
        self.addCleanup(self._stopped, node)
        return node

    def make_listening_node(self, **options: Any) -> _Node:
        """
        A node where a client already watches (a prefix no test key has):
        its hub listens to the store, and sees every change from the start.
        """
        node = self.make_node(**options)
        node.watcher(prefix="#elsewhere")
        return node

    def _stopped(self, node: _Node) -> None:
        node.stop()
        self.assertEqual(node.clock.getDelayedCalls(), [])
        if isinstance(node.kv, _Feed):
            self.assertEqual(node.kv.listeners, [])


class WatchTests(_NodeMixin, SynchronousTestCase):
    """
    Watching and unwatching prefixes.
    """

    def setUp(self) -> None:
        self.node = self.make_node()

    def test_watching(self) -> None:
        """
        C{watch} is answered with C{watching}, the prefix and the revision
        of the newest change this node's watchers were sent (0 before any).
        """
        client, pump = self.node.connect()
        self.assertTrue(client.opened)
        client.op(op="watch", prefix="users/")
        pump.flush()
        self.assertEqual(client.take(), [{"type": "watching", "prefix": "users/", "revision": 0}])
        self.node.kv.emit(_put("x"), 7)
        client.op(op="watch", prefix="other/")
        pump.flush()
        self.assertEqual(client.take(), [{"type": "watching", "prefix": "other/", "revision": 7}])

    def test_matching_prefix_only(self) -> None:
        """
        A watcher receives the changes of keys starting with its prefix, and
        no others.
        """
        client, pump = self.node.watcher(prefix="users/")
        self.node.kv.emit(_put("users/alice", b"hello", seq=3), 1)
        self.node.kv.emit(_put("groups/admins"), 2)
        self.node.kv.emit(_delete("users/alice", seq=5), 3)
        self.node.kv.emit(_delete("users/bob", seq=6, kind="expire"), 4)
        pump.flush()
        self.assertEqual(
            client.take(),
            [
                {
                    "type": "put",
                    "key": "users/alice",
                    "version": "1.3",
                    "revision": 1,
                    "value": "hello",
                    "encoding": "utf-8",
                    "content_type": "text/plain",
                },
                {"type": "delete", "key": "users/alice", "version": "1.5", "revision": 3},
                {"type": "expire", "key": "users/bob", "version": "1.6", "revision": 4},
            ],
        )

    def test_empty_prefix(self) -> None:
        """
        The empty prefix watches every key, but not files.
        """
        client, pump = self.node.watcher(prefix="")
        self.node.kv.emit(_put("a"), 1)
        self.node.kv.emit(_file_change("m/docs/a"), 2)
        self.node.kv.emit(_put("b"), 3)
        pump.flush()
        self.assertEqual([(f["key"], f["revision"]) for f in client.take()], [("a", 1), ("b", 3)])

    def test_once_per_change(self) -> None:
        """
        A change matching several watches of one connection is sent once.
        """
        client, pump = self.node.watcher(prefix="a")
        client.op(op="watch", prefix="ab")
        client.op(op="watch", prefix="")
        pump.flush()
        client.take()
        self.node.kv.emit(_put("abc"), 1)
        pump.flush()
        self.assertEqual([f["key"] for f in client.take()], ["abc"])

    def test_unwatch(self) -> None:
        """
        After C{unwatch}, answered with C{unwatched}, the prefix's changes are
        no longer sent.
        """
        client, pump = self.node.watcher(prefix="a")
        self.node.kv.emit(_put("a1"), 1)
        client.op(op="unwatch", prefix="a")
        pump.flush()
        self.node.kv.emit(_put("a2"), 2)
        pump.flush()
        frames = client.take()
        self.assertEqual([f["type"] for f in frames], ["put", "unwatched"])
        self.assertEqual(frames[1], {"type": "unwatched", "prefix": "a", "revision": 1})

    def test_several_clients(self) -> None:
        """
        Every watching connection receives the change.
        """
        clients = [self.node.watcher(prefix="k")[0] for _ in range(3)]
        self.node.kv.emit(_put("k"), 1)
        self.node.flush()
        self.assertEqual([[f["revision"] for f in c.take()] for c in clients], [[1], [1], [1]])

    def test_binary_value(self) -> None:
        """
        A value that is not UTF-8 is sent in base64.
        """
        client, pump = self.node.watcher(prefix="")
        self.node.kv.emit(_put("bin", b"\xff\x00"), 1)
        pump.flush()
        [frame] = client.take()
        self.assertEqual((frame["value"], frame["encoding"]), ("/wA=", "base64"))

    def test_duplicate_revisions_dropped(self) -> None:
        """
        A change whose revision is not above the last one seen is dropped.
        """
        client, pump = self.node.watcher(prefix="")
        self.node.kv.emit(_put("a"), 5)
        self.node.kv.emit(_put("a"), 5)
        self.node.kv.emit(_put("b"), 4)
        self.node.kv.emit(_put("c"), 6)
        pump.flush()
        self.assertEqual([f["revision"] for f in client.take()], [5, 6])

    def test_file_watch(self) -> None:
        """
        C{watch_files} receives the file events whose path (or old path) is
        under the watched path, with the change's revision; chunks and keys
        are not sent.
        """
        client, pump = self.node.connect()
        client.op(op="watch_files", path="/docs/")
        pump.flush()
        self.assertEqual(client.take(), [{"type": "watching", "path": "/docs/", "revision": 0}])
        self.node.kv.emit(_file_change("m/docs/a.txt"), 1)
        self.node.kv.emit(_file_change("c/docs/a.txt#0"), 2)
        self.node.kv.emit(_file_change("m/tmp/b"), 3)
        self.node.kv.emit(_file_change("m/docs/old>/tmp/new"), 4)
        self.node.kv.emit(_put("/docs/key"), 5)
        client.op(op="unwatch_files", path="/docs/")
        pump.flush()
        self.assertEqual(
            client.take(),
            [
                {"type": "file", "op": "stored", "path": "/docs/a.txt", "size": 1, "revision": 1},
                {
                    "type": "file",
                    "op": "renamed",
                    "path": "/tmp/new",
                    "from": "/docs/old",
                    "size": 1,
                    "revision": 4,
                },
                {"type": "unwatched", "path": "/docs/", "revision": 5},
            ],
        )

    def test_local_store(self) -> None:
        """
        Over a L{LocalKeyValue}, writes, deletes and TTL expiries made through
        the store all reach the watcher.
        """
        clock = Clock()
        node = self.make_node(kv=LocalKeyValue(clock), clock=clock)
        client, pump = node.watcher(prefix="")
        node.kv.put(keyspace.user_key("t"), b"1", ttl=5)
        node.kv.put(keyspace.user_key("d"), b"2")
        node.kv.delete(keyspace.user_key("d"))
        clock.advance(5)
        pump.flush()
        self.assertEqual(
            [(f["type"], f["key"], f["revision"]) for f in client.take()],
            [("put", "t", 1), ("put", "d", 2), ("delete", "d", 3), ("expire", "t", 4)],
        )


class _SlowFeed(_Feed):
    """
    A change feed whose replays are answered when the test says.
    """

    def __init__(self) -> None:
        super().__init__()
        self.replays: list[tuple[int, Deferred[Replayed]]] = []

    def replay(self, after: int) -> Deferred[Replayed]:
        d: Deferred[Replayed] = Deferred()
        self.replays.append((after, d))
        return d

    def answer(self) -> None:
        """
        Answer the oldest replay asked for, from the history as it is now.
        """
        after, d = self.replays.pop(0)
        super().replay(after).chainDeferred(d)


class ListeningTests(_NodeMixin, SynchronousTestCase):
    """
    The hub listens to the store only while a connection watches, and a
    resuming watch holds back everything else until its replay is in.
    """

    def test_listens_only_while_watched(self) -> None:
        """
        No listener while no connection has a watch, open or not; one from
        the first watch to the last unwatch or close.
        """
        node = self.make_node()
        client, pump = node.connect()
        self.assertEqual(node.kv.listeners, [])
        client.op(op="watch", prefix="a")
        pump.flush()
        self.assertEqual(len(node.kv.listeners), 1)
        other, _ = node.watcher(prefix="b")
        self.assertEqual(len(node.kv.listeners), 1)
        client.op(op="unwatch", prefix="a")
        pump.flush()
        self.assertEqual(len(node.kv.listeners), 1)
        other.sendClose()
        node.flush()
        self.assertEqual(node.kv.listeners, [])

    def test_held_back_while_replaying(self) -> None:
        """
        Changes and frames arriving while a replay is on its way wait for
        it: the replay comes first, then what waited, each change once.
        """
        kv = _SlowFeed()
        node = self.make_node(kv=kv)
        node.watcher(prefix="#elsewhere")
        for revision in range(1, 3):
            kv.emit(_put(f"k{revision}"), revision)
        client, pump = node.connect()
        client.op(op="watch", prefix="k", since=0)
        pump.flush()
        kv.emit(_put("k3"), 3)
        kv.emit(_put("other"), 4)
        client.op(op="watch", prefix="o")
        pump.flush()
        self.assertEqual([f["type"] for f in client.take()], ["watching"])
        kv.answer()
        pump.flush()
        self.assertEqual(
            [(f["type"], f.get("key"), f["revision"]) for f in client.take()],
            [("put", "k1", 1), ("put", "k2", 2), ("put", "k3", 3), ("watching", None, 4)],
        )
        kv.emit(_put("other"), 5)
        pump.flush()
        self.assertEqual([f["revision"] for f in client.take()], [5])


class LazyFrameTests(_NodeMixin, SynchronousTestCase):
    """
    A change's frame is built when a watcher first needs it, once.
    """

    def test_frames_built_on_first_need(self) -> None:
        """
        No frame is built for changes nobody watches; one is built for a
        change several connections receive; a replay builds the frames of
        the changes it sends (the store keeps them encoded, not framed).
        """
        built: list[int] = []
        # Nothing outside the module sees a frame being built, only the frame:
        # the builder is wrapped, the one thing patched, to count the builds.
        key_message = ws._key_message

        def counting(change: Change, revision: int) -> dict:
            built.append(revision)
            return key_message(change, revision)

        self.patch(ws, "_key_message", counting)
        node = self.make_node()
        other, _ = node.watcher(prefix="b")
        for revision in range(1, 4):
            node.kv.emit(_put(f"a{revision}"), revision)
        self.assertEqual(built, [])
        watchers = [node.watcher(prefix="a")[0] for _ in range(2)]
        node.kv.emit(_put("a4"), 4)
        node.flush()
        self.assertEqual(built, [4])
        late, late_pump = node.connect()
        late.op(op="watch", prefix="", since=0)
        late_pump.flush()
        self.assertEqual(built, [4, 1, 2, 3, 4])
        again, again_pump = node.connect()
        again.op(op="watch", prefix="", since=0)
        again_pump.flush()
        self.assertEqual(built, [4, 1, 2, 3, 4, 1, 2, 3, 4])
        self.assertEqual([[f["key"] for f in w.take()] for w in watchers], [["a4"], ["a4"]])
        self.assertEqual(other.take(), [])
        for client in (late, again):
            self.assertEqual(
                [f.get("key") for f in client.take()], [None, "a1", "a2", "a3", "a4"]
            )


class ResumeTests(_NodeMixin, SynchronousTestCase):
    """
    C{since}: replaying retained changes, and C{compacted} when they are gone.
    """

    def test_replay(self) -> None:
        """
        C{since} replays the retained changes after that revision that match
        the prefix, after the C{watching} answer and before the live changes.
        """
        node = self.make_listening_node()
        for revision, key in enumerate(["u/a", "x", "u/b", "u/c"], start=1):
            node.kv.emit(_put(key), revision)
        client, pump = node.connect()
        client.op(op="watch", prefix="u/", since=1)
        pump.flush()
        node.kv.emit(_put("u/d"), 5)
        pump.flush()
        self.assertEqual(
            [(f["type"], f.get("key"), f["revision"]) for f in client.take()],
            [("watching", None, 4), ("put", "u/b", 3), ("put", "u/c", 4), ("put", "u/d", 5)],
        )

    def test_replay_up_to_date(self) -> None:
        """
        C{since} equal to the current revision replays nothing.
        """
        node = self.make_listening_node()
        node.kv.emit(_put("a"), 1)
        client, pump = node.connect()
        client.op(op="watch", prefix="", since=1)
        pump.flush()
        self.assertEqual([f["type"] for f in client.take()], ["watching"])

    def test_no_duplicates_across_watches(self) -> None:
        """
        A replay skips the changes already sent for another watch of the same
        connection, and a later change matching both is sent once.
        """
        node = self.make_listening_node()
        client, pump = node.watcher(prefix="u/")
        node.kv.emit(_put("u/a"), 1)
        node.kv.emit(_put("v"), 2)
        client.op(op="watch", prefix="", since=0)
        pump.flush()
        node.kv.emit(_put("u/b"), 3)
        pump.flush()
        self.assertEqual(
            [(f["type"], f["revision"]) for f in client.take()],
            [("put", 1), ("watching", 2), ("put", 2), ("put", 3)],
        )

    def test_rewatch_with_older_since(self) -> None:
        """
        Watching a watched prefix again with an older C{since} replays only
        what the watch had not covered.
        """
        node = self.make_listening_node()
        node.kv.emit(_put("a"), 1)
        client, pump = node.watcher(prefix="")
        node.kv.emit(_put("b"), 2)
        client.op(op="watch", prefix="", since=0)
        pump.flush()
        self.assertEqual(
            [(f["type"], f["revision"]) for f in client.take()],
            [("put", 2), ("watching", 2), ("put", 1)],
        )

    def test_compacted(self) -> None:
        """
        When changes after C{since} have left the history, the client gets
        C{compacted} with the current revision, then the live stream.
        """
        node = self.make_listening_node(kv=_Feed(history=2))
        for revision in range(1, 5):
            node.kv.emit(_put(f"k{revision}"), revision)
        client, pump = node.connect()
        client.op(op="watch", prefix="", since=1)
        pump.flush()
        node.kv.emit(_put("k5"), 5)
        pump.flush()
        self.assertEqual(
            [(f["type"], f["revision"]) for f in client.take()],
            [("watching", 4), ("compacted", 4), ("put", 5)],
        )

    def test_gap_tells_watchers_to_reread(self) -> None:
        """
        When the node missed changes (cut off from the leader), a live
        watcher gets C{compacted} before the next change, and a resume from
        before the gap is answered C{compacted}, never a silent gap.
        """
        node = self.make_listening_node()
        for revision in range(1, 4):
            node.kv.emit(_put(f"k{revision}"), revision)
        client, pump = node.connect()
        client.op(op="watch", prefix="")
        pump.flush()
        client.take()
        node.kv.emit(_put("k9"), 9, gap=True)
        pump.flush()
        self.assertEqual(
            [(f["type"], f["revision"]) for f in client.take()], [("compacted", 8), ("put", 9)]
        )
        late, late_pump = node.connect()
        late.op(op="watch", prefix="", since=2)
        late_pump.flush()
        self.assertEqual(
            [(f["type"], f["revision"]) for f in late.take()], [("watching", 9), ("compacted", 9)]
        )

    def test_resume_from_further_into_an_earlier_term(self) -> None:
        """
        The history of a new leader's term starts where that leader
        continued from: a C{since} there replays; one before it, or beyond
        it in the earlier term (from a node that received more of that term,
        changes the new leader may announce again under new revisions), is
        answered C{compacted} rather than leaving a gap or repeating them.
        """
        term1, term2 = 1 << REVISION_TERM_SHIFT, 2 << REVISION_TERM_SHIFT
        node = self.make_listening_node()
        node.kv.emit(_put("a"), term1 + 1)
        node.kv.emit(_put("b"), term1 + 2)
        # The old leader also announced term1 + 3 (say "c"), which the new
        # leader never received; it continues from term1 + 2 and announces
        # "c" again.
        node.kv.emit(_put("c"), term2 + 1, previous=term1 + 2)
        ahead, ahead_pump = node.connect()
        ahead.op(op="watch", prefix="", since=term1 + 3)
        ahead_pump.flush()
        behind, behind_pump = node.connect()
        behind.op(op="watch", prefix="", since=term1 + 1)
        behind_pump.flush()
        at, at_pump = node.connect()
        at.op(op="watch", prefix="", since=term1 + 2)
        at_pump.flush()
        for client in (ahead, behind):
            self.assertEqual(
                [(f["type"], f["revision"]) for f in client.take()],
                [("watching", term2 + 1), ("compacted", term2 + 1)],
            )
        self.assertEqual(
            [(f["type"], f["revision"]) for f in at.take()],
            [("watching", term2 + 1), ("put", term2 + 1)],
        )

    def test_replay_at_history_edge(self) -> None:
        """
        C{since} equal to the last dropped revision still replays everything
        after it.
        """
        node = self.make_listening_node(kv=_Feed(history=2))
        for revision in range(1, 5):
            node.kv.emit(_put(f"k{revision}"), revision)
        client, pump = node.connect()
        client.op(op="watch", prefix="", since=2)
        pump.flush()
        self.assertEqual([f["revision"] for f in client.take()], [4, 3, 4])

    def test_nothing_seen(self) -> None:
        """
        Before this node has seen any change, it cannot know what happened
        after C{since}: the answer is C{compacted}.
        """
        node = self.make_node()
        client, pump = node.connect()
        client.op(op="watch", prefix="", since=0)
        pump.flush()
        self.assertEqual(
            client.take(),
            [
                {"type": "watching", "prefix": "", "revision": 0},
                {"type": "compacted", "revision": 0},
            ],
        )

    def test_first_change_seen(self) -> None:
        """
        Once a change with revision R has been seen, C{since} R - 1 is known
        to miss nothing, and an older one is not.
        """
        node = self.make_listening_node()
        node.kv.emit(_put("a"), 10)
        client, pump = node.connect()
        client.op(op="watch", prefix="", since=9)
        client.op(op="watch", prefix="a", since=8)
        pump.flush()
        self.assertEqual(
            [(f["type"], f["revision"]) for f in client.take()],
            [("watching", 10), ("put", 10), ("watching", 10), ("compacted", 10)],
        )

    def test_since_zero_from_the_clusters_first_change(self) -> None:
        """
        A node whose first change is the cluster's first (numbered after 0,
        though its revision is large) holds every change: C{since} 0
        replays them all.
        """
        term1 = 1 << REVISION_TERM_SHIFT
        node = self.make_listening_node()
        node.kv.emit(_put("a"), term1 + 1, previous=0)
        node.kv.emit(_put("b"), term1 + 2)
        client, pump = node.connect()
        client.op(op="watch", prefix="", since=0)
        pump.flush()
        self.assertEqual(
            [(f["type"], f["revision"]) for f in client.take()],
            [("watching", term1 + 2), ("put", term1 + 1), ("put", term1 + 2)],
        )

    def test_first_change_of_a_later_term(self) -> None:
        """
        A node that starts with a change of a later term holds every change
        after the one the leader numbered before it, and nothing earlier.
        """
        term1, term2 = 1 << REVISION_TERM_SHIFT, 2 << REVISION_TERM_SHIFT
        node = self.make_listening_node()
        node.kv.emit(_put("c"), term2 + 1, previous=term1 + 7)
        client, pump = node.connect()
        for since in (0, term1 + 6, term1 + 7, term1 + 8):
            client.op(op="watch", prefix="", since=since)
        pump.flush()
        self.assertEqual(
            [f["type"] for f in client.take()],
            ["watching", "compacted", "watching", "compacted", "watching", "put",
             "watching", "compacted"],
        )

    def test_gap_into_a_later_term(self) -> None:
        """
        After a gap, the history holds every change after the one the leader
        numbered before the first change received: watchers are told
        C{compacted} with that revision, and may resume from it.
        """
        term1, term2 = 1 << REVISION_TERM_SHIFT, 2 << REVISION_TERM_SHIFT
        node = self.make_listening_node()
        node.kv.emit(_put("a"), term1 + 1, previous=0)
        live, live_pump = node.watcher(prefix="")
        node.kv.emit(_put("b"), term2 + 1, gap=True, previous=term1 + 5)
        live_pump.flush()
        self.assertEqual(
            [(f["type"], f["revision"]) for f in live.take()],
            [("compacted", term1 + 5), ("put", term2 + 1)],
        )
        late, late_pump = node.connect()
        late.op(op="watch", prefix="", since=term1 + 5)
        late.op(op="watch", prefix="", since=term1 + 1)
        late_pump.flush()
        self.assertEqual(
            [f["type"] for f in late.take()], ["watching", "put", "watching", "compacted"]
        )

    def test_restarted(self) -> None:
        """
        The history is the store's, not the service's: a resume after
        C{/ws} restarted replays the changes made while it was stopped.
        """
        node = self.make_listening_node()
        node.kv.emit(_put("a"), 1)
        node.service.stopService()
        node.kv.emit(_put("b"), 2)
        node.service.startService()
        node.kv.emit(_put("c"), 3)
        client, pump = node.connect()
        client.op(op="watch", prefix="", since=1)
        pump.flush()
        node.kv.emit(_put("d"), 4)
        pump.flush()
        self.assertEqual(
            [(f["type"], f["revision"]) for f in client.take()],
            [("watching", 1), ("put", 2), ("put", 3), ("put", 4)],
        )

    def test_file_replay(self) -> None:
        """
        C{watch_files} takes C{since} too.
        """
        node = self.make_listening_node()
        node.kv.emit(_file_change("m/a"), 1)
        node.kv.emit(_file_change("m/b"), 2)
        client, pump = node.connect()
        client.op(op="watch_files", path="/", since=0)
        pump.flush()
        self.assertEqual([f.get("path") for f in client.take()], ["/", "/a", "/b"])


class MalformedFrameTests(_NodeMixin, SynchronousTestCase):
    """
    Frames that do not follow the protocol are answered with C{error} frames,
    and the connection keeps working.
    """

    def assertRefused(self, payload: bytes, message: str, binary: bool = False) -> None:
        node = self.make_node()
        client, pump = node.connect()
        client.sendMessage(payload, isBinary=binary)
        pump.flush()
        self.assertEqual(client.take(), [{"type": "error", "message": message}])
        client.op(op="watch", prefix="")
        pump.flush()
        node.kv.emit(_put("a"), 1)
        pump.flush()
        self.assertEqual([f["type"] for f in client.take()], ["watching", "put"])

    def test_not_json(self) -> None:
        """
        A frame that is not JSON.
        """
        self.assertRefused(b"{nope", "the frame is not valid JSON")

    def test_binary(self) -> None:
        """
        A binary frame.
        """
        self.assertRefused(
            b'{"op": "watch", "prefix": ""}',
            "binary frames are not supported: send JSON text",
            binary=True,
        )

    def test_not_an_object(self) -> None:
        """
        JSON that is not an object.
        """
        self.assertRefused(b"[1, 2]", "the frame is not a JSON object")

    def test_unknown_op(self) -> None:
        """
        An op that does not exist.
        """
        self.assertRefused(
            b'{"op": "get", "prefix": ""}',
            "unknown op 'get': expected one of watch, unwatch, watch_files, unwatch_files",
        )

    def test_op_not_string(self) -> None:
        """
        An op that is not a string.
        """
        self.assertRefused(
            b'{"op": ["watch"]}',
            "unknown op ['watch']: expected one of watch, unwatch, watch_files, unwatch_files",
        )

    def test_missing_prefix(self) -> None:
        """
        C{watch} without its prefix.
        """
        self.assertRefused(b'{"op": "watch"}', "'watch' needs a string 'prefix'")

    def test_prefix_not_string(self) -> None:
        """
        A prefix that is not a string.
        """
        self.assertRefused(b'{"op": "watch_files", "path": 3}', "'watch_files' needs a string 'path'")

    def test_long_prefix(self) -> None:
        """
        A prefix longer than 4096 bytes.
        """
        frame = json.dumps({"op": "watch", "prefix": "x" * 4097}).encode()
        self.assertRefused(frame, "'prefix' is longer than 4096 bytes")

    def test_bad_since(self) -> None:
        """
        C{since} must be a non-negative integer.
        """
        for since in ["1", -1, True, 1.5]:
            frame = json.dumps({"op": "watch", "prefix": "", "since": since}).encode()
            self.assertRefused(frame, "'since' must be a revision: an integer >= 0")

    def test_invalid_utf8(self) -> None:
        """
        A text frame that is not UTF-8 breaks the WebSocket protocol itself:
        Autobahn closes that connection (1007), and the node serves others.
        """
        node = self.make_node()
        bad, bad_pump = node.connect()
        good, good_pump = node.watcher(prefix="")
        bad.sendMessage(b'"\xff"', isBinary=False)
        bad_pump.flush()
        self.assertEqual(bad.close_status[0], 1007)
        node.kv.emit(_put("a"), 1)
        good_pump.flush()
        self.assertEqual([f["key"] for f in good.take()], ["a"])
        node.clock.advance(1)
        bad_pump.flush()
        self.assertEqual(node.service.factory.connections, 1)


class LimitTests(_NodeMixin, SynchronousTestCase):
    """
    Limits on watches and on incoming frames.
    """

    def test_watch_limit(self) -> None:
        """
        Past C{max_watches} (key and file watches together), C{watch} is
        refused; watching an already watched prefix again is not a new watch,
        and an C{unwatch} makes room.
        """
        node = self.make_node(max_watches=2)
        client, pump = node.connect()
        client.op(op="watch", prefix="a")
        client.op(op="watch_files", path="/")
        client.op(op="watch", prefix="b")
        client.op(op="watch", prefix="a")
        client.op(op="unwatch", prefix="a")
        client.op(op="watch", prefix="b")
        pump.flush()
        self.assertEqual(
            [f["type"] for f in client.take()],
            ["watching", "watching", "error", "watching", "unwatched", "watching"],
        )

    def test_watch_limit_message(self) -> None:
        """
        The refusal says what the limit is.
        """
        node = self.make_node(max_watches=0)
        client, pump = node.connect()
        client.op(op="watch", prefix="a")
        pump.flush()
        self.assertEqual(
            client.take(),
            [{"type": "error", "message": "too many watches: at most 0 per connection"}],
        )

    def test_large_frame(self) -> None:
        """
        A frame larger than C{max_frame_bytes} closes that connection (1009).
        """
        node = self.make_node(max_frame_bytes=100)
        client, pump = node.connect()
        client.op(op="watch", prefix="x" * 200)
        pump.flush()
        self.assertEqual(client.close_status[0], 1009)


class BackpressureTests(_NodeMixin, SynchronousTestCase):
    """
    A client that does not read is closed once its queue is full; the others
    keep receiving.
    """

    def stall(self, pump: iosim.IOPump) -> None:
        """
        Make the server side of C{pump} behave as if the client stopped
        reading: its transport says its buffer is full.
        """
        pump.serverIO.producer.pauseProducing()

    def test_queue_then_resume(self) -> None:
        """
        While the transport is paused, frames wait, and are sent in order once
        it resumes.
        """
        node = self.make_node(max_queue=3)
        client, pump = node.watcher(prefix="")
        self.stall(pump)
        for revision in range(1, 4):
            node.kv.emit(_put("k"), revision)
        pump.flush()
        self.assertEqual(client.take(), [])
        pump.serverIO.producer.resumeProducing()
        pump.flush()
        self.assertEqual([f["revision"] for f in client.take()], [1, 2, 3])

    def test_overflow_closes_slow_client_only(self) -> None:
        """
        One frame more than C{max_queue} closes the slow connection with 1013
        and a reason; another client receives every change.
        """
        node = self.make_node(max_queue=3)
        slow, slow_pump = node.watcher(prefix="")
        fast, fast_pump = node.watcher(prefix="")
        self.stall(slow_pump)
        for revision in range(1, 6):
            node.kv.emit(_put("k"), revision)
        node.flush()
        self.assertEqual(
            slow.close_status,
            (1013, "too slow: more than 3 frames or 16777216 bytes waiting"),
        )
        self.assertEqual(slow.take(), [])
        self.assertEqual([f["revision"] for f in fast.take()], [1, 2, 3, 4, 5])
        self.assertEqual(node.service.factory.connections, 1)

    def test_overflow_bytes(self) -> None:
        """
        The queue is bounded in bytes as well.
        """
        node = self.make_node(max_queue_bytes=500)
        slow, slow_pump = node.watcher(prefix="")
        self.stall(slow_pump)
        node.kv.emit(_put("k", b"x" * 300), 1)
        node.kv.emit(_put("k", b"x" * 300), 2)
        node.flush()
        self.assertEqual(slow.close_status[0], 1013)

    def test_stalled_close_times_out(self) -> None:
        """
        A client that reads nothing at all does not answer the close either:
        the connection is dropped after the close handshake timeout.
        """
        node = self.make_node(max_queue=0)
        slow, slow_pump = node.watcher(prefix="")
        self.stall(slow_pump)
        node.kv.emit(_put("k"), 1)
        node.clock.advance(1)
        self.assertTrue(slow_pump.serverIO.disconnecting)

    def test_outbox(self) -> None:
        """
        L{_Outbox} sends at once when it can, queues while paused, stops
        draining when paused again, and reports an overflow once.
        """
        sent: list[bytes] = []
        overflows: list[str] = []
        # Once set, the transport pushes back after each frame it takes.
        pushing_back: list[bool] = []

        def send(frame: bytes) -> None:
            sent.append(frame)
            if pushing_back:
                outbox.pauseProducing()

        outbox = _Outbox(send, overflows.append, max_frames=2, max_bytes=100)
        outbox.push(b"1")
        outbox.pauseProducing()
        outbox.push(b"2")
        outbox.push(b"3")
        self.assertEqual(sent, [b"1"])
        pushing_back.append(True)
        outbox.resumeProducing()
        self.assertEqual(sent, [b"1", b"2"])
        outbox.push(b"4")
        outbox.push(b"5")
        self.assertEqual(overflows, ["too slow: more than 2 frames or 100 bytes waiting"])
        outbox.push(b"6")
        outbox.resumeProducing()
        self.assertEqual((sent, len(overflows)), ([b"1", b"2"], 1))


class KeepAliveTests(_NodeMixin, SynchronousTestCase):
    """
    Pings on the injected clock.
    """

    def test_pong_keeps_connection(self) -> None:
        """
        A client that answers pings stays connected.
        """
        node = self.make_node(ping_interval=10, ping_timeout=5)
        client, pump = node.watcher(prefix="")
        for _ in range(5):
            node.clock.advance(10)
            pump.flush()
        self.assertIsNone(client.close_status)
        self.assertEqual(node.service.factory.connections, 1)

    def test_silent_client_dropped(self) -> None:
        """
        A client that does not answer a ping in time is dropped.
        """
        node = self.make_node(ping_interval=10, ping_timeout=5)
        client, pump = node.watcher(prefix="")
        node.clock.advance(10)
        node.clock.advance(5)
        pump.flush()
        self.assertIsNotNone(client.close_status)
        self.assertEqual(node.service.factory.connections, 0)


class HandshakeTests(_NodeMixin, SynchronousTestCase):
    """
    Who may connect.
    """

    def test_same_origin(self) -> None:
        """
        A page served by the node itself may connect.
        """
        node = self.make_node()
        client, pump = node.connect(origin="http://127.0.0.1:7001")
        self.assertTrue(client.opened)

    def test_cross_origin(self) -> None:
        """
        A page from another origin may not: the store's data would leak to
        any web site the user visits.
        """
        node = self.make_node()
        client, pump = node.connect(origin="http://evil.example")
        self.assertFalse(client.opened)
        self.assertEqual(node.service.factory.connections, 0)

    def test_stopping(self) -> None:
        """
        Stopping the service closes the connections with 1001, lets the
        closing handshake finish, and refuses new connections.
        """
        node = self.make_node()
        client, pump = node.watcher(prefix="")
        stopped = node.service.stopService()
        self.assertNoResult(stopped)
        pump.flush()
        self.successResultOf(stopped)
        self.assertEqual(client.close_status, (1001, "the node is stopping"))
        late, _ = node.connect()
        self.assertFalse(late.opened)
        node.service.startService()


class EventFrameTests(SynchronousTestCase):
    """
    L{event_frame}: which changes are announced, and how.
    """

    def test_other_namespace(self) -> None:
        """
        Changes outside the client and file namespaces are not announced.
        """
        change = Change("put", "zinternal", 1, Record(b"", "x", 1))
        self.assertIsNone(event_frame(ChangeEvent(change, 1), _file_event_for))

    def test_file_revision(self) -> None:
        """
        File frames get the change's revision.
        """
        frame = event_frame(ChangeEvent(_file_change("m/a"), 9), _file_event_for)
        self.assertEqual(frame, {"type": "file", "op": "stored", "path": "/a", "size": 1, "revision": 9})

    def test_without_file_service(self) -> None:
        """
        Until the file service provides its mapping, file changes are not
        announced.
        """
        feed = _Feed()
        hub = self.watching_hub(feed)
        feed.emit(_file_change("m/a"), 1)
        feed.emit(_put("k"), 2)
        events, newest = self.successResultOf(hub.since(0))
        self.assertEqual(([event.kind for event in events], newest), (["key"], 2))

    def test_failing_mapping(self) -> None:
        """
        A mapping that raises is logged; the store's write path is unharmed.
        """
        feed = _Feed()
        hub = self.watching_hub(feed, file_event_for=lambda change: 1 / 0)
        feed.emit(_file_change("m/a"), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(hub.revision, 1)

    def watching_hub(self, feed: _Feed, **options: Any) -> WatchHub:
        """
        A started hub over C{feed} with one session watching everything.
        """
        hub = WatchHub(feed, **options)
        hub.start()
        self.addCleanup(hub.stop)
        WatchSession(hub, lambda frame: None, 1).received(b'{"op": "watch", "prefix": ""}', False)
        return hub
