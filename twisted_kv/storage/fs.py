# -*- test-case-name: tests.test_storage_fs -*-
"""
The file-system operations the log and the snapshots use, behind one
interface, so that tests can run them on a file system that crashes
(L{twisted_kv.storage.testing.CrashableFileSystem}) and fails on demand.

The interface holds only what durable appends and atomic replacement need,
with the durability of each operation spelled out: data is durable after
L{IAppendFile.sync}; a new name, a rename or a removal is durable after
L{IFileSystem.sync_dir} of its directory.  Paths are strings, joined with
C{/}; errors are C{OSError} with the errno the kernel would give.
"""

from __future__ import annotations

import os
from typing import Optional

from attrs import define
from zope.interface import Attribute, Interface, implementer


class IAppendFile(Interface):
    """
    A file open for appending: every write goes where the last one ended
    (at first, the end of the file), over any zeros L{reserve} put there.
    """

    path = Attribute("The path the file was opened with.")

    def write(data: bytes) -> None:
        """
        Append all of C{data}.

        @raise OSError: the write failed (e.g. C{ENOSPC}); some prefix of
            C{data} may have reached the file.
        """

    def sync() -> None:
        """
        Make everything written so far durable (C{fdatasync}: the data and
        the size, not the times).

        @raise OSError: the sync failed; what was written since the last
            successful sync may or may not be durable, and a later sync
            that succeeds does not mean it is.
        """

    def reserve(size: int) -> None:
        """
        Make the file C{size} bytes long, if shorter, with zeros written past
        its end; writes still go where the last one ended, over the zeros.
        Once the zeros are synced, syncing a write that lands on them has no
        new blocks or size to record (cheaper on ext4, as etcd's
        preallocated write-ahead log files are).

        @raise OSError: the zeros could not be written (e.g. C{ENOSPC});
            some of them may have been.
        """

    def truncate(size: int) -> None:
        """
        Cut the file to C{size} bytes; later writes append from there.
        """

    def close() -> None:
        """
        Close the file (without syncing it).
        """


class IFileSystem(Interface):
    """
    What the log and the snapshots need of a file system.
    """

    def open_append(path: str) -> IAppendFile:
        """
        Open C{path} for appending, creating it if missing.
        """

    def create(path: str) -> IAppendFile:
        """
        Create C{path}, which must not exist, and open it for appending.

        @raise FileExistsError: C{path} exists.
        """

    def read(path: str, offset: int = 0, length: Optional[int] = None) -> bytes:
        """
        Read C{length} bytes of C{path} from C{offset} (to the end if
        C{length} is L{None}); fewer at the end of the file.

        @raise FileNotFoundError: no such file.
        """

    def size(path: str) -> int:
        """
        The size of C{path} in bytes.
        """

    def rename(source: str, destination: str) -> None:
        """
        Atomically give C{source} the name C{destination} (replacing it).
        """

    def remove(path: str) -> None:
        """
        Remove the file C{path}.
        """

    def listdir(path: str) -> list[str]:
        """
        The names in directory C{path}, sorted.
        """

    def exists(path: str) -> bool:
        """
        Whether C{path} names a file or a directory.
        """

    def makedirs(path: str) -> None:
        """
        Create directory C{path} and its missing parents; nothing if it
        exists.  Each new directory is synced in its parent, so that a
        directory created here survives a crash.
        """

    def sync_dir(path: str) -> None:
        """
        Make the names in directory C{path} durable: files created, renamed
        into or removed from it.
        """


# The most zeros L{_OSAppendFile.reserve} writes in one call.
_ZEROS = bytes(1024 * 1024)


@implementer(IAppendFile)
@define
class _OSAppendFile:
    """
    A file descriptor, written at the position where the last write ended.
    """

    path: str
    _fd: int
    _position: int

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self._position)
            self._position += written
            view = view[written:]

    def reserve(self, size: int) -> None:
        end = os.fstat(self._fd).st_size
        while end < size:
            end += os.pwrite(self._fd, memoryview(_ZEROS)[: size - end], end)

    def sync(self) -> None:
        _datasync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        self._position = size

    def close(self) -> None:
        os.close(self._fd)


# fdatasync skips the file times, which nothing here reads back; it still
# writes the size, so appended data is found after a crash.  macOS has no
# fdatasync.
_datasync = getattr(os, "fdatasync", os.fsync)


@implementer(IFileSystem)
class OSFileSystem:
    """
    L{IFileSystem} over the operating system's file system.
    """

    def open_append(self, path: str) -> IAppendFile:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return _OSAppendFile(path, fd, os.fstat(fd).st_size)

    def create(self, path: str) -> IAppendFile:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        return _OSAppendFile(path, fd, 0)

    def read(self, path: str, offset: int = 0, length: Optional[int] = None) -> bytes:
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def rename(self, source: str, destination: str) -> None:
        os.replace(source, destination)

    def remove(self, path: str) -> None:
        os.remove(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        path = os.path.normpath(path)
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path) or "."
        self.makedirs(parent)
        try:
            os.mkdir(path)
        except FileExistsError:
            return
        self.sync_dir(parent)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
