# -*- test-case-name: tests.test_calls -*-
"""
Requests to peers and their answers: the table of requests in flight, and
the answering of the peers' requests.

A request is sent only while its answer can come back (the peer links back
to us and has been heard from), is limited by a deadline swept with the
node's others on every tick, and fails as L{Retry} when its peer's link is
lost or the node stops: it may then have taken effect at the peer.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_kv.cluster.deadlines import Deadlines
from twisted_kv.core import messages
from twisted_kv.errors import KVError, error_for_code

log = Logger()


class Retry(Exception):
    """
    The operation reached a node that is not (or no longer) the serving
    primary; try again once the map settles.

    @ivar maybe_applied: the operation may have been ordered before the
        primary lost its role, so its outcome is unknown until it is retried.
    """

    def __init__(self, reason: str, maybe_applied: bool = False) -> None:
        super().__init__(reason)
        self.maybe_applied = maybe_applied


class Request(Protocol):
    """
    A request a peer answers (L{twisted_kv.core.messages.ReadRequest}, ...).
    """

    def to_wire(self, request_id: int) -> list: ...


class Calls:
    """
    This node's requests in flight to its peers, by request id.
    """

    def __init__(
        self,
        *,
        send: Callable[[str, list], bool],
        unreachable: Callable[[str], Optional[str]],
        deadlines: Deadlines,
        now: Callable[[], float],
    ) -> None:
        """
        @param send: sends a message to a peer, C{False} if it was not sent.
        @param unreachable: why a peer's answer could not reach us (it
            has no link back, or has not been heard from lately), or
            C{None}.
        @param deadlines: where a request's time limit is kept.
        @param now: the current time.
        """
        self._send = send
        self._unreachable = unreachable
        self._deadlines = deadlines
        self._now = now
        self._ids = itertools.count(1)
        # request id -> (peer, Deferred, key in deadlines)
        self._requests: dict[int, tuple[str, Deferred, int]] = {}

    def __len__(self) -> int:
        """
        How many requests await their answers.
        """
        return len(self._requests)

    def call(self, peer: str, request: Request, timeout: float) -> Deferred:
        """
        Send C{request} to C{peer} and fire with its answer's payload, or
        fail with L{twisted.internet.defer.CancelledError} once C{timeout}
        has passed (checked every tick).

        @raise Retry: (as a failure) C{peer}'s answer could not reach us, or
            the request could not be sent; it was not sent.
        """
        reason = self._unreachable(peer)
        if reason is not None:
            return fail(Retry(reason))
        request_id = next(self._ids)
        d: Deferred = Deferred(lambda _: self._requests.pop(request_id, None))
        # Tracked rather than limited: the answer or the lost link settles
        # it, and a callback of its own on every request would cost more.
        deadline = self._deadlines.track(d, self._now() + timeout)
        self._requests[request_id] = (peer, d, deadline)
        if not self._send(peer, request.to_wire(request_id)):
            self._requests.pop(request_id, None)
            self._deadlines.settle(deadline)
            return fail(Retry(f"no link to {peer}"))
        return d

    def on_answer(self, peer: str, message: list) -> None:
        request_id, status, payload = messages.parse_answer(message)
        pending = self._requests.pop(request_id, None)
        if pending is None:
            return
        _, d, deadline = pending
        self._deadlines.settle(deadline)
        if status == messages.OK:
            d.callback(payload)
        elif status == messages.RETRY:
            d.errback(Retry(*messages.parse_failure(payload)))
        else:
            code, text = messages.parse_failure(payload)
            d.errback(error_for_code(code)(text))

    def peer_down(self, peer: str) -> None:
        """
        The link to C{peer} is lost: its answers will not come.
        """
        for request_id, (target, d, deadline) in list(self._requests.items()):
            if target == peer:
                del self._requests[request_id]
                self._deadlines.settle(deadline)
                d.errback(Retry(f"lost the link to {peer}", maybe_applied=True))

    def stop(self) -> None:
        """
        Fail every request in flight: it may have taken effect at its peer.
        """
        requests, self._requests = self._requests, {}
        for _, d, deadline in requests.values():
            self._deadlines.settle(deadline)
            d.errback(Retry("node stopping", maybe_applied=True))

    # -- answering the peers' requests -------------------------------------

    def answer(self, peer: str, request_id: int, d: Deferred, encode: Callable[[Any], Any]) -> None:
        """
        Answer C{peer}'s request C{request_id} with C{d}'s result, encoded
        by C{encode}, or with its failure.
        """

        def ok(result: Any) -> None:
            self._send(peer, messages.ok_answer(request_id, encode(result)))

        def failed(failure: Failure) -> None:
            self._send(peer, _failure_answer(request_id, failure))

        d.addCallbacks(ok, failed)

    def answer_now(self, peer: str, request_id: int, payload: Any) -> None:
        self._send(peer, messages.ok_answer(request_id, payload))


def _failure_answer(request_id: int, failure: Failure) -> list:
    if failure.check(Retry):
        return messages.retry_answer(request_id, str(failure.value), failure.value.maybe_applied)
    if failure.check(KVError):
        return messages.error_answer(request_id, failure.value.code, failure.value.message)
    log.failure("operation failed", failure)
    return messages.error_answer(request_id, "internal", "internal error")
