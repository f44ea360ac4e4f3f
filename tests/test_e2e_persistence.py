# -*- test-case-name: tests.test_e2e_persistence -*-
"""
End-to-end tests of C{data_dir}: real C{twistd kvnode} processes, killed
with SIGKILL, all of them, in the middle of a write load, and restarted
with their data directories; a damaged data file stops a node with one
line.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import log
from twisted.trial.unittest import TestCase

from tests.e2e import RealCluster, kv_path, node_command, node_environment


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
        acknowledged: dict[str, bytes] = {}
        sent: dict[str, bytes] = {}
        running = [True]

        async def writer(worker: int) -> None:
            count = 0
            while running[0]:
                key = f"load/{worker}/{count:05d}"
                value = f"{worker}:{count}".encode() * 5
                count += 1
                sent[key] = value
                try:
                    reply = await c.request(
                        "PUT", c.node_ids[worker % 3], kv_path(key), value,
                        {"Content-Type": "application/octet-stream"},
                    )
                except Exception:
                    return
                if reply.status in (200, 201):
                    acknowledged[key] = value

        writers = [ensureDeferred(writer(w)) for w in range(8)]
        await deferLater(reactor, 1.0, lambda: None)
        await c.kill(*c.node_ids)
        running[0] = False
        await DeferredList(writers)
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


class DamagedDataTests(TestCase):
    """
    A damaged data directory stops the node with one line naming the file.
    """

    timeout = 60

    async def test_corrupted_segment(self) -> None:
        """
        A flipped byte in the middle of a node's log: the node exits at
        once with status 1 and one line on standard error naming the file.
        """
        c = RealCluster(3, self.mktemp(), data_dir="data")
        self.addCleanup(c.stop_all)
        await c.start()
        await c.write_keys({f"k{i}": b"x" * 100 for i in range(100)})
        await c.stop("n1")
        directory = os.path.join(c.directory, "data", "n1")
        segment = os.path.join(directory, sorted(n for n in os.listdir(directory) if n.endswith(".log"))[0])
        with open(segment, "r+b") as f:
            data = f.read()
            f.seek(len(data) // 2)
            f.write(bytes([data[len(data) // 2] ^ 0xFF]))
        out, err, code = await getProcessOutputAndValue(
            sys.executable, node_command(c.config_path, "n1")[1:], env=node_environment(),
            path=c.directory,
        )
        lines = err.decode().strip().splitlines()
        self.assertEqual(code, 1, (out, err))
        self.assertEqual(len(lines), 1, err)
        self.assertIn("refusing to start", lines[0])
        self.assertIn(segment, lines[0])
