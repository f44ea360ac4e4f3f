"""
Tests for L{twisted_kv.cluster.replication}: two nodes' L{Replication}s
over real replicas, joined by a queue of messages the test delivers, with
the change feed and anti-entropy replaced by recorders and time by a
L{Clock}.
"""

from __future__ import annotations

from typing import Any, Optional

from attrs import evolve
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.cluster.calls import Retry
from twisted_kv.cluster.replication import LEASE_PROMISE_SHARE, Replication
from twisted_kv.core import messages
from twisted_kv.core.placement import Member, PartitionConfig
from twisted_kv.core.records import Expire, Put
from twisted_kv.core import replica as replica_module
from twisted_kv.core.replica import FILL_CHUNK_BYTES, Entry, Replica
from twisted_kv.testing import cluster_config

CONFIG = cluster_config(3)
LEADER = "n3"


class _Consensus:
    leader = LEADER


class _Feed:
    """
    Records the committed changes queued and the publishing asked for.
    """

    def __init__(self) -> None:
        self.queued: list[Entry] = []
        # whether each change queued may repeat one announced before
        self.repeated: list[bool] = []
        self.publishes = 0

    def queue(self, entries: list[Entry], repeated: bool = False) -> None:
        self.queued.extend(entries)
        self.repeated.extend(repeated for _ in entries)

    def publish(self) -> None:
        self.publishes += 1


class _AntiEntropy:
    """
    Records the replicas whose digest answer is asked for.
    """

    def __init__(self) -> None:
        self.asked: list[int] = []

    def answer(self, replica: Replica) -> None:
        self.asked.append(replica.partition)


class _Node:
    """
    One node's L{Replication} and what it talks to.
    """

    def __init__(
        self,
        test: "ReplicationTests",
        node_id: str,
        disk: Any = None,
        restarted_at: Optional[float] = None,
        config: Any = CONFIG,
    ) -> None:
        self.feed = _Feed()
        self.antientropy = _AntiEntropy()
        self.replicas = [Replica(p) for p in range(2)]
        self.expired: list[tuple[int, Expire]] = []
        self.replication = Replication(
            config=config,
            node_id=node_id,
            incarnation=1,
            replicas=self.replicas,
            clock=test.clock,
            lease_now=test.clock.seconds,
            send=lambda peer, message: test.send(node_id, peer, message),
            consensus=_Consensus(),  # type: ignore[arg-type]
            partition_config=test.configs.get,
            feed=self.feed,  # type: ignore[arg-type]
            antientropy=self.antientropy,  # type: ignore[arg-type]
            expire=lambda partition, expiry: self.expired.append((partition, expiry)),
            disk=disk,
            restarted_at=restarted_at,
        )
        r = self.replication
        self.handlers = {
            messages.APP: r.on_append,
            messages.SNAP: r.on_snapshot,
            messages.APP_OK: r.on_append_ok,
            messages.APP_NO: r.on_append_refused,
            messages.STALE: r.on_stale,
        }


