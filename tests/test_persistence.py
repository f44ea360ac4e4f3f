# -*- test-case-name: tests.test_persistence -*-
"""
Whole clusters in memory whose nodes keep their data on crashable disks
(L{twisted_kv.testing.MemoryCluster} with C{disks=True}): power cuts of any
set of nodes, all of them included, under a random workload; every
acknowledged write comes back, and the histories are linearizable.
"""

from __future__ import annotations

import errno
import random
from typing import Any, Callable, Optional

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tests.linearizability import Op, check, random_operation
from tests.test_cluster import close_unreturned, record_outcome, submit_operation
from twisted_kv.cluster.node import Node
from twisted_kv.core import messages
from twisted_kv.core.keyspace import user_key
from twisted_kv.core.records import Put
from twisted_kv.errors import (
    DiskFull,
    LogFailed,
)
from twisted_kv.interfaces import WriteResult
from twisted_kv.storage.testing import CrashableFileSystem, Fault
from twisted_kv.testing import MemoryCluster

KEYS = ("x", "y", "z")


def run_crashes(
    seed: int,
    victims: Optional[list[str]] = None,
    compact_bytes: Optional[int] = None,
    power_cut: bool = True,
    **tunables: object,
) -> dict[str, list[Op]]:
    """
    Five clients, one operation in flight each, on random nodes and a few
    keys; after about a second, the power of C{victims} (a random set of nodes by
    default, every node one time in three) is cut, and they restart with
    their disks half a second later (with C{power_cut=False}, their
    processes are killed instead: the disks keep everything written, synced
    or not, and the machines do not reboot).  Once the clients stop, every key is
    read once more from a random node.  Returns each key's history.
    """
    rng = random.Random(seed)
    cluster = MemoryCluster(3, seed=seed, disks=True, compact_bytes=compact_bytes, **tunables)
    cluster.settle()
    clock = cluster.clock
    history: dict[str, list[Op]] = {key: [] for key in KEYS}
    stop_at = clock.seconds() + 4

    def issue() -> None:
        if clock.seconds() >= stop_at:
            return
        if not cluster.nodes:
            clock.callLater(0.05, issue)
            return
        node = rng.choice(sorted(cluster.nodes))
        key = rng.choice(KEYS)
        submit(node, key, random_operation(rng, history[key], node, clock.seconds()))

    def submit(node: str, key: str, op: Op, again: bool = True) -> None:
        history[key].append(op)
        submit_operation(cluster.coordinators[node], key, op).addBoth(record, op, key, again)

    def record(result: Any, op: Op, key: str, again: bool) -> None:
        record_outcome(result, op, history[key], clock.seconds())
        if again:
            clock.callLater(rng.choice([0.0, 0.002, 0.01]), issue)

    for _ in range(5):
        issue()
    cluster.run(rng.uniform(0.8, 1.2), step=0.001)
    if victims is None:
        nodes = sorted(cluster.nodes)
        victims = nodes if rng.random() < 1 / 3 else rng.sample(nodes, rng.randint(1, 3))
    for node in victims:
        if power_cut:
            cluster.crash(node)
        else:
            cluster.kill(node)
    cluster.run(0.5)
    for node in victims:
        cluster.start(node)
    cluster.run(stop_at - clock.seconds() + 8)
    close_unreturned(history)
    cluster.settle(20)
    for key in KEYS:
        final = Op("get", invoked=clock.seconds())
        submit(rng.choice(sorted(cluster.nodes)), key, final, again=False)
    cluster.run(2)
    for key in KEYS:
        assert history[key][-1].result is not None, f"the final read of {key} did not return"
    cluster.stop()
    return history


