# -*- test-case-name: tests.test_e2e_persistence -*-
"""
End-to-end tests of C{data_dir}: real C{twistd kvnode} processes, killed
with SIGKILL, all of them, in the middle of a write load, and restarted
with their data directories; a damaged data file is set aside with one
line, and its node refilled from its peers.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.python import log
from twisted.trial.unittest import TestCase

from tests.e2e import RealCluster, kv_path
from tests.polling import poll
from twisted_kv.cluster.durable import COMPACT_MIN_BYTES


class Load:
    """
    Writers of new keys, each with one PUT in flight at a time, through the
    nodes in turn, until L{running} is false.

    @ivar acknowledged: every key written with a 2xx, and its value.
    @ivar sent: every key sent, and its value.
    """

    def __init__(self, cluster: RealCluster) -> None:
        self.cluster = cluster
        self.running = True
        self.acknowledged: dict[str, bytes] = {}
        self.sent: dict[str, bytes] = {}

    def start(self, writers: int, stop_on_error: bool) -> list[Deferred[None]]:
        """
        Start C{writers} writers.  With C{stop_on_error}, a writer stops at
        its first failed request; otherwise it goes on with the next node
        (its node was stopped).
        """
        return [ensureDeferred(self._write(w, stop_on_error)) for w in range(writers)]

    async def _write(self, worker: int, stop_on_error: bool) -> None:
        c = self.cluster
        count = 0
        while self.running:
            key = f"load/{worker}/{count:05d}"
            value = f"{worker}:{count}".encode() * 5
            node = c.node_ids[(worker + count) % len(c.node_ids)]
            count += 1
            self.sent[key] = value
            try:
                reply = await c.request(
                    "PUT", node, kv_path(key), value,
                    {"Content-Type": "application/octet-stream"},
                )
            except Exception:
                if stop_on_error:
                    return
                await deferLater(reactor, 0.05, lambda: None)
                continue
            if reply.status in (200, 201):
                self.acknowledged[key] = value


class WholeClusterKillTests(TestCase):
    """
    Every node of a cluster with C{data_dir} killed at once and restarted.
    """

    timeout = 120

    async def start_cluster(self) -> RealCluster:
        cluster = RealCluster(3, self.mktemp(), data_dir="data")
        self.addCleanup(cluster.stop_all)
        self.leader = await cluster.start()
        return cluster

    async def test_sigkill_every_node_mid_load(self) -> None:
        """
        Keys written before, and every write acknowledged during a load cut
        short by SIGKILL of every node, are read back from every node once
        they restart; each node logs what it recovered.
        """
        c = await self.start_cluster()
        before = {f"before/{i:04d}": f"b{i}".encode() * 10 for i in range(200)}
        await c.write_keys(before)
        load = Load(c)
        writers = load.start(8, stop_on_error=True)
        await deferLater(reactor, 1.0, lambda: None)
        await c.kill(*c.node_ids)
        load.running = False
        await DeferredList(writers)
        acknowledged, sent = load.acknowledged, load.sent
        log.msg(f"{len(acknowledged)} writes acknowledged of {len(sent)} sent before the kill")
        self.assertGreater(len(acknowledged), 20)

        restarted = reactor.seconds()
        await DeferredList([c.restart(n) for n in c.node_ids], fireOnOneErrback=True)
        await c.wait_for_leader(timeout=30)
        log.msg(f"whole cluster serving again {reactor.seconds() - restarted:.2f} s after restart")
        for node_id in c.node_ids:
            self.assertIn("recovered ", c.logs(node_id))
        self.assertEqual(await c.read_keys({**before, **acknowledged}), [])
        # A write in flight at the kill may or may not have taken effect.
        unknown = [k for k in sent if k not in acknowledged]
        for key in unknown:
            reply = await c.request("GET", c.node_ids[0], kv_path(key))
            self.assertIn(reply.status, (200, 404), reply)
            if reply.status == 200:
                self.assertEqual(reply.body, sent[key])


class RollingRestartTests(TestCase):
    """
    Every node of a cluster with C{data_dir} restarted in turn under a
    write load.
    """

    timeout = 180

    async def test_rolling_restarts_under_load(self) -> None:
        """
        Each node in turn is stopped (SIGTERM for one, SIGKILL for the
        others) and restarted with its data while writes go on through
        every node; once the cluster is in sync again after each, the next
        goes.  Every write acknowledged is then read back from every node,
        and each node logged what it recovered.
        """
        c = RealCluster(3, self.mktemp(), data_dir="data")
        self.addCleanup(c.stop_all)
        await c.start()
        load = Load(c)
        writers = load.start(6, stop_on_error=False)
        for node in c.node_ids:
            await deferLater(reactor, 1.0, lambda: None)
            since = c.log_size(node)
            if node == c.node_ids[0]:
                await c.stop(node)
            else:
                await c.kill(node)
            await deferLater(reactor, 1.0, lambda: None)
            await c.restart(node)
            await c.wait_for_log(node, r"recovered \d+ keys", since=since)
            await c.wait_for_leader(timeout=30)
        load.running = False
        await DeferredList(writers)
        log.msg(f"{len(load.acknowledged)} writes acknowledged of {len(load.sent)} sent")
        self.assertGreater(len(load.acknowledged), 50)
        self.assertEqual(await c.read_keys(load.acknowledged), [])


class DamagedDataTests(TestCase):
    """
    A node whose data directory is damaged serves none of it: it moves the
    directory aside with one line naming the file, starts empty, and is
    refilled from its peers.
    """

    timeout = 90

    async def restart_damaged(
        self,
        c: RealCluster,
        written: dict[str, bytes],
        damage: Callable[[str], str],
        node: str = "n1",
    ) -> None:
        """
        Stop C{node}, apply C{damage} to its data directory (it returns the
        file damaged), start it again, and check the line it logs and that
        every key of C{written} reads back through it.
        """
        await c.stop(node)
        directory = os.path.join(c.directory, "data", node)
        damaged = damage(directory)
        since = c.log_size(node)
        await c.restart(node)
        match = await c.wait_for_log(node, r".*damaged-1.*", since=since)
        self.assertIn(damaged, match.group(0))
        self.assertIn("refilled from its peers", match.group(0))
        self.assertEqual(c.logs(node, since).count("damaged-1"), 1)
        self.assertTrue(os.path.isdir(directory + ".damaged-1"))
        await c.wait_for_leader(timeout=30)
        self.assertEqual(await c.read_keys(written, nodes=[node]), [])

    async def test_corrupted_segment(self) -> None:
        """
        A flipped byte in the middle of a node's log records.
        """
        c = RealCluster(3, self.mktemp(), data_dir="data")
        self.addCleanup(c.stop_all)
        await c.start()
        written = {f"k{i}": b"x" * 100 for i in range(100)}
        await c.write_keys(written)

        def flip(directory: str) -> str:
            segment = os.path.join(
                directory, sorted(n for n in os.listdir(directory) if n.endswith(".log"))[0]
            )
            with open(segment, "r+b") as f:
                data = f.read()
                # the middle of the records, not of the zeros written ahead
                middle = len(data.rstrip(b"\0")) // 2
                f.seek(middle)
                f.write(bytes([data[middle] ^ 0xFF]))
            return segment

        await self.restart_damaged(c, written, flip)

    async def test_truncated_snapshot(self) -> None:
        """
        A snapshot cut short: written once a node's log outgrew both
        L{COMPACT_MIN_BYTES} and the live data, by values of 1 MiB written
        over again.
        """
        c = RealCluster(3, self.mktemp(), data_dir="data")
        self.addCleanup(c.stop_all)
        await c.start()
        for round_ in range(3):
            written = {
                f"big{i}": bytes([round_]) * 2**20 for i in range(COMPACT_MIN_BYTES // 2**21 + 1)
            }
            await c.write_keys(written)

        def snapshotted() -> Optional[str]:
            for node in c.node_ids:
                if any(n.endswith(".snap") for n in os.listdir(os.path.join(c.directory, "data", node))):
                    return node
            return None

        node = await poll(snapshotted, 30, "a snapshot")

        def truncate(directory: str) -> str:
            snapshot = os.path.join(
                directory, next(n for n in os.listdir(directory) if n.endswith(".snap"))
            )
            with open(snapshot, "r+b") as f:
                f.truncate(os.path.getsize(snapshot) // 2)
            return snapshot

        await self.restart_damaged(c, written, truncate, node)
