"""
Resident memory per key of a twisted_kv cluster.

    python bench/memory.py [--keys 1000000] [--runtime-python PATH]

Starts a fresh three-node cluster (every tunable at its default), reads each
node's RSS while it is empty, loads C{--keys} keys of 100 bytes through
every node over many keep-alive connections, waits for the cluster to settle,
and reads each node's RSS again.  Every key is stored on C{replicas} nodes
(a majority: 2 of 3), and C{/cluster} reports how many keys each node holds,
so

    bytes per key and copy = sum(RSS after - RSS empty) / sum(keys held)

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
) -> dict:
    """
    Start a fresh cluster, load C{keys} keys, and return the figures; the
    cluster is stopped before returning.
    """
    cluster = KvCluster(processes, ports, workdir, runtime, name=f"memory-{runtime.name}")
    cluster.start()
    try:
        time.sleep(2)
        empty = {node: benchlib.rss_bytes(proc.pid) for node, proc in cluster.procs.items()}
        targets = [("127.0.0.1", cluster.http_ports[node]) for node in cluster.node_ids]
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
        view = cluster.cluster_view(cluster.node_ids[0])
        held = {entry["id"]: entry["keys"] for entry in view["nodes"]}
        grown = sum(after[node] - empty[node] for node in cluster.node_ids)
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
                    "empty_mib": empty[node] / 2**20,
                    "after_mib": after[node] / 2**20,
                    "keys": held.get(node, 0),
                    "bytes_per_key": (after[node] - empty[node]) / held[node]
                    if held.get(node) else None,
                }
                for node in cluster.node_ids
            },
            "bytes_per_key_copy": grown / copies if copies else None,
        }
    finally:
        cluster.stop()


def describe(result: dict) -> list[str]:
    lines = [
        f"memory per key ({result['runtime']}): {result['keys']:,} keys of 100 bytes loaded "
        f"({result['loaded']:,} acknowledged, {result['failed']} failed, "
        f"{result['load_rate']:.0f} PUT/s); {result['copies']:,} copies held in all",
    ]
    for node, figures in result["per_node"].items():
        per_key = figures["bytes_per_key"]
        lines.append(
            f"  {node}: RSS {figures['empty_mib']:.1f} MiB empty -> {figures['after_mib']:.1f} MiB "
            f"with {figures['keys']:,} keys"
            + (f" = {per_key:.0f} bytes per key" if per_key is not None else "")
        )
    if result["bytes_per_key_copy"] is not None:
        lines.append(f"  => {result['bytes_per_key_copy']:.0f} bytes per key per copy "
                     f"(target <= 400)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=64)
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
                options.keys, options.connections,
            )
            print("\n".join(describe(result)))
    except benchlib.Interrupted as why:
        log(f"interrupted ({why})")
        sys.exit(130)
    finally:
        processes.stop_all()


if __name__ == "__main__":
    main()
