# -*- test-case-name: tests.test_kvctl_snapshot -*-
"""
Tests for C{kvctl snapshot save} and C{kvctl snapshot restore}
(L{twisted_kv.app.snapshot}): against nodes listening on loopback ports,
run in a thread, and against a scripted client for what a single store
cannot do (a primary moving mid-dump, a batch refused for a while).
"""

from __future__ import annotations

import io
import os
from typing import Any, Optional

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_client_support import serve
from twisted_kv.app import snapshot
from twisted_kv.app.kvctl import EXIT_FILE, EXIT_UNREACHABLE, main
from twisted_kv.core.backup import BackupRecord, DumpPage, PartitionMark, read_snapshot
from twisted_kv.core.keyspace import file_key, user_key
from twisted_kv.errors import SnapshotExpired, Unavailable
from twisted_kv.files._records import COMMITTED, UPLOADING, Lease, Manifest, Tombstone
from twisted_kv.interfaces import ChangeEvent


LEASE = Lease("/docs/a.txt", COMMITTED, 5.0).encode()
MANIFEST = Manifest(10, 5.0, "0a", 1024, "0" * 64).encode()
TOMBSTONE = Tombstone(3).encode()


class KvctlSnapshotTests(TestCase):
    """
    Saving one node's store and restoring it into another, through kvctl.
    """

    def setUp(self) -> None:
        self.source = serve(self)
        self.target = serve(self)
        self.path = os.path.join(self.mktemp() + "-dir", "backup.kvs")
        os.makedirs(os.path.dirname(self.path))

    @inlineCallbacks
    def kvctl(self, node: Any, *argv: str) -> Any:
        """
        Run C{kvctl --node URL argv}: fires with (status, stdout, stderr).
        """
        stdout = io.BytesIO()
        stderr = io.StringIO()
        url = node if isinstance(node, str) else node.url
        status = yield deferToThread(
            main, ["--node", url, *argv], stdin=io.BytesIO(), stdout=stdout, stderr=stderr, environ={}
        )
        return status, stdout.getvalue().decode(), stderr.getvalue()

    @inlineCallbacks
    def fill(self) -> Any:
        kv = self.source.kv
        yield kv.put(user_key("plain"), b"text", "text/plain")
        yield kv.put(user_key("temp"), b"\x00\xff", "application/x-bin", ttl=100)
        yield kv.put(file_key("c/0a/0"), b"chunk zero")
        yield kv.put(file_key("u/0a"), LEASE, "application/json")
        yield kv.put(file_key("d1/docs"), b"{}", "application/json")
        yield kv.put(file_key("m2/docs/a.txt"), MANIFEST, "application/json")
        yield kv.put(file_key("m2/docs/gone.txt"), TOMBSTONE, "application/json", ttl=60)

    @inlineCallbacks
    def test_save_and_restore(self) -> Any:
        """
        C{save} writes every record to FILE and says how many; C{restore}
        writes them into another store, with their content types and
        remaining TTLs, chunks before leases, directories and manifests.
        """
        yield self.fill()
        self.source.kv_clock.advance(40)
        status, out, err = yield self.kvctl(self.source, "snapshot", "save", self.path)
        self.assertEqual((status, err), (0, ""))
        self.assertRegex(
            out,
            r"^saved 2 keys and 1 file \(5 file records\), \d+ B of values, 1 partition,"
            rf" to {self.path} in \d+\.\d\d s\n$",
        )
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["backup.kvs"])
        written: list[tuple[str, bytes]] = []
        self.target.kv.subscribe(lambda event: written.append((event.change.key, event.change.record.value)))
        status, out, err = yield self.kvctl(self.target, "snapshot", "restore", self.path)
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith("restored 2 keys and 1 file (5 file records)"), out)
        self.assertEqual(written[0][0], file_key("u/0a"))
        self.assertEqual(Lease.decode(written[0][1]).state, UPLOADING)
        self.assertEqual(
            written[-4:],
            [
                (file_key("d1/docs"), b"{}"),
                (file_key("m2/docs/a.txt"), MANIFEST),
                (file_key("m2/docs/gone.txt"), TOMBSTONE),
                (file_key("u/0a"), LEASE),
            ],
        )
        for key in [user_key("plain"), user_key("temp"), file_key("c/0a/0"), file_key("m2/docs/a.txt")]:
            before = (yield self.source.kv.get(key)).record
            after = (yield self.target.kv.get(key)).record
            self.assertEqual((after.value, after.content_type), (before.value, before.content_type))
        temp = (yield self.target.kv.get(user_key("temp"))).record
        self.assertEqual(temp.expires_at, 60)

    @inlineCallbacks
    def test_damaged_file_writes_nothing(self) -> Any:
        """
        A damaged or truncated file is refused with one line and exit
        status 4, before anything is written.
        """
        yield self.fill()
        yield self.kvctl(self.source, "snapshot", "save", self.path)
        with open(self.path, "rb") as stream:
            data = stream.read()
        written: list[ChangeEvent] = []
        self.target.kv.subscribe(written.append)
        for damaged, reason in [
            (data[:-80], "truncated"),
            (data.replace(b"Y2h1bmsgemVybw==", b"Y2h1bmsgemVyBw=="), "damaged: the checksum does not match"),
            (b"GIF89a" + data, "wrong magic"),
        ]:
            with open(self.path, "wb") as stream:
                stream.write(damaged)
            status, out, err = yield self.kvctl(self.target, "snapshot", "restore", self.path)
            self.assertEqual((status, out), (EXIT_FILE, ""))
            self.assertTrue(err.startswith(f"kvctl: cannot restore {self.path}: "), err)
            self.assertIn(reason, err)
            self.assertEqual(err.count("\n"), 1)
        self.assertEqual(written, [])

    @inlineCallbacks
    def test_file_problems(self) -> Any:
        """
        A file that cannot be read or written is one line and exit status
        4; a node that cannot be reached, status 3, and no file is left.
        """
        missing = self.path + ".missing"
        status, out, err = yield self.kvctl(self.target, "snapshot", "restore", missing)
        self.assertEqual((status, err), (EXIT_FILE, f"kvctl: {missing}: No such file or directory\n"))
        nowhere = os.path.join(self.path + ".nodir", "x.kvs")
        status, out, err = yield self.kvctl(self.source, "snapshot", "save", nowhere)
        self.assertEqual(status, EXIT_FILE)
        self.assertIn("No such file or directory", err)
        yield self.target.stop()
        status, out, err = yield self.kvctl(self.target, "snapshot", "save", self.path)
        self.assertEqual(status, EXIT_UNREACHABLE, err)
        self.assertEqual(os.listdir(os.path.dirname(self.path)), [])


