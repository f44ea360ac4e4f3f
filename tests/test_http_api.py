# -*- test-case-name: tests.test_http_api -*-
"""
Tests for L{twisted_kv.web.http_api}: the HTTP API every
node serves, through L{StubTreq} over the root resource of
L{twisted_kv.web.site.build_site}.

The store is a L{LocalKeyValue} on a L{Clock}; L{ScriptedKeyValue} stands in
for it only for what a single-process store cannot do (degraded reads,
refusals, unknown outcomes, crashes, slow answers).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Optional
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest, IResponse
from twisted.web.resource import Resource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.test_metrics import parse, values
from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.core.keyspace import file_key, user_key
from twisted_kv.core.records import Record, make_version
from twisted_kv.errors import OutcomeUnknown, Unavailable
from twisted_kv.interfaces import Health, IClusterStatus, IKeyValue, KeyPage, ReadResult
from twisted_kv.web.metrics import gauge
from twisted_kv.web.site import build_site

CLUSTER_VIEW = {
    "self": "n1",
    "leader": "n2",
    "term": 3,
    "nodes": [
        {
            "id": "n1",
            "state": "alive",
            "http": "http://127.0.0.1:7001",
            "keys": 3,
            "synced": True,
            "executed": 12,
        }
    ],
}


@implementer(IClusterStatus)
class FakeClusterStatus:
    """
    A node whose cluster view, health and metrics are set by the test.
    """

    def __init__(self) -> None:
        self.current_health = Health(None, "", {"node": "n1"})

    def cluster_view(self) -> dict:
        return CLUSTER_VIEW

    def health(self) -> Health:
        return self.current_health

    def metrics(self) -> list:
        return [gauge("twisted_kv_keys", "Keys held.", int).per("node", [("n1", 3)])]

    def members_view(self) -> dict:
        return {"members": [], "change": None, "moving_partitions": []}

    def change_members(self, kind: str, node: Any) -> Deferred[dict]:
        return succeed(self.members_view())


@implementer(IKeyValue)
class ScriptedKeyValue:
    """
    A store whose every operation answers with what C{answer} returns.
    """

    max_value_bytes = 1024

    def __init__(self, answer: Callable[[], Deferred[Any]]) -> None:
        self._answer = answer

    def get(self, key: str) -> Deferred[Any]:
        return self._answer()

    def put(
        self,
        key: str,
        value: bytes,
        content_type: str = "application/octet-stream",
        ttl: Optional[float] = None,
        if_match: Optional[str] = None,
        if_none_match: bool = False,
        create_only: bool = False,
    ) -> Deferred[Any]:
        return self._answer()

    def delete(self, key: str, if_match: Optional[str] = None) -> Deferred[Any]:
        return self._answer()

    def list_keys(self, prefix: str, start_after: Optional[str], limit: int) -> Deferred[Any]:
        return self._answer()

    def subscribe(self, listener: Callable[[Any], None]) -> None:
        pass

    def unsubscribe(self, listener: Callable[[Any], None]) -> None:
        pass

    def replay(self, after: int) -> Deferred[Any]:
        return self._answer()


class RacingKeyValue(LocalKeyValue):
    """
    A L{LocalKeyValue} where, for the next C{races} reads, another client
    writes the key just after it was read.
    """

    races = 0

    def get(self, key: str) -> Deferred[ReadResult]:
        result = super().get(key)
        if self.races:
            self.races -= 1
            super().put(key, b"concurrent")
        return result


class FaultyReadsKeyValue(LocalKeyValue):
    """
    A L{LocalKeyValue} whose reads are degraded, or refused, as the test
    sets; its writes work as usual.
    """

    degraded = False
    refused = False

    def get(self, key: str) -> Deferred[ReadResult]:
        if self.refused:
            return fail(Unavailable("no majority"))
        result = super().get(key)
        if self.degraded:
            result.addCallback(lambda read: ReadResult(read.record, degraded=True))
        return result


class _Named(Resource):
    """
    A mounted resource answering with its name and the rest of the path.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def render(self, request: IRequest) -> bytes:
        return json.dumps([self._name, [s.decode() for s in request.postpath]]).encode()


