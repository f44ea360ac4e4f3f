# -*- test-case-name: tests.test_placement -*-
"""
Where data lives: keys to partitions, partitions to replica sets.

Keys hash onto a fixed number of partitions.  Each partition has an ideal
replica order from a consistent-hash ring with virtual nodes and bounded
loads (L{Ring}): every node is primary for an even share of the partitions
and holds an even share of the copies, and adding a node moves about its
share of the partitions.  The actual replica set of a partition is
a L{PartitionConfig} in the L{ClusterMap} that the elected partition leader
maintains: L{plan} computes the next map from the current one and the nodes
that are alive, following these rules:

  1. a member that died (or came back as a new, empty incarnation) leaves;
  2. a new primary is only ever chosen among members that hold every
     acknowledged write (C{in_sync});
  3. members join as not-in-sync and become in sync once the primary has
     copied the partition to them; a surplus member only leaves once every
     ideal member is in sync, and then the first ideal node becomes primary
     (so every node is primary for its share of the partitions, whichever
     nodes were alive when the cluster started or while one was away);
  4. while no in-sync member is alive, nothing changes: one may come back;
  5. except when every in-sync member came back as a newer incarnation
     (L{is_lost}): nothing can hold the partition's data any more, so it
     starts again, empty, with those new incarnations in sync and a new
     C{origin}, rather than waiting for ever.

Every change of members or primary bumps the partition's epoch, which fences
the old configuration (see L{twisted_kv.core.replica}).
"""

from __future__ import annotations

import bisect
import hashlib
import zlib
from collections import Counter
from typing import Iterable, Mapping, Optional, Sequence

from attrs import evolve, field, frozen

from twisted_kv.core.roster import Roster, decode_roster, encode_roster

VNODES_PER_NODE = 64

MOVES_AT_ONCE = 8
"""
How many partitions may be filling new copies at once: each new copy is
filled by a snapshot and then counts for every write, so a node added (or
restarted empty) takes its partitions a few at a time, and the writes and
reads of the others go on at their usual pace meanwhile.
"""


def partition_of(store_key: str, partitions: int) -> int:
    """
    The partition holding C{store_key}.
    """
    return zlib.crc32(store_key.encode("utf-8", "surrogatepass")) % partitions


def _point(label: str) -> int:
    return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "big")


class _Quota:
    """
    Shares of C{total} places among C{nodes} nodes as even as they can be:
    each node gets the floor of the fair share, and only C{total % nodes} of
    them one more.
    """

    def __init__(self, total: int, nodes: int) -> None:
        self._floor, self._extra = divmod(total, nodes)
        self._taken: Counter[str] = Counter()
        self._above_floor = 0

    def full(self, node: str) -> bool:
        taken = self._taken[node]
        return taken > self._floor or (taken == self._floor and self._above_floor >= self._extra)

    def take(self, node: str) -> None:
        self._taken[node] += 1
        if self._taken[node] == self._floor + 1:
            self._above_floor += 1


