# -*- test-case-name: tests.test_roster -*-
"""
Tests for L{twisted_kv.core.roster}: the membership and the rules for
changing it, one node and one step at a time.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core.config import NodeConfig
from twisted_kv.core.placement import ClusterMap, decode_map, encode_map
from twisted_kv.core.roster import (
    ADD,
    REMOVE,
    Change,
    Roster,
    advance,
    config_for,
    describe,
    first_roster,
    from_description,
    request_add,
    request_remove,
)
from twisted_kv.errors import InvalidRequest, MembershipConflict, UnknownMember
from twisted_kv.testing import cluster_config


def node(index: int, host: str = "127.0.0.1") -> NodeConfig:
    return NodeConfig(
        node_id=f"n{index}", host=host, http_port=17000 + index,
        peer_port=17100 + index, ftp_port=17200 + index,
    )


class AddTests(SynchronousTestCase):
    """
    A node joins as a learner, votes once heard from, and the change ends
    once no partition is moving.
    """

    def setUp(self) -> None:
        self.base = cluster_config(3)
        self.roster = first_roster(self.base)

    def test_first_members_are_the_files(self) -> None:
        self.assertEqual(self.roster.ids, ("n1", "n2", "n3"))
        self.assertEqual(self.roster.voters, ("n1", "n2", "n3"))
        self.assertIsNone(self.roster.change)

    def test_learner_neither_votes_nor_is_placed(self) -> None:
        added = request_add(self.roster, node(4))
        self.assertEqual(added.ids, ("n1", "n2", "n3", "n4"))
        self.assertEqual(added.learner, "n4")
        self.assertEqual(added.voters, ("n1", "n2", "n3"))
        self.assertEqual(added.placed, ("n1", "n2", "n3"))
        self.assertEqual(added.role("n4"), "joining")

    def test_learner_votes_once_heard(self) -> None:
        added = request_add(self.roster, node(4))
        self.assertEqual(advance(added, frozenset({"n1", "n2", "n3"}), 0, False), added)
        voting = advance(added, frozenset({"n1", "n2", "n3", "n4"}), 0, False)
        self.assertEqual(voting.change, Change(ADD, "n4", True))
        self.assertEqual(voting.voters, ("n1", "n2", "n3", "n4"))
        self.assertEqual(voting.placed, ("n1", "n2", "n3", "n4"))

    def test_done_once_nothing_moves(self) -> None:
        voting = Roster(self.roster.nodes + (node(4),), Change(ADD, "n4", True))
        live = frozenset(voting.ids)
        self.assertEqual(advance(voting, live, 3, False), voting)
        self.assertIsNone(advance(voting, live, 0, False).change)

    def test_one_change_at_a_time(self) -> None:
        added = request_add(self.roster, node(4))
        with self.assertRaises(MembershipConflict) as caught:
            request_add(added, node(5))
        self.assertIn("adding n4", caught.exception.message)
        self.assertRaises(MembershipConflict, request_remove, added, "n1", self.base)

    def test_taken_id_or_port(self) -> None:
        self.assertRaises(MembershipConflict, request_add, self.roster, node(3))
        clash = NodeConfig(node_id="n9", host="127.0.0.1", http_port=17001, peer_port=1, ftp_port=2)
        self.assertRaises(InvalidRequest, request_add, self.roster, clash)
        elsewhere = NodeConfig(node_id="n9", host="10.0.0.9", http_port=17001, peer_port=1, ftp_port=2)
        self.assertEqual(request_add(self.roster, elsewhere).learner, "n9")
        same = NodeConfig(node_id="n9", host="10.0.0.9", http_port=1, peer_port=1, ftp_port=2)
        self.assertRaises(InvalidRequest, request_add, self.roster, same)

    def test_copies_follow_the_voters_with_majority(self) -> None:
        added = request_add(self.roster, node(4))
        self.assertEqual(config_for(self.base, added).replicas, 2)
        voting = advance(added, frozenset(added.ids), 0, False)
        self.assertEqual(config_for(self.base, voting).replicas, 3)
        fixed = cluster_config(3, replicas=2)
        self.assertEqual(config_for(fixed, voting).replicas, 2)


class RemoveTests(SynchronousTestCase):
    """
    A node leaves the ring first, and the roster once it holds no copy.
    """

    def setUp(self) -> None:
        self.base = cluster_config(4)
        self.roster = first_roster(self.base)

    def test_leaving_node_votes_but_is_not_placed(self) -> None:
        leaving = request_remove(self.roster, "n2", self.base)
        self.assertEqual(leaving.change, Change(REMOVE, "n2"))
        self.assertEqual(leaving.voters, ("n1", "n2", "n3", "n4"))
        self.assertEqual(leaving.placed, ("n1", "n3", "n4"))
        self.assertEqual(leaving.role("n2"), "leaving")

    def test_leaves_once_it_holds_no_copy(self) -> None:
        leaving = request_remove(self.roster, "n2", self.base)
        self.assertEqual(advance(leaving, frozenset(leaving.ids), 5, True), leaving)
        gone = advance(leaving, frozenset(leaving.ids), 5, False)
        self.assertEqual(gone, Roster(self.roster.nodes[:1] + self.roster.nodes[2:]))

    def test_not_below_three(self) -> None:
        three = first_roster(cluster_config(3))
        with self.assertRaises(MembershipConflict) as caught:
            request_remove(three, "n1", cluster_config(3))
        self.assertIn("at least 3", caught.exception.message)

    def test_not_below_the_configured_copies(self) -> None:
        base = cluster_config(4, replicas=4)
        self.assertRaises(MembershipConflict, request_remove, first_roster(base), "n1", base)

    def test_unknown(self) -> None:
        self.assertRaises(UnknownMember, request_remove, self.roster, "n9", self.base)

    def test_removing_the_learner_cancels(self) -> None:
        added = request_add(self.roster, node(5))
        self.assertEqual(request_remove(added, "n5", self.base), self.roster)
        voting = advance(added, frozenset(added.ids), 0, False)
        self.assertEqual(request_remove(voting, "n5", self.base).change, Change(REMOVE, "n5"))


class EncodingTests(SynchronousTestCase):
    """
    The roster travels and is persisted inside the map.
    """

    def test_round_trip(self) -> None:
        roster = request_add(first_roster(cluster_config(3)), node(4))
        cluster_map = ClusterMap([], roster)
        self.assertEqual(decode_map(encode_map(cluster_map)), cluster_map)

    def test_old_maps_have_none(self) -> None:
        self.assertIsNone(decode_map(encode_map(ClusterMap([]))).roster)
        self.assertEqual(encode_map(ClusterMap([])), [])


class DescriptionTests(SynchronousTestCase):
    """
    A joining node rebuilds the membership from C{GET /cluster/nodes}.
    """

    def test_round_trip(self) -> None:
        base = cluster_config(3)
        learning = request_add(first_roster(base), node(4))
        voting = advance(learning, frozenset(learning.ids), 1, False)
        leaving = request_remove(first_roster(cluster_config(4)), "n2", cluster_config(4))
        for roster in (first_roster(base), learning, voting, leaving):
            self.assertEqual(from_description(describe(roster)), roster)

    def test_not_a_membership(self) -> None:
        self.assertRaises(InvalidRequest, from_description, {"members": [{"id": "n1"}], "change": None})
        self.assertRaises(InvalidRequest, from_description, {"members": 3})
