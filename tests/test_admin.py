# -*- test-case-name: tests.test_admin -*-
"""
Tests for L{twisted_kv.web.admin}: C{/admin/snapshot} and
C{/admin/restore} through the site's root, over L{StubTreq}, on a
L{LocalKeyValue} (one partition) and on a scripted store for the failures.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.test_http_api import APITestCase, FakeClusterStatus
from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.core.backup import BackupRecord, DumpPage
from twisted_kv.core.keyspace import file_key, user_key
from twisted_kv.errors import OutcomeUnknown, SnapshotExpired
from twisted_kv.interfaces import ISnapshotSource
from twisted_kv.web.admin import admin_resource


def _record(ns: str, key: str, value: bytes, content_type: str = "text/plain", ttl: Any = None) -> dict:
    return {
        "ns": ns, "key": key, "value": base64.b64encode(value).decode(), "content_type": content_type,
        "version": "1.1", "ttl": ttl,
    }


@implementer(ISnapshotSource)
class _Expired:
    """
    A snapshot source whose dumps are never held, and which keeps the
    restore batches it is given.
    """

    def __init__(self) -> None:
        self.restored: list[tuple[list[str], Optional[str]]] = []

    def restore(self, records: list[BackupRecord], batch_id: Optional[str] = None) -> Deferred[int]:
        self.restored.append(([record.key for record in records], batch_id))
        return succeed(len(records))

    def partition_count(self) -> int:
        return 2

    def dump_page(
        self, partition: int, dump_id: Optional[str], after: Optional[str], limit: int
    ) -> Deferred[DumpPage]:
        if dump_id is None:
            return succeed(DumpPage(partition, "d/1", "1.7", 5.0, [], "kz"))
        return fail(SnapshotExpired("dump d/1 of partition 1 is not held here"))


class AdminTests(APITestCase):
    """
    Dumping pages and restoring batches over HTTP.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.status = FakeClusterStatus()
        self.local = LocalKeyValue(self.clock)
        verifyObject(ISnapshotSource, self.local)
        self.serve(self.local, admin=admin_resource(self.local))

    def put(self, key: str, value: bytes, content_type: str = "text/plain", ttl: Any = None) -> None:
        self.successResultOf(self.local.put(key, value, content_type, ttl))

    def json(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        response, content = self.request(method, path, data, Content_Type="application/json")
        self.assertEqual(response.code, status, content)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        return json.loads(content)

    def test_partitions(self) -> None:
        """
        C{GET /admin/snapshot} says how many partitions there are to dump.
        """
        self.assertEqual(self.json("GET", "/admin/snapshot"), {"partitions": 1})

    def test_dump_pages(self) -> None:
        """
        A dump's pages hold every namespace, value in base64, content type,
        version and remaining TTL; C{next} and C{dump} fetch the next page,
        and writes in between do not show.
        """
        self.put(user_key("a"), b"\x00one", "application/x-a", ttl=30)
        self.put(file_key("c/0a/0"), b"chunk")
        self.put(user_key("b"), b"two")
        self.clock.advance(10)
        first = self.json("GET", "/admin/snapshot/partitions/0?limit=2")
        self.assertEqual(first["as_of"], "1.3")
        self.assertEqual(first["taken_at"], 1010)
        self.assertEqual(
            first["records"],
            [
                {
                    "ns": "f", "key": "c/0a/0", "value": base64.b64encode(b"chunk").decode(),
                    "content_type": "text/plain", "version": "1.2", "ttl": None,
                },
                {
                    "ns": "k", "key": "a", "value": base64.b64encode(b"\x00one").decode(),
                    "content_type": "application/x-a", "version": "1.1", "ttl": 20.0,
                },
            ],
        )
        self.assertEqual(first["next"], "ka")
        self.put(user_key("b"), b"changed")
        self.put(user_key("c"), b"new")
        second = self.json(
            "GET", f"/admin/snapshot/partitions/0?dump={first['dump']}&after=ka&limit=2"
        )
        self.assertEqual([(r["key"], r["value"]) for r in second["records"]], [("b", "dHdv")])
        self.assertIsNone(second["next"])

    def test_dump_refusals(self) -> None:
        """
        A partition that does not exist, a bad limit and an C{after}
        without its dump are refused with 400 or 404; a dump no longer held
        answers 410 C{snapshot_expired}.
        """
        for path, status in [
            ("/admin/snapshot/partitions/1", 400),
            ("/admin/snapshot/partitions/x", 404),
            ("/admin/snapshot/partitions/0?limit=0", 400),
            ("/admin/snapshot/partitions/0?after=ka", 400),
        ]:
            answer = self.json("GET", path, status=status)
            self.assertIn("message", answer)
        answer = self.json("GET", "/admin/snapshot/partitions/0?dump=gone&after=ka", status=410)
        self.assertEqual(answer["error"], "snapshot_expired")

    def test_expired_dump(self) -> None:
        """
        The source's L{SnapshotExpired} answers 410.
        """
        expired = _Expired()
        verifyObject(ISnapshotSource, expired)
        self.serve(self.local, admin=admin_resource(expired))
        self.json("GET", "/admin/snapshot/partitions/1")
        answer = self.json("GET", "/admin/snapshot/partitions/1?dump=d/1&after=kz", status=410)
        self.assertEqual(answer["error"], "snapshot_expired")

    def test_restore(self) -> None:
        """
        C{POST /admin/restore} writes each record with its content type and
        remaining TTL, replacing what the key held, and skips a record
        whose time had run out.
        """
        self.put(user_key("a"), b"old")
        answer = self.json(
            "POST",
            "/admin/restore",
            {
                "records": [
                    _record("k", "a", b"new", "application/x-new", ttl=40),
                    _record("f", "c/0a/0", b"\x00chunk", "application/octet-stream"),
                    _record("k", "gone", b"x", ttl=0),
                ]
            },
        )
        self.assertEqual(answer, {"written": 2, "skipped": 1})
        record = self.successResultOf(self.local.get(user_key("a"))).record
        self.assertEqual((record.value, record.content_type, record.expires_at), (b"new", "application/x-new", 1040))
        self.assertEqual(self.successResultOf(self.local.get(file_key("c/0a/0"))).record.value, b"\x00chunk")
        self.assertIsNone(self.successResultOf(self.local.get(user_key("gone"))).record)

    def test_restore_batch_id(self) -> None:
        """
        A batch's C{id} goes to the source with its live records, so that
        the batch sent again is not written twice.
        """
        source = _Expired()
        self.serve(self.local, admin=admin_resource(source))
        body = {"id": "r1-2_x", "records": [_record("k", "a", b"v"), _record("k", "b", b"v", ttl=0)]}
        self.assertEqual(self.json("POST", "/admin/restore", body), {"written": 1, "skipped": 1})
        self.json("POST", "/admin/restore", {"records": [_record("f", "c/1", b"v")]})
        self.assertEqual(source.restored, [([user_key("a")], "r1-2_x"), ([file_key("c/1")], None)])

    def test_restore_refusals(self) -> None:
        """
        A body that is not a batch of valid records, a record in an unknown
        namespace or with an empty key is refused (400) and nothing of the
        batch is written.
        """
        for body in [
            b"not json",
            b"[]",
            json.dumps({"records": [{"ns": "k"}]}).encode(),
            json.dumps({"records": [_record("k", "ok", b"v"), _record("x", "a", b"v")]}).encode(),
            json.dumps({"records": [_record("k", "ok", b"v"), {**_record("k", "a", b"v"), "value": "@@"}]}).encode(),
            json.dumps({"records": [_record("k", "ok", b"v"), _record("k", "", b"v")]}).encode(),
            json.dumps({"records": [_record("k", "ok", b"v"), _record("k", "ok", b"w")]}).encode(),
            json.dumps({"id": "a/b", "records": [_record("k", "ok", b"v")]}).encode(),
            json.dumps({"id": 5, "records": [_record("k", "ok", b"v")]}).encode(),
            json.dumps({"id": "", "records": [_record("k", "ok", b"v")]}).encode(),
        ]:
            response, content = self.request("POST", "/admin/restore", body)
            self.assertEqual(response.code, 400, body)
            self.assertEqual(json.loads(content)["error"], "bad_request")
        self.assertIsNone(self.successResultOf(self.local.get(user_key("ok"))).record)

    def test_restore_failure(self) -> None:
        """
        A write of the batch that fails answers with its error, once every
        write of the batch is done.
        """

        class Failing(LocalKeyValue):
            def put(self, key: str, value: bytes, *args: Any, **kwargs: Any) -> Any:
                if key == user_key("bad"):
                    return fail(OutcomeUnknown("the write may or may not have been applied"))
                return super().put(key, value, *args, **kwargs)

        failing = Failing(self.clock)
        self.serve(failing, admin=admin_resource(failing))
        body = {"records": [_record("k", "bad", b"v"), _record("k", "good", b"v")]}
        answer = self.json("POST", "/admin/restore", body, status=504)
        self.assertEqual(answer["error"], "outcome_unknown")
        self.assertEqual(self.successResultOf(failing.get(user_key("good"))).record.value, b"v")

    def test_records_round_trip(self) -> None:
        """
        What a dump shows is what a restore takes.
        """
        self.put(user_key("a"), b"v", "t/a", ttl=9)
        page = self.json("GET", "/admin/snapshot/partitions/0")
        restored = [BackupRecord.from_json(r) for r in page["records"]]
        self.assertEqual(restored, [BackupRecord(user_key("a"), b"v", "t/a", "1.1", 9.0)])
