# -*- test-case-name: tests.test_storage_crash -*-
"""
A data directory's log and snapshots together: what recovery reads back, and
how a snapshot replaces the log segments it covers.

Recovery is the newest complete snapshot, then the log from the first
segment that snapshot does not cover.  Compaction starts a new log segment,
writes a snapshot of everything committed before it, and only once that
snapshot is durable removes the older snapshots and the segments it covers;
a crash at any point leaves either the old snapshot with every segment after
it, or the new one with every segment after it.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

from attrs import define, field

from twisted_kv.storage.fs import IFileSystem
from twisted_kv.storage.log import DEFAULT_SEGMENT_BYTES, Log
from twisted_kv.storage.snapshot import SnapshotFile, Snapshots


@define
class Storage:
    """
    The log and snapshots of one directory.

    @ivar log: the log, open for appending once L{recover} was iterated to
        its end.
    @ivar snapshots: the snapshot files.
    @ivar snapshot: the snapshot recovery started from, if any.
    """

    log: Log
    snapshots: Snapshots
    snapshot: Optional[SnapshotFile] = field(default=None, init=False)

    @classmethod
    def at(
        cls, fs: IFileSystem, directory: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> "Storage":
        """
        The storage of C{directory} of C{fs}, not read yet.
        """
        return cls(Log(fs, directory, segment_bytes), Snapshots(fs, directory))

    def recover(self, drop_damage: bool = False) -> Iterator[tuple[int, bytes]]:
        """
        Yield every record of the newest snapshot, then of the log after
        it; at the end the log is open for appending, and L{Log.torn} tells
        whether a torn tail was dropped.

        @param drop_damage: see L{Log.replay}; L{Log.damage} then tells
            where the log was cut.

        @raise twisted_kv.errors.SnapshotCorrupt: the snapshot is damaged
            (before any record is yielded).
        @raise twisted_kv.errors.LogCorrupt: the log is damaged other than
            at its very end, or a segment is missing (unless C{drop_damage}).
        """
        self.log.fs.makedirs(self.log.directory)
        self.snapshot = self.snapshots.latest()
        if self.snapshot is not None:
            yield from self.snapshots.read(self.snapshot)
        first = self.snapshot.covers if self.snapshot else 0
        yield from self.log.replay(first, drop_damage)

    def compact(self, records: Iterable[tuple[int, bytes]]) -> SnapshotFile:
        """
        Replace everything committed so far with a snapshot of C{records}.

        @param records: the state after every record committed so far
            (records appended but not committed stay in the log, after the
            snapshot, and are replayed on top of it).
        @return: the new snapshot, durable; the segments and snapshots it
            replaces are removed.
        @raise twisted_kv.errors.DiskFull: no space for the snapshot;
            nothing was removed, and the log goes on.
        """
        covers = self.log.rotate()
        snapshot = self.snapshots.write(covers, records)
        self.log.remove_before(covers)
        self.snapshot = snapshot
        return snapshot
