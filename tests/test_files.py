# -*- test-case-name: tests.test_files -*-
"""
Tests for L{twisted_kv.files}: the file system over a L{LocalKeyValue} on a
L{Clock}, with L{ControlledKeyValue} to interleave operations and inject
store failures.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.errors import (
    InsufficientStorage,
    OutcomeUnknown,
    PreconditionFailed,
    Unavailable,
)
from twisted_kv.files import (
    DirectoryNotEmpty,
    FileChanged,
    FileExists,
    FileNotFound,
    FileSystem,
    FileTooLarge,
    FSPath,
    IsADirectory,
    NotADirectory,
    NotPermitted,
    OrphanCollector,
    TransferAborted,
    Upload,
    UploadExpired,
)
from twisted_kv.files._paths import lease_key
from twisted_kv.files._records import COMMITTED, Lease
from twisted_kv.files.testing import PREFIXES, ControlledKeyValue, on
from twisted_kv.interfaces import IKeyValue

NOW = 1_700_000_000.0
LEASE = 600.0


def P(text: str) -> FSPath:
    return FSPath.parse(text)


@implementer(IConsumer)
class Sink:
    """
    A consumer that keeps what it is sent and can pause its producer.
    """

    def __init__(self) -> None:
        self.data = b""
        self.producer: Optional[IPushProducer] = None
        self.registrations = 0

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer
        self.registrations += 1

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data += data


@implementer(IPushProducer)
class Producer:
    """
    A push producer recording what its consumer asks of it.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class FileSystemMixin:
    """
    A fresh file system with 4-byte chunks (so a few bytes span several
    chunks) over a controllable local store.
    """

    chunk_bytes = 4

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.local = LocalKeyValue(self.clock)
        self.kv = ControlledKeyValue(self.local)
        self.fs = FileSystem(
            self.kv,
            self.clock,
            max_file_bytes=64,
            chunk_bytes=self.chunk_bytes,
            lease_seconds=LEASE,
            tombstone_seconds=60,
        )

    def result(self, deferred: Deferred[Any]) -> Any:
        return self.successResultOf(deferred)  # type: ignore[attr-defined]

    def failure(self, deferred: Deferred[Any], *errors: type) -> Any:
        return self.failureResultOf(deferred, *errors).value  # type: ignore[attr-defined]

    def keys(self, kind: str) -> list[str]:
        return self.result(self.local.list_keys(PREFIXES[kind], None, 10_000)).keys

    def open(self, path: str, **kwargs: Any) -> Upload:
        return self.result(self.fs.open_upload(P(path), **kwargs))

    def store(self, path: str, data: bytes, pieces: int = 3, **kwargs: Any) -> Any:
        upload = self.open(path, **kwargs)
        step = max(1, -(-len(data) // pieces))
        for start in range(0, len(data), step):
            upload.write(data[start : start + step])
        return self.result(upload.finish())

    def read(self, path: str, start: int = 0, stop: Optional[int] = None) -> bytes:
        sink = Sink()
        download = self.result(self.fs.open_download(P(path)))
        self.result(download.send(sink, start, stop))
        return sink.data

    def assertNoGarbage(self) -> None:
        """
        Every chunk belongs to a file, and every lease is settled.
        """
        manifests = {}
        for key in self.keys("manifest"):
            record = self.result(self.local.get(key)).record
            if b'"upload"' in record.value:
                manifests[key] = record.value
        uploads = {key.split("/")[1] for key in self.keys("chunk")}
        leases = {key.split("/", 1)[1] for key in self.keys("lease")}
        self.assertEqual(uploads, leases)  # type: ignore[attr-defined]
        for upload in uploads:
            self.assertTrue(  # type: ignore[attr-defined]
                any(upload.encode() in value for value in manifests.values()), upload
            )


class StoreAndReadTests(FileSystemMixin, SynchronousTestCase):
    """
    Storing files in chunks and reading them back.
    """

    def test_interfaces(self) -> None:
        """
        The controlled store is an L{IKeyValue}; uploads are consumers and
        downloads push producers.
        """
        verifyObject(IKeyValue, self.kv)
        upload = self.open("/a")
        verifyObject(IConsumer, upload)
        self.result(upload.finish())
        verifyObject(IPushProducer, self.result(self.fs.open_download(P("/a"))))

    def test_pieces_across_chunks(self) -> None:
        """
        Data written in pieces that straddle chunk boundaries is stored as
        full chunks plus a short last one, and read back unchanged, with
        its size, digest and modification time in the manifest.
        """
        data = b"abcdefghijklmnopqrstu"
        stored = self.store("/file.txt", data, pieces=5)
        self.assertTrue(stored.created)
        manifest = stored.entry.manifest
        self.assertEqual(
            (manifest.size, manifest.sha256, manifest.mtime, manifest.chunk_bytes),
            (21, hashlib.sha256(data).hexdigest(), NOW, 4),
        )
        self.assertEqual(manifest.content_type, "text/plain")
        self.assertEqual(len(self.keys("chunk")), 6)
        self.assertEqual(self.read("/file.txt"), data)
        self.assertNoGarbage()

    def test_byte_ranges(self) -> None:
        """
        Any byte range is read from the right chunks, clamped to the file.
        """
        data = bytes(range(30))
        self.store("/r", data)
        for start, stop in [(0, 1), (3, 9), (4, 8), (5, None), (29, 30), (0, 100), (30, None)]:
            self.assertEqual(self.read("/r", start, stop), data[start:stop], (start, stop))

    def test_empty_file(self) -> None:
        """
        An empty file has no chunks and reads as nothing.
        """
        self.store("/empty", b"")
        self.assertEqual(self.keys("chunk"), [])
        self.assertEqual(self.read("/empty"), b"")
        self.assertEqual(self.result(self.fs.stat(P("/empty"))).size, 0)

    def test_invisible_until_finished(self) -> None:
        """
        Until the upload is finished, its chunks are stored but the file
        does not exist.
        """
        upload = self.open("/f")
        upload.write(b"0123456789")
        self.assertEqual(len(self.keys("chunk")), 2)
        self.failure(self.fs.stat(P("/f")), FileNotFound)
        self.assertEqual(self.result(self.fs.list_directory(P("/"))), [])
        self.result(upload.finish())
        self.assertEqual(self.read("/f"), b"0123456789")

    def test_overwrite_collects_old_chunks(self) -> None:
        """
        Overwriting a file swaps its manifest to a new upload and deletes
        the old upload's chunks and lease.
        """
        first = self.store("/f", b"old content")
        second = self.store("/f", b"new")
        self.assertFalse(second.created)
        self.assertNotEqual(first.entry.version, second.entry.version)
        self.assertEqual(self.read("/f"), b"new")
        self.assertEqual(len(self.keys("chunk")), 1)
        self.assertNoGarbage()

    def test_reader_during_overwrite(self) -> None:
        """
        A reader sees the old file or the new one, never a mix: opened
        before the new manifest, it reads the old bytes while the new
        chunks are written; once the old chunks are collected under it, it
        fails with L{FileChanged} rather than read anything else.
        """
        self.store("/f", b"AAAABBBBCCCC")
        early = self.result(self.fs.open_download(P("/f")))
        sink = Sink()
        sent = early.send(sink)
        self.assertEqual(sink.data, b"AAAABBBBCCCC")
        self.result(sent)

        reader = self.result(self.fs.open_download(P("/f")))
        upload = self.open("/f")
        upload.write(b"xxxxyyyyzzzz")
        # The new chunks exist, the manifest is still the old one.
        self.assertEqual(self.read("/f"), b"AAAABBBBCCCC")
        partial = Sink()
        self.kv.hold(on("get", "chunk"))
        reading = reader.send(partial)
        self.kv.held.pop(0).release()
        self.assertEqual(partial.data, b"AAAA")
        self.result(upload.finish())
        self.kv.hold(None)
        self.kv.release_all()
        self.failure(reading, FileChanged)
        self.assertEqual(partial.data, b"AAAA")
        self.assertEqual(self.read("/f"), b"xxxxyyyyzzzz")

    def test_concurrent_overwrites(self) -> None:
        """
        Of two uploads to the same path, the last to commit wins, and the
        loser's chunks are collected: nothing leaks.
        """
        self.store("/f", b"original")
        one, two = self.open("/f"), self.open("/f")
        one.write(b"first upload")
        two.write(b"second upload")
        self.result(two.finish())
        self.result(one.finish())
        self.assertEqual(self.read("/f"), b"first upload")
        self.assertNoGarbage()

    def test_content_type(self) -> None:
        """
        The content type is guessed from the name unless given.
        """
        self.assertEqual(self.store("/a.json", b"{}").entry.manifest.content_type, "application/json")
        self.assertEqual(
            self.store("/blob", b"x").entry.manifest.content_type, "application/octet-stream"
        )
        given = self.store("/b.json", b"x", content_type="text/x-mine")
        self.assertEqual(given.entry.manifest.content_type, "text/x-mine")


class FailedUploadTests(FileSystemMixin, SynchronousTestCase):
    """
    Uploads that fail or are aborted leave nothing behind.
    """

    def test_abort(self) -> None:
        """
        Aborting deletes the chunks and the lease; the file never appears
        and finishing afterwards fails.
        """
        upload = self.open("/f")
        producer = Producer()
        upload.registerProducer(producer, True)
        upload.write(b"0123456789")
        self.result(upload.abort())
        self.assertEqual(producer.calls, ["stop"])
        self.assertEqual((self.keys("chunk"), self.keys("lease")), ([], []))
        self.failure(self.fs.stat(P("/f")), FileNotFound)
        self.failure(upload.finish(), TransferAborted)

    def test_too_large(self) -> None:
        """
        Going over the maximum size stops the producer; finishing fails
        with L{FileTooLarge} and leaves nothing.
        """
        upload = self.open("/f")
        producer = Producer()
        upload.registerProducer(producer, True)
        upload.write(b"x" * 60)
        upload.write(b"x" * 5)
        upload.write(b"ignored")
        self.assertEqual(producer.calls, ["stop"])
        self.failure(upload.drained(), FileTooLarge)
        self.failure(upload.finish(), FileTooLarge)
        self.assertEqual((self.keys("chunk"), self.keys("lease")), ([], []))

    def test_chunk_write_fails(self) -> None:
        """
        A chunk the store refuses fails the upload with the store's error
        and deletes what was written.
        """
        self.kv.fail_with(
            lambda method, key: method == "put" and key.endswith("/1"),
            InsufficientStorage("full"),
        )
        upload = self.open("/f")
        upload.write(b"0123456789")
        self.failure(upload.finish(), InsufficientStorage)
        self.assertEqual((self.keys("chunk"), self.keys("lease")), ([], []))

    def test_manifest_unavailable(self) -> None:
        """
        When the manifest write is refused, the chunks are deleted.
        """
        self.kv.fail_with(on("put", "manifest"), Unavailable("no quorum"))
        upload = self.open("/f")
        upload.write(b"0123456789")
        self.failure(upload.finish(), Unavailable)
        self.assertEqual((self.keys("chunk"), self.keys("lease")), ([], []))

    def test_manifest_outcome_unknown(self) -> None:
        """
        When the manifest write may or may not have happened, the chunks
        stay (the file may exist); the collector removes them once the
        lease expires if no manifest refers to them.
        """
        self.kv.fail_with(on("put", "manifest"), OutcomeUnknown("lost"))
        upload = self.open("/f")
        upload.write(b"0123456789")
        self.failure(upload.finish(), OutcomeUnknown)
        self.assertEqual(len(self.keys("chunk")), 3)
        self.assertEqual(self.result(self.fs.sweep()), 0)
        self.clock.advance(LEASE)
        self.assertEqual(self.result(self.fs.sweep()), 1)
        self.assertEqual((self.keys("chunk"), self.keys("lease")), ([], []))

    def test_backpressure(self) -> None:
        """
        The producer is paused while C{chunks_in_flight} chunk writes are
        outstanding and resumed when they complete; at most one partial
        chunk is buffered.
        """
        self.kv.hold(on("put", "chunk"))
        upload = self.open("/f")
        producer = Producer()
        upload.registerProducer(producer, True)
        upload.write(b"0123")
        self.assertEqual(producer.calls, [])
        upload.write(b"4567")
        self.assertEqual(producer.calls, ["pause"])
        waiting = upload.drained()
        self.assertNoResult(waiting)
        self.kv.held.pop(0).release()
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.result(waiting)
        upload.unregisterProducer()
        upload.write(b"89")
        finishing = upload.finish()
        self.assertNoResult(finishing)
        self.kv.hold(None)
        self.kv.release_all()
        self.assertEqual(self.result(finishing).entry.size, 10)
        self.assertEqual(self.read("/f"), b"0123456789")

    def test_lease_renewed(self) -> None:
        """
        A slow upload renews its lease, so the collector leaves it alone.
        """
        upload = self.open("/f")
        for _ in range(5):
            self.clock.advance(LEASE / 2)
            upload.write(b"0123")
            self.assertEqual(self.result(self.fs.sweep()), 0)
        self.assertEqual(self.result(upload.finish()).entry.size, 20)
        self.assertEqual(self.read("/f"), b"0123" * 5)

    def test_stalled_upload_collected(self) -> None:
        """
        An upload that stalls past its lease is collected; finishing it
        then fails with L{UploadExpired} and stores nothing.
        """
        upload = self.open("/f")
        upload.write(b"01234567")
        self.clock.advance(LEASE)
        self.assertEqual(self.result(self.fs.sweep()), 1)
        self.assertEqual(self.keys("chunk"), [])
        upload.write(b"89")
        self.failure(upload.finish(), UploadExpired)
        self.assertEqual((self.keys("chunk"), self.keys("lease")), ([], []))
        self.failure(self.fs.stat(P("/f")), FileNotFound)


class ResumeTests(FileSystemMixin, SynchronousTestCase):
    """
    Appending, resuming and conditional uploads.
    """

    def test_append(self) -> None:
        """
        Appending keeps the current content, read chunk by chunk into a new
        upload, and adds the new data.
        """
        self.store("/f", b"0123456789")
        self.store("/f", b"abc", append=True)
        self.assertEqual(self.read("/f"), b"0123456789abc")
        self.assertNoGarbage()

    def test_append_creates(self) -> None:
        """
        Appending to a missing file creates it.
        """
        self.assertTrue(self.store("/new", b"abc", append=True).created)
        self.assertEqual(self.read("/new"), b"abc")

    def test_resume(self) -> None:
        """
        Resuming at an offset keeps that many bytes and writes the rest.
        """
        self.store("/f", b"0123456789")
        self.store("/f", b"xyz", resume_at=6)
        self.assertEqual(self.read("/f"), b"012345xyz")

    def test_resume_refused(self) -> None:
        """
        Resuming past the end, or a missing file, is refused.
        """
        self.store("/f", b"0123")
        self.failure(self.fs.open_upload(P("/f"), resume_at=5), PreconditionFailed)
        self.failure(self.fs.open_upload(P("/g"), resume_at=1), FileNotFound)
        self.assertEqual(self.keys("lease"), [self.keys("lease")[0]])

    def test_append_conflict(self) -> None:
        """
        If the file is replaced during an append, the append fails instead
        of overwriting the replacement, and leaves nothing behind.
        """
        self.store("/f", b"base")
        upload = self.open("/f", append=True)
        upload.write(b"+more")
        self.store("/f", b"replacement")
        self.failure(upload.finish(), PreconditionFailed)
        self.assertEqual(self.read("/f"), b"replacement")
        self.assertNoGarbage()

    def test_append_too_large(self) -> None:
        """
        Appending to a file already at the maximum size fails on the first
        byte over it.
        """
        self.store("/f", b"x" * 64)
        upload = self.open("/f", append=True)
        upload.write(b"y")
        self.failure(upload.finish(), FileTooLarge)
        self.assertNoGarbage()

    def test_if_match(self) -> None:
        """
        C{if_match} replaces only the given version, checked on open and
        again on commit.
        """
        version = self.store("/f", b"one").entry.version
        self.failure(self.fs.open_upload(P("/f"), if_match="9.9"), PreconditionFailed)
        upload = self.open("/f", if_match=version)
        upload.write(b"two")
        self.store("/f", b"three")
        self.failure(upload.finish(), PreconditionFailed)
        self.assertEqual(self.read("/f"), b"three")
        self.assertNoGarbage()

    def test_if_none_match(self) -> None:
        """
        C{if_none_match} only creates.
        """
        self.store("/f", b"one", if_none_match=True)
        self.failure(self.fs.open_upload(P("/f"), if_none_match=True), PreconditionFailed)
        upload = self.open("/g", if_none_match=True)
        self.store("/g", b"first")
        self.failure(upload.finish(), PreconditionFailed)
        self.assertEqual(self.read("/g"), b"first")


class DirectoryTests(FileSystemMixin, SynchronousTestCase):
    """
    Directories, listings and removal.
    """

    def test_make_and_list(self) -> None:
        """
        A listing shows a directory's direct children only, by name, with
        sizes and times.
        """
        self.result(self.fs.make_directory(P("/docs")))
        self.result(self.fs.make_directory(P("/docs/deep")))
        self.store("/docs/b.txt", b"bb")
        self.store("/docs/a.txt", b"a")
        self.store("/docs/deep/c.txt", b"ccc")
        listing = self.result(self.fs.list_directory(P("/docs")))
        self.assertEqual(
            [(entry.path.text, entry.is_directory, entry.size) for entry in listing],
            [("/docs/a.txt", False, 1), ("/docs/b.txt", False, 2), ("/docs/deep", True, 0)],
        )
        root = self.result(self.fs.list_directory(P("/")))
        self.assertEqual([entry.path.text for entry in root], ["/docs"])
        self.assertEqual(self.result(self.fs.stat(P("/docs"))).modified, NOW)

    def test_list_file(self) -> None:
        """
        Listing a file, or something missing, fails.
        """
        self.store("/f", b"x")
        self.failure(self.fs.list_directory(P("/f")), NotADirectory)
        self.failure(self.fs.list_directory(P("/nope")), FileNotFound)

    def test_make_directory_refusals(self) -> None:
        """
        A directory needs an existing parent directory and a free name.
        """
        self.store("/f", b"x")
        self.failure(self.fs.make_directory(P("/a/b")), FileNotFound)
        self.failure(self.fs.make_directory(P("/f/b")), NotADirectory)
        self.failure(self.fs.make_directory(P("/f")), FileExists)
        self.failure(self.fs.make_directory(P("/")), FileExists)
        self.result(self.fs.make_directory(P("/d")))
        self.failure(self.fs.make_directory(P("/d")), FileExists)

    def test_make_directories(self) -> None:
        """
        L{FileSystem.make_directories} creates missing parents, and refuses
        to go through a file.
        """
        self.result(self.fs.make_directories(P("/a/b/c")))
        self.assertTrue(self.result(self.fs.stat(P("/a/b"))).is_directory)
        self.failure(self.fs.make_directories(P("/a/b/c")), FileExists)
        self.store("/a/f", b"x")
        self.failure(self.fs.make_directories(P("/a/f/g")), NotADirectory)

    def test_upload_needs_directory(self) -> None:
        """
        Uploading needs the parent directory unless told to create it, and
        never replaces a directory.
        """
        self.failure(self.fs.open_upload(P("/a/f")), FileNotFound)
        self.store("/a/b/f", b"x", create_parents=True)
        self.assertTrue(self.result(self.fs.stat(P("/a/b"))).is_directory)
        self.failure(self.fs.open_upload(P("/a/b")), IsADirectory)
        self.failure(self.fs.open_upload(P("/")), IsADirectory)
        self.failure(self.fs.open_upload(P("/a/b/f/g"), create_parents=True), NotADirectory)
        self.assertEqual(len(self.keys("lease")), 1)

    def test_remove_directory(self) -> None:
        """
        Only an empty directory can be removed; tombstones of removed files
        do not count as content.
        """
        self.result(self.fs.make_directory(P("/d")))
        self.store("/d/f", b"x")
        self.failure(self.fs.remove_directory(P("/d")), DirectoryNotEmpty)
        self.result(self.fs.remove_file(P("/d/f")))
        self.result(self.fs.remove_directory(P("/d")))
        self.failure(self.fs.stat(P("/d")), FileNotFound)
        self.failure(self.fs.remove_directory(P("/d")), FileNotFound)

    def test_remove_directory_refusals(self) -> None:
        """
        The root and files are not removed as directories, nor directories
        holding directories.
        """
        self.store("/f", b"x")
        self.result(self.fs.make_directories(P("/d/e")))
        self.failure(self.fs.remove_directory(P("/")), NotPermitted)
        self.failure(self.fs.remove_directory(P("/f")), NotADirectory)
        self.failure(self.fs.remove_directory(P("/d")), DirectoryNotEmpty)

    def test_remove_file(self) -> None:
        """
        Removing a file collects its chunks at once; its tombstone expires.
        """
        version = self.store("/f", b"0123456789").entry.version
        self.failure(self.fs.remove_file(P("/f"), if_match="1.1"), PreconditionFailed)
        removed = self.result(self.fs.remove_file(P("/f"), if_match=version))
        self.assertEqual(removed.size, 10)
        self.assertEqual((self.keys("chunk"), self.keys("lease")), ([], []))
        self.failure(self.fs.stat(P("/f")), FileNotFound)
        self.failure(self.fs.remove_file(P("/f")), FileNotFound)
        self.assertEqual(len(self.keys("manifest")), 1)
        self.clock.advance(60)
        self.assertEqual(self.keys("manifest"), [])

    def test_remove_directory_as_file(self) -> None:
        """
        Removing a directory as a file fails with L{IsADirectory}.
        """
        self.result(self.fs.make_directory(P("/d")))
        self.failure(self.fs.remove_file(P("/d")), IsADirectory)
        self.failure(self.fs.open_download(P("/d")), IsADirectory)
        self.failure(self.fs.open_download(P("/e")), FileNotFound)


class RenameTests(FileSystemMixin, SynchronousTestCase):
    """
    Renaming files and directories.
    """

    def test_rename_file(self) -> None:
        """
        A renamed file keeps its chunks, content and time, and its lease
        now names the new path.
        """
        stored = self.store("/a", b"0123456789")
        chunks = self.keys("chunk")
        self.clock.advance(5)
        self.result(self.fs.rename(P("/a"), P("/b")))
        self.failure(self.fs.stat(P("/a")), FileNotFound)
        entry = self.result(self.fs.stat(P("/b")))
        self.assertEqual((entry.size, entry.modified), (10, NOW))
        self.assertEqual(entry.manifest.renamed_from, "/a")
        self.assertEqual(self.read("/b"), b"0123456789")
        self.assertEqual(self.keys("chunk"), chunks)
        lease = self.result(self.local.get(lease_key(stored.entry.manifest.upload))).record
        self.assertEqual(Lease.decode(lease.value), Lease("/b", COMMITTED, NOW + 5))
        self.clock.advance(LEASE)
        self.assertEqual(self.result(self.fs.sweep()), 0)
        self.assertEqual(self.read("/b"), b"0123456789")

    def test_rename_over_file(self) -> None:
        """
        Renaming onto a file replaces it and collects its chunks.
        """
        self.store("/a", b"aaaa")
        self.store("/b", b"bbbbbbbb")
        self.result(self.fs.rename(P("/a"), P("/b")))
        self.assertEqual(self.read("/b"), b"aaaa")
        self.assertEqual(len(self.keys("chunk")), 1)
        self.assertNoGarbage()

    def test_rename_refusals(self) -> None:
        """
        Renames that make no sense are refused.
        """
        self.store("/f", b"x")
        self.result(self.fs.make_directories(P("/d/e")))
        self.failure(self.fs.rename(P("/missing"), P("/g")), FileNotFound)
        self.failure(self.fs.rename(P("/f"), P("/d")), IsADirectory)
        self.failure(self.fs.rename(P("/f"), P("/nowhere/f")), FileNotFound)
        self.failure(self.fs.rename(P("/d"), P("/d/e/x")), NotPermitted)
        self.failure(self.fs.rename(P("/"), P("/x")), NotPermitted)
        self.failure(self.fs.rename(P("/d"), P("/f")), FileExists)
        self.result(self.fs.rename(P("/f"), P("/f")))
        self.assertEqual(self.read("/f"), b"x")

    def test_rename_directory(self) -> None:
        """
        A directory is renamed with everything in it.
        """
        self.result(self.fs.make_directories(P("/d/sub")))
        self.store("/d/f", b"ff")
        self.store("/d/sub/g", b"ggg")
        self.result(self.fs.rename(P("/d"), P("/moved")))
        self.failure(self.fs.stat(P("/d")), FileNotFound)
        self.assertEqual(self.read("/moved/f"), b"ff")
        self.assertEqual(self.read("/moved/sub/g"), b"ggg")
        self.assertNoGarbage()

    def test_source_replaced_during_rename(self) -> None:
        """
        If the source is overwritten while it is renamed, both files stay
        whole: the target gets the content that was renamed, the source
        keeps the new one.
        """
        self.store("/a", b"old!")
        self.kv.hold(on("put", "manifest"))
        renaming = self.fs.rename(P("/a"), P("/b"))
        (target,) = self.kv.held
        self.kv.hold(None)
        self.store("/a", b"new!")
        target.release()
        self.result(renaming)
        self.assertEqual(self.read("/a"), b"new!")
        self.assertEqual(self.read("/b"), b"old!")
        self.assertNoGarbage()


class CollectorTests(FileSystemMixin, SynchronousTestCase):
    """
    The orphan collector running on a clock.
    """

    def test_collects_abandoned_upload(self) -> None:
        """
        An upload whose writer vanished is collected on the first sweep
        after its lease expires; committed files are never touched; the
        collector stops cleanly.
        """
        self.store("/kept", b"keep me!")
        abandoned = self.open("/gone")
        abandoned.write(b"01234567")
        collector = OrphanCollector(self.fs, self.clock, interval=300)
        collector.start()
        self.clock.advance(300)
        self.assertEqual(collector.collected, 0)
        self.assertEqual(len(self.keys("chunk")), 4)
        self.clock.advance(300)
        self.assertEqual(collector.collected, 1)
        self.assertNoGarbage()
        self.assertEqual(self.read("/kept"), b"keep me!")
        collector.stop()
        self.assertFalse(collector.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stray_chunks(self) -> None:
        """
        Chunks without a lease (their collector died half-way) are
        collected at once.
        """
        upload = self.open("/f")
        upload.write(b"01234567")
        self.result(self.local.delete(lease_key(upload.upload_id)))
        self.assertEqual(self.result(self.fs.sweep()), 1)
        self.assertEqual(self.keys("chunk"), [])

    def test_sweep_failure_logged(self) -> None:
        """
        A sweep that fails is logged and the collector keeps running.
        """
        collector = OrphanCollector(self.fs, self.clock, interval=10)
        collector.start()
        self.kv.fail_with(lambda method, key: method == "list_keys", Unavailable("down"))
        self.clock.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(Unavailable)), 1)
        self.assertTrue(collector.running)
        collector.stop()
