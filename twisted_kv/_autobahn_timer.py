# -*- test-case-name: tests.test_autobahn_timer -*-
"""
Autobahn's timers on an injected clock, for the WebSocket server of
L{twisted_kv.ws.server} and the watch client of L{twisted_kv.client.txclient}.

Autobahn runs its handshake, close and ping timeouts on txaio's global
reactor; both ends of C{/ws} here run on the clock they are given instead,
so that tests drive those timeouts with a L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["ClockTimer", "cancel_close_timeout"]


class _Cancellable:
    """
    A delayed call that may be cancelled after it ran, as Autobahn expects.
    """

    def __init__(self, call: IDelayedCall) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class ClockTimer:
    """
    Autobahn's timer interface (C{factory._batched_timer}) on an injected
    clock, so that handshake, close and ping timeouts follow that clock
    instead of txaio's global reactor.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kwargs: Any) -> _Cancellable:
        return _Cancellable(self._clock.callLater(delay, func, *args, **kwargs))


def cancel_close_timeout(protocol: Any) -> None:
    """
    Cancel the closing-handshake timer of an Autobahn protocol whose
    connection is gone (Autobahn leaves it running until it expires).
    """
    call = protocol.closeHandshakeTimeoutCall
    if call is not None:
        call.cancel()
        protocol.closeHandshakeTimeoutCall = None
