# -*- test-case-name: tests.test_cluster -*-
"""
A whole cluster in one process, for deterministic tests.

L{MemoryCluster} runs N L{Node}s on one L{Clock} and connects them with a
L{MemoryNetwork} that delivers messages after a latency, in order per link,
and can kill and restart nodes, partition them, pause (hang) them, and drop
or delay messages: the faults the guarantees are about, in milliseconds of
test time and without sockets.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock, deferLater
from zope.interface import implementer

from twisted_kv.cluster.coordinator import Coordinator
from twisted_kv.cluster.durable import NodeDisk
from twisted_kv.cluster.node import Node
from twisted_kv.core.config import ClusterConfig, parse_config
from twisted_kv.core.membership import new_incarnation
from twisted_kv.core.roster import ADD, REMOVE, Roster
from twisted_kv.interfaces import IMessenger
from twisted_kv.storage.testing import CrashableFileSystem


def cluster_config(size: int = 3, **tunables: object) -> ClusterConfig:
    """
    A cluster file for C{size} nodes named n1, n2, ... on made-up ports.
    """
    lines = ["[cluster]", "name = test", "secret = test-secret"]
    lines += [f"{key} = {value}" for key, value in tunables.items()]
    for index in range(1, size + 1):
        lines += [
            f"[node:n{index}]",
            "host = 127.0.0.1",
            f"http_port = {17000 + index}",
            f"peer_port = {17100 + index}",
            f"ftp_port = {17200 + index}",
        ]
    return parse_config("\n".join(lines) + "\n", "<test>")


def _call(work: Callable[[], Any]) -> Any:
    """
    Run C{work} at once: disk work runs in the reactor's thread here.
    """
    return work()


# How long the disk work of a node with a data directory takes (a write and
# a sync).
DISK_LATENCY = 0.01


@implementer(IReactorTime)
class NodeClock:
    """
    One node's view of the cluster's clock: what it schedules runs on the
    shared clock, but nothing of it runs once the node is dead (L{stop}),
    as no code of a killed process runs.

    @ivar stopped: whether the node is dead.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.stopped = False

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> IDelayedCall:
        return self._clock.callLater(delay, self._run, f, args, kw)

    def getDelayedCalls(self) -> list[IDelayedCall]:
        return [call for call in self._clock.getDelayedCalls() if call.func == self._run]

    def _run(self, f: Callable[..., Any], args: tuple, kw: dict) -> None:
        if not self.stopped:
            f(*args, **kw)

    def stop(self) -> None:
        self.stopped = True


@implementer(IMessenger)
class _Messenger:
    """
    One node's access to the L{MemoryNetwork}.
    """

    def __init__(self, network: "MemoryNetwork", node_id: str) -> None:
        self._network = network
        self._node_id = node_id

    def send(self, peer: str, message: list) -> bool:
        return self._network.send(self._node_id, peer, message)

    def connected(self) -> set[str]:
        return self._network.reachable(self._node_id)

    def hears_from(self, peer: str) -> bool:
        return self._network.linked(peer, self._node_id)

    def set_peers(self, peers: dict[str, tuple[str, int]]) -> None:
        """
        Nothing to do: the network reaches every node by its id.
        """


