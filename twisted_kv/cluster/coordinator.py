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
from typing import Callable, Optional

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_kv.core.membership import ALIVE, DEAD, SUSPECT
from twisted_kv.core.placement import PartitionConfig
from twisted_kv.core.records import Change, Delete, Operation, Put, Record, format_version, live
from twisted_kv.core.replica import decode_change
from twisted_kv.errors import OutcomeUnknown, Unavailable, ValueTooLarge
from twisted_kv.interfaces import (
    ChangeEvent,
    Health,
    IClusterStatus,
    IKeyValue,
    KeyPage,
    ReadResult,
    WriteResult,
)
from twisted_kv.web.metrics import Metric, Reading, counter, gauge
from twisted_kv.cluster.calls import Request, Retry
from twisted_kv.cluster.node import Node
from twisted_kv.wire import messages
from twisted_kv.wire.messages import Peek

# How long a degraded read waits for the reachable replicas.
DEGRADED_READ_TIMEOUT = 1.0
# Pause between two attempts of a client operation waiting for a primary.
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


@implementer(IKeyValue)
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
            lambda: self._node.operations.read_local(partition, key),
            messages.ReadRequest(partition, key),
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

    # -- routing -----------------------------------------------------------

    def _write(self, operation: Operation) -> Deferred[Change]:
        partition = self._node.partition_of(operation.key)
        op_id = self._node.operations.new_op_id()
        return self._route(
            partition,
            lambda: self._node.operations.execute_local(partition, operation, op_id),
            messages.OpRequest(partition, operation, op_id),
            decode_change,
            write=True,
        )

    def _route(
        self,
        partition: int,
        run_here: Callable[[], Deferred],
        request: Request,
        decode: Callable,
        *,
        write: bool,
    ) -> Deferred:
        """
        Run an operation at its partition's primary, retrying while the
        primary is unknown, moving or unreachable, until the request timeout.
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
        run_here: Callable[[], Deferred],
        request: Request,
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

    def attempt(self) -> Deferred:
        remaining = self._deadline - self._clock.seconds()
        if remaining <= 0:
            return fail(self._give_up("no primary answered in time"))
        if self._write and not self._node.has_majority():
            if self._node.just_started():
                return self._later()
            return fail(self._give_up("no majority of the cluster is reachable"))
        config = self._node.partition_config(self._partition)
        if config is None or config.primary is None:
            return self._later()
        if self._partition in self._node.lost_partitions:
            return fail(self._give_up(_lost_reason(self._partition)))
        primary = config.primary.node_id
        if primary == self._node.node_id:
            return self._node.limit(self._run_here(), self._deadline).addErrback(
                self._retry
            )
        # Only the call's failures may be retried, not a payload that fails to decode.
        return self._node.call(primary, self._request, remaining).addCallbacks(
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
        return deferLater(self._clock, RETRY_DELAY, self.attempt)

    def _give_up(self, reason: str) -> Failure:
        if self._write and self._maybe_applied:
            return Failure(OutcomeUnknown(f"the write may or may not have been applied: {reason}"))
        return Failure(Unavailable(reason, retry_after=1))


def summarize(nodes: list[dict], majority: int, replicas: int) -> dict:
    """
    The C{summary} of C{/cluster}: how many of the C{nodes} entries are
    alive, suspect, dead and alive in sync, and how many more nodes may
    fail while a majority of nodes holding their data in sync stays up
    (suspect and syncing nodes are not counted on), with a sentence
    saying so.

    @param majority: the nodes a majority takes.
    @param replicas: the copies kept of each key.
    """
    states = [node["state"] for node in nodes]
    alive, suspect = states.count(ALIVE), states.count(SUSPECT)
    in_sync = sum(1 for node in nodes if node["state"] == ALIVE and node["synced"])
    can_lose = max(0, in_sync - majority)
    text = f"{alive} of {len(nodes)} alive"
    if suspect:
        text += f", {suspect} suspect"
    if alive + suspect < majority:
        # Whether nodes are in sync matters only once a majority is back.
        text += f": no majority ({majority} needed), writes are refused"
    else:
        if in_sync < alive:
            text += f", {alive - in_sync} not in sync"
        text += f": can lose {can_lose} more"
    return {
        "nodes": len(nodes),
        "alive": alive,
        "suspect": suspect,
        "dead": states.count(DEAD),
        "in_sync": in_sync,
        "majority": majority,
        "can_lose": can_lose,
        "replicas": replicas,
        "text": text,
    }


@implementer(IClusterStatus)
class NodeStatus:
    """
    What one node reports about itself and the cluster.
    """

    def __init__(self, node: Node, clock: IReactorTime) -> None:
        self._node = node
        self._clock = clock

    def cluster_view(self) -> dict:
        """
        Every node's last report as L{_reports} has it, but with the figures
        that only a node still heard from can vouch for, and a summary.

        A dead node's C{keys} and C{file_records} are C{null} and it is not
        C{synced}: its copies no longer count, and it may come back empty.
        A suspect node's figures stand (the cluster still counts its copies
        until it is taken for dead); C{silent_for} says how old they are.
        """
        view = self._reports()
        nodes = [self._current(report) for report in view["nodes"]]
        config = self._node.config
        return {**view, "nodes": nodes, "summary": summarize(nodes, config.majority, config.replicas)}

    def _current(self, report: dict) -> dict:
        """
        The C{/cluster} entry of a node from its last C{report}.
        """
        entry = dict(report)
        user_keys = entry.pop("user_keys", None)
        file_records = entry.pop("file_records", None)
        current = entry["state"] != DEAD
        entry["keys"] = user_keys if current else None
        entry["file_records"] = file_records if current else None
        entry["synced"] = current and bool(entry["synced"])
        silence = self._node.peer_silence(entry["id"])
        entry["silent_for"] = None if silence is None else round(silence, 3)
        return entry

    def _reports(self) -> dict:
        """
        Every node as it last reported itself (L{Node.sync_state}): its
        C{keys} counts every record, file records too.
        """
        node = self._node
        nodes = []
        for peer in node.config.nodes:
            if peer.node_id == node.node_id:
                info = node.sync_state()
            else:
                info = node.peer_report(peer.node_id) or {
                    "keys": 0, "synced": False, "executed": 0
                }
            nodes.append(
                {
                    "id": peer.node_id,
                    "state": node.peer_state(peer.node_id),
                    "http": peer.http_url,
                    **info,
                }
            )
        return {
            "self": node.node_id,
            "leader": node.leader,
            "term": node.term,
            "nodes": nodes,
            "lost_partitions": sorted(node.lost_partitions),
        }

    def health(self) -> Health:
        """
        The node serves reads and writes when it reaches a majority (else
        writes are refused and reads degraded), hears from the partition
        leader (else an election is under way, or the node is cut off from
        the leader and so from the primaries the leader may have moved
        away from it) and holds a committed map (else it knows no primary
        to send requests to).
        """
        node = self._node
        config = node.config
        leader = node.leader
        reachable = node.live_count()
        details = {
            "node": node.node_id,
            "leader": leader,
            "nodes": len(config.node_ids),
            "reachable": reachable,
            "majority": config.majority,
            "has_map": node.cluster_map is not None,
        }
        if not node.has_majority():
            problem = "no_majority"
            message = (
                f"no majority reachable: {reachable} of {len(config.node_ids)} nodes,"
                f" {config.majority} needed"
            )
        elif leader is None:
            problem, message = "no_leader", "no partition leader is known (an election may be under way)"
        elif not node.hears_leader():
            problem, message = "leader_unreachable", f"the partition leader {leader} does not answer"
        elif node.cluster_map is None:
            problem, message = "no_map", "no cluster map committed yet"
        else:
            problem, message = None, ""
        return Health(problem, message, details)

    def metrics(self) -> list[Metric]:
        view = self.cluster_view()
        nodes = [(n["id"], n) for n in view["nodes"]]
        return [
            *(reading.per("node", nodes) for reading in _PER_NODE_METRICS),
            *(reading.of(self._node) for reading in _NODE_METRICS),
        ]


def _primaries(node: Node) -> int:
    """
    How many partitions C{node} is the primary of in its map.
    """
    if node.cluster_map is None:
        return 0
    return sum(
        1 for c in node.cluster_map.partitions
        if c.primary is not None and c.primary.node_id == node.node_id
    )


# What /metrics reads at scrape time, one entry a metric.  Per node: a sample
# for each entry of cluster_view()["nodes"], labelled with the node's id; a
# node whose figure is unknown (a dead node's keys) has no sample.
_PER_NODE_METRICS: tuple[Reading[dict], ...] = (
    counter(
        "twisted_kv_executed_total",
        "Client operations executed by each node as a partition primary.",
        lambda n: n["executed"],
    ),
    gauge(
        "twisted_kv_keys",
        "Client keys each node holds a copy of (unknown for a dead node).",
        lambda n: n["keys"],
    ),
    gauge(
        "twisted_kv_file_records",
        "FTP file records (chunks, manifests, folders) each node holds a copy of.",
        lambda n: n["file_records"],
    ),
    gauge(
        "twisted_kv_node_alive",
        "Whether each node is alive in this node's view.",
        lambda n: n["state"] == ALIVE,
    ),
    gauge(
        "twisted_kv_node_synced",
        "Whether each node holds in sync every partition placed on it.",
        lambda n: bool(n["synced"]),
    ),
    counter(
        "twisted_kv_repaired_keys_total",
        "Keys anti-entropy repaired on each node.",
        lambda n: n.get("repaired", 0),
    ),
    counter(
        "twisted_kv_antientropy_bytes_total",
        "Bytes of anti-entropy messages each node sent.",
        lambda n: n.get("antientropy_bytes", 0),
    ),
)

# Of this node alone: one unlabelled sample each.
_NODE_METRICS: tuple[Reading[Node], ...] = (
    gauge(
        "twisted_kv_antientropy_last_round_seconds",
        "When this node last completed a full anti-entropy round (Unix time).",
        lambda node: node.antientropy.last_full_round or 0,
    ),
    gauge(
        "twisted_kv_term",
        "The current election term.",
        lambda node: node.term,
    ),
    gauge(
        "twisted_kv_is_leader",
        "Whether this node is the partition leader.",
        lambda node: node.leader == node.node_id,
    ),
    gauge(
        "twisted_kv_primary_partitions",
        "Partitions this node is the primary of.",
        _primaries,
    ),
    gauge(
        "twisted_kv_lost_partitions",
        "Partitions whose every in-sync copy restarted empty, not yet serving again.",
        lambda node: len(node.lost_partitions),
    ),
    counter(
        "twisted_kv_partition_losses_total",
        "Partitions found to have lost every in-sync copy since this node started.",
        lambda node: node.partition_losses,
    ),
    gauge(
        "twisted_kv_memory_bytes",
        "Approximate memory held by this node's records, in bytes.",
        lambda node: node.bytes_used(),
    ),
)
