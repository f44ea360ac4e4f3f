"""
Whole clusters in one process (L{MemoryCluster}): election, replication,
failover, quorum loss, rejoin, and linearizability of recorded histories
under faults.  Time is a L{Clock}; nothing sleeps and nothing opens a socket.
"""

from __future__ import annotations

import gc
import random
from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.linearizability import Op, check, random_operation
from tests.test_metrics import parse
from twisted_kv.cluster import feed as feed_module
from twisted_kv.cluster import node as node_module
from twisted_kv.cluster import replication as replication_module
from twisted_kv.cluster.calls import Retry
from twisted_kv.core import messages
from twisted_kv.core.keyspace import USER, user_key
from twisted_kv.core.records import Put
from twisted_kv.core.replica import RECENT_CHANGES, decode_change, encode_records
from twisted_kv.errors import (
    InsufficientStorage,
    KeyExists,
    KeyNotFound,
    OutcomeUnknown,
    PreconditionFailed,
    Unavailable,
)
from twisted_kv.interfaces import (
    ChangeEvent,
    IClusterStatus,
    IKeyValue,
    IMessenger,
    IPeerHandler,
    KeyPage,
    ReadResult,
    WriteResult,
)
from twisted_kv.testing import MemoryCluster, MemoryNetwork
from twisted_kv.web.metrics import node_registry, render
from twisted_kv.web.status import NodeStatus


def _outcome(d: Any) -> list:
    """
    Collect what a Deferred fires with.
    """
    box: list = []
    d.addBoth(box.append)
    return box



@implementer(IMessenger)
class _Unheard:
    """
    A node's messenger on which the peers in C{unheard} look unable to
    answer (their links back to the node are still redialling).
    """

    def __init__(self, messenger: IMessenger, unheard: set[str]) -> None:
        self._messenger = messenger
        self._unheard = unheard

    def send(self, peer_id: str, message: list) -> bool:
        return self._messenger.send(peer_id, message)

    def hears_from(self, peer_id: str) -> bool:
        return peer_id not in self._unheard and self._messenger.hears_from(peer_id)

    def connected(self) -> set[str]:
        return self._messenger.connected()

    def set_peers(self, peers: dict[str, tuple[str, int]]) -> None:
        self._messenger.set_peers(peers)

class ClusterTestMixin:
    """
    Helpers to drive a L{MemoryCluster} from a test.
    """

    cluster: MemoryCluster

    def make_cluster(self, size: int = 3, **tunables: object) -> MemoryCluster:
        self.cluster = MemoryCluster(size, **tunables)
        self.addCleanup(self.cluster.stop)
        return self.cluster

    def wait(self, d: Any, limit: float = 10.0) -> Any:
        """
        Run the cluster until C{d} fires; return its result (or Failure).
        """
        box = _outcome(d)
        end = self.cluster.clock.seconds() + limit
        while not box and self.cluster.clock.seconds() < end:
            self.cluster.run(0.01)
        self.assertTrue(box, "the operation did not finish")
        return box[0]

    def put(self, node: str, key: str, value: bytes, **options: Any) -> Any:
        return self.wait(self.cluster.coordinators[node].put(user_key(key), value, **options))

    def get(self, node: str, key: str) -> ReadResult:
        return self.wait(self.cluster.coordinators[node].get(user_key(key)))

    def primary_of(self, key: str, via: Optional[str] = None) -> str:
        """
        The primary of C{key} in the map of node C{via} (any node's by default).
        """
        node = self.cluster.nodes[via] if via else next(iter(self.cluster.nodes.values()))
        config = node.partition_config(node.partition_of(user_key(key)))
        return config.primary.node_id

    def value_at(self, node: str, key: str) -> Optional[bytes]:
        result = self.get(node, key)
        self.assertIsInstance(result, ReadResult)
        return None if result.record is None else result.record.value

    def key_not_on(self, node: str, prefix: str) -> str:
        """
        A key named C{prefix} and a number whose primary is not C{node}.
        """
        return next(k for k in (f"{prefix}{i}" for i in range(200)) if self.primary_of(k) != node)

    def lose_messages(self, lost: Callable[[str, str, list], bool]) -> None:
        """
        From now on, lose every message for which C{lost(sender, peer,
        message)} is true.
        """
        network = self.cluster.network
        send = network.send

        def filtered(sender: str, peer: str, message: list) -> bool:
            return True if lost(sender, peer, message) else send(sender, peer, message)

        network.send = filtered


class ElectionTests(ClusterTestMixin, SynchronousTestCase):
    """
    The partition leader is elected, logged, and replaced when it dies.
    """

    def test_leader_elected_and_logged(self) -> None:
        """
        Every node logs the elected leader with the words "partition leader"
        and the term, and all agree on it.
        """
        with capturedLogs() as events:
            self.make_cluster(3)
            leader = self.cluster.settle()
        lines = [
            e["log_format"].format(**e) for e in events if "partition leader" in e["log_format"]
        ]
        self.assertGreaterEqual(len(lines), 3)
        self.assertIn(f"partition leader elected: {leader} (term ", lines[-1])

    def test_dead_leader_replaced_within_election_timeout(self) -> None:
        """
        After the leader dies, the survivors elect a new one within the
        election timeout plus one heartbeat-free grace period.
        """
        cluster = self.make_cluster(3)
        old = cluster.settle()
        cluster.kill(old)
        killed_at = cluster.clock.seconds()
        while cluster.leader() in (None, old):
            cluster.run(0.01)
            self.assertLess(cluster.clock.seconds() - killed_at, 3.0)
        self.assertNotEqual(cluster.leader(), old)

    def test_leader_plans_only_after_a_change(self) -> None:
        """
        The leader plans the next map again only when the map or the live
        nodes changed, until planning changes nothing: a settled cluster
        plans nothing, a death is planned for (its partitions move), and
        then the cluster is quiet again.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        cluster.run(1.0)
        plans: list[object] = []
        original = node_module.plan

        def counted(*args: object) -> object:
            plans.append(args)
            return original(*args)

        self.patch(node_module, "plan", counted)
        cluster.run(1.0)
        self.assertEqual(plans, [])
        victim = next(n for n in cluster.nodes if n != leader)
        cluster.kill(victim)
        cluster.run(cluster.config.failure_timeout * 2)
        self.assertTrue(plans)
        moved = cluster.nodes[leader].cluster_map
        self.assertTrue(all(victim not in {m.node_id for m in c.members} for c in moved.partitions))
        cluster.settle()
        planned = len(plans)
        cluster.run(1.0)
        self.assertEqual(len(plans), planned)

    def test_minority_elects_nobody(self) -> None:
        """
        One node of three alone never becomes leader.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        for node in list(cluster.nodes)[1:]:
            cluster.kill(node)
        cluster.run(10)
        (survivor,) = cluster.nodes.values()
        self.assertNotEqual(survivor.consensus.role, "leader")


