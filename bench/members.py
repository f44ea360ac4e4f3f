"""
Growing and shrinking a live cluster, on real local processes: 3 → 4 → 5 →
4 → 3 nodes, holding KEYS keys of 100 bytes, under a light probing load.

    python bench/members.py [--keys 100000] [--keep DIR] [--fill-rate SIZE]

Starts three C{twistd kvnode} processes (L{tests.e2e.RealCluster}, the
end-to-end tests' harness), loads the keys through C{POST /admin/restore}
(batches of 5,000 replicated writes, as C{kvctl snapshot restore} sends
them), then for each step measures

  - the change: from C{POST /cluster/nodes} (the added node started with
    C{--join} at once) or C{DELETE /cluster/nodes/ID} until C{/cluster}
    shows no change in progress and no partition moving; for an added node,
    also from the moment it serves C{/health} (its process started: a few
    seconds of Python imports) until then, the time its data took to move;
  - the data moved: copies each node holds before and after (from
    C{/cluster}), the share of the key copies the added node took, the
    copies created and dropped elsewhere, and the partitions each node is
    the primary of before and after;
  - client latency: one client alternating a write of a new key and a read
    of a loaded key, one request at a time, through random nodes: p50 and
    p99 while the data moves against the 10 seconds before the change.

The 5 → 4 step removes the leader.  At the end every loaded key and every
acknowledged write is read back from every node.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import sys
import tempfile
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from tests.e2e import RealCluster, kv_path  # noqa: E402

VALUE = b"x" * 100
BATCH = 5_000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


class Prober:
    """
    One client, one request at a time: a write of a new key, then a read
    of a loaded one, through random live nodes; every answer is kept with
    its time.
    """

    def __init__(self, cluster: RealCluster, keys: int) -> None:
        self.cluster = cluster
        self.keys = keys
        #: the nodes it sends to: members serving /health
        self.targets = list(cluster.node_ids)
        self.samples: list[tuple[float, float, int]] = []  # (answered, seconds, status)
        self.acked: dict[str, bytes] = {}
        self._rng = random.Random(7)
        self._stop = False
        self._done = defer.ensureDeferred(self._run())

    async def _run(self) -> None:
        clock, sequence = self.cluster.reactor, 0
        while not self._stop:
            node = self._rng.choice(self.targets)
            sequence += 1
            if sequence % 2:
                key, method, body = f"probe/{sequence}", "PUT", f"{sequence}".encode()
            else:
                key, method, body = f"load/{self._rng.randrange(self.keys):08d}", "GET", None
            sent = clock.seconds()
            try:
                reply = await self.cluster.request(method, node, kv_path(key), body, timeout=10)
                status = reply.status
            except Exception:
                status = -1
            self.samples.append((clock.seconds(), clock.seconds() - sent, status))
            if method == "PUT" and status in (200, 201):
                self.acked[key] = body
            await deferLater(clock, 0.005, lambda: None)

    def between(self, start: float, end: float) -> tuple[list[float], dict[int, int]]:
        latencies, statuses = [], {}
        for answered, seconds, status in self.samples:
            if start <= answered <= end:
                latencies.append(seconds)
                statuses[status] = statuses.get(status, 0) + 1
        return latencies, statuses

    async def stop(self) -> None:
        self._stop = True
        await self._done


async def load(cluster: RealCluster, keys: int) -> None:
    """
    Restore C{keys} keys in batches of L{BATCH}, one at a time, as C{kvctl
    snapshot restore} does: each under an id of its own, so that a batch
    sent again (after a 503 or 504) writes no key twice.
    """
    restore_id = os.urandom(8).hex()
    value = base64.b64encode(VALUE).decode()
    for start in range(0, keys, BATCH):
        records = [
            {"ns": "k", "key": f"load/{index:08d}", "value": value,
             "content_type": "application/octet-stream", "version": "0.0", "ttl": None}
            for index in range(start, min(keys, start + BATCH))
        ]
        body = json.dumps({"id": f"{restore_id}-{start // BATCH}", "records": records}).encode()
        for attempt in range(5):
            node = cluster.live_nodes()[(start // BATCH + attempt) % len(cluster.live_nodes())]
            reply = await cluster.request(
                "POST", node, "/admin/restore", body, {"Content-Type": "application/json"}, timeout=120
            )
            if reply.status == 200:
                break
            await deferLater(cluster.reactor, 0.5 * 2**attempt, lambda: None)
        else:
            raise SystemExit(f"loading: {start:,} of {keys:,} keys loaded, then {reply!r}")

async def holdings(cluster: RealCluster, via: str) -> tuple[dict[str, int], dict[str, int]]:
    """
    The key copies each node holds and the partitions it is the primary
    of, as node C{via}'s C{/cluster} says.
    """
    view = await cluster.cluster_view(via)
    nodes = view["nodes"]
    return {node["id"]: node["keys"] for node in nodes}, {node["id"]: node["primaries"] for node in nodes}


def listed(counts: dict[str, int]) -> str:
    """
    C{counts} in node order, e.g. C{n1 22, n2 21, n3 21}.
    """
    return ", ".join(f"{node} {count}" for node, count in sorted(counts.items()))


async def step(
    reactor: Any, cluster: RealCluster, prober: Prober, keys: int, label: str,
    add: Optional[tuple[str, str]] = None, remove: Optional[tuple[str, str]] = None,
) -> str:
    via = (add or remove)[1]
    before, primaries_before = await holdings(cluster, via)
    await deferLater(reactor, 10, lambda: None)  # the normal latency, just before
    began = reactor.seconds()
    if add is not None:
        await cluster.add_node(*add, timeout=120)
        prober.targets.append(add[0])
    else:
        prober.targets.remove(remove[0])
        reply = await cluster.remove_node(*remove)
        if reply.status != 202:
            raise SystemExit(f"removing {remove[0]}: {reply!r}")
    moving = reactor.seconds()
    observer = add[0] if add else next(n for n in cluster.node_ids if n != remove[0])
    await cluster.change_done(observer, timeout=600)
    done = reactor.seconds()
    took = done - began
    if remove is not None:
        await cluster.forget(remove[0])
    await cluster.wait_for_leader(timeout=60)
    await deferLater(reactor, 1, lambda: None)  # every node's count gossiped since
    after, primaries_after = await holdings(cluster, observer)
    normal, _ = prober.between(began - 10, began)
    during, statuses = prober.between(moving, done)
    created = sum(max(0, after.get(n, 0) - before.get(n, 0)) for n in after)
    dropped = sum(max(0, before[n] - after.get(n, 0)) for n in before)
    total = sum(after.values())
    moved = f"copies {sum(before.values())} -> {total}: created {created}, dropped {dropped}"
    if add is not None:
        moved += f"; {add[0]} holds {after[add[0]]} ({after[add[0]] / total:.1%} of the copies, {after[add[0]] / keys:.1%} of the keys)"
    data = f" (from the node up: {done - moving:.1f} s)" if add is not None else ""
    line = (
        f"{label:7} {took:6.1f} s{data}  {moved}\n"
        f"        latency p50/p99: before {percentile(normal, 0.5) * 1000:.1f}/{percentile(normal, 0.99) * 1000:.1f} ms,"
        f" while moving {percentile(during, 0.5) * 1000:.1f}/{percentile(during, 0.99) * 1000:.1f} ms"
        f" ({len(during)} requests, answers {dict(sorted(statuses.items()))})\n"
        f"        primaries: {listed(primaries_before)} -> {listed(primaries_after)}"
    )
    print(line, flush=True)
    return line


async def run(reactor: Any, options: argparse.Namespace) -> None:
    directory = options.keep or tempfile.mkdtemp(prefix="kv-members-")
    tunables = {"fill_rate": options.fill_rate} if options.fill_rate else {}
    cluster = RealCluster(3, directory, **tunables)
    prober: Optional[Prober] = None
    try:
        print(f"3 nodes in {directory}; loading {options.keys} keys ...", flush=True)
        await cluster.start()
        began = reactor.seconds()
        await load(cluster, options.keys)
        took = reactor.seconds() - began
        print(f"loaded in {took:.1f} s ({options.keys / took:,.0f} keys/s); load average"
              f" {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        prober = Prober(cluster, options.keys)
        await step(reactor, cluster, prober, options.keys, "3 -> 4", add=("n4", "n1"))
        await step(reactor, cluster, prober, options.keys, "4 -> 5", add=("n5", "n2"))
        leader = await cluster.leader()
        other = next(n for n in cluster.node_ids if n != leader)
        await step(reactor, cluster, prober, options.keys, "5 -> 4", remove=(leader, other))
        last = next(n for n in ("n5", "n4", "n3") if n in cluster.node_ids and n != other)
        await step(reactor, cluster, prober, options.keys, "4 -> 3", remove=(last, other))
        await prober.stop()
        expected = {f"load/{i:08d}": VALUE for i in range(0, options.keys, max(1, options.keys // 2000))}
        problems = await cluster.read_keys({**expected, **prober.acked}, concurrency=16)
        print(f"read back {len(expected)} loaded keys (a sample) and {len(prober.acked)} acknowledged"
              f" writes from every node: {len(problems)} problems")
        for problem in problems[:10]:
            print("  " + problem)
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    finally:
        if prober is not None and not prober._stop:
            await prober.stop()
        await cluster.stop_all()
        if not options.keep:
            shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--keep", metavar="DIR", help="keep the cluster's files and logs in DIR")
    parser.add_argument(
        "--fill-rate", metavar="SIZE", help="the cluster's fill_rate (e.g. 2MiB); the default otherwise"
    )
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, options)))


if __name__ == "__main__":
    main()
