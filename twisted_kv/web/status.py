# -*- test-case-name: tests.test_node_status -*-
"""
What a node shows about itself and the cluster: C{/cluster}, C{/health} and
the cluster's part of C{/metrics}, read from the node at request time.

It lives at the edge, beside the site that serves it, so that the node layer
knows nothing of how its state is presented.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from twisted_kv.cluster.node import Node
from twisted_kv.core.membership import ALIVE, DEAD, SUSPECT
from twisted_kv.core.placement import primary_counts
from twisted_kv.core.roster import Roster, describe
from twisted_kv.interfaces import Health, IClusterStatus
from twisted_kv.web.metrics import Metric, Reading, counter, gauge


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
        node = self._node
        summary = summarize(nodes, node.consensus.majority, node.config.replicas)
        return {**view, "nodes": nodes, "summary": summary, **self._changes()}

    def _changes(self) -> dict:
        """
        The change of membership in progress, if any, and the partitions
        still moving.
        """
        change = self._node.roster.change
        return {
            "change": None if change is None else {"kind": change.kind, "node": change.node_id},
            "moving_partitions": self._node.moving_partitions(),
        }

    def members_view(self) -> dict:
        return self._members(self._node.roster)

    def _members(self, roster: Roster) -> dict:
        """
        C{roster} as L{describe} gives it, each member with the partitions
        it is the primary of, and the partitions still moving.
        """
        view = describe(roster)
        primaries = _primary_counts(self._node)
        return {
            **view,
            "members": [{**member, "primaries": primaries[member["id"]]} for member in view["members"]],
            "moving_partitions": self._node.moving_partitions(),
        }

    def change_members(self, kind: str, node: Any) -> Deferred[dict]:
        return self._node.changes.ask(kind, node).addCallback(self._members)

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
        roster = node.roster
        primaries = _primary_counts(node)
        for peer in roster.nodes:
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
                    "role": roster.role(peer.node_id),
                    "voter": peer.node_id in roster.voters,
                    "primaries": primaries[peer.node_id],
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
        away from it), holds a committed map (else it knows no primary
        to send requests to) and sees a live primary for every partition
        of it (else the keys of the others cannot be written: their
        primary died and is not replaced yet, or no live copy is left to
        replace it with).
        """
        node = self._node
        leader = node.leader
        reachable = node.live_count()
        voters = len(node.consensus.voters)
        majority = node.consensus.majority
        unserved = node.unserved_partitions()
        details = {
            "node": node.node_id,
            "leader": leader,
            "nodes": voters,
            "reachable": reachable,
            "majority": majority,
            "has_map": node.cluster_map is not None,
            "unserved_partitions": unserved,
        }
        if not node.has_majority():
            problem = "no_majority"
            message = (
                f"no majority reachable: {reachable} of {voters} nodes,"
                f" {majority} needed"
            )
        elif leader is None:
            problem, message = "no_leader", "no partition leader is known (an election may be under way)"
        elif not node.hears_leader():
            problem, message = "leader_unreachable", f"the partition leader {leader} does not answer"
        elif node.cluster_map is None:
            problem, message = "no_map", "no cluster map committed yet"
        elif unserved:
            problem = "partitions_unserved"
            message = (
                f"{len(unserved)} of {node.config.partitions} partitions have no live"
                f" primary, so their keys cannot be written: {_listed(unserved)}"
            )
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


def _listed(partitions: list[int], shown: int = 8) -> str:
    """
    The first C{shown} of C{partitions}, and how many more there are.
    """
    text = ", ".join(map(str, partitions[:shown]))
    more = len(partitions) - shown
    return text if more <= 0 else f"{text} and {more} more"


def _primary_counts(node: Node) -> Counter[str]:
    """
    How many partitions each node is the primary of in C{node}'s map (none
    before it has one).
    """
    return Counter() if node.cluster_map is None else primary_counts(node.cluster_map)


def _primaries(node: Node) -> int:
    """
    How many partitions C{node} is the primary of in its map.
    """
    return _primary_counts(node)[node.node_id]


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
        "twisted_kv_node_joining",
        "Whether each node is being added to the cluster.",
        lambda n: n["role"] == "joining",
    ),
    gauge(
        "twisted_kv_node_leaving",
        "Whether each node is being removed from the cluster.",
        lambda n: n["role"] == "leaving",
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
        "twisted_kv_requests_held_total",
        "Requests for a partition this node was about to take over as primary,"
        " held until it had rather than refused.",
        lambda node: node.operations.held,
    ),
    counter(
        "twisted_kv_partition_losses_total",
        "Partitions found to have lost every in-sync copy since this node started.",
        lambda node: node.partition_losses,
    ),
    gauge(
        "twisted_kv_members",
        "Voting members of the cluster.",
        lambda node: len(node.consensus.voters),
    ),
    gauge(
        "twisted_kv_moving_partitions",
        "Partitions not yet where the placement wants them (copies still filling or leaving).",
        lambda node: len(node.moving_partitions()),
    ),
    gauge(
        "twisted_kv_memory_bytes",
        "Approximate memory held by this node's records, in bytes"
        " (those of dropped copies included until they are freed).",
        lambda node: node.bytes_used(),
    ),
    counter(
        "twisted_kv_log_commits_total",
        "Commits of this node's log: one write of everything appended in a reactor turn or more.",
        lambda node: node.log_counts.commits,
    ),
    counter(
        "twisted_kv_log_syncs_total",
        "Syncs (fdatasync) of this node's log.",
        lambda node: node.log_counts.syncs,
    ),
    counter(
        "twisted_kv_log_records_total",
        "Records written to this node's log.",
        lambda node: node.log_counts.records,
    ),
    counter(
        "twisted_kv_log_commit_seconds_total",
        "Time this node's log commits spent in flight (handed to the disk thread until done).",
        lambda node: node.log_counts.seconds,
    ),
)
