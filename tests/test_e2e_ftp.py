# -*- test-case-name: tests.test_e2e_ftp -*-
"""
Files over FTP on a real three-node cluster (L{tests.e2e.RealCluster}):
uploaded through one node with ftplib, curl and lftp, downloaded through the
others with the same digest, and still after a node is killed: a file
uploaded through any node is visible, with the same bytes, through every
node, and survives the loss of a minority of the nodes.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import random
import shutil
import subprocess
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e import RealCluster

USER, PASSWORD = "alice", "wonderland"
DATA = random.Random(11).randbytes(2 * 1024 * 1024 + 777)
DIGEST = hashlib.sha256(DATA).hexdigest()


def _session(port: int) -> ftplib.FTP:
    client = ftplib.FTP(timeout=30)
    client.connect("127.0.0.1", port)
    client.login(USER, PASSWORD)
    return client


def _store(port: int, path: str, data: bytes) -> None:
    client = _session(port)
    client.storbinary(f"STOR {path}", io.BytesIO(data))
    client.quit()


def _names(port: int, path: str) -> list[str]:
    client = _session(port)
    names = client.nlst(path)
    client.quit()
    return names


def _fetch(port: int, path: str) -> str:
    client = _session(port)
    received = io.BytesIO()
    client.retrbinary(f"RETR {path}", received.write)
    client.quit()
    return hashlib.sha256(received.getvalue()).hexdigest()


class ClusterFTPTests(TestCase):
    """
    FTP clients against a real cluster.
    """

    timeout = 180

    async def test_upload_anywhere_download_everywhere(self) -> None:
        """
        Files uploaded through n1 with ftplib, curl and lftp are listed by
        C{NLST} as paths and download intact through every node; with one
        node killed, every live node still serves them, and accepts new
        uploads.
        """
        cluster = RealCluster(3, self.mktemp(), election_timeout="1s")
        self.addCleanup(cluster.stop_all)
        await cluster.start()
        port = cluster.ftp_port
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        source = os.path.join(directory, "data.bin")
        with open(source, "wb") as file:
            file.write(DATA)

        await deferToThread(_store, port("n1"), "ftplib.bin", DATA)
        uploaded = ["ftplib.bin"]
        if shutil.which("curl"):
            await deferToThread(self.tool, "curl", "-sS", "-T", source, self.url(port("n1"), "curl.bin"))
            uploaded.append("curl.bin")
        if shutil.which("lftp"):
            await deferToThread(
                self.tool,
                "lftp", "-u", f"{USER},{PASSWORD}", "-p", str(port("n1")), "127.0.0.1",
                "-e", f"set ftp:ssl-allow no; put {source} -o lftp.bin; quit",
            )
            uploaded.append("lftp.bin")

        for node in cluster.node_ids:
            listed = await deferToThread(_names, port(node), "/")
            self.assertEqual(listed, sorted(f"/{name}" for name in uploaded), node)
            for path in listed:
                self.assertEqual(await deferToThread(_fetch, port(node), path), DIGEST, (node, path))

        leader = await cluster.wait_for_leader()
        await cluster.kill(leader)
        survivors = cluster.live_nodes()
        await cluster.wait_for_leader(timeout=30)
        for node in survivors:
            for name in uploaded:
                self.assertEqual(await deferToThread(_fetch, port(node), name), DIGEST, (node, name))
        await deferToThread(_store, port(survivors[0]), "after.bin", DATA[:1000])
        fetched = await deferToThread(_fetch, port(survivors[1]), "after.bin")
        self.assertEqual(fetched, hashlib.sha256(DATA[:1000]).hexdigest())

    def url(self, port: int, path: str) -> str:
        return f"ftp://{USER}:{PASSWORD}@127.0.0.1:{port}/{path}"

    def tool(self, *command: str) -> Any:
        return subprocess.run(command, check=True, capture_output=True, timeout=120)
