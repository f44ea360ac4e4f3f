"""
The CPU a PUT costs each node's peer messages, in one process: what the
change feed adds, with and without watchers. Prints figures only.

    python bench/feed_cost.py                 # nobody watching, then a watcher on every node
    python bench/feed_cost.py --puts 20000    # more PUTs (PyPy needs them to warm up)

A MemoryCluster of three nodes, every peer message encoded and decoded by
the wire codec as on a real link, /ws built on every node as the node
service builds it; PUTs of new 100-byte keys through the leader's
coordinator (no HTTP). For each node, the CPU time (process_time) its
message handling took, per PUT; and the whole run's, clock and network
simulation included. Run it from two checkouts to compare them: one process
on a shared machine is far steadier than a real cluster under wrk.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted_kv.core.keyspace import user_key  # noqa: E402
from twisted_kv.testing import MemoryCluster  # noqa: E402
from twisted_kv.wire.codec import decode, encode  # noqa: E402
from twisted_kv.ws.server import WatchSession, build_ws_resource  # noqa: E402

VALUE = b"x" * 100


def measure(puts: int, watchers: bool) -> tuple[float, dict[str, float], str]:
    """
    @return: the whole run's CPU per PUT, each node's message handling per
        PUT (seconds), and the leader.
    """
    cluster = MemoryCluster(3, seed=1)
    leader = cluster.settle()
    services = []
    for kv in cluster.coordinators.values():
        _, service = build_ws_resource(kv, clock=cluster.clock)
        service.startService()
        services.append(service)
        if watchers:
            session = WatchSession(service._hub, lambda frame: None, 10)
            session.received(b'{"op": "watch", "prefix": ""}', False)
    network = cluster.network
    send = network.send
    network.send = lambda sender, peer, message: send(sender, peer, decode(encode(message)))
    spent = dict.fromkeys(cluster.nodes, 0.0)

    def timed(node_id: str, handle: Callable[..., Any]) -> Callable[..., Any]:
        def handle_timed(*args: Any) -> Any:
            start = time.process_time()
            try:
                return handle(*args)
            finally:
                spent[node_id] += time.process_time() - start

        return handle_timed

    for node_id, node in cluster.nodes.items():
        node.peer_message = timed(node_id, node.peer_message)  # type: ignore[method-assign]
    coordinator = cluster.coordinators[leader]
    for prefix, count in (("warm", min(puts, 2000)), ("bench", puts)):
        for node_id in spent:
            spent[node_id] = 0.0
        answered: list[object] = []
        start = time.process_time()
        for index in range(count):
            coordinator.put(user_key(f"{prefix}/{index}"), VALUE).addBoth(answered.append)
            if index % 8 == 7:
                cluster.run(0.002, step=0.001)
        cluster.run(0.5, step=0.001)
        total = time.process_time() - start
        assert len(answered) == count, (len(answered), count)
    for service in services:
        service.stopService()
    cluster.stop()
    return total / puts, {n: s / puts for n, s in spent.items()}, leader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=3000)
    options = parser.parse_args()
    for watchers in (False, True):
        total, spent, leader = measure(options.puts, watchers)
        nodes = ", ".join(
            f"{n}{' (leader)' if n == leader else ''} {s * 1e6:.1f}" for n, s in sorted(spent.items())
        )
        print(
            f"{'a watcher on every node' if watchers else 'nobody watching':24s}"
            f" messages {sum(spent.values()) * 1e6:6.1f} us/PUT ({nodes});"
            f" whole run {total * 1e6:6.1f} us/PUT"
        )


if __name__ == "__main__":
    main()
