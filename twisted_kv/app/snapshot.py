# -*- test-case-name: tests.test_kvctl_snapshot -*-
"""
C{kvctl snapshot save} and C{kvctl snapshot restore}: a whole cluster to a
file and back, through any node's C{/admin} API (C{docs/backup.md}).

Both stream: saving holds one page of records at a time, restoring one
batch, whatever the cluster's size.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from typing import Any, Callable, Iterable, Iterator

from attrs import evolve, frozen

from twisted_kv.core.backup import BackupRecord, SnapshotWriter, Summary, read_snapshot, records_of
from twisted_kv.core.keyspace import name_of
from twisted_kv.errors import KVError, OutcomeUnknown, SnapshotExpired, Unavailable

PAGE_RECORDS = 500
# A restore batch holds at most this many records, or about this many bytes
# of values, whichever comes first: a batch is spread over every partition,
# each partition's share written in one go at its primary.
BATCH_RECORDS = 5_000
BATCH_BYTES = 4 * 1024 * 1024
# How many times a partition's dump starts again (its primary moved), and a
# restore batch is sent again (no primary answered), before giving up.
ATTEMPTS = 5
# The refusals after which a restore batch is sent again (as is one whose
# answer did not come): nothing of it was written, or it may have been.
RETRIED = (Unavailable, OutcomeUnknown)
# The pause before a restore batch is sent again, doubled at each attempt
# (0.5 + 1 + 2 + 4 s in all): long enough for a new primary to be chosen.
RETRY_PAUSE = 0.5
# How often a restore renews the provisional leases of the uploads it
# restores: well within the ten minutes after which the collector takes the
# chunks of an upload whose lease is not renewed.
LEASE_RENEWAL = 120.0


@frozen
class Outcome:
    """
    What a save or a restore did.

    @ivar files: the files among the records (manifests, not the
        tombstones of files removed).
    @ivar skipped: records not restored because their time to live had run
        out.
    """

    summary: Summary
    files: int
    seconds: float
    skipped: int = 0

    def describe(self, verb: str, preposition: str, path: str) -> str:
        s = self.summary
        text = (
            f"{verb} {_count(s.keys, 'key')} and {_count(self.files, 'file')}"
            f" ({_count(s.file_records, 'file record')}), {_size(s.value_bytes)} of values,"
            f" {_count(s.partitions, 'partition')}, {preposition} {path} in {self.seconds:.2f} s"
        )
        if self.skipped:
            text += f"; {self.skipped} records had expired and were skipped"
        return text


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024 or unit == "MiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    raise AssertionError  # pragma: no cover


def save(client: Any, path: str, *, clock: Callable[[], float] = time.monotonic) -> Outcome:
    """
    Write a snapshot of the cluster behind C{client} to C{path}: each
    partition dumped as of one moment, page by page.  The file appears
    under its name only once complete (it is written beside it first).

    @param client: a L{twisted_kv.client.Client}.
    @raise KVError: the cluster refused, or a partition's primary kept
        moving.
    """
    start = clock()
    partial = path + ".partial"
    try:
        with open(partial, "wb") as stream:
            writer = SnapshotWriter(stream)
            files = 0
            for partition in range(client.snapshot_partitions()):
                files += _save_partition(client, writer, partition)
            summary = writer.finish()
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return Outcome(summary, files, clock() - start)


def _save_partition(client: Any, writer: SnapshotWriter, partition: int) -> int:
    """
    Write every record of C{partition}'s dump; return how many files it
    holds.
    """
    from twisted_kv.files import is_stored_file

    for attempt in range(ATTEMPTS):
        page = client.snapshot_page(partition, limit=PAGE_RECORDS)
        writer.begin_partition(partition, page.as_of, page.taken_at)
        files = 0
        try:
            while True:
                for record in page.records:
                    writer.add(record)
                    files += is_stored_file(record.key, record.value)
                if page.next is None:
                    return files
                page = client.snapshot_page(partition, page.dump_id, page.next, PAGE_RECORDS)
        except SnapshotExpired:
            writer.restart_partition()
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError  # pragma: no cover


def restore(
    client: Any,
    path: str,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """
    Load the snapshot file C{path} into the cluster behind C{client}.

    The whole file is checked first, so a damaged one writes nothing.  Then
    the files' uploads are held by provisional leases
    (L{twisted_kv.files.provisional_lease}, renewed every
    L{LEASE_RENEWAL} seconds), and the file is read once for each phase of
    L{twisted_kv.files.restore_phase} that it holds records of: the keys
    and the files' chunks, the directories, the manifests, and last the
    saved leases; so no file is visible before its contents, and the
    collector never takes them.  One batch is in flight at a time, each
    under an id of its own (L{_send}), so batches land in file order.

    @param wall_clock: the time written in the provisional leases.
    @param sleep: waits between two attempts of a batch.
    @raise BadSnapshot: the file is damaged, truncated or not a snapshot.
    @raise KVError: the cluster refused a batch, even sent again; its
        message says how far the restore got (the records written before
        stay written; restoring the file again finishes the work).
    """
    from twisted_kv.files import RESTORE_PHASES, is_lease_key, is_stored_file, restore_phase

    start = clock()
    progress = _Progress(secrets.token_hex(8))
    with open(path, "rb") as stream:
        files = 0
        phases = [0] * RESTORE_PHASES
        leases = 0
        for item in read_snapshot(stream):
            if isinstance(item, BackupRecord):
                files += is_stored_file(item.key, item.value)
                phases[restore_phase(item.key)] += 1
                leases += is_lease_key(item.key)
            elif isinstance(item, Summary):
                summary = item
        progress.total = summary.records
        held = clock()
        skipped = 0
        if leases:
            _hold_uploads(client, path, wall_clock(), progress, sleep)
        for phase in range(RESTORE_PHASES):
            if not phases[phase]:
                continue
            stream.seek(0)
            wanted = (r for r in records_of(stream) if restore_phase(r.key) == phase)
            for batch in _batches(wanted):
                if leases and clock() - held >= LEASE_RENEWAL:
                    held = clock()
                    _hold_uploads(client, path, wall_clock(), progress, sleep)
                answer = _send(client, batch, progress, sleep)
                progress.written += int(answer["written"])
                skipped += int(answer["skipped"])
    return Outcome(summary, files, clock() - start, skipped)


class _Progress:
    """
    How far a restore got: the batches sent (each named by the restore's
    id and its number), and the file's records written of its total.
    """

    def __init__(self, restore_id: str) -> None:
        self.restore_id = restore_id
        self.batches = 0
        self.written = 0
        self.total = 0

    def next_batch_id(self) -> str:
        self.batches += 1
        return f"{self.restore_id}-{self.batches}"


def _hold_uploads(
    client: Any, path: str, now: float, progress: _Progress, sleep: Callable[[float], None]
) -> None:
    """
    Write a provisional lease for every upload lease of the snapshot file
    C{path}.
    """
    from twisted_kv.files import is_lease_key, provisional_lease

    with open(path, "rb") as stream:
        leases = (
            evolve(record, value=provisional_lease(record.value, now))
            for record in records_of(stream)
            if is_lease_key(record.key)
        )
        for batch in _batches(leases):
            _send(client, batch, progress, sleep)


def _batches(records: Iterable[BackupRecord]) -> Iterator[list[BackupRecord]]:
    batch: list[BackupRecord] = []
    size = 0
    for record in records:
        if batch and (len(batch) >= BATCH_RECORDS or size + len(record.value) > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += len(record.value)
    if batch:
        yield batch


def _send(
    client: Any, batch: list[BackupRecord], progress: _Progress, sleep: Callable[[float], None]
) -> dict:
    """
    Write C{batch}, sent again under the same id if it was refused (503,
    504) or its answer did not come (so no record of it is written twice,
    and none of an earlier attempt lands after a later write), waiting a
    little longer before each attempt; return the answer (C{written},
    C{skipped}).

    @raise KVError: the cluster refused the batch, or the last attempt
        failed too; its message says how far the restore got.
    """
    batch_id = progress.next_batch_id()
    for attempt in range(ATTEMPTS):
        try:
            return client.restore(batch, batch_id)
        except (KVError, TimeoutError, ConnectionError) as problem:
            answered = isinstance(problem, KVError)
            if attempt < ATTEMPTS - 1 and (not answered or isinstance(problem, RETRIED)):
                sleep(RETRY_PAUSE * 2**attempt)
                continue
            error = problem if isinstance(problem, KVError) else OutcomeUnknown(
                f"no answer from the node ({problem or type(problem).__name__})"
            )
            tries = f"failed {attempt + 1} times" if attempt else "failed"
            error.args = (
                f"{error.message}; the restore stopped after writing {progress.written} of the"
                f" file's {progress.total} records: batch {progress.batches} ({len(batch)} records,"
                f" the first {name_of(batch[0].key)!r}) {tries} and may be written in part;"
                " the records after it are not written",
            )
            raise error from None
    raise AssertionError  # pragma: no cover


__all__ = ["Outcome", "restore", "save"]
