"""
Synchronisation and repair in one process: replicas that diverge converge,
deletes are never undone, restarted nodes are refilled, and anti-entropy
costs little when replicas agree.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.test_cluster import ClusterTestMixin
from twisted_kv.core.keyspace import user_key
from twisted_kv.core.records import Change, Record
from twisted_kv.interfaces import WriteResult


class SyncTestMixin(ClusterTestMixin):
    def replicas_of(self, key: str) -> tuple:
        """
        The primary's replica of C{key}'s partition and the other members'.
        """
        any_node = next(iter(self.cluster.nodes.values()))
        partition = any_node.partition_of(key)
        config = any_node.partition_config(partition)
        primary = self.cluster.nodes[config.primary.node_id].replicas[partition]
        others = [self.cluster.nodes[m.node_id].replicas[partition] for m in config.members[1:]]
        return primary, others

    def assert_converged(self) -> None:
        """
        Every member of every partition holds exactly the primary's records.
        """
        any_node = next(iter(self.cluster.nodes.values()))
        for partition, config in enumerate(any_node.cluster_map.partitions):
            stores = [
                dict(self.cluster.nodes[m.node_id].replicas[partition].store.items())
                for m in config.members
            ]
            for store in stores[1:]:
                self.assertEqual(store, stores[0], f"partition {partition}")


class AntiEntropyTests(SyncTestMixin, SynchronousTestCase):
    """
    Periodic digest comparison repairs replicas that diverged.
    """

    def setUp(self) -> None:
        self.make_cluster(3, anti_entropy_interval=1)
        self.cluster.settle()
        for index in range(100):
            self.put("n1", f"ae{index}", b"v%d" % index)

    def test_identical_replicas_cost_one_digest(self) -> None:
        """
        When replicas agree, a round exchanges only roots and acknowledgements
        (tens of bytes per partition), repairs nothing, and completes.
        """
        before = sum(n.antientropy.bytes_sent for n in self.cluster.nodes.values())
        self.cluster.run(1.2)
        spent = sum(n.antientropy.bytes_sent for n in self.cluster.nodes.values()) - before
        partitions = self.cluster.config.partitions
        self.assertGreater(spent, 0)
        self.assertLess(spent, partitions * 2 * 80 * 2)
        self.assertEqual(sum(n.antientropy.repaired_keys() for n in self.cluster.nodes.values()), 0)
        self.assertTrue(any(n.antientropy.last_full_round for n in self.cluster.nodes.values()))

    def test_missing_extra_and_stale_keys_repaired(self) -> None:
        """
        A member that lost a key, holds a key that was deleted, or holds an
        old version is repaired to the primary's content.
        """
        lost, extra, stale = user_key("ae1"), user_key("ghost"), user_key("ae2")
        _, (member,) = self.replicas_of(lost)
        member.apply_outside_log(Change("delete", lost, 0, None))
        _, (member2,) = self.replicas_of(extra)
        ghost = Record(b"boo", "text/plain", 1)
        member2.apply_outside_log(Change("put", extra, 1, ghost))
        _, (member3,) = self.replicas_of(stale)
        old = Record(b"old", "text/plain", 1)
        member3.apply_outside_log(Change("put", stale, 1, old))
        self.cluster.run(2.5)
        self.assert_converged()
        self.assertIsNone(member2.store.get(extra))
        self.assertEqual(member.store.get(lost).value, b"v1")
        self.assertEqual(member3.store.get(stale).value, b"v2")
        self.assertGreaterEqual(sum(n.antientropy.repaired_keys() for n in self.cluster.nodes.values()), 3)

    def test_repair_while_writes_continue(self) -> None:
        """
        Divergence is repaired even while the partition keeps taking writes.
        """
        key = user_key("ae5")
        _, (member,) = self.replicas_of(key)
        member.apply_outside_log(Change("delete", key, 0, None))
        for index in range(40):
            self.cluster.coordinators["n2"].put(user_key(f"busy{index % 5}"), b"x%d" % index)
            self.cluster.run(0.1)
        self.cluster.run(2)
        self.assert_converged()


class ConvergenceTests(SyncTestMixin, SynchronousTestCase):
    """
    Lost messages, partitions and concurrent deletes never leave replicas
    apart, and never bring a deleted key back.
    """

    def test_lost_messages(self) -> None:
        """
        With a fifth of all messages lost while clients write, replicas agree
        once the losses stop.
        """
        self.make_cluster(3)
        self.cluster.settle()
        self.cluster.network.drop_rate = 0.2
        for index in range(60):
            self.cluster.coordinators[f"n{index % 3 + 1}"].put(user_key(f"lossy{index % 10}"), b"%d" % index)
            self.cluster.run(0.05)
        self.cluster.network.drop_rate = 0.0
        self.cluster.settle()
        self.cluster.run(2)
        self.assert_converged()

    def test_healed_partition_and_concurrent_delete_put(self) -> None:
        """
        A member cut off while a key is deleted and another is written and
        deleted concurrently comes back: no deleted key reappears anywhere.
        """
        self.make_cluster(3)
        self.cluster.settle()
        for name in ("gone", "race"):
            self.put("n1", name, b"before")
        self.cluster.network.partition(["n3"], ["n1", "n2"])
        self.cluster.coordinators["n1"].delete(user_key("gone"))
        self.cluster.coordinators["n1"].put(user_key("race"), b"during")
        self.cluster.coordinators["n2"].delete(user_key("race"))
        self.cluster.run(4)
        self.cluster.network.heal()
        self.cluster.settle()
        self.cluster.run(1)
        self.assert_converged()
        for node in self.cluster.nodes:
            self.assertIsNone(self.value_at(node, "gone"))
        race = {self.value_at(node, "race") for node in self.cluster.nodes}
        self.assertEqual(len(race), 1)
        for node in self.cluster.nodes.values():
            key = user_key("gone")
            self.assertIsNone(node.operations.peek_local(node.partition_of(key), key)[1])

    def test_restart_mid_sync(self) -> None:
        """
        A node killed again while it is being refilled, then restarted, ends
        up in sync holding everything.
        """
        self.make_cluster(3)
        self.cluster.settle()
        acked = {}
        for index in range(300):
            key = f"bulk{index}"
            if isinstance(self.put("n2", key, b"x" * 200), WriteResult):
                acked[key] = b"x" * 200
        self.cluster.kill("n1")
        self.cluster.run(2)
        self.cluster.start("n1")
        self.cluster.run(0.02)
        self.assertFalse(self.cluster.nodes["n1"].synced())
        self.cluster.kill("n1")
        self.cluster.run(2)
        self.cluster.start("n1")
        self.cluster.settle()
        self.assertTrue(self.cluster.nodes["n1"].synced())
        self.assert_converged()
        self.cluster.kill("n3")
        for key, value in acked.items():
            self.assertEqual(self.value_at("n1", key), value)

    def test_returning_node_gets_its_data_back_without_over_replication(self) -> None:
        """
        While a node is dead its partitions are re-replicated on the others;
        when it returns the data moves back and no node keeps extra copies.
        """
        self.make_cluster(5)
        self.cluster.settle()
        for index in range(100):
            self.put("n1", f"rr{index}", b"v")
        self.cluster.kill("n5")
        self.cluster.settle()
        copies = sum(n.key_count() for n in self.cluster.nodes.values())
        self.assertEqual(copies, 100 * 3)
        self.cluster.start("n5")
        self.cluster.settle()
        self.cluster.run(1)
        copies = sum(n.key_count() for n in self.cluster.nodes.values())
        self.assertEqual(copies, 100 * 3)
        self.assertGreater(self.cluster.nodes["n5"].key_count(), 0)
        self.assert_converged()

    def test_degraded_read_triggers_repair(self) -> None:
        """
        A degraded read (a majority of the nodes is gone) that sees replicas
        disagree answers the newest version and asks the primary for an
        anti-entropy round, which repairs the stale one.
        """
        self.make_cluster(5, replicas=2, anti_entropy_interval=3600)
        self.cluster.settle()
        self.put("n1", "rr", b"new")
        key = user_key("rr")
        _, (member,) = self.replicas_of(key)
        any_node = next(iter(self.cluster.nodes.values()))
        holders = [m.node_id for m in any_node.partition_config(any_node.partition_of(key)).members]
        for node_id in [n for n in list(self.cluster.nodes) if n not in holders]:
            self.cluster.kill(node_id)
        self.cluster.run(self.cluster.config.failure_timeout * 2)
        self.assertFalse(self.cluster.nodes[holders[1]].has_majority())
        member.apply_outside_log(Change("put", key, 1, Record(b"old", "x", 1)))
        self.cluster.run(0.5)
        self.assertEqual(member.store.get(key).value, b"old")
        result = self.get(holders[1], "rr")
        self.assertEqual((result.record.value, result.degraded), (b"new", True))
        self.cluster.run(0.5)
        self.assertEqual(member.store.get(key).value, b"new")
