# -*- test-case-name: tests.test_polling -*-
"""
Tests for L{tests.polling.poll}, on a L{Clock}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.polling import WaitTimeout, poll


class PollTests(SynchronousTestCase):
    """
    L{poll} checks again every interval until a result or its deadline.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.calls = 0

    def start(self, check: Callable[[], Any], timeout: float = 1.0) -> Deferred[Any]:
        return Deferred.fromCoroutine(poll(check, timeout, "the thing", 0.1, self.clock))

    def test_result(self) -> None:
        """
        C{None} and C{False} mean "not yet"; any other value, C{0}
        included, is the result, checked again only after the interval.
        """
        answers: list[object] = [None, False, 0]

        def check() -> object:
            self.calls += 1
            return answers.pop(0)

        d = self.start(check)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.calls, 2)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), 0)

    def test_awaitable(self) -> None:
        """
        A check may return a L{Deferred} or a coroutine of its answer.
        """
        async def coroutine() -> Optional[str]:
            return "done"

        self.assertEqual(self.successResultOf(self.start(lambda: succeed("yes"))), "yes")
        self.assertEqual(self.successResultOf(self.start(coroutine)), "done")

    def test_timeout(self) -> None:
        """
        Past the deadline, L{WaitTimeout} names what was awaited.
        """
        d = self.start(lambda: None, timeout=0.25)
        self.clock.pump([0.1] * 3)
        failure = self.failureResultOf(d, WaitTimeout)
        self.assertEqual(
            str(failure.value), "timed out after 0.25s waiting for the thing"
        )
