# -*- test-case-name: tests.test_members -*-
"""
Growing and shrinking a running cluster (L{twisted_kv.cluster.members},
L{twisted_kv.core.roster}) on a L{MemoryCluster}: nodes added and removed
under load, with crashes and partitions in the middle of a change, checked
with the linearizability checker.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

from treq.testing import StubTreq
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.linearizability import Op, check
from tests.test_cluster import ClusterTestMixin, close_unreturned, start_clients
from tests.test_metrics import parse
from twisted_kv.cluster import node as node_module
from twisted_kv.cluster import replication as replication_module
from twisted_kv.cluster.durable import NodeDisk
from twisted_kv.core import messages
from twisted_kv.core import replica as replica_module
from twisted_kv.core.keyspace import user_key
from twisted_kv.core.roster import Roster
from twisted_kv.errors import MembershipConflict, OutcomeUnknown, UnknownMember
from twisted_kv.web.metrics import node_registry, render
from twisted_kv.web.site import build_site
from twisted_kv.web.status import NodeStatus


class MembersTestMixin(ClusterTestMixin):
    def fill(self, count: int) -> None:
        for index in range(count):
            self.put("n1", f"k{index}", f"v{index}".encode())

    def all_read_back(self, via: str, count: int) -> None:
        for index in range(count):
            self.assertEqual(self.value_at(via, f"k{index}"), f"v{index}".encode())

    def change_done(self, via: str, limit: float = 30.0) -> Roster:
        """
        Run until node C{via}'s membership has no change in progress.
        """
        end = self.cluster.clock.seconds() + limit
        while self.cluster.clock.seconds() < end:
            self.cluster.run(0.1)
            roster = self.cluster.nodes[via].roster
            if roster.change is None:
                return roster
        self.fail(f"the change was still in progress after {limit} s")

    def grow_to_four(self, via: str) -> None:
        """
        Add n4 through node C{via}, start it, and run until the change is
        done and the map has settled.
        """
        self.wait(self.cluster.add_member("n4", via))
        self.cluster.join("n4", via)
        self.change_done(via)
        self.cluster.settle()

    def slow_fills(self) -> None:
        """
        Fill new copies from snapshots (no log retained to send instead) in
        chunks of 16 bytes, a record or two each: a node sends
        C{fill_rate / 16} chunks a second.
        """
        self.patch(replica_module, "RETAINED_ENTRIES", 0)
        self.patch(replica_module, "TRIM_BATCH", 1)
        self.patch(replica_module, "FILL_CHUNK_BYTES", 16)

    def refused(self, d: Any, error: type) -> str:
        result = self.wait(d)
        self.assertIsInstance(result, Failure)
        result.trap(error)
        return result.value.message


class AddTests(MembersTestMixin, SynchronousTestCase):
    def test_added_node_gets_its_share(self) -> None:
        """
        An added node becomes a voter, holds about its share of the copies
        (a quarter with four nodes) once in sync, and with C{replicas =
        majority} every partition then has three copies; every key reads
        back through it, and the request went through a node that is not
        the leader.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        self.fill(200)
        via = next(n for n in cluster.nodes if n != leader)
        roster = self.wait(cluster.add_member("n4", via))
        self.assertEqual(roster.learner, "n4")
        cluster.join("n4", via)
        roster = self.change_done(leader)
        self.assertEqual(roster.voters, ("n1", "n2", "n3", "n4"))
        cluster.settle()
        for node in cluster.nodes.values():
            self.assertEqual(node.config.replicas, 3)
            self.assertEqual(node.consensus.voters, {"n1", "n2", "n3", "n4"})
        share = cluster.nodes["n4"].key_count() / (3 * 200)
        self.assertTrue(0.18 <= share <= 0.32, share)
        self.assertTrue(cluster.nodes["n4"].synced())
        self.all_read_back("n4", 200)

    def test_writes_go_on_while_filling(self) -> None:
        """
        A write to a partition whose new copy is still being filled does
        not wait for the fill: it is acknowledged at once, and by then every
        member of the partition, the new copy included, holds it; the new
        copy counts as in sync only once filled.
        """
        self.slow_fills()
        cluster = self.make_cluster(3, fill_rate=64)
        leader = cluster.settle()
        self.fill(300)
        self.wait(cluster.add_member("n4", leader))
        n4 = cluster.join("n4", leader)
        end = cluster.clock.seconds() + 10
        while cluster.clock.seconds() < end and all(r.filled for r in n4.replicas):
            cluster.run(0.01)
        partition = next(p for p, r in enumerate(n4.replicas) if not r.filled)
        key = next(
            f"w{i}" for i in range(10_000) if n4.partition_of(user_key(f"w{i}")) == partition
        )
        asked = cluster.clock.seconds()
        at_ack: list[tuple[float, bool, bool, list[bytes]]] = []

        def acknowledged(result: object) -> None:
            config = n4.partition_config(partition)
            held = [
                cluster.nodes[m.node_id].replicas[partition].newest(user_key(key)).value
                for m in config.members
            ]
            in_sync = "n4" in config.in_sync
            at_ack.append((cluster.clock.seconds() - asked, n4.replicas[partition].filled, in_sync, held))

        self.wait(cluster.coordinators[leader].put(user_key(key), b"during").addCallback(acknowledged))
        [(took, filled, in_sync, held)] = at_ack
        self.assertLess(took, 0.1)
        self.assertEqual((filled, in_sync), (False, False))
        self.assertGreaterEqual(len(held), 3)
        self.assertEqual(set(held), {b"during"})
        self.change_done(leader, 120)
        cluster.settle()
        self.all_read_back("n4", 300)
        self.assertEqual(self.value_at("n4", key), b"during")
        self.assertTrue(n4.synced())

    def test_rings_built_once_per_membership(self) -> None:
        """
        Planning during a change does not build the next membership's ring
        again on every tick (1-2 ms each with 64 partitions): each node
        builds at most one ring per membership it sees.
        """
        built: list[tuple[str, ...]] = []
        ring = node_module.Ring

        def counted(node_ids: Any, partitions: int) -> Any:
            built.append(tuple(node_ids))
            return ring(node_ids, partitions)

        self.patch(node_module, "Ring", counted)
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        self.fill(20)
        self.grow_to_four(leader)
        placed = set(built)
        self.assertEqual(placed, {("n1", "n2", "n3"), ("n1", "n2", "n3", "n4")})
        self.assertLessEqual(len(built), len(placed) * len(cluster.nodes))

    def test_learner_that_never_starts(self) -> None:
        """
        Until the added node is heard from, it is a learner: the voters and
        the placement are unchanged, writes go on; removing it cancels the
        addition.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        self.wait(cluster.add_member("n4", leader))
        cluster.run(3)
        self.assertEqual(cluster.nodes[leader].roster.learner, "n4")
        self.assertEqual(cluster.nodes[leader].consensus.majority, 2)
        self.fill(10)
        roster = self.wait(cluster.remove_member("n4", leader))
        self.assertEqual(roster.ids, ("n1", "n2", "n3"))
        self.assertIsNone(roster.change)


class RemoveTests(MembersTestMixin, SynchronousTestCase):
    def test_remove_the_leader(self) -> None:
        """
        The leader removes itself: its copies move first, then it leaves the
        membership and steps down; the others elect a leader and serve
        every key.
        """
        cluster = self.make_cluster(4)
        leader = cluster.settle()
        self.fill(100)
        roster = self.wait(cluster.remove_member(leader, leader))
        self.assertEqual(roster.leaving, leader)
        rest = next(n for n in cluster.nodes if n != leader)
        roster = self.change_done(rest)
        self.assertNotIn(leader, roster.ids)
        self.assertEqual(cluster.nodes[leader].key_count(), 0)
        cluster.kill(leader)
        new_leader = cluster.settle()
        self.assertNotEqual(new_leader, leader)
        for node in cluster.nodes.values():
            self.assertEqual(node.config.replicas, 2)
        self.all_read_back(rest, 100)

    def test_remove_dead_node(self) -> None:
        """
        A dead node is removed without waiting for it: its copies are
        rebuilt from the survivors.
        """
        cluster = self.make_cluster(4)
        cluster.settle()
        self.fill(100)
        cluster.kill("n4")
        cluster.run(3)
        self.wait(cluster.remove_member("n4", "n1"))
        roster = self.change_done("n1")
        self.assertEqual(roster.ids, ("n1", "n2", "n3"))
        cluster.settle()
        self.assertEqual(sum(n.key_count() for n in cluster.nodes.values()), 200)
        self.all_read_back("n2", 100)

    def test_dropped_copies_freed_a_batch_per_tick(self) -> None:
        """
        The records of copies a node drops are freed by its ticks, at most
        L{node_module.DROPPED_RECORDS_PER_TICK} each, not in the turn that
        drops them.
        """
        self.patch(node_module, "DROPPED_RECORDS_PER_TICK", 5)
        cluster = self.make_cluster(4)
        cluster.settle()
        self.fill(100)
        n1 = cluster.nodes["n1"]
        held = n1.key_count()
        self.assertGreater(held, 10)
        for replica in n1.replicas:
            replica.forget()
        self.assertEqual(n1.key_count(), 0)
        n1.tick()
        n1.tick()
        self.assertEqual(sum(r.release_dropped(held) for r in n1.replicas), held - 10)

    def test_dropped_copies_count_in_memory_until_freed(self) -> None:
        """
        The records of copies a node drops count in its memory figure
        (C{twisted_kv_memory_bytes}, what C{memory_limit} bounds) until its
        ticks free them, falling as they do; its key count (C{/cluster})
        and the live data its snapshots are measured against fall at once.
        """
        self.patch(node_module, "DROPPED_RECORDS_PER_TICK", 5)
        cluster = self.make_cluster(4, disks=True)
        cluster.settle()
        self.fill(100)
        n1 = cluster.nodes["n1"]
        status = NodeStatus(n1, cluster.clock)

        def memory() -> float:
            families = parse(render(node_registry(status.metrics)).decode("utf-8"))
            return families["twisted_kv_memory_bytes"].samples[0].value

        def keys() -> int:
            return next(n["keys"] for n in status.cluster_view()["nodes"] if n["id"] == "n1")

        held = n1.bytes_used()
        self.assertEqual((memory(), n1.live_bytes()), (held, held))
        self.assertGreater(keys(), 10)
        for replica in n1.replicas:
            replica.forget()
        self.assertEqual((memory(), n1.live_bytes(), keys()), (held, 0, 0))
        measured: list[int] = []
        self.patch(
            NodeDisk, "compaction_due",
            lambda disk, live_bytes: disk is n1._disk and measured.append(live_bytes),
        )
        left = [memory()]
        while left[-1] and len(left) < 100:
            n1.tick()
            left.append(memory())
        self.assertEqual(left, sorted(left, reverse=True))
        self.assertEqual((left[-1], len(set(left)) > 10, set(measured)), (0, True, {0}))

    def test_refusals(self) -> None:
        """
        One change at a time, never fewer than three members, and only
        members can be removed: each refused with its reason.
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        self.assertIn("at least 3", self.refused(cluster.remove_member("n2", "n3"), MembershipConflict))
        self.refused(cluster.remove_member("n9", "n3"), UnknownMember)
        self.wait(cluster.add_member("n4", leader))
        message = self.refused(cluster.add_member("n5", "n2"), MembershipConflict)
        self.assertIn("in progress (adding n4)", message)


