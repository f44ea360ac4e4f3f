# -*- test-case-name: tests.test_errors -*-
"""
Typed failures raised by the core and the coordinator.

Front ends translate them into HTTP statuses, WebSocket error frames and FTP
replies, each with one mapping; nothing below the front ends knows about
status codes other than through L{KVError.status}.
"""

from __future__ import annotations

from typing import Any, Optional


class KVError(Exception):
    """
    Base of every failure a client may be told about.

    @cvar status: the HTTP status this failure maps to.
    @cvar code: a short machine-readable error code.
    """

    status = 500
    code = "internal"

    def __init_subclass__(
        cls, status: Optional[int] = None, code: Optional[str] = None, **kwargs: Any
    ) -> None:
        """
        Let a subclass name its status and code in its C{class} line
        (C{class KeyNotFound(KVError, status=404, code="not_found")}), so
        that the mapping reads as one table; a subclass naming neither
        keeps its parent's.
        """
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(self, message: str = "") -> None:
        super().__init__(message or " ".join(self.__class__.__doc__.split("\n\n")[0].split()))

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidRequest(KVError, status=400, code="bad_request"):
    """The request is malformed."""


class KeyNotFound(KVError, status=404, code="not_found"):
    """No such key."""


class KeyExists(KVError, status=409, code="exists"):
    """The key already exists."""


class PreconditionFailed(KVError, status=412, code="precondition_failed"):
    """The request's precondition does not hold."""


class ValueTooLarge(KVError, status=413, code="too_large"):
    """The value is larger than the configured maximum."""


class Unavailable(KVError, status=503, code="unavailable"):
    """
    The operation was refused before anything was applied; it will not take
    effect, and the client may retry after L{retry_after} seconds.
    """

    def __init__(self, message: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LoginsBusy(Unavailable, code="busy"):
    """
    Too many logins are being checked: try again after L{retry_after}
    seconds.
    """


class Unauthorized(KVError, status=401, code="unauthorized"):
    """Missing or wrong credentials."""


class BadToken(Unauthorized, code="invalid_token"):
    """The token is malformed, forged, expired or names no user."""


class Forbidden(KVError, status=403, code="forbidden"):
    """The user may not do this."""


class TooManyLogins(KVError, status=429, code="too_many_requests"):
    """
    Too many failed logins from this address: try again after
    L{retry_after} seconds.
    """

    def __init__(self, message: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OutcomeUnknown(KVError, status=504, code="outcome_unknown"):
    """
    The operation may or may not take effect (replicas stopped answering
    mid-way); the client should re-read.
    """


class InsufficientStorage(KVError, status=507, code="insufficient_storage"):
    """The node's memory limit would be exceeded."""


class DiskFull(InsufficientStorage, code="disk_full"):
    """
    The disk is full (or the quota reached): the write was not made durable
    and will not take effect.  Writes may succeed again once space is freed.
    """


class WriteFailed(Unavailable, code="write_failed"):
    """
    The disk refused the write (an I/O error): it was not made durable and
    will not take effect.  Later writes may succeed.
    """


class LogFailed(Unavailable, code="log_failed"):
    """
    An fsync of the log failed: the kernel may have dropped the data it was
    asked to make durable, so this node no longer acknowledges writes from
    that log until it has recovered it (from its peers or on restart).
    """


class MembershipConflict(KVError, status=409, code="membership_conflict"):
    """
    The membership change cannot be made now: another is in progress, or it
    would leave fewer than three members, or the node is already a member.
    """


class UnknownMember(KVError, status=404, code="unknown_member"):
    """No such member."""


class SnapshotExpired(KVError, status=410, code="snapshot_expired"):
    """
    The partition dump asked for is no longer held (its primary moved, or
    nobody asked for a page for a while): start that partition's dump again.
    """


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
        DiskFull,
        WriteFailed,
        LogFailed,
        SnapshotExpired,
        MembershipConflict,
        UnknownMember,
    )
}


class StorageCorrupt(Exception):
    """
    Damage found in a node's data directory, other than a torn last record:
    the node never serves what is there; it refuses to start or refills
    that part from its peers.  Not a L{KVError}: no client is told about it.

    @ivar path: the damaged file.
    @ivar offset: where in it the damage starts.
    @ivar reason: what is wrong there.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path} at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class LogCorrupt(StorageCorrupt):
    """
    A log segment is damaged or missing.
    """


class SnapshotCorrupt(StorageCorrupt):
    """
    A snapshot file is damaged.
    """
