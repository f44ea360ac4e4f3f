# -*- test-case-name: tests.test_node_status -*-
"""
Tests for L{twisted_kv.web.status.NodeStatus} and L{summarize}: what
C{/cluster} says about the nodes of a L{MemoryCluster}, and its summary.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from tests.test_cluster import ClusterTestMixin
from tests.test_metrics import parse, values
from twisted_kv.core.keyspace import file_key
from twisted_kv.web.site import build_site
from twisted_kv.web.status import NodeStatus, summarize


def _node(node_id: str, state: str, synced: bool = True) -> dict:
    return {"id": node_id, "state": state, "synced": synced}


class ClusterViewTests(ClusterTestMixin, SynchronousTestCase):
    """
    The C{nodes} of a node's C{/cluster}.
    """

    def setUp(self) -> None:
        self.make_cluster(3)
        self.cluster.settle()

    def view(self, node_id: str) -> dict:
        return NodeStatus(self.cluster.nodes[node_id], self.cluster.clock).cluster_view()

    def entries(self, node_id: str) -> dict[str, dict]:
        """
        The entries of node C{node_id}'s C{/cluster}, by node id.
        """
        return {entry["id"]: entry for entry in self.view(node_id)["nodes"]}

    def test_keys_are_user_keys(self) -> None:
        """
        C{keys} counts the client keys a node holds a copy of, so that the
        counts add up to the keys times the copies kept of each; records of
        the files (chunks, manifests, ...) are counted apart, in
        C{file_records}.
        """
        for i in range(10):
            self.put("n1", f"k{i}", b"v")
        self.wait(self.cluster.coordinators["n1"].put(file_key("c/0123456789abcdef/0"), b"chunk"))
        self.cluster.run(1)
        entries = self.entries("n1").values()
        self.assertEqual(sum(entry["keys"] for entry in entries), 10 * 2)
        self.assertEqual(sum(entry["file_records"] for entry in entries), 2)

    def test_dead_node(self) -> None:
        """
        A dead node is not C{synced}, and its key counts are C{null}
        rather than what it last reported; C{silent_for} says how long ago
        that was, and C{executed} keeps the requests it executed.
        """
        for i in range(10):
            self.put("n2", f"k{i}", b"v")
        self.cluster.run(1)
        before = self.entries("n1")["n3"]
        self.assertEqual((before["synced"], before["keys"] > 0), (True, True))
        self.cluster.kill("n3")
        self.cluster.run(self.cluster.config.failure_timeout + 1)
        after = self.entries("n1")["n3"]
        self.assertEqual(
            {key: after[key] for key in ("state", "synced", "keys", "file_records", "executed")},
            {
                "state": "dead",
                "synced": False,
                "keys": None,
                "file_records": None,
                "executed": before["executed"],
            },
        )
        self.assertGreaterEqual(after["silent_for"], self.cluster.config.failure_timeout + 1)

    def test_suspect_node(self) -> None:
        """
        A suspect node's figures are what it last reported (its copies
        still count), with their age in C{silent_for}.
        """
        self.put("n2", "k", b"v")
        self.cluster.run(1)
        before = self.entries("n1")["n3"]
        self.cluster.network.pause("n3")
        self.cluster.run(self.cluster.config.failure_timeout * 0.6)
        after = self.entries("n1")["n3"]
        self.assertEqual(after["state"], "suspect")
        self.assertEqual((after["synced"], after["keys"]), (True, before["keys"]))
        self.assertGreaterEqual(after["silent_for"], self.cluster.config.failure_timeout / 2)
        self.cluster.network.resume("n3")

    def test_self_and_never_heard(self) -> None:
        """
        A node has heard from itself just now, and never from a node that
        never answered.
        """
        self.cluster.kill("n3")
        self.cluster.network.partition(["n3"], ["n1", "n2"])
        self.cluster.start("n3")
        self.cluster.run(1)
        entries = self.entries("n3")
        self.assertEqual(
            [(entries[n]["state"], entries[n]["silent_for"], entries[n]["keys"]) for n in ("n1", "n3")],
            [("dead", None, None), ("alive", 0.0, 0)],
        )

    def test_summary(self) -> None:
        """
        The view ends with its summary: all three nodes alive and in sync
        may lose one; once one died and the others caught up, none.
        """
        self.cluster.run(1)
        self.assertEqual(self.view("n1")["summary"]["text"], "3 of 3 alive: can lose 1 more")
        self.cluster.kill("n3")
        self.cluster.settle()
        self.cluster.run(1)
        summary = self.view("n1")["summary"]
        self.assertEqual(
            summary,
            {
                "nodes": 3,
                "alive": 2,
                "suspect": 0,
                "dead": 1,
                "in_sync": 2,
                "majority": 2,
                "can_lose": 0,
                "replicas": 2,
                "text": "2 of 3 alive: can lose 0 more",
            },
        )

    def get_json(self, node_id: str, path: str) -> dict:
        """
        The JSON answer of node C{node_id}'s site to C{GET path}.
        """
        response = self.successResultOf(self.site(node_id).get("http://node.example" + path))
        self.assertEqual(response.code, 200)
        return self.successResultOf(response.json())

    def site(self, node_id: str) -> StubTreq:
        """
        A client of node C{node_id}'s web site, its status read at request
        time.
        """
        site = build_site(
            self.cluster.coordinators[node_id],
            NodeStatus(self.cluster.nodes[node_id], self.cluster.clock),
            clock=self.cluster.clock,
        )
        return StubTreq(site.resource)

    def test_primaries(self) -> None:
        """
        Each node's C{primaries} in C{/cluster} and C{/cluster/nodes} is the
        number of partitions the map makes it primary of: as many as it
        acts as primary for, as its own C{twisted_kv_primary_partitions}
        says, and every partition counted once.  A dead node's partitions
        go to the others.
        """
        for dead in [(), ("n3",)]:
            for node_id in dead:
                self.cluster.kill(node_id)
                self.cluster.settle()
            alive = [n for n in self.cluster.nodes if n not in dead]
            for via in alive:
                entries = {e["id"]: e["primaries"] for e in self.get_json(via, "/cluster")["nodes"]}
                members = {m["id"]: m["primaries"] for m in self.get_json(via, "/cluster/nodes")["members"]}
                acting = {n: self.acting_primary(n) if n in alive else 0 for n in entries}
                self.assertEqual((entries, members), (acting, acting))
                self.assertEqual(sum(entries.values()), self.cluster.config.partitions)
                self.assertEqual(self.primary_partitions_metric(via), entries[via])
            self.assertEqual([acting[n] > 0 for n in sorted(acting)], [True, True, not dead])

    def acting_primary(self, node_id: str) -> int:
        """
        How many of node C{node_id}'s replicas act as their partition's
        primary.
        """
        return sum(1 for replica in self.cluster.nodes[node_id].replicas if replica.is_primary)

    def primary_partitions_metric(self, node_id: str) -> float:
        """
        Node C{node_id}'s C{twisted_kv_primary_partitions}.
        """
        response = self.successResultOf(self.site(node_id).get("http://node.example/metrics"))
        families = parse(self.successResultOf(response.text("utf-8")))
        (value,) = values(families["twisted_kv_primary_partitions"]).values()
        return value

    def test_metrics_follow_view(self) -> None:
        """
        The per-node metrics say what C{/cluster} says: client keys and file
        records apart, and a dead node neither synced nor given a key count.
        """
        self.put("n1", "k", b"v")
        self.wait(self.cluster.coordinators["n1"].put(file_key("c/0123456789abcdef/0"), b"chunk"))
        self.cluster.run(1)
        self.cluster.kill("n3")
        self.cluster.run(self.cluster.config.failure_timeout)
        response = self.successResultOf(self.site("n1").get("http://node.example/metrics"))
        families = parse(self.successResultOf(response.text("utf-8")))

        def by_node(name: str) -> dict[str, float]:
            return {dict(labels)["node"]: value for (_, labels), value in values(families[name]).items()}

        view = {n["id"]: n for n in self.view("n1")["nodes"]}
        self.assertEqual(by_node("twisted_kv_keys"), {i: view[i]["keys"] for i in ("n1", "n2")})
        self.assertEqual(
            by_node("twisted_kv_file_records"), {i: view[i]["file_records"] for i in ("n1", "n2")}
        )
        self.assertGreater(sum(by_node("twisted_kv_file_records").values()), 0)
        self.assertEqual(by_node("twisted_kv_node_synced")["n3"], 0)
        self.assertEqual(by_node("twisted_kv_node_alive")["n3"], 0)


class SummaryTests(SynchronousTestCase):
    """
    L{summarize} counts on alive nodes in sync only.
    """

    def test_all_alive(self) -> None:
        """
        Five alive nodes in sync may lose two.
        """
        summary = summarize([_node(f"n{i}", "alive") for i in range(5)], 3, 3)
        self.assertEqual((summary["can_lose"], summary["text"]), (2, "5 of 5 alive: can lose 2 more"))

    def test_suspect_and_syncing(self) -> None:
        """
        Neither a suspect node nor one catching up counts for what may
        still be lost, and the sentence names both.
        """
        nodes = [
            _node("n1", "alive"),
            _node("n2", "alive"),
            _node("n3", "alive", synced=False),
            _node("n4", "suspect"),
            _node("n5", "alive"),
        ]
        summary = summarize(nodes, 3, 3)
        self.assertEqual(
            (summary["suspect"], summary["in_sync"], summary["can_lose"], summary["text"]),
            (1, 3, 0, "4 of 5 alive, 1 suspect, 1 not in sync: can lose 0 more"),
        )

    def test_no_majority(self) -> None:
        """
        Without a majority, the sentence says that writes are refused, and
        not how many nodes are out of sync, which matters only with one.
        """
        nodes = [_node("n1", "alive", False), _node("n2", "dead", False), _node("n3", "dead", False)]
        summary = summarize(nodes, 2, 2)
        self.assertEqual(
            (summary["dead"], summary["can_lose"], summary["text"]),
            (2, 0, "1 of 3 alive: no majority (2 needed), writes are refused"),
        )
