"""
Tests for L{twisted_kv.cluster.feed}: a node's change feed, against a
stand-in for consensus and a recording C{send}.
"""

from __future__ import annotations

from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.cluster import feed as feed_module
from twisted_kv.cluster.feed import ChangeFeed
from twisted_kv.core import messages
from twisted_kv.core.consensus import FOLLOWER, LEADER
from twisted_kv.core.records import Change
from twisted_kv.core.replica import RECENT_CHANGES, Entry, encode_change
from twisted_kv.interfaces import REVISION_TERM_SHIFT, ChangeEvent
from twisted_kv.wire.codec import encode as encode_message

PARTITIONS = 4


class _Consensus:
    """
    What the feed reads of consensus, set by the test.
    """

    def __init__(self, leader: Optional[str], term: int, role: str, peers: list[str]) -> None:
        self.leader = leader
        self.term = term
        self.role = role
        self.peers = peers


def _deletion(key: str, version: int) -> Change:
    return Change("delete", key, version, None)


def _changes(*changes: Change) -> bytes:
    return encode_message([encode_change(c) for c in changes])


def _revision(term: int, n: int) -> int:
    return (term << REVISION_TERM_SHIFT) | n


class FeedTestMixin:
    """
    A feed on node n1 of three, its messages and its events.
    """

    def make_feed(self, leader: Optional[str] = "n2", term: int = 1, role: str = FOLLOWER) -> ChangeFeed:
        self.consensus = _Consensus(leader, term, role, ["n2", "n3"])
        self.sent: list[tuple[str, list]] = []
        self.events: list[ChangeEvent] = []
        feed = ChangeFeed(
            consensus=self.consensus,  # type: ignore[arg-type]
            send=self.send,
            partition_of=lambda key: len(key) % PARTITIONS,
            partitions=PARTITIONS,
        )
        feed.subscribe(self.events.append)
        # The listener subscribed this node to the leader's stream.
        self.assertEqual(self.sent, [] if leader is None else [(leader, messages.subscribe(None))])
        del self.sent[:]
        self.feed = feed
        return feed

    def send(self, peer: str, message: list) -> bool:
        self.sent.append((peer, message))
        return True


class PublishTests(FeedTestMixin, SynchronousTestCase):
    """
    A primary's batches on their way to the leader.
    """

    def test_batches_go_to_the_leader_once(self) -> None:
        """
        Queued changes leave, encoded once, with the next publish, to the
        leader only, and are not sent twice to the same leader.
        """
        feed = self.make_feed()
        feed.queue([Entry(1, 1, _deletion("a", 1)), Entry(1, 2, _deletion("b", 2))])
        feed.publish()
        feed.publish()
        self.assertEqual(
            self.sent,
            [("n2", messages.publish(1, 2, _changes(_deletion("a", 1), _deletion("b", 2)), False))],
        )

    def test_unconfirmed_batches_go_to_a_new_leader(self) -> None:
        """
        A new leader gets every batch again: the unconfirmed ones, and ahead
        of them the confirmed ones its predecessor may not have forwarded;
        both as repeats, since the old leader may have numbered them.  A
        listening node asks the new leader for its stream, from the last
        revision it delivered.
        """
        feed = self.one_confirmed_one_not()
        self.consensus.leader, self.consensus.term = "n3", 2
        feed.republish()
        self.assertEqual(
            self.sent,
            [
                ("n3", messages.publish(3, 1, _changes(_deletion("a", 1)), True)),
                ("n3", messages.publish(4, 1, _changes(_deletion("b", 2)), True)),
                ("n3", messages.subscribe(None)),
            ],
        )

    def one_confirmed_one_not(self) -> ChangeFeed:
        """
        A feed that published two batches to leader n2, which confirmed the
        first only; what was sent is forgotten.
        """
        feed = self.make_feed()
        feed.queue([Entry(1, 1, _deletion("a", 1))])
        feed.publish()
        feed.on_published("n2", messages.published(1))
        feed.queue([Entry(1, 2, _deletion("b", 2))])
        feed.publish()
        del self.sent[:]
        return feed

    def test_unconfirmed_batches_go_again_on_a_new_link(self) -> None:
        """
        A new link to the same leader: the batches it has not confirmed go
        again, in order, before any newer one; those sent on the old link
        as possible repeats (the leader may have numbered them and only its
        confirmation was lost), one that never left as it is.  Without
        this, a change whose batch was lost with a link reached no watcher
        until the next leader.
        """
        feed = self.one_confirmed_one_not()
        feed.peer_up("n3")
        self.assertEqual(self.sent, [])
        feed.peer_up("n2")
        feed.queue([Entry(1, 3, _deletion("c", 3))])
        feed.publish()
        self.assertEqual(
            self.sent,
            [
                ("n2", messages.publish(2, 1, _changes(_deletion("b", 2)), True)),
                ("n2", messages.subscribe(None)),
                ("n2", messages.publish(3, 1, _changes(_deletion("c", 3)), False)),
            ],
        )

    def test_no_leader_no_publish(self) -> None:
        """
        Without a leader, batches wait.
        """
        feed = self.make_feed(leader=None)
        feed.queue([Entry(1, 1, _deletion("a", 1))])
        feed.publish()
        self.assertEqual(self.sent, [])


