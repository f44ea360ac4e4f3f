# -*- test-case-name: tests.test_storage_committer -*-
"""
Tests for L{twisted_kv.storage.committer}.
"""

from __future__ import annotations

import errno
import random
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted_kv.errors import DiskFull, LogFailed
from twisted_kv.storage.committer import LAZY_WAIT, SYNC_INTERVAL, GroupCommitter, RunInThread
from twisted_kv.storage.fs import OSFileSystem
from twisted_kv.storage.log import Log
from twisted_kv.storage.testing import CrashableFileSystem, Fault, HeldRunner, run_now
from twisted_kv.storage.worker import LogWorker

DIRECTORY = "data/n1"


class _NewsHeld:
    """
    A L{RunInThread} that runs work at once, as an idle thread would, but
    holds the news of it until told: the reactor busy with other work.

    @ivar waiting: the outcomes not delivered yet, oldest first.
    """

    def __init__(self) -> None:
        self.waiting: list[tuple[Deferred[Any], Deferred[Any]]] = []

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        news: Deferred[Any] = Deferred()
        self.waiting.append((maybeDeferred(work), news))
        return news

    def deliver(self, index: int) -> None:
        """
        Let the reactor hear of the outcome at C{index} in L{waiting}.
        """
        outcome, news = self.waiting.pop(index)
        outcome.chainDeferred(news)


class _Setup:
    """
    A committer over a log on a crashable file system, counting writes and
    syncs.
    """

    def __init__(self, policy: str = "always", runner: RunInThread = run_now) -> None:
        self.fs = CrashableFileSystem()
        self.log = Log(self.fs, DIRECTORY)
        list(self.log.replay())
        self.writes = self.fs.inject(Fault("write", errno.EIO, after=2**62))
        self.syncs = self.fs.inject(Fault("sync", errno.EIO, after=2**62))
        self.clock = Clock()
        self.committer = GroupCommitter(self.log, policy, runner, self.clock)

    def recovered(self) -> list[bytes]:
        """
        What a crash would leave of the records.
        """
        crashed = self.fs.crash(random.Random(0))
        return [payload for _, payload in Log(crashed, DIRECTORY).replay()]


