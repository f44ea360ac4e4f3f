# -*- test-case-name: tests.test_errors -*-
"""
Typed failures raised by the core and the coordinator.

Front ends translate them into HTTP statuses, WebSocket error frames and FTP
replies, each with one mapping; nothing below the front ends knows about
status codes other than through L{KVError.status}.
"""

from __future__ import annotations


class KVError(Exception):
    """
    Base of every failure a client may be told about.

    @cvar status: the HTTP status this failure maps to.
    @cvar code: a short machine-readable error code.
    """

    status = 500
    code = "internal"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or " ".join(self.__class__.__doc__.split("\n\n")[0].split()))

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidRequest(KVError):
    """The request is malformed."""

    status = 400
    code = "bad_request"


class KeyNotFound(KVError):
    """No such key."""

    status = 404
    code = "not_found"


class KeyExists(KVError):
    """The key already exists."""

    status = 409
    code = "exists"


class PreconditionFailed(KVError):
    """The request's precondition does not hold."""

    status = 412
    code = "precondition_failed"


class ValueTooLarge(KVError):
    """The value is larger than the configured maximum."""

    status = 413
    code = "too_large"


class Unavailable(KVError):
    """
    The operation was refused before anything was applied; it will not take
    effect, and the client may retry after L{retry_after} seconds.
    """

    status = 503
    code = "unavailable"

    def __init__(self, message: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OutcomeUnknown(KVError):
    """
    The operation may or may not take effect (replicas stopped answering
    mid-way); the client should re-read.
    """

    status = 504
    code = "outcome_unknown"


class InsufficientStorage(KVError):
    """The node's memory limit would be exceeded."""

    status = 507
    code = "insufficient_storage"


def error_for_code(code: str) -> type[KVError]:
    """
    The failure class whose L{KVError.code} is C{code} (for failures that
    cross the peer protocol); L{KVError} itself for an unknown code.
    """
    return _BY_CODE.get(code, KVError)


_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        KeyNotFound,
        KeyExists,
        PreconditionFailed,
        ValueTooLarge,
        Unavailable,
        OutcomeUnknown,
        InsufficientStorage,
    )
}
