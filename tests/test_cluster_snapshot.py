# -*- test-case-name: tests.test_cluster_snapshot -*-
"""
Tests for partition dumps and restores through the cluster
(L{twisted_kv.cluster.coordinator.Coordinator.dump_page} and
L{twisted_kv.cluster.coordinator.Coordinator.restore}, run by
L{twisted_kv.cluster.operations.ClientOperations.dump_local} and
L{twisted_kv.cluster.operations.ClientOperations.restore_local} at each
partition's primary), on a L{MemoryCluster}.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.test_cluster import ClusterTestMixin, _outcome
from twisted_kv.core import messages
from twisted_kv.core.backup import DUMP_IDLE_SECONDS, BackupRecord, DumpPage
from twisted_kv.core.keyspace import file_key, name_of, user_key
from twisted_kv.core.records import format_version, parse_version
from twisted_kv.errors import InvalidRequest, SnapshotExpired, ValueTooLarge
from twisted_kv.interfaces import ISnapshotSource


class DumpTests(ClusterTestMixin, SynchronousTestCase):
    """
    Each partition is dumped by its primary, as of one moment.
    """

    def setUp(self) -> None:
        self.make_cluster(3)
        self.cluster.settle()

    def dump(self, via: str, partition: int, limit: int = 1000) -> tuple[DumpPage, list[BackupRecord]]:
        """
        Every page of a new dump of C{partition} through node C{via}: the
        first page and all the records.
        """
        coordinator = self.cluster.coordinators[via]
        first = page = self.wait(coordinator.dump_page(partition, None, None, limit))
        records = list(page.records)
        while page.next is not None:
            page = self.wait(coordinator.dump_page(partition, page.dump_id, page.next, limit))
            records += page.records
        return first, records

    def dump_all(self, via: str, limit: int = 1000) -> list[BackupRecord]:
        records = []
        for partition in range(self.cluster.coordinators[via].partition_count()):
            records += self.dump(via, partition, limit)[1]
        return records

    def test_interface(self) -> None:
        """
        The coordinator is an L{ISnapshotSource} with as many partitions as
        the cluster file names.
        """
        coordinator = self.cluster.coordinators["n1"]
        verifyObject(ISnapshotSource, coordinator)
        self.assertEqual(coordinator.partition_count(), self.cluster.config.partitions)
        failure = self.wait(coordinator.dump_page(coordinator.partition_count(), None, None, 1))
        self.assertIsInstance(failure, Failure)
        failure.trap(InvalidRequest)

    def test_every_namespace_with_type_and_ttl(self) -> None:
        """
        A dump through any node holds the client keys and the file
        system's records, each once, with its value, content type, version
        and the time to live it has left; whichever node is each
        partition's primary.
        """
        coordinator = self.cluster.coordinators["n2"]
        written = {}
        for index in range(30):
            key = user_key(f"user/{index}") if index % 3 else file_key(f"c/ab/{index}")
            ttl = 50.0 if index % 5 == 0 else None
            result = self.wait(coordinator.put(key, b"v%d" % index, f"type/{index}", ttl))
            written[key] = (b"v%d" % index, f"type/{index}", result.version, ttl)
        self.cluster.run(10)
        records = self.dump_all("n3", limit=3)
        self.assertEqual(sorted(r.key for r in records), sorted(written))
        for record in records:
            value, content_type, version, ttl = written[record.key]
            self.assertEqual((record.value, record.content_type, record.version), (value, content_type, version))
            if ttl is None:
                self.assertIsNone(record.ttl)
            else:
                # less the ten seconds run, and the time the dump took
                self.assertTrue(ttl - 15 < record.ttl <= ttl - 10, record.ttl)
        primaries = {
            node.partition_config(partition).primary.node_id
            for node in [self.cluster.nodes["n3"]]
            for partition in range(self.cluster.config.partitions)
        }
        self.assertEqual(primaries, {"n1", "n2", "n3"})

    def test_prefix_state_under_writes(self) -> None:
        """
        A dump taken while writes go on holds, for its partition, exactly
        the state after the writes up to its C{as_of} version: every write
        acknowledged before it was asked for, none ordered after it, even
        for the writes made while its pages are fetched.
        """
        partition = 5
        node = self.cluster.nodes["n1"]
        keys = [k for k in (user_key(f"w{i}") for i in range(400)) if node.partition_of(k) == partition][:6]
        coordinators = list(self.cluster.coordinators.values())
        acknowledged: list[tuple[str, bytes, int]] = []
        in_flight = []
        counter = [0]

        def write() -> None:
            counter[0] += 1
            key = keys[counter[0] % len(keys)]
            value = b"%d" % counter[0]
            d = coordinators[counter[0] % 3].put(key, value)
            d.addCallback(lambda result: acknowledged.append((key, value, parse_version(result.version))))
            in_flight.append(d)

        for _ in range(20):
            write()
        self.cluster.run(0.5)
        before = list(acknowledged)
        self.assertTrue(before)
        pages: list[DumpPage] = []
        box = _outcome(self.cluster.coordinators["n2"].dump_page(partition, None, None, 1))
        while True:
            write()
            self.cluster.run(0.01)
            if not box:
                continue
            page = box.pop()
            self.assertIsInstance(page, DumpPage)
            pages.append(page)
            if page.next is None:
                break
            box = _outcome(self.cluster.coordinators["n3"].dump_page(partition, page.dump_id, page.next, 1))
        self.cluster.run(2)
        self.assertGreater(len(pages), 2)
        as_of = parse_version(pages[0].as_of)
        expected: dict[str, tuple[bytes, int]] = {}
        for key, value, version in sorted(acknowledged, key=lambda write: write[2]):
            if version <= as_of:
                expected[key] = (value, version)
        dumped = {r.key: (r.value, parse_version(r.version)) for page in pages for r in page.records}
        self.assertEqual(dumped, expected)
        for key, value, version in before:
            self.assertGreaterEqual(dumped[key][1], version)
        self.assertTrue(any(version > as_of for _, _, version in acknowledged))

    def test_primary_moves(self) -> None:
        """
        A dump whose primary is replaced between two pages is no longer
        held: the next page fails with L{SnapshotExpired}, and a new dump,
        from the new primary, holds every key.
        """
        coordinator = self.cluster.coordinators["n1"]
        partition = next(
            p for p in range(self.cluster.config.partitions)
            if self.cluster.nodes["n1"].partition_config(p).primary.node_id == "n3"
        )
        node = self.cluster.nodes["n1"]
        keys = [k for k in (user_key(f"m{i}") for i in range(800)) if node.partition_of(k) == partition][:4]
        for key in keys:
            self.wait(coordinator.put(key, b"v"))
        first = self.wait(coordinator.dump_page(partition, None, None, 1))
        self.assertIsNotNone(first.next)
        self.cluster.kill("n3")
        self.cluster.settle()
        failure = self.wait(coordinator.dump_page(partition, first.dump_id, first.next, 1))
        self.assertIsInstance(failure, Failure)
        failure.trap(SnapshotExpired)
        _, records = self.dump("n2", partition)
        self.assertEqual(sorted(r.key for r in records), sorted(keys))

    def test_dumps_forgotten_when_read(self) -> None:
        """
        A primary holds a dump only until its last page is served.
        """
        self.put("n1", "x", b"v")
        self.dump_all("n1", limit=1)
        self.assertEqual(sum(len(n.operations.dumps) for n in self.cluster.nodes.values()), 0)


    def test_abandoned_dump_forgotten(self) -> None:
        """
        A dump whose client stopped asking for pages is forgotten by its
        primary's tick once it has been idle long enough.
        """
        partition = 9
        node = self.cluster.nodes["n1"]
        keys = [k for k in (f"a{i}" for i in range(800)) if node.partition_of(user_key(k)) == partition][:2]
        for key in keys:
            self.put("n1", key, b"v")
        first = self.wait(self.cluster.coordinators["n1"].dump_page(partition, None, None, 1))
        self.assertIsNotNone(first.next)
        held = sum(len(n.operations.dumps) for n in self.cluster.nodes.values())
        self.assertEqual(held, 1)
        self.cluster.run(DUMP_IDLE_SECONDS + 1, step=0.5)
        self.assertEqual(sum(len(n.operations.dumps) for n in self.cluster.nodes.values()), 0)


class RestoreTests(ClusterTestMixin, SynchronousTestCase):
    """
    A restore batch through any node: each partition's records written in
    one go at its primary, replicated like writes.
    """

    def setUp(self) -> None:
        self.make_cluster(3)
        self.cluster.settle()

    def batch(self, count: int, value: bytes = b"v") -> list[BackupRecord]:
        return [
            BackupRecord(user_key(f"r/{index}"), value + b"%d" % index, f"t/{index}", "9.9",
                         30.0 if index % 7 == 0 else None)
            for index in range(count)
        ]

    def test_replicated_on_every_copy(self) -> None:
        """
        Every record of a batch spread over many partitions is written with
        its value, content type and time to live, and every member of its
        partition holds it once the batch is answered.
        """
        records = self.batch(200)
        coordinator = self.cluster.coordinators["n2"]
        self.assertEqual(self.wait(coordinator.restore(records, "b-1")), 200)
        node = self.cluster.nodes["n1"]
        partitions = {node.partition_of(record.key) for record in records}
        self.assertGreater(len(partitions), 40)
        for record in records:
            config = node.partition_config(node.partition_of(record.key))
            for member in config.members:
                replica = self.cluster.nodes[member.node_id].replicas[node.partition_of(record.key)]
                self.assertEqual(replica.newest(record.key).value, record.value, member)
            read = self.get("n3", name_of(record.key)).record
            self.assertEqual((read.value, read.content_type), (record.value, record.content_type))
            self.assertEqual(read.expires_at is not None, record.ttl is not None)

    def test_sent_again_writes_nothing_twice(self) -> None:
        """
        A batch sent again under its id, through another node, writes no
        record a second time: a write made since is not overwritten, and
        the other keys keep their versions.  Without an id, a batch is new
        writes.
        """
        records = self.batch(100)
        self.wait(self.cluster.coordinators["n1"].restore(records, "b-1"))
        versions = {r.key: self.get("n1", name_of(r.key)).record.version for r in records}
        self.put("n3", "r/5", b"newer")
        self.assertEqual(self.wait(self.cluster.coordinators["n2"].restore(records, "b-1")), 100)
        self.assertEqual(self.value_at("n1", "r/5"), b"newer")
        for record in records:
            if record.key != user_key("r/5"):
                version = self.get("n2", name_of(record.key)).record.version
                self.assertEqual(version, versions[record.key])
        self.wait(self.cluster.coordinators["n2"].restore(records))
        self.assertEqual(self.value_at("n1", "r/5"), b"v5")

    def test_sent_again_after_failover(self) -> None:
        """
        The primaries that take over from a dead one remember the
        operation ids of its restored records, as its members: the batch
        sent again writes none of them a second time.
        """
        records = self.batch(100)
        self.wait(self.cluster.coordinators["n1"].restore(records, "b-1"))
        moved = [r for r in records if self.primary_of(name_of(r.key)) == "n3"]
        self.assertTrue(moved)
        self.cluster.kill("n3")
        self.cluster.settle()
        self.assertNotEqual(self.primary_of(name_of(moved[0].key), via="n1"), "n3")
        self.put("n1", name_of(moved[0].key), b"newer")
        self.assertEqual(self.wait(self.cluster.coordinators["n2"].restore(records, "b-1")), 100)
        self.assertEqual(self.value_at("n2", name_of(moved[0].key)), b"newer")

    def test_refused_value(self) -> None:
        """
        A batch holding a value larger than the cluster allows writes
        nothing.
        """
        coordinator = self.cluster.coordinators["n1"]
        big = b"x" * (coordinator.max_value_bytes + 1)
        records = self.batch(3) + [BackupRecord(user_key("big"), big, "t", "1.1", None)]
        self.wait(coordinator.restore(records, "b-1")).trap(ValueTooLarge)
        self.assertIsNone(self.get("n1", "r/0").record)


class DumpMessageTests(SynchronousTestCase):
    """
    The peer message asking a primary for a page, and its answer.
    """

    def test_round_trip(self) -> None:
        """
        L{messages.DumpRequest} is parsed back into its fields, and a page
        survives L{messages.encode_dump_page} and L{messages.decode_dump_page}.
        """
        wire = messages.DumpRequest(3, "n1/2/3", "ka", 10, 4).to_wire(7)
        self.assertEqual(wire[0], messages.DUMP)
        self.assertEqual(messages.parse_dump(wire), (7, 3, "n1/2/3", "ka", 10, 4))
        page = DumpPage(
            3, "n1/2/3", format_version(5), 12.5,
            [BackupRecord("ka", b"\x00", "t", "0.5", 1.5), BackupRecord("fb", b"", "u", "0.4", None)],
            "fb",
        )
        self.assertEqual(messages.decode_dump_page(messages.encode_dump_page(page)), page)

