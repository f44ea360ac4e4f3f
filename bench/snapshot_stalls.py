"""
How long a snapshot of the data directory keeps the reactor from running:
one node's disk, in this process, with its stores filled, and a timer that
wants to run every millisecond while the snapshot is written.

    python bench/snapshot_stalls.py [--keys 300000] [--chunk-bytes 4194304,65536]
                                    [--rounds 2] [--dir DIR]

A snapshot takes each replica's state in the reactor thread, one replica a
turn, builds each chunk of its store there too, a turn each, and writes
them in a thread; whatever either does while holding the interpreter lock,
the reactor (or its timer) waits for.  For each chunk size asked
(C{SNAPSHOT_CHUNK_BYTES} by default: the store's key and value bytes a
snapshot record carries), in turns: the snapshot's time, and the gaps
between two runs of the timer while it was written (the longest, the 99th
percentile, how many over 5 ms and their sum).  The node's code is that
of the tree this file is in.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor, task  # noqa: E402
from twisted.internet.defer import Deferred, ensureDeferred  # noqa: E402
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool  # noqa: E402

from twisted_kv.app.service import tune_collector  # noqa: E402
from twisted_kv.cluster.durable import NodeDisk  # noqa: E402
from twisted_kv.core import replica as replica_module  # noqa: E402
from twisted_kv.core.replica import Replica  # noqa: E402
from twisted_kv.storage.fs import OSFileSystem  # noqa: E402
from twisted_kv.storage.worker import LogWorker  # noqa: E402

PARTITIONS = 64
VALUE = b"v" * 100


def filled_replicas(keys: int) -> list[Replica]:
    """
    C{PARTITIONS} replicas holding C{keys} keys of 100-byte values between
    them, as a node's would after a load.
    """
    replicas = [Replica(partition) for partition in range(PARTITIONS)]
    chunks: list[list] = [[] for _ in replicas]
    for number in range(keys):
        chunks[number % PARTITIONS].append(
            [f"bench-key-{number:010d}", VALUE, "application/octet-stream", number + 1, None]
        )
    for replica, records in zip(replicas, chunks):
        replica.restore_keys(records)
    return replicas


def gaps_while(done: Deferred, interval: float = 0.001) -> Deferred:
    """
    The gaps between runs of a timer asked to run every C{interval}
    seconds, until C{done} fires; fires with them.
    """
    gaps: list[float] = []
    last = [time.monotonic()]

    def beat() -> None:
        now = time.monotonic()
        gaps.append(now - last[0])
        last[0] = now

    timer = task.LoopingCall(beat)
    timer.start(interval, now=False)

    def stop(result: object) -> list[float]:
        timer.stop()
        return gaps

    return done.addBoth(stop)


async def one_snapshot(directory: str, replicas: list[Replica], chunk_bytes: int) -> str:
    """
    Write one snapshot of C{replicas} with chunks of C{chunk_bytes};
    describe its time and the reactor's gaps meanwhile.
    """
    replica_module.SNAPSHOT_CHUNK_BYTES = chunk_bytes
    shutil.rmtree(directory, ignore_errors=True)
    worker = LogWorker(reactor, "log")
    disk = NodeDisk.open(
        OSFileSystem(), directory, "always",
        lambda work: deferToThreadPool(reactor, reactor.getThreadPool(), work),
        reactor, PARTITIONS,
        lambda work: blockingCallFromThread(reactor, work),
        worker,
    )
    try:
        started = time.monotonic()
        gaps = await gaps_while(disk.compact(replicas))
        took = time.monotonic() - started
    finally:
        await disk.stop()
        worker.stop()
    gaps_ms = sorted(1000 * gap for gap in gaps)
    long = [gap for gap in gaps_ms if gap > 5]
    p99 = gaps_ms[int(0.99 * (len(gaps_ms) - 1))] if gaps_ms else 0.0
    return (
        f"chunks of {chunk_bytes:>9,} bytes: snapshot {took:5.2f} s; reactor gaps: "
        f"longest {gaps_ms[-1] if gaps_ms else 0:6.1f} ms, p99 {p99:5.1f} ms, "
        f"{len(long)} over 5 ms ({sum(long):.0f} ms in all)"
    )


async def main(options: argparse.Namespace) -> None:
    tune_collector()  # as a node does
    workdir = tempfile.mkdtemp(prefix="kvbench-snapshot-", dir=options.dir)
    try:
        started = time.monotonic()
        replicas = filled_replicas(options.keys)
        print(f"{sys.implementation.name}: {options.keys:,} keys of 100 bytes in "
              f"{PARTITIONS} partitions, filled in {time.monotonic() - started:.1f} s", flush=True)
        sizes = [int(size) for size in options.chunk_bytes.split(",")]
        for _ in range(options.rounds):
            for size in sizes:
                print(" ", await one_snapshot(os.path.join(workdir, "n1"), replicas, size),
                      flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=300_000)
    parser.add_argument("--chunk-bytes", default=str(replica_module.SNAPSHOT_CHUNK_BYTES),
                        help="chunk sizes to compare, separated by commas")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", help="where the data goes (default: the temporary directory)")
    options = parser.parse_args()
    task.react(lambda _: ensureDeferred(main(options)))
