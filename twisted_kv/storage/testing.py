# -*- test-case-name: tests.test_storage_testing -*-
"""
A file system for tests that can lose power and fail on demand.

L{CrashableFileSystem} keeps files in memory and remembers what a real
disk would hold after a power cut: for each file, its content as of its last
successful sync; for each directory, its names as of its last directory
sync, plus the operations (creates, renames, removals) made since.
L{CrashableFileSystem.crash} returns the file system a restarted machine
could find: every synced byte and every synced name, and of the rest, a
random choice (unsynced writes dropped, kept or torn, with garbage in the
torn part, and any synced zeros they were written over still after them;
each unsynced directory operation lost or kept).  Code that waits for the
right syncs survives every such choice; code that acknowledges too early
loses data on some seed.  This is what Pebble's C{vfs.MemFS} crash
clones and Jepsen's LazyFS do.

L{run_now} and L{HeldRunner} stand in for running work in a thread
(L{twisted_kv.storage.committer.RunInThread}): at once, or when the test
says, so that a commit can be held in flight.

L{Fault} injects errors (C{ENOSPC}, C{EIO}, ...) into chosen calls, as
Pebble's C{errorfs} does.  A failed sync follows Linux's behaviour that
PostgreSQL met as "fsyncgate": the data written since the last good sync may
be gone, and a later sync that succeeds does not bring it back.
"""

from __future__ import annotations

import errno as errno_module
import os
import posixpath
import random
from typing import Any, Callable, Optional, Union

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import implementer

from twisted_kv.storage.fs import IAppendFile, IFileSystem


class PowerCut(BaseException):
    """
    Raised by a L{CrashableFileSystem} whose power went off (see
    L{CrashableFileSystem.cut_power_after}): a C{BaseException}, so that
    the code under test, which handles C{OSError}, stops where it is, as a
    machine would, instead of cleaning up.
    """


# The calls that change a file system; a power cut happens before one.
_CHANGES = frozenset(
    [
        "write",
        "reserve",
        "sync",
        "truncate",
        "create",
        "open_append",
        "rename",
        "remove",
        "sync_dir",
    ]
)


def _every_path(path: str) -> bool:
    return True


@define
class Fault:
    """
    An error that chosen calls of a L{CrashableFileSystem} raise.

    @ivar operation: the L{IFileSystem} or L{IAppendFile} method that fails:
        C{"write"}, C{"reserve"}, C{"sync"}, C{"truncate"}, C{"create"}, C{"open_append"},
        C{"rename"}, C{"remove"}, C{"sync_dir"}, C{"read"}.
    @ivar errno: the C{OSError}'s errno (C{errno.ENOSPC}, C{errno.EIO}).
    @ivar matches: which paths it applies to.
    @ivar after: how many matching calls succeed before the first failure
        (C{after=2}: the third matching call fails).
    @ivar times: how many calls fail, from then on; L{None} for every one
        until L{CrashableFileSystem.clear_faults}.
    @ivar written: for a write, how many bytes of the data reach the file
        before the error (a short write, as a disk filling up gives).
    @ivar seen: how many matching calls it has seen so far.
    """

    operation: str
    errno: int
    matches: Callable[[str], bool] = _every_path
    after: int = 0
    times: Optional[int] = 1
    written: int = 0
    seen: int = 0

    def fires(self, operation: str, path: str) -> bool:
        """
        Count a call and tell whether it fails.
        """
        if operation != self.operation or not self.matches(path):
            return False
        self.seen += 1
        failing = self.seen - self.after
        return failing >= 1 and (self.times is None or failing <= self.times)


@define(eq=False)
class _File:
    """
    A file's content now and as a crash would find it.

    @ivar durable: the content as of the last successful sync.
    @ivar dropped: after a failed sync, the byte range whose pages the
        kernel may have dropped; a later successful sync makes zeros
        durable there (and reads see them from then on).
    """

    data: bytearray = field(factory=bytearray)
    durable: bytes = b""
    dropped: Optional[tuple[int, int]] = None


