# -*- test-case-name: tests.test_storage_log,tests.test_storage_crash -*-
"""
An append-only log of checksummed records, in segment files.

Format
======

A log is a directory of segment files named by their number, twenty digits
and C{.log} (C{00000000000000000000.log}, then C{...01.log}), read in that
order.  A segment is a sequence of records with no header, possibly followed
by zeros (space reserved ahead, see below); each record is::

    length  u32 little-endian  bytes of payload
    crc     u32 little-endian  CRC-32 (zlib's, the IEEE polynomial) of type + payload
    type    u8                 the caller's record type
    payload length bytes

No record is nine zero bytes and more (the CRC-32 of a zero type byte and
no payload is not zero), so the zeros are never taken for a record, and a
record always starts before the last byte that is not zero.

CRC-32 rather than CRC-32C: both detect every error of up to 32 bits in a
row and every one- and two-bit error at our record sizes, which is what torn
writes and flipped bits produce; the checksum guards against accidents, not
attackers.  C{zlib.crc32} ships with Python and runs at over a gigabyte a
second, so recovery time is spent in the Python loop, not in the checksum,
and CRC-32C would need a compiled dependency for no gain here.

Durability
==========

L{Log.append} only buffers; L{Log.commit} writes everything appended since
the last commit in one write and, unless told not to, makes it durable with
one sync (group commit): the caller acknowledges those records only after
that.  A segment grows to L{Log.segment_bytes}; the next commit then starts
a new segment, after syncing the old one and syncing the directory that
names the new one, so every segment but the last is complete and durable.

A commit that syncs and does not fit in the zeros past the last record
first writes L{RESERVE_BYTES} more zeros (L{IAppendFile.reserve}), synced
with it; the commits after it write over the zeros.  Syncing a write into
blocks already written and within the file's synced size records no new
size and allocates nothing: on ext4 its sync costs 35-50 us of CPU and
85-120 us instead of 50-70 us and 120-190 us (docs/performance.md), as
etcd's write-ahead log preallocates its files.  The zeros are cut off a
segment, synced, before the next one starts.

Hence, on recovery (L{Log.replay}), zeros after the records of the last
segment are where the log ended (cut off: the next commit reserves anew),
and a damaged record at the end of the last segment is what a crash in the
middle of a write leaves: it is dropped (cut off the file, and reported in
L{Log.torn}).  A damaged record anywhere else (zeros at the end of another
segment included), or a missing segment, is corruption: L{LogCorrupt} names
the file and offset; or, if the caller asks, the log is cut there
(L{Log.damage}) and the caller fetches the rest from elsewhere.  A damaged
record is "at the end" when no valid record starts after it, in the zeros or
before them; a flipped byte in the very last record of the log is therefore
indistinguishable from a torn write and dropped the same way.  A crash can
also leave a hole before valid bytes, when the disk wrote an unsynced
write's pages out of order: that looks like corruption, and is reported as
such, although only unsynced records are lost.

Errors
======

A failed write (C{ENOSPC}, C{EIO}) fails the whole batch, none of which is
acknowledged, and the file is cut back to its last committed size, so a later
commit works once the disk has space again.  A failed sync fails the log for
good (L{LogFailed}): the kernel may have dropped the pages it could not
write and report the next sync as a success (PostgreSQL's "fsyncgate"), so
nothing written to this log can be trusted to be durable any more; every
later commit fails at once.
"""

from __future__ import annotations

import errno
import struct
import zlib
from typing import Iterator, Optional

from attrs import define, field, frozen

from twisted_kv.errors import DiskFull, LogCorrupt, LogFailed, WriteFailed
from twisted_kv.storage.fs import IAppendFile, IFileSystem

_HEADER = struct.Struct("<IIB")
HEADER_SIZE = _HEADER.size
# The CRC covers the type byte and the payload, which follow each other.
_CRC_START = 8

MAX_PAYLOAD = 2**32 - 1
SEGMENT_SUFFIX = ".log"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024

#: How many zeros a commit writes ahead when it does not fit in those before:
#: a megabyte (about 3,000 records of a 100-byte value) takes about a
#: millisecond to write and sync, where four take ten on an SSD's cache.
RESERVE_BYTES = 1024 * 1024

# Out of space: the caller may retry once space is freed.
_FULL = (errno.ENOSPC, errno.EDQUOT)


def segment_name(number: int) -> str:
    """
    The file name of segment C{number}.
    """
    return f"{number:020d}{SEGMENT_SUFFIX}"


