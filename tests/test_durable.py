# -*- test-case-name: tests.test_durable -*-
"""
Tests for L{twisted_kv.cluster.durable}: a node's data directory, and what a
node keeps there across crashes.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.cluster.durable import (
    APPEND,
    CONSENSUS,
    DurableGate,
    NodeDisk,
    decode_consensus,
    encode_consensus,
)
from twisted_kv.cluster.node import Node
from twisted_kv.core.membership import new_incarnation
from twisted_kv.core import messages
from twisted_kv.core.keyspace import user_key
from twisted_kv.core.memstore import record_cost
from twisted_kv.core.records import Change, Put, Record, make_version
from twisted_kv.core import replica as replica_module
from twisted_kv.core.replica import Entry, Replica, encode_entry
from twisted_kv.errors import WriteFailed
from twisted_kv.storage.committer import LAZY_WAIT
from twisted_kv.storage.log import Log, encode_record
from twisted_kv.storage.testing import CrashableFileSystem, HeldRunner, run_now
from twisted_kv.testing import MemoryCluster, cluster_config
from twisted_kv.wire import codec

def _call(work: Any) -> Any:
    return work()


_STATE = (7, "n2", 3, 6, [1, [[2, 3]]], 3)


class RecordTests(SynchronousTestCase):
    """
    The records' encoding.
    """

    def test_consensus_round_trip(self) -> None:
        """
        A consensus state decodes to what was encoded.
        """
        self.assertEqual(decode_consensus(encode_consensus(_STATE)), _STATE)

    def test_bad_consensus_record(self) -> None:
        """
        A payload that is not a consensus state, or not msgpack, is refused.
        """
        self.assertRaises(ValueError, decode_consensus, codec.encode([1, 2]))
        self.assertRaises(ValueError, decode_consensus, b"\xc1")


class NodeDiskTests(SynchronousTestCase):
    """
    L{NodeDisk} recovers what was saved.
    """

    def open(self, fs: CrashableFileSystem, policy: str = "always") -> NodeDisk:
        return NodeDisk.open(fs, "/data/n1", policy, run_now, Clock(), 4, _call)

    def test_empty(self) -> None:
        """
        A new directory holds nothing.
        """
        disk = self.open(CrashableFileSystem())
        self.assertEqual((disk.recovered.consensus, disk.recovered.records), (None, 0))

    def test_consensus_survives_power_cut(self) -> None:
        """
        The last consensus state saved is found after a power cut, whatever
        the policy: it is synced before its Deferred fires.
        """
        for policy in ("always", "everysec", "never"):
            for seed in range(5):
                fs = CrashableFileSystem()
                clock = Clock()
                disk = NodeDisk.open(fs, "/data/n1", policy, run_now, clock, 4, _call)
                saved = []
                disk.save_consensus((1, None, 0, 0, None, 0)).addCallback(saved.append)
                disk.save_consensus(_STATE).addCallback(saved.append)
                clock.advance(0)
                clock.advance(0)
                self.assertEqual(saved, [None, None])
                crashed = fs.crash(random.Random(seed))
                self.assertEqual(self.open(crashed).recovered.consensus, _STATE, (policy, seed))

    def test_unreadable_record(self) -> None:
        """
        A record whose checksum holds but that cannot be decoded is damage:
        the directory is moved aside, with one line naming it and the
        record, and the node starts from an empty one.
        """
        fs = CrashableFileSystem()
        log = Log(fs, "/data/n1")
        list(log.replay())
        log.append(CONSENSUS, b"\x01")
        log.commit()
        with capturedLogs() as events:
            disk = self.open(fs)
        self.assertEqual((disk.recovered.consensus, disk.recovered.records), (None, 0))
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("/data/n1 at offset 0: record 1 unreadable", lines[0])
        self.assertIn("moved /data/n1 to /data/n1.damaged-1", lines[0])
        self.assertEqual(fs.listdir("/data"), ["n1", "n1.damaged-1"])
        self.assertEqual(len(fs.listdir("/data/n1.damaged-1")), 1)

    def test_damaged_again(self) -> None:
        """
        Damage found again goes beside the first one set aside.
        """
        fs = CrashableFileSystem()
        for _ in range(2):
            log = Log(fs, "/data/n1")
            list(log.replay())
            log.append(CONSENSUS, b"\x01")
            log.commit()
            self.open(fs)
        self.assertEqual(fs.listdir("/data"), ["n1", "n1.damaged-1", "n1.damaged-2"])


class _Recorder:
    """
    A messenger that records what is sent.
    """

    def __init__(self, sent: list) -> None:
        self.sent = sent

    def send(self, peer: str, message: list) -> bool:
        self.sent.append((peer, message))
        return True

    def connected(self) -> set[str]:
        return set()

    def hears_from(self, peer: str) -> bool:
        return True


class NodeConsensusTests(SynchronousTestCase):
    """
    A node with a data directory sends nothing that follows a change of its
    consensus state until that state is on disk.
    """

    def test_vote_waits_for_the_disk(self) -> None:
        """
        A vote is answered only once the new term and vote are synced.
        """
        config = cluster_config(3, data_dir="/data")
        clock = Clock()
        clock.advance(1000)
        runner = HeldRunner()
        disk = NodeDisk.open(
            CrashableFileSystem(), "/data/n1", "always", runner, clock, config.partitions, _call
        )
        node = Node(
            config, "n1", clock=clock, incarnation=new_incarnation(1000, 1),
            rng=random.Random(0), disk=disk,
        )
        sent: list = []
        node.messenger = _Recorder(sent)
        clock.advance(config.election_timeout)
        node.peer_message("n2", 1, ["vote", 5, 0, 0])
        clock.advance(0)
        self.assertEqual(sent, [])
        self.assertEqual(len(runner.held), 1)
        runner.release()
        self.assertEqual(sent, [("n2", ["voted", 5, True])])


class MemberAnswerTests(SynchronousTestCase):
    """
    A member answers its primary only once the entries it acknowledges are
    on disk; an append that only moves the commit position costs no sync,
    and its answer waits for nothing new.
    """

    def test_commit_only_answer(self) -> None:
        """
        The answer to new entries waits for their sync; the answer to the
        commit of those entries goes out at once, and the record of that
        commit goes out with the next commit, at the latest after
        L{LAZY_WAIT}, so that a restart finds the entries applied.
        """
        config = cluster_config(3, data_dir="/data")
        clock = Clock()
        clock.advance(1000)
        runner = HeldRunner()
        fs = CrashableFileSystem()
        disk = NodeDisk.open(fs, "/data/n2", "always", runner, clock, config.partitions, _call)
        node = Node(
            config, "n2", clock=clock, incarnation=new_incarnation(1000, 1),
            rng=random.Random(0), disk=disk,
        )
        sent: list = []
        node.messenger = _Recorder(sent)
        version = make_version(1, 1)
        change = Change("put", user_key("k"), version, Record(b"v", "text/plain", version), True)
        entries = [encode_entry(Entry(1, 1, change, None))]
        node.peer_message("n1", 1, messages.append(5, 1, 0, 0, entries, 0, 1, 0))
        clock.advance(0)
        self.assertEqual((sent, len(runner.held)), ([], 1))
        runner.release()
        self.assertEqual(sent, [("n1", messages.append_ok(5, 1, 1, 1, True))])
        node.peer_message("n1", 1, messages.append(5, 1, 1, 1, [], 1, 2, 0))
        clock.advance(0)
        self.assertEqual(sent[1:], [("n1", messages.append_ok(5, 1, 1, 2, True))])
        self.assertEqual(runner.held, [])
        clock.advance(LAZY_WAIT)
        self.assertEqual(len(runner.held), 1)
        runner.release()
        crashed = fs.crash(random.Random(0))
        again = NodeDisk.open(crashed, "/data/n2", "always", run_now, clock, config.partitions, _call)
        replica = again.recovered.replicas[5]
        self.assertEqual(replica.commit_seq, 1)
        self.assertEqual(replica.store.get(user_key("k")), change.record)


class CrashTests(SynchronousTestCase):
    """
    Whole clusters of nodes with data directories lose their power.
    """

    def test_every_node_crashes(self) -> None:
        """
        After a power cut of every node, each comes back with at least the
        term it had answered in, and a leader is elected again.
        """
        for seed in range(3):
            cluster = MemoryCluster(3, seed=seed, disks=True)
            cluster.settle()
            terms = {n: node.term for n, node in cluster.nodes.items()}
            for node_id in list(cluster.nodes):
                cluster.crash(node_id)
            for node_id in terms:
                node = cluster.start(node_id)
                self.assertGreaterEqual(node.term, terms[node_id])
            cluster.settle()
            cluster.stop()


class IncarnationTests(SynchronousTestCase):
    """
    A node restarted with its data keeps its incarnation unless it may
    have lost acknowledged entries.
    """

    def restart(self, fs: CrashableFileSystem, policy: str, boot: str, clean: bool) -> int:
        """
        Start a node on C{fs}, stop it (cleanly or not), start it again on
        C{boot}; return whether it kept its incarnation.
        """
        clock = Clock()
        first = NodeDisk.open(fs, "/d", policy, run_now, clock, 1, _call)
        incarnation = first.incarnation(100, "boot A")
        clock.advance(0)
        if clean:
            first.stop()
            clock.advance(0)
            clock.advance(0)
        second = NodeDisk.open(fs, "/d", policy, run_now, Clock(), 1, _call)
        self.assertEqual(second.run, 2)
        return second.incarnation(200, boot) == incarnation

    def test_policies(self) -> None:
        """
        Kept with C{always}, after a clean stop, or on the same boot; new
        after an unclean stop on another boot under C{everysec} or
        C{never}.
        """
        cases = {
            ("always", "boot B", False): True,
            ("everysec", "boot A", False): True,
            ("everysec", "boot B", True): True,
            ("everysec", "boot B", False): False,
            ("never", "boot B", False): False,
        }
        for (policy, boot, clean), kept in cases.items():
            fs = CrashableFileSystem()
            self.assertEqual(self.restart(fs, policy, boot, clean), kept, (policy, boot, clean))


class GateTests(SynchronousTestCase):
    """
    L{DurableGate} sends in order, each message after what it follows is
    durable.
    """

    def test_order(self) -> None:
        """
        Messages wait for the records before them, in order; a failed
        record's messages, and those queued behind them, are never sent.
        """
        sent: list = []
        gate = DurableGate(sent.extend, "test records")
        first: Deferred[None] = Deferred()
        second: Deferred[None] = Deferred()
        gate.after(first, [("a", [1])])
        gate.send([("a", [2])])
        gate.after(second, [("b", [3])])
        gate.send([("b", [4])])
        second.callback(None)
        self.assertEqual(sent, [])
        first.callback(None)
        self.assertEqual(sent, [("a", [1]), ("a", [2]), ("b", [3]), ("b", [4])])
        third: Deferred[None] = Deferred()
        gate.after(third, [("c", [5])])
        gate.send([("c", [6])])
        third.errback(WriteFailed("no"))
        self.flushLoggedErrors()
        gate.send([("d", [7])])
        self.assertEqual(sent[4:], [("d", [7])])


class CompactionTests(SynchronousTestCase):
    """
    A snapshot replaces the log so far; recovery from it and the log after
    it gives back the same state.
    """

    def test_due_at_a_fifth_of_the_live_data(self) -> None:
        """
        Past the minimum, a snapshot is due once the log since the last one
        holds a fifth of the live data, so that recovery replays little log.
        """
        disk = NodeDisk.open(CrashableFileSystem(), "/d", "always", run_now, Clock(), 2, _call)
        disk.compact_min_bytes = 1000
        disk.save_consensus(_STATE)
        logged = len(encode_consensus(_STATE))
        while logged <= 1000:
            disk.save_consensus(_STATE)
            logged += len(encode_consensus(_STATE))
        self.assertTrue(disk.compaction_due(live_bytes=5 * logged - 1))
        self.assertFalse(disk.compaction_due(live_bytes=5 * logged + 5))
        disk.compact_min_bytes = logged
        self.assertFalse(disk.compaction_due(live_bytes=0))

    def test_snapshot_and_tail(self) -> None:
        """
        Entries recorded before a snapshot, during it (before their
        partition's slice: covered by it, and skipped in the log) and after
        it all come back, once; the segments the snapshot covers are
        removed.
        """
        fs = CrashableFileSystem()
        clock = Clock()
        disk = NodeDisk.open(fs, "/d", "always", run_now, clock, 2, _call)
        disk.incarnation(5, "boot")
        disk.save_consensus(_STATE)
        primary = Replica(0)
        primary.durable_seq = 0
        primary.become_primary(1, [], [])
        logged = 0

        def write(key: str) -> None:
            nonlocal logged
            primary.propose(Put(key, b"v"), None, 0.0)
            prev, prev_epoch, entries = primary.entries_after(logged)
            logged = primary.last_seq
            disk.append_replica(
                APPEND, 0, [primary.epoch, prev, prev_epoch, entries, primary.commit_seq, 0]
            ).addCallback(lambda _, seq=logged: primary.mark_durable(seq, 1))

        for i in range(5):
            write(f"a{i}")
        clock.advance(0)
        disk.compact([primary, Replica(1)])
        write("during")
        for _ in range(5):
            clock.advance(0)
        write("after")
        for _ in range(3):
            clock.advance(0)
        names = fs.listdir("/d")
        self.assertEqual(len([n for n in names if n.endswith(".snap")]), 1, names)
        self.assertNotIn("00000000000000000000.log", names)
        again = NodeDisk.open(fs, "/d", "always", run_now, Clock(), 2, _call)
        recovered = again.recovered.replicas[0]
        # "after" was recorded before it was committed: it is in the log
        self.assertEqual(
            sorted(recovered.store.keys()), sorted([f"a{i}" for i in range(5)] + ["during"])
        )
        self.assertEqual((recovered.last_seq, recovered.commit_seq), (7, 6))
        self.assertIsNotNone(recovered.newest("after"))
        # the recovery's line counts it too
        self.assertEqual(again.recovered.keys(), 7)
        self.assertEqual(
            again.recovered.bytes(),
            recovered.store.bytes_used + record_cost("after", Record(b"v", "", 0)),
        )
        self.assertEqual(again.recovered.consensus, _STATE)
        self.assertEqual(again.recovered.identity.incarnation, 5)
        self.assertEqual(again.run, 2)


class SnapshotChunkTests(SynchronousTestCase):
    """
    A snapshot's chunks are built in the reactor thread, small, one a turn:
    the writer's thread holds the interpreter lock for no Python work.
    """

    def test_chunks_in_reactor(self) -> None:
        """
        Every chunk of a store is built and encoded inside a call into the
        reactor, one chunk a call, each about L{SNAPSHOT_CHUNK_BYTES}; the
        snapshot gives the store back.
        """
        self.patch(replica_module, "SNAPSHOT_CHUNK_BYTES", 300)
        in_reactor = [False]
        calls: list[int] = []
        built_outside: list[int] = []

        def call(work: Any) -> Any:
            in_reactor[0] = True
            try:
                calls.append(1)
                return work()
            finally:
                in_reactor[0] = False

        real = replica_module.encode_records

        def encode_records(records: Any) -> list:
            encoded = real(records)
            if not in_reactor[0]:
                built_outside.append(len(encoded))
            return encoded

        self.patch(replica_module, "encode_records", encode_records)
        fs = CrashableFileSystem()
        clock = Clock()
        disk = NodeDisk.open(fs, "/d", "always", run_now, clock, 1, call)
        replica = Replica(0)
        replica.restore_keys(
            [[f"key {i:03}", b"v" * 90, "", make_version(1, i + 1), None] for i in range(10)]
        )
        calls.clear()
        done = disk.compact([replica])
        for _ in range(3):
            clock.advance(0)
        self.successResultOf(done)
        self.assertEqual(built_outside, [])
        # the state, three chunks (4, 4 and 2 keys of 97 bytes), the end
        self.assertEqual(len(calls), 1 + 3 + 1)
        again = NodeDisk.open(fs, "/d", "always", run_now, Clock(), 1, _call)
        recovered = again.recovered.replicas[0]
        self.assertEqual(sorted(recovered.store.keys()), [f"key {i:03}" for i in range(10)])


class TornTailTests(SynchronousTestCase):
    """
    A crash in the middle of a write leaves a torn last record: dropped,
    and logged.
    """

    def test_torn_tail_dropped_and_logged(self) -> None:
        """
        The records before the torn one are recovered, and one line names
        the file and what was dropped.
        """
        fs = CrashableFileSystem()
        clock = Clock()
        disk = NodeDisk.open(fs, "/d", "always", run_now, clock, 1, _call)
        disk.save_consensus(_STATE)
        clock.advance(0)
        segment = "/d/" + sorted(fs.listdir("/d"))[0]
        tail = fs.open_append(segment)
        tail.write(encode_record(CONSENSUS, encode_consensus(_STATE))[:-3])
        tail.sync()
        with capturedLogs() as events:
            again = NodeDisk.open(fs, "/d", "always", run_now, Clock(), 1, _call)
        self.assertEqual(again.recovered.consensus, _STATE)
        lines = [formatEvent(e) for e in events if "torn" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(segment, lines[0])
