# -*- test-case-name: tests.test_files_events -*-
"""
Tests for L{twisted_kv.files.events}: one event per file operation, from
the committed changes of the store.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.core.records import Change, Record
from twisted_kv.files import FileSystem, FSPath, file_event_for
from twisted_kv.files._paths import chunk_key, directory_key, lease_key, manifest_key
from twisted_kv.files._records import Manifest, Tombstone
from twisted_kv.interfaces import ChangeEvent

PATH = FSPath.parse("/docs/a.txt")
MANIFEST = Manifest(12, 1.0, "0123456789abcdef", 4, "00" * 32)


def put(key: str, value: bytes) -> Change:
    return Change("put", key, 7, Record(value, "application/json", 7))


class FileEventForTests(SynchronousTestCase):
    """
    L{file_event_for} on single changes.
    """

    def test_stored(self) -> None:
        """
        A manifest written by an upload is a C{stored} event.
        """
        self.assertEqual(
            file_event_for(put(manifest_key(PATH), MANIFEST.encode())),
            {"type": "file", "op": "stored", "path": "/docs/a.txt", "size": 12},
        )

    def test_renamed(self) -> None:
        """
        A manifest written by a rename is a C{renamed} event naming the old
        path.
        """
        self.assertEqual(
            file_event_for(put(manifest_key(PATH), MANIFEST.renamed("/old").encode())),
            {"type": "file", "op": "renamed", "path": "/docs/a.txt", "from": "/old", "size": 12},
        )

    def test_deleted(self) -> None:
        """
        A tombstone is a C{deleted} event with the removed file's size,
        unless the file was renamed away.
        """
        self.assertEqual(
            file_event_for(put(manifest_key(PATH), Tombstone(12).encode())),
            {"type": "file", "op": "deleted", "path": "/docs/a.txt", "size": 12},
        )
        self.assertIsNone(file_event_for(put(manifest_key(PATH), Tombstone(12, "/b").encode())))

    def test_silent_changes(self) -> None:
        """
        Expiring or deleting a tombstone, chunks, leases, directories,
        client keys and unreadable manifests yield nothing.
        """
        for change in [
            Change("expire", manifest_key(PATH), 8, None),
            Change("delete", manifest_key(PATH), 8, None),
            put(chunk_key("0123456789abcdef", 0), b"data"),
            put(lease_key("0123456789abcdef"), b"{}"),
            put(directory_key(PATH), b'{"mtime": 1}'),
            put("kdocs/a.txt", MANIFEST.encode()),
            put(manifest_key(PATH), b"garbage"),
        ]:
            self.assertIsNone(file_event_for(change), change)


class FileSystemEventsTests(SynchronousTestCase):
    """
    The events a watcher of the store sees for file-system operations.
    """

    def test_one_event_per_operation(self) -> None:
        """
        Storing, overwriting, renaming and deleting a file yield exactly one
        event each, in order; directories and tombstone expiry yield none.
        """
        clock = Clock()
        kv = LocalKeyValue(clock)
        events: list[dict] = []

        def watch(event: ChangeEvent) -> None:
            described = file_event_for(event.change)
            if described is not None:
                events.append(described)

        kv.subscribe(watch)
        fs = FileSystem(kv, clock, chunk_bytes=4, tombstone_seconds=60)

        def store(path: str, data: bytes) -> None:
            upload = self.successResultOf(fs.open_upload(FSPath.parse(path)))
            upload.write(data)
            self.successResultOf(upload.finish())

        self.successResultOf(fs.make_directory(FSPath.parse("/d")))
        store("/d/a", b"0123456789")
        store("/d/a", b"012")
        self.successResultOf(fs.rename(FSPath.parse("/d/a"), FSPath.parse("/b")))
        self.successResultOf(fs.remove_file(FSPath.parse("/b")))
        clock.advance(60)
        self.successResultOf(fs.remove_directory(FSPath.parse("/d")))
        self.assertEqual(
            events,
            [
                {"type": "file", "op": "stored", "path": "/d/a", "size": 10},
                {"type": "file", "op": "stored", "path": "/d/a", "size": 3},
                {"type": "file", "op": "renamed", "path": "/b", "from": "/d/a", "size": 3},
                {"type": "file", "op": "deleted", "path": "/b", "size": 3},
            ],
        )
