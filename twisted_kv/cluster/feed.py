# -*- test-case-name: tests.test_feed -*-
"""
The change feed: committed changes, numbered by the leader, delivered in
the same order on every node.

A primary hands the changes its partitions commit to the leader in batches
(C{pub}); they stay queued until the leader confirms (C{pub_ok}), and go
again to a new leader.  The leader numbers each batch with revisions of its
term and forwards the same bytes, undecoded, to every node (C{ev}), itself
included.  A node drops what it has already delivered, and marks a change
following revisions it missed as following a gap, so that watchers re-read.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from typing import Callable

from twisted_kv.core import messages
from twisted_kv.core.consensus import LEADER, Consensus
from twisted_kv.core.replica import RECENT_CHANGES, Entry, decode_change, encode_change
from twisted_kv.interfaces import REVISION_TERM_SHIFT, ChangeEvent
from twisted_kv.wire.codec import decode as decode_message
from twisted_kv.wire.codec import encode as encode_message

# Bytes of confirmed change batches a node keeps to hand to a new leader, in
# case the old one died before sending them to every node (at most
# RECENT_CHANGES changes, as many as nodes remember to drop repeats).
RECENTLY_PUBLISHED_BYTES = 1 << 20


class _RecentBatches:
    """
    The change batches a node published last, up to RECENT_CHANGES changes
    (as many as nodes remember to drop repeats) and
    RECENTLY_PUBLISHED_BYTES bytes, oldest dropped first.
    """

    def __init__(self) -> None:
        self._batches: deque[tuple[int, bytes]] = deque()
        self._changes = 0
        self._bytes = 0

    def add(self, batch: tuple[int, bytes]) -> None:
        self._batches.append(batch)
        self._changes += batch[0]
        self._bytes += len(batch[1])
        while self._changes > RECENT_CHANGES or self._bytes > RECENTLY_PUBLISHED_BYTES:
            count, changes = self._batches.popleft()
            self._changes -= count
            self._bytes -= len(changes)

    def take(self) -> list[tuple[int, bytes]]:
        """
        Every batch kept, oldest first; none is kept afterwards.
        """
        batches = list(self._batches)
        self._batches.clear()
        self._changes = self._bytes = 0
        return batches


class ChangeFeed:
    """
    One node's part of the change feed: its batches on their way to the
    leader, the leader's numbering, and delivery to the listeners.

    @ivar last_revision: the last revision delivered here.
    """

    def __init__(
        self,
        *,
        consensus: Consensus,
        send: Callable[[str, list], bool],
        partition_of: Callable[[str], int],
        partitions: int,
    ) -> None:
        """
        @param consensus: tells who leads, in which term, and the peers.
        @param send: sends a message to a node (this one included).
        @param partition_of: the partition of a key.
        @param partitions: how many partitions there are.
        """
        self._consensus = consensus
        self._send = send
        self._partition_of = partition_of
        self._listeners: list[Callable[[ChangeEvent], None]] = []
        # batch id -> (number of changes, their encoding)
        self._unpublished: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._published_recently = _RecentBatches()
        self._publish_ids = itertools.count(1)
        self._published_to: tuple[str, int] | None = None
        self._last_sent_batch = 0
        self._revision_counter = 0
        self._revision_term = 0
        self._revision_previous = 0
        self.last_revision = 0
        self._gap_pending = False
        # the last revision each peer reports having delivered
        self._peer_revisions: dict[str, int] = {}
        # per partition, the last version delivered of its most recently
        # changed keys: as many as a new primary announces again
        self._delivered: list[OrderedDict[str, int]] = [OrderedDict() for _ in range(partitions)]

    def subscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        self._listeners.remove(listener)

    def peer_delivered(self, peer: str, revision: int) -> None:
        """
        C{peer} reports having delivered up to C{revision}.
        """
        self._peer_revisions[peer] = revision

    def gap(self) -> None:
        """
        Changes were lost without events (a partition lost every copy): the
        next change delivered follows a gap.
        """
        self._gap_pending = True

    # -- a primary's side --------------------------------------------------

    def queue(self, entries: list[Entry]) -> None:
        """
        Queue the changes of committed C{entries} for the leader; they leave
        with the next L{publish}.
        """
        # Encoded once, here: the leader forwards these bytes to every node.
        changes = encode_message([encode_change(e.change) for e in entries])
        self._unpublished[next(self._publish_ids)] = (len(entries), changes)

    def publish(self) -> None:
        """
        Hand committed changes to the leader, which numbers them; they stay
        queued until the leader confirms, and go again to a new leader.
        """
        leader = self._consensus.leader
        if leader is None:
            return
        target = (leader, self._consensus.term)
        if target != self._published_to:
            self._published_to = target
            self._requeue_published_recently()
            batches = list(self._unpublished.items())
        else:
            batches = [item for item in self._unpublished.items() if item[0] > self._last_sent_batch]
        for batch_id, (count, changes) in batches:
            self._send(leader, messages.publish(batch_id, count, changes))
            self._last_sent_batch = batch_id

    def republish(self) -> None:
        """
        A new leader: send it every batch it has not confirmed.
        """
        self._published_to = None
        self.publish()

    def on_published(self, peer: str, message: list) -> None:
        batch = self._unpublished.pop(messages.parse_published(message), None)
        if batch is not None:
            self._published_recently.add(batch)

    def _requeue_published_recently(self) -> None:
        """
        Queue the recently confirmed batches again, ahead of the unconfirmed
        ones: the leader that confirmed them may have died before sending
        them to every node.  Nodes drop the changes they already have.
        """
        recent = self._published_recently.take()
        if recent:
            batches = [*recent, *self._unpublished.values()]
            self._unpublished = OrderedDict((next(self._publish_ids), b) for b in batches)

    # -- the leader's side -------------------------------------------------

    def on_publish(self, peer: str, message: list) -> None:
        batch_id, count, changes = messages.parse_publish(message)
        if self._consensus.role != LEADER:
            return
        if self._revision_term != self._consensus.term:
            # A new leader continues from the newest change it delivered.
            # One that delivered none (it restarted) continues from the
            # newest its peers report: 0 would tell every node that starts
            # with its changes that they are the cluster's first.
            self._revision_term = self._consensus.term
            self._revision_counter = 0
            self._revision_previous = self.last_revision or max(
                self._peer_revisions.values(), default=0
            )
        first = (self._revision_term << REVISION_TERM_SHIFT) | (self._revision_counter + 1)
        self._revision_counter += count
        previous, self._revision_previous = self._revision_previous, first + count - 1
        event = messages.events(first, changes, previous)
        for node in self._consensus.peers:
            self._send(node, event)
        self._receive(first, changes, previous)
        self._send(peer, messages.published(batch_id))

    # -- every node's side -------------------------------------------------

    def on_events(self, peer: str, message: list) -> None:
        self._receive(*messages.parse_events(message))

    def _receive(self, first: int, changes: bytes, previous: int) -> None:
        """
        Deliver a batch the leader numbered from C{first}; C{previous} is the
        revision the leader numbered before it.
        """
        if previous != self.last_revision and first > self.last_revision:
            self._gap_pending = True
        for revision, data in enumerate(decode_message(changes), first):
            self._deliver(revision, data, previous)
            previous = revision

    def _deliver(self, revision: int, data: list, previous: int) -> None:
        """
        Hand one numbered change to the listeners, unless it is older than
        what they have seen (a batch resent to a new leader, or a change a
        new primary announces again).  A new primary announces its partition's
        last L{RECENT_CHANGES} changes, so remembering the last version of as
        many keys per partition recognises every one already delivered.

        @param data: the change as L{encode_change} put it (kind, key,
            version, ...); it becomes a L{Change} only for listeners.
        @param previous: the revision the leader numbered before it.
        """
        if revision <= self.last_revision:
            return
        self.last_revision = revision
        key, version = data[1], data[2]
        delivered = self._delivered[self._partition_of(key)]
        if delivered.get(key, -1) >= version:
            return
        delivered[key] = version
        delivered.move_to_end(key)
        if len(delivered) > RECENT_CHANGES:
            delivered.popitem(last=False)
        gap, self._gap_pending = self._gap_pending, False
        if self._listeners:
            event = ChangeEvent(decode_change(data), revision, gap, previous)
            for listener in list(self._listeners):
                listener(event)
