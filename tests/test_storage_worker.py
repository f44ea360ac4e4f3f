# -*- test-case-name: tests.test_storage_worker -*-
"""
Tests for L{twisted_kv.storage.worker}.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from twisted_kv.storage.testing import PowerCut
from twisted_kv.storage.worker import LogWorker


class LogWorkerTests(TestCase):
    """
    L{LogWorker} runs work on one thread of its own, in order, and fires
    each outcome in the reactor thread.
    """

    def worker(self) -> LogWorker:
        threaded: Any = reactor
        worker = LogWorker(threaded, "test log")
        self.addCleanup(worker.stop)
        return worker

    def test_in_order_on_one_thread(self) -> Deferred[None]:
        """
        Work runs in the order given, all on the same thread, which is not
        the reactor's; the outcomes fire in the reactor thread, in order.
        """
        worker = self.worker()
        ran: list[tuple[int, int]] = []
        fired: list[int] = []

        def work(index: int) -> int:
            ran.append((index, threading.get_ident()))
            return index * 10

        def outcome(result: int) -> None:
            self.assertIs(threading.current_thread(), threading.main_thread())
            fired.append(result)

        results = [worker(lambda index=index: work(index)).addCallback(outcome) for index in range(50)]

        def check(_: object) -> None:
            self.assertEqual([index for index, _ in ran], list(range(50)))
            self.assertEqual(len({ident for _, ident in ran}), 1)
            self.assertNotEqual(ran[0][1], threading.get_ident())
            self.assertEqual(fired, [index * 10 for index in range(50)])

        return gatherResults(results).addCallback(check)

    def test_failure(self) -> Deferred[None]:
        """
        Work that raises fails its Deferred with the exception, a
        C{BaseException} (a test's power cut) included; the thread goes on
        with the next work.
        """
        worker = self.worker()

        def fails() -> None:
            raise OSError(5, "Input/output error")

        def cut() -> None:
            raise PowerCut()

        failed = self.assertFailure(worker(fails), OSError)
        power_cut = self.assertFailure(worker(cut), PowerCut)
        after = worker(lambda: "after")
        return gatherResults([failed, power_cut, after]).addCallback(
            lambda results: self.assertEqual(results[2], "after")
        )

    def test_stop(self) -> None:
        """
        L{LogWorker.stop} lets the work given so far finish, ends the
        thread, and refuses work given after.
        """
        worker = LogWorker(reactor, "test log")  # type: ignore[arg-type]
        ran = threading.Event()
        worker(ran.set)
        worker.stop()
        self.assertTrue(ran.is_set())
        self.assertEqual(
            [thread for thread in threading.enumerate() if thread.name == "test log"], []
        )
        self.assertRaises(RuntimeError, worker, lambda: None)

    def test_stop_unused(self) -> None:
        """
        A worker never given work starts no thread, and stops at once.
        """
        worker = LogWorker(reactor, "test log")  # type: ignore[arg-type]
        worker.stop()
        self.assertEqual(
            [thread for thread in threading.enumerate() if thread.name == "test log"], []
        )
