# -*- test-case-name: tests.test_storage_crash -*-
"""
Property tests of the durability of L{twisted_kv.storage}: random sequences
of appends, commits, compactions, injected disk errors and power cuts (at
any file-system call) on a L{CrashableFileSystem}, each followed by a crash
and a recovery, checked against a model of what was acknowledged.

After every recovery: every record whose commit returned (with a sync) is
back, in order; after them come, possibly, some of the records that were
written but not acknowledged, only as a prefix of the order they were
written in; nothing else, and nothing garbled.
"""

from __future__ import annotations

import errno
import random
from typing import Union

from attrs import define, field
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.errors import DiskFull, LogCorrupt, LogFailed, WriteFailed
from twisted_kv.storage.fs import IFileSystem, OSFileSystem
from twisted_kv.storage.log import Log, Scan
from twisted_kv.storage.recovery import Storage
from twisted_kv.storage.snapshot import Snapshots
from twisted_kv.storage.testing import CrashableFileSystem, Fault, PowerCut

DIRECTORY = "data/n1"
RECORD = 1
# Small segments, so that sequences rotate often.
SEGMENT_BYTES = 200
# Zeros written ahead a few records at a time, so that commits land on
# them, straddle their end and reserve again within a segment.
RESERVE_BYTES = 48


def _storage(fs: IFileSystem, directory: str) -> Storage:
    return Storage(Log(fs, directory, SEGMENT_BYTES, RESERVE_BYTES), Snapshots(fs, directory))


def _segment(path: str) -> bool:
    return path.endswith(".log")


def _snapshot(path: str) -> bool:
    return ".snap" in path


Operation = tuple[Union[str, int, bool], ...]

_appends = st.tuples(st.just("append"), st.integers(min_value=1, max_value=6))
_commits = st.tuples(st.just("commit"), st.booleans())
_crashes = st.just(("crash",))
# Appends, commits and crashes come three times as often as the rest, so
# that most sequences crash with written and unsynced records, recover, and
# write after the recovered end.
operations = st.one_of(
    _appends,
    _commits,
    _crashes,
    _appends,
    _commits,
    _crashes,
    _appends,
    _commits,
    _crashes,
    st.just(("compact",)),
    st.tuples(st.just("power_cut"), st.integers(min_value=0, max_value=6)),
)
# The above with disk errors.
operations_with_faults = st.one_of(
    operations,
    st.tuples(st.just("disk_full"), st.integers(min_value=0, max_value=40)),
    st.just(("write_error",)),
    st.just(("sync_error",)),
    st.just(("snapshot_full",)),
)


@define
class Model:
    """
    What a recovery may find.

    @ivar acked: records whose commit returned after a sync, or found by
        the last recovery: they must all come back, first.
    @ivar written: records written and not synced (or whose commit was cut
        short): a prefix of them may follow.
    @ivar pending: records appended and not committed: they never come
        back until committed.
    """

    acked: list[bytes] = field(factory=list)
    written: list[bytes] = field(factory=list)
    pending: list[bytes] = field(factory=list)
    count: int = 0

    def payload(self) -> bytes:
        self.count += 1
        # Lengths vary so that records straddle segment limits differently.
        return b"record %d " % self.count + b"x" * (self.count * 7 % 23)

    def synced(self) -> None:
        self.acked += self.written
        self.written = []

    def check(self, case: SynchronousTestCase, recovered: list[bytes]) -> None:
        case.assertEqual(recovered[: len(self.acked)], self.acked)
        extra = recovered[len(self.acked) :]
        case.assertEqual(extra, self.written[: len(extra)])
        self.acked, self.written, self.pending = recovered, [], []


