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
            [("n2", messages.publish(1, 2, _changes(_deletion("a", 1), _deletion("b", 2))))],
        )

    def test_unconfirmed_batches_go_to_a_new_leader(self) -> None:
        """
        A new leader gets every batch again: the unconfirmed ones, and ahead
        of them the confirmed ones its predecessor may not have forwarded.
        """
        feed = self.make_feed()
        feed.queue([Entry(1, 1, _deletion("a", 1))])
        feed.publish()
        feed.on_published("n2", messages.published(1))
        feed.queue([Entry(1, 2, _deletion("b", 2))])
        feed.publish()
        del self.sent[:]
        self.consensus.leader, self.consensus.term = "n3", 2
        feed.republish()
        self.assertEqual(
            self.sent,
            [
                ("n3", messages.publish(3, 1, _changes(_deletion("a", 1)))),
                ("n3", messages.publish(4, 1, _changes(_deletion("b", 2)))),
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
        the same bytes to every peer, delivers its own copy and confirms.
        """
        feed = self.make_feed(leader="n1", term=3, role=LEADER)
        changes = _changes(_deletion("a", 1), _deletion("bb", 2))
        feed.on_publish("n2", messages.publish(7, 2, changes))
        first = _revision(3, 1)
        event = messages.events(first, changes, 0)
        self.assertEqual(
            self.sent, [("n2", event), ("n3", event), ("n2", messages.published(7))]
        )
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
        feed.on_publish("n2", messages.publish(1, 1, _changes(_deletion("a", 1))))
        first, _, previous = messages.parse_events(self.sent[0][1])
        self.assertEqual((first, previous), (_revision(5, 1), _revision(4, 9)))

    def test_only_the_leader_numbers(self) -> None:
        """
        A node that is not the leader ignores a batch.
        """
        feed = self.make_feed()
        feed.on_publish("n2", messages.publish(1, 1, _changes(_deletion("a", 1))))
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
        A listener unsubscribed gets nothing more.
        """
        feed = self.make_feed()
        feed.unsubscribe(self.events.append)
        feed.on_events("n2", messages.events(_revision(1, 1), _changes(_deletion("a", 1)), 0))
        self.assertEqual(self.events, [])
        self.assertEqual(feed.last_revision, _revision(1, 1))


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
            recent.add((1, b"%d" % index))
        batches = recent.take()
        self.assertEqual(len(batches), RECENT_CHANGES)
        self.assertEqual(batches[-1], (1, b"%d" % (RECENT_CHANGES + 9)))
        self.assertEqual(recent.take(), [])
        big = b"x" * (feed_module.RECENTLY_PUBLISHED_BYTES // 2)
        for index in range(3):
            recent.add((1, big + b"%d" % index))
        self.assertEqual([changes[-1:] for _, changes in recent.take()], [b"2"])
