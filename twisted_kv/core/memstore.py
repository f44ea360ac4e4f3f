# -*- test-case-name: tests.test_memstore -*-
"""
The in-memory storage engine: records in key order, with size accounting.

One L{MemStore} holds one partition's keys on one replica (or, in
L{twisted_kv.local}, every key of a single-process store).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

from sortedcontainers import SortedDict

from twisted_kv.core.records import Change, Record

# Rough per-key bookkeeping cost (dict slot, sorted index, record object),
# added to key and value lengths when accounting memory use.
RECORD_OVERHEAD = 200


def record_cost(key: str, record: Record) -> int:
    """
    Approximate bytes of memory one stored record costs.
    """
    return RECORD_OVERHEAD + len(key) + len(record.value)


class MemStore:
    """
    Records by key, iterable in key order.

    @ivar bytes_used: approximate memory held by the records, see
        L{record_cost}.
    """

    def __init__(self) -> None:
        self._records: SortedDict = SortedDict()
        self.bytes_used = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> Optional[Record]:
        return self._records.get(key)

    def growth(self, key: str, value: bytes) -> int:
        """
        How many bytes storing C{value} under C{key} would add (negative when
        it replaces a larger record).
        """
        old = self._records.get(key)
        replaced = 0 if old is None else record_cost(key, old)
        return RECORD_OVERHEAD + len(key) + len(value) - replaced

    def apply(self, change: Change) -> None:
        """
        Make C{change} the current state of its key.
        """
        old = self._records.pop(change.key, None)
        if old is not None:
            self.bytes_used -= record_cost(change.key, old)
        if change.record is not None:
            self._records[change.key] = change.record
            self.bytes_used += record_cost(change.key, change.record)

    def keys_from(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[str]:
        """
        Keys starting with C{prefix}, strictly after C{start_after}, in order.
        """
        lower = prefix if start_after is None or start_after < prefix else start_after
        inclusive = start_after is None or start_after < prefix
        for key in self._records.irange(minimum=lower, inclusive=(inclusive, True)):
            if not key.startswith(prefix):
                return
            yield key

    def items(self) -> Iterable[tuple[str, Record]]:
        """
        Every (key, record) pair, in key order.
        """
        return self._records.items()

    def clear(self) -> None:
        self._records.clear()
        self.bytes_used = 0