class GroupCommitTests(SynchronousTestCase):
    """
    Records appended in one reactor turn go out together.
    """

    def test_one_turn_one_commit(self) -> None:
        """
        Appends in one turn make one write and one sync, at the end of the
        turn; each Deferred fires after the sync.
        """
        setup = _Setup()
        results = [setup.committer.append(1, b"%d" % i) for i in range(10)]
        self.assertNoResult(results[0])
        self.assertEqual(setup.writes.seen, 0)
        setup.clock.advance(0)
        for result in results:
            self.assertIsNone(self.successResultOf(result))
        self.assertEqual((setup.writes.seen, setup.syncs.seen), (1, 1))
        self.assertEqual(setup.recovered(), [b"%d" % i for i in range(10)])
        self.assertEqual(setup.clock.getDelayedCalls(), [])

    def test_pipeline(self) -> None:
        """
        A commit goes to its thread while the one before is in flight, and
        runs as soon as that one is done, before the reactor hears of it;
        appends fire only once the reactor hears of their own commit, in
        order.
        """
        runner = _NewsHeld()
        setup = _Setup(runner=runner)
        first = setup.committer.append(1, b"a")
        setup.clock.advance(0)
        second = setup.committer.append(1, b"b")
        setup.clock.advance(0)
        self.assertEqual((setup.writes.seen, setup.syncs.seen), (2, 2))
        third = setup.committer.append(1, b"c")
        setup.clock.advance(0)
        self.assertEqual(setup.writes.seen, 2)
        runner.deliver(1)
        self.assertNoResult(first)
        self.assertNoResult(second)
        runner.deliver(0)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(setup.writes.seen, 3)
        self.assertNoResult(third)
        runner.deliver(0)
        self.successResultOf(third)
        self.assertEqual(setup.recovered(), [b"a", b"b", b"c"])
        self.assertEqual(setup.clock.getDelayedCalls(), [])

    def test_batch_takes_what_came_meanwhile(self) -> None:
        """
        A commit takes its appends when its thread starts: everything
        appended until then, over several turns, goes in one write.
        """
        runner = HeldRunner()
        setup = _Setup(runner=runner)
        results = [setup.committer.append(1, b"a")]
        setup.clock.advance(0)
        for payload in (b"b", b"c"):
            results.append(setup.committer.append(1, payload))
            setup.clock.advance(0)
        self.assertEqual(len(runner.held), 1)
        runner.release()
        for result in results:
            self.successResultOf(result)
        self.assertEqual((setup.writes.seen, setup.syncs.seen), (1, 1))
        self.assertEqual(runner.held, [])

    def test_lazy_goes_with_the_next_commit(self) -> None:
        """
        A lazy record starts no commit: it goes out, in order, with the
        next record that does, in one write and one sync.
        """
        setup = _Setup()
        lazy = setup.committer.append(1, b"lazy", lazy=True)
        setup.clock.advance(0)
        self.assertNoResult(lazy)
        self.assertEqual(setup.writes.seen, 0)
        urgent = setup.committer.append(1, b"urgent")
        setup.clock.advance(0)
        self.successResultOf(lazy)
        self.successResultOf(urgent)
        self.assertEqual((setup.writes.seen, setup.syncs.seen), (1, 1))
        self.assertEqual(setup.recovered(), [b"lazy", b"urgent"])
        self.assertEqual(setup.clock.getDelayedCalls(), [])

    def test_lazy_waits_a_while(self) -> None:
        """
        Alone, a lazy record goes out after L{LAZY_WAIT} seconds, or at
        L{GroupCommitter.stop} if that comes first.
        """
        setup = _Setup()
        waited = setup.committer.append(1, b"a", lazy=True)
        setup.clock.advance(LAZY_WAIT - 0.01)
        self.assertNoResult(waited)
        setup.clock.advance(0.01)
        self.successResultOf(waited)
        stopped = setup.committer.append(1, b"b", lazy=True)
        self.successResultOf(setup.committer.stop())
        self.successResultOf(stopped)
        self.assertEqual(setup.recovered(), [b"a", b"b"])
        self.assertEqual(setup.clock.getDelayedCalls(), [])

    def test_lazy_behind_exclusive_work(self) -> None:
        """
        A lazy record queued behind exclusive work still goes out within
        L{LAZY_WAIT} once that work is done.
        """
        setup = _Setup()
        first = setup.committer.append(1, b"a", lazy=True)
        setup.committer.exclusive(lambda: None)
        second = setup.committer.append(1, b"b", lazy=True)
        setup.clock.advance(0)
        self.successResultOf(first)
        self.assertNoResult(second)
        setup.clock.advance(LAZY_WAIT)
        self.successResultOf(second)
        self.assertEqual(setup.recovered(), [b"a", b"b"])
        self.assertEqual(setup.clock.getDelayedCalls(), [])

    def test_counts(self) -> None:
        """
        The committer counts its commits, syncs and records, and how long
        commits were in flight.
        """
        runner = HeldRunner()
        setup = _Setup(runner=runner)
        for payload in (b"a", b"b", b"c"):
            setup.committer.append(1, payload)
        setup.clock.advance(0)
        setup.clock.advance(0.25)
        runner.release()
        counts = setup.committer.counts
        self.assertEqual(
            (counts.commits, counts.syncs, counts.records, counts.seconds), (1, 1, 3, 0.25)
        )

    def test_bad_record(self) -> None:
        """
        A record the log cannot hold fails alone, at once.
        """
        setup = _Setup()
        bad = setup.committer.append(300, b"x")
        good = setup.committer.append(1, b"x")
        self.failureResultOf(bad, ValueError)
        setup.clock.advance(0)
        self.successResultOf(good)

    def test_bad_policy(self) -> None:
        """
        The policy is one of the three.
        """
        setup = _Setup()
        self.assertRaises(ValueError, GroupCommitter, setup.log, "sometimes", run_now, setup.clock)


class ExclusiveTests(SynchronousTestCase):
    """
    Other work on the log runs in order with the commits.
    """

    def test_order(self) -> None:
        """
        Work runs after the records appended before it are committed and
        before those appended after: a rotation between two appends of one
        turn puts them in two segments.
        """
        setup = _Setup()
        first = setup.committer.append(1, b"a")
        rotated = setup.committer.exclusive(setup.log.rotate)
        second = setup.committer.append(1, b"b")
        setup.clock.advance(0)
        self.successResultOf(first)
        self.assertEqual(self.successResultOf(rotated), 1)
        self.successResultOf(second)
        removed = setup.committer.exclusive(lambda: setup.log.remove_before(1))
        setup.clock.advance(0)
        self.successResultOf(removed)
        self.assertEqual(list(Log(setup.fs, DIRECTORY).replay(1)), [(1, b"b")])

    def test_waits_for_commit(self) -> None:
        """
        Work waits for the commit in flight.
        """
        runner = HeldRunner()
        setup = _Setup(runner=runner)
        setup.committer.append(1, b"a")
        setup.clock.advance(0)
        rotated = setup.committer.exclusive(setup.log.rotate)
        setup.clock.advance(0)
        self.assertEqual(len(runner.held), 1)
        runner.release()
        self.assertNoResult(rotated)
        runner.release()
        self.assertEqual(self.successResultOf(rotated), 1)

    def test_failure(self) -> None:
        """
        Work that fails fails its own Deferred only; once the log failed,
        work fails at once.
        """
        setup = _Setup()

        def broken() -> None:
            raise ZeroDivisionError()

        result = setup.committer.exclusive(broken)
        setup.clock.advance(0)
        self.failureResultOf(result, ZeroDivisionError)
        setup.fs.inject(Fault("sync", errno.EIO))
        self.failureResultOf(self._advanced(setup, setup.committer.append(1, b"a")), LogFailed)
        self.failureResultOf(setup.committer.exclusive(setup.log.rotate), LogFailed)

    def _advanced(self, setup: _Setup, result: "Deferred[None]") -> "Deferred[None]":
        setup.clock.advance(0)
        return result