class UsageTests(SynchronousTestCase):
    """
    The command line of C{kvctl snapshot}.
    """

    def test_action_required(self) -> None:
        """
        C{snapshot} needs C{save} or C{restore} and a FILE: a usage error
        otherwise, before any node is asked.
        """
        for argv in (["snapshot"], ["snapshot", "save"], ["snapshot", "copy", "x"]):
            stderr = io.StringIO()
            status = main(argv, stdin=io.BytesIO(), stdout=io.BytesIO(), stderr=stderr, environ={})
            self.assertEqual(status, 2, argv)
            self.assertIn("usage: kvctl snapshot", stderr.getvalue())


class _ScriptedClient:
    """
    A client whose partition 1 loses its dump after its first page, once,
    and whose restores are refused C{unavailable} twice.
    """

    def __init__(self) -> None:
        self.expired = False
        self.refusals = 2
        self.restored: list[list[BackupRecord]] = []
        self.batch_ids: list[str] = []

    def snapshot_partitions(self) -> int:
        return 2

    def snapshot_page(
        self, partition: int, dump: Optional[str] = None, after: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> DumpPage:
        attempt = "2" if self.expired else "1"
        records = [BackupRecord(f"k{partition}-{attempt}-{n}", b"v", "t", "1.1", None) for n in range(2)]
        if partition == 0:
            records[1] = BackupRecord("fu/0a", LEASE, "application/json", "1.1", None)
        if dump is None:
            return DumpPage(partition, attempt, f"{attempt}.0", 0.0, records[:1], records[0].key)
        if partition == 1 and not self.expired:
            self.expired = True
            raise SnapshotExpired("the primary moved")
        return DumpPage(partition, attempt, f"{attempt}.0", 0.0, records[1:], None)

    def restore(self, records: list[BackupRecord], batch_id: str) -> dict:
        self.batch_ids.append(batch_id)
        if self.refusals:
            self.refusals -= 1
            raise Unavailable("no primary answered in time")
        self.restored.append(records)
        return {"written": len(records), "skipped": 0}


class ScriptedTests(SynchronousTestCase):
    """
    Saving and restoring through a client that fails on cue.
    """

    def test_partition_dumped_again(self) -> None:
        """
        A partition whose dump is lost mid-way is dumped again from its
        start, and the file holds only the second dump.
        """
        path = self.mktemp()
        client = _ScriptedClient()
        outcome = snapshot.save(client, path)
        self.assertEqual(outcome.summary.records, 4)
        with open(path, "rb") as stream:
            items = list(read_snapshot(stream))
        self.assertEqual(
            [item.key if isinstance(item, BackupRecord) else item for item in items[:-1]],
            [
                PartitionMark(0, "1.0", 0.0), "k0-1-0", "fu/0a",
                PartitionMark(1, "2.0", 0.0), "k1-2-0", "k1-2-1",
            ],
        )

    def test_batches_sent_again(self) -> None:
        """
        A batch refused as unavailable is sent again, and batches are cut
        by count.
        """
        path = self.mktemp()
        client = _ScriptedClient()
        snapshot.save(client, path)
        self.patch(snapshot, "BATCH_RECORDS", 2)
        pauses: list[float] = []
        snapshot.restore(client, path, wall_clock=lambda: 77.0, sleep=pauses.append)
        self.assertEqual([[r.key for r in batch] for batch in client.restored], [
            ["fu/0a"], ["k0-1-0", "k1-2-0"], ["k1-2-1"], ["fu/0a"],
        ])
        self.assertEqual(client.restored[0][0].value, Lease("/docs/a.txt", UPLOADING, 77.0).encode())
        self.assertEqual(client.restored[-1][0].value, LEASE)
        self.assertEqual(pauses, [snapshot.RETRY_PAUSE, 2 * snapshot.RETRY_PAUSE])
        first, *others = client.batch_ids
        self.assertEqual(others[:2], [first, first])
        self.assertEqual(len(set(client.batch_ids)), 4)

    def test_failure_says_how_far(self) -> None:
        """
        A batch refused every time stops the restore with the last error,
        saying how many of the file's records were written and which batch
        failed.
        """
        path = self.mktemp()
        client = _ScriptedClient()
        client.refusals = 0
        snapshot.save(client, path)
        self.patch(snapshot, "BATCH_RECORDS", 2)
        client.restored.clear()
        # the provisional lease and the first batch pass; every later attempt is refused
        client.refusals = 0
        original = client.restore

        def refuse_after_two(records: list[BackupRecord], batch_id: str) -> dict:
            client.refusals = int(len(client.restored) >= 2)
            return original(records, batch_id)

        client.restore = refuse_after_two  # type: ignore[method-assign]
        pauses: list[float] = []
        error = self.assertRaises(
            Unavailable, snapshot.restore, client, path, sleep=pauses.append
        )
        self.assertEqual(
            error.message,
            "no primary answered in time; the restore stopped after writing 2 of the file's 4"
            " records: batch 3 (1 records, the first '1-2-1') failed 5 times and may be written"
            " in part; the records after it are not written",
        )
        self.assertEqual(len(pauses), snapshot.ATTEMPTS - 1)

    def test_provisional_leases_renewed(self) -> None:
        """
        The provisional leases are written again before a batch once
        L{snapshot.LEASE_RENEWAL} has passed since they were last written.
        """
        path = self.mktemp()
        client = _ScriptedClient()
        client.refusals = 0
        snapshot.save(client, path)
        self.patch(snapshot, "BATCH_RECORDS", 1)
        ticks = iter(range(0, 10_000, 70))
        snapshot.restore(client, path, clock=lambda: float(next(ticks)))
        keys = [[r.key for r in batch] for batch in client.restored]
        self.assertEqual(keys, [
            ["fu/0a"], ["k0-1-0"], ["fu/0a"], ["k1-2-0"], ["k1-2-1"], ["fu/0a"], ["fu/0a"],
        ])
