# -*- test-case-name: tests.test_cluster -*-
"""
One cluster node: consensus on the cluster map, the replicas of the
partitions it holds, and the routing of client operations to primaries.

The node talks to its peers only through an L{IMessenger} (L{PeerLinks} on
real sockets, L{twisted_kv.testing.MemoryNetwork} in tests) and reads time
only from its injected clocks, so a whole cluster runs deterministically in
one process in the tests.

L{Node} keeps the periodic tick, the cluster map (consensus, gossip, the
leader's planning, applying each committed map) and the wiring of its
parts, each with a job of its own:

  - L{Replication} drives replication inside each partition;
  - L{ClientOperations} runs client operations here, as a primary or as a
    replica answering degraded reads;
  - L{Calls} keeps the requests in flight to peers and answers theirs;
  - L{AntiEntropy} runs the Merkle digest rounds;
  - L{ChangeFeed} numbers and delivers change events.

Like magic-wormhole's C{Boss}, the node builds every part first, handing
each the parts and the narrow callables it needs, then routes every
incoming message by its tag to the part that handles it
(L{Node._routes}).  The messages are built and parsed in
L{twisted_kv.core.messages} only.
"""

from __future__ import annotations

import random
from typing import Callable, Optional

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_kv.cluster.antientropy import AntiEntropy
from twisted_kv.cluster.calls import Calls, Request, Retry
from twisted_kv.cluster.deadlines import Deadlines
from twisted_kv.cluster.durable import DurableGate, NodeDisk
from twisted_kv.cluster.feed import ChangeFeed
from twisted_kv.cluster.members import MembershipChanges
from twisted_kv.cluster.operations import ClientOperations
from twisted_kv.cluster.replication import Replication
from twisted_kv.core import messages
from twisted_kv.core.config import ClusterConfig
from twisted_kv.core.consensus import LEADER, Consensus, DurableState, Outgoing
from twisted_kv.core.keyspace import FILES, USER
from twisted_kv.core.membership import ALIVE, DEAD, Membership
from twisted_kv.core.placement import (
    ClusterMap,
    PartitionConfig,
    Ring,
    drop_member,
    holds_copies,
    initial_map,
    lost_partitions,
    mark_in_sync,
    moving_partitions,
    partition_of,
    plan,
    without_primary,
)
from twisted_kv.core.records import Expire
from twisted_kv.core.replica import Replica
from twisted_kv.core.roster import Roster, advance, config_for, first_roster
from twisted_kv.interfaces import IMessenger, IPeerHandler
from twisted_kv.storage.committer import CommitCounts

log = Logger()

# Several gossip rounds per failure timeout keep a live node from looking dead.
GOSSIP_PER_FAILURE_TIMEOUT = 6

# Records of dropped copies freed per tick (L{Replica.release_dropped}):
# under a millisecond's work (8,192 took 2-3 ms on a busy machine), 40,000
# records a second at the usual tick, where one map may drop a dozen
# copies of 16,000 records each on one node.
DROPPED_RECORDS_PER_TICK = 2048

# Rings of memberships other than the current one a node keeps: those of
# the change in progress (the next membership's, and the previous one's).
RINGS_KEPT = 4