@frozen(eq=False)
class _Operation:
    """
    A change to a directory's names not synced yet: C{node} gets the name
    C{name} (a create), loses it (C{node} is L{None}: a removal), or moves
    from C{source} to C{name} (a rename).
    """

    name: str
    node: Optional[Union[_File, "_Dir"]]
    source: Optional[str] = None

    def apply(self, entries: dict[str, Union[_File, "_Dir"]]) -> None:
        """
        Apply this change to C{entries}, unless it no longer applies (the
        source of a rename is not there).
        """
        if self.node is None:
            entries.pop(self.name, None)
        elif self.source is None:
            entries[self.name] = self.node
        elif entries.get(self.source) is self.node:
            del entries[self.source]
            entries[self.name] = self.node


@define(eq=False)
class _Dir:
    """
    A directory's names now, as of its last sync, and the changes since.
    """

    entries: dict[str, Union[_File, "_Dir"]] = field(factory=dict)
    durable: dict[str, Union[_File, "_Dir"]] = field(factory=dict)
    pending: list[_Operation] = field(factory=list)

    def link(self, name: str, node: Union[_File, "_Dir"]) -> None:
        self.entries[name] = node
        self.pending.append(_Operation(name, node))

    def unlink(self, name: str) -> None:
        del self.entries[name]
        self.pending.append(_Operation(name, None))

    def rename(self, source: str, destination: str) -> None:
        node = self.entries.pop(source)
        self.entries[destination] = node
        self.pending.append(_Operation(destination, node, source))

    def sync(self) -> None:
        self.durable = dict(self.entries)
        self.pending.clear()


Node = Union[_File, _Dir]


@implementer(IAppendFile)
@define
class _MemAppendFile:
    """
    An open file of a L{CrashableFileSystem}.
    """

    path: str
    _fs: "CrashableFileSystem"
    _file: _File
    # where the next write goes: where the last one ended
    _position: int
    _closed: bool = False

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path} is closed")

    def write(self, data: bytes) -> None:
        self._check_open()
        fault = self._fs._fault("write", self.path)
        if fault is not None:
            data = data[: fault.written]
        end = self._position + len(data)
        self._file.data[self._position : end] = data
        self._position = end
        if fault is not None:
            raise _error(fault.errno, self.path)

    def reserve(self, size: int) -> None:
        self._check_open()
        self._fs._check("reserve", self.path)
        data = self._file.data
        data += bytes(max(size - len(data), 0))

    def sync(self) -> None:
        self._check_open()
        fault = self._fs._fault("sync", self.path)
        file = self._file
        if fault is not None:
            start = min(len(file.durable), len(file.data))
            if file.dropped is not None:
                start = min(start, file.dropped[0])
            file.dropped = (start, max(len(file.data), start))
            raise _error(fault.errno, self.path)
        content = bytearray(file.data)
        if file.dropped is not None:
            start, end = file.dropped
            end = min(end, len(content))
            content[start:end] = bytes(max(end - start, 0))
            file.dropped = None
            # The pages are gone from the cache too: reads see the zeros.
            file.data = bytearray(content)
        file.durable = bytes(content)

    def truncate(self, size: int) -> None:
        self._check_open()
        self._fs._check("truncate", self.path)
        del self._file.data[size:]
        self._position = size

    def close(self) -> None:
        self._closed = True


def _error(number: int, path: str) -> OSError:
    return OSError(number, os.strerror(number), path)


