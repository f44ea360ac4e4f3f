# -*- test-case-name: tests.test_autobahn_timer -*-
"""
Tests for L{twisted_kv._autobahn_timer}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv._autobahn_timer import ClockTimer, cancel_close_timeout


class ClockTimerTests(SynchronousTestCase):
    """
    L{ClockTimer} runs Autobahn's timeouts on the clock it is given.
    """

    def test_call_later(self) -> None:
        """
        A call runs when the clock reaches its time, with its arguments.
        """
        clock = Clock()
        calls: list = []
        ClockTimer(clock).call_later(2.0, lambda *args, **kwargs: calls.append((args, kwargs)), 1, b=2)
        clock.advance(1.9)
        self.assertEqual(calls, [])
        clock.advance(0.1)
        self.assertEqual(calls, [((1,), {"b": 2})])

    def test_cancel(self) -> None:
        """
        A cancelled call does not run; cancelling one that ran is harmless,
        as Autobahn does.
        """
        clock = Clock()
        calls: list = []
        ClockTimer(clock).call_later(1.0, calls.append, "cancelled").cancel()
        ran = ClockTimer(clock).call_later(1.0, calls.append, "ran")
        clock.advance(1.0)
        ran.cancel()
        self.assertEqual((calls, clock.getDelayedCalls()), (["ran"], []))


class _Protocol:
    closeHandshakeTimeoutCall = None


class CancelCloseTimeoutTests(SynchronousTestCase):
    """
    L{cancel_close_timeout} stops the closing-handshake timer of a
    protocol.
    """

    def test_cancelled(self) -> None:
        """
        A pending timer is cancelled and forgotten; without one, nothing
        happens.
        """
        clock = Clock()
        protocol = _Protocol()
        protocol.closeHandshakeTimeoutCall = ClockTimer(clock).call_later(1.0, lambda: None)
        cancel_close_timeout(protocol)
        self.assertEqual((protocol.closeHandshakeTimeoutCall, clock.getDelayedCalls()), (None, []))
        cancel_close_timeout(protocol)