def segment_number(name: str) -> Optional[int]:
    """
    The number of the segment file called C{name}, or L{None} if C{name}
    is not a segment's name.
    """
    stem = name[: -len(SEGMENT_SUFFIX)]
    if name.endswith(SEGMENT_SUFFIX) and len(stem) == 20 and stem.isdigit():
        return int(stem)
    return None


def check_record(record_type: int, payload: bytes) -> None:
    """
    Check that the log can hold a record.

    @raise ValueError: C{record_type} is not a byte, or the payload is over
        L{MAX_PAYLOAD}.
    """
    if not 0 <= record_type <= 255:
        raise ValueError(f"record type {record_type} is not in 0..255")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")


def encode_record(record_type: int, payload: bytes) -> bytes:
    """
    One record as the log stores it.

    @raise ValueError: see L{check_record}.
    """
    check_record(record_type, payload)
    kind = bytes((record_type,))
    return _HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(kind)), record_type) + payload


def _record_after(data: bytes, start: int, budget: int) -> bool:
    """
    Whether a complete record with a matching checksum starts somewhere
    after C{start} in C{data}; also L{True} (assume so) once the checksums
    tried cover C{budget} bytes, so that a payload crafted to look like
    many plausible record lengths cannot make recovery quadratic.
    """
    size = len(data)
    view = memoryview(data)
    # A record starts before the last byte that is not zero (module docstring).
    content_end = len(data.rstrip(b"\0"))
    for offset in range(start + 1, min(size - HEADER_SIZE + 1, content_end)):
        length, crc, _ = _HEADER.unpack_from(data, offset)
        end = offset + HEADER_SIZE + length
        if end > size:
            continue
        budget -= end - offset
        if budget < 0 or zlib.crc32(view[offset + _CRC_START : end]) == crc:
            return True
    return False


# How many bytes L{Scan.torn} checksums at most looking for a valid record
# after damage (a torn write is at most one commit's batch).
TORN_SEARCH_BYTES = 256 * 1024 * 1024


@define
class Scan:
    """
    The records of one segment's bytes, in order, up to the first damaged
    one: iterate over it once, then read L{end}.

    @ivar end: after the iteration, the offset where the valid records end
        (the size of the data when every record is valid).
    """

    data: bytes
    end: int = 0

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        data = self.data
        view = memoryview(data)
        size = len(data)
        unpack = _HEADER.unpack_from
        crc32 = zlib.crc32
        offset = 0
        while offset + HEADER_SIZE <= size:
            length, crc, record_type = unpack(data, offset)
            end = offset + HEADER_SIZE + length
            if end > size or crc32(view[offset + _CRC_START : end]) != crc:
                break
            yield record_type, data[offset + HEADER_SIZE : end]
            offset = end
        self.end = offset

    def zeros_after(self) -> bool:
        """
        Whether only zeros follow L{end}: space reserved and not written
        yet, where the log ended, not damage.
        """
        return self.data.count(0, self.end) == len(self.data) - self.end

    def torn(self) -> bool:
        """
        Whether the damage at L{end} can be a write cut short by a crash:
        no valid record starts anywhere after it (see L{_record_after}).
        """
        return not _record_after(self.data, self.end, TORN_SEARCH_BYTES)


@frozen
class TornTail:
    """
    The incomplete last record(s) L{Log.replay} dropped: what a crash in
    the middle of a write leaves.

    @ivar path: the segment.
    @ivar offset: where the dropped bytes started (the segment's new size).
    @ivar dropped: how many bytes were dropped.
    """

    path: str
    offset: int
    dropped: int