class ErrorTests(SynchronousTestCase):
    """
    Disk errors fail the records they concern, and a failed sync all.
    """

    def test_disk_full(self) -> None:
        """
        A full disk fails the batch with L{DiskFull}; later appends work.
        """
        setup = _Setup()
        setup.fs.inject(Fault("write", errno.ENOSPC))
        lost = setup.committer.append(1, b"lost")
        setup.clock.advance(0)
        self.failureResultOf(lost, DiskFull)
        kept = setup.committer.append(1, b"kept")
        setup.clock.advance(0)
        self.successResultOf(kept)
        self.assertEqual(setup.recovered(), [b"kept"])

    def test_sync_fails(self) -> None:
        """
        A failed sync fails the batch, the records collected meanwhile and
        every later one with L{LogFailed}, and leaves no timer behind.
        """
        runner = HeldRunner()
        setup = _Setup(runner=runner)
        setup.fs.inject(Fault("sync", errno.EIO))
        first = setup.committer.append(1, b"a")
        setup.clock.advance(0)
        waiting = setup.committer.append(1, b"b")
        runner.release()
        self.failureResultOf(first, LogFailed)
        self.failureResultOf(waiting, LogFailed)
        self.failureResultOf(setup.committer.append(1, b"c"), LogFailed)
        self.failureResultOf(setup.committer.stop(), LogFailed)
        self.assertTrue(setup.committer.failed)
        self.assertEqual(runner.held, [])
        self.assertEqual(setup.clock.getDelayedCalls(), [])

    def two_in_pipeline(self, fault: Fault) -> tuple[_NewsHeld, _Setup, Deferred, Deferred]:
        """
        Two appends, each in a commit of its own, both handed to threads
        that hold their news; C{fault} injected first.
        """
        runner = _NewsHeld()
        setup = _Setup(runner=runner)
        setup.fs.inject(fault)
        first = setup.committer.append(1, b"a")
        setup.clock.advance(0)
        second = setup.committer.append(1, b"b")
        setup.clock.advance(0)
        return runner, setup, first, second

    def test_sync_fails_in_pipeline(self) -> None:
        """
        A failed sync fails the commit after it too, which the log refuses
        although it ran before the reactor heard of the failure, and every
        later append.
        """
        runner, setup, first, second = self.two_in_pipeline(Fault("sync", errno.EIO))
        self.assertEqual(setup.writes.seen, 1)
        runner.deliver(0)
        self.failureResultOf(first, LogFailed)
        runner.deliver(0)
        self.failureResultOf(second, LogFailed)
        self.failureResultOf(setup.committer.append(1, b"c"), LogFailed)
        self.assertEqual(runner.waiting, [])
        self.assertEqual(setup.clock.getDelayedCalls(), [])

    def test_write_fails_in_pipeline(self) -> None:
        """
        A failed write fails its own commit only: the commit after it
        writes after the file was cut back, and is acknowledged.
        """
        runner, setup, first, second = self.two_in_pipeline(Fault("write", errno.ENOSPC))
        runner.deliver(0)
        self.failureResultOf(first, DiskFull)
        runner.deliver(0)
        self.successResultOf(second)
        self.assertEqual(setup.recovered(), [b"b"])


