# -*- test-case-name: tests.test_e2e_backup -*-
"""
Backups between two real three-node clusters (L{tests.e2e.RealCluster}):
keys (some with a TTL, some with a content type) and FTP files written to
one, C{kvctl snapshot save} run as a process against it, then
C{kvctl snapshot restore} against a second, fresh cluster, which serves
everything back: the values, content types and about the same remaining
TTLs, and the files byte for byte over FTP and C{/files/}.
"""

from __future__ import annotations

import ftplib
import io
import json
import os
import random
import subprocess
import sys
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e import RealCluster

USER, PASSWORD = "alice", "wonderland"
FILES = {
    "/big.bin": random.Random(5).randbytes(3 * 1024 * 1024 + 123),
    "/docs/notes.txt": b"notes\n" * 1000,
    "/docs/deep/empty.bin": b"",
}


def _session(port: int) -> ftplib.FTP:
    client = ftplib.FTP(timeout=30)
    client.connect("127.0.0.1", port)
    client.login(USER, PASSWORD)
    return client


def _upload(port: int) -> None:
    client = _session(port)
    client.mkd("/docs")
    client.mkd("/docs/deep")
    for path, data in FILES.items():
        client.storbinary(f"STOR {path}", io.BytesIO(data))
    client.quit()


def _download(port: int) -> dict[str, bytes]:
    client = _session(port)
    found = {}
    for path in FILES:
        received = io.BytesIO()
        client.retrbinary(f"RETR {path}", received.write)
        found[path] = received.getvalue()
    client.quit()
    return found


def _kvctl(url: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twisted_kv.app.kvctl", "--node", url, *argv],
        capture_output=True, text=True, timeout=120,
    )


class BackupTests(TestCase):
    """
    Save one real cluster, restore into another.
    """

    timeout = 240

    async def test_save_and_restore(self) -> None:
        """
        Everything written to the first cluster reads back from the second
        after a save and a restore; a damaged copy of the file is refused
        with one line.
        """
        first = RealCluster(3, self.mktemp(), name="backup-a", election_timeout="1s")
        self.addCleanup(first.stop_all)
        await first.start()
        await first.wait_for_leader()

        keys: dict[str, tuple[bytes, str, Any]] = {}
        for index in range(120):
            ttl = 600 if index % 4 == 0 else None
            content_type = "application/json" if index % 3 == 0 else "text/plain; charset=utf-8"
            value = json.dumps({"n": index}).encode() if index % 3 == 0 else b"value %d" % index
            keys[f"key/{index:03d}"] = (value, content_type, ttl)
        for index, (key, (value, content_type, ttl)) in enumerate(keys.items()):
            node = first.node_ids[index % 3]
            path = f"/kv/{key}" + (f"?ttl={ttl}" if ttl else "")
            reply = await first.request("PUT", node, path, value, headers={"Content-Type": content_type})
            self.assertIn(reply.status, (200, 201), reply.body)
        await deferToThread(_upload, first.ftp_port("n1"))

        path = os.path.join(os.path.abspath(self.mktemp()), "cluster.kvs")
        os.makedirs(os.path.dirname(path))
        saved = await deferToThread(_kvctl, first.url("n2"), "snapshot", "save", path)
        self.assertEqual((saved.returncode, saved.stderr), (0, ""))
        self.assertRegex(saved.stdout, r"^saved 120 keys and 3 files \(\d+ file records\), .* in [\d.]+ s\n$")
        await first.stop_all()

        second = RealCluster(3, self.mktemp(), name="backup-b", election_timeout="1s")
        self.addCleanup(second.stop_all)
        await second.start()
        await second.wait_for_leader()

        with open(path, "rb") as stream:
            data = stream.read()
        damaged = path + ".damaged"
        with open(damaged, "wb") as stream:
            stream.write(data[: len(data) // 2])
        refused = await deferToThread(_kvctl, second.url("n1"), "snapshot", "restore", damaged)
        self.assertEqual(refused.returncode, 4)
        self.assertEqual(refused.stderr.count("\n"), 1, refused.stderr)
        self.assertIn("truncated", refused.stderr)
        listed = await second.request("GET", "n1", "/kv")
        self.assertEqual(listed.json()["keys"], [])

        restored = await deferToThread(_kvctl, second.url("n3"), "snapshot", "restore", path)
        self.assertEqual((restored.returncode, restored.stderr), (0, ""))
        self.assertTrue(restored.stdout.startswith("restored 120 keys and 3 files"), restored.stdout)

        for index, (key, (value, content_type, ttl)) in enumerate(keys.items()):
            reply = await second.request("GET", second.node_ids[index % 3], f"/kv/{key}")
            self.assertEqual(reply.status, 200, key)
            self.assertEqual((reply.body, reply.header("Content-Type")), (value, content_type), key)
            remaining = reply.header("X-KV-TTL")
            if ttl is None:
                self.assertIsNone(remaining, key)
            else:
                self.assertTrue(ttl - 120 < float(remaining) <= ttl, (key, remaining))
        for node in second.node_ids:
            found = await deferToThread(_download, second.ftp_port(node))
            self.assertEqual(found, FILES, node)
        for file_path, content in FILES.items():
            reply = await second.request("GET", "n2", f"/files{file_path}")
            self.assertEqual((reply.status, reply.body), (200, content), file_path)
