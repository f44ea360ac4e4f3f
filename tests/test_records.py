# -*- test-case-name: tests.test_records -*-
"""
Tests for L{twisted_kv.core.records}: version stamps and the rules of
L{decide} for every operation against an absent, a live and an expired key.
"""

from __future__ import annotations

from typing import Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.strategies import content_types, epochs, expiries, seqs, values
from twisted_kv.core.records import (
    Change,
    Delete,
    Expire,
    Put,
    Record,
    decide,
    format_version,
    live,
    make_version,
    version_epoch,
    version_seq,
)
from twisted_kv.errors import KeyExists, KeyNotFound, PreconditionFailed

NOW = 1000.0
OLD = make_version(2, 7)
NEW = make_version(3, 1)
OLD_TAG = format_version(OLD)

LIVE = Record(b"old", "text/plain", OLD)
LIVE_WITH_TTL = Record(b"old", "text/plain", OLD, expires_at=NOW + 0.5)
EXPIRED = Record(b"old", "text/plain", OLD, expires_at=NOW)


def _decide(operation, current: Optional[Record]) -> Optional[Change]:
    return decide(operation, current, NEW, NOW)


class VersionTests(SynchronousTestCase):
    """
    Versions pack (epoch, seq) into one integer whose order is log order.
    """

    @given(epochs, seqs)
    def test_packing_round_trip(self, epoch: int, seq: int) -> None:
        """
        L{version_epoch} and L{version_seq} recover what L{make_version}
        packed, for every sequence number below 2**40.
        """
        version = make_version(epoch, seq)
        self.assertEqual((version_epoch(version), version_seq(version)), (epoch, seq))

    @given(epochs, seqs)
    def test_format_round_trip(self, epoch: int, seq: int) -> None:
        """
        The client-visible string is C{"epoch.seq"}, so it can be parsed
        back into the same pair.
        """
        text = format_version(make_version(epoch, seq))
        left, right = text.split(".")
        self.assertEqual((int(left), int(right)), (epoch, seq))

    @given(epochs, seqs, epochs, seqs)
    def test_order_is_epoch_then_seq(self, e1: int, s1: int, e2: int, s2: int) -> None:
        """
        Integer order of versions is lexicographic (epoch, seq) order, and
        distinct versions format to distinct strings.
        """
        v1, v2 = make_version(e1, s1), make_version(e2, s2)
        self.assertEqual(v1 < v2, (e1, s1) < (e2, s2))
        self.assertEqual(v1 == v2, (e1, s1) == (e2, s2))
        self.assertEqual(format_version(v1) == format_version(v2), v1 == v2)

    def test_later_epoch_beats_any_seq(self) -> None:
        """
        A write ordered in a later epoch is newer than every write of an
        earlier epoch, however long that epoch's log grew.
        """
        self.assertGreater(make_version(4, 0), make_version(3, 2**40 - 1))


class RecordTests(SynchronousTestCase):
    """
    Expiry of records as readers see it.
    """

    def test_expired_at_the_deadline(self) -> None:
        """
        A record is expired from its C{expires_at} on, not before.
        """
        record = Record(b"v", "text/plain", 1, expires_at=10.0)
        self.assertFalse(record.expired(9.999))
        self.assertTrue(record.expired(10.0))
        self.assertIsNone(live(record, 10.0))
        self.assertIs(live(record, 9.0), record)

    def test_no_ttl_never_expires(self) -> None:
        """
        A record without C{expires_at} is live at any time; L{live} passes
        C{None} through.
        """
        record = Record(b"v", "text/plain", 1)
        self.assertFalse(record.expired(1e18))
        self.assertIsNone(live(None, 0.0))


