# -*- test-case-name: tests.test_deadlines -*-
"""
Time limits for many Deferreds, enforced by a periodic sweep.

C{Deferred.addTimeout} schedules a C{DelayedCall} for every Deferred: on a
node answering thousands of requests a second that is a heap push, a
cancellation and two callbacks per request, for a limit that almost never
fires.  L{Deadlines} keeps the pending ones in a dict instead, and its owner
sweeps it on a timer it already has, so a limit fires late by at most the
sweep interval.
"""

from __future__ import annotations

import itertools
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

_T = TypeVar("_T")


class Deadlines:
    """
    Deferreds with a deadline; L{sweep} cancels those past it, so they fail
    with L{twisted.internet.defer.CancelledError} (after their canceller
    ran) unless the canceller fired them otherwise.
    """

    def __init__(self) -> None:
        self._pending: dict[int, tuple[float, Deferred[Any]]] = {}
        self._keys = itertools.count()

    def __len__(self) -> int:
        return len(self._pending)

    def limit(self, d: Deferred[_T], deadline: float) -> Deferred[_T]:
        """
        Cancel C{d} at the first sweep at or after C{deadline} if it has not
        fired by then.

        @return: C{d}
        """
        return d.addBoth(self._settled, self.track(d, deadline))

    def track(self, d: Deferred[Any], deadline: float) -> int:
        """
        Cancel C{d} at the first sweep at or after C{deadline}, unless
        L{settle} is called first: for an owner that knows when C{d} fires,
        without a callback on C{d}.

        @return: the key to give L{settle}.
        """
        key = next(self._keys)
        self._pending[key] = (deadline, d)
        return key

    def settle(self, key: int) -> None:
        """
        Forget the Deferred tracked under C{key}: it has fired.
        """
        self._pending.pop(key, None)

    def _settled(self, result: _T, key: int) -> _T:
        self.settle(key)
        return result

    def sweep(self, now: float) -> None:
        """
        Cancel every Deferred whose deadline is C{now} or earlier.
        """
        expired = [key for key, (deadline, _) in self._pending.items() if deadline <= now]
        for key in expired:
            entry = self._pending.pop(key, None)
            if entry is not None:
                entry[1].cancel()
