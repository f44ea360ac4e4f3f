# -*- test-case-name: tests.test_local -*-
"""
Tests for L{twisted_kv.cluster.local.LocalKeyValue}, with time on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.core.records import format_version
from twisted_kv.errors import (
    InsufficientStorage,
    KeyExists,
    KeyNotFound,
    PreconditionFailed,
    ValueTooLarge,
)
from twisted_kv.interfaces import (
    ChangeEvent,
    IKeyValue,
    KeyPage,
    ReadResult,
    WriteResult,
)


def _version_key(version: str) -> tuple[int, int]:
    epoch, seq = version.split(".")
    return int(epoch), int(seq)


class LocalTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.kv = LocalKeyValue(self.clock)
        self.events: list[ChangeEvent] = []

    def put(self, key: str, value: bytes = b"v", **kw) -> WriteResult:
        return self.successResultOf(self.kv.put(key, value, **kw))

    def get(self, key: str):
        result = self.successResultOf(self.kv.get(key))
        self.assertIsInstance(result, ReadResult)
        self.assertFalse(result.degraded)
        return result.record

    def fails(self, d, error):
        return self.failureResultOf(d, error).value


class InterfaceTests(LocalTestCase):
    """
    L{LocalKeyValue} is an L{IKeyValue}.
    """

    def test_provides(self) -> None:
        """
        It provides every method and attribute of L{IKeyValue}.
        """
        self.assertTrue(verifyObject(IKeyValue, self.kv))
        self.assertEqual(self.kv.max_value_bytes, 16 * 1024 * 1024)


class CrudTests(LocalTestCase):
    """
    Create, read, replace and delete.
    """

    def test_put_get(self) -> None:
        """
        A put creates the key (C{created=True}); a get returns the value,
        content type and the version the put reported.
        """
        result = self.put("k", b"hello", content_type="text/plain")
        self.assertTrue(result.created)
        record = self.get("k")
        self.assertEqual((record.value, record.content_type), (b"hello", "text/plain"))
        self.assertEqual(record.expires_at, None)
        self.assertEqual(format_version(record.version), result.version)

    def test_missing(self) -> None:
        """
        Getting a missing key gives a result without a record.
        """
        self.assertIsNone(self.get("nope"))

    def test_replace(self) -> None:
        """
        A second put replaces the value, says C{created=False}, and carries
        a newer version.
        """
        first = self.put("k", b"1")
        second = self.put("k", b"2")
        self.assertFalse(second.created)
        self.assertGreater(_version_key(second.version), _version_key(first.version))
        self.assertEqual(self.get("k").value, b"2")

    def test_delete(self) -> None:
        """
        A delete removes the key and fires with a new version; deleting
        again fails with L{KeyNotFound}.
        """
        put = self.put("k")
        version = self.successResultOf(self.kv.delete("k"))
        self.assertGreater(_version_key(version), _version_key(put.version))
        self.assertIsNone(self.get("k"))
        self.fails(self.kv.delete("k"), KeyNotFound)

    def test_default_content_type(self) -> None:
        """
        Without a content type, values are C{application/octet-stream}.
        """
        self.put("k")
        self.assertEqual(self.get("k").content_type, "application/octet-stream")


class ConditionalTests(LocalTestCase):
    """
    Conditional puts and deletes.
    """

    def test_if_match(self) -> None:
        """
        A put with the current version succeeds; with an older one it fails
        with L{PreconditionFailed} and changes nothing.
        """
        first = self.put("k", b"1")
        second = self.put("k", b"2", if_match=first.version)
        self.fails(self.kv.put("k", b"3", if_match=first.version), PreconditionFailed)
        self.assertEqual(self.get("k").value, b"2")
        self.put("k", b"4", if_match=second.version)

    def test_if_match_missing(self) -> None:
        """
        C{if_match} on a missing key fails with L{PreconditionFailed}.
        """
        self.fails(self.kv.put("k", b"1", if_match="1.1"), PreconditionFailed)
        self.fails(self.kv.delete("k", if_match="1.1"), PreconditionFailed)
        self.assertIsNone(self.get("k"))

    def test_if_none_match(self) -> None:
        """
        C{if_none_match} creates a missing key and refuses an existing one
        with L{PreconditionFailed}.
        """
        self.assertTrue(self.put("k", b"1", if_none_match=True).created)
        self.fails(self.kv.put("k", b"2", if_none_match=True), PreconditionFailed)
        self.assertEqual(self.get("k").value, b"1")

    def test_create_only(self) -> None:
        """
        C{create_only} refuses an existing key with L{KeyExists}.
        """
        self.put("k", b"1", create_only=True)
        error = self.fails(self.kv.put("k", b"2", create_only=True), KeyExists)
        self.assertEqual(error.status, 409)

    def test_delete_if_match(self) -> None:
        """
        A delete with the wrong version fails and keeps the key; with the
        right one it succeeds.
        """
        put = self.put("k")
        self.fails(self.kv.delete("k", if_match="9.9"), PreconditionFailed)
        self.assertIsNotNone(self.get("k"))
        self.successResultOf(self.kv.delete("k", if_match=put.version))
        self.assertIsNone(self.get("k"))


class TTLTests(LocalTestCase):
    """
    Keys with a time-to-live disappear on the clock.
    """

    def test_expires(self) -> None:
        """
        A key put with C{ttl=5} is readable until 5 seconds have passed and
        gone from then on, then cannot be deleted.
        """
        self.put("k", ttl=5.0)
        self.assertEqual(self.get("k").expires_at, 5.0)
        self.clock.advance(4.9)
        self.assertIsNotNone(self.get("k"))
        self.clock.advance(0.1)
        self.assertIsNone(self.get("k"))
        self.fails(self.kv.delete("k"), KeyNotFound)

    def test_expiry_event(self) -> None:
        """
        The expiry is a change of its own, delivered to subscribers.
        """
        self.kv.subscribe(self.events.append)
        self.put("k", ttl=5.0)
        self.clock.advance(5.0)
        self.assertEqual([e.change.kind for e in self.events], ["put", "expire"])
        self.assertEqual(self.events[1].change.key, "k")

    def test_overwrite_cancels_expiry(self) -> None:
        """
        Replacing a key without a TTL before its deadline keeps it past the
        deadline, and no expiry event is sent.
        """
        self.kv.subscribe(self.events.append)
        self.put("k", b"1", ttl=5.0)
        self.clock.advance(1.0)
        self.put("k", b"2")
        self.clock.advance(10.0)
        self.assertEqual(self.get("k").value, b"2")
        self.assertEqual([e.change.kind for e in self.events], ["put", "put"])

    def test_new_ttl_replaces_old(self) -> None:
        """
        Putting again with a longer TTL moves the deadline.
        """
        self.put("k", b"1", ttl=5.0)
        self.clock.advance(1.0)
        self.put("k", b"2", ttl=10.0)
        self.clock.advance(5.0)
        self.assertEqual(self.get("k").value, b"2")
        self.clock.advance(5.0)
        self.assertIsNone(self.get("k"))

    def test_expired_key_can_be_created(self) -> None:
        """
        Once expired, the key counts as absent for C{create_only}.
        """
        self.put("k", ttl=1.0)
        self.clock.advance(1.0)
        self.assertTrue(self.put("k", create_only=True).created)


class ListingTests(LocalTestCase):
    """
    Listing keys by prefix, page by page.
    """

    def setUp(self) -> None:
        super().setUp()
        for key in ["b/2", "a", "b/1", "b/3", "c", "b/4"]:
            self.put(key)

    def list(self, prefix: str, start_after, limit: int) -> KeyPage:
        return self.successResultOf(self.kv.list_keys(prefix, start_after, limit))

    def test_prefix_in_order(self) -> None:
        """
        Keys with the prefix come back in key order.
        """
        self.assertEqual(self.list("b/", None, 10), KeyPage(["b/1", "b/2", "b/3", "b/4"], None))
        self.assertEqual(self.list("", None, 10).keys, ["a", "b/1", "b/2", "b/3", "b/4", "c"])
        self.assertEqual(self.list("x", None, 10), KeyPage([], None))

    def test_pages(self) -> None:
        """
        Following C{next} as C{start_after} walks every key exactly once;
        the last page has no C{next}.
        """
        first = self.list("b/", None, 3)
        self.assertEqual(first, KeyPage(["b/1", "b/2", "b/3"], "b/3"))
        second = self.list("b/", first.next, 3)
        self.assertEqual(second, KeyPage(["b/4"], None))

    def test_exact_fit(self) -> None:
        """
        A page that ends exactly at the last key has no C{next}.
        """
        self.assertEqual(self.list("b/", None, 4).next, None)
        self.assertEqual(self.list("b/", "b/2", 2), KeyPage(["b/3", "b/4"], None))

    def test_expired_and_deleted_skipped(self) -> None:
        """
        Deleted keys and keys past their deadline are not listed, and do not
        fill pages.
        """
        self.put("b/25", ttl=1.0)
        self.successResultOf(self.kv.delete("b/3"))
        self.clock.advance(1.0)
        self.assertEqual(self.list("b/", None, 3), KeyPage(["b/1", "b/2", "b/4"], None))


class SubscriptionTests(LocalTestCase):
    """
    Subscribers get every change, in order.
    """

    def test_events_in_order(self) -> None:
        """
        Puts and deletes reach every subscriber as L{ChangeEvent}s with
        growing revisions; a put's event carries its record.
        """
        other: list = []
        self.kv.subscribe(self.events.append)
        self.kv.subscribe(other.append)
        self.put("a", b"1")
        self.put("a", b"2")
        self.successResultOf(self.kv.delete("a"))
        self.assertEqual([e.change.kind for e in self.events], ["put", "put", "delete"])
        self.assertEqual(self.events[1].change.record.value, b"2")
        self.assertTrue(self.events[0].change.created)
        revisions = [e.revision for e in self.events]
        self.assertEqual(revisions, sorted(set(revisions)))
        self.assertEqual(other, self.events)

    def test_failures_not_published(self) -> None:
        """
        Failed operations produce no event, and later revisions still grow.
        """
        self.kv.subscribe(self.events.append)
        self.put("a")
        self.fails(self.kv.put("a", b"x", create_only=True), KeyExists)
        self.fails(self.kv.delete("zz"), KeyNotFound)
        self.put("b")
        self.assertEqual([e.change.key for e in self.events], ["a", "b"])
        self.assertLess(self.events[0].revision, self.events[1].revision)

    def test_unsubscribe(self) -> None:
        """
        An unsubscribed listener hears nothing more.
        """
        self.kv.subscribe(self.events.append)
        self.put("a")
        self.kv.unsubscribe(self.events.append)
        self.put("b")
        self.assertEqual(len(self.events), 1)

    def test_listener_may_unsubscribe_itself(self) -> None:
        """
        A listener removing itself while being called does not stop the
        others from getting the same event.
        """
        def once(event: ChangeEvent) -> None:
            self.kv.unsubscribe(once)

        self.kv.subscribe(once)
        self.kv.subscribe(self.events.append)
        self.put("a")
        self.put("b")
        self.assertEqual([e.change.key for e in self.events], ["a", "b"])


class LimitTests(SynchronousTestCase):
    """
    Value size and memory limits.
    """

    def test_value_too_large(self) -> None:
        """
        A value over C{max_value_bytes} fails with L{ValueTooLarge} (413)
        and is not stored; one of exactly that size is fine.
        """
        kv = LocalKeyValue(Clock(), max_value_bytes=10)
        error = self.failureResultOf(kv.put("k", b"x" * 11), ValueTooLarge).value
        self.assertEqual(error.status, 413)
        self.assertIsNone(self.successResultOf(kv.get("k")).record)
        self.successResultOf(kv.put("k", b"x" * 10))

    def test_memory_limit(self) -> None:
        """
        A write that would pass the memory limit fails with
        L{InsufficientStorage} (507) and stores nothing; deleting frees room
        for it.
        """
        kv = LocalKeyValue(Clock(), memory_limit=1000)
        self.successResultOf(kv.put("a", b"x" * 500))
        error = self.failureResultOf(kv.put("b", b"x" * 600), InsufficientStorage).value
        self.assertEqual(error.status, 507)
        self.assertIsNone(self.successResultOf(kv.get("b")).record)
        self.successResultOf(kv.delete("a"))
        self.successResultOf(kv.put("b", b"x" * 600))

    def test_no_limit(self) -> None:
        """
        A memory limit of 0 means none.
        """
        kv = LocalKeyValue(Clock(), memory_limit=0)
        for i in range(50):
            self.successResultOf(kv.put(f"k{i}", b"x" * 1000))

    def test_accepted_writes_stay_within_limit(self) -> None:
        """
        The store never holds more than the memory limit, as measured by its
        own accounting (key, value and per-record overhead): every write
        that would pass it is refused.
        """
        kv = LocalKeyValue(Clock(), memory_limit=1000)
        for i in range(10):
            kv.put(f"k{i}", b"x" * 150).addErrback(lambda f: f.trap(InsufficientStorage))
        self.assertLessEqual(kv.bytes_used(), 1000)

