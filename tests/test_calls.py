"""
Tests for L{twisted_kv.cluster.calls}: a node's requests to its peers and
its answers to theirs, with a recording C{send} and a L{Clock}.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.cluster.calls import Calls, Retry
from twisted_kv.cluster.deadlines import Deadlines
from twisted_kv.core import messages
from twisted_kv.errors import KeyNotFound


class CallsTestMixin:
    """
    A L{Calls} whose messages are recorded, and which links work.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = Deadlines()
        self.sent: list[tuple[str, list]] = []
        self.links_up = True
        self.silent: set[str] = set()
        self.calls = Calls(
            send=self.send,
            unreachable=self.unreachable,
            deadlines=self.deadlines,
            now=self.clock.seconds,
        )

    def send(self, peer: str, message: list) -> bool:
        if not self.links_up:
            return False
        self.sent.append((peer, message))
        return True

    def unreachable(self, peer: str) -> Optional[str]:
        return f"{peer} is silent" if peer in self.silent else None


class RequestTests(CallsTestMixin, SynchronousTestCase):
    """
    Requests in flight, until their answers, their peer's link loss or their
    timeout.
    """

    def test_answered(self) -> None:
        """
        A request goes out with a fresh request id; its answer fires it with
        the payload, and it is forgotten.
        """
        first = self.calls.call("n2", messages.ReadRequest(3, "k"), 5.0)
        second = self.calls.call("n3", messages.ReadRequest(4, "j"), 5.0)
        self.assertEqual(
            self.sent, [("n2", ["read", 1, 3, "k", 0]), ("n3", ["read", 2, 4, "j", 0])]
        )
        self.assertEqual(len(self.calls), 2)
        self.calls.on_answer("n2", messages.ok_answer(1, [b"v", "x", 1, None]))
        self.assertEqual(self.successResultOf(first), [b"v", "x", 1, None])
        self.assertNoResult(second)
        self.assertEqual((len(self.calls), len(self.deadlines)), (1, 1))

    def test_failed_answers(self) -> None:
        """
        A retry answer fails the request with L{Retry}, saying whether the
        operation may have been applied; an error answer with the error its
        code names.
        """
        retried = self.calls.call("n2", messages.ReadRequest(3, "k"), 5.0)
        refused = self.calls.call("n2", messages.ReadRequest(3, "k"), 5.0)
        self.calls.on_answer("n2", messages.retry_answer(1, "moved", True))
        self.calls.on_answer("n2", messages.error_answer(2, KeyNotFound.code, "no such key"))
        self.assertTrue(self.failureResultOf(retried, Retry).value.maybe_applied)
        self.assertEqual(str(self.failureResultOf(refused, KeyNotFound).value), "no such key")

    def test_unknown_answer_ignored(self) -> None:
        """
        An answer to no request in flight (one already timed out) is dropped.
        """
        self.calls.on_answer("n2", messages.ok_answer(41, None))
        self.assertEqual(len(self.calls), 0)

    def test_not_sent_to_a_peer_that_cannot_answer(self) -> None:
        """
        A request to a peer whose answer could not reach us fails at once,
        as not sent.
        """
        self.silent.add("n2")
        failure = self.failureResultOf(self.calls.call("n2", messages.ReadRequest(3, "k"), 5.0), Retry)
        self.assertFalse(failure.value.maybe_applied)
        self.assertEqual((self.sent, len(self.calls)), ([], 0))

    def test_not_sent_without_a_link(self) -> None:
        """
        A request that cannot be sent fails at once, as not sent, and leaves
        nothing behind.
        """
        self.links_up = False
        failure = self.failureResultOf(self.calls.call("n2", messages.ReadRequest(3, "k"), 5.0), Retry)
        self.assertFalse(failure.value.maybe_applied)
        self.assertEqual((len(self.calls), len(self.deadlines)), (0, 0))

    def test_link_lost(self) -> None:
        """
        Losing the link to a peer fails its requests, which may have been
        applied, and no other.
        """
        lost = self.calls.call("n2", messages.ReadRequest(3, "k"), 5.0)
        kept = self.calls.call("n3", messages.ReadRequest(3, "k"), 5.0)
        self.calls.peer_down("n2")
        self.assertTrue(self.failureResultOf(lost, Retry).value.maybe_applied)
        self.assertNoResult(kept)
        self.assertEqual((len(self.calls), len(self.deadlines)), (1, 1))

    def test_timeout(self) -> None:
        """
        A request unanswered at its deadline is cancelled by the sweep and
        forgotten.
        """
        d = self.calls.call("n2", messages.ReadRequest(3, "k"), 5.0)
        self.clock.advance(4.9)
        self.deadlines.sweep(self.clock.seconds())
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.deadlines.sweep(self.clock.seconds())
        self.failureResultOf(d, CancelledError)
        self.assertEqual((len(self.calls), len(self.deadlines)), (0, 0))

    def test_stop(self) -> None:
        """
        Stopping fails every request in flight, as possibly applied.
        """
        requests = [self.calls.call(peer, messages.ReadRequest(3, "k"), 5.0) for peer in ("n2", "n3")]
        self.calls.stop()
        for d in requests:
            self.assertTrue(self.failureResultOf(d, Retry).value.maybe_applied)
        self.assertEqual((len(self.calls), len(self.deadlines)), (0, 0))


class AnswerTests(CallsTestMixin, SynchronousTestCase):
    """
    Answers to the peers' requests.
    """

    def test_result(self) -> None:
        """
        A result is sent encoded, once it is there.
        """
        d: Deferred[int] = Deferred()
        self.calls.answer("n2", 7, d, lambda n: [n])
        self.assertEqual(self.sent, [])
        d.callback(3)
        self.calls.answer_now("n3", 8, "now")
        self.assertEqual(self.sent, [("n2", ["res", 7, "ok", [3]]), ("n3", ["res", 8, "ok", "now"])])

    def test_failures(self) -> None:
        """
        L{Retry} and L{twisted_kv.errors.KVError} failures are answered as
        such; anything else is logged and answered as an internal error.
        """
        self.calls.answer("n2", 1, fail(Retry("moved", maybe_applied=True)), repr)
        self.calls.answer("n2", 2, fail(KeyNotFound("no such key")), repr)
        with capturedLogs() as events:
            self.calls.answer("n2", 3, fail(ZeroDivisionError()), repr)
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(len(events), 1)
        self.assertEqual(
            [message for _, message in self.sent],
            [
                ["res", 1, "retry", ["moved", True]],
                ["res", 2, "err", ["not_found", "no such key"]],
                ["res", 3, "err", ["internal", "internal error"]],
            ],
        )
