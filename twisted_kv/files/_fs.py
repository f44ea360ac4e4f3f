# -*- test-case-name: tests.test_files -*-
"""
A file system over L{IKeyValue}: directories, chunked files, atomic
replacement, renames and the collection of orphaned chunks.

Storing a file (L{FileSystem.open_upload}, then L{Upload.finish})::

    1. put   u/<id>          lease {path, "uploading"}     (if none exists)
    2. put   c/<id>/0, 1 ... the chunks, as the data arrives (the lease is
                             renewed while the upload runs)
    3. put   u/<id>          lease renewed                 (if_match)
    4. put   m<d><path>      the manifest                  (if_match the
                             manifest read just before, so we know exactly
                             which upload we replaced)
    5. put   u/<id>          lease {"committed"}           (if_match)
    6. the replaced upload is collected (see L{FileSystem.collect_upload})

Readers only ever follow a manifest, and a manifest is written only once all
of its chunks are, so a file is never visible half-uploaded; chunks are never
shared by two uploads, so a reader sees the old file or the new one, never a
mix (a reader still streaming the old file when its chunks are collected
fails with L{FileChanged}).

A failed upload deletes its chunks and lease; if its writer dies instead, the
lease stops being renewed and L{FileSystem.sweep} collects it later.  A
removal or a rename writes a L{Tombstone} over the old manifest (see
L{twisted_kv.files._records}).

All methods returning a Deferred fail with the errors of
L{twisted_kv.files._errors} or with the store's
(L{twisted_kv.errors.Unavailable}, L{twisted_kv.errors.OutcomeUnknown},
L{twisted_kv.errors.InsufficientStorage}, ...).
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
from typing import Any, Awaitable, Callable, Coroutine, Optional, TypeVar, Union, cast

from attrs import frozen
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.logger import Logger
from zope.interface import implementer

from twisted_kv.core.records import Record, format_version
from twisted_kv.errors import KeyNotFound, KVError, OutcomeUnknown, PreconditionFailed
from twisted_kv.files._errors import (
    CorruptFile,
    DirectoryNotEmpty,
    FileChanged,
    FileExists,
    FileNotFound,
    FileTooLarge,
    IsADirectory,
    NotADirectory,
    NotPermitted,
    TransferAborted,
    UploadExpired,
)
from twisted_kv.files._paths import (
    CHUNKS_PREFIX,
    LEASES_PREFIX,
    FSPath,
    after_chunks_of,
    child_directories_prefix,
    child_manifests_prefix,
    chunk_key,
    chunks_prefix,
    directory_key,
    lease_key,
    manifest_key,
    new_upload_id,
    path_of_entry_key,
    upload_id_of_chunk_key,
    upload_id_of_lease_key,
)
from twisted_kv.files._records import (
    COMMITTED,
    MOVING,
    UPLOADING,
    DirectoryEntry,
    Lease,
    Manifest,
    Tombstone,
    collectable,
    decode_entry,
)
from twisted_kv.interfaces import IKeyValue

MiB = 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 256 * MiB
DEFAULT_CHUNK_BYTES = MiB

_JSON = "application/json"
_OCTETS = "application/octet-stream"
# How often an operation re-reads and retries when a concurrent writer
# changed a manifest under it.
_RETRIES = 8
_PAGE = 1000
_BATCH = 32

_T = TypeVar("_T")


def _deferred(
    method: Callable[..., Coroutine[Any, Any, _T]]
) -> Callable[..., Deferred[_T]]:
    """
    Make a coroutine method return a L{Deferred}, as Twisted callers expect.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Deferred[_T]:
        return Deferred.fromCoroutine(method(*args, **kwargs))

    return wrapper


@frozen
class Entry:
    """
    A file or directory, as seen by a reader.

    @ivar version: for a file, the version of its manifest (an HTTP ETag).
    @ivar manifest: for a file, its manifest.
    @ivar degraded: the manifest was read without a majority of the cluster
        and may be stale (its chunks never change, so they are exact).
    """

    path: FSPath
    is_directory: bool
    size: int
    modified: float
    version: Optional[str] = None
    manifest: Optional[Manifest] = None
    degraded: bool = False


