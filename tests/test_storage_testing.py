# -*- test-case-name: tests.test_storage_testing -*-
"""
Tests for L{twisted_kv.storage.testing}: the crashable file system keeps
exactly what was synced, chooses among the outcomes a power cut allows, and
fails the calls it is told to.
"""

from __future__ import annotations

import errno
import random

from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.storage.testing import CrashableFileSystem, Fault, HeldRunner, PowerCut, run_now

DIRECTORY = "data/n1"
FILE = f"{DIRECTORY}/f"


def _fs_with_file(content: bytes = b"synced", unsynced: bytes = b"") -> CrashableFileSystem:
    """
    A file system holding C{FILE}, named durably, with C{content} synced
    and C{unsynced} written after.
    """
    fs = CrashableFileSystem()
    fs.makedirs(DIRECTORY)
    file = fs.create(FILE)
    fs.sync_dir(DIRECTORY)
    file.write(content)
    file.sync()
    file.write(unsynced)
    return fs


def _outcomes(fs: CrashableFileSystem, path: str = FILE, seeds: int = 200) -> set[bytes]:
    """
    What C{path} holds after a crash, over many seeds (C{b"<absent>"} when
    it is missing).
    """
    found = set()
    for seed in range(seeds):
        crashed = fs.crash(random.Random(seed))
        found.add(crashed.read(path) if crashed.exists(path) else b"<absent>")
    return found


class CrashDataTests(SynchronousTestCase):
    """
    What a crash does to the content of files.
    """

    def test_synced_survives(self) -> None:
        """
        Synced content is always found whole.
        """
        self.assertEqual(_outcomes(_fs_with_file(b"synced")), {b"synced"})

    def test_unsynced_dropped_kept_or_torn(self) -> None:
        """
        Bytes written after the last sync are, depending on the seed,
        dropped, kept, cut short, or cut short with garbage at the end;
        the synced part always stays.
        """
        outcomes = _outcomes(_fs_with_file(b"synced", b"-unsynced"))
        self.assertIn(b"synced", outcomes)
        self.assertIn(b"synced-unsynced", outcomes)
        torn = {o for o in outcomes if len(o) < len(b"synced-unsynced") and o != b"synced"}
        self.assertTrue(any(b"synced-unsynced".startswith(o) for o in torn))
        self.assertTrue(any(not b"synced-unsynced".startswith(o) for o in torn))
        for outcome in outcomes:
            self.assertTrue(outcome.startswith(b"synced"), outcome)

    def test_crash_leaves_original(self) -> None:
        """
        C{crash} returns a new file system and leaves its own state as it
        was; the crashed one holds everything durably.
        """
        fs = _fs_with_file(b"a", b"b")
        crashed = fs.crash(random.Random(1))
        self.assertEqual(fs.read(FILE), b"ab")
        self.assertEqual(_outcomes(crashed), {crashed.read(FILE)})

    def test_truncated_since_sync(self) -> None:
        """
        A file cut shorter since its last sync comes back as either
        version, or cut in between; never shorter than their common part.
        """
        fs = _fs_with_file(b"0123456789")
        file = fs.open_append(FILE)
        file.truncate(4)
        file.write(b"ab")
        outcomes = _outcomes(fs)
        self.assertIn(b"0123456789", outcomes)
        self.assertIn(b"0123ab", outcomes)
        for outcome in outcomes:
            self.assertTrue(outcome.startswith(b"0123"), outcome)


    def test_written_over_reserved_zeros(self) -> None:
        """
        Bytes written over synced zeros are kept from the start up to a
        random point, maybe ending in garbage; the zeros after that point
        stay, as the file's size was synced.
        """
        fs = _fs_with_file(b"synced")
        file = fs.open_append(FILE)
        file.reserve(16)
        file.sync()
        file.write(b"-new")
        outcomes = _outcomes(fs)
        self.assertIn(b"synced" + bytes(10), outcomes)
        self.assertIn(b"synced-new" + bytes(6), outcomes)
        self.assertIn(b"synced-n" + bytes(8), outcomes)
        self.assertTrue(any(not o.startswith(b"synced-") and o[6:].strip(b"\0") for o in outcomes))
        for outcome in outcomes:
            self.assertEqual(len(outcome), 16, outcome)
            self.assertTrue(outcome.startswith(b"synced"), outcome)


