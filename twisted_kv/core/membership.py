# -*- test-case-name: tests.test_membership -*-
"""
Failure detection: which nodes are alive, suspect or dead, by when each was
last heard from, and in which incarnation.

Every message from a peer counts as a heartbeat (nodes also gossip a small
status message to each other several times a second).  A node not heard from
for half the failure timeout is suspect; for the whole timeout, dead.  A node
that restarts has a new incarnation (L{new_incarnation}, chosen at start-up),
so the cluster can tell "back after a blip" from "back empty".
"""

from __future__ import annotations

from typing import Iterable, Optional

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"

# Random low bits of an incarnation, below the start time in milliseconds:
# 2**43 ms last until the year 2248 within 63 bits.
INCARNATION_RANDOM_BITS = 20


def new_incarnation(now: float, noise: int) -> int:
    """
    The incarnation of a node process started at C{now} (Unix time): the
    start time in milliseconds, then the low bits of C{noise}, a random
    number.  A node's later run has the larger incarnation (unless its clock
    went back by more than its downtime), so an incarnation older than one
    seen since proves that process gone with its memory
    (L{twisted_kv.core.placement.is_lost}); two runs started in the same
    millisecond still differ.
    """
    return int(now * 1000) << INCARNATION_RANDOM_BITS | noise & ((1 << INCARNATION_RANDOM_BITS) - 1)


class Membership:
    """
    The failure detector's table.

    @ivar info: the latest status gossip of each node (a dict), for C{/cluster}.
    """

    def __init__(
        self, node_ids: Iterable[str], self_id: str, incarnation: int, failure_timeout: float
    ) -> None:
        self._self = self_id
        self._timeout = failure_timeout
        self._heard: dict[str, float] = {}
        self._incarnations: dict[str, int] = {self_id: incarnation}
        self.node_ids = list(node_ids)
        self.info: dict[str, dict] = {}
        # the nodes reported down (never heard from counts), until heard again
        self._down = set(self.node_ids) - {self_id}

    def set_nodes(self, node_ids: Iterable[str]) -> None:
        """
        Watch C{node_ids} from now on, as the cluster's membership changed:
        a new node counts as down until heard from.
        """
        node_ids = list(node_ids)
        self._down |= set(node_ids) - set(self.node_ids) - {self._self}
        self.node_ids = node_ids

    def heard(self, node_id: str, incarnation: int, now: float) -> bool:
        """
        Record a sign of life.

        @return: whether the node is newly up: heard from for the first
            time, again after L{newly_dead} reported it, or in a new
            incarnation.
        """
        self._heard[node_id] = now
        restarted = self._incarnations.get(node_id) != incarnation
        self._incarnations[node_id] = incarnation
        came_back = node_id in self._down
        self._down.discard(node_id)
        return restarted or came_back

    def newly_dead(self, now: float) -> list[str]:
        """
        The nodes found dead since they were last up, each reported once
        until L{heard} from again: the "down" counterpart of L{heard}'s
        answer.
        """
        dead = [
            node
            for node in self.node_ids
            if node not in self._down and self.state(node, now) == DEAD
        ]
        self._down.update(dead)
        return dead

    def state(self, node_id: str, now: float) -> str:
        if node_id == self._self:
            return ALIVE
        heard = self._heard.get(node_id)
        if heard is None or now - heard >= self._timeout:
            return DEAD
        if now - heard >= self._timeout / 2:
            return SUSPECT
        return ALIVE

    def silent_for(self, node_id: str, now: float) -> Optional[float]:
        """
        Seconds since C{node_id} was last heard from: 0 for this node,
        C{None} for a node never heard from.
        """
        if node_id == self._self:
            return 0.0
        heard = self._heard.get(node_id)
        return None if heard is None else now - heard

    def incarnation(self, node_id: str) -> Optional[int]:
        return self._incarnations.get(node_id)

    def live_count(self, now: float) -> int:
        """
        How many nodes are not dead: L{live} without building its dict, for
        the check made on every request.
        """
        never = float("-inf")
        return sum(
            1
            for node in self.node_ids
            if node == self._self or now - self._heard.get(node, never) < self._timeout
        )

    def live(self, now: float) -> dict[str, int]:
        """
        The incarnation of every node not dead.
        """
        return {
            node: self._incarnations[node]
            for node in self.node_ids
            if self.state(node, now) != DEAD and node in self._incarnations
        }