class ReplicationTests(ClusterTestMixin, SynchronousTestCase):
    """
    Single-key operations through any node, replicated on a majority.
    """

    def setUp(self) -> None:
        self.make_cluster(3)
        self.leader = self.cluster.settle()

    def test_write_anywhere_read_anywhere(self) -> None:
        """
        A value written through one node reads back through every node, and a
        second write reports "replaced" with a newer version.
        """
        first = self.put("n1", "a/b", b"one")
        self.assertEqual(first.created, True)
        second = self.put("n2", "a/b", b"two")
        self.assertEqual(second.created, False)
        self.assertNotEqual(first.version, second.version)
        for node in self.cluster.nodes:
            self.assertEqual(self.value_at(node, "a/b"), b"two")

    def test_interfaces(self) -> None:
        """
        A node's coordinator is the front ends' L{IKeyValue}, and its
        L{NodeStatus} their L{IClusterStatus}; the node is its messenger's
        L{IPeerHandler}, and the messengers of the tests L{IMessenger}s.
        """
        node = self.cluster.nodes["n1"]
        verifyObject(IKeyValue, self.cluster.coordinators["n1"])
        verifyObject(IClusterStatus, NodeStatus(node, self.cluster.clock))
        verifyObject(IPeerHandler, node)
        verifyObject(IMessenger, node.messenger)
        verifyObject(IMessenger, _Unheard(node.messenger, set()))

    def test_finished_requests_leave_no_reference_cycles(self) -> None:
        """
        Reads and writes, executed here or at another node, leave nothing of
        twisted_kv's for the cyclic collector: their objects go as soon as
        they finish, and a busy entry node is not paused to collect them.
        """
        if not hasattr(gc, "set_debug"):
            raise SkipTest("this Python's collector keeps no garbage to inspect (PyPy)")
        gc.collect()
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        self.addCleanup(gc.set_debug, gc.get_debug())
        gc.set_debug(gc.DEBUG_SAVEALL)
        for n in range(12):
            self.put("n1", f"cycle/{n}", b"v")
            self.value_at("n2", f"cycle/{n}")
        gc.collect()
        ours = [
            thing for thing in gc.garbage
            if getattr(thing, "__module__", type(thing).__module__).startswith("twisted_kv")
        ]
        del gc.garbage[:]
        self.assertEqual(ours, [])

    def test_no_request_to_a_primary_that_cannot_answer(self) -> None:
        """
        A request goes to a primary only while the primary has a link back
        for its answer (a primary that cannot answer is one whose link to a
        restarted node is still redialling); until then the operation waits
        and retries, instead of waiting for an answer that cannot come.
        """
        cluster = self.cluster
        key = self.key_not_on("n1", "back")
        primary = self.primary_of(key)
        self.put(primary, key, b"v")
        node = cluster.nodes["n1"]
        cut = {primary}
        node.messenger = _Unheard(cluster.network.messenger("n1"), cut)
        sent = cluster.network.sent
        box = _outcome(cluster.coordinators["n1"].get(user_key(key)))
        cluster.run(0.5)
        self.assertEqual(box, [])
        self.assertEqual(len(node.calls), 0)
        cut.clear()
        cluster.run(0.2)
        self.assertEqual(box[0].record.value, b"v")
        self.assertGreater(cluster.network.sent, sent)

    def test_no_request_to_a_peer_not_heard_from(self) -> None:
        """
        A link into a network partition looks up until it times out, and
        what is sent on it is lost.  A node sends no request to a peer it
        has not heard from for the failure timeout: the request fails at
        once as not sent, instead of waiting for an answer that cannot come
        (and ending with an unknown outcome).
        """
        cluster = self.cluster
        key = self.key_not_on("n1", "silent")
        primary = self.primary_of(key)
        self.lose_messages(lambda sender, peer, message: {sender, peer} == {"n1", primary})
        cluster.run(cluster.config.failure_timeout)
        node = cluster.nodes["n1"]
        partition = node.partition_of(user_key(key))
        box = _outcome(node.call(primary, messages.ReadRequest(partition, user_key(key)), 5.0))
        self.assertTrue(box[0].check(Retry), box)
        self.assertFalse(box[0].value.maybe_applied)
        self.assertEqual(len(node.calls), 0)

    def test_unanswered_request_times_out(self) -> None:
        """
        A request whose answer never comes fails with
        L{twisted.internet.defer.CancelledError} at the first tick past its
        timeout, and is forgotten; a write routed that way ends as an
        unknown outcome once the request timeout has passed.
        """
        cluster = self.cluster
        key = self.key_not_on("n1", "mute")
        primary = self.primary_of(key)
        self.lose_messages(
            lambda sender, peer, message: (sender, peer, message[0]) == (primary, "n1", "res")
        )
        node = cluster.nodes["n1"]
        partition = node.partition_of(user_key(key))
        read = _outcome(node.call(primary, messages.ReadRequest(partition, user_key(key)), 1.0))
        write = _outcome(cluster.coordinators["n1"].put(user_key(key), b"v"))
        cluster.run(0.9)
        self.assertEqual(read, [])
        cluster.run(0.2 + cluster.config.heartbeat_interval)
        self.assertTrue(read[0].check(CancelledError), read)
        self.assertEqual(write, [])
        cluster.run(cluster.config.request_timeout)
        self.assertTrue(write[0].check(OutcomeUnknown), write)
        self.assertEqual(len(node.calls), 0)
        self.assertEqual(len(node.deadlines), 0)

    def test_acknowledged_write_in_majority_memory(self) -> None:
        """
        When a write is acknowledged, ⌊N/2⌋+1 nodes hold it in memory.
        """
        self.put("n1", "durable", b"x")
        key = user_key("durable")
        holders = [
            node for node in self.cluster.nodes.values()
            if node.operations.peek_local(node.partition_of(key), key)[1] is not None
        ]
        self.assertEqual(len(holders), 2)

    def test_conditional_operations(self) -> None:
        """
        If-Match, If-None-Match and create-only behave as in RFC 9110.
        """
        created = self.put("n1", "c", b"1", create_only=True)
        self.assertIsInstance(self.put("n2", "c", b"2", create_only=True).value, KeyExists)
        self.assertIsInstance(self.put("n3", "c", b"2", if_none_match=True).value, PreconditionFailed)
        self.assertIsInstance(self.put("n3", "c", b"2", if_match="9.9").value, PreconditionFailed)
        replaced = self.put("n3", "c", b"2", if_match=created.version)
        self.assertIsInstance(replaced, WriteResult)
        deleted = self.wait(self.cluster.coordinators["n2"].delete(user_key("c"), if_match=created.version))
        self.assertIsInstance(deleted.value, PreconditionFailed)
        self.wait(self.cluster.coordinators["n2"].delete(user_key("c"), if_match=replaced.version))
        self.assertIsNone(self.value_at("n1", "c"))
        missing = self.wait(self.cluster.coordinators["n1"].delete(user_key("c")))
        self.assertIsInstance(missing.value, KeyNotFound)

    def test_concurrent_creates_one_winner(self) -> None:
        """
        Concurrent create-only writes of one key through every node: exactly
        one succeeds, the others are told the key exists.
        """
        outcomes = [
            _outcome(self.cluster.coordinators[n].put(user_key("race"), n.encode(), create_only=True))
            for n in self.cluster.nodes
        ]
        self.cluster.run(1)
        winners = [o[0] for o in outcomes if isinstance(o[0], WriteResult)]
        losers = [o[0] for o in outcomes if isinstance(o[0], Failure)]
        self.assertEqual(len(winners), 1)
        self.assertEqual([f.check(KeyExists) for f in losers], [KeyExists] * 2)

    def test_compare_and_set_loses_no_update(self) -> None:
        """
        Clients incrementing a counter with If-Match retries never lose an
        increment.
        """
        self.put("n1", "counter", b"0")
        done = []

        def increment(node: str, remaining: int) -> None:
            if remaining == 0:
                done.append(node)
                return
            coordinator = self.cluster.coordinators[node]

            def got(result: ReadResult) -> None:
                record = result.record
                new = str(int(record.value) + 1).encode()
                d = coordinator.put(user_key("counter"), new, if_match=_version(record))
                d.addCallbacks(
                    lambda _: increment(node, remaining - 1),
                    lambda f: f.trap(PreconditionFailed) and increment(node, remaining),
                )

            coordinator.get(user_key("counter")).addCallback(got)

        for node in self.cluster.nodes:
            increment(node, 10)
        while len(done) < 3:
            self.cluster.run(0.1)
        self.assertEqual(self.value_at("n2", "counter"), b"30")

    def test_listing_pages_in_key_order(self) -> None:
        """
        Listing merges every partition in key order, page by page.
        """
        keys = sorted(f"list/{i:03d}" for i in range(25))
        for index, key in enumerate(keys):
            self.put(f"n{index % 3 + 1}", key, b"v")
        self.put("n1", "other", b"v")
        seen: list[str] = []
        start = None
        while True:
            page = self.wait(self.cluster.coordinators["n2"].list_keys(user_key("list/"), start, 10))
            seen += page.keys
            if page.next is None:
                break
            start = page.next
        self.assertEqual(seen, [user_key(k) for k in keys])

    def test_ttl_expires_on_every_replica(self) -> None:
        """
        A key written with a TTL disappears after it, as an expiry replicated
        to every replica and announced as an event.
        """
        events: list[ChangeEvent] = []
        self.cluster.coordinators["n3"].subscribe(events.append)
        self.put("n1", "ttl", b"v", ttl=2)
        self.assertEqual(self.value_at("n2", "ttl"), b"v")
        self.cluster.run(2.5)
        self.assertIsNone(self.value_at("n2", "ttl"))
        key = user_key("ttl")
        for node in self.cluster.nodes.values():
            self.assertIsNone(node.operations.peek_local(node.partition_of(key), key)[1])
        self.assertEqual([e.change.kind for e in events], ["put", "expire"])

    def test_events_reach_every_node_in_revision_order(self) -> None:
        """
        Every node delivers every change exactly once, with growing revisions.
        """
        self.check_events_reach_every_node()

    def test_events_with_one_copy_of_each_key(self) -> None:
        """
        The same when C{replicas = 1}: a primary without members commits
        each write as it orders it, and announces it all the same.
        """
        self.make_cluster(3, replicas=1)
        self.cluster.settle()
        self.check_events_reach_every_node()

    def check_events_reach_every_node(self) -> None:
        seen: dict[str, list[ChangeEvent]] = {n: [] for n in self.cluster.nodes}
        for node, events in seen.items():
            self.cluster.coordinators[node].subscribe(events.append)
        for index in range(20):
            self.put(f"n{index % 3 + 1}", f"ev{index % 4}", b"%d" % index)
        self.cluster.run(0.5)
        for events in seen.values():
            self.assertEqual(len(events), 20)
            revisions = [e.revision for e in events]
            self.assertEqual(revisions, sorted(set(revisions)))
        self.assertEqual(seen["n1"], seen["n2"])

    def test_events_name_the_revision_before_them(self) -> None:
        """
        Each change event names the revision numbered before it: 0 for the
        cluster's first change, whatever the term in its revision.
        """
        seen: list[ChangeEvent] = []
        self.cluster.coordinators["n2"].subscribe(seen.append)
        for index in range(4):
            self.put(f"n{index % 3 + 1}", f"prev{index}", b"v")
        self.cluster.run(0.5)
        revisions = [e.revision for e in seen]
        self.assertGreater(revisions[0], 1)
        self.assertEqual([e.previous for e in seen], [0] + revisions[:-1])

    def test_leader_forwards_published_changes_undecoded(self) -> None:
        """
        The leader numbers a primary's batch and forwards its encoded changes
        as they are to the other nodes that listen, and to no other; its own
        copy never goes through the network.
        """
        network = self.cluster.network
        send = network.send
        sent: list[tuple[str, str, list]] = []

        def record(sender: str, peer: str, message: list) -> bool:
            sent.append((sender, peer, message))
            return send(sender, peer, message)

        network.send = record
        listening, quiet = (n for n in self.cluster.nodes if n != self.leader)
        seen: list[ChangeEvent] = []
        self.cluster.coordinators[self.leader].subscribe(seen.append)
        self.cluster.coordinators[listening].subscribe(lambda event: None)
        self.cluster.run(0.1)
        for index in range(12):
            self.put(self.leader, f"fwd{index}", b"v")
        self.cluster.run(0.5)
        published = {
            bytes(message[3]) for _, _, message in sent if message[0] == "pub"
        }
        events = [(sender, peer, message) for sender, peer, message in sent if message[0] == "ev"]
        self.assertTrue(published, "no primary other than the leader published")
        self.assertEqual({(sender, peer) for sender, peer, _ in events}, {(self.leader, listening)})
        forwarded = {bytes(message[2]) for _, _, message in events}
        self.assertLessEqual(published, forwarded)
        self.assertEqual(sorted(e.change.key[1:] for e in seen), sorted(f"fwd{i}" for i in range(12)))

    def test_nothing_for_the_feed_without_listeners(self) -> None:
        """
        With no listener anywhere, no change event travels and none is
        decoded: a node that is neither a write's entry node nor holds a
        copy of its key spends nothing on the feed.
        """
        network = self.cluster.network
        send = network.send
        tags: list[str] = []

        def record(sender: str, peer: str, message: list) -> bool:
            tags.append(message[0])
            return send(sender, peer, message)

        network.send = record
        self.patch(feed_module, "decode_message", lambda data: self.fail("decoded"))
        for index in range(10):
            self.put(f"n{index % 3 + 1}", f"quiet{index}", b"v")
        self.cluster.run(0.5)
        self.assertIn("pub", tags)
        self.assertEqual([t for t in tags if t in ("ev", "sub", "rpl")], [])

    def test_changes_decoded_only_for_listeners(self) -> None:
        """
        A node turns delivered changes into L{Change} objects only when it
        has listeners, and still counts them: a listener subscribing later
        sees no gap and no change twice.
        """
        decoded: list[list] = []

        def counting(data: list) -> Any:
            decoded.append(data)
            return decode_change(data)

        self.patch(feed_module, "decode_change", counting)
        quiet = next(n for n in self.cluster.nodes if n != self.leader)
        self.put(self.leader, "unwatched", b"1")
        self.cluster.run(0.5)
        self.assertEqual(decoded, [])
        seen: list[ChangeEvent] = []
        self.cluster.coordinators[quiet].subscribe(seen.append)
        self.put(self.leader, "watched", b"2")
        self.cluster.run(0.5)
        self.assertEqual([(e.change.key[1:], e.gap) for e in seen], [("watched", False)])
        self.assertEqual([data[1][1:] for data in decoded], ["watched"])

    def watch(self, node: str) -> list[ChangeEvent]:
        """
        The changes delivered at C{node} from now on.
        """
        seen: list[ChangeEvent] = []
        self.cluster.coordinators[node].subscribe(seen.append)
        self.cluster.run(0.1)
        return seen

    def replay(self, node: str, after: int) -> Optional[list[tuple[str, int]]]:
        """
        What C{node} replays after revision C{after}: names and revisions.
        """
        events, _ = self.wait(self.cluster.coordinators[node].replay(after))
        return None if events is None else [(self._name(e), e.revision) for e in events]

    def test_replay_on_any_node_from_the_leaders_history(self) -> None:
        """
        A node that is not the leader replays the changes after a revision
        from the leader's history: exactly those it delivered after it.
        """
        watcher = next(n for n in self.cluster.nodes if n != self.leader)
        seen = self.watch(watcher)
        for index in range(5):
            self.put(f"n{index % 3 + 1}", f"r{index}", b"v")
        self.cluster.run(0.5)
        delivered = [(self._name(e), e.revision) for e in seen]
        self.assertEqual(len(delivered), 5)
        self.assertEqual(self.replay(watcher, seen[1].revision), delivered[2:])
        self.assertEqual(self.replay(watcher, 0), delivered)
        self.assertEqual(self.replay(watcher, seen[-1].revision), [])

    def test_replay_across_leader_failover(self) -> None:
        """
        After the leader dies, a replay from a revision of its term is
        answered C{None} (re-read: the new leader does not hold that
        history, and may have numbered some of its changes again); one
        from the new term replays what followed.
        """
        watcher = next(n for n in self.cluster.nodes if n != self.leader)
        seen = self.watch(watcher)
        self.put(watcher, "old", b"v")
        self.cluster.run(0.3)
        old = seen[-1].revision
        self.cluster.kill(self.leader)
        self.cluster.settle()
        self.cluster.run(1.0)
        for index in range(3):
            self.put(watcher, f"new{index}", b"v")
        self.cluster.run(0.5)
        names = [self._name(e) for e in seen]
        self.assertEqual(names.count("old"), 1)
        self.assertEqual(names[-3:], ["new0", "new1", "new2"])
        self.assertIsNone(self.replay(watcher, old))
        self.assertEqual(
            self.replay(watcher, seen[-3].revision),
            [(self._name(e), e.revision) for e in seen[-2:]],
        )

    def test_replay_lost_to_a_partition_is_given_up(self) -> None:
        """
        A replay whose request is lost (the node is cut off from the leader)
        is answered C{None} within a failure timeout, never left pending;
        once the link is back, replays work again.
        """
        watcher = next(n for n in self.cluster.nodes if n != self.leader)
        others = [n for n in self.cluster.nodes if n != watcher]
        seen = self.watch(watcher)
        self.put(self.leader, "a", b"v")
        self.put(self.leader, "b", b"v")
        self.cluster.run(0.3)
        answer = self.cluster.coordinators[watcher].replay(seen[0].revision)
        self.cluster.network.partition([watcher], others)
        events, _ = self.wait(answer, limit=self.cluster.config.failure_timeout * 2)
        self.assertIsNone(events)
        self.cluster.network.heal()
        self.cluster.settle()
        self.cluster.run(0.5)
        self.put(self.leader, "c", b"v")
        self.cluster.run(0.3)
        self.assertEqual(
            self.replay(watcher, seen[-2].revision), [(self._name(seen[-1]), seen[-1].revision)]
        )

    def test_replay_never_shows_a_change_announced_again(self) -> None:
        """
        A new primary announces its predecessor's last changes again; a
        replay from before them is answered C{None} rather than showing a
        client a change twice, and live listeners get each change once.
        """
        name = self.key_not_on(self.leader, "again")
        victim = self.primary_of(name)
        watcher = next(n for n in self.cluster.nodes if n != victim)
        seen = self.watch(watcher)
        self.put(watcher, name, b"v")
        self.cluster.run(0.3)
        before = seen[-1].revision
        self.cluster.kill(victim)
        self.cluster.settle()
        self.cluster.run(1.0)
        self.put(watcher, "later", b"v")
        self.cluster.run(0.3)
        self.assertEqual([self._name(e) for e in seen].count(name), 1)
        self.assertIsNone(self.replay(watcher, before))
        self.assertEqual(self.replay(watcher, seen[-1].revision), [])

    def test_node_cut_off_catches_up_from_the_history(self) -> None:
        """
        A listening node cut off from the leader while changes are made
        asks the leader again for what follows its last change once the
        link is back, and gets the changes it missed from the leader's
        history: nothing missed, no gap.
        """
        isolated = next(n for n in self.cluster.nodes if n != self.leader)
        others = [n for n in self.cluster.nodes if n != isolated]
        seen: list[ChangeEvent] = []
        self.cluster.coordinators[isolated].subscribe(seen.append)
        self.put(self.leader, "before", b"1")
        self.cluster.run(0.2)
        self.cluster.network.partition([isolated], others)
        self.put(self.leader, "missed", b"2")
        self.cluster.network.heal()
        self.cluster.settle()
        self.put(self.leader, "after", b"3")
        self.cluster.run(0.5)
        self.assertEqual(
            [(self._name(e), e.gap) for e in seen],
            [("before", False), ("missed", False), ("after", False)],
        )
        revisions = [e.revision for e in seen]
        self.assertEqual(revisions, sorted(set(revisions)))

    def test_node_cut_off_beyond_the_history_flags_missed_events(self) -> None:
        """
        When the leader's history no longer holds every change a cut-off
        node missed, the first change it gets afterwards is marked as
        following a gap; changes that follow one another carry no such mark.
        """
        self.make_cluster(3, ws_history=2)
        leader = self.cluster.settle()
        isolated = next(n for n in self.cluster.nodes if n != leader)
        others = [n for n in self.cluster.nodes if n != isolated]
        seen: list[ChangeEvent] = []
        self.cluster.coordinators[isolated].subscribe(seen.append)
        self.cluster.run(0.2)
        self.put(leader, "before", b"1")
        self.cluster.run(0.2)
        self.cluster.network.partition([isolated], others)
        for index in range(5):
            self.put(leader, f"missed{index}", b"2")
        self.cluster.network.heal()
        self.cluster.settle()
        self.put(leader, "after", b"3")
        self.put(leader, "later", b"4")
        self.cluster.run(0.5)
        gaps = [(self._name(e), e.gap) for e in seen]
        self.assertEqual(gaps[0], ("before", False))
        self.assertEqual(gaps[-2:], [("after", False), ("later", False)])
        self.assertEqual([gap for _, gap in gaps[1:-2]][:1], [True])
        self.assertTrue(all(name.startswith("missed") for name, _ in gaps[1:-2]))

    def test_change_announced_after_primary_dies_unannounced(self) -> None:
        """
        A primary that dies after committing a change but before handing it
        to the leader loses no event: the new primary announces its recent
        changes again, and every listener gets the change exactly once.
        """
        key = user_key("orphan-event")
        victim = self.cluster.nodes[self.leader].partition_config(
            self.cluster.nodes[self.leader].partition_of(key)
        ).primary.node_id
        if victim == self.leader:
            self.skipTest("needs the key's primary not to be the leader")
        watcher = next(n for n in self.cluster.nodes if n != victim)
        seen: list[ChangeEvent] = []
        self.cluster.coordinators[watcher].subscribe(seen.append)
        self.lose_messages(lambda sender, peer, message: sender == victim and message[0] == "pub")
        self.put(watcher, "orphan-event", b"v")
        self.cluster.run(0.1)
        self.assertEqual(seen, [])
        self.cluster.kill(victim)
        self.cluster.settle()
        self.cluster.run(0.5)
        self.assertEqual([e.change.key for e in seen], [key])

    def test_change_announced_after_leader_dies_half_way(self) -> None:
        """
        A leader that numbers a change, confirms it to its primary and dies
        having sent it to only some nodes loses no event: the primary hands
        its recently confirmed changes to the new leader too, and every
        listener gets the change exactly once.
        """
        name = self.key_not_on(self.leader, "half")
        primary = self.primary_of(name)
        missed = next(n for n in self.cluster.nodes if n not in (self.leader, primary))
        seen: dict[str, list[ChangeEvent]] = {primary: [], missed: []}
        for watcher, events in seen.items():
            self.cluster.coordinators[watcher].subscribe(events.append)
        self.lose_messages(
            lambda sender, peer, message: (sender, peer, message[0]) == (self.leader, missed, "ev")
        )
        self.put(primary, name, b"v")
        self.cluster.run(0.1)
        self.assertEqual([len(events) for events in seen.values()], [1, 0])
        self.cluster.kill(self.leader)
        self.cluster.settle()
        self.cluster.run(0.5)
        key = user_key(name)
        self.assertEqual([[e.change.key for e in events] for events in seen.values()], [[key], [key]])

    def test_announced_again_after_other_partitions_busy(self) -> None:
        """
        A change announced again by a new primary is recognised even when
        many more changes of other partitions were delivered in between:
        nodes remember the recent changes of each partition, not of the
        whole cluster.
        """
        node = self.cluster.nodes[self.leader]
        key = user_key("quiet")
        victim = node.partition_config(node.partition_of(key)).primary.node_id
        watcher = next(n for n in self.cluster.nodes if n != victim)
        seen: list[ChangeEvent] = []
        self.cluster.coordinators[watcher].subscribe(seen.append)
        self.put(watcher, "quiet", b"v")
        busy = [
            name for name in (f"busy{i}" for i in range(2000))
            if node.partition_of(user_key(name)) != node.partition_of(key)
        ][: RECENT_CHANGES + 50]
        for name in busy:
            self.put(watcher, name, b"b")
        self.cluster.run(0.5)
        self.cluster.kill(victim)
        self.cluster.settle()
        self.cluster.run(0.5)
        self.assertEqual([e.change.key for e in seen].count(key), 1)

    def test_cut_off_node_does_not_claim_synced(self) -> None:
        """
        A node that stops hearing from the leader no longer reports itself in
        sync (its map may be out of date), and does again once it is back.
        """
        isolated = next(n for n in self.cluster.nodes if n != self.leader)
        self.assertTrue(self.cluster.nodes[isolated].synced())
        self.cluster.network.partition([isolated], [n for n in self.cluster.nodes if n != isolated])
        self.cluster.run(self.cluster.config.failure_timeout + 0.5)
        self.assertFalse(self.cluster.nodes[isolated].synced())
        self.cluster.network.heal()
        self.cluster.settle()
        self.assertTrue(self.cluster.nodes[isolated].synced())

    @staticmethod
    def _name(event: ChangeEvent) -> str:
        return event.change.key[1:]

    def test_load_spread_over_nodes(self) -> None:
        """
        Operations sent to the leader are executed by the primaries, spread
        over every node.
        """
        for index in range(60):
            self.put(self.leader, f"spread{index}", b"v")
        executed = [node.operations.executed for node in self.cluster.nodes.values()]
        self.assertTrue(all(count > 5 for count in executed), executed)

    def test_metrics_per_node(self) -> None:
        """
        Each node's registry shows every node's executed operations, under
        a C{node} label, read at scrape time: its own at once, the others'
        as they reach it.  The nodes' registries share the process without
        colliding.
        """
        registries = {
            name: node_registry(NodeStatus(node, self.cluster.clock).metrics)
            for name, node in self.cluster.nodes.items()
        }

        def executed(name: str) -> dict[str, float]:
            family = parse(render(registries[name]).decode("utf-8"))["twisted_kv_executed"]
            self.assertEqual(family.type, "counter")
            return {sample.labels["node"]: sample.value for sample in family.samples}

        before = {name: executed(name)[name] for name in registries}
        for index in range(30):
            self.put(self.leader, f"scraped{index}", b"v")
        for name, node in self.cluster.nodes.items():
            self.assertEqual(executed(name)[name], node.operations.executed)
            self.assertGreater(node.operations.executed, before[name])
        self.cluster.run(1.0)
        self.assertEqual(
            executed(self.leader),
            {name: node.operations.executed for name, node in self.cluster.nodes.items()},
        )

    def test_node_metrics(self) -> None:
        """
        A node's metrics keep their names and types: counters per node,
        gauges per node, and gauges of the node itself.
        """
        families = parse(render(node_registry(
            NodeStatus(self.cluster.nodes[self.leader], self.cluster.clock).metrics
        )).decode("utf-8"))
        node_label = {
            name: {tuple(sample.labels) for sample in family.samples}
            for name, family in families.items() if name.startswith("twisted_kv_")
        }
        per_node = {("node",)}
        self.assertEqual(
            {name: (families[name].type, labels) for name, labels in node_label.items()},
            {
                "twisted_kv_executed": ("counter", per_node),
                "twisted_kv_keys": ("gauge", per_node),
                "twisted_kv_file_records": ("gauge", per_node),
                "twisted_kv_node_alive": ("gauge", per_node),
                "twisted_kv_node_synced": ("gauge", per_node),
                "twisted_kv_node_joining": ("gauge", per_node),
                "twisted_kv_node_leaving": ("gauge", per_node),
                "twisted_kv_repaired_keys": ("counter", per_node),
                "twisted_kv_antientropy_bytes": ("counter", per_node),
                "twisted_kv_antientropy_last_round_seconds": ("gauge", {()}),
                "twisted_kv_term": ("gauge", {()}),
                "twisted_kv_is_leader": ("gauge", {()}),
                "twisted_kv_primary_partitions": ("gauge", {()}),
                "twisted_kv_memory_bytes": ("gauge", {()}),
                "twisted_kv_log_commits": ("counter", {()}),
                "twisted_kv_log_syncs": ("counter", {()}),
                "twisted_kv_log_records": ("counter", {()}),
                "twisted_kv_log_commit_seconds": ("counter", {()}),
                "twisted_kv_lost_partitions": ("gauge", {()}),
                "twisted_kv_partition_losses": ("counter", {()}),
                "twisted_kv_requests_held": ("counter", {()}),
                "twisted_kv_members": ("gauge", {()}),
                "twisted_kv_moving_partitions": ("gauge", {()}),
            },
        )
        self.assertEqual(families["twisted_kv_is_leader"].samples[0].value, 1)
        self.assertEqual(len(families["twisted_kv_node_alive"].samples), 3)

    def test_memory_limit(self) -> None:
        """
        A write that would take a primary past its memory limit is refused
        with InsufficientStorage and leaves nothing behind.
        """
        cluster = self.make_cluster(3, memory_limit="4k")
        cluster.settle()
        outcome = self.put("n1", "big", b"x" * 5000)
        self.assertIsInstance(outcome.value, InsufficientStorage)
        self.assertIsNone(self.value_at("n2", "big"))


