# -*- test-case-name: tests.test_e2e_ws -*-
"""
End-to-end tests of C{/ws} (docs/websocket.md) on a real three-node
cluster: real C{twistd kvnode} processes on loopback (L{tests.e2e.RealCluster}),
Autobahn WebSocket clients, changes made over HTTP and FTP.

What they prove:

  - watchers on two nodes receive a change made through the third, with the
    same revision, each key's changes in version order, revisions growing;
    deletes and TTL expiries arrive as C{delete} and C{expire};
  - a file stored over FTP or C{PUT /files/...} arrives as a C{file} event;
  - C{since} after a reconnection to another node replays the missed changes,
    without gap or duplicate, or answers C{compacted}; C{since} 0 replays
    everything on a node there from the start;
  - C{kvctl watch} moves to another node when the one it watches through is
    killed, says so, and prints the changes made meanwhile;
  - with the leader killed (SIGKILL), a watcher on a surviving node keeps
    receiving changes, revisions keep growing, and a client of the dead node
    resuming elsewhere with C{since} sees no change twice;
  - malformed frames are answered with C{error} frames, and the connection
    keeps working;
  - a node paused (SIGSTOP) for longer than the peer idle timeout, so that
    the leader's link to it drops, still gives its watchers every change,
    or closes them / answers C{compacted}: never a silent gap;
  - in one process (L{LoopbackSiteTests}), over real loopback sockets,
    watchers on sites sharing one store receive a change made through a
    third site once each, and a client that stops reading is disconnected
    once its queue is full while a client of the same node keeps receiving
    every change.

Every wait polls the real reactor with a deadline; every node and client is
stopped by a cleanup, whatever the outcome.
"""

from __future__ import annotations

import ftplib
import io
import json
import signal
import sys
from collections import Counter
from typing import Any, Callable, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e import RealCluster, Reply, kv_path, node_environment
from tests.polling import poll
from tests.test_client_support import serve
from twisted_kv.client.txclient import TxClient, Watcher
from twisted_kv.core import keyspace
from twisted_kv.peer.protocol import DEFAULT_IDLE_TIMEOUT

#: The frames that announce a change.
CHANGES = frozenset({"put", "delete", "expire", "file"})

#: Seconds a change may take to reach a watcher (generous: the machine may
#: be busy with other tests).
DELIVERY = 10.0