class ForwardingTests(MembersTestMixin, SynchronousTestCase):
    def test_leader_silent(self) -> None:
        """
        A change forwarded to a leader that never answers fails, after the
        request timeout, as of unknown outcome (it may still be made).
        """
        cluster = self.make_cluster(3)
        leader = cluster.settle()
        via = next(n for n in cluster.nodes if n != leader)
        self.lose_messages(lambda sender, peer, message: message[0] == "member")
        result = self.wait(cluster.remove_member("n9", via), limit=cluster.config.request_timeout + 1)
        self.assertIsInstance(result, Failure)
        result.trap(OutcomeUnknown)


class PersistenceTests(MembersTestMixin, SynchronousTestCase):
    def test_membership_survives_power_cuts(self) -> None:
        """
        With data directories, the membership is in the consensus state on
        disk: nodes whose power is cut come back with it, and the added node
        is still a member and still holds its data.
        """
        cluster = self.make_cluster(3, disks=True)
        leader = cluster.settle()
        self.fill(50)
        self.grow_to_four(leader)
        for node_id in list(cluster.nodes):
            cluster.crash(node_id)
        for node_id in ("n1", "n2", "n3", "n4"):
            node = cluster.start(node_id)
            self.assertEqual(node.roster.voters, ("n1", "n2", "n3", "n4"))
        cluster.settle()
        self.all_read_back("n4", 50)


