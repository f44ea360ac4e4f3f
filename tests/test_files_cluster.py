# -*- test-case-name: tests.test_files_cluster -*-
"""
The file system over a whole cluster in one process (L{MemoryCluster}):
files stored through one node read back, intact, through every node, and
still do with a minority of the nodes killed: files keep the guarantees
of the keys (docs/files.md).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.files import FileSystem, FSPath
from twisted_kv.files.testing import PREFIXES
from twisted_kv.testing import MemoryCluster

DATA = random.Random(3).randbytes(10_000)


class FilesOnClusterTests(SynchronousTestCase):
    """
    Files through the cluster coordinators.
    """

    def setUp(self) -> None:
        self.cluster = MemoryCluster(3)
        self.addCleanup(self.cluster.stop)
        self.cluster.settle()

    def fs(self, node: str) -> FileSystem:
        return FileSystem(self.cluster.coordinators[node], self.cluster.clock, chunk_bytes=1024)

    def wait(self, deferred: Deferred[Any], limit: float = 30.0) -> Any:
        box: list[Any] = []
        deferred.addBoth(box.append)
        end = self.cluster.clock.seconds() + limit
        while not box and self.cluster.clock.seconds() < end:
            self.cluster.run(0.01)
        self.assertTrue(box, "the operation did not finish")
        self.assertNotIsInstance(box[0], Exception)
        return box[0]

    def store(self, node: str, path: str, data: bytes) -> None:
        upload = self.wait(self.fs(node).open_upload(FSPath.parse(path), create_parents=True))
        for start in range(0, len(data), 3000):
            upload.write(data[start : start + 3000])
            self.wait(upload.drained())
        self.wait(upload.finish())

    def read(self, node: str, path: str) -> bytes:
        download = self.wait(self.fs(node).open_download(FSPath.parse(path)))
        received: list[bytes] = []

        class Consumer:
            def registerProducer(self, producer: Any, streaming: bool) -> None:
                pass

            def unregisterProducer(self) -> None:
                pass

            def write(self, data: bytes) -> None:
                received.append(data)

        self.wait(download.send(Consumer()))
        return b"".join(received)

    def test_every_node_sees_every_file(self) -> None:
        """
        A file stored through one node reads back with the same digest
        through every node, also after a minority of nodes is killed, and
        files can still be stored, renamed and removed then.
        """
        self.store("n1", "/docs/data.bin", DATA)
        digest = hashlib.sha256(DATA).hexdigest()
        for node in self.cluster.nodes:
            self.assertEqual(hashlib.sha256(self.read(node, "/docs/data.bin")).hexdigest(), digest)
        self.cluster.kill("n1")
        self.cluster.settle()
        for node in self.cluster.nodes:
            self.assertEqual(self.read(node, "/docs/data.bin"), DATA)
        self.store("n2", "/docs/more.bin", DATA[::-1])
        self.wait(self.fs("n3").rename(FSPath.parse("/docs/more.bin"), FSPath.parse("/moved.bin")))
        self.assertEqual(self.read("n2", "/moved.bin"), DATA[::-1])
        self.wait(self.fs("n2").remove_file(FSPath.parse("/docs/data.bin")))
        listing = self.wait(self.fs("n3").list_directory(FSPath.parse("/docs")))
        self.assertEqual(listing, [])
        self.assertEqual(self.wait(self.fs("n3").sweep()), 0)
        coordinator = self.cluster.coordinators["n2"]
        chunks = self.wait(coordinator.list_keys(PREFIXES["chunk"], None, 100)).keys
        leases = self.wait(coordinator.list_keys(PREFIXES["lease"], None, 100)).keys
        self.assertEqual((len(chunks), len(leases)), (10, 1))
