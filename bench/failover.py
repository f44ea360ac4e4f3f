# -*- test-case-name: tests.test_e2e_cluster -*-
"""
How long a leader failover interrupts writes, on a real local cluster.

    python bench/failover.py [--nodes 3] [--rounds 5] [--writers 4] [--keep DIR]

Starts a cluster of real C{twistd kvnode} processes on free loopback ports
(with L{tests.e2e.RealCluster}, the end-to-end tests' harness), keeps
C{--writers} clients writing new keys through the live nodes, and
C{--rounds} times: kills the leader with SIGKILL, measures

  - election: from the kill until every survivor's C{GET /cluster} names
    the same new, live leader;
  - first write and all partitions: from the moment of the kill, one key
    of every partition is written through the survivors until
    acknowledged; the times until the first and until the last of them
    were (partitions whose primary was elsewhere never stop; those whose
    primary was the killed leader wait for the new leader to move them);
  - resync: the killed node is restarted empty; from its start until every
    node reports every node C{"synced": true};

and counts the answers seen in the meantime.  At the end every
acknowledged key is read back from every node (nothing may be missing).
Prints one line per round, then the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from tests.e2e import RealCluster, keys_covering_partitions, kv_path  # noqa: E402
from tests.polling import poll  # noqa: E402

POLL = 0.02


class Writers:
    """
    Clients writing new keys through the live nodes, one request at a time
    each, recording every answer.
    """

    def __init__(self, cluster: RealCluster, count: int) -> None:
        self.cluster = cluster
        self.acked: dict[str, bytes] = {}
        # (sent, answered, status or -1 for a connection error)
        self.answers: list[tuple[float, float, int]] = []
        self._stop = False
        self._clients = [defer.ensureDeferred(self._client(i)) for i in range(count)]

    async def _client(self, index: int) -> None:
        c, clock, seq = self.cluster, self.cluster.reactor, 0
        while not self._stop:
            live = c.live_nodes()
            if not live:
                await deferLater(clock, POLL, lambda: None)
                continue
            node = live[(index + seq) % len(live)]
            key, value = f"bench/{index}/{seq:06d}", f"{index}:{seq}".encode()
            seq += 1
            sent = clock.seconds()
            try:
                reply = await c.request("PUT", node, kv_path(key), value, timeout=10)
                status = reply.status
            except Exception:
                status = -1
            self.answers.append((sent, clock.seconds(), status))
            if status in (200, 201):
                self.acked[key] = value
            else:
                await deferLater(clock, POLL, lambda: None)

    def statuses_between(self, start: float, end: float) -> dict[int, int]:
        counts: dict[int, int] = {}
        for sent, answered, status in self.answers:
            if start <= answered <= end:
                counts[status] = counts.get(status, 0) + 1
        return counts

    async def stop(self) -> None:
        self._stop = True
        await defer.DeferredList(self._clients)


async def probe_partitions(
    cluster: RealCluster, keys: list[str], killed_at: float
) -> tuple[float, float]:
    """
    Write each of C{keys} through the live nodes until acknowledged;
    return the seconds from C{killed_at} until the first and the last
    were.
    """
    clock = cluster.reactor

    async def probe(index: int, key: str) -> float:
        attempt = 0
        while True:
            live = cluster.live_nodes()
            try:
                node = live[(index + attempt) % len(live)]
                reply = await cluster.request("PUT", node, kv_path(key), b"probe", timeout=10)
                if reply.status in (200, 201):
                    return clock.seconds() - killed_at
            except Exception:
                pass
            attempt += 1
            await deferLater(clock, POLL, lambda: None)

    results = await defer.gatherResults(
        [defer.ensureDeferred(probe(i, k)) for i, k in enumerate(keys)]
    )
    return min(results), max(results)


async def new_leader(cluster: RealCluster, old: str) -> str:
    """
    Poll the survivors' C{/cluster} until all name one live leader, not
    C{old}.
    """

    async def agreed() -> Optional[str]:
        live = cluster.live_nodes()
        views = await defer.DeferredList(
            [cluster.cluster_view(n, timeout=2) for n in live], consumeErrors=True
        )
        leaders = {view.get("leader") if ok else None for ok, view in views}
        if len(leaders) == 1:
            (leader,) = leaders
            if leader in live and leader != old:
                return leader
        return None

    return await poll(agreed, 30, "a new leader", interval=POLL)


async def run(reactor: Any, options: argparse.Namespace) -> None:
    directory = options.keep or tempfile.mkdtemp(prefix="kv-failover-")
    cluster = RealCluster(options.nodes, directory)
    writers: Optional[Writers] = None
    rows = []
    probes = keys_covering_partitions("probe/")
    try:
        print(f"starting {options.nodes} nodes in {directory} ...", flush=True)
        await cluster.start()
        writers = Writers(cluster, options.writers)
        await poll(lambda: len(writers.acked) >= 50, 30, "the first writes")
        for round_number in range(1, options.rounds + 1):
            old = await cluster.wait_for_leader(timeout=30)
            await deferLater(reactor, 1.0, lambda: None)  # steady writes first
            killed_at = reactor.seconds()
            await cluster.kill(old)
            probing = defer.ensureDeferred(probe_partitions(cluster, probes, killed_at))
            leader = await new_leader(cluster, old)
            election = reactor.seconds() - killed_at
            first_write, every_partition = await probing
            statuses = writers.statuses_between(killed_at, killed_at + every_partition)
            restarted_at = reactor.seconds()
            await cluster.restart(old)
            await cluster.wait_for_leader(timeout=60)
            resync = reactor.seconds() - restarted_at
            rows.append((election, first_write, every_partition, resync))
            print(
                f"round {round_number}: killed leader {old}, new leader {leader}: "
                f"election {election * 1000:5.0f} ms, first write {first_write * 1000:5.0f} ms, "
                f"all partitions {every_partition * 1000:5.0f} ms, "
                f"restarted node in sync {resync * 1000:5.0f} ms; "
                f"writers' answers until all partitions: {dict(sorted(statuses.items()))}",
                flush=True,
            )
        await writers.stop()
        answers: dict[int, int] = {}
        for _, _, status in writers.answers:
            answers[status] = answers.get(status, 0) + 1
        problems = await cluster.read_keys(writers.acked)
        print()
        for column, label in enumerate(
            ["election", "kill to first write", "kill to all partitions", "restart to in sync"]
        ):
            median = statistics.median(row[column] for row in rows)
            print(f"median {label + ':':24} {median * 1000:7.0f} ms")
        print(
            f"writes: {len(writers.acked)} acknowledged; "
            f"all answers {dict(sorted(answers.items()))} (-1: connection error)"
        )
        print(f"acknowledged keys missing or wrong on some node: {len(problems)}")
        for problem in problems[:10]:
            print("  " + problem)
    finally:
        if writers is not None:
            await writers.stop()
        await cluster.stop_all()
        if not options.keep:
            shutil.rmtree(directory, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--keep", metavar="DIR", help="keep the cluster file and logs in DIR")
    options = parser.parse_args(argv)
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, options)))


if __name__ == "__main__":
    main()