class LinearizabilityTests(MembersTestMixin, SynchronousTestCase):
    """
    Random concurrent operations while a node is added and another removed,
    with a crash or a partition in the middle of each change.
    """

    def history(self, seed: int, late_releases: bool = False) -> dict[str, list[Op]]:
        """
        Operations while n4 is added and a node (perhaps the leader) is
        removed, the new copies filled from snapshots in many chunks; on
        even seeds the nodes keep their data on disks whose
        power is cut, on odd ones in memory (a killed node comes back
        empty).

        @param late_releases: delay each old primary's C{release} by up to
            100 ms, so that many requests reach new primaries before they
            take over, and are held there.
        """
        cluster = self.make_cluster(3, disks=seed % 2 == 0, fill_rate=1024)
        cluster.settle()
        self.fill(200)
        rng = random.Random(seed)
        if late_releases:
            send = cluster.network.send

            def late(sender: str, peer: str, message: list) -> bool:
                if message[0] == messages.RELEASE:
                    cluster.clock.callLater(rng.uniform(0, 0.1), send, sender, peer, message)
                    return True
                return send(sender, peer, message)

            self.patch(cluster.network, "send", late)
        history: dict[str, list[Op]] = {"x": [], "y": []}
        running = [True]
        start_clients(
            cluster, history, rng,
            nodes=lambda: sorted(cluster.nodes),
            stopped=lambda: not running[0],
        )
        cluster.run(0.5)
        self.wait(cluster.add_member("n4", "n2"), 30)
        cluster.join("n4", "n2")
        cluster.run(rng.uniform(0.2, 1.5))
        self.fault(rng)
        self.change_done("n4", 60)
        cluster.settle(30)
        leaving = rng.choice(["n1", "n2", "n3", "n4", cluster.leader() or "n1"])
        self.wait(cluster.remove_member(leaving, "n4" if leaving != "n4" else "n3"), 30)
        cluster.run(rng.uniform(0.2, 1.5))
        self.fault(rng, spare=leaving)
        self.change_done(next(n for n in sorted(cluster.nodes) if n != leaving), 60)
        running[0] = False
        cluster.run(8)
        close_unreturned(history)
        return history

    def fault(self, rng: random.Random, spare: str = "") -> None:
        """
        Kill a node (cut its power, with disks) and restart it, or cut the
        leader off for two seconds, or lose messages for a while.
        """
        cluster = self.cluster
        kind = rng.choice(["kill", "isolate", "drop"])
        leader = cluster.leader() or "n1"
        if kind == "kill":
            victim = rng.choice(sorted(n for n in cluster.nodes if n != spare))
            if cluster.filesystems:
                cluster.crash(victim)
            else:
                cluster.kill(victim)
            cluster.run(rng.uniform(0.5, 2))
            cluster.start(victim)
        elif kind == "isolate":
            cluster.network.partition([leader], [n for n in cluster.nodes if n != leader])
            cluster.run(2)
            cluster.network.heal(stagger=0.3)
        else:
            cluster.network.drop_rate = 0.05
            cluster.run(1)
            cluster.network.drop_rate = 0.0

    def test_histories(self) -> None:
        self.slow_fills()
        for seed in range(8):
            self.check_history(seed, self.history(seed))

    def test_histories_with_late_releases(self) -> None:
        """
        The same with every C{release} late: requests held by new primaries
        until they take over keep the histories linearizable.
        """
        self.slow_fills()
        held = 0
        for seed in range(8, 16):
            history = self.history(seed, late_releases=True)
            held += sum(node.operations.held for node in self.cluster.nodes.values())
            self.check_history(seed, history)
        self.assertGreater(held, 0)

    def check_history(self, seed: int, history: dict[str, list[Op]]) -> None:
        for key, ops in history.items():
            self.assertTrue(len(ops) > 20, (seed, key, len(ops)))
            self.assertTrue(check(ops), f"seed {seed}, key {key}: not linearizable")
        self.cluster.stop()