@define
class Run:
    """
    One sequence of operations against a storage directory.
    """

    case: SynchronousTestCase
    fs: IFileSystem
    directory: str = DIRECTORY
    rng: random.Random = field(factory=random.Random)
    model: Model = field(factory=Model)
    storage: Storage = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.recover()

    def recover(self) -> None:
        self.storage = _storage(self.fs, self.directory)
        while True:
            try:
                recovered = [payload for kind, payload in self.storage.recover() if kind == RECORD]
            except PowerCut:
                assert isinstance(self.fs, CrashableFileSystem)
                self.fs = self.fs.crash(self.rng)
                self.storage = _storage(self.fs, self.directory)
                continue
            self.model.check(self.case, recovered)
            return

    def crash(self) -> None:
        assert isinstance(self.fs, CrashableFileSystem)
        self.fs = self.fs.crash(self.rng)
        self.recover()

    def apply(self, operation: Operation) -> None:
        kind = operation[0]
        log = self.storage.log
        fs = self.fs
        model = self.model
        if kind == "append":
            for _ in range(int(operation[1])):
                payload = model.payload()
                log.append(RECORD, payload)
                model.pending.append(payload)
        elif kind == "commit":
            sync = bool(operation[1])
            failed_before = log.failed
            batch, model.pending = model.pending, []
            try:
                log.commit(sync)
            except (DiskFull, WriteFailed):
                pass
            except LogFailed:
                if not failed_before:
                    model.written += batch
            except PowerCut:
                model.written += batch
                raise
            else:
                model.written += batch
                if sync:
                    model.synced()
        elif kind == "compact":
            if log.failed:
                return
            state = [(RECORD, payload) for payload in model.acked + model.written]
            try:
                self.storage.compact(state)
            except LogFailed:
                pass
            except (DiskFull, WriteFailed):
                model.synced()
            else:
                model.synced()
        elif kind == "disk_full":
            assert isinstance(fs, CrashableFileSystem)
            fs.inject(Fault("write", errno.ENOSPC, _segment, written=int(operation[1])))
        elif kind == "write_error":
            assert isinstance(fs, CrashableFileSystem)
            fs.inject(Fault("write", errno.EIO, _segment))
        elif kind == "sync_error":
            assert isinstance(fs, CrashableFileSystem)
            fs.inject(Fault("sync", errno.EIO, _segment))
        elif kind == "snapshot_full":
            assert isinstance(fs, CrashableFileSystem)
            fs.inject(Fault("write", errno.ENOSPC, _snapshot))
        elif kind == "power_cut":
            assert isinstance(fs, CrashableFileSystem)
            fs.cut_power_after(int(operation[1]))
        else:
            self.crash()

    def run(self, sequence: list[Operation]) -> None:
        for operation in sequence:
            try:
                self.apply(operation)
            except PowerCut:
                self.crash()
        self.crash()


class CrashTests(SynchronousTestCase):
    """
    Whatever happens, recovery gives back every acknowledged record and
    nothing that was not written.
    """

    @settings(max_examples=300)
    @given(
        st.lists(operations, min_size=20, max_size=80),
        st.integers(min_value=0, max_value=2**32),
    )
    def test_acknowledged_records_survive(self, sequence: list[Operation], seed: int) -> None:
        """
        After any sequence of appends, commits, compactions and crashes
        (between operations or at any file-system call), the recovered
        records are the acknowledged ones, then a prefix of the written
        ones.
        """
        Run(self, CrashableFileSystem(), rng=random.Random(seed)).run(sequence)

    @settings(max_examples=300)
    @given(
        st.lists(operations_with_faults, min_size=20, max_size=80),
        st.integers(min_value=0, max_value=2**32),
    )
    def test_disk_errors(self, sequence: list[Operation], seed: int) -> None:
        """
        The same with full disks, write errors and sync errors injected
        (the next write or sync fails): a failed commit acknowledges
        nothing and never leaves what it wrote behind, and after a failed
        sync nothing more is acknowledged.
        """
        Run(self, CrashableFileSystem(), rng=random.Random(seed)).run(sequence)

    def test_sequences_reach_every_outcome(self) -> None:
        """
        The sequences above are not vacuous: crashes do lose unsynced
        records, keep them, and tear them, on some seeds.
        """
        outcomes = set()
        for seed in range(40):
            run = Run(self, CrashableFileSystem(), rng=random.Random(seed))
            for operation in [("append", 3), ("commit", True), ("append", 3), ("commit", False)]:
                run.apply(operation)
            run.crash()
            outcomes.add((len(run.model.acked), run.storage.log.torn is not None))
        self.assertIn((3, False), outcomes)
        self.assertIn((6, False), outcomes)
        self.assertTrue({(3, True), (4, True), (5, True)} & outcomes)


