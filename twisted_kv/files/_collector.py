# -*- test-case-name: tests.test_files -*-
"""
Periodic collection of orphaned chunks.

The decision is L{twisted_kv.files._records.collectable}; the work is
L{FileSystem.sweep}; this module only runs it on a clock.  Every node may
run a collector: the conditional deletion of a lease decides which one
deletes an upload's chunks.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_kv.files._fs import FileSystem


class OrphanCollector:
    """
    Sweep a file system every C{interval} seconds of C{clock}.

    @ivar collected: uploads collected since the collector was created.
    """

    _log = Logger()

    def __init__(self, fs: FileSystem, clock: IReactorTime, interval: float = 300.0) -> None:
        self.collected = 0
        self._fs = fs
        self._interval = interval
        self._loop = LoopingCall(self._sweep)
        self._loop.clock = clock

    @property
    def running(self) -> bool:
        return self._loop.running

    def start(self) -> None:
        """
        Sweep every C{interval} seconds, the first time after one interval.
        """
        if not self._loop.running:
            self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _sweep(self) -> Deferred[None]:
        def count(collected: int) -> None:
            self.collected += collected

        def report(failure: Failure) -> None:
            self._log.failure("Collecting orphaned chunks failed", failure)

        return self._fs.sweep().addCallbacks(count, report)
