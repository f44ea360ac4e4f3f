# -*- test-case-name: tests.test_polling -*-
"""
Waiting, in tests that run on the real reactor, for something to happen:
L{poll} asks a check again and again, with a deadline and a message that
names what was awaited.  Every such wait in the tests goes through it,
never through a fixed sleep, which is either too short on a busy machine or
time lost on an idle one.
"""

from __future__ import annotations

import inspect
from typing import Any, Awaitable, Callable, Optional, TypeVar, Union

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

__all__ = ["POLL_INTERVAL", "WaitTimeout", "poll"]

T = TypeVar("T")

#: Seconds between two checks, by default.
POLL_INTERVAL = 0.1


class WaitTimeout(AssertionError):
    """
    Something waited for did not happen before its deadline.
    """


async def poll(
    check: Callable[[], Union[Optional[T], Awaitable[Optional[T]]]],
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
    reactor: Any = None,
) -> T:
    """
    Call C{check} every C{interval} seconds until it returns something
    other than C{None} or C{False}, and return that.

    @param check: returns the result, or C{None} or C{False} for "not yet";
        it may return an awaitable (a coroutine, a L{Deferred}) of that.
    @param what: what is waited for, for the error message.
    @param reactor: the reactor whose time counts; the global one by
        default.
    @raise WaitTimeout: C{timeout} seconds passed first.
    """
    if reactor is None:
        from twisted.internet import reactor
    deadline = reactor.seconds() + timeout
    while True:
        result = check()
        if isinstance(result, Deferred) or inspect.isawaitable(result):
            result = await result
        if result is not None and result is not False:
            return result
        if reactor.seconds() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        await deferLater(reactor, interval, lambda: None)