class OSFileSystemTests(SynchronousTestCase):
    """
    The same sequences, without crashes or injected faults, on the real
    file system in a temporary directory: what was committed comes back.
    """

    @settings(max_examples=15)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("append"), st.integers(min_value=1, max_value=6)),
                st.tuples(st.just("commit"), st.booleans()),
                st.just(("compact",)),
            ),
            max_size=30,
        )
    )
    def test_committed_records_come_back(self, sequence: list[Operation]) -> None:
        """
        After any sequence, a new L{Storage} on the same directory reads
        back exactly the committed records, in order.
        """
        fs = OSFileSystem()
        directory = self.mktemp()
        run = Run(self, fs, directory)
        for operation in sequence:
            run.apply(operation)
        run.storage.log.close()
        again = _storage(fs, directory)
        recovered = [payload for _, payload in again.recover()]
        again.log.close()
        self.assertEqual(recovered, run.model.acked + run.model.written)


class DamageTests(SynchronousTestCase):
    """
    Damage on disk is found, never served.
    """

    @settings(max_examples=200)
    @given(
        st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=12),
        st.integers(min_value=0),
        st.integers(min_value=0, max_value=7),
    )
    def test_flipped_bit(self, batches: list[int], where: int, bit: int) -> None:
        """
        With one bit flipped anywhere in the log, recovery raises
        L{LogCorrupt} naming the damaged segment, or (when the bit is in the
        very last record, where damage looks like a torn write) returns
        every record but that one, or (in the zeros written ahead after it,
        where it looks like the start of a torn write) every record; never
        a changed record.  Asked to drop
        the damage, it returns a prefix of the records and goes on after it.
        """
        fs = CrashableFileSystem()
        run = Run(self, fs)
        for count in batches:
            run.apply(("append", count))
            run.apply(("commit", True))
        committed = run.model.acked
        names = [name for name in fs.listdir(DIRECTORY) if _segment(name)]
        sizes = [fs.size(f"{DIRECTORY}/{name}") for name in names]
        where %= sum(sizes)
        for name, size in zip(names, sizes):
            if where < size:
                break
            where -= size
        path = f"{DIRECTORY}/{name}"
        data = bytearray(fs.read(path))
        records = Scan(bytes(data))
        list(records)  # to learn where they end (records.end)
        data[where] ^= 1 << bit
        fs.remove(path)
        damaged = fs.create(path)
        damaged.write(bytes(data))
        damaged.sync()
        fs.sync_dir(DIRECTORY)
        storage = _storage(fs, DIRECTORY)
        try:
            recovered = [payload for _, payload in storage.recover()]
        except LogCorrupt as e:
            self.assertEqual(e.path, path)
            self.assertLessEqual(e.offset, where)
        else:
            in_zeros = where >= records.end
            self.assertEqual(recovered, committed if in_zeros else committed[:-1])
            self.assertEqual(name, names[-1])
            self.assertIsNotNone(storage.log.torn)
            return
        storage.log.close()
        storage = _storage(fs, DIRECTORY)
        kept = [payload for _, payload in storage.recover(drop_damage=True)]
        self.assertEqual(kept, committed[: len(kept)])
        storage.log.append(RECORD, b"after")
        storage.log.commit()
        again = _storage(fs.crash(random.Random(0)), DIRECTORY)
        self.assertEqual([payload for _, payload in again.recover()], kept + [b"after"])