class MemoryNetwork:
    """
    Links between nodes, with faults.

    @ivar latency: seconds a message takes on a link.
    @ivar jitter: up to this many seconds more, at random, each message
        (still delivered in order on its link): nodes then learn of a new
        map, or of anything else, at different moments, as busy processes do.
    @ivar drop_rate: the chance of losing any one message (on a link that
        stays up: as if a TCP connection broke and was re-established).
    """

    def __init__(self, clock: Clock, rng: random.Random, latency: float = 0.001) -> None:
        self._clock = clock
        self._rng = rng
        self.latency = latency
        self.jitter = 0.0
        # when the last message sent on each link arrives, with jitter
        self._arrivals: dict[tuple[str, str], float] = {}
        self.drop_rate = 0.0
        self.nodes: dict[str, Node] = {}
        # (sender, receiver) of every direction cut
        self._cut: set[tuple[str, str]] = set()
        # directions a staggered heal has yet to restore
        self._restoring: dict[tuple[str, str], IDelayedCall] = {}
        self._paused: set[str] = set()
        self._held: list[tuple[str, str, list]] = []
        self.sent = 0

    def linked(self, a: str, b: str) -> bool:
        """
        Whether C{a}'s messages reach C{b}.
        """
        return a in self.nodes and b in self.nodes and (a, b) not in self._cut

    def reachable(self, node_id: str) -> set[str]:
        return {peer for peer in self.nodes if peer != node_id and self.linked(node_id, peer)}

    def send(self, sender: str, peer: str, message: list) -> bool:
        if not self.linked(sender, peer) or sender in self._paused:
            return False
        self.sent += 1
        if self.drop_rate and self._rng.random() < self.drop_rate:
            return True
        incarnation = self.nodes[sender].incarnation
        delay = self.latency
        if self.jitter:
            now = self._clock.seconds()
            arrival = max(
                self._arrivals.get((sender, peer), now), now + delay + self._rng.random() * self.jitter
            )
            self._arrivals[(sender, peer)] = arrival
            delay = arrival - now
        self._clock.callLater(delay, self._deliver, sender, incarnation, peer, message)
        return True

    def _deliver(self, sender: str, incarnation: int, peer: str, message: list) -> None:
        node = self.nodes.get(peer)
        source = self.nodes.get(sender)
        if node is None or source is None or source.incarnation != incarnation:
            return
        if not self.linked(sender, peer):
            return
        if peer in self._paused:
            self._held.append((sender, peer, message))
            return
        node.peer_message(sender, incarnation, message)

    def messenger(self, node_id: str) -> IMessenger:
        """
        Node C{node_id}'s access to this network.
        """
        return _Messenger(self, node_id)

    def add(self, node: Node, messenger: Optional[IMessenger] = None) -> None:
        """
        Connect C{node} through C{messenger} (L{messenger} by default; a test
        may wrap it to inject a fault).
        """
        node.messenger = messenger or self.messenger(node.node_id)
        self.nodes[node.node_id] = node
        for peer in self.reachable(node.node_id):
            self.nodes[peer].peer_up(node.node_id, node.incarnation)
            node.peer_up(peer, self.nodes[peer].incarnation)

    def remove(self, node_id: str) -> None:
        node = self.nodes.pop(node_id)
        node.stop()
        # A dead process sends nothing more, even what was waiting for its
        # disk; and a node restarted as the same incarnation must not be
        # taken for it.
        node.messenger = None
        for peer in self.nodes.values():
            peer.peer_down(node_id)

    def partition(self, *groups: Iterable[str]) -> None:
        """
        Cut every link between nodes of different groups.
        """
        sets = [set(group) for group in groups]
        for i, first in enumerate(sets):
            for second in sets[i + 1 :]:
                for a in first:
                    for b in second:
                        for x, y in ((a, b), (b, a)):
                            self._cut.add((x, y))
                            pending = self._restoring.pop((x, y), None)
                            if pending is not None:
                                pending.cancel()  # cut again before it came back
                            if x in self.nodes:
                                self.nodes[x].peer_down(y)

    def heal(self, stagger: float = 0.0) -> None:
        """
        Restore every link cut.  With C{stagger}, each direction comes back
        at its own moment within that many seconds, as real links redial
        one by one: for a while a node may reach a peer that cannot answer.
        """
        for sender, receiver in sorted(self._cut - self._restoring.keys()):
            if stagger:
                delay = self._rng.uniform(0, stagger)
                self._restoring[sender, receiver] = self._clock.callLater(
                    delay, self._restore, sender, receiver
                )
            else:
                self._restore(sender, receiver)

    def _restore(self, sender: str, receiver: str) -> None:
        self._restoring.pop((sender, receiver), None)
        self._cut.discard((sender, receiver))
        if sender in self.nodes and receiver in self.nodes:
            self.nodes[sender].peer_up(receiver, self.nodes[receiver].incarnation)

    def pause(self, node_id: str) -> None:
        """
        The node hangs: it neither sends nor handles messages (they queue).
        """
        self._paused.add(node_id)
        self.nodes[node_id].stop()

    def resume(self, node_id: str) -> None:
        self._paused.discard(node_id)
        self.nodes[node_id].start()
        held, self._held = self._held, []
        for sender, peer, message in held:
            if peer == node_id:
                self._deliver(sender, self.nodes[sender].incarnation, peer, message)
            else:
                self._held.append((sender, peer, message))