@frozen
class StoredFile:
    """
    A committed upload: the file as now stored, and whether it is new.
    """

    entry: Entry
    created: bool


@frozen
class _Slot:
    """
    What a manifest key holds: C{version} is C{None} when the key is absent.
    """

    version: Optional[str]
    content: Union[Manifest, Tombstone, None]
    degraded: bool = False

    @classmethod
    def of(cls, record: Optional[Record], degraded: bool = False) -> _Slot:
        if record is None:
            return cls(None, None, degraded)
        return cls(format_version(record.version), decode_entry(record.value), degraded)

    @property
    def manifest(self) -> Optional[Manifest]:
        return self.content if isinstance(self.content, Manifest) else None

    def replace_condition(self) -> dict[str, Any]:
        """
        The put arguments that replace exactly what was read.
        """
        if self.version is None:
            return {"if_none_match": True}
        return {"if_match": self.version}


class FileSystem:
    """
    Files and directories stored in an L{IKeyValue}.

    @param kv: the store (the cluster coordinator, or a local store).
    @param clock: tells the time for modification times and leases.
    @param max_file_bytes: the largest file accepted.
    @param chunk_bytes: the size of a chunk (at most the store's
        C{max_value_bytes}).
    @param lease_seconds: an upload or rename whose lease has not been
        renewed for this long is considered dead and its chunks collected.
    @param tombstone_seconds: how long a removed file's tombstone lives.
    @param chunks_in_flight: chunk writes an upload keeps outstanding before
        it pauses its producer.
    """

    _log = Logger()

    def __init__(
        self,
        kv: IKeyValue,
        clock: IReactorTime,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        lease_seconds: float = 600.0,
        tombstone_seconds: float = 60.0,
        chunks_in_flight: int = 2,
    ) -> None:
        self.kv = kv
        self.clock = clock
        self.max_file_bytes = max_file_bytes
        self.chunk_bytes = min(chunk_bytes, kv.max_value_bytes)
        self.lease_seconds = lease_seconds
        self.tombstone_seconds = tombstone_seconds
        self.chunks_in_flight = chunks_in_flight

    # -- reading ----------------------------------------------------------

    @_deferred
    async def stat(self, path: FSPath) -> Entry:
        """
        Describe C{path}.

        @return: a Deferred firing with an L{Entry}, or failing with
            L{FileNotFound}.
        """
        entry = await self._find(path)
        if entry is None:
            raise FileNotFound(f"{path}: no such file or directory")
        return entry

    @_deferred
    async def list_directory(self, path: FSPath) -> list[Entry]:
        """
        The entries directly inside directory C{path}, by name.

        @return: a Deferred firing with a list of L{Entry}, or failing with
            L{FileNotFound} or L{NotADirectory}.
        """
        await self._require_directory(path)
        directory_keys = await self._keys(child_directories_prefix(path))
        file_keys = await self._keys(child_manifests_prefix(path))
        records = await self._get_many(directory_keys + file_keys)
        entries = []
        for index, (key, record) in enumerate(zip(directory_keys + file_keys, records)):
            child = path_of_entry_key(key)
            if record is None or child is None:
                continue
            if index < len(directory_keys):
                mtime = DirectoryEntry.decode(record.value).mtime
                entries.append(Entry(child, True, 0, mtime))
            else:
                slot = _Slot.of(record)
                if slot.manifest is not None:
                    entries.append(self._file_entry(child, slot))
        return sorted(entries, key=lambda entry: entry.path.name)

    @_deferred
    async def open_download(self, path: FSPath) -> Download:
        """
        Open the file at C{path}, as it is now, for reading.

        @return: a Deferred firing with a L{Download}, or failing with
            L{FileNotFound} or L{IsADirectory}.
        """
        slot = await self._slot(path)
        if slot.manifest is None:
            raise await self._missing_file(path)
        return Download(self, path, slot)

    # -- writing ----------------------------------------------------------

    @_deferred
    async def open_upload(
        self,
        path: FSPath,
        *,
        append: bool = False,
        resume_at: int = 0,
        if_match: Optional[str] = None,
        if_none_match: bool = False,
        create_parents: bool = False,
        content_type: Optional[str] = None,
    ) -> Upload:
        """
        Start storing a file at C{path}.  Nothing is visible until
        L{Upload.finish} commits it.

        @param append: keep the current content and add to it (FTP C{APPE}).
        @param resume_at: keep the first C{resume_at} bytes of the current
            content (FTP C{REST} then C{STOR}).
        @param if_match: only replace the file if its manifest is at this
            version (checked now and again on commit).
        @param if_none_match: only create the file if it does not exist.
        @param create_parents: create missing parent directories instead of
            failing with L{FileNotFound}.
        @param content_type: the media type to store (guessed from the name
            by default).

        @return: a Deferred firing with an L{Upload}, or failing with
            L{FileNotFound}, L{NotADirectory}, L{IsADirectory},
            L{PreconditionFailed} or a store error.
        """
        if path.is_root:
            raise IsADirectory("/ is a directory")
        if create_parents:
            await self._make_parents(path)
        else:
            await self._require_directory(path.parent)
        if await self._directory(path) is not None:
            raise IsADirectory(f"{path} is a directory")
        slot = await self._slot(path)
        current = slot.manifest
        if if_match is not None and (current is None or slot.version != if_match):
            raise PreconditionFailed(f"{path} is not at version {if_match}")
        if if_none_match and current is not None:
            raise PreconditionFailed(f"{path} already exists")
        keep = current.size if append and current is not None else resume_at
        if keep and current is None:
            raise FileNotFound(f"{path}: no such file to resume")
        if current is not None and keep > current.size:
            raise PreconditionFailed(f"{path} is shorter than {keep} bytes")
        if keep or append:
            # The result is built on the current content: commit only over it.
            if_match, if_none_match = slot.version if current else None, current is None
        if content_type is None:
            if current is not None and keep:
                content_type = current.content_type
            else:
                content_type = mimetypes.guess_type(path.name)[0] or _OCTETS
        upload_id = new_upload_id()
        lease = Lease(path.text, UPLOADING, self.clock.seconds())
        written = await self.kv.put(
            lease_key(upload_id), lease.encode(), content_type=_JSON, if_none_match=True
        )
        upload = Upload(
            self, path, upload_id, written.version, if_match, if_none_match, content_type
        )
        if keep:
            try:
                try:
                    await Download(self, path, slot).send(upload, 0, keep)
                finally:
                    # The upload's own error explains why the copy stopped.
                    upload.raise_failure()
            except BaseException:
                await upload.abort()
                raise
        return upload

    @_deferred
    async def make_directory(self, path: FSPath) -> None:
        """
        Create the directory C{path}; its parent must exist.

        @return: a Deferred firing with C{None}, or failing with
            L{FileExists}, L{FileNotFound} or L{NotADirectory}.
        """
        if path.is_root:
            raise FileExists("/ already exists")
        await self._require_directory(path.parent)
        if (await self._slot(path)).manifest is not None:
            raise FileExists(f"{path} already exists")
        await self._put_directory(path, self.clock.seconds())

    @_deferred
    async def make_directories(self, path: FSPath) -> None:
        """
        Create the directory C{path} and any missing parent.

        @return: a Deferred firing with C{None}, or failing with
            L{FileExists} (C{path} exists) or L{NotADirectory} (a parent is
            a file).
        """
        await self._make_parents(path)
        await self.make_directory(path)

    @_deferred
    async def remove_directory(self, path: FSPath) -> None:
        """
        Remove the empty directory C{path}.

        @return: a Deferred firing with C{None}, or failing with
            L{FileNotFound}, L{NotADirectory}, L{DirectoryNotEmpty} or
            L{NotPermitted} (the root).
        """
        if path.is_root:
            raise NotPermitted("the root cannot be removed")
        await self._require_directory(path)
        if await self._has_children(path):
            raise DirectoryNotEmpty(f"{path} is not empty")
        try:
            await self.kv.delete(directory_key(path))
        except KeyNotFound:
            raise FileNotFound(f"{path}: no such directory") from None

    @_deferred
    async def remove_file(self, path: FSPath, if_match: Optional[str] = None) -> Entry:
        """
        Remove the file at C{path} (if its manifest is at version
        C{if_match}, when given).

        @return: a Deferred firing with the removed L{Entry}, or failing
            with L{FileNotFound}, L{IsADirectory} or L{PreconditionFailed}.
        """
        for _ in range(_RETRIES):
            slot = await self._slot(path)
            manifest = slot.manifest
            if manifest is None:
                raise await self._missing_file(path)
            if if_match is not None and slot.version != if_match:
                raise PreconditionFailed(f"{path} is not at version {if_match}")
            try:
                await self._put_tombstone(path, slot, Tombstone(manifest.size))
            except PreconditionFailed:
                if if_match is not None:
                    raise
                continue
            await self._collect_quietly(manifest.upload)
            return self._file_entry(path, slot)
        raise FileChanged(f"{path} kept changing")

    @_deferred
    async def rename(self, source: FSPath, target: FSPath) -> None:
        """
        Move the file or directory C{source} to C{target}.  A file replaces
        a file at C{target}; a directory needs C{target} to be free and is
        moved entry by entry (not atomically).

        @return: a Deferred firing with C{None}, or failing with
            L{FileNotFound}, L{FileExists}, L{IsADirectory},
            L{NotADirectory} or L{NotPermitted}.
        """
        if source.is_root or target.is_root:
            raise NotPermitted("the root cannot be renamed")
        entry = await self.stat(source)
        if source == target:
            return
        await self._require_directory(target.parent)
        if entry.is_directory:
            if target.is_within(source):
                raise NotPermitted(f"{source} cannot be moved into itself")
            await self._rename_directory(source, target, entry.modified)
        else:
            await self._rename_file(source, target)

    # -- garbage ----------------------------------------------------------

    @_deferred
    async def collect_upload(self, upload_id: str) -> bool:
        """
        Delete the chunks and lease of upload C{upload_id} if they are
        garbage (see L{twisted_kv.files._records.collectable}).

        @return: a Deferred firing with whether the upload was collected.
        """
        record = (await self.kv.get(lease_key(upload_id))).record
        if record is None:
            return False
        lease = Lease.decode(record.value)
        referenced = False
        for text in lease.paths:
            manifest = (await self._slot(FSPath.parse(text))).manifest
            referenced = referenced or (manifest is not None and manifest.upload == upload_id)
        if not collectable(lease, referenced, self.clock.seconds(), self.lease_seconds):
            return False
        try:
            await self.kv.delete(lease_key(upload_id), if_match=format_version(record.version))
        except (PreconditionFailed, KeyNotFound):
            return False
        await self._delete_chunks(upload_id)
        return True

    @_deferred
    async def sweep(self) -> int:
        """
        Collect every garbage upload: those whose lease says so, and chunks
        left without a lease (a lease is written before the first chunk and
        deleted after the last, so such chunks belong to nobody).

        @return: a Deferred firing with the number of uploads collected.
        """
        collected = 0
        for key in await self._keys(LEASES_PREFIX):
            if await self.collect_upload(upload_id_of_lease_key(key)):
                collected += 1
        start_after = None
        while True:
            page = await self.kv.list_keys(CHUNKS_PREFIX, start_after, 1)
            if not page.keys:
                return collected
            upload_id = upload_id_of_chunk_key(page.keys[0])
            if (await self.kv.get(lease_key(upload_id))).record is None:
                await self._delete_chunks(upload_id)
                collected += 1
            start_after = after_chunks_of(upload_id)

    # -- internals --------------------------------------------------------

    def _file_entry(self, path: FSPath, slot: _Slot) -> Entry:
        manifest = slot.manifest
        assert manifest is not None
        return Entry(
            path, False, manifest.size, manifest.mtime, slot.version, manifest, slot.degraded
        )

    async def _slot(self, path: FSPath) -> _Slot:
        result = await self.kv.get(manifest_key(path))
        return _Slot.of(result.record, result.degraded)

    async def _directory(self, path: FSPath) -> Optional[DirectoryEntry]:
        if path.is_root:
            return DirectoryEntry(0.0)
        record = (await self.kv.get(directory_key(path))).record
        return None if record is None else DirectoryEntry.decode(record.value)

    async def _find(self, path: FSPath) -> Optional[Entry]:
        slot = await self._slot(path)
        if slot.manifest is not None:
            return self._file_entry(path, slot)
        directory = await self._directory(path)
        if directory is not None:
            return Entry(path, True, 0, directory.mtime)
        return None

    async def _require_directory(self, path: FSPath) -> None:
        entry = await self._find(path)
        if entry is None:
            raise FileNotFound(f"{path}: no such directory")
        if not entry.is_directory:
            raise NotADirectory(f"{path} is not a directory")

    async def _missing_file(self, path: FSPath) -> KVError:
        """
        Why there is no file at C{path}.
        """
        if await self._directory(path) is not None:
            return IsADirectory(f"{path} is a directory")
        return FileNotFound(f"{path}: no such file")

    async def _make_parents(self, path: FSPath) -> None:
        for ancestor in path.ancestors():
            entry = await self._find(ancestor)
            if entry is None:
                try:
                    await self._put_directory(ancestor, self.clock.seconds())
                except FileExists:
                    pass
            elif not entry.is_directory:
                raise NotADirectory(f"{ancestor} is not a directory")

    async def _put_directory(self, path: FSPath, mtime: float) -> None:
        try:
            await self.kv.put(
                directory_key(path),
                DirectoryEntry(mtime).encode(),
                content_type=_JSON,
                if_none_match=True,
            )
        except PreconditionFailed:
            raise FileExists(f"{path} already exists") from None

    async def _has_children(self, path: FSPath) -> bool:
        if (await self.kv.list_keys(child_directories_prefix(path), None, 1)).keys:
            return True
        # Tombstones of recently removed files do not count.
        records = await self._get_many(await self._keys(child_manifests_prefix(path)))
        return any(_Slot.of(record).manifest is not None for record in records)

    async def _keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        start_after = None
        while True:
            page = await self.kv.list_keys(prefix, start_after, _PAGE)
            keys.extend(page.keys)
            if page.next is None:
                return keys
            start_after = page.next

    async def _get_many(self, keys: list[str]) -> list[Optional[Record]]:
        records: list[Optional[Record]] = []
        for start in range(0, len(keys), _BATCH):
            results = await gatherResults(
                [self.kv.get(key) for key in keys[start : start + _BATCH]], consumeErrors=True
            )
            records.extend(result.record for result in results)
        return records

    async def _delete_chunks(self, upload_id: str) -> None:
        keys = await self._keys(chunks_prefix(upload_id))
        for start in range(0, len(keys), _BATCH):
            await gatherResults(
                [
                    Deferred.fromCoroutine(self._delete_if_present(key))
                    for key in keys[start : start + _BATCH]
                ],
                consumeErrors=True,
            )

    async def _delete_if_present(self, key: str) -> None:
        try:
            await self.kv.delete(key)
        except KeyNotFound:
            pass

    async def _put_tombstone(self, path: FSPath, slot: _Slot, tombstone: Tombstone) -> None:
        await self.kv.put(
            manifest_key(path),
            tombstone.encode(),
            content_type=_JSON,
            ttl=self.tombstone_seconds,
            **slot.replace_condition(),
        )

    async def _quietly(self, what: str, operation: Awaitable[Any]) -> None:
        """
        Await C{operation}, logging a store failure instead of raising it:
        for clean-up that the collector will finish if it fails here.
        """
        try:
            await operation
        except KVError as error:
            self._log.warn("{what} failed: {error}", what=what, error=error)

    async def _collect_quietly(self, upload_id: str) -> None:
        await self._quietly(f"collecting upload {upload_id}", self.collect_upload(upload_id))

    async def _settle_lease(self, upload_id: str, lease: Lease, version: str) -> None:
        try:
            await self.kv.put(
                lease_key(upload_id), lease.encode(), content_type=_JSON, if_match=version
            )
        except (PreconditionFailed, KeyNotFound):
            pass

    async def _rename_file(self, source: FSPath, target: FSPath) -> None:
        if await self._directory(target) is not None:
            raise IsADirectory(f"{target} is a directory")
        for _ in range(_RETRIES):
            slot = await self._slot(source)
            manifest = slot.manifest
            if manifest is None:
                raise FileNotFound(f"{source}: no such file")
            key = lease_key(manifest.upload)
            record = (await self.kv.get(key)).record
            if record is None:
                # Being collected: the source was replaced since we read it.
                continue
            moving = Lease(target.text, MOVING, self.clock.seconds(), previous=source.text)
            try:
                written = await self.kv.put(
                    key,
                    moving.encode(),
                    content_type=_JSON,
                    if_match=format_version(record.version),
                )
            except PreconditionFailed:
                continue
            replaced = await self._slot(target)
            try:
                await self.kv.put(
                    manifest_key(target),
                    manifest.renamed(source.text).encode(),
                    content_type=_JSON,
                    **replaced.replace_condition(),
                )
            except PreconditionFailed:
                await self._quietly(
                    "returning a lease",
                    self._settle_lease(
                        manifest.upload,
                        Lease(source.text, COMMITTED, self.clock.seconds()),
                        written.version,
                    ),
                )
                continue
            try:
                await self._put_tombstone(source, slot, Tombstone(manifest.size, target.text))
            except PreconditionFailed:
                pass  # the source was replaced meanwhile and keeps its new content
            await self._quietly(
                "settling a lease",
                self._settle_lease(
                    manifest.upload,
                    Lease(target.text, COMMITTED, self.clock.seconds()),
                    written.version,
                ),
            )
            if replaced.manifest is not None:
                await self._collect_quietly(replaced.manifest.upload)
            return
        raise FileChanged(f"{source} kept changing")

    async def _rename_directory(self, source: FSPath, target: FSPath, mtime: float) -> None:
        if await self._find(target) is not None:
            raise FileExists(f"{target} already exists")
        await self._put_directory(target, mtime)
        for child in await self.list_directory(source):
            await self.rename(child.path, target.child(child.path.name))
        await self.remove_directory(source)