class APITestCase(SynchronousTestCase):
    """
    Requests to the site of one node.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.status = FakeClusterStatus()
        self.serve(LocalKeyValue(self.clock, max_value_bytes=64))

    def serve(self, kv: IKeyValue, **children: Resource) -> None:
        """
        Serve C{kv}, with C{children} mounted under their names.
        """
        verifyObject(IKeyValue, kv)
        verifyObject(IClusterStatus, self.status)
        self.kv = kv
        mounted = {name.encode(): child for name, child in children.items()}
        site = build_site(kv, self.status, clock=self.clock, children=mounted)
        self.treq = StubTreq(site.resource)

    def request(
        self, method: str, path: str, body: bytes = b"", **headers: Any
    ) -> tuple[IResponse, bytes]:
        """
        Make a request; header names are given with C{_} for C{-}.

        @return: the response and its body.
        """
        sent = self.treq.request(
            method,
            "http://node.example" + path,
            data=body or None,
            headers={name.replace("_", "-"): value for name, value in headers.items()},
        )
        self.treq.flush()
        response = self.successResultOf(sent)
        return response, self.successResultOf(response.content())

    def header(self, response: IResponse, name: str) -> Optional[str]:
        values = response.headers.getRawHeaders(name.encode("ascii"))
        return None if values is None else values[0].decode("latin-1")

    def assertError(
        self, answer: tuple[IResponse, bytes], status: int, code: str
    ) -> IResponse:
        """
        Assert that C{answer} is the JSON error C{code} with C{status}.
        """
        response, body = answer
        self.assertEqual(response.code, status, body)
        self.assertEqual(self.header(response, "Content-Type"), "application/json")
        document = json.loads(body)
        self.assertEqual(sorted(document), ["error", "message"])
        self.assertEqual(document["error"], code)
        self.assertIsInstance(document["message"], str)
        return response

    def put(self, key: str, value: bytes = b"v", **headers: Any) -> str:
        """
        Store C{value} under C{key}, which must succeed.

        @return: its version.
        """
        response, body = self.request("PUT", "/kv/" + quote(key, safe=""), value, **headers)
        self.assertIn(response.code, (200, 201), body)
        return json.loads(body)["version"]


class KeyValueTests(APITestCase):
    """
    The rows of the C{/kv/{key}} table.
    """

    def test_put_creates(self) -> None:
        """
        PUT of a new key answers 201 with its key and version, and the
        version in double quotes as the ETag.
        """
        response, body = self.request("PUT", "/kv/greeting", b"hello")
        self.assertEqual(response.code, 201)
        self.assertEqual(self.header(response, "Content-Type"), "application/json")
        document = json.loads(body)
        self.assertEqual(sorted(document), ["key", "version"])
        self.assertEqual(document["key"], "greeting")
        self.assertEqual(self.header(response, "ETag"), f'"{document["version"]}"')

    def test_put_replaces(self) -> None:
        """
        PUT of an existing key answers 200 with a new version.
        """
        first = self.put("greeting", b"hello")
        response, body = self.request("PUT", "/kv/greeting", b"bye")
        self.assertEqual(response.code, 200)
        self.assertNotEqual(json.loads(body)["version"], first)
        self.assertEqual(self.request("GET", "/kv/greeting")[1], b"bye")

    def test_get(self) -> None:
        """
        GET answers the value, the stored Content-Type and the ETag.
        """
        version = self.put("doc", b"{}", Content_Type="application/json; charset=utf-8")
        response, body = self.request("GET", "/kv/doc")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"{}")
        self.assertEqual(self.header(response, "Content-Type"), "application/json; charset=utf-8")
        self.assertEqual(self.header(response, "ETag"), f'"{version}"')
        self.assertIsNone(self.header(response, "X-KV-Degraded"))

    def test_default_content_type(self) -> None:
        """
        A value stored without a Content-Type is application/octet-stream.
        """
        self.put("raw", b"\x00\xff")
        response, body = self.request("GET", "/kv/raw")
        self.assertEqual(body, b"\x00\xff")
        self.assertEqual(self.header(response, "Content-Type"), "application/octet-stream")

    def test_empty_value(self) -> None:
        """
        An empty value is a value.
        """
        self.put("empty", b"")
        response, body = self.request("GET", "/kv/empty")
        self.assertEqual((response.code, body), (200, b""))

    def test_get_missing(self) -> None:
        """
        GET of a missing key is a JSON 404.
        """
        self.assertError(self.request("GET", "/kv/nothing"), 404, "not_found")

    def test_head(self) -> None:
        """
        HEAD answers as GET, with the value's Content-Length but no body.
        """
        version = self.put("k", b"12345", Content_Type="text/plain")
        response, body = self.request("HEAD", "/kv/k")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(self.header(response, "Content-Length"), "5")
        self.assertEqual(self.header(response, "Content-Type"), "text/plain")
        self.assertEqual(self.header(response, "ETag"), f'"{version}"')

    def test_head_missing(self) -> None:
        """
        HEAD of a missing key answers 404 without a body.
        """
        response, body = self.request("HEAD", "/kv/nothing")
        self.assertEqual((response.code, body), (404, b""))

    def test_post_creates(self) -> None:
        """
        POST of a new key answers 201 as PUT does.
        """
        response, body = self.request("POST", "/kv/new", b"v")
        self.assertEqual(response.code, 201)
        self.assertEqual(json.loads(body)["key"], "new")
        self.assertEqual(self.header(response, "ETag"), f'"{json.loads(body)["version"]}"')

    def test_post_existing(self) -> None:
        """
        POST of an existing key is a 409 and leaves the value alone.
        """
        self.put("taken", b"first")
        self.assertError(self.request("POST", "/kv/taken", b"second"), 409, "exists")
        self.assertEqual(self.request("GET", "/kv/taken")[1], b"first")

    def test_delete(self) -> None:
        """
        DELETE answers 204 without a body; the key is then gone.
        """
        self.put("k")
        response, body = self.request("DELETE", "/kv/k")
        self.assertEqual((response.code, body), (204, b""))
        self.assertIsNone(self.header(response, "Content-Type"))
        self.assertError(self.request("GET", "/kv/k"), 404, "not_found")

    def test_delete_missing(self) -> None:
        """
        DELETE of a missing key is a 404.
        """
        self.assertError(self.request("DELETE", "/kv/k"), 404, "not_found")

    def test_wrong_method(self) -> None:
        """
        Another method on a key is a 405 naming the allowed ones.
        """
        response = self.assertError(
            self.request("PATCH", "/kv/k", b"v"), 405, "method_not_allowed"
        )
        self.assertEqual(self.header(response, "Allow"), "GET, HEAD, PUT, POST, DELETE")

    def test_too_large(self) -> None:
        """
        A value over the store's C{max_value_bytes} is a 413; one at the
        limit is stored.
        """
        self.assertError(self.request("PUT", "/kv/big", b"x" * 65), 413, "too_large")
        self.assertError(self.request("POST", "/kv/big", b"x" * 65), 413, "too_large")
        self.assertError(self.request("GET", "/kv/big"), 404, "not_found")
        self.put("big", b"x" * 64)

    def test_memory_limit(self) -> None:
        """
        A write past the node's memory limit is a 507.
        """
        self.serve(LocalKeyValue(self.clock, max_value_bytes=64, memory_limit=4096))
        for n in range(40):
            answer = self.request("PUT", f"/kv/k{n}", b"x" * 64)
            if answer[0].code == 507:
                break
        self.assertError(answer, 507, "insufficient_storage")


class KeyTests(APITestCase):
    """
    The key is the percent-decoded UTF-8 path after C{/kv/}.
    """

    def test_spellings(self) -> None:
        """
        Slashes (plain or C{%2F}, repeated, leading), dot segments, spaces,
        non-ASCII characters and encoded C{?} are all part of the key, which
        is answered back decoded.
        """
        spellings = [
            ("/kv/a/b", "a/b"),
            ("/kv/a%2fb/c", "a/b/c"),
            ("/kv//lead", "/lead"),
            ("/kv/a//b", "a//b"),
            ("/kv/trail/", "trail/"),
            ("/kv/../up", "../up"),
            ("/kv/./here/.", "./here/."),
            ("/kv/two%20words", "two words"),
            ("/kv/plus+sign", "plus+sign"),
            ("/kv/what%3F", "what?"),
            ("/kv/hash%23tag", "hash#tag"),
            ("/kv/%E2%98%83", "\N{SNOWMAN}"),
            ("/kv/caf\N{LATIN SMALL LETTER E WITH ACUTE}", "caf\xe9"),
            ("/kv/100%25", "100%"),
        ]
        for n, (path, key) in enumerate(spellings):
            response, body = self.request("PUT", path, b"%d" % n)
            self.assertEqual(response.code, 201, (path, body))
            self.assertEqual(json.loads(body)["key"], key)
            self.assertEqual(self.request("GET", "/kv/" + quote(key, safe=""))[1], b"%d" % n)
        response, body = self.request("GET", "/kv")
        self.assertEqual(json.loads(body)["keys"], sorted(key for _, key in spellings))

    def test_slash_spellings_are_one_key(self) -> None:
        """
        C{/} and C{%2F} name the same key.
        """
        self.put("a/b", b"one")
        self.assertEqual(self.request("GET", "/kv/a%2Fb")[1], b"one")
        self.assertEqual(self.request("GET", "/kv/a/b")[1], b"one")

    def test_query_is_not_key(self) -> None:
        """
        An unencoded C{?} starts the query, which is not part of the key.
        """
        self.request("PUT", "/kv/q?ttl=60", b"v")
        self.assertEqual(self.request("GET", "/kv/q")[1], b"v")

    def test_longest_key(self) -> None:
        """
        A key of 1024 UTF-8 bytes is accepted; 1025 bytes is a 400.
        """
        for key in ["k" * 1024, "\N{LATIN SMALL LETTER E WITH ACUTE}" * 512]:
            self.put(key)
            self.assertEqual(self.request("GET", "/kv/" + quote(key))[0].code, 200)
        for key in ["k" * 1025, "\N{LATIN SMALL LETTER E WITH ACUTE}" * 512 + "k"]:
            self.assertError(self.request("PUT", "/kv/" + quote(key), b"v"), 400, "bad_request")
            self.assertError(self.request("GET", "/kv/" + quote(key)), 400, "bad_request")

    def test_empty_key(self) -> None:
        """
        An empty key is a 400 for every method.
        """
        for method in ["GET", "HEAD", "PUT", "POST", "DELETE"]:
            response, body = self.request(method, "/kv/", b"v")
            self.assertEqual(response.code, 400, method)

    def test_not_utf8(self) -> None:
        """
        A key that is not UTF-8 once percent-decoded is a 400.
        """
        self.assertError(self.request("PUT", "/kv/%FF%FE", b"v"), 400, "bad_request")
        self.assertError(self.request("GET", "/kv/ok%C3"), 400, "bad_request")


class ConditionalTests(APITestCase):
    """
    C{If-Match} and C{If-None-Match}, RFC 9110 section 13.
    """

    def test_if_match(self) -> None:
        """
        PUT with the current ETag in If-Match succeeds; with another, it is
        a 412 and the value is unchanged.
        """
        version = self.put("k", b"one")
        self.assertError(
            self.request("PUT", "/kv/k", b"two", If_Match='"0.0"'), 412, "precondition_failed"
        )
        self.assertEqual(self.request("GET", "/kv/k")[1], b"one")
        response, body = self.request("PUT", "/kv/k", b"two", If_Match=f'"{version}"')
        self.assertEqual(response.code, 200)
        self.assertEqual(self.request("GET", "/kv/k")[1], b"two")

    def test_if_match_missing_key(self) -> None:
        """
        If-Match on a missing key is a 412, whatever it names.
        """
        for value in ['"1.1"', "*", '"1.1", "1.2"']:
            self.assertError(
                self.request("PUT", "/kv/k", b"v", If_Match=value), 412, "precondition_failed"
            )
            self.assertError(
                self.request("DELETE", "/kv/k", If_Match=value), 412, "precondition_failed"
            )
        self.assertError(self.request("GET", "/kv/k"), 404, "not_found")

    def test_if_match_any(self) -> None:
        """
        C{If-Match: *} holds for any existing key.
        """
        self.put("k", b"one")
        self.assertEqual(self.request("PUT", "/kv/k", b"two", If_Match="*")[0].code, 200)
        self.assertEqual(self.request("GET", "/kv/k")[1], b"two")
        self.assertEqual(self.request("DELETE", "/kv/k", If_Match="*")[0].code, 204)

    def test_if_match_list(self) -> None:
        """
        If-Match holds when any entity-tag of its list, over one or several
        header lines, is the current one.
        """
        version = self.put("k")
        self.assertEqual(
            self.request("PUT", "/kv/k", b"v", If_Match=f'"0.1", "{version}"')[0].code, 200
        )
        version = self.put("k")
        self.assertEqual(
            self.request("PUT", "/kv/k", b"v", If_Match=['"0.1"', f'"{version}"'])[0].code, 200
        )
        self.assertError(
            self.request("PUT", "/kv/k", b"v", If_Match='"0.1", "0.2"'), 412, "precondition_failed"
        )
        version = self.put("k")
        self.assertEqual(
            self.request("DELETE", "/kv/k", If_Match=f'"0.1", "{version}"')[0].code, 204
        )

    def test_if_match_weak(self) -> None:
        """
        A weak entity-tag never matches in If-Match (strong comparison).
        """
        version = self.put("k")
        for value in [f'W/"{version}"', f'W/"{version}", "0.1"']:
            self.assertError(
                self.request("PUT", "/kv/k", b"v", If_Match=value), 412, "precondition_failed"
            )
            self.assertError(
                self.request("DELETE", "/kv/k", If_Match=value), 412, "precondition_failed"
            )
        self.assertEqual(
            self.request("PUT", "/kv/k", b"v", If_Match=f'W/"{version}", "{version}"')[0].code,
            200,
        )

    def test_delete_if_match(self) -> None:
        """
        DELETE with a stale If-Match is a 412 and keeps the key.
        """
        stale = self.put("k")
        current = self.put("k")
        self.assertError(
            self.request("DELETE", "/kv/k", If_Match=f'"{stale}"'), 412, "precondition_failed"
        )
        self.assertEqual(self.request("DELETE", "/kv/k", If_Match=f'"{current}"')[0].code, 204)

    def test_if_none_match_any(self) -> None:
        """
        C{If-None-Match: *} on PUT creates a missing key and is a 412 on an
        existing one.
        """
        response, body = self.request("PUT", "/kv/k", b"one", If_None_Match="*")
        self.assertEqual(response.code, 201)
        self.assertError(
            self.request("PUT", "/kv/k", b"two", If_None_Match="*"), 412, "precondition_failed"
        )
        self.assertEqual(self.request("GET", "/kv/k")[1], b"one")

    def test_if_none_match_tags(self) -> None:
        """
        If-None-Match with entity-tags (weak comparison) fails a write when
        one of them is the current version.
        """
        version = self.put("k")
        for value in [f'"{version}"', f'W/"{version}"', f'"0.1", "{version}"']:
            self.assertError(
                self.request("PUT", "/kv/k", b"v", If_None_Match=value), 412, "precondition_failed"
            )
        self.assertEqual(self.request("PUT", "/kv/k", b"v", If_None_Match='"0.1"')[0].code, 200)
        self.assertEqual(self.request("PUT", "/kv/new", b"v", If_None_Match='"0.1"')[0].code, 201)

    def test_delete_if_none_match(self) -> None:
        """
        C{If-None-Match: *} on DELETE fails for an existing key; on a
        missing key the DELETE is the usual 404.
        """
        self.put("k")
        self.assertError(
            self.request("DELETE", "/kv/k", If_None_Match="*"), 412, "precondition_failed"
        )
        self.assertError(self.request("DELETE", "/kv/gone", If_None_Match="*"), 404, "not_found")
        self.assertEqual(self.request("DELETE", "/kv/k", If_None_Match='"0.1"')[0].code, 204)

    def test_both_headers(self) -> None:
        """
        If-Match is evaluated before If-None-Match.
        """
        version = self.put("k")
        self.assertError(
            self.request("PUT", "/kv/k", b"v", If_Match=f'"{version}"', If_None_Match="*"),
            412,
            "precondition_failed",
        )
        response, body = self.request(
            "PUT", "/kv/k", b"v", If_Match=f'"{version}"', If_None_Match='"0.1"'
        )
        self.assertEqual(response.code, 200)

    def test_post_with_preconditions(self) -> None:
        """
        POST evaluates preconditions first, then refuses an existing key.
        """
        version = self.put("k")
        self.assertError(
            self.request("POST", "/kv/k", b"v", If_Match='"0.1", "0.2"'), 412, "precondition_failed"
        )
        self.assertError(
            self.request("POST", "/kv/k", b"v", If_Match=f'"0.1", "{version}"'), 409, "exists"
        )
        self.assertEqual(self.request("POST", "/kv/new", b"v", If_None_Match='"0.1"')[0].code, 201)

    def test_get_not_modified(self) -> None:
        """
        GET or HEAD with an If-None-Match naming the current version is a
        304 with the ETag and no body.
        """
        version = self.put("k", b"value")
        for method in ["GET", "HEAD"]:
            for value in [f'"{version}"', f'W/"{version}"', "*", f'"0.1", "{version}"']:
                response, body = self.request(method, "/kv/k", If_None_Match=value)
                self.assertEqual((response.code, body), (304, b""), value)
                self.assertEqual(self.header(response, "ETag"), f'"{version}"')
        response, body = self.request("GET", "/kv/k", If_None_Match='"0.1"')
        self.assertEqual((response.code, body), (200, b"value"))

    def test_get_if_match(self) -> None:
        """
        GET with an If-Match that does not hold is a 412; on a missing key
        the precondition is ignored and the answer is the 404.
        """
        version = self.put("k", b"value")
        self.assertError(self.request("GET", "/kv/k", If_Match='"0.1"'), 412, "precondition_failed")
        self.assertEqual(self.request("GET", "/kv/k", If_Match=f'"{version}"')[1], b"value")
        self.assertError(self.request("GET", "/kv/gone", If_Match="*"), 404, "not_found")

    def test_malformed(self) -> None:
        """
        A precondition that is not C{*} or a list of quoted entity-tags is a
        400, and nothing is written.
        """
        version = self.put("k", b"one")
        for value in [version, f'"{version}', "*, *", f'*, "{version}"', 'W/ "x"', '"a" "b"', ","]:
            for method in ["PUT", "DELETE"]:
                for header in ["If_Match", "If_None_Match"]:
                    answer = self.request(method, "/kv/k", b"two", **{header: value})
                    self.assertError(answer, 400, "bad_request")
        self.assertEqual(self.request("GET", "/kv/k")[1], b"one")

    def test_concurrent_write_retried(self) -> None:
        """
        When another write lands between the read that evaluates a
        precondition and the conditional write, the precondition is
        evaluated again on the new version.
        """
        kv = RacingKeyValue(self.clock)
        self.serve(kv)
        self.put("k", b"one")
        kv.races = 1
        self.assertEqual(self.request("PUT", "/kv/k", b"mine", If_Match="*")[0].code, 200)
        self.assertEqual(self.request("GET", "/kv/k")[1], b"mine")
        version = self.put("k", b"one")
        kv.races = 1
        self.assertError(
            self.request("PUT", "/kv/k", b"mine", If_Match=f'"0.1", "{version}"'),
            412,
            "precondition_failed",
        )
        self.assertEqual(self.request("GET", "/kv/k")[1], b"concurrent")

    def test_always_racing(self) -> None:
        """
        A key that keeps changing under a precondition is a 503: nothing was
        written, the client may retry.
        """
        kv = RacingKeyValue(self.clock)
        self.serve(kv)
        self.put("k", b"one")
        kv.races = 100
        answer = self.request("DELETE", "/kv/k", If_Match="*")
        response = self.assertError(answer, 503, "unavailable")
        self.assertEqual(self.header(response, "Retry-After"), "1")


class CurrentVersionTests(APITestCase):
    """
    A C{412} carries the C{ETag} of the key's current version, so that the
    client can retry without reading the key again.
    """

    def serve_faulty(self) -> FaultyReadsKeyValue:
        kv = FaultyReadsKeyValue(self.clock)
        self.serve(kv)
        return kv

    def test_failed_write(self) -> None:
        """
        Every failed precondition of a PUT or DELETE on an existing key,
        whether the store or the front end evaluated it, is answered with
        the current ETag.
        """
        version = self.put("k", b"one")
        for method in ["PUT", "DELETE"]:
            for headers in [
                {"If_Match": '"0.0"'},
                {"If_Match": '"0.0", "0.1"'},
                {"If_None_Match": "*"},
                {"If_None_Match": f'"{version}"'},
            ]:
                if method == "DELETE" and "If_None_Match" in headers:
                    continue
                answer = self.request(method, "/kv/k", b"two", **headers)
                response = self.assertError(answer, 412, "precondition_failed")
                self.assertEqual(self.header(response, "ETag"), f'"{version}"', (method, headers))
        self.assertEqual(self.request("GET", "/kv/k")[1], b"one")

    def test_failed_read(self) -> None:
        """
        A GET or HEAD whose If-Match does not hold is a 412 with the current
        ETag.
        """
        version = self.put("k", b"one")
        for method in ["GET", "HEAD"]:
            response, body = self.request(method, "/kv/k", If_Match='"0.0"')
            self.assertEqual(response.code, 412, body)
            self.assertEqual(self.header(response, "ETag"), f'"{version}"')

    def test_missing_key(self) -> None:
        """
        A failed precondition on a missing key has no ETag to tell.
        """
        for method in ["PUT", "DELETE"]:
            answer = self.request(method, "/kv/k", b"v", If_Match='"0.0"')
            response = self.assertError(answer, 412, "precondition_failed")
            self.assertIsNone(self.header(response, "ETag"))

    def test_unsure_read(self) -> None:
        """
        When the read after the refused write is degraded or refused, the
        412 goes without an ETag rather than with a possibly stale one.
        """
        kv = self.serve_faulty()
        self.put("k", b"one")
        kv.degraded = True
        answer = self.request("PUT", "/kv/k", b"two", If_Match='"0.0"')
        self.assertIsNone(self.header(self.assertError(answer, 412, "precondition_failed"), "ETag"))
        kv.degraded, kv.refused = False, True
        answer = self.request("DELETE", "/kv/k", If_Match='"0.0"')
        self.assertIsNone(self.header(self.assertError(answer, 412, "precondition_failed"), "ETag"))


class QueryTests(APITestCase):
    """
    A query parameter a request does not take is a 400 naming it and the
    ones the request takes, and the request does nothing.
    """

    def assertRefused(self, method: str, path: str, *named: str) -> None:
        """
        Assert that C{method} on C{path} is a 400 whose message holds each
        of C{named}.
        """
        answer = self.request(method, path, b"v")
        self.assertError(answer, 400, "bad_request")
        message = json.loads(answer[1])["message"]
        for text in named:
            self.assertIn(text, message, (method, path))

    def test_key_writes(self) -> None:
        """
        PUT and POST of a key take C{ttl} only; a misspelt TTL stores
        nothing.
        """
        for method in ["PUT", "POST"]:
            self.assertRefused(method, "/kv/a?tll=5", "'tll'", "accepts only ttl")
            self.assertRefused(method, "/kv/a?ttl=5&x=1&a=", "parameters 'a', 'x'", "ttl")
            self.assertRefused(method, "/kv/a?ttl", "'ttl'")
        self.assertError(self.request("GET", "/kv/a"), 404, "not_found")

    def test_key_reads_and_deletes(self) -> None:
        """
        GET, HEAD and DELETE of a key take no query parameters.
        """
        self.put("a")
        for method in ["GET", "DELETE"]:
            self.assertRefused(method, "/kv/a?ttl=5", "'ttl'", "takes no query parameters")
        response, body = self.request("HEAD", "/kv/a?x=1")
        self.assertEqual((response.code, body), (400, b""))
        self.assertEqual(self.request("GET", "/kv/a")[0].code, 200)

    def test_listing(self) -> None:
        """
        The listing takes C{prefix}, C{limit} and C{start_after}.
        """
        self.assertRefused("GET", "/kv?prefx=a", "'prefx'", "limit, prefix, start_after")
        self.assertRefused("GET", "/kv?limit", "'limit' has no value")

    def test_repeated(self) -> None:
        """
        A parameter given twice is a 400, not whichever value comes first.
        """
        for method, path in [
            ("PUT", "/kv/a?ttl=1&ttl=2"),
            ("GET", "/kv?prefix=a&prefix=b"),
            ("GET", "/kv?limit=1&limit=2"),
            ("GET", "/kv?start_after=a&start_after=b"),
        ]:
            self.assertRefused(method, path, "more than once")
        self.assertError(self.request("GET", "/kv/a"), 404, "not_found")


class ReadmeTests(SynchronousTestCase):
    """
    The README's curl examples store what they say they store.
    """

    def test_writes_name_content_type(self) -> None:
        """
        Every curl command in README.md that sends a body also sends a
        C{Content-Type}: curl's default for C{--data-binary} is
        C{application/x-www-form-urlencoded}, which the node would store.
        """
        readme = os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")
        with open(readme, encoding="utf-8") as f:
            text = f.read().replace("\\\n", " ")
        writes = [
            line.strip()
            for line in text.splitlines()
            if line.strip().startswith("curl ") and re.search(r" (-d|--data\S*) ", line)
        ]
        self.assertNotEqual(writes, [])
        self.assertEqual([line for line in writes if "-H 'Content-Type: " not in line], [])


class TTLTests(APITestCase):
    """
    C{?ttl=S} on writes.
    """

    def test_expires(self) -> None:
        """
        A key written with a TTL disappears after that many seconds.
        """
        self.request("PUT", "/kv/short?ttl=2.5", b"v")
        self.request("POST", "/kv/shorter?ttl=.5", b"v")
        self.clock.advance(0.5)
        self.assertError(self.request("GET", "/kv/shorter"), 404, "not_found")
        self.clock.advance(1.9)
        self.assertEqual(self.request("GET", "/kv/short")[0].code, 200)
        self.clock.advance(0.1)
        self.assertError(self.request("GET", "/kv/short"), 404, "not_found")
        self.assertEqual(json.loads(self.request("GET", "/kv")[1])["keys"], [])

    def test_remaining(self) -> None:
        """
        GET and HEAD of a key with a TTL, and their 304s, tell the seconds
        it has left in C{X-KV-TTL}; a key without a TTL has no such header.
        """
        self.request("PUT", "/kv/short?ttl=2.5", b"v")
        self.put("long")
        self.clock.advance(1)
        for method in ["GET", "HEAD"]:
            response, body = self.request(method, "/kv/short")
            self.assertEqual(response.code, 200)
            self.assertEqual(self.header(response, "X-KV-TTL"), "1.500")
            self.assertIsNone(self.header(self.request(method, "/kv/long")[0], "X-KV-TTL"))
        etag = self.header(response, "ETag")
        response, body = self.request("GET", "/kv/short", If_None_Match=etag)
        self.assertEqual(response.code, 304)
        self.assertEqual(self.header(response, "X-KV-TTL"), "1.500")
        self.clock.advance(1.4999)
        self.assertEqual(self.header(self.request("GET", "/kv/short")[0], "X-KV-TTL"), "0.000")

    def test_rewrite_without_ttl(self) -> None:
        """
        Rewriting a key without a TTL keeps it.
        """
        self.request("PUT", "/kv/k?ttl=1", b"v")
        self.put("k")
        self.clock.advance(2)
        self.assertEqual(self.request("GET", "/kv/k")[0].code, 200)

    def test_bad_ttl(self) -> None:
        """
        A TTL that is not a positive decimal number of seconds is a 400, and
        nothing is written.
        """
        for ttl in ["0", "0.0", "-1", "abc", "", "inf", "nan", "1e3", "1,5", "1&ttl=2", "9" * 400]:
            for method in ["PUT", "POST"]:
                self.assertError(
                    self.request(method, f"/kv/k?ttl={ttl}", b"v"), 400, "bad_request"
                )
        self.assertError(self.request("GET", "/kv/k"), 404, "not_found")


class ListingTests(APITestCase):
    """
    C{GET /kv?prefix=P&limit=N&start_after=K}.
    """

    def list(self, **query: str) -> dict:
        path = "/kv?" + "&".join(f"{name}={quote(value, safe='')}" for name, value in query.items())
        response, body = self.request("GET", path)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.header(response, "Content-Type"), "application/json")
        return json.loads(body)

    def test_empty(self) -> None:
        """
        An empty store lists no keys and no next page.
        """
        self.assertEqual(self.list(), {"keys": [], "next": None})

    def test_pages(self) -> None:
        """
        Walking the pages with C{next} as C{start_after} lists every key
        under the prefix once, in key order.
        """
        keys = [f"p/{n:02d}" for n in range(25)] + ["p/\N{SNOWMAN}", "p/a b&c=d"]
        for key in keys + ["o", "q/1", "p"]:
            self.put(key)
        seen, pages, start_after = [], 0, ""
        while True:
            page = self.list(prefix="p/", limit="10", start_after=start_after)
            seen.extend(page["keys"])
            pages += 1
            if page["next"] is None:
                break
            self.assertEqual(page["next"], page["keys"][-1])
            start_after = page["next"]
        self.assertEqual(seen, sorted(keys))
        self.assertEqual(pages, 3)

    def test_client_keys_only(self) -> None:
        """
        The listing shows client keys, never other namespaces of the store.
        """
        self.successResultOf(self.kv.put(file_key("/docs/a"), b"chunk"))
        self.put("a")
        self.assertEqual(self.list(), {"keys": ["a"], "next": None})

    def test_default_and_maximum_limit(self) -> None:
        """
        Without a limit a page has 1000 keys; the limit goes up to 10000.
        """
        self.serve(LocalKeyValue(self.clock))
        keys = [f"{n:04d}" for n in range(1001)]
        for key in keys:
            self.successResultOf(self.kv.put("k" + key, b""))
        self.assertEqual(self.list(), {"keys": keys[:1000], "next": keys[999]})
        self.assertEqual(self.list(limit="10000"), {"keys": keys, "next": None})
        self.assertEqual(self.list(start_after=keys[999]), {"keys": keys[1000:], "next": None})

    def test_bad_limit(self) -> None:
        """
        A limit that is not an integer from 1 to 10000 is a 400.
        """
        for limit in ["0", "-1", "10001", "abc", "1.5", "", " 5", "+5", "1e3", "9" * 5000]:
            self.assertError(self.request("GET", f"/kv?limit={quote(limit)}"), 400, "bad_request")
        self.assertError(self.request("GET", "/kv?limit=1&limit=2"), 400, "bad_request")

    def test_bad_text(self) -> None:
        """
        A prefix or start_after that is not UTF-8 is a 400.
        """
        self.assertError(self.request("GET", "/kv?prefix=%FF"), 400, "bad_request")
        self.assertError(self.request("GET", "/kv?start_after=%FF"), 400, "bad_request")

    def test_wrong_method(self) -> None:
        """
        The listing only answers GET and HEAD.
        """
        response, body = self.request("HEAD", "/kv")
        self.assertEqual((response.code, body), (200, b""))
        for method in ["PUT", "POST", "DELETE"]:
            answer = self.request(method, "/kv", b"v")
            response = self.assertError(answer, 405, "method_not_allowed")
            self.assertEqual(self.header(response, "Allow"), "GET, HEAD")


class StoreFailureTests(APITestCase):
    """
    How the store's failures and degraded reads are answered.
    """

    def test_unavailable(self) -> None:
        """
        L{Unavailable} is a 503 with C{Retry-After} in whole seconds,
        rounded up.
        """
        for retry_after, header in [(2.1, "3"), (3.0, "3"), (0.2, "1")]:
            self.serve(ScriptedKeyValue(lambda: fail(Unavailable("no quorum", retry_after))))
            for method, path in [("PUT", "/kv/k"), ("GET", "/kv/k"), ("GET", "/kv")]:
                response = self.assertError(self.request(method, path, b"v"), 503, "unavailable")
                self.assertEqual(self.header(response, "Retry-After"), header)

    def test_outcome_unknown(self) -> None:
        """
        L{OutcomeUnknown} is a 504, without Retry-After.
        """
        self.serve(ScriptedKeyValue(lambda: fail(OutcomeUnknown("replicas stopped answering"))))
        for method in ["PUT", "POST", "DELETE"]:
            response = self.assertError(self.request(method, "/kv/k", b"v"), 504, "outcome_unknown")
            self.assertIsNone(self.header(response, "Retry-After"))

    def test_unexpected(self) -> None:
        """
        An unexpected exception is a 500 JSON answer and is logged with its
        traceback.
        """
        self.serve(ScriptedKeyValue(lambda: fail(ZeroDivisionError("oops"))))
        self.assertError(self.request("GET", "/kv/k"), 500, "internal")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_degraded_read(self) -> None:
        """
        A degraded read is answered with C{X-KV-Degraded: true}, found or not.
        """
        record = Record(b"old", "text/plain", make_version(2, 7))
        self.serve(ScriptedKeyValue(lambda: succeed(ReadResult(record, degraded=True))))
        response, body = self.request("GET", "/kv/k")
        self.assertEqual((response.code, body), (200, b"old"))
        self.assertEqual(self.header(response, "X-KV-Degraded"), "true")
        self.assertEqual(self.header(response, "ETag"), '"2.7"')
        self.serve(ScriptedKeyValue(lambda: succeed(ReadResult(None, degraded=True))))
        response = self.assertError(self.request("GET", "/kv/k"), 404, "not_found")
        self.assertEqual(self.header(response, "X-KV-Degraded"), "true")

    def test_degraded_listing(self) -> None:
        """
        A degraded listing is answered with C{X-KV-Degraded: true}; a normal
        one without it.
        """
        for degraded, header in [(True, "true"), (False, None)]:
            page = KeyPage([user_key("a")], None, degraded)
            self.serve(ScriptedKeyValue(lambda: succeed(page)))
            response, body = self.request("GET", "/kv?prefix=a")
            self.assertEqual((response.code, json.loads(body)), (200, {"keys": ["a"], "next": None}))
            self.assertEqual(self.header(response, "X-KV-Degraded"), header)

    def test_degraded_precondition(self) -> None:
        """
        A precondition evaluated on a degraded read is a 503: without a
        majority it cannot be decided.
        """
        record = Record(b"old", "text/plain", make_version(2, 7))
        self.serve(ScriptedKeyValue(lambda: succeed(ReadResult(record, degraded=True))))
        self.assertError(self.request("PUT", "/kv/k", b"v", If_Match="*"), 503, "unavailable")
        answer = self.request("DELETE", "/kv/k", If_Match='"2.7", "2.8"')
        self.assertError(answer, 503, "unavailable")


class NodeTests(APITestCase):
    """
    C{/cluster}, C{/health}, C{/metrics}, mounted children and unknown paths.
    """

    def test_cluster(self) -> None:
        """
        C{GET /cluster} answers the node's cluster view as JSON.
        """
        response, body = self.request("GET", "/cluster")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Type"), "application/json")
        self.assertEqual(json.loads(body), CLUSTER_VIEW)

    def test_health(self) -> None:
        """
        C{GET /health} is a 200 while the node serves reads and writes, else
        a 503 whose JSON error adds the reason and the details.
        """
        response, body = self.request("GET", "/health")
        self.assertEqual((response.code, json.loads(body)), (200, {"status": "ok", "node": "n1"}))
        self.status.current_health = Health("no_majority", "no majority", {"reachable": 1})
        response, body = self.request("GET", "/health")
        self.assertEqual(response.code, 503)
        self.assertEqual(self.header(response, "Retry-After"), "1")
        self.assertEqual(self.header(response, "Content-Type"), "application/json")
        self.assertEqual(
            json.loads(body),
            {"error": "unavailable", "message": "no majority", "reason": "no_majority", "reachable": 1},
        )

    def test_live(self) -> None:
        """
        C{GET /live} is a 200 whatever the node's health.
        """
        self.status.current_health = Health("no_majority", "no majority", {})
        response, body = self.request("GET", "/live")
        self.assertEqual((response.code, json.loads(body)), (200, {"status": "ok"}))

    def test_metrics(self) -> None:
        """
        C{GET /metrics} answers the node's metrics and the HTTP metrics in
        the Prometheus text format.
        """
        response, body = self.request("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            self.header(response, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8"
        )
        families = parse(body.decode("utf-8"))
        self.assertEqual(
            values(families["twisted_kv_keys"]),
            {("twisted_kv_keys", frozenset({("node", "n1")})): 3},
        )
        self.assertEqual(families["twisted_kv_http_requests"].type, "counter")
        self.assertEqual(families["twisted_kv_http_request_duration_seconds"].type, "histogram")

    def test_head(self) -> None:
        """
        The node's routes answer HEAD as GET, without a body.
        """
        for path in ["/cluster", "/health", "/live", "/metrics"]:
            response, body = self.request("HEAD", path)
            self.assertEqual((response.code, body), (200, b""), path)

    def test_wrong_method(self) -> None:
        """
        Another method on a node route is a 405 naming the allowed ones.
        """
        for path in ["/cluster", "/health", "/live", "/metrics"]:
            response = self.assertError(self.request("POST", path, b"x"), 405, "method_not_allowed")
            self.assertEqual(self.header(response, "Allow"), "GET, HEAD")

    def test_unknown_path(self) -> None:
        """
        Paths no resource serves are JSON 404s, also when not UTF-8.
        """
        for path in ["/", "/nothing", "/cluster/", "/cluster/x", "/ws", "/files/a", "/%FF"]:
            self.assertError(self.request("GET", path), 404, "not_found")

    def test_children(self) -> None:
        """
        Children are mounted as top-level segments; C{b""} answers C{GET /}.
        """
        self.serve(self.kv, ws=_Named("ws"), files=_Named("files"), **{"": _Named("dashboard")})
        self.assertEqual(json.loads(self.request("GET", "/")[1]), ["dashboard", []])
        self.assertEqual(json.loads(self.request("GET", "/ws")[1]), ["ws", []])
        self.assertEqual(
            json.loads(self.request("PUT", "/files/docs/a%20b.txt", b"x")[1]),
            ["files", ["docs", "a b.txt"]],
        )
        self.put("k", b"still served")
        self.assertEqual(self.request("GET", "/kv/k")[1], b"still served")
        self.assertEqual(json.loads(self.request("GET", "/cluster")[1]), CLUSTER_VIEW)

    def test_kv_child_refused(self) -> None:
        """
        C{/kv} cannot be taken by a child.
        """
        self.assertRaises(
            ValueError,
            build_site,
            self.kv,
            self.status,
            clock=self.clock,
            children={b"kv": _Named("kv")},
        )