class PowerCutTests(SynchronousTestCase):
    """
    With C{fsync = always}, power cuts lose no acknowledged write.
    """

    def assert_linearizable(self, seed: int, **options: Any) -> None:
        history = run_crashes(seed, **options)
        for key, ops in history.items():
            self.assertTrue(check(ops), f"seed {seed}, key {key}: not linearizable")
        acknowledged = sum(
            1 for ops in history.values() for op in ops
            if op.kind != "get" and op.result is not None and op.result[0] == "ok"
        )
        self.assertGreater(acknowledged, 10, f"seed {seed}: too few writes acknowledged")

    def test_every_node(self) -> None:
        """
        The power of every node is cut at once: every acknowledged write is
        read back, linearizably, once they restart.
        """
        for seed in range(20):
            self.assert_linearizable(seed, victims=["n1", "n2", "n3"])

    def test_with_snapshots(self) -> None:
        """
        Snapshots taken every few kilobytes of log, while writes go on,
        lose nothing either.
        """
        for seed in range(200, 215):
            self.assert_linearizable(seed, compact_bytes=2048)

    def test_no_answer_after_stop(self) -> None:
        """
        A client's write failed with a retry when its node lost power, and
        its own record of the entry completes afterwards (a disk is slower
        than a power cut): the stopped node's coordinator does not try the
        write again and answer it from that state, which its disk does not
        hold.  (Seeds of a wider sweep where it did.)
        """
        self.assert_linearizable(5021, victims=["n1", "n2", "n3"])
        self.assert_linearizable(5026, compact_bytes=2048)

    def test_random_nodes(self) -> None:
        """
        The power of a random set of nodes is cut.
        """
        for seed in range(100, 120):
            self.assert_linearizable(seed)


def _outcome(d: Any) -> list:
    box: list = []
    d.addBoth(box.append)
    return box


class KillTests(SynchronousTestCase):
    """
    With C{fsync = everysec} or C{never}, killing processes (not the
    power) loses no acknowledged write either: what was written is in the
    kernel's hands.
    """

    def test_every_node_killed(self) -> None:
        """
        Every node killed at once and restarted: every acknowledged write
        is read back, linearizably.
        """
        for policy in ("everysec", "never"):
            for seed in range(300, 306):
                history = run_crashes(
                    seed, victims=["n1", "n2", "n3"], power_cut=False, fsync=policy
                )
                for key, ops in history.items():
                    self.assertTrue(check(ops), f"{policy}, seed {seed}, key {key}")

    def test_killed_node_runs_nothing(self) -> None:
        """
        Nothing a killed node scheduled runs after the kill, its disk work
        included: its files do not change, and a write it was ordering as
        primary is never acknowledged by it.
        """
        cluster = MemoryCluster(3, seed=3, disks=True)
        cluster.settle()
        node = next(iter(cluster.nodes.values()))
        primary = node.partition_config(node.partition_of(user_key("k"))).primary.node_id
        fs = cluster.filesystems[primary]
        ran: list[int] = []
        cluster.clocks[primary].callLater(0.5, ran.append, 1)
        written = _outcome(cluster.coordinators[primary].put(user_key("k"), b"v"))
        cluster.clock.advance(0)
        directory = f"/data/{primary}"
        files = {name: fs.read(f"{directory}/{name}") for name in fs.listdir(directory)}
        cluster.kill(primary)
        cluster.run(3)
        self.assertEqual((ran, written), ([], []))
        self.assertEqual(
            {name: fs.read(f"{directory}/{name}") for name in fs.listdir(directory)}, files
        )
        cluster.stop()