class LeaderTests(FeedTestMixin, SynchronousTestCase):
    """
    The leader numbers batches and forwards them.
    """

    def test_numbers_forwards_and_confirms(self) -> None:
        """
        The leader numbers a batch from its term's first revision, forwards
        the same bytes to the peers that subscribed, delivers its own copy
        to its listeners and confirms.
        """
        feed = self.make_feed(leader="n1", term=3, role=LEADER)
        feed.on_subscribe("n3", messages.subscribe(None))
        self.assertEqual(self.sent, [("n3", messages.subscribed(0))])
        del self.sent[:]
        changes = _changes(_deletion("a", 1), _deletion("bb", 2))
        feed.on_publish("n2", messages.publish(7, 2, changes, False))
        first = _revision(3, 1)
        event = messages.events(first, changes, 0)
        self.assertEqual(self.sent, [("n3", event), ("n2", messages.published(7))])
        self.assertEqual(
            [(e.change.key, e.revision, e.previous) for e in self.events],
            [("a", first, 0), ("bb", first + 1, first)],
        )
        self.assertEqual(feed.last_revision, first + 1)

    def test_new_leader_continues_from_its_peers(self) -> None:
        """
        A leader that delivered nothing (it restarted) names the newest
        revision its peers report as the one before its first.
        """
        feed = self.make_feed(leader="n1", term=5, role=LEADER)
        feed.peer_delivered("n2", _revision(4, 9))
        feed.peer_delivered("n3", _revision(4, 7))
        feed.on_publish("n2", messages.publish(1, 1, _changes(_deletion("a", 1)), False))
        self.assertEqual(
            [(e.revision, e.previous) for e in self.events], [(_revision(5, 1), _revision(4, 9))]
        )

    def test_only_the_leader_numbers(self) -> None:
        """
        A node that is not the leader ignores a batch.
        """
        feed = self.make_feed()
        feed.on_publish("n2", messages.publish(1, 1, _changes(_deletion("a", 1)), False))
        self.assertEqual((self.sent, self.events), ([], []))


