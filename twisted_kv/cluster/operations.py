# -*- test-case-name: tests.test_operations -*-
"""
Client operations run at this node: writes and linearizable reads as a
partition's primary (under a read lease, or after a confirmation round),
degraded reads and listings as any replica, whether asked here or
forwarded by a peer.

An operation for a partition this node is about to serve, because the map
that names it primary is on its way or applied but not yet acted on (the
old primary's C{release} is on its way), is held until the node takes over,
for at most a quarter of the request timeout, rather than refused: refused,
the coordinator would try again only on its next map or after its retry
pause, tens of milliseconds after the node could serve it.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable, Iterator, Optional, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from twisted_kv.cluster.calls import Calls, Retry
from twisted_kv.cluster.deadlines import Deadlines
from twisted_kv.cluster.replication import Replication
from twisted_kv.core import messages
from twisted_kv.core.backup import DumpExpired, DumpPage, Dumps
from twisted_kv.core.config import ClusterConfig
from twisted_kv.core.messages import Peek
from twisted_kv.core.placement import PartitionConfig
from twisted_kv.core.records import Change, Operation, Put, Record, live, make_version
from twisted_kv.core.replica import Replica, encode_summary
from twisted_kv.errors import InsufficientStorage, KVError, SnapshotExpired


_T = TypeVar("_T")

# The share of the request timeout a request for a partition this node is
# about to serve is held, at most, before it is refused: the coordinator
# has the rest to try elsewhere.
HOLD_SHARE = 0.25


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
            and entry.seq > replica.applied_seq
            and change.key.startswith(prefix)
            and (start_after is None or change.key > start_after)
        ):
            records[change.key] = change.record
    return records


def _encode_result(change: Optional[Change]) -> Optional[list]:
    return None if change is None else encode_summary(change)


class ClientOperations:
    """
    The client operations this node runs.

    @ivar executed: client operations this node executed as a primary.
    @ivar held: requests held until this node took over their partition
        (or gave up waiting).
    """

    def __init__(
        self,
        *,
        config: ClusterConfig,
        node_id: str,
        incarnation: int,
        replicas: list[Replica],
        replication: Replication,
        calls: Calls,
        partition_config: Callable[[int], Optional[PartitionConfig]],
        now: Callable[[], float],
        deadlines: Deadlines,
        run: int = 0,
        refusal: Callable[[], Optional[Exception]] = lambda: None,
    ) -> None:
        """
        @param run: with a data directory, which start of the node this is
            (a node restarted with its data keeps its incarnation, and its
            replicas remember operation ids of its earlier runs).
        @param refusal: why writes must be refused at once, if they must
            (the data directory cannot take them: see
            L{twisted_kv.cluster.durable.NodeDisk.refusal}).
        @param replication: what writes and reads wait on.
        @param calls: answers the peers' requests.
        @param partition_config: the current map's configuration of a
            partition.
        @param now: the current time.
        @param deadlines: where the time limits of held requests are kept.
        """
        self._config = config
        self._node_id = node_id
        self._incarnation = incarnation
        self._refusal = refusal
        self._op_prefix = f"{node_id}/{incarnation:x}/" + (f"{run}/" if run else "")
        self._replicas = replicas
        self._replication = replication
        self._calls = calls
        self._partition_config = partition_config
        self._now = now
        self._deadlines = deadlines
        self._op_ids = itertools.count(1)
        self.executed = 0
        self.held = 0
        # per partition, the requests waiting for this node to take it over
        self._held: dict[int, list[Deferred[None]]] = {}
        self.dumps = Dumps(f"{node_id}/{incarnation:x}")

    def new_op_id(self) -> str:
        """
        An operation id no other operation of the cluster has: a retried
        write under it is applied once.
        """
        return f"{self._op_prefix}{next(self._op_ids)}"

    def bytes_used(self) -> int:
        """
        About how much memory the records of this node's replicas take,
        those of the copies they dropped and have not freed yet included
        (L{Replica.release_dropped} frees them over many ticks): what
        C{memory_limit} bounds.
        """
        return sum(r.store.bytes_used + r.dropped_bytes for r in self._replicas)

    # -- holding requests for a partition about to be served here ---------

    def _about_to_serve(self, partition: int, epoch: int) -> bool:
        """
        Whether this node, not primary of C{partition}, will be soon: the
        sender's map (of configuration C{epoch}) is newer than ours, or ours
        names us primary and we have not taken over yet (waiting for the
        old primary's C{release}).
        """
        config = self._partition_config(partition)
        if epoch > (0 if config is None else config.epoch):
            return True
        primary = None if config is None else config.primary
        return (
            primary is not None
            and primary.node_id == self._node_id
            and primary.incarnation == self._incarnation
        )

    def _hold(
        self,
        partition: int,
        epoch: int,
        again: Callable[[], Deferred[_T]],
        until: Optional[float] = None,
    ) -> Deferred[_T]:
        """
        Run C{again} once this node is primary of C{partition}, if it is
        about to be (L{_about_to_serve}), re-examined on every map applied
        and every takeover here, until C{until} (a share of the request
        timeout from now by default); else, or then, refuse with L{Retry}.
        """
        if not self._about_to_serve(partition, epoch):
            return fail(Retry("not the primary"))
        if until is None:
            until = self._now() + self._config.request_timeout * HOLD_SHARE
            self.held += 1
        held: Deferred[None] = Deferred(lambda d: self._give_up_holding(partition, d))
        self._held.setdefault(partition, []).append(held)
        self._deadlines.limit(held, until)

        def woken(_: None) -> Deferred[_T]:
            if self._replicas[partition].is_primary:
                return again()
            return self._hold(partition, epoch, again, until)

        return held.addCallback(woken)

    def _give_up_holding(self, partition: int, held: Deferred[None]) -> None:
        waiting = self._held.get(partition, [])
        if held in waiting:
            waiting.remove(held)
        held.errback(Retry("not the primary (not taken over in time)"))

    def wake_held(self, partition: Optional[int] = None) -> None:
        """
        This node took over C{partition} (applied a map, if C{None}): look
        again at the requests held for it (every partition's).
        """
        if partition is None:
            woken = [self._held.pop(p) for p in list(self._held)]
        else:
            woken = [self._held.pop(partition, [])]
        for waiting in woken:
            for held in waiting:
                held.callback(None)

    def stop(self) -> None:
        """
        Refuse every request held: the node stops, having run none of them.
        """
        held, self._held = self._held, {}
        for waiting in held.values():
            for d in waiting:
                d.errback(Retry("node stopping"))

    # -- as primary --------------------------------------------------------

    def execute_local(
        self, partition: int, operation: Operation, op_id: Optional[str], epoch: int = 0
    ) -> Deferred[Optional[Change]]:
        """
        Order C{operation} in this primary's log and fire once every member
        holds it.

        @param epoch: the configuration that named this node primary, for
            the sender (0: none): see L{_hold}.
        @return: a Deferred firing with the L{Change} made (without its value
            for a retried operation), or C{None} for an expiry overtaken by a
            later write; failing with a L{KVError} when the operation's
            condition does not hold, or L{Retry}.
        """
        replica = self._replicas[partition]
        if not replica.is_primary:
            return self._hold(
                partition, epoch, lambda: self.execute_local(partition, operation, op_id, epoch)
            )
        replication = self._replication
        if op_id is not None:
            seen = replica.find_operation(op_id, operation.key)
            if seen is not None:
                seq, change = seen
                return replication.wait_commit(partition, seq).addCallback(lambda _: change)
        if (
            isinstance(operation, Put)
            and self._config.memory_limit
            and self.bytes_used() + replica.store.growth(operation.key, operation.value)
            > self._config.memory_limit
        ):
            return fail(InsufficientStorage("the node's memory limit would be exceeded"))
        refusal = self._refusal()
        if refusal is not None:
            return fail(refusal)
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
                return replication.wait_commit(partition, pending).addCallback(lambda _: refusal)
            if replication.lease_holds(replica):
                return fail(refusal)
            return replication.wait_confirmation(replica).addCallback(lambda _: refusal)
        if entry is None:
            return succeed(None)
        change = entry.change
        return replication.wait_commit(partition, entry.seq).addCallback(lambda _: change)

    def restore_local(
        self, partition: int, batch_id: str, records: list, epoch: int = 0
    ) -> Deferred[int]:
        """
        Order every record of a restore batch that falls in C{partition}
        (C{[index, key, value, content_type, ttl]} each: a
        L{messages.RestoreRequest}) in this primary's log, as unconditional
        writes, and fire once every member holds them all.  The record at
        C{index} is the operation C{batch_id/index}: one already ordered
        (the batch sent again, here or to a primary before us) is not
        ordered twice, and the answer waits for it as for the others.

        @return: a Deferred firing with how many records it holds, or
            failing as L{execute_local} does.
        """
        replica = self._replicas[partition]
        if not replica.is_primary:
            return self._hold(
                partition, epoch, lambda: self.restore_local(partition, batch_id, records, epoch)
            )
        if self._config.memory_limit and self.bytes_used() + sum(
            replica.store.growth(key, value) for _, key, value, _, _ in records
        ) > self._config.memory_limit:
            return fail(InsufficientStorage("the node's memory limit would be exceeded"))
        refusal = self._refusal()
        if refusal is not None:
            return fail(refusal)
        now = self._now()
        last = replica.commit_seq
        for index, key, value, content_type, ttl in records:
            op_id = f"{batch_id}/{index}"
            seen = replica.find_operation(op_id, key)
            if seen is None:
                entry = replica.propose(Put(key, value, content_type, ttl), op_id, now)
                assert entry is not None, "an unconditional write always changes its key"
                self.executed += 1
                last = max(last, entry.seq)
            else:
                last = max(last, seen[0])
        return self._replication.wait_commit(partition, last).addCallback(lambda _: len(records))

    def expire(self, partition: int, operation: Operation) -> None:
        """
        Run a due expiry; it is moot if it fails (a later write overtook it,
        or this node is no longer primary).
        """
        self.execute_local(partition, operation, None).addErrback(lambda f: None)

    def read_local(self, partition: int, key: str, epoch: int = 0) -> Deferred[Optional[Record]]:
        """
        A linearizable read at this primary: answered at once while our read
        lease holds, else after every member has confirmed our epoch in a
        round started after the read arrived.
        """
        replica = self._replicas[partition]
        if not replica.is_primary:
            return self._hold(partition, epoch, lambda: self.read_local(partition, key, epoch))
        self.executed += 1
        if self._replication.lease_holds(replica):
            return succeed(replica.read(key, self._now()))
        return self._replication.wait_confirmation(replica).addCallback(
            lambda _: replica.read(key, self._now())
        )

    def peek_local(self, partition: int, key: str) -> Peek:
        """
        For degraded reads: whether this node is an in-sync replica of
        C{partition} in the newest configuration it knows, the epoch of that
        configuration, and the newest record of C{key} it holds, committed or
        not.
        """
        config = self._partition_config(partition)
        member = None if config is None else config.member(self._node_id)
        holds = (
            member is not None
            and member.incarnation == self._incarnation
            and self._node_id in config.in_sync
        )
        epoch = 0 if config is None else config.epoch
        return Peek(holds, self._replicas[partition].newest(key), epoch)

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

        streams = [live_keys(self._replicas[p]) for p in partitions]
        return list(itertools.islice(heapq.merge(*streams), limit))

    def dump_local(
        self, partition: int, dump_id: Optional[str], after: Optional[str], limit: int,
        epoch: int = 0,
    ) -> Deferred[DumpPage]:
        """
        A page of a backup of C{partition} at this primary.  Without
        C{dump_id}, a new dump is taken of the committed records, as a
        linearizable read is answered (under the read lease, or after a
        confirmation round): it holds every write acknowledged before it
        was asked for, and later pages come from that same moment.

        @return: a Deferred firing with the L{DumpPage}; failing with
            L{Retry} (not the primary) or L{SnapshotExpired} (C{dump_id} is
            not held here: the primary moved, or the dump sat idle).
        """
        replica = self._replicas[partition]
        if not replica.is_primary:
            return self._hold(
                partition, epoch, lambda: self.dump_local(partition, dump_id, after, limit, epoch)
            )
        if dump_id is not None:
            try:
                return succeed(self.dumps.page(partition, dump_id, after, limit, self._now()))
            except DumpExpired as error:
                return fail(SnapshotExpired(str(error)))

        def take(_: object = None) -> DumpPage:
            if not replica.is_primary:
                raise Retry("not the primary")
            as_of = make_version(replica.epoch, replica.applied_seq)
            dump = self.dumps.take(partition, as_of, replica.store, self._now())
            return self.dumps.page(partition, dump.dump_id, None, limit, self._now())

        if self._replication.lease_holds(replica):
            return succeed(take())
        return self._replication.wait_confirmation(replica).addCallback(take)

    # -- the peers' requests -----------------------------------------------

    def on_op(self, peer: str, message: list) -> None:
        request_id, partition, operation, op_id, epoch = messages.parse_op(message)
        d = self.execute_local(partition, operation, op_id, epoch)
        self._calls.answer(peer, request_id, d, _encode_result)

    def on_restore(self, peer: str, message: list) -> None:
        request_id, partition, batch_id, records, epoch = messages.parse_restore(message)
        d = self.restore_local(partition, batch_id, records, epoch)
        self._calls.answer(peer, request_id, d, int)

    def on_read(self, peer: str, message: list) -> None:
        request_id, partition, key, epoch = messages.parse_read(message)
        d = self.read_local(partition, key, epoch)
        self._calls.answer(peer, request_id, d, messages.encode_record)

    def on_peek(self, peer: str, message: list) -> None:
        request_id, partition, key = messages.parse_key_request(message)
        self._calls.answer_now(peer, request_id, messages.encode_peek(self.peek_local(partition, key)))

    def on_list(self, peer: str, message: list) -> None:
        request_id, partitions, prefix, start_after, limit = messages.parse_list(message)
        keys = self.list_local(partitions, prefix, start_after, limit)
        self._calls.answer_now(peer, request_id, keys)

    def on_dump(self, peer: str, message: list) -> None:
        request_id, partition, dump_id, after, limit, epoch = messages.parse_dump(message)
        d = self.dump_local(partition, dump_id, after, limit, epoch)
        self._calls.answer(peer, request_id, d, messages.encode_dump_page)
