# -*- test-case-name: tests.test_storage_snapshot -*-
"""
Tests for L{twisted_kv.storage.snapshot} and L{twisted_kv.storage.recovery}.
"""

from __future__ import annotations

import errno
import random
from typing import Iterator

from hypothesis import given
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.errors import DiskFull, SnapshotCorrupt
from twisted_kv.storage import snapshot
from twisted_kv.storage.fs import OSFileSystem
from twisted_kv.storage.recovery import Storage
from twisted_kv.storage.snapshot import SnapshotFile, Snapshots, snapshot_name
from twisted_kv.storage.testing import CrashableFileSystem, Fault
from tests.strategies import storage_records

DIRECTORY = "data/n1"



def _rewrite(fs: CrashableFileSystem, path: str, data: bytes) -> None:
    fs.remove(path)
    file = fs.create(path)
    file.write(data)
    file.sync()


class SnapshotTests(SynchronousTestCase):
    """
    Writing and reading snapshots.
    """

    @given(storage_records)
    def test_round_trip(self, written: list[tuple[int, bytes]]) -> None:
        """
        A snapshot reads back its records, in order.
        """
        snapshots = Snapshots(CrashableFileSystem(), DIRECTORY)
        found = snapshots.write(3, iter(written))
        self.assertEqual(found, SnapshotFile(f"{DIRECTORY}/{snapshot_name(3)}", 3))
        self.assertEqual(snapshots.latest(), found)
        self.assertEqual(list(snapshots.read(found)), written)

    def test_streamed(self) -> None:
        """
        Records are written in chunks as they come, not gathered first, and
        read back in chunks; records larger than a chunk work.
        """
        self.patch(snapshot, "CHUNK", 64)
        fs = CrashableFileSystem()
        writes = fs.inject(Fault("write", errno.EIO, after=2**62))
        produced = []

        def produce() -> Iterator[tuple[int, bytes]]:
            for i in range(20):
                produced.append(writes.seen)
                yield 1, b"%02d" % i * (50 if i == 7 else 5)

        snapshots = Snapshots(fs, DIRECTORY)
        found = snapshots.write(0, produce())
        self.assertGreater(produced[-1], 2)
        reads = fs.inject(Fault("read", errno.EIO, after=2**62))
        self.assertEqual(
            list(snapshots.read(found)),
            [(1, b"%02d" % i * (50 if i == 7 else 5)) for i in range(20)],
        )
        self.assertGreater(reads.seen, 10)

    def test_durable(self) -> None:
        """
        Once written, a snapshot survives any crash; older snapshots are
        gone for good.
        """
        fs = CrashableFileSystem()
        snapshots = Snapshots(fs, DIRECTORY)
        snapshots.write(1, [(1, b"old")])
        new = snapshots.write(2, [(1, b"new")])
        for seed in range(30):
            crashed = Snapshots(fs.crash(random.Random(seed)), DIRECTORY)
            self.assertEqual(crashed.latest(), new)
            self.assertEqual(list(crashed.read(new)), [(1, b"new")])
            self.assertEqual(crashed.fs.listdir(DIRECTORY), [snapshot_name(2)])

    def test_flipped_byte(self) -> None:
        """
        Any flipped byte makes reading raise L{SnapshotCorrupt} naming the
        file, before a single record is returned.
        """
        fs = CrashableFileSystem()
        snapshots = Snapshots(fs, DIRECTORY)
        found = snapshots.write(0, [(1, b"abc"), (2, b"defgh")])
        data = fs.read(found.path)
        for offset in range(len(data)):
            damaged = bytearray(data)
            damaged[offset] ^= 1
            _rewrite(fs, found.path, bytes(damaged))
            error = self.assertRaises(SnapshotCorrupt, snapshots.read, found)
            self.assertEqual(error.path, found.path)

    def test_truncated(self) -> None:
        """
        A truncated snapshot is corrupt.
        """
        fs = CrashableFileSystem()
        snapshots = Snapshots(fs, DIRECTORY)
        found = snapshots.write(0, [(1, b"abc")])
        data = fs.read(found.path)
        for size in range(len(data)):
            _rewrite(fs, found.path, data[:size])
            self.assertRaises(SnapshotCorrupt, snapshots.read, found)

    def test_misnamed(self) -> None:
        """
        A snapshot under another snapshot's name is corrupt.
        """
        fs = CrashableFileSystem()
        snapshots = Snapshots(fs, DIRECTORY)
        found = snapshots.write(1, [(1, b"abc")])
        fs.rename(found.path, f"{DIRECTORY}/{snapshot_name(2)}")
        self.assertRaises(SnapshotCorrupt, snapshots.read, snapshots.latest())

    def test_leftover_temporary(self) -> None:
        """
        A temporary file left by a crash mid-write is not a snapshot, and
        is removed.
        """
        fs = CrashableFileSystem()
        snapshots = Snapshots(fs, DIRECTORY)
        snapshots.write(1, [(1, b"abc")])
        fs.create(f"{DIRECTORY}/{snapshot_name(2)}.tmp").write(b"partial")
        self.assertEqual(snapshots.latest(), SnapshotFile(f"{DIRECTORY}/{snapshot_name(1)}", 1))
        self.assertEqual(fs.listdir(DIRECTORY), [snapshot_name(1)])

    def test_disk_full(self) -> None:
        """
        No space for a snapshot raises L{DiskFull}; the older snapshot
        stays and the temporary file is removed.
        """
        fs = CrashableFileSystem()
        snapshots = Snapshots(fs, DIRECTORY)
        old = snapshots.write(1, [(1, b"abc")])
        fs.inject(Fault("write", errno.ENOSPC))
        self.assertRaises(DiskFull, snapshots.write, 2, [(1, b"def")])
        self.assertEqual(snapshots.latest(), old)
        self.assertEqual(fs.listdir(DIRECTORY), [snapshot_name(1)])

    def test_bad_records(self) -> None:
        """
        A record that cannot be stored, or an error from the records given,
        leaves nothing behind.
        """
        fs = CrashableFileSystem()
        snapshots = Snapshots(fs, DIRECTORY)

        def failing() -> Iterator[tuple[int, bytes]]:
            yield 1, b"a"
            raise ZeroDivisionError()

        self.assertRaises(ValueError, snapshots.write, 1, [(256, b"")])
        self.assertRaises(ZeroDivisionError, snapshots.write, 1, failing())
        self.assertEqual(fs.listdir(DIRECTORY), [])
        self.assertIsNone(snapshots.latest())

    def test_os(self) -> None:
        """
        On the real file system too.
        """
        snapshots = Snapshots(OSFileSystem(), self.mktemp())
        found = snapshots.write(5, [(1, b"abc"), (2, b"")])
        self.assertEqual(snapshots.latest(), found)
        self.assertEqual(list(snapshots.read(found)), [(1, b"abc"), (2, b"")])