def submit_operation(coordinator: Any, key: str, op: Op) -> Any:
    """
    Send the client operation C{op} on C{key} through C{coordinator}.

    @return: the coordinator's L{Deferred} for it.
    """
    if op.kind == "get":
        return coordinator.get(user_key(key))
    if op.kind == "delete":
        return coordinator.delete(user_key(key))
    if op.condition == "create":
        return coordinator.put(user_key(key), op.value, create_only=True)
    if op.condition is not None:
        return coordinator.put(user_key(key), op.value, if_match=op.condition[1])
    return coordinator.put(user_key(key), op.value)


def record_outcome(result: Any, op: Op, ops: list[Op], now: float) -> None:
    """
    Note in C{op} what came of it at C{now}, for the linearizability
    checker; an operation that certainly had no effect leaves C{ops}.
    """
    op.returned = now
    if isinstance(result, ReadResult) and result.degraded:
        # answered without a majority, and flagged so: no promise
        ops.remove(op)
    elif isinstance(result, ReadResult):
        found = result.record
        op.result = ("absent", None) if found is None else ("value", (found.value, _version(found)))
    elif isinstance(result, WriteResult):
        op.result = ("ok", result.version)
    elif isinstance(result, str):
        op.result = ("ok", result)
    elif result.check(KeyExists):
        op.result = ("failed", "exists")
    elif result.check(PreconditionFailed):
        op.result = ("failed", "precondition")
    elif result.check(KeyNotFound):
        op.result = ("failed", "not_found")
    elif result.check(Unavailable) or op.kind == "get":
        # refused before anything was applied, or a read that did not
        # answer: it had no effect
        ops.remove(op)
    else:
        op.returned = None
        op.result = ("unknown", None)