class HTTPTests(MembersTestMixin, SynchronousTestCase):
    """
    C{/cluster/nodes} adds, removes and lists members through any node, and
    C{/cluster} and C{/metrics} show a change in progress.
    """

    def setUp(self) -> None:
        self.make_cluster(3)
        self.leader = self.cluster.settle()
        self.via = next(n for n in self.cluster.nodes if n != self.leader)
        site = build_site(
            self.cluster.coordinators[self.via],
            NodeStatus(self.cluster.nodes[self.via], self.cluster.clock),
            clock=self.cluster.clock,
        )
        self.stub = StubTreq(site.resource)

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        d = self.stub.request(method, f"http://node.example{path}", **kwargs)
        box: list = []
        d.addBoth(box.append)
        end = self.cluster.clock.seconds() + 10
        while not box and self.cluster.clock.seconds() < end:
            self.cluster.run(0.01)
            self.stub.flush()
        response = box[0]
        body = self.successResultOf(response.text("utf-8"))
        return response.code, (json.loads(body) if body.startswith(("{", "[")) else body)

    def test_add_list_and_watch(self) -> None:
        new = {"id": "n4", "host": "127.0.0.1", "http_port": 17004, "peer_port": 17104, "ftp_port": 17204}
        code, body = self.call("POST", "/cluster/nodes", json=new)
        self.assertEqual(code, 202)
        self.assertEqual(body["change"], {"kind": "add", "node": "n4"})
        self.assertEqual(body["members"][-1], {**new, "role": "joining", "voter": False, "primaries": 0})
        code, again = self.call("POST", "/cluster/nodes", json={**new, "id": "n5", "http_port": 1})
        self.assertEqual((code, again["error"]), (409, "membership_conflict"))
        self.cluster.join("n4", self.via)
        code, view = self.call("GET", "/cluster")
        self.assertEqual({n["id"]: n["role"] for n in view["nodes"]}["n4"], "joining")
        self.assertEqual(view["change"], {"kind": "add", "node": "n4"})
        code, metrics = self.call("GET", "/metrics")
        self.assertIn('twisted_kv_node_joining{node="n4"} 1.0', metrics)
        self.change_done(self.via)
        code, view = self.call("GET", "/cluster")
        self.assertEqual((view["change"], view["moving_partitions"]), (None, []))
        self.assertEqual(
            {n["id"]: (n["role"], n["voter"]) for n in view["nodes"]},
            {n: ("member", True) for n in ("n1", "n2", "n3", "n4")},
        )
        code, members = self.call("GET", "/cluster/nodes")
        self.assertEqual([m["id"] for m in members["members"]], ["n1", "n2", "n3", "n4"])
        # Once in sync, the new node is the primary of its share too.
        self.assertGreater(members["members"][-1]["primaries"], 0)
        self.assertIn("twisted_kv_members 4.0", self.call("GET", "/metrics")[1])

    def test_remove(self) -> None:
        code, body = self.call("DELETE", "/cluster/nodes/n3")
        self.assertEqual((code, body["error"]), (409, "membership_conflict"))
        self.assertIn("at least 3", body["message"])
        code, body = self.call("DELETE", "/cluster/nodes/n9")
        self.assertEqual((code, body["error"]), (404, "unknown_member"))

    def test_malformed(self) -> None:
        for body in (b"{", b"[]", b'{"id": "n4"}', b'{"id": "n 4", "host": "h", "http_port": 1, "peer_port": 2, "ftp_port": 3}',
                     b'{"id": "n4", "host": "h", "http_port": 0, "peer_port": 2, "ftp_port": 3}'):
            code, answer = self.call("POST", "/cluster/nodes", data=body)
            self.assertEqual((code, answer["error"]), (400, "bad_request"), body)
        self.assertEqual(self.cluster.nodes[self.leader].roster.ids, ("n1", "n2", "n3"))