class StorageTests(SynchronousTestCase):
    """
    L{Storage}: a snapshot plus the log after it.
    """

    def test_compact(self) -> None:
        """
        After a compaction, recovery reads the snapshot, then the records
        committed after it; the covered segments are gone.
        """
        fs = CrashableFileSystem()
        storage = Storage.at(fs, DIRECTORY, segment_bytes=40)
        self.assertEqual(list(storage.recover()), [])
        for i in range(5):
            storage.log.append(1, b"record %d" % i)
            storage.log.commit()
        storage.log.append(1, b"pending")
        found = storage.compact([(2, b"state")])
        storage.log.commit()
        self.assertEqual(found.covers, 3)
        self.assertEqual(fs.listdir(DIRECTORY), ["00000000000000000003.log", snapshot_name(3)])
        again = Storage.at(fs.crash(random.Random(0)), DIRECTORY)
        self.assertEqual(list(again.recover()), [(2, b"state"), (1, b"pending")])
        self.assertEqual(again.snapshot, found)

    def test_damaged_snapshot(self) -> None:
        """
        Recovery with a damaged snapshot raises L{SnapshotCorrupt} before
        yielding anything.
        """
        fs = CrashableFileSystem()
        storage = Storage.at(fs, DIRECTORY)
        list(storage.recover())
        found = storage.compact([(2, b"state")])
        _rewrite(fs, found.path, fs.read(found.path)[:-1] + b"\x00")
        recovered = []
        with self.assertRaises(SnapshotCorrupt):
            for record in Storage.at(fs, DIRECTORY).recover():
                recovered.append(record)
        self.assertEqual(recovered, [])
