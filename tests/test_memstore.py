# -*- test-case-name: tests.test_memstore -*-
"""
Tests for L{twisted_kv.core.memstore}.
"""

from __future__ import annotations

from typing import Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.strategies import content_types, expiries, key_sets, ordered_keys, values
from twisted_kv.core import memstore as memstore_module
from twisted_kv.core import records as records_module
from twisted_kv.core.memstore import RECORD_OVERHEAD, MemStore, record_cost
from twisted_kv.core.records import (
    SHARED_CONTENT_TYPE_LENGTH,
    SHARED_CONTENT_TYPES,
    Change,
    Record,
)

# Any content type a caller of the single-process store may give, lone
# surrogates and types too long to be numbered included.
any_content_types = content_types | st.text() | st.text(
    min_size=SHARED_CONTENT_TYPE_LENGTH + 1, max_size=SHARED_CONTENT_TYPE_LENGTH + 3
)
records = st.builds(
    Record, values, any_content_types, st.integers(min_value=0, max_value=2**64 - 1), expiries
)


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
        self.assertEqual(store.get("a"), change.record)
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

    def test_add(self) -> None:
        """
        L{MemStore.add} stores a record under a key that holds nothing, as
        a put would, and leaves a key that holds one alone.
        """
        store, applied = MemStore(), MemStore()
        change = _put("a", b"1")
        self.assertTrue(store.add("a", change.record))
        applied.apply(change)
        self.assertFalse(store.add("a", _put("a", b"22", 2).record))
        self.assertEqual(
            (store.get("a"), len(store), store.bytes_used, store.count_tagged("a")),
            (applied.get("a"), len(applied), applied.bytes_used, applied.count_tagged("a")),
        )

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

    @given(st.lists(st.tuples(ordered_keys, st.none() | values), max_size=40))
    def test_count_tagged(self, writes: list) -> None:
        """
        L{MemStore.count_tagged} counts the keys held that start with a tag
        character, through any mix of puts, replacements and deletes, and
        is 0 for every tag after L{MemStore.clear}.
        """
        store = MemStore()
        for version, (key, value) in enumerate(writes, 1):
            store.apply(_delete(key) if value is None else _put(key, value, version))
        for tag in {key[:1] for key, _ in writes if key}:
            expected = sum(1 for key, _ in store.items() if key.startswith(tag))
            self.assertEqual(store.count_tagged(tag), expected, tag)
        store.clear()
        self.assertEqual([store.count_tagged(key[:1]) for key, _ in writes], [0] * len(writes))

    def test_clear(self) -> None:
        """
        L{MemStore.clear} drops every record and resets the accounting.
        """
        store = MemStore()
        store.apply(_put("a"))
        store.apply(_put("b"))
        store.clear()
        self.assertEqual((len(store), store.bytes_used, list(store.items())), (0, 0, []))

    def test_items_are_every_record(self) -> None:
        """
        L{MemStore.items} gives every key with its current record.
        """
        store = MemStore()
        for key in ["b", "a", "c"]:
            store.apply(_put(key))
        store.apply(_put("a", b"new", 2))
        store.apply(_delete("c"))
        self.assertEqual(
            dict(store.items()), {"a": store.get("a"), "b": store.get("b")}
        )
        self.assertEqual(store.get("a").value, b"new")


    def test_keys_and_expiries(self) -> None:
        """
        L{MemStore.keys} gives every key; L{MemStore.expiries} the expiry
        time, version and key of the records with an expiry time.
        """
        store = MemStore()
        store.apply(_put("a"))
        expiring = Change("put", "b", 2, Record(b"v", "text/plain", 2, 30.0), True)
        store.apply(expiring)
        store.apply(Change("put", "c", 3, Record(b"v", "\ud800" * 200, 3, 40.0), True))
        store.apply(_delete("c"))
        self.assertEqual(sorted(store.keys()), ["a", "b"])
        self.assertEqual(list(store.expiries()), [(30.0, 2, "b")])

    def test_expiries_look_only_at_expiring_records(self) -> None:
        """
        L{MemStore.expiries} looks only at the records with an expiry time
        (a new primary asks for them, and most stores hold none), which
        it follows through replacements, deletions, copies and L{clear}.
        """
        store = MemStore()
        for key in "abcdef":
            store.apply(_put(key))
        store.apply(Change("put", "b", 2, Record(b"v", "t", 2, 30.0), True))
        store.apply(Change("put", "c", 3, Record(b"v", "t", 3, 40.0), True))
        store.add("g", Record(b"v", "t", 4, 50.0))
        store.apply(_put("c", b"no expiry", 5))
        store.apply(Change("put", "b", 6, Record(b"v", "t", 6, 35.0), True))
        copy = store.copy()
        store.apply(_delete("g"))
        looked_at = []
        for name in ("unpack_header", "packed_expires"):
            read = getattr(records_module, name)
            self.patch(memstore_module, name, lambda packed, read=read: looked_at.append(packed)
                       or read(packed))
        self.assertEqual(list(store.expiries()), [(35.0, 6, "b")])
        self.assertEqual(looked_at, [store.get("b").packed])
        self.assertEqual(sorted(copy.expiries()), [(35.0, 6, "b"), (50.0, 4, "g")])
        store.clear()
        self.assertEqual(list(store.expiries()), [])

    def test_release(self) -> None:
        """
        L{MemStore.release} drops at most the records asked for each call,
        until the store is empty.
        """
        store = MemStore()
        for key in "abcde":
            store.apply(_put(key))
        self.assertEqual([store.release(2) for _ in range(4)], [2, 2, 1, 0])
        self.assertEqual((len(store), store.bytes_used, list(store.items())), (0, 0, []))

    def test_release_counts_down(self) -> None:
        """
        The records L{MemStore.release} has not dropped yet still count in
        C{bytes_used}, which falls as they go (each batch by the average
        cost of the records left: records of one size, exactly theirs).
        """
        store = MemStore()
        for key in "abcde":
            store.apply(_put(key))
        cost = store.bytes_used // 5
        left = []
        for _ in range(3):
            store.release(2)
            left.append(store.bytes_used)
        self.assertEqual(left, [3 * cost, cost, 0])


