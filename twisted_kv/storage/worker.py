# -*- test-case-name: tests.test_storage_worker -*-
"""
A thread of the log's own, for its writes and syncs.

A L{LogWorker} is a L{twisted_kv.storage.committer.RunInThread} that runs
work on one long-lived thread, in the order it was given, and tells the
reactor of each outcome with one C{callFromThread}.  It replaces, for the
committer, the reactor's shared pool (C{deferToThreadPool}), whose hand-off
(the pool's coordinator and its locks, a context copy, a worker picked per
call) cost 20-45 us more CPU per commit under CPython
(docs/performance.md).
"""

from __future__ import annotations

import threading
from queue import SimpleQueue
from typing import Any, Callable, Optional, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

# Tells the thread to end (see LogWorker.stop).
_STOP = None


class LogWorker:
    """
    Runs work on a thread of its own, one piece at a time, in order.

    @ivar name: the thread's name.
    """

    def __init__(self, reactor: IReactorFromThreads, name: str = "log") -> None:
        self._reactor = reactor
        self.name = name
        self._work: SimpleQueue[Optional[tuple[Callable[[], Any], Deferred[Any]]]] = (
            SimpleQueue()
        )
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def __call__(self, work: Callable[[], Any]) -> "Deferred[Any]":
        """
        Run C{work} on the thread once the work given before is done.

        @return: a Deferred that fires, in the reactor thread, with
            C{work}'s result, or fails with its exception.
        """
        if self._stopped:
            raise RuntimeError(f"the {self.name} thread was stopped")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        done: Deferred[Any] = Deferred()
        self._work.put((work, done))
        return done

    def _run(self) -> None:
        deliver = self._reactor.callFromThread
        take = self._work.get
        while True:
            item = take()
            if item is _STOP:
                return
            work, done = item
            outcome: Union[Any, Failure]
            try:
                outcome = work()
            except BaseException:
                outcome = Failure()
            deliver(_fire, done, outcome)

    def stop(self) -> None:
        """
        End the thread once the work given so far is done, and wait for
        it; nothing may be given after.
        """
        self._stopped = True
        if self._thread is not None:
            self._work.put(_STOP)
            self._thread.join()
            self._thread = None


def _fire(done: "Deferred[Any]", outcome: Any) -> None:
    if isinstance(outcome, Failure):
        done.errback(outcome)
    else:
        done.callback(outcome)
