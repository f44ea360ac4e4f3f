"""
Repair figures (issue: synchronisation and repair), 3 nodes:

  1. real processes on loopback: load KEYS keys, kill -9 one node, restart it
     empty, and time until every node's /cluster says it is synced; also the
     anti-entropy bytes of one round between identical replicas (/metrics);
  2. in one process (the same code, an in-memory network that counts the
     bytes each message takes on the wire): bytes on the peer links for one
     anti-entropy round with identical replicas, with 1% of keys differing
     on one replica, and to refill an empty node.

    python bench/repair.py [--keys 100000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from twisted_kv.core import messages  # noqa: E402
from twisted_kv.core.keyspace import user_key  # noqa: E402
from twisted_kv.core.records import Change  # noqa: E402
from twisted_kv.testing import MemoryCluster  # noqa: E402
from twisted_kv.wire.codec import encode  # noqa: E402


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def write_config(directory: str, interval: float) -> tuple[str, list[int]]:
    ports = free_ports(9)
    lines = [
        "[cluster]", "name = repair-bench", "secret = repair-bench-secret",
        f"anti_entropy_interval = {interval}",
    ]
    for index in range(3):
        lines += [
            f"[node:n{index + 1}]", "host = 127.0.0.1",
            f"http_port = {ports[index]}", f"peer_port = {ports[3 + index]}",
            f"ftp_port = {ports[6 + index]}",
        ]
    path = os.path.join(directory, "cluster.ini")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, ports[:3]


def start(config: str, node: str, directory: str) -> subprocess.Popen:
    log = open(os.path.join(directory, f"{node}.log"), "ab")
    return subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "kvnode", "--config", config, "--node", node],
        stdout=log, stderr=subprocess.STDOUT, cwd=directory,
    )


def get_json(port: int, path: str) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", path)
    return json.loads(connection.getresponse().read())


def metric(port: int, name: str) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def wait_until(predicate, timeout: float, step: float = 0.05) -> float:
    start_time = time.monotonic()
    while time.monotonic() - start_time < timeout:
        try:
            if predicate():
                return time.monotonic() - start_time
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(step)
    raise SystemExit(f"timed out after {timeout}s")


def all_synced(ports: list[int]) -> bool:
    views = [get_json(port, "/cluster") for port in ports]
    return all(
        n["state"] == "alive" and n["synced"] for view in views for n in view["nodes"]
    ) and len({v["leader"] for v in views}) == 1 and views[0]["leader"] is not None


def load(port: int, keys: int, connections: int = 16) -> None:
    def worker(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for index in range(offset, keys, connections):
            connection.request("PUT", f"/kv/repair/{index:08d}", body=b"x" * 100)
            response = connection.getresponse()
            response.read()
            if response.status not in (200, 201):
                raise SystemExit(f"PUT answered {response.status}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def real_cluster(keys: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        interval = 2.0
        config, ports = write_config(directory, interval)
        processes = {f"n{i + 1}": start(config, f"n{i + 1}", directory) for i in range(3)}
        try:
            wait_until(lambda: all_synced(ports), 30)
            began = time.monotonic()
            load(ports[0], keys)
            print(f"loaded {keys} keys in {time.monotonic() - began:.1f}s")
            before = sum(metric(p, "twisted_kv_antientropy_bytes_total") / 3 for p in ports)
            time.sleep(interval * 2 + 0.5)
            after = sum(metric(p, "twisted_kv_antientropy_bytes_total") / 3 for p in ports)
            print(f"anti-entropy, identical replicas: {(after - before) / 2:.0f} bytes per round (all nodes)")
            victim = "n2"
            processes[victim].send_signal(signal.SIGKILL)
            processes[victim].wait()
            time.sleep(2.5)
            processes[victim] = start(config, victim, directory)
            restarted = time.monotonic()
            wait_until(lambda: all_synced(ports), 120)
            print(f"restart empty node -> synced: {time.monotonic() - restarted:.2f}s ({keys} keys)")
        finally:
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
            for process in processes.values():
                process.wait(10)


class ByteCounter:
    """
    Counts the encoded size of every message, by tag.
    """

    def __init__(self, cluster: MemoryCluster) -> None:
        self.bytes: Counter = Counter()
        network = cluster.network
        original = network.send

        def send(sender: str, peer: str, message: list) -> bool:
            self.bytes[message[0]] += len(encode(message)) + 5
            return original(sender, peer, message)

        network.send = send

    def total(self, *tags: str) -> int:
        return sum(self.bytes[t] for t in tags)


def in_process(keys: int) -> None:
    cluster = MemoryCluster(3, anti_entropy_interval=3600)
    cluster.settle()
    node = cluster.nodes["n1"]
    coordinator = cluster.coordinators["n1"]
    for index in range(keys):
        coordinator.put(user_key(f"repair/{index:08d}"), b"x" * 100)
        if index % 1000 == 999:
            cluster.run(0.01)
    cluster.run(1)
    counter = ByteCounter(cluster)
    anti_entropy = (messages.DIGEST, messages.DIGEST_OK, messages.DIGEST_DIFF, messages.APP, messages.APP_OK)

    def one_round() -> int:
        """
        Have every partition's primary compare its digest with its members
        now (as a read repair asks it to), and count what that costs.
        """
        for partition in range(cluster.config.partitions):
            node.antientropy.check_partition(partition)
        counter.bytes.clear()
        cluster.run(0.5)
        return counter.total(*anti_entropy)

    print(f"in-process, {keys} keys: identical replicas, one round: {one_round()} bytes")
    differing = 0
    for index in range(0, keys, 100):
        key = user_key(f"repair/{index:08d}")
        partition = node.partition_of(key)
        member = node.partition_config(partition).members[1].node_id
        cluster.nodes[member].replicas[partition].apply_outside_log(Change("delete", key, 0, None))
        differing += 1
    print(f"in-process: {differing} keys (1%) missing on one replica, one round: {one_round()} bytes")
    print(f"in-process: repaired keys: {sum(n.antientropy.repaired_keys() for n in cluster.nodes.values())}")
    cluster.kill("n3")
    cluster.settle()
    cluster.start("n3")
    counter.bytes.clear()
    cluster.settle()
    refill = counter.total(messages.SNAP, messages.APP, messages.APP_OK)
    print(f"in-process: refilling an empty node: {refill} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-in-process", action="store_true")
    args = parser.parse_args()
    if not args.skip_in_process:
        in_process(args.keys)
    if not args.skip_real:
        real_cluster(args.keys)


if __name__ == "__main__":
    main()
