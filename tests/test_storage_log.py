# -*- test-case-name: tests.test_storage_log -*-
"""
Tests for L{twisted_kv.storage.log}.
"""

from __future__ import annotations

import errno
import random
import struct
import zlib

from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.errors import DiskFull, LogCorrupt, LogFailed, WriteFailed
from twisted_kv.storage import log as log_module
from twisted_kv.storage.fs import OSFileSystem
from twisted_kv.storage.log import (
    HEADER_SIZE,
    Log,
    Scan,
    encode_record,
    segment_name,
    segment_number,
)
from twisted_kv.storage.testing import CrashableFileSystem, Fault

DIRECTORY = "data/n1"


def _segment(number: int) -> str:
    return f"{DIRECTORY}/{segment_name(number)}"


def _open(
    fs: CrashableFileSystem, segment_bytes: int = 1000, reserve_bytes: int = 0
) -> tuple[Log, list[tuple[int, bytes]]]:
    """
    A log replayed, by default without zeros written ahead, so that its
    files hold exactly its records.
    """
    log = Log(fs, DIRECTORY, segment_bytes, reserve_bytes)
    return log, list(log.replay())


def _counter(fs: CrashableFileSystem, operation: str) -> Fault:
    """
    A fault that never fires, to count calls.
    """
    return fs.inject(Fault(operation, errno.EIO, after=2**62))


def _corrupt(fs: CrashableFileSystem, path: str, offset: int) -> None:
    """
    Flip a byte of C{path}, durably.
    """
    data = bytearray(fs.read(path))
    data[offset] ^= 0x40
    fs.remove(path)
    file = fs.create(path)
    file.write(bytes(data))
    file.sync()
    fs.sync_dir(DIRECTORY)


class FormatTests(SynchronousTestCase):
    """
    The record format and the segment names.
    """

    def test_record(self) -> None:
        """
        A record is its payload's length, the CRC-32 of type and payload,
        the type, and the payload.
        """
        self.assertEqual(
            encode_record(7, b"abc"),
            struct.pack("<IIB", 3, zlib.crc32(b"\x07abc"), 7) + b"abc",
        )
        self.assertEqual(HEADER_SIZE, 9)

    def test_bad_records(self) -> None:
        """
        Types are bytes.
        """
        self.assertRaises(ValueError, encode_record, 256, b"")
        self.assertRaises(ValueError, encode_record, -1, b"")

    def test_names(self) -> None:
        """
        Segment names are twenty digits and C{.log}; other names are not
        segments.
        """
        self.assertEqual(segment_name(12), "00000000000000000012.log")
        self.assertEqual(segment_number("00000000000000000012.log"), 12)
        for name in ["12.log", "snap-00000000000000000012.snap", "0000000000000000001x.log"]:
            self.assertIsNone(segment_number(name))

    def test_scan(self) -> None:
        """
        A scan yields the valid records and stops at the first bad one.
        """
        data = encode_record(1, b"a") + encode_record(2, b"bb") + b"\x05\x00"
        scan = Scan(data)
        self.assertEqual(list(scan), [(1, b"a"), (2, b"bb")])
        self.assertEqual(scan.end, len(data) - 2)
        self.assertTrue(scan.torn())

    def test_torn_search_bounded(self) -> None:
        """
        Looking for valid records after damage stops after checksumming
        L{log_module.TORN_SEARCH_BYTES} bytes, and then calls the damage
        corruption, not a torn write.
        """
        # Every offset of the tail reads as a plausible 64 KiB record.
        tail = b"\x00\x00\x01\x00" * 40_000
        scan = Scan(encode_record(1, b"a") + tail)
        list(scan)
        self.assertFalse(scan.torn())
        self.patch(log_module, "TORN_SEARCH_BYTES", 10**12)
        self.assertTrue(scan.torn())


    def test_zeros_after(self) -> None:
        """
        Zeros after the records are where the log ended; zeros after a
        damaged record do not make it so.
        """
        records = encode_record(1, b"a") + encode_record(2, b"bb")
        scan = Scan(records + bytes(30))
        self.assertEqual(list(scan), [(1, b"a"), (2, b"bb")])
        self.assertEqual(scan.end, len(records))
        self.assertTrue(scan.zeros_after())
        torn = Scan(records + encode_record(3, b"ccc")[:-1] + bytes(30))
        list(torn)
        self.assertFalse(torn.zeros_after())
        self.assertTrue(torn.torn())

    def test_record_ending_in_zeros_found(self) -> None:
        """
        A valid record after damage is found even when it ends in zeros,
        as the zeros written ahead do: the damage is corruption.
        """
        damaged = bytearray(encode_record(2, b"bb"))
        damaged[-1] ^= 1
        scan = Scan(encode_record(1, b"a") + bytes(damaged) + encode_record(0, bytes(20)))
        list(scan)
        self.assertFalse(scan.zeros_after())
        self.assertFalse(scan.torn())


