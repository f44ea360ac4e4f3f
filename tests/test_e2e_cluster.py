# -*- test-case-name: tests.test_e2e_cluster -*-
"""
End-to-end tests of the core cluster: real C{twistd kvnode} processes on
loopback (L{tests.e2e.RealCluster}), driven over HTTP with treq (and once
with the C{curl} program), killed with SIGKILL and restarted empty.

They check what the product promises: the HTTP API on every node, the
leader line in every log, failover, the guarantees of docs/design.md with
⌊N/2⌋ nodes down (and what happens with more down), repair of a restarted
node, load spreading, and the refusal of a bad cluster file.

Every wait polls the real reactor with a deadline; every node is stopped by
a cleanup, whatever the outcome.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import log
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e import (
    RealCluster,
    Reply,
    free_ports,
    keys_covering_partitions,
    kv_path,
    run_twistd,
    write_config,
)
from tests.polling import poll

#: Seconds every partition may take to accept writes again after the leader
#: was killed.
FAILOVER_LIMIT = 5.0

#: Seconds a restarted, empty node may take to report itself in sync.
RESYNC_LIMIT = 10.0


class ClusterTestCase(TestCase):
    """
    Starts real clusters, each stopped by a cleanup.
    """

    timeout = 90

    async def start_cluster(self, size: int = 3, **tunables: Any) -> RealCluster:
        """
        Start a cluster of C{size} nodes (C{tunables} as for L{RealCluster}),
        stopped by a cleanup, and set C{self.leader}.

        @return: the cluster, once its nodes agree on a leader and are in
            sync.
        """
        cluster = RealCluster(size, self.mktemp(), **tunables)
        self.addCleanup(cluster.stop_all)
        self.leader = await cluster.start()
        return cluster

    def assertError(self, reply: Reply, status: int, code: Optional[str] = None) -> dict:
        """
        C{reply} is a JSON error answer with C{status}, and C{code} if given.
        """
        self.assertEqual(reply.status, status, reply)
        self.assertEqual(reply.header("Content-Type"), "application/json", reply)
        body = reply.json()
        self.assertIsInstance(body.get("error"), str, body)
        self.assertIsInstance(body.get("message"), str, body)
        if code is not None:
            self.assertEqual(body["error"], code)
        return body

    def assertVersioned(self, reply: Reply, status: int, key: str) -> str:
        """
        C{reply} acknowledges a write of C{key} with C{status}: JSON
        C{{"key", "version"}} and the version as a strong ETag.

        @return: the version.
        """
        self.assertEqual(reply.status, status, reply)
        body = reply.json()
        self.assertEqual(body["key"], key)
        self.assertIsInstance(body["version"], str)
        self.assertEqual(reply.header("ETag"), f'"{body["version"]}"')
        return body["version"]


def _values(prefix: str, count: int, tag: str = "v1") -> dict[str, bytes]:
    """
    C{count} keys under C{prefix}, each with its own value.
    """
    return {f"{prefix}{i:04d}": f"{tag}:{prefix}{i}".encode() * 3 for i in range(count)}


class HTTPTests(ClusterTestCase):
    """
    The HTTP API, which every node serves, on a three-node cluster, each request
    sent to a different node than the one before.
    """

    async def test_crud(self) -> None:
        """
        PUT, GET, HEAD, POST, DELETE and conditional requests, spread over
        the nodes, answer as the contract's table says.
        """
        c = await self.start_cluster()
        key, path = "greeting", kv_path("greeting")
        created = await c.request("PUT", "n1", path, b"hello", {"Content-Type": "text/plain"})
        v1 = self.assertVersioned(created, 201, key)

        got = await c.request("GET", "n2", path)
        self.assertEqual((got.status, got.body), (200, b"hello"))
        self.assertEqual(got.header("Content-Type"), "text/plain")
        self.assertEqual(got.header("ETag"), f'"{v1}"')

        head = await c.request("HEAD", "n3", path)
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.header("Content-Type"), "text/plain")
        self.assertEqual(head.header("ETag"), f'"{v1}"')

        replaced = await c.request(
            "PUT", "n2", path, b"hello again", {"Content-Type": "text/x-greeting"}
        )
        v2 = self.assertVersioned(replaced, 200, key)
        self.assertNotEqual(v1, v2)

        # If-Match with the old version fails and changes nothing.
        stale = await c.request("PUT", "n3", path, b"lost", {"If-Match": f'"{v1}"'})
        self.assertError(stale, 412)
        got = await c.request("GET", "n1", path)
        self.assertEqual(
            (got.body, got.header("Content-Type")), (b"hello again", "text/x-greeting")
        )
        # ... and with the current one succeeds.
        swapped = await c.request("PUT", "n3", path, b"swapped", {"If-Match": f'"{v2}"'})
        v3 = self.assertVersioned(swapped, 200, key)

        # If-None-Match: * creates only.
        self.assertError(await c.request("PUT", "n1", path, b"x", {"If-None-Match": "*"}), 412)
        fresh = await c.request("PUT", "n1", kv_path("fresh"), b"new", {"If-None-Match": "*"})
        self.assertVersioned(fresh, 201, "fresh")

        # POST creates only.
        self.assertError(await c.request("POST", "n2", path, b"again"), 409)
        posted = await c.request("POST", "n2", kv_path("posted"), b"first")
        self.assertVersioned(posted, 201, "posted")
        self.assertEqual((await c.request("GET", "n3", kv_path("posted"))).body, b"first")

        # DELETE, conditional and not.
        stale_delete = await c.request("DELETE", "n1", path, headers={"If-Match": f'"{v1}"'})
        self.assertError(stale_delete, 412)
        deleted = await c.request("DELETE", "n1", path, headers={"If-Match": f'"{v3}"'})
        self.assertEqual((deleted.status, deleted.body), (204, b""))
        self.assertError(await c.request("GET", "n2", path), 404)
        self.assertEqual((await c.request("HEAD", "n3", path)).status, 404)
        self.assertError(await c.request("DELETE", "n3", path), 404)
        # If-Match on a missing key fails.
        missing = await c.request("PUT", "n2", kv_path("never"), b"x", {"If-Match": f'"{v3}"'})
        self.assertError(missing, 412)
        self.assertError(await c.request("GET", "n1", kv_path("never")), 404)

        # Malformed requests.
        self.assertError(await c.request("PUT", "n1", "/kv/", b"x"), 400)
        self.assertError(await c.request("GET", "n2", "/kv?limit=0"), 400)
        self.assertError(await c.request("PUT", "n3", kv_path("t") + "?ttl=soon", b"x"), 400)

    async def test_keys_with_slashes_and_unicode(self) -> None:
        """
        Keys may hold C{/} and any UTF-8, percent-encoded in the URL; they
        read back from every node and are listed decoded.
        """
        c = await self.start_cluster()
        keys = ["dir/sub/leaf", "dir/ключ/é✓", "emoji/🦆", "space and ?&#%/x"]
        for i, key in enumerate(keys):
            reply = await c.request(
                "PUT", c.node_ids[i % 3], kv_path(key), key.encode(),
                {"Content-Type": "text/plain; charset=utf-8"},
            )
            self.assertVersioned(reply, 201, key)
        for node_id in c.node_ids:
            for key in keys:
                got = await c.request("GET", node_id, kv_path(key))
                self.assertEqual((got.status, got.body), (200, key.encode()), (node_id, key))
                self.assertEqual(got.header("Content-Type"), "text/plain; charset=utf-8")
        listed = await c.request("GET", "n2", "/kv?prefix=" + kv_path("dir/")[4:] + "&limit=10")
        self.assertEqual(
            listed.json(), {"keys": ["dir/sub/leaf", "dir/ключ/é✓"], "next": None}
        )

    async def test_list_paging(self) -> None:
        """
        C{GET /kv} lists keys under a prefix in key order, a page at a time,
        from any node; C{next} is C{null} after the last page.
        """
        c = await self.start_cluster()
        await c.write_keys(_values("page/", 25))
        await c.write_keys(_values("pagf/", 3) | _values("other/", 3))
        expected = sorted(_values("page/", 25))
        seen: list[str] = []
        start_after: Optional[str] = None
        pages = 0
        while True:
            query = "/kv?prefix=page/&limit=10"
            if start_after is not None:
                query += "&start_after=" + kv_path(start_after)[4:]
            reply = await c.request("GET", c.node_ids[pages % 3], query)
            self.assertEqual(reply.status, 200, reply)
            page = reply.json()
            self.assertLessEqual(len(page["keys"]), 10)
            seen += page["keys"]
            pages += 1
            if page["next"] is None:
                break
            self.assertEqual(page["next"], page["keys"][-1])
            start_after = page["next"]
            self.assertLess(pages, 10)
        self.assertEqual(seen, expected)
        self.assertEqual(pages, 3)

    async def test_ttl(self) -> None:
        """
        A key written with C{?ttl=1} reads back at first, then disappears
        from every node.
        """
        c = await self.start_cluster()
        put = await c.request("PUT", "n1", kv_path("session/1") + "?ttl=1", b"soon gone")
        self.assertVersioned(put, 201, "session/1")
        await c.request("PUT", "n1", kv_path("session/2"), b"stays")
        self.assertEqual((await c.request("GET", "n2", kv_path("session/1"))).body, b"soon gone")

        async def gone() -> Optional[bool]:
            replies = [await c.request("GET", n, kv_path("session/1")) for n in c.node_ids]
            return True if all(r.status == 404 for r in replies) else None

        await poll(gone, 10, "the key to expire on every node")
        for node_id in c.node_ids:
            self.assertEqual((await c.request("GET", node_id, kv_path("session/2"))).body, b"stays")

    async def test_leader_in_every_log(self) -> None:
        """
        Every node logs a line with C{partition leader} and the leader's id.
        """
        c = await self.start_cluster()
        for node_id in c.node_ids:
            pattern = rf"partition leader[^\n]*\b{self.leader}\b"
            match = await c.wait_for_log(node_id, pattern, timeout=5)
            self.assertIn(self.leader, match.group(0))

    async def test_curl(self) -> None:
        """
        The C{curl} program writes through one node and reads through the
        others.
        """
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        c = await self.start_cluster()

        async def run(*args: str) -> tuple[int, str]:
            out, err, code = await getProcessOutputAndValue(
                curl, ["-s", "-S", "-i", *args], env=os.environ
            )
            self.assertEqual(code, 0, err)
            text = out.decode("utf-8", "replace")
            return int(text.split(" ", 2)[1]), text

        url = {n: c.url(n, kv_path("curl/ключ")) for n in c.node_ids}
        status, text = await run(
            "-X", "PUT", "--data-binary", "from curl", "-H", "Content-Type: text/plain", url["n1"]
        )
        self.assertEqual(status, 201, text)
        self.assertIn('"version"', text)
        status, text = await run(url["n2"])
        self.assertEqual(status, 200, text)
        self.assertTrue(text.endswith("\r\n\r\nfrom curl"), text)
        self.assertIn("content-type: text/plain", text.lower())
        status, text = await run("-I", url["n3"])
        self.assertEqual(status, 200, text)
        self.assertIn("etag: \"", text.lower())
        status, text = await run("-X", "POST", "--data-binary", "again", url["n3"])
        self.assertEqual(status, 409, text)
        status, text = await run("-X", "DELETE", url["n2"])
        self.assertEqual(status, 204, text)

    async def test_load_spread(self) -> None:
        """
        300 requests sent to the leader alone are executed on at least two
        nodes, as C{/metrics} counts them.
        """
        c = await self.start_cluster()
        leader = self.leader
        values = _values("spread/", 150)
        await c.write_keys(values, nodes=[leader])
        problems = await c.read_keys(values, nodes=[leader])
        self.assertEqual(problems, [])

        last: dict = {}

        async def spread() -> Optional[dict]:
            metrics = await c.metrics(leader)
            executed = {n: metrics.get(("twisted_kv_executed_total", n), 0) for n in c.node_ids}
            last.update(executed)
            busy = [n for n, count in executed.items() if count > 0]
            return executed if len(busy) >= 2 else None

        executed = await poll(spread, 10, f"executed counts on two nodes (last {last})")
        self.assertGreaterEqual(len([n for n in executed if executed[n] > 0]), 2, executed)


class FailoverTests(ClusterTestCase):
    """
    Nodes killed with SIGKILL: leader failover, the guarantees with ⌊N/2⌋
    nodes down, the answers without a majority, and repair.
    """

    async def test_kill_leader(self) -> None:
        """
        Killing the leader makes the survivors log a new leader, and every
        partition takes writes again within L{FAILOVER_LIMIT} seconds: a
        key of each partition is written from the moment of the kill until
        acknowledged.  Clients writing all along see only 2xx, 503 and 504
        (and lost connections to the killed node); every acknowledged write
        is then readable, and a write refused with 503 never happened.
        """
        c = await self.start_cluster()
        old = self.leader
        survivors = [n for n in c.node_ids if n != old]
        marks = {n: c.log_size(n) for n in survivors}
        acked: dict[str, bytes] = {}
        refused: list[str] = []
        uncertain: dict[str, set[bytes]] = {}
        unexpected: list[str] = []
        stop = [False]

        async def put(node: str, key: str, value: bytes) -> Optional[Reply]:
            try:
                reply = await c.request("PUT", node, kv_path(key), value, timeout=10)
            except Exception:
                return None  # a connection to the killed node
            if reply.status in (200, 201):
                acked[key] = value
            elif reply.status == 503:
                if reply.header("Retry-After") is None:
                    unexpected.append(f"PUT {key}: 503 without Retry-After")
                refused.append(key)
            elif reply.status == 504:
                uncertain.setdefault(key, set()).add(value)
            else:
                unexpected.append(f"PUT {key}: {reply!r}")
            return reply

        async def writer(w: int) -> None:
            seq = 0
            while not stop[0]:
                live = c.live_nodes()
                key, value = f"live/{w}/{seq:05d}", f"{w}:{seq}".encode()
                reply = await put(live[seq % len(live)], key, value)
                seq += 1
                if reply is None or reply.status not in (200, 201):
                    await deferLater(reactor, 0.05, lambda: None)

        probe_keys = keys_covering_partitions("probe/")
        recovered: dict[str, float] = {}

        async def probe(i: int, key: str, killed_at: float) -> None:
            attempt = 0
            while reactor.seconds() - killed_at < FAILOVER_LIMIT + 10:
                reply = await put(survivors[(i + attempt) % 2], key, f"probe {attempt}".encode())
                attempt += 1
                if reply is not None and reply.status in (200, 201):
                    recovered[key] = reactor.seconds() - killed_at
                    return
                await deferLater(reactor, 0.05, lambda: None)

        writers = [ensureDeferred(writer(w)) for w in range(3)]
        try:
            await poll(lambda: len(acked) >= 40, 10, "writes before the kill")
            killed_at = reactor.seconds()
            await c.kill(old)
            await DeferredList(
                [ensureDeferred(probe(i, k, killed_at)) for i, k in enumerate(probe_keys)]
            )
        finally:
            stop[0] = True
            await DeferredList(writers)
        self.assertEqual(sorted(recovered), sorted(probe_keys), "partitions never writable again")
        first, last = min(recovered.values()), max(recovered.values())
        log.msg(f"after killing the leader: first write {first:.3f}s, every partition {last:.3f}s")
        self.assertLess(
            last, FAILOVER_LIMIT, f"a partition took writes again only {last:.2f}s after the kill"
        )

        new = await c.leader()
        self.assertIn(new, survivors)
        for node_id in survivors:
            pattern = rf"partition leader[^\n]*\b{new}\b"
            match = await c.wait_for_log(node_id, pattern, since=marks[node_id], timeout=10)
            self.assertNotIn(old, match.group(0).split())
        self.assertEqual(unexpected, [], f"see the logs in {c.directory}")

        # A write answered 504 may still take effect, even after a later
        # acknowledged write of the same key: either value is right then.
        expected: dict[str, Optional[bytes]] = {key: None for key in refused}
        expected.update(acked)
        for key in uncertain:
            expected.pop(key, None)
        self.assertEqual(await c.read_keys(expected), [])
        for key, values in uncertain.items():
            for node_id in survivors:
                got = await c.request("GET", node_id, kv_path(key))
                allowed = values | ({acked[key]} if key in acked else set())
                never_acked_and_absent = got.status == 404 and key not in acked
                self.assertTrue(never_acked_and_absent or got.body in allowed, (key, got))

    async def kill_minority(self, size: int, count: int) -> None:
        """
        Write keys, overwrite some and delete some, then kill C{count}
        nodes at once (the leader among them): every live node returns
        every key's latest acknowledged value.
        """
        c = await self.start_cluster(size)
        written = _values("k/", 200)
        await c.write_keys(written)
        expected: dict[str, Optional[bytes]] = dict(written)
        updates = {k: b"v2:" + k.encode() for k in list(expected)[::4]}
        await c.write_keys(updates)
        expected.update(updates)
        for i, key in enumerate(list(expected)[1::10]):
            reply = await c.request("DELETE", c.node_ids[i % size], kv_path(key))
            self.assertEqual(reply.status, 204, reply)
            expected[key] = None

        victims = [self.leader] + [n for n in c.node_ids if n != self.leader][: count - 1]
        await c.kill(*victims)
        survivors = c.live_nodes()
        self.assertEqual(len(survivors), size - count)
        # At once, before any new leader is known ...
        self.assertEqual(await c.read_keys(expected), [])
        # ... and after the survivors settled.
        leader = await c.wait_for_leader()
        self.assertIn(leader, survivors)
        self.assertEqual(await c.read_keys(expected), [])
        # Writes keep working.
        more = _values("after/", 20)
        await c.write_keys(more)
        self.assertEqual(await c.read_keys(more), [])

    async def test_kill_one_of_three(self) -> None:
        """
        ⌊3/2⌋ = 1 node down (the leader): nothing is lost.
        """
        await self.kill_minority(3, 1)

    async def test_kill_two_of_five(self) -> None:
        """
        ⌊5/2⌋ = 2 nodes down (the leader and another): nothing is lost.
        """
        await self.kill_minority(5, 2)

    async def lose_majority(self, replicas: Any) -> tuple[RealCluster, str, dict[str, bytes]]:
        """
        Write keys to a three-node cluster, then kill two nodes (the leader
        among them) and wait until the survivor sees them dead.

        @return: the cluster, the survivor and the values written.
        """
        c = await self.start_cluster(replicas=replicas)
        values = _values("deg/", 60)
        await c.write_keys(values)
        await c.write_keys({"deg/0000": b"latest"})
        values["deg/0000"] = b"latest"
        survivor = [n for n in c.node_ids if n != self.leader][0]
        await c.kill(*[n for n in c.node_ids if n != survivor])

        async def both_dead() -> Optional[bool]:
            view = await c.cluster_view(survivor)
            states = {e["id"]: e["state"] for e in view["nodes"]}
            return True if all(states[n] == "dead" for n in c.node_ids if n != survivor) else None

        await poll(both_dead, 10, "the survivor to see the others dead")
        return c, survivor, values

    async def assertWritesRefused(self, c: RealCluster, survivor: str) -> None:
        """
        Every kind of write to C{survivor} is refused with 503, a
        C{Retry-After} of at least a second and a JSON error, promptly.
        """
        for method, key in [
            ("PUT", "deg/0001"), ("PUT", "deg/new"), ("POST", "deg/new2"), ("DELETE", "deg/0002")
        ]:
            body = None if method == "DELETE" else b"refused"
            reply = await c.request(method, survivor, kv_path(key), body)
            self.assertError(reply, 503)
            retry_after = reply.header("Retry-After") or ""
            self.assertTrue(retry_after.isdigit() and int(retry_after) >= 1, reply)
            self.assertLess(reply.elapsed, 6.0)

    async def test_no_majority(self) -> None:
        """
        With two of three nodes killed (every key on every node:
        C{replicas = 3}), writes are refused with 503, a C{Retry-After} and
        a JSON error, and change nothing; reads still answer, marked
        C{X-KV-Degraded: true}, with the latest values.
        """
        c, survivor, values = await self.lose_majority(3)
        await self.assertWritesRefused(c, survivor)
        for key in ("deg/0000", "deg/0001", "deg/0002"):
            value = values[key]
            got = await c.request("GET", survivor, kv_path(key))
            self.assertEqual((got.status, got.body), (200, value), key)
            self.assertEqual(got.header("X-KV-Degraded"), "true")
        missing = await c.request("GET", survivor, kv_path("deg/new"))
        self.assertEqual(missing.status, 404)
        self.assertEqual(missing.header("X-KV-Degraded"), "true")
        self.assertEqual(await c.read_keys({**values, "deg/new": None, "deg/new2": None}), [])

    async def test_no_majority_partial_replicas(self) -> None:
        """
        Without a majority and with two copies of each key (C{replicas =
        majority}), the survivor holds only some keys: a key it holds reads
        back, marked degraded, with its latest value; a key whose replicas are
        all down answers 503 with Retry-After (nobody who would know answered),
        never 404 and never an old value; writes are refused as above.
        """
        c, survivor, values = await self.lose_majority("majority")
        await self.assertWritesRefused(c, survivor)
        found = unreachable = 0
        for key, value in values.items():
            got = await c.request("GET", survivor, kv_path(key))
            self.assertIn(got.status, (200, 503), (key, got))
            if got.status == 200:
                self.assertEqual(got.header("X-KV-Degraded"), "true", (key, got))
                self.assertEqual(got.body, value, key)
                found += 1
            else:
                self.assertIsNotNone(got.header("Retry-After"), (key, got))
                unreachable += 1
        self.assertGreater(found, 0)
        self.assertGreater(unreachable, 0)

    async def test_health_without_majority(self) -> None:
        """
        Every node of a formed cluster answers C{/health} and C{/live} with
        200.  With two of three nodes killed (the leader among them), the
        survivor's C{/health} answers 503, first because the leader stopped
        answering, then saying that no majority is reachable, while its
        C{/live} still answers 200.
        """
        c = await self.start_cluster()
        for node_id in c.node_ids:
            for path in ("/health", "/live"):
                reply = await c.request("GET", node_id, path)
                self.assertEqual((reply.status, reply.json()["status"]), (200, "ok"), (node_id, path))
        survivor = [n for n in c.node_ids if n != self.leader][0]
        await c.kill(*[n for n in c.node_ids if n != survivor])
        reasons = []

        async def unhealthy() -> Optional[Reply]:
            reply = await c.request("GET", survivor, "/health")
            if reply.status == 200:
                return None
            self.assertEqual(reply.status, 503, reply)
            reasons.append(reply.json()["reason"])
            return reply if reasons[-1] == "no_majority" else None

        reply = await poll(unhealthy, 10, "the survivor's /health to answer 503 for no majority")
        self.assertEqual(set(reasons) - {"leader_unreachable", "no_leader"}, {"no_majority"})
        body = self.assertError(reply, 503, "unavailable")
        self.assertEqual(
            {key: body[key] for key in ("reason", "node", "nodes", "reachable", "majority")},
            {"reason": "no_majority", "node": survivor, "nodes": 3, "reachable": 1, "majority": 2},
        )
        self.assertIsNotNone(reply.header("Retry-After"))
        reply = await c.request("GET", survivor, "/live")
        self.assertEqual((reply.status, reply.json()), (200, {"status": "ok"}))

    async def test_restart_empty(self) -> None:
        """
        A node killed and restarted empty is refilled and reports itself in
        sync within L{RESYNC_LIMIT} seconds; afterwards, killing another
        node (the leader) loses nothing.
        """
        c = await self.start_cluster()
        written = _values("r/", 300)
        await c.write_keys(written)
        expected: dict[str, Optional[bytes]] = dict(written)
        victim = [n for n in c.node_ids if n != self.leader][0]
        await c.kill(victim)
        # Changes made while it is down: new keys, new values, deletions.
        during = _values("during/", 100)
        updates = {k: b"v2" for k in list(expected)[::7]}
        await c.write_keys({**during, **updates})
        expected.update(during)
        expected.update(updates)
        for key in list(expected)[3::11]:
            self.assertEqual((await c.request("DELETE", self.leader, kv_path(key))).status, 204)
            expected[key] = None

        restarted_at = reactor.seconds()
        await c.restart(victim)
        await c.wait_for_leader(timeout=RESYNC_LIMIT + 5)
        took = reactor.seconds() - restarted_at
        log.msg(f"restarted node in sync {took:.3f}s after its restart")
        self.assertLess(took, RESYNC_LIMIT, f"in sync {took:.1f}s after the restart")
        view = await c.cluster_view(victim)
        entry = [e for e in view["nodes"] if e["id"] == victim][0]
        self.assertTrue(entry["synced"])
        self.assertGreater(entry["keys"], 0)

        leader = await c.leader()
        await c.kill(leader)
        self.assertIn(victim, c.live_nodes())
        self.assertEqual(await c.read_keys(expected), [])
        self.assertEqual(await c.read_keys(expected, nodes=[victim]), [])


class MajorityRestartTests(ClusterTestCase):
    """
    Two of three nodes, the leader among them, killed and restarted empty.
    """

    timeout = 60

    async def test_majority_restarted(self) -> None:
        """
        A leader is elected again; the partitions whose every copy was on
        the restarted nodes are reported lost in the survivor's
        C{/cluster} and log, and their requests answer 503 at once with the
        reason; then they serve again, empty, promptly, while the other
        partitions kept their data.
        """
        c = await self.start_cluster()
        keys = keys_covering_partitions("lost/")
        values = {key: key.encode() for key in keys}
        await c.write_keys(values)
        survivor = next(n for n in c.node_ids if n != self.leader)
        victims = [n for n in c.node_ids if n != survivor]
        await c.kill(*victims)
        log_start = c.log_size(survivor)
        restarts = DeferredList([c.restart(victim) for victim in victims], consumeErrors=True)

        async def lost_reported() -> Optional[list[int]]:
            view = await c.cluster_view(survivor, timeout=2)
            return view.get("lost_partitions") or None

        lost = await poll(lost_reported, 20, f"{survivor} to report lost partitions", interval=0.05)
        gone = keys[lost[0]]
        refused = await c.request("GET", survivor, kv_path(gone), timeout=3)
        log.msg(f"a key of lost partition {lost[0]} answered {refused!r}")
        if refused.status == 503:
            body = self.assertError(refused, 503, "unavailable")
            self.assertIn(f"partition {lost[0]} lost every in-sync copy", body["message"])
            self.assertIsNotNone(refused.header("Retry-After"))
            self.assertLess(refused.elapsed, 1.0, refused)
        else:  # already started again, empty
            self.assertEqual(refused.status, 404, refused)
        self.assertIn(
            f"partitions {', '.join(map(str, lost))} lost every in-sync copy",
            c.logs(survivor, since=log_start),
        )

        for ok, failure in await restarts:
            self.assertTrue(ok, failure)
        leader = await c.leader(timeout=15)
        self.assertIn(leader, c.node_ids)

        async def served_again() -> Optional[bool]:
            views = await DeferredList([c.cluster_view(n, timeout=2) for n in c.node_ids])
            return True if all(ok and not view["lost_partitions"] for ok, view in views) else None

        await poll(served_again, 10, "the lost partitions to serve again")
        for node in c.node_ids:
            got = await c.request("GET", node, kv_path(gone), timeout=3)
            self.assertEqual(got.status, 404, (node, got))
            self.assertLess(got.elapsed, 1.0, got)
        written = await c.request("PUT", victims[0], kv_path(gone), data=b"again", timeout=3)
        self.assertIn(written.status, (200, 201), written)
        self.assertLess(written.elapsed, 1.0, written)
        expected: dict[str, Optional[bytes]] = {
            key: None if index in lost else values[key] for index, key in enumerate(keys)
        }
        expected[gone] = b"again"
        self.assertEqual(await c.read_keys(expected), [])


class BadConfigTests(TestCase):
    """
    A bad cluster file (or node id) ends C{twistd kvnode} at once, with
    status 1 and one line naming the file, the section and the key.
    """

    timeout = 60

    def write(self, edit: Any = None) -> str:
        """
        Write a good three-node cluster file, then apply C{edit(text,
        ports)} to its text.

        @return: the file's absolute path.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.ports = ports = free_ports(9)
        path = os.path.join(directory, "bad.ini")
        nodes = [(f"n{i + 1}", ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]) for i in range(3)]
        write_config(path, nodes)
        if edit is not None:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(edit(text, ports))
        return path

    async def refused(self, path: str, node: str, *words: str) -> str:
        """
        Run node C{node} of C{path}: it must end at once with status 1, no
        traceback and one line on standard error holding the path and each
        of C{words}.

        @return: that line.
        """
        started = reactor.seconds()
        out, err, code = await run_twistd(
            ["-n", "--pidfile=", "kvnode", "--config", path, "--node", node],
            cwd=os.path.dirname(path),
        )
        self.assertLess(reactor.seconds() - started, 15)
        self.assertEqual(code, 1, (out, err))
        self.assertNotIn("Traceback", out + err)
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, err)
        self.assertEqual(out.strip(), "", out)
        for word in (path, *words):
            self.assertIn(word, lines[0])
        return lines[0]

    async def test_unknown_key(self) -> None:
        """
        A misspelt tunable names C{[cluster]} and the key.
        """
        path = self.write(
            lambda text, ports: text.replace("data_dir =", "data_dir =\nelecton_timeout = 1s")
        )
        await self.refused(path, "n1", "[cluster]", "electon_timeout")

    async def test_duplicate_port(self) -> None:
        """
        Two nodes on one port: the second's section, key and the port.
        """
        path = self.write(
            lambda text, ports: text.replace(f"http_port = {ports[3]}", f"http_port = {ports[0]}")
        )
        await self.refused(path, "n2", "[node:n2]", "http_port", str(self.ports[0]))

    async def test_malformed_value(self) -> None:
        """
        A port that is not a number names that node's section and key,
        whichever node is started.
        """
        path = self.write(
            lambda text, ports: text.replace(f"peer_port = {ports[7]}", "peer_port = seven")
        )
        await self.refused(path, "n1", "[node:n3]", "peer_port")

    async def test_missing_section(self) -> None:
        """
        Without C{[cluster]} (here misspelt) the message names it.
        """
        path = self.write(lambda text, ports: text.replace("[cluster]", "[klaster]"))
        await self.refused(path, "n1", "[cluster]")

    async def test_unknown_node(self) -> None:
        """
        An C{--node} the file does not define is named, with the option.
        """
        path = self.write()
        await self.refused(path, "n9", "--node", "n9")
