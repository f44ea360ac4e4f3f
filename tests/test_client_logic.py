# -*- test-case-name: tests.test_client_logic -*-
"""
Tests for L{twisted_kv.client._logic}, the clients' logic without I/O, and
for the facade L{twisted_kv.client}: requests are built and answers and
watch frames read without any connection.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import twisted_kv.client
from twisted_kv import errors
from twisted_kv.client import sync, txclient
from twisted_kv.client._logic import (
    Calls,
    Frame,
    NodeRing,
    Request,
    Response,
    Value,
    WatchPosition,
    authorization,
    close_reason,
    conditions,
    delete_request,
    error_for,
    get_request,
    list_request,
    put_request,
    watch_op,
    ws_url,
)
from twisted_kv.core.records import format_version, make_version


def _error(status: int, body: bytes, **headers: str) -> errors.KVError:
    return error_for(Response(status, headers, body))


class RequestTests(SynchronousTestCase):
    """
    The HTTP requests of the API, as both clients send them.
    """

    def test_key_escaped(self) -> None:
        """
        The key is percent-encoded whole, C{/} included.
        """
        self.assertEqual(get_request("a/b c?#%é").target, "/kv/a%2Fb%20c%3F%23%25%C3%A9")

    def test_empty_key(self) -> None:
        """
        An empty key is refused before anything is sent.
        """
        self.assertRaises(errors.InvalidRequest, get_request, "")

    def test_put_text(self) -> None:
        """
        Text is sent as UTF-8, labelled so unless told otherwise.
        """
        request = put_request("k", "é")
        self.assertEqual(
            (request.method, request.body, dict(request.headers)),
            ("PUT", b"\xc3\xa9", {"Content-Type": "text/plain; charset=utf-8"}),
        )

    def test_put_conditions(self) -> None:
        """
        C{if_match}, C{if_none_match} and C{ttl} become headers and the query.
        """
        request = put_request("k", b"v", "application/json", 2.5, conditions("1.4", True))
        self.assertEqual(request.target, "/kv/k?ttl=2.5")
        self.assertEqual(
            dict(request.headers),
            {"Content-Type": "application/json", "If-Match": '"1.4"', "If-None-Match": "*"},
        )

    def test_conditions(self) -> None:
        """
        A version to match is quoted as an ETag; none at all is C{*}.
        """
        self.assertEqual(conditions(), {})
        self.assertEqual(conditions("1.4"), {"If-Match": '"1.4"'})
        self.assertEqual(conditions(if_none_match=True), {"If-None-Match": "*"})

    def test_create(self) -> None:
        """
        Creating is a C{POST}.
        """
        self.assertEqual(put_request("k", b"", create=True).method, "POST")

    def test_delete(self) -> None:
        """
        C{DELETE}, conditional on a version if asked.
        """
        request = delete_request("k", "3.9")
        self.assertEqual((request.method, dict(request.headers)), ("DELETE", {"If-Match": '"3.9"'}))

    def test_list(self) -> None:
        """
        The listing's parameters go in the query, the unset ones not at all.
        """
        self.assertEqual(list_request("a b/").target, "/kv?prefix=a+b%2F")
        self.assertEqual(
            list_request("", 10, "x").target, "/kv?prefix=&limit=10&start_after=x"
        )

    def test_value(self) -> None:
        """
        A read gives the value, its type, its version without quotes and the
        degraded flag.
        """
        response = Response(
            200, {"content-type": "text/plain", "etag": '"1.2"', "x-kv-degraded": "true"}, b"v"
        )
        self.assertEqual(
            get_request("k").result(response), Value(b"v", "text/plain", "1.2", degraded=True)
        )

    def test_ws_url(self) -> None:
        """
        C{/ws} is on the same host and port, C{wss} under HTTPS.
        """
        self.assertEqual(ws_url("http://h:7001"), "ws://h:7001/ws")
        self.assertEqual(ws_url("https://h/"), "wss://h/ws")


class ErrorTests(SynchronousTestCase):
    """
    Error answers become the typed exceptions of L{twisted_kv.errors}.
    """

    def test_by_status(self) -> None:
        """
        Each error status of the HTTP API has its exception, with the
        node's message.
        """
        expected = {
            400: errors.InvalidRequest,
            401: errors.Unauthorized,
            403: errors.Forbidden,
            404: errors.KeyNotFound,
            409: errors.KeyExists,
            412: errors.PreconditionFailed,
            413: errors.ValueTooLarge,
            429: errors.TooManyLogins,
            503: errors.Unavailable,
            504: errors.OutcomeUnknown,
            507: errors.InsufficientStorage,
        }
        for status, cls in expected.items():
            error = _error(status, b'{"error": "x", "message": "because"}')
            self.assertEqual((type(error), error.message), (cls, "because"))

    def test_retry_after(self) -> None:
        """
        C{503} and C{429} carry C{Retry-After}.
        """
        error = _error(503, b"{}", **{"retry-after": "3"})
        self.assertEqual(error.retry_after, 3.0)
        error = _error(429, b"{}", **{"retry-after": "2"})
        self.assertEqual(error.retry_after, 2.0)


class AuthorizationTests(SynchronousTestCase):
    """
    L{authorization}: the credentials header of both clients.
    """

    def test_headers(self) -> None:
        """
        A user is HTTP Basic (the password may hold colons), a token is a
        bearer token, neither is no header.
        """
        self.assertEqual(
            authorization(user="alice:won:der"), {"Authorization": "Basic YWxpY2U6d29uOmRlcg=="}
        )
        self.assertEqual(authorization(token="t.k"), {"Authorization": "Bearer t.k"})
        self.assertEqual(authorization(), {})

    def test_bad(self) -> None:
        """
        Both at once, or a user without a password, are refused.
        """
        self.assertRaises(ValueError, authorization, user="a:b", token="t")
        self.assertRaises(ValueError, authorization, user="alice")

    def test_other_status(self) -> None:
        """
        Another status is a L{KVError} with that status, and a body that is
        not the usual JSON is the message.
        """
        error = _error(502, b"Bad Gateway\n")
        self.assertEqual((type(error), error.status, error.message), (errors.KVError, 502, "Bad Gateway"))


class _Recording(Calls):
    """
    The calls of L{Calls}, answered by recording their requests.
    """

    def __init__(self) -> None:
        self.requests: list[Request[Any]] = []

    def _call(self, request: Request[Any]) -> Any:
        self.requests.append(request)
        return "result"


class CallsTests(SynchronousTestCase):
    """
    Each call of L{Calls} hands its request to C{_call}, and returns what
    C{_call} makes of it.
    """

    def test_requests(self) -> None:
        """
        The arguments of each call go into its request.
        """
        calls = _Recording()
        results = [
            calls.get("k"),
            calls.put("k", b"v", ttl=1, if_match="1.2"),
            calls.create("k", "v", content_type="a/b"),
            calls.delete("k", if_match="3.4"),
            calls.list("p", limit=2, start_after="p1"),
            calls.cluster(),
        ]
        self.assertEqual(results, ["result"] * 6)
        self.assertEqual(
            [(r.method, r.target, dict(r.headers), r.body) for r in calls.requests],
            [
                ("GET", "/kv/k", {}, None),
                (
                    "PUT",
                    "/kv/k?ttl=1",
                    {"Content-Type": "application/octet-stream", "If-Match": '"1.2"'},
                    b"v",
                ),
                ("POST", "/kv/k", {"Content-Type": "a/b"}, b"v"),
                ("DELETE", "/kv/k", {"If-Match": '"3.4"'}, None),
                ("GET", "/kv?prefix=p&limit=2&start_after=p1", {}, None),
                ("GET", "/cluster", {}, None),
            ],
        )

    def test_both_clients(self) -> None:
        """
        Both clients make their calls with L{Calls}.
        """
        self.assertTrue(issubclass(sync.Client, Calls))
        self.assertTrue(issubclass(txclient.TxClient, Calls))


class WatchOpTests(SynchronousTestCase):
    """
    L{watch_op} is the one watch a connection sends.
    """

    def test_keys(self) -> None:
        """
        A watch of keys names their prefix, and C{since} once there is a
        revision to resume after.
        """
        self.assertEqual(watch_op("a/", False, None), {"op": "watch", "prefix": "a/"})
        self.assertEqual(watch_op("a/", False, 7), {"op": "watch", "prefix": "a/", "since": 7})

    def test_files(self) -> None:
        """
        A watch of files names their path.
        """
        self.assertEqual(watch_op("d/", True, 0), {"op": "watch_files", "path": "d/", "since": 0})


def _put(key: str, version: str, revision: int) -> dict:
    return {"type": "put", "key": key, "version": version, "revision": revision, "value": "v"}


class WatchPositionTests(SynchronousTestCase):
    """
    L{WatchPosition} reads the frames of C{/ws}: which to deliver, and
    where to resume.
    """

    def test_watching_sets_the_start(self) -> None:
        """
        Without C{since}, the watch resumes after the revision its first
        answer names; later answers do not move it.
        """
        position = WatchPosition()
        self.assertIsNone(position.revision)
        self.assertIs(position.receive({"type": "watching", "prefix": "", "revision": 10}), Frame.WATCHING)
        self.assertIs(position.receive({"type": "watching", "prefix": "", "revision": 4}), Frame.WATCHING)
        self.assertEqual(position.revision, 10)

    def test_since(self) -> None:
        """
        Given C{since}, the answer does not move the revision.
        """
        position = WatchPosition(3)
        position.receive({"type": "watching", "prefix": "", "revision": 10})
        self.assertEqual(position.revision, 3)

    def test_changes(self) -> None:
        """
        Every kind of change is delivered and moves the revision.
        """
        position = WatchPosition(0)
        frames = [
            _put("a", format_version(make_version(1, 1)), 1),
            {"type": "delete", "key": "a", "version": format_version(make_version(1, 2)), "revision": 2},
            {"type": "expire", "key": "b", "version": format_version(make_version(1, 3)), "revision": 3},
            {"type": "file", "op": "put", "path": "f", "size": 1, "revision": 4},
            {"type": "compacted", "revision": 5},
        ]
        self.assertEqual([position.receive(frame) for frame in frames], [Frame.CHANGE] * 5)
        self.assertEqual(position.revision, 5)

    def test_old_change_ignored(self) -> None:
        """
        A change at or before the revision to resume after is not new.
        """
        position = WatchPosition(5)
        self.assertIs(position.receive(_put("a", "1.1", 5)), Frame.IGNORED)
        self.assertEqual(position.revision, 5)

    def test_renumbered_change_ignored(self) -> None:
        """
        The same key and version under a newer revision (renumbered around
        a leader failover) is not delivered again, but the watch resumes
        after it; a newer version is delivered.
        """
        position = WatchPosition(0)
        self.assertIs(position.receive(_put("a", "2.7", 11)), Frame.CHANGE)
        self.assertIs(position.receive(_put("a", "2.7", 20)), Frame.IGNORED)
        self.assertEqual(position.revision, 20)
        self.assertIs(position.receive(_put("a", "3.1", 21)), Frame.CHANGE)

    def test_compacted_behind(self) -> None:
        """
        C{compacted} from a node behind is delivered, without moving the
        revision back.
        """
        position = WatchPosition(10)
        self.assertIs(position.receive({"type": "compacted", "revision": 0}), Frame.CHANGE)
        self.assertEqual(position.revision, 10)

    def test_other_frames(self) -> None:
        """
        C{error} is a refusal; C{unwatched} and unknown frames are ignored.
        """
        position = WatchPosition(1)
        self.assertIs(position.receive({"type": "error", "message": "no"}), Frame.REFUSED)
        self.assertIs(position.receive({"type": "unwatched", "prefix": "", "revision": 9}), Frame.IGNORED)
        self.assertIs(position.receive({"type": "new"}), Frame.IGNORED)
        self.assertEqual(position.revision, 1)


class NodeRingTests(SynchronousTestCase):
    """
    L{NodeRing} is the order in which a watch tries the nodes.
    """

    def test_round(self) -> None:
        """
        The first node first, then the others in order, round and round;
        the first one given among the others is not tried twice.
        """
        ring = NodeRing("http://a:1", ["http://b:2", "http://a:1", "http://c:3"])
        self.assertEqual(len(ring), 3)
        self.assertEqual(
            [ring.url] + [ring.move() for _ in range(3)],
            ["http://a:1", "http://b:2", "http://c:3", "http://a:1"],
        )

    def test_alone(self) -> None:
        """
        A single node is tried again and again.
        """
        ring = NodeRing("http://a:1")
        self.assertEqual((len(ring), ring.move()), (1, "http://a:1"))


class CloseReasonTests(SynchronousTestCase):
    """
    L{close_reason} says why a WebSocket connection closed.
    """

    def test_reasons(self) -> None:
        """
        An abnormal close is a lost connection; a close frame gives its code
        and reason.
        """
        reasons = [(None, None), (1006, "x"), (1013, "busy"), (1000, "")]
        self.assertEqual(
            [close_reason(code, reason) for code, reason in reasons],
            ["connection lost", "connection lost", "closed 1013: busy", "closed 1000"],
        )


class FacadeTests(SynchronousTestCase):
    """
    L{twisted_kv.client} exports what users import.
    """

    def test_exports(self) -> None:
        """
        Every name of C{__all__} is there, and is the class of its module.
        """
        for name in twisted_kv.client.__all__:
            self.assertTrue(hasattr(twisted_kv.client, name), name)
        self.assertIs(twisted_kv.client.Client, sync.Client)
        self.assertIs(twisted_kv.client.TxClient, txclient.TxClient)
        self.assertIs(twisted_kv.client.Watcher, txclient.Watcher)
        self.assertIs(twisted_kv.client.Value, Value)

    def test_unknown(self) -> None:
        """
        Another name is an L{AttributeError}.
        """
        self.assertRaises(AttributeError, getattr, twisted_kv.client, "Nothing")
