# -*- test-case-name: tests.test_e2e_ws -*-
"""
How fast changes reach C{/ws} watchers on a real three-node cluster.

    python bench/ws_cluster.py [--writes 2000] [--watchers 10] [--size 100]
                               [--step 3] [--keep DIR]

Starts three real C{twistd kvnode} processes on free loopback ports (with
L{tests.e2e.RealCluster}, the end-to-end tests' harness); the watchers run
in this process.  Measures:

  1. write-to-delivery latency: C{--writes} sequential C{PUT /kv/lat/N}
     (treq, from this process) through one node, each timed from the request
     until the change arrives at a watcher on ANOTHER node; once with the
     watcher on the leader and the writes through a follower, once with the
     writes through one follower and the watcher on the other (the change
     then goes from the writer's node to the key's primary, to the leader
     that numbers it, to the watcher's node).  p50 and p99, with the HTTP
     acknowledgement's own for comparison.
  2. fan-out: C{--watchers} watchers spread over the three nodes watch
     C{bench/}; one C{wrk} per node writes new keys (C{bench/lua/kv.lua},
     100-byte values) for C{--step} seconds, with 1, 2, 4, ... connections
     per node, so that the write rate rises step by step.  The changes of a
     step are counted by listing its keys.  A step passes when no watcher
     was closed and each received exactly that many changes within
     L{GRACE} seconds of the step's end.  The steps stop at the first that
     fails (a watcher closed or behind), or after three steps in a row that
     did not raise the write rate (then the cluster's write path, not the
     delivery, is the limit).  The figure is the highest write rate of a
     passing step and the events per second delivered in total (that rate
     times the watchers).

Needs C{wrk} (Debian's package) for the fan-out.  Prints the CPU each node
and this process used during each step: on a small machine all of them
share the same cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Optional
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task, threads  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from bench.benchlib import connect_watcher, cpu_seconds, percentile, run_wrk  # noqa: E402
from tests.e2e import RealCluster, kv_path  # noqa: E402

#: wrk connections per node, one fan-out step each.
CONNECTIONS = (1, 2, 4, 8, 16, 32, 64)

#: Seconds after a step for every watcher to catch up.
GRACE = 5.0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def latency(
    reactor: Any, cluster: RealCluster, writer: str, watched: str, writes: int, value: bytes, tag: str
) -> tuple[list[float], list[float]]:
    """
    C{writes} sequential PUTs through C{writer}, each until its change arrives
    at a watcher on C{watched}.

    @return: the write-to-delivery and the write-to-acknowledgement times.
    """
    observer = await connect_watcher(reactor, cluster.ws_url(watched), f"lat/{tag}/", timed=True)
    delivered, acked = [], []
    try:
        for n in range(writes):
            key = f"lat/{tag}/{n}"
            arrived: defer.Deferred[float] = defer.Deferred()
            observer.factory.waiting[key] = arrived
            start = time.perf_counter()
            reply = await cluster.request("PUT", writer, kv_path(key), value)
            acked.append(time.perf_counter() - start)
            if reply.status not in (200, 201):
                raise RuntimeError(f"PUT {key} through {writer}: {reply!r}")
            delivered.append(await arrived.addTimeout(10, reactor) - start)
    finally:
        observer.sendClose(1000)
    return delivered, acked


class CPU:
    """
    CPU time used by each node and by this process between two readings.
    """

    def __init__(self, cluster: RealCluster) -> None:
        # The harness keeps each node's process protocol; its transport
        # knows the pid.
        self.pids = {n: cluster._processes[n].transport.pid for n in cluster.node_ids}
        self.pids["watchers"] = os.getpid()
        self.mark()

    def mark(self) -> None:
        self._start = time.monotonic()
        self._used = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def summary(self) -> str:
        """
        The percentage of one CPU each process used since L{mark}.
        """
        elapsed = time.monotonic() - self._start
        return ", ".join(
            f"{name} {100 * (cpu_seconds(pid) - self._used[name]) / elapsed:.0f}%"
            for name, pid in self.pids.items()
        )


async def count_keys(cluster: RealCluster, node_id: str, prefix: str) -> int:
    """
    How many keys start with C{prefix}, listed page by page.
    """
    total, start_after = 0, None
    while True:
        query = f"/kv?prefix={quote(prefix)}&limit=1000"
        if start_after is not None:
            query += f"&start_after={quote(start_after)}"
        reply = await cluster.request("GET", node_id, query)
        if reply.status != 200:
            raise RuntimeError(f"GET {query}: {reply!r}")
        page = reply.json()
        total += len(page["keys"])
        start_after = page["next"]
        if start_after is None:
            return total


async def fanout(
    reactor: Any, cluster: RealCluster, count: int, step: float
) -> Optional[tuple[int, float]]:
    nodes = [cluster.node_ids[i % len(cluster.node_ids)] for i in range(count)]
    watchers = [await connect_watcher(reactor, cluster.ws_url(n), "bench/") for n in nodes]
    spread = {n: nodes.count(n) for n in cluster.node_ids}
    print(
        f"fan-out to {count} watchers ({', '.join(f'{v} on {k}' for k, v in spread.items())}); "
        f"new keys written with 100-byte values by one wrk per node, {step:g} s per step:",
        flush=True,
    )
    cpu = CPU(cluster)
    best: Optional[tuple[int, float]] = None
    previous_rate, flat = 0.0, 0
    for number, connections in enumerate(CONNECTIONS):
        received_before = [w.received for w in watchers]
        cpu.mark()
        runs = await defer.gatherResults(
            [
                threads.deferToThread(
                    run_wrk,
                    cluster.url(node_id),
                    "kv.lua",
                    ["put", f"s{number}n{i}", "0"],
                    connections,
                    step,
                    [],
                    threads=1,
                )
                for i, node_id in enumerate(cluster.node_ids)
            ]
        )
        step_end = reactor.seconds()
        used = cpu.summary()
        # Every key is new: the keys listed are the changes made, including
        # those of requests wrk stopped waiting for.
        changes = await count_keys(cluster, cluster.node_ids[0], f"bench/s{number}n")
        rate = changes / step
        refused = sum(r["non2xx"] + r["errors"] for r in runs)
        deadline = step_end + GRACE
        caught_up_at = None
        while reactor.seconds() < deadline:
            if any(w.close_code for w in watchers):
                break
            if all(w.received - b >= changes for w, b in zip(watchers, received_before)):
                caught_up_at = reactor.seconds()
                break
            await deferLater(reactor, 0.01, lambda: None)
        closed = [(n, w) for n, w in zip(nodes, watchers) if w.close_code]
        short = [
            changes - (w.received - b)
            for w, b in zip(watchers, received_before)
            if not w.close_code and w.received - b != changes
        ]
        passed = not closed and not short
        if passed:
            outcome = (
                "every watcher got every change, the last "
                f"{(caught_up_at or step_end) - step_end:.2f} s after the writes ended"
            )
        else:
            outcome = (
                f"{len(closed)} watcher(s) closed"
                + "".join(f"; {n}: {w.close_code} {w.close_reason}" for n, w in closed[:2])
                + f"; {len(short)} not closed but short by {short} after {GRACE:g} s"
            )
        p99 = max(r["p99_ms"] for r in runs)
        print(
            f"  {connections:>3} connection(s) per node: {rate:>6.0f} changes/s "
            f"(PUT p99 {p99:.0f} ms, {refused} refused), {rate * count:>7.0f} events/s to "
            f"deliver: {outcome}; CPU {used}",
            flush=True,
        )
        if not passed:
            break
        if best is None or rate > best[1]:
            best = (connections, rate)
        flat = flat + 1 if rate < 1.1 * previous_rate else 0
        previous_rate = max(previous_rate, rate)
        if flat == 3:
            print(
                "  three more steps without a higher write rate: the write path, not the "
                "delivery, is the limit",
                flush=True,
            )
            break
    for w in watchers:
        if not w.close_code:
            w.sendClose(1000)
    return best


async def run(reactor: Any, options: argparse.Namespace) -> None:
    directory = options.keep or tempfile.mkdtemp(prefix="kv-ws-cluster-")
    cluster = RealCluster(3, directory)
    value = b"v" * options.size
    try:
        print(f"starting 3 nodes in {directory} ...", flush=True)
        leader = await cluster.start()
        first, second = [n for n in cluster.node_ids if n != leader]
        print(
            f"leader {leader}; {os.cpu_count()} CPUs shared by the nodes, this process and wrk",
            flush=True,
        )
        for writer, watched, tag, label in (
            (first, leader, "a", "writes through a follower, watcher on the leader"),
            (first, second, "b", "writes through one follower, watcher on the other"),
        ):
            delivered, acked = await latency(
                reactor, cluster, writer, watched, options.writes, value, tag
            )
            print(
                f"write-to-delivery latency, {label} ({writer} -> {watched}), "
                f"{len(delivered)} sequential PUTs: p50 {ms(statistics.median(delivered))}, "
                f"p99 {ms(percentile(delivered, 0.99))} "
                f"(HTTP acknowledgement p50 {ms(statistics.median(acked))}, "
                f"p99 {ms(percentile(acked, 0.99))})",
                flush=True,
            )
        if shutil.which("wrk") is None:
            print("fan-out skipped: it writes with wrk (apt-get install wrk)")
            return
        best = await fanout(reactor, cluster, options.watchers, options.step)
        if best is None:
            print("no step passed")
        else:
            connections, rate = best
            print(
                f"highest step with nothing dropped: {connections} connection(s) per node, "
                f"{rate:.0f} changes/s written, {rate * options.watchers:.0f} events/s "
                "delivered in total",
                flush=True,
            )
    finally:
        await cluster.stop_all()
        if not options.keep:
            shutil.rmtree(directory, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=2000, help="latency samples per placement")
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument("--size", type=int, default=100, help="value size for the latency, bytes")
    parser.add_argument("--step", type=float, default=3.0, help="seconds per fan-out rate")
    parser.add_argument("--keep", metavar="DIR", help="keep the cluster file and logs in DIR")
    options = parser.parse_args(argv)
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, options)))


if __name__ == "__main__":
    main()
