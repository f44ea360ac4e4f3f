# -*- test-case-name: tests.test_memstore -*-
"""
The in-memory storage engine: records by key, listed in key order, with size
accounting.

One L{MemStore} holds one partition's keys on one replica (or, in
L{twisted_kv.cluster.local}, every key of a single-process store).

Memory per key is what limits how many keys a node holds, so a stored record
is one C{bytes} object, not a L{Record} with its version, content type and
value as objects of their own: a short header (the version, whether an
expiry time follows, and the content type's number in a small shared table)
followed by the value.  For a 100-byte value the whole record then takes the
memory the value alone took, and L{MemStore.get} builds the L{Record} when it
is asked for.
"""

from __future__ import annotations

import struct
from typing import Iterable, Iterator, Optional, cast

from sortedcontainers import SortedList

from twisted_kv.core.records import Change, Record

# Rough per-key bookkeeping cost (dict slot, record header), added to key and
# value lengths when accounting memory use.
RECORD_OVERHEAD = 200

# How many distinct content types get a number; records of any other type
# carry their content type in full.  The table only ever grows, and only up
# to this size, whatever types clients send.
SHARED_CONTENT_TYPES = 255
# Longer content types are always carried in full.
SHARED_CONTENT_TYPE_LENGTH = 128

# version, then (content type number << 1) | (an expiry time follows)
_HEADER = struct.Struct("<QH")
_EXPIRY = struct.Struct("<d")
# The header byte holding the "an expiry time follows" bit.
_EXPIRES_BYTE = struct.calcsize("<Q")
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


def pack_record(record: Record) -> bytes:
    """
    The stored form of C{record}.
    """
    number = _content_type_number(record.content_type)
    parts = [_HEADER.pack(record.version, number << 1 | (record.expires_at is not None))]
    if record.expires_at is not None:
        parts.append(_EXPIRY.pack(record.expires_at))
    if not number:
        content_type = record.content_type.encode("utf-8", "surrogatepass")
        parts += [_LENGTH.pack(len(content_type)), content_type]
    parts.append(record.value)
    return b"".join(parts)


def _unpack(packed: bytes) -> tuple[int, Optional[float], str, int]:
    """
    The version, expiry time, content type and value offset of a stored
    record.
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


def unpack_record(packed: bytes) -> Record:
    """
    The L{Record} that L{pack_record} stored as C{packed}.
    """
    version, expires_at, content_type, offset = _unpack(packed)
    return Record(packed[offset:], content_type, version, expires_at)


def record_cost(key: str, record: Record) -> int:
    """
    Approximate bytes of memory one stored record costs.
    """
    return RECORD_OVERHEAD + len(key) + len(record.value)


def _stored_cost(key: str, packed: bytes) -> int:
    """
    L{record_cost} of a stored record, without rebuilding it.
    """
    return RECORD_OVERHEAD + len(key) + len(packed) - _unpack(packed)[3]


class MemStore:
    """
    Records by key, listed in key order.

    The records live in a plain dict.  The sorted index of keys that listings
    need is built at the first listing and kept up to date from then on (at
    O(log n) a write), so a store that is never listed (most replicas) does
    not pay for it.

    @ivar bytes_used: approximate memory held by the records, see
        L{record_cost}.
    """

    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}
        self._index: Optional[SortedList] = None
        self.bytes_used = 0
        # keys by first character: the namespace tag of core.keyspace
        self._tagged: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._records)

    def count_tagged(self, tag: str) -> int:
        """
        How many keys start with the one-character C{tag}, counted as they
        come and go rather than by a scan: a node reports its counts to its
        peers several times a second.
        """
        return self._tagged.get(tag, 0)

    def get(self, key: str) -> Optional[Record]:
        packed = self._records.get(key)
        return None if packed is None else unpack_record(packed)

    def growth(self, key: str, value: bytes) -> int:
        """
        How many bytes storing C{value} under C{key} would add (negative when
        it replaces a larger record).
        """
        old = self._records.get(key)
        replaced = 0 if old is None else _stored_cost(key, old)
        return RECORD_OVERHEAD + len(key) + len(value) - replaced

    def add(self, key: str, record: Record) -> bool:
        """
        Store C{record} under C{key} if C{key} holds nothing, as L{apply}
        would: the short way for a store loaded in bulk.

        @return: whether C{key} held nothing (else nothing changed).
        """
        if key in self._records:
            return False
        self._records[key] = pack_record(record)
        self.bytes_used += record_cost(key, record)
        self._tagged[key[:1]] = self._tagged.get(key[:1], 0) + 1
        if self._index is not None:
            self._index.add(key)
        return True

    def apply(self, change: Change) -> None:
        """
        Make C{change} the current state of its key.
        """
        key, record = change.key, change.record
        old = self._records.get(key)
        if old is None:
            if record is not None:
                self.add(key, record)
            return
        self.bytes_used -= _stored_cost(key, old)
        if record is not None:
            self._records[key] = pack_record(record)
            self.bytes_used += record_cost(key, record)
        else:
            del self._records[key]
            self._tagged[key[:1]] -= 1
            if self._index is not None:
                self._index.remove(key)

    def keys_from(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[str]:
        """
        Keys starting with C{prefix}, strictly after C{start_after}, in order.
        """
        lower = prefix if start_after is None or start_after < prefix else start_after
        inclusive = start_after is None or start_after < prefix
        if self._index is None:
            self._index = SortedList(self._records)
        for key in self._index.irange(minimum=lower, inclusive=(inclusive, True)):
            if not key.startswith(prefix):
                return
            yield key

    def keys(self) -> Iterable[str]:
        """
        Every key, in no particular order.
        """
        return self._records.keys()

    def expiries(self) -> Iterator[tuple[float, int, str]]:
        """
        (expiry time, version, key) of every record with an expiry time, in
        no particular order; the records themselves are not rebuilt.
        """
        for key, packed in self._records.items():
            if packed[_EXPIRES_BYTE] & 1:
                version, expires_at, _, _ = _unpack(packed)
                yield cast(float, expires_at), version, key

    def items(self) -> Iterator[tuple[str, Record]]:
        """
        Every (key, record) pair, in no particular order.
        """
        for key, packed in self._records.items():
            yield key, unpack_record(packed)

    def copy(self) -> MemStore:
        """
        A store holding the records this one holds now, unchanged by later
        writes to either: for a partition's dump as of one moment.  It
        copies one pointer a key; the stored records, immutable bytes, are
        shared.
        """
        other = MemStore()
        other._records = dict(self._records)
        other.bytes_used = self.bytes_used
        other._tagged = dict(self._tagged)
        return other

    def clear(self) -> None:
        self._records.clear()
        self._index = None
        self.bytes_used = 0
        self._tagged.clear()
