# -*- test-case-name: tests.test_cluster -*-
"""
One cluster node: consensus on the cluster map, the replicas of the
partitions it holds, and the routing of client operations to primaries.

The node talks to its peers only through an L{IMessenger} (L{PeerLinks} on
real sockets, L{twisted_kv.testing.MemoryNetwork} in tests) and reads time
only from its injected clocks, so a whole cluster runs deterministically in
one process in the tests.

Messages between nodes (lists; the first element is the tag):

  - consensus (L{twisted_kv.core.consensus}): C{prevote}, C{prevoted},
    C{vote}, C{voted}, C{append}, C{appended};
  - C{["status", state, [entry_index, entry_term], revision]}: gossip of
    L{Node.sync_state}, of the node's map entry and of the last change
    revision it delivered, several times a second; a node that does not
    hear from the leader and learns that a peer holds a newer committed map
    asks for it with C{["map_req"]},
    answered C{["map", index, term, map]};
  - replication (L{twisted_kv.core.replica}): C{["app", partition, epoch,
    prev_seq, prev_epoch, entries, commit, round, origin]} from a primary,
    answered by C{["app_ok", partition, epoch, last_seq, round]},
    C{["app_no", partition, epoch, hint]} or C{["stale", partition, epoch]};
    C{["snap", partition, epoch, seq, seq_epoch, first, last, records,
    origin]} (C{origin}: see L{PartitionConfig.origin});
  - to the partition leader: C{["in_sync", partition, epoch, node]} (a new
    member caught up) and C{["drop", partition, epoch, node]} (a member
    stopped answering its primary);
  - client operations forwarded to a primary: C{["op", id, partition,
    operation, op_id]}, C{["read", id, partition, key]}, C{["peek", id,
    partition, key]} (degraded read; its payload is C{[holds, record,
    epoch]}), C{["list", id, partitions, prefix, start_after, limit]}, all
    answered by C{["res", id, status, payload]};
  - change events: C{["pub", batch_id, count, changes]} from a primary to
    the leader, C{changes} being the msgpack encoding of C{count} changes;
    the leader numbers them and forwards the same bytes, undecoded, in
    C{["ev", first_revision, changes, previous_revision]} to every other
    node (a node whose last revision is not C{previous_revision} missed
    some), delivers its own copy directly, and answers C{["pub_ok",
    batch_id]};
  - anti-entropy (L{twisted_kv.core.merkle}): C{["digest", partition, epoch,
    seq, root]} from a primary, answered C{["digest_ok", partition, epoch,
    seq]} or C{["digest_diff", partition, epoch, seq, bucket_hashes]}, after
    which the primary orders a repair of the differing buckets in its log;
    C{["check", partition]} asks a primary for a round now (read repair).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import OrderedDict, deque
from typing import Any, Callable, Iterator, NamedTuple, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_kv.core.config import ClusterConfig
from twisted_kv.core.consensus import LEADER, Consensus
from twisted_kv.core.keyspace import FILES, USER
from twisted_kv.core.membership import ALIVE, DEAD, Membership
from twisted_kv.core.placement import (
    ClusterMap,
    PartitionConfig,
    Ring,
    drop_member,
    initial_map,
    lost_partitions,
    mark_in_sync,
    partition_of,
    plan,
)
from twisted_kv.core.records import Change, Delete, Expire, Operation, Put, Record, live
from twisted_kv.core.merkle import differing
from twisted_kv.core.replica import (
    RECENT_CHANGES,
    Replica,
    decode_change,
    encode_change,
    encode_entry,
)
from twisted_kv.wire.codec import decode as decode_message
from twisted_kv.wire.codec import encode as encode_message
from twisted_kv.cluster.deadlines import Deadlines
from twisted_kv.errors import InsufficientStorage, KVError, error_for_code
from twisted_kv.interfaces import REVISION_TERM_SHIFT, ChangeEvent, IMessenger, IPeerHandler

log = Logger()

# Several gossip rounds per failure timeout keep a live node from looking dead.
GOSSIP_PER_FAILURE_TIMEOUT = 6
# How often a primary checks that its members catching up still progress.
NUDGES_PER_FAILURE_TIMEOUT = 3
# Pause between two attempts of a client operation waiting for a primary.
RETRY_DELAY = 0.05
# A member acknowledging a primary's round promises not to take over as
# primary for this share of the failure timeout; a primary whose round every
# member confirmed then reads without a round of its own until the lease
# ends.  Failover after a crash waits a whole failure timeout anyway.
LEASE_PROMISE_SHARE = 0.5
# The primary's lease ends this share earlier than its members' promises,
# for clocks that run at slightly different rates.
LEASE_CLOCK_MARGIN = 0.1
# Bytes of confirmed change batches a node keeps to hand to a new leader, in
# case the old one died before sending them to every node (at most
# RECENT_CHANGES changes, as many as nodes remember to drop repeats).
RECENTLY_PUBLISHED_BYTES = 1 << 20



class Retry(Exception):
    """
    The operation reached a node that is not (or no longer) the serving
    primary; try again once the map settles.

    @ivar maybe_applied: the operation may have been ordered before the
        primary lost its role, so its outcome is unknown until it is retried.
    """

    def __init__(self, reason: str, maybe_applied: bool = False) -> None:
        super().__init__(reason)
        self.maybe_applied = maybe_applied


def _logged_records(
    replica: Replica, prefix: str, start_after: Optional[str]
) -> dict[str, Optional[Record]]:
    """
    The newest record (C{None}: deleted) of every key after C{start_after}
    with C{prefix} that C{replica}'s log changes.
    """
    records: dict[str, Optional[Record]] = {}
    for entry in replica.log:
        change = entry.change
        if (
            change is not None
            and change.key.startswith(prefix)
            and (start_after is None or change.key > start_after)
        ):
            records[change.key] = change.record
    return records


def encode_operation(operation: Operation) -> list:
    if isinstance(operation, Put):
        return [
            0, operation.key, operation.value, operation.content_type, operation.ttl,
            operation.if_match, operation.if_none_match, operation.create_only,
        ]
    if isinstance(operation, Delete):
        return [1, operation.key, operation.if_match]
    return [2, operation.key, operation.version]


def decode_operation(data: list) -> Operation:
    if data[0] == 0:
        return Put(*data[1:])
    if data[0] == 1:
        return Delete(data[1], data[2])
    return Expire(data[1], data[2])


def _encode_record(record: Optional[Record]) -> Optional[list]:
    if record is None:
        return None
    return [record.value, record.content_type, record.version, record.expires_at]


def _decode_record(data: Optional[list]) -> Optional[Record]:
    return None if data is None else Record(*data)


class _RecentBatches:
    """
    The change batches a node published last, up to RECENT_CHANGES changes
    (as many as nodes remember to drop repeats) and
    RECENTLY_PUBLISHED_BYTES bytes, oldest dropped first.
    """

    def __init__(self) -> None:
        self._batches: deque[tuple[int, bytes]] = deque()
        self._changes = 0
        self._bytes = 0

    def add(self, batch: tuple[int, bytes]) -> None:
        self._batches.append(batch)
        self._changes += batch[0]
        self._bytes += len(batch[1])
        while self._changes > RECENT_CHANGES or self._bytes > RECENTLY_PUBLISHED_BYTES:
            count, changes = self._batches.popleft()
            self._changes -= count
            self._bytes -= len(changes)

    def take(self) -> list[tuple[int, bytes]]:
        """
        Every batch kept, oldest first; none is kept afterwards.
        """
        batches = list(self._batches)
        self._batches.clear()
        self._changes = self._bytes = 0
        return batches


class Peek(NamedTuple):
    """
    A replica's answer to a degraded read (L{Node.peek_local}).
    """

    holds: bool
    record: Optional[Record]
    epoch: int


def decode_peek(data: list) -> Peek:
    return Peek(data[0], _decode_record(data[1]), data[2])


def _encode_error(failure: Failure) -> list:
    if failure.check(Retry):
        return ["retry", [str(failure.value), failure.value.maybe_applied]]
    if failure.check(KVError):
        return ["err", [failure.value.code, failure.value.message]]
    log.failure("operation failed", failure)
    return ["err", ["internal", "internal error"]]


def _decode_error(status: str, payload: list) -> Exception:
    if status == "retry":
        return Retry(payload[0], payload[1])
    return error_for_code(payload[0])(payload[1])


@implementer(IPeerHandler)
class Node:
    """
    A member of the cluster.

    @ivar executed: client operations this node executed as a primary.
    @ivar lost_partitions: the partitions of this node's map whose every
        in-sync copy restarted empty (L{twisted_kv.core.placement.is_lost}),
        until the leader's map starts them again, empty.
    @ivar partition_losses: how many times this node saw a partition become
        lost.
    """

    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        *,
        clock: IReactorTime,
        incarnation: int,
        rng: Optional[random.Random] = None,
        lease_clock: Optional[Callable[[], float]] = None,
    ) -> None:
        """
        @param lease_clock: the time read leases are measured with, which
            must never step (C{time.monotonic}); C{clock}'s by default.
        """
        self.config = config
        self.node_id = node_id
        self.incarnation = incarnation
        self._clock = clock
        self._lease_now = lease_clock or clock.seconds
        self._lease_promise = config.failure_timeout * LEASE_PROMISE_SHARE
        self._lease_hold = self._lease_promise * (1 - LEASE_CLOCK_MARGIN)
        # partitions the map makes ours while we still promise not to take over
        self._takeovers_waiting: set[int] = set()
        now = clock.seconds()
        self.consensus = Consensus(
            node_id,
            config.node_ids,
            now=now,
            election_timeout=config.election_timeout,
            heartbeat_interval=config.heartbeat_interval,
            rng=rng or random.Random(),
        )
        self.membership = Membership(
            config.node_ids, node_id, incarnation, config.failure_timeout
        )
        self.ring = Ring(config.node_ids, config.partitions)
        self.replicas = [Replica(p) for p in range(config.partitions)]
        self.messenger: Optional[IMessenger] = None
        self.executed = 0
        self.lost_partitions: frozenset[int] = frozenset()
        self.partition_losses = 0
        self._started_at = now
        self._map: Optional[ClusterMap] = None
        self._leader_seen: tuple[Optional[str], int] = (None, 0)
        self._dirty: set[int] = set()
        self._round_wanted: set[int] = set()
        self._flush_call: Any = None
        # heaps of (position, tie-breaker, Deferred): writes waiting for a
        # commit position, reads and refusals waiting for a confirmation round
        self._commit_waiters: dict[int, list[tuple[int, int, Deferred]]] = {}
        self._confirmation_waiters: dict[int, list[tuple[int, int, Deferred]]] = {}
        self._stalled_since: dict[int, float] = {}
        # requests sent to peers: id -> (peer, Deferred, key in deadlines)
        self._requests: dict[int, tuple[str, Deferred, int]] = {}
        # time limits of requests and of operations run here, swept every tick
        self.deadlines = Deadlines()
        self._ids = itertools.count(1)
        self._op_ids = itertools.count(1)
        self._reports: list[list] = []
        # the last map and live nodes the leader planned from without
        # finding anything to change
        self._planned: tuple[Optional[ClusterMap], dict[str, int]] = (None, {})
        self._last_gossip = float("-inf")
        self._last_report: dict[tuple[int, str], float] = {}
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = clock
        # change events
        self._listeners: list[Callable[[ChangeEvent], None]] = []
        # batch id -> (number of changes, their encoding)
        self._unpublished: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._published_recently = _RecentBatches()
        self._publish_ids = itertools.count(1)
        self._published_to: Optional[tuple[str, int]] = None
        self._last_sent_batch = 0
        self._revision_counter = 0
        self._revision_term = 0
        self._revision_previous = 0
        self._last_revision = 0
        self._gap_pending = False
        # the last revision each peer reports having delivered
        self._peer_revisions: dict[str, int] = {}
        # per partition, the last version delivered of its most recently
        # changed keys: as many as a new primary announces again
        self._delivered: list[OrderedDict[str, int]] = [
            OrderedDict() for _ in range(config.partitions)
        ]
        # anti-entropy
        self.antientropy_bytes = 0
        self.last_full_round: Optional[float] = None
        self._next_round = self._now() + config.anti_entropy_interval
        self._next_nudge = self._now()
        self._round_started = 0.0
        self._digests_sent: dict[int, tuple[int, list[int]]] = {}
        self._digests_awaited: dict[int, set[str]] = {}
        self._digest_asked_by: dict[int, str] = {}

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        self._started_at = self._now()
        self._ticker.start(self.config.heartbeat_interval / 2, now=True)

    def stop(self) -> None:
        if self._ticker.running:
            self._ticker.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        # A request already sent may have taken effect at its peer.
        for _, d, deadline in list(self._requests.values()):
            self.deadlines.settle(deadline)
            d.errback(Retry("node stopping", maybe_applied=True))
        self._requests.clear()
        for p in range(len(self.replicas)):
            self._fail_waiters(p, Retry("node stopping", maybe_applied=True))

    def _now(self) -> float:
        return self._clock.seconds()

    def _send(self, peer: str, message: list) -> bool:
        if peer == self.node_id:
            self.peer_message(peer, self.incarnation, message)
            return True
        return bool(self.messenger is not None and self.messenger.send(peer, message))

    def _send_all(self, outgoing: list[tuple[str, list]]) -> None:
        for peer, message in outgoing:
            self._send(peer, message)

    # -- what the rest of the node asks ------------------------------------

    @property
    def leader(self) -> Optional[str]:
        return self.consensus.leader

    @property
    def cluster_map(self) -> Optional[ClusterMap]:
        return self._map

    def has_majority(self) -> bool:
        return self.membership.live_count(self._now()) >= self.config.majority

    def just_started(self) -> bool:
        """
        Whether we started too recently to take the peers we have not heard
        from yet for dead: operations then wait for them rather than being
        refused for want of a majority.
        """
        return self._now() - self._started_at < self.config.failure_timeout

    def partition_config(self, partition: int) -> Optional[PartitionConfig]:
        return None if self._map is None else self._map.partitions[partition]

    def partition_of(self, key: str) -> int:
        return partition_of(key, self.config.partitions)

    def key_count(self) -> int:
        return sum(len(r.store) for r in self.replicas)

    def records_in(self, namespace: str) -> int:
        """
        How many records of C{namespace} (a tag of L{twisted_kv.core.keyspace})
        this node holds copies of.
        """
        return sum(r.store.count_tagged(namespace) for r in self.replicas)

    def bytes_used(self) -> int:
        return sum(r.store.bytes_used for r in self.replicas)

    def sync_state(self) -> dict:
        """
        What this node tells the others about itself, for C{/cluster} and
        the metrics: C{keys} counts every record it holds a copy of, which
        C{user_keys} and C{file_records} split by namespace.
        """
        return {
            "keys": self.key_count(),
            "user_keys": self.records_in(USER),
            "file_records": self.records_in(FILES),
            "synced": self.synced(),
            "executed": self.executed,
            "repaired": self.repaired_keys(),
            "antientropy_bytes": self.antientropy_bytes,
            "last_full_round": self.last_full_round,
            "term": self.consensus.term,
            "has_map": self.consensus.latest_map is not None,
            "map_index": self.consensus.committed_index,
        }

    def synced(self) -> bool:
        """
        Whether this node holds, in sync, every partition the ring places on
        it among the live nodes, according to a map it is sure is current
        (it hears from the leader).
        """
        if self._map is None or not self.hears_leader():
            # the map may be out of date
            return False
        live = self.membership.live(self._now())
        for index, config in enumerate(self._map.partitions):
            ideal = [n for n in self.ring.preference_list(index) if n in live]
            ideal = ideal[: self.config.replicas]
            member = config.member(self.node_id)
            mine = member is not None and member.incarnation == self.incarnation
            if self.node_id in ideal and not (mine and self.node_id in config.in_sync):
                return False
        return True

    # -- the periodic tick -------------------------------------------------

    def tick(self) -> None:
        now = self._now()
        self.deadlines.sweep(now)
        for peer in self.membership.newly_dead(now):
            log.info(
                "node {peer} is down (silent for {timeout:g} s)",
                peer=peer,
                timeout=self.config.failure_timeout,
            )
        self._send_all(self.consensus.tick(now))
        self._after_consensus()
        self._find_lost_partitions(now)
        if now - self._last_gossip >= self.config.failure_timeout / GOSSIP_PER_FAILURE_TIMEOUT:
            self._last_gossip = now
            entry = list(self.consensus.entry)
            status = ["status", self.sync_state(), entry, self._last_revision]
            for peer in self.consensus.peers:
                self._send(peer, status)
        if self.consensus.role == LEADER:
            self._lead(now)
        for partition in sorted(self._takeovers_waiting):
            self._take_over(partition)
        nudge = now >= self._next_nudge
        if nudge:
            self._next_nudge = now + self.config.failure_timeout / NUDGES_PER_FAILURE_TIMEOUT
        for replica in self.replicas:
            if replica.is_primary:
                if nudge and replica.nudge_stalled_members():
                    self._mark_dirty(replica.partition)
                self._tend_primary(replica, now)
        if now >= self._next_round:
            self._next_round = now + self.config.anti_entropy_interval
            self._start_digest_round(now)

    def _after_consensus(self) -> None:
        leader = (self.consensus.leader, self.consensus.term)
        if leader[0] is not None and leader != self._leader_seen:
            log.info(
                "partition leader elected: {leader} (term {term})",
                leader=leader[0],
                term=leader[1],
            )
            self._leader_seen = leader
            self._republish()
        committed = self.consensus.committed
        if committed is not None and committed is not self._map:
            self._apply_map(committed)

    def _find_lost_partitions(self, now: float) -> None:
        """
        Note, and log once, the partitions whose every in-sync copy is known
        to have restarted empty: their data is gone, and requests for them
        are refused at once until the leader starts them again, empty.  Their
        keys vanish without change events, so the next change delivered is
        marked as following a gap: watchers re-read.
        """
        if self._map is None:
            return
        lost = frozenset(lost_partitions(self._map, self.membership.live(now)))
        newly = lost - self.lost_partitions
        self.lost_partitions = lost
        if newly:
            self.partition_losses += len(newly)
            self._gap_pending = True
            log.warn(
                "partitions {partitions} lost every in-sync copy (all restarted"
                " empty): their data is gone; they will serve again, empty",
                partitions=", ".join(map(str, sorted(newly))),
            )

    def _lead(self, now: float) -> None:
        live = self.membership.live(now)
        current = self.consensus.latest_map
        unchanged_map, unchanged_live = self._planned
        if current is not None and current is unchanged_map and live == unchanged_live:
            if not self._reports:
                # Planning from this map and these nodes changed nothing.
                return
        if current is None:
            proposal = initial_map(self.ring, self.config.partitions, live, self.config.replicas)
        else:
            proposal = current
            for kind, partition, epoch, node in self._reports:
                change = mark_in_sync if kind == "in_sync" else drop_member
                proposal = change(proposal, partition, epoch, node)
            proposal = plan(proposal, self.ring, live, self.config.replicas)
        self._reports.clear()
        if proposal == current:
            self._planned = (current, live)
        else:
            self._send_all(self.consensus.propose(now, proposal))
            self._after_consensus()

    # -- applying the committed map ----------------------------------------

    def _apply_map(self, cluster_map: ClusterMap) -> None:
        previous = self._map
        self._map = cluster_map
        for index, config in enumerate(cluster_map.partitions):
            if previous is not None and previous.partitions[index] == config:
                continue
            replica = self.replicas[index]
            if config.epoch < replica.epoch:
                continue
            replica.adopt_origin(config.origin)
            member = config.member(self.node_id)
            if member is None or member.incarnation != self.incarnation:
                if replica.is_primary:
                    self._fail_waiters(index, Retry("moved", maybe_applied=True))
                replica.forget()
                replica.epoch = config.epoch
            elif config.primary == member:
                self._take_over(index)
            else:
                if replica.is_primary:
                    self._fail_waiters(index, Retry("moved", maybe_applied=True))
                    replica.step_down(config.epoch)
                replica.epoch = config.epoch

    def _take_over(self, partition: int) -> None:
        """
        Become (or stay) the primary the current map names us for
        C{partition}, unless we still promise the previous primary not to:
        then adopt the new epoch, so that the old primary's writes are
        refused, and take over on a later tick.
        """
        self._takeovers_waiting.discard(partition)
        config = self.partition_config(partition)
        member = None if config is None else config.member(self.node_id)
        if (
            config is None
            or member is None
            or member != config.primary
            or member.incarnation != self.incarnation
        ):
            return
        replica = self.replicas[partition]
        if config.epoch < replica.epoch:
            return
        takeover = not replica.is_primary
        if takeover and self._lease_now() < replica.promised_until:
            replica.epoch = config.epoch
            self._takeovers_waiting.add(partition)
            return
        replica.become_primary(
            config.epoch, [m.node_id for m in config.members[1:]], config.in_sync
        )
        self._stalled_since.pop(partition, None)
        self._mark_dirty(partition)

    # -- replication, primary side -----------------------------------------

    def _mark_dirty(self, partition: int) -> None:
        self._dirty.add(partition)
        self._schedule_flush()

    def _want_round(self, partition: int) -> None:
        """
        Start a confirmation round of C{partition} in the next flush.
        """
        self._round_wanted.add(partition)
        self._mark_dirty(partition)

    def _schedule_flush(self) -> None:
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        """
        Send, once per reactor turn, what every dirty partition's members
        lack: writes and read confirmations of a turn travel together.
        """
        self._flush_call = None
        dirty, self._dirty = self._dirty, set()
        for partition in sorted(dirty):
            replica = self.replicas[partition]
            if not replica.is_primary:
                continue
            if partition in self._round_wanted:
                self._round_wanted.discard(partition)
                replica.new_round(self._lease_now())
            for member in replica.members:
                if replica.needs_snapshot(member):
                    for message in replica.snapshot_messages(member):
                        self._send(member, message)
                self._send(member, replica.append_message(member))
            self._settle(replica)
        self._publish()

    def _settle(self, replica: Replica) -> None:
        """
        Announce and answer what the replica's progress allows: committed
        changes and writes, confirmed reads and refusals; report members that
        caught up.
        """
        partition = replica.partition
        committed = replica.take_announcements()
        if committed:
            self._queue_events(committed)
        waiters = self._commit_waiters.get(partition)
        if waiters:
            while waiters and waiters[0][0] <= replica.commit_seq:
                _, _, d = heapq.heappop(waiters)
                d.callback(None)
        confirmations = self._confirmation_waiters.get(partition)
        if confirmations and replica.serving:
            confirmed = replica.confirmed_round
            while confirmations and confirmations[0][0] <= confirmed:
                _, _, d = heapq.heappop(confirmations)
                d.callback(None)
        config = self.partition_config(partition)
        if config is not None and self._map is not None:
            for member in replica.caught_up():
                self._report("in_sync", partition, replica.epoch, member)
        busy = bool(waiters) or bool(confirmations) or replica.commit_seq < replica.last_seq
        if busy:
            self._stalled_since.setdefault(partition, self._now())
        else:
            self._stalled_since.pop(partition, None)

    def _tend_primary(self, replica: Replica, now: float) -> None:
        if replica.commit_seq > replica.commit_sent:
            # Tell the members what is now committed, so that they apply it
            # even if no further write comes to carry the news (once a tick,
            # not once per commit: under load, writes carry it anyway).
            self._mark_dirty(replica.partition)
        for expiry in replica.due_expiries(now):
            self.execute_local(replica.partition, expiry, None).addErrback(lambda f: None)
        self._settle(replica)
        stalled = self._stalled_since.get(replica.partition)
        if stalled is None:
            return
        if now - stalled >= self.config.failure_timeout:
            for member in replica.members:
                if replica.member_lagging(member):
                    self._report("drop", replica.partition, replica.epoch, member)
        if now - stalled >= self.config.heartbeat_interval * 3:
            replica.resend()
            self._want_round(replica.partition)

    def _report(self, kind: str, partition: int, epoch: int, member: str) -> None:
        now = self._now()
        key = (partition, kind + member)
        if now - self._last_report.get(key, float("-inf")) < self.config.heartbeat_interval * 5:
            return
        self._last_report[key] = now
        leader = self.consensus.leader
        if leader is not None:
            self._send(leader, [kind, partition, epoch, member])

    def _fail_waiters(self, partition: int, error: Retry) -> None:
        for _, _, d in self._commit_waiters.pop(partition, []):
            d.errback(error)
        for _, _, d in self._confirmation_waiters.pop(partition, []):
            d.errback(Retry(str(error)))
        self._stalled_since.pop(partition, None)

    def _wait_commit(self, partition: int, seq: int) -> Deferred:
        d: Deferred = Deferred()
        heapq.heappush(
            self._commit_waiters.setdefault(partition, []), (seq, next(self._ids), d)
        )
        self._mark_dirty(partition)
        return d

    # -- executing client operations at the primary ------------------------

    def _serving_replica(self, partition: int) -> Replica:
        replica = self.replicas[partition]
        if not replica.is_primary:
            raise Retry("not the primary")
        return replica

    def execute_local(
        self, partition: int, operation: Operation, op_id: Optional[str]
    ) -> Deferred[Optional[Change]]:
        """
        Order C{operation} in this primary's log and fire once every member
        holds it.

        @return: a Deferred firing with the L{Change} made (without its value
            for a retried operation), or C{None} for an expiry overtaken by a
            later write; failing with a L{KVError} when the operation's
            condition does not hold, or L{Retry}.
        """
        try:
            replica = self._serving_replica(partition)
        except Retry as error:
            return fail(error)
        if op_id is not None:
            seen = replica.find_operation(op_id, operation.key)
            if seen is not None:
                seq, change = seen
                return self._wait_commit(partition, seq).addCallback(lambda _: change)
        if (
            isinstance(operation, Put)
            and self.config.memory_limit
            and self.bytes_used() + replica.store.growth(operation.key, operation.value)
            > self.config.memory_limit
        ):
            return fail(InsufficientStorage("the node's memory limit would be exceeded"))
        self.executed += 1
        try:
            entry = replica.propose(operation, op_id, self._now())
        except KVError as error:
            # The answer depends on writes still in flight: give it once they
            # are committed, or retry if they are abandoned.
            # Otherwise it is a read of the key: a primary replaced without
            # knowing it must not refuse from its stale state, so the refusal
            # is confirmed as a read is.
            refusal = Failure(error)
            pending = replica.pending_seq(operation.key)
            if pending is not None:
                return self._wait_commit(partition, pending).addCallback(lambda _: refusal)
            if self._lease_holds(replica):
                return fail(refusal)
            return self._wait_confirmation(replica).addCallback(lambda _: refusal)
        if entry is None:
            return succeed(None)
        change = entry.change
        return self._wait_commit(partition, entry.seq).addCallback(lambda _: change)

    def read_local(self, partition: int, key: str) -> Deferred[Optional[Record]]:
        """
        A linearizable read at this primary: answered at once while our read
        lease holds, else after every member has confirmed our epoch in a
        round started after the read arrived.
        """
        try:
            replica = self._serving_replica(partition)
        except Retry as error:
            return fail(error)
        self.executed += 1
        if self._lease_holds(replica):
            return succeed(replica.read(key, self._now()))
        return self._wait_confirmation(replica).addCallback(
            lambda _: replica.read(key, self._now())
        )

    def _lease_holds(self, replica: Replica) -> bool:
        """
        Whether C{replica}, a primary, may answer a read at once: it serves
        and its read lease holds (a renewal is asked for past half of it).
        """
        if not replica.serving:
            return False
        held = self._lease_now() - replica.lease_start
        if held >= self._lease_hold:
            return False
        if held >= self._lease_hold / 2:
            self._want_round(replica.partition)
        return True

    def _wait_confirmation(self, replica: Replica) -> Deferred[None]:
        """
        Fire once every member has confirmed C{replica}'s epoch in a round
        started after this call: until then a newer primary may exist.
        """
        d: Deferred[None] = Deferred()
        heapq.heappush(
            self._confirmation_waiters.setdefault(replica.partition, []),
            (replica.round + 1, next(self._ids), d),
        )
        self._want_round(replica.partition)
        return d

    def peek_local(self, partition: int, key: str) -> Peek:
        """
        For degraded reads: whether this node is an in-sync replica of
        C{partition} in the newest configuration it knows, the epoch of that
        configuration, and the newest record of C{key} it holds, committed or
        not.
        """
        config = self.partition_config(partition)
        member = None if config is None else config.member(self.node_id)
        holds = (
            member is not None
            and member.incarnation == self.incarnation
            and self.node_id in config.in_sync
        )
        epoch = 0 if config is None else config.epoch
        return Peek(holds, self.replicas[partition].newest(key), epoch)

    def list_local(
        self, partitions: list[int], prefix: str, start_after: Optional[str], limit: int
    ) -> list[str]:
        """
        The live keys of C{partitions} after C{start_after}, in order.  A
        primary lists what it has applied; another replica (asked for a
        degraded listing) also counts the writes in its log it has not
        applied yet, as a degraded read does.
        """
        now = self._now()

        def live_keys(replica: Replica) -> Iterator[str]:
            logged = {} if replica.is_primary else _logged_records(replica, prefix, start_after)
            applied = (k for k in replica.store.keys_from(prefix, start_after) if k not in logged)
            for key in heapq.merge(applied, sorted(logged)):
                record = logged[key] if key in logged else replica.store.get(key)
                if live(record, now) is not None:
                    yield key

        streams = [live_keys(self.replicas[p]) for p in partitions]
        return list(itertools.islice(heapq.merge(*streams), limit))

    # -- forwarding client operations --------------------------------------

    def call(self, peer: str, message: list, timeout: float) -> Deferred:
        """
        Send a request to C{peer} and fire with its answer's payload, or fail
        with L{twisted.internet.defer.CancelledError} once C{timeout} has
        passed (checked every tick).

        @raise Retry: (as a failure) the link to C{peer}, or its link to us,
            is down, or C{peer} has not been heard from for the failure
            timeout (a link into a partition looks up until it times out);
            the request was not sent.
        """
        if self.messenger is None or not self.messenger.hears_from(peer):
            return fail(Retry(f"{peer} has no link to us for its answer"))
        if self.membership.state(peer, self._now()) == DEAD:
            return fail(Retry(f"{peer} has not been heard from"))
        request_id = next(self._ids)
        message[1] = request_id
        d: Deferred = Deferred(lambda _: self._requests.pop(request_id, None))
        # Tracked rather than limited: the answer or the lost link settles
        # it, and a callback of its own on every request would cost more.
        deadline = self.deadlines.track(d, self._now() + timeout)
        self._requests[request_id] = (peer, d, deadline)
        if not self._send(peer, message):
            self._requests.pop(request_id, None)
            self.deadlines.settle(deadline)
            return fail(Retry(f"no link to {peer}"))
        return d

    def new_op_id(self) -> str:
        return f"{self.node_id}/{self.incarnation:x}/{next(self._op_ids)}"

    # -- incoming messages -------------------------------------------------

    def peer_up(self, peer: str, incarnation: int) -> None:
        self._note_peer(peer, incarnation)
        # The link is new: whatever was in flight on the old one may be lost.
        for replica in self.replicas:
            if replica.is_primary and peer in replica.members:
                replica.resend(peer, link_lost=True)
                self._mark_dirty(replica.partition)

    def peer_down(self, peer: str) -> None:
        for request_id, (target, d, deadline) in list(self._requests.items()):
            if target == peer:
                del self._requests[request_id]
                self.deadlines.settle(deadline)
                d.errback(Retry(f"lost the link to {peer}", maybe_applied=True))

    def _note_peer(self, peer: str, incarnation: int) -> None:
        if self.membership.heard(peer, incarnation, self._now()):
            log.info("node {peer} is up (incarnation {inc:x})", peer=peer, inc=incarnation)

    def peer_message(self, peer: str, incarnation: int, message: list) -> None:
        if peer != self.node_id:
            self._note_peer(peer, incarnation)
        tag = message[0]
        handler = self._handlers.get(tag)
        if handler is None:
            log.warn("unknown message {tag!r} from {peer}", tag=tag, peer=peer)
            return
        handler(self, peer, message)

    def _on_consensus(self, peer: str, message: list) -> None:
        self._send_all(self.consensus.receive(self._now(), peer, message))
        self._after_consensus()

    def hears_leader(self) -> bool:
        """
        Whether this node knows the leader and hears from it.
        """
        leader = self.consensus.leader
        return leader is not None and self.membership.state(leader, self._now()) == ALIVE

    def _on_status(self, peer: str, message: list) -> None:
        _, state, entry, revision = message
        self.membership.info[peer] = state
        self._peer_revisions[peer] = revision
        self.consensus.observe(self._now(), peer, state["term"], entry)
        if state.get("map_index", 0) > self.consensus.committed_index and not self.hears_leader():
            # Cut off from the leader but not from this peer: take the
            # newer map from it, so that requests go where data now lives.
            self._send(peer, ["map_req"])

    def _on_map_req(self, peer: str, message: list) -> None:
        entry = self.consensus.committed_entry()
        if entry is not None:
            self._send(peer, ["map", *entry])

    def _on_map(self, peer: str, message: list) -> None:
        _, index, entry_term, wire_map = message
        if self.consensus.adopt_committed(index, entry_term, wire_map):
            self._after_consensus()

    def _on_app(self, peer: str, message: list) -> None:
        _, partition, epoch, prev_seq, prev_epoch, entries, commit, round_, origin = message
        replica = self.replicas[partition]
        if epoch < replica.epoch:
            self._send(peer, ["stale", partition, replica.epoch])
            return
        self._superseded(replica, epoch)
        ok, last = replica.on_append(epoch, prev_seq, prev_epoch, entries, commit, origin)
        if ok:
            replica.promise_lease(self._lease_now() + self._lease_promise)
            self._send(peer, ["app_ok", partition, epoch, last, round_])
        else:
            self._send(peer, ["app_no", partition, epoch, last])
        self._answer_digest(replica)

    def _on_snap(self, peer: str, message: list) -> None:
        _, partition, epoch, seq, seq_epoch, first, last, records, origin = message
        replica = self.replicas[partition]
        if epoch < replica.epoch:
            return
        self._superseded(replica, epoch)
        replica.on_snapshot(epoch, seq, seq_epoch, first, last, records, origin)

    def _on_app_ok(self, peer: str, message: list) -> None:
        _, partition, epoch, last, round_ = message
        replica = self.replicas[partition]
        replica.on_append_ok(peer, epoch, last, round_)
        self._stalled_since.pop(partition, None)
        self._settle(replica)

    def _on_app_no(self, peer: str, message: list) -> None:
        _, partition, epoch, hint = message
        replica = self.replicas[partition]
        replica.on_append_refused(peer, epoch, hint)
        self._mark_dirty(partition)

    def _on_stale(self, peer: str, message: list) -> None:
        _, partition, epoch = message
        self._superseded(self.replicas[partition], epoch)

    def _superseded(self, replica: Replica, epoch: int) -> None:
        """
        A primary that hears of a newer epoch of its partition (a newer
        primary's message, or a member's refusal) is no longer primary: the
        writes it has not committed fail, their outcome unknown.  Before
        anything of the newer primary's is taken in, since its log may put
        other entries at the positions those writes wait for.
        """
        if replica.is_primary and epoch > replica.epoch:
            self._fail_waiters(replica.partition, Retry("superseded", maybe_applied=True))
            replica.step_down(epoch)

    def _on_report(self, peer: str, message: list) -> None:
        if self.consensus.role == LEADER:
            self._reports.append(message)

    def _answer(self, peer: str, request_id: int, d: Deferred, encode: Callable) -> None:
        def ok(result: Any) -> None:
            self._send(peer, ["res", request_id, "ok", encode(result)])

        def failed(failure: Failure) -> None:
            self._send(peer, ["res", request_id, *_encode_error(failure)])

        d.addCallbacks(ok, failed)

    def _on_op(self, peer: str, message: list) -> None:
        _, request_id, partition, operation, op_id = message
        d = self.execute_local(partition, decode_operation(operation), op_id)
        self._answer(peer, request_id, d, lambda c: None if c is None else encode_change(c))

    def _on_read(self, peer: str, message: list) -> None:
        _, request_id, partition, key = message
        self._answer(peer, request_id, self.read_local(partition, key), _encode_record)

    def _on_peek(self, peer: str, message: list) -> None:
        _, request_id, partition, key = message
        peek = self.peek_local(partition, key)
        self._send(peer, ["res", request_id, "ok", [peek.holds, _encode_record(peek.record), peek.epoch]])

    def _on_list(self, peer: str, message: list) -> None:
        _, request_id, partitions, prefix, start_after, limit = message
        keys = self.list_local(partitions, prefix, start_after, limit)
        self._send(peer, ["res", request_id, "ok", keys])

    def _on_res(self, peer: str, message: list) -> None:
        _, request_id, status, payload = message
        pending = self._requests.pop(request_id, None)
        if pending is None:
            return
        _, d, deadline = pending
        self.deadlines.settle(deadline)
        if status == "ok":
            d.callback(payload)
        else:
            d.errback(_decode_error(status, payload))

    # -- anti-entropy --------------------------------------------------------

    def _send_counted(self, peer: str, message: list) -> None:
        self.antientropy_bytes += len(encode_message(message))
        self._send(peer, message)

    def _start_digest_round(self, now: float) -> None:
        """
        Compare every partition this node is primary of with its members.
        """
        self._round_started = now
        for replica in self.replicas:
            if replica.is_primary and replica.serving and replica.members:
                self._send_digest(replica)

    def _send_digest(self, replica: Replica) -> None:
        seq, buckets, root = replica.digest_snapshot()
        partition = replica.partition
        self._digests_sent[partition] = (seq, buckets)
        self._digests_awaited[partition] = set(replica.members)
        for member in replica.members:
            self._send_counted(member, ["digest", partition, replica.epoch, seq, root])

    def _on_digest(self, peer: str, message: list) -> None:
        _, partition, epoch, seq, root = message
        replica = self.replicas[partition]
        if epoch != replica.epoch:
            return
        self._digest_asked_by[partition] = peer
        replica.learn_commit(seq)
        replica.expect_digest(seq, root)
        self._answer_digest(replica)

    def _answer_digest(self, replica: Replica) -> None:
        result, replica.digest_result = replica.digest_result, None
        asker = self._digest_asked_by.get(replica.partition)
        if result is None or asker is None:
            return
        seq, matched, buckets = result
        if matched:
            reply = ["digest_ok", replica.partition, replica.epoch, seq]
        else:
            reply = ["digest_diff", replica.partition, replica.epoch, seq, buckets]
        self._send_counted(asker, reply)

    def _on_digest_answer(self, peer: str, message: list) -> None:
        partition, epoch, seq = message[1], message[2], message[3]
        replica = self.replicas[partition]
        sent = self._digests_sent.get(partition)
        if not replica.is_primary or epoch != replica.epoch or sent is None or sent[0] != seq:
            return
        if message[0] == "digest_diff":
            buckets = differing(sent[1], message[4])
            log.info(
                "partition {partition}: {member} differs in {count} buckets; repairing",
                partition=partition, member=peer, count=len(buckets),
            )
            entry = replica.propose_repair(buckets)
            self.antientropy_bytes += len(encode_message(encode_entry(entry))) * len(replica.members)
            self._mark_dirty(partition)
        awaited = self._digests_awaited.get(partition)
        if awaited is not None:
            awaited.discard(peer)
            if not awaited:
                del self._digests_awaited[partition]
                if not self._digests_awaited:
                    self.last_full_round = self._now()

    def _on_check(self, peer: str, message: list) -> None:
        replica = self.replicas[message[1]]
        if replica.is_primary and replica.serving and replica.members:
            self._send_digest(replica)

    def check_partition(self, partition: int) -> None:
        """
        Replicas of C{partition} were seen to disagree: ask its primary for an
        anti-entropy round now (read repair).
        """
        config = self.partition_config(partition)
        if config is not None and config.primary is not None:
            self._send(config.primary.node_id, ["check", partition])

    def repaired_keys(self) -> int:
        return sum(r.repaired_keys for r in self.replicas)

    # -- change events -----------------------------------------------------

    def subscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        self._listeners.remove(listener)

    def _queue_events(self, entries: list) -> None:
        # Encoded once, here: the leader forwards these bytes to every node.
        changes = encode_message([encode_change(e.change) for e in entries])
        self._unpublished[next(self._publish_ids)] = (len(entries), changes)
        self._schedule_flush()

    def _publish(self) -> None:
        """
        Hand committed changes to the leader, which numbers them; they stay
        queued until the leader confirms, and go again to a new leader.
        """
        leader = self.consensus.leader
        if leader is None:
            return
        target = (leader, self.consensus.term)
        if target != self._published_to:
            self._published_to = target
            self._requeue_published_recently()
            batches = list(self._unpublished.items())
        else:
            batches = [item for item in self._unpublished.items() if item[0] > self._last_sent_batch]
        for batch_id, (count, changes) in batches:
            self._send(leader, ["pub", batch_id, count, changes])
            self._last_sent_batch = batch_id

    def _republish(self) -> None:
        self._published_to = None
        self._publish()

    def _on_pub(self, peer: str, message: list) -> None:
        _, batch_id, count, changes = message
        if self.consensus.role != LEADER:
            return
        if self._revision_term != self.consensus.term:
            # A new leader continues from the newest change it delivered.
            # One that delivered none (it restarted) continues from the
            # newest its peers report: 0 would tell every node that starts
            # with its changes that they are the cluster's first.
            self._revision_term = self.consensus.term
            self._revision_counter = 0
            self._revision_previous = self._last_revision or max(
                self._peer_revisions.values(), default=0
            )
        first = (self._revision_term << REVISION_TERM_SHIFT) | (self._revision_counter + 1)
        self._revision_counter += count
        previous, self._revision_previous = self._revision_previous, first + count - 1
        event = ["ev", first, changes, previous]
        for node in self.consensus.peers:
            self._send(node, event)
        self._receive_events(first, changes, previous)
        self._send(peer, ["pub_ok", batch_id])

    def _on_pub_ok(self, peer: str, message: list) -> None:
        batch = self._unpublished.pop(message[1], None)
        if batch is not None:
            self._published_recently.add(batch)

    def _requeue_published_recently(self) -> None:
        """
        Queue the recently confirmed batches again, ahead of the unconfirmed
        ones: the leader that confirmed them may have died before sending
        them to every node.  Nodes drop the changes they already have.
        """
        recent = self._published_recently.take()
        if recent:
            batches = [*recent, *self._unpublished.values()]
            self._unpublished = OrderedDict((next(self._publish_ids), b) for b in batches)

    def _on_ev(self, peer: str, message: list) -> None:
        _, first, changes, previous = message
        self._receive_events(first, changes, previous)

    def _receive_events(self, first: int, changes: bytes, previous: int) -> None:
        """
        Deliver a batch the leader numbered from C{first}; C{previous} is the
        revision the leader numbered before it.
        """
        if previous != self._last_revision and first > self._last_revision:
            self._gap_pending = True
        for revision, data in enumerate(decode_message(changes), first):
            self._deliver(revision, data, previous)
            previous = revision

    def _deliver(self, revision: int, data: list, previous: int) -> None:
        """
        Hand one numbered change to the listeners, unless it is older than
        what they have seen (a batch resent to a new leader, or a change a
        new primary announces again).  A new primary announces its partition's
        last L{RECENT_CHANGES} changes, so remembering the last version of as
        many keys per partition recognises every one already delivered.

        @param data: the change as L{encode_change} put it (kind, key,
            version, ...); it becomes a L{Change} only for listeners.
        @param previous: the revision the leader numbered before it.
        """
        if revision <= self._last_revision:
            return
        self._last_revision = revision
        key, version = data[1], data[2]
        delivered = self._delivered[self.partition_of(key)]
        if delivered.get(key, -1) >= version:
            return
        delivered[key] = version
        delivered.move_to_end(key)
        if len(delivered) > RECENT_CHANGES:
            delivered.popitem(last=False)
        gap, self._gap_pending = self._gap_pending, False
        if self._listeners:
            event = ChangeEvent(decode_change(data), revision, gap, previous)
            for listener in list(self._listeners):
                listener(event)

    _handlers: dict[str, Callable[["Node", str, list], None]] = {}


Node._handlers = {
    "prevote": Node._on_consensus,
    "prevoted": Node._on_consensus,
    "vote": Node._on_consensus,
    "voted": Node._on_consensus,
    "append": Node._on_consensus,
    "appended": Node._on_consensus,
    "status": Node._on_status,
    "map_req": Node._on_map_req,
    "map": Node._on_map,
    "app": Node._on_app,
    "snap": Node._on_snap,
    "app_ok": Node._on_app_ok,
    "app_no": Node._on_app_no,
    "stale": Node._on_stale,
    "in_sync": Node._on_report,
    "drop": Node._on_report,
    "op": Node._on_op,
    "read": Node._on_read,
    "peek": Node._on_peek,
    "list": Node._on_list,
    "res": Node._on_res,
    "pub": Node._on_pub,
    "pub_ok": Node._on_pub_ok,
    "ev": Node._on_ev,
    "digest": Node._on_digest,
    "digest_ok": Node._on_digest_answer,
    "digest_diff": Node._on_digest_answer,
    "check": Node._on_check,
}
