# -*- test-case-name: tests.test_files_http -*-
"""
Tests for L{twisted_kv.web.files_http}: C{/files} driven in memory
with L{StubTreq}.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.errors import Unavailable
from twisted_kv.files.testing import PREFIXES, ControlledKeyValue, on
from twisted_kv.web.files_http import RangeNotSatisfiable, byte_range, files_resource

BASE = "http://node/files"


class ByteRangeTests(SynchronousTestCase):
    """
    L{byte_range} reads C{Range} headers.
    """

    def test_forms(self) -> None:
        """
        C{A-B}, C{A-} and C{-N} select bytes; nothing, several ranges and
        malformed headers select the whole file.
        """
        cases = {
            "bytes=0-0": (0, 1),
            "bytes=2-5": (2, 6),
            "bytes=2-500": (2, 10),
            "bytes=7-": (7, 10),
            "bytes=-3": (7, 10),
            "bytes=-30": (0, 10),
            " bytes=1-2 ": (1, 3),
        }
        for header, expected in cases.items():
            self.assertEqual(byte_range(header, 10), expected, header)
        for header in [None, "", "bytes=1-2,4-5", "items=1-2", "bytes=-", "bytes=5-2", "bytes=a-b"]:
            self.assertIsNone(byte_range(header, 10), header)

    def test_unsatisfiable(self) -> None:
        """
        A range starting at or after the end cannot be served.
        """
        for header, size in [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=-5", 0), ("bytes=0-", 0)]:
            error = self.assertRaises(RangeNotSatisfiable, byte_range, header, size)
            self.assertEqual(error.size, size)

    @given(st.integers(0, 50), st.integers(0, 60), st.integers(0, 60))
    def test_within_file(self, size: int, first: int, last: int) -> None:
        """
        Every satisfiable range lies within the file and is not empty.
        """
        try:
            selected = byte_range(f"bytes={first}-{last}", size)
        except RangeNotSatisfiable:
            self.assertGreaterEqual(first, size)
            return
        if selected is not None:
            start, stop = selected
            self.assertTrue(0 <= start < stop <= size)


class FilesResourceTests(SynchronousTestCase):
    """
    The C{/files} resource.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.local = LocalKeyValue(self.clock)
        self.kv = ControlledKeyValue(self.local)
        root = Resource()
        root.putChild(b"files", files_resource(self.kv, clock=self.clock, max_file_bytes=10_000))
        self.treq = StubTreq(root)

    def request(
        self, method: str, path: str, data: Optional[bytes] = None, **headers: str
    ) -> tuple[Any, bytes]:
        response = self.successResultOf(
            self.treq.request(
                method,
                BASE + path,
                data=data,
                headers={name.replace("_", "-"): [value] for name, value in headers.items()},
            )
        )
        return response, self.successResultOf(self.treq.content(response))

    def header(self, response: Any, name: str) -> Optional[str]:
        values = response.headers.getRawHeaders(name)
        return None if values is None else values[0]

    def error(self, response: Any, body: bytes, status: int, code: str) -> None:
        self.assertEqual(response.code, status, body)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        self.assertEqual(json.loads(body)["error"], code)

    def test_put_get(self) -> None:
        """
        A file is stored with PUT (201, then 200) and read with GET, with
        its type, version, size and digest.
        """
        data = bytes(range(256)) * 20
        response, body = self.request("PUT", "/docs/a.bin", data, content_type="image/png")
        self.assertEqual(response.code, 201)
        created = json.loads(body)
        self.assertEqual(
            (created["path"], created["size"], created["sha256"]),
            ("/docs/a.bin", 5120, hashlib.sha256(data).hexdigest()),
        )
        self.assertEqual(self.header(response, "etag"), f'"{created["version"]}"')
        response, body = self.request("GET", "/docs/a.bin")
        self.assertEqual((response.code, body), (200, data))
        self.assertEqual(self.header(response, "content-type"), "image/png")
        self.assertEqual(response.length, 5120)
        self.assertEqual(self.header(response, "accept-ranges"), "bytes")
        self.assertEqual(self.header(response, "etag"), f'"{created["version"]}"')
        self.assertEqual(self.header(response, "x-content-sha256"), created["sha256"])
        self.assertEqual(self.header(response, "last-modified"), "Tue, 14 Nov 2023 22:13:20 GMT")
        response, body = self.request("PUT", "/docs/a.bin", b"new")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.request("GET", "/docs/a.bin")[1], b"new")

    def test_head(self) -> None:
        """
        HEAD gives GET's headers without a body, and reads no chunk.
        """
        self.request("PUT", "/a.txt", b"hello")
        self.kv.hold(on("get", "chunk"))
        response, body = self.request("HEAD", "/a.txt")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(self.header(response, "content-length"), "5")
        self.assertEqual(self.header(response, "content-type"), "text/plain")
        self.assertEqual(self.kv.held, [])

    def test_degraded(self) -> None:
        """
        A file read without a majority says so with C{X-KV-Degraded}.
        """
        self.request("PUT", "/f", b"data")
        self.assertIsNone(self.header(self.request("GET", "/f")[0], "x-kv-degraded"))
        self.kv.degraded = True
        response, body = self.request("GET", "/f")
        self.assertEqual((response.code, body), (200, b"data"))
        self.assertEqual(self.header(response, "x-kv-degraded"), "true")

    def test_ranges(self) -> None:
        """
        A single range is answered 206 with C{Content-Range}; a range after
        the end is 416.
        """
        data = b"0123456789" * 300
        self.request("PUT", "/f", data)
        response, body = self.request("GET", "/f", range="bytes=1000-1009")
        self.assertEqual((response.code, body), (206, data[1000:1010]))
        self.assertEqual(self.header(response, "content-range"), "bytes 1000-1009/3000")
        self.assertEqual(response.length, 10)
        response, body = self.request("GET", "/f", range="bytes=-5")
        self.assertEqual(body, data[-5:])
        response, body = self.request("GET", "/f", range="bytes=3000-")
        self.error(response, body, 416, "range_not_satisfiable")
        self.assertEqual(self.header(response, "content-range"), "bytes */3000")
        response, body = self.request("GET", "/f", range="bytes=0-1,5-6")
        self.assertEqual((response.code, body), (200, data))

    def test_missing(self) -> None:
        """
        A missing file is 404.
        """
        response, body = self.request("GET", "/nope")
        self.error(response, body, 404, "not_found")

    def test_conditional_put(self) -> None:
        """
        C{If-None-Match: *} only creates; C{If-Match} only replaces the
        given version.
        """
        response, body = self.request("PUT", "/f", b"one", if_none_match="*")
        self.assertEqual(response.code, 201)
        etag = self.header(response, "etag")
        response, body = self.request("PUT", "/f", b"two", if_none_match="*")
        self.error(response, body, 412, "precondition_failed")
        response, body = self.request("PUT", "/f", b"two", if_match='"9.9"')
        self.error(response, body, 412, "precondition_failed")
        response, body = self.request("PUT", "/f", b"two", if_match=etag)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.request("GET", "/f")[1], b"two")

    def test_if_match_as_on_kv(self) -> None:
        """
        C{If-Match} is read as on C{/kv} (RFC 9110): a list holds when any
        strong entity-tag in it names the file's version, C{*} when there is
        a file, a weak entity-tag never; anything else is a 400.
        """
        etag = self.header(self.request("PUT", "/f", b"one")[0], "etag")
        assert etag is not None
        response, body = self.request("PUT", "/f", b"two", if_match=f'"9.9", {etag}')
        self.assertEqual(response.code, 200, body)
        etag = self.header(response, "etag")
        assert etag is not None
        for if_match in ["W/" + etag, '"9.9", "8.8"', f"W/{etag}, \"9.9\""]:
            response, body = self.request("PUT", "/f", b"three", if_match=if_match)
            self.error(response, body, 412, "precondition_failed")
            self.assertEqual(self.header(response, "etag"), etag, if_match)
        response, body = self.request("PUT", "/f", b"three", if_match="*")
        self.assertEqual(response.code, 200, body)
        response, body = self.request("PUT", "/new", b"x", if_match="*")
        self.error(response, body, 412, "precondition_failed")
        for malformed in [etag.strip('"'), '"a', "W/x"]:
            response, body = self.request("PUT", "/f", b"four", if_match=malformed)
            self.error(response, body, 400, "bad_request")
            response, body = self.request("DELETE", "/f", if_match=malformed)
            self.error(response, body, 400, "bad_request")
        self.assertEqual(self.request("GET", "/f")[1], b"three")
        self.assertEqual(self.request("GET", "/new")[0].code, 404)

    def test_if_none_match_list(self) -> None:
        """
        C{If-None-Match} takes C{*} or a list of entity-tags, compared
        weakly (RFC 9110 section 13.1.2): when it matches the file, GET and
        HEAD answer C{304} with the C{ETag} and no body (reading no chunk,
        whatever the C{Range}), PUT and DELETE C{412}; otherwise they go
        ahead, and a malformed value is a 400.
        """
        etag = self.header(self.request("PUT", "/f", b"one")[0], "etag")
        assert etag is not None
        self.kv.hold(on("get", "chunk"))
        for method, if_none_match, more in [
            ("GET", etag, {}),
            ("GET", f"W/{etag}", {}),
            ("GET", f'"9.9", {etag}', {}),
            ("GET", "*", {}),
            ("GET", etag, {"range": "bytes=0-1"}),
            ("HEAD", f'W/"9.9", W/{etag}', {}),
        ]:
            response, body = self.request(method, "/f", if_none_match=if_none_match, **more)
            self.assertEqual((response.code, body), (304, b""), (method, if_none_match))
            self.assertEqual(self.header(response, "etag"), etag)
        self.assertEqual(self.kv.held, [])
        self.kv.hold(None)
        response, body = self.request("GET", "/f", if_none_match='"9.9", W/"8.8"')
        self.assertEqual((response.code, body), (200, b"one"))
        response, body = self.request("GET", "/f", if_none_match=etag.strip('"'))
        self.error(response, body, 400, "bad_request")
        response, body = self.request("PUT", "/f", b"two", if_none_match=f'"9.9", W/{etag}')
        self.error(response, body, 412, "precondition_failed")
        self.assertEqual(self.header(response, "etag"), etag)
        response, body = self.request("PUT", "/f", b"two", if_none_match='"9.9"')
        self.assertEqual(response.code, 200, body)
        second = self.header(response, "etag")
        response, body = self.request("DELETE", "/f", if_none_match=second)
        self.error(response, body, 412, "precondition_failed")
        self.assertEqual(self.header(response, "etag"), second)
        self.assertEqual(self.request("GET", "/f")[1], b"two")
        self.assertEqual(self.request("DELETE", "/f", if_none_match=etag)[0].code, 204)
        response, body = self.request("PUT", "/f", b"three", if_none_match=second)
        self.assertEqual(response.code, 201, body)

    def test_get_if_match(self) -> None:
        """
        A GET or HEAD whose C{If-Match} does not hold (another version, a
        weak entity-tag) is a 412 carrying the current C{ETag}; one that
        holds is answered as without it.
        """
        etag = self.header(self.request("PUT", "/f", b"one")[0], "etag")
        for method in ("GET", "HEAD"):
            for if_match in ['"9.9"', f"W/{etag}"]:
                response, body = self.request(method, "/f", if_match=if_match)
                self.assertEqual(response.code, 412, (method, if_match))
                self.assertEqual(self.header(response, "etag"), etag)
        response, body = self.request("GET", "/f", if_match=f'"9.9", {etag}')
        self.assertEqual((response.code, body), (200, b"one"))

    def test_delete_if_match_list(self) -> None:
        """
        DELETE takes the same C{If-Match}: C{*} or a list naming the file's
        version removes it; a weak entity-tag does not.
        """
        etag = self.header(self.request("PUT", "/f", b"one")[0], "etag")
        response, body = self.request("DELETE", "/f", if_match=f"W/{etag}")
        self.error(response, body, 412, "precondition_failed")
        response, body = self.request("DELETE", "/f", if_match=f'"9.9",{etag}')
        self.assertEqual(response.code, 204, body)
        self.request("PUT", "/g", b"one")
        self.assertEqual(self.request("DELETE", "/g", if_match="*")[0].code, 204)
        response, body = self.request("DELETE", "/g", if_match="*")
        self.error(response, body, 412, "precondition_failed")
        self.request("PUT", "/d/", None)
        response, body = self.request("DELETE", "/d", if_match="*")
        self.error(response, body, 412, "precondition_failed")
        self.assertEqual(self.request("GET", "/d")[0].code, 200)

    def test_if_match_concurrent_write(self) -> None:
        """
        When another writer replaces the file between the evaluation of an
        C{If-Match} the store cannot check itself and the write, the
        evaluation starts again on the new version.
        """
        self.request("PUT", "/f", b"one")
        held: list[str] = []

        def first_manifest_write(method: str, key: str) -> bool:
            if held or not on("put", "manifest")(method, key):
                return False
            held.append(key)
            return True

        self.kv.hold(first_manifest_write)
        sent = self.treq.request("PUT", BASE + "/f", data=b"mine", headers={"If-Match": ["*"]})
        self.assertNoResult(sent)
        self.assertEqual(self.request("PUT", "/f", b"theirs")[0].code, 200)
        self.kv.release_all()
        self.treq.flush()
        response = self.successResultOf(sent)
        self.assertEqual(response.code, 200, self.successResultOf(self.treq.content(response)))
        self.assertEqual(self.request("GET", "/f")[1], b"mine")

    def test_precondition_failed_tells_current(self) -> None:
        """
        A 412 carries the ETag of the file as it is now, so that the client
        can retry without a GET; none when there is no file, or when the
        read of it is degraded (it may be stale).
        """
        etag = self.header(self.request("PUT", "/f", b"one")[0], "etag")
        for method, headers in [
            ("PUT", {"if_match": '"9.9"'}),
            ("PUT", {"if_none_match": "*"}),
            ("DELETE", {"if_match": '"9.9"'}),
        ]:
            response, body = self.request(method, "/f", b"two", **headers)
            self.error(response, body, 412, "precondition_failed")
            self.assertEqual(self.header(response, "etag"), etag, (method, headers))
        response, body = self.request("PUT", "/new", b"x", if_match=etag)
        self.error(response, body, 412, "precondition_failed")
        self.assertIsNone(self.header(response, "etag"))
        self.kv.degraded = True
        response, body = self.request("PUT", "/f", b"two", if_match='"9.9"')
        self.error(response, body, 412, "precondition_failed")
        self.assertIsNone(self.header(response, "etag"))
        self.assertEqual(self.request("GET", "/f")[1], b"one")

    def test_query_refused(self) -> None:
        """
        C{/files} takes no query parameters: any is a 400 naming it, and
        the request does nothing.
        """
        self.request("PUT", "/f", b"one")
        for method, path in [
            ("PUT", "/f?ttl=5"),
            ("PUT", "/g?x"),
            ("DELETE", "/f?recursive=1"),
            ("GET", "/f?download=1"),
            ("GET", "/?sort=name"),
        ]:
            response, body = self.request(method, path, b"two")
            self.error(response, body, 400, "bad_request")
            self.assertIn("takes no query parameters", json.loads(body)["message"])
        self.assertEqual(self.request("GET", "/f")[1], b"one")
        self.error(*self.request("GET", "/g"), 404, "not_found")

    def test_too_large(self) -> None:
        """
        A body over the maximum is refused with 413, and nothing is kept.
        """
        response, body = self.request("PUT", "/big", b"x" * 10_001)
        self.error(response, body, 413, "too_large")
        self.assertEqual(self.successResultOf(self.local.list_keys("f", None, 10)).keys, [])

    def test_store_errors(self) -> None:
        """
        A store that refuses writes gives 503 with C{Retry-After}; a full
        one gives 507.
        """
        self.kv.fail_with(on("put", "manifest"), Unavailable("no quorum", retry_after=2.0))
        response, body = self.request("PUT", "/f", b"data")
        self.error(response, body, 503, "unavailable")
        self.assertEqual(self.header(response, "retry-after"), "2")
        full = LocalKeyValue(self.clock, memory_limit=3000)
        root = Resource()
        root.putChild(b"files", files_resource(full, clock=self.clock))
        self.treq = StubTreq(root)
        response, body = self.request("PUT", "/f", b"x" * 5000)
        self.error(response, body, 507, "insufficient_storage")
        self.assertEqual(self.successResultOf(full.list_keys(PREFIXES["chunk"], None, 10)).keys, [])

    def test_corrupt(self) -> None:
        """
        A file whose first chunk is gone is answered with a JSON error, not
        with the file's headers.
        """
        self.request("PUT", "/f", b"data")
        (chunk,) = self.successResultOf(self.local.list_keys(PREFIXES["chunk"], None, 10)).keys
        self.successResultOf(self.local.delete(chunk))
        response, body = self.request("GET", "/f")
        self.error(response, body, 500, "corrupt_file")
        self.assertIsNone(self.header(response, "etag"))

    def test_directories(self) -> None:
        """
        PUT creates parent directories; GET of a directory, with or without
        a trailing slash, lists it as JSON; PUT of a trailing-slash path
        creates a directory.
        """
        self.request("PUT", "/docs/sub/a.txt", b"a")
        self.request("PUT", "/docs/b.txt", b"bb")
        response, body = self.request("PUT", "/docs/empty/")
        self.assertEqual(response.code, 201)
        self.assertEqual(self.request("PUT", "/docs/empty/")[0].code, 200)
        for path in ["/docs", "/docs/"]:
            response, body = self.request("GET", path)
            self.assertEqual(response.code, 200)
            listing = json.loads(body)
            self.assertEqual(listing["path"], "/docs/")
            self.assertEqual(
                [(e["name"], e["type"], e["size"]) for e in listing["entries"]],
                [("b.txt", "file", 2), ("empty", "directory", 0), ("sub", "directory", 0)],
            )
        for path in ["", "/"]:
            listing = json.loads(self.request("GET", path)[1])
            self.assertEqual(listing, {"path": "/", "entries": [listing["entries"][0]]})
        response, body = self.request("GET", "/docs/b.txt/")
        self.error(response, body, 409, "not_a_directory")
        response, body = self.request("PUT", "/docs/b.txt/c", b"x")
        self.error(response, body, 409, "not_a_directory")

    def test_delete(self) -> None:
        """
        DELETE removes files (honouring C{If-Match}) and empty directories.
        """
        response, _ = self.request("PUT", "/d/f", b"x")
        etag = self.header(response, "etag")
        response, body = self.request("DELETE", "/d/f", if_match='"0.1"')
        self.error(response, body, 412, "precondition_failed")
        response, body = self.request("DELETE", "/d")
        self.error(response, body, 409, "not_empty")
        self.assertEqual(self.request("DELETE", "/d/f", if_match=etag)[0].code, 204)
        response, body = self.request("DELETE", "/d/f")
        self.error(response, body, 404, "not_found")
        self.assertEqual(self.request("DELETE", "/d")[0].code, 204)
        self.request("PUT", "/e/", None)
        self.assertEqual(self.request("DELETE", "/e/")[0].code, 204)
        response, body = self.request("DELETE", "/")
        self.error(response, body, 403, "forbidden")

    def test_bad_paths(self) -> None:
        """
        Dot segments, encoded slashes, empty segments and invalid UTF-8 are
        refused with 400 and never reach the store.
        """
        self.kv.hold(lambda method, key: True)
        for path in ["/a/%2e%2e/b", "/%2E%2E", "/a%2Fb", "/a//b", "/%ff", "/a%5Cb", "/a%00"]:
            response, body = self.request("PUT", path, b"x")
            self.error(response, body, 400, "bad_request")
        self.assertEqual(self.kv.held, [])

    def test_retry_after_as_on_kv(self) -> None:
        """
        C{Retry-After} is rounded up to whole seconds, as on C{/kv}, so
        that no client retries early.
        """
        for retry_after, header in [(2.1, "3"), (0.2, "1"), (3.0, "3")]:
            self.kv.fail_with(on("put", "manifest"), Unavailable("no quorum", retry_after))
            response, body = self.request("PUT", "/f", b"data")
            self.error(response, body, 503, "unavailable")
            self.assertEqual(self.header(response, "retry-after"), header, retry_after)

    def test_method_not_allowed(self) -> None:
        """
        Other methods get 405 with C{Allow}.
        """
        response, body = self.request("POST", "/f", b"x")
        self.error(response, body, 405, "method_not_allowed")
        self.assertEqual(self.header(response, "allow"), "GET, HEAD, PUT, DELETE")
