# -*- test-case-name: tests.test_errors -*-
"""
Tests for L{twisted_kv.errors}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_kv import errors
from twisted_kv.errors import (
    BadToken,
    DiskFull,
    Forbidden,
    InsufficientStorage,
    InvalidRequest,
    KeyExists,
    KeyNotFound,
    KVError,
    LogFailed,
    LoginsBusy,
    MembershipConflict,
    OutcomeUnknown,
    PreconditionFailed,
    SnapshotExpired,
    TooManyLogins,
    Unauthorized,
    UnknownMember,
    Unavailable,
    ValueTooLarge,
    WriteFailed,
)

# The HTTP status and error code of every failure, as the HTTP API answers it.
EXPECTED = {
    KVError: (500, "internal"),
    InvalidRequest: (400, "bad_request"),
    KeyNotFound: (404, "not_found"),
    KeyExists: (409, "exists"),
    PreconditionFailed: (412, "precondition_failed"),
    ValueTooLarge: (413, "too_large"),
    Unavailable: (503, "unavailable"),
    OutcomeUnknown: (504, "outcome_unknown"),
    InsufficientStorage: (507, "insufficient_storage"),
    DiskFull: (507, "disk_full"),
    WriteFailed: (503, "write_failed"),
    LogFailed: (503, "log_failed"),
    LoginsBusy: (503, "busy"),
    SnapshotExpired: (410, "snapshot_expired"),
    Unauthorized: (401, "unauthorized"),
    BadToken: (401, "invalid_token"),
    Forbidden: (403, "forbidden"),
    TooManyLogins: (429, "too_many_requests"),
    MembershipConflict: (409, "membership_conflict"),
    UnknownMember: (404, "unknown_member"),
}


class ErrorTests(SynchronousTestCase):
    """
    Every typed failure carries its status and code.
    """

    def test_status_and_code(self) -> None:
        """
        Each class maps to its documented HTTP status and error code, on the
        class and on instances.
        """
        for cls, (status, code) in EXPECTED.items():
            self.assertEqual((cls.status, cls.code), (status, code), cls)
            error = cls("x")
            self.assertEqual((error.status, error.code), (status, code), cls)

    def test_all_covered(self) -> None:
        """
        The table above covers every L{KVError} subclass in the module, and
        codes are distinct.
        """
        found = {
            value
            for value in vars(errors).values()
            if isinstance(value, type) and issubclass(value, KVError)
        }
        self.assertEqual(found, set(EXPECTED))
        codes = [code for _, code in EXPECTED.values()]
        self.assertEqual(len(codes), len(set(codes)))

    def test_inherited(self) -> None:
        """
        A subclass that names no status or code in its class line keeps its
        parent's; one that names them has its own.
        """

        class Missing(KeyNotFound):
            """Nothing there."""

        class Gone(KeyNotFound, status=410, code="gone"):
            """Nothing there any more."""

        self.assertEqual((Missing.status, Missing.code), (404, "not_found"))
        self.assertEqual((Gone.status, Gone.code), (410, "gone"))
        self.assertEqual((KeyNotFound.status, KeyNotFound.code), (404, "not_found"))

    def test_all_are_kverrors(self) -> None:
        """
        Every failure is a L{KVError} and an L{Exception}, so one handler
        per front end catches them all.
        """
        for cls in EXPECTED:
            self.assertTrue(issubclass(cls, KVError))
            self.assertTrue(issubclass(cls, Exception))

    def test_message(self) -> None:
        """
        The message given is the exception's text.
        """
        error = KeyNotFound("no key 'a'")
        self.assertEqual(error.message, "no key 'a'")
        self.assertEqual(str(error), "no key 'a'")

    def test_default_message(self) -> None:
        """
        Without a message, the first paragraph of the class docstring is
        used, whole sentences on one line.
        """
        self.assertEqual(KeyNotFound().message, "No such key.")
        self.assertEqual(KeyExists().message, "The key already exists.")
        self.assertEqual(
            OutcomeUnknown().message,
            "The operation may or may not take effect (replicas stopped answering"
            " mid-way); the client should re-read.",
        )
        for cls in EXPECTED:
            self.assertTrue(cls().message.endswith("."), cls)
            self.assertNotIn("\n", cls().message)

    def test_retry_after(self) -> None:
        """
        L{Unavailable} says when to retry: one second unless told.
        """
        self.assertEqual(Unavailable().retry_after, 1.0)
        error = Unavailable("no majority", retry_after=2.5)
        self.assertEqual((error.retry_after, error.message, error.status), (2.5, "no majority", 503))