class MemoryCluster:
    """
    N nodes, their coordinators, one clock and one network.
    """

    def __init__(
        self,
        size: int = 3,
        seed: int = 0,
        disks: bool = False,
        compact_bytes: Optional[int] = None,
        **tunables: object,
    ) -> None:
        """
        @param disks: give each node a data directory on a
            L{CrashableFileSystem} of its own (L{filesystems}), kept across
            restarts, so that tests can cut the power (L{crash}).
        @param compact_bytes: with C{disks}, snapshot a node's data once its
            log grew by this much (L{NodeDisk.compact_min_bytes}).
        """
        self._compact_bytes = compact_bytes
        if disks:
            tunables.setdefault("data_dir", "/data")
        self.config = cluster_config(size, **tunables)
        self.filesystems: dict[str, CrashableFileSystem] = {}
        # each node's machine's boot, counted: a power cut starts another
        self.boots: dict[str, int] = {}
        if disks:
            self.filesystems = {n: CrashableFileSystem() for n in self.config.node_ids}
            self.boots = {n: 0 for n in self.config.node_ids}
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.rng = random.Random(seed)
        self.network = MemoryNetwork(self.clock, self.rng)
        # the membership each node added later was given when it joined
        self.joined: dict[str, Roster] = {}
        self.nodes: dict[str, Node] = {}
        self.coordinators: dict[str, Coordinator] = {}
        # each node's clock (its latest run's)
        self.clocks: dict[str, NodeClock] = {}
        for node_id in self.config.node_ids:
            self.start(node_id)

    def start(self, node_id: str) -> Node:
        """
        Start (or restart) node C{node_id}: with its data directory, as the
        member it was (L{NodeDisk.incarnation}), if it has one; else empty,
        as a new incarnation.
        """
        clock = self.clocks[node_id] = NodeClock(self.clock)
        disk = None
        path = self.config.node_data_dir(node_id)
        if path is not None:
            # Disk work is done a moment later, as in a thread, so that a
            # power cut can fall between a write and its sync.
            disk = NodeDisk.open(
                self.filesystems[node_id], path, self.config.fsync,
                lambda work: deferLater(clock, DISK_LATENCY, work),
                clock, self.config.partitions, _call,
            )
            if self._compact_bytes is not None:
                disk.compact_min_bytes = self._compact_bytes
        incarnation = new_incarnation(self.clock.seconds(), self.rng.getrandbits(63))
        if disk is not None:
            incarnation = disk.incarnation(incarnation, f"boot {self.boots[node_id]}")
        node = Node(
            self.config,
            node_id,
            clock=clock,
            incarnation=incarnation,
            rng=random.Random(self.rng.random()),
            disk=disk,
            roster=self.joined.get(node_id),
        )
        self.nodes[node_id] = node
        self.coordinators[node_id] = Coordinator(node, clock)
        self.network.add(node)
        node.start()
        return node

    def add_member(self, node_id: str, via: str) -> Deferred[Roster]:
        """
        Ask node C{via} to add C{node_id} (on made-up ports after the
        file's); fires once the change is committed.  Start the node with
        L{join}.
        """
        index = int(node_id.lstrip("n"))
        fields = {
            "id": node_id, "host": "127.0.0.1", "http_port": 17000 + index,
            "peer_port": 17100 + index, "ftp_port": 17200 + index,
        }
        return self.nodes[via].changes.ask(ADD, fields)

    def remove_member(self, node_id: str, via: str) -> Deferred[Roster]:
        """
        Ask node C{via} to remove C{node_id}.
        """
        return self.nodes[via].changes.ask(REMOVE, node_id)

    def join(self, node_id: str, via: str) -> Node:
        """
        Start node C{node_id}, added to the cluster, with the membership
        node C{via} gives it (as C{--join} fetches it).
        """
        self.joined[node_id] = self.nodes[via].roster
        if self.config.data_dir is not None:
            self.filesystems.setdefault(node_id, CrashableFileSystem())
            self.boots.setdefault(node_id, 0)
        return self.start(node_id)

    def kill(self, node_id: str) -> None:
        """
        Kill node C{node_id}'s process: nothing it scheduled runs any more,
        its disk work included.
        """
        self.network.remove(node_id)
        self.clocks[node_id].stop()
        del self.nodes[node_id]
        del self.coordinators[node_id]

    def crash(self, node_id: str) -> None:
        """
        Cut node C{node_id}'s power: the process is gone, and its disk
        keeps only what was synced (and, at random, some of the rest).
        """
        self.kill(node_id)
        self.filesystems[node_id] = self.filesystems[node_id].crash(self.rng)
        self.boots[node_id] += 1

    def run(self, seconds: float, step: float = 0.005) -> None:
        """
        Let C{seconds} of time pass, in small steps.
        """
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))

    def leader(self) -> Optional[str]:
        """
        The leader every live node agrees on, if they all agree.
        """
        leaders = {node.leader for node in self.nodes.values()}
        if len(leaders) == 1:
            return leaders.pop()
        return None

    def settle(self, timeout: float = 10.0) -> str:
        """
        Run until the live nodes agree on a leader, every node has applied the
        leader's map, that map names only live nodes, and every node is in
        sync; return the leader.
        """
        end = self.clock.seconds() + timeout
        while self.clock.seconds() < end:
            self.run(0.05)
            leader = self.leader()
            if leader not in self.nodes:
                continue
            latest = self.nodes[leader].consensus.latest_map
            if latest is None or any(n.cluster_map != latest for n in self.nodes.values()):
                continue
            if not all(
                member.node_id in self.nodes
                and self.nodes[member.node_id].incarnation == member.incarnation
                for config in latest.partitions
                for member in config.members
            ):
                continue
            if all(n.synced() for n in self.nodes.values()):
                return leader
        raise AssertionError(f"the cluster did not settle in {timeout}s")

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