class CrashDirectoryTests(SynchronousTestCase):
    """
    What a crash does to names in directories.
    """

    def test_unsynced_create(self) -> None:
        """
        A file created without a directory sync may be gone after a crash,
        even with its data synced; after the directory sync it stays.
        """
        fs = CrashableFileSystem()
        fs.makedirs(DIRECTORY)
        file = fs.create(FILE)
        file.write(b"x")
        file.sync()
        self.assertEqual(_outcomes(fs), {b"x", b"<absent>"})
        fs.sync_dir(DIRECTORY)
        self.assertEqual(_outcomes(fs), {b"x"})

    def test_unsynced_rename(self) -> None:
        """
        An unsynced rename over an existing file is either done or not: the
        destination holds the old or the new content, never nothing.
        """
        fs = _fs_with_file(b"old")
        new = fs.create(f"{DIRECTORY}/tmp")
        new.write(b"new")
        new.sync()
        fs.sync_dir(DIRECTORY)
        fs.rename(f"{DIRECTORY}/tmp", FILE)
        self.assertEqual(_outcomes(fs), {b"old", b"new"})
        fs.sync_dir(DIRECTORY)
        self.assertEqual(_outcomes(fs), {b"new"})

    def test_unsynced_remove(self) -> None:
        """
        A removal is durable only after the directory sync.
        """
        fs = _fs_with_file(b"x")
        fs.remove(FILE)
        self.assertEqual(_outcomes(fs), {b"x", b"<absent>"})
        fs.sync_dir(DIRECTORY)
        self.assertEqual(_outcomes(fs), {b"<absent>"})

    def test_rename_of_lost_create(self) -> None:
        """
        A rename whose source's creation was lost is lost too.
        """
        fs = CrashableFileSystem()
        fs.makedirs(DIRECTORY)
        fs.create(f"{DIRECTORY}/tmp").close()
        fs.rename(f"{DIRECTORY}/tmp", FILE)
        for seed in range(50):
            crashed = fs.crash(random.Random(seed))
            self.assertIn(crashed.listdir(DIRECTORY), ([], ["f"], ["tmp"]))

    def test_name_reused(self) -> None:
        """
        A name removed and created again, unsynced, holds after a crash
        the old file, the new one, or nothing; never the new file under an
        older creation.
        """
        fs = _fs_with_file(b"old")
        fs.remove(FILE)
        new = fs.create(FILE)
        new.write(b"new")
        new.sync()
        self.assertEqual(_outcomes(fs), {b"old", b"new", b"<absent>"})

    def test_makedirs_durable(self) -> None:
        """
        Directories from C{makedirs} survive a crash.
        """
        fs = CrashableFileSystem()
        fs.makedirs(f"{DIRECTORY}/deeper")
        crashed = fs.crash(random.Random(0))
        self.assertEqual(crashed.listdir(DIRECTORY), ["deeper"])

    def test_cross_directory_rename(self) -> None:
        """
        A rename across directories is refused with C{EXDEV}: the model
        only keeps renames within a directory atomic.
        """
        fs = _fs_with_file()
        fs.makedirs("other")
        error = self.assertRaises(OSError, fs.rename, FILE, "other/f")
        self.assertEqual(error.errno, errno.EXDEV)


