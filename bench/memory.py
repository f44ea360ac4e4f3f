"""
Resident memory per key of a twisted_kv cluster.

    python bench/memory.py [--keys 1000000] [--runtime-python PATH]

Starts a fresh three-node cluster (every tunable at its default), warms it
up by writing and then deleting C{--warm-up} keys, reads each node's RSS
while it is empty again, loads C{--keys} keys of 100 bytes through every
node over many keep-alive connections, waits for the cluster to settle, and
reads each node's RSS again.  Every key is stored on C{replicas} nodes (a
majority: 2 of 3), and C{/cluster} reports how many keys each node holds,
so

    bytes per key and copy = sum(RSS after - RSS empty) / sum(keys held)

The warm-up keeps what serving any traffic costs out of the figure: PyPy's
JIT compiles the request paths on the first few thousand requests, which
takes a hundred MiB or more that no key accounts for.  The figure from the
cold start is printed too.

It is run by bench/compare.py as part of the main benchmark, and may be run
alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
from benchlib import KvCluster, Ports, Processes, Runtime, log  # noqa: E402


def measure_memory(
    processes: Processes,
    ports: Ports,
    workdir: str,
    runtime: Runtime,
    keys: int,
    connections: int = 64,
    warm_up: int = 20_000,
) -> dict:
    """
    Start a fresh cluster, warm it up, load C{keys} keys, and return the
    figures; the cluster is stopped before returning.
    """
    cluster = KvCluster(processes, ports, workdir, runtime, name=f"memory-{runtime.name}")
    cluster.start()
    try:
        time.sleep(2)
        cold = {node: benchlib.rss_bytes(proc.pid) for node, proc in cluster.procs.items()}
        targets = [("127.0.0.1", cluster.http_ports[node]) for node in cluster.node_ids]
        log(f"memory ({runtime.label}): warming up with {warm_up} keys written and deleted")
        for request in (benchlib.kv_put_request, benchlib.kv_delete_request):
            benchlib.load(targets, lambda i: request(f"warm/{i:08d}"), warm_up, connections)
        time.sleep(2)
        empty = {node: benchlib.rss_bytes(proc.pid) for node, proc in cluster.procs.items()}
        held_empty = _keys_held(cluster)
        log(f"memory ({runtime.label}): loading {keys} keys of 100 bytes")
        loaded = benchlib.load(
            targets,
            lambda i: benchlib.kv_put_request(f"mem/{i:08d}"),
            keys,
            connections,
            progress="memory load",
        )
        log(f"memory load: {loaded}")
        # Let replication, anti-entropy and the allocator settle.
        time.sleep(5)
        after = {node: benchlib.rss_bytes(proc.pid) for node, proc in cluster.procs.items()}
        held = {node: count - held_empty.get(node, 0) for node, count in _keys_held(cluster).items()}
        grown = sum(after[node] - empty[node] for node in cluster.node_ids)
        grown_cold = sum(after[node] - cold[node] for node in cluster.node_ids)
        copies = sum(held.get(node, 0) for node in cluster.node_ids)
        return {
            "runtime": runtime.label,
            "keys": keys,
            "loaded": loaded.ok,
            "failed": loaded.failed,
            "load_rate": loaded.ok / loaded.seconds if loaded.seconds else 0.0,
            "copies": copies,
            "per_node": {
                node: {
                    "cold_mib": cold[node] / 2**20,
                    "empty_mib": empty[node] / 2**20,
                    "after_mib": after[node] / 2**20,
                    "keys": held.get(node, 0),
                    "bytes_per_key": (after[node] - empty[node]) / held[node]
                    if held.get(node) else None,
                }
                for node in cluster.node_ids
            },
            "warm_up": warm_up,
            "bytes_per_key_copy": grown / copies if copies else None,
            "cold_bytes_per_key_copy": grown_cold / copies if copies else None,
        }
    finally:
        cluster.stop()


def _keys_held(cluster: KvCluster) -> dict[str, int]:
    view = cluster.cluster_view(cluster.node_ids[0])
    return {entry["id"]: entry["keys"] for entry in view["nodes"]}


def describe(result: dict) -> list[str]:
    lines = [
        f"memory per key ({result['runtime']}): {result['keys']:,} keys of 100 bytes loaded "
        f"({result['loaded']:,} acknowledged, {result['failed']} failed, "
        f"{result['load_rate']:.0f} PUT/s); {result['copies']:,} copies held in all; "
        f"empty means after {result['warm_up']:,} keys were written and deleted",
    ]
    for node, figures in result["per_node"].items():
        per_key = figures["bytes_per_key"]
        lines.append(
            f"  {node}: RSS {figures['cold_mib']:.1f} MiB at start, {figures['empty_mib']:.1f} MiB "
            f"empty -> {figures['after_mib']:.1f} MiB "
            f"with {figures['keys']:,} keys"
            + (f" = {per_key:.0f} bytes per key" if per_key is not None else "")
        )
    if result["bytes_per_key_copy"] is not None:
        lines.append(f"  => {result['bytes_per_key_copy']:.0f} bytes per key per copy "
                     f"(target <= 400); {result['cold_bytes_per_key_copy']:.0f} from the start")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warm-up", type=int, default=20_000,
                        help="keys written and deleted before the empty RSS is read")
    parser.add_argument("--runtime", default="cpython", help="label: cpython or pypy3")
    parser.add_argument("--runtime-python", default=sys.executable,
                        help="the interpreter the nodes run with")
    options = parser.parse_args()
    benchlib.install_signal_handlers()
    processes = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="kvbench-memory-") as workdir:
            result = measure_memory(
                processes, Ports(), workdir, Runtime(options.runtime, options.runtime_python),
                options.keys, options.connections, options.warm_up,
            )
            print("\n".join(describe(result)))
    except benchlib.Interrupted as why:
        log(f"interrupted ({why})")
        sys.exit(130)
    finally:
        processes.stop_all()


if __name__ == "__main__":
    main()