class DeliveryTests(FeedTestMixin, SynchronousTestCase):
    """
    Every node delivers numbered changes to its listeners.
    """

    def test_repeats_dropped(self) -> None:
        """
        A batch delivered again (resent to a new leader), or a change
        announced again under a newer revision, reaches the listeners once.
        """
        feed = self.make_feed()
        feed.on_events("n2", messages.events(_revision(1, 1), _changes(_deletion("a", 1)), 0))
        feed.on_events("n2", messages.events(_revision(1, 1), _changes(_deletion("a", 1)), 0))
        feed.on_events(
            "n2", messages.events(_revision(2, 1), _changes(_deletion("a", 1)), _revision(1, 1))
        )
        self.assertEqual([e.revision for e in self.events], [_revision(1, 1)])
        self.assertEqual(feed.last_revision, _revision(2, 1))

    def test_gap_flagged(self) -> None:
        """
        A batch that does not follow the last revision delivered is flagged
        as following a gap, once; so is the change after a L{ChangeFeed.gap}.
        """
        feed = self.make_feed()
        feed.on_events("n2", messages.events(_revision(1, 1), _changes(_deletion("a", 1)), 0))
        feed.on_events(
            "n2",
            messages.events(
                _revision(1, 5), _changes(_deletion("b", 1), _deletion("c", 1)), _revision(1, 4)
            ),
        )
        feed.gap()
        feed.on_events(
            "n2", messages.events(_revision(1, 7), _changes(_deletion("d", 1)), _revision(1, 6))
        )
        self.assertEqual([e.gap for e in self.events], [False, True, False, True])

    def test_unsubscribed_listener_not_called(self) -> None:
        """
        A listener unsubscribed gets nothing more; the last one takes the
        node off the leader's stream, and what still arrives is not even
        decoded.
        """
        feed = self.make_feed()
        feed.unsubscribe(self.events.append)
        self.assertEqual(self.sent, [("n2", messages.unsubscribe())])
        self.patch(feed_module, "decode_message", lambda data: self.fail("decoded"))
        feed.on_events("n2", messages.events(_revision(1, 1), _changes(_deletion("a", 1)), 0))
        self.assertEqual(self.events, [])
        self.assertEqual(feed.last_revision, 0)

    def test_events_while_not_listening_unsubscribe(self) -> None:
        """
        A batch reaching a node that does not listen (the leader took it for
        a subscriber still) is answered with an unsubscription.
        """
        feed = self.make_feed()
        feed.unsubscribe(self.events.append)
        del self.sent[:]
        feed.on_events("n3", messages.events(_revision(1, 1), _changes(_deletion("a", 1)), 0))
        self.assertEqual(self.sent, [("n3", messages.unsubscribe())])

    def test_unanswered_subscription_asked_again(self) -> None:
        """
        A subscription the leader does not answer within the timeout (it
        was not leading yet) is asked for again; an answered one is not.
        """
        self.now = 0.0
        self.consensus = _Consensus("n2", 1, FOLLOWER, ["n2", "n3"])
        self.sent = []
        feed = ChangeFeed(
            consensus=self.consensus,  # type: ignore[arg-type]
            send=self.send,
            partition_of=lambda key: 0,
            partitions=1,
            now=lambda: self.now,
            replay_timeout=2.0,
        )
        feed.subscribe(lambda event: None)
        self.now = 1.0
        feed.tick()
        self.assertEqual(self.sent, [("n2", messages.subscribe(None))])
        self.now = 2.0
        feed.tick()
        self.assertEqual(self.sent, [("n2", messages.subscribe(None))] * 2)
        feed.on_subscribed("n2", messages.subscribed(_revision(1, 3)))
        self.now = 10.0
        feed.tick()
        self.assertEqual(len(self.sent), 2)
        self.assertEqual(feed.last_revision, _revision(1, 3))

    def test_stream_starts_where_the_leader_is(self) -> None:
        """
        The leader's answer to a subscription names its newest revision: the
        next batch follows it, without a gap.
        """
        feed = self.make_feed()
        feed.on_subscribed("n2", messages.subscribed(_revision(1, 4)))
        feed.on_events(
            "n2", messages.events(_revision(1, 5), _changes(_deletion("a", 1)), _revision(1, 4))
        )
        self.assertEqual([(e.revision, e.gap) for e in self.events], [(_revision(1, 5), False)])

    def test_resubscribes_after_link_lost(self) -> None:
        """
        A new link to the leader: what was in flight may be lost, so the
        node asks again for what follows its last delivered revision.
        """
        feed = self.make_feed()
        feed.on_events("n2", messages.events(_revision(1, 1), _changes(_deletion("a", 1)), 0))
        feed.peer_up("n3")
        self.assertEqual(self.sent, [])
        feed.peer_up("n2")
        self.assertEqual(self.sent, [("n2", messages.subscribe(_revision(1, 1)))])