class _Frames(WebSocketClientProtocol):
    """
    A WebSocket client that keeps every frame it receives, decoded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict] = []
        self.opened: Deferred[_Frames] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.close_code: Optional[int] = None

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self.close_code = code if code is not None else 1006
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback(None)

    @property
    def alive(self) -> bool:
        return self.opened.called and not self.closed.called

    def send(self, message: Any) -> None:
        self.sendMessage(json.dumps(message).encode("utf-8"))

    def changes(self) -> list[dict]:
        """
        The change frames received so far, in arrival order.
        """
        return [frame for frame in self.frames if frame["type"] in CHANGES]

    async def wait(self, check: Callable[[], Any], what: str, timeout: float = DELIVERY) -> Any:
        """
        Wait until C{check()} is truthy; return its value.
        """
        try:
            return await poll(lambda: check() or None, timeout, what, interval=0.02)
        except AssertionError as e:
            raise AssertionError(f"{e}; frames received: {json.dumps(self.frames)[-3000:]}") from None

    async def watch(self, op: str = "watch", prefix: str = "", since: Optional[int] = None) -> int:
        """
        Send a watch op and wait for its answer.

        @return: the revision in the answer.
        """
        field = "path" if op.endswith("files") else "prefix"
        message: dict[str, Any] = {"op": op, field: prefix}
        if since is not None:
            message["since"] = since
        start = len(self.frames)
        self.send(message)
        answer = await self.wait(
            lambda: next(
                (
                    f
                    for f in self.frames[start:]
                    if f["type"] in ("watching", "unwatched", "error")
                ),
                None,
            ),
            f"the answer to {message}",
        )
        assert answer["type"] == "watching", answer
        assert answer[field] == prefix, answer
        return answer["revision"]


async def connect(test: TestCase, cluster: RealCluster, node_id: str) -> _Frames:
    """
    A WebSocket client on node C{node_id}'s C{/ws}, dropped by a cleanup.
    """
    port = cluster.http_port(node_id)
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws", reactor=reactor)
    factory.protocol = _Frames
    client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(factory)
    await client.opened

    async def drop() -> None:
        if not client.closed.called:
            client.transport.abortConnection()
            await client.closed

    test.addCleanup(drop)
    return client


class _Kvctl(ProcessProtocol):
    """
    A C{kvctl} process, its output kept.
    """

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.stdout += data
        else:
            self.stderr += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)

    def lines(self) -> list[dict]:
        """
        The JSON lines printed so far.
        """
        return [json.loads(line) for line in self.stdout.splitlines()]

    async def wait(self, check: Callable[[], Any], what: str) -> None:
        """
        Wait until C{check()} is truthy.
        """
        try:
            await poll(lambda: check() or None, DELIVERY, what, interval=0.02)
        except AssertionError as e:
            raise AssertionError(f"{e}; stdout: {self.stdout!r}; stderr: {self.stderr!r}") from None

    def stop(self) -> Deferred[None]:
        if not self.ended.called:
            self.transport.signalProcess("TERM")
        return self.ended


def revisions(frames: list[dict]) -> list[int]:
    return [frame["revision"] for frame in frames]


def assertGrowing(test: TestCase, frames: list[dict]) -> None:
    """
    The revisions of C{frames} strictly grow.
    """
    numbers = revisions(frames)
    for before, after in zip(numbers, numbers[1:]):
        test.assertLess(before, after, f"revisions do not grow: {numbers}")


def ranges(numbers: set[int]) -> str:
    """
    C{numbers} as runs of consecutive numbers: C{"5-9, 12"}.
    """
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def identities(frames: list[dict]) -> list[tuple[str, str, str]]:
    """
    What each change frame is about: C{(type, key, version)}.
    """
    return [(f["type"], f["key"], f["version"]) for f in frames]


def assertChangesOf(
    test: TestCase, frames: list[dict], acked: list[tuple[str, str, Optional[str]]]
) -> None:
    """
    C{frames} are exactly the changes C{acked} (C{(type, key, version)},
    the version C{None} for a delete, whose answer names none), each key's
    in the order acknowledged.  The order between keys is not compared:
    each partition's primary hands its changes to the leader on its own,
    so changes to different keys acknowledged one after the other may be
    numbered the other way round (a batch waiting for a new link or a new
    leader, or merely overtaken); CONTRACT.md §5 orders events per key.
    """
    def by_key(changes: list[tuple[str, str, Optional[str]]]) -> dict[str, list]:
        keys: dict[str, list] = {}
        for kind, key, version in changes:
            keys.setdefault(key, []).append((kind, None if kind == "delete" else version))
        return keys

    test.assertEqual(by_key(identities(frames)), by_key(acked), identities(frames))


class WebSocketClusterTests(TestCase):
    """
    C{/ws} on every node of a real three-node cluster.
    """

    timeout = 40

    async def start_cluster(self, **tunables: Any) -> RealCluster:
        cluster = RealCluster(3, self.mktemp(), election_timeout="1s", **tunables)
        self.addCleanup(cluster.stop_all)
        self.leader = await cluster.start()
        return cluster

    async def put(
        self, cluster: RealCluster, node_id: str, key: str, value: bytes, query: str = ""
    ) -> str:
        """
        C{PUT} C{key} through C{node_id}; return the new version.
        """
        reply = await cluster.request(
            "PUT", node_id, kv_path(key) + query, value, {"Content-Type": "text/plain"}
        )
        self.assertIn(reply.status, (200, 201), reply)
        return reply.json()["version"]

    async def delete(self, cluster: RealCluster, node_id: str, key: str) -> Reply:
        reply = await cluster.request("DELETE", node_id, kv_path(key))
        self.assertEqual(reply.status, 204, reply)
        return reply

    async def settle(
        self, mark: Callable[[], Any], field: str, value: str, *clients: _Frames
    ) -> list[list[dict]]:
        """
        Make one more change with C{mark}, the marker, and wait until every
        client of C{clients} has received it: a watcher receives its changes
        in revision order, so none made before the marker is still on its
        way.  (Whatever a client received by then is all it will receive.)

        @param field: C{"key"} or C{"path"}: what names the marker's change.
        @param value: the marker's key or path.
        @return: the changes each client received, without the marker's.
        """
        await mark()
        for client in clients:
            await client.wait(
                lambda c=client: any(f.get(field) == value for f in c.changes()),
                f"the marker {value} at a watcher",
            )
        return [[f for f in c.changes() if f.get(field) != value] for c in clients]

    async def test_change_through_a_third_node(self) -> None:
        """
        Watchers on n1 and n2 receive the changes made through n3 over HTTP:
        the same frames with the same revisions, the changes of each key in
        version order, revisions growing; a delete and a TTL expiry arrive
        as C{delete} and C{expire}; unwatched keys are not sent.
        """
        cluster = await self.start_cluster()
        first = await connect(self, cluster, "n1")
        second = await connect(self, cluster, "n2")
        watched_at = [await first.watch(prefix="users/"), await second.watch(prefix="users/")]

        alice = [await self.put(cluster, "n3", "users/alice", b"one")]
        bob = await self.put(cluster, "n3", "users/bob", "Bob é".encode())
        await self.put(cluster, "n3", "other/x", b"not watched")
        alice.append(await self.put(cluster, "n3", "users/alice", b"two"))
        short = await self.put(cluster, "n3", "users/short-lived", b"bye", "?ttl=1")
        alice.append(await self.put(cluster, "n3", "users/alice", b"three"))
        await self.delete(cluster, "n3", "users/alice")

        for client in (first, second):
            await client.wait(
                lambda c=client: any(f["type"] == "expire" for f in c.changes()),
                "the expiry of users/short-lived",
            )
        marker = "users/~settled"
        received, on_second = await self.settle(
            lambda: self.put(cluster, "n3", marker, b"end"), "key", marker, first, second
        )
        self.assertEqual(received, on_second, "the two nodes sent different frames")
        assertGrowing(self, received)
        self.assertGreater(received[0]["revision"], max(watched_at))

        kinds = [(f["type"], f["key"]) for f in received]
        self.assertEqual(
            kinds,
            [
                ("put", "users/alice"),
                ("put", "users/bob"),
                ("put", "users/alice"),
                ("put", "users/short-lived"),
                ("put", "users/alice"),
                ("delete", "users/alice"),
                ("expire", "users/short-lived"),
            ],
        )
        puts = [f for f in received if f["type"] == "put"]
        self.assertEqual(
            [f["version"] for f in puts if f["key"] == "users/alice"], alice, "alice out of order"
        )
        self.assertEqual(
            [(f["value"], f["encoding"]) for f in puts if f["key"] == "users/alice"],
            [("one", "utf-8"), ("two", "utf-8"), ("three", "utf-8")],
        )
        [bob_frame] = [f for f in puts if f["key"] == "users/bob"]
        self.assertEqual((bob_frame["version"], bob_frame["value"]), (bob, "Bob é"))
        [short_put] = [f for f in puts if f["key"] == "users/short-lived"]
        self.assertEqual(short_put["version"], short)
        # A delete and an expiry are new versions of their key.
        deleted = next(f for f in received if f["type"] == "delete")
        expired = next(f for f in received if f["type"] == "expire")
        self.assertNotIn(deleted["version"], alice)
        self.assertNotEqual(expired["version"], short)
        self.assertEqual(set(deleted), {"type", "key", "version", "revision"})
        self.assertEqual(set(expired), {"type", "key", "version", "revision"})
        # The keys are gone on every node.
        for node_id in cluster.node_ids:
            for key in ("users/alice", "users/short-lived"):
                reply = await cluster.request("GET", node_id, kv_path(key))
                self.assertEqual(reply.status, 404, (node_id, key, reply))

    async def test_malformed_frames(self) -> None:
        """
        Every malformed frame is answered with an C{error} frame; the
        connection stays open, and a watch sent afterwards on it receives a
        change made through another node.
        """
        cluster = await self.start_cluster()
        client = await connect(self, cluster, "n1")
        bad = [
            (b"not json", False),
            (b"[1, 2]", False),
            (b'"watch"', False),
            (b'{"op": "watch", "prefix": "x"}', True),
            (b'{"op": "subscribe", "prefix": "x"}', False),
            (b'{"prefix": "x"}', False),
            (b'{"op": "watch"}', False),
            (b'{"op": "watch", "prefix": 7}', False),
            (b'{"op": "watch_files", "prefix": "/"}', False),
            (b'{"op": "watch", "prefix": "x", "since": -1}', False),
            (b'{"op": "watch", "prefix": "x", "since": "12"}', False),
            (b'{"op": "watch", "prefix": "x", "since": true}', False),
            (b'{"op": "watch", "prefix": "' + b"p" * 5000 + b'"}', False),
        ]
        for payload, binary in bad:
            client.sendMessage(payload, isBinary=binary)
        errors = await client.wait(
            lambda: len(client.frames) >= len(bad) and client.frames, "the error frames"
        )
        self.assertEqual([f["type"] for f in errors], ["error"] * len(bad), errors)
        for frame in errors:
            self.assertIsInstance(frame["message"], str)
            self.assertTrue(frame["message"])
        self.assertTrue(client.alive)

        # None of the refused watches was set up: a change under "x" is
        # not sent, one under the watched prefix is.
        await client.watch(prefix="ok/")
        await self.put(cluster, "n2", "x", b"refused watch")
        version = await self.put(cluster, "n3", "ok/after-errors", b"fine")
        change = await client.wait(lambda: client.changes(), "the change after the errors")
        self.assertEqual(identities(change), [("put", "ok/after-errors", version)])

        # The node serves other clients all along.
        other = await connect(self, cluster, "n1")
        await other.watch(prefix="")
        self.assertTrue(client.alive)

    async def test_file_events(self) -> None:
        """
        A file uploaded over FTP through n1, and one stored with C{PUT
        /files/...} through n2, arrive as C{stored} file events at a
        C{watch_files} client on n3, and a deletion as C{deleted}; key
        watchers get none of them.
        """
        cluster = await self.start_cluster()
        files = await connect(self, cluster, "n3")
        keys = await connect(self, cluster, "n3")
        await files.watch("watch_files", "/docs/")
        await keys.watch(prefix="")
        data = b"over ftp\n" * 1000

        def upload() -> None:
            ftp = ftplib.FTP(timeout=30)
            ftp.connect("127.0.0.1", cluster.ftp_port("n1"))
            ftp.login("alice", "wonderland")
            try:
                ftp.mkd("/docs")
            except ftplib.error_perm:
                pass
            ftp.storbinary("STOR /docs/via-ftp.txt", io.BytesIO(data))
            ftp.quit()

        await deferToThread(upload)
        reply = await cluster.request("PUT", "n2", "/files/docs/via%20http.txt", b"over http")
        self.assertIn(reply.status, (200, 201), reply)
        reply = await cluster.request("PUT", "n2", "/files/elsewhere.txt", b"not watched")
        self.assertIn(reply.status, (200, 201), reply)
        reply = await cluster.request("DELETE", "n1", "/files/docs/via-ftp.txt")
        self.assertEqual(reply.status, 204, reply)

        await files.wait(lambda: len(files.changes()) >= 3, "three file events")

        async def mark() -> None:
            reply = await cluster.request("PUT", "n2", "/files/docs/~settled", b"end")
            self.assertIn(reply.status, (200, 201), reply)

        [received] = await self.settle(mark, "path", "/docs/~settled", files)
        assertGrowing(self, received)
        self.assertEqual(
            [(f["type"], f["op"], f["path"], f["size"]) for f in received],
            [
                ("file", "stored", "/docs/via-ftp.txt", len(data)),
                ("file", "stored", "/docs/via http.txt", len(b"over http")),
                # A deletion tells the size removed (docs/files.md).
                ("file", "deleted", "/docs/via-ftp.txt", len(data)),
            ],
        )
        self.assertEqual(keys.changes(), [], "file changes were sent to a key watcher")

    async def test_resume_on_another_node(self) -> None:
        """
        A client watching on n1 disconnects; changes go on through n3; it
        watches again on n2 with C{since} its last revision and gets exactly
        the changes it missed (those a watcher that stayed connected saw,
        with the same revisions), then the live ones.  After more changes
        than the history holds, C{since} is answered C{compacted}, and the
        live stream goes on after the revision it names.
        """
        history = 40
        cluster = await self.start_cluster(ws_history=history)
        witness = await connect(self, cluster, "n3")
        await witness.watch(prefix="r/")
        client = await connect(self, cluster, "n1")
        await client.watch(prefix="r/")

        acked: list[tuple[str, str, Optional[str]]] = []
        for i in range(5):
            acked.append(("put", f"r/{i % 3}", await self.put(cluster, "n3", f"r/{i % 3}", b"a%d" % i)))
        before = await client.wait(lambda: len(client.changes()) == 5 and client.changes(), "5 changes")
        assertChangesOf(self, before, acked)
        last = before[-1]["revision"]
        client.transport.loseConnection()
        await client.closed

        for i in range(5, 12):
            acked.append(("put", f"r/{i % 3}", await self.put(cluster, "n3", f"r/{i % 3}", b"b%d" % i)))
        await self.delete(cluster, "n3", "r/0")
        acked.append(("delete", "r/0", None))

        resumed = await connect(self, cluster, "n2")
        await resumed.watch(prefix="r/", since=last)
        replay = await resumed.wait(
            lambda: len(resumed.changes()) >= 8 and resumed.changes(), "the replay"
        )
        live = await self.put(cluster, "n1", "r/live", b"after the replay")
        await resumed.wait(lambda: len(resumed.changes()) >= 9, "the live change")
        await witness.wait(lambda: len(witness.changes()) == 14, "every change at the witness")
        marker = "r/~settled"
        replay, witnessed = await self.settle(
            lambda: self.put(cluster, "n1", marker, b"end"), "key", marker, resumed, witness
        )
        self.assertNotIn("compacted", [f["type"] for f in resumed.frames])
        # No gap, no duplicate: what the client saw before and after is
        # exactly what the witness saw, frame for frame.
        self.assertEqual(before + replay, witnessed)
        assertGrowing(self, before + replay)
        assertChangesOf(self, replay[:8], acked[5:])
        self.assertEqual(identities(replay[8:]), [("put", "r/live", live)])
        self.assertGreater(replay[0]["revision"], last)

        # More changes than the history holds, while disconnected.
        last = replay[-1]["revision"]
        resumed.transport.loseConnection()
        await resumed.closed
        for i in range(history + 5):
            await self.put(cluster, "n3", f"r/bulk{i % 7}", b"c%d" % i)
        late = await connect(self, cluster, "n1")
        await late.watch(prefix="r/", since=last)
        compacted = await late.wait(
            lambda: next((f for f in late.frames if f["type"] == "compacted"), None),
            "compacted",
        )
        self.assertEqual(
            [f["type"] for f in late.frames], ["watching", "compacted"], "a partial replay was sent"
        )
        self.assertGreater(compacted["revision"], last)
        version = await self.put(cluster, "n2", "r/after-compaction", b"x")
        after = await late.wait(lambda: late.changes(), "a live change after compacted")
        self.assertEqual(identities(after), [("put", "r/after-compaction", version)])
        self.assertGreater(after[0]["revision"], compacted["revision"])

    async def test_since_zero_on_a_node_there_from_the_start(self) -> None:
        """
        A node that received every change since the cluster's first replays
        them all for C{since} 0, though their revisions are large (term << 32
        | n); a C{since} above 0 but below the first revision is answered
        C{compacted}.
        """
        cluster = await self.start_cluster()
        acked = [("put", f"z/{i}", await self.put(cluster, "n3", f"z/{i}", b"v")) for i in range(3)]
        client = await connect(self, cluster, "n1")
        await client.watch(prefix="z/", since=0)
        replay = await client.wait(lambda: len(client.changes()) == 3 and client.changes(), "the replay")
        assertChangesOf(self, replay, acked)
        self.assertNotIn("compacted", [f["type"] for f in client.frames])
        self.assertGreater(replay[0]["revision"], 1 << 32)

    async def test_kvctl_watch_moves_to_another_node(self) -> None:
        """
        C{kvctl watch --since 0} through one node prints the change made
        before; the node is then killed (SIGKILL): C{kvctl} says at once that it lost the node and which one it tries next, says
        when it watches again, and prints the change made meanwhile through
        a third node; nothing twice, no C{compacted}.
        """
        cluster = await self.start_cluster()
        watched, writer = [n for n in cluster.node_ids if n != self.leader]
        before = await self.put(cluster, writer, "m/before", b"1")
        kvctl = _Kvctl()
        reactor.spawnProcess(
            kvctl,
            sys.executable,
            [sys.executable, "-m", "twisted_kv.app.kvctl", "--node", cluster.url(watched), "watch", "m/", "--since", "0"],
            env=node_environment(),
        )
        self.addCleanup(kvctl.stop)
        await kvctl.wait(lambda: len(kvctl.lines()) == 1, "kvctl printing the first change")
        await cluster.kill(watched)
        await kvctl.wait(lambda: "trying" in kvctl.stderr.decode(), "kvctl reporting the lost node")
        after = await self.put(cluster, writer, "m/after", b"2")
        await kvctl.wait(lambda: len(kvctl.lines()) == 2, "kvctl printing the later change")
        printed = kvctl.lines()
        self.assertEqual(identities(printed), [("put", "m/before", before), ("put", "m/after", after)])
        await kvctl.wait(lambda: kvctl.stderr.count(b"\n") == 2, "kvctl watching again")
        lost, again = kvctl.stderr.decode().splitlines()
        self.assertRegex(lost, rf"^kvctl: lost {watched} \(connection lost\); trying n\d\.\.\.$")
        self.assertRegex(
            again, rf"^kvctl: watching again through n\d after revision {printed[0]['revision']}$"
        )

    async def test_leader_killed(self) -> None:
        """
        Changes are written without pause through a surviving node while the
        leader is killed (SIGKILL).  A watcher on the other surviving node
        receives every acknowledged change exactly once, each key's changes
        in version order, revisions growing across the failover.  A client
        of the killed node watches again on a survivor with C{since} its
        last revision: together, what it got before and after covers every
        acknowledged change, none twice.
        """
        cluster = await self.start_cluster()
        leader = self.leader
        writer, survivor = [n for n in cluster.node_ids if n != leader]
        watcher = await connect(self, cluster, survivor)
        await watcher.watch(prefix="f/")
        doomed = await connect(self, cluster, leader)
        await doomed.watch(prefix="f/")

        acked: list[tuple[str, str]] = []
        stop: list[bool] = []

        async def write_forever() -> None:
            i = 0
            while not stop:
                key = f"f/{i % 7}"
                try:
                    reply = await cluster.request(
                        "PUT", writer, kv_path(key), b"%d" % i, timeout=5
                    )
                except Exception:
                    # Refused or timed out with the leader gone: try again.
                    await deferLater(reactor, 0.05, lambda: None)
                    continue
                if reply.status in (200, 201):
                    acked.append((key, reply.json()["version"]))
                    i += 1
                elif reply.status in (503, 504):
                    # Refused, or outcome unknown (its change may or may
                    # not be announced): try again.
                    await deferLater(reactor, 0.05, lambda: None)
                else:
                    self.fail(f"PUT {key}: {reply!r}")

        writing = Deferred.fromCoroutine(write_forever())
        try:
            await watcher.wait(lambda: len(acked) >= 40, "40 writes before the kill")
            await cluster.kill(leader)
            killed_at = len(acked)
            await doomed.closed
            new_leader = await cluster.leader(timeout=15)
            self.assertNotEqual(new_leader, leader)
            await watcher.wait(lambda: len(acked) >= killed_at + 40, "40 writes after the kill", 30)
        finally:
            stop.append(True)
            await writing

        wanted = set(acked)
        await watcher.wait(
            lambda: wanted <= {(f["key"], f["version"]) for f in watcher.changes()},
            "every acknowledged change at the watcher on a survivor",
        )
        received = watcher.changes()
        assertGrowing(self, received)
        seen = Counter((f["key"], f["version"]) for f in received)
        self.assertEqual([c for c, n in seen.items() if n > 1], [], "changes received twice")
        for key in {k for k, _ in acked}:
            got = [f["version"] for f in received if f["key"] == key and (key, f["version"]) in wanted]
            self.assertEqual(got, [v for k, v in acked if k == key], f"{key} out of order")

        # The client of the killed node resumes on the writer's node.
        before = doomed.changes()
        self.assertTrue(before, "the client of the leader received nothing before the kill")
        resumed = await connect(self, cluster, writer)
        await resumed.watch(prefix="f/", since=before[-1]["revision"])
        got = await resumed.wait(
            lambda: (
                any(f["type"] == "compacted" for f in resumed.frames)
                or wanted <= {(f["key"], f["version"]) for f in before + resumed.changes()}
            ),
            "the replay of every change missed",
        )
        self.assertTrue(got)
        if any(f["type"] == "compacted" for f in resumed.frames):
            self.assertEqual([f["type"] for f in resumed.frames[:2]], ["watching", "compacted"])
            return
        marker = "f/~settled"
        [after] = await self.settle(
            lambda: self.put(cluster, writer, marker, b"end"), "key", marker, resumed
        )
        together = before + after
        assertGrowing(self, after)
        seen = Counter((f["key"], f["version"]) for f in together)
        self.assertEqual(
            sorted(c for c, n in seen.items() if n > 1),
            [],
            f"changes seen twice by a client resuming after revision {before[-1]['revision']}",
        )

    async def test_paused_node(self) -> None:
        """
        A follower is paused (SIGSTOP) a little longer than the peer idle
        timeout, so that the links to it drop and come back, while changes
        are written through the other follower.  Once it runs again, its
        watcher that stayed connected receives every change the other node's
        watcher received, with the same revisions, or is told C{compacted}
        (or is closed); a client
        resuming on it with C{since} its last revision before the pause gets
        them all, or C{compacted}.
        """
        cluster = await self.start_cluster()
        paused, other = [n for n in cluster.node_ids if n != self.leader]
        watcher = await connect(self, cluster, paused)
        await watcher.watch(prefix="p/")
        witness = await connect(self, cluster, other)
        await witness.watch(prefix="p/")
        for i in range(5):
            await self.put(cluster, other, f"p/{i}", b"before")
        await watcher.wait(lambda: len(watcher.changes()) == 5, "5 changes before the pause")
        since = watcher.changes()[-1]["revision"]

        cluster.signal(paused, "STOP")
        self.addCleanup(cluster.signal, paused, signal.SIGCONT)
        resume_at = reactor.seconds() + DEFAULT_IDLE_TIMEOUT + 1.5
        acked = 0
        while reactor.seconds() < resume_at:
            try:
                reply = await cluster.request(
                    "PUT", other, kv_path(f"p/{acked % 9}"), b"during", timeout=2
                )
            except Exception:
                continue
            if reply.status in (200, 201):
                acked += 1
            await deferLater(reactor, 0.05, lambda: None)
        cluster.signal(paused, signal.SIGCONT)
        self.assertGreater(acked, 0, "no write succeeded during the pause")

        # Mark the end: write until a change reaches the paused node's watcher.
        markers = 0

        async def marker_arrived() -> Optional[bool]:
            nonlocal markers
            if any(f["key"].startswith("p/marker") for f in watcher.changes()):
                return True
            await self.put(cluster, other, f"p/marker{markers}", b"after")
            markers += 1
            return None

        await poll(
            marker_arrived, 10, "a change to reach the paused node's watcher again", interval=0.5
        )
        await witness.wait(
            lambda: sum(f["key"].startswith("p/marker") for f in witness.changes()) == markers,
            "the markers at the witness",
        )
        last = max(revisions(witness.changes()))
        await watcher.wait(
            lambda: watcher.close_code or max(revisions(watcher.changes())) >= last,
            "the last marker at the paused node's watcher",
        )
        expected = [f for f in witness.changes() if f["revision"] > since]

        resumed = await connect(self, cluster, paused)
        await resumed.watch(prefix="p/", since=since)
        await resumed.wait(
            lambda: any(f["type"] == "compacted" for f in resumed.frames)
            or (resumed.changes() and resumed.changes()[-1]["revision"] >= last),
            "the replay on the paused node",
        )
        problems = []
        told = any(f["type"] == "compacted" for f in watcher.frames)
        if watcher.close_code is None and not told:
            live = [f for f in watcher.changes() if f["revision"] > since]
            if live != expected:
                problems.append(
                    f"its watcher, never closed, received {len(live)} of the "
                    f"{len(expected)} changes after revision {since}: missing revisions "
                    f"{ranges(set(revisions(expected)) - set(revisions(live)))}"
                )
        if not any(f["type"] == "compacted" for f in resumed.frames):
            replay = resumed.changes()
            if replay != expected:
                problems.append(
                    f"a watch on it with since={since} replayed {len(replay)} of the "
                    f"{len(expected)} changes, without 'compacted': missing revisions "
                    f"{ranges(set(revisions(expected)) - set(revisions(replay)))}"
                )
        self.assertEqual(
            problems,
            [],
            f"{paused} paused {DEFAULT_IDLE_TIMEOUT + 1.5:g}s ({acked} writes meanwhile): "
            "silent gap in its change stream",
        )


class _Stalling(WebSocketClientProtocol):
    """
    A client that watches everything, then stops reading.
    """

    def onOpen(self) -> None:
        self.sendMessage(json.dumps({"op": "watch", "prefix": ""}).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if json.loads(payload)["type"] == "watching":
            self.transport.pauseProducing()
            self.factory.stalled.callback(self)


class LoopbackSiteTests(TestCase):
    """
    Several node sites in this process, sharing one L{LocalKeyValue}
    (each with its own change feed, as the nodes of a cluster have), over
    real loopback sockets.
    """

    @inlineCallbacks
    def watch(self, url: str, prefix: str = "") -> Any:
        """
        A started L{Watcher} on C{url}, and the list it appends changes to.
        """
        received: list[dict] = []
        watcher = Watcher(url, received.append, prefix)
        watcher.start()
        self.addCleanup(watcher.stop)
        yield watcher.when_watching()
        return received

    @inlineCallbacks
    def test_change_through_another_node(self) -> Any:
        """
        Watchers on two nodes receive a change made over HTTP through a
        third, once each.
        """
        first = serve(self)
        second = serve(self, kv=first.kv)
        third = serve(self, kv=first.kv)
        on_first = yield self.watch(first.url, "users/")
        on_second = yield self.watch(second.url, "users/")
        client = TxClient(third.url)
        self.addCleanup(client.close)
        version = yield client.put("users/alice", b"hello")
        yield Deferred.fromCoroutine(
            poll(lambda: bool(on_first and on_second), 10, "the change at both watchers", interval=0.01)
        )
        for received in (on_first, on_second):
            self.assertEqual(
                [(e["type"], e["key"], e["version"], e["value"]) for e in received],
                [("put", "users/alice", version, "hello")],
            )

    @inlineCallbacks
    def test_stalled_consumer(self) -> Any:
        """
        A client that stops reading is disconnected once its queue is full;
        a client of the same node keeps receiving every change.
        """
        node = serve(self, max_queue=50, max_queue_bytes=1024 * 1024)
        received = yield self.watch(node.url)
        factory = WebSocketClientFactory(node.url.replace("http", "ws") + "/ws", reactor=reactor)
        factory.protocol = _Stalling
        factory.stalled = Deferred()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", int(node.url.rsplit(":", 1)[1]))
        slow = yield endpoint.connect(factory)
        self.addCleanup(slow.transport.abortConnection)
        yield factory.stalled
        self.assertEqual(node.ws_service.factory.connections, 2)
        value = b"x" * 8192
        sent = 0
        deadline = reactor.seconds() + 30
        # The kernel's buffers take megabytes before the node's queue fills;
        # then the node closes the connection, and drops it when the closing
        # handshake times out.  A few changes a turn, which the reading
        # client keeps up with.
        while node.ws_service.factory.connections == 2:
            self.assertLess(reactor.seconds(), deadline, "the stalled client was never dropped")
            for _ in range(4):
                sent += 1
                yield node.kv.put(keyspace.user_key(f"k{sent % 100}"), value)
            yield deferLater(reactor, 0, lambda: None)
        yield Deferred.fromCoroutine(
            poll(lambda: len(received) == sent, 10, f"{sent} changes at the reading client", interval=0.01)
        )
        self.assertEqual([e["revision"] for e in received], list(range(1, sent + 1)))
