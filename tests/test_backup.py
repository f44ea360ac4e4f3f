# -*- test-case-name: tests.test_backup -*-
"""
Tests for L{twisted_kv.core.backup}: partition dumps as of one moment, and
the snapshot file format, refused whole when damaged.
"""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core.backup import (
    DUMP_IDLE_SECONDS,
    HEADER,
    MAX_DUMPS,
    PAGE_BYTES,
    BackupRecord,
    BadSnapshot,
    DumpExpired,
    Dumps,
    PartitionMark,
    SnapshotWriter,
    Summary,
    read_snapshot,
    records_of,
    verify,
)
from twisted_kv.core.memstore import MemStore
from twisted_kv.core.records import Change, Record, make_version
from twisted_kv.files import is_lease_key, is_stored_file, provisional_lease, restore_phase
from twisted_kv.files._records import COMMITTED, UPLOADING, Lease, Manifest, Tombstone


def _put(store: MemStore, key: str, value: bytes, seq: int, expires_at: float | None = None) -> None:
    version = make_version(1, seq)
    store.apply(Change("put", key, version, Record(value, "text/plain", version, expires_at)))


RECORDS = [
    BackupRecord("ka", b"one", "text/plain", "1.1", None),
    BackupRecord("kb\n\u00e9", b"\x00\xff\n", "application/octet-stream", "1.2", 12.5),
    BackupRecord("fc/0a/0", b"chunk", "application/octet-stream", "1.3", None),
    BackupRecord("fm1/x", b"{}", "application/json", "1.4", None),
]


def _snapshot(records: list[BackupRecord] = RECORDS) -> bytes:
    stream = io.BytesIO()
    writer = SnapshotWriter(stream)
    writer.begin_partition(0, "1.4", 100.0)
    for record in records[:2]:
        writer.add(record)
    writer.begin_partition(1, "1.9", 101.0)
    for record in records[2:]:
        writer.add(record)
    writer.finish()
    return stream.getvalue()


