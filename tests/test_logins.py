# -*- test-case-name: tests.test_logins -*-
"""
Tests for L{twisted_kv.logins}: password checks off the reactor thread,
and the attempts of one address run one at a time before the throttle.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core.passwords import hash_password, verify_password
from twisted_kv.core.users import LoginThrottle
from twisted_kv.errors import LoginsBusy, TooManyLogins, Unauthorized
from twisted_kv.logins import MAX_CHECKING_ADDRESSES, Logins, check_in_threads, check_now


class HeldChecks:
    """
    A L{twisted_kv.logins.CheckPassword} whose checks wait until the test
    answers them, as checks in a thread finish later.

    @ivar pending: the checks asked for and not answered yet, oldest first.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[str, str, Deferred[bool]]] = []

    def __call__(self, stored: str, candidate: str) -> Deferred[bool]:
        checked: Deferred[bool] = Deferred()
        self.pending.append((stored, candidate, checked))
        return checked

    def answer(self) -> None:
        """
        Answer the oldest pending check, as L{verify_password} does.
        """
        stored, candidate, checked = self.pending.pop(0)
        checked.callback(verify_password(stored, candidate))


class _InlinePool:
    """
    A thread pool that runs its work at once, on the calling thread.
    """

    def __init__(self) -> None:
        self.ran = 0

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], work: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        self.ran += 1
        try:
            result = work(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class _InlineReactor:
    """
    A reactor whose C{callFromThread} calls at once.
    """

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class CheckTests(SynchronousTestCase):
    """
    The two ways of checking a password.
    """

    def test_in_threads(self) -> None:
        """
        L{check_in_threads} runs L{verify_password} in the pool and fires
        on the reactor's thread with its answer, or its error.
        """
        pool = _InlinePool()
        check = check_in_threads(_InlineReactor(), pool)  # type: ignore[arg-type]
        stored = hash_password("builder", bytes(16))
        self.assertEqual(
            [self.successResultOf(check(stored, password)) for password in ("builder", "guess")],
            [True, False],
        )
        self.failureResultOf(check("nonsense", "x"), ValueError)
        self.assertEqual(pool.ran, 3)

    def test_now(self) -> None:
        """
        L{check_now} answers at once, failing for a malformed stored form.
        """
        self.assertTrue(self.successResultOf(check_now("plain:x", "x")))
        self.assertFalse(self.successResultOf(check_now("plain:x", "y")))
        self.failureResultOf(check_now("nonsense", "x"), ValueError)


class AttemptTests(SynchronousTestCase):
    """
    L{Logins.attempt}: one address's attempts in turn, each counted.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.checks = HeldChecks()
        self.throttle = LoginThrottle(free=1)
        self.logins = Logins(self.throttle, self.clock, self.checks)

    def attempt(self, address: str, password: str) -> Deferred[str]:
        """
        A login from C{address} with C{password} (the right one is
        C{"right"}).
        """

        def login() -> Deferred[str]:
            def decided(matches: bool) -> str:
                if not matches:
                    raise Unauthorized("wrong password")
                return "logged in"

            return self.logins.check_password("plain:right", password).addCallback(decided)

        return self.logins.attempt(address, login)

    def test_one_at_a_time(self) -> None:
        """
        While an attempt of an address is being checked, its next ones
        wait; each runs once the one before is counted, so that parallel
        guesses are refused as soon as the same guesses one by one would
        be: with one free failure, the third guess is never checked.
        """
        guesses = [self.attempt("10.0.0.2", "guess") for _ in range(3)]
        self.assertEqual(len(self.checks.pending), 1)
        self.checks.answer()
        self.failureResultOf(guesses[0], Unauthorized)
        self.assertNoResult(guesses[1])
        self.assertEqual(len(self.checks.pending), 1)
        self.checks.answer()
        self.failureResultOf(guesses[1], Unauthorized)
        self.failureResultOf(guesses[2], TooManyLogins)
        self.assertEqual(self.checks.pending, [])
        self.assertGreater(self.throttle.retry_after("10.0.0.2", self.clock.seconds()), 0)

    def test_addresses_apart(self) -> None:
        """
        Another address's attempt is checked at once, beside one still
        being checked.
        """
        waiting = self.attempt("10.0.0.2", "guess")
        other = self.attempt("10.0.0.3", "right")
        self.assertEqual(len(self.checks.pending), 2)
        self.checks.answer()
        self.checks.answer()
        self.failureResultOf(waiting, Unauthorized)
        self.assertEqual(self.successResultOf(other), "logged in")

    def test_blocked_address_not_checked(self) -> None:
        """
        An address blocked when its attempt's turn comes is refused with
        L{TooManyLogins} without a check; once the block has passed it is
        checked again, and a success clears its count.
        """
        for _ in range(2):
            guess = self.attempt("10.0.0.2", "guess")
            self.checks.answer()
            self.failureResultOf(guess, Unauthorized)
        self.failureResultOf(self.attempt("10.0.0.2", "right"), TooManyLogins)
        self.assertEqual(self.checks.pending, [])
        self.clock.advance(self.throttle.retry_after("10.0.0.2", self.clock.seconds()))
        right = self.attempt("10.0.0.2", "right")
        self.checks.answer()
        self.assertEqual(self.successResultOf(right), "logged in")
        self.assertEqual(self.throttle.retry_after("10.0.0.2", self.clock.seconds()), 0)

    def test_busy(self) -> None:
        """
        While L{MAX_CHECKING_ADDRESSES} addresses have attempts under way,
        an attempt from another address is refused at once with
        L{LoginsBusy} (and its C{retry_after}), unchecked and not counted
        as a failure; those addresses may still queue attempts, and once
        one of them is done a new address is checked again.
        """
        waiting = [self.attempt(f"10.1.0.{i}", "guess") for i in range(MAX_CHECKING_ADDRESSES)]
        refused = self.failureResultOf(self.attempt("10.2.0.1", "right"), LoginsBusy)
        self.assertEqual(refused.value.retry_after, 1.0)
        self.assertEqual(self.throttle.retry_after("10.2.0.1", self.clock.seconds()), 0)
        queued = self.attempt("10.1.0.0", "right")
        self.assertEqual(len(self.checks.pending), MAX_CHECKING_ADDRESSES)
        self.checks.answer()
        self.failureResultOf(waiting[0], Unauthorized)
        self.assertEqual(len(self.checks.pending), MAX_CHECKING_ADDRESSES)
        self.checks.answer()
        self.failureResultOf(waiting[1], Unauthorized)
        admitted = self.attempt("10.2.0.1", "right")
        self.assertEqual(len(self.checks.pending), MAX_CHECKING_ADDRESSES)
        while self.checks.pending:
            self.checks.answer()
        for guess in waiting[2:]:
            self.failureResultOf(guess, Unauthorized)
        self.assertEqual(self.successResultOf(queued), "logged in")
        self.assertEqual(self.successResultOf(admitted), "logged in")
