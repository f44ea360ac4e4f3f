# -*- test-case-name: tests.test_storage_fs -*-
"""
Tests for L{twisted_kv.storage.fs}: one suite of L{IFileSystem} behaviour,
run against L{OSFileSystem} in a temporary directory and against
L{CrashableFileSystem}, so that the fake behaves as the real one.
"""

from __future__ import annotations

import inspect

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_kv.storage.fs import IAppendFile, IFileSystem, OSFileSystem
from twisted_kv.storage.testing import CrashableFileSystem


class _FileSystemTests:
    """
    L{IFileSystem} behaviour; a subclass provides L{make} and L{root}.
    """

    fs: IFileSystem
    root: str

    def make(self) -> tuple[IFileSystem, str]:
        raise NotImplementedError()

    def setUp(self) -> None:
        self.fs, self.root = self.make()
        self.fs.makedirs(self.root)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def test_interfaces(self) -> None:
        """
        The file system and its open files provide their interfaces.
        """
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertTrue(verifyObject(IFileSystem, self.fs))
        file = self.fs.create(self.path("a"))
        case.assertTrue(verifyObject(IAppendFile, file))
        file.close()

    def test_append_and_read(self) -> None:
        """
        Writes append; a read returns the whole file or a range of it, and
        fewer bytes past the end.
        """
        case: SynchronousTestCase = self  # type: ignore[assignment]
        file = self.fs.open_append(self.path("a"))
        file.write(b"hello ")
        file.write(b"world")
        file.sync()
        file.close()
        case.assertEqual(self.fs.read(self.path("a")), b"hello world")
        case.assertEqual(self.fs.read(self.path("a"), 6, 3), b"wor")
        case.assertEqual(self.fs.read(self.path("a"), 9, 100), b"ld")
        case.assertEqual(self.fs.size(self.path("a")), 11)
        again = self.fs.open_append(self.path("a"))
        again.write(b"!")
        again.close()
        case.assertEqual(self.fs.read(self.path("a")), b"hello world!")

    def test_create_is_exclusive(self) -> None:
        """
        C{create} refuses an existing file.
        """
        case: SynchronousTestCase = self  # type: ignore[assignment]
        self.fs.create(self.path("a")).close()
        case.assertRaises(FileExistsError, self.fs.create, self.path("a"))

    def test_truncate_then_append(self) -> None:
        """
        After a truncation, writes append from the new end.
        """
        case: SynchronousTestCase = self  # type: ignore[assignment]
        file = self.fs.create(self.path("a"))
        file.write(b"0123456789")
        file.truncate(4)
        file.write(b"ab")
        file.close()
        case.assertEqual(self.fs.read(self.path("a")), b"0123ab")

    def test_reserve(self) -> None:
        """
        C{reserve} writes zeros past the end; writes go on where the last
        one ended, over them; a truncation moves where the next goes.
        """
        case: SynchronousTestCase = self  # type: ignore[assignment]
        file = self.fs.create(self.path("a"))
        file.write(b"abc")
        file.reserve(10)
        case.assertEqual(self.fs.read(self.path("a")), b"abc" + bytes(7))
        file.write(b"de")
        file.reserve(4)
        file.sync()
        case.assertEqual(self.fs.read(self.path("a")), b"abcde" + bytes(5))
        file.truncate(2)
        file.write(b"x")
        file.close()
        case.assertEqual(self.fs.read(self.path("a")), b"abx")

    def test_rename_remove_listdir(self) -> None:
        """
        A rename replaces its destination; removed files leave the listing;
        listings are sorted.
        """
        case: SynchronousTestCase = self  # type: ignore[assignment]
        for name, content in [("b", b"old"), ("a.tmp", b"new"), ("c", b"")]:
            file = self.fs.create(self.path(name))
            file.write(content)
            file.close()
        self.fs.rename(self.path("a.tmp"), self.path("b"))
        self.fs.sync_dir(self.root)
        case.assertEqual(self.fs.read(self.path("b")), b"new")
        self.fs.remove(self.path("c"))
        case.assertEqual(self.fs.listdir(self.root), ["b"])
        case.assertTrue(self.fs.exists(self.path("b")))
        case.assertFalse(self.fs.exists(self.path("c")))

    def test_missing(self) -> None:
        """
        Reading, sizing or removing a missing file raises
        C{FileNotFoundError}.
        """
        case: SynchronousTestCase = self  # type: ignore[assignment]
        for call in (self.fs.read, self.fs.size, self.fs.remove):
            case.assertRaises(FileNotFoundError, call, self.path("missing"))

    def test_makedirs(self) -> None:
        """
        C{makedirs} creates missing parents and accepts existing ones.
        """
        case: SynchronousTestCase = self  # type: ignore[assignment]
        self.fs.makedirs(self.path("x/y"))
        self.fs.makedirs(self.path("x/y"))
        case.assertEqual(self.fs.listdir(self.path("x")), ["y"])
        case.assertEqual(self.fs.listdir(self.path("x/y")), [])


class OSFileSystemTests(_FileSystemTests, SynchronousTestCase):
    """
    L{OSFileSystem} in a temporary directory.
    """

    def make(self) -> tuple[IFileSystem, str]:
        return OSFileSystem(), self.mktemp()


class CrashableFileSystemTests(_FileSystemTests, SynchronousTestCase):
    """
    L{CrashableFileSystem}, before any crash.
    """

    def make(self) -> tuple[IFileSystem, str]:
        return CrashableFileSystem(), "data/n1"


class SignatureTests(SynchronousTestCase):
    """
    The fake's methods take the same arguments as the real ones.
    """

    def test_same_signatures(self) -> None:
        """
        Every method of L{IFileSystem} has the same signature on both.
        """
        for name in IFileSystem.names():
            self.assertEqual(
                inspect.signature(getattr(OSFileSystem, name)),
                inspect.signature(getattr(CrashableFileSystem, name)),
                name,
            )