class FaultTests(SynchronousTestCase):
    """
    L{Fault}s make chosen calls fail.
    """

    def test_nth_write(self) -> None:
        """
        C{after} lets that many matching calls through; then C{times} of
        them fail with the errno; then calls succeed again.
        """
        fs = _fs_with_file(b"")
        file = fs.open_append(FILE)
        fault = fs.inject(Fault("write", errno.ENOSPC, after=1, times=2))
        file.write(b"a")
        for _ in range(2):
            error = self.assertRaises(OSError, file.write, b"b")
            self.assertEqual(error.errno, errno.ENOSPC)
        file.write(b"c")
        self.assertEqual(fs.read(FILE), b"ac")
        self.assertEqual(fault.seen, 4)

    def test_predicate_and_forever(self) -> None:
        """
        A fault applies only to the paths it matches, and with
        C{times=None} to every call until the faults are cleared.
        """
        fs = _fs_with_file(b"")
        other = fs.create(f"{DIRECTORY}/other.log")
        fs.inject(Fault("sync", errno.EIO, lambda path: path.endswith(".log"), times=None))
        fs.open_append(FILE).sync()
        for _ in range(3):
            self.assertEqual(self.assertRaises(OSError, other.sync).errno, errno.EIO)
        fs.clear_faults()
        other.sync()

    def test_short_write(self) -> None:
        """
        A failing write may leave a prefix of its data in the file.
        """
        fs = _fs_with_file(b"")
        file = fs.open_append(FILE)
        fs.inject(Fault("write", errno.ENOSPC, written=3))
        self.assertRaises(OSError, file.write, b"abcdef")
        self.assertEqual(fs.read(FILE), b"abc")

    def test_other_operations(self) -> None:
        """
        Creates, renames, removals and directory syncs can fail too.
        """
        fs = _fs_with_file()
        for operation, call in [
            ("create", lambda: fs.create(f"{DIRECTORY}/new")),
            ("rename", lambda: fs.rename(FILE, f"{DIRECTORY}/g")),
            ("remove", lambda: fs.remove(FILE)),
            ("sync_dir", lambda: fs.sync_dir(DIRECTORY)),
            ("open_append", lambda: fs.open_append(FILE)),
        ]:
            fs.inject(Fault(operation, errno.EIO))
            self.assertEqual(self.assertRaises(OSError, call).errno, errno.EIO, operation)
        self.assertEqual(fs.listdir(DIRECTORY), ["f"])

    def test_failed_sync_loses_data(self) -> None:
        """
        After a failed sync, a later sync succeeds but the bytes written
        before the failure are not what becomes durable (fsyncgate): the
        reason the log never retries a sync.
        """
        fs = _fs_with_file(b"synced", b"-lost")
        file = fs.open_append(FILE)
        fs.inject(Fault("sync", errno.EIO))
        self.assertRaises(OSError, file.sync)
        self.assertEqual(fs.read(FILE), b"synced-lost")
        file.write(b"-later")
        file.sync()
        self.assertEqual(_outcomes(fs), {b"synced" + bytes(5) + b"-later"})

    def test_failed_sync_then_crash(self) -> None:
        """
        After a failed sync and a crash, the unsynced bytes may be gone or
        garbage; the synced ones stay.
        """
        fs = _fs_with_file(b"synced", b"-unknown")
        file = fs.open_append(FILE)
        fs.inject(Fault("sync", errno.EIO))
        self.assertRaises(OSError, file.sync)
        outcomes = _outcomes(fs)
        self.assertIn(b"synced", outcomes)
        for outcome in outcomes:
            self.assertTrue(outcome.startswith(b"synced"))


class PowerCutTests(SynchronousTestCase):
    """
    L{CrashableFileSystem.cut_power_after} stops the code under test at a
    chosen call.
    """

    def test_cut(self) -> None:
        """
        The given number of changing calls happen, reads do not count, and
        the next change raises L{PowerCut} (not an C{OSError}, which code
        under test would handle), as does every later one.
        """
        fs = _fs_with_file(b"")
        file = fs.open_append(FILE)
        fs.cut_power_after(1)
        file.write(b"a")
        fs.read(FILE)
        self.assertRaises(PowerCut, file.sync)
        self.assertRaises(PowerCut, file.write, b"b")
        self.assertFalse(fs.powered)
        fs.cut_power_after(5)
        self.assertFalse(fs.powered)
        self.assertFalse(issubclass(PowerCut, Exception))
        self.assertIn(b"", _outcomes(fs))
        self.assertTrue(all(len(outcome) <= 1 for outcome in _outcomes(fs)))

    def test_closed_file(self) -> None:
        """
        A closed file refuses writes.
        """
        fs = _fs_with_file()
        file = fs.open_append(FILE)
        file.close()
        self.assertRaises(ValueError, file.write, b"x")


class RunnerTests(SynchronousTestCase):
    """
    The stand-ins for running work in a thread.
    """

    def test_run_now(self) -> None:
        """
        L{run_now} runs the work at once and gives its outcome.
        """
        self.assertEqual(self.successResultOf(run_now(lambda: 3)), 3)
        self.failureResultOf(run_now(lambda: 1 // 0), ZeroDivisionError)

    def test_held(self) -> None:
        """
        L{HeldRunner} runs work only when released, oldest first.
        """
        runner = HeldRunner()
        ran: list[int] = []
        first = runner(lambda: ran.append(1))
        second = runner(lambda: 1 // 0)
        self.assertEqual(ran, [])
        self.assertNoResult(first)
        runner.release()
        self.assertEqual(ran, [1])
        self.successResultOf(first)
        runner.release()
        self.failureResultOf(second, ZeroDivisionError)
        self.assertEqual(runner.held, [])