class Ring:
    """
    Preference lists of the nodes for every partition: a consistent-hash
    ring with virtual nodes, with bounded loads.

    With only a few dozen partitions, hashing alone leaves some node first
    choice for twice as many partitions as another (13, 24 and 27 of 64 for
    C{n1}..C{n3}), and so with twice the data and work.  The lists are
    therefore built partition by partition, each walking the ring from the
    partition's point but passing over nodes that already have their share:
    of each position in the lists (the primaries first), of the first
    positions taken together (the copies, whatever the replication
    factor), and of the partitions that fall to them when a primary fails
    (the second position of each primary's partitions).

    @ivar node_ids: the nodes placed, in the order given.
    """

    def __init__(
        self, node_ids: Iterable[str], partitions: int, vnodes: int = VNODES_PER_NODE
    ) -> None:
        self.node_ids = tuple(node_ids)
        points = sorted(
            (_point(f"{node_id}#{index}"), node_id)
            for node_id in self.node_ids
            for index in range(vnodes)
        )
        self._hashes = [point for point, _ in points]
        self._owners = [owner for _, owner in points]
        self._distinct = len(set(self._owners))
        self._preferences = self._balanced(partitions)

    def preference_list(self, partition: int) -> list[str]:
        """
        Every node, in the order of preference for C{partition}.
        """
        return list(self._preferences[partition])

    def _balanced(self, partitions: int) -> list[tuple[str, ...]]:
        nodes = self._distinct
        if not nodes:
            return [() for _ in range(partitions)]
        at_position = [_Quota(partitions, nodes) for _ in range(nodes)]
        up_to_position = [_Quota(partitions * (n + 1), nodes) for n in range(nodes)]
        successors = Counter[tuple[str, str]]()
        primary_share = -(-partitions // nodes)
        successor_share = -(-primary_share // max(1, nodes - 1))
        preferences = []
        for partition in range(partitions):
            walk = self._walk(partition)
            order: list[str] = []
            for position in range(nodes):
                candidates = [node for node in walk if node not in order]

                def over(node: str) -> tuple[bool, bool, bool]:
                    return (
                        at_position[position].full(node),
                        up_to_position[position].full(node),
                        position == 1 and successors[order[0], node] >= successor_share,
                    )

                chosen = min(candidates, key=over)
                order.append(chosen)
                at_position[position].take(chosen)
                for quota in up_to_position[position:]:
                    quota.take(chosen)
                if position == 1:
                    successors[order[0], chosen] += 1
            preferences.append(tuple(order))
        return preferences

    def _walk(self, partition: int) -> list[str]:
        start = bisect.bisect(self._hashes, _point(f"partition:{partition}"))
        order: list[str] = []
        for offset in range(len(self._owners)):
            owner = self._owners[(start + offset) % len(self._owners)]
            if owner not in order:
                order.append(owner)
                if len(order) == self._distinct:
                    break
        return order


@frozen
class Member:
    """
    A replica: a node, in one incarnation (one run of its process).
    """

    node_id: str
    incarnation: int


@frozen
class PartitionConfig:
    """
    The replica set of one partition.

    @ivar epoch: bumped on every change of members or primary.
    @ivar members: the replicas, primary first.
    @ivar in_sync: ids of the members known to hold every acknowledged write.
    @ivar origin: the epoch the partition's data started from: 0, or the
        epoch it started again, empty, after every in-sync copy was lost.
        A replica holding data from an older origin drops it.
    """

    epoch: int
    members: tuple[Member, ...] = field(converter=tuple)
    in_sync: frozenset[str] = field(converter=frozenset)
    origin: int = 0

    @property
    def primary(self) -> Optional[Member]:
        return self.members[0] if self.members else None

    def member(self, node_id: str) -> Optional[Member]:
        for member in self.members:
            if member.node_id == node_id:
                return member
        return None


@frozen
class ClusterMap:
    """
    The configuration of every partition, and the cluster's membership.

    @ivar roster: the members (L{twisted_kv.core.roster}); C{None} in a map
        written before membership changes existed: the file's nodes.
    """

    partitions: tuple[PartitionConfig, ...] = field(converter=tuple)
    roster: Optional[Roster] = None

    def with_partition(self, index: int, config: PartitionConfig) -> "ClusterMap":
        configs = list(self.partitions)
        configs[index] = config
        return evolve(self, partitions=configs)


def initial_map(
    ring: Ring, partitions: int, live: Mapping[str, int], replicas: int, roster: Optional[Roster] = None
) -> ClusterMap:
    """
    The first map of a new cluster: every partition on its ideal live nodes,
    all in sync (there is no data yet), and the first C{roster}.
    """
    configs = []
    for partition in range(partitions):
        ideal = [node for node in ring.preference_list(partition) if node in live][:replicas]
        members = [Member(node, live[node]) for node in ideal]
        configs.append(PartitionConfig(1, members, ideal))
    return ClusterMap(configs, roster)


def is_lost(config: PartitionConfig, live: Mapping[str, int]) -> bool:
    """
    Whether every in-sync member of C{config} is alive in a newer
    incarnation, which proves the partition's data gone: a restarted node
    comes back empty, and incarnations grow with the start time
    (L{twisted_kv.core.membership.new_incarnation}).  A member only dead,
    or only seen in an older incarnation (news of its restart not yet
    heard), may still hold it.

    @param live: the incarnation of every node currently alive.
    """
    synced = [m for m in config.members if m.node_id in config.in_sync]
    return bool(synced) and all(live.get(m.node_id, -1) > m.incarnation for m in synced)


def lost_partitions(cluster_map: ClusterMap, live: Mapping[str, int]) -> list[int]:
    """
    The partitions of C{cluster_map} that L{is_lost}, in order.
    """
    return [index for index, config in enumerate(cluster_map.partitions) if is_lost(config, live)]


def without_primary(cluster_map: ClusterMap, live: Mapping[str, int]) -> list[int]:
    """
    The partitions of C{cluster_map} whose primary is gone, in order: none
    is named, or it is not alive, or alive only in a newer incarnation (it
    restarted, and its copy with it).  No write to them can succeed until
    the leader names another primary, and that takes a live in-sync copy.

    @param live: the incarnation of every node currently alive.
    """
    return [
        index
        for index, config in enumerate(cluster_map.partitions)
        if config.primary is None
        or live.get(config.primary.node_id, config.primary.incarnation + 1) > config.primary.incarnation
    ]


def primary_counts(cluster_map: ClusterMap) -> Counter[str]:
    """
    How many partitions of C{cluster_map} each node is the primary of (0
    for a node primary of none), for C{/cluster} and the metrics.
    """
    return Counter(
        config.primary.node_id for config in cluster_map.partitions if config.primary is not None
    )


def plan_partition(
    config: PartitionConfig,
    preference: Sequence[str],
    live: Mapping[str, int],
    replicas: int,
    add: bool = True,
) -> PartitionConfig:
    """
    The next configuration of one partition (see the module docstring).

    @param preference: the ring's preference list for the partition.
    @param live: the incarnation of every node currently alive.
    @param add: whether new members may be added now (L{MOVES_AT_ONCE}).
    """
    kept = [m for m in config.members if live.get(m.node_id) == m.incarnation]
    in_sync = [m for m in kept if m.node_id in config.in_sync]
    origin = config.origin
    if not in_sync:
        if not is_lost(config, live):
            # Nobody alive is known to hold everything: changing anything
            # could lose acknowledged writes, so wait for a member to come
            # back.
            return config
        # Every copy of the data restarted empty: start again from the new
        # incarnations, which hold all there is (nothing).  The members not
        # in sync stay, to drop what they hold of the old data and catch up.
        in_sync = [
            Member(m.node_id, live[m.node_id]) for m in config.members if m.node_id in config.in_sync
        ]
        kept = in_sync + kept
        origin = config.epoch + 1
    primary = kept[0] if kept[0] is config.primary else in_sync[0]
    ideal = [node for node in preference if node in live][:replicas]
    members = [primary] + [m for m in kept if m is not primary]
    present = {m.node_id for m in members}
    if add:
        members += [Member(node, live[node]) for node in ideal if node not in present]
    synced_ids = {m.node_id for m in in_sync}
    if ideal and all(node in synced_ids for node in ideal):
        # The first ideal node is primary (a node that started late or came
        # back is primary for its share again), and a surplus leaves.
        primary = next(m for m in members if m.node_id == ideal[0])
        surplus = len(members) > replicas
        members = [primary] + [
            m for m in members if m is not primary and (m.node_id in ideal or not surplus)
        ]
    if tuple(members) == config.members:
        return config
    return PartitionConfig(
        config.epoch + 1, members, {m.node_id for m in members} & synced_ids, origin
    )


def plan(
    current: ClusterMap, ring: Ring, live: Mapping[str, int], replicas: int
) -> ClusterMap:
    """
    The next map: L{plan_partition} applied to every partition, new members
    being added to at most L{MOVES_AT_ONCE} partitions at a time.
    """
    filling = sum(1 for config in current.partitions if _filling(config))
    partitions = []
    for index, config in enumerate(current.partitions):
        add = _filling(config) or filling < MOVES_AT_ONCE
        planned = plan_partition(config, ring.preference_list(index), live, replicas, add)
        if _filling(planned) and not _filling(config):
            filling += 1
        partitions.append(planned)
    return evolve(current, partitions=partitions)


def _filling(config: PartitionConfig) -> bool:
    """
    Whether a member of C{config} is still being filled.
    """
    return any(m.node_id not in config.in_sync for m in config.members)


def moving_partitions(
    current: ClusterMap, ring: Ring, live: Mapping[str, int], replicas: int
) -> list[int]:
    """
    The partitions not yet as the ring wants them among the live nodes: an
    ideal member missing or not in sync, or a surplus member still there.
    """
    moving = []
    for index, config in enumerate(current.partitions):
        ideal = [node for node in ring.preference_list(index) if node in live][:replicas]
        members = {m.node_id for m in config.members}
        if members != set(ideal) or not config.in_sync >= members:
            moving.append(index)
    return moving


def holds_copies(current: ClusterMap, node_id: str) -> bool:
    """
    Whether C{node_id} is a member of any partition of C{current}.
    """
    return any(config.member(node_id) is not None for config in current.partitions)


def mark_in_sync(current: ClusterMap, partition: int, epoch: int, node_id: str) -> ClusterMap:
    """
    Record that C{node_id} caught up with C{partition} in C{epoch}; a report
    about an older epoch, or a node no longer a member, changes nothing.
    """
    config = current.partitions[partition]
    if config.epoch != epoch or config.member(node_id) is None or node_id in config.in_sync:
        return current
    return current.with_partition(partition, evolve(config, in_sync=config.in_sync | {node_id}))


def drop_member(current: ClusterMap, partition: int, epoch: int, node_id: str) -> ClusterMap:
    """
    Remove a member that stopped answering its primary, if that still makes
    sense: the report is about the current epoch and a member in sync other
    than the dropped one remains (so nothing acknowledged can be lost).
    """
    config = current.partitions[partition]
    if config.epoch != epoch or config.member(node_id) is None:
        return current
    remaining = [m for m in config.members if m.node_id != node_id]
    if not any(m.node_id in config.in_sync for m in remaining):
        return current
    if config.primary.node_id == node_id:
        remaining.sort(key=lambda m: m.node_id not in config.in_sync)
    return current.with_partition(
        partition,
        PartitionConfig(config.epoch + 1, remaining, config.in_sync - {node_id}, config.origin),
    )


def encode_map(cluster_map: ClusterMap) -> list:
    """
    A msgpack-friendly form of C{cluster_map}.
    """
    partitions = [
        [c.epoch, [[m.node_id, m.incarnation] for m in c.members], sorted(c.in_sync), c.origin]
        for c in cluster_map.partitions
    ]
    if cluster_map.roster is None:
        return partitions
    return {"partitions": partitions, "roster": encode_roster(cluster_map.roster)}


def decode_map(data: "list | dict") -> ClusterMap:
    """
    The map L{encode_map} gave C{data} for; a bare list of partitions (a
    map of before membership changes) has no roster.
    """
    roster = None
    if isinstance(data, dict):
        roster = decode_roster(data["roster"])
        data = data["partitions"]
    return ClusterMap(
        (
            PartitionConfig(epoch, [Member(node, inc) for node, inc in members], in_sync, origin)
            for epoch, members, in_sync, origin in data
        ),
        roster,
    )