class DumpTests(SynchronousTestCase):
    """
    A primary's dumps hold the partition as it was when taken, page by page.
    """

    def test_dump_is_a_moment(self) -> None:
        """
        Writes after a dump is taken, to keys already paged or not, change
        nothing in it; its records come in key order, a page at a time, and
        the last page forgets the dump.
        """
        store = MemStore()
        for index in range(5):
            _put(store, f"k{index}", b"old", index + 1)
        dumps = Dumps("n1/1")
        dump = dumps.take(7, make_version(1, 5), store, 1000.0)
        _put(store, "k0", b"new", 6)
        _put(store, "k4", b"new", 7)
        _put(store, "k9", b"new", 8)
        store.apply(Change("delete", "k2", make_version(1, 9), None))
        seen = []
        page = dumps.page(7, dump.dump_id, None, 2, 1000.0)
        self.assertEqual((page.partition, page.as_of), (7, "1.5"))
        while True:
            seen += [(r.key, r.value) for r in page.records]
            if page.next is None:
                break
            page = dumps.page(7, dump.dump_id, page.next, 2, 1000.0)
        self.assertEqual(seen, [(f"k{i}", b"old") for i in range(5)])
        self.assertEqual(len(dumps), 0)
        self.assertRaises(DumpExpired, dumps.page, 7, dump.dump_id, None, 2, 1000.0)

    def test_pages_bounded_by_bytes(self) -> None:
        """
        A page ends once its values reach L{PAGE_BYTES}, whatever the limit:
        it goes past it by one record at most.
        """
        store = MemStore()
        big = b"x" * (PAGE_BYTES // 2)
        for index in range(5):
            _put(store, f"k{index}", big, index + 1)
        _put(store, "k9", b"x" * (PAGE_BYTES * 2), 6)
        dumps = Dumps("n1/1")
        dump = dumps.take(0, 6, store, 0.0)
        sizes = []
        after = None
        while True:
            page = dumps.page(0, dump.dump_id, after, 1000, 0.0)
            sizes.append(len(page.records))
            if page.next is None:
                break
            after = page.next
        self.assertEqual(sizes, [2, 2, 2])

    def test_ttl_remaining(self) -> None:
        """
        A record keeps the time it had left when the dump was taken; one
        already expired then is left out.
        """
        store = MemStore()
        _put(store, "a", b"v", 1, expires_at=1030.0)
        _put(store, "b", b"v", 2, expires_at=999.0)
        _put(store, "c", b"v", 3)
        dumps = Dumps("n1/1")
        dump = dumps.take(0, make_version(1, 3), store, 1000.0)
        page = dumps.page(0, dump.dump_id, None, 10, 1000.0)
        self.assertEqual([(r.key, r.ttl) for r in page.records], [("a", 30.0), ("c", None)])

    def test_idle_and_surplus_dumps_forgotten(self) -> None:
        """
        A dump nobody asked for in L{DUMP_IDLE_SECONDS} is forgotten, and so
        is the least recently used one beyond L{MAX_DUMPS}; a dump is only
        served for its own partition.
        """
        store = MemStore()
        _put(store, "a", b"v", 1)
        _put(store, "b", b"v", 2)
        dumps = Dumps("n1/1")
        idle = dumps.take(0, 2, store, 0.0)
        self.assertRaises(DumpExpired, dumps.page, 1, idle.dump_id, None, 1, 0.0)
        self.assertRaises(DumpExpired, dumps.page, 0, idle.dump_id, None, 1, DUMP_IDLE_SECONDS + 1)
        taken = [dumps.take(0, 2, store, 100.0 + i / 1000) for i in range(MAX_DUMPS + 1)]
        self.assertEqual(len(dumps), MAX_DUMPS)
        self.assertRaises(DumpExpired, dumps.page, 0, taken[0].dump_id, None, 1, 101.0)
        self.assertEqual(len(dumps.page(0, taken[1].dump_id, None, 1, 101.0).records), 1)


class FormatTests(SynchronousTestCase):
    """
    The snapshot file: written and read back as a stream, refused whole,
    with one line saying why, when anything is wrong.
    """

    def test_round_trip(self) -> None:
        """
        Markers and records come back in file order, then the summary.
        """
        items = list(read_snapshot(io.BytesIO(_snapshot())))
        self.assertEqual(
            items,
            [
                PartitionMark(0, "1.4", 100.0),
                *RECORDS[:2],
                PartitionMark(1, "1.9", 101.0),
                *RECORDS[2:],
                Summary(partitions=2, records=4, keys=2, file_records=2, value_bytes=13),
            ],
        )
        self.assertTrue(_snapshot().startswith(HEADER))

    @given(
        st.lists(
            st.builds(
                BackupRecord,
                st.sampled_from("kf").flatmap(lambda ns: st.text(min_size=1).map(lambda k: ns + k)),
                st.binary(),
                st.text(),
                st.just("1.1"),
                st.none() | st.floats(min_value=0.001, max_value=1e9),
            )
        )
    )
    def test_round_trip_any_records(self, records: list[BackupRecord]) -> None:
        """
        Any keys, values and content types come back as they were written.
        """
        stream = io.BytesIO()
        writer = SnapshotWriter(stream)
        writer.begin_partition(0, "1.1", 0.0)
        for record in records:
            writer.add(record)
        summary = writer.finish()
        stream.seek(0)
        self.assertEqual(list(records_of(stream)), records)
        stream.seek(0)
        self.assertEqual(verify(stream), summary)

    def test_restart_partition(self) -> None:
        """
        A partition begun again leaves no trace of its first attempt, in the
        contents, the summary or the checksum.
        """
        stream = io.BytesIO()
        writer = SnapshotWriter(stream)
        writer.begin_partition(0, "1.1", 0.0)
        writer.add(RECORDS[0])
        writer.begin_partition(1, "1.1", 0.0)
        writer.add(RECORDS[1])
        writer.restart_partition()
        writer.begin_partition(1, "2.1", 1.0)
        writer.add(RECORDS[2])
        writer.finish()
        stream.seek(0)
        items = list(read_snapshot(stream))
        self.assertEqual(
            items[:-1],
            [PartitionMark(0, "1.1", 0.0), RECORDS[0], PartitionMark(1, "2.1", 1.0), RECORDS[2]],
        )
        self.assertEqual(items[-1].records, 2)

    def assertRefused(self, data: bytes, message: str) -> None:
        with self.assertRaises(BadSnapshot) as caught:
            verify(io.BytesIO(data))
        self.assertIn(message, str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_truncated(self) -> None:
        """
        A file cut anywhere is refused.
        """
        data = _snapshot()
        for length in range(len(data)):
            with self.assertRaises(BadSnapshot, msg=length):
                verify(io.BytesIO(data[:length]))
        self.assertRefused(data[: data.index(b'{"end"')], "truncated")
        self.assertRefused(data[: data.index(b"SHA256")], "checksum line is missing")

    def test_flipped_byte(self) -> None:
        """
        A file with any one byte changed is refused.
        """
        data = _snapshot()
        for offset in range(len(data)):
            damaged = bytearray(data)
            damaged[offset] ^= 0x01
            with self.assertRaises(BadSnapshot, msg=offset):
                verify(io.BytesIO(bytes(damaged)))
        middle = data.index(b"b25l")  # "one" in base64
        self.assertRefused(data[:middle] + b"b25m" + data[middle + 4 :], "checksum does not match")

    def test_trailing_bytes(self) -> None:
        """
        Bytes after the checksum are damage too.
        """
        self.assertRefused(_snapshot() + b"x", "checksum does not match")

    def test_wrong_magic(self) -> None:
        """
        A file of another kind, or of another format version, is refused
        at its first line.
        """
        self.assertRefused(b"PK\x03\x04 not a snapshot\n", "wrong magic")
        self.assertRefused(b"", "wrong magic")
        self.assertRefused(_snapshot().replace(HEADER, b"TWISTED-KV-SNAPSHOT 9\n"), "unsupported")

    def test_records_checked_before_checksum(self) -> None:
        """
        A line that is no record is refused where it is, whatever follows.
        """
        data = _snapshot().replace(b'"ns":"k"', b'"ns":7', 1)
        self.assertRefused(data, "damaged at line 3")


class RestorePhaseTests(SynchronousTestCase):
    """
    L{restore_phase} writes a file's contents before what makes it visible,
    and its saved lease last, a provisional one standing in until then.
    """

    def test_order(self) -> None:
        """
        Client keys and chunks first, then directories, manifests, leases.
        """
        keys = ["fm2/a/b", "kfm", "fd1/a", "fu/0a", "fc/0a/1"]
        self.assertEqual(sorted(keys, key=restore_phase), ["kfm", "fc/0a/1", "fd1/a", "fm2/a/b", "fu/0a"])
        self.assertEqual([is_lease_key(k) for k in keys], [False, False, False, True, False])

    def test_provisional_lease(self) -> None:
        """
        A provisional lease keeps the saved one's paths, as an upload being
        written now; an unreadable lease is left as it is.
        """
        saved = Lease("/a", COMMITTED, 5.0, "/b").encode()
        self.assertEqual(Lease.decode(provisional_lease(saved, 1000.0)), Lease("/a", UPLOADING, 1000.0, "/b"))
        self.assertEqual(provisional_lease(b"junk", 1000.0), b"junk")

    def test_stored_file(self) -> None:
        """
        A manifest is a file; a tombstone, a directory or a chunk is not.
        """
        manifest = Manifest(10, 5.0, "0a", 1024, "0" * 64).encode()
        self.assertTrue(is_stored_file("fm1/a", manifest))
        self.assertFalse(is_stored_file("fm1/a", Tombstone(10).encode()))
        self.assertFalse(is_stored_file("fm1/a", b"junk"))
        self.assertFalse(is_stored_file("fd1/a", manifest))
        self.assertFalse(is_stored_file("km1/a", manifest))
