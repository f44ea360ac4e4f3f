# -*- test-case-name: tests.test_feed -*-
"""
The change feed: committed changes, numbered by the leader, delivered in
the same order to every node that has listeners, and nowhere else.

A primary hands the changes its partitions commit to the leader in batches
(C{pub}); they stay queued until the leader confirms (C{pub_ok}), and go
again to a new leader.  The leader numbers each batch with revisions of its
term, keeps the numbered batches as they came (the cluster's one history,
in encoded form) and forwards the same bytes, undecoded, to the nodes that
subscribed (C{sub}) because something there listens (C{ev}), itself
included.  A node without listeners receives nothing.  A subscribed node
drops what it has already delivered, and marks a change following
revisions it missed as following a gap, so that watchers re-read.  A node
replays the changes after a revision by asking the leader for them
(C{rpl}), whose answer (C{rpl_ok}) is accepted only if it ends exactly
where the node's own stream is.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from typing import Callable, Optional

from twisted.internet.defer import Deferred, succeed

from twisted_kv.core import messages
from twisted_kv.core.consensus import LEADER, Consensus
from twisted_kv.core.replica import RECENT_CHANGES, Entry, decode_change, encode_change
from twisted_kv.interfaces import ChangeEvent, REVISION_TERM_SHIFT, revision_term
from twisted_kv.wire.codec import decode as decode_message
from twisted_kv.wire.codec import encode as encode_message

# Bytes of confirmed change batches a node keeps to hand to a new leader, in
# case the old one died before sending them to every node (at most
# RECENT_CHANGES changes, as many as nodes remember to drop repeats).
RECENTLY_PUBLISHED_BYTES = 1 << 20

# The leader's history of numbered changes, for replays: at most this many
# bytes of encoded batches (and at most the cluster's ws_history changes).
HISTORY_BYTES = 64 * 1024 * 1024

# A batch: (number of changes, their encoding, whether they may have been
# numbered before: sent to an earlier leader, or announced again by a new
# primary).
_Batch = tuple[int, bytes, bool]

# A replay's answer: the changes, or None when they cannot all be given;
# and the revision after which listeners get every change, None until
# known.
Replayed = tuple[Optional[list[ChangeEvent]], Optional[int]]


class _RecentBatches:
    """
    The change batches a node published last, up to RECENT_CHANGES changes
    (as many as nodes remember to drop repeats) and
    RECENTLY_PUBLISHED_BYTES bytes, oldest dropped first.
    """

    def __init__(self) -> None:
        self._batches: deque[_Batch] = deque()
        self._changes = 0
        self._bytes = 0

    def add(self, batch: _Batch) -> None:
        self._batches.append(batch)
        self._changes += batch[0]
        self._bytes += len(batch[1])
        while self._changes > RECENT_CHANGES or self._bytes > RECENTLY_PUBLISHED_BYTES:
            count, changes, _ = self._batches.popleft()
            self._changes -= count
            self._bytes -= len(changes)

    def take(self) -> list[_Batch]:
        """
        Every batch kept, oldest first; none is kept afterwards.
        """
        batches = list(self._batches)
        self._batches.clear()
        self._changes = self._bytes = 0
        return batches


class ChangeHistory:
    """
    Numbered batches of encoded changes, one leader's unbroken stream, kept
    as they came for replays: at most C{changes} changes and C{max_bytes}
    bytes, oldest dropped first.

    It holds every change after its C{floor} (the revision numbered just
    before its oldest batch) up to C{newest}, except that nothing at or
    below C{repeat_floor} may be replayed: a batch that may repeat changes
    numbered before (by an earlier leader, or announced again by a new
    primary) would show them twice to a client that saw the first.
    """

    def __init__(self, floor: int, changes: int, max_bytes: int = HISTORY_BYTES) -> None:
        self._batches: deque[tuple[int, int, int, bytes]] = deque()
        self._max_changes = changes
        self._max_bytes = max_bytes
        self._changes = 0
        self._bytes = 0
        self.floor = floor
        self.newest = floor
        self.repeat_floor = 0

    def add(self, first: int, previous: int, count: int, changes: bytes, repeated: bool) -> None:
        """
        Keep a batch numbered from C{first}, following C{previous}.
        """
        self._batches.append((first, previous, count, changes))
        self.newest = first + count - 1
        if repeated:
            self.repeat_floor = self.newest
        self._changes += count
        self._bytes += len(changes)
        while self._changes > self._max_changes or self._bytes > self._max_bytes:
            _, _, dropped, data = self._batches.popleft()
            self._changes -= dropped
            self._bytes -= len(data)
            self.floor = self._batches[0][1] if self._batches else self.newest

    def after(self, revision: int) -> Optional[list[tuple[int, int, bytes]]]:
        """
        The batches holding the changes after C{revision}, as C{(first,
        previous, changes)}, oldest first (the first may also hold older
        ones); or C{None} when some change after it is not held, may repeat
        one seen before, or C{revision} is not a point of this stream (a
        revision of an earlier term other than the one it continues from,
        or one not numbered yet).
        """
        if revision < self.floor or revision < self.repeat_floor or revision > self.newest:
            return None
        if revision != self.floor and revision_term(revision) != revision_term(self.newest):
            return None
        return self.batches_after(revision)

    def batches_after(self, revision: int) -> list[tuple[int, int, bytes]]:
        """
        The batches held whose last change is after C{revision}, as
        C{(first, previous, changes)}, oldest first.
        """
        return [
            (first, previous, changes)
            for first, previous, count, changes in self._batches
            if first + count - 1 > revision
        ]

    def since(self, revision: int) -> Optional[list[ChangeEvent]]:
        """
        L{after}, decoded: the changes after C{revision}, oldest first.
        """
        batches = self.after(revision)
        if batches is None:
            return None
        return [event for event in _decode_batches(batches) if event.revision > revision]


def _decode_batches(batches: list[tuple[int, int, bytes]]) -> list[ChangeEvent]:
    events = []
    for first, previous, changes in batches:
        for revision, data in enumerate(decode_message(changes), first):
            events.append(ChangeEvent(decode_change(data), revision, False, previous))
            previous = revision
    return events


class ChangeFeed:
    """
    One node's part of the change feed: its batches on their way to the
    leader, the leader's numbering, history and subscribers, and delivery
    to this node's listeners while it has any.

    @ivar last_revision: the newest revision this node knows of: delivered
        here, or numbered here as leader.
    """

    def __init__(
        self,
        *,
        consensus: Consensus,
        send: Callable[[str, list], bool],
        partition_of: Callable[[str], int],
        partitions: int,
        history: int = 10000,
        now: Callable[[], float] = lambda: 0.0,
        replay_timeout: float = 10.0,
    ) -> None:
        """
        @param consensus: tells who leads, in which term, and the peers.
        @param send: sends a message to a node (this one included).
        @param partition_of: the partition of a key.
        @param partitions: how many partitions there are.
        @param history: how many changes the leader keeps for replays.
        @param now: the time, for replays that go unanswered.
        @param replay_timeout: seconds after which a replay unanswered is
            given up (as one the history cannot give).
        """
        self._consensus = consensus
        self._send = send
        self._partition_of = partition_of
        self._partitions = partitions
        self._history_size = history
        self._now = now
        self._replay_timeout = replay_timeout
        self._listeners: list[Callable[[ChangeEvent], None]] = []
        # batch id -> batch
        self._unpublished: OrderedDict[int, _Batch] = OrderedDict()
        self._published_recently = _RecentBatches()
        self._publish_ids = itertools.count(1)
        self._published_to: tuple[str, int] | None = None
        self._last_sent_batch = 0
        self._revision_counter = 0
        self._revision_term = 0
        self._history: Optional[ChangeHistory] = None
        self._subscribers: set[str] = set()
        self.last_revision = 0
        self._gap_pending = False
        # the last revision each peer reports having delivered
        self._peer_revisions: dict[str, int] = {}
        # While listening: whether the stream has not started yet (the
        # first batch or the leader's answer to C{sub} starts it, no gap
        # before it); the leader subscribed to; and, per partition, the
        # last version delivered of its most recently changed keys: as many
        # as a new primary announces again.
        self._starting = False
        self._subscribed_to: Optional[tuple[str, int]] = None
        # when the subscription was last asked for, until the leader answers
        self._unanswered_since: Optional[float] = None
        self._delivered: list[OrderedDict[str, int]] = []
        # replay requests sent to the leader, by id: (answer, after, sent at)
        self._replays: dict[int, tuple[Deferred[Replayed], int, float]] = {}
        self._replay_ids = itertools.count(1)

    # -- listeners -----------------------------------------------------------

    def subscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        """
        Deliver every change from now on to C{listener}; the first listener
        subscribes this node to the leader's stream.
        """
        self._listeners.append(listener)
        if len(self._listeners) == 1:
            self._starting = True
            self._delivered = [OrderedDict() for _ in range(self._partitions)]
            self._subscribed_to = None
            self._subscribe()

    def unsubscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        """
        Stop calling C{listener}; without listeners, the node leaves the
        leader's stream and forgets what it needed only to deliver.
        """
        self._listeners.remove(listener)
        if not self._listeners:
            if self._subscribed_to is not None:
                self._send(self._subscribed_to[0], messages.unsubscribe())
            self._subscribed_to = None
            self._unanswered_since = None
            self._delivered = []
            self._fail_replays()

    def _subscribe(self) -> None:
        """
        Ask the current leader for its stream, from the last revision
        delivered here (it sends what it holds after it), or from now on
        for a stream not started yet.
        """
        leader = self._consensus.leader
        if not self._listeners or leader is None:
            return
        target = (leader, self._consensus.term)
        if target == self._subscribed_to:
            return
        self._subscribed_to = target
        self._unanswered_since = self._now()
        self._send(leader, messages.subscribe(None if self._starting else self.last_revision))

    def peer_up(self, peer: str) -> None:
        """
        A new link to C{peer}: what was in flight on the old one may be
        lost.  A primary sends the leader every batch it has not confirmed
        again (else they would wait for the next leader, and their changes
        reach no watcher until then); a listening node asks its leader
        again for what follows the last change it delivered.
        """
        if self._published_to is not None and self._published_to[0] == peer:
            self._resend_unconfirmed(peer)
        if self._subscribed_to is not None and self._subscribed_to[0] == peer:
            self._subscribed_to = None
            self._fail_replays()
            self._subscribe()

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

    def queue(self, entries: list[Entry], repeated: bool = False) -> None:
        """
        Queue the changes of committed C{entries} for the leader; they leave
        with the next L{publish}.

        @param repeated: whether they may have been announced before (a
            new primary announcing its predecessor's last changes again).
        """
        # Encoded once, here: the leader keeps and forwards these bytes.
        changes = encode_message([encode_change(e.change) for e in entries])
        self._unpublished[next(self._publish_ids)] = (len(entries), changes, repeated)

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
        for batch_id, (count, changes, repeated) in batches:
            self._send(leader, messages.publish(batch_id, count, changes, repeated))
            self._last_sent_batch = batch_id

    def _resend_unconfirmed(self, leader: str) -> None:
        """
        Send C{leader} the batches it has not confirmed, in order; those
        sent before may have been numbered already (only the confirmation
        was lost), so they go as possible repeats.
        """
        for batch_id, (count, changes, repeated) in list(self._unpublished.items()):
            repeated = repeated or batch_id <= self._last_sent_batch
            self._unpublished[batch_id] = (count, changes, repeated)
            self._send(leader, messages.publish(batch_id, count, changes, repeated))
            self._last_sent_batch = max(self._last_sent_batch, batch_id)

    def republish(self) -> None:
        """
        A new leader: send it every batch it has not confirmed, and ask it
        for its stream if this node listens.
        """
        self._published_to = None
        self.publish()
        self._fail_replays()
        self._subscribe()

    def on_published(self, peer: str, message: list) -> None:
        batch = self._unpublished.pop(messages.parse_published(message), None)
        if batch is not None:
            self._published_recently.add(batch)

    def _requeue_published_recently(self) -> None:
        """
        Queue the recently confirmed batches again, ahead of the unconfirmed
        ones: the leader that confirmed them may have died before sending
        them to every node.  Every batch sent to an earlier leader may have
        been numbered already: nodes drop the changes they already have,
        and replays never start before them.
        """
        recent = [(count, changes, True) for count, changes, _ in self._published_recently.take()]
        unconfirmed = [
            (batch_id, (count, changes, repeated or batch_id <= self._last_sent_batch))
            for batch_id, (count, changes, repeated) in self._unpublished.items()
        ]
        if recent:
            batches = [*recent, *(batch for _, batch in unconfirmed)]
            self._unpublished = OrderedDict((next(self._publish_ids), b) for b in batches)
        else:
            self._unpublished = OrderedDict(unconfirmed)

    # -- the leader's side -------------------------------------------------

    def _leading(self) -> Optional[ChangeHistory]:
        """
        This node's history as leader of the current term, started when
        first needed; C{None} unless it leads.

        A new leader continues from the newest change it knows of.  One that
        knows none (it restarted) continues from the newest its peers report:
        0 would tell every node that starts with its changes that they are
        the cluster's first.
        """
        if self._consensus.role != LEADER:
            return None
        if self._revision_term != self._consensus.term or self._history is None:
            self._revision_term = self._consensus.term
            self._revision_counter = 0
            start = max(self.last_revision, max(self._peer_revisions.values(), default=0))
            self._history = ChangeHistory(start, self._history_size)
            self._subscribers = set()
        return self._history

    def on_publish(self, peer: str, message: list) -> None:
        batch_id, count, changes, repeated = messages.parse_publish(message)
        history = self._leading()
        if history is None:
            return
        first = (self._revision_term << REVISION_TERM_SHIFT) | (self._revision_counter + 1)
        self._revision_counter += count
        previous = history.newest
        history.add(first, previous, count, changes, repeated)
        event = messages.events(first, changes, previous)
        for node in self._subscribers:
            self._send(node, event)
        if self._listeners:
            self._receive(first, changes, previous)
        else:
            self.last_revision = history.newest
        self._send(peer, messages.published(batch_id))

    def on_subscribe(self, peer: str, message: list) -> None:
        """
        C{peer} listens: send it every numbered batch, first those held
        after the revision it gives (the stream goes on after what it has),
        then the answer naming the newest revision (a stream that starts
        there follows on from it).
        """
        after = messages.parse_subscribe(message)
        history = self._leading()
        if history is None:
            return
        if peer in self._consensus.peers:
            self._subscribers.add(peer)
        if after is not None:
            # Whatever does not follow on from C{after} (it is ahead of
            # this leader, or the history no longer reaches back to it)
            # starts with a batch that does not name it as its previous:
            # the node flags the gap.
            for first, previous, changes in history.batches_after(after):
                self._send(peer, messages.events(first, changes, previous))
        self._send(peer, messages.subscribed(history.newest))

    def on_unsubscribe(self, peer: str, message: list) -> None:
        self._subscribers.discard(peer)

    def on_replay(self, peer: str, message: list) -> None:
        """
        Answer a node's request for the changes after a revision: the
        batches held, and the newest revision, which they end at.
        """
        request_id, after = messages.parse_replay(message)
        history = self._leading()
        batches = None if history is None else history.after(after)
        newest = -1 if history is None else history.newest
        self._send(peer, messages.replayed(request_id, newest, batches))

    # -- every node's side -------------------------------------------------

    def replay(self, after: int) -> Deferred[Replayed]:
        """
        The changes after revision C{after} up to the last one delivered
        here, oldest first, from the leader's history, or C{None} when they
        cannot all be given (the leader no longer holds them, or leads a
        stream this node is not at the end of: re-read); with the revision
        after which the listeners get every change (C{None} until the
        stream started).

        Call only while listening: the answer must end exactly at the last
        change delivered to the listeners, so that a listener holding back
        the changes delivered meanwhile neither misses nor repeats one.
        """
        leader = self._consensus.leader
        if not self._listeners or leader is None:
            return succeed(self._not_replayed())
        request_id = next(self._replay_ids)
        d: Deferred[Replayed] = Deferred()
        self._replays[request_id] = (d, after, self._now())
        self._send(leader, messages.replay(request_id, after))
        return d

    def on_replayed(self, peer: str, message: list) -> None:
        request_id, newest, batches = messages.parse_replayed(message)
        pending = self._replays.pop(request_id, None)
        if pending is None:
            return
        d, after, _ = pending
        if batches is None or self._starting or newest != self.last_revision:
            d.callback(self._not_replayed())
            return
        events = [e for e in _decode_batches(batches) if e.revision > after]
        for event in events:
            # Whatever a watcher has now seen in a replay is a repeat live.
            self._note_delivered(event.change.key, event.change.version)
        d.callback((events, newest))

    def _not_replayed(self) -> Replayed:
        return None, None if self._starting or not self._listeners else self.last_revision

    def _fail_replays(self) -> None:
        """
        Answer every pending replay C{None}: the leader it went to may never
        answer, or answer from a stream this node is not on.
        """
        replays, self._replays = self._replays, {}
        for d, _, _ in replays.values():
            d.callback(self._not_replayed())

    def tick(self) -> None:
        """
        Give up the replays that went unanswered too long (the request or
        its answer was lost with a link), and ask again for a subscription
        left unanswered as long (the node taken for the leader was not, or
        no longer, leading).
        """
        deadline = self._now() - self._replay_timeout
        if self._unanswered_since is not None and self._unanswered_since <= deadline:
            self._subscribed_to = None
            self._subscribe()
        for request_id, (d, _, sent) in list(self._replays.items()):
            if sent <= deadline:
                del self._replays[request_id]
                d.callback(self._not_replayed())

    def on_subscribed(self, peer: str, message: list) -> None:
        newest = messages.parse_subscribed(message)
        self._unanswered_since = None
        if self._listeners and self._starting:
            self._starting = False
            self.last_revision = newest

    def on_events(self, peer: str, message: list) -> None:
        if self._listeners:
            self._receive(*messages.parse_events(message))
        else:
            # A leader that still takes this node for a subscriber (it
            # restarted, or an unsubscription was lost): set it right.
            self._send(peer, messages.unsubscribe())

    def _receive(self, first: int, changes: bytes, previous: int) -> None:
        """
        Deliver a batch the leader numbered from C{first}; C{previous} is the
        revision the leader numbered before it.
        """
        if self._starting:
            self._starting = False
            self.last_revision = previous
        elif previous != self.last_revision and first > self.last_revision:
            self._gap_pending = True
        for revision, data in enumerate(decode_message(changes), first):
            self._deliver(revision, data, previous)
            previous = revision

    def _note_delivered(self, key: str, version: int) -> bool:
        """
        Remember that C{key}'s C{version} was delivered; whether it is newer
        than any delivered before.
        """
        delivered = self._delivered[self._partition_of(key)]
        if delivered.get(key, -1) >= version:
            return False
        delivered[key] = version
        delivered.move_to_end(key)
        if len(delivered) > RECENT_CHANGES:
            delivered.popitem(last=False)
        return True

    def _deliver(self, revision: int, data: list, previous: int) -> None:
        """
        Hand one numbered change to the listeners, unless it is older than
        what they have seen (a batch resent to a new leader, or a change a
        new primary announces again).  A new primary announces its partition's
        last L{RECENT_CHANGES} changes, so remembering the last version of as
        many keys per partition recognises every one already delivered.

        @param data: the change as L{encode_change} put it (kind, key,
            version, ...).
        @param previous: the revision the leader numbered before it.
        """
        if revision <= self.last_revision:
            return
        self.last_revision = revision
        if not self._note_delivered(data[1], data[2]):
            return
        gap, self._gap_pending = self._gap_pending, False
        event = ChangeEvent(decode_change(data), revision, gap, previous)
        for listener in list(self._listeners):
            listener(event)
