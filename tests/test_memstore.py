# -*- test-case-name: tests.test_memstore -*-
"""
Tests for L{twisted_kv.core.memstore}.
"""

from __future__ import annotations

from typing import Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core.memstore import RECORD_OVERHEAD, MemStore, record_cost
from twisted_kv.core.records import Change, Record
from tests.strategies import key_sets, ordered_keys, values


def _put(key: str, value: bytes = b"v", version: int = 1) -> Change:
    return Change("put", key, version, Record(value, "text/plain", version), True)


def _delete(key: str) -> Change:
    return Change("delete", key, 2, None)


class ApplyTests(SynchronousTestCase):
    """
    L{MemStore.apply} makes a change the current state of its key.
    """

    def test_put_then_get(self) -> None:
        """
        A put stores its record; other keys stay absent.
        """
        store = MemStore()
        change = _put("a", b"1")
        store.apply(change)
        self.assertIs(store.get("a"), change.record)
        self.assertIsNone(store.get("b"))
        self.assertEqual(len(store), 1)

    def test_replace(self) -> None:
        """
        A second put to the same key replaces the record.
        """
        store = MemStore()
        store.apply(_put("a", b"1", 1))
        store.apply(_put("a", b"22", 2))
        self.assertEqual(store.get("a").value, b"22")
        self.assertEqual(len(store), 1)

    def test_delete(self) -> None:
        """
        A change without a record removes the key; removing an absent key
        changes nothing.
        """
        store = MemStore()
        store.apply(_put("a"))
        store.apply(_delete("a"))
        self.assertIsNone(store.get("a"))
        self.assertEqual(len(store), 0)
        store.apply(Change("expire", "zz", 3, None))
        self.assertEqual((len(store), store.bytes_used), (0, 0))

    def test_bytes_used(self) -> None:
        """
        Each record costs the fixed overhead plus its key and value lengths.
        """
        store = MemStore()
        store.apply(_put("ab", b"xyz"))
        self.assertEqual(store.bytes_used, RECORD_OVERHEAD + 5)
        store.apply(_put("ab", b"x"))
        self.assertEqual(store.bytes_used, RECORD_OVERHEAD + 3)
        store.apply(_put("c", b""))
        self.assertEqual(store.bytes_used, 2 * RECORD_OVERHEAD + 4)
        self.assertEqual(record_cost("ab", Record(b"xyz", "t", 1)), RECORD_OVERHEAD + 5)

    @given(st.lists(st.tuples(ordered_keys, st.none() | values), max_size=40))
    def test_accounting_returns_to_zero(self, writes: list) -> None:
        """
        After any mix of puts and deletes, C{bytes_used} equals the cost of
        the records held, and deleting every key brings it back to 0.
        """
        store = MemStore()
        for version, (key, value) in enumerate(writes, 1):
            store.apply(_delete(key) if value is None else _put(key, value, version))
        expected = sum(record_cost(key, record) for key, record in store.items())
        self.assertEqual(store.bytes_used, expected)
        for key, _ in list(store.items()):
            store.apply(_delete(key))
        self.assertEqual((store.bytes_used, len(store)), (0, 0))

    def test_clear(self) -> None:
        """
        L{MemStore.clear} drops every record and resets the accounting.
        """
        store = MemStore()
        store.apply(_put("a"))
        store.apply(_put("b"))
        store.clear()
        self.assertEqual((len(store), store.bytes_used, list(store.items())), (0, 0, []))

    def test_items_in_key_order(self) -> None:
        """
        L{MemStore.items} iterates in key (code point) order, whatever the
        insertion order.
        """
        store = MemStore()
        for key in ["b", "\u00e9", "a/b", "a", "B"]:
            store.apply(_put(key))
        self.assertEqual([k for k, _ in store.items()], ["B", "a", "a/b", "b", "\u00e9"])


class KeysFromTests(SynchronousTestCase):
    """
    L{MemStore.keys_from} lists keys by prefix, strictly after a cursor.
    """

    def _store(self, keys) -> MemStore:
        store = MemStore()
        for key in keys:
            store.apply(_put(key))
        return store

    def test_examples(self) -> None:
        """
        Hand-picked cases: no cursor, a cursor inside the prefix range, a
        cursor before it, a cursor equal to the prefix, a cursor past it.
        """
        store = self._store(["a", "ab", "abc", "abd", "b", "ba"])
        self.assertEqual(list(store.keys_from("ab")), ["ab", "abc", "abd"])
        self.assertEqual(list(store.keys_from("ab", "abc")), ["abd"])
        self.assertEqual(list(store.keys_from("ab", "a")), ["ab", "abc", "abd"])
        self.assertEqual(list(store.keys_from("ab", "ab")), ["abc", "abd"])
        self.assertEqual(list(store.keys_from("ab", "b")), [])
        self.assertEqual(list(store.keys_from("", "abd")), ["b", "ba"])
        self.assertEqual(list(store.keys_from("c")), [])

    @given(key_sets, ordered_keys, st.none() | ordered_keys)
    def test_matches_brute_force(
        self, keys: set, prefix: str, start_after: Optional[str]
    ) -> None:
        """
        The result equals filtering every key by prefix and cursor, then
        sorting.
        """
        store = self._store(keys)
        expected = sorted(
            k
            for k in keys
            if k.startswith(prefix) and (start_after is None or k > start_after)
        )
        self.assertEqual(list(store.keys_from(prefix, start_after)), expected)

    @given(key_sets, ordered_keys, st.integers(min_value=1, max_value=4))
    def test_paging_visits_every_key_once(self, keys: set, prefix: str, page: int) -> None:
        """
        Resuming after the last key of each page visits every matching key
        exactly once, in order.
        """
        store = self._store(keys)
        seen: list = []
        cursor = None
        for _ in range(len(keys) + 1):
            batch = list(store.keys_from(prefix, cursor))[:page]
            if not batch:
                break
            seen.extend(batch)
            cursor = batch[-1]
        else:
            self.fail(f"paging did not end: {seen!r}")
        self.assertEqual(seen, sorted(k for k in keys if k.startswith(prefix)))
