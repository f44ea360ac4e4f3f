# -*- test-case-name: tests.test_storage_snapshot,tests.test_storage_crash -*-
"""
Snapshot files: a state written as a stream of records, replaced atomically.

Format
======

A snapshot is one file, C{snap-<covers, twenty digits>.snap}, where
C{covers} is the number of the first log segment it does not cover::

    magic    8 bytes   b"TKVSNAP1"
    covers   u64 little-endian, as in the name
    records  each: length u32 little-endian, type u8, payload
    end      u32 0xFFFFFFFF (where a length would be), then
    count    u64 little-endian  the number of records
    crc      u32 little-endian  CRC-32 of every byte before it

One checksum over the whole file, checked before a single record is handed
out: a snapshot is read only whole, at recovery, so a reader never acts on a
record of a damaged file (and a truncated file lacks its end).

Writing
=======

L{Snapshots.write} streams the records into C{<name>.tmp} in chunks, syncs
it, renames it into place and syncs the directory: a snapshot is either
absent or complete and durable.  Only then are the older snapshots removed
(and the caller removes the log segments it covers).  Leftover temporary
files of a crash mid-write are ignored and removed.
"""

from __future__ import annotations

import errno
import struct
import zlib
from typing import Iterable, Iterator, Optional

from attrs import define, frozen

from twisted_kv.errors import DiskFull, SnapshotCorrupt, WriteFailed
from twisted_kv.storage.fs import IAppendFile, IFileSystem

MAGIC = b"TKVSNAP1"
_START = struct.Struct("<8sQ")
_RECORD = struct.Struct("<IB")
_END_MARK = 0xFFFFFFFF
_END = struct.Struct("<IQ")
_CRC = struct.Struct("<I")
_TRAILER_SIZE = _END.size + _CRC.size
SUFFIX = ".snap"
TEMPORARY = ".tmp"
# Records are gathered into writes of about this size, and files read in
# reads of this size.
CHUNK = 1024 * 1024


def snapshot_name(covers: int) -> str:
    """
    The file name of the snapshot covering the segments before C{covers}.
    """
    return f"snap-{covers:020d}{SUFFIX}"


def _covers(name: str) -> Optional[int]:
    digits = name[len("snap-") : -len(SUFFIX)]
    named = name.startswith("snap-") and name.endswith(SUFFIX)
    if named and len(digits) == 20 and digits.isdigit():
        return int(digits)
    return None


@frozen
class SnapshotFile:
    """
    A complete snapshot file.

    @ivar path: its path.
    @ivar covers: the first log segment it does not cover: replay the log
        from there.
    """

    path: str
    covers: int


