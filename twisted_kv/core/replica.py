# -*- test-case-name: tests.test_replica -*-
"""
Primary/backup replication of one partition, with commit by every member.

This follows PacificA (Lin et al., 2008) and Kafka's in-sync replicas: the
configuration (epoch, members, primary) comes from the partition leader's map
(L{twisted_kv.core.placement}); within an epoch the primary orders every write
into a log, sends log entries to every member, and commits an entry only once
I{every} member stores it.  Log matching and repair of divergent tails follow
Raft's AppendEntries: each message names the entry before its entries, a
member that does not hold it refuses with a hint, and a member's uncommitted
entries that conflict with the primary's log are dropped.

Why this meets the guarantees (argued in full in docs/design.md):

  - An acknowledged write is in the memory of every member, and members number
    at least ⌊N/2⌋+1.
  - Fencing: a member accepts entries only from its current epoch or a newer
    one.  A new primary is chosen among the old members and adopts the new
    epoch before it serves, so from then on the old primary can no longer
    collect every member's acknowledgement.
  - A new primary holds every committed entry (it was a member when each was
    committed); it treats its whole log as to-be-committed and serves reads
    only after it has committed that log under its own epoch.
  - Reads at the primary are linearizable: a read is answered only after
    every member confirmed the primary's epoch in a round started after the
    read arrived (batched: one round serves every read waiting for it), or
    while a read lease holds.  A member that acknowledges a round promises
    not to take over as primary for a while (L{Replica.promised_until});
    once every member has acknowledged a round, the primary holds a lease
    for a shorter while from the round's start (L{Replica.lease_start}), so
    no newer primary can serve during it.

The class is pure: it decides and records, and the node layer sends the
messages it produces and turns its results into Deferreds.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from typing import Iterable, Iterator, Optional

from attrs import define, frozen

from twisted_kv.core import messages
from twisted_kv.core.memstore import MemStore
from twisted_kv.core.merkle import RangeDigest, bucket_of
from twisted_kv.core.records import (
    Change,
    Expire,
    Operation,
    Record,
    decide,
    live,
    make_version,
    version_seq,
)

# How many operation ids each replica remembers per partition, so that a
# client operation retried after a failover is applied at most once.  A
# coordinator retries only within its request timeout, so the newest few
# thousand per partition cover every retry still possible at tens of
# thousands of writes a second.  Each costs about 150 bytes (see
# L{Replica._remember}).
RECENT_OPERATIONS = 2048

# Changes each replica remembers after applying them, so that a new primary
# can announce again what its predecessor may not have announced.
RECENT_CHANGES = 256

# Rounds whose start the primary remembers while it waits for every member
# to confirm them; an older round confirmed late grants no lease.
ROUND_STARTS_KEPT = 64

# Applied entries each replica keeps in its log beyond what every member
# holds (at most about this many bytes of keys and records), so that a member
# that missed only those is sent them rather than a snapshot of the whole
# partition.
RETAINED_ENTRIES = 1024
RETAINED_BYTES = 256 * 1024

# How many log positions the trim point moves before the log is trimmed,
# unless the entries applied since the last trim hold RETAINED_BYTES of keys
# and values.  Each trim counts the retained entries (up to RETAINED_ENTRIES
# of them): every 64 positions that was 16 counts per entry written, 40 % of
# the CPU of replaying a log of 1,000,000 restored keys (each record's
# entries move the trim point by about 80 positions at once); every 512,
# about 2.  The log holds at most this many entries, or about RETAINED_BYTES,
# more than it retains.
TRIM_BATCH = 512

# Largest chunk of a replica's store in a snapshot of the data directory,
# in key and value bytes (one record may exceed it).  Each chunk is built
# and encoded in a reactor turn of its own while the snapshot is written
# (twisted_kv.cluster.durable): with 100-byte values, about 550 records and
# half a millisecond (bench/snapshot_stalls.py).
SNAPSHOT_CHUNK_BYTES = 64 * 1024

# Largest chunk of a snapshot sent to fill a member, in key and value bytes
# (one record may exceed it).  The primary builds each chunk, and the member
# takes it in (store and digest), in one reactor turn of its own, so a chunk
# is small enough for that turn to take a millisecond or two: filling a new
# copy must not hold up the requests the same nodes serve meanwhile.  With
# 100-byte values a member took a chunk of 64 KiB (about 550 records) in
# 2.5 ms at the median and up to 5 ms on a busy machine (bench/move_turns.py);
# a new node is filled by every other node at once, so their chunks queue at
# it.  With 1,000,000 keys, chunks of 8 KiB rather than 32 took the clients'
# p99 while data moves from about 3x normal to about 2.3x (bench/members.py,
# docs/performance.md), for 5-15 % longer moves.
FILL_CHUNK_BYTES = 8 * 1024

_KINDS = ("put", "delete", "expire")


@frozen
class Repair:
    """
    The exact content of some buckets of a partition, as the primary holds
    them: applied like a write, at one position of the log, so every replica
    ends up with the primary's content for those buckets.
    """

    buckets: tuple[int, ...]
    records: tuple[tuple[str, Record], ...]


@frozen
class Entry:
    """
    One write (or repair) in a partition's log.
    """

    epoch: int
    seq: int
    change: Optional[Change]
    op_id: Optional[str] = None
    repair: Optional[Repair] = None


@define
class _Fill:
    """
    A snapshot on its way to one member: the committed store as of log
    position C{seq}, copied when the snapshot started (later writes reach
    the member through the log), sent a chunk at a time.
    """

    seq: int
    seq_epoch: int
    store: MemStore
    keys: list[str]
    # how many of the keys went out, and the number of the next chunk
    sent: int = 0
    part: int = 0
def encode_summary(change: Change) -> list:
    """
    The wire form of a change without its record (4 fields): all a
    coordinator needs of the write it forwarded is the version and whether
    the key was created, not the value it sent itself.
    """
    return [_KINDS.index(change.kind), change.key, change.version, change.created]


def encode_change(change: Change) -> list:
    """
    The wire form of a change: 7 fields with its record, 4 without (a
    deletion, an expiry, or L{encode_summary}).
    """
    record = change.record
    if record is None:
        return encode_summary(change)
    value, content_type, _, expires_at = record.fields()
    return [0, change.key, change.version, value, content_type, expires_at, change.created]


def decode_change(data: list) -> Change:
    """
    The change L{encode_change} encoded as C{data}; its record is packed
    here, once, into the object the store will keep.
    """
    kind, key, version = data[0], data[1], data[2]
    if len(data) == 4:
        return Change(_KINDS[kind], key, version, None, data[3])
    return Change("put", key, version, Record(data[3], data[4], version, data[5]), data[6])


def encode_entry(entry: Entry) -> list:
    if entry.repair is not None:
        return [
            entry.epoch, entry.seq, None, None,
            list(entry.repair.buckets), encode_records(entry.repair.records),
        ]
    return [entry.epoch, entry.seq, entry.op_id, encode_change(entry.change)]


def decode_entry(data: list) -> Entry:
    if data[3] is None:
        return Entry(data[0], data[1], None, None, Repair(tuple(data[4]), decode_records(data[5])))
    return Entry(data[0], data[1], decode_change(data[3]), data[2])


def encode_records(records: Iterable[tuple[str, Record]]) -> list:
    return [[key, *record.fields()] for key, record in records]


def decode_records(data: list) -> tuple[tuple[str, Record], ...]:
    return tuple(
        (key, Record(value, content_type, version, expires_at))
        for key, value, content_type, version, expires_at in data
    )


def chunk_bytes(chunk: list) -> int:
    """
    The key and value bytes a snapshot chunk (L{messages.snapshot}) carries.
    """
    return sum(len(key) + len(value) for key, value, *_ in chunk[7])


def _store_chunks(store: MemStore) -> Iterator[list]:
    """
    The encoded records of C{store}, in chunks of about
    L{SNAPSHOT_CHUNK_BYTES}.
    """
    batch: list[tuple[str, Record]] = []
    size = 0
    for key, record in store.items():
        batch.append((key, record))
        size += record.value_size + len(key)
        if size >= SNAPSHOT_CHUNK_BYTES:
            yield encode_records(batch)
            batch, size = [], 0
    if batch:
        yield encode_records(batch)


def _entry_bytes(entry: Entry) -> int:
    """
    About how much of the keys and records C{entry} holds (a record's
    packed form: its value and a header of 10 bytes or so).
    """
    if entry.repair is not None:
        return sum(len(key) + len(record.packed) for key, record in entry.repair.records)
    change = entry.change
    return len(change.key) + (len(change.record.packed) if change.record is not None else 0)


class Replica:
    """
    One partition on one node: its store, its log, and, while this node is
    the partition's primary, the replication state of every other member.

    @ivar epoch: the newest epoch this replica has adopted.
    @ivar origin: the epoch the data held started from (see
        L{twisted_kv.core.placement.PartitionConfig.origin}).
    @ivar commit_seq: the newest log position known to be committed.
    @ivar durable_seq: with a data directory, the last log position this
        replica's own copy holds on disk (L{mark_durable}): a primary counts
        its own copy towards a commit only that far, as it counts its
        members' copies only once they acknowledge them; C{None} without
        one.
    @ivar dropped_bytes: the memory the records of the stores this replica
        dropped still take until L{release_dropped} frees them (their
        C{bytes_used}, kept as they change rather than summed when asked).
    """

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.epoch = 0
        self.origin = 0
        self.store = MemStore()
        # stores this replica dropped whole, their records still to be
        # freed (L{release_dropped})
        self._dropped: list[MemStore] = []
        self.dropped_bytes = 0
        self.digest = RangeDigest()
        self.repaired_keys = 0
        self._digest_check: Optional[tuple[int, bytes]] = None
        self.digest_result: Optional[tuple[int, bool, list[int]]] = None
        self.log: list[Entry] = []
        self.base_seq = 0
        self.base_epoch = 0
        # the trim point when the log was last looked at for trimming, and
        # the bytes of the entries applied since
        self._trim_checked = 0
        self._untrimmed_bytes = 0
        self.commit_seq = 0
        self.applied_seq = 0
        self.durable_seq: Optional[int] = None
        # (epoch, seq): our log matches the log of the primary of that
        # epoch up to seq, as its messages showed
        self._verified = (0, 0)
        self._recent_ops: OrderedDict[str, int] = OrderedDict()
        self.recent_changes: deque[Entry] = deque(maxlen=RECENT_CHANGES)
        self._unannounced: list[Entry] = []
        self.is_primary = False
        self.members: list[str] = []
        self._match: dict[str, int] = {}
        self._next: dict[str, int] = {}
        self._sync_target: dict[str, int] = {}
        # what each member catching up had acknowledged at the last nudge
        self._sync_progress: dict[str, int] = {}
        self._snapshot_at: dict[str, int] = {}
        # snapshots on their way to members; the members whose last
        # acknowledgement said a snapshot is still arriving (they count for
        # commits and rounds, holding every entry after the snapshot's
        # position, but are not caught up); members to be sent a snapshot
        # whatever their log holds
        self._fills: dict[str, _Fill] = {}
        self._hollow: set[str] = set()
        self._snapshot_wanted: set[str] = set()
        # the round of each member's snapshot whose last chunk went out: a
        # member still filling in a later round lost a chunk
        self._snapshot_done_in: dict[str, int] = {}
        # members sent again what follows a whole snapshot, which they have
        # not said they hold (L{nudge_stalled_members})
        self._snapshot_nudged: set[str] = set()
        # as a member: while a snapshot arrives, the number of its next
        # chunk (the store then holds only part of the committed state as
        # of base_seq, and the entries after it wait in the log, unapplied)
        self._filling_part: Optional[int] = None
        # for each member that has acknowledged nothing since it was
        # added, where its log may end (ours when it was added, then its
        # refusals' hints): what is sent again starts there, not at the
        # start of our log
        self._probe: dict[str, int] = {}
        self._pending_by_key: dict[str, Entry] = {}
        self._serving_from = 0
        self.commit_sent = 0
        self.round = 0
        self._acked_round: dict[str, int] = {}
        # (round, when it started) of the rounds not yet confirmed by every
        # member, oldest first
        self._round_starts: deque[tuple[int, float]] = deque(maxlen=ROUND_STARTS_KEPT)
        self.lease_start = float("-inf")
        self.promised_until = float("-inf")
        # the epoch of the round the promise was last made for
        self._promised_epoch = 0
        self._expiries: list[tuple[float, int, str]] = []

    # -- the log ---------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self.log[-1].seq if self.log else self.base_seq

    def _epoch_at(self, seq: int) -> Optional[int]:
        if seq == self.base_seq:
            return self.base_epoch
        if seq < self.base_seq:
            return None
        return self.log[seq - self.base_seq - 1].epoch

    def _truncate_from(self, seq: int) -> None:
        assert seq > self.commit_seq, "committed entries are never dropped"
        if self.durable_seq is not None:
            self.durable_seq = min(self.durable_seq, seq - 1)
        dropped = self.log[seq - self.base_seq - 1 :]
        del self.log[seq - self.base_seq - 1 :]
        for entry in dropped:
            seen = self._recent_ops.get(entry.op_id) if entry.op_id is not None else None
            if seen is not None and version_seq(seen >> 3) == entry.seq:
                del self._recent_ops[entry.op_id]

    def _apply_committed(self) -> list[Entry]:
        """
        Fold committed entries into the store; return them in order.  Not
        while a snapshot arrives: its chunks still to come are older.
        """
        if self._filling_part is not None:
            return []
        upto = min(self.commit_seq, self.last_seq)
        applied = []
        for seq in range(self.applied_seq + 1, upto + 1):
            entry = self.log[seq - self.base_seq - 1]
            self._untrimmed_bytes += _entry_bytes(entry)
            if entry.repair is not None:
                self._apply_repair(entry.repair)
            else:
                self._apply_change(entry.change)
                if self._pending_by_key.get(entry.change.key) is entry:
                    del self._pending_by_key[entry.change.key]
                self.recent_changes.append(entry)
                if self.is_primary:
                    self._unannounced.append(entry)
                record = entry.change.record
                if self.is_primary and record is not None and record.expires_at is not None:
                    heapq.heappush(
                        self._expiries, (record.expires_at, entry.change.version, entry.change.key)
                    )
                applied.append(entry)
            if self._digest_check is not None and self._digest_check[0] == seq:
                self._compare_digest()
        self.applied_seq = max(self.applied_seq, upto)
        self._trim()
        return applied

    def _apply_change(self, change: Change) -> None:
        """
        Change the store, keeping the digest in step.
        """
        old = self.store.get(change.key)
        if old is not None:
            self.digest.toggle(change.key, old)
        self.store.apply(change)
        if change.record is not None:
            self.digest.toggle(change.key, change.record)

    def apply_outside_log(self, change: Change) -> None:
        """
        Change this replica's store, and its digest, without a log entry, as
        a damaged disk or a bug would: the replica then differs from the
        partition's other members until anti-entropy repairs it.  The node
        never calls it; it is how the tests make replicas diverge.
        """
        self._apply_change(change)

    def _apply_repair(self, repair: Repair) -> None:
        wanted = dict(repair.records)
        buckets = set(repair.buckets)
        for key in [k for k in self.store.keys() if bucket_of(k) in buckets]:
            record = self.store.get(key)
            assert record is not None
            if wanted.get(key) != record:
                self.repaired_keys += 1
                self._apply_change(Change("delete", key, record.version, None))
        for key, record in wanted.items():
            if self.store.get(key) != record:
                if self.store.get(key) is None:
                    self.repaired_keys += 1
                self._apply_change(Change("put", key, record.version, record))

    def _bucket_content(self, buckets: set[int]) -> tuple[tuple[str, Record], ...]:
        keys = {k for k in self.store.keys() if bucket_of(k) in buckets}
        keys |= {k for k in self._pending_by_key if bucket_of(k) in buckets}
        content = ((key, self.latest(key)) for key in sorted(keys))
        return tuple((key, record) for key, record in content if record is not None)

    def _trim(self) -> None:
        """
        Forget applied entries every member holds, but the newest few
        (L{RETAINED_ENTRIES}, L{RETAINED_BYTES}): a member that comes back
        after missing only those (a node restarted with its data, a member
        dropped for a while), even to a primary that was a member when it
        left, is sent just them.  A member that falls further behind is
        refilled from a snapshot instead.  Looked at once every
        L{TRIM_BATCH} positions or L{RETAINED_BYTES} applied, so that the
        retained entries are counted only once in a while.
        """
        floor = self.applied_seq
        if self.is_primary:
            floor = min([floor, *self._match.values()])
        if abs(floor - self._trim_checked) < TRIM_BATCH and self._untrimmed_bytes < RETAINED_BYTES:
            return
        self._trim_checked = floor
        self._untrimmed_bytes = 0
        kept, size = 0, 0
        while kept < floor - self.base_seq and kept < RETAINED_ENTRIES and size < RETAINED_BYTES:
            size += _entry_bytes(self.log[floor - kept - self.base_seq - 1])
            kept += 1
        floor -= kept
        drop = floor - self.base_seq
        if drop > 0:
            self.base_epoch = self.log[drop - 1].epoch
            self.base_seq = floor
            del self.log[:drop]

    def _remember(self, entry: Entry) -> None:
        """
        Remember the operation of C{entry} by its id, as one integer: the
        change's version (which holds the log position), kind and
        C{created}.  Ids are kept by the thousand per partition, and an
        integer, unlike a tuple or a L{Change}, is never tracked by CPython's
        cyclic collector: a busy node filling this memory with tuples made
        each young collection traverse tens of thousands of them, pausing it
        for tens of milliseconds.
        """
        if entry.op_id is None:
            return
        change = entry.change
        assert change is not None and version_seq(change.version) == entry.seq
        self._recent_ops[entry.op_id] = (
            change.version << 3 | _KINDS.index(change.kind) << 1 | change.created
        )
        if len(self._recent_ops) > RECENT_OPERATIONS:
            self._recent_ops.popitem(last=False)

    # -- as primary ------------------------------------------------------

    def become_primary(self, epoch: int, members: Iterable[str], in_sync: Iterable[str]) -> None:
        """
        Take over (or keep) the partition as primary in C{epoch}, with the
        other C{members}; those not in C{in_sync} are caught up first.
        """
        members = list(members)
        synced = set(in_sync)
        takeover = not self.is_primary
        # A lease rests on the promises of the members of one configuration.
        self._forget_lease()
        self.epoch = epoch
        self.is_primary = True
        if takeover:
            for table in (
                self._match, self._next, self._acked_round, self._sync_target,
                self._snapshot_at, self._probe, self._fills, self._hollow,
                self._snapshot_wanted, self._snapshot_done_in, self._snapshot_nudged,
            ):
                table.clear()
        for member in members:
            if member not in self._match:
                self._match[member] = 0
                self._next[member] = self._probe[member] = self.last_seq + 1
                self._acked_round[member] = 0
            if member in synced:
                self._sync_target.pop(member, None)
            elif member not in self._sync_target:
                self._sync_target[member] = self.last_seq
        for gone in set(self._match) - set(members):
            for table in (
                self._match, self._next, self._acked_round, self._sync_target,
                self._snapshot_at, self._probe, self._fills, self._snapshot_done_in,
            ):
                table.pop(gone, None)
            for members_set in (self._hollow, self._snapshot_wanted, self._snapshot_nudged):
                members_set.discard(gone)
        self.members = members
        if takeover:
            # The old primary may have died before announcing its last
            # changes: announce them again (listeners drop repeats).
            self._unannounced = list(self.recent_changes)
            self._serving_from = self.last_seq
            self._pending_by_key = {
                e.change.key: e
                for e in self.log
                if e.seq > self.applied_seq and e.change is not None
            }
            self._expiries = list(self.store.expiries())
            heapq.heapify(self._expiries)
        self._advance_commit()

    def step_down(self, epoch: int) -> None:
        """
        Stop being primary (another node is, as of C{epoch}).
        """
        self.epoch = max(self.epoch, epoch)
        self.is_primary = False
        self.members = []
        self._match.clear()
        self._next.clear()
        self._acked_round.clear()
        self._sync_target.clear()
        self._snapshot_at.clear()
        self._probe.clear()
        self._fills.clear()
        self._hollow.clear()
        self._snapshot_wanted.clear()
        self._snapshot_done_in.clear()
        self._snapshot_nudged.clear()
        self._pending_by_key.clear()
        self._expiries = []
        self._unannounced = []
        self._forget_lease()

    def take_announcements(self) -> list[Entry]:
        """
        The committed changes this primary has not yet handed out to be
        announced, in order; handing them out empties the list.  Every
        commit lands here, whatever caused it (a member's answer, a write
        to a primary without members, a member leaving the configuration),
        and so does, on takeover, everything the predecessor may not have
        announced.
        """
        announcements = self._unannounced
        if announcements:
            self._unannounced = []
        return announcements

    def _forget_lease(self) -> None:
        self._round_starts.clear()
        self.lease_start = float("-inf")

    @property
    def serving(self) -> bool:
        """
        Whether the primary has committed everything it took over with.
        """
        return self.is_primary and self.commit_seq >= self._serving_from

    def latest(self, key: str) -> Optional[Record]:
        """
        The newest record of C{key}, including writes not yet committed:
        what the next write to C{key} is decided against.
        """
        pending = self._pending_by_key.get(key)
        if pending is not None:
            return pending.change.record
        return self.store.get(key)

    def pending_seq(self, key: str) -> Optional[int]:
        pending = self._pending_by_key.get(key)
        return None if pending is None else pending.seq

    def find_operation(self, op_id: str, key: str) -> Optional[tuple[int, Change]]:
        """
        The log position and effect (without the value) of an operation on
        C{key} already ordered, so that a retried operation is not applied
        twice.
        """
        seen = self._recent_ops.get(op_id)
        if seen is None:
            return None
        version = seen >> 3
        change = Change(_KINDS[seen >> 1 & 3], key, version, None, bool(seen & 1))
        return version_seq(version), change

    def propose(self, operation: Operation, op_id: Optional[str], now: float) -> Optional[Entry]:
        """
        Order C{operation} as the next log entry.

        @return: the new entry, or C{None} when the operation changes nothing.
        @raise KVError: the operation's condition does not hold.
        """
        assert self.is_primary
        seq = self.last_seq + 1
        change = decide(operation, self.latest(operation.key), make_version(self.epoch, seq), now)
        if change is None:
            return None
        entry = Entry(self.epoch, seq, change, op_id)
        self.log.append(entry)
        self._pending_by_key[change.key] = entry
        self._remember(entry)
        self._advance_commit()
        return entry

    def entry(self, seq: int) -> Optional[Entry]:
        if seq <= self.base_seq or seq > self.last_seq:
            return None
        return self.log[seq - self.base_seq - 1]

    def needs_snapshot(self, member: str) -> bool:
        return member in self._snapshot_wanted or self._next[member] <= self.base_seq

    def append_message(self, member: str) -> list:
        """
        The next C{"app"} message for C{member}: every entry it may lack, the
        commit position, and a fresh confirmation round.
        """
        start = self._next[member]
        assert start > self.base_seq, "a member behind the log needs a snapshot"
        prev = start - 1
        entries = [encode_entry(e) for e in self.log[start - self.base_seq - 1 :]]
        self._next[member] = self.last_seq + 1
        self.commit_sent = self.commit_seq
        return messages.append(
            self.partition, self.epoch, prev, self._epoch_at(prev),
            entries, self.commit_seq, self.round, self.origin,
        )

    def start_snapshot(self, member: str) -> list:
        """
        Start copying the committed store to C{member}; return the first
        chunk, which the next C{"app"} message follows at once: it carries
        no records (unless the store holds none, when it is also the last),
        so that starting a snapshot costs only the copy of the store's
        index, a pointer a key.  The records come from
        L{next_snapshot_chunk}, paced by the caller.  The member
        takes in and acknowledges the log after the snapshot's position
        from the first chunk on, so it counts for commits and rounds (it
        holds every entry committed from then on) while the snapshot
        arrives; only its acknowledgement of what follows the last chunk
        proves it holds the rest, and only then is it caught up.
        """
        seq = self.applied_seq
        store = self.store.copy()
        self._fills[member] = _Fill(seq, self._epoch_at(seq), store, list(store.keys()))
        self._snapshot_wanted.discard(member)
        self._snapshot_done_in.pop(member, None)
        self._snapshot_nudged.discard(member)
        self._hollow.add(member)
        self._next[member] = seq + 1
        self._snapshot_at[member] = seq
        # What it acknowledged before held entries this snapshot replaces.
        self._match[member] = min(self._match[member], seq)
        return self._snapshot_chunk(member, 0)

    @property
    def filling(self) -> list[str]:
        """
        The members with a snapshot still to be sent.
        """
        return list(self._fills)

    def next_snapshot_chunk(self, member: str) -> Optional[list]:
        """
        The next chunk of the snapshot on its way to C{member}, about
        L{FILL_CHUNK_BYTES} of it, or C{None} if none is.
        """
        if member not in self._fills:
            return None
        return self._snapshot_chunk(member, FILL_CHUNK_BYTES)

    def _snapshot_chunk(self, member: str, limit: int) -> list:
        """
        The next chunk of the snapshot on its way to C{member}: records
        until they hold C{limit} key and value bytes, or the last.
        """
        fill = self._fills[member]
        batch: list[tuple[str, Record]] = []
        size = 0
        while fill.sent < len(fill.keys) and size < limit:
            key = fill.keys[fill.sent]
            fill.sent += 1
            record = fill.store.get(key)
            assert record is not None
            batch.append((key, record))
            size += record.value_size + len(key)
        last = fill.sent == len(fill.keys)
        chunk = messages.snapshot(
            self.partition, self.epoch, fill.seq, fill.seq_epoch, fill.part == 0, last,
            encode_records(batch), self.origin, fill.part,
        )
        fill.part += 1
        if last:
            del self._fills[member]
            self._snapshot_done_in[member] = self.round
        return chunk

    def new_round(self, now: float) -> int:
        """
        Start a confirmation round at C{now}; reads that arrived before it
        wait for it.
        """
        self.round += 1
        self._round_starts.append((self.round, now))
        return self.round

    @property
    def confirmed_round(self) -> int:
        """
        The newest round every member has confirmed our epoch in.
        """
        return min(self._acked_round.values(), default=self.round)

    def on_append_ok(
        self, member: str, epoch: int, last_seq: int, round_: int, filled: bool = True
    ) -> None:
        """
        C{member} holds our log up to C{last_seq} (only from its snapshot's
        position on, unless C{filled}): commit what every member now holds
        (L{take_announcements} hands it out).  Entries up to a snapshot's
        position were committed before it was taken, so a member still
        filling counts for every later commit.
        """
        if not self.is_primary or epoch != self.epoch or member not in self._match:
            return
        self._match[member] = max(self._match[member], last_seq)
        self._probe.pop(member, None)
        if filled:
            self._hollow.discard(member)
            if last_seq >= self._snapshot_at.get(member, last_seq + 1):
                del self._snapshot_at[member]
                self._snapshot_done_in.pop(member, None)
                self._snapshot_nudged.discard(member)
        else:
            self._hollow.add(member)
            done_in = self._snapshot_done_in.get(member)
            if member not in self._snapshot_at or (done_in is not None and round_ > done_in):
                # Filling from another primary's snapshot, or it missed a
                # chunk of ours (it answered after the last one): start
                # again.
                self._snapshot_wanted.add(member)
        self._acked_round[member] = max(self._acked_round[member], round_)
        confirmed = self.confirmed_round
        while self._round_starts and self._round_starts[0][0] <= confirmed:
            started_round, started = self._round_starts.popleft()
            if started_round == confirmed:
                self.lease_start = started
        self._advance_commit()

    def on_append_refused(self, member: str, epoch: int, hint: int) -> None:
        """
        C{member} lacks the entry before what we sent; back off to its hint.
        """
        if self.is_primary and epoch == self.epoch and member in self._next:
            if hint < self._snapshot_at.get(member, -1):
                return  # refused before the snapshot in flight arrived
            self._next[member] = min(self._next[member], hint + 1, self.last_seq + 1)
            self._match[member] = min(self._match[member], hint)
            if member in self._probe:
                self._probe[member] = min(self._probe[member], self._next[member])

    def caught_up(self) -> list[str]:
        """
        Members not yet known to be in sync that now hold every acknowledged
        write: the partition leader should hear of them.
        """
        return [
            m for m, target in self._sync_target.items()
            if self._match.get(m, 0) >= target and m not in self._hollow and m not in self._snapshot_at
        ]

    def nudge_stalled_members(self) -> bool:
        """
        Send again to every member catching up that has acknowledged nothing
        since the previous call: the message or its answer may have been
        lost with a link, and on a partition without writes nothing else
        would be sent.  A snapshot in flight is not sent again, only what
        follows it (the member answers that once it holds the snapshot), and
        so is what follows a snapshot sent whole that the member has not
        yet said it holds.  If that is still not answered by the next call,
        a chunk was lost (the first, perhaps, and with it every answer but
        refusals the snapshot's own would explain): a new snapshot starts.

        @return: whether any member has something to be sent again.
        """
        nudged = False
        progress = {}
        for member, target in self._sync_target.items():
            match = self._match.get(member, 0)
            progress[member] = match
            sent_whole = member in self._snapshot_at and member not in self._fills
            if (match < target or sent_whole) and self._sync_progress.get(member) == match:
                if sent_whole and member in self._snapshot_nudged:
                    self._snapshot_wanted.add(member)
                else:
                    self._next[member] = self._snapshot_at.get(member, self._resend_from(member) - 1) + 1
                    if sent_whole:
                        self._snapshot_nudged.add(member)
                nudged = True
        self._sync_progress = progress
        return nudged

    def member_lagging(self, member: str) -> bool:
        """
        Whether C{member} has not acknowledged all we sent it.
        """
        return self._match.get(member, 0) < self.last_seq or self._acked_round.get(member, 0) < self.round

    def _resend_from(self, member: str) -> int:
        """
        Where what is sent again to C{member} starts: after what it
        acknowledged, or, if it acknowledged nothing since it was added, at
        the position probed (log matching then finds where its log ends, as
        it did for the message lost), not at the start of our log.
        """
        return max(self._match[member] + 1, self._probe.get(member, 0))

    def resend(self, member: Optional[str] = None, link_lost: bool = False) -> None:
        """
        Send again, from what it acknowledged, what C{member} (or every
        member) may have lost.  A snapshot still on its way is not started
        over unless its link was lost: a member busy applying a large one
        would otherwise be sent another, and another.
        """
        for name in [member] if member is not None else self.members:
            if name in self._next and (link_lost or name not in self._snapshot_at):
                if name in self._snapshot_at or name in self._hollow:
                    # A chunk may have been lost with the link.
                    self._snapshot_wanted.add(name)
                    self._fills.pop(name, None)
                self._next[name] = self._resend_from(name)
                self._snapshot_at.pop(name, None)

    def epoch_at(self, seq: int) -> Optional[int]:
        """
        The epoch of the entry at log position C{seq} (C{base_seq}
        included), or C{None} if the log does not reach back to it.
        """
        if seq > self.last_seq:
            return None
        return self._epoch_at(seq)

    def entries_after(self, seq: int) -> tuple[int, Optional[int], list]:
        """
        What the log holds after position C{seq} (from C{base_seq} if it no
        longer reaches back so far): C{(prev_seq, prev_epoch, entries)} in
        the form of an C{app} message, for recording it.
        """
        prev = max(min(seq, self.last_seq), self.base_seq)
        entries = [encode_entry(e) for e in self.log[prev - self.base_seq :]]
        return prev, self._epoch_at(prev), entries

    def mark_durable(self, seq: int, epoch: Optional[int]) -> None:
        """
        Our own copy of the log is on disk up to C{seq}, whose entry was of
        C{epoch} (if it has been replaced since, this says nothing; if it
        was trimmed, it was committed, hence not replaced): as primary,
        commit what every member and our disk now hold.
        """
        if self.durable_seq is None:
            return
        if seq > self.base_seq and self.epoch_at(seq) != epoch:
            return
        self.durable_seq = max(self.durable_seq, seq)
        if self.is_primary:
            self._advance_commit()

    def _advance_commit(self) -> None:
        commit = min(self._match.values(), default=self.last_seq)
        commit = min(commit, self.last_seq)
        if self.durable_seq is not None:
            commit = min(commit, self.durable_seq)
        if commit > self.commit_seq:
            self.commit_seq = commit
        self._apply_committed()

    def due_expiries(self, now: float) -> list[Expire]:
        """
        Expiry operations for keys whose time-to-live has run out.
        """
        due = []
        while self._expiries and self._expiries[0][0] <= now:
            _, version, key = heapq.heappop(self._expiries)
            due.append(Expire(key, version))
        return due

    def read(self, key: str, now: float) -> Optional[Record]:
        """
        The committed, live record of C{key}.
        """
        return live(self.store.get(key), now)

    def newest(self, key: str) -> Optional[Record]:
        """
        The newest record this replica holds for C{key}, committed or not;
        for degraded reads, which pick the newest among reachable replicas.
        """
        for entry in reversed(self.log):
            if entry.seq <= self.applied_seq:
                break
            if entry.change is not None and entry.change.key == key:
                return entry.change.record
        return self.store.get(key)

    # -- anti-entropy -----------------------------------------------------

    def digest_snapshot(self) -> tuple[int, list[int], bytes]:
        """
        The primary's digest at its applied position: (position, bucket
        hashes, root).  Members compare theirs at exactly that position.
        """
        return self.applied_seq, list(self.digest.buckets), self.digest.root()

    def learn_commit(self, seq: int) -> list[Entry]:
        """
        The primary of our epoch says everything up to C{seq} is committed:
        apply it, as far as our log was checked against the primary's.  A
        member added back with the log it kept may hold, at those
        positions, entries of an older epoch the primary replaced, until
        the primary's messages have reached it.  Returns the entries this
        applies.
        """
        if seq > self.commit_seq and not self.is_primary:
            verified_epoch, verified_seq = self._verified
            if verified_epoch == self.epoch:
                self.commit_seq = max(self.commit_seq, min(seq, verified_seq, self.last_seq))
            return self._apply_committed()
        return []

    def expect_digest(self, seq: int, root: bytes) -> None:
        """
        Compare our digest with the primary's once we have applied exactly up
        to C{seq}; the outcome appears in L{digest_result}.
        """
        if seq < self.applied_seq or self._filling_part is not None:
            return
        self._digest_check = (seq, root)
        if seq == self.applied_seq:
            self._compare_digest()

    def _compare_digest(self) -> None:
        seq, root = self._digest_check
        self._digest_check = None
        self.digest_result = (seq, self.digest.root() == root, list(self.digest.buckets))

    def propose_repair(self, buckets: Iterable[int]) -> Entry:
        """
        Order a repair of C{buckets}: their content as this primary holds it.
        """
        assert self.is_primary
        wanted = set(buckets)
        entry = Entry(
            self.epoch,
            self.last_seq + 1,
            None,
            repair=Repair(tuple(sorted(wanted)), self._bucket_content(wanted)),
        )
        self.log.append(entry)
        self._advance_commit()
        return entry

    # -- as member -------------------------------------------------------

    def promise_lease(self, until: float) -> None:
        """
        We are acknowledging the current primary's round: promise not to
        take over as primary before C{until}, so that the lease the
        primary derives from the round stays safe.
        """
        self.promised_until = max(self.promised_until, until)
        self._promised_epoch = self.epoch

    def release_promise(self, epoch: int) -> bool:
        """
        The primary of C{epoch} stepped down and serves nothing more, from
        its lease or otherwise: a promise made in that epoch or before (to
        it, or to a primary before it, whose lease ended before it took
        over) no longer protects anyone.  A promise of a later epoch (to a
        primary since, perhaps the same node again) stands.

        @return: whether the promise was released.
        """
        if self._promised_epoch > epoch:
            return False
        self.promised_until = float("-inf")
        return True

    def adopt_origin(self, origin: int) -> None:
        """
        The partition's data started again, empty, at epoch C{origin}, after
        every copy of it was lost: what this replica holds from an older
        origin is not part of it (its log positions even clash with the new
        log's), so drop it.
        """
        if origin > self.origin:
            self.forget()
            self.origin = origin

    def on_append(
        self,
        epoch: int,
        prev_seq: int,
        prev_epoch: Optional[int],
        entries: list,
        commit: int,
        origin: int = 0,
    ) -> tuple[bool, int]:
        """
        Entries from the primary of C{epoch}, whose data started at
        C{origin}.

        @return: C{(True, last_seq)} once stored, or C{(False, hint)} when the
            entry before them is missing or conflicts (the primary retries
            from C{hint + 1}).  Stale epochs are checked by the caller.
        """
        self.adopt_origin(origin)
        if self.is_primary and epoch > self.epoch:
            self.step_down(epoch)
        self.epoch = max(self.epoch, epoch)
        if prev_seq > self.last_seq:
            return False, self.last_seq
        if prev_seq > self.base_seq and self._epoch_at(prev_seq) != prev_epoch:
            self._truncate_from(prev_seq)
            return False, prev_seq - 1
        verified = entries[-1][1] if entries else prev_seq
        for data in entries:
            seq = data[1]
            if seq <= self.base_seq:
                continue
            if seq <= self.last_seq:
                if self._epoch_at(seq) == data[0]:
                    continue
                self._truncate_from(seq)
            entry = decode_entry(data)
            self.log.append(entry)
            self._remember(entry)
        # Only entries just checked against the primary's log may be marked
        # committed; a stale tail beyond them may still be replaced.
        if commit > self.commit_seq:
            self.commit_seq = max(self.commit_seq, min(commit, verified))
        if self._verified[0] != epoch or self._verified[1] < verified:
            self._verified = (epoch, verified)
        self._apply_committed()
        # Acknowledge only what was checked against the primary's log: a
        # stale tail beyond it is not the primary's.
        return True, verified

    @property
    def filled(self) -> bool:
        """
        Whether the store holds everything up to the start of the log: not
        while a snapshot arrives.
        """
        return self._filling_part is None

    def on_snapshot(
        self,
        epoch: int,
        seq: int,
        seq_epoch: int,
        first: bool,
        last: bool,
        records: list,
        origin: int = 0,
        part: Optional[int] = None,
    ) -> bool:
        """
        Chunk C{part} of a copy of the primary's committed store as of
        C{seq}, whose data started at C{origin}.  The first replaces the
        store, and the log but for the entries after C{seq} that follow the
        snapshot's own entry at C{seq} (a member sent another snapshot may
        have acknowledged them already): from then on the log after C{seq}
        is taken in (and acknowledged, not C{filled}) while the other
        chunks arrive; what it commits is applied after the last.  A chunk that is not the next
        one (a chunk lost) is ignored, and so is every later one: the
        snapshot never completes, and the primary starts another.  Without
        C{part} (a replay of the chunks taken in), chunks come in order.

        @return: whether the chunk was taken in.
        """
        self.adopt_origin(origin)
        if self.is_primary and epoch > self.epoch:
            self.step_down(epoch)
        self.epoch = max(self.epoch, epoch)
        if first:
            follows = self.base_seq <= seq <= self.last_seq and self._epoch_at(seq) == seq_epoch
            self.log = self.log[seq - self.base_seq :] if follows else []
            self._drop_store()
            self.digest.clear()
            self.base_seq = self.commit_seq = self.applied_seq = seq
            self.base_epoch = seq_epoch or 0
            self._verified = (epoch, seq)
            self._digest_check = None
            self._filling_part = 0
        elif self._filling_part is None or part not in (None, self._filling_part):
            return False
        self._filling_part += 1
        # A snapshot's keys are new to the store it emptied: the short way.
        self.restore_keys(records)
        if last:
            self._filling_part = None
            self._apply_committed()
        return True

    # -- on disk ---------------------------------------------------------

    def export_state(self) -> tuple[list, Iterator[list]]:
        """
        Everything a restart needs of this replica, as of now, for a
        snapshot of the node's data directory: a header (epoch, origin, log
        positions, the log's entries, the operation ids remembered) and the
        committed store in chunks of about L{SNAPSHOT_CHUNK_BYTES}.  Only
        lists of values that never change are built, and the chunks only
        as they are asked for, from a copy of the store taken now (a
        pointer a key: a millisecond for 16,000 keys, where building them
        took 25 or more), so the caller may encode them later, elsewhere.
        """
        ops = [[op_id, packed] for op_id, packed in self._recent_ops.items()]
        if self._filling_part is not None:
            # Only part of a snapshot: a restart starts empty, and is sent
            # another.  The entries after it it acknowledged are also on
            # the members in sync, which alone may become primary.
            return [self.epoch, self.origin, 0, 0, 0, 0, [], ops], iter([])
        header = [
            self.epoch, self.origin, self.base_seq, self.base_epoch, self.commit_seq,
            self.applied_seq, [encode_entry(e) for e in self.log], ops,
        ]
        return header, _store_chunks(self.store.copy())

    def restore_state(
        self,
        epoch: int,
        origin: int,
        base_seq: int,
        base_epoch: int,
        commit_seq: int,
        applied_seq: int,
        entries: list,
        recent_ops: list,
    ) -> None:
        """
        Start again from a header L{export_state} gave; the store follows
        (L{restore_keys}).
        """
        self.forget()
        self.epoch, self.origin = epoch, origin
        self.base_seq, self.base_epoch = base_seq, base_epoch
        self.commit_seq, self.applied_seq = commit_seq, applied_seq
        self.log = [decode_entry(e) for e in entries]
        self._recent_ops = OrderedDict((op_id, packed) for op_id, packed in recent_ops)

    def restore_keys(self, records: list) -> None:
        """
        Take in a chunk of the store L{export_state} gave, straight from
        its encoded form (a recovery does this for every key it holds).
        """
        add, toggle = self.store.add, self.digest.toggle
        for key, value, content_type, version, expires_at in records:
            record = Record(value, content_type, version, expires_at)
            if add(key, record):
                toggle(key, record)
            else:
                self._apply_change(Change("put", key, version, record))

    def forget(self) -> None:
        """
        Drop everything: this node is no longer a member of the partition.
        """
        self.step_down(self.epoch)
        self._drop_store()
        self.digest.clear()
        self.log.clear()
        self.base_seq = self.base_epoch = self.commit_seq = self.applied_seq = 0
        self._verified = (0, 0)
        if self.durable_seq is not None:
            self.durable_seq = 0
        self._recent_ops.clear()
        self.recent_changes.clear()
        self._digest_check = None
        self._filling_part = None

    def _drop_store(self) -> None:
        """
        Start again with an empty store, at once; the records of the old
        one are freed later, a batch at a time (L{release_dropped}), so that
        dropping a large copy does not hold up the reactor.
        """
        if len(self.store):
            self._dropped.append(self.store)
            self.dropped_bytes += self.store.bytes_used
            self.store = MemStore()

    def release_dropped(self, limit: int) -> int:
        """
        Free up to C{limit} records of the stores this replica dropped.

        @return: how many were freed.
        """
        freed = 0
        while self._dropped and freed < limit:
            store = self._dropped[-1]
            held = store.bytes_used
            freed += store.release(limit - freed)
            self.dropped_bytes -= held - store.bytes_used
            if not len(store):
                self._dropped.pop()
        return freed
