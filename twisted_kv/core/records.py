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

import struct
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


# How many distinct content types get a number; records of any other type
# carry their content type in full.  The table only ever grows, and only up
# to this size, whatever types clients send.
SHARED_CONTENT_TYPES = 255
# Longer content types are always carried in full.
SHARED_CONTENT_TYPE_LENGTH = 128

# version, then (content type number << 1) | (an expiry time follows)
_HEADER = struct.Struct("<QH")
_VERSION = struct.Struct("<Q")
_EXPIRY = struct.Struct("<d")
_HEADER_AND_EXPIRY = struct.Struct("<QHd")
# The header byte holding the "an expiry time follows" bit.
_EXPIRES_BYTE = _VERSION.size
# The length of a content type carried in full (number 0), before its UTF-8.
_LENGTH = struct.Struct("<I")

_content_types: list[str] = []
_content_type_numbers: dict[str, int] = {}


def _content_type_number(content_type: str) -> int:
    """
    The number of C{content_type} in the shared table (from 1), numbering it
    if there is room; 0 if it has none.
    """
    number = _content_type_numbers.get(content_type)
    if number is not None:
        return number
    if len(_content_types) >= SHARED_CONTENT_TYPES or len(content_type) > SHARED_CONTENT_TYPE_LENGTH:
        return 0
    _content_types.append(content_type)
    number = _content_type_numbers[content_type] = len(_content_types)
    return number


def _pack(value: bytes, content_type: str, version: int, expires_at: Optional[float]) -> bytes:
    number = _content_type_number(content_type)
    if number:
        # the common forms, in one concatenation
        if expires_at is None:
            return _HEADER.pack(version, number << 1) + value
        return _HEADER_AND_EXPIRY.pack(version, number << 1 | 1, expires_at) + value
    parts = [_HEADER.pack(version, expires_at is not None)]
    if expires_at is not None:
        parts.append(_EXPIRY.pack(expires_at))
    encoded = content_type.encode("utf-8", "surrogatepass")
    parts += [_LENGTH.pack(len(encoded)), encoded, value]
    return b"".join(parts)


def unpack_header(packed: bytes) -> tuple[int, Optional[float], str, int]:
    """
    The version, expiry time, content type and value offset of a record's
    packed form (L{Record.packed}), read without building the record.
    """
    version, form = _HEADER.unpack_from(packed)
    offset = _HEADER.size
    expires_at = None
    if form & 1:
        (expires_at,) = _EXPIRY.unpack_from(packed, offset)
        offset += _EXPIRY.size
    number = form >> 1
    if number:
        content_type = _content_types[number - 1]
    else:
        (length,) = _LENGTH.unpack_from(packed, offset)
        offset += _LENGTH.size
        content_type = packed[offset : offset + length].decode("utf-8", "surrogatepass")
        offset += length
    return version, expires_at, content_type, offset


def packed_expires(packed: bytes) -> bool:
    """
    Whether the record packed as C{packed} has an expiry time.
    """
    return bool(packed[_EXPIRES_BYTE] & 1)


class Record:
    """
    The current value of a key, immutable.

    A record is held as one C{bytes} object, L{packed}: a short header (the
    version, whether an expiry time follows, and the content type's number
    in a small table shared by the process) followed by the value.  That
    object is what a L{twisted_kv.core.memstore.MemStore} keeps for the key:
    a record is packed once, where it is made (by L{decide} at a primary,
    from a peer message at a member), and the store, the replication log
    and the change feed then share it, with no copy of the value and no
    object of its own for each field.  The fields are read from the header
    when they are asked for; the packed form is only meaningful within one
    process (the content type numbers are the process's).

    @ivar expires_at: absolute time (seconds, the primary's clock) after which
        the key is gone, or C{None}.
    """

    __slots__ = ("packed",)
    packed: bytes

    def __init__(
        self, value: bytes, content_type: str, version: int, expires_at: Optional[float] = None
    ) -> None:
        object.__setattr__(self, "packed", _pack(value, content_type, version, expires_at))

    @classmethod
    def from_packed(cls, packed: bytes) -> Record:
        """
        The record whose packed form is C{packed} (from L{packed}), without
        a copy.
        """
        record = cls.__new__(cls)
        object.__setattr__(record, "packed", packed)
        return record

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Record is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Record is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        # One process packs equal fields into equal bytes.
        if not isinstance(other, Record):
            return NotImplemented
        return self.packed == other.packed

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return self.packed != other.packed

    def __hash__(self) -> int:
        return hash(self.packed)

    def __repr__(self) -> str:
        version, expires_at, content_type, offset = unpack_header(self.packed)
        return (
            f"Record(value={self.packed[offset:]!r}, content_type={content_type!r}, "
            f"version={version!r}, expires_at={expires_at!r})"
        )

    def __reduce__(self) -> tuple:
        return (Record, self.fields())

    def fields(self) -> tuple[bytes, str, int, Optional[float]]:
        """
        C{(value, content_type, version, expires_at)}, read in one go.
        """
        version, expires_at, content_type, offset = unpack_header(self.packed)
        return self.packed[offset:], content_type, version, expires_at

    @property
    def value(self) -> bytes:
        return self.packed[unpack_header(self.packed)[3] :]

    @property
    def value_size(self) -> int:
        """
        The length of the value, without a copy of it.
        """
        return len(self.packed) - unpack_header(self.packed)[3]

    @property
    def content_type(self) -> str:
        return unpack_header(self.packed)[2]

    @property
    def version(self) -> int:
        return _VERSION.unpack_from(self.packed)[0]

    @property
    def expires_at(self) -> Optional[float]:
        packed = self.packed
        if not packed[_EXPIRES_BYTE] & 1:
            return None
        return _EXPIRY.unpack_from(packed, _HEADER.size)[0]

    def expired(self, now: float) -> bool:
        expires_at = self.expires_at
        return expires_at is not None and expires_at <= now


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