@implementer(IPeerHandler)
class Node:
    """
    A member of the cluster.

    @ivar lost_partitions: the partitions of this node's map whose every
        in-sync copy restarted empty (L{twisted_kv.core.placement.is_lost}),
        until the leader's map starts them again, empty.
    @ivar partition_losses: how many times this node saw a partition become
        lost.
    @ivar deadlines: the time limits of requests and of operations run here,
        swept every tick.
    """

    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        *,
        clock: IReactorTime,
        incarnation: int,
        rng: Optional[random.Random] = None,
        lease_clock: Optional[Callable[[], float]] = None,
        disk: Optional[NodeDisk] = None,
        roster: Optional[Roster] = None,
        restarted_at: Optional[float] = None,
    ) -> None:
        """
        @param config: the cluster file's settings; its nodes are the first
            members, until a map holding the membership says otherwise.
        @param lease_clock: the time read leases are measured with, which
            must never step (C{time.monotonic}); C{clock}'s by default.
        @param disk: the node's data directory, recovered, with C{data_dir};
            without it the node keeps everything in memory.
        @param roster: the membership as the cluster gave it to a node
            joining it; the file's nodes by default.
        @param restarted_at: with C{disk}, the time of C{lease_clock} at
            which this process began reading it (now by default): read
            lease promises given before the restart run out by then and
            the lease period.
        """
        self._base_config = config
        self.roster = first_roster(config) if roster is None else roster
        self.config = config_for(config, self.roster)
        self.node_id = node_id
        self.incarnation = incarnation
        self._clock = clock
        now = clock.seconds()
        self.consensus = Consensus(
            node_id,
            self.roster.voters,
            now=now,
            election_timeout=config.election_timeout,
            heartbeat_interval=config.heartbeat_interval,
            rng=rng or random.Random(),
        )
        self._disk = disk
        if disk is not None and disk.recovered.consensus is not None:
            self.consensus.restore(now, disk.recovered.consensus)
        self._saved_consensus = self.consensus.durable_state()
        # the last consensus state known to be on disk
        self._durable_consensus = self._saved_consensus
        self._consensus_gate = DurableGate(self._send_all, "the consensus state")
        self.membership = Membership(
            self.roster.ids, node_id, incarnation, config.failure_timeout
        )
        self.ring = Ring(self.roster.placed, config.partitions)
        # rings built for other memberships, oldest first (L{_ring_for})
        self._rings: dict[tuple[str, ...], Ring] = {}
        if disk is None:
            self.replicas = [Replica(p) for p in range(config.partitions)]
        else:
            recovered = disk.recovered
            self.replicas = recovered.replicas
            log.info(
                "recovered {keys} keys ({size} bytes) from {path} in {seconds:.2f} s",
                keys=recovered.keys(), size=recovered.bytes(), path=disk.path,
                seconds=recovered.seconds,
            )
        self.messenger: Optional[IMessenger] = None
        self.lost_partitions: frozenset[int] = frozenset()
        self.partition_losses = 0
        self.deadlines = Deadlines()
        self._started_at = now
        self._map: Optional[ClusterMap] = None
        # what waits for the next map, each with its time limit
        self._map_waiters: dict[Deferred[None], IDelayedCall] = {}
        self._leader_seen: tuple[Optional[str], int] = (None, 0)
        self._reports: list[tuple[str, int, int, str]] = []
        # the last map and live nodes the leader planned from without
        # finding anything to change
        self._planned: tuple[Optional[ClusterMap], dict[str, int], int] = (None, {}, 0)
        self._last_gossip = float("-inf")
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = clock
        # set by stop(): a stopped node orders and answers nothing more
        self.stopped = False

        # The parts, each built with what it needs, dependencies first.
        self.calls = Calls(
            send=self._send,
            unreachable=self._unreachable,
            deadlines=self.deadlines,
            now=self._now,
        )
        self.feed = ChangeFeed(
            consensus=self.consensus,
            send=self._send,
            partition_of=self.partition_of,
            partitions=config.partitions,
            history=config.ws_history,
            now=self._now,
            replay_timeout=config.failure_timeout,
        )
        self.antientropy = AntiEntropy(
            replicas=self.replicas,
            send=self._send,
            replicate=self._replicate,
            partition_config=self.partition_config,
            now=self._now,
            interval=config.anti_entropy_interval,
        )
        self.replication = Replication(
            config=config,
            node_id=node_id,
            incarnation=incarnation,
            replicas=self.replicas,
            clock=clock,
            lease_now=lease_clock or clock.seconds,
            send=self._send,
            consensus=self.consensus,
            partition_config=self.partition_config,
            feed=self.feed,
            antientropy=self.antientropy,
            expire=self._expire,
            took_over=self._took_over,
            disk=disk,
            restarted_at=restarted_at,
        )
        self.operations = ClientOperations(
            config=config,
            node_id=node_id,
            incarnation=incarnation,
            replicas=self.replicas,
            replication=self.replication,
            calls=self.calls,
            partition_config=self.partition_config,
            now=self._now,
            deadlines=self.deadlines,
            run=0 if disk is None else disk.run,
            refusal=(lambda: None) if disk is None else disk.refusal,
        )
        self.changes = MembershipChanges(
            base=config,
            calls=self.calls,
            leader=lambda: self.consensus.leader,
            node_id=node_id,
            roster=lambda: self.roster,
            timeout=config.request_timeout,
        )
        self._dispatch = self._routes()
        self._follow_roster()

    def _routes(self) -> dict[str, Callable[[str, list], None]]:
        """
        Every message, by tag, to the part that handles it.
        """
        return {
            **{tag: self._on_consensus for tag in messages.CONSENSUS},
            messages.STATUS: self._on_status,
            messages.MAP_REQ: self._on_map_request,
            messages.MAP: self._on_map,
            messages.IN_SYNC: self._on_report,
            messages.DROP: self._on_report,
            messages.APP: self.replication.on_append,
            messages.SNAP: self.replication.on_snapshot,
            messages.APP_OK: self.replication.on_append_ok,
            messages.APP_NO: self.replication.on_append_refused,
            messages.STALE: self.replication.on_stale,
            messages.RELEASE: self.replication.on_release,
            messages.OP: self.operations.on_op,
            messages.RESTORE: self.operations.on_restore,
            messages.READ: self.operations.on_read,
            messages.PEEK: self.operations.on_peek,
            messages.LIST: self.operations.on_list,
            messages.DUMP: self.operations.on_dump,
            messages.RES: self.calls.on_answer,
            messages.PUB: self.feed.on_publish,
            messages.PUB_OK: self.feed.on_published,
            messages.EV: self.feed.on_events,
            messages.SUB: self.feed.on_subscribe,
            messages.SUB_OK: self.feed.on_subscribed,
            messages.UNSUB: self.feed.on_unsubscribe,
            messages.RPL: self.feed.on_replay,
            messages.RPL_OK: self.feed.on_replayed,
            messages.DIGEST: self.antientropy.on_digest,
            messages.DIGEST_OK: self.antientropy.on_digest_answer,
            messages.DIGEST_DIFF: self.antientropy.on_digest_answer,
            messages.CHECK: self.antientropy.on_check,
            messages.MEMBER: self.changes.on_request,
        }

    # Anti-entropy and replication call each other, as replication and
    # client operations do: the part built first reaches the other through
    # these.

    def _replicate(self, partition: int) -> None:
        self.replication.replicate(partition)

    def _expire(self, partition: int, expiry: Expire) -> None:
        self.operations.expire(partition, expiry)

    def _took_over(self, partition: int) -> None:
        self.operations.wake_held(partition)

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        self._started_at = self._now()
        self._ticker.start(self.config.heartbeat_interval / 2, now=True)

    def stop(self) -> Deferred[None]:
        """
        Stop ticking and fail what waits here.

        @return: a Deferred that fires once everything written to the data
            directory is synced.
        """
        self.stopped = True
        if self._ticker.running:
            self._ticker.stop()
        self.calls.stop()
        self.replication.stop()
        self.operations.stop()
        if self._disk is None:
            return succeed(None)
        return self._disk.stop().addErrback(self._not_synced_at_stop)

    def _not_synced_at_stop(self, failure: Failure) -> None:
        log.error(
            "could not sync {path} at stop: {error}; the next start reads what is there",
            path=self._disk.path if self._disk else None,
            error=failure.getErrorMessage(),
        )

    def _now(self) -> float:
        return self._clock.seconds()

    def _send(self, peer: str, message: list) -> bool:
        if peer == self.node_id:
            self.peer_message(peer, self.incarnation, message)
            return True
        return bool(self.messenger is not None and self.messenger.send(peer, message))

    def _send_all(self, outgoing: list[tuple[str, list]]) -> None:
        for peer, message in outgoing:
            self._send(peer, message)

    def _unreachable(self, peer: str) -> Optional[str]:
        """
        Why C{peer}'s answer to a request could not reach us, if it could
        not: its link to us is down, or it has not been heard from for the
        failure timeout (a link into a partition looks up until it times
        out).
        """
        if self.messenger is None or not self.messenger.hears_from(peer):
            return f"{peer} has no link to us for its answer"
        if self.membership.state(peer, self._now()) == DEAD:
            return f"{peer} has not been heard from"
        return None

    # -- what the rest of the node asks ------------------------------------

    @property
    def leader(self) -> Optional[str]:
        return self.consensus.leader

    @property
    def term(self) -> int:
        return self.consensus.term

    @property
    def cluster_map(self) -> Optional[ClusterMap]:
        return self._map

    def has_majority(self) -> bool:
        """
        Whether a majority of the voters is alive in this node's view.
        """
        now = self._now()
        alive = sum(1 for node in self.consensus.voters if self.membership.state(node, now) != DEAD)
        return alive >= self.consensus.majority

    def just_started(self) -> bool:
        """
        Whether we started too recently to take the peers we have not heard
        from yet for dead: operations then wait for them rather than being
        refused for want of a majority.
        """
        return self._now() - self._started_at < self.config.failure_timeout

    def partition_config(self, partition: int) -> Optional[PartitionConfig]:
        return None if self._map is None else self._map.partitions[partition]

    def partition_of(self, key: str) -> int:
        return partition_of(key, self.config.partitions)

    def key_count(self) -> int:
        return sum(len(r.store) for r in self.replicas)

    def records_in(self, namespace: str) -> int:
        """
        How many records of C{namespace} (a tag of L{twisted_kv.core.keyspace})
        this node holds copies of.
        """
        return sum(r.store.count_tagged(namespace) for r in self.replicas)

    def bytes_used(self) -> int:
        """
        About how much memory this node's records take, for C{/metrics}
        (L{ClientOperations.bytes_used}: the copies dropped and not freed
        yet included, whose keys L{key_count}, hence C{/cluster}, no longer
        counts).
        """
        return self.operations.bytes_used()

    def live_bytes(self) -> int:
        """
        The part of L{bytes_used} the copies this node holds take, without
        those it dropped: what a snapshot of its data directory holds.
        """
        return sum(r.store.bytes_used for r in self.replicas)

    @property
    def log_counts(self) -> CommitCounts:
        """
        What the node's log did since it started (all zero without a data
        directory), for the metrics.
        """
        return CommitCounts() if self._disk is None else self._disk.counts

    def sync_state(self) -> dict:
        """
        What this node tells the others about itself, for C{/cluster} and
        the metrics: C{keys} counts every record it holds a copy of, which
        C{user_keys} and C{file_records} split by namespace.
        """
        term, _, committed_index = self._position()
        return {
            "keys": self.key_count(),
            "user_keys": self.records_in(USER),
            "file_records": self.records_in(FILES),
            "synced": self.synced(),
            "executed": self.operations.executed,
            "repaired": self.antientropy.repaired_keys(),
            "antientropy_bytes": self.antientropy.bytes_sent,
            "last_full_round": self.antientropy.last_full_round,
            "term": term,
            "has_map": self.consensus.latest_map is not None,
            "map_index": committed_index,
            "log_failed": self.log_failed(),
        }

    def _position(self) -> tuple[int, tuple[int, int], int]:
        """
        This node's term, the C{(index, term)} of its newest consensus
        entry and its committed index, as it reports them to the others:
        once its log failed, only what reached its disk before, for what
        it holds in memory alone may be gone after a restart, and a peer
        trusting it could refuse its vote to the candidates that lack it.
        """
        if self.log_failed():
            term, _, index, entry_term, _, committed_index = self._durable_consensus
            return term, (index, entry_term), committed_index
        consensus = self.consensus
        return consensus.term, consensus.entry, consensus.committed_index

    def synced(self) -> bool:
        """
        Whether this node holds, in sync, every partition the ring places on
        it among the live nodes, according to a map it is sure is current
        (it hears from the leader).
        """
        if self._map is None or not self.hears_leader():
            # the map may be out of date
            return False
        live = self.membership.live(self._now())
        for index, config in enumerate(self._map.partitions):
            ideal = [n for n in self.ring.preference_list(index) if n in live]
            ideal = ideal[: self.config.replicas]
            member = config.member(self.node_id)
            mine = member is not None and member.incarnation == self.incarnation
            if self.node_id in ideal and not (mine and self.node_id in config.in_sync):
                return False
        return True

    # -- the periodic tick -------------------------------------------------

    def tick(self) -> None:
        now = self._now()
        self.deadlines.sweep(now)
        for peer in self.membership.newly_dead(now):
            log.info(
                "node {peer} is down (silent for {timeout:g} s)",
                peer=peer,
                timeout=self.config.failure_timeout,
            )
        self._consensus_out(self.consensus.tick(now))
        self._after_consensus()
        if self._disk is not None:
            self._disk.probe(self._saved_consensus)
            if self._disk.compaction_due(self.live_bytes()):
                self._disk.compact(self.replicas)
        self._find_lost_partitions(now)
        gossip_due = now - self._last_gossip >= self.config.failure_timeout / GOSSIP_PER_FAILURE_TIMEOUT
        # A node removed from the cluster has nothing more to say to it.
        if gossip_due and not self.removed():
            self._last_gossip = now
            entry = list(self._position()[1])
            status = messages.status(self.sync_state(), entry, self.feed.last_revision)
            for peer in self.consensus.peers:
                self._send(peer, status)
        if self.consensus.role == LEADER:
            self._lead(now)
        self.replication.tick(now)
        self.antientropy.tick(now)
        self.feed.tick()
        self.operations.dumps.forget_idle(now)
        self._free_dropped()

    def _free_dropped(self) -> None:
        """
        Free some of the records of the copies this node dropped.
        """
        budget = DROPPED_RECORDS_PER_TICK
        for replica in self.replicas:
            budget -= replica.release_dropped(budget)
            if budget <= 0:
                return

    def _after_consensus(self) -> None:
        leader = (self.consensus.leader, self.consensus.term)
        if leader[0] is not None and leader != self._leader_seen:
            log.info(
                "partition leader elected: {leader} (term {term})",
                leader=leader[0],
                term=leader[1],
            )
            self._leader_seen = leader
            self.feed.republish()
        self._follow_roster()
        if self.consensus.role != LEADER:
            self.changes.lost_leadership()
        committed = self.consensus.committed
        if committed is not None and committed is not self._map:
            self._apply_map(committed)
            self.changes.committed(committed.roster)

    def removed(self) -> bool:
        """
        Whether this node is no longer a member: its removal is in the map.
        """
        return self.node_id not in self.roster.ids

    def _follow_roster(self) -> None:
        """
        Take the membership of the newest map held, committed or not (as
        the consensus does): who is watched for failures, who the ring
        places partitions on, how many copies each has, who is linked to.
        """
        latest = self.consensus.latest_map
        roster = latest.roster if latest is not None and latest.roster is not None else self.roster
        if roster == self.roster:
            return
        self.roster = roster
        self.config = config_for(self._base_config, roster)
        self.membership.set_nodes(roster.ids)
        self.ring = self._ring_for(roster)
        if self.messenger is not None:
            self.messenger.set_peers(
                {n.node_id: (n.host, n.peer_port) for n in roster.nodes if n.node_id != self.node_id}
            )
        change = roster.change
        if self.removed():
            log.warn("this node was removed from the cluster: it serves nothing more; stop it")
        log.info(
            "members: {members}{change}",
            members=", ".join(roster.ids),
            change="" if change is None else f" ({change.kind} {change.node_id} in progress)",
        )

    def _find_lost_partitions(self, now: float) -> None:
        """
        Note, and log once, the partitions whose every in-sync copy is known
        to have restarted empty: their data is gone, and requests for them
        are refused at once until the leader starts them again, empty.  Their
        keys vanish without change events, so the next change delivered is
        marked as following a gap: watchers re-read.
        """
        if self._map is None:
            return
        lost = frozenset(lost_partitions(self._map, self.membership.live(now)))
        newly = lost - self.lost_partitions
        self.lost_partitions = lost
        if newly:
            self.partition_losses += len(newly)
            self.feed.gap()
            log.warn(
                "partitions {partitions} lost every in-sync copy (all restarted"
                " empty): their data is gone; they will serve again, empty",
                partitions=", ".join(map(str, sorted(newly))),
            )

    def log_failed(self) -> bool:
        """
        Whether a sync of this node's log failed: nothing it holds can be
        made durable any more, so it gives up its copies (L{_placeable}).
        """
        return self._disk is not None and self._disk.failed

    def _placeable(self, live: dict[str, int]) -> dict[str, int]:
        """
        The live nodes that may hold copies: not those whose log failed (as
        they say in their status, or this node's own), which can acknowledge
        nothing: the plan moves their partitions to the other copies, and a
        primary among them hands its partitions over.
        """
        failed = {
            node for node in live
            if (self.log_failed() if node == self.node_id
                else (self.membership.info.get(node) or {}).get("log_failed"))
        }
        return {node: incarnation for node, incarnation in live.items() if node not in failed}

    def _lead(self, now: float) -> None:
        live = self._placeable(self.membership.live(now))
        current = self.consensus.latest_map
        index = self.consensus.committed_index
        unchanged_map, unchanged_live, unchanged_index = self._planned
        if current is not None and current is unchanged_map and live == unchanged_live:
            if not self._reports and not self.changes.waiting and index == unchanged_index:
                # Planning from this map and these nodes changed nothing.
                return
        if current is None:
            proposal = initial_map(
                self.ring, self.config.partitions, live, self.config.replicas, self.roster
            )
        else:
            proposal = current
            for kind, partition, epoch, node in self._reports:
                change = mark_in_sync if kind == messages.IN_SYNC else drop_member
                proposal = change(proposal, partition, epoch, node)
            roster = self.roster
            if self.consensus.may_change_membership():
                roster = self._next_roster(proposal, live)
            replicas = config_for(self._base_config, roster).replicas
            proposal = plan(evolve(proposal, roster=roster), self._ring_for(roster), live, replicas)
        self._reports.clear()
        if proposal == current:
            self._planned = (current, live, index)
        else:
            self._consensus_out(self.consensus.propose(now, proposal))
            self._after_consensus()

    def _ring_for(self, roster: Roster) -> Ring:
        """
        The ring placing partitions on C{roster}'s placed nodes: this
        node's own, or one built before (L{RINGS_KEPT}), or a new one.  A
        ring takes 1-2 ms to build with 64 partitions, and during a change
        the leader plans from the next membership's on every tick.
        """
        if roster.placed == self.ring.node_ids:
            return self.ring
        ring = self._rings.get(roster.placed)
        if ring is None:
            ring = self._rings[roster.placed] = Ring(roster.placed, self.config.partitions)
            while len(self._rings) > RINGS_KEPT:
                del self._rings[next(iter(self._rings))]
        return ring

    def _next_roster(self, proposal: ClusterMap, live: dict[str, int]) -> Roster:
        """
        The membership of the next map: a change asked for, if any, else the
        next step of the change in progress (L{advance}).
        """
        roster = self.changes.next_roster(self.roster)
        if roster != self.roster:
            return roster
        leaving = roster.leaving
        moving = moving_partitions(proposal, self.ring, live, self.config.replicas)
        return advance(
            roster,
            frozenset(live),
            len(moving),
            leaving is not None and holds_copies(proposal, leaving),
        )

    def moving_partitions(self) -> list[int]:
        """
        The partitions of the committed map still moving to where the ring
        wants them (for C{/cluster} and the metrics).
        """
        if self._map is None:
            return []
        live = self.membership.live(self._now())
        return moving_partitions(self._map, self.ring, live, self.config.replicas)

    def unserved_partitions(self) -> list[int]:
        """
        The partitions of the committed map this node cannot serve now, in
        order: those whose primary is gone in its view (L{without_primary})
        and those lost (L{lost_partitions}), for C{/health}.
        """
        if self._map is None:
            return []
        live = self.membership.live(self._now())
        return sorted(set(without_primary(self._map, live)) | self.lost_partitions)

    # -- applying the committed map ----------------------------------------

    def _apply_map(self, cluster_map: ClusterMap) -> None:
        previous = self._map
        self._map = cluster_map
        for index, config in enumerate(cluster_map.partitions):
            if previous is not None and previous.partitions[index] == config:
                continue
            replica = self.replicas[index]
            if config.epoch < replica.epoch:
                continue
            if config.origin > replica.origin:
                replica.adopt_origin(config.origin)
                self.replication.forgotten(index)
            member = config.member(self.node_id)
            # the epoch we were primary in, if we were
            primary_in = replica.epoch if replica.is_primary else None
            if member is None and self._placed_here(index):
                # Dropped while dead or cut off, this node will be added
                # back as soon as it is live: keep what it holds, so that
                # its primary need send it only what it missed (log
                # matching checks it against the primary's log first).
                if replica.is_primary:
                    self.replication.fail_waiters(index, Retry("moved", maybe_applied=True))
                replica.step_down(config.epoch)
                replica.epoch = config.epoch
            elif member is None or member.incarnation != self.incarnation:
                if replica.is_primary:
                    self.replication.fail_waiters(index, Retry("moved", maybe_applied=True))
                held = replica.last_seq > 0 or len(replica.store) > 0
                replica.forget()
                if held:
                    self.replication.forgotten(index)
                replica.epoch = config.epoch
            elif config.primary == member:
                self.replication.take_over(index)
                continue
            else:
                if replica.is_primary:
                    self.replication.fail_waiters(index, Retry("moved", maybe_applied=True))
                    replica.step_down(config.epoch)
                replica.epoch = config.epoch
            if primary_in is not None and config.primary is not None:
                self.replication.release(index, primary_in, config.primary.node_id)
        waiters, self._map_waiters = self._map_waiters, {}
        for waiter, limit in waiters.items():
            limit.cancel()
            waiter.callback(None)
        self.operations.wake_held()

    def next_map(self, timeout: float) -> Deferred[None]:
        """
        Fires once the next committed map is applied here, or after
        C{timeout} seconds if none is: an operation refused by a primary
        that lost its role tries again as soon as the map that says where
        the partition went is known, rather than after a fixed pause.
        """
        waiter: Deferred[None] = Deferred()
        self._map_waiters[waiter] = self._clock.callLater(timeout, self._map_not_seen, waiter)
        return waiter

    def _map_not_seen(self, waiter: Deferred[None]) -> None:
        del self._map_waiters[waiter]
        waiter.callback(None)

    def _placed_here(self, partition: int) -> bool:
        """
        Whether the ring places C{partition} on this node whichever nodes
        are live: the leader then makes this node a member whenever it is.
        """
        return self.node_id in self.ring.preference_list(partition)[: self.config.replicas]

    # -- what the coordinator asks -------------------------------------------

    def peers(self) -> list[str]:
        """
        Every other node of the cluster.
        """
        return list(self.consensus.peers)

    def peer_state(self, peer: str) -> str:
        """
        C{peer}'s state (L{twisted_kv.core.membership.ALIVE}, C{SUSPECT} or
        C{DEAD}) as this node sees it now.
        """
        return self.membership.state(peer, self._now())

    def peer_silence(self, peer: str) -> Optional[float]:
        """
        Seconds since this node last heard from C{peer}, or C{None}.
        """
        return self.membership.silent_for(peer, self._now())

    def peer_report(self, peer: str) -> Optional[dict]:
        """
        What C{peer} last reported of itself (its L{sync_state}), if anything.
        """
        return self.membership.info.get(peer)

    def live_count(self) -> int:
        """
        How many nodes, this one included, are alive in this node's view.
        """
        return self.membership.live_count(self._now())

    def peer_incarnation(self, peer: str) -> Optional[int]:
        """
        The incarnation of C{peer} this node last heard from.
        """
        return self.membership.incarnation(peer)

    def call(self, peer: str, request: Request, timeout: float) -> Deferred:
        """
        Send C{request} to C{peer} and fire with its answer's payload (see
        L{Calls.call}).
        """
        return self.calls.call(peer, request, timeout)

    def limit(self, d: Deferred, deadline: float) -> Deferred:
        """
        Cancel C{d} if it has not fired by C{deadline} (checked every tick).
        """
        return self.deadlines.limit(d, deadline)

    # -- IPeerHandler --------------------------------------------------------

    def peer_up(self, peer: str, incarnation: int) -> None:
        self._note_peer(peer, incarnation)
        self.replication.peer_up(peer)
        self.feed.peer_up(peer)

    def peer_down(self, peer: str) -> None:
        self.calls.peer_down(peer)

    def peer_message(self, peer: str, incarnation: int, message: list) -> None:
        if peer != self.node_id:
            self._note_peer(peer, incarnation)
        tag = message[0]
        handler = self._dispatch.get(tag)
        if handler is None:
            log.warn("unknown message {tag!r} from {peer}", tag=tag, peer=peer)
            return
        handler(peer, message)

    def _note_peer(self, peer: str, incarnation: int) -> None:
        if self.membership.heard(peer, incarnation, self._now()):
            log.info("node {peer} is up (incarnation {inc:x})", peer=peer, inc=incarnation)

    # -- the map's messages --------------------------------------------------

    def _on_consensus(self, peer: str, message: list) -> None:
        self._consensus_out(self.consensus.receive(self._now(), peer, message))
        self._after_consensus()

    def _consensus_out(self, outgoing: Outgoing) -> None:
        """
        Send what consensus answered, once the state it answered from is on
        disk: a vote or an acknowledged entry must survive a crash, or a
        restarted node could vote twice in a term, or for a candidate
        lacking an entry it helped commit.  Whatever follows waits behind
        a state being saved, in order.
        """
        if self.log_failed():
            # Neither a vote nor an acknowledgement can be made durable:
            # say nothing, and the others go on without this node.
            return
        if self._disk is not None:
            state = self.consensus.durable_state()
            if state != self._saved_consensus:
                self._saved_consensus = state
                saved = self._disk.save_consensus(state)
                saved.addCallback(self._consensus_saved, state)
                self._consensus_gate.after(saved, outgoing)
                return
        self._consensus_gate.send(outgoing)

    def _consensus_saved(self, result: None, state: DurableState) -> None:
        self._durable_consensus = state
        return result

    def hears_leader(self) -> bool:
        """
        Whether this node knows the leader and hears from it.
        """
        leader = self.consensus.leader
        return leader is not None and self.membership.state(leader, self._now()) == ALIVE

    def _on_status(self, peer: str, message: list) -> None:
        state, entry, revision = messages.parse_status(message)
        self.membership.info[peer] = state
        self.feed.peer_delivered(peer, revision)
        self.consensus.observe(self._now(), peer, state["term"], entry)
        if state.get("map_index", 0) > self.consensus.committed_index and not self.hears_leader():
            # Cut off from the leader but not from this peer: take the
            # newer map from it, so that requests go where data now lives.
            self._send(peer, messages.map_request())

    def _on_map_request(self, peer: str, message: list) -> None:
        entry = self.consensus.committed_entry()
        if entry is not None:
            self._send(peer, messages.map_answer(*entry))

    def _on_map(self, peer: str, message: list) -> None:
        if self.consensus.adopt_committed(*messages.parse_map(message)):
            self._consensus_out([])
            self._after_consensus()

    def _on_report(self, peer: str, message: list) -> None:
        if self.consensus.role == LEADER:
            self._reports.append(messages.parse_report(message))
