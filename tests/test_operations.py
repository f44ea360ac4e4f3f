"""
Tests for L{twisted_kv.cluster.operations}: client operations at a primary
without members (its writes commit as they are ordered), with replication
replaced by a recorder whose waits the test settles, and time by a
L{Clock}.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.cluster.calls import Calls, Retry
from twisted_kv.cluster.deadlines import Deadlines
from twisted_kv.cluster.operations import HOLD_SHARE, ClientOperations
from twisted_kv.core import messages
from twisted_kv.core.placement import Member, PartitionConfig
from twisted_kv.core.records import Change, Put
from twisted_kv.core.replica import Replica, decode_change
from twisted_kv.errors import InsufficientStorage, KeyExists
from twisted_kv.testing import cluster_config


class _Replication:
    """
    Records the waits asked for; whether the read lease holds is up to the
    test.
    """

    def __init__(self) -> None:
        self.lease = False
        self.waits: list[tuple[Any, ...]] = []
        self.deferreds: list[Deferred[None]] = []

    def _wait(self, *what: Any) -> Deferred[None]:
        self.waits.append(what)
        d: Deferred[None] = Deferred()
        self.deferreds.append(d)
        return d

    def wait_commit(self, partition: int, seq: int) -> Deferred[None]:
        return self._wait("commit", partition, seq)

    def wait_confirmation(self, replica: Replica) -> Deferred[None]:
        return self._wait("confirmation", replica.partition)

    def lease_holds(self, replica: Replica) -> bool:
        return self.lease

    def settle(self) -> None:
        deferreds, self.deferreds = self.deferreds, []
        for d in deferreds:
            d.callback(None)


class OperationsTests(SynchronousTestCase):
    """
    Node n1 is the primary of partition 0, alone, and a replica of
    partition 1 where n2 is primary.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.replication = _Replication()
        self.sent: list[tuple[str, list]] = []
        self.replicas = [Replica(0), Replica(1)]
        self.replicas[0].become_primary(1, [], [])
        self.configs = {
            0: PartitionConfig(1, (Member("n1", 7),), {"n1"}),
            1: PartitionConfig(4, (Member("n2", 1), Member("n1", 7)), {"n2"}),
        }
        self.deadlines = Deadlines()
        self.operations = self.make_operations()

    def make_operations(self, **tunables: object) -> ClientOperations:
        """
        The client operations of n1, in a cluster file with C{tunables}.
        """
        calls = Calls(
            send=lambda peer, message: self.sent.append((peer, message)) or True,
            unreachable=lambda peer: None,
            deadlines=self.deadlines,
            now=self.clock.seconds,
        )
        return ClientOperations(
            config=cluster_config(3, **tunables),
            node_id="n1",
            incarnation=7,
            replicas=self.replicas,
            replication=self.replication,  # type: ignore[arg-type]
            calls=calls,
            partition_config=self.configs.get,
            now=self.clock.seconds,
            deadlines=self.deadlines,
        )

    def write(self, key: str, op_id: Optional[str] = None, **kwargs: Any) -> Deferred:
        return self.operations.execute_local(0, Put(key, b"v", **kwargs), op_id)

    def test_only_at_the_primary(self) -> None:
        """
        A write or a read reaching a replica that is not its partition's
        primary is refused, to be retried, as not applied.
        """
        for d in (
            self.operations.execute_local(1, Put("k", b"v"), None),
            self.operations.read_local(1, "k"),
        ):
            self.assertFalse(self.failureResultOf(d, Retry).value.maybe_applied)
        self.assertEqual(self.operations.executed, 0)

    def test_write_answered_at_its_commit(self) -> None:
        """
        A write is answered with its change once its log position is
        committed.
        """
        d = self.write("k")
        self.assertEqual(self.replication.waits, [("commit", 0, 1)])
        self.assertNoResult(d)
        self.replication.settle()
        self.assertEqual(self.successResultOf(d).key, "k")
        self.assertEqual(self.operations.executed, 1)

    def test_retried_write_applied_once(self) -> None:
        """
        A write retried under its operation id is not ordered again: it is
        answered with the first one's change, at the first one's position.
        """
        first = self.write("k", "c/1")
        self.replication.settle()
        again = self.write("k", "c/1")
        self.assertEqual(self.replication.waits[-1], ("commit", 0, 1))
        self.replication.settle()
        first_change, again_change = self.successResultOf(first), self.successResultOf(again)
        self.assertEqual((again_change.version, again_change.created), (first_change.version, True))
        self.assertIsNone(again_change.record)
        self.assertEqual(self.replicas[0].last_seq, 1)

    def test_restore_batch_in_one_go(self) -> None:
        """
        A restore batch's records of a partition are ordered at once, each
        an unconditional write with its content type and time to live, and
        answered with their count once the last is committed; sent again
        under the same batch id, none is ordered twice.
        """
        self.clock.advance(100)
        self.write("b", if_none_match=True)
        self.replication.settle()
        records = [[0, "a", b"1", "t/a", None], [4, "b", b"2", "t/b", 30.0]]
        d = self.operations.restore_local(0, "~r-1", records)
        self.assertEqual(self.replication.waits[-1], ("commit", 0, 3))
        self.assertNoResult(d)
        self.replication.settle()
        self.assertEqual(self.successResultOf(d), 2)
        store = self.replicas[0].store
        self.assertEqual((store.get("a").value, store.get("a").content_type), (b"1", "t/a"))
        self.assertEqual((store.get("b").value, store.get("b").expires_at), (b"2", 130.0))
        again = self.operations.restore_local(0, "~r-1", records)
        self.assertEqual(self.replication.waits[-1], ("commit", 0, 3))
        self.replication.settle()
        self.assertEqual(self.successResultOf(again), 2)
        self.assertEqual(self.replicas[0].last_seq, 3)
        self.operations.restore_local(0, "~r-2", records)
        self.assertEqual(self.replicas[0].last_seq, 5)
        self.assertEqual(self.operations.executed, 5)

    def test_restore_only_at_the_primary(self) -> None:
        """
        A restore batch reaching a replica that is not its partition's
        primary is refused, to be retried, as not applied.
        """
        d = self.operations.restore_local(1, "~r-1", [[0, "a", b"1", "t", None]])
        self.assertFalse(self.failureResultOf(d, Retry).value.maybe_applied)
        self.assertEqual(self.replicas[1].last_seq, 0)

    def test_read_under_lease(self) -> None:
        """
        While the read lease holds, a read is answered at once; otherwise
        after a confirmation round.
        """
        self.write("k")
        self.replication.lease = True
        self.assertEqual(self.successResultOf(self.operations.read_local(0, "k")).value, b"v")
        self.replication.lease = False
        d = self.operations.read_local(0, "k")
        self.assertEqual(self.replication.waits[-1], ("confirmation", 0))
        self.assertNoResult(d)
        self.replication.settle()
        self.assertEqual(self.successResultOf(d).value, b"v")

    def test_refusal_confirmed_as_a_read(self) -> None:
        """
        A write refused for its condition is refused at once under the
        lease, and otherwise only after a confirmation round: a primary
        replaced unawares must not refuse from its stale state.
        """
        self.write("k")
        self.replication.lease = True
        self.failureResultOf(self.write("k", create_only=True), KeyExists)
        self.replication.lease = False
        refused = self.write("k", create_only=True)
        self.assertNoResult(refused)
        self.replication.settle()
        self.failureResultOf(refused, KeyExists)

    def test_memory_limit_counts_dropped_copies(self) -> None:
        """
        The records of a copy this node dropped count against the memory
        limit until they are freed: a write that fits only without them is
        refused (C{507}), and accepted once they are freed.
        """
        operations = self.make_operations(memory_limit=4000)
        dropped = self.replicas[1]
        dropped.restore_keys([[f"d{index}", b"x" * 100, "t", 1, None] for index in range(10)])
        self.assertGreater(dropped.store.bytes_used, 2000)
        dropped.forget()
        write = Put("k", b"v" * 1500)
        self.failureResultOf(operations.execute_local(0, write, None), InsufficientStorage)
        self.failureResultOf(
            operations.restore_local(0, "~r", [[0, "k", write.value, "t", None]]),
            InsufficientStorage,
        )
        self.assertEqual(dropped.release_dropped(10), 10)
        self.assertEqual(operations.bytes_used(), 0)
        d = operations.execute_local(0, write, None)
        self.replication.settle()
        self.assertEqual(self.successResultOf(d).key, "k")

    def test_peek(self) -> None:
        """
        A degraded read's answer says whether this node is an in-sync
        replica of the partition, in which epoch.
        """
        self.write("k")
        peek = self.operations.peek_local(0, "k")
        self.assertEqual((peek.holds, peek.record.value, peek.epoch), (True, b"v", 1))
        self.assertEqual(self.operations.peek_local(1, "k"), messages.Peek(False, None, 4))

    def test_peers_answered(self) -> None:
        """
        A peer's read is answered once confirmed; a peer's write once
        committed; a peer's listing at once.
        """
        self.write("a")
        self.operations.on_read("n2", messages.ReadRequest(0, "a").to_wire(5))
        self.operations.on_op("n2", messages.OpRequest(0, Put("b", b"w"), "n2/x/1").to_wire(6))
        self.operations.on_list("n2", messages.ListRequest([0, 1], "", None, 10).to_wire(7))
        self.assertEqual(self.sent, [("n2", messages.ok_answer(7, ["a", "b"]))])
        self.replication.settle()
        answers = {message[1]: message for _, message in self.sent}
        self.assertEqual(messages.decode_record(answers[5][3]).value, b"v")
        self.assertEqual(answers[6][2], messages.OK)
        restore = messages.RestoreRequest(0, "~r", [[0, "c", b"x", "t", None]])
        self.operations.on_restore("n2", restore.to_wire(8))
        self.replication.settle()
        self.assertEqual(self.sent[-1], ("n2", messages.ok_answer(8, 1)))

    def test_forwarded_write_answered_without_its_value(self) -> None:
        """
        A peer's write is answered with what its coordinator needs, the
        kind, version and whether the key was created, not with the value
        the coordinator sent.
        """
        self.operations.on_op("n2", messages.OpRequest(0, Put("b", b"w" * 100), "n2/x/1").to_wire(6))
        self.replication.settle()
        ((peer, answer),) = self.sent
        request_id, status, payload = messages.parse_answer(answer)
        self.assertEqual((peer, request_id, status), ("n2", 6, messages.OK))
        version = self.replicas[0].store.get("b").version
        self.assertEqual(decode_change(payload), Change("put", "b", version, None, True))


