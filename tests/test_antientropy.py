"""
Tests for L{twisted_kv.cluster.antientropy}: digest rounds between a
primary and its members, with stand-in replicas that record what they are
told, a recording C{send} and a L{Clock}.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.cluster.antientropy import AntiEntropy
from twisted_kv.core import messages
from twisted_kv.core.placement import Member, PartitionConfig
from twisted_kv.core.replica import Entry, Repair

INTERVAL = 10.0


class _Replica:
    """
    What anti-entropy uses of a L{twisted_kv.core.replica.Replica}, with
    the digest it would take, recording what it is told.
    """

    def __init__(self, partition: int, members: tuple[str, ...] = (), epoch: int = 2) -> None:
        self.partition = partition
        self.is_primary = self.serving = bool(members)
        self.members = list(members)
        self.epoch = epoch
        self.digest_result: Optional[tuple[int, bool, list[int]]] = None
        self.repaired_keys = 0
        self.events: list[tuple[Any, ...]] = []

    def digest_snapshot(self) -> tuple[int, list[int], bytes]:
        return 5, [10, 11, 12], b"root"

    def learn_commit(self, seq: int) -> None:
        self.events.append(("learn_commit", seq))

    def expect_digest(self, seq: int, root: bytes) -> None:
        self.events.append(("expect_digest", seq, root))

    def propose_repair(self, buckets: list[int]) -> Entry:
        self.events.append(("propose_repair", buckets))
        return Entry(self.epoch, 6, None, None, Repair(tuple(buckets), ()))


class AntiEntropyTestMixin:
    """
    An L{AntiEntropy} over stand-in replicas, recording what it sends and
    which partitions it has replicated.
    """

    def make(self, *replicas: _Replica) -> AntiEntropy:
        self.clock = Clock()
        self.sent: list[tuple[str, list]] = []
        self.replicated: list[int] = []
        self.replicas = list(replicas)
        self.configs: dict[int, PartitionConfig] = {}
        return AntiEntropy(
            replicas=self.replicas,  # type: ignore[arg-type]
            send=self.send,
            replicate=self.replicated.append,
            partition_config=self.configs.get,
            now=self.clock.seconds,
            interval=INTERVAL,
        )

    def send(self, peer: str, message: list) -> bool:
        self.sent.append((peer, message))
        return True


class PrimaryTests(AntiEntropyTestMixin, SynchronousTestCase):
    """
    A primary's rounds.
    """

    def test_round_every_interval(self) -> None:
        """
        Every interval, each partition this node serves as primary sends its
        digest to each member, counting the bytes.
        """
        ae = self.make(_Replica(0, ("n2", "n3")), _Replica(1))
        ae.tick(INTERVAL - 1)
        self.assertEqual(self.sent, [])
        ae.tick(INTERVAL)
        digest = messages.digest(0, 2, 5, b"root")
        self.assertEqual(self.sent, [("n2", digest), ("n3", digest)])
        self.assertGreater(ae.bytes_sent, 0)
        ae.tick(INTERVAL + 1)
        self.assertEqual(len(self.sent), 2)

    def test_full_round(self) -> None:
        """
        A round is complete once every member answered; a member that
        differs gets a repair of the buckets that differ, ordered in the log
        and replicated.
        """
        replica = _Replica(0, ("n2", "n3"))
        ae = self.make(replica)
        ae.tick(INTERVAL)
        self.clock.advance(INTERVAL + 1)
        ae.on_digest_answer("n2", messages.digest_ok(0, 2, 5))
        self.assertIsNone(ae.last_full_round)
        ae.on_digest_answer("n3", messages.digest_diff(0, 2, 5, [10, 99, 12]))
        self.assertEqual(replica.events, [("propose_repair", [1])])
        self.assertEqual(self.replicated, [0])
        self.assertEqual(ae.last_full_round, INTERVAL + 1)

    def test_stale_answers_ignored(self) -> None:
        """
        An answer about another epoch or another digest changes nothing.
        """
        replica = _Replica(0, ("n2",))
        ae = self.make(replica)
        ae.tick(INTERVAL)
        ae.on_digest_answer("n2", messages.digest_diff(0, 1, 5, [0, 0, 0]))
        ae.on_digest_answer("n2", messages.digest_diff(0, 2, 4, [0, 0, 0]))
        self.assertEqual((replica.events, self.replicated, ae.last_full_round), ([], [], None))

    def test_check(self) -> None:
        """
        Asked for a check, a primary starts a round of that partition now;
        a node that sees replicas disagree asks the partition's primary.
        """
        ae = self.make(_Replica(0, ("n2",)))
        ae.on_check("n3", messages.check(0))
        self.assertEqual(self.sent, [("n2", messages.digest(0, 2, 5, b"root"))])
        self.configs[3] = PartitionConfig(2, (Member("n4", 1),), frozenset({"n4"}))
        ae.check_partition(3)
        ae.check_partition(1)
        self.assertEqual(self.sent[1:], [("n4", messages.check(3))])


class MemberTests(AntiEntropyTestMixin, SynchronousTestCase):
    """
    A member's answers.
    """

    def test_answers_once_compared(self) -> None:
        """
        A member takes in the digest and answers, to the primary that asked,
        once its replica has compared it (here at once, later as it applies
        its log: L{AntiEntropy.answer}).
        """
        replica = _Replica(0)
        ae = self.make(replica)
        ae.on_digest("n1", messages.digest(0, 2, 5, b"root"))
        self.assertEqual(replica.events, [("learn_commit", 5), ("expect_digest", 5, b"root")])
        self.assertEqual(self.sent, [])
        replica.digest_result = (5, False, [1, 2, 3])
        ae.answer(replica)
        replica.digest_result = (5, True, [])
        ae.answer(replica)
        self.assertEqual(
            self.sent,
            [("n1", messages.digest_diff(0, 2, 5, [1, 2, 3])), ("n1", messages.digest_ok(0, 2, 5))],
        )
        self.assertIsNone(replica.digest_result)

    def test_other_epoch_ignored(self) -> None:
        """
        A digest of another epoch is not taken in.
        """
        replica = _Replica(0)
        ae = self.make(replica)
        ae.on_digest("n1", messages.digest(0, 3, 5, b"root"))
        self.assertEqual(replica.events, [])