def start_clients(
    cluster: MemoryCluster,
    history: dict[str, list[Op]],
    rng: random.Random,
    nodes: Callable[[], list[str]],
    stopped: Callable[[], bool],
    clients: int = 5,
) -> None:
    """
    Start C{clients} clients, each with one operation in flight at a time
    (as in Jepsen), through random nodes of C{nodes()} on random keys of
    C{history}, where each operation and its outcome are recorded; a
    client issues nothing more once C{stopped()}.  The order C{nodes()}
    gives is part of what a seed replays: the choice indexes into it.
    """
    clock = cluster.clock

    def issue() -> None:
        candidates = nodes()
        if stopped() or not candidates:
            return
        node = rng.choice(candidates)
        key = rng.choice(sorted(history))
        op = random_operation(rng, history[key], node, clock.seconds())
        history[key].append(op)
        submit_operation(cluster.coordinators[node], key, op).addBoth(record, op, key)

    def record(result: Any, op: Op, key: str) -> None:
        record_outcome(result, op, history[key], clock.seconds())
        clock.callLater(rng.choice([0.0, 0.002, 0.01]), issue)

    for _ in range(clients):
        issue()


def close_unreturned(history: dict[str, list[Op]]) -> None:
    """
    An operation in flight at a node that was killed never returns, as for
    a client whose connection broke: a read had no effect, a write may or
    may not have taken effect.
    """
    for ops in history.values():
        for op in [op for op in ops if op.result is None]:
            if op.kind == "get":
                ops.remove(op)
            else:
                op.result = ("unknown", None)


