# -*- test-case-name: tests.test_consensus -*-
"""
Election of the partition leader and replication of the cluster map.

This is Raft (Ongaro and Ousterhout, 2014) specialised to a log whose every
entry is a complete L{ClusterMap}: since each entry replaces the whole state,
a follower only keeps the latest entry, and "log matching" reduces to
comparing the (index, term) of that one entry.  The rules kept from Raft:

  - terms, randomised election timeouts, one vote per term;
  - a vote only for a candidate whose entry is at least as up to date;
  - an entry is committed once a majority of the voters stores it, and only
    entries of the leader's own term are committed by counting (a new leader
    re-proposes the map it has, as its first entry);
  - pre-vote (a node first asks whether it could win, without raising its
    term), leader stickiness (a node that heard from a leader within the
    minimum election timeout ignores vote requests) and check-quorum (a
    leader that has not heard from a majority for an election timeout steps
    down), so a partitioned node neither disrupts nor lingers as leader;
  - a follower only ever replaces its entry with a newer one; one that has
    stopped hearing from the leader may take a newer committed entry from
    any peer (L{Consensus.adopt_committed}), since every later leader
    holds it.

The voters are those of the membership (L{twisted_kv.core.roster.Roster})
in the newest entry a node stores, committed or not, as Raft's
single-server changes have it; the file's nodes until an entry carries one.
A learner hears the leader but counts for nothing and never campaigns; a
leader proposes a change of voters only once its entry is committed and of
its own term (L{Consensus.may_change_membership}); a leader that commits its
own removal steps down, and its followers then elect another at once
(docs/design.md §1.10).

With C{data_dir}, the node keeps its term, vote and entry on disk
(L{Consensus.durable_state}, written and fsynced before any output that
follows a change of it is sent) and comes back with them
(L{Consensus.restore}): Raft's own rules then hold as they are, and the
cautions below are not needed.

Without it, state is in memory only, so a restarted node may have voted,
before it crashed, in a term it no longer remembers.  It therefore never votes in a
term it may have voted in: it does not vote for half an election timeout
after it starts (its peers' status gossip arrives well within it), nor, until
it hears from a leader, in any term up to the highest its peers report
(L{Consensus.observe}).

A restarted node has also forgotten its entry, and Raft's argument that a
committed entry reaches every later leader rests on each voter remembering
its own: a majority stores the entry, and any majority of voters includes one
of them.  So until it hears from a leader, a node votes only for a candidate
whose entry is at least as new as its own and as every entry its peers
reported in their status gossip during the last election timeout.  While at
most a minority has restarted, some node that stores the newest committed
entry is up and gossips it, so the restarted voters hold out for it just as
it would.  When a majority restarted, the newest entry still held anywhere
wins, so a leader is elected as soon as a majority runs (an entry that every
holder lost is lost, as the data it described); the window of reports keeps
a node that heard of an entry whose holders died since from waiting for it
for ever.

Messages (built and parsed by L{twisted_kv.core.messages}): C{prevote} and
C{vote}, answered by C{prevoted} and C{voted}; the leader's C{append},
answered by C{appended}.  The map travels only in an C{append} to a follower
not known to hold the entry.

The class is pure: every input takes C{now}, and outputs are returned as a
list of C{(peer_id, message)} to send.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

from twisted_kv.core import messages
from twisted_kv.core.placement import ClusterMap, decode_map, encode_map

FOLLOWER = "follower"
CANDIDATE = "candidate"
LEADER = "leader"

Outgoing = list[tuple[str, list]]

DurableState = tuple[int, Optional[str], int, int, Optional[list], int]
"""
What a node must remember across a restart: C{(term, voted_for, index,
entry_term, wire_map, commit_index)}.
"""


class Consensus:
    """
    One node's view of the election and of the cluster map.

    @ivar term: the current term.
    @ivar leader: the id of the leader of the current term, if known.
    @ivar committed: the latest committed cluster map, if any.
    """

    def __init__(
        self,
        node_id: str,
        voters: Sequence[str],
        *,
        now: float,
        election_timeout: float,
        heartbeat_interval: float,
        rng: random.Random,
    ) -> None:
        self.node_id = node_id
        self._first_voters = tuple(voters)
        self._members(self._first_voters, self._first_voters)
        self._timeout = election_timeout
        self._heartbeat = heartbeat_interval
        self._rng = rng
        self.term = 0
        self.role = FOLLOWER
        self.leader: Optional[str] = None
        self.committed: Optional[ClusterMap] = None
        self._voted_for: Optional[str] = None
        self._votes: set[str] = set()
        self._entry: tuple[int, int] = (0, 0)
        self._entry_map: Optional[ClusterMap] = None
        self._entry_wire: Optional[list] = None
        self._commit_index = 0
        self._votes_allowed_at = now + election_timeout / 2
        self._no_votes_up_to = 0
        self._heard_leader = False
        # peer -> ((term, index) of its entry, when it reported it)
        self._reported: dict[str, tuple[tuple[int, int], float]] = {}
        self._prevotes: set[str] = set()
        self._prevote_term = 0
        self._leader_contact = float("-inf")
        self._deadline = now + self._random_timeout()
        self._next_heartbeat = 0.0
        self._leader_since = 0.0
        self._acked: dict[str, tuple[int, int]] = {}
        self._heard: dict[str, float] = {}
        # Restarted without its state: the cautions of the module docstring.
        self._amnesiac = True

    def _members(self, voters: Sequence[str], members: Sequence[str]) -> None:
        """
        Take the membership of the newest entry stored, committed or not, as
        Raft's single-server changes do: the voters are who counts for
        votes and commits, the peers every other member (learners too),
        who hear the leader's appends.
        """
        self.voters = frozenset(voters)
        self.peers = [peer for peer in members if peer != self.node_id]
        self._voting_peers = [peer for peer in self.peers if peer in self.voters]
        self.majority = len(self.voters) // 2 + 1

    @property
    def votes(self) -> bool:
        """
        Whether this node is a voter of the membership it knows.
        """
        return self.node_id in self.voters

    def durable_state(self) -> DurableState:
        """
        The state a node must have on stable storage before it sends any
        output that follows a change of it: its term and vote (or it could
        vote twice in a term) and its entry (or it could vote for a
        candidate lacking an entry it helped commit).  Compared by value.
        """
        return (self.term, self._voted_for, *self._entry, self._entry_wire, self._commit_index)

    def restore(self, now: float, state: DurableState) -> None:
        """
        Come back with the state L{durable_state} gave before a restart: the
        node remembers its vote and entry, so it votes by Raft's rules at
        once, with none of the cautions an amnesiac node needs.
        """
        self.term, self._voted_for, index, entry_term, wire, commit_index = state
        if wire is not None:
            self._store(index, entry_term, decode_map(wire), wire)
            if commit_index == index:
                self._commit()
        self._amnesiac = False
        self._votes_allowed_at = now
        # Its first pre-vote comes sooner: after a whole-cluster restart no
        # node has a leader to hear, and asking early disrupts none (a peer
        # that hears a leader refuses its pre-vote, and its term stays).
        # Not at once: its links to its peers take a moment to come up.
        self._deadline = now + self._rng.uniform(self._timeout / 4, self._timeout / 2)

    def _random_timeout(self) -> float:
        return self._rng.uniform(self._timeout / 2, self._timeout)

    @property
    def latest_map(self) -> Optional[ClusterMap]:
        """
        The newest map this node stores, committed or not.
        """
        return self._entry_map

    @property
    def committed_index(self) -> int:
        """
        The index of the latest committed entry (0 before any).
        """
        return self._commit_index

    def committed_entry(self) -> Optional[list]:
        """
        C{[index, term, map]} of the latest committed entry, in wire form,
        for a peer that missed it (see L{adopt_committed}); C{None} if this
        node has none, or holds a newer entry instead.
        """
        if self._commit_index == 0 or self._entry[0] != self._commit_index:
            return None
        return [*self._entry, self._entry_wire]

    def adopt_committed(self, index: int, entry_term: int, wire_map: list) -> bool:
        """
        Take a committed entry that a peer relays, as a follower that has
        stopped hearing from the leader (but not from that peer) would need.
        A committed entry is in the log of every later leader, so storing it
        contradicts nothing a leader may send; a newer entry of our own is
        kept.

        @return: whether the entry became this node's committed map.
        """
        if self.role == LEADER or index <= self._commit_index:
            return False
        if (entry_term, index) > (self._entry[1], self._entry[0]):
            self._store(index, entry_term, decode_map(wire_map), wire_map)
        elif (index, entry_term) != self._entry:
            return False
        self._commit()
        return True

    @property
    def entry(self) -> tuple[int, int]:
        """
        C{(index, term)} of the newest entry this node stores, for its
        status gossip (L{observe}).
        """
        return self._entry

    def observe(self, now: float, peer: str, term: int, entry: Sequence[int]) -> None:
        """
        C{peer} reports its current term and the C{(index, term)} of its
        entry (status gossip); until this node hears from a leader, it will
        not vote in that term or an earlier one, nor for a candidate whose
        entry is older than the reported one (for an election timeout).
        """
        if self._amnesiac and not self._heard_leader:
            self._no_votes_up_to = max(self._no_votes_up_to, term)
        index, entry_term = entry
        self._reported[peer] = ((entry_term, index), now)

    def _newest_entry_known(self, now: float) -> tuple[int, int]:
        """
        The newest C{(term, index)} a candidate's entry must match: our own
        entry's, and until we hear from a leader, those our peers reported
        recently (see the module docstring).
        """
        newest = (self._entry[1], self._entry[0])
        if self._heard_leader or not self._amnesiac:
            return newest
        recent = now - self._timeout
        return max(
            [newest, *(entry for entry, when in self._reported.values() if when >= recent)]
        )

    def _may_vote(self, now: float, term: int, index: int, entry_term: int) -> bool:
        """
        The rules common to votes and pre-votes (see the module docstring).
        """
        return (
            now >= self._votes_allowed_at
            and term > self._no_votes_up_to
            and (entry_term, index) >= self._newest_entry_known(now)
        )

    def tick(self, now: float) -> Outgoing:
        """
        Let time pass: start elections, send heartbeats, step down.
        """
        if self.role == LEADER:
            recent = sum(
                1 for peer in self._voting_peers if self._heard.get(peer, -1e300) >= now - self._timeout
            )
            if recent + self.votes < self.majority and now - self._leader_since >= self._timeout:
                self._become_follower(now, None)
                return []
            if now >= self._next_heartbeat:
                return self._broadcast_append(now)
            return []
        if now >= self._deadline and self.votes:
            return self._start_prevote(now)
        return []

    def propose(self, now: float, cluster_map: ClusterMap) -> Outgoing:
        """
        As leader, replicate C{cluster_map} as the next entry.
        """
        assert self.role == LEADER, "only the leader proposes"
        self._store(self._entry[0] + 1, self.term, cluster_map)
        self._advance_commit(now)
        return self._broadcast_append(now)

    def receive(self, now: float, sender: str, message: list) -> Outgoing:
        """
        Handle one message from C{sender}.
        """
        tag, term = message[0], messages.consensus_term(message)
        if tag == messages.PREVOTE:
            return self._on_prevote(now, sender, *messages.parse_ballot(message))
        if tag == messages.PREVOTED:
            return self._on_prevoted(now, sender, *messages.parse_ballot_answer(message))
        if tag == messages.VOTE and now - self._leader_contact < self._timeout / 2:
            return []
        if term > self.term:
            self.term = term
            self._voted_for = None
            if self.role != FOLLOWER or self.leader is not None:
                self._become_follower(now, None)
        if tag == messages.VOTE:
            return self._on_vote(now, sender, *messages.parse_ballot(message))
        if tag == messages.VOTED:
            return self._on_voted(now, sender, *messages.parse_ballot_answer(message))
        if tag == messages.APPEND:
            return self._on_append(now, sender, *messages.parse_map_append(message))
        return self._on_appended(now, sender, *messages.parse_map_appended(message))

    def _on_prevote(self, now: float, sender: str, term: int, index: int, entry_term: int) -> Outgoing:
        granted = (
            term > self.term
            and now - self._leader_contact >= self._timeout / 2
            and self._may_vote(now, term, index, entry_term)
        )
        return [(sender, messages.prevoted(term, granted))]

    def _on_prevoted(self, now: float, sender: str, term: int, granted: bool) -> Outgoing:
        if self.role != LEADER and term == self._prevote_term and granted and sender in self.voters:
            self._prevotes.add(sender)
            if len(self._prevotes) >= self.majority:
                self._prevote_term = 0
                return self._start_election(now)
        return []

    def _on_vote(self, now: float, sender: str, term: int, index: int, entry_term: int) -> Outgoing:
        granted = (
            term == self.term
            and self._voted_for in (None, sender)
            and self._may_vote(now, term, index, entry_term)
        )
        if granted:
            self._voted_for = sender
            self._deadline = now + self._random_timeout()
        return [(sender, messages.voted(self.term, granted))]

    def _on_voted(self, now: float, sender: str, term: int, granted: bool) -> Outgoing:
        if self.role == CANDIDATE and term == self.term and granted and sender in self.voters:
            self._votes.add(sender)
            if len(self._votes) >= self.majority:
                return self._become_leader(now)
        return []

    def _on_append(
        self,
        now: float,
        sender: str,
        term: int,
        index: int,
        entry_term: int,
        wire_map: Optional[list],
        commit_index: int,
    ) -> Outgoing:
        if term < self.term:
            return [(sender, messages.map_appended(self.term, False, *self._entry))]
        if self.leader != sender:
            self._become_follower(now, sender)
        self._leader_contact = now
        self._heard_leader = True
        self._deadline = now + self._random_timeout()
        if wire_map is not None and (entry_term, index) > (self._entry[1], self._entry[0]):
            self._store(index, entry_term, decode_map(wire_map), wire_map)
        ok = (index, entry_term) == self._entry
        if ok and commit_index >= index:
            self._commit()
            if sender not in self.voters:
                # The leader committed its own removal and steps down: elect
                # another now rather than after a silent election timeout.
                self.leader = None
                self._leader_contact = float("-inf")
                self._deadline = now + self._rng.uniform(0, self._timeout / 4)
        return [(sender, messages.map_appended(self.term, ok, *self._entry))]

    def _on_appended(
        self, now: float, sender: str, term: int, ok: bool, index: int, entry_term: int
    ) -> Outgoing:
        if self.role != LEADER or term != self.term:
            return []
        self._heard[sender] = now
        self._acked[sender] = (index, entry_term)
        before = self._commit_index
        self._advance_commit(now)
        if self._commit_index != before:
            # Tell followers at once, so they act on the new map promptly
            # (a leader that just committed its own removal tells them too).
            return self._broadcast_append(now)
        return []

    def _store(self, index: int, term: int, cluster_map: ClusterMap, wire: Optional[list] = None) -> None:
        self._entry = (index, term)
        self._entry_map = cluster_map
        self._entry_wire = wire if wire is not None else encode_map(cluster_map)
        roster = cluster_map.roster
        if roster is None:
            self._members(self._first_voters, self._first_voters)
        else:
            self._members(roster.voters, roster.ids)

    def _commit(self) -> None:
        self._commit_index = self._entry[0]
        self.committed = self._entry_map

    def may_change_membership(self) -> bool:
        """
        Whether, as leader, this node may propose a map whose voters differ
        from its entry's: only once that entry is committed and of its own
        term, so that at most one change of voters is ever uncommitted and
        no change races one a previous leader left uncommitted (the
        correction to single-server changes, Ongaro 2015).
        """
        return self.role == LEADER and self._commit_index == self._entry[0] and self._entry[1] == self.term

    def _advance_commit(self, now: float) -> None:
        if self._entry[1] != self.term or self._entry_map is None:
            return
        holders = self.votes + sum(
            1 for peer in self._voting_peers if self._acked.get(peer) == self._entry
        )
        if holders >= self.majority:
            self._commit()
            if not self.votes:
                # Its own removal is committed: the others elect a leader
                # among themselves (Raft's leader outside the new
                # configuration steps down once it commits it).
                self._become_follower(now, None)

    def _start_prevote(self, now: float) -> Outgoing:
        """
        Ask whether we could win the next term before raising our term, so
        that a node that cannot win (cut off, or behind) disrupts nobody.
        """
        self._deadline = now + self._random_timeout()
        self.leader = None
        self._prevote_term = self.term + 1
        self._prevotes = {self.node_id}
        if len(self._prevotes) >= self.majority:
            return self._start_election(now)
        message = messages.prevote(self._prevote_term, *self._entry)
        return [(peer, message) for peer in self._voting_peers]

    def _start_election(self, now: float) -> Outgoing:
        self.term += 1
        self.role = CANDIDATE
        self.leader = None
        self._voted_for = self.node_id
        self._votes = {self.node_id}
        self._deadline = now + self._random_timeout()
        if len(self._votes) >= self.majority:
            return self._become_leader(now)
        message = messages.vote(self.term, *self._entry)
        return [(peer, message) for peer in self._voting_peers]

    def _become_leader(self, now: float) -> Outgoing:
        self.role = LEADER
        self.leader = self.node_id
        self._leader_since = now
        self._acked = {}
        self._heard = {}
        if self._entry_map is not None:
            # Raft commits earlier terms' entries only through one of its own.
            return self.propose(now, self._entry_map)
        return self._broadcast_append(now)

    def _become_follower(self, now: float, leader: Optional[str]) -> None:
        self.role = FOLLOWER
        self.leader = leader
        self._deadline = now + self._random_timeout()

    def _broadcast_append(self, now: float) -> Outgoing:
        self._next_heartbeat = now + self._heartbeat
        out: Outgoing = []
        for peer in self.peers:
            wire = None if self._acked.get(peer) == self._entry else self._entry_wire
            out.append(
                (peer, messages.map_append(self.term, *self._entry, wire, self._commit_index))
            )
        return out