class HoldTests(OperationsTests):
    """
    A request for partition 1, of which n1 is a replica (n2 primary in
    epoch 4), when n1 is about to take it over: held until it has, rather
    than refused.
    """

    def take_over(self, epoch: int = 5) -> None:
        """
        The map of C{epoch} names n1 primary of partition 1, alone (so its
        writes commit as they are ordered), and n1 takes over.
        """
        self.configs[1] = PartitionConfig(epoch, (Member("n1", 7),), {"n1"})
        self.replicas[1].become_primary(epoch, [], [])
        self.operations.wake_held(1)

    def test_held_for_a_newer_map(self) -> None:
        """
        A write or a read sent by a node whose map (of an epoch newer than
        ours) names us primary waits for us to take over: a map applied
        that does not make us primary changes nothing; the takeover runs
        them.
        """
        write = self.operations.execute_local(1, Put("k", b"v"), "n2/x/1", 5)
        self.replicas[1].epoch = 5
        read = self.operations.read_local(1, "k", 5)
        self.operations.wake_held()
        self.assertNoResult(write)
        self.assertNoResult(read)
        self.assertEqual((self.operations.executed, self.operations.held), (0, 2))
        self.take_over()
        self.assertEqual(self.replication.waits, [("commit", 1, 1), ("confirmation", 1)])
        self.replication.settle()
        self.assertEqual(self.successResultOf(write).key, "k")
        self.assertEqual(self.successResultOf(read).value, b"v")
        self.assertEqual(self.operations.executed, 2)

    def test_held_while_our_map_names_us(self) -> None:
        """
        Once our map names us primary, a request waits for the takeover
        (the old primary's release on its way), whatever epoch the sender
        routed it by; a restore and a backup page too.
        """
        self.configs[1] = PartitionConfig(5, (Member("n1", 7), Member("n2", 1)), {"n1", "n2"})
        restore = self.operations.restore_local(1, "~r", [[0, "c", b"x", "t", None]])
        dump = self.operations.dump_local(1, None, None, 10, 5)
        self.assertNoResult(restore)
        self.assertNoResult(dump)
        self.replication.lease = True
        self.take_over()
        self.replication.settle()
        self.assertEqual(self.successResultOf(restore), 1)
        self.assertEqual([r.key for r in self.successResultOf(dump).records], ["c"])

    def test_not_held_for_another_primary(self) -> None:
        """
        A request sent by a node whose map is no newer than ours, which
        names another node primary, is refused at once; so is one held
        when a newer map names another node.
        """
        refused = self.operations.read_local(1, "k", 4)
        self.assertFalse(self.failureResultOf(refused, Retry).value.maybe_applied)
        held = self.operations.read_local(1, "k", 5)
        self.configs[1] = PartitionConfig(6, (Member("n3", 2), Member("n1", 7)), {"n3", "n1"})
        self.operations.wake_held()
        self.assertFalse(self.failureResultOf(held, Retry).value.maybe_applied)
        self.assertEqual(self.operations.executed, 0)

    def test_hold_limited(self) -> None:
        """
        A request is held for at most a quarter of the request timeout, then
        refused as not applied; waking the others does not fire it again.
        """
        held = self.operations.execute_local(1, Put("k", b"v"), "n2/x/1", 5)
        limit = cluster_config(3).request_timeout * HOLD_SHARE
        self.clock.advance(limit - 0.01)
        self.deadlines.sweep(self.clock.seconds())
        self.assertNoResult(held)
        self.clock.advance(0.01)
        self.deadlines.sweep(self.clock.seconds())
        self.assertFalse(self.failureResultOf(held, Retry).value.maybe_applied)
        self.take_over()
        self.assertEqual((self.operations.executed, len(self.deadlines)), (0, 0))

    def test_hold_limit_kept_across_maps(self) -> None:
        """
        A request woken by a map that still does not make us primary is held
        again until the same limit, not a new one.
        """
        held = self.operations.read_local(1, "k", 5)
        limit = cluster_config(3).request_timeout * HOLD_SHARE
        self.clock.advance(limit / 2)
        self.operations.wake_held()
        self.clock.advance(limit / 2)
        self.deadlines.sweep(self.clock.seconds())
        self.failureResultOf(held, Retry)
        self.assertEqual(self.operations.held, 1)

    def test_peers_request_held(self) -> None:
        """
        A peer's request carries the epoch it was routed by, and is
        answered once this node took over.
        """
        self.operations.on_op("n2", messages.OpRequest(1, Put("b", b"w"), "n2/x/1", 5).to_wire(6))
        self.assertEqual(self.sent, [])
        self.take_over()
        self.replication.settle()
        ((peer, answer),) = self.sent
        self.assertEqual((peer, messages.parse_answer(answer)[1]), ("n2", messages.OK))

    def test_stop_refuses_held(self) -> None:
        """
        A node that stops refuses what it holds, as not applied.
        """
        held = self.operations.read_local(1, "k", 5)
        self.operations.stop()
        self.assertFalse(self.failureResultOf(held, Retry).value.maybe_applied)