class ReplicationTests(SynchronousTestCase):
    """
    A primary (n1) and its member (n2) of partition 0.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.configs: dict[int, PartitionConfig] = {}
        self.queue: list[tuple[str, str, list]] = []
        self.reports: list[list] = []
        self.nodes = {name: _Node(self, name) for name in ("n1", "n2")}
        self.n1, self.n2 = self.nodes["n1"], self.nodes["n2"]

    def tearDown(self) -> None:
        for node in self.nodes.values():
            node.replication.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def send(self, sender: str, peer: str, message: list) -> bool:
        if peer == LEADER:
            self.reports.append(message)
        else:
            self.queue.append((sender, peer, message))
        return True

    def deliver(self) -> list[str]:
        """
        Deliver every message, with the reactor turns they cause, until
        none is left; the tags delivered.
        """
        tags = []
        self.clock.advance(0)
        while self.queue:
            sender, peer, message = self.queue.pop(0)
            tags.append(message[0])
            self.nodes[peer].handlers[message[0]](sender, message)
            self.clock.advance(0)
        return tags

    def configure(self, epoch: int, primary: str, member: str, in_sync: tuple[str, ...]) -> None:
        self.configs[0] = PartitionConfig(epoch, (Member(primary, 1), Member(member, 1)), in_sync)

    def start(self) -> Replica:
        """
        Make n1 primary of partition 0 with n2 in sync, and replicate.
        """
        self.configure(1, "n1", "n2", ("n1", "n2"))
        self.n1.replication.take_over(0)
        self.n2.replicas[0].epoch = 1
        self.deliver()
        return self.n1.replicas[0]

    def test_write_answered_once_every_member_holds_it(self) -> None:
        """
        A write waits until its member acknowledges it; its change then goes
        to the feed, and the batch of one reactor turn travels in one
        message.
        """
        primary = self.start()
        self.assertTrue(primary.is_primary)
        entries = [primary.propose(Put(f"k{i}", b"v"), None, self.clock.seconds()) for i in range(2)]
        waits = [self.n1.replication.wait_commit(0, entry.seq) for entry in entries]
        self.assertNoResult(waits[0])
        self.assertEqual(self.deliver(), ["app", "app_ok"])
        for d in waits:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual([e.change.key for e in self.n1.feed.queued], ["k0", "k1"])
        self.assertGreater(self.n1.feed.publishes, 0)
        self.assertEqual(self.n2.antientropy.asked, [0, 0])

    def test_newer_primary_supersedes(self) -> None:
        """
        A primary hearing of a newer epoch steps down, and the writes it has
        not committed fail as possibly applied; a message of the older
        epoch is then answered as stale.
        """
        primary = self.start()
        entry = primary.propose(Put("k", b"v"), None, self.clock.seconds())
        waiting = self.n1.replication.wait_commit(0, entry.seq)
        self.clock.advance(0)
        self.queue.clear()  # the write never reaches n2
        self.configure(2, "n2", "n1", ("n1", "n2"))
        self.n2.replication.take_over(0)
        self.clock.advance(CONFIG.failure_timeout)
        self.n2.replication.take_over(0)
        self.assertTrue(self.n2.replicas[0].is_primary)
        self.deliver()
        self.assertTrue(self.failureResultOf(waiting, Retry).value.maybe_applied)
        self.assertFalse(primary.is_primary)
        self.n1.replication.on_append("n2", messages.append(0, 1, 0, 0, [], 0, 0, 0))
        self.assertEqual(self.queue, [("n1", "n2", messages.stale(0, 2))])

    def test_announced_again_as_repeats(self) -> None:
        """
        A new primary announces its predecessor's last changes again, marked
        as possibly announced before; the changes committed afterwards, like
        those of a first primary, are not.
        """
        primary = self.start()
        entry = primary.propose(Put("k", b"v"), None, self.clock.seconds())
        self.n1.replication.wait_commit(0, entry.seq)
        self.deliver()
        self.n1.replication.replicate(0)
        self.deliver()
        self.assertEqual(self.n1.feed.repeated, [False])
        self.configure(2, "n2", "n1", ("n1", "n2"))
        self.clock.advance(CONFIG.failure_timeout)
        self.n2.replication.take_over(0)
        self.deliver()
        later = self.n2.replicas[0].propose(Put("later", b"v"), None, self.clock.seconds())
        self.n2.replication.wait_commit(0, later.seq)
        self.deliver()
        self.assertEqual(
            [(e.change.key, repeated) for e, repeated in zip(self.n2.feed.queued, self.n2.feed.repeated)],
            [("k", True), ("later", False)],
        )

    def test_takeover_waits_for_the_promise(self) -> None:
        """
        A member that promised its primary a read lease adopts the new
        epoch at once but takes over only once the promise ends.
        """
        self.start()
        self.n1.replication.replicate(0)
        self.deliver()
        promised = self.n2.replicas[0].promised_until
        self.assertEqual(promised, self.clock.seconds() + CONFIG.failure_timeout * LEASE_PROMISE_SHARE)
        self.configure(2, "n2", "n1", ("n1", "n2"))
        self.n2.replication.take_over(0)
        self.assertEqual((self.n2.replicas[0].is_primary, self.n2.replicas[0].epoch), (False, 2))
        self.clock.advance(promised - self.clock.seconds())
        self.n2.replication.tick(self.clock.seconds())
        self.assertTrue(self.n2.replicas[0].is_primary)

    def test_restarted_with_data_keeps_promises_from_its_start(self) -> None:
        """
        A node restarted with its data keeps the promises it may have given
        before, which it forgot: it takes over only once a promise given
        when its process began reading its data would end, and not a whole
        promise after the (perhaps long) recovery.
        """
        promise = CONFIG.failure_timeout * LEASE_PROMISE_SHARE
        now = self.clock.seconds()
        self.configure(2, "n2", "n1", ("n2",))
        for restarted_at, waits in ((now - promise / 2, True), (now - promise, False)):
            node = _Node(self, "n2", disk=object(), restarted_at=restarted_at)
            self.nodes["n2"] = node
            self.assertEqual(node.replicas[0].promised_until, restarted_at + promise)
            node.replication.take_over(0)
            self.assertEqual(node.replicas[0].is_primary, not waits)
            node.replication.stop()
        quick = _Node(self, "n2", disk=object())
        self.assertEqual(quick.replicas[0].promised_until, now + promise)

    def test_member_caught_up_reported(self) -> None:
        """
        A member the map does not yet count as in sync is reported to the
        leader once it has caught up.
        """
        self.configure(1, "n1", "n2", ("n1",))
        self.n1.replication.take_over(0)
        self.n2.replicas[0].epoch = 1
        self.deliver()
        self.assertEqual(self.reports, [messages.report(messages.IN_SYNC, 0, 1, "n2")])

    def test_new_member_filled_at_the_fill_rate(self) -> None:
        """
        A new member is sent its snapshot a chunk at a time, at the fill
        rate, and counts for commits from the first chunk on; it is
        reported caught up once it acknowledges what follows the last.
        """
        self.patch(replica_module, "RETAINED_ENTRIES", 0)
        self.patch(replica_module, "TRIM_BATCH", 1)
        pace = 0.125  # seconds a chunk
        self.nodes["n1"] = self.n1 = _Node(
            self, "n1", config=evolve(CONFIG, fill_rate=int(FILL_CHUNK_BYTES / pace))
        )
        self.configs[0] = PartitionConfig(1, (Member("n1", 1),), ("n1",))
        self.n1.replication.take_over(0)
        primary = self.n1.replicas[0]
        for i in range(10):  # chunks of 4, 4 and 2 records: full, full and half
            primary.propose(Put(f"k{i}", b"v" * (FILL_CHUNK_BYTES // 4 - 2)), None, self.clock.seconds())
        self.configure(2, "n1", "n2", ("n1",))
        self.n1.replication.take_over(0)
        self.n2.replicas[0].epoch = 2
        # The first chunk carries no records; the first of them follow at once.
        self.assertEqual(self.deliver(), ["app", "app_no", "snap", "app", "snap", "app_ok"])
        entry = primary.propose(Put("new", b"v"), None, self.clock.seconds())
        committed = self.n1.replication.wait_commit(0, entry.seq)
        self.assertEqual(self.deliver(), ["app", "app_ok"])
        self.assertIsNone(self.successResultOf(committed))
        self.assertEqual(self.reports, [])
        sent = []
        for _ in range(4):
            self.clock.advance(pace / 2)
            sent.append(self.deliver().count("snap"))
        self.assertEqual(sent, [0, 1, 0, 1])
        self.assertEqual(self.n2.replicas[0].store.get("k9"), primary.store.get("k9"))
        self.assertEqual(self.reports, [messages.report(messages.IN_SYNC, 0, 2, "n2")])
        self.assertEqual(
            dict(self.n2.replicas[0].store.items()), dict(primary.store.items())
        )

    def test_one_snapshot_starts_per_turn(self) -> None:
        """
        Snapshots that a new map asks for together start one per reactor
        turn: starting one copies its partition's index and builds its
        first chunk, and a map may add a member to several partitions of
        the same primary at once.
        """
        self.patch(replica_module, "RETAINED_ENTRIES", 0)
        self.patch(replica_module, "TRIM_BATCH", 1)
        for partition in (0, 1):
            self.configs[partition] = PartitionConfig(1, (Member("n1", 1),), ("n1",))
            self.n1.replication.take_over(partition)
            self.n1.replicas[partition].propose(Put(f"k{partition}", b"v"), None, 0.0)
        self.clock.advance(0)
        replication = self.n1.replication
        flush = replication._flush
        started = []

        def one_turn() -> None:
            sent = len(self.queue)
            flush()
            started.append([m[1] for _, _, m in self.queue[sent:] if m[0] == messages.SNAP])

        self.patch(replication, "_flush", one_turn)
        for partition in (0, 1):
            self.configs[partition] = PartitionConfig(2, (Member("n1", 1), Member("n2", 1)), ("n1",))
            self.n1.replication.take_over(partition)
            self.n1.replicas[partition].on_append_refused("n2", 2, 0)
            self.n2.replicas[partition].epoch = 2
        self.clock.advance(0)
        self.assertEqual([snaps for snaps in started if snaps], [[0], [1]])
        for _ in range(3):
            self.clock.advance(0.1)
            self.deliver()
        for partition in (0, 1):
            self.assertEqual(
                self.n2.replicas[partition].read(f"k{partition}", 0.0).value, b"v"
            )

    def test_stop_fails_waiters(self) -> None:
        """
        Stopping fails the writes waiting, as possibly applied, and leaves
        nothing scheduled.
        """
        primary = self.start()
        entry = primary.propose(Put("k", b"v"), None, self.clock.seconds())
        waiting = self.n1.replication.wait_commit(0, entry.seq)
        self.n1.replication.stop()
        self.assertTrue(self.failureResultOf(waiting, Retry).value.maybe_applied)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_due_expiries_run(self) -> None:
        """
        A primary's tick runs the expiries that have come due, as writes.
        """
        primary = self.start()
        entry = primary.propose(Put("k", b"v", ttl=1.0), None, self.clock.seconds())
        self.n1.replication.wait_commit(0, entry.seq)
        self.deliver()
        self.n1.replication.tick(self.clock.seconds())
        self.assertEqual(self.n1.expired, [])
        self.clock.advance(1)
        self.n1.replication.tick(self.clock.seconds())
        self.assertEqual([(p, e.key) for p, e in self.n1.expired], [(0, "k")])
        self.deliver()
