# -*- test-case-name: tests.test_files_http -*-
"""
C{/files/{path}}: the FTP file namespace over HTTP.

Mount L{files_resource} as the C{files} child of the site's root; the rest
of the URL is the path (percent-decoded UTF-8 segments; C{.}, C{..},
empty segments and encoded slashes are refused with 400).

  - C{GET} a file: its bytes, with C{Content-Type}, C{ETag} (the version
    of the file's manifest: a strong entity-tag, new with every upload),
    C{Last-Modified}, C{Accept-Ranges: bytes} and
    C{X-Content-SHA256} (and C{X-KV-Degraded: true} when no majority of the
    cluster answered the read of the manifest); C{Range: bytes=A-B}, C{A-} or C{-N} gives 206
    with C{Content-Range}, or 416 when the range is outside the file
    (several ranges, or a malformed header, get the whole file).
    C{304} (with the C{ETag}, no body) when C{If-None-Match} matches the
    file, C{412} when C{If-Match} does not.
  - C{GET} a directory (with or without a trailing slash): a JSON listing
    C{{"path", "entries": [{"name", "type", "size", "modified"}]}} (files
    also carry C{"version"}).
  - C{HEAD}: as C{GET}, without the body.
  - C{PUT} a file: the body is stored (streamed into chunks; missing parent
    directories are created); 201 when the file is new, else 200, with JSON
    C{{"path", "size", "sha256", "version"}} and the C{ETag}.
    C{If-Match} and C{If-None-Match} make it conditional (412).
    C{PUT} on a path ending in C{/} creates a directory.
  - C{DELETE}: 204, for a file (C{If-Match} and C{If-None-Match} honoured)
    or an empty directory.

C{If-Match} and C{If-None-Match} are read and evaluated as on C{/kv}, by
L{twisted_kv.web.conditions} (RFC 9110 section 13.1: C{*} or a list of
entity-tags; C{If-Match} compares strongly, so weak entity-tags never
match; C{If-None-Match} weakly).  They concern files; a directory has no
entity-tag: a listing, and the removal of a path ending in C{/}, ignore
them.

Errors are answered by L{twisted_kv.web.errors.render_failure}, as on
C{/kv}: JSON C{{"error": <code>, "message": <text>}} with the status of the
L{twisted_kv.errors.KVError} raised (404, 409, 412, 413, 416 with
C{Content-Range}, 503 with C{Retry-After}, 504, 507, ...).  A 412 carries
the C{ETag} of the file as it is now, when there is one.  No request takes
query parameters: any is a 400.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Coroutine, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from twisted_kv.errors import KVError, PreconditionFailed
from twisted_kv.files import (
    DEFAULT_MAX_FILE_BYTES,
    BadPath,
    Entry,
    FileExists,
    FileNotFound,
    FileSystem,
    FileTooLarge,
    FSPath,
    IsADirectory,
    StoredFile,
)
from twisted_kv.interfaces import IKeyValue
from twisted_kv.web.conditions import (
    etag,
    preconditions,
    tag_current,
    write_conditionally,
)
from twisted_kv.web.errors import MethodNotAllowed, RangeNotSatisfiable, send_failure
from twisted_kv.web.http_api import check_query

__all__ = ["FilesResource", "byte_range", "files_resource"]

_JSON = b"application/json"
# The headers describing a file, dropped if sending it fails before it starts.
_FILE_HEADERS = (
    b"x-kv-degraded",
    b"accept-ranges",
    b"content-range",
    b"etag",
    b"last-modified",
    b"x-content-sha256",
)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# /files takes no query parameters: a path holding "?" is percent-encoded.
_NO_PARAMETERS: frozenset[bytes] = frozenset()
_METHODS = ("GET", "HEAD", "PUT", "DELETE")


def byte_range(header: Optional[str], size: int) -> Optional[tuple[int, int]]:
    """
    The byte range a C{Range} header asks of a C{size}-byte file.

    @return: C{(start, stop)} with C{stop} exclusive, or C{None} to send the
        whole file (no header, several ranges, or a malformed header, which
        RFC 9110 says to ignore).
    @raise RangeNotSatisfiable: the range starts after the end of the file.
    """
    match = _RANGE.match(header.strip()) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size
    start = int(first)
    stop = size if not last else min(int(last) + 1, size)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, stop


def _header(request: Request, name: bytes) -> Optional[str]:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


class FilesResource(Resource):
    """
    The C{/files} tree (see the module docstring).
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, fs: FileSystem) -> None:
        super().__init__()
        self._fs = fs
        self._methods: dict[bytes, Callable[[Request], Coroutine[Any, Any, None]]] = {
            b"GET": self._get,
            b"HEAD": self._get,
            b"PUT": self._put,
            b"DELETE": self._delete,
        }

    def render(self, request: Request) -> Any:
        handler = self._methods.get(request.method)
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        try:
            if handler is None:
                raise MethodNotAllowed(_METHODS)
            check_query(request, _NO_PARAMETERS, "/files/{path}")
        except KVError as error:
            send_failure(request, Failure(error))
            return NOT_DONE_YET
        done: Deferred[None] = Deferred.fromCoroutine(handler(request))
        done.addErrback(self._failed, request, gone)
        return NOT_DONE_YET

    def _failed(
        self, failure: Failure, request: Request, gone: list[Failure]
    ) -> Optional[Deferred[None]]:
        if gone:
            return None
        if request.startedWriting:
            # The status is gone already: cut the body short.
            self._log.warn("Sending a file failed: {error}", error=failure.value)
            request.loseConnection()
            return None
        for name in _FILE_HEADERS:
            request.responseHeaders.removeHeader(name)
        error = failure.value
        if isinstance(error, PreconditionFailed):
            return Deferred.fromCoroutine(self._precondition_failed(request, failure, gone))
        send_failure(request, failure)
        return None

    async def _precondition_failed(
        self, request: Request, failure: Failure, gone: list[Failure]
    ) -> None:
        """
        Answer C{412} with the C{ETag} of the file as it is now (see
        L{tag_current}).
        """
        await tag_current(request, lambda: self._current(self._path(request)[0]))
        if not gone:
            send_failure(request, failure)

    def _json(self, request: Request, status: int, body: dict) -> None:
        data = json.dumps(body).encode("utf-8")
        request.setResponseCode(status)
        request.setHeader(b"content-type", _JSON)
        request.setHeader(b"content-length", str(len(data)).encode())
        request.write(data)
        request.finish()

    def _path(self, request: Request) -> tuple[FSPath, bool]:
        """
        The path of the request, and whether it names a directory
        explicitly (a trailing slash, or the root).
        """
        try:
            segments = [segment.decode("utf-8") for segment in request.postpath or ()]
        except UnicodeDecodeError:
            raise BadPath("the path is not UTF-8") from None
        directory = not segments or segments[-1] == ""
        if segments and segments[-1] == "":
            segments.pop()
        return FSPath.from_segments(segments), directory

    async def _get(self, request: Request) -> None:
        path, directory = self._path(request)
        if directory:
            await self._list(request, path)
            return
        try:
            download = await self._fs.open_download(path)
        except IsADirectory:
            await self._list(request, path)
            return
        entry = download.entry
        manifest = entry.manifest
        assert manifest is not None
        if entry.degraded:
            request.setHeader(b"x-kv-degraded", b"true")
        # A 304 tells the current version too.
        request.setHeader(b"etag", etag(entry.version))
        if not preconditions(request).evaluate(entry.version):
            request.setResponseCode(304)
            request.finish()
            return
        wanted = byte_range(_header(request, b"range"), entry.size)
        start, stop = wanted or (0, entry.size)
        request.setHeader(b"accept-ranges", b"bytes")
        if wanted is not None:
            request.setResponseCode(206)
            request.setHeader(b"content-range", f"bytes {start}-{stop - 1}/{entry.size}".encode())
        request.setHeader(b"content-type", manifest.content_type.encode("latin-1"))
        request.setHeader(b"content-length", str(stop - start).encode())
        request.setHeader(b"last-modified", datetimeToString(int(entry.modified)))
        request.setHeader(b"x-content-sha256", manifest.sha256.encode("ascii"))
        if request.method == b"HEAD":
            request.finish()
            return
        request.notifyFinish().addErrback(lambda _: download.stopProducing())
        await download.send(request, start, stop)
        request.finish()

    async def _list(self, request: Request, path: FSPath) -> None:
        entries = await self._fs.list_directory(path)
        self._json(
            request,
            200,
            {
                "path": path.text if path.is_root else path.text + "/",
                "entries": [self._describe(entry) for entry in entries],
            },
        )

    def _describe(self, entry: Entry) -> dict:
        description = {
            "name": entry.path.name,
            "type": "directory" if entry.is_directory else "file",
            "size": entry.size,
            "modified": entry.modified,
        }
        if entry.version is not None:
            description["version"] = entry.version
        return description

    async def _put(self, request: Request) -> None:
        path, directory = self._path(request)
        if directory:
            await self._make_directory(request, path)
            return
        length = _header(request, b"content-length")
        if length is not None and length.isdigit() and int(length) > self._fs.max_file_bytes:
            raise FileTooLarge(f"the file exceeds {self._fs.max_file_bytes} bytes")
        conditions = preconditions(request)
        if conditions.store_checkable(none_match_any=True):
            stored = await self._upload(
                request, path, conditions.version, conditions.if_none_match is not None
            )
        else:
            stored = await write_conditionally(
                conditions,
                lambda: self._current(path),
                lambda version: self._upload(request, path, version, version is None),
                "the file",
            )
        entry = stored.entry
        assert entry.manifest is not None
        request.setHeader(b"etag", etag(entry.version))
        self._json(
            request,
            201 if stored.created else 200,
            {
                "path": entry.path.text,
                "size": entry.size,
                "sha256": entry.manifest.sha256,
                "version": entry.version,
            },
        )

    async def _upload(
        self, request: Request, path: FSPath, if_match: Optional[str], if_none_match: bool
    ) -> StoredFile:
        """
        Store the body of C{request} as the file at C{path}, if the file is
        at version C{if_match} and, if C{if_none_match}, does not exist.
        """
        upload = await self._fs.open_upload(
            path,
            if_match=if_match,
            if_none_match=if_none_match,
            create_parents=True,
            content_type=_header(request, b"content-type"),
        )
        body = request.content
        assert body is not None
        try:
            body.seek(0)
            while data := body.read(self._fs.chunk_bytes):
                upload.write(data)
                await upload.drained()
        except BaseException:
            await upload.abort()
            raise
        return await upload.finish()

    async def _current(self, path: FSPath) -> tuple[Optional[str], bool]:
        """
        The version of the file at C{path} (C{None}: there is no file
        there) and whether the read of it is degraded, to evaluate
        preconditions on.
        """
        try:
            entry = await self._fs.stat(path)
        except FileNotFound:
            return None, False
        return entry.version, entry.degraded

    async def _make_directory(self, request: Request, path: FSPath) -> None:
        created = True
        try:
            await self._fs.make_directories(path)
        except FileExists:
            created = False
        self._json(
            request, 201 if created else 200, {"path": path.text, "type": "directory"}
        )

    async def _delete(self, request: Request) -> None:
        path, directory = self._path(request)
        if directory:
            await self._fs.remove_directory(path)
        else:
            conditions = preconditions(request)
            if conditions.store_checkable(none_match_any=False):
                await self._remove(path, conditions.version)
            else:
                await write_conditionally(
                    conditions,
                    lambda: self._current(path),
                    lambda version: self._remove(path, version),
                    "the file",
                )
        request.setResponseCode(204)
        request.finish()

    async def _remove(self, path: FSPath, if_match: Optional[str]) -> None:
        """
        Remove the file at C{path}, if it is at version C{if_match}, or the
        empty directory there when no version is required.
        """
        try:
            await self._fs.remove_file(path, if_match=if_match)
        except IsADirectory:
            if if_match is not None:
                raise PreconditionFailed(f"{path} is a directory") from None
            await self._fs.remove_directory(path)


def files_resource(
    kv: IKeyValue, *, clock: IReactorTime, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> IResource:
    """
    The C{/files} resource over C{kv}; mount it as the C{files} child of
    the site's root.

    @param clock: tells the time (modification times, leases).
    @param max_file_bytes: the largest file accepted (larger: 413).
    """
    return FilesResource(FileSystem(kv, clock, max_file_bytes=max_file_bytes))
