# -*- test-case-name: tests.test_e2e_members -*-
"""
End-to-end test of growing and shrinking a running cluster: real C{twistd
kvnode} processes (L{tests.e2e.RealCluster}) go from three nodes to five and
back to three under a steady write load, the added nodes started with
C{--join}, the leader among those removed.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.e2e import RealCluster, kv_path


class Writer:
    """
    Writes new keys one after another through random live nodes, and
    remembers those acknowledged.
    """

    def __init__(self, cluster: RealCluster) -> None:
        self._cluster = cluster
        self._rng = random.Random(17)
        self.acknowledged: dict[str, bytes] = {}
        self.refused = 0
        self._running = True
        self._done = ensureDeferred(self._run())

    async def _run(self) -> None:
        index = 0
        while self._running:
            index += 1
            key, value = f"load/{index}", f"value {index}".encode()
            node = self._rng.choice(self._cluster.live_nodes())
            try:
                reply = await self._cluster.request("PUT", node, kv_path(key), value, timeout=10)
            except Exception:
                # the node was stopped under the request: unknown outcome
                continue
            if reply.status in (200, 201):
                self.acknowledged[key] = value
            else:
                self.refused += 1
                await deferLater(reactor, 0.05, lambda: None)

    def stop(self) -> Any:
        self._running = False
        return self._done


class GrowShrinkTests(TestCase):
    timeout = 180

    async def keys_per_node(self, cluster: RealCluster, via: str) -> dict[str, int]:
        """
        Once the change is over, the keys each node holds, as it counts them
        itself: another node's view of it is its last report, which may
        predate the end of its fill.
        """
        view = await cluster.change_done(via)
        counts: dict[str, int] = {}
        for node in view["nodes"]:
            own = await cluster.cluster_view(node["id"])
            counts[node["id"]] = next(n["keys"] for n in own["nodes"] if n["id"] == node["id"])
        return counts

    def assertShared(self, counts: dict[str, int], replicas: int) -> None:
        """
        Every node holds about its share of the copies (within half of it
        either way): the load moved was about the added node's share.
        """
        share = sum(counts.values()) / len(counts)
        self.assertEqual(len(counts), len(set(counts)))
        for node_id, count in counts.items():
            self.assertTrue(0.5 * share <= count <= 1.5 * share, (node_id, counts, replicas))

    async def test_three_to_five_to_three(self) -> None:
        """
        3 → 5 → 3 nodes while a client writes: every acknowledged write
        reads back from every remaining node, the data per node after each
        step is about an even share, and the copies follow the membership
        (a majority of it).
        """
        cluster = RealCluster(3, self.mktemp())
        self.addCleanup(cluster.stop_all)
        await cluster.start()
        await cluster.write_keys({f"k{i}": b"x" * 100 for i in range(300)})
        writer = Writer(cluster)
        steps = []
        await cluster.add_node("n4", "n2")
        steps.append(await self.keys_per_node(cluster, "n4"))
        await cluster.add_node("n5", "n4")
        steps.append(await self.keys_per_node(cluster, "n1"))
        leader = await cluster.leader()
        reply = await cluster.remove_node(leader, "n5")
        self.assertEqual(reply.status, 202, reply)
        await cluster.change_done("n5")
        await cluster.forget(leader)
        steps.append(await self.keys_per_node(cluster, "n5"))
        other = next(n for n in ("n1", "n2", "n3") if n in cluster.node_ids)
        reply = await cluster.remove_node(other, other)
        self.assertEqual(reply.status, 202, reply)
        await cluster.change_done("n5")
        await cluster.forget(other)
        steps.append(await self.keys_per_node(cluster, "n4"))
        await writer.stop()
        self.assertEqual([len(step) for step in steps], [4, 5, 4, 3])
        for step, replicas in zip(steps, (3, 3, 3, 2)):
            self.assertShared(step, replicas)
        view = await cluster.cluster_view("n4")
        self.assertEqual(view["summary"]["replicas"], 2)
        self.assertGreater(len(writer.acknowledged), 50)
        expected = {**{f"k{i}": b"x" * 100 for i in range(300)}, **writer.acknowledged}
        self.assertEqual(await cluster.read_keys(expected, concurrency=16), [])
