# -*- test-case-name: tests.test_placement -*-
"""
Tests for L{twisted_kv.core.placement}: key to partition hashing, the ring,
and the planner that keeps every partition's replica set safe.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Iterable, Union

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.strategies import (
    cluster_maps,
    failure_histories,
    node_sets,
    node_sets_and_newcomer,
)
from twisted_kv.core.placement import (
    ClusterMap,
    Member,
    PartitionConfig,
    Ring,
    decode_map,
    drop_member,
    encode_map,
    initial_map,
    is_lost,
    lost_partitions,
    mark_in_sync,
    partition_of,
    plan,
    plan_partition,
    primary_counts,
    without_primary,
)
from twisted_kv.wire import codec

PARTITIONS = 1024


def _config(epoch: int, members: Iterable[Union[str, tuple[str, int]]], in_sync: str) -> PartitionConfig:
    """
    A config from a compact spec: members are node ids (incarnation 1) or
    (id, incarnation) pairs; C{in_sync} is a string of one-letter ids.
    """
    ms = [Member(m, 1) if isinstance(m, str) else Member(*m) for m in members]
    return PartitionConfig(epoch, ms, set(in_sync))


def _live(*nodes: Union[str, tuple[str, int]]) -> dict[str, int]:
    return dict((n, 1) if isinstance(n, str) else n for n in nodes)


def _ids(config: PartitionConfig) -> list[str]:
    return [m.node_id for m in config.members]


class PartitionOfTests(SynchronousTestCase):
    """
    L{partition_of} maps store keys to partitions.
    """

    def test_known_values(self) -> None:
        """
        The mapping does not depend on the process (no randomised
        C{hash()}): these values were computed once and must never change,
        or nodes of different runs would disagree on where keys live.
        """
        self.assertEqual(partition_of("kfoo", PARTITIONS), 813)
        self.assertEqual(partition_of("k", PARTITIONS), 861)
        self.assertEqual(partition_of("fdir/chunk0", PARTITIONS), 198)
        self.assertEqual(partition_of("k\u00e9", 7), 0)

    @given(st.text(), st.integers(min_value=1, max_value=4096))
    def test_in_range_and_stable(self, key: str, partitions: int) -> None:
        """
        Every key, including ones with lone surrogates, lands in
        C{[0, partitions)}, the same partition every time.
        """
        index = partition_of(key, partitions)
        self.assertTrue(0 <= index < partitions)
        self.assertEqual(partition_of(key, partitions), index)

    def test_spread(self) -> None:
        """
        Many similar keys spread over all partitions, none holding more than
        three times its share.
        """
        counts = Counter(partition_of(f"kuser/{i}", 64) for i in range(6400))
        self.assertEqual(len(counts), 64)
        self.assertLess(max(counts.values()), 300)


class RingTests(SynchronousTestCase):
    """
    L{Ring.preference_list} orders every node for every partition.
    """

    def test_empty_and_single(self) -> None:
        """
        An empty ring prefers nobody; a one-node ring prefers its node.
        """
        self.assertEqual(Ring([], 8).preference_list(0), [])
        self.assertEqual(Ring(["solo"], 8).preference_list(5), ["solo"])

    @settings(max_examples=40)
    @given(node_sets)
    def test_every_node_once(self, nodes: set) -> None:
        """
        Each preference list is a permutation of the nodes.
        """
        ring = Ring(nodes, PARTITIONS)
        for partition in range(0, PARTITIONS, 37):
            order = ring.preference_list(partition)
            self.assertEqual(sorted(order), sorted(nodes))

    @settings(max_examples=20)
    @given(node_sets)
    def test_independent_of_node_order(self, nodes: set) -> None:
        """
        Every node computes the same ring whatever order its cluster file
        lists the nodes in.
        """
        forward = Ring(sorted(nodes), PARTITIONS)
        backward = Ring(sorted(nodes, reverse=True), PARTITIONS)
        for partition in range(0, PARTITIONS, 61):
            self.assertEqual(forward.preference_list(partition), backward.preference_list(partition))

    def _held(self, ring: Ring, partitions: int, positions: int) -> Counter:
        """
        How many of the first C{positions} places of the preference lists
        each node takes.
        """
        return Counter(
            node
            for partition in range(partitions)
            for node in ring.preference_list(partition)[:positions]
        )

    def test_three_nodes_even(self) -> None:
        """
        In the default cluster (three nodes, 64 partitions) each node is
        primary for 21 or 22 partitions, holds 42 or 43 of the 128 copies,
        and takes 10 or 11 of another node's 21 or 22 partitions when that
        node fails.  (Hashing alone gave 13, 24 and 27 primaries, and 32,
        45 and 51 copies.)
        """
        nodes = ["n1", "n2", "n3"]
        ring = Ring(nodes, 64)
        self.assertEqual(sorted(self._held(ring, 64, 1).values()), [21, 21, 22])
        self.assertEqual(sorted(self._held(ring, 64, 2).values()), [42, 43, 43])
        for failed in nodes:
            successors = Counter(
                order[1]
                for order in map(ring.preference_list, range(64))
                if order[0] == failed
            )
            self.assertEqual(len(successors), 2)
            self.assertLessEqual(max(successors.values()) - min(successors.values()), 1)

    @settings(max_examples=15)
    @given(node_sets)
    def test_primaries_even(self, nodes: set) -> None:
        """
        Whatever the node names, every node is first choice for the floor
        or the ceiling of its fair share of the partitions.
        """
        for partitions in (64, PARTITIONS):
            counts = self._held(Ring(nodes, partitions), partitions, 1)
            fair = partitions // len(nodes)
            for node in nodes:
                self.assertIn(counts[node], (fair, fair + 1), (partitions, counts))

    @settings(max_examples=15)
    @given(node_sets)
    def test_copies_nearly_even(self, nodes: set) -> None:
        """
        Whatever the node names and the number of copies, no node holds
        more than 1.2 or less than 0.8 times its fair share of them.
        """
        ring = Ring(nodes, PARTITIONS)
        for copies in range(1, len(nodes) + 1):
            counts = self._held(ring, PARTITIONS, copies)
            fair = PARTITIONS * copies / len(nodes)
            for node in nodes:
                self.assertTrue(0.8 * fair <= counts[node] <= 1.2 * fair, (copies, counts))

    @settings(max_examples=15)
    @given(node_sets_and_newcomer())
    def test_adding_a_node_moves_about_one_share(self, spec) -> None:
        """
        Adding a node changes the first choice of between 0.9 and 1.6 times
        its fair share of the partitions, and most of those (at least 0.9
        of a share) move to the new node.
        """
        nodes, newcomer = spec
        before = Ring(nodes, PARTITIONS)
        after = Ring(nodes + [newcomer], PARTITIONS)
        new_firsts = [
            after.preference_list(partition)[0]
            for partition in range(PARTITIONS)
            if after.preference_list(partition)[0] != before.preference_list(partition)[0]
        ]
        share = PARTITIONS / (len(nodes) + 1)
        self.assertTrue(0.9 * share <= len(new_firsts) <= 1.6 * share, (len(new_firsts), share))
        self.assertGreaterEqual(new_firsts.count(newcomer), 0.9 * share)


class InitialMapTests(SynchronousTestCase):
    """
    L{initial_map} places every partition on its ideal live nodes.
    """

    def test_ideal_members_all_in_sync(self) -> None:
        """
        Each partition gets the first C{replicas} live nodes of its
        preference list, primary first, all in sync, at epoch 1, with the
        incarnations given.
        """
        nodes = ["a", "b", "c", "d", "e"]
        ring = Ring(nodes, 16)
        live = {"a": 11, "b": 12, "d": 14, "e": 15}
        cluster_map = initial_map(ring, 16, live, 3)
        self.assertEqual(len(cluster_map.partitions), 16)
        for index, config in enumerate(cluster_map.partitions):
            ideal = [n for n in ring.preference_list(index) if n in live][:3]
            self.assertEqual(config.epoch, 1)
            self.assertEqual(_ids(config), ideal)
            self.assertEqual(config.in_sync, frozenset(ideal))
            self.assertEqual(config.primary, Member(ideal[0], live[ideal[0]]))
            self.assertEqual([m.incarnation for m in config.members], [live[n] for n in ideal])

    def test_fewer_live_than_replicas(self) -> None:
        """
        With fewer live nodes than replicas, partitions get every live node.
        """
        cluster_map = initial_map(Ring(["a", "b", "c"], 4), 4, {"b": 1}, 2)
        for config in cluster_map.partitions:
            self.assertEqual(_ids(config), ["b"])


class PlanPartitionTests(SynchronousTestCase):
    """
    L{plan_partition}: the three rules of the module docstring.
    """

    PREF = ["A", "B", "C", "D", "E"]

    def test_nothing_changed(self) -> None:
        """
        With every member alive and ideal, the config is returned as is (no
        epoch bump).
        """
        config = _config(4, ["A", "B", "C"], "ABC")
        self.assertIs(plan_partition(config, self.PREF, _live(*"ABCDE"), 3), config)

    def test_dead_member_replaced_by_next_live(self) -> None:
        """
        A dead backup leaves; the next live node in preference order joins,
        not in sync; the epoch goes up by one.
        """
        config = _config(4, ["A", "B", "C"], "ABC")
        new = plan_partition(config, ["A", "B", "E", "C", "D"], _live("A", "C", "D", "E"), 3)
        self.assertEqual(_ids(new), ["A", "C", "E"])
        self.assertEqual(new.in_sync, {"A", "C"})
        self.assertEqual(new.epoch, 5)

    def test_dead_primary_replaced_by_in_sync_member(self) -> None:
        """
        A dead primary is replaced by an in-sync member even when a member
        that is not in sync comes first in the member list.
        """
        config = _config(7, ["A", "B", "C"], "AC")
        new = plan_partition(config, self.PREF, _live("B", "C", "D", "E"), 3)
        self.assertEqual(new.primary, Member("C", 1))
        self.assertEqual(set(_ids(new)), {"B", "C", "D"})
        self.assertEqual(new.in_sync, {"C"})
        self.assertEqual(new.epoch, 8)

    def test_never_a_not_in_sync_primary(self) -> None:
        """
        If the only live members are not in sync, nothing changes: no
        primary is chosen among them and no epoch is spent.
        """
        config = _config(7, ["A", "B", "C"], "A")
        live = _live("B", "C", "D", "E")
        self.assertIs(plan_partition(config, self.PREF, live, 3), config)

    def test_no_in_sync_member_alive(self) -> None:
        """
        When every in-sync member is dead, the config stays as it is, even
        though live nodes could fill it.
        """
        config = _config(3, ["A", "B"], "AB")
        self.assertIs(plan_partition(config, self.PREF, _live("C", "D", "E"), 2), config)

    def test_in_sync_members_restarted_or_dead_wait(self) -> None:
        """
        With one in-sync member restarted and the other only dead (it may
        come back with the data), or seen in an older incarnation than the
        map names (news of a restart not heard yet), nothing changes.
        """
        config = _config(3, [("A", 5), ("B", 5)], "AB")
        for live in [_live(("A", 6), "C"), _live(("A", 6), ("B", 4), "C")]:
            self.assertFalse(is_lost(config, live))
            self.assertIs(plan_partition(config, self.PREF, live, 2), config)

    def test_every_in_sync_member_restarted(self) -> None:
        """
        When every in-sync member came back as a newer incarnation, the data
        is gone: the partition starts again, empty, from those incarnations
        (now in sync, the former primary's first) with a new epoch and
        origin; a member that was not in sync stays, not in sync, to drop
        what it holds and catch up, and ideal nodes join as usual.
        """
        config = _config(3, [("A", 5), ("B", 5), ("C", 1)], "AB")
        live = _live(("A", 6), ("B", 7), "C", "D")
        self.assertTrue(is_lost(config, live))
        new = plan_partition(config, self.PREF, live, 3)
        self.assertEqual(new.members, (Member("A", 6), Member("B", 7), Member("C", 1)))
        self.assertEqual(new.in_sync, {"A", "B"})
        self.assertEqual((new.epoch, new.origin), (4, 4))
        # Later changes keep the origin.
        shrunk = plan_partition(new, self.PREF, live, 2)
        self.assertEqual((_ids(shrunk), shrunk.epoch, shrunk.origin), (["A", "B"], 5, 4))
        dropped = drop_member(ClusterMap([new]), 0, 4, "B").partitions[0]
        self.assertEqual((dropped.epoch, dropped.origin), (5, 4))

    def test_lost_partitions(self) -> None:
        """
        L{lost_partitions} names, in order, the partitions of a map whose
        every in-sync member restarted; a partition without any in-sync
        member (there is none in a map the leader made) is not lost.
        """
        cluster_map = ClusterMap(
            [
                _config(1, ["A", "B"], "AB"),
                _config(1, ["A", "C"], "AC"),
                _config(1, ["B", "A"], "BA"),
                _config(1, ["A"], ""),
            ]
        )
        self.assertEqual(lost_partitions(cluster_map, _live(("A", 2), ("B", 2), "C")), [0, 2])

    def test_without_primary(self) -> None:
        """
        L{without_primary} names, in order, the partitions of a map whose
        primary is dead, restarted (alive in a newer incarnation) or
        missing; a live primary serves its partition whatever its backups'
        state, and news of a restart not yet heard (an older incarnation
        alive) is no proof of one.
        """
        cluster_map = ClusterMap(
            [
                _config(1, ["A", "B"], "AB"),
                _config(1, ["B", "A"], "BA"),
                _config(1, ["C", "A"], "CA"),
                _config(1, [("D", 3), "A"], "DA"),
                _config(1, [], ""),
                _config(1, ["A", "C"], "AC"),
            ]
        )
        live = _live("A", ("B", 2), ("D", 2))
        self.assertEqual(without_primary(cluster_map, live), [1, 2, 4])

    def test_restarted_backup_is_gone(self) -> None:
        """
        A backup that came back as a new incarnation is a new, empty member:
        the old one leaves, the new one joins not in sync.
        """
        config = _config(2, ["A", "B"], "AB")
        new = plan_partition(config, self.PREF, _live("A", ("B", 2), "C"), 2)
        self.assertEqual(new.members, (Member("A", 1), Member("B", 2)))
        self.assertEqual(new.in_sync, {"A"})
        self.assertEqual(new.epoch, 3)

    def test_restarted_primary_is_gone(self) -> None:
        """
        A primary that restarted loses the primary role to an in-sync
        member and rejoins, not in sync.
        """
        config = _config(2, ["A", "B"], "AB")
        new = plan_partition(config, self.PREF, _live(("A", 9), "B", "C"), 2)
        self.assertEqual(new.primary, Member("B", 1))
        self.assertIn(Member("A", 9), new.members)
        self.assertEqual(new.in_sync, {"B"})

    def test_surplus_stays_until_ideal_in_sync(self) -> None:
        """
        When an ideal node returns, the member that replaced it stays until
        every ideal member is in sync; only then does it leave.
        """
        # B died and C replaced it; B is back (new incarnation).
        config = _config(5, ["A", "C", ("B", 2)], "AC")
        live = _live("A", ("B", 2), "C", "D")
        self.assertIs(plan_partition(config, self.PREF, live, 2), config)
        synced = _config(5, ["A", "C", ("B", 2)], "ACB")
        new = plan_partition(synced, self.PREF, live, 2)
        self.assertEqual(new.members, (Member("A", 1), Member("B", 2)))
        self.assertEqual(new.in_sync, {"A", "B"})
        self.assertEqual(new.epoch, 6)

    def test_primary_moves_to_ideal_when_surplus_leaves(self) -> None:
        """
        A primary outside the ideal set keeps the role while ideal members
        catch up, then hands it to the first ideal node (which is in sync).
        """
        config = _config(5, ["C", "A", "B"], "CA")
        live = _live("A", "B", "C")
        self.assertIs(plan_partition(config, self.PREF, live, 2), config)
        synced = _config(5, ["C", "A", "B"], "CAB")
        new = plan_partition(synced, self.PREF, live, 2)
        self.assertEqual(new.primary, Member("A", 1))
        self.assertEqual(_ids(new), ["A", "B"])
        self.assertEqual(new.in_sync, {"A", "B"})
        self.assertEqual(new.epoch, 6)

    def test_first_ideal_primary_when_surplus_leaves(self) -> None:
        """
        When the surplus leaves, the first ideal node becomes primary, even
        where the primary was ideal too.
        """
        config = _config(5, ["B", "C", "A"], "ABC")
        new = plan_partition(config, self.PREF, _live("A", "B", "C"), 2)
        self.assertEqual((_ids(new), new.epoch), (["A", "B"], 6))

    def test_first_ideal_primary_once_in_sync(self) -> None:
        """
        A first ideal node that joined (it started late, or came back) takes
        the primary role once it is in sync, not before.
        """
        live = _live("A", "B", "C")
        joined = _config(5, ["B", "A"], "B")
        self.assertIs(plan_partition(joined, self.PREF, live, 2), joined)
        new = plan_partition(_config(5, ["B", "A"], "AB"), self.PREF, live, 2)
        self.assertEqual((_ids(new), new.in_sync, new.epoch), (["A", "B"], {"A", "B"}, 6))

    def test_live_non_ideal_member_is_kept_while_short(self) -> None:
        """
        A live member outside the ideal set stays while the ideal members it
        stands in for are not in sync, so the set never shrinks below
        C{replicas}.
        """
        config = _config(5, ["A", "D"], "AD")
        new = plan_partition(config, self.PREF, _live(*"ABCDE"), 2)
        self.assertEqual(_ids(new), ["A", "D", "B"])
        self.assertEqual(new.in_sync, {"A", "D"})

    def test_member_outside_a_short_ideal_set_stays(self) -> None:
        """
        With fewer live ideal nodes than C{replicas}, every one of them in
        sync, a live member outside the ideal set (a node leaving the ring)
        is no surplus: it stays, as a backup, while the first ideal node
        becomes primary.
        """
        config = _config(5, ["E", "A"], "EA")
        new = plan_partition(config, ["A", "B", "C"], _live("A", "E"), 2)
        self.assertEqual((_ids(new), new.in_sync), (["A", "E"], {"A", "E"}))

    def test_no_live_preferred_node(self) -> None:
        """
        When no node of the preference list is alive (the ring is a
        membership whose nodes are all away), the live members keep the
        partition as it is.
        """
        config = _config(5, ["E", "D"], "ED")
        self.assertIs(plan_partition(config, ["A", "B", "C"], _live("D", "E"), 2), config)

    def test_epoch_bumps_exactly_on_change(self) -> None:
        """
        A change of primary alone (same member set, new order) bumps the
        epoch; identical inputs give back the identical config.
        """
        config = _config(5, ["C", "A", "B"], "ABC")
        new = plan_partition(config, self.PREF, _live("A", "B", "C"), 2)
        self.assertEqual(new.epoch, 6)
        self.assertIs(plan_partition(new, self.PREF, _live("A", "B", "C"), 2), new)


class ReportTests(SynchronousTestCase):
    """
    L{mark_in_sync} and L{drop_member}: reports from primaries, checked
    against the current map.
    """

    def _map(self, config: PartitionConfig) -> ClusterMap:
        return ClusterMap([_config(1, ["X"], "X"), config])

    def test_mark_in_sync(self) -> None:
        """
        A report about the current epoch adds the member to C{in_sync}
        without a new epoch; other partitions are untouched.
        """
        current = self._map(_config(4, ["A", "B"], "A"))
        new = mark_in_sync(current, 1, 4, "B")
        self.assertEqual(new.partitions[1], _config(4, ["A", "B"], "AB"))
        self.assertIs(new.partitions[0], current.partitions[0])

    def test_mark_in_sync_ignores_stale_and_strangers(self) -> None:
        """
        Reports about an older (or newer) epoch, about a non-member, or
        about a member already in sync change nothing.
        """
        current = self._map(_config(4, ["A", "B"], "A"))
        self.assertIs(mark_in_sync(current, 1, 3, "B"), current)
        self.assertIs(mark_in_sync(current, 1, 5, "B"), current)
        self.assertIs(mark_in_sync(current, 1, 4, "C"), current)
        self.assertIs(mark_in_sync(current, 1, 4, "A"), current)

    def test_drop_backup(self) -> None:
        """
        Dropping a backup removes it, bumps the epoch and keeps the primary.
        """
        current = self._map(_config(4, ["A", "B", "C"], "ABC"))
        new = drop_member(current, 1, 4, "B").partitions[1]
        self.assertEqual(new, _config(5, ["A", "C"], "AC"))

    def test_drop_primary_promotes_in_sync(self) -> None:
        """
        Dropping the primary makes an in-sync member primary, even if a
        member that is not in sync is listed first.
        """
        current = self._map(_config(4, ["A", "B", "C"], "AC"))
        new = drop_member(current, 1, 4, "A").partitions[1]
        self.assertEqual(new.primary, Member("C", 1))
        self.assertEqual(set(_ids(new)), {"B", "C"})
        self.assertEqual(new.in_sync, {"C"})
        self.assertEqual(new.epoch, 5)

    def test_drop_ignores_stale_and_strangers(self) -> None:
        """
        Drop reports about another epoch or a non-member change nothing.
        """
        current = self._map(_config(4, ["A", "B"], "AB"))
        self.assertIs(drop_member(current, 1, 3, "B"), current)
        self.assertIs(drop_member(current, 1, 4, "Z"), current)

    def test_drop_never_removes_last_in_sync(self) -> None:
        """
        The only in-sync member is never dropped (nothing else holds every
        acknowledged write), nor is the last member.
        """
        current = self._map(_config(4, ["A", "B"], "A"))
        self.assertIs(drop_member(current, 1, 4, "A"), current)
        alone = self._map(_config(4, ["A"], "A"))
        self.assertIs(drop_member(alone, 1, 4, "A"), alone)
        # Dropping the member that is not in sync is fine.
        self.assertEqual(_ids(drop_member(current, 1, 4, "B").partitions[1]), ["A"])


class PrimaryCountsTests(SynchronousTestCase):
    """
    L{primary_counts}: how many partitions of a map each node is the
    primary of.
    """

    def test_counts(self) -> None:
        """
        Each node counts the partitions it is listed first in, not those it
        is a backup of; a partition without members counts for nobody, and
        a node primary of none counts 0.
        """
        current = ClusterMap(
            [
                _config(1, ["A", "B"], "AB"),
                _config(2, ["B", "A"], "B"),
                _config(1, ["A", "C"], "A"),
                _config(3, [], ""),
            ]
        )
        counts = primary_counts(current)
        self.assertEqual(dict(counts), {"A": 2, "B": 1})
        self.assertEqual(counts["C"], 0)


class EncodingTests(SynchronousTestCase):
    """
    L{encode_map} and L{decode_map} carry maps between nodes.
    """

    @given(cluster_maps)
    def test_round_trip(self, cluster_map: ClusterMap) -> None:
        """
        A map survives encoding, the peer codec and decoding unchanged.
        """
        wire = codec.decode(codec.encode(encode_map(cluster_map)))
        self.assertEqual(decode_map(wire), cluster_map)

    def test_encoding_is_canonical(self) -> None:
        """
        Equal maps encode identically (C{in_sync} is sorted), so maps can be
        compared on the wire.
        """
        a = ClusterMap([_config(2, ["A", "B", "C"], "CBA")])
        b = ClusterMap([_config(2, ["A", "B", "C"], "ABC")])
        self.assertEqual(encode_map(a), encode_map(b))
        self.assertEqual(encode_map(a), [[2, [["A", 1], ["B", 1], ["C", 1]], ["A", "B", "C"], 0]])


class FailureHistoryTests(SynchronousTestCase):
    """
    Random histories of failures, restarts and reports, planned the way the
    partition leader does it, against a model of which replicas really hold
    every acknowledged write.
    """

    PARTITIONS = 8

    def _check_transition(
        self, before: ClusterMap, after: ClusterMap, what: str, live: dict
    ) -> None:
        for old, new in zip(before.partitions, after.partitions):
            if new == old:
                continue
            if new.origin != old.origin:
                # A fresh start, only once the data is provably gone: every
                # in-sync member restarted, and its new incarnation is in
                # sync (it holds all there is: nothing).
                self.assertTrue(is_lost(old, live))
                self.assertEqual((new.epoch, new.origin), (old.epoch + 1, old.epoch + 1))
                self.assertEqual(new.in_sync, old.in_sync)
                for node in new.in_sync:
                    self.assertEqual(new.member(node).incarnation, live[node])
                continue
            self.assertEqual(new.origin, old.origin)
            if what == "mark":
                self.assertEqual((new.epoch, new.members), (old.epoch, old.members))
                self.assertEqual(len(new.in_sync - old.in_sync), 1)
                self.assertTrue(old.in_sync <= new.in_sync)
                continue
            # Epochs move exactly when members or primary do.
            self.assertNotEqual(new.members, old.members)
            self.assertEqual(new.epoch, old.epoch + 1)
            # In-sync status is never granted by a change: every in-sync
            # member of the new config was in sync, in the same
            # incarnation, in the previous one; and one such member remains.
            self.assertTrue(new.in_sync)
            for node in new.in_sync:
                self.assertIn(node, old.in_sync)
                self.assertEqual(new.member(node), old.member(node))

    def _check_map(self, cluster_map: ClusterMap, holders: list, live: dict) -> None:
        for index, config in enumerate(cluster_map.partitions):
            ids = _ids(config)
            self.assertEqual(len(ids), len(set(ids)))
            self.assertTrue(config.in_sync)
            self.assertTrue(config.in_sync <= set(ids))
            self.assertIn(config.primary.node_id, config.in_sync)
            # What is claimed in sync (and alive) really holds every write.
            for member in config.members:
                if member.node_id in config.in_sync and live.get(member.node_id) == member.incarnation:
                    self.assertIn(member, holders[index])

    @given(failure_histories())
    def test_acknowledged_writes_survive(self, history) -> None:
        """
        Whatever happens, with at most half the nodes down at a time: every
        config keeps an in-sync member of the previous config (or, once every
        in-sync member restarted, starts again empty from their new
        incarnations), in-sync claims are true, the primary is in sync; and
        once everybody is back
        and caught up, every partition that still has a live in-sync member
        settles on its ideal replicas.
        """
        size, events = history
        nodes = [f"n{i}" for i in range(size)]
        replicas = size // 2 + 1
        ring = Ring(nodes, self.PARTITIONS)
        incarnations = itertools.count(1)
        live = {node: next(incarnations) for node in nodes}
        current = initial_map(ring, self.PARTITIONS, live, replicas)
        holders = [set(config.members) for config in current.partitions]

        def step(new: ClusterMap, what: str) -> None:
            nonlocal current
            self._check_transition(current, new, what, live)
            for index, (old, config) in enumerate(zip(current.partitions, new.partitions)):
                if config.origin != old.origin:
                    # the partition starts again, empty
                    holders[index] = {config.member(node) for node in config.in_sync}
            current = new

        for event in events:
            kind = event[0]
            if kind in ("kill", "restart"):
                node = nodes[event[1]]
                if node in live:
                    if kind == "kill" and size - len(live) >= size // 2:
                        continue
                    gone = Member(node, live.pop(node))
                    for held in holders:
                        held.discard(gone)
                if kind == "restart":
                    live[node] = next(incarnations)
            else:
                index = event[1] % self.PARTITIONS
                config = current.partitions[index]
                alive = [live.get(m.node_id) == m.incarnation for m in config.members]
                if kind == "write":
                    # Acknowledged only once every member stores it.
                    if all(alive):
                        holders[index] &= set(config.members)
                else:
                    position = event[2] % len(config.members)
                    member = config.members[position]
                    if kind == "sync" and alive[0] and alive[position]:
                        self.assertIn(config.primary, holders[index])
                        holders[index].add(member)
                        step(mark_in_sync(current, index, config.epoch, member.node_id), "mark")
                    elif kind == "drop":
                        step(drop_member(current, index, config.epoch, member.node_id), "change")
            step(plan(current, ring, live, replicas), "change")
            self._check_map(current, holders, live)

        # Everyone comes back (killed nodes as new incarnations) and every
        # primary copies its partition to its members, until nothing changes.
        for node in nodes:
            if node not in live:
                live[node] = next(incarnations)
        recoverable = [
            any(live.get(n) == c.member(n).incarnation for n in c.in_sync)
            for c in current.partitions
        ]
        for _ in range(4):
            step(plan(current, ring, live, replicas), "change")
            for index, config in enumerate(current.partitions):
                if recoverable[index]:
                    for member in config.members:
                        holders[index].add(member)
                        step(mark_in_sync(current, index, config.epoch, member.node_id), "mark")
            self._check_map(current, holders, live)
        self.assertEqual(plan(current, ring, live, replicas), current)
        for index, config in enumerate(current.partitions):
            if recoverable[index]:
                ideal = ring.preference_list(index)[:replicas]
                self.assertEqual(sorted(_ids(config)), sorted(ideal))
                self.assertEqual(config.primary.node_id, ideal[0])
                self.assertEqual(config.in_sync, frozenset(ideal))
                self.assertEqual([m.incarnation for m in config.members], [live[n] for n in _ids(config)])


class PrimaryShareTests(SynchronousTestCase):
    """
    Every node ends up primary for its share of the partitions, whichever
    nodes were alive when the first map was made or while one was away.
    """

    def settle(self, current: ClusterMap, ring: Ring, live: dict[str, int]) -> ClusterMap:
        """
        Plan, and report every member in sync, until nothing changes.
        """
        for _ in range(PARTITIONS):
            planned = plan(current, ring, live, 2)
            for index, config in enumerate(planned.partitions):
                for member in config.members:
                    planned = mark_in_sync(planned, index, config.epoch, member.node_id)
            if planned == current:
                return current
            current = planned
        self.fail("the map never settled")

    def assert_ideal_primaries(self, current: ClusterMap, ring: Ring) -> None:
        primaries = [config.primary.node_id for config in current.partitions]
        ideal = [ring.preference_list(index)[0] for index in range(len(current.partitions))]
        self.assertEqual(primaries, ideal)

    def test_late_node(self) -> None:
        """
        A node that was not alive when the first map was made (it started
        late) gets its copies and its primaries once it has caught up.
        """
        ring = Ring(["n1", "n2", "n3"], 64)
        live = _live("n1", "n2")
        current = initial_map(ring, 64, live, 2)
        self.assertNotIn("n3", [config.primary.node_id for config in current.partitions])
        live["n3"] = 1
        self.assert_ideal_primaries(self.settle(current, ring, live), ring)

    def test_restarted_node(self) -> None:
        """
        A node that restarted empty is primary for its share again once it
        has caught up.
        """
        ring = Ring(["n1", "n2", "n3"], 64)
        live = _live("n1", "n2", "n3")
        current = initial_map(ring, 64, live, 2)
        del live["n2"]
        current = self.settle(current, ring, live)
        self.assertNotIn("n2", [config.primary.node_id for config in current.partitions])
        live["n2"] = 2
        self.assert_ideal_primaries(self.settle(current, ring, live), ring)


class GrowthTests(SynchronousTestCase):
    """
    Adding a node to the ring moves about its share of the copies (at most
    a quarter more), most of them to the new node.
    """

    def test_added_node_takes_its_share(self) -> None:
        for size, replicas in ((4, 3), (5, 3), (6, 4)):
            before = Ring([f"n{i}" for i in range(1, size + 1)], 64)
            after = Ring([f"n{i}" for i in range(1, size + 2)], 64)
            moved = sum(
                len(set(after.preference_list(p)[:replicas]) - set(before.preference_list(p)[:replicas]))
                for p in range(64)
            )
            share = 64 * replicas / (size + 1)
            new_node = sum(f"n{size + 1}" in after.preference_list(p)[:replicas] for p in range(64))
            self.assertLessEqual(abs(new_node - share), 2)
            self.assertLessEqual(moved, 1.25 * share, (size, moved, share))
