"""
Tests for L{twisted_kv.cluster.deadlines}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.cluster.deadlines import Deadlines


class DeadlinesTests(SynchronousTestCase):
    def test_cancelled_at_deadline(self) -> None:
        """
        A Deferred still pending when a sweep reaches its deadline is
        cancelled; one whose deadline is later is left alone.
        """
        deadlines = Deadlines()
        early = deadlines.limit(Deferred(), 1.0)
        late = deadlines.limit(Deferred(), 2.0)
        deadlines.sweep(0.99)
        self.assertNoResult(early)
        deadlines.sweep(1.0)
        self.failureResultOf(early, CancelledError)
        self.assertNoResult(late)
        self.assertEqual(len(deadlines), 1)

    def test_canceller_runs(self) -> None:
        """
        The Deferred's canceller runs, and may give its own result.
        """
        deadlines = Deadlines()
        d: Deferred[str] = Deferred(lambda d: d.callback("gave up"))
        deadlines.limit(d, 1.0)
        deadlines.sweep(5.0)
        self.assertEqual(self.successResultOf(d), "gave up")

    def test_fired_forgotten(self) -> None:
        """
        A Deferred that fires before its deadline is forgotten at once, keeps
        its result, and is not touched by later sweeps.
        """
        deadlines = Deadlines()
        d: Deferred[int] = deadlines.limit(Deferred(), 1.0)
        d.callback(7)
        self.assertEqual(len(deadlines), 0)
        deadlines.sweep(5.0)
        self.assertEqual(self.successResultOf(d), 7)

    def test_failure_passes_through(self) -> None:
        """
        A failure before the deadline reaches the Deferred's callbacks
        unchanged.
        """
        deadlines = Deadlines()
        d: Deferred[None] = deadlines.limit(Deferred(), 1.0)
        d.errback(ValueError("no"))
        self.failureResultOf(d, ValueError)
        self.assertEqual(len(deadlines), 0)

    def test_tracked_until_settled(self) -> None:
        """
        A tracked Deferred gets no callback: it is cancelled at its deadline
        unless its owner settles it first.
        """
        deadlines = Deadlines()
        settled: Deferred[None] = Deferred()
        deadlines.settle(deadlines.track(settled, 1.0))
        forgotten: Deferred[None] = Deferred()
        deadlines.track(forgotten, 1.0)
        self.assertEqual(len(deadlines), 1)
        deadlines.sweep(1.0)
        self.assertNoResult(settled)
        self.failureResultOf(forgotten, CancelledError)
        self.assertEqual(len(deadlines), 0)