def _version(record: Any) -> str:
    from twisted_kv.core.records import format_version

    return format_version(record.version)


class MembershipLogTests(ClusterTestMixin, SynchronousTestCase):
    """
    What the failure detector logs.
    """

    def test_down_and_up(self) -> None:
        """
        Once the failure detector finds a node dead, each node that lost it
        logs C{node X is down} once; when it hears from it again, C{node X
        is up} with its incarnation in hex, as everywhere else.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        incarnations = {node_id: node.incarnation for node_id, node in cluster.nodes.items()}
        timeout = cluster.config.failure_timeout
        with capturedLogs() as events:
            cluster.network.partition(["n1", "n2"], ["n3"])
            cluster.run(timeout * 3)
            cluster.network.heal()
            cluster.run(timeout)
        lines = [formatEvent(event) for event in events]
        down = [f"node {n} is down (silent for {timeout:g} s)" for n in ["n1", "n2", "n3", "n3"]]
        up = [f"node {n} is up (incarnation {incarnations[n]:x})" for n in ["n1", "n2", "n3", "n3"]]
        self.assertEqual(sorted(line for line in lines if " is down" in line), down)
        self.assertEqual(sorted(line for line in lines if " is up" in line), up)
        self.assertLess(lines.index(down[-1]), lines.index(up[-1]))


class NextMapTests(ClusterTestMixin, SynchronousTestCase):
    """
    L{Node.next_map}: what an operation refused by a primary that lost its
    role waits for before it tries again.
    """

    def test_fires_with_the_next_map(self) -> None:
        """
        It fires once the next map is applied, well before its time limit,
        and its limit is then cancelled.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        watcher = next(n for n in sorted(cluster.nodes) if n != leader)
        node = cluster.nodes[watcher]
        before = node.cluster_map
        fired: list[object] = []
        node.next_map(60.0).addCallback(fired.append)
        cluster.kill(next(n for n in sorted(cluster.nodes) if n not in (leader, watcher)))
        end = cluster.clock.seconds() + 30
        while not fired and cluster.clock.seconds() < end:
            cluster.run(0.01)
        self.assertEqual(fired, [None])
        self.assertLess(cluster.clock.seconds(), end)
        self.assertIsNot(node.cluster_map, before)
        self.assertFalse(any(call.func == node._map_not_seen for call in cluster.clock.getDelayedCalls()))

    def test_fires_after_its_time_limit_without_a_map(self) -> None:
        """
        With no new map, it fires after its time limit, and is forgotten.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        node = cluster.nodes["n1"]
        before = node.cluster_map
        fired: list[object] = []
        node.next_map(0.05).addCallback(fired.append)
        cluster.run(0.04)
        self.assertEqual(fired, [])
        cluster.run(0.02)
        self.assertEqual(fired, [None])
        self.assertIs(node.cluster_map, before)
        self.assertEqual(node._map_waiters, {})


class _Inbox:
    """
    A stand-in for a node on a L{MemoryNetwork}: keeps what it receives.
    """

    def __init__(self, node_id: str, clock: Clock) -> None:
        self.node_id = node_id
        self.incarnation = 1
        self.received: list[tuple[float, list]] = []
        self._clock = clock

    def peer_message(self, peer: str, incarnation: int, message: list) -> None:
        self.received.append((self._clock.seconds(), message))


class NetworkJitterTests(SynchronousTestCase):
    def test_in_order_within_the_jitter(self) -> None:
        """
        With jitter, each message takes between the latency and the latency
        plus the jitter, or waits for the one sent before it on its link:
        messages on a link still arrive in the order they were sent.
        """
        clock = Clock()
        network = MemoryNetwork(clock, random.Random(4), latency=0.001)
        network.jitter = 0.004
        a, b = _Inbox("a", clock), _Inbox("b", clock)
        network.nodes.update(a=a, b=b)  # type: ignore[dict-item]
        sent = []
        for index in range(200):
            sent.append(clock.seconds())
            network.send("a", "b", [index])
            clock.advance(0.0005)
        for _ in range(20):
            clock.advance(0.0005)
        self.assertEqual([message for _, message in b.received], [[i] for i in range(200)])
        delays = [arrived - at for (arrived, _), at in zip(b.received, sent)]
        self.assertGreaterEqual(min(delays), 0.001 - 1e-9)
        self.assertGreater(max(delays) - min(delays), 0.002)
        arrivals = [arrived for arrived, _ in b.received]
        self.assertEqual(arrivals, sorted(arrivals))


class FailureTests(ClusterTestMixin, SynchronousTestCase):
    """
    The guarantees under crashes, partitions and restarts.
    """

    def fill(self, count: int, via: str, prefix: str = "k") -> dict[str, bytes]:
        acked = {}
        for index in range(count):
            key, value = f"{prefix}{index}", b"value-%d" % index
            if isinstance(self.put(via, key, value), WriteResult):
                acked[key] = value
        return acked

    def assert_all_readable(self, acked: dict[str, bytes], degraded: bool = False) -> None:
        for node in self.cluster.nodes:
            for key, value in acked.items():
                result = self.get(node, key)
                self.assertEqual(result.record.value if result.record else None, value, (node, key))
                self.assertEqual(result.degraded, degraded)

    def assert_all_listed(self, acked: dict[str, bytes], degraded: bool) -> None:
        """
        Every live node lists exactly the acknowledged keys, across pages.
        """
        for node in self.cluster.nodes:
            listed: list[str] = []
            start = None
            while True:
                page = self.wait(self.cluster.coordinators[node].list_keys(USER, start, 7))
                self.assertIsInstance(page, KeyPage, node)
                self.assertEqual(page.degraded, degraded, node)
                listed += page.keys
                if page.next is None:
                    break
                start = page.next
            self.assertEqual(listed, sorted(user_key(key) for key in acked), node)

    def test_kill_half_of_five(self) -> None:
        """
        With 2 of 5 nodes killed, every acknowledged key reads back from every
        live node and writes keep working.
        """
        cluster = self.make_cluster(5)
        leader = cluster.settle()
        acked = self.fill(60, leader)
        for victim in [leader, next(n for n in cluster.nodes if n != leader)]:
            cluster.kill(victim)
        self.assert_all_readable(acked)
        survivor = next(iter(cluster.nodes))
        self.assertIsInstance(self.put(survivor, "after", b"x"), WriteResult)

    def test_kill_leader_writes_resume(self) -> None:
        """
        Killing the leader while clients write: writes resume within the
        election timeout and nothing acknowledged is lost.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        client = next(n for n in cluster.nodes if n != leader)
        acked = self.fill(30, client)
        cluster.kill(leader)
        killed_at = cluster.clock.seconds()
        late: list[float] = []
        for index in range(40):
            d = cluster.coordinators[client].put(user_key(f"late{index}"), b"v")
            d.addCallback(lambda _: late.append(cluster.clock.seconds()))
            cluster.run(0.05)
        cluster.run(3)
        self.assertEqual(len(late), 40)
        self.assertLess(max(late) - killed_at, 3.0)
        self.assert_all_readable(acked)

    def test_quorum_loss_refuses_writes_reads_degraded(self) -> None:
        """
        With 2 of 3 nodes gone, writes answer Unavailable; a key the survivor
        holds reads back, marked degraded, and a key it does not hold is
        Unavailable (not "absent": nobody who would know answered).  So is a
        listing, which would miss the partitions the survivor does not hold.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        acked = self.fill(30, leader)
        survivor = cluster.nodes["n1"]
        for node in [n for n in cluster.nodes if n != "n1"]:
            cluster.kill(node)
        cluster.run(2)
        outcome = self.put("n1", "refused", b"x")
        self.assertIsInstance(outcome.value, Unavailable)
        held = unheld = 0
        for key, value in acked.items():
            store_key = user_key(key)
            result = self.get("n1", key)
            if survivor.operations.peek_local(survivor.partition_of(store_key), store_key)[0]:
                held += 1
                self.assertEqual((result.record.value, result.degraded), (value, True))
            else:
                unheld += 1
                self.assertTrue(result.check(Unavailable))
        self.assertTrue(held and unheld, (held, unheld))
        self.assertTrue(self.wait(cluster.coordinators["n1"].list_keys(USER, None, 10)).check(Unavailable))

    def test_retried_write_answers_its_first_outcome(self) -> None:
        """
        A write sent again under the same operation id (a retry after a
        failover) is not applied twice, and the retry's answer, which travels
        without the value, decodes to the first outcome.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        key = user_key("retried")
        asker = cluster.nodes["n1"]
        partition = asker.partition_of(key)
        primary = asker.partition_config(partition).primary.node_id
        asker = next(n for n in cluster.nodes.values() if n.node_id != primary)
        request = messages.OpRequest(partition, Put(key, b"once"), "client/1")
        answers = [
            self.wait(asker.call(primary, request, 5))
            for _ in range(2)
        ]
        first, second = (decode_change(a) for a in answers)
        self.assertEqual((second.kind, second.version, second.created), (first.kind, first.version, True))
        self.assertIsNone(second.record)
        self.assertEqual(cluster.nodes[primary].replicas[partition].last_seq, 1)

    def test_exactly_half_down(self) -> None:
        """
        With 2 of 4 nodes down there is no majority: writes are refused, and
        every acknowledged key is still read, degraded, from any live node.
        """
        cluster = self.make_cluster(4)
        leader = cluster.settle()
        acked = self.fill(40, leader)
        victims = [leader, next(n for n in cluster.nodes if n != leader)]
        for victim in victims:
            cluster.kill(victim)
        cluster.run(2)
        survivor = next(iter(cluster.nodes))
        self.assertIsInstance(self.put(survivor, "refused", b"x").value, Unavailable)
        self.assert_all_readable(acked, degraded=True)
        self.assert_all_listed(acked, degraded=True)

    def test_partitioned_primary_cannot_acknowledge(self) -> None:
        """
        A node cut off from the others never acknowledges a write, even for
        partitions it was primary of; the majority side keeps writing, and
        after the partition heals everybody agrees.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        isolated = "n1"
        keys = [k for k in (f"iso{i}" for i in range(40))
                if cluster.nodes[isolated].partition_config(
                    cluster.nodes[isolated].partition_of(user_key(k))).primary.node_id == isolated]
        self.assertTrue(keys)
        cluster.network.partition([isolated], ["n2", "n3"])
        stranded = [_outcome(cluster.coordinators[isolated].put(user_key(k), b"minority")) for k in keys]
        cluster.run(1)
        majority = [self.put("n2", k, b"majority") for k in keys]
        cluster.run(6)
        for box in stranded:
            self.assertTrue(box)
            self.assertIsInstance(box[0], Failure)
            self.assertTrue(box[0].check(Unavailable, OutcomeUnknown))
        self.assertTrue(all(isinstance(r, WriteResult) for r in majority))
        cluster.network.heal()
        cluster.settle()
        for key in keys:
            for node in cluster.nodes:
                self.assertEqual(self.value_at(node, key), b"majority")

    def test_write_in_flight_when_its_node_stops_is_not_refused(self) -> None:
        """
        A write forwarded to its primary while the entry node stops may have
        taken effect there: it ends as an unknown outcome (504), never as a
        refusal (503), which promises nothing was applied.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        key = self.key_not_on("n1", "stop")
        box = _outcome(cluster.coordinators["n1"].put(user_key(key), b"v"))
        node = cluster.nodes["n1"]
        # stopped, not killed: its process goes on, its clients waiting
        cluster.network.remove("n1")
        give_up_at = cluster.clock.seconds() + cluster.config.request_timeout + 1
        while not box and cluster.clock.seconds() < give_up_at:
            cluster.clock.advance(0.05)
        self.assertTrue(box)
        self.assertTrue(box[0].check(OutcomeUnknown), box[0])
        self.assertEqual(len(node.calls), 0)

    def test_degraded_read_trusts_the_newest_configuration(self) -> None:
        """
        A degraded read ignores a replica of an older configuration: the
        primary cut off from the leader and replaced still holds a key
        deleted since, and believes itself in sync.
        """
        cluster = self.make_cluster(5)
        leader = cluster.settle()
        key = self.key_not_on(leader, "gone")
        old = self.primary_of(key)
        self.put(leader, key, b"v")
        cluster.network.partition([old], [leader])
        cluster.run(cluster.config.failure_timeout * 2)
        new = self.primary_of(key, via=leader)
        self.assertNotEqual(new, old)
        self.assertIsInstance(self.wait(cluster.coordinators[leader].delete(user_key(key))), str)
        others = [n for n in cluster.nodes if n not in (old, new)]
        cluster.network.partition([old, new], others)
        cluster.run(cluster.config.failure_timeout * 2)
        self.assertFalse(cluster.nodes[new].has_majority())
        result = self.get(new, key)
        self.assertIsInstance(result, ReadResult)
        self.assertEqual((result.record, result.degraded), (None, True))

    def test_no_degraded_read_while_a_majority_is_up(self) -> None:
        """
        A node cut off from the partition leader, but not from a majority,
        answers a read it cannot serve linearizably with Unavailable, not
        with a degraded read that may be stale.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        cut_off = next(n for n in sorted(cluster.nodes) if n != leader)
        key = next(k for k in (f"cut{i}" for i in range(200)) if self.primary_of(k) == cut_off)
        self.put(leader, key, b"v")
        cluster.network.partition([cut_off], [leader])
        cluster.run(cluster.config.failure_timeout * 2)
        self.put(leader, key, b"newer")
        self.assertTrue(cluster.nodes[cut_off].has_majority())
        result = self.get(cut_off, key)
        if isinstance(result, ReadResult):
            self.assertEqual((result.record.value, result.degraded), (b"newer", False))
        else:
            self.assertTrue(result.check(Unavailable))

    def test_replaced_primary_does_not_refuse_from_stale_state(self) -> None:
        """
        A refused conditional write is a read of the key: a primary replaced
        without knowing it must not answer "precondition failed" from its
        old copy.  It answers only once its members confirm it; here they
        never do, and it steps down (Retry: try the new primary).
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        old = next(n for n in sorted(cluster.nodes) if n != leader)
        key = next(k for k in (f"stale{i}" for i in range(200)) if self.primary_of(k) == old)
        self.put(leader, key, b"v1")
        cluster.network.partition([old], [n for n in cluster.nodes if n != old])
        cluster.run(cluster.config.failure_timeout * 2)
        newer = self.put(leader, key, b"v2")
        node = cluster.nodes[old]
        partition = node.partition_of(user_key(key))
        self.assertTrue(node.replicas[partition].is_primary)
        outcome = _outcome(
            node.operations.execute_local(partition, Put(user_key(key), b"v3", if_match=newer.version), None)
        )
        cluster.run(0.5)
        self.assertEqual(outcome, [])
        cluster.network.heal()
        cluster.run(0.5)
        self.assertTrue(outcome[0].check(Retry), outcome)
        self.assertEqual(self.value_at(leader, key), b"v2")

    def test_snapshot_from_a_newer_primary_demotes(self) -> None:
        """
        A primary cut off and replaced may hear of the new primary first
        through a snapshot (the new primary refilling it as a member).  It
        steps down before taking the snapshot in: its writes still waiting
        fail, outcome unknown, instead of being acknowledged once the
        positions they wait for fill with the new primary's entries.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        old = next(n for n in sorted(cluster.nodes) if n != leader)
        key = next(k for k in (f"own{i}" for i in range(200)) if self.primary_of(k) == old)
        newer = next(n for n in cluster.nodes if n not in (leader, old))
        cluster.network.partition([old], [leader, newer])
        node = cluster.nodes[old]
        partition = node.partition_of(user_key(key))
        waiting = _outcome(node.operations.execute_local(partition, Put(user_key(key), b"lost"), None))
        cluster.run(0.1)
        self.assertEqual(waiting, [])
        replica = node.replicas[partition]
        snapshot = messages.snapshot(partition, replica.epoch + 1, 0, 0, True, True, encode_records([]), 0, 0)
        node.peer_message(newer, cluster.nodes[newer].incarnation, snapshot)
        self.assertFalse(replica.is_primary)
        self.assertTrue(waiting[0].check(Retry), waiting)
        self.assertTrue(waiting[0].value.maybe_applied)

    def test_node_cut_off_from_leader_learns_maps_from_peers(self) -> None:
        """
        A node that loses its link to the leader, but not to the third node,
        learns the maps the leader commits meanwhile from that node: it
        sends each write to the partition's new primary.  Every write whose
        primary it still reaches succeeds; the others are refused at once
        (Unavailable), none left to time out.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        cut_off = next(n for n in sorted(cluster.nodes) if n != leader)
        cluster.network.partition([cut_off], [leader])
        cluster.run(cluster.config.failure_timeout * 4)
        committed = cluster.nodes[leader].consensus.committed
        self.assertEqual(cluster.nodes[cut_off].cluster_map, committed)
        outcomes: dict[bool, set[str]] = {True: set(), False: set()}
        for index in range(30):
            key = f"moved{index}"
            primary = committed.partitions[cluster.nodes[leader].partition_of(user_key(key))].primary
            result = self.put(cut_off, key, b"v")
            name = "ok" if isinstance(result, WriteResult) else type(result.value).__name__
            outcomes[primary.node_id == leader].add(name)
        self.assertEqual(outcomes, {False: {"ok"}, True: {"Unavailable"}})

    def test_just_restarted_node_waits_to_hear_its_peers(self) -> None:
        """
        Operations reaching a node in the moment after its start, before it
        has heard from its peers, wait for them instead of being refused for
        want of a majority, and are not answered as degraded reads.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        self.put("n1", "early", b"v")

        def restart_unlinked() -> None:
            # its links come up a moment after it starts, as on real sockets
            cluster.kill("n3")
            cluster.run(2)
            cluster.network.partition(["n3"], ["n1", "n2"])
            cluster.start("n3")
            cluster.clock.callLater(0.2, cluster.network.heal)

        restart_unlinked()
        written = self.put("n3", "early-write", b"w")
        self.assertIsInstance(written, WriteResult)
        restart_unlinked()
        result = self.get("n3", "early")
        self.assertIsInstance(result, ReadResult)
        self.assertEqual((result.record.value, result.degraded), (b"v", False))

    def test_catching_up_member_whose_answers_were_lost(self) -> None:
        """
        A member catching up on partitions that take no writes, whose
        answers are lost for a while (its link broke and came back), is
        sent what it lacks again and ends in sync: its primaries do not
        wait for a write to come before trying again.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        victim = next(n for n in sorted(cluster.nodes) if n != leader)
        for index in range(20):
            self.put(leader, f"idle{index}", b"v")
        cluster.kill(victim)
        cluster.settle()
        losing = [True]
        self.lose_messages(
            lambda sender, peer, message: bool(losing)
            and sender == victim
            and message[0] in ("app_ok", "app_no")
        )
        cluster.start(victim)
        cluster.run(1.0)
        self.assertFalse(cluster.nodes[victim].synced())
        losing.clear()
        cluster.settle()
        self.assertEqual(self.value_at(victim, "idle7"), b"v")

    def test_restarted_node_leading_first_continues_the_numbering(self) -> None:
        """
        A node restarted empty that becomes the leader before it delivered
        any change numbers its first changes after the newest revision its
        peers delivered, not after 0: neither it nor any node takes them
        for the cluster's first changes (which would let C{/ws} replay an
        incomplete history for C{since} 0).
        """
        for seed in range(10):
            self.cluster = cluster = MemoryCluster(3, seed=seed)
            self.addCleanup(cluster.stop)
            leader = cluster.settle()
            self.put(leader, "early", b"1")
            cluster.run(0.5)
            restarted = next(n for n in cluster.nodes if n != leader)
            cluster.kill(restarted)
            cluster.start(restarted)
            seen: list[ChangeEvent] = []
            cluster.coordinators[restarted].subscribe(seen.append)
            cluster.settle()
            delivered_before = len(seen)
            cluster.kill(leader)
            if cluster.settle() == restarted and not delivered_before:
                break
        else:
            self.fail("the restarted node never became the leader first")
        self.put(restarted, "late", b"2")
        cluster.run(0.5)
        # "early" again, announced by its new primary, then "late".
        self.assertEqual([e.change.key for e in seen], [user_key("early"), user_key("late")])
        self.assertNotEqual(seen[0].previous, 0)

    def test_restarted_node_resyncs(self) -> None:
        """
        A node restarted empty is refilled, reports itself synced, and then
        a different node can fail without losing anything.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        acked = self.fill(50, "n1")
        cluster.kill("n2")
        acked.update(self.fill(20, "n1", prefix="during"))
        restarted = cluster.start("n2")
        self.assertFalse(restarted.synced())
        cluster.settle()
        self.assertTrue(restarted.synced())
        cluster.kill("n3")
        self.assert_all_readable(acked)

    def test_rolling_restart_with_writers(self) -> None:
        """
        Restarting every node in turn, each after the previous one is synced,
        while a client writes throughout, loses no acknowledged write.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        acked: dict[str, bytes] = {}
        counter = iter(range(10_000))

        def write_some(via: str) -> None:
            for _ in range(5):
                key = f"roll{next(counter)}"
                d = cluster.coordinators[via].put(user_key(key), key.encode())
                d.addCallback(lambda _, key=key: acked.__setitem__(key, key.encode()))
                d.addErrback(lambda f: None)

        for victim in ["n1", "n2", "n3"]:
            via = next(n for n in cluster.nodes if n != victim)
            write_some(via)
            cluster.kill(victim)
            write_some(via)
            cluster.run(2)
            cluster.start(victim)
            write_some(via)
            cluster.settle()
        cluster.run(2)
        self.assertGreater(len(acked), 30)
        self.assert_all_readable(acked)