class RecentBatchesTests(SynchronousTestCase):
    """
    What a node keeps of the change batches it published, for a new leader.
    """

    def test_bounded_in_changes_and_bytes(self) -> None:
        """
        The newest batches are kept, up to RECENT_CHANGES changes and
        RECENTLY_PUBLISHED_BYTES bytes; taking them empties the store.
        """
        recent = feed_module._RecentBatches()
        for index in range(RECENT_CHANGES + 10):
            recent.add((1, b"%d" % index, False))
        batches = recent.take()
        self.assertEqual(len(batches), RECENT_CHANGES)
        self.assertEqual(batches[-1], (1, b"%d" % (RECENT_CHANGES + 9), False))
        self.assertEqual(recent.take(), [])
        big = b"x" * (feed_module.RECENTLY_PUBLISHED_BYTES // 2)
        for index in range(3):
            recent.add((1, big + b"%d" % index, False))
        self.assertEqual([changes[-1:] for _, changes, _ in recent.take()], [b"2"])


class HistoryTests(SynchronousTestCase):
    """
    The leader's history of numbered batches, kept encoded for replays.
    """

    def history(self, **bounds: int) -> feed_module.ChangeHistory:
        """
        A history of term 2 continuing from revision (1, 9), holding three
        batches: (2, 1), (2, 2)-(2, 3) and (2, 4).
        """
        history = feed_module.ChangeHistory(_revision(1, 9), **{"changes": 100, **bounds})
        history.add(_revision(2, 1), _revision(1, 9), 1, _changes(_deletion("a", 1)), False)
        history.add(
            _revision(2, 2), _revision(2, 1), 2, _changes(_deletion("b", 1), _deletion("c", 1)), False
        )
        history.add(_revision(2, 4), _revision(2, 3), 1, _changes(_deletion("d", 1)), False)
        return history

    def keys(self, events: Optional[list[ChangeEvent]]) -> Optional[list[str]]:
        return None if events is None else [e.change.key for e in events]

    def test_replays_from_any_point_of_its_stream(self) -> None:
        """
        Every change after a revision from the one it continues from to the
        newest, with the revision before each.
        """
        history = self.history()
        self.assertEqual(self.keys(history.since(_revision(1, 9))), ["a", "b", "c", "d"])
        self.assertEqual(self.keys(history.since(_revision(2, 2))), ["c", "d"])
        self.assertEqual(self.keys(history.since(_revision(2, 4))), [])
        self.assertEqual(
            [e.previous for e in history.since(_revision(2, 1)) or []],
            [_revision(2, 1), _revision(2, 2), _revision(2, 3)],
        )

    def test_refuses_what_it_cannot_give(self) -> None:
        """
        No replay from before its stream, from further into the earlier
        term than where it continued, or from beyond its newest revision.
        """
        history = self.history()
        for revision in (_revision(1, 8), _revision(1, 10), _revision(2, 5)):
            self.assertIsNone(history.since(revision), revision)

    def test_bounded_in_changes_and_bytes(self) -> None:
        """
        The oldest batches go first, past the bound in changes or in
        bytes; the history then starts after the last change dropped.
        """
        history = self.history(changes=2)
        self.assertEqual(history.floor, _revision(2, 3))
        self.assertIsNone(history.since(_revision(2, 2)))
        self.assertEqual(self.keys(history.since(_revision(2, 3))), ["d"])
        small = self.history(max_bytes=len(_changes(_deletion("d", 1))))
        self.assertEqual(small.floor, _revision(2, 3))

    def test_no_replay_before_a_repeat(self) -> None:
        """
        A batch that may repeat changes numbered before is never replayed
        to a client that may have seen them: replays start after it.
        """
        history = self.history()
        history.add(_revision(2, 5), _revision(2, 4), 1, _changes(_deletion("a", 1)), True)
        history.add(_revision(2, 6), _revision(2, 5), 1, _changes(_deletion("e", 1)), False)
        self.assertIsNone(history.since(_revision(2, 4)))
        self.assertEqual(self.keys(history.since(_revision(2, 5))), ["e"])


class ReplayTests(FeedTestMixin, SynchronousTestCase):
    """
    Replays asked of the leader, and their answers.
    """

    def test_leader_answers_from_its_history(self) -> None:
        """
        The leader answers with the batches after the revision asked for
        and its newest revision; C{None} for what it does not hold.
        """
        feed = self.make_feed(leader="n1", term=2, role=LEADER)
        changes = _changes(_deletion("a", 1))
        feed.on_publish("n2", messages.publish(1, 1, changes, False))
        del self.sent[:]
        feed.on_replay("n3", messages.replay(7, 0))
        feed.on_replay("n3", messages.replay(8, _revision(1, 5)))
        self.assertEqual(
            self.sent,
            [
                ("n3", messages.replayed(7, _revision(2, 1), [(_revision(2, 1), 0, changes)])),
                ("n3", messages.replayed(8, _revision(2, 1), None)),
            ],
        )

    def test_answer_taken_only_at_the_end_of_the_stream(self) -> None:
        """
        A node takes a replay that ends at the last change it delivered,
        and answers C{None} to one that ends elsewhere.
        """
        feed = self.make_feed()
        changes = _changes(_deletion("a", 1), _deletion("b", 1))
        feed.on_events("n2", messages.events(_revision(1, 1), changes, 0))
        batches = [(_revision(1, 1), 0, changes)]
        taken = feed.replay(_revision(1, 1))
        refused = feed.replay(0)
        self.assertEqual(
            self.sent,
            [("n2", messages.replay(1, _revision(1, 1))), ("n2", messages.replay(2, 0))],
        )
        feed.on_replayed("n2", messages.replayed(1, _revision(1, 2), batches))
        feed.on_replayed("n2", messages.replayed(2, _revision(1, 3), batches))
        events, newest = self.successResultOf(taken)
        self.assertEqual(([e.change.key for e in events], newest), (["b"], _revision(1, 2)))
        self.assertEqual(self.successResultOf(refused), (None, _revision(1, 2)))

    def test_given_up_on_a_new_leader(self) -> None:
        """
        A replay pending when the leader changes is answered C{None}: the
        old leader may never answer.
        """
        feed = self.make_feed()
        pending = feed.replay(0)
        self.consensus.leader, self.consensus.term = "n3", 2
        feed.republish()
        self.assertEqual(self.successResultOf(pending), (None, None))
