# -*- test-case-name: tests.test_storage_committer -*-
"""
Group commit of a L{Log} off the reactor thread.

Records appended during one reactor turn go out together, in one write and
(with C{fsync = always}) one sync, run in a thread so the reactor keeps
serving meanwhile.  Commits are pipelined: while one syncs, the next is
already queued for the thread, behind it; it takes its records when it
starts (everything appended by then), so it follows at once, without
waiting for the reactor to hear that the first is done, and under load
batches grow with the disk's latency, and the number of syncs per second
stays bounded by it rather than by the request rate.  The thread runs
commits one at a time, in the order they were made, and the reactor
answers them in that order.

Each append's Deferred fires once its record is as durable as the policy
asks:

  - C{always}: after the sync of its batch;
  - C{everysec}: after the write of its batch; a sync follows within about a
    second (a power cut may lose that second);
  - C{never}: after the write (the kernel writes it out when it likes).

Other work on the log (starting a segment before a snapshot, removing the
segments a snapshot covers) goes through L{GroupCommitter.exclusive}, in
order with the commits, so that only one thread ever uses the log.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Deque, Optional, TypeVar, Union

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from twisted_kv.errors import LogFailed
from twisted_kv.storage.log import Log, encode_record

T = TypeVar("T")

RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]
"""
Runs a function in a thread and fires with its result, one function at a
time, in the order given: production passes a
L{twisted_kv.storage.worker.LogWorker}, tests a function that runs it at
once, or later.
"""

POLICIES = ("always", "everysec", "never")
# How long, at most, C{everysec} leaves written records unsynced.
SYNC_INTERVAL = 1.0


# How long, at most, a lazy record waits for a commit to go out with: under
# load the next request's records come within milliseconds, and a node that
# crashes rarely comes back with its latest writes still to be committed
# again.
LAZY_WAIT = 0.1

# How many commits may be in flight at once: one syncing, and the next one
# queued behind it to follow at once (a third would only split the
# second's batch).
PIPELINE = 2


@frozen
class _Append:
    record: bytes
    done: "Deferred[None]"
    # Nothing waits for it: it goes out with the next commit (see
    # GroupCommitter.append).
    lazy: bool = False


@frozen
class _Exclusive:
    work: Callable[[], Any]
    done: "Deferred[Any]"


_PENDING = object()


@define
class _Commit:
    """
    Work handed to a thread: a commit of appends, a sync or exclusive work.

    @ivar batch: what to fire with its outcome; L{None} for a commit of
        appends, which takes them in its thread (its outcome says which).
    @ivar outcome: its result or L{Failure} once the thread is done, until
        then L{_PENDING}.
    """

    batch: Optional[list["Deferred[Any]"]]
    sync: bool
    started: float
    outcome: Any = _PENDING


@define
class CommitCounts:
    """
    What a L{GroupCommitter} did since it started, for the metrics.

    @ivar commits: commits run (each one write of a batch).
    @ivar syncs: commits that synced, and syncs on their own.
    @ivar records: records the commits carried.
    @ivar seconds: how long commits were in flight, in all: from the
        hand-off to the thread until the reactor heard back.
    """

    commits: int = 0
    syncs: int = 0
    records: int = 0
    seconds: float = 0.0


@define
class GroupCommitter:
    """
    Appends records to C{log} in groups, firing one Deferred per record.

    @ivar log: the log, replayed; nothing else may use it from now on
        (other work on it goes through L{exclusive}).
    @ivar policy: one of L{POLICIES}.
    @ivar run_in_thread: see L{RunInThread}.
    @ivar clock: schedules the flush at the end of the reactor turn and the
        C{everysec} syncs.
    """

    log: Log
    policy: str
    run_in_thread: RunInThread
    clock: IReactorTime
    # Appends and exclusive work not started yet, in call order.
    _queue: Deque[Union[_Append, _Exclusive]] = field(factory=deque, init=False)
    # Held while a commit's thread takes from the queue's head (L{_take})
    # and while the reactor looks at the head or through the queue: a look
    # between a thread's test and its pop saw an item that then vanished
    # (an IndexError under load, as a log moved to its next file).
    _queue_lock: threading.Lock = field(factory=threading.Lock, init=False)
    _flush_call: Optional[IDelayedCall] = field(default=None, init=False)
    _sync_call: Optional[IDelayedCall] = field(default=None, init=False)
    _lazy_call: Optional[IDelayedCall] = field(default=None, init=False)
    # How many of the queued items are not lazy: only they start a commit.
    _urgent: int = field(default=0, init=False)
    # The lazy records waited long enough: the next commit takes them.
    _lazy_due: bool = field(default=False, init=False)
    # Work handed to the thread, oldest first, until the reactor hears back.
    _in_flight: Deque[_Commit] = field(factory=deque, init=False)
    # Commits done are being answered (see L{_done}).
    _answering: bool = field(default=False, init=False)
    # A commit handed out has yet to take its appends (L{_take}).
    _taker_waiting: bool = field(default=False, init=False)
    # Records were written and not synced since.
    _unsynced: bool = field(default=False, init=False)
    # The next commit syncs (the everysec timer fired).
    _sync_wanted: bool = field(default=False, init=False)
    _failure: Optional[Failure] = field(default=None, init=False)
    # While L{stop} waits, every commit syncs.
    _stopping: list["Deferred[None]"] = field(factory=list, init=False)
    counts: CommitCounts = field(factory=CommitCounts, init=False)

    def __attrs_post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"fsync policy {self.policy!r} is not one of {POLICIES}")

    def append(self, record_type: int, payload: bytes, lazy: bool = False) -> "Deferred[None]":
        """
        Append a record, to go out with everything else appended in this
        reactor turn.

        @param lazy: nothing waits for this record, and losing it in a
            crash is harmless: it does not start a commit of its own, but
            goes out with the next one (within L{LAZY_WAIT} seconds, or at
            L{stop}), so that it costs no sync.

        @return: a Deferred that fires with L{None} once the record is as
            durable as the policy asks, or fails, in which case the record
            must not be acknowledged (it may or may not be found after a
            crash): with L{twisted_kv.errors.DiskFull} if the disk was full
            (later appends may succeed), L{twisted_kv.errors.WriteFailed}
            for another write error, L{twisted_kv.errors.LogFailed} if a
            sync of the log ever failed (every later append fails too), or
            C{ValueError} for a record the log cannot hold.
        """
        if self._failure is not None:
            return fail(self._failure)
        try:
            record = encode_record(record_type, payload)
        except ValueError:
            return fail()
        done: Deferred[None] = Deferred()
        if lazy:
            self._queue.append(_Append(record, done, lazy=True))
            if self._lazy_call is None:
                self._lazy_call = self.clock.callLater(LAZY_WAIT, self._lazy_waited)
        else:
            self._enqueue(_Append(record, done))
        return done

    def _lazy_waited(self) -> None:
        self._lazy_call = None
        self._lazy_due = True
        if self._flush_call is None and len(self._in_flight) < PIPELINE:
            self._next()

    def exclusive(self, work: Callable[[], T]) -> "Deferred[T]":
        """
        Run C{work} on the log in a thread, after everything appended
        before has been committed and before anything appended after.

        For a snapshot: C{exclusive(log.rotate)} fires with the segment the
        snapshot covers up to; the snapshot is written (in a thread, not
        through here, so that commits go on meanwhile); then
        C{exclusive(lambda: log.remove_before(covers))}.

        @return: a Deferred that fires with C{work}'s result, or fails with
            its exception (L{twisted_kv.errors.LogFailed} at once if the
            log failed).
        """
        if self._failure is not None:
            return fail(self._failure)
        done: Deferred[T] = Deferred()
        self._enqueue(_Exclusive(work, done))
        return done

    def _enqueue(self, item: Union[_Append, _Exclusive]) -> None:
        self._queue.append(item)
        self._urgent += 1
        if self._flush_call is None and len(self._in_flight) < PIPELINE:
            self._flush_call = self.clock.callLater(0, self._next)

    def _flush(self) -> None:
        """
        Hand a commit to a thread: once the commit before it is done, it
        takes every append at the head of the queue by then (L{_take}),
        so that a batch holds everything appended while the previous one
        synced.
        """
        self._taker_waiting = True
        self._lazy_due = False
        if self._lazy_call is not None:
            self._lazy_call.cancel()
            self._lazy_call = None
        self._start(self._commit_taken, None, False)

    def _take(self) -> list[_Append]:
        """
        In a thread: take the appends at the head of the queue.  The
        reactor adds to the queue's end meanwhile, and takes from its head
        only while no commit is in flight.
        """
        self._taker_waiting = False
        queue = self._queue
        taken = []
        with self._queue_lock:
            while queue and isinstance(queue[0], _Append):
                taken.append(queue.popleft())
        return taken

    def _commit_taken(self) -> tuple[list[_Append], bool, Optional[Failure]]:
        """
        In a thread: commit what L{_take} takes, in one write and, if the
        policy asks, one sync.

        @return: what was taken, whether it was synced, and why the commit
            failed if it did.
        """
        taken = self._take()
        sync = self.policy == "always" or self._sync_wanted or bool(self._stopping)
        if not taken:
            return taken, False, None
        try:
            self.log.write(b"".join([item.record for item in taken]), sync)
        except BaseException:
            # (a test's power cut is not an Exception)
            return taken, sync, Failure()
        return taken, sync, None

    def _start(
        self, work: Callable[[], Any], batch: Optional[list["Deferred[Any]"]], sync: bool
    ) -> None:
        """
        Hand C{work} to the thread, to run once the work handed out before
        it is done.

        @param batch: what to fire with its outcome, or L{None} for
            L{_commit_taken}, whose outcome says.
        """
        commit = _Commit(batch, sync, self.clock.seconds())
        self._in_flight.append(commit)
        self.run_in_thread(work).addBoth(self._done, commit)

    def _done(self, outcome: Any, commit: _Commit) -> None:
        """
        Back in the reactor: answer the commits done, in the order they
        were made, each after starting what comes next (answering can keep
        the reactor busy for a while, and the disk would idle meanwhile).
        """
        commit.outcome = outcome
        if self._answering:
            # A thread that runs work at once (tests) ended it while the
            # commits before are answered: it is answered after them.
            return
        self._answering = True
        try:
            in_flight = self._in_flight
            while in_flight and in_flight[0].outcome is not _PENDING:
                self._answer(in_flight.popleft())
        finally:
            self._answering = False
        if self._failure is None:
            self._next()

    def _answer(self, done: _Commit) -> None:
        """
        Account for a commit done, start what comes next, then fire what
        waited for it.
        """
        counts = self.counts
        counts.seconds += self.clock.seconds() - done.started
        outcome, batch, sync = done.outcome, done.batch, done.sync
        if batch is None:
            taken, sync, failure = outcome
            batch = [item.done for item in taken]
            if taken:
                counts.commits += 1
                counts.records += len(taken)
                self._urgent -= sum(not item.lazy for item in taken)
            outcome = failure
            if self._lazy_call is None and self._lazy_queued():
                # Lazy records this commit did not take (behind exclusive
                # work) still go out in time.
                self._lazy_call = self.clock.callLater(LAZY_WAIT, self._lazy_waited)
        counts.syncs += sync and not isinstance(outcome, Failure)
        if isinstance(outcome, Failure):
            if self._failure is None and (outcome.check(LogFailed) or self.log.failed):
                self._fail(outcome)
        elif sync:
            self._unsynced = self._sync_wanted = False
        elif batch:
            self._unsynced = True
            if self.policy == "everysec" and self._sync_call is None and not self._stopping:
                self._sync_call = self.clock.callLater(SYNC_INTERVAL, self._sync_due)
        if self._failure is None:
            self._next()
        for waiting in batch:
            if isinstance(outcome, Failure):
                waiting.errback(outcome)
            else:
                waiting.callback(outcome)

    def _sync_due(self) -> None:
        """
        The C{everysec} timer: sync now, or with the next commit if one is
        on its way.
        """
        self._sync_call = None
        self._sync_wanted = True
        if not self._in_flight and self._flush_call is None:
            self._next()

    def _next(self) -> None:
        """
        Start what comes next, as far as the pipeline allows: the appends
        at the head of the queue, or the exclusive work there once nothing
        else is in flight; or, once everything is done, the sync that is
        due, or tell L{stop} that everything is done.
        """
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        queue = self._queue
        head = self._head() if self._wants_commit() else None
        if head is not None:
            if isinstance(head, _Append):
                if not self._taker_waiting and len(self._in_flight) < PIPELINE:
                    self._flush()
            elif not self._in_flight:
                # Runs alone, and syncs as it likes: say nothing about
                # what is unsynced.
                queue.popleft()
                self._urgent -= 1
                self._start(head.work, [head.done], False)
            return
        if self._in_flight:
            return
        if (self._sync_wanted or self._stopping) and self._unsynced:
            self._start(self.log.sync, [], True)
        else:
            self._sync_wanted = False
            stopping, self._stopping = self._stopping, []
            for done in stopping:
                done.callback(None)

    def _head(self) -> Optional[Union[_Append, _Exclusive]]:
        """
        The first item queued, or C{None}.
        """
        with self._queue_lock:
            return self._queue[0] if self._queue else None

    def _lazy_queued(self) -> bool:
        """
        Whether lazy records wait in the queue.
        """
        with self._queue_lock:
            return any(isinstance(item, _Append) and item.lazy for item in self._queue)

    def _wants_commit(self) -> bool:
        """
        Whether what is queued should go out now: something waits for it,
        or only lazy records are queued and they waited long enough, or
        L{stop} waits.
        """
        return bool(self._urgent or self._lazy_due or self._stopping)

    def _fail(self, failure: Failure) -> None:
        """
        The log failed: fail everything waiting.  What a commit in flight
        takes (L{_take}) fails in its thread, at once, and is answered when
        the commit is done; every append still queued fails now, taken
        from the queue one by one, as such a thread does.
        """
        self._failure = failure
        for commit in self._in_flight:
            if commit.batch is not None:
                batch, commit.batch = commit.batch, []
                for done in batch:
                    done.errback(failure)
        for call in (self._flush_call, self._sync_call, self._lazy_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._sync_call = self._lazy_call = None
        queue = self._queue
        while queue:
            try:
                item = queue.popleft()
            except IndexError:
                break
            item.done.errback(failure)
        stopping, self._stopping = self._stopping, []
        for done in stopping:
            done.errback(failure)

    @property
    def failed(self) -> bool:
        """
        Whether a sync of the log failed: every append fails from now on.
        """
        return self._failure is not None

    def stop(self) -> "Deferred[None]":
        """
        Commit everything appended and sync it, whatever the policy (after
        a clean shutdown, everything acknowledged is durable), and cancel
        the timers.

        @return: a Deferred that fires once done, or fails with
            L{twisted_kv.errors.LogFailed} if the log failed.
        """
        if self._failure is not None:
            return fail(self._failure)
        for call in (self._flush_call, self._sync_call, self._lazy_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._sync_call = self._lazy_call = None
        done: Deferred[None] = Deferred()
        self._stopping.append(done)
        if not self._in_flight:
            self._next()
        return done