class ReadLeaseTests(ClusterTestMixin, SynchronousTestCase):
    """
    A primary whose round every member confirmed reads without a round of
    its own until its lease ends, and no other node takes over before then.
    """

    def test_reads_under_lease_send_nothing(self) -> None:
        """
        After one confirmed round, a read at the primary is answered at once
        and sends no message; once the lease has ended, a read waits for a
        round again.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        self.put("n1", "leased", b"v")
        primary = self.primary_of("leased")
        self.assertEqual(self.value_at(primary, "leased"), b"v")
        sent = cluster.network.sent
        box = _outcome(cluster.coordinators[primary].get(user_key("leased")))
        self.assertEqual(box[0].record.value, b"v")
        self.assertEqual(cluster.network.sent, sent)
        cluster.run(cluster.config.failure_timeout)
        box = _outcome(cluster.coordinators[primary].get(user_key("leased")))
        self.assertEqual(box, [])
        cluster.run(0.1)
        self.assertEqual(box[0].record.value, b"v")

    def test_no_takeover_while_promised(self) -> None:
        """
        A primary cut off from the partition leader but not from its member
        keeps reading under its lease.  The member, named primary by the
        leader meanwhile, adopts the new epoch at once but takes over only
        after its promise has ended, when the old primary's lease is over;
        reads at the old primary never miss the new primary's write.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        others = sorted(n for n in cluster.nodes if n != leader)
        node = cluster.nodes[leader]
        key = next(
            k for k in (f"lease{i}" for i in range(1000))
            if {m.node_id for m in node.partition_config(node.partition_of(user_key(k))).members}
            == set(others)
        )
        partition = node.partition_of(user_key(key))
        old = self.primary_of(key)
        new = next(n for n in others if n != old)
        self.put(old, key, b"before")
        reads: list[tuple[float, Any]] = []

        def read() -> None:
            if old in cluster.nodes and cluster.clock.seconds() < stop_at:
                started = cluster.clock.seconds()
                d = cluster.coordinators[old].get(user_key(key))
                d.addBoth(lambda result: reads.append((started, result)))
                cluster.clock.callLater(0.01, read)

        stop_at = cluster.clock.seconds() + 8
        read()
        cluster.run(0.5)
        cluster.network.partition([leader], [old])
        old_replica, new_replica = cluster.nodes[old].replicas[partition], cluster.nodes[new].replicas[partition]
        epoch = new_replica.epoch
        adopted_at = took_over_at = None
        hold = cluster.config.failure_timeout * replication_module.LEASE_PROMISE_SHARE * (1 - replication_module.LEASE_CLOCK_MARGIN)
        while took_over_at is None:
            cluster.run(0.005)
            now = cluster.clock.seconds()
            self.assertLess(now, stop_at)
            if adopted_at is None and new_replica.epoch > epoch:
                adopted_at = now
            if new_replica.is_primary:
                took_over_at = now
                self.assertFalse(old_replica.is_primary and now - old_replica.lease_start < hold)
        self.assertIsNotNone(adopted_at)
        self.assertGreater(took_over_at - adopted_at, 0.1)
        written = self.put(new, key, b"after")
        self.assertIsInstance(written, WriteResult)
        done_at = cluster.clock.seconds()
        cluster.run(stop_at - done_at)
        late = [result for started, result in reads if started > done_at]
        self.assertTrue(late)
        for result in late:
            if isinstance(result, ReadResult):
                self.assertEqual(result.record.value, b"after")


