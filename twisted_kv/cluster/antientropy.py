# -*- test-case-name: tests.test_antientropy -*-
"""
Anti-entropy: a primary compares the Merkle digest of each partition it
serves with its members' every C{anti_entropy_interval}, and orders a
repair of the buckets that differ in its log, so that replication carries
it like any write.  A member answers once it has applied the log up to the
position the digest was taken at.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.logger import Logger

from twisted_kv.core import messages
from twisted_kv.core.merkle import differing
from twisted_kv.core.placement import PartitionConfig
from twisted_kv.core.replica import Replica, encode_entry
from twisted_kv.wire.codec import encode as encode_message

log = Logger()


class AntiEntropy:
    """
    One node's digest rounds, as primary and as member.

    @ivar bytes_sent: bytes of digests, answers and repairs sent so far.
    @ivar last_full_round: when every member last answered a round of this
        node's, or C{None}.
    """

    def __init__(
        self,
        *,
        replicas: list[Replica],
        send: Callable[[str, list], bool],
        replicate: Callable[[int], None],
        partition_config: Callable[[int], Optional[PartitionConfig]],
        now: Callable[[], float],
        interval: float,
    ) -> None:
        """
        @param replicas: this node's replicas, by partition.
        @param send: sends a message to a node.
        @param replicate: has a partition's new log entries sent to its
            members.
        @param partition_config: the current map's configuration of a
            partition.
        @param now: the current time.
        @param interval: seconds between two rounds.
        """
        self._replicas = replicas
        self._send = send
        self._replicate = replicate
        self._partition_config = partition_config
        self._now = now
        self._interval = interval
        self.bytes_sent = 0
        self.last_full_round: Optional[float] = None
        self._next_round = now() + interval
        self._digests_sent: dict[int, tuple[int, list[int]]] = {}
        self._digests_awaited: dict[int, set[str]] = {}
        self._digest_asked_by: dict[int, str] = {}

    def tick(self, now: float) -> None:
        """
        Start a round if one is due: compare every partition this node is
        primary of with its members.
        """
        if now < self._next_round:
            return
        self._next_round = now + self._interval
        for replica in self._replicas:
            self._start(replica)

    def repaired_keys(self) -> int:
        return sum(r.repaired_keys for r in self._replicas)

    def check_partition(self, partition: int) -> None:
        """
        Replicas of C{partition} were seen to disagree: ask its primary for a
        round now (read repair).
        """
        config = self._partition_config(partition)
        if config is not None and config.primary is not None:
            self._send(config.primary.node_id, messages.check(partition))

    def on_check(self, peer: str, message: list) -> None:
        self._start(self._replicas[messages.parse_check(message)])

    def _start(self, replica: Replica) -> None:
        if not (replica.is_primary and replica.serving and replica.members):
            return
        seq, buckets, root = replica.digest_snapshot()
        partition = replica.partition
        self._digests_sent[partition] = (seq, buckets)
        self._digests_awaited[partition] = set(replica.members)
        for member in replica.members:
            self._send_counted(member, messages.digest(partition, replica.epoch, seq, root))

    def _send_counted(self, peer: str, message: list) -> None:
        self.bytes_sent += len(encode_message(message))
        self._send(peer, message)

    # -- a member's side ---------------------------------------------------

    def on_digest(self, peer: str, message: list) -> None:
        partition, epoch, seq, root = messages.parse_digest(message)
        replica = self._replicas[partition]
        if epoch != replica.epoch:
            return
        self._digest_asked_by[partition] = peer
        replica.learn_commit(seq)
        replica.expect_digest(seq, root)
        self.answer(replica)

    def answer(self, replica: Replica) -> None:
        """
        Answer the digest C{replica} was waiting to compare, if it has now
        applied the log far enough to.
        """
        result, replica.digest_result = replica.digest_result, None
        asker = self._digest_asked_by.get(replica.partition)
        if result is None or asker is None:
            return
        seq, matched, buckets = result
        if matched:
            reply = messages.digest_ok(replica.partition, replica.epoch, seq)
        else:
            reply = messages.digest_diff(replica.partition, replica.epoch, seq, buckets)
        self._send_counted(asker, reply)

    # -- the primary's side ------------------------------------------------

    def on_digest_answer(self, peer: str, message: list) -> None:
        partition, epoch, seq, theirs = messages.parse_digest_answer(message)
        replica = self._replicas[partition]
        sent = self._digests_sent.get(partition)
        if not replica.is_primary or epoch != replica.epoch or sent is None or sent[0] != seq:
            return
        if theirs is not None:
            buckets = differing(sent[1], theirs)
            log.info(
                "partition {partition}: {member} differs in {count} buckets; repairing",
                partition=partition, member=peer, count=len(buckets),
            )
            entry = replica.propose_repair(buckets)
            self.bytes_sent += len(encode_message(encode_entry(entry))) * len(replica.members)
            self._replicate(partition)
        awaited = self._digests_awaited.get(partition)
        if awaited is not None:
            awaited.discard(peer)
            if not awaited:
                del self._digests_awaited[partition]
                if not self._digests_awaited:
                    self.last_full_round = self._now()