@define
class Log:
    """
    An append-only log in C{directory} of C{fs}; see the module docstring.

    Call L{replay} once before anything else: it reads the log back and
    opens it for appending.  Only one thread may use a L{Log} at a time.

    @ivar segment_bytes: the size past which a commit starts a new segment.
    @ivar reserve_bytes: how many zeros a commit that syncs writes ahead
        when it does not fit in those before (L{RESERVE_BYTES}); 0 for none.
    @ivar torn: what L{replay} dropped at the end of the log, if anything;
        the node logs one line about it.
    @ivar damage: with C{drop_damage}, the damage L{replay} cut the log at,
        if any: the records after it are gone, and the node must get them
        from its peers (and log one line).
    """

    fs: IFileSystem
    directory: str
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    reserve_bytes: int = RESERVE_BYTES
    torn: Optional[TornTail] = field(default=None, init=False)
    damage: Optional[LogCorrupt] = field(default=None, init=False)
    _segment: int = field(default=-1, init=False)
    _file: Optional[IAppendFile] = field(default=None, init=False)
    _size: int = field(default=0, init=False)
    # Where the zeros written ahead end: the file's size, as far as known.
    _reserved: int = field(default=0, init=False)
    _buffer: list[bytes] = field(factory=list, init=False)
    _unsynced: bool = field(default=False, init=False)
    _failed: Optional[LogFailed] = field(default=None, init=False)

    def _path(self, number: int) -> str:
        return f"{self.directory}/{segment_name(number)}"

    def segments(self) -> list[int]:
        """
        The numbers of the segment files in the directory, in order.
        """
        numbers = (segment_number(name) for name in self.fs.listdir(self.directory))
        return sorted(number for number in numbers if number is not None)

    def replay(
        self, first_segment: int = 0, drop_damage: bool = False
    ) -> Iterator[tuple[int, bytes]]:
        """
        Yield C{(type, payload)} for every record from segment
        C{first_segment} on, in order; then (iterate to the end) open the
        log for appending after the last one, cutting off a torn tail.
        Earlier segments (covered by a snapshot) are removed.

        @param first_segment: the first segment not covered by the
            snapshot the caller loaded, 0 without one.
        @param drop_damage: on damage, instead of raising, stop there: cut
            the log at the damaged record (or before the missing segment),
            removing everything after it, and say so in L{damage}.  For a
            node that refills what follows from its peers.
        @raise LogCorrupt: a record other than the last is damaged, or a
            segment is missing (unless C{drop_damage}).  The records yielded
            before are valid.
        @raise OSError: the directory cannot be read, or the log opened.
        """
        self.fs.makedirs(self.directory)
        numbers = [n for n in self.segments() if n >= first_segment]
        kept = first_segment - 1
        cut = None
        for index, number in enumerate(numbers):
            if number != first_segment + index:
                self._damaged(LogCorrupt(self._path(kept + 1), 0, "segment missing"), drop_damage)
                break
            path = self._path(number)
            scan = Scan(self.fs.read(path))
            yield from scan
            kept = number
            if scan.end == len(scan.data):
                continue
            cut = scan.end
            last = number == numbers[-1]
            if last and scan.zeros_after():
                break
            if last and scan.torn():
                self.torn = TornTail(path, scan.end, len(scan.data) - scan.end)
            else:
                damage = LogCorrupt(path, scan.end, "bad record checksum or length")
                self._damaged(damage, drop_damage)
            break
        later = [n for n in numbers if n > kept]
        for number in later:
            self.fs.remove(self._path(number))
        if later:
            self.fs.sync_dir(self.directory)
        self._open(max(kept, first_segment), kept >= first_segment, cut)
        self.remove_before(first_segment)

    def _damaged(self, damage: LogCorrupt, drop: bool) -> None:
        if not drop:
            raise damage
        self.damage = damage

    def _open(self, number: int, exists: bool, cut: Optional[int]) -> None:
        path = self._path(number)
        if exists:
            self._file = self.fs.open_append(path)
            if cut is not None:
                self._file.truncate(cut)
                self._file.sync()
            self._size = self.fs.size(path)
        else:
            self._file = self.fs.create(path)
            self.fs.sync_dir(self.directory)
            self._size = 0
        self._segment, self._reserved = number, self._size

    def append(self, record_type: int, payload: bytes) -> None:
        """
        Buffer a record for the next L{commit}.

        @raise ValueError: see L{check_record}.
        """
        self._buffer.append(encode_record(record_type, payload))

    def commit(self, sync: bool = True) -> None:
        """
        Write every record appended since the last commit in one write,
        then, if C{sync}, make them durable with one sync.  Once this
        returns, those records are durable (or, without C{sync}, written);
        if it raises, none of them may be acknowledged, and they are gone
        from the buffer.

        @raise DiskFull: the disk is full; the file was cut back, and a
            later commit may succeed.
        @raise WriteFailed: the write failed otherwise; the file was cut
            back, and a later commit may succeed.
        @raise LogFailed: a sync failed, now or before; every later commit
            fails too.
        """
        batch = b"".join(self._buffer)
        self._buffer.clear()
        self.write(batch, sync)

    def write(self, batch: bytes, sync: bool = True) -> None:
        """
        Commit C{batch}, records made by L{encode_record} and joined, as
        L{commit} commits what was appended: for a caller that encodes
        records in one thread and commits them in another.

        @raise DiskFull: see L{commit}.
        @raise WriteFailed: see L{commit}.
        @raise LogFailed: see L{commit}.
        """
        self._check()
        if not batch:
            if sync:
                self.sync()
            return
        if self._size > 0 and self._size + len(batch) > self.segment_bytes:
            self._rotate()
        assert self._file is not None
        if sync:
            self._reserve(self._size + len(batch))
        try:
            self._file.write(batch)
        except OSError as e:
            self._cut_back(e)
            if e.errno in _FULL:
                raise DiskFull(f"{self._file.path}: {e.strerror}") from e
            raise WriteFailed(f"{self._file.path}: {e.strerror}") from e
        self._size += len(batch)
        self._unsynced = True
        if sync:
            self.sync()

    def _reserve(self, end: int) -> None:
        """
        Write L{reserve_bytes} zeros past C{end} if the zeros written ahead
        end before it (the sync that follows makes them durable).  Without
        room for them, the segment goes on without (the next one tries
        again): the records still fit where the disk has space.
        """
        if end <= self._reserved or self.reserve_bytes <= 0:
            return
        assert self._file is not None
        target = max(min(end + self.reserve_bytes, self.segment_bytes), end)
        try:
            self._file.reserve(target)
        except OSError:
            target = self.segment_bytes
        self._reserved = target

    def _cut_back(self, error: OSError) -> None:
        """
        Remove what a failed write left past the last commit; if that fails
        too, the file holds an unknown tail that later records would follow,
        so the log fails for good.
        """
        assert self._file is not None
        try:
            self._file.truncate(self._size)
        except OSError as e:
            self._fail(f"{self._file.path}: cannot cut back after {error.strerror}: {e.strerror}")
            raise self._failed from e  # type: ignore[misc]
        self._reserved = self._size

    def sync(self) -> None:
        """
        Make every committed record durable (for callers that commit
        without syncing, such as C{fsync = everysec}).

        @raise LogFailed: the sync failed, now or before.
        """
        self._check()
        if not self._unsynced:
            return
        assert self._file is not None
        try:
            self._file.sync()
        except OSError as e:
            self._fail(f"fsync of {self._file.path} failed: {e.strerror}")
            raise self._failed from e  # type: ignore[misc]
        self._unsynced = False

    def rotate(self) -> int:
        """
        Start a new segment now, so that every record committed so far is
        in earlier segments (before a snapshot of them).  Records appended
        and not yet committed go to the new segment.

        @return: the new segment's number: a snapshot of the records
            committed so far covers the segments before it.
        @raise DiskFull: the new segment could not be created.
        @raise LogFailed: a sync failed, now or before.
        """
        self._check()
        self._rotate()
        return self._segment

    def _rotate(self) -> None:
        self._cut_zeros()
        self.sync()
        assert self._file is not None
        number = self._segment + 1
        try:
            new = self.fs.create(self._path(number))
        except OSError as e:
            if e.errno in _FULL:
                raise DiskFull(f"{self._path(number)}: {e.strerror}") from e
            raise WriteFailed(f"{self._path(number)}: {e.strerror}") from e
        try:
            self.fs.sync_dir(self.directory)
        except OSError as e:
            new.close()
            self._fail(f"fsync of {self.directory} failed: {e.strerror}")
            raise self._failed from e  # type: ignore[misc]
        self._file.close()
        self._file, self._segment, self._size, self._reserved = new, number, 0, 0

    def _cut_zeros(self) -> None:
        """
        Cut the zeros written ahead off a segment about to be followed by
        another (synced with it), so that only the last segment ends in
        zeros and zeros anywhere else are damage.

        @raise WriteFailed: the file could not be cut; it is as it was.
        """
        if self._reserved <= self._size:
            return
        assert self._file is not None
        try:
            self._file.truncate(self._size)
        except OSError as e:
            raise WriteFailed(f"{self._file.path}: {e.strerror}") from e
        self._reserved = self._size
        # the new size goes out with the next sync
        self._unsynced = True

    def remove_before(self, number: int) -> None:
        """
        Remove the segments before segment C{number}, once a durable
        snapshot covers them.  The removals are synced, so that they never
        reappear after a crash next to a newer snapshot.
        """
        old = [n for n in self.segments() if n < min(number, self._segment)]
        for n in old:
            self.fs.remove(self._path(n))
        if old:
            self.fs.sync_dir(self.directory)

    def close(self) -> None:
        """
        Close the current segment (without syncing it).
        """
        if self._file is not None:
            self._file.close()
            self._file = None

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._file is None:
            raise RuntimeError(f"log {self.directory} is not open: replay it first")

    def _fail(self, reason: str) -> None:
        self._failed = LogFailed(reason)
        self._buffer.clear()

    @property
    def failed(self) -> bool:
        """
        Whether a sync failed: the log accepts no more commits.
        """
        return self._failed is not None
