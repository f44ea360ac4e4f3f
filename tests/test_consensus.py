# -*- test-case-name: tests.test_consensus -*-
"""
Tests for L{twisted_kv.core.consensus}.

Single nodes are driven by hand, message by message.  Whole clusters run
through L{Router}, which passes the C{(peer, message)} outputs of N
L{Consensus} objects between them over FIFO links with one step of latency,
on a clock the test controls, and can drop messages, cut links and restart
nodes.  Every node ever seen as leader is recorded with its term.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from typing import Iterable, Optional

from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core.consensus import CANDIDATE, FOLLOWER, LEADER, Consensus
from twisted_kv.core.placement import ClusterMap, Member, PartitionConfig, encode_map
from twisted_kv.core.config import NodeConfig
from twisted_kv.core.roster import ADD, Change, Roster

TIMEOUT = 1.0
HEARTBEAT = 0.1
STEP = 0.01


def numbered_map(number: int) -> ClusterMap:
    """
    A distinct cluster map per C{number} (its one partition's epoch), so a
    test can tell maps apart and order them.
    """
    return ClusterMap([PartitionConfig(number, [Member("n0", 1)], ["n0"])])


def number_of(cluster_map: Optional[ClusterMap]) -> int:
    return 0 if cluster_map is None else cluster_map.partitions[0].epoch


def make_node(node_id: str, peers: Iterable[str], now: float = 0.0, seed: object = 0) -> Consensus:
    return Consensus(
        node_id,
        list(peers),
        now=now,
        election_timeout=TIMEOUT,
        heartbeat_interval=HEARTBEAT,
        rng=random.Random(f"{seed}/{node_id}"),
    )


class Router:
    """
    A cluster of L{Consensus} objects and the network between them.

    @ivar leaders: term -> every node seen as leader in that term.
    @ivar commits: term -> the highest map number committed (at any node)
        while that node was in that term.
    """

    def __init__(self, size: int, seed: int, drop: float = 0.0) -> None:
        self.now = 0.0
        self.ids = [f"n{i}" for i in range(size)]
        self.seed = seed
        self.rng = random.Random(seed)
        self.drop = drop
        self.nodes = {node: make_node(node, self.ids, 0.0, seed) for node in self.ids}
        self.restarts = 0
        self._in_flight: deque = deque()
        self._cut: set = set()
        self.leaders: dict[int, set] = defaultdict(set)
        self.commits: dict[int, int] = {}

    def linked(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self._cut

    def partition(self, *groups: Iterable[str]) -> None:
        """
        Cut every link between nodes of different groups (in-flight
        messages on them are lost).
        """
        sets = [set(g) for g in groups]
        for i, first in enumerate(sets):
            for second in sets[i + 1 :]:
                for a in first:
                    for b in second:
                        self._cut.add(frozenset((a, b)))

    def heal(self) -> None:
        self._cut.clear()

    def restart(self, node: str) -> None:
        """
        The node's process restarts empty; messages to and from the old
        process are lost.
        """
        self.restarts += 1
        fresh = make_node(node, self.ids, self.now, f"{self.seed}/{self.restarts}")
        # Nodes gossip their term several times a second: the restarted node
        # learns its reachable peers' terms before it may vote.
        for peer_id, peer in self.nodes.items():
            if peer_id != node and self.linked(node, peer_id):
                fresh.observe(self.now, peer_id, peer.term, peer.entry)
        self.nodes[node] = fresh
        self._in_flight = deque(m for m in self._in_flight if node not in (m[0], m[1]))

    def send(self, sender: str, outgoing: list) -> None:
        for peer, message in outgoing:
            if self.drop and self.rng.random() < self.drop:
                continue
            self._in_flight.append((sender, peer, message))

    def _observe(self) -> None:
        for node_id, node in self.nodes.items():
            if node.role == LEADER:
                self.leaders[node.term].add(node_id)
            if node.committed is not None:
                number = number_of(node.committed)
                self.commits[node.term] = max(self.commits.get(node.term, 0), number)

    def step(self) -> None:
        """
        Advance the clock by one step: every node ticks, then every message
        sent during the previous step is delivered (FIFO per link).
        """
        self.now = round(self.now + STEP, 6)
        for node_id, node in self.nodes.items():
            self.send(node_id, node.tick(self.now))
        self._observe()
        batch, self._in_flight = self._in_flight, deque()
        for sender, peer, message in batch:
            if self.linked(sender, peer):
                self.send(peer, self.nodes[peer].receive(self.now, sender, message))
                self._observe()

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / STEP)):
            self.step()

    def run_until(self, condition, limit: float) -> bool:
        for _ in range(round(limit / STEP)):
            if condition():
                return True
            self.step()
        return condition()

    def current_leaders(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.role == LEADER]

    def settled_leader(self) -> Optional[str]:
        """
        The leader every node follows in the same term, if there is one.
        """
        leaders = self.current_leaders()
        if len(leaders) != 1:
            return None
        leader = self.nodes[leaders[0]]
        for node in self.nodes.values():
            if node.term != leader.term or node.leader != leaders[0]:
                return None
        return leaders[0]


def _exchange(
    nodes: dict[str, Consensus], candidate: str, now: float, voters: Iterable[str], requests: dict
) -> list:
    """
    Deliver C{requests} to C{voters} and their answers to C{candidate};
    return what the candidate sent in reply to the answers.
    """
    sent: list = []
    for voter in voters:
        if voter not in requests:
            continue
        (_, reply), = nodes[voter].receive(now, candidate, requests[voter])
        sent = nodes[candidate].receive(now, voter, reply) or sent
    return sent


def start_candidacy(node: Consensus, now: float, supporters: Iterable[str] = ("n2", "n3")) -> list:
    """
    Make C{node} time out and win its pre-vote with C{supporters} (two peers
    make a majority of five); return its vote requests.
    """
    node.tick(now)
    requests: list = []
    for peer in supporters:
        requests = node.receive(now, peer, ["prevoted", node.term + 1, True]) or requests
    return requests


def elect(nodes: dict[str, Consensus], candidate: str, now: float, voters: Iterable[str]) -> list:
    """
    Make C{candidate} time out and collect, by hand, the pre-votes and then
    the votes of C{voters}.

    @return: what the candidate sends on winning.
    """
    voters = list(voters)
    prevotes = dict(nodes[candidate].tick(now))
    votes = dict(_exchange(nodes, candidate, now, voters, prevotes))
    return _exchange(nodes, candidate, now, voters, votes)


class ElectionTests(SynchronousTestCase):
    """
    Elections in whole clusters.
    """

    def test_leader_elected_within_a_few_timeouts(self) -> None:
        """
        On a healthy network, 3- and 5-node clusters agree on one leader
        (same term, every node following it) within three election
        timeouts of starting, for several seeds.
        """
        for size in (3, 5):
            for seed in range(5):
                router = Router(size, seed)
                self.assertTrue(
                    router.run_until(router.settled_leader, 3 * TIMEOUT), (size, seed)
                )

    def test_leader_stays(self) -> None:
        """
        Once elected on a healthy network, the leader keeps its term: no
        election happens for many timeouts.
        """
        router = Router(5, 7)
        router.run_until(router.settled_leader, 3 * TIMEOUT)
        leader = router.settled_leader()
        term = router.nodes[leader].term
        router.run(10 * TIMEOUT)
        self.assertEqual(router.settled_leader(), leader)
        self.assertEqual(router.nodes[leader].term, term)

    def test_minority_never_elects(self) -> None:
        """
        Two nodes of five, cut off from the start, never elect a leader
        (a candidate needs three votes); the other three do.
        """
        router = Router(5, 3)
        router.partition(["n0", "n1"], ["n2", "n3", "n4"])
        router.run(10 * TIMEOUT)
        everyone = set().union(*router.leaders.values())
        self.assertTrue(everyone)
        self.assertFalse(everyone & {"n0", "n1"})
        # pre-vote: failing to gather a majority, they never raise their term
        self.assertEqual((router.nodes["n0"].term, router.nodes["n1"].term), (0, 0))

    def test_one_leader_per_term_under_faults(self) -> None:
        """
        Election safety: over long runs with 20% of messages lost and
        random partitions and heals, no term ever has two leaders; and the
        runs do elect leaders in many terms.
        """
        terms_with_leader = 0
        for size in (3, 4, 5):
            for seed in range(15):
                router = Router(size, seed, drop=0.2)
                rng = random.Random(seed)
                for _ in range(40):
                    router.heal()
                    if rng.random() < 0.6:
                        ids = router.ids[:]
                        rng.shuffle(ids)
                        cut = rng.randint(1, size - 1)
                        router.partition(ids[:cut], ids[cut:])
                    router.run(rng.uniform(0.2, 2.0) * TIMEOUT)
                for term, leaders in router.leaders.items():
                    self.assertLessEqual(len(leaders), 1, (size, seed, term, leaders))
                terms_with_leader += len(router.leaders)
        self.assertGreater(terms_with_leader, 300)

    def test_restarts_on_a_healthy_network(self) -> None:
        """
        Nodes restarting empty (forgetting their votes) on a network that
        neither loses nor cuts messages never produce two leaders in a term,
        and a leader is back within a few timeouts of each restart.
        """
        for size in (3, 5):
            for seed in range(8):
                router = Router(size, seed)
                rng = random.Random(seed)
                for _ in range(15):
                    router.run(rng.uniform(0.0, 2.0) * TIMEOUT)
                    router.restart(rng.choice(router.ids))
                    self.assertTrue(router.run_until(router.settled_leader, 4 * TIMEOUT))
                for term, leaders in router.leaders.items():
                    self.assertLessEqual(len(leaders), 1, (size, seed, term, leaders))

    def test_restart_cannot_make_a_second_leader_in_a_term(self) -> None:
        """
        Election safety with restarts: n0 wins term 1 with n2's vote; n2
        restarts (forgetting the vote) and, more than half a timeout later,
        is asked by n1, which never heard from n0 (lost messages), for a vote
        in term 1.  n1 must not become a second leader of term 1.
        """
        ids = ["n0", "n1", "n2"]
        nodes = {node: make_node(node, ids) for node in ids}
        elect(nodes, "n0", TIMEOUT, ["n2"])
        self.assertEqual((nodes["n0"].role, nodes["n0"].term), (LEADER, 1))
        nodes["n2"] = make_node("n2", ids, now=TIMEOUT + 0.1, seed="restarted")
        # n0's status gossip reaches the restarted n2 (n1's never got through)
        nodes["n2"].observe(TIMEOUT + 0.1, "n0", nodes["n0"].term, nodes["n0"].entry)
        elect(nodes, "n1", 2 * TIMEOUT, ["n2"])
        self.assertFalse(
            nodes["n1"].role == LEADER and nodes["n1"].term == 1,
            "n0 and n1 are both leaders of term 1",
        )


    def test_majority_restarted_elects_the_holder_of_the_map(self) -> None:
        """
        The leader and another node of three restart empty while the third
        holds the map alone: the restarted nodes vote for it (it holds the
        newest entry they heard of), so a leader is elected within a few
        timeouts, and it is the survivor with the map.
        """
        for seed in range(8):
            router = Router(3, seed)
            router.run_until(router.settled_leader, 3 * TIMEOUT)
            leader = router.settled_leader()
            router.send(leader, router.nodes[leader].propose(router.now, numbered_map(1)))
            router.run(5 * STEP)
            survivor, other = (n for n in router.ids if n != leader)
            router.restart(leader)
            router.restart(other)
            self.assertTrue(router.run_until(router.settled_leader, 4 * TIMEOUT), seed)
            self.assertEqual(router.settled_leader(), survivor)
            router.run(10 * STEP)
            self.assertEqual(number_of(router.nodes[leader].committed), 1)

    def test_rejoining_node_does_not_depose_leader(self) -> None:
        """
        A node cut off for a while (and so at a much higher term) rejoining
        a healthy majority does not depose its leader, as the module
        docstring promises ("a partitioned node neither disrupts nor
        lingers as leader").
        """
        router = Router(5, 1)
        router.run_until(router.settled_leader, 3 * TIMEOUT)
        leader = router.settled_leader()
        loner = next(n for n in router.ids if n != leader)
        router.partition([loner], [n for n in router.ids if n != loner])
        term = router.nodes[leader].term
        router.run(5 * TIMEOUT)
        router.heal()
        router.run(2 * TIMEOUT)
        self.assertEqual(router.current_leaders(), [leader])
        self.assertEqual(router.nodes[leader].term, term)


    def test_isolated_leader_steps_down(self) -> None:
        """
        Check-quorum: a leader cut off from every peer stays leader while it
        heard from a majority within the last election timeout, and steps
        down soon after; the majority elects another leader.
        """
        router = Router(5, 11)
        router.run_until(router.settled_leader, 3 * TIMEOUT)
        leader = router.settled_leader()
        router.partition([leader], [n for n in router.ids if n != leader])
        router.run(0.8 * TIMEOUT)
        self.assertEqual(router.nodes[leader].role, LEADER)
        router.run(0.2 * TIMEOUT + HEARTBEAT + 3 * STEP)
        self.assertEqual(router.nodes[leader].role, FOLLOWER)
        self.assertIsNone(router.nodes[leader].leader)
        router.run(3 * TIMEOUT)
        others = {n for n in router.current_leaders() if n != leader}
        self.assertEqual(len(others), 1)

    def test_leader_with_minority_steps_down(self) -> None:
        """
        A leader left with one peer of four stays leader no longer than an
        election timeout plus a heartbeat.
        """
        router = Router(5, 12)
        router.run_until(router.settled_leader, 3 * TIMEOUT)
        leader = router.settled_leader()
        buddy = next(n for n in router.ids if n != leader)
        router.partition([leader, buddy], [n for n in router.ids if n not in (leader, buddy)])
        router.run(TIMEOUT + HEARTBEAT + 3 * STEP)
        self.assertNotEqual(router.nodes[leader].role, LEADER)


class MapReplicationTests(SynchronousTestCase):
    """
    Proposing and committing cluster maps in whole clusters.
    """

    def test_followers_learn_committed_map(self) -> None:
        """
        A map proposed by the leader ends up committed on every node.
        """
        router = Router(5, 2)
        router.run_until(router.settled_leader, 3 * TIMEOUT)
        leader = router.settled_leader()
        router.send(leader, router.nodes[leader].propose(router.now, numbered_map(1)))
        router.run(5 * STEP)
        for node in router.nodes.values():
            self.assertEqual(node.committed, numbered_map(1))
            self.assertEqual(node.latest_map, numbered_map(1))

    def test_committed_maps_survive_faults(self) -> None:
        """
        Over long runs with message loss and partitions, with the leader
        proposing ever newer maps: a leader of a later term always holds a
        map at least as new as any committed before its term (leader
        completeness), and no node's committed map ever goes back.
        """
        commits = 0
        for size in (3, 5):
            for seed in range(12):
                router = Router(size, seed, drop=0.2)
                rng = random.Random(seed)
                number = 0
                seen = {n: 0 for n in router.ids}
                for _ in range(25):
                    router.heal()
                    if rng.random() < 0.5:
                        ids = router.ids[:]
                        rng.shuffle(ids)
                        cut = rng.randint(1, size - 1)
                        router.partition(ids[:cut], ids[cut:])
                    for _ in range(rng.randint(10, 150)):
                        router.step()
                        for node_id, node in router.nodes.items():
                            if node.role == LEADER and rng.random() < 0.05:
                                number += 1
                                router.send(node_id, node.propose(router.now, numbered_map(number)))
                            now_committed = number_of(node.committed)
                            self.assertGreaterEqual(now_committed, seen[node_id])
                            seen[node_id] = now_committed
                            if node.role == LEADER:
                                needed = max(
                                    [c for t, c in router.commits.items() if t < node.term],
                                    default=0,
                                )
                                self.assertGreaterEqual(number_of(node.latest_map), needed)
                commits += max(router.commits.values(), default=0)
        self.assertGreater(commits, 50)

    def test_single_node_cluster(self) -> None:
        """
        A one-node cluster elects itself at its first timeout and commits
        proposals at once, sending nothing.
        """
        node = make_node("solo", ["solo"])
        self.assertEqual(node.majority, 1)
        self.assertEqual(node.tick(TIMEOUT), [])
        self.assertEqual((node.role, node.term, node.leader), (LEADER, 1, "solo"))
        self.assertEqual(node.propose(TIMEOUT, numbered_map(3)), [])
        self.assertEqual(node.committed, numbered_map(3))


class VotingTests(SynchronousTestCase):
    """
    How a single node grants and counts votes.
    """

    IDS = ["n0", "n1", "n2", "n3", "n4"]

    def test_candidate_needs_majority(self) -> None:
        """
        A candidate of five asks every peer, counts itself, ignores refusals
        and duplicate grants, and leads on the third distinct vote.
        """
        node = make_node("n0", self.IDS)
        requests = start_candidacy(node, TIMEOUT)
        self.assertEqual(node.role, CANDIDATE)
        self.assertEqual(node.term, 1)
        self.assertEqual(sorted(requests), [(p, ["vote", 1, 0, 0]) for p in self.IDS[1:]])
        self.assertEqual(node.receive(TIMEOUT, "n1", ["voted", 1, True]), [])
        self.assertEqual(node.receive(TIMEOUT, "n1", ["voted", 1, True]), [])
        self.assertEqual(node.receive(TIMEOUT, "n2", ["voted", 1, False]), [])
        self.assertEqual(node.role, CANDIDATE)
        out = node.receive(TIMEOUT, "n3", ["voted", 1, True])
        self.assertEqual((node.role, node.leader), (LEADER, "n0"))
        self.assertEqual(
            sorted(out), [(p, ["append", 1, 0, 0, None, 0]) for p in self.IDS[1:]]
        )

    def test_old_term_votes_not_counted(self) -> None:
        """
        Grants from an earlier election do not count towards this one.
        """
        node = make_node("n0", self.IDS)
        start_candidacy(node, TIMEOUT)
        start_candidacy(node, 2 * TIMEOUT)  # the first election timed out: term 2
        self.assertEqual(node.term, 2)
        for peer in ("n1", "n2"):
            node.receive(2 * TIMEOUT, peer, ["voted", 1, True])
        self.assertEqual(node.role, CANDIDATE)

    def test_higher_term_reply_ends_candidacy(self) -> None:
        """
        A refusal carrying a higher term makes the candidate a follower of
        that term, without a known leader.
        """
        node = make_node("n0", self.IDS)
        node.tick(TIMEOUT)
        node.receive(TIMEOUT, "n1", ["voted", 7, False])
        self.assertEqual((node.role, node.term, node.leader), (FOLLOWER, 7, None))

    def test_no_votes_right_after_start(self) -> None:
        """
        A node refuses every vote during the first half election timeout
        after it starts (it may have voted before a restart), then grants.
        """
        node = make_node("n1", self.IDS, now=100.0)
        self.assertEqual(
            node.receive(100.0 + 0.49 * TIMEOUT, "n0", ["vote", 3, 0, 0]),
            [("n0", ["voted", 3, False])],
        )
        self.assertEqual(node.term, 3)
        self.assertEqual(
            node.receive(100.0 + 0.5 * TIMEOUT, "n0", ["vote", 3, 0, 0]),
            [("n0", ["voted", 3, True])],
        )

    def test_one_vote_per_term(self) -> None:
        """
        Having voted for n0 in term 3, a node refuses n2 in term 3, repeats
        its grant to n0, and may vote for n2 in term 4.
        """
        node = make_node("n1", self.IDS)
        now = TIMEOUT
        self.assertEqual(node.receive(now, "n0", ["vote", 3, 0, 0]), [("n0", ["voted", 3, True])])
        self.assertEqual(node.receive(now, "n2", ["vote", 3, 0, 0]), [("n2", ["voted", 3, False])])
        self.assertEqual(node.receive(now, "n0", ["vote", 3, 0, 0]), [("n0", ["voted", 3, True])])
        self.assertEqual(node.receive(now, "n2", ["vote", 4, 0, 0]), [("n2", ["voted", 4, True])])

    def test_no_vote_for_a_stale_term(self) -> None:
        """
        A request for a term older than the node's is refused with the
        node's term.
        """
        node = make_node("n1", self.IDS)
        node.receive(TIMEOUT, "n0", ["vote", 5, 0, 0])
        self.assertEqual(node.receive(TIMEOUT, "n2", ["vote", 4, 0, 0]), [("n2", ["voted", 5, False])])

    def _holding(self, index: int, term: int) -> tuple[Consensus, float]:
        """
        A follower that stored entry (C{index}, C{term}) from leader n4,
        and the first time it may vote again (after leader contact).
        """
        node = make_node("n1", self.IDS)
        wire = encode_map(numbered_map(9))
        node.receive(TIMEOUT, "n4", ["append", term, index, term, wire, 0])
        self.assertEqual(node.latest_map, numbered_map(9))
        return node, TIMEOUT + TIMEOUT / 2

    def test_vote_needs_up_to_date_entry(self) -> None:
        """
        A node holding entry (index 2, term 3) refuses candidates whose
        entry is older, by term or by index, and grants those whose entry is
        at least as new: Raft's (term, index) comparison.
        """
        cases = [
            ((5, 2), False),  # longer but older term
            ((1, 3), False),  # same term, lower index
            ((2, 3), True),  # identical
            ((3, 3), True),  # same term, higher index
            ((0, 4), True),  # newer term wins over index
        ]
        for (index, entry_term), granted in cases:
            node, now = self._holding(2, 3)
            (_, reply), = node.receive(now, "n0", ["vote", 10, index, entry_term])
            self.assertEqual(reply, ["voted", 10, granted], (index, entry_term))

    def test_restarted_node_holds_out_for_the_newest_entry_reported(self) -> None:
        """
        A node that has not heard from a leader since it started, empty or
        holding a map relayed by a peer, votes only for candidates whose entry
        is at least as new as every entry its peers reported during the last
        election timeout: it may have stored a newer one before it restarted.
        """
        for held in [None, (1, 2)]:
            node = make_node("n1", self.IDS, now=100.0)
            if held is not None:
                node.adopt_committed(*held, encode_map(numbered_map(1)))
            node.observe(100.1, "n2", 0, [2, 3])
            node.observe(100.1, "n3", 0, [1, 2])
            now = 100.0 + TIMEOUT / 2
            for (index, entry_term), granted in [((1, 3), False), ((2, 3), True), ((1, 4), True)]:
                (_, reply), = node.receive(now, "n0", ["prevote", 9, index, entry_term])
                self.assertEqual(reply, ["prevoted", 9, granted], (held, index, entry_term))

    def test_reports_of_entries_expire(self) -> None:
        """
        A report older than an election timeout no longer counts (its node
        may have died since, and the others must be able to elect a leader),
        nor does any report once the node has heard from a leader.
        """
        node = make_node("n1", self.IDS, now=100.0)
        node.observe(100.0, "n2", 0, [2, 3])
        node.observe(100.0, "n3", 0, [5, 3])
        node.observe(100.0 + TIMEOUT, "n3", 0, [1, 1])
        (_, reply), = node.receive(100.0 + TIMEOUT, "n0", ["prevote", 9, 1, 1])
        self.assertEqual(reply, ["prevoted", 9, False])
        (_, reply), = node.receive(100.01 + TIMEOUT, "n0", ["prevote", 9, 1, 1])
        self.assertEqual(reply, ["prevoted", 9, True])
        node = make_node("n1", self.IDS, now=100.0)
        node.receive(100.0, "n4", ["append", 1, 0, 0, None, 0])
        node.observe(100.0, "n2", 0, [2, 3])
        (_, reply), = node.receive(100.0 + TIMEOUT, "n0", ["prevote", 9, 0, 0])
        self.assertEqual(reply, ["prevoted", 9, True])

    def test_minority_restarted_keeps_the_committed_map(self) -> None:
        """
        Of five nodes, leader n0 committed map 2 on n0, n1 and n2 only (n2
        not knowing it committed; n3 and n4 hold map 1); n0 and n1 restart.
        Raft alone would let n3 win with the amnesiac votes of n0 and n1;
        they hold out for map 2, which n2 reports, so only a holder of map 2
        can win.
        """
        nodes = {n: make_node(n, self.IDS) for n in self.IDS}
        elect(nodes, "n0", TIMEOUT, ["n1", "n2"])
        leader = nodes["n0"]
        for peer, message in leader.propose(TIMEOUT, numbered_map(1)):
            (_, reply), = nodes[peer].receive(TIMEOUT, "n0", message)
            leader.receive(TIMEOUT, peer, reply)
        for peer, message in leader.propose(TIMEOUT, numbered_map(2)):
            if peer in ("n1", "n2"):
                (_, reply), = nodes[peer].receive(TIMEOUT, "n0", message)
                leader.receive(TIMEOUT, peer, reply)
        self.assertEqual(leader.committed, numbered_map(2))
        self.assertNotEqual(nodes["n2"].committed, numbered_map(2))
        self.assertEqual(nodes["n3"].latest_map, numbered_map(1))
        now = 10 * TIMEOUT
        for restarted in ("n0", "n1"):
            nodes[restarted] = make_node(restarted, self.IDS, now=now, seed="restarted")
            for peer in ("n2", "n3", "n4"):
                nodes[restarted].observe(now, peer, nodes[peer].term, nodes[peer].entry)
        now += TIMEOUT / 2
        elect(nodes, "n3", now, ["n0", "n1", "n4"])
        self.assertNotEqual(nodes["n3"].role, LEADER)
        elect(nodes, "n2", now + TIMEOUT, ["n0", "n1", "n3"])
        self.assertEqual(nodes["n2"].role, LEADER)

    def test_stickiness(self) -> None:
        """
        A follower that heard from its leader less than half a timeout ago
        ignores vote requests entirely (no reply, no term change); after
        that it answers them.
        """
        node = make_node("n1", self.IDS)
        node.receive(5.0, "n4", ["append", 2, 0, 0, None, 0])
        self.assertEqual((node.leader, node.term), ("n4", 2))
        self.assertEqual(node.receive(5.0 + 0.49 * TIMEOUT, "n0", ["vote", 9, 0, 0]), [])
        self.assertEqual((node.leader, node.term), ("n4", 2))
        self.assertEqual(
            node.receive(5.0 + 0.5 * TIMEOUT, "n0", ["vote", 9, 0, 0]),
            [("n0", ["voted", 9, True])],
        )
        self.assertEqual((node.term, node.leader), (9, None))

    def test_granting_a_vote_defers_own_election(self) -> None:
        """
        A node that just granted a vote does not start its own election
        until at least half a timeout later.
        """
        node = make_node("n1", self.IDS)
        node.receive(TIMEOUT, "n0", ["vote", 1, 0, 0])
        self.assertEqual(node.tick(TIMEOUT + 0.49 * TIMEOUT), [])
        self.assertEqual(node.role, FOLLOWER)


class AppendTests(SynchronousTestCase):
    """
    How a leader replicates and commits maps, and how followers take them.
    """

    IDS = ["n0", "n1", "n2", "n3", "n4"]

    def _leader(self) -> tuple[Consensus, float]:
        nodes = {n: make_node(n, self.IDS) for n in self.IDS}
        elect(nodes, "n0", TIMEOUT, ["n1", "n2"])
        self.assertEqual(nodes["n0"].role, LEADER)
        return nodes["n0"], TIMEOUT

    def test_commit_needs_majority(self) -> None:
        """
        A proposal is committed once a majority (the leader and two of four
        followers) stores it, not before.
        """
        leader, now = self._leader()
        out = leader.propose(now, numbered_map(1))
        wire = encode_map(numbered_map(1))
        self.assertEqual(sorted(out), [(p, ["append", 1, 1, 1, wire, 0]) for p in self.IDS[1:]])
        self.assertEqual(leader.latest_map, numbered_map(1))
        self.assertIsNone(leader.committed)
        self.assertEqual(leader.receive(now, "n1", ["appended", 1, True, 1, 1]), [])
        self.assertIsNone(leader.committed)
        self.assertEqual(leader.receive(now, "n1", ["appended", 1, True, 1, 1]), [])
        self.assertIsNone(leader.committed, "one follower counted twice")
        self.assertEqual(leader.receive(now, "n2", ["appended", 1, False, 0, 0]), [])
        self.assertIsNone(leader.committed)
        out = leader.receive(now, "n3", ["appended", 1, True, 1, 1])
        self.assertEqual(leader.committed, numbered_map(1))
        # The commit is announced at once; only n2 and n4 still need the map.
        self.assertEqual(
            sorted(out),
            [
                ("n1", ["append", 1, 1, 1, None, 1]),
                ("n2", ["append", 1, 1, 1, wire, 1]),
                ("n3", ["append", 1, 1, 1, None, 1]),
                ("n4", ["append", 1, 1, 1, wire, 1]),
            ],
        )

    def test_heartbeats_carry_map_only_when_lacking(self) -> None:
        """
        Heartbeats carry C{None} to followers known to hold the leader's
        entry and the map to the others, on the heartbeat interval.
        """
        leader, now = self._leader()
        leader.propose(now, numbered_map(1))
        leader.receive(now, "n1", ["appended", 1, True, 1, 1])
        self.assertEqual(leader.tick(now + HEARTBEAT / 2), [])
        beats = dict(leader.tick(now + HEARTBEAT))
        self.assertIsNone(beats["n1"][4])
        self.assertEqual(beats["n2"][4], encode_map(numbered_map(1)))

    def test_commit_only_in_own_term(self) -> None:
        """
        A new leader holding a map from an earlier term does not count
        acknowledgements of that old entry: it re-proposes the map as the
        first entry of its own term and commits that once a majority
        stores it.
        """
        nodes = {n: make_node(n, self.IDS) for n in self.IDS}
        wire = encode_map(numbered_map(4))
        for n in ("n0", "n1", "n2"):
            nodes[n].receive(TIMEOUT, "n4", ["append", 1, 1, 1, wire, 0])
        now = 3 * TIMEOUT
        out = elect(nodes, "n0", now, ["n1", "n2"])
        leader = nodes["n0"]
        self.assertEqual(leader.term, 2)
        self.assertEqual(dict(out)["n1"], ["append", 2, 2, 2, wire, 0])
        leader.receive(now, "n1", ["appended", 2, True, 1, 1])
        leader.receive(now, "n2", ["appended", 2, True, 1, 1])
        self.assertIsNone(leader.committed)
        leader.receive(now, "n1", ["appended", 2, True, 2, 2])
        self.assertIsNone(leader.committed)
        leader.receive(now, "n2", ["appended", 2, True, 2, 2])
        self.assertEqual(leader.committed, numbered_map(4))

    def test_follower_commits_when_told(self) -> None:
        """
        A follower stores a map as its latest at once but treats it as
        committed only once the leader's commit index reaches it.
        """
        node = make_node("n1", self.IDS)
        wire = encode_map(numbered_map(2))
        self.assertEqual(
            node.receive(TIMEOUT, "n0", ["append", 1, 1, 1, wire, 0]),
            [("n0", ["appended", 1, True, 1, 1])],
        )
        self.assertEqual(node.latest_map, numbered_map(2))
        self.assertIsNone(node.committed)
        node.receive(TIMEOUT, "n0", ["append", 1, 1, 1, None, 1])
        self.assertEqual(node.committed, numbered_map(2))

    def test_follower_without_entry_refuses_heartbeat(self) -> None:
        """
        A heartbeat without the map, naming an entry the follower lacks, is
        answered C{ok=False} with the entry the follower does hold.
        """
        node = make_node("n1", self.IDS)
        self.assertEqual(
            node.receive(TIMEOUT, "n0", ["append", 1, 3, 1, None, 3]),
            [("n0", ["appended", 1, False, 0, 0])],
        )
        self.assertIsNone(node.committed)

    def test_stale_leader_refused(self) -> None:
        """
        An append from a leader of an older term is refused with the
        current term, and does not change who the node follows.
        """
        node = make_node("n1", self.IDS)
        node.receive(TIMEOUT, "n2", ["append", 5, 0, 0, None, 0])
        self.assertEqual(
            node.receive(TIMEOUT, "n0", ["append", 4, 1, 4, encode_map(numbered_map(1)), 1]),
            [("n0", ["appended", 5, False, 0, 0])],
        )
        self.assertEqual(node.leader, "n2")
        self.assertIsNone(node.latest_map)

    def test_candidate_yields_to_leader_of_its_term(self) -> None:
        """
        A candidate hearing from a leader of its own term becomes its
        follower.
        """
        node = make_node("n1", self.IDS)
        start_candidacy(node, TIMEOUT)
        self.assertEqual((node.role, node.term), (CANDIDATE, 1))
        node.receive(TIMEOUT, "n3", ["append", 1, 0, 0, None, 0])
        self.assertEqual((node.role, node.leader), (FOLLOWER, "n3"))

    def test_stale_append_of_same_term_does_not_roll_back(self) -> None:
        """
        A delayed append of the same leader and term naming an older entry
        (messages reordered) does not replace the follower's newer entry nor
        roll back its committed map.
        """
        node = make_node("n1", self.IDS)
        old, new = encode_map(numbered_map(1)), encode_map(numbered_map(2))
        node.receive(TIMEOUT, "n0", ["append", 1, 2, 1, new, 2])
        self.assertEqual(node.committed, numbered_map(2))
        node.receive(TIMEOUT, "n0", ["append", 1, 1, 1, old, 1])
        self.assertEqual(node.latest_map, numbered_map(2))
        self.assertEqual(node.committed, numbered_map(2))



class RelayTests(SynchronousTestCase):
    """
    A follower cut off from the leader takes committed maps from its peers.
    """

    IDS = ["n0", "n1", "n2"]

    def test_committed_entry_relayed(self) -> None:
        """
        A follower offers its committed entry, and a follower that missed it
        adopts it as its committed map; an older or equal one changes
        nothing.
        """
        holder, behind = make_node("n1", self.IDS), make_node("n2", self.IDS)
        self.assertIsNone(holder.committed_entry())
        holder.receive(TIMEOUT, "n0", ["append", 3, 2, 3, encode_map(numbered_map(7)), 2])
        entry = holder.committed_entry()
        self.assertEqual(entry, [2, 3, encode_map(numbered_map(7))])
        self.assertTrue(behind.adopt_committed(*entry))
        self.assertEqual(behind.committed, numbered_map(7))
        self.assertEqual(behind.latest_map, numbered_map(7))
        self.assertEqual(behind.committed_index, 2)
        self.assertFalse(behind.adopt_committed(*entry))
        self.assertFalse(behind.adopt_committed(1, 3, encode_map(numbered_map(5))))
        self.assertEqual(behind.committed, numbered_map(7))

    def test_uncommitted_entry_not_offered(self) -> None:
        """
        A follower whose latest entry is not committed offers nothing: it no
        longer holds the committed one.
        """
        node = make_node("n1", self.IDS)
        node.receive(TIMEOUT, "n0", ["append", 1, 1, 1, encode_map(numbered_map(1)), 1])
        node.receive(TIMEOUT, "n0", ["append", 1, 2, 1, encode_map(numbered_map(2)), 1])
        self.assertEqual(node.committed, numbered_map(1))
        self.assertIsNone(node.committed_entry())

    def test_own_newer_entry_kept(self) -> None:
        """
        A follower holding a newer entry than the relayed one keeps it and
        does not mark it committed; one holding that very entry uncommitted
        learns it is committed.
        """
        newer = make_node("n1", self.IDS)
        newer.receive(TIMEOUT, "n0", ["append", 2, 3, 2, encode_map(numbered_map(3)), 0])
        self.assertFalse(newer.adopt_committed(2, 1, encode_map(numbered_map(2))))
        self.assertEqual(newer.latest_map, numbered_map(3))
        self.assertIsNone(newer.committed)
        same = make_node("n2", self.IDS)
        same.receive(TIMEOUT, "n0", ["append", 1, 2, 1, encode_map(numbered_map(2)), 0])
        self.assertTrue(same.adopt_committed(2, 1, encode_map(numbered_map(2))))
        self.assertEqual(same.committed, numbered_map(2))

    def test_leader_adopts_nothing(self) -> None:
        """
        A leader's own entry is the newest of its term: it takes nothing
        relayed.
        """
        nodes = {n: make_node(n, self.IDS) for n in self.IDS}
        elect(nodes, "n0", TIMEOUT, ["n1"])
        leader = nodes["n0"]
        self.assertEqual(leader.role, LEADER)
        self.assertFalse(leader.adopt_committed(5, 1, encode_map(numbered_map(9))))
        self.assertIsNone(leader.committed)


class DurableStateTests(SynchronousTestCase):
    """
    A node restarted with the state L{Consensus.durable_state} gave comes
    back as the voter it was.
    """

    IDS = ("n0", "n1", "n2")

    def test_restored_vote_is_kept(self) -> None:
        """
        Having voted for n0 in term 3, a node restored from its state
        refuses n2 in term 3 at once, and repeats its grant to n0: it needs
        none of the amnesiac node's waiting.
        """
        node = make_node("n1", self.IDS)
        node.receive(TIMEOUT, "n0", ["vote", 3, 0, 0])
        restarted = make_node("n1", self.IDS, now=100.0)
        restarted.restore(100.0, node.durable_state())
        self.assertEqual(restarted.durable_state(), node.durable_state())
        self.assertEqual(
            restarted.receive(100.0, "n2", ["vote", 3, 0, 0]), [("n2", ["voted", 3, False])]
        )
        self.assertEqual(
            restarted.receive(100.0, "n0", ["vote", 3, 0, 0]), [("n0", ["voted", 3, True])]
        )

    def test_restored_node_asks_for_prevotes_sooner(self) -> None:
        """
        A restored node asks its peers for pre-votes within half an
        election timeout of its restart, rather than a whole one: no node
        has a leader to hear after a whole-cluster restart.
        """
        node = make_node("n1", self.IDS)
        restarted = make_node("n1", self.IDS, now=100.0)
        restarted.restore(100.0, node.durable_state())
        self.assertEqual(
            sorted(restarted.tick(100.0 + TIMEOUT / 2)),
            [(peer, ["prevote", 1, 0, 0]) for peer in ("n0", "n2")],
        )

    def test_restored_entry(self) -> None:
        """
        A restored node holds its entry, committed if it was, and votes only
        for candidates whose entry is as new; what its peers report does
        not hold it back.
        """
        nodes = {n: make_node(n, self.IDS) for n in self.IDS}
        elect(nodes, "n0", TIMEOUT, ["n1", "n2"])
        leader = nodes["n0"]
        _exchange(nodes, "n0", TIMEOUT, ["n1", "n2"], dict(leader.propose(TIMEOUT, numbered_map(1))))
        _exchange(nodes, "n0", TIMEOUT, ["n1", "n2"], dict(leader.tick(TIMEOUT + 1)))
        state = nodes["n1"].durable_state()
        restarted = make_node("n1", self.IDS, now=100.0)
        restarted.restore(100.0, state)
        self.assertEqual(number_of(restarted.committed), 1)
        self.assertEqual(restarted.entry, nodes["n1"].entry)
        index, entry_term = restarted.entry
        term = restarted.term
        restarted.observe(100.0, "n2", term + 5, [index, entry_term])
        self.assertEqual(
            restarted.receive(100.0, "n2", ["vote", term + 1, 0, 0]),
            [("n2", ["voted", term + 1, False])],
        )
        self.assertEqual(
            restarted.receive(100.0, "n2", ["vote", term + 2, index, entry_term]),
            [("n2", ["voted", term + 2, True])],
        )


def roster_map(number: int, roster: Roster) -> ClusterMap:
    """
    L{numbered_map} C{number} holding the membership C{roster}.
    """
    return ClusterMap(numbered_map(number).partitions, roster)


class MembershipTests(SynchronousTestCase):
    """
    The voters are those of the newest entry stored, committed or not
    (Raft's single-server changes): learners hear the leader but count for
    nothing, and a leader that commits its own removal steps down.
    """

    def setUp(self) -> None:
        self.five = Roster(
            NodeConfig(node_id=f"n{i}", host="h", http_port=1, peer_port=2, ftp_port=3)
            for i in range(5)
        )
        self.four = Roster(self.five.nodes[:4])

    def test_learner_neither_counts_nor_campaigns(self) -> None:
        """
        A learner gets the leader's appends, but its acknowledgement commits
        nothing and it never starts an election.
        """
        learning = Roster(self.five.nodes, Change(ADD, "n4"))
        router = Router(5, 1)
        router.nodes["n4"] = make_node("n4", ["n0", "n1", "n2", "n3"], 0.0, 1)
        router.partition(["n4"], ["n0", "n1", "n2", "n3"])
        self.assertTrue(router.run_until(lambda: len(router.current_leaders()) == 1, 3 * TIMEOUT))
        leader = router.current_leaders()[0]
        router.heal()
        router.send(leader, router.nodes[leader].propose(router.now, roster_map(1, learning)))
        router.run(5 * STEP)
        self.assertEqual(router.nodes["n4"].committed, roster_map(1, learning))
        self.assertFalse(router.nodes["n4"].votes)
        # With two of the four voters cut off, the learner's acknowledgement
        # does not make a majority.
        others = [n for n in ("n0", "n1", "n2", "n3") if n != leader][:2]
        router.partition([n for n in router.ids if n not in others], others)
        router.send(leader, router.nodes[leader].propose(router.now, roster_map(2, learning)))
        router.run(5 * STEP)
        self.assertEqual(number_of(router.nodes[leader].committed), 1)
        router.heal()
        router.partition(["n4"], ["n0", "n1", "n2", "n3"])
        router.run(5 * TIMEOUT)
        self.assertNotEqual(router.nodes["n4"].role, CANDIDATE)
        self.assertNotEqual(router.nodes["n4"].role, LEADER)

    def test_new_voters_count_once_stored(self) -> None:
        """
        An entry adding a voter needs a majority of the new voters: three of
        four, not two.
        """
        first = ["n0", "n1", "n2"]
        nodes = {n: make_node(n, first, 0.0) for n in ("n0", "n1", "n2", "n3")}
        elect(nodes, "n0", TIMEOUT, ["n1", "n2"])
        leader = nodes["n0"]
        voting = Roster(self.four.nodes, Change(ADD, "n3", True))
        sent = dict(leader.propose(TIMEOUT, roster_map(1, voting)))
        self.assertEqual(leader.majority, 3)
        self.assertFalse(leader.may_change_membership())
        (_, reply), = nodes["n1"].receive(TIMEOUT, "n0", sent["n1"])
        leader.receive(TIMEOUT, "n1", reply)
        self.assertIsNone(leader.committed)
        (_, reply), = nodes["n3"].receive(TIMEOUT, "n0", sent["n3"])
        leader.receive(TIMEOUT, "n3", reply)
        self.assertEqual(leader.committed, roster_map(1, voting))
        self.assertTrue(leader.may_change_membership())

    def test_removed_leader_steps_down(self) -> None:
        """
        A leader that removes itself counts only the remaining voters, then
        steps down and campaigns no more; the others elect a leader.
        """
        router = Router(5, 3)
        self.assertTrue(router.run_until(router.settled_leader, 3 * TIMEOUT))
        leader = router.settled_leader()
        without = Roster(n for n in self.five.nodes if n.node_id != leader)
        router.send(leader, router.nodes[leader].propose(router.now, roster_map(1, without)))
        router.run(5 * STEP)
        self.assertEqual(router.nodes[leader].role, FOLLOWER)
        self.assertEqual(router.nodes[leader].committed, roster_map(1, without))
        # The others elect a leader at once, not after an election timeout.
        self.assertTrue(router.run_until(lambda: len(router.current_leaders()) == 1, TIMEOUT / 2))
        self.assertNotEqual(router.current_leaders(), [leader])
        router.run(5 * TIMEOUT)
        self.assertNotEqual(router.nodes[leader].role, CANDIDATE)
        self.assertEqual(len(router.current_leaders()), 1)
        self.assertNotIn(leader, router.current_leaders())