@implementer(IFileSystem)
@define
class CrashableFileSystem:
    """
    An in-memory L{IFileSystem} that remembers what is durable, crashes on
    demand (L{crash}) and fails on demand (L{inject}).

    Paths are relative to its root (a leading C{/} is ignored).
    """

    _root: _Dir = field(factory=_Dir)
    faults: list[Fault] = field(factory=list)
    _power_left: Optional[int] = None

    def cut_power_after(self, calls: int) -> None:
        """
        Let C{calls} more calls that change the file system (writes, syncs,
        creates, renames, ...) happen, then raise L{PowerCut} from the next
        one, and from every one after: the test then calls L{crash} to see
        what the disk holds.  Once off, the power stays off.
        """
        if self.powered:
            self._power_left = calls

    @property
    def powered(self) -> bool:
        """
        Whether the power is still on (see L{cut_power_after}).
        """
        return self._power_left != 0

    def inject(self, fault: Fault) -> Fault:
        """
        Make the calls C{fault} describes fail, from now on.

        @return: C{fault}, whose L{Fault.seen} tells how many calls it saw.
        """
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """
        Let every call succeed again (the disk has space again).
        """
        self.faults.clear()

    def _fault(self, operation: str, path: str) -> Optional[Fault]:
        if self._power_left is not None and operation in _CHANGES:
            if self._power_left == 0:
                raise PowerCut(f"{operation} {path}")
            self._power_left -= 1
        fired = None
        for fault in self.faults:
            if fault.fires(operation, path) and fired is None:
                fired = fault
        return fired

    def _check(self, operation: str, path: str) -> None:
        fault = self._fault(operation, path)
        if fault is not None:
            raise _error(fault.errno, path)

    def _parts(self, path: str) -> list[str]:
        normal = posixpath.normpath("/" + path)
        return [part for part in normal.split("/") if part]

    def _dir(self, parts: list[str], path: str) -> _Dir:
        node: Node = self._root
        for part in parts:
            if not isinstance(node, _Dir):
                raise _error(errno_module.ENOTDIR, path)
            if part not in node.entries:
                raise _error(errno_module.ENOENT, path)
            node = node.entries[part]
        if not isinstance(node, _Dir):
            raise _error(errno_module.ENOTDIR, path)
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        parts = self._parts(path)
        if not parts:
            raise _error(errno_module.EISDIR, path)
        return self._dir(parts[:-1], path), parts[-1]

    def _file(self, path: str) -> _File:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise _error(errno_module.ENOENT, path)
        if not isinstance(node, _File):
            raise _error(errno_module.EISDIR, path)
        return node

    def open_append(self, path: str) -> IAppendFile:
        self._check("open_append", path)
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            node = _File()
            parent.link(name, node)
        if not isinstance(node, _File):
            raise _error(errno_module.EISDIR, path)
        return _MemAppendFile(path, self, node, len(node.data))

    def create(self, path: str) -> IAppendFile:
        self._check("create", path)
        parent, name = self._parent(path)
        if name in parent.entries:
            raise _error(errno_module.EEXIST, path)
        node = _File()
        parent.link(name, node)
        return _MemAppendFile(path, self, node, 0)

    def read(self, path: str, offset: int = 0, length: Optional[int] = None) -> bytes:
        self._check("read", path)
        data = self._file(path).data
        end = len(data) if length is None else offset + length
        return bytes(data[offset:end])

    def size(self, path: str) -> int:
        return len(self._file(path).data)

    def rename(self, source: str, destination: str) -> None:
        self._check("rename", source)
        source_dir, source_name = self._parent(source)
        destination_dir, destination_name = self._parent(destination)
        if source_dir is not destination_dir:
            # Only same-directory renames are atomic in this model, and
            # nothing here needs others.
            raise _error(errno_module.EXDEV, destination)
        if source_name not in source_dir.entries:
            raise _error(errno_module.ENOENT, source)
        source_dir.rename(source_name, destination_name)

    def remove(self, path: str) -> None:
        self._check("remove", path)
        parent, name = self._parent(path)
        self._file(path)
        parent.unlink(name)

    def listdir(self, path: str) -> list[str]:
        return sorted(self._dir(self._parts(path), path).entries)

    def exists(self, path: str) -> bool:
        parts = self._parts(path)
        try:
            parent = self._dir(parts[:-1], path)
        except OSError:
            return False
        return not parts or parts[-1] in parent.entries

    def makedirs(self, path: str) -> None:
        node = self._root
        for part in self._parts(path):
            child = node.entries.get(part)
            if child is None:
                child = _Dir()
                node.link(part, child)
                node.sync()
            if not isinstance(child, _Dir):
                raise _error(errno_module.ENOTDIR, path)
            node = child

    def sync_dir(self, path: str) -> None:
        self._check("sync_dir", path)
        self._dir(self._parts(path), path).sync()

    def crash(self, rng: random.Random) -> "CrashableFileSystem":
        """
        The file system a machine finds after losing power now: everything
        synced, and a random part of the rest (see the module docstring).
        This file system is left as it was, so that a test can crash the
        same state several ways.

        @param rng: the source of every random choice, so that a failing
            seed can be replayed.
        """
        files: dict[int, _File] = {}
        return CrashableFileSystem(_crash_dir(self._root, rng, files))


