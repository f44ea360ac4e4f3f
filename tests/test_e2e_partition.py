# -*- test-case-name: tests.test_e2e_partition -*-
"""
End-to-end tests under network partitions: three real C{twistd kvnode}
processes, each in a network namespace of its own (L{tests.netns}), with
links between them cut (every packet silently lost) and healed while
clients write over HTTP; and a history of random operations under such
faults, checked for linearizability (L{tests.linearizability}).

They need root and iproute2, and are skipped without them.
"""

from __future__ import annotations

import os
import random
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.e2e import Reply, kv_path
from tests.linearizability import Op, check, random_operation
from tests.netns import NamespacedCluster
from tests.polling import poll

#: Seconds the two connected nodes may take to elect a leader without the
#: old one and accept writes again.
RECOVERY_LIMIT = 15.0

#: Operations each client of the history test issues at most (the checker's
#: search grows with the length of a key's history).
OPERATIONS_PER_CLIENT = 200


#: What the other answers to a write tell, as the checker records it.
_WRITE_OUTCOMES = {
    204: ("ok", None),
    404: ("failed", "not_found"),
    409: ("failed", "exists"),
    412: ("failed", "precondition"),
}


def _sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def _request_of(op: Op) -> tuple[str, Optional[bytes], dict[str, str]]:
    """
    The HTTP method, body and headers that perform C{op} through the HTTP API.
    """
    if op.kind == "get":
        return "GET", None, {}
    if op.kind == "delete":
        return "DELETE", None, {}
    if op.condition == "create":
        return "POST", op.value, {}
    if op.condition is not None:
        return "PUT", op.value, {"If-Match": f'"{op.condition[1]}"'}
    return "PUT", op.value, {}


def _observed(op: Op, reply: Optional[Reply]) -> Optional[tuple[str, Any]]:
    """
    What C{reply} (C{None}: no answer) tells of C{op}, as the checker
    records it; C{None} for an answer that promises nothing: a refusal
    (503: nothing was applied), a read flagged degraded, or a read that got
    no answer.
    """
    if reply is None or reply.status == 504:
        return None if op.kind == "get" else ("unknown", None)
    if reply.status == 503 or reply.header("X-KV-Degraded") == "true":
        return None
    if op.kind == "get":
        if reply.status == 404:
            return ("absent", None)
        return ("value", (reply.body, reply.header("ETag").strip('"')))
    if reply.status in (200, 201):
        return ("ok", reply.json()["version"])
    return _WRITE_OUTCOMES.get(reply.status, ("unexpected", reply))