class PackedRecordTests(SynchronousTestCase):
    """
    A record is one C{bytes} object, its packed form, from which its fields
    are read.
    """

    @given(values, content_types | st.text(), st.integers(min_value=0, max_value=2**64 - 1), expiries)
    def test_fields_round_trip(
        self, value: bytes, content_type: str, version: int, expires_at: Optional[float]
    ) -> None:
        """
        Each field reads back as given, one by one and all at once, and a
        record wrapped around the packed form is equal to the original.
        """
        record = Record(value, content_type, version, expires_at)
        fields = (value, content_type, version, expires_at)
        self.assertEqual(record.fields(), fields)
        self.assertEqual(
            (record.value, record.content_type, record.version, record.expires_at), fields
        )
        again = Record.from_packed(record.packed)
        self.assertEqual(again, record)
        self.assertEqual(hash(again), hash(record))
        self.assertIs(again.packed, record.packed)

    def test_equality_is_by_fields(self) -> None:
        """
        Records are equal when all their fields are; any one field differing
        makes them differ.
        """
        base = Record(b"v", "text/plain", 1, 5.0)
        self.assertEqual(base, Record(b"v", "text/plain", 1, 5.0))
        for other in (
            Record(b"w", "text/plain", 1, 5.0),
            Record(b"v", "text/csv", 1, 5.0),
            Record(b"v", "text/plain", 2, 5.0),
            Record(b"v", "text/plain", 1, None),
        ):
            self.assertNotEqual(base, other)
        self.assertNotEqual(base, base.packed)

    def test_immutable(self) -> None:
        """
        A record's fields cannot be set: the store, the log and the change
        feed share one.
        """
        record = Record(b"v", "text/plain", 1)
        with self.assertRaises(AttributeError):
            record.packed = b"other"  # type: ignore[misc]
        with self.assertRaises(AttributeError):
            record.value = b"other"  # type: ignore[misc]
        self.assertEqual(record.value, b"v")

    def test_repr_shows_fields(self) -> None:
        """
        A record shows its fields, not its packed form.
        """
        self.assertEqual(
            repr(Record(b"v", "text/plain", 3, 2.5)),
            "Record(value=b'v', content_type='text/plain', version=3, expires_at=2.5)",
        )


class UnconditionalPutTests(SynchronousTestCase):
    """
    A plain put creates or replaces, treating an expired record as absent.
    """

    def test_absent(self) -> None:
        """
        A put to an absent key creates it with the given version, value and
        content type.
        """
        change = _decide(Put("k", b"v", "text/plain"), None)
        self.assertEqual(
            change, Change("put", "k", NEW, Record(b"v", "text/plain", NEW, None), True)
        )

    def test_live(self) -> None:
        """
        A put to a live key replaces it and reports C{created=False}.
        """
        change = _decide(Put("k", b"v"), LIVE)
        self.assertEqual(change.kind, "put")
        self.assertFalse(change.created)
        self.assertEqual(change.record.value, b"v")
        self.assertEqual(change.record.version, NEW)

    def test_expired(self) -> None:
        """
        A put over an expired record counts as a creation.
        """
        change = _decide(Put("k", b"v"), EXPIRED)
        self.assertTrue(change.created)
        self.assertEqual(change.record.value, b"v")

    def test_ttl_sets_expires_at(self) -> None:
        """
        A TTL becomes an absolute deadline: now + ttl.
        """
        change = _decide(Put("k", b"v", ttl=30.0), None)
        self.assertEqual(change.record.expires_at, NOW + 30.0)
        self.assertIsNotNone(live(change.record, NOW + 29.9))
        self.assertIsNone(live(change.record, NOW + 30.0))

    def test_put_without_ttl_clears_ttl(self) -> None:
        """
        Replacing a record that had a TTL with a put without one leaves a
        record that never expires.
        """
        change = _decide(Put("k", b"v"), LIVE_WITH_TTL)
        self.assertIsNone(change.record.expires_at)


class IfMatchPutTests(SynchronousTestCase):
    """
    C{if_match} requires the live record to carry exactly that version.
    """

    def test_right_version(self) -> None:
        """
        The current version's string lets the put through.
        """
        change = _decide(Put("k", b"v", if_match=OLD_TAG), LIVE)
        self.assertEqual(change.record.value, b"v")
        self.assertFalse(change.created)

    def test_wrong_version(self) -> None:
        """
        Any other version string fails the precondition.
        """
        for tag in [format_version(NEW), "2.8", "garbage", ""]:
            self.assertRaises(PreconditionFailed, _decide, Put("k", b"v", if_match=tag), LIVE)

    def test_missing_key(self) -> None:
        """
        C{if_match} on an absent key fails the precondition (RFC 9110: 412).
        """
        self.assertRaises(PreconditionFailed, _decide, Put("k", b"v", if_match=OLD_TAG), None)

    def test_expired_key(self) -> None:
        """
        An expired record no longer matches its own version.
        """
        self.assertRaises(
            PreconditionFailed, _decide, Put("k", b"v", if_match=OLD_TAG), EXPIRED
        )