@implementer(IConsumer)
class Upload:
    """
    A file being stored: an L{IConsumer} for a push producer, which it
    pauses while C{chunks_in_flight} chunk writes are outstanding.  At most
    one chunk is buffered; full chunks are written as they fill.

    Feed it by registering a producer, or by calling L{write} and waiting
    for L{drained}.  Then call L{finish} (or L{abort}).

    Errors (the file grows too large, a chunk write fails, the lease was
    lost) stop the producer; L{write} then ignores data, L{drained} fails
    and L{finish} fails with the error, after deleting what was written.
    """

    def __init__(
        self,
        fs: FileSystem,
        path: FSPath,
        upload_id: str,
        lease_version: str,
        if_match: Optional[str],
        if_none_match: bool,
        content_type: str,
    ) -> None:
        self.path = path
        self.upload_id = upload_id
        self.size = 0
        self._fs = fs
        self._lease_version = lease_version
        self._lease_renewed = fs.clock.seconds()
        self._renewing = False
        self._if_match = if_match
        self._if_none_match = if_none_match
        self._content_type = content_type
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._chunks = 0
        self._pending = 0
        self._error: Optional[BaseException] = None
        self._closed = False
        self._keep_chunks = False
        self._producer: Optional[IPushProducer] = None
        self._paused = False
        self._drained: list[Deferred[None]] = []
        self._settled: list[Deferred[None]] = []

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if not streaming:
            raise ValueError("an upload only takes push producers")
        self._producer = cast(IPushProducer, producer)
        self._paused = False
        if self._error is not None or self._closed:
            producer.stopProducing()
        else:
            self._throttle()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._paused = False

    def write(self, data: bytes) -> None:
        if self._error is not None or self._closed:
            return
        self.size += len(data)
        if self.size > self._fs.max_file_bytes:
            self._fail(FileTooLarge(f"the file exceeds {self._fs.max_file_bytes} bytes"))
            return
        self._hash.update(data)
        self._buffer += data
        chunk_bytes = self._fs.chunk_bytes
        while len(self._buffer) >= chunk_bytes:
            with memoryview(self._buffer) as view:
                chunk = bytes(view[:chunk_bytes])
            del self._buffer[:chunk_bytes]
            self._send(chunk)
        self._throttle()

    def drained(self) -> Deferred[None]:
        """
        @return: a Deferred firing when more data may be written, or
            failing with the upload's error.
        """
        if self._error is not None:
            return fail(self._error)
        if self._pending < self._fs.chunks_in_flight:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drained.append(waiter)
        return waiter

    def raise_failure(self) -> None:
        """
        @raise Exception: the error that stopped the upload, if any.
        """
        if self._error is not None:
            raise self._error

    @_deferred
    async def finish(self) -> StoredFile:
        """
        Write the last chunk and commit the manifest.

        @return: a Deferred firing with the L{StoredFile}, or failing with
            the upload's error, L{PreconditionFailed} (a condition of
            L{FileSystem.open_upload} no longer holds), L{UploadExpired} or
            a store error (L{TransferAborted} after L{abort}).  On failure
            nothing is stored, except after L{OutcomeUnknown}, when the file
            may or may not be stored.
        """
        if self._closed:
            raise TransferAborted(f"the upload to {self.path} was aborted")
        self._closed = True
        try:
            if self._error is None and self._buffer:
                self._send(bytes(self._buffer))
                self._buffer.clear()
            await self._all_settled()
            self.raise_failure()
            return await self._commit()
        except BaseException:
            if not self._keep_chunks:
                await self._discard()
            raise

    @_deferred
    async def abort(self) -> None:
        """
        Stop the upload and delete what it wrote; nothing is stored.
        Does nothing once L{finish} was called.
        """
        if self._closed:
            return
        self._closed = True
        if self._producer is not None:
            self._producer.stopProducing()
        await self._all_settled()
        await self._discard()

    def _send(self, chunk: bytes) -> None:
        index = self._chunks
        self._chunks += 1
        self._track(self._fs.kv.put(chunk_key(self.upload_id, index), chunk))
        if not self._renewing and (
            self._fs.clock.seconds() - self._lease_renewed >= self._fs.lease_seconds / 3
        ):
            self._track(Deferred.fromCoroutine(self._renew_lease()))

    async def _renew_lease(self) -> None:
        self._renewing = True
        try:
            self._lease_version = await self._put_lease(UPLOADING)
            self._lease_renewed = self._fs.clock.seconds()
        finally:
            self._renewing = False

    async def _put_lease(self, state: str) -> str:
        lease = Lease(self.path.text, state, self._fs.clock.seconds())
        try:
            written = await self._fs.kv.put(
                lease_key(self.upload_id),
                lease.encode(),
                content_type=_JSON,
                if_match=self._lease_version,
            )
        except (PreconditionFailed, KeyNotFound):
            raise UploadExpired(f"the upload to {self.path} stalled and was collected")
        return written.version

    def _track(self, operation: Deferred[Any]) -> None:
        self._pending += 1
        operation.addCallbacks(self._operation_done, self._operation_failed)

    def _operation_done(self, result: object) -> None:
        self._pending -= 1
        self._wake()

    def _operation_failed(self, failure: Any) -> None:
        self._pending -= 1
        self._fail(failure.value)
        self._wake()

    def _throttle(self) -> None:
        if (
            self._producer is not None
            and not self._paused
            and self._pending >= self._fs.chunks_in_flight
        ):
            self._paused = True
            self._producer.pauseProducing()

    def _wake(self) -> None:
        if self._pending < self._fs.chunks_in_flight:
            if self._paused and self._error is None and self._producer is not None:
                self._paused = False
                self._producer.resumeProducing()
            self._fire(self._drained)
        if self._pending == 0:
            self._fire(self._settled)

    def _fire(self, waiters: list[Deferred[None]]) -> None:
        ready = waiters[:]
        del waiters[:]
        for waiter in ready:
            if self._error is not None and waiters is self._drained:
                waiter.errback(self._error)
            else:
                waiter.callback(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is not None:
            return
        self._error = error
        self._fire(self._drained)
        if self._producer is not None:
            self._producer.stopProducing()

    async def _all_settled(self) -> None:
        if self._pending:
            waiter: Deferred[None] = Deferred()
            self._settled.append(waiter)
            await waiter

    async def _commit(self) -> StoredFile:
        fs = self._fs
        self._lease_version = await self._put_lease(UPLOADING)
        manifest = Manifest(
            size=self.size,
            mtime=fs.clock.seconds(),
            upload=self.upload_id,
            chunk_bytes=fs.chunk_bytes,
            sha256=self._hash.hexdigest(),
            content_type=self._content_type,
        )
        conditional = self._if_match is not None or self._if_none_match
        for _ in range(_RETRIES):
            replaced = await fs._slot(self.path)
            if self._if_match is not None and replaced.version != self._if_match:
                raise PreconditionFailed(f"{self.path} changed during the upload")
            if self._if_none_match and replaced.manifest is not None:
                raise PreconditionFailed(f"{self.path} was created during the upload")
            try:
                written = await fs.kv.put(
                    manifest_key(self.path),
                    manifest.encode(),
                    content_type=_JSON,
                    **replaced.replace_condition(),
                )
            except PreconditionFailed:
                if conditional:
                    raise
                continue
            except OutcomeUnknown:
                # The manifest may be stored: its chunks must stay.
                self._keep_chunks = True
                raise
            break
        else:
            raise FileChanged(f"{self.path} kept changing")
        await fs._quietly(
            "settling a lease",
            fs._settle_lease(
                self.upload_id,
                Lease(self.path.text, COMMITTED, fs.clock.seconds()),
                self._lease_version,
            ),
        )
        if replaced.manifest is not None:
            await fs._collect_quietly(replaced.manifest.upload)
        entry = Entry(self.path, False, self.size, manifest.mtime, written.version, manifest)
        return StoredFile(entry, replaced.manifest is None)

    async def _discard(self) -> None:
        fs = self._fs
        for index in range(self._chunks):
            await fs._quietly(
                "deleting a chunk", fs._delete_if_present(chunk_key(self.upload_id, index))
            )
        await fs._quietly(
            "deleting a lease", fs._delete_if_present(lease_key(self.upload_id))
        )


@implementer(IPushProducer)
class Download:
    """
    A file as it was when opened, streamed chunk by chunk to a consumer as
    an L{IPushProducer}: one chunk is read at a time, and none while the
    consumer has paused it.

    @ivar entry: the file being read.
    """

    def __init__(self, fs: FileSystem, path: FSPath, slot: _Slot) -> None:
        manifest = slot.manifest
        assert manifest is not None
        self.entry = fs._file_entry(path, slot)
        self._fs = fs
        self._manifest = manifest
        self._paused = False
        self._stopped = False
        self._resumed: Optional[Deferred[None]] = None

    def send(self, consumer: IConsumer, start: int = 0, stop: Optional[int] = None) -> Deferred[None]:
        """
        Write the bytes C{start} to C{stop} (exclusive; C{None} for the end;
        both clamped to the file) to C{consumer}, registered as its producer
        for the duration.  Call it once.

        @return: a Deferred firing with C{None} when everything was written,
            or failing with L{FileChanged} (the file was replaced and its
            chunks collected meanwhile), L{CorruptFile}, L{TransferAborted}
            (the consumer stopped us) or a store error.
        """
        size = self._manifest.size
        start = min(max(start, 0), size)
        stop = size if stop is None else max(start, min(stop, size))
        consumer.registerProducer(self, True)

        def unregister(result: object) -> object:
            consumer.unregisterProducer()
            return result

        return Deferred.fromCoroutine(self._run(consumer, start, stop)).addBoth(unregister)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        self._stopped = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._resumed = self._resumed, None
        if waiter is not None:
            waiter.callback(None)

    async def _run(self, consumer: IConsumer, start: int, stop: int) -> None:
        chunk_bytes = self._manifest.chunk_bytes
        position = start
        while position < stop:
            while self._paused and not self._stopped:
                self._resumed = Deferred()
                await self._resumed
            self._refuse_if_stopped()
            index, offset = divmod(position, chunk_bytes)
            data = await self._chunk(index)
            self._refuse_if_stopped()
            end = min(len(data), stop - index * chunk_bytes)
            consumer.write(data if offset == 0 and end == len(data) else data[offset:end])
            position = index * chunk_bytes + end

    def _refuse_if_stopped(self) -> None:
        if self._stopped:
            raise TransferAborted("the transfer was stopped")

    async def _chunk(self, index: int) -> bytes:
        manifest = self._manifest
        record = (await self._fs.kv.get(chunk_key(manifest.upload, index))).record
        if record is not None and len(record.value) == manifest.chunk_length(index):
            return record.value
        if (await self._fs._slot(self.entry.path)).version != self.entry.version:
            raise FileChanged(f"{self.entry.path} was replaced during the transfer")
        raise CorruptFile(f"chunk {index} of {self.entry.path} is missing")
