# -*- test-case-name: tests.test_cluster -*-
"""
The cluster as one L{IKeyValue}: every front end's requests enter here, on
whichever node the client reached.

Each operation goes to the primary of its key's partition (here or over the
peer protocol), which executes it; so requests arriving at the partition
leader are executed across the cluster, wherever the primaries are.  While the
map changes (a node died, a primary moved) an operation is retried, under the
same operation id, until the request timeout; the primaries remember recent
operation ids, so a retried write takes effect at most once.  What the client
is told when time runs out depends on whether the write may have been
applied: L{Unavailable} (503, nothing happened) or L{OutcomeUnknown} (504).

Reads are linearizable while a majority is reachable.  Without one they are
answered from the newest version among the reachable replicas and marked
degraded; writes are then refused with 503.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable, Optional, Sequence

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_kv.cluster.calls import Request, Retry
from twisted_kv.cluster.feed import Replayed
from twisted_kv.cluster.node import Node
from twisted_kv.core import messages
from twisted_kv.core.backup import BackupRecord, DumpPage
from twisted_kv.core.membership import DEAD
from twisted_kv.core.messages import Peek
from twisted_kv.core.placement import PartitionConfig
from twisted_kv.core.records import (
    Change,
    Delete,
    Operation,
    Put,
    Record,
    format_version,
    live,
)
from twisted_kv.core.replica import decode_change
from twisted_kv.errors import InvalidRequest, OutcomeUnknown, Unavailable, ValueTooLarge
from twisted_kv.interfaces import (
    ChangeEvent,
    IKeyValue,
    ISnapshotSource,
    KeyPage,
    ReadResult,
    WriteResult,
)

# How long a degraded read waits for the reachable replicas.
DEGRADED_READ_TIMEOUT = 1.0
# Longest pause between two attempts of a client operation waiting for a
# primary: a new map ends it sooner (L{Node.next_map}).
RETRY_DELAY = 0.05


def _lost_reason(partition: int) -> str:
    """
    Why a request for C{partition}, whose every in-sync copy restarted empty
    (L{Node.lost_partitions}), is refused at once: waiting would not bring
    the data back, and the leader's next map serves the partition again.
    """
    return (
        f"partition {partition} lost every in-sync copy (all restarted empty);"
        " it will serve again, empty, shortly"
    )


@implementer(IKeyValue, ISnapshotSource)
class Coordinator:
    """
    Routes client operations to the primaries of their partitions.
    """

    def __init__(self, node: Node, clock: IReactorTime) -> None:
        self._node = node
        self._clock = clock
        self.max_value_bytes = node.config.max_value_bytes

    # -- IKeyValue ---------------------------------------------------------

    def get(self, key: str) -> Deferred[ReadResult]:
        if not self._node.has_majority() and not self._node.just_started():
            return self._degraded_get(key)
        partition = self._node.partition_of(key)
        d = self._route(
            partition,
            lambda epoch: self._node.operations.read_local(partition, key, epoch),
            lambda epoch: messages.ReadRequest(partition, key, epoch),
            messages.decode_record,
            write=False,
        )

        def found(record: Optional[Record]) -> ReadResult:
            return ReadResult(live(record, self._clock.seconds()))

        def unreachable(failure: Failure) -> Deferred[ReadResult]:
            failure.trap(Unavailable)
            if self._node.has_majority():
                # A majority is up, so a read must be linearizable: better
                # no answer than a degraded one that may be stale.
                return failure
            return self._degraded_get(key)

        return d.addCallbacks(found, unreachable)

    def put(
        self,
        key: str,
        value: bytes,
        content_type: str = "application/octet-stream",
        ttl: Optional[float] = None,
        if_match: Optional[str] = None,
        if_none_match: bool = False,
        create_only: bool = False,
    ) -> Deferred[WriteResult]:
        if len(value) > self.max_value_bytes:
            return fail(ValueTooLarge(f"the value exceeds {self.max_value_bytes} bytes"))
        operation = Put(key, value, content_type, ttl, if_match, if_none_match, create_only)
        return self._write(operation).addCallback(
            lambda change: WriteResult(format_version(change.version), change.created)
        )

    def delete(self, key: str, if_match: Optional[str] = None) -> Deferred[str]:
        return self._write(Delete(key, if_match)).addCallback(
            lambda change: format_version(change.version)
        )

    def list_keys(self, prefix: str, start_after: Optional[str], limit: int) -> Deferred[KeyPage]:
        cluster_map = self._node.cluster_map
        if cluster_map is None:
            return fail(Unavailable("the cluster has no partition map yet"))
        if self._node.lost_partitions:
            return fail(Unavailable(_lost_reason(min(self._node.lost_partitions)), retry_after=1))
        degraded = not self._node.has_majority()
        by_holder: dict[str, list[int]] = {}
        for index, config in enumerate(cluster_map.partitions):
            holder = self._listing_holder(config)
            if holder is None:
                return fail(Unavailable(f"no replica of partition {index} is reachable", retry_after=1))
            degraded = degraded or holder != config.primary.node_id
            by_holder.setdefault(holder, []).append(index)
        timeout = self._node.config.request_timeout
        calls = [
            (
                succeed(self._node.operations.list_local(partitions, prefix, start_after, limit + 1))
                if holder == self._node.node_id
                else self._node.call(
                    holder, messages.ListRequest(partitions, prefix, start_after, limit + 1), timeout
                )
            )
            for holder, partitions in by_holder.items()
        ]

        def merge(results: list) -> KeyPage:
            pages = []
            for ok, result in results:
                if not ok:
                    raise Unavailable("a node holding part of the listing did not answer")
                pages.append(result)
            keys = list(itertools.islice(heapq.merge(*pages), limit + 1))
            if len(keys) > limit:
                return KeyPage(keys[:limit], keys[limit - 1], degraded)
            return KeyPage(keys, None, degraded)

        return DeferredList(calls, consumeErrors=True).addCallback(merge)

    def _listing_holder(self, config: PartitionConfig) -> Optional[str]:
        """
        The node to list a partition at: its primary while that is alive,
        else a live in-sync member still in the incarnation the map names
        (it holds every acknowledged write), else C{None}.
        """
        node = self._node
        for member in config.members:
            if (
                member.node_id in config.in_sync
                and node.peer_state(member.node_id) != DEAD
                and node.peer_incarnation(member.node_id) == member.incarnation
            ):
                return member.node_id
        return None

    def subscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        self._node.feed.subscribe(listener)

    def unsubscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        self._node.feed.unsubscribe(listener)

    def replay(self, after: int) -> Deferred[Replayed]:
        return self._node.feed.replay(after)

    # -- ISnapshotSource ---------------------------------------------------

    def partition_count(self) -> int:
        return self._node.config.partitions

    def dump_page(
        self, partition: int, dump_id: Optional[str], after: Optional[str], limit: int
    ) -> Deferred[DumpPage]:
        """
        Routed to the partition's primary like a read, retried while the
        primary is unknown or moving; a later page reaching a new primary
        fails with L{SnapshotExpired}, since only the old one held the dump.
        """
        if not 0 <= partition < self.partition_count():
            return fail(InvalidRequest(f"no partition {partition}"))
        return self._route(
            partition,
            lambda epoch: self._node.operations.dump_local(partition, dump_id, after, limit, epoch),
            lambda epoch: messages.DumpRequest(partition, dump_id, after, limit, epoch),
            messages.decode_dump_page,
            write=False,
        )

    def restore(self, records: Sequence[BackupRecord], batch_id: Optional[str] = None) -> Deferred[int]:
        """
        Each partition's records go to its primary in one request, which
        orders them all in its log at once (L{ClientOperations.restore_local}),
        every partition at the same time; a request is retried, as a write
        is, under the same operation ids.  A C{batch_id} given by the
        client keeps those ids when the client sends the batch again; one
        made up here is new.
        """
        for record in records:
            if len(record.value) > self.max_value_bytes:
                return fail(ValueTooLarge(f"the value exceeds {self.max_value_bytes} bytes"))
        ids = "~" + (self._node.operations.new_op_id() if batch_id is None else f"~{batch_id}")
        groups: dict[int, list] = {}
        for index, record in enumerate(records):
            groups.setdefault(self._node.partition_of(record.key), []).append(
                [index, record.key, record.value, record.content_type, record.ttl]
            )
        restore_local = self._node.operations.restore_local
        writes = [
            self._route(
                partition,
                lambda epoch, partition=partition, group=group: restore_local(
                    partition, ids, group, epoch
                ),
                lambda epoch, partition=partition, group=group: messages.RestoreRequest(
                    partition, ids, group, epoch
                ),
                int,
                write=True,
            )
            for partition, group in sorted(groups.items())
        ]

        def gathered(results: list) -> int:
            for ok, result in results:
                if not ok:
                    return result
            return sum(result for _, result in results)

        return DeferredList(writes, consumeErrors=True).addCallback(gathered)

    # -- routing -----------------------------------------------------------

    def _write(self, operation: Operation) -> Deferred[Change]:
        partition = self._node.partition_of(operation.key)
        op_id = self._node.operations.new_op_id()
        return self._route(
            partition,
            lambda epoch: self._node.operations.execute_local(partition, operation, op_id, epoch),
            lambda epoch: messages.OpRequest(partition, operation, op_id, epoch),
            decode_change,
            write=True,
        )

    def _route(
        self,
        partition: int,
        run_here: Callable[[int], Deferred],
        request: Callable[[int], Request],
        decode: Callable,
        *,
        write: bool,
    ) -> Deferred:
        """
        Run an operation at its partition's primary, retrying while the
        primary is unknown, moving or unreachable, until the request timeout.

        @param run_here: runs it here, given the epoch of the configuration
            that names this node primary.
        @param request: the request that runs it at another node, given the
            epoch of the configuration that names that node primary.
        """
        routed = _RoutedOperation(self._node, self._clock, partition, run_here, request, decode, write)
        try:
            return routed.attempt()
        except Exception:
            return fail()

    def _degraded_get(self, key: str) -> Deferred[ReadResult]:
        """
        Read C{key} from every reachable replica and answer the newest version
        held by the in-sync replicas of the newest configuration among them:
        every acknowledged write is on every member of its configuration, and
        a newer configuration's members hold everything committed before it.
        A replica of an older one (a primary cut off and replaced, still
        believing it is in sync) may hold a value deleted since.
        """
        partition = self._node.partition_of(key)
        asks = [succeed(self._node.operations.peek_local(partition, key))]
        request = messages.PeekRequest(partition, key)
        for peer in self._node.peers():
            asks.append(
                self._node.call(peer, request, DEGRADED_READ_TIMEOUT)
                .addCallback(messages.decode_peek)
            )

        def newest(results: list) -> ReadResult:
            answers: list[Peek] = [answer for ok, answer in results if ok]
            holders = [answer for answer in answers if answer.holds]
            if not holders:
                # absent or not: nobody who would know answered
                raise Unavailable("no replica of this key is reachable", retry_after=1)
            epoch = max(answer.epoch for answer in holders)
            records = [a.record for a in holders if a.epoch == epoch and a.record is not None]
            best = max(records, key=lambda r: r.version, default=None)
            if any(a.record != best for a in answers):
                # some replica is behind: have the primary compare them
                self._node.antientropy.check_partition(partition)
            return ReadResult(live(best, self._clock.seconds()), degraded=True)

        return DeferredList(asks, consumeErrors=True).addCallback(newest)


class _RoutedOperation:
    """
    One operation on its way to its partition's primary, with what its
    retries share: the deadline and whether an attempt may have been applied.

    An object rather than closures that refer to one another, so that a
    finished request leaves no reference cycle behind: its objects are freed
    at once instead of by the cyclic collector, whose passes over the garbage
    of thousands of requests paused a busy entry node for milliseconds.
    """

    def __init__(
        self,
        node: Node,
        clock: IReactorTime,
        partition: int,
        run_here: Callable[[int], Deferred],
        request: Callable[[int], Request],
        decode: Callable,
        write: bool,
    ) -> None:
        self._node = node
        self._clock = clock
        self._partition = partition
        self._run_here = run_here
        self._request = request
        self._decode = decode
        self._write = write
        self._deadline = clock.seconds() + node.config.request_timeout
        self._maybe_applied = False
        # the epoch of the partition's configuration the last attempt used
        self._tried_epoch = -1

    def attempt(self) -> Deferred:
        if self._node.stopped:
            # The node failed what waited on it when it stopped; trying it
            # again would answer from state its disk may not hold (a write
            # its own record of which completes after a power cut).
            return fail(self._give_up("the node stopped"))
        remaining = self._deadline - self._clock.seconds()
        if remaining <= 0:
            return fail(self._give_up("no primary answered in time"))
        if self._write and not self._node.has_majority():
            if self._node.just_started():
                return self._later()
            return fail(self._give_up("no majority of the cluster is reachable"))
        config = self._node.partition_config(self._partition)
        if config is not None:
            self._tried_epoch = config.epoch
        if config is None or config.primary is None:
            return self._later()
        if self._partition in self._node.lost_partitions:
            return fail(self._give_up(_lost_reason(self._partition)))
        primary = config.primary.node_id
        if primary == self._node.node_id:
            return self._node.limit(self._run_here(config.epoch), self._deadline).addErrback(
                self._retry
            )
        # Only the call's failures may be retried, not a payload that fails to decode.
        return self._node.call(primary, self._request(config.epoch), remaining).addCallbacks(
            self._decode, self._retry
        )

    def _retry(self, failure: Failure) -> Deferred:
        if failure.check(CancelledError):
            self._maybe_applied = True
            return fail(self._give_up("the primary did not answer in time"))
        failure.trap(Retry)
        self._maybe_applied = self._maybe_applied or failure.value.maybe_applied
        return self._later()

    def _later(self) -> Deferred:
        """
        Try again: at once if this node's map moved the partition on since
        the last attempt (once per configuration, so a primary that has not
        applied that map yet is not asked in a tight loop), else after the
        next map or L{RETRY_DELAY}, whichever comes first.
        """
        config = self._node.partition_config(self._partition)
        if config is not None and config.epoch > self._tried_epoch:
            return self.attempt()
        return self._node.next_map(RETRY_DELAY).addCallback(lambda _: self.attempt())

    def _give_up(self, reason: str) -> Failure:
        if self._write and self._maybe_applied:
            return Failure(OutcomeUnknown(f"the write may or may not have been applied: {reason}"))
        return Failure(Unavailable(reason, retry_after=1))