class LinearizabilityTests(ClusterTestMixin, SynchronousTestCase):
    """
    Recorded client histories under faults are linearizable.
    """

    def run_workload(self, seed: int, fault: Optional[str] = None) -> dict[str, list[Op]]:
        """
        Five clients, each with one operation in flight at a time (as in
        Jepsen), on random nodes and two keys, for a few seconds.  With
        C{fault="kill"}, the leader is killed, messages are dropped for a
        while and the dead node comes back empty; with C{fault="isolate"},
        the primary of C{x} loses its link to the leader (to every other
        node, if it is the leader) for two seconds, with messages dropped
        meanwhile, while it can still lease reads to its own clients; with
        C{fault="pause"}, the primary of C{x} hangs for two and a half
        seconds (as in a long collector pause or SIGSTOP), is replaced, and
        resumes with its lease long over; with C{fault="cut"}, a node that
        is neither the leader nor the primary of C{x} loses its link to the
        leader for two seconds, with messages dropped meanwhile, and learns
        the leader's maps from the others; with C{fault="rolling"}, three
        times in a row, the leader is cut off from the others, or a
        follower from the leader, or any two nodes from each other, for two
        to three seconds, and the links come back one direction at a time
        (the clients run 12 seconds).  Returns each key's history.
        """
        cluster = self.make_cluster(3 if seed % 2 else 5)
        cluster.settle()
        rng = random.Random(seed)
        history: dict[str, list[Op]] = {"x": [], "y": []}
        clock = cluster.clock
        stop_at = clock.seconds() + (12 if fault == "rolling" else 4)
        start_clients(
            cluster, history, rng,
            nodes=lambda: list(cluster.nodes),
            stopped=lambda: clock.seconds() >= stop_at,
        )
        cluster.run(1)
        if fault == "pause":
            paused = self.primary_of("x")
            cluster.network.pause(paused)
            cluster.run(2.5)
            cluster.network.resume(paused)
        elif fault == "isolate":
            leader = cluster.leader() or "n1"
            primary = self.primary_of("x")
            others = [n for n in cluster.nodes if n != primary]
            cluster.network.partition([primary], [leader] if primary != leader else others)
            cluster.network.drop_rate = 0.05
            cluster.run(2)
            cluster.network.drop_rate = 0.0
            cluster.network.heal()
        elif fault == "cut":
            leader = cluster.leader() or "n1"
            primary = self.primary_of("x")
            cut = next(n for n in sorted(cluster.nodes) if n not in (leader, primary))
            cluster.network.partition([cut], [leader])
            cluster.network.drop_rate = 0.05
            cluster.run(2)
            cluster.network.drop_rate = 0.0
            cluster.network.heal()
        elif fault == "rolling":
            for _ in range(3):
                leader = cluster.leader() or "n1"
                nodes = sorted(cluster.nodes)
                cut = rng.choice(["leader", "follower", "pair"])
                if cut == "leader":
                    cluster.network.partition([leader], [n for n in nodes if n != leader])
                elif cut == "follower":
                    cluster.network.partition([rng.choice([n for n in nodes if n != leader])], [leader])
                else:
                    cluster.network.partition(*([n] for n in rng.sample(nodes, 2)))
                cluster.run(rng.uniform(2, 3))
                cluster.network.heal(stagger=0.4)
                cluster.run(0.5)
        elif fault == "kill":
            cluster.kill(cluster.leader() or "n1")
            cluster.run(1)
            cluster.network.drop_rate = 0.05
            cluster.run(0.5)
            cluster.network.drop_rate = 0.0
            cluster.start(next(n for n in cluster.config.node_ids if n not in cluster.nodes))
        cluster.run(stop_at - clock.seconds() + 6)
        close_unreturned(history)
        return history

    def test_checker_rejects_stale_read(self) -> None:
        """
        The checker itself: a read that misses a write completed before it
        began is not linearizable.
        """
        history = [
            Op("put", 0.0, 1.0, b"a", None, ("ok", "1.1")),
            Op("put", 2.0, 3.0, b"b", None, ("ok", "1.2")),
            Op("get", 4.0, 5.0, result=("value", (b"a", "1.1"))),
        ]
        self.assertFalse(check(history))
        history[-1].invoked = 2.5
        self.assertTrue(check(history))

    def test_histories_without_faults(self) -> None:
        """
        Random concurrent operations through random nodes are linearizable.
        """
        for seed in (1, 2):
            for key, ops in self.run_workload(seed).items():
                self.assertTrue(check(ops), (seed, key))

    def test_histories_with_faults(self) -> None:
        """
        The same with the leader killed, messages dropped and a node
        restarted empty mid-run.
        """
        for seed in (3, 4, 5, 6, 30, 38, 41, 42):
            for key, ops in self.run_workload(seed, fault="kill").items():
                self.assertTrue(check(ops), (seed, key))

    def test_histories_with_paused_primary(self) -> None:
        """
        The same while a primary hangs long enough to be replaced, then
        resumes believing it is still primary.
        """
        for seed in (11, 12, 13, 14):
            for key, ops in self.run_workload(seed, fault="pause").items():
                self.assertTrue(check(ops), (seed, key))

    def test_histories_with_isolated_primary(self) -> None:
        """
        The same while a primary is cut off from the leader and replaced,
        and keeps answering its own clients for as long as its lease holds.
        """
        for seed in (7, 8, 9, 10, 369):
            for key, ops in self.run_workload(seed, fault="isolate").items():
                self.assertTrue(check(ops), (seed, key))

    def test_histories_with_cut_off_follower(self) -> None:
        """
        The same while a node that is neither leader nor primary loses its
        link to the leader, learns newer maps from the others meanwhile,
        and keeps taking clients' operations.
        """
        for seed in (15, 16, 17, 18):
            for key, ops in self.run_workload(seed, fault="cut").items():
                self.assertTrue(check(ops), (seed, key))

    def test_histories_under_rolling_partitions(self) -> None:
        """
        The same while links are cut three times in a row, each time
        somewhere else, and come back one direction at a time.  In seed
        1032, a node dropped from a partition and added back with the log
        it kept was told the partition's commit position (a digest) before
        its log was checked against the primary's.
        """
        for seed in (9, 22, 37, 43, 1032):
            for key, ops in self.run_workload(seed, fault="rolling").items():
                self.assertTrue(check(ops), (seed, key))


