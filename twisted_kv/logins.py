# -*- test-case-name: tests.test_logins -*-
"""
Logins with a password, for every front end that takes one (HTTP Basic,
FTP): the password check, off the reactor thread, and the slowing down of
repeated failures (L{twisted_kv.core.users.LoginThrottle}), shared.

An scrypt check takes 100-200 ms of CPU: on the reactor thread it would
stall every connection of the node that long.  L{Logins} runs it through a
L{CheckPassword}, in production a small pool of threads of its own
(L{check_in_threads}), and keeps the throttle's promise all the same: the
attempts of one address run one after the other, each only once the one
before is counted, so that guesses sent in parallel from one address are
refused as soon as the same guesses sent one by one would be.

So the pool holds at most one check per address with an attempt under way,
and the number of such addresses is bounded (L{MAX_CHECKING_ADDRESSES}): a
login from one more address is refused at once, as busy
(L{twisted_kv.errors.LoginsBusy}: HTTP C{503} with C{Retry-After}, FTP
C{421}), rather than queued behind work that could outlast its request.
It is not counted as a failed login: the address did nothing wrong.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, TypeVar

from twisted.internet.defer import Deferred, DeferredLock, execute, fail, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from twisted_kv.core.passwords import verify_password
from twisted_kv.core.users import LoginThrottle
from twisted_kv.errors import LoginsBusy

__all__ = [
    "MAX_CHECKING_ADDRESSES",
    "CheckPassword",
    "Logins",
    "check_in_threads",
    "check_now",
    "password_pool",
]

_T = TypeVar("_T")

#: Checks a password against its stored form, as
#: L{twisted_kv.core.passwords.verify_password} does: fires with whether
#: it matches, fails with C{ValueError} if the stored form is malformed.
CheckPassword = Callable[[str, str], "Deferred[bool]"]

#: Threads of the pool that checks passwords: each check takes one core
#: (and 16 MiB) for its duration, and other work needs the rest.
CHECK_THREADS = 2

#: Addresses that may have login attempts under way at once, hence checks
#: queued for the pool (one each): at 100-200 ms a check on
#: L{CHECK_THREADS} threads, the last of them is answered within 1.6-3.2 s,
#: inside the default request timeout (5 s).
MAX_CHECKING_ADDRESSES = 32

#: Seconds a login refused as busy is told to wait before trying again.
BUSY_RETRY_AFTER = 1.0


def check_now(stored: str, candidate: str) -> Deferred[bool]:
    """
    A L{CheckPassword} that checks on the calling thread: for tests and
    tools, never for a node's reactor.
    """
    return execute(verify_password, stored, candidate)


def check_in_threads(reactor: IReactorFromThreads, pool: ThreadPool) -> CheckPassword:
    """
    A L{CheckPassword} that checks in C{pool} (started and stopped by its
    owner) and answers on C{reactor}'s thread.
    """
    return partial(deferToThreadPool, reactor, pool, verify_password)


def password_pool() -> ThreadPool:
    """
    The pool of L{CHECK_THREADS} threads a node checks passwords in.
    """
    return ThreadPool(minthreads=0, maxthreads=CHECK_THREADS, name="password checks")


class Logins:
    """
    The login attempts of every front end of a node.

    @ivar throttle: counts the failed logins of each address.
    @ivar check_password: checks a password against its stored form.
    """

    def __init__(
        self, throttle: LoginThrottle, clock: IReactorTime, check_password: CheckPassword
    ) -> None:
        self.throttle = throttle
        self.check_password = check_password
        self._clock = clock
        # One queue of attempts per address that has one running.
        self._queues: dict[str, DeferredLock] = {}

    def attempt(self, address: str, login: Callable[[], Deferred[_T]]) -> Deferred[_T]:
        """
        Run C{login}, a login attempt from C{address}, once the attempts
        from it before have been counted; count its outcome, a failure as
        a failed login.

        @return: a Deferred firing as C{login}'s does, or failing without
            running it: with L{twisted_kv.errors.TooManyLogins} if the
            address is blocked when its turn comes, with L{LoginsBusy} at
            once if L{MAX_CHECKING_ADDRESSES} other addresses have attempts
            under way.
        """
        queue = self._queues.get(address)
        if queue is None:
            if len(self._queues) >= MAX_CHECKING_ADDRESSES:
                return fail(
                    LoginsBusy(
                        "too many logins are being checked; try again shortly",
                        retry_after=BUSY_RETRY_AFTER,
                    )
                )
            queue = self._queues[address] = DeferredLock()
        done: Deferred[_T] = queue.run(self._counted, address, login)
        return done.addBoth(self._forget_idle, address, queue)

    def _counted(self, address: str, login: Callable[[], Deferred[_T]]) -> Deferred[_T]:
        self.throttle.check(address, self._clock.seconds())

        def count(result: object) -> object:
            if isinstance(result, Failure):
                self.throttle.failed(address, self._clock.seconds())
            else:
                self.throttle.succeeded(address)
            return result

        return maybeDeferred(login).addBoth(count)

    def _forget_idle(self, result: _T, address: str, queue: DeferredLock) -> _T:
        if not queue.locked and self._queues.get(address) is queue:
            del self._queues[address]
        return result
