# -*- test-case-name: tests.test_replication -*-
"""
Driving replication (L{twisted_kv.core.replica}) inside each partition: a
primary sends its members what they lack, once per reactor turn, and
answers the writes and reads waiting on their acknowledgements; a member
takes in its primary's log and snapshots and promises it a read lease.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_kv.cluster.antientropy import AntiEntropy
from twisted_kv.cluster.calls import Retry
from twisted_kv.cluster.durable import APPEND, FORGET, SNAPSHOT, DurableGate, NodeDisk
from twisted_kv.cluster.feed import ChangeFeed
from twisted_kv.core import messages
from twisted_kv.core.config import ClusterConfig
from twisted_kv.core.consensus import Consensus
from twisted_kv.core.placement import PartitionConfig
from twisted_kv.core.records import Expire
from twisted_kv.core.replica import Replica, chunk_bytes

log = Logger()

# How often a primary checks that its members catching up still progress.
NUDGES_PER_FAILURE_TIMEOUT = 3
# A member acknowledging a primary's round promises not to take over as
# primary for this share of the failure timeout; a primary whose round every
# member confirmed then reads without a round of its own until the lease
# ends.  Failover after a crash waits a whole failure timeout anyway.
LEASE_PROMISE_SHARE = 0.5
# The primary's lease ends this share earlier than its members' promises,
# for clocks that run at slightly different rates.
LEASE_CLOCK_MARGIN = 0.1


# A change of a replica's shape (L{_shape}) past this field moves only its
# commit position (and the trim position that follows it).  Its record is
# lazy (GroupCommitter.append): it costs no sync of its own, and an answer
# does not wait for it, for nothing acknowledged depends on it.  A crash
# that loses it leaves the replica's log entries uncommitted, as a member's
# always are until its primary's next message: the replica learns the
# commit position again from its primary, and a node that takes over as
# primary commits its whole log before it serves.  The answer still goes
# after every record held before it (DurableGate.send).
_COMMIT_ONLY = 4


def _shape(replica: Replica) -> tuple:
    """
    What changes when a replica takes something in that must be recorded:
    its epoch and origin (fences against older primaries), its log's end,
    its commit and trim positions.
    """
    return (
        replica.epoch,
        replica.origin,
        replica.last_seq,
        replica.epoch_at(replica.last_seq),
        replica.commit_seq,
        replica.base_seq,
    )


class Replication:
    """
    The replication of this node's replicas, as primary and as member.
    """

    def __init__(
        self,
        *,
        config: ClusterConfig,
        node_id: str,
        incarnation: int,
        replicas: list[Replica],
        clock: IReactorTime,
        lease_now: Callable[[], float],
        send: Callable[[str, list], bool],
        consensus: Consensus,
        partition_config: Callable[[int], Optional[PartitionConfig]],
        feed: ChangeFeed,
        antientropy: AntiEntropy,
        expire: Callable[[int, Expire], None],
        took_over: Callable[[int], None] = lambda partition: None,
        disk: Optional[NodeDisk] = None,
        restarted_at: Optional[float] = None,
    ) -> None:
        """
        @param lease_now: the time read leases are measured with, which
            must never step.
        @param send: sends a message to a node.
        @param consensus: tells who leads, to report members to.
        @param partition_config: the current map's configuration of a
            partition.
        @param feed: where committed changes go.
        @param antientropy: answers digests once a member applied enough.
        @param expire: runs a due expiry of a partition as a write.
        @param took_over: told of each partition this node took over as
            primary, for the requests held until it did.
        @param disk: the node's data directory, where every change to a
            replica's log goes before it is acknowledged or counted.
        @param restarted_at: with C{disk}, the time (of C{lease_now}) at
            which this process began reading it: the process before the
            restart had stopped by then.  Now by default.
        """
        self._config = config
        self._node_id = node_id
        self._incarnation = incarnation
        self._replicas = replicas
        self._clock = clock
        self._lease_now = lease_now
        self._lease_promise = config.failure_timeout * LEASE_PROMISE_SHARE
        self._lease_hold = self._lease_promise * (1 - LEASE_CLOCK_MARGIN)
        self._send = send
        self._consensus = consensus
        self._partition_config = partition_config
        self._feed = feed
        self._antientropy = antientropy
        self._expire = expire
        self._took_over = took_over
        # partitions the map makes ours while we still promise not to take over
        self._takeovers_waiting: set[int] = set()
        # partitions taken over whose next announcements repeat the
        # predecessor's last changes
        self._announcing_again: set[int] = set()
        self._dirty: set[int] = set()
        self._round_wanted: set[int] = set()
        self._flush_call: Optional[IDelayedCall] = None
        # (partition, member) of every snapshot on its way, in turn; when
        # the next chunk may go (L{ClusterConfig.fill_rate})
        self._fills: deque[tuple[int, str]] = deque()
        self._fill_call: Optional[IDelayedCall] = None
        self._next_chunk_at = clock.seconds()
        # heaps of (position, tie-breaker, Deferred): writes waiting for a
        # commit position, reads and refusals waiting for a confirmation round
        self._commit_waiters: dict[int, list[tuple[int, int, Deferred]]] = {}
        self._confirmation_waiters: dict[int, list[tuple[int, int, Deferred]]] = {}
        self._stalled_since: dict[int, float] = {}
        self._ids = itertools.count(1)
        self._last_report: dict[tuple[int, str], float] = {}
        self._next_nudge = clock.seconds()
        self._disk = disk
        # answers to primaries, each sent once what it acknowledges is durable
        self._answers = DurableGate(self._send_each, "replica entries")
        # per partition: the log position up to which the log is recorded,
        # and the commit position last recorded
        self._logged = {r.partition: r.last_seq for r in replicas}
        self._logged_commit = {r.partition: r.commit_seq for r in replicas}
        if disk is not None:
            # The promises given before a restart are forgotten with it: a
            # node coming back with its data keeps them all, for as long as
            # any can run, before it takes over as a primary.  Each was given
            # before the restart, so none runs past a promise given when
            # this process began reading its data: a recovery that took
            # longer than a promise waits no more.
            since = lease_now() if restarted_at is None else restarted_at
            for replica in replicas:
                replica.promise_lease(since + self._lease_promise)

    def _send_each(self, outgoing: list[tuple[str, list]]) -> None:
        for peer, message in outgoing:
            self._send(peer, message)

    def stop(self) -> None:
        """
        Send nothing more, and fail every write and read waiting: they may
        have taken effect.
        """
        for call in (self._flush_call, self._fill_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._fill_call = None
        for partition in range(len(self._replicas)):
            self.fail_waiters(partition, Retry("node stopping", maybe_applied=True))

    def tick(self, now: float) -> None:
        """
        Take over the partitions waiting for a promise to end, and tend every
        partition this node is primary of.
        """
        for partition in sorted(self._takeovers_waiting):
            self.take_over(partition)
        nudge = now >= self._next_nudge
        if nudge:
            self._next_nudge = now + self._config.failure_timeout / NUDGES_PER_FAILURE_TIMEOUT
        for replica in self._replicas:
            if replica.is_primary:
                if nudge and replica.nudge_stalled_members():
                    self.replicate(replica.partition)
                self._tend_primary(replica, now)

    def peer_up(self, peer: str) -> None:
        """
        A new link to C{peer}: whatever was in flight on the old one may be
        lost.
        """
        for replica in self._replicas:
            if replica.is_primary and peer in replica.members:
                replica.resend(peer, link_lost=True)
                self.replicate(replica.partition)

    # -- the map's decisions -------------------------------------------------

    def take_over(self, partition: int) -> None:
        """
        Become (or stay) the primary the current map names us for
        C{partition}, unless we still promise the previous primary not to:
        then adopt the new epoch, so that the old primary's writes are
        refused, and take over on a later tick.
        """
        self._takeovers_waiting.discard(partition)
        config = self._partition_config(partition)
        member = None if config is None else config.member(self._node_id)
        if (
            config is None
            or member is None
            or member != config.primary
            or member.incarnation != self._incarnation
        ):
            return
        replica = self._replicas[partition]
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
        if takeover and replica.recent_changes:
            self._announcing_again.add(partition)
        self._stalled_since.pop(partition, None)
        self.replicate(partition)
        if takeover:
            self._took_over(partition)

    def fail_waiters(self, partition: int, error: Retry) -> None:
        """
        Fail the writes, reads and refusals of C{partition} waiting here.
        """
        for _, _, d in self._commit_waiters.pop(partition, []):
            d.errback(error)
        for _, _, d in self._confirmation_waiters.pop(partition, []):
            d.errback(Retry(str(error)))
        self._stalled_since.pop(partition, None)

    # -- the primary's side --------------------------------------------------

    def replicate(self, partition: int) -> None:
        """
        Send C{partition}'s members what they lack in the next flush.
        """
        self._dirty.add(partition)
        self._schedule_flush()

    def _want_round(self, partition: int) -> None:
        """
        Start a confirmation round of C{partition} in the next flush.
        """
        self._round_wanted.add(partition)
        self.replicate(partition)

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
        started = False
        for partition in sorted(dirty):
            replica = self._replicas[partition]
            if not replica.is_primary:
                continue
            if partition in self._round_wanted:
                self._round_wanted.discard(partition)
                replica.new_round(self._lease_now())
            self._record_own(replica)
            for member in replica.members:
                if replica.needs_snapshot(member):
                    if started:
                        # One snapshot starts per turn: each copies the
                        # index of its partition's store, and a new map
                        # may start several at once.
                        self.replicate(partition)
                        continue
                    started = True
                    self._send_chunk(member, replica.start_snapshot(member))
                    if (partition, member) not in self._fills:
                        self._fills.append((partition, member))
                    self._schedule_fill()
                self._send(member, replica.append_message(member))
            self._settle(replica)
        self._feed.publish()

    def _send_chunk(self, member: str, chunk: list) -> None:
        """
        Send a chunk of a snapshot; the next may go once the time the
        chunk's bytes take at the fill rate has passed.
        """
        self._send(member, chunk)
        self._next_chunk_at = (
            max(self._next_chunk_at, self._clock.seconds())
            + chunk_bytes(chunk) / self._config.fill_rate
        )

    def _schedule_fill(self) -> None:
        if self._fill_call is None and self._fills:
            delay = max(0.0, self._next_chunk_at - self._clock.seconds())
            self._fill_call = self._clock.callLater(delay, self._send_next_chunk)

    def _send_next_chunk(self) -> None:
        """
        Send the next chunk of one snapshot on its way, the snapshots taking
        turns: one chunk a reactor turn, at most C{fill_rate} bytes a
        second for the whole node, so that filling new copies takes its
        time rather than the reactor's (each chunk is built by the primary
        and taken in by the member in a few milliseconds).  Once a
        snapshot's last chunk went out, a round follows: a member still
        filling after it missed a chunk, and is sent another snapshot.
        """
        self._fill_call = None
        while self._fills:
            partition, member = self._fills.popleft()
            replica = self._replicas[partition]
            chunk = replica.next_snapshot_chunk(member) if replica.is_primary else None
            if chunk is None:
                continue
            self._send_chunk(member, chunk)
            if member in replica.filling:
                self._fills.append((partition, member))
            else:
                self._want_round(partition)
            break
        self._schedule_fill()

    def _record_own(self, replica: Replica) -> None:
        """
        Record what this primary added to its log, and how far it
        committed, since the last record; its own copy counts towards a
        commit once that record is durable (L{Replica.mark_durable}).
        """
        partition = replica.partition
        if self._disk is None or (
            self._logged[partition] == replica.last_seq
            and self._logged_commit[partition] == replica.commit_seq
        ):
            return
        prev, prev_epoch, entries = replica.entries_after(self._logged[partition])
        last = replica.last_seq
        self._logged[partition] = last
        self._logged_commit[partition] = replica.commit_seq
        fields = [replica.epoch, prev, prev_epoch, entries, replica.commit_seq, replica.origin]
        # Only the commit position moved: see _COMMIT_ONLY.
        lazy = not entries and prev == last
        self._disk.append_replica(APPEND, partition, fields, lazy).addCallbacks(
            self._recorded, self._not_recorded,
            callbackArgs=(partition, last, replica.epoch_at(last)),
            errbackArgs=(partition, prev),
        )

    def _recorded(self, result: object, partition: int, seq: int, epoch: Optional[int]) -> None:
        replica = self._replicas[partition]
        replica.mark_durable(seq, epoch)
        if replica.is_primary:
            self._settle(replica)

    def _not_recorded(self, failure: Failure, partition: int, prev: int) -> None:
        """
        A primary's entries could not be recorded: they are not counted,
        and go out again with the next record.
        """
        log.error(
            "partition {partition}: cannot record entries: {error}",
            partition=partition, error=failure.getErrorMessage(),
        )
        self._logged[partition] = min(self._logged[partition], prev)
        self._logged_commit[partition] = -1

    def forgotten(self, partition: int) -> None:
        """
        C{partition}'s replica dropped everything: record that.
        """
        self._logged[partition] = self._logged_commit[partition] = 0
        if self._disk is not None:
            origin = self._replicas[partition].origin
            self._disk.append_replica(FORGET, partition, [origin]).addErrback(self._log_failure)

    def _log_failure(self, failure: Failure) -> None:
        log.error("cannot record a replica change: {error}", error=failure.getErrorMessage())

    def _settle(self, replica: Replica) -> None:
        """
        Announce and answer what the replica's progress allows: committed
        changes and writes, confirmed reads and refusals; report members that
        caught up.
        """
        partition = replica.partition
        committed = replica.take_announcements()
        if committed:
            repeated = partition in self._announcing_again
            self._announcing_again.discard(partition)
            self._feed.queue(committed, repeated)
            self._schedule_flush()
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
        if self._partition_config(partition) is not None:
            for member in replica.caught_up():
                self._report(messages.IN_SYNC, partition, replica.epoch, member)
        busy = bool(waiters) or bool(confirmations) or replica.commit_seq < replica.last_seq
        if busy:
            self._stalled_since.setdefault(partition, self._clock.seconds())
        else:
            self._stalled_since.pop(partition, None)

    def _tend_primary(self, replica: Replica, now: float) -> None:
        if replica.commit_seq > replica.commit_sent:
            # Tell the members what is now committed, so that they apply it
            # even if no further write comes to carry the news (once a tick,
            # not once per commit: under load, writes carry it anyway).
            self.replicate(replica.partition)
        for expiry in replica.due_expiries(now):
            self._expire(replica.partition, expiry)
        self._settle(replica)
        stalled = self._stalled_since.get(replica.partition)
        if stalled is None:
            return
        if now - stalled >= self._config.failure_timeout:
            for member in replica.members:
                if replica.member_lagging(member):
                    self._report(messages.DROP, replica.partition, replica.epoch, member)
        if now - stalled >= self._config.heartbeat_interval * 3:
            replica.resend()
            self._want_round(replica.partition)

    def _report(self, kind: str, partition: int, epoch: int, member: str) -> None:
        now = self._clock.seconds()
        key = (partition, kind + member)
        if now - self._last_report.get(key, float("-inf")) < self._config.heartbeat_interval * 5:
            return
        self._last_report[key] = now
        leader = self._consensus.leader
        if leader is not None:
            self._send(leader, messages.report(kind, partition, epoch, member))

    def wait_commit(self, partition: int, seq: int) -> Deferred[None]:
        """
        Fire once C{partition}'s log is committed up to C{seq}.
        """
        d: Deferred[None] = Deferred()
        heapq.heappush(
            self._commit_waiters.setdefault(partition, []), (seq, next(self._ids), d)
        )
        self.replicate(partition)
        return d

    def lease_holds(self, replica: Replica) -> bool:
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

    def wait_confirmation(self, replica: Replica) -> Deferred[None]:
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

    def on_append_ok(self, peer: str, message: list) -> None:
        partition, epoch, last, round_, filled = messages.parse_append_ok(message)
        replica = self._replicas[partition]
        replica.on_append_ok(peer, epoch, last, round_, filled)
        self._stalled_since.pop(partition, None)
        self._settle(replica)
        if replica.is_primary and peer in replica.members and replica.needs_snapshot(peer):
            self.replicate(partition)

    def on_append_refused(self, peer: str, message: list) -> None:
        partition, epoch, hint = messages.parse_append_refused(message)
        self._replicas[partition].on_append_refused(peer, epoch, hint)
        self.replicate(partition)

    def release(self, partition: int, epoch: int, successor: str) -> None:
        """
        Having stepped down as the primary of C{partition} in C{epoch}, let
        C{successor} take over at once rather than when our lease would
        have ended: a planned move (a node added or removed, a member back
        in sync) then stalls the partition for a round trip, not for half a
        failure timeout.
        """
        self._send(successor, messages.release(partition, epoch))

    def on_release(self, peer: str, message: list) -> None:
        partition, epoch = messages.parse_release(message)
        if self._replicas[partition].release_promise(epoch) and partition in self._takeovers_waiting:
            self.take_over(partition)

    def on_stale(self, peer: str, message: list) -> None:
        partition, epoch = messages.parse_stale(message)
        self.superseded(self._replicas[partition], epoch)

    def superseded(self, replica: Replica, epoch: int) -> None:
        """
        A primary that hears of a newer epoch of its partition (a newer
        primary's message, or a member's refusal) is no longer primary: the
        writes it has not committed fail, their outcome unknown.  Before
        anything of the newer primary's is taken in, since its log may put
        other entries at the positions those writes wait for.
        """
        if replica.is_primary and epoch > replica.epoch:
            self.fail_waiters(replica.partition, Retry("superseded", maybe_applied=True))
            replica.step_down(epoch)

    # -- a member's side -----------------------------------------------------

    def on_append(self, peer: str, message: list) -> None:
        partition, epoch, prev_seq, prev_epoch, entries, commit, round_, origin = (
            messages.parse_append(message)
        )
        replica = self._replicas[partition]
        if epoch < replica.epoch:
            self._send(peer, messages.stale(partition, replica.epoch))
            return
        self.superseded(replica, epoch)
        before = _shape(replica)
        ok, last = replica.on_append(epoch, prev_seq, prev_epoch, entries, commit, origin)
        if ok:
            replica.promise_lease(self._lease_now() + self._lease_promise)
            answer = messages.append_ok(partition, epoch, last, round_, replica.filled)
        else:
            answer = messages.append_refused(partition, epoch, last)
        after = _shape(replica)
        if self._disk is not None and after != before:
            fields = [epoch, prev_seq, prev_epoch, entries, commit, origin]
            if after[:_COMMIT_ONLY] == before[:_COMMIT_ONLY]:
                self._disk.append_replica(APPEND, partition, fields, lazy=True).addErrback(
                    self._log_failure
                )
                self._logged_commit[partition] = replica.commit_seq
                self._answers.send([(peer, answer)])
            else:
                # Acknowledge only once what is acknowledged is durable.
                durable = self._disk.append_replica(APPEND, partition, fields)
                self._member_recorded(partition, durable, [(peer, answer)])
        else:
            self._answers.send([(peer, answer)])
        self._antientropy.answer(replica)

    def _member_recorded(
        self, partition: int, durable: "Deferred[None]", outgoing: list[tuple[str, list]]
    ) -> None:
        replica = self._replicas[partition]
        seq = self._logged[partition] = replica.last_seq
        self._logged_commit[partition] = replica.commit_seq
        epoch = replica.epoch_at(seq)
        durable.addCallback(lambda _: replica.mark_durable(seq, epoch))
        self._answers.after(durable, outgoing)

    def on_snapshot(self, peer: str, message: list) -> None:
        partition, epoch, seq, seq_epoch, first, last, records, origin, part = (
            messages.parse_snapshot(message)
        )
        replica = self._replicas[partition]
        if epoch < replica.epoch:
            return
        self.superseded(replica, epoch)
        taken = replica.on_snapshot(epoch, seq, seq_epoch, first, last, records, origin, part)
        if taken and self._disk is not None:
            fields = [epoch, seq, seq_epoch, first, last, records, origin]
            self._member_recorded(partition, self._disk.append_replica(SNAPSHOT, partition, fields), [])