class IfNoneMatchPutTests(SynchronousTestCase):
    """
    C{if_none_match} (C{If-None-Match: *}) requires the key to be absent.
    """

    def test_absent(self) -> None:
        """
        The put goes through on an absent key.
        """
        self.assertTrue(_decide(Put("k", b"v", if_none_match=True), None).created)

    def test_expired(self) -> None:
        """
        An expired record counts as absent.
        """
        self.assertTrue(_decide(Put("k", b"v", if_none_match=True), EXPIRED).created)

    def test_live(self) -> None:
        """
        A live record fails the precondition (412, not 409).
        """
        self.assertRaises(
            PreconditionFailed, _decide, Put("k", b"v", if_none_match=True), LIVE
        )
        self.assertRaises(
            PreconditionFailed, _decide, Put("k", b"v", if_none_match=True), LIVE_WITH_TTL
        )


class CreateOnlyPutTests(SynchronousTestCase):
    """
    C{create_only} (HTTP C{POST}) is C{if_none_match} answered with
    L{KeyExists}.
    """

    def test_absent(self) -> None:
        """
        Creating an absent key succeeds.
        """
        self.assertTrue(_decide(Put("k", b"v", create_only=True), None).created)

    def test_expired(self) -> None:
        """
        Creating over an expired record succeeds.
        """
        self.assertTrue(_decide(Put("k", b"v", create_only=True), EXPIRED).created)

    def test_live(self) -> None:
        """
        A live key makes the creation fail with L{KeyExists}, not
        L{PreconditionFailed}.
        """
        error = self.assertRaises(KeyExists, _decide, Put("k", b"v", create_only=True), LIVE)
        self.assertNotIsInstance(error, PreconditionFailed)


class DeleteTests(SynchronousTestCase):
    """
    Deletes remove live keys, optionally conditionally.
    """

    def test_live(self) -> None:
        """
        Deleting a live key is a change without a record, at the new version.
        """
        self.assertEqual(_decide(Delete("k"), LIVE), Change("delete", "k", NEW, None))

    def test_absent(self) -> None:
        """
        Deleting an absent key raises L{KeyNotFound}.
        """
        self.assertRaises(KeyNotFound, _decide, Delete("k"), None)

    def test_expired(self) -> None:
        """
        Deleting an expired key raises L{KeyNotFound}.
        """
        self.assertRaises(KeyNotFound, _decide, Delete("k"), EXPIRED)

    def test_if_match_right(self) -> None:
        """
        The current version's string lets the delete through.
        """
        self.assertEqual(_decide(Delete("k", OLD_TAG), LIVE).kind, "delete")

    def test_if_match_wrong(self) -> None:
        """
        Another version fails the precondition.
        """
        self.assertRaises(PreconditionFailed, _decide, Delete("k", "9.9"), LIVE)

    def test_if_match_missing_key(self) -> None:
        """
        C{If-Match} on a missing (or expired) key is 412, not 404.
        """
        self.assertRaises(PreconditionFailed, _decide, Delete("k", OLD_TAG), None)
        self.assertRaises(PreconditionFailed, _decide, Delete("k", OLD_TAG), EXPIRED)


class ExpireTests(SynchronousTestCase):
    """
    An expiry removes the key only if it still holds the version that was
    given the TTL.
    """

    def test_same_version(self) -> None:
        """
        The expiry of the current version removes the key, with the new
        version (it is a write like any other).
        """
        self.assertEqual(
            _decide(Expire("k", OLD), EXPIRED), Change("expire", "k", NEW, None)
        )

    def test_version_moved_on(self) -> None:
        """
        A later write overtook the expiry: nothing happens.
        """
        newer = Record(b"new", "text/plain", make_version(2, 9), expires_at=NOW)
        self.assertIsNone(_decide(Expire("k", OLD), newer))
        self.assertIsNone(_decide(Expire("k", OLD), Record(b"x", "text/plain", OLD + 1)))

    def test_absent(self) -> None:
        """
        The key was deleted in the meantime: nothing happens (no error).
        """
        self.assertIsNone(_decide(Expire("k", OLD), None))

    @given(
        st.sampled_from([None, LIVE, LIVE_WITH_TTL, EXPIRED]),
        st.sampled_from([OLD - 1, OLD, OLD + 1]) | st.integers(0, 2**50),
    )
    def test_only_exact_version(self, current: Optional[Record], version: int) -> None:
        """
        Whatever the current record, an expiry acts exactly when the record
        exists and carries the expiry's version.
        """
        change = _decide(Expire("k", version), current)
        acts = current is not None and current.version == version
        self.assertEqual(change is not None, acts)