@define
class Snapshots:
    """
    The snapshot files of C{directory} of C{fs}.
    """

    fs: IFileSystem
    directory: str

    def write(self, covers: int, records: Iterable[tuple[int, bytes]]) -> SnapshotFile:
        """
        Write a snapshot of C{records} covering the log segments before
        C{covers}, durably, then remove older snapshots.

        @param records: C{(type, payload)} pairs, consumed as they are
            written; types are bytes, payloads under 4 GiB.
        @return: the new snapshot, durable.
        @raise DiskFull: the disk is full; nothing changed (the temporary
            file is removed).
        @raise WriteFailed: another write or sync error; nothing changed,
            except that a directory sync may have failed after the rename.
        @raise ValueError: a record cannot be stored; nothing changed.
        """
        self.fs.makedirs(self.directory)
        final = f"{self.directory}/{snapshot_name(covers)}"
        temporary = final + TEMPORARY
        if self.fs.exists(temporary):
            self.fs.remove(temporary)
        try:
            file = self.fs.create(temporary)
            try:
                _write_records(file, covers, records)
                file.sync()
            finally:
                file.close()
        except Exception as e:
            # Whatever failed (the disk, or the records given), the
            # temporary file is of no use.
            self._discard(temporary)
            if not isinstance(e, OSError):
                raise
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"{temporary}: {e.strerror}") from e
            raise WriteFailed(f"{temporary}: {e.strerror}") from e
        try:
            self.fs.rename(temporary, final)
            self.fs.sync_dir(self.directory)
        except OSError as e:
            raise WriteFailed(f"{final}: {e.strerror}") from e
        self.remove_before(covers)
        return SnapshotFile(final, covers)

    def _discard(self, temporary: str) -> None:
        try:
            self.fs.remove(temporary)
        except OSError:
            # Removed at the next recovery, as any leftover.
            pass

    def latest(self) -> Optional[SnapshotFile]:
        """
        The newest complete snapshot, or L{None} if there is none.
        Leftover temporary files are removed.
        """
        found = None
        leftovers = False
        for name in self.fs.listdir(self.directory) if self.fs.exists(self.directory) else []:
            covers = _covers(name)
            if covers is not None:
                found = SnapshotFile(f"{self.directory}/{name}", covers)
            elif name.startswith("snap-") and name.endswith(TEMPORARY):
                self.fs.remove(f"{self.directory}/{name}")
                leftovers = True
        if leftovers:
            self.fs.sync_dir(self.directory)
        return found

    def remove_before(self, covers: int) -> None:
        """
        Remove the snapshots older than the one covering C{covers}.
        """
        old = [
            name
            for name in self.fs.listdir(self.directory)
            if (number := _covers(name)) is not None and number < covers
        ]
        for name in old:
            self.fs.remove(f"{self.directory}/{name}")
        if old:
            self.fs.sync_dir(self.directory)

    def read(self, snapshot: SnapshotFile) -> Iterator[tuple[int, bytes]]:
        """
        Yield the C{(type, payload)} pairs of C{snapshot}, in the order
        written, after checking the whole file.

        @raise SnapshotCorrupt: the file is damaged or truncated; raised
            before any record is yielded.
        """
        path = snapshot.path
        size = self.fs.size(path)
        if size < _START.size + _TRAILER_SIZE:
            raise SnapshotCorrupt(path, 0, "too short")
        crc = 0
        for offset in range(0, size - _CRC.size, CHUNK):
            crc = zlib.crc32(self.fs.read(path, offset, min(CHUNK, size - _CRC.size - offset)), crc)
        (expected,) = _CRC.unpack(self.fs.read(path, size - _CRC.size, _CRC.size))
        if crc != expected:
            raise SnapshotCorrupt(path, 0, "checksum mismatch")
        magic, covers = _START.unpack(self.fs.read(path, 0, _START.size))
        if magic != MAGIC or covers != snapshot.covers:
            raise SnapshotCorrupt(path, 0, "not a snapshot of this name")
        return _records(self.fs, path, size)


def _write_records(file: IAppendFile, covers: int, records: Iterable[tuple[int, bytes]]) -> None:
    chunk = [_START.pack(MAGIC, covers)]
    crc = 0
    pending = _START.size
    count = 0
    for record_type, payload in records:
        if not 0 <= record_type <= 255 or len(payload) >= _END_MARK:
            raise ValueError(f"cannot store a record of type {record_type}, {len(payload)} bytes")
        chunk.append(_RECORD.pack(len(payload), record_type))
        chunk.append(payload)
        pending += _RECORD.size + len(payload)
        count += 1
        if pending >= CHUNK:
            data = b"".join(chunk)
            crc = zlib.crc32(data, crc)
            file.write(data)
            chunk, pending = [], 0
    chunk.append(_END.pack(_END_MARK, count))
    data = b"".join(chunk)
    crc = zlib.crc32(data, crc)
    file.write(data + _CRC.pack(crc))


def _records(fs: IFileSystem, path: str, size: int) -> Iterator[tuple[int, bytes]]:
    """
    The records of a checked snapshot, read a chunk at a time.
    """
    end = size - _TRAILER_SIZE
    base = _START.size  # the file offset of buffer[0]
    buffer = b""
    position = 0
    count = 0

    def fill(needed: int) -> None:
        nonlocal base, buffer, position
        if len(buffer) - position >= needed:
            return
        more = fs.read(path, base + len(buffer), max(CHUNK, needed))
        base, buffer, position = base + position, buffer[position:] + more, 0
        if len(buffer) < needed:
            raise SnapshotCorrupt(path, base, "record runs past the end")

    while True:
        fill(_RECORD.size)
        length, record_type = _RECORD.unpack_from(buffer, position)
        if length == _END_MARK:
            break
        fill(_RECORD.size + length)
        start = position + _RECORD.size
        position = start + length
        yield record_type, buffer[start:position]
        count += 1
    fill(_END.size)
    _, written = _END.unpack_from(buffer, position)
    if written != count or base + position != end:
        raise SnapshotCorrupt(path, base + position, "record count or end does not match")
