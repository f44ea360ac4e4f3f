# -*- test-case-name: tests.test_memstore -*-
"""
The in-memory storage engine: records by key, listed in key order, with size
accounting.

One L{MemStore} holds one partition's keys on one replica (or, in
L{twisted_kv.cluster.local}, every key of a single-process store).

Memory per key is what limits how many keys a node holds, so the store keeps
each record as the one C{bytes} object it is made of (L{Record.packed}: a
short header, then the value), not as a L{Record} with its fields as objects
of their own.  For a 100-byte value the whole record takes the memory the
value alone would.  The record a change carries is stored as it is, without
a copy (so the replication log that holds the change shares it), and
L{MemStore.get} wraps the stored bytes again, without copying them either.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, cast

from sortedcontainers import SortedList

from twisted_kv.core.records import Change, Record, packed_expires, unpack_header

# Rough per-key bookkeeping cost (dict slot, record header), added to key and
# value lengths when accounting memory use.
RECORD_OVERHEAD = 200


def record_cost(key: str, record: Record) -> int:
    """
    Approximate bytes of memory one stored record costs.
    """
    return _stored_cost(key, record.packed)


def _stored_cost(key: str, packed: bytes) -> int:
    """
    L{record_cost} of a stored record, from its packed form.
    """
    return RECORD_OVERHEAD + len(key) + len(packed) - unpack_header(packed)[3]


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
        # the keys whose record has an expiry time (few, usually), so that
        # a new primary finds them without looking at every record
        self._expiring: set[str] = set()

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
        return None if packed is None else Record.from_packed(packed)

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
        packed = self._records[key] = record.packed
        self.bytes_used += _stored_cost(key, packed)
        self._tagged[key[:1]] = self._tagged.get(key[:1], 0) + 1
        if packed_expires(packed):
            self._expiring.add(key)
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
            packed = self._records[key] = record.packed
            self.bytes_used += _stored_cost(key, packed)
            if packed_expires(packed):
                self._expiring.add(key)
            elif packed_expires(old):
                self._expiring.discard(key)
        else:
            del self._records[key]
            self._expiring.discard(key)
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
        no particular order; the records themselves are not rebuilt, and
        those without an expiry time are not looked at.
        """
        for key in self._expiring:
            version, expires_at, _, _ = unpack_header(self._records[key])
            yield cast(float, expires_at), version, key

    def items(self) -> Iterator[tuple[str, Record]]:
        """
        Every (key, record) pair, in no particular order.
        """
        for key, packed in self._records.items():
            yield key, Record.from_packed(packed)

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
        other._expiring = set(self._expiring)
        return other

    def clear(self) -> None:
        self._records.clear()
        self._index = None
        self.bytes_used = 0
        self._tagged.clear()
        self._expiring.clear()

    def release(self, limit: int) -> int:
        """
        Drop up to C{limit} records of a store no longer in use, a batch at
        a time: freeing a partition's copy of 16,000 records at once takes
        a millisecond of the reactor, and a new map may drop a dozen copies
        on one node together (see L{twisted_kv.core.replica.Replica.forget}).

        C{bytes_used} goes on counting the records not dropped yet: it
        falls by the average cost of the records a call drops, which takes
        no look at them (it reaches 0 with the last).

        @return: how many records this dropped (fewer than C{limit} once
            the store is empty).
        """
        records = self._records
        count = min(limit, len(records))
        if count:
            self.bytes_used -= self.bytes_used * count // len(records)
        for _ in range(count):
            records.popitem()
        if not records:
            self.clear()
        return count