class PackedRecordTests(SynchronousTestCase):
    """
    A stored record is one C{bytes} object: a short header and the value.
    """

    @given(records)
    def test_stores_the_record_itself(self, record: Record) -> None:
        """
        The store keeps the packed form of the record it is given, not a
        copy, and gives back a record around that same object, whatever
        its content type, version and expiry.
        """
        store = MemStore()
        store.apply(Change("put", "k", record.version, record, True))
        stored = store.get("k")
        self.assertEqual(stored, record)
        self.assertIs(stored.packed, record.packed)
        self.assertEqual(stored.fields(), record.fields())

    @given(ordered_keys, records)
    def test_store_gives_back_what_it_was_given(self, key: str, record: Record) -> None:
        """
        The store answers with a record equal to the one applied, and
        accounts for it as L{record_cost} says.
        """
        store = MemStore()
        store.apply(Change("put", key, record.version, record, True))
        self.assertEqual(store.get(key), record)
        self.assertEqual(store.bytes_used, record_cost(key, record))
        self.assertEqual(store.growth(key, record.value), 0)

    def test_header_is_short(self) -> None:
        """
        A record of a common content type without an expiry costs its value
        and 10 bytes; an expiry adds 8.
        """
        value = b"v" * 100
        plain = Record(value, "application/octet-stream", 2**50).packed
        expiring = Record(value, "application/octet-stream", 2**50, 12.5).packed
        self.assertEqual((len(plain), len(expiring)), (110, 118))

    def test_content_types_shared(self) -> None:
        """
        Records of the same content type, decoded as distinct strings, come
        back holding one string object.
        """
        first = Record(b"1", "".join(["text/", "csv"]), 1)
        second = Record(b"2", "".join(["text/", "csv"]), 2)
        self.assertIs(first.content_type, second.content_type)

    def test_content_type_table_is_bounded(self) -> None:
        """
        However many distinct content types arrive, the shared table stays
        within L{SHARED_CONTENT_TYPES}, and records of types beyond it keep
        their content type in full.
        """
        # The table is the process's, and only grows: this test fills an
        # empty one of its own, and gives the other tests theirs back.
        self.patch(records_module, "_content_types", [])
        self.patch(records_module, "_content_type_numbers", {})
        types = [f"type/{n}" for n in range(SHARED_CONTENT_TYPES + 50)]
        packed = [Record(b"v", content_type, 1).packed for content_type in types]
        # A type beyond the table is stored in full: its length (4 bytes)
        # and its UTF-8, where a numbered one costs nothing.
        by_number = len(packed[0])
        self.assertEqual(
            [len(p) - by_number for p in packed],
            [0] * SHARED_CONTENT_TYPES + [4 + len(t) for t in types[SHARED_CONTENT_TYPES:]],
        )
        self.assertEqual([Record.from_packed(p).content_type for p in packed], types)


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

    def test_key_order_whatever_the_insertion_order(self) -> None:
        """
        Keys are listed in code point order, not in the order written.
        """
        store = self._store(["b", "\u00e9", "a/b", "a", "B"])
        self.assertEqual(list(store.keys_from()), ["B", "a", "a/b", "b", "\u00e9"])

    def test_index_built_by_the_first_listing(self) -> None:
        """
        A store that is never listed keeps no sorted index; the first listing
        builds it, and clearing the store drops it.
        """
        # White-box on purpose: the index is a memory saving that nothing
        # outside the store can see (listing order is checked through
        # keys_from above), and bytes_used counts records, not the index.
        store = self._store(["b", "a"])
        self.assertIsNone(store._index)
        self.assertEqual(list(store.keys_from()), ["a", "b"])
        self.assertEqual(list(store._index), ["a", "b"])
        store.clear()
        self.assertIsNone(store._index)
        self.assertEqual(list(store.keys_from()), [])

    @given(
        st.lists(
            st.tuples(st.sampled_from(["put", "delete", "list"]), ordered_keys),
            max_size=60,
        )
    )
    def test_writes_between_listings(self, steps: list) -> None:
        """
        Puts, replacements and deletes made between listings are all seen by
        the next listing, exactly as a brute-force sort of the live keys.
        """
        store = MemStore()
        live: set = set()
        for version, (action, key) in enumerate(steps, 1):
            if action == "put":
                store.apply(_put(key, version=version))
                live.add(key)
            elif action == "delete":
                store.apply(_delete(key))
                live.discard(key)
            else:
                expected = sorted(k for k in live if k.startswith(key))
                self.assertEqual(list(store.keys_from(key)), expected)
        self.assertEqual(list(store.keys_from()), sorted(live))
