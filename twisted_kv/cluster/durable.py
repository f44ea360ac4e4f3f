# -*- test-case-name: tests.test_durable -*-
"""
What a node keeps in its data directory (C{DATA_DIR/nX/}), and the one place
its records are encoded and decoded.

Everything goes to one log per node (L{twisted_kv.storage}): one sequence of
writes and syncs for the whole node, so that group commit gathers the
records of every partition and of the consensus state that one reactor turn
produced into one write and one sync.  Each record's payload is a msgpack
list (L{twisted_kv.wire.codec}); its type says what it is:

  - L{CONSENSUS}: C{[term, voted_for, index, entry_term, wire_map,
    commit_index]}, the node's consensus state
    (L{twisted_kv.core.consensus.Consensus.durable_state}); the last one
    read wins.  Written and synced before the node sends anything that
    follows a change of it, whatever the C{fsync} policy.
  - L{APPEND}: C{[partition, n, epoch, prev_seq, prev_epoch, entries,
    commit, origin]}, what a replica took into its log: a member's C{app} message
    from its primary (once it changed the replica), or a primary's own new
    entries and commit position, in the same form.  Replayed through
    L{Replica.on_append}, which skips what the log already holds, so a
    record read twice changes nothing.
  - L{SNAPSHOT}: C{[partition, n, epoch, seq, seq_epoch, first, last,
    records, origin]}, a chunk of a primary's snapshot a member took in; replayed
    through L{Replica.on_snapshot}.
  - L{FORGET}: C{[partition, n, origin]}: the replica dropped everything
    (the node left the partition, or the partition started again empty).
  - L{STATE} and L{KEYS}, in snapshots only: C{[partition, n, epoch,
    origin, base_seq, base_epoch, commit_seq, applied_seq, entries,
    recent_ops]}, a replica as it was when its record number was C{n},
    followed by its store in chunks, C{[partition, records]}
    (L{Replica.export_state}).
  - L{IDENTITY}: C{[incarnation, boot_id, policy, run]}, written at each
    start: who the node was, on which boot of the machine, under which
    policy, in which run.

C{n} numbers each partition's records, from 1, across runs.  A snapshot is
fuzzy: taken one partition per reactor turn after the log was rotated, so
the log after it holds records of a partition from before its slice as well
as after; replay skips a partition's records numbered up to its slice's.
  - L{CLEAN}: C{[]}, written last by a clean stop, after which everything
    appended is synced.

Replicas are rebuilt by replaying their records through the same pure
methods that made them, in order; a replica's store thus holds what it had
applied, and its log the entries it held beyond (see docs/design.md §1.9).

Recovery reads the log once, at start, before the node is built
(L{NodeDisk.open}); what it finds is a L{Recovered}.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator, Optional

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_kv.core.consensus import DurableState
from twisted_kv.core.memstore import record_cost
from twisted_kv.core.records import Record
from twisted_kv.core.replica import Replica
from twisted_kv.errors import DiskFull, LogFailed, StorageCorrupt
from twisted_kv.storage.committer import CommitCounts, GroupCommitter, RunInThread
from twisted_kv.storage.fs import IFileSystem
from twisted_kv.storage.recovery import Storage
from twisted_kv.wire import codec

log = Logger()

#: Record types (see the module docstring).
CONSENSUS = 1
APPEND = 2
SNAPSHOT = 3
FORGET = 4
IDENTITY = 5
CLEAN = 6
STATE = 7
KEYS = 8

_REPLICA_FIELDS = {APPEND: 8, SNAPSHOT: 9, FORGET: 3, STATE: 10, KEYS: 2}

#: Log bytes appended since the last snapshot that start the next one, at
#: least (more if the live data is larger: see L{NodeDisk.compaction_due}).
#: A snapshot costs in proportion to the live data, so below five times this
#: much, this sets how often the node pays for one: 48 MiB (as Redis rewrites
#: its AOF at 64 MB at least, and etcd snapshots every 100,000 entries) made
#: PUTs of a store of 10,000-200,000 keys 12-39 % faster under PyPy than
#: 16 MiB (docs/performance.md); recovery replays at most about 170,000
#: writes of a 100-byte value more (3 s), and the disk stays under 3x the
#: live data + 64 MiB (old and new snapshot, 48 MiB of log, the zeros ahead).
COMPACT_MIN_BYTES = 48 * 1024 * 1024

#: Beyond L{COMPACT_MIN_BYTES}, a snapshot starts once the log since the last
#: one holds this share of the live data.  Replaying a logged write costs
#: about five times as much as loading a key from a snapshot (19 against
#: 4.2 us a key at 1,000,000 keys), so recovery takes at most about twice a
#: snapshot's load: within the 15 s of 1,000,000 keys.
COMPACT_SHARE_OF_LIVE = 1 / 5


def encode_consensus(state: DurableState) -> bytes:
    """
    The payload of a L{CONSENSUS} record.
    """
    return codec.encode(list(state))


def decode_consensus(payload: bytes) -> DurableState:
    """
    The state a L{CONSENSUS} record holds.

    @raise ValueError: the payload is not one.
    """
    fields = codec.decode(payload)
    if not isinstance(fields, list) or len(fields) != 6:
        raise ValueError("not a consensus record")
    term, voted_for, index, entry_term, wire_map, commit_index = fields
    return (term, voted_for, index, entry_term, wire_map, commit_index)


def encode_fields(fields: list) -> bytes:
    """
    The payload of a record of any other type than L{CONSENSUS}.
    """
    return codec.encode(fields)


@define
class _Replayer:
    """
    Rebuilds a node's state from its records, in order.
    """

    replicas: list[Replica]
    consensus: Optional[DurableState] = None
    identity: Optional["Identity"] = None
    runs: int = 0
    # per partition: the last record number seen, and the number up to
    # which records are covered by the partition's state in the snapshot
    numbers: dict[int, int] = field(factory=dict)
    covered: dict[int, int] = field(factory=dict)

    def replay(self, record_type: int, payload: bytes) -> None:
        """
        @raise ValueError: the record is malformed.
        """
        if record_type == CONSENSUS:
            self.consensus = decode_consensus(payload)
        elif record_type in _REPLICA_FIELDS:
            self._replica(record_type, codec.decode(payload))
        elif record_type == IDENTITY:
            incarnation, boot_id, policy, run = codec.decode(payload)
            self.identity = Identity(incarnation, boot_id, policy)
            self.runs = max(self.runs, run)
        elif record_type != CLEAN:
            raise ValueError(f"unknown record type {record_type}")

    def _replica(self, record_type: int, fields: Any) -> None:
        if not isinstance(fields, list) or len(fields) != _REPLICA_FIELDS[record_type]:
            raise ValueError(f"malformed record of type {record_type}")
        partition = fields[0]
        if not isinstance(partition, int) or not 0 <= partition < len(self.replicas):
            raise ValueError(f"no partition {partition!r}")
        replica = self.replicas[partition]
        try:
            if record_type == KEYS:
                replica.restore_keys(fields[1])
                return
            number = fields[1]
            self.numbers[partition] = max(self.numbers.get(partition, 0), number)
            if record_type == STATE:
                self.covered[partition] = number
                replica.restore_state(*fields[2:])
            elif number <= self.covered.get(partition, 0):
                return
            elif record_type == APPEND:
                replica.on_append(*fields[2:])
            elif record_type == SNAPSHOT:
                replica.on_snapshot(*fields[2:])
            else:
                replica.adopt_origin(fields[2])
                replica.forget()
        except (TypeError, IndexError, KeyError, AssertionError) as error:
            raise ValueError(f"unusable record of type {record_type}: {error!r}") from None


@frozen
class Identity:
    """
    Who a node was in a run: its incarnation, the boot of the machine it
    ran on, and the C{fsync} policy it ran with.
    """

    incarnation: int
    boot_id: str
    policy: str


@frozen
class Recovered:
    """
    What a node found in its data directory.

    @ivar consensus: its last consensus state, if it wrote any.
    @ivar replicas: every partition's replica, as the records left them.
    @ivar identity: the node's last identity, if it ever started here.
    @ivar runs: how many times it started here.
    @ivar clean: whether its last run stopped cleanly.
    @ivar records: how many records were read.
    @ivar seconds: how long reading them took.
    """

    consensus: Optional[DurableState]
    replicas: list[Replica]
    identity: Optional[Identity]
    runs: int
    clean: bool
    records: int
    seconds: float

    def keys(self) -> int:
        """
        How many keys the replicas hold, for the recovery's log line: those
        applied, and those only written by entries that are on disk but
        not yet known to be committed (they are applied once they are).
        """
        return sum(len(r.store) + len(_unapplied(r)) for r in self.replicas)

    def bytes(self) -> int:
        """
        How many bytes of data the replicas hold, counted as L{keys} are,
        for the same line.
        """
        return sum(
            r.store.bytes_used + sum(record_cost(key, record) for key, record in _unapplied(r).items())
            for r in self.replicas
        )


def _unapplied(replica: Replica) -> dict[str, Record]:
    """
    The keys C{replica}'s store lacks that entries of its log beyond what it
    applied write, with the newest record each writes.
    """
    found: dict[str, Record] = {}
    for entry in replica.log:
        change = entry.change
        if entry.seq > replica.applied_seq and change is not None:
            if change.record is None:
                found.pop(change.key, None)
            elif replica.store.get(change.key) is None:
                found[change.key] = change.record
    return found


@define
class NodeDisk:
    """
    A node's data directory, recovered and open for appending.

    @ivar path: the directory.
    @ivar policy: the C{fsync} policy of client data.
    @ivar recovered: what L{open} found.
    @ivar run: which start of the node in this directory this is, from 1.
    """

    path: str
    policy: str
    recovered: Recovered
    _storage: Storage
    _committer: GroupCommitter
    _run_in_thread: RunInThread
    _in_reactor: Callable[[Callable[[], Any]], Any]
    run: int = field(init=False)
    # per partition, the number of its last record
    _numbers: dict[int, int] = field(factory=dict, init=False)
    # the last consensus state and identity appended
    _consensus: Optional[DurableState] = field(default=None, init=False)
    _identity: Optional[list] = field(default=None, init=False)
    # bytes appended since the last snapshot started
    _since_snapshot: int = field(default=0, init=False)
    compacting: bool = field(default=False, init=False)
    _compaction: Optional["Deferred[None]"] = field(default=None, init=False)
    compact_min_bytes: int = field(default=COMPACT_MIN_BYTES, init=False)
    # the last record appended failed for want of space, and none since
    # succeeded
    full: bool = field(default=False, init=False)
    _failure_reported: bool = field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.run = self.recovered.runs + 1

    @property
    def failed(self) -> bool:
        """
        Whether a sync of the log failed: nothing can be made durable any
        more (until a restart reads back what is there).
        """
        return self._committer.failed

    @property
    def counts(self) -> CommitCounts:
        """
        The commits, syncs and records of the log since the node started.
        """
        return self._committer.counts

    def refusal(self) -> Optional[Exception]:
        """
        Why a new write must be refused before it is ordered, if it must:
        L{DiskFull} while the disk is full (until a record goes through
        again), L{LogFailed} once a sync failed.  Reads need no disk.
        """
        if self._committer.failed:
            return LogFailed(f"the log of {self.path} failed; writes stop until a restart")
        if self.full:
            return DiskFull(f"the disk of {self.path} is full")
        return None

    def probe(self, state: DurableState) -> None:
        """
        While the disk is full, try a small record (the consensus state
        again: the last one wins), so that writes resume once space is
        freed even if nothing else is being written.
        """
        if self.full and not self._committer.failed:
            self.save_consensus(state).addErrback(lambda failure: None)

    @classmethod
    def open(
        cls,
        fs: IFileSystem,
        path: str,
        policy: str,
        run_in_thread: RunInThread,
        clock: IReactorTime,
        partitions: int,
        in_reactor: Callable[[Callable[[], Any]], Any],
        commit_in_thread: Optional[RunInThread] = None,
    ) -> "NodeDisk":
        """
        Read what C{path} holds (see L{recovered}), then open its log for
        appending.

        A file damaged other than by a torn last write is never served:
        the directory is moved aside, whole (to C{PATH.damaged-N}, for the
        operator to look at), with one line naming the file, and the node
        starts from an empty one.  It then comes back as a node restarted
        without its data does (docs/design.md §1.5): a new incarnation,
        refilled from its peers, and its consensus state forgotten, with the
        cautions of a voter that lost it (§1.1).  Which partitions the
        damage reached cannot be told (a record's length may be what is
        damaged, and what follows it is lost), nor whether the consensus
        state read before it is the last one, so all of it goes.

        @param run_in_thread: runs the snapshots' writing, and the log's
            commits when C{commit_in_thread} is not given: then it must run
            work one piece at a time, in the order given, as the tests'
            runners do (a thread pool does not).
        @param in_reactor: runs a function in the reactor thread and returns
            its result, from the thread that writes a snapshot
            (C{blockingCallFromThread}); a plain call where
            C{run_in_thread} runs work in the reactor thread itself.
        @param commit_in_thread: runs the log's commits, one at a time, in
            order (a L{twisted_kv.storage.worker.LogWorker}); by default
            C{run_in_thread}.  Not the snapshots' runner: a snapshot's
            writing waits for the reactor, and commits go on meanwhile.

        @raise OSError: the directory cannot be read, created or moved
            aside.
        """
        try:
            return cls._read(
                fs, path, policy, run_in_thread, clock, partitions, in_reactor, commit_in_thread
            )
        except StorageCorrupt as damage:
            aside = _set_aside(fs, path)
            log.error(
                "{damage}: moved {path} to {aside}; this node starts empty and is"
                " refilled from its peers", damage=str(damage), path=path, aside=aside,
            )
            return cls._read(
                fs, path, policy, run_in_thread, clock, partitions, in_reactor, commit_in_thread
            )

    @classmethod
    def _read(
        cls,
        fs: IFileSystem,
        path: str,
        policy: str,
        run_in_thread: RunInThread,
        clock: IReactorTime,
        partitions: int,
        in_reactor: Callable[[Callable[[], Any]], Any],
        commit_in_thread: Optional[RunInThread] = None,
    ) -> "NodeDisk":
        """
        What L{open} does, damage aside: read C{path} and open its log.

        @raise twisted_kv.errors.StorageCorrupt: a file is damaged other
            than by a torn last write (the error names it).
        """
        started = time.monotonic()
        storage = Storage.at(fs, path)
        replayer = _Replayer([Replica(p) for p in range(partitions)])
        count = 0
        clean = False
        for record_type, payload in storage.recover():
            count += 1
            clean = record_type == CLEAN
            try:
                replayer.replay(record_type, payload)
            except ValueError as error:
                raise StorageCorrupt(path, 0, f"record {count} unreadable: {error}") from None
        replicas = replayer.replicas
        for replica in replicas:
            replica.durable_seq = replica.last_seq
        if storage.log.torn is not None:
            torn = storage.log.torn
            log.warn(
                "dropped a torn write at the end of {path} ({size} bytes at offset {offset})",
                path=torn.path,
                size=torn.dropped,
                offset=torn.offset,
            )
        committer = GroupCommitter(
            storage.log, policy, commit_in_thread or run_in_thread, clock
        )
        recovered = Recovered(
            replayer.consensus, replicas, replayer.identity, replayer.runs, clean, count,
            time.monotonic() - started,
        )
        disk = cls(path, policy, recovered, storage, committer, run_in_thread, in_reactor)
        disk._numbers = dict(replayer.numbers)
        disk._consensus = replayer.consensus
        return disk

    def incarnation(self, fresh: int, boot_id: str) -> int:
        """
        Decide which incarnation the node runs as, and record it.

        A node keeps being the member it was only if it holds everything it
        acknowledged: always with C{fsync = always} (it acknowledged only
        what was synced), after a clean stop (which synced everything), or
        on the same boot of the machine (a killed process loses nothing it
        wrote: the kernel still holds it).  Otherwise, after a power loss
        under C{everysec} or C{never}, it may have lost acknowledged
        entries: it takes the new incarnation C{fresh}, so that the cluster
        treats it as restarted empty (docs/design.md §1.5) and refills it.

        @param boot_id: identifies the machine's current boot.
        """
        last = self.recovered.identity
        keep = last is not None and (
            last.policy == "always" or self.recovered.clean or last.boot_id == boot_id
        )
        incarnation = last.incarnation if keep and last is not None else fresh
        self._identity = [incarnation, boot_id, self.policy, self.run]
        self.append(IDENTITY, self._identity).addErrback(
            lambda failure: log.error(
                "cannot record the node's identity in {path}: {error}",
                path=self.path, error=failure.getErrorMessage(),
            )
        )
        return incarnation

    def append_replica(
        self, record_type: int, partition: int, fields: list, lazy: bool = False
    ) -> "Deferred[None]":
        """
        Append a record of a replica of C{partition}: C{fields} after the
        partition and the record's number.

        @param lazy: see L{GroupCommitter.append}.
        """
        number = self._numbers[partition] = self._numbers.get(partition, 0) + 1
        return self.append(record_type, [partition, number, *fields], lazy)

    def append(self, record_type: int, fields: list, lazy: bool = False) -> "Deferred[None]":
        """
        Append a record of C{fields}.

        @param lazy: see L{GroupCommitter.append}.
        @return: a Deferred that fires once the record is as durable as the
            C{fsync} policy asks, or fails as L{GroupCommitter.append} does.
        """
        payload = encode_fields(fields)
        self._since_snapshot += len(payload)
        return self._appended(self._committer.append(record_type, payload, lazy))

    def _appended(self, d: "Deferred[None]") -> "Deferred[None]":
        def succeeded(result: None) -> None:
            self.full = False

        def failed(failure: Failure) -> Failure:
            if failure.check(DiskFull):
                if not self.full:
                    log.error("{path}: disk full; refusing writes until space is freed",
                              path=self.path)
                self.full = True
            elif failure.check(LogFailed) and not self._failure_reported:
                log.error(
                    "{path}: {error}; refusing writes until a restart: this node"
                    " acknowledges nothing more and hands its partitions over to"
                    " their other copies", path=self.path, error=failure.getErrorMessage(),
                )
                self._failure_reported = True
            return failure

        return d.addCallbacks(succeeded, failed)

    def save_consensus(self, state: DurableState) -> "Deferred[None]":
        """
        Append the consensus state.

        @return: a Deferred that fires once the record is synced, whatever
            the policy, or fails as L{GroupCommitter.append} does (the
            outputs that follow the change must then never be sent).
        """
        self._consensus = state
        payload = encode_consensus(state)
        self._since_snapshot += len(payload)
        written = self._appended(self._committer.append(CONSENSUS, payload))
        if self.policy == "always":
            return written
        synced = self._committer.exclusive(self._storage.log.sync)
        written.addErrback(lambda failure: None)
        return synced

    def compaction_due(self, live_bytes: int) -> bool:
        """
        Whether to start a snapshot now: the log since the last one has
        grown beyond L{COMPACT_SHARE_OF_LIVE} of the live data (and
        L{compact_min_bytes}), so that recovery replays little log, and the
        disk holds about a snapshot (the live data), a fifth of it in log
        and what is appended while the next snapshot is written.
        """
        return (
            not self.compacting
            and not self._committer.failed
            and self._since_snapshot
            > max(self.compact_min_bytes, live_bytes * COMPACT_SHARE_OF_LIVE)
        )

    def compact(self, replicas: list[Replica]) -> "Deferred[None]":
        """
        Replace the log so far by a snapshot, in the background: the log
        is rotated (in order with the commits), then the snapshot is written
        in a thread, taking one replica per reactor turn (L{in_reactor}), so
        that requests go on meanwhile and no second copy of the data is
        built; once it is durable, the segments it covers are removed.

        @return: a Deferred that fires when done; a failure (the disk full,
            say) is logged, and the log simply goes on.
        """
        self.compacting = True
        self._since_snapshot = 0
        # What was appended before this call is in the segments the
        # snapshot replaces: their last consensus state and identity go in.
        consensus, identity = self._consensus, self._identity
        storage = self._storage
        started = time.monotonic()

        def write(covers: int) -> "Deferred[int]":
            records = self._snapshot_records(consensus, identity, replicas)
            return self._run_in_thread(
                lambda: storage.snapshots.write(covers, records)
            ).addCallback(lambda snapshot: covers)

        def done(result: object) -> None:
            self.compacting = False
            self._compaction = None
            if isinstance(result, Failure):
                log.error(
                    "snapshot of {path} failed: {error}; the log goes on",
                    path=self.path, error=result.getErrorMessage(),
                )
            else:
                log.info(
                    "snapshot of {path} written in {seconds:.2f} s",
                    path=self.path, seconds=time.monotonic() - started,
                )

        d = self._committer.exclusive(storage.log.rotate)
        self._compaction = d
        d.addCallback(write)
        d.addCallback(lambda covers: self._committer.exclusive(
            lambda: storage.log.remove_before(covers)
        ))
        return d.addBoth(done)

    def _snapshot_records(
        self, consensus: Optional[DurableState], identity: Optional[list], replicas: list[Replica]
    ) -> Iterator[tuple[int, bytes]]:
        """
        The records of a snapshot, made as the writer consumes them: each
        replica's state is taken in the reactor thread, in one short turn
        (its header, and a copy of its store's index), and so is each chunk
        of its store, built and encoded in a turn of its own: Python work
        in the writer's thread would hold the interpreter lock while the
        reactor waits (up to the switch interval, 5 ms, each time it wants
        it back), where a turn of the reactor's own is as short as a chunk
        is small (L{twisted_kv.core.replica.SNAPSHOT_CHUNK_BYTES}).  The
        writer's thread only writes and syncs.
        """
        if consensus is not None:
            yield CONSENSUS, encode_consensus(consensus)
        if identity is not None:
            yield IDENTITY, encode_fields(identity)
        for replica in replicas:
            partition = replica.partition
            number, header, chunks = self._in_reactor(
                lambda: (self._numbers.get(partition, 0), *replica.export_state())
            )
            yield STATE, encode_fields([partition, number, *header])
            while True:
                payload = self._in_reactor(lambda: _encoded_chunk(partition, chunks))
                if payload is None:
                    break
                yield KEYS, payload

    def stop(self) -> "Deferred[None]":
        """
        Record a clean stop, sync everything appended, and stop.
        """
        if self._compaction is not None:
            # The snapshot's writer calls into the reactor: let it finish
            # while the reactor runs.
            waiting: Deferred[None] = Deferred()
            self._compaction.addBoth(lambda result: waiting.callback(None))
            return waiting.addCallback(lambda _: self.stop())
        self.append(CLEAN, []).addErrback(lambda failure: None)
        return self._committer.stop()


def _encoded_chunk(partition: int, chunks: Iterator[list]) -> Optional[bytes]:
    """
    The payload of the next snapshot record of C{partition}'s store, or
    C{None} after the last.
    """
    chunk = next(chunks, None)
    return None if chunk is None else encode_fields([partition, chunk])


def _set_aside(fs: IFileSystem, path: str) -> str:
    """
    Move the data directory C{path} to the first free C{PATH.damaged-N}
    beside it, durably; return where.
    """
    number = 1
    while fs.exists(f"{path}.damaged-{number}"):
        number += 1
    aside = f"{path}.damaged-{number}"
    fs.rename(path, aside)
    fs.sync_dir(os.path.dirname(path.rstrip(os.sep)))
    return aside


@define
class _Held:
    """
    Messages waiting for a record to be durable: those that followed it and
    those sent after, in order.
    """

    outgoing: list[tuple[str, list]]
    done: bool = False


@define
class DurableGate:
    """
    Sends messages in order, each only once every record it follows is
    durable: an answer that acknowledges a vote or an entry must never
    reach a peer before what it acknowledges survives a crash.

    @ivar send_all: sends messages at once.
    @ivar what: names the records, for the log line when one fails.
    """

    send_all: Callable[[list[tuple[str, list]]], None]
    what: str
    _held: list[_Held] = field(factory=list)

    def after(self, durable: "Deferred[None]", outgoing: list[tuple[str, list]]) -> None:
        """
        Send C{outgoing} once C{durable} fires and everything held before
        is sent; if it fails, never (the failure is logged).
        """
        held = _Held(list(outgoing))
        self._held.append(held)
        durable.addCallbacks(
            self._done, self._failed, callbackArgs=(held,), errbackArgs=(held,)
        )

    def send(self, outgoing: list[tuple[str, list]]) -> None:
        """
        Send C{outgoing} after what is held, or at once if nothing is.
        """
        if self._held:
            self._held[-1].outgoing.extend(outgoing)
        else:
            self.send_all(outgoing)

    def _done(self, result: object, held: _Held) -> None:
        held.done = True
        while self._held and self._held[0].done:
            self.send_all(self._held.pop(0).outgoing)

    def _failed(self, failure: Failure, held: _Held) -> None:
        log.error(
            "cannot make {what} durable: {error}; not answering",
            what=self.what, error=failure.getErrorMessage(),
        )
        held.outgoing.clear()
        self._done(None, held)
