# -*- test-case-name: tests.test_members -*-
"""
Membership changes asked of the cluster: forwarded to the partition leader,
which checks them against the membership it holds and puts them in the next
map it proposes (L{twisted_kv.core.roster} has the rules); the asker is
answered once that map is committed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred, fail

from twisted_kv.cluster.calls import Calls, Retry
from twisted_kv.core import messages
from twisted_kv.core.config import ClusterConfig
from twisted_kv.core.roster import (
    ADD,
    REMOVE,
    Roster,
    decode_roster,
    encode_roster,
    node_from_fields,
    request_add,
    request_remove,
)
from twisted_kv.errors import InvalidRequest, KVError, OutcomeUnknown, Unavailable

RosterChange = Callable[[Roster], Roster]


class MembershipChanges:
    """
    The changes asked of this node, and, as leader, those it has yet to
    propose or to see committed.
    """

    def __init__(
        self,
        *,
        base: ClusterConfig,
        calls: Calls,
        leader: Callable[[], Optional[str]],
        node_id: str,
        roster: Callable[[], Roster],
        timeout: float,
    ) -> None:
        """
        @param base: the cluster file's settings.
        @param leader: the partition leader, if known.
        @param roster: the membership of the newest map this node holds.
        @param timeout: how long a forwarded request may take.
        """
        self._base = base
        self._calls = calls
        self._leader = leader
        self._node_id = node_id
        self._roster = roster
        self._timeout = timeout
        self._queued: list[tuple[RosterChange, Deferred]] = []
        # proposed, awaiting commit: (the roster proposed, its asker)
        self._proposed: list[tuple[Roster, Deferred]] = []

    def ask(self, kind: str, node: Any) -> Deferred[Roster]:
        """
        Make the change C{kind} (L{ADD} with the node's
        L{NODE_FIELDS <twisted_kv.core.roster.NODE_FIELDS>}, L{REMOVE} with
        its id) through the leader; fires with the membership once the
        change is committed.
        """
        leader = self._leader()
        if leader is None:
            return fail(Unavailable("no partition leader is known; try again"))
        if leader == self._node_id:
            return self.submit(kind, node)
        d = self._calls.call(leader, messages.MemberRequest(kind, node), self._timeout)
        return d.addCallbacks(decode_roster, self._unsent)

    @staticmethod
    def _unsent(failure: Any) -> Any:
        if failure.check(CancelledError):
            raise OutcomeUnknown("the leader did not answer in time; the change may still be made")
        if failure.check(Retry):
            if failure.value.maybe_applied:
                raise OutcomeUnknown(f"the leader stopped answering: {failure.value}")
            raise Unavailable(f"the leader cannot be reached now: {failure.value}")
        return failure

    def on_request(self, peer: str, message: list) -> None:
        request_id, kind, node = messages.parse_member_request(message)
        self._calls.answer(peer, request_id, self.submit(kind, node), encode_roster)

    def submit(self, kind: str, node: Any) -> Deferred[Roster]:
        """
        As leader, check the change against the membership now and queue
        it for the next map (L{next_roster}).
        """
        if self._leader() != self._node_id:
            return fail(Unavailable("this node is no longer the partition leader; try again"))
        try:
            change = self._change(kind, node)
            change(self._roster())
        except KVError as e:
            return fail(e)
        d: Deferred[Roster] = Deferred()
        self._queued.append((change, d))
        return d

    def _change(self, kind: str, node: Any) -> RosterChange:
        if kind == ADD:
            new = node_from_fields(node)
            return lambda roster: request_add(roster, new)
        if kind == REMOVE and isinstance(node, str):
            return lambda roster: request_remove(roster, node, self._base)
        raise InvalidRequest(f"unknown membership change {kind!r}")

    def next_roster(self, roster: Roster) -> Roster:
        """
        The membership the leader's next map holds: C{roster} with the
        first queued change that still applies (the others are refused or
        wait: one change of voters per committed map).
        """
        while self._queued:
            change, d = self._queued.pop(0)
            try:
                changed = change(roster)
            except KVError as e:
                d.errback(e)
                continue
            self._proposed.append((changed, d))
            return changed
        return roster

    def committed(self, roster: Optional[Roster]) -> None:
        """
        A map holding C{roster} is committed: answer the askers whose change
        it holds.
        """
        done = [(proposed, d) for proposed, d in self._proposed if proposed == roster]
        for entry in done:
            self._proposed.remove(entry)
            entry[1].callback(roster)

    def lost_leadership(self) -> None:
        """
        This node stopped leading: what was queued was not proposed; what
        was proposed may still be committed by the next leader.
        """
        queued, self._queued = self._queued, []
        proposed, self._proposed = self._proposed, []
        for _, d in queued:
            d.errback(Unavailable("the partition leader changed; try again"))
        for _, d in proposed:
            d.errback(OutcomeUnknown("the partition leader changed; the change may still be made"))

    @property
    def waiting(self) -> bool:
        return bool(self._queued)