class PolicyTests(SynchronousTestCase):
    """
    C{never} and C{everysec} acknowledge after the write.
    """

    def test_never(self) -> None:
        """
        C{never} fires after the write and never syncs, except on L{stop}.
        """
        setup = _Setup("never")
        result = setup.committer.append(1, b"a")
        setup.clock.advance(0)
        self.successResultOf(result)
        setup.clock.advance(10)
        self.assertEqual((setup.writes.seen, setup.syncs.seen), (1, 0))
        self.successResultOf(setup.committer.stop())
        self.assertEqual(setup.syncs.seen, 1)

    def test_everysec(self) -> None:
        """
        C{everysec} fires after the write, and syncs a second later.
        """
        setup = _Setup("everysec")
        result = setup.committer.append(1, b"a")
        setup.clock.advance(0)
        self.successResultOf(result)
        self.assertEqual(setup.syncs.seen, 0)
        setup.clock.advance(SYNC_INTERVAL)
        self.assertEqual(setup.syncs.seen, 1)
        self.assertEqual(setup.clock.getDelayedCalls(), [])

    def test_everysec_with_commit(self) -> None:
        """
        When the second is up while a commit waits for its thread, that
        commit syncs, and no separate sync is made.
        """
        runner = HeldRunner()
        setup = _Setup("everysec", runner)
        setup.committer.append(1, b"a")
        setup.clock.advance(0)
        runner.release()
        self.assertEqual(setup.syncs.seen, 0)
        setup.committer.append(1, b"b")
        setup.clock.advance(0)
        setup.clock.advance(SYNC_INTERVAL)
        setup.committer.append(1, b"c")
        runner.release()
        self.assertEqual((setup.writes.seen, setup.syncs.seen), (2, 1))
        self.assertEqual(runner.held, [])

    def test_stop(self) -> None:
        """
        L{stop} commits what collected and syncs it, then fires, leaving no
        timer.
        """
        setup = _Setup("everysec")
        setup.committer.append(1, b"a")
        setup.clock.advance(0)
        setup.committer.append(1, b"b")
        done = setup.committer.stop()
        self.successResultOf(done)
        self.assertEqual(setup.syncs.seen, 1)
        self.assertEqual(setup.recovered(), [b"a", b"b"])
        self.assertEqual(setup.clock.getDelayedCalls(), [])


    def test_stop_during_sync(self) -> None:
        """
        L{stop} called while the C{everysec} sync is in flight still syncs
        what is appended after that sync began.
        """
        runner = HeldRunner()
        setup = _Setup("everysec", runner)
        setup.committer.append(1, b"a")
        setup.clock.advance(0)
        runner.release()
        setup.clock.advance(SYNC_INTERVAL)
        setup.committer.append(1, b"b")
        stopped = setup.committer.stop()
        while runner.held:
            runner.release()
        self.successResultOf(stopped)
        self.assertEqual(setup.recovered(), [b"a", b"b"])
        self.assertEqual(setup.clock.getDelayedCalls(), [])


class ThreadTests(TestCase):
    """
    The committer with a real thread and file system.
    """

    def threaded_committer(self) -> tuple[GroupCommitter, Callable[[], list[tuple[int, bytes]]]]:
        """
        A committer over a new log on disk, committing on a thread of its
        own, and a function that reads the log back, as a restart would.
        """
        fs = OSFileSystem()
        directory = self.mktemp()
        log = Log(fs, directory)
        list(log.replay())
        self.addCleanup(log.close)
        threaded: Any = reactor
        worker = LogWorker(threaded, "test log")
        self.addCleanup(worker.stop)
        committer = GroupCommitter(log, "always", worker, threaded)

        def read_back() -> list[tuple[int, bytes]]:
            again = Log(fs, directory)
            try:
                return list(again.replay())
            finally:
                again.close()

        return committer, read_back

    def test_threads(self) -> Deferred[None]:
        """
        Appends fire once their records are on disk.
        """
        committer, read_back = self.threaded_committer()
        results = [committer.append(1, b"%d" % i) for i in range(5)]

        def check(_: object) -> None:
            self.assertEqual(read_back(), [(1, b"%d" % i) for i in range(5)])

        return gatherResults(results).addCallback(check)

    def test_pipelined_threads(self) -> Deferred[None]:
        """
        With commits pipelined on the thread, the log takes them in the
        order they were made, and each append fires only once its record
        is on disk, in order.
        """
        committer, read_back = self.threaded_committer()
        threaded: Any = reactor
        payloads = [b"%d" % i for i in range(200)]
        fired: list[bytes] = []
        results = []

        def append(index: int) -> None:
            for payload in payloads[index : index + 10]:
                results.append(committer.append(1, payload).addCallback(
                    lambda _, payload=payload: fired.append(payload)
                ))
            if index + 10 < len(payloads):
                threaded.callLater(0, append, index + 10)
            else:
                gatherResults(results).chainDeferred(done)

        done: Deferred[list[None]] = Deferred()
        append(0)

        def check(_: object) -> None:
            self.assertEqual(fired, payloads)
            self.assertEqual([payload for _, payload in read_back()], payloads)

        return done.addCallback(check)