class PartitionTests(TestCase):
    """
    A leader cut off from the others, a follower cut off from the leader
    only, and random cuts under random operations.
    """

    timeout = 120

    async def start_cluster(self) -> NamespacedCluster:
        cluster = NamespacedCluster(3, self.mktemp())
        self.addCleanup(cluster.stop_all)
        self.leader = await cluster.start()
        return cluster

    async def put_until_acknowledged(self, cluster: NamespacedCluster, node: str, key: str, value: bytes) -> None:
        async def acknowledged() -> Optional[bool]:
            reply = await cluster.request("PUT", node, kv_path(key), value, timeout=10)
            return True if reply.status in (200, 201) else None

        await poll(acknowledged, RECOVERY_LIMIT, f"PUT {key} through {node} to be acknowledged")

    async def test_leader_cut_off(self) -> None:
        """
        The leader loses its links to both other nodes.  These two elect a
        new leader and take writes again; the old leader refuses writes
        (503) and answers reads only flagged degraded, or not at all.  Once
        the links heal it follows the new leader, and every node returns
        every acknowledged write, including those of the partition.
        """
        c = await self.start_cluster()
        old = self.leader
        majority = [n for n in c.node_ids if n != old]
        expected: dict[str, Optional[bytes]] = {f"before/{i}": b"before %d" % i for i in range(20)}
        await c.write_keys(expected)

        c.network.isolate(old, c.node_ids)

        async def new_leader() -> Optional[str]:
            views = [await c.cluster_view(n) for n in majority]
            leaders = {view["leader"] for view in views}
            return leaders.pop() if len(leaders) == 1 and None not in leaders and old not in leaders else None

        new = await poll(new_leader, RECOVERY_LIMIT, "a new leader among the connected nodes")
        for i, key in enumerate(expected):
            value = b"during %d" % i
            await self.put_until_acknowledged(c, majority[i % 2], key, value)
            expected[key] = value

        async def refused() -> Optional[Reply]:
            reply = await c.request("PUT", old, kv_path("minority/probe"), b"x", timeout=10)
            return reply if reply.status == 503 else None

        await poll(refused, RECOVERY_LIMIT, "the old leader to refuse writes")
        for i in range(5):
            reply = await c.request("PUT", old, kv_path(f"minority/{i}"), b"x", timeout=10)
            self.assertEqual(reply.status, 503, reply)
            expected[f"minority/{i}"] = None
        expected["minority/probe"] = None
        for key in list(expected)[:20]:
            reply = await c.request("GET", old, kv_path(key), timeout=10)
            self.assertTrue(
                reply.status == 503 or reply.header("X-KV-Degraded") == "true",
                f"{key} read through the cut-off leader: {reply!r}",
            )

        mark = c.log_size(old)
        c.network.heal()
        self.assertEqual(await c.wait_for_leader(timeout=30), new)
        await c.wait_for_log(old, rf"partition leader elected: {new}\b", since=mark, timeout=10)
        self.assertEqual(await c.read_keys(expected), [])

    async def test_follower_cut_off_from_leader(self) -> None:
        """
        A follower loses its link to the leader, not to the third node.  The
        leader moves the follower's partitions away; the follower learns the
        new maps from the third node.  Writes through it are then
        acknowledged for the keys whose primary it reaches and refused
        (503) for the others, none left to time out (504): it sends nothing
        to a node it has not heard from.  Once the link
        heals, every write through it is acknowledged, and every node
        returns every acknowledged write.
        """
        c = await self.start_cluster()
        cut = next(n for n in c.node_ids if n != self.leader)
        c.network.cut(cut, self.leader)

        async def settled_without_cut() -> Optional[bool]:
            # The leader declared the follower dead and moved its
            # partitions, and the follower learned the resulting map.
            view = await c.cluster_view(self.leader)
            nodes = {entry["id"]: entry for entry in view["nodes"]}
            if nodes[cut]["state"] != "dead":
                return None
            if not all(entry["synced"] for node, entry in nodes.items() if node != cut):
                return None
            own = {entry["id"]: entry for entry in (await c.cluster_view(cut))["nodes"]}
            return True if own[cut]["map_index"] == nodes[self.leader]["map_index"] else None

        await poll(settled_without_cut, RECOVERY_LIMIT, f"the cluster to settle without {cut}")
        expected: dict[str, Optional[bytes]] = {}
        statuses: dict[int, int] = {}

        async def write(i: int) -> None:
            key, value = f"cut/{i}", b"cut %d" % i
            reply = await c.request("PUT", cut, kv_path(key), value, timeout=15)
            statuses[reply.status] = statuses.get(reply.status, 0) + 1
            expected[key] = value if reply.status in (200, 201) else None

        await DeferredList([ensureDeferred(write(i)) for i in range(40)])
        self.assertEqual(set(statuses) - {201, 503}, set(), statuses)
        self.assertIn(201, statuses)

        c.network.heal()
        await c.wait_for_leader(timeout=30)
        for i in range(10):
            key = f"healed/{i}"
            reply = await c.request("PUT", cut, kv_path(key), b"healed", timeout=10)
            self.assertEqual(reply.status, 201, reply)
            expected[key] = b"healed"
        self.assertEqual(await c.read_keys(expected), [])

    async def test_histories_under_partitions(self) -> None:
        """
        Five clients run random operations on two keys through random nodes
        (as the in-memory history tests do) while links are cut and healed
        four times: the leader from both others, a follower from the
        leader, or any two nodes from each other.  Each key's history of
        answers is linearizable.
        """
        c = await self.start_cluster()
        rng = random.Random(7)
        history: dict[str, list[Op]] = {"x": [], "y": []}
        stop: list[bool] = []

        async def client(name: str) -> None:
            for _ in range(OPERATIONS_PER_CLIENT):
                if stop:
                    return
                node, key = rng.choice(c.node_ids), rng.choice(sorted(history))
                op = random_operation(rng, history[key], name, reactor.seconds())
                history[key].append(op)
                method, body, headers = _request_of(op)
                try:
                    reply: Optional[Reply] = await c.request(
                        method, node, kv_path(key), body, headers=headers, timeout=8
                    )
                except Exception:
                    reply = None  # timed out, or the connection broke
                op.result = _observed(op, reply)
                if op.result is None:
                    history[key].remove(op)
                elif op.result[0] == "unexpected":
                    self.fail(f"{method} {key} through {node}: {reply!r}")
                elif op.result[0] != "unknown":
                    op.returned = reactor.seconds()
                await _sleep(rng.choice([0.05, 0.1, 0.2]))

        async def nemesis() -> None:
            for _ in range(4):
                await _sleep(2)
                leader = await c.leader()
                fault = rng.choice(["leader", "follower", "pair"])
                if fault == "leader":
                    c.network.isolate(leader, c.node_ids)
                elif fault == "follower":
                    c.network.cut(rng.choice([n for n in c.node_ids if n != leader]), leader)
                else:
                    c.network.cut(*rng.sample(c.node_ids, 2))
                await _sleep(rng.uniform(3, 5))
                c.network.heal()

        clients = [ensureDeferred(client(f"c{i}")) for i in range(5)]
        try:
            await nemesis()
            await _sleep(2)
        finally:
            stop.append(True)
            await DeferredList(clients)
        await c.wait_for_leader(timeout=30)
        for key, ops in history.items():
            self.assertGreater(len(ops), 50)
            if not check(ops):
                path = os.path.join(c.directory, f"history-{key}.txt")
                with open(path, "w", encoding="utf-8") as file:
                    for op in sorted(ops, key=lambda op: op.invoked):
                        file.write(f"{op!r}\n")
                self.fail(f"the history of {key} is not linearizable: {path}, node logs beside it")