def _crash_dir(directory: _Dir, rng: random.Random, files: dict[int, _File]) -> _Dir:
    """
    The directory after a crash: its synced names, with each operation since
    kept or lost at random; kept operations apply in their order, and one
    that no longer applies (a rename whose source was lost) is lost too.
    """
    entries = dict(directory.durable)
    for operation in directory.pending:
        if rng.random() < 0.5:
            operation.apply(entries)
    crashed: dict[str, Node] = {}
    for name, node in entries.items():
        if isinstance(node, _Dir):
            crashed[name] = _crash_dir(node, rng, files)
        else:
            if id(node) not in files:
                files[id(node)] = _crash_file(node, rng)
            crashed[name] = files[id(node)]
    return _Dir(entries=crashed, durable=dict(crashed))


def _crash_file(file: _File, rng: random.Random) -> _File:
    """
    The file after a crash: the synced content, with the bytes written since
    kept from where the two part up to a random point (nothing, everything,
    or a prefix that may end in garbage), and the synced bytes past that
    point where the file was longer (zeros reserved and synced, or a
    truncation since that the crash undid, at random).
    """
    durable = file.durable
    data = bytes(file.data)
    common = _common_prefix(durable, data)
    choice = rng.randrange(4)
    if choice == 0:
        cut = common
    elif choice == 1:
        cut = len(data)
    else:
        cut = rng.randint(common, len(data))
    content = data[:cut]
    if choice == 3 and cut > common:
        start = rng.randint(common, cut - 1)
        content = content[:start] + rng.randbytes(cut - start)
    # Past the cut, the synced bytes stay where the file was that long when
    # synced: always over reserved zeros; after a truncation since, only
    # if the crash undid it.
    if cut < len(durable) and (len(data) >= len(durable) or rng.random() < 0.5):
        content += durable[cut:]
    return _File(bytearray(content), content)


def _common_prefix(one: bytes, other: bytes) -> int:
    """
    The length of the longest common prefix of C{one} and C{other}, found
    by bisection (files hold megabytes of reserved zeros).
    """
    low, high = 0, min(len(one), len(other))
    if one[:high] == other[:high]:
        return high
    while low < high:
        middle = (low + high + 1) // 2
        if one[:middle] == other[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def run_now(work: Callable[[], Any]) -> "Deferred[Any]":
    """
    Run C{work} at once, as a thread would eventually: a
    L{twisted_kv.storage.committer.RunInThread} for tests.
    """
    return maybeDeferred(work)


@define
class HeldRunner:
    """
    A L{twisted_kv.storage.committer.RunInThread} that runs work only when
    told (L{release}), so that a test can hold a commit in flight.

    @ivar held: the work not run yet, oldest first, with the Deferreds
        given out for it.
    """

    held: list[tuple[Callable[[], Any], "Deferred[Any]"]] = field(factory=list)

    def __call__(self, work: Callable[[], Any]) -> "Deferred[Any]":
        done: Deferred[Any] = Deferred()
        self.held.append((work, done))
        return done

    def release(self) -> None:
        """
        Run the oldest work held, and fire its Deferred with the outcome.
        """
        work, done = self.held.pop(0)
        maybeDeferred(work).chainDeferred(done)
