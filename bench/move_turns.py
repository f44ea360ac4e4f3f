"""
The reactor turns a membership change costs each node, in one process: how
long the longest ones take when partitions hold about 16,000 keys each
(1,000,000 keys in 64 partitions), by kind of work. Prints figures only.

    python bench/move_turns.py                      # 8 partitions of 16,000 keys
    python bench/move_turns.py --keys 1600 --disks  # with a data directory

A MemoryCluster (the node code itself, on a simulated clock and network) of
three nodes with C{replicas = majority}: each partition's members are given
KEYS keys of 100 bytes directly (the same records on each, as a load would
leave them), then the cluster goes 3 -> 4 -> 5 -> 4 -> 3 nodes (the 5 -> 4
step removes the leader) while one client writes a new key every 2 ms.
Every peer message is encoded and decoded by the wire codec, the encoding
in its sender's turn and the decoding in its receiver's, as on a real
link. Each callable a node runs (a message it handles, a timer of its
own) is one reactor turn, timed with C{time.process_time}; the table gives,
for each kind of turn (the message's tag, or the timer's function), how
many ran, their p50, p99 and longest CPU time, and how many took over 3 ms.
A real node may handle several messages in one turn (one read from a
socket): these are the shortest turns the work allows, each one's CPU on
this machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections import defaultdict
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import LoopingCall  # noqa: E402

from twisted_kv.core import replica as replica_module  # noqa: E402
from twisted_kv.core.keyspace import user_key  # noqa: E402
from twisted_kv.core.placement import partition_of  # noqa: E402
from twisted_kv.core.records import Record, make_version  # noqa: E402
from twisted_kv.testing import MemoryCluster, NodeClock  # noqa: E402
from twisted_kv.wire.codec import decode, encode  # noqa: E402

VALUE = b"x" * 100
LONG_TURN = 0.003


class TurnTimer:
    """
    The CPU time of every turn each node runs, by kind, while L{phase}
    names what is going on.
    """

    def __init__(self) -> None:
        self.phase = "setup"
        self._collecting = 0.0
        self.turns: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def collected(self, phase: str, info: dict) -> None:
        """
        Time the garbage collector's pauses (C{gc.callbacks}): they fall
        in whichever turn allocates when one is due.
        """
        if phase == "start":
            self._collecting = time.process_time()
        else:
            pause = time.process_time() - self._collecting
            self.turns[self.phase][f"(within) gc generation {info['generation']}"].append(pause)

    def timed(self, kind: str, work: Callable[[], Any]) -> Any:
        start = time.process_time()
        try:
            return work()
        finally:
            self.turns[self.phase][kind].append(time.process_time() - start)


def timer_kind(f: Callable[..., Any]) -> str:
    if isinstance(f, LoopingCall):
        f = f.f
    name = getattr(f, "__qualname__", type(f).__name__)
    if name == "Deferred.callback":
        # MemoryCluster runs a data directory's work (in a thread in a
        # real node) as a timer: deferLater.
        return "disk work (a thread in a real node)"
    return "timer " + name


def instrument(cluster: MemoryCluster, timer: TurnTimer) -> None:
    """
    Time every turn of every node of C{cluster}, present and future, with
    its messages encoded and decoded on the way.
    """
    network = cluster.network
    send, deliver = network.send, network._deliver

    def encoded_send(sender: str, peer: str, message: list) -> bool:
        return send(sender, peer, encode(message))

    def timed_deliver(sender: str, incarnation: int, peer: str, data: bytes) -> None:
        def handle() -> None:
            message = decode(data)
            kind[0] = f"message {message[0]}"
            deliver(sender, incarnation, peer, message)

        kind = ["message"]
        start = time.process_time()
        try:
            handle()
        finally:
            timer.turns[timer.phase][kind[0]].append(time.process_time() - start)

    network.send = encoded_send
    network._deliver = timed_deliver
    run = NodeClock._run

    def timed_run(self: NodeClock, f: Callable[..., Any], args: tuple, kw: dict) -> None:
        timer.timed(timer_kind(f), lambda: run(self, f, args, kw))

    NodeClock._run = timed_run


def seed(cluster: MemoryCluster, keys_per_partition: int) -> None:
    """
    Give every member of every partition the same KEYS records, as a load
    through the cluster would have left them (without the time it takes).
    """
    partitions = cluster.config.partitions
    records: dict[int, list[list]] = {p: [] for p in range(partitions)}
    version = make_version(1, 1)
    index = 0
    while any(len(batch) < keys_per_partition for batch in records.values()):
        key = user_key(f"key{index:09d}")
        index += 1
        batch = records[partition_of(key, partitions)]
        if len(batch) < keys_per_partition:
            batch.append([key, *Record(VALUE, "application/octet-stream", version, None).fields()])
    some_node = next(iter(cluster.nodes.values()))
    assert some_node.cluster_map is not None
    for partition, config in enumerate(some_node.cluster_map.partitions):
        for member in config.members:
            cluster.nodes[member.node_id].replicas[partition].restore_keys(records[partition])
    # A load trims the logs: a new copy is then filled by a snapshot, not
    # sent the log. One write to each partition, trimmed at once, does it.
    retained, batch = replica_module.RETAINED_ENTRIES, replica_module.TRIM_BATCH
    replica_module.RETAINED_ENTRIES, replica_module.TRIM_BATCH = 0, 1
    coordinator = next(iter(cluster.coordinators.values()))
    for partition, batch_records in records.items():
        coordinator.put(batch_records[0][0], VALUE)
    cluster.run(1.0)
    replica_module.RETAINED_ENTRIES, replica_module.TRIM_BATCH = retained, batch
    assert all(r.base_seq > 0 for node in cluster.nodes.values() for r in node.replicas if len(r.store))


class Writer:
    """
    One client writing a new key every 2 ms through a node, as load.
    """

    def __init__(self, cluster: MemoryCluster, timer: TurnTimer) -> None:
        self._cluster = cluster
        self._timer = timer
        self._count = 0
        self.failed = 0
        self._call = LoopingCall(self._write)
        self._call.clock = cluster.clock
        self._call.start(0.002, now=False)

    def _write(self) -> None:
        self._timer.timed("client put", self._put)

    def _put(self) -> None:
        self._count += 1
        nodes = sorted(self._cluster.coordinators)
        coordinator = self._cluster.coordinators[nodes[self._count % len(nodes)]]
        d = coordinator.put(user_key(f"w{self._count}"), VALUE)
        d.addErrback(self._failed)

    def _failed(self, failure: object) -> None:
        self.failed += 1

    def stop(self) -> None:
        self._call.stop()


def settled(cluster: MemoryCluster, limit: float, removed: Optional[str]) -> None:
    """
    Run until no change is in progress, stop the node C{removed}, if any,
    and run until the cluster settled.
    """
    end = cluster.clock.seconds() + limit
    while cluster.clock.seconds() < end:
        cluster.run(0.1)
        if all(node.roster.change is None for n, node in cluster.nodes.items() if n != removed):
            break
    else:
        raise AssertionError(f"the change did not finish in {limit} s")
    if removed is not None:
        cluster.kill(removed)
    cluster.settle(limit)


def steps(cluster: MemoryCluster, timer: TurnTimer, limit: float) -> None:
    timer.phase = "normal (2 s)"
    cluster.run(2.0)
    for label, change in [
        ("3 -> 4", lambda leader: ("add", "n4")),
        ("4 -> 5", lambda leader: ("add", "n5")),
        ("5 -> 4 (the leader)", lambda leader: ("remove", leader)),
        ("4 -> 3", lambda leader: ("remove", "n4" if leader != "n4" else "n5")),
    ]:
        timer.phase = label
        leader = cluster.settle(limit)
        via = next(n for n in sorted(cluster.nodes) if n != leader)
        kind, node_id = change(leader)
        started = cluster.clock.seconds()
        if kind == "add":
            cluster.add_member(node_id, via)
            cluster.run(0.5)
            cluster.join(node_id, via)
        else:
            cluster.remove_member(node_id, via)
        settled(cluster, limit, node_id if kind == "remove" else None)
        print(f"{label}: {cluster.clock.seconds() - started:.1f} s simulated", file=sys.stderr)


def report(timer: TurnTimer) -> None:
    print(f"{'phase / kind of turn':<46} {'turns':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7} {'>3 ms':>6}")
    for phase, kinds in timer.turns.items():
        if phase == "setup":
            continue
        print(phase)
        rows = []
        for kind, times in kinds.items():
            ordered = sorted(times)
            rows.append((
                ordered[-1], kind, len(ordered), ordered[len(ordered) // 2],
                ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                sum(1 for t in ordered if t > LONG_TURN),
            ))
        for longest, kind, count, p50, p99, over in sorted(rows, reverse=True):
            print(f"  {kind:<44} {count:>7} {p50 * 1000:>7.2f} {p99 * 1000:>7.2f} "
                  f"{longest * 1000:>7.2f} {over:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=16_000, help="keys per partition")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--disks", action="store_true", help="give each node a data directory")
    parser.add_argument("--limit", type=float, default=600.0, help="simulated seconds a step may take")
    options = parser.parse_args()
    timer = TurnTimer()
    # As a node process has them (twisted_kv.app.service).
    gc.set_threshold(50_000, 20, 100)
    gc.callbacks.append(timer.collected)
    cluster = MemoryCluster(3, seed=1, disks=options.disks, partitions=options.partitions)
    instrument(cluster, timer)
    cluster.settle()
    seed(cluster, options.keys)
    writer = Writer(cluster, timer)
    steps(cluster, timer, options.limit)
    writer.stop()
    print(f"{options.partitions} partitions of {options.keys} keys, "
          f"data directory: {'yes' if options.disks else 'no'}; "
          f"writes failed (retried by clients): {writer.failed}")
    report(timer)


if __name__ == "__main__":
    main()