class HandOverTests(MembersTestMixin, SynchronousTestCase):
    def test_request_held_until_the_takeover(self) -> None:
        """
        A write that reaches the node a new map names primary before that
        node has taken over (the old primary's C{release} is late) is held
        there and answered as soon as it has: not refused, to be tried
        again on its coordinator's next map or after its retry pause.
        """
        cluster = self.make_cluster(4)
        leader = cluster.settle()
        leaving = next(n for n in sorted(cluster.nodes) if n != leader)
        key = next(
            user_key(f"k{index}") for index in itertools.count()
            if cluster.nodes[leader].partition_config(
                cluster.nodes[leader].partition_of(user_key(f"k{index}"))
            ).primary.node_id == leaving
        )
        partition = cluster.nodes[leader].partition_of(key)
        reader = next(n for n in sorted(cluster.nodes) if n not in (leader, leaving))
        reading = [True]

        def read() -> None:
            # keeps the members' lease promises to the old primary running
            if reading[0]:
                cluster.coordinators[reader].get(key)
                cluster.clock.callLater(0.002, read)

        read()
        cluster.run(1)
        releases: list[tuple[str, str, list]] = []
        send = cluster.network.send

        def withhold_releases(sender: str, peer: str, message: list) -> bool:
            if message[0] == messages.RELEASE and message[1] == partition:
                releases.append((sender, peer, message))
                return True
            return send(sender, peer, message)

        self.patch(cluster.network, "send", withhold_releases)
        self.wait(cluster.remove_member(leaving, leader))

        def primaries() -> set[str]:
            return {node.partition_config(partition).primary.node_id for node in cluster.nodes.values()}

        while leaving in primaries() or not releases:
            cluster.run(0.001, step=0.001)
        reading[0] = False
        (successor,) = primaries()
        self.assertFalse(cluster.nodes[successor].replicas[partition].is_primary)
        entry = next(n for n in sorted(cluster.nodes) if n not in (leaving, successor))
        write = cluster.coordinators[entry].put(key, b"new")
        cluster.run(0.01, step=0.001)
        self.assertNoResult(write)
        for release in releases:
            send(*release)
        cluster.run(0.01, step=0.001)
        self.successResultOf(write)
        self.assertGreaterEqual(cluster.nodes[successor].operations.held, 1)

    def test_planned_moves_do_not_wait_for_leases(self) -> None:
        """
        When a change moves a primary off a live node (here: a node being
        removed), that node steps down and releases the promises its members
        made it: the new primary takes over within a round trip, not once
        the promise (half the failure timeout) has run out, although reads
        keep the leases alive.
        """
        cluster = self.make_cluster(4)
        leader = cluster.settle()
        leaving = next(n for n in sorted(cluster.nodes) if n != leader)
        self.fill(300)
        rng = random.Random(3)
        reading = [True]

        def read() -> None:
            if reading[0]:
                node = rng.choice(sorted(cluster.nodes))
                cluster.coordinators[node].get(user_key(f"k{rng.randrange(300)}"))
                cluster.clock.callLater(0.002, read)

        read()
        cluster.run(1)
        self.wait(cluster.remove_member(leaving, leader))
        named: dict[tuple[str, int, int], float] = {}
        waits: list[float] = []
        # until 1.5 s after the change ended: longer than any promise
        limit = cluster.clock.seconds() + 30
        end = limit
        while cluster.clock.seconds() < end:
            cluster.run(0.005)
            if cluster.nodes[leader].roster.change is not None:
                end = min(limit, cluster.clock.seconds() + 1.5)
            now = cluster.clock.seconds()
            for node_id, node in cluster.nodes.items():
                for partition, replica in enumerate(node.replicas):
                    config = node.partition_config(partition)
                    if config is None or config.primary.node_id != node_id:
                        continue
                    key = (node_id, partition, config.epoch)
                    if key not in named:
                        named[key] = now
                        if replica.is_primary:
                            continue
                    if not replica.is_primary:
                        continue
                    if named[key] >= 0:
                        waits.append(now - named[key])
                        named[key] = -1
        reading[0] = False
        promise = cluster.config.failure_timeout * replication_module.LEASE_PROMISE_SHARE
        self.assertGreater(len(waits), 5)
        self.assertLess(max(waits), promise / 4, sorted(waits)[-5:])