class DiskErrorTests(SynchronousTestCase):
    """
    A write that cannot be made durable is never acknowledged; reads go on.
    """

    def primary_of(self, cluster: MemoryCluster, key: str) -> str:
        node = next(iter(cluster.nodes.values()))
        config = node.partition_config(node.partition_of(user_key(key)))
        assert config is not None
        return config.primary.node_id

    def test_disk_full(self) -> None:
        """
        While the primary's disk is full, writes fail (the first ones
        without an acknowledgement, then with L{DiskFull} at once) and
        reads answer; once space is freed, writes are acknowledged again.
        """
        cluster = MemoryCluster(3, seed=1, disks=True)
        cluster.settle()
        coordinator = cluster.coordinators["n1"]
        _outcome(coordinator.put(user_key("k"), b"v1"))
        cluster.run(0.5)
        primary = self.primary_of(cluster, "k")
        fs = cluster.filesystems[primary]
        fs.inject(Fault("write", errno.ENOSPC, times=None))
        first = _outcome(coordinator.put(user_key("k"), b"v2"))
        cluster.run(6)
        self.assertEqual(len(first), 1)
        self.assertNotIsInstance(first[0], WriteResult)
        refused = _outcome(coordinator.put(user_key("k"), b"v3"))
        cluster.run(1)
        self.assertTrue(refused[0].check(DiskFull), refused)
        self.assertEqual(refused[0].value.status, 507)
        read = _outcome(coordinator.get(user_key("k")))
        cluster.run(1)
        self.assertEqual(read[0].record.value, b"v1")
        fs.clear_faults()
        cluster.run(1)
        again = _outcome(coordinator.put(user_key("k"), b"v4"))
        cluster.run(1)
        self.assertIsInstance(again[0], WriteResult)
        cluster.stop()

    def test_failed_fsync(self) -> None:
        """
        After a failed fsync, the node's log is failed: it logs that once,
        refuses the writes it would order (L{LogFailed}, 503) and hands its
        partitions over to their other copies, which serve them; writes and
        reads through it go on.
        """
        cluster = MemoryCluster(3, seed=2, disks=True)
        cluster.settle()
        _outcome(cluster.coordinators["n1"].put(user_key("k"), b"v1"))
        cluster.run(0.5)
        failed = self.primary_of(cluster, "k")
        coordinator = cluster.coordinators[failed]
        node = cluster.nodes[failed]
        with capturedLogs() as events:
            cluster.filesystems[failed].inject(Fault("sync", errno.EIO, times=None))
            _outcome(coordinator.put(user_key("k"), b"v2"))
            cluster.run(0.1)
            refused = _outcome(node.operations.execute_local(
                node.partition_of(user_key("k")), Put(user_key("k"), b"v3"), None
            ))
            self.assertTrue(refused[0].check(LogFailed), refused)
            self.assertEqual(refused[0].value.status, 503)
            cluster.run(6)
        lines = [formatEvent(e) for e in events if "refusing writes" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("hands its partitions over", lines[0])
        self.assertNotEqual(self.primary_of(cluster, "k"), failed)
        for config in next(n for n in cluster.nodes.values()).cluster_map.partitions:
            self.assertIsNone(config.member(failed))
        written = _outcome(coordinator.put(user_key("k"), b"v4"))
        cluster.run(1)
        self.assertIsInstance(written[0], WriteResult)
        read = _outcome(cluster.coordinators["n1"].get(user_key("k")))
        cluster.run(1)
        self.assertEqual(read[0].record.value, b"v4")
        read = _outcome(coordinator.get(user_key("k")))
        cluster.run(1)
        self.assertEqual(read[0].record.value, b"v4")
        self.flushLoggedErrors()
        cluster.stop()

    def test_failed_log_reports_only_what_is_durable(self) -> None:
        """
        A node whose log failed still takes the leader's new maps in
        memory, but saves none: its status gossip goes on reporting the
        term, consensus entry and committed index it had on disk, not the
        newer ones it holds in memory alone.
        """
        cluster = MemoryCluster(3, seed=2, disks=True)
        leader = cluster.settle()
        failed = sorted(set(cluster.nodes) - {leader})[0]
        node = cluster.nodes[failed]
        cluster.run(0.5)
        durable = (node.term, list(node.consensus.entry), node.consensus.committed_index)
        reported = []
        send = cluster.network.send

        def recording(sender: str, peer: str, message: list) -> bool:
            if sender == failed and message[0] == messages.STATUS:
                state, entry, _ = messages.parse_status(message)
                reported.append((state["term"], list(entry), state["map_index"]))
            return send(sender, peer, message)

        cluster.network.send = recording
        cluster.filesystems[failed].inject(Fault("sync", errno.EIO, times=None))
        for i in range(5):
            _outcome(cluster.coordinators[leader].put(user_key(f"k{i}"), b"v"))
        cluster.run(6)
        self.assertTrue(node.log_failed())
        # the maps that moved its partitions away reached its memory
        self.assertGreater(node.consensus.committed_index, durable[2])
        self.assertGreater(len(reported), 10)
        self.assertEqual(reported[-5:], [durable] * 5)
        self.assertEqual(node.sync_state()["map_index"], durable[2])
        self.flushLoggedErrors()
        cluster.stop()

    def test_failed_fsync_at_the_leader(self) -> None:
        """
        When the partition leader's log fails, it sends no consensus
        message any more: another node is elected, the failed one holds no
        partition, and writes through every node go on.
        """
        cluster = MemoryCluster(3, seed=4, disks=True)
        leader = cluster.settle()
        cluster.filesystems[leader].inject(Fault("sync", errno.EIO, times=None))
        _outcome(cluster.coordinators[leader].put(user_key("k"), b"v1"))
        cluster.run(8)
        elected = cluster.leader()
        self.assertNotIn(elected, (None, leader))
        for config in cluster.nodes[elected].cluster_map.partitions:
            self.assertIsNone(config.member(leader))
        written = [_outcome(cluster.coordinators[node].put(user_key(f"k{node}"), b"v2"))
                   for node in cluster.nodes]
        cluster.run(2)
        self.assertTrue(all(isinstance(box[0], WriteResult) for box in written), written)
        self.flushLoggedErrors()
        cluster.stop()


class RejoinTests(SynchronousTestCase):
    """
    A node restarted with its data rejoins as the member it was.
    """

    def written(self, seed: int) -> MemoryCluster:
        """
        A three-node cluster on disks where k0 to k39 were written
        C{b"before"} through n1.
        """
        cluster = MemoryCluster(3, seed=seed, disks=True)
        cluster.settle()
        for i in range(40):
            cluster.coordinators["n1"].put(user_key(f"k{i}"), b"before")
        cluster.run(1)
        return cluster

    def assert_holds(self, node: Node, during: set[str]) -> set[str]:
        """
        Of k0 to k39, those C{node} is a member for: each holds C{b"during"}
        if it is in C{during}, else C{b"before"}.
        """
        held = {
            f"k{i}" for i in range(40)
            if (config := node.partition_config(node.partition_of(user_key(f"k{i}"))))
            is not None and config.member(node.node_id) is not None
        }
        for key in held:
            record = node.replicas[node.partition_of(user_key(key))].store.get(user_key(key))
            assert record is not None
            self.assertEqual(record.value, b"during" if key in during else b"before")
        return held

    def test_catches_up_only_what_it_missed(self) -> None:
        """
        A node that lost its power while writes went on comes back with its
        keys, keeps its incarnation, and is sent only the entries it
        missed: no snapshot (full copy) is sent to it.
        """
        cluster = self.written(seed=7)
        coordinator = cluster.coordinators["n1"]
        incarnation = cluster.nodes["n3"].incarnation
        keys = cluster.nodes["n3"].key_count()
        cluster.crash("n3")
        for i in range(0, 40, 4):
            coordinator.put(user_key(f"k{i}"), b"during")
        cluster.run(1)
        snapshots: list = []
        node = cluster.start("n3")
        self.assertEqual((node.incarnation, node.key_count()), (incarnation, keys))
        original = node.replication.on_snapshot
        node._dispatch["snap"] = lambda peer, message: (
            snapshots.append(message), original(peer, message)
        )
        cluster.settle()
        cluster.run(1)
        self.assertEqual(snapshots, [])
        self.assertTrue(self.assert_holds(node, {f"k{i}" for i in range(0, 40, 4)}))
        cluster.stop()

    def test_declared_dead_catches_up_only_what_it_missed(self) -> None:
        """
        A node stopped for longer than the failure timeout is declared dead
        and dropped from every configuration; restarted with its data, it
        is added back, keeps what it holds, and is sent only the entries it
        missed (none when it missed none): no snapshot.
        """
        for missed in (0, 12):
            cluster = self.written(seed=11)
            coordinator = cluster.coordinators["n1"]
            incarnation = cluster.nodes["n3"].incarnation
            keys = cluster.nodes["n3"].key_count()
            cluster.nodes["n3"].stop()
            cluster.kill("n3")
            for i in range(missed):
                coordinator.put(user_key(f"k{i}"), b"during")
            cluster.run(cluster.config.failure_timeout * 2)
            dropped = cluster.nodes["n1"].cluster_map
            assert dropped is not None
            self.assertTrue(all(c.member("n3") is None for c in dropped.partitions))
            node = cluster.start("n3")
            self.assertEqual((node.incarnation, node.key_count()), (incarnation, keys))
            received = {"snap": 0, "entries": 0}
            snapshot, append = node.replication.on_snapshot, node.replication.on_append

            def on_snapshot(peer: str, message: list) -> None:
                received["snap"] += 1
                snapshot(peer, message)

            def on_append(peer: str, message: list) -> None:
                received["entries"] += len(message[5])
                append(peer, message)

            node._dispatch["snap"] = on_snapshot
            node._dispatch["app"] = on_append
            cluster.settle()
            cluster.run(1)
            expected = {"k%d" % i for i in range(missed)}
            held = self.assert_holds(node, expected)
            self.assertEqual(received, {"snap": 0, "entries": len(expected & held)})
            cluster.stop()


class DamageTests(SynchronousTestCase):
    """
    A node whose data directory is damaged other than by a torn last record
    serves none of it: it moves the directory aside, with one line naming the
    file, starts empty as a new incarnation, and is refilled from its peers.
    """

    def restart_damaged(self, damage: Callable[[CrashableFileSystem, list[str]], str]) -> None:
        """
        Write keys, snapshot and write more, stop n3, apply C{damage} to its
        directory (given the file system and the file names; it returns the
        file damaged), and restart it: every key reads back right through it.
        """
        cluster = MemoryCluster(3, seed=5, disks=True, compact_bytes=2048)
        cluster.settle()
        coordinator = cluster.coordinators["n1"]
        written = {}
        for i in range(60):
            written[user_key(f"k{i}")] = f"value {i}".encode() * 20
            coordinator.put(user_key(f"k{i}"), written[user_key(f"k{i}")])
            cluster.run(0.05)
        cluster.run(1)
        incarnation = cluster.nodes["n3"].incarnation
        fs = cluster.filesystems["n3"]
        cluster.kill("n3")
        names = fs.listdir("/data/n3")
        self.assertTrue([n for n in names if n.endswith(".snap")], names)
        damaged = damage(fs, names)
        with capturedLogs() as events:
            node = cluster.start("n3")
        lines = [formatEvent(e) for e in events if "damaged-" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(damaged, lines[0])
        self.assertIn("refilled from its peers", lines[0])
        self.assertNotEqual(node.incarnation, incarnation)
        self.assertEqual(node.key_count(), 0)
        self.assertIn("n3.damaged-1", fs.listdir("/data"))
        cluster.settle(20)
        self.assertGreater(node.key_count(), 0)
        reads = {key: _outcome(cluster.coordinators["n3"].get(key)) for key in written}
        cluster.run(1)
        for key, value in written.items():
            self.assertEqual(reads[key][0].record.value, value, key)
        cluster.stop()

    def test_flipped_byte(self) -> None:
        """
        A byte flipped in the middle of a log segment's records.
        """
        def flip(fs: CrashableFileSystem, names: list[str]) -> str:
            def records(name: str) -> int:
                # how far the records go, before the zeros written ahead
                return len(fs.read(f"/data/n3/{name}").rstrip(b"\0"))

            name = max((n for n in names if n.endswith(".log")), key=records)
            path = f"/data/n3/{name}"
            data = bytearray(fs.read(path))
            data[records(name) // 2] ^= 0xFF
            rewrite(fs, path, bytes(data))
            return path

        self.restart_damaged(flip)

    def test_truncated_snapshot(self) -> None:
        """
        A snapshot cut short.
        """
        def truncate(fs: CrashableFileSystem, names: list[str]) -> str:
            path = "/data/n3/" + max(n for n in names if n.endswith(".snap"))
            rewrite(fs, path, fs.read(path)[: fs.size(path) // 2])
            return path

        self.restart_damaged(truncate)

    def test_missing_snapshot(self) -> None:
        """
        A snapshot removed: the log segments it replaced are gone too.
        """
        def remove(fs: CrashableFileSystem, names: list[str]) -> str:
            fs.remove("/data/n3/" + max(n for n in names if n.endswith(".snap")))
            return "/data/n3/"

        self.restart_damaged(remove)


def rewrite(fs: CrashableFileSystem, path: str, data: bytes) -> None:
    """
    Replace the content of C{path} by C{data}, durably.
    """
    f = fs.open_append(path)
    f.truncate(0)
    f.write(data)
    f.sync()
    f.close()