class AppendTests(SynchronousTestCase):
    """
    Appending, committing and reading back.
    """

    def test_empty(self) -> None:
        """
        A new log has no records and creates its first segment durably.
        """
        fs = CrashableFileSystem()
        log, records = _open(fs)
        self.assertEqual(records, [])
        self.assertEqual(fs.crash(random.Random(0)).listdir(DIRECTORY), [segment_name(0)])

    def test_round_trip(self) -> None:
        """
        Committed records come back in order, with their types.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs)
        log.append(1, b"one")
        log.append(2, b"")
        log.commit()
        log.append(3, b"three")
        log.commit()
        self.assertEqual(_open(fs)[1], [(1, b"one"), (2, b""), (3, b"three")])

    def test_group_commit(self) -> None:
        """
        A commit makes one write and one sync, whatever the number of
        records; records appended and not committed are not written.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs)
        writes, syncs = _counter(fs, "write"), _counter(fs, "sync")
        for i in range(50):
            log.append(1, b"%d" % i)
        log.commit()
        self.assertEqual((writes.seen, syncs.seen), (1, 1))
        log.append(1, b"not committed")
        self.assertEqual(len(_open(fs)[1]), 50)

    def test_commit_without_sync(self) -> None:
        """
        C{commit(sync=False)} writes without syncing; L{Log.sync} syncs
        later, once; an empty commit syncs what was written.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs)
        syncs = _counter(fs, "sync")
        log.append(1, b"a")
        log.commit(sync=False)
        self.assertEqual(syncs.seen, 0)
        log.sync()
        log.sync()
        self.assertEqual(syncs.seen, 1)
        log.append(1, b"b")
        log.commit(sync=False)
        log.commit()
        self.assertEqual(syncs.seen, 2)
        self.assertEqual(_open(fs.crash(random.Random(0)))[1], [(1, b"a"), (1, b"b")])

    def test_rotation(self) -> None:
        """
        A commit that would take a segment past its size starts a new one;
        a batch larger than a segment goes whole into one.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs, segment_bytes=30)
        expected = []
        for i in range(6):
            log.append(1, b"%d" % i * 5)
            expected.append((1, b"%d" % i * 5))
            log.commit()
        log.append(1, b"x" * 100)
        expected.append((1, b"x" * 100))
        log.commit()
        self.assertEqual(log.segments(), [0, 1, 2, 3])
        self.assertEqual(fs.size(_segment(3)), 109)
        self.assertEqual(_open(fs)[1], expected)

    def test_rotate(self) -> None:
        """
        L{Log.rotate} starts a new segment at once; uncommitted records go
        to it; L{Log.remove_before} removes the earlier ones, durably.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs)
        log.append(1, b"a")
        log.commit()
        log.append(1, b"b")
        self.assertEqual(log.rotate(), 1)
        log.commit()
        self.assertEqual(fs.read(_segment(1)), encode_record(1, b"b"))
        log.remove_before(1)
        self.assertEqual(fs.crash(random.Random(0)).listdir(DIRECTORY), [segment_name(1)])
        self.assertEqual(list(Log(fs, DIRECTORY).replay(1)), [(1, b"b")])

    def test_replay_first(self) -> None:
        """
        A log must be replayed before it is written to.
        """
        log = Log(CrashableFileSystem(), DIRECTORY)
        self.assertRaises(RuntimeError, log.commit)


class RecoveryTests(SynchronousTestCase):
    """
    Torn tails are dropped; other damage is corruption.
    """

    def _two_segments(self) -> CrashableFileSystem:
        fs = CrashableFileSystem()
        log, _ = _open(fs, segment_bytes=40)
        for i in range(4):
            log.append(1, b"record %d" % i)
            log.commit()
        self.assertEqual(log.segments(), [0, 1])
        return fs

    def test_torn_tail(self) -> None:
        """
        A last record cut short is dropped and reported; the file is cut
        there, so records appended after it are found after a crash.
        """
        fs = self._two_segments()
        file = fs.open_append(_segment(1))
        file.write(encode_record(1, b"torn")[:-2])
        file.sync()
        log, records = _open(fs)
        self.assertEqual(len(records), 4)
        assert log.torn is not None
        self.assertEqual((log.torn.path, log.torn.offset, log.torn.dropped), (_segment(1), 34, 11))
        log.append(1, b"after")
        log.commit()
        fs = fs.crash(random.Random(0))
        log, records = _open(fs)
        self.assertEqual(records[-1], (1, b"after"))
        self.assertIsNone(log.torn)

    def test_garbage_tail(self) -> None:
        """
        Garbage after the last record (a torn write with bytes from
        elsewhere) is dropped too.
        """
        fs = self._two_segments()
        file = fs.open_append(_segment(1))
        file.write(b"\xff\x00\x00\x00garbage")
        file.sync()
        log, records = _open(fs)
        self.assertEqual(len(records), 4)
        self.assertIsNotNone(log.torn)

    def test_corrupt_middle(self) -> None:
        """
        A flipped byte in a record followed by valid ones raises
        L{LogCorrupt} naming the file and the offset of the record.
        """
        fs = self._two_segments()
        _corrupt(fs, _segment(1), 12)
        error = self.assertRaises(LogCorrupt, _open, fs)
        self.assertEqual((error.path, error.offset), (_segment(1), 0))

    def test_corrupt_earlier_segment(self) -> None:
        """
        Damage at the end of a segment other than the last is corruption,
        not a torn write: that segment was complete before the next began.
        """
        fs = self._two_segments()
        _corrupt(fs, _segment(0), fs.size(_segment(0)) - 1)
        error = self.assertRaises(LogCorrupt, _open, fs)
        self.assertEqual((error.path, error.offset), (_segment(0), 17))

    def test_missing_segment(self) -> None:
        """
        A missing segment is corruption.
        """
        fs = self._two_segments()
        fs.remove(_segment(0))
        error = self.assertRaises(LogCorrupt, _open, fs)
        self.assertEqual(error.path, _segment(0))

    def test_drop_damage(self) -> None:
        """
        Asked to, replay cuts the log at the damage instead of raising: the
        records before it come back, the rest is gone for good, and the log
        goes on from there.
        """
        fs = self._two_segments()
        _corrupt(fs, _segment(0), 20)
        log = Log(fs, DIRECTORY)
        self.assertEqual(list(log.replay(drop_damage=True)), [(1, b"record 0")])
        assert log.damage is not None
        self.assertEqual((log.damage.path, log.damage.offset), (_segment(0), 17))
        self.assertEqual(log.segments(), [0])
        log.append(1, b"after")
        log.commit()
        log, records = _open(fs.crash(random.Random(0)))
        self.assertEqual(records, [(1, b"record 0"), (1, b"after")])
        self.assertIsNone(log.damage)

    def test_drop_missing(self) -> None:
        """
        Asked to, replay stops before a missing segment and removes the
        ones after it.
        """
        fs = self._two_segments()
        log = Log(fs, DIRECTORY, 40)
        list(log.replay())
        log.append(1, b"in segment 2")
        log.rotate()
        log.commit()
        fs.remove(_segment(1))
        again = Log(fs, DIRECTORY)
        self.assertEqual(len(list(again.replay(drop_damage=True))), 2)
        assert again.damage is not None
        self.assertEqual(again.damage.path, _segment(1))
        self.assertEqual(again.segments(), [0])

    def test_covered_segments_removed(self) -> None:
        """
        Segments before the first one asked for are covered by a snapshot:
        they are removed, not read.
        """
        fs = self._two_segments()
        _corrupt(fs, _segment(0), 12)
        log = Log(fs, DIRECTORY)
        self.assertEqual(len(list(log.replay(1))), 2)
        self.assertEqual(log.segments(), [1])


class ErrorTests(SynchronousTestCase):
    """
    Write and sync errors.
    """

    def test_disk_full(self) -> None:
        """
        A write that fails with C{ENOSPC} fails the commit with
        L{DiskFull}; what it wrote is cut off, its records are dropped, and
        the next commit works.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs)
        log.append(1, b"kept")
        log.commit()
        fs.inject(Fault("write", errno.ENOSPC, written=5))
        log.append(1, b"lost")
        self.assertRaises(DiskFull, log.commit)
        self.assertEqual(fs.size(_segment(0)), len(encode_record(1, b"kept")))
        log.append(1, b"later")
        log.commit()
        self.assertEqual(_open(fs)[1], [(1, b"kept"), (1, b"later")])

    def test_write_error(self) -> None:
        """
        Another write error fails the commit with L{WriteFailed}, and
        likewise leaves the log usable.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs)
        fs.inject(Fault("write", errno.EIO))
        log.append(1, b"lost")
        self.assertRaises(WriteFailed, log.commit)
        log.append(1, b"later")
        log.commit()
        self.assertEqual(_open(fs)[1], [(1, b"later")])

    def test_cut_back_fails(self) -> None:
        """
        If the failed write cannot be cut off, the log fails for good.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs)
        fs.inject(Fault("write", errno.ENOSPC, written=3))
        fs.inject(Fault("truncate", errno.EIO))
        log.append(1, b"lost")
        self.assertRaises(LogFailed, log.commit)
        self.assertTrue(log.failed)

    def test_sync_fails_for_good(self) -> None:
        """
        A failed sync fails the commit with L{LogFailed}, and every later
        commit and sync at once, without trying the disk again.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs)
        fs.inject(Fault("sync", errno.EIO))
        log.append(1, b"a")
        self.assertRaises(LogFailed, log.commit)
        writes, syncs = _counter(fs, "write"), _counter(fs, "sync")
        log.append(1, b"b")
        self.assertRaises(LogFailed, log.commit)
        self.assertRaises(LogFailed, log.sync)
        self.assertRaises(LogFailed, log.rotate)
        self.assertEqual((writes.seen, syncs.seen), (0, 0))

    def test_rotation_full(self) -> None:
        """
        No space for a new segment fails the commit with L{DiskFull}; the
        log goes on in the old segment once there is space.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs, segment_bytes=20)
        log.append(1, b"0123456789")
        log.commit()
        fs.inject(Fault("create", errno.ENOSPC))
        log.append(1, b"lost")
        self.assertRaises(DiskFull, log.commit)
        log.append(1, b"later")
        log.commit()
        self.assertEqual(_open(fs)[1], [(1, b"0123456789"), (1, b"later")])

    def test_directory_sync_fails(self) -> None:
        """
        A failed directory sync when starting a segment fails the log: the
        new segment's name may not be durable.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs, segment_bytes=20)
        log.append(1, b"0123456789")
        log.commit()
        fs.inject(Fault("sync_dir", errno.EIO))
        log.append(1, b"lost")
        self.assertRaises(LogFailed, log.commit)


class ReserveTests(SynchronousTestCase):
    """
    Commits that sync write zeros ahead, and later commits land on them.
    """

    def test_commits_land_on_zeros(self) -> None:
        """
        A commit that syncs and does not fit in the zeros before writes
        C{reserve_bytes} more past its records, synced with them; commits
        that fit do not change the file's size.
        """
        fs = CrashableFileSystem()
        reserves = _counter(fs, "reserve")
        log, _ = _open(fs, reserve_bytes=100)
        record = encode_record(1, b"x" * 11)  # 20 bytes
        sizes = []
        for _ in range(13):
            log.append(1, b"x" * 11)
            log.commit()
            sizes.append(fs.size(_segment(0)))
        self.assertEqual(sizes, [120] * 6 + [240] * 6 + [360])
        self.assertEqual(reserves.seen, 3)
        self.assertEqual(fs.read(_segment(0)), record * 13 + bytes(100))
        crashed = fs.crash(random.Random(0))
        self.assertEqual(crashed.read(_segment(0)), fs.read(_segment(0)))

    def test_unsynced_commit_reserves_nothing(self) -> None:
        """
        Zeros ahead only make syncs cheaper: a commit that does not sync
        writes none.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs, reserve_bytes=100)
        log.append(1, b"a")
        log.commit(sync=False)
        self.assertEqual(fs.read(_segment(0)), encode_record(1, b"a"))

    def test_segments_end_at_their_records(self) -> None:
        """
        The zeros stop at the segment's size, and are cut off, durably,
        before the next segment starts, which reserves anew: only the last
        segment ends in zeros.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs, segment_bytes=50, reserve_bytes=1000)
        for i in range(6):
            log.append(1, b"record %d" % i)  # 17 bytes
            log.commit()
        self.assertEqual(log.segments(), [0, 1, 2])
        fs = fs.crash(random.Random(0))
        self.assertEqual([fs.size(_segment(n)) for n in range(3)], [34, 34, 50])
        again, records = _open(fs)
        self.assertEqual(records, [(1, b"record %d" % i) for i in range(6)])
        self.assertIsNone(again.torn)

    def test_zeros_in_earlier_segment(self) -> None:
        """
        Zeros at the end of a segment other than the last are damage: the
        log never leaves them there.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs, segment_bytes=50)
        for i in range(4):
            log.append(1, b"record %d" % i)
            log.commit()
        data = fs.read(_segment(0))
        file = fs.open_append(_segment(0))
        file.reserve(len(data) + 10)
        file.sync()
        error = self.assertRaises(LogCorrupt, _open, fs)
        self.assertEqual((error.path, error.offset), (_segment(0), len(data)))

    def test_cut_fails(self) -> None:
        """
        If the zeros cannot be cut off before a new segment, the commit
        fails and the log stays in its segment; a later commit rotates.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs, segment_bytes=50, reserve_bytes=100)
        for i in range(2):
            log.append(1, b"record %d" % i)
            log.commit()
        fs.inject(Fault("truncate", errno.EIO))
        log.append(1, b"record 2")
        self.assertRaises(WriteFailed, log.commit)
        self.assertEqual(log.segments(), [0])
        log.append(1, b"record 3")
        log.commit()
        self.assertEqual(log.segments(), [0, 1])
        self.assertEqual(_open(fs)[1], [(1, b"record %d" % i) for i in (0, 1, 3)])

    def test_replay_cuts_zeros(self) -> None:
        """
        After a crash, the zeros past the last record are where the log
        ended, not a torn write: the file is cut there and the next commit
        writes after the records, reserving again.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs, reserve_bytes=100)
        log.append(1, b"a")
        log.commit()
        fs = fs.crash(random.Random(0))
        self.assertEqual(fs.size(_segment(0)), 110)
        log, records = _open(fs, reserve_bytes=100)
        self.assertEqual(records, [(1, b"a")])
        self.assertIsNone(log.torn)
        self.assertEqual(fs.size(_segment(0)), 10)
        log.append(1, b"b")
        log.commit()
        self.assertEqual(
            fs.read(_segment(0)), encode_record(1, b"a") + encode_record(1, b"b") + bytes(100)
        )

    def test_torn_write_on_zeros(self) -> None:
        """
        A crash in the middle of a write over the zeros leaves part of a
        record before them: a torn tail, dropped, and reported.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs, reserve_bytes=100)
        log.append(1, b"a")
        log.commit()
        file = fs.open_append(_segment(0))
        file.truncate(10)
        file.reserve(110)
        file.write(encode_record(1, b"torn")[:-2])
        file.sync()
        log, records = _open(fs)
        self.assertEqual(records, [(1, b"a")])
        assert log.torn is not None
        self.assertEqual((log.torn.offset, log.torn.dropped), (10, 100))
        self.assertEqual(fs.size(_segment(0)), 10)

    def test_no_room_for_zeros(self) -> None:
        """
        Without room for the zeros, the commit goes on without them, and
        so does the rest of the segment; the next segment tries again.
        """
        fs = CrashableFileSystem()
        reserves = fs.inject(Fault("reserve", errno.ENOSPC))
        log, _ = _open(fs, segment_bytes=50, reserve_bytes=20)
        for i in range(3):
            log.append(1, b"record %d" % i)  # 17 bytes
            log.commit()
        self.assertEqual(reserves.seen, 2)
        self.assertEqual(
            fs.read(_segment(0)), encode_record(1, b"record 0") + encode_record(1, b"record 1")
        )
        self.assertEqual(fs.size(_segment(1)), 37)
        self.assertEqual(_open(fs)[1], [(1, b"record %d" % i) for i in range(3)])

    def test_failed_sync_of_zeros(self) -> None:
        """
        The zeros are synced with the commit's records: a failed sync fails
        the log for good, like any other.
        """
        fs = CrashableFileSystem()
        log, _ = _open(fs, reserve_bytes=100)
        fs.inject(Fault("sync", errno.EIO))
        log.append(1, b"a")
        self.assertRaises(LogFailed, log.commit)
        self.assertTrue(log.failed)


class OSLogTests(SynchronousTestCase):
    """
    The log on the real file system.
    """

    def test_round_trip(self) -> None:
        """
        Records committed across segments, and a torn tail, on disk.
        """
        fs = OSFileSystem()
        directory = self.mktemp()
        log = Log(fs, directory, segment_bytes=64)
        list(log.replay())
        for i in range(20):
            log.append(i % 3, b"payload %d" % i)
            if i % 4 == 3:
                log.commit()
        log.close()
        with open(f"{directory}/{segment_name(log.segments()[-1])}", "ab") as f:
            f.write(b"\x10\x00\x00")
        again = Log(fs, directory)
        self.assertEqual(list(again.replay()), [(i % 3, b"payload %d" % i) for i in range(20)])
        self.assertIsNotNone(again.torn)
        again.close()
