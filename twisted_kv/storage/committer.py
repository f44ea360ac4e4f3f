# -*- test-case-name: tests.test_storage_committer -*-
"""
Group commit of a L{Log} off the reactor thread.

Records appended during one reactor turn go out together, in one write and
(with C{fsync = always}) one sync, run in a thread so the reactor keeps
serving meanwhile.  One commit is in flight at a time; what is appended
during it collects into the next batch, so under load batches grow and the
number of syncs per second stays bounded by the disk's latency rather than
by the request rate.

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

from collections import deque
from typing import Any, Callable, Deque, Optional, TypeVar, Union

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from twisted_kv.errors import LogFailed
from twisted_kv.storage.log import Log, check_record

T = TypeVar("T")

RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]
"""
Runs a function in a thread and fires with its result: production passes
C{functools.partial(threads.deferToThreadPool, reactor, pool)}, tests a
function that runs it at once.
"""

POLICIES = ("always", "everysec", "never")
# How long, at most, C{everysec} leaves written records unsynced.
SYNC_INTERVAL = 1.0


@frozen
class _Append:
    record_type: int
    payload: bytes
    done: "Deferred[None]"


@frozen
class _Exclusive:
    work: Callable[[], Any]
    done: "Deferred[Any]"


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
    _flush_call: Optional[IDelayedCall] = field(default=None, init=False)
    _sync_call: Optional[IDelayedCall] = field(default=None, init=False)
    _in_flight: bool = field(default=False, init=False)
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

    def append(self, record_type: int, payload: bytes) -> "Deferred[None]":
        """
        Append a record, to go out with everything else appended in this
        reactor turn.

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
            check_record(record_type, payload)
        except ValueError:
            return fail()
        done: Deferred[None] = Deferred()
        self._enqueue(_Append(record_type, payload, done))
        return done

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
        if not self._in_flight and self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._next)

    def _flush(self) -> None:
        """
        Send the appends at the head of the queue out in one commit, in a
        thread.
        """
        batch = []
        queue = self._queue
        while queue and isinstance(queue[0], _Append):
            item = queue.popleft()
            assert isinstance(item, _Append)
            self.log.append(item.record_type, item.payload)
            batch.append(item.done)
        sync = self.policy == "always" or self._sync_wanted or bool(self._stopping)
        self.counts.commits += 1
        self.counts.records += len(batch)
        self._run(lambda: self.log.commit(sync), batch, sync)

    def _run(self, work: Callable[[], Any], batch: list["Deferred[Any]"], sync: bool) -> None:
        self._in_flight = True
        self.counts.syncs += sync
        self.run_in_thread(work).addCallbacks(
            self._committed,
            self._commit_failed,
            callbackArgs=(batch, sync, self.clock.seconds()),
            errbackArgs=(batch,),
        )

    def _committed(
        self, result: Any, batch: list["Deferred[Any]"], sync: bool, started: float
    ) -> None:
        self._in_flight = False
        self.counts.seconds += self.clock.seconds() - started
        if sync:
            self._unsynced = self._sync_wanted = False
        elif batch:
            self._unsynced = True
            if self.policy == "everysec" and self._sync_call is None and not self._stopping:
                self._sync_call = self.clock.callLater(SYNC_INTERVAL, self._sync_due)
        if self._queue:
            # The next batch goes to the disk before this one is answered:
            # answering can keep the reactor busy for a while, and the disk
            # would idle meanwhile.
            self._next()
        for done in batch:
            done.callback(result)
        if not self._in_flight:
            self._next()

    def _commit_failed(self, failure: Failure, batch: list["Deferred[Any]"]) -> None:
        self._in_flight = False
        for done in batch:
            done.errback(failure)
        if failure.check(LogFailed) or self.log.failed:
            self._fail(failure)
        elif not self._in_flight:
            self._next()

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
        Start what comes next: the appends or the work at the head of the
        queue, or the sync that is due; or tell L{stop} that everything is
        done.
        """
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self._queue:
            head = self._queue[0]
            if isinstance(head, _Exclusive):
                self._queue.popleft()
                # Syncs as it likes; say nothing about what is unsynced.
                self._run(head.work, [head.done], False)
            else:
                self._flush()
        elif (self._sync_wanted or self._stopping) and self._unsynced:
            self._run(self.log.sync, [], True)
        else:
            self._sync_wanted = False
            stopping, self._stopping = self._stopping, []
            for done in stopping:
                done.callback(None)

    def _fail(self, failure: Failure) -> None:
        self._failure = failure
        for call in (self._flush_call, self._sync_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._sync_call = None
        queue, self._queue = self._queue, deque()
        for item in queue:
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
        for call in (self._flush_call, self._sync_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._sync_call = None
        done: Deferred[None] = Deferred()
        self._stopping.append(done)
        if not self._in_flight:
            self._next()
        return done