class MajorityRestartTests(ClusterTestMixin, SynchronousTestCase):
    """
    A majority of the nodes restarted empty: a leader is elected again, and
    the partitions whose every in-sync copy restarted are reported lost,
    refused at once, and then served again, empty.
    """

    def restart_majority(self, size: int = 3) -> tuple[str, list[str]]:
        """
        Kill a majority of the nodes of a new cluster, the leader among
        them, and restart them; return the survivor first and the restarted
        nodes.
        """
        cluster = self.make_cluster(size)
        cluster.settle()
        return self.restart_majority_of(cluster)

    def restart_majority_of(self, cluster: MemoryCluster) -> tuple[str, list[str]]:
        """
        L{restart_majority} on C{cluster}, settled; remember in
        C{expected_lost} the partitions whose in-sync members all restart.
        """
        leader = cluster.leader()
        size = len(cluster.nodes)
        victims = [leader] + [n for n in cluster.nodes if n != leader][: size // 2]
        survivor = next(n for n in cluster.nodes if n not in victims)
        # The followers die first; the leader proposes a map without them,
        # and dies once the survivor stores it, before it learns it is
        # committed: the survivor cannot hand the restarted nodes a map.
        for victim in victims[1:]:
            cluster.kill(victim)
        consensus = cluster.nodes[survivor].consensus
        while consensus.latest_map is consensus.committed:
            cluster.run(0.001, step=0.001)
        self.expected_lost = [
            index
            for index, config in enumerate(consensus.latest_map.partitions)
            if config.in_sync <= set(victims)
        ]
        cluster.kill(leader)
        for victim in victims:
            cluster.start(victim)
        return survivor, victims

    def assert_leader_within(self, seconds: float) -> str:
        """
        Run until every live node follows one leader, at most C{seconds} of
        simulated time; return it.
        """
        cluster = self.cluster
        end = cluster.clock.seconds() + seconds
        while cluster.clock.seconds() < end:
            cluster.run(0.05)
            leader = cluster.leader()
            if leader is not None:
                return leader
        self.fail(f"no leader elected within {seconds}s")

    def test_leader_elected_after_majority_restart(self) -> None:
        """
        Two of three nodes, the leader among them, restarted empty: the
        survivor, the only node holding the map, is elected within a few
        election timeouts (the restarted nodes vote for it).
        """
        survivor, _ = self.restart_majority(3)
        self.assertEqual(self.assert_leader_within(4 * 2.0), survivor)

    def test_leader_elected_after_majority_of_five_restart(self) -> None:
        """
        Three of five nodes restarted empty: one of the two that kept the map
        is elected.
        """
        survivor, victims = self.restart_majority(5)
        self.assertNotIn(self.assert_leader_within(4 * 2.0), victims)

    def test_leader_elected_after_whole_cluster_restart(self) -> None:
        """
        Every node restarted empty (a new cluster, as far as anyone knows): a
        leader is elected and the cluster serves.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        for node_id in list(cluster.nodes):
            cluster.kill(node_id)
        for node_id in cluster.config.node_ids:
            cluster.start(node_id)
        self.assert_leader_within(4 * 2.0)
        cluster.settle()
        self.assertIsInstance(self.put("n1", "k", b"v"), WriteResult)

    def test_lost_partitions_reported_refused_then_served_empty(self) -> None:
        """
        The partitions whose every in-sync copy restarted are found at once
        on the survivor: one log line names them, L{Node.lost_partitions}
        and C{/cluster} list them and the loss is counted; requests for them
        answer 503 at once, saying why.  Once a leader is elected they serve
        again, empty, on every node, while the other partitions kept their
        data.
        """
        cluster = self.make_cluster(3)
        cluster.settle()
        acked = {f"k{i}": b"v%d" % i for i in range(40)}
        for key, value in acked.items():
            self.assertIsInstance(self.put("n1", key, value), WriteResult)
        with capturedLogs() as events:
            survivor, victims = self.restart_majority_of(cluster)
            cluster.run(0.1)
        node = cluster.nodes[survivor]
        delivered: list[ChangeEvent] = []
        node.feed.subscribe(delivered.append)
        self.assertIsNone(cluster.leader())
        lost = sorted(node.lost_partitions)
        self.assertTrue(lost)
        self.assertEqual(lost, self.expected_lost)
        lines = [e["log_format"].format(**e) for e in events if "lost every" in e["log_format"]]
        self.assertIn(f"partitions {', '.join(map(str, lost))} lost every in-sync copy", lines[0])
        self.assertEqual(node.partition_losses, len(lost))
        status = NodeStatus(node, cluster.clock)
        self.assertEqual(status.cluster_view()["lost_partitions"], lost)
        families = parse(render(node_registry(status.metrics)).decode("utf-8"))
        self.assertEqual(families["twisted_kv_lost_partitions"].samples[0].value, len(lost))
        self.assertEqual(families["twisted_kv_partition_losses"].samples[0].value, len(lost))
        gone = next(k for k in acked if node.partition_of(user_key(k)) in lost)
        kept = next(k for k in acked if node.partition_of(user_key(k)) not in lost)
        for operation in [
            cluster.coordinators[survivor].get(user_key(gone)),
            cluster.coordinators[survivor].put(user_key(gone), b"new"),
            cluster.coordinators[survivor].list_keys(USER, None, 10),
        ]:
            failure = _outcome(operation)[0]
            self.assertIsInstance(failure, Failure)
            failure.trap(Unavailable)
            self.assertEqual(failure.value.retry_after, 1)
            self.assertIn("lost every in-sync copy (all restarted empty)", str(failure.value))
        cluster.settle(timeout=10.0)
        for node_id, each in cluster.nodes.items():
            self.assertEqual(each.lost_partitions, frozenset(), node_id)
            self.assertIsNone(self.get(node_id, gone).record, node_id)
            self.assertEqual(self.value_at(node_id, kept), acked[kept], node_id)
        self.assertIsInstance(self.put(victims[0], gone, b"new"), WriteResult)
        self.assertEqual(self.value_at(survivor, gone), b"new")
        self.assertEqual(node.partition_losses, len(lost))
        # The lost keys vanished without change events: watchers re-read.
        self.assertTrue(delivered[0].gap)
