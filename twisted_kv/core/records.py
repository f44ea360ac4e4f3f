# -*- test-case-name: tests.test_records -*-
"""
Stored records, version stamps and the rules that turn one client operation
into one new state of one key.

A version is an integer C{(epoch << 40) | seq}: the partition epoch and the
position in the partition's replication log at which the write was ordered by
the partition's primary.  Committed log entries have non-decreasing epochs and
increasing positions, so integer order is log order; wall clocks never decide
which write wins.  Clients only ever see the opaque string of
L{format_version}.

The rules here are pure: the same function decides conditional writes on a
cluster primary and in the single-process L{twisted_kv.cluster.local} store.
"""

from __future__ import annotations

from typing import Optional, Union

from attrs import frozen

from twisted_kv.core.keyspace import name_of
from twisted_kv.errors import KeyExists, KeyNotFound, PreconditionFailed

_SEQ_BITS = 40
_SEQ_MASK = (1 << _SEQ_BITS) - 1


def make_version(epoch: int, seq: int) -> int:
    """
    Combine a partition epoch and a log position into one ordered version.
    """
    return (epoch << _SEQ_BITS) | seq


def version_epoch(version: int) -> int:
    return version >> _SEQ_BITS


def version_seq(version: int) -> int:
    return version & _SEQ_MASK


def format_version(version: int) -> str:
    """
    The opaque version string shown to clients (and quoted as the ETag).
    """
    return f"{version >> _SEQ_BITS}.{version & _SEQ_MASK}"


def parse_version(text: str) -> Optional[int]:
    """
    The version that L{format_version} rendered as C{text}, or C{None} if
    C{text} is not one.
    """
    epoch, dot, seq = text.partition(".")
    if not (dot and epoch.isdigit() and seq.isdigit()):
        return None
    return make_version(int(epoch), int(seq))


@frozen
class Record:
    """
    The current value of a key.

    @ivar expires_at: absolute time (seconds, the primary's clock) after which
        the key is gone, or C{None}.
    """

    value: bytes
    content_type: str
    version: int
    expires_at: Optional[float] = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@frozen
class Put:
    """
    Store C{value} under C{key}.

    @ivar if_match: an ETag-less version string the current version must equal.
    @ivar if_none_match: the key must not exist (C{If-None-Match: *}).
    @ivar create_only: like C{if_none_match} but a failure means "exists"
        (HTTP C{POST}, answered with 409 instead of 412).
    """

    key: str
    value: bytes
    content_type: str = "application/octet-stream"
    ttl: Optional[float] = None
    if_match: Optional[str] = None
    if_none_match: bool = False
    create_only: bool = False


@frozen
class Delete:
    """Remove C{key}, optionally only if its version is C{if_match}."""

    key: str
    if_match: Optional[str] = None


@frozen
class Expire:
    """
    Remove C{key} because its time-to-live ran out, but only if it still holds
    the version that was given the TTL: a later write wins over the expiry.
    """

    key: str
    version: int


Operation = Union[Put, Delete, Expire]


@frozen
class Change:
    """
    The effect of one operation on one key, as applied to every replica.

    @ivar kind: C{"put"}, C{"delete"} or C{"expire"}.
    @ivar record: the new record for C{"put"}, else C{None}.
    @ivar created: for C{"put"}, whether the key did not exist before.
    """

    kind: str
    key: str
    version: int
    record: Optional[Record]
    created: bool = False


def live(record: Optional[Record], now: float) -> Optional[Record]:
    """
    The record as a reader sees it: C{None} once it has expired.
    """
    if record is None or record.expired(now):
        return None
    return record


def decide(
    operation: Operation, current: Optional[Record], version: int, now: float
) -> Optional[Change]:
    """
    Decide what C{operation} does to a key whose current record is C{current}.

    @param version: the version the change will carry if it happens.
    @param now: the current time, for TTLs and for treating an expired record
        as absent.
    @return: the L{Change} to apply, or C{None} when the operation is a no-op
        (an expiry overtaken by a later write).
    @raise KeyExists: C{create_only} on an existing key.
    @raise PreconditionFailed: C{if_match} or C{if_none_match} does not hold.
    @raise KeyNotFound: deleting a key that does not exist.
    """
    visible = live(current, now)
    if isinstance(operation, Expire):
        if current is None or current.version != operation.version:
            return None
        return Change("expire", operation.key, version, None)
    if operation.if_match is not None and (
        visible is None or format_version(visible.version) != operation.if_match
    ):
        raise PreconditionFailed(f"{name_of(operation.key)!r} is not at version {operation.if_match}")
    if isinstance(operation, Delete):
        if visible is None:
            raise KeyNotFound(f"no key {name_of(operation.key)!r}")
        return Change("delete", operation.key, version, None)
    if visible is not None:
        if operation.create_only:
            raise KeyExists(f"{name_of(operation.key)!r} already exists")
        if operation.if_none_match:
            raise PreconditionFailed(f"{name_of(operation.key)!r} already exists")
    expires_at = None if operation.ttl is None else now + operation.ttl
    record = Record(operation.value, operation.content_type, version, expires_at)
    return Change("put", operation.key, version, record, created=visible is None)
