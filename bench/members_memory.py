"""
Client latency while the membership changes, without the CPU: the steps of
C{bench/members.py} (3 → 4 → 5 → 4 → 3 nodes, the 5 → 4 step removing the
leader) on a L{MemoryCluster}, in simulated time, for several seeds.

    python bench/members_memory.py [--seeds 8] [--jitter 2] [--clients 8]

Every message takes 1 ms plus up to C{--jitter} ms at random (in order on
its link), so nodes learn of each new map at different moments, as busy
processes do; nothing costs CPU time.  So what it measures is what the
protocol itself makes clients wait for while primaries move (a refused
request's retry pause, a new primary's first round, ...), apart from the
reactor stalls and CPU contention that a run of C{bench/members.py} on a
shared machine mixes in.  C{--clients} clients each alternate a write of a
new key and a read of a loaded one through random nodes, one request at a
time with 5 ms between; per step it prints p50 / p99 / max in ms, the 2
seconds before the change against while it lasts, over all seeds together,
and the worst seed's max.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted_kv.core.keyspace import user_key  # noqa: E402
from twisted_kv.testing import MemoryCluster  # noqa: E402

STEP = 0.0005
KEYS = 2_000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


class Probers:
    """
    Clients each with one request at a time; every answer is kept with
    its time.
    """

    def __init__(self, cluster: MemoryCluster, clients: int, seed: int) -> None:
        self.cluster = cluster
        self.targets = sorted(cluster.nodes)
        self.samples: list[tuple[float, float]] = []  # (answered, seconds)
        self._rng = random.Random(seed)
        self._sequence = 0
        for _ in range(clients):
            self._next()

    def _next(self) -> None:
        clock = self.cluster.clock
        self._sequence += 1
        coordinator = self.cluster.coordinators.get(self._rng.choice(self.targets))
        if coordinator is None:
            clock.callLater(0.005, self._next)
            return
        sent = clock.seconds()
        if self._sequence % 2:
            d = coordinator.put(user_key(f"probe/{self._sequence}"), b"v")
        else:
            d = coordinator.get(user_key(f"load/{self._rng.randrange(KEYS)}"))

        def answered(result: object) -> None:
            self.samples.append((clock.seconds(), clock.seconds() - sent))
            clock.callLater(0.005, self._next)

        d.addBoth(answered)

    def between(self, start: float, end: float) -> list[float]:
        return [seconds for answered, seconds in self.samples if start <= answered <= end]


def run(cluster: MemoryCluster, seconds: float) -> None:
    cluster.run(seconds, step=STEP)


def step(
    cluster: MemoryCluster, probers: Probers, add: Optional[tuple[str, str]] = None,
    remove: Optional[tuple[str, str]] = None,
) -> tuple[list[float], list[float]]:
    """
    Make one change; the latencies of the 2 s before it and of while it
    lasted (until the membership has no change in progress and no
    partition moves).
    """
    run(cluster, 2)
    began = cluster.clock.seconds()
    if add is not None:
        node_id, via = add
        cluster.add_member(node_id, via)
        run(cluster, 0.2)
        joined = cluster.join(node_id, via)
        # clients use it once it serves /health, as bench/members.py's do
        while joined.cluster_map is None or not joined.hears_leader() or joined.unserved_partitions():
            run(cluster, 0.01)
        probers.targets.append(node_id)
        observer = node_id
    else:
        node_id, observer = remove
        probers.targets.remove(node_id)
        committed: list[object] = []
        cluster.remove_member(node_id, observer).addBoth(committed.append)
        while not committed:
            run(cluster, 0.001)
    moving = cluster.clock.seconds()
    end = moving + 60
    node = cluster.nodes[observer]
    while node.roster.change is not None or node.moving_partitions():
        if cluster.clock.seconds() > end:
            raise SystemExit("the change did not end in 60 s")
        run(cluster, 0.01)
    done = cluster.clock.seconds()
    if remove is not None:
        run(cluster, 1)
        cluster.kill(node_id)
    return probers.between(began - 2, began), probers.between(moving, done)


def one_seed(seed: int, jitter: float, clients: int) -> list[tuple[list[float], list[float]]]:
    cluster = MemoryCluster(3, seed=seed)
    cluster.network.jitter = jitter
    cluster.settle()
    for start in range(0, KEYS, 200):
        for index in range(start, min(KEYS, start + 200)):
            cluster.coordinators["n1"].put(user_key(f"load/{index}"), b"x" * 100)
        run(cluster, 0.05)
    run(cluster, 1)
    probers = Probers(cluster, clients, seed)
    results = [step(cluster, probers, add=("n4", "n1")), step(cluster, probers, add=("n5", "n2"))]
    leader = cluster.leader()
    other = next(n for n in sorted(cluster.nodes) if n != leader)
    results.append(step(cluster, probers, remove=(leader, other)))
    last = next(n for n in ("n5", "n4", "n3") if n in cluster.nodes and n != other)
    results.append(step(cluster, probers, remove=(last, other)))
    cluster.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--jitter", type=float, default=2.0, help="ms")
    parser.add_argument("--clients", type=int, default=8)
    options = parser.parse_args()
    labels = ["3 -> 4", "4 -> 5", "5 -> 4 (the leader)", "4 -> 3"]
    normal: list[list[float]] = [[] for _ in labels]
    during: list[list[float]] = [[] for _ in labels]
    worst = [0.0 for _ in labels]
    for seed in range(options.seeds):
        for index, (before, moving) in enumerate(one_seed(seed, options.jitter / 1000, options.clients)):
            normal[index] += before
            during[index] += moving
            worst[index] = max([worst[index], *moving])
    print(f"{options.seeds} seeds, {options.clients} clients, 1 ms + up to {options.jitter:g} ms a message")
    for index, label in enumerate(labels):
        figures = [
            f"{percentile(values, 0.5) * 1000:.1f} / {percentile(values, 0.99) * 1000:.1f}"
            f" / {max(values) * 1000:.1f}"
            for values in (normal[index], during[index])
        ]
        print(
            f"{label:20} before {figures[0]} ms, while moving {figures[1]} ms"
            f" ({len(during[index])} requests; worst seed's max {worst[index] * 1000:.1f} ms)"
        )


if __name__ == "__main__":
    main()
