# -*- test-case-name: tests.test_web_auth -*-
"""
Tests for L{twisted_kv.web.auth}: a node's site with users, driven with raw
HTTP/1.1 bytes over a L{StringTransport} on a L{Clock} (see
L{tests.test_site}).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Optional
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.strategies import ordered_keys
from tests.test_http_api import FakeClusterStatus
from tests.test_logins import HeldChecks
from tests.test_site import Response, parse_responses, request
from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.core.keyspace import user_key
from twisted_kv.core.passwords import hash_password
from twisted_kv.core.users import Grant, LoginThrottle, User
from twisted_kv.logins import MAX_CHECKING_ADDRESSES, CheckPassword, Logins, check_now
from twisted_kv.web.auth import Guard
from twisted_kv.web.files_http import files_resource
from twisted_kv.web.site import build_site
from twisted_kv.ws.server import build_ws_resource

ALICE = User(
    name="alice",
    password=hash_password("wonderland", salt=bytes(16)),
    grant=Grant("alice", read=("users/", "public/"), write=("users/alice/",), files="/alice/"),
)
ROOT = User(name="root", password="plain:toor", grant=Grant("root", ("",), ("",), "/", True))


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


ALICE_BASIC = basic("alice", "wonderland")


class GuardedSite:
    """
    A node's site with users alice and root, over an in-memory store.
    """

    def __init__(
        self,
        users: tuple[User, ...] = (ALICE, ROOT),
        free_failures: int = 5,
        check_password: CheckPassword = check_now,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.kv = LocalKeyValue(self.clock)
        self.throttle = LoginThrottle(free=free_failures)
        logins = Logins(self.throttle, self.clock, check_password)
        guard = Guard({u.name: u for u in users}, b"secret", logins, self.clock)
        ws, self.ws_service = build_ws_resource(self.kv, clock=self.clock)
        self.site = build_site(
            self.kv,
            FakeClusterStatus(),
            clock=self.clock,
            children={b"files": files_resource(self.kv, clock=self.clock), b"ws": ws},
            guard=guard,
        )

    def raw(self, data: bytes, host: str = "127.0.0.1") -> bytes:
        """
        What the site answers C{data} sent from C{host}.
        """
        protocol, transport = self.connect(host)
        protocol.dataReceived(data)
        protocol.connectionLost(Failure(ConnectionDone()))
        return transport.value()

    def connect(self, host: str = "127.0.0.1") -> tuple[Any, StringTransport]:
        """
        An open connection from C{host}: its protocol and transport.
        """
        protocol = self.site.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(self, data: bytes, host: str = "127.0.0.1") -> list[Response]:
        return parse_responses(self.raw(data, host))

    def call(
        self, method: str, path: str, body: bytes = b"", host: str = "127.0.0.1", **headers: str
    ) -> Response:
        [response] = self.exchange(request(method, path, body, **headers), host)
        return response

    def store(self, key: str, value: bytes = b"v") -> None:
        self.kv.put(user_key(key), value, "text/plain", None, None, False, False)


class AuthenticationTests(SynchronousTestCase):
    """
    Credentials.
    """

    def setUp(self) -> None:
        self.node = GuardedSite()

    def test_open(self) -> None:
        """
        C{GET /health} and C{GET /live} need no credentials.
        """
        self.assertEqual(self.node.call("GET", "/health")[0], 200)
        self.assertEqual(self.node.call("GET", "/live")[0], 200)

    def test_missing(self) -> None:
        """
        Anything else without credentials is a JSON C{401} with Basic and
        Bearer challenges.
        """
        for method, path in [
            ("GET", "/kv/users/x"),
            ("GET", "/kv"),
            ("GET", "/"),
            ("POST", "/health"),
            ("GET", "/cluster"),
            ("GET", "/metrics"),
            ("GET", "/files/alice/"),
        ]:
            code, headers, body = self.node.call(method, path)
            self.assertEqual(code, 401, path)
            self.assertEqual(json.loads(body)["error"], "unauthorized")
        answer = self.node.raw(request("GET", "/kv/users/x"))
        self.assertIn(b'\r\nWWW-Authenticate: Basic realm="twisted_kv", charset="UTF-8"\r\n', answer)
        self.assertIn(b'\r\nWWW-Authenticate: Bearer realm="twisted_kv"\r\n', answer)

    def test_wrong(self) -> None:
        """
        A wrong password, an unknown user, malformed or unsupported
        credentials are C{401}.
        """
        for authorization in [
            basic("alice", "wrong"),
            basic("nobody", "wonderland"),
            "Basic !!!",
            "Basic " + base64.b64encode(b"alice").decode(),
            "Digest x",
            "Bearer nonsense",
        ]:
            self.assertEqual(
                self.node.call("GET", "/kv/users/x", Authorization=authorization)[0], 401, authorization
            )

    def test_basic(self) -> None:
        """
        Good Basic credentials are served, again and again.
        """
        self.node.store("users/x")
        for _ in range(2):
            code, _, body = self.node.call("GET", "/kv/users/x", Authorization=ALICE_BASIC)
            self.assertEqual((code, body), (200, b"v"))

    def test_token(self) -> None:
        """
        C{POST /auth/token} with Basic gives a token accepted as Bearer
        until it expires; a token cannot buy another one.
        """
        self.node.store("users/x")
        code, headers, body = self.node.call("POST", "/auth/token", Authorization=ALICE_BASIC)
        self.assertEqual(code, 200)
        answer = json.loads(body)
        self.assertEqual(answer["expires"], 1_000_000 + 3600)
        self.assertEqual(headers[b"cache-control"], b"no-store")
        bearer = "Bearer " + answer["token"]
        self.assertEqual(self.node.call("GET", "/kv/users/x", Authorization=bearer)[0], 200)
        self.assertEqual(self.node.call("POST", "/auth/token", Authorization=bearer)[0], 401)
        self.assertEqual(self.node.call("GET", "/auth/token", Authorization=ALICE_BASIC)[0], 405)
        self.assertEqual(self.node.call("POST", "/auth/other", Authorization=ALICE_BASIC)[0], 404)
        self.node.clock.advance(3600)
        code, _, body = self.node.call("GET", "/kv/users/x", Authorization=bearer)
        self.assertEqual(code, 401)
        self.assertIn("expired", json.loads(body)["message"])

    def test_throttled(self) -> None:
        """
        After five failed logins from one address, the sixth failure blocks
        it: even good credentials are answered C{429} with C{Retry-After}
        until the delay has passed; other addresses are served.
        """
        self.node.store("users/x")
        for _ in range(6):
            guess = self.node.call("GET", "/kv/users/x", Authorization=basic("alice", "guess"))
            self.assertEqual(guess[0], 401)
        code, headers, body = self.node.call("GET", "/kv/users/x", Authorization=ALICE_BASIC)
        self.assertEqual((code, headers[b"retry-after"]), (429, b"1"))
        self.assertEqual(json.loads(body)["error"], "too_many_requests")
        elsewhere = self.node.call("GET", "/kv/users/x", host="127.0.0.2", Authorization=ALICE_BASIC)
        self.assertEqual(elsewhere[0], 200)
        self.node.clock.advance(1)
        self.assertEqual(self.node.call("GET", "/kv/users/x", Authorization=ALICE_BASIC)[0], 200)

    def test_cross_origin(self) -> None:
        """
        A browser request from a page of another origin is refused; one
        from the node's own origin is served.
        """
        self.node.store("users/x")
        headers = {"Authorization": ALICE_BASIC}
        refused = self.node.call("GET", "/kv/users/x", Origin="http://evil.example", **headers)
        self.assertEqual(refused[0], 403)
        served = self.node.call("GET", "/kv/users/x", Origin="http://node.example", **headers)
        self.assertEqual(served[0], 200)

    def test_refusals_carry_the_common_headers(self) -> None:
        """
        A refusal (C{401}, C{403}, C{429}) carries the C{Date} and
        C{Server} headers every other answer of the site carries, beside
        the JSON error body.
        """
        node = GuardedSite(free_failures=0)
        node.store("users/x")
        served = node.call("GET", "/kv/users/x", Authorization=ALICE_BASIC)
        self.assertEqual(served[0], 200)
        refusals = [
            node.call("GET", "/kv/secret", Authorization=ALICE_BASIC),
            node.call("GET", "/kv/users/x"),
            node.call("GET", "/kv/users/x", Authorization=basic("alice", "guess")),
            node.call("GET", "/kv/users/x", Authorization=ALICE_BASIC),
        ]
        self.assertEqual([code for code, _, _ in refusals], [403, 401, 401, 429])
        for code, headers, body in refusals:
            self.assertEqual(
                (headers.get(b"date"), headers.get(b"server")),
                (served[1][b"date"], served[1][b"server"]),
                code,
            )
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertEqual(set(json.loads(body)), {"error", "message"})

    def test_websocket_upgrade(self) -> None:
        """
        A WebSocket upgrade without credentials, or with a forged token, is
        refused with C{401} (L{tests.test_e2e_users} has it accepted).
        """
        upgrade = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        self.assertEqual(self.node.exchange(request("GET", "/ws", **upgrade))[0][0], 401)
        self.assertEqual(self.node.exchange(request("GET", "/ws?token=forged", **upgrade))[0][0], 401)
        bearer_elsewhere = request("GET", "/kv/users/x?token=forged")
        self.assertEqual(self.node.exchange(bearer_elsewhere)[0][0], 401)


class PasswordCheckTests(SynchronousTestCase):
    """
    Passwords the process has not seen are checked off the reactor
    thread: the request waits for the check, other requests do not.
    """

    def setUp(self) -> None:
        self.checks = HeldChecks()
        self.node = GuardedSite(free_failures=1, check_password=self.checks)
        self.node.store("users/x")

    def test_waits_for_the_check(self) -> None:
        """
        A request with a password not seen before is answered once its
        check is done; meanwhile a request with a token is served; later
        requests with the same password need no check.
        """
        protocol, transport = self.node.connect()
        protocol.dataReceived(request("POST", "/auth/token", Authorization=basic("root", "toor")))
        self.checks.answer()
        [(code, _, body)] = parse_responses(transport.value())
        bearer = "Bearer " + json.loads(body)["token"]
        protocol, transport = self.node.connect()
        protocol.dataReceived(request("GET", "/kv/users/x", Authorization=ALICE_BASIC))
        self.assertEqual((transport.value(), len(self.checks.pending)), (b"", 1))
        self.assertEqual(self.node.call("GET", "/kv/users/x", Authorization=bearer)[0], 200)
        self.checks.answer()
        [(code, _, body)] = parse_responses(transport.value())
        self.assertEqual((code, body), (200, b"v"))
        self.assertEqual(self.node.call("GET", "/kv/users/x", Authorization=ALICE_BASIC)[0], 200)
        self.assertEqual(self.checks.pending, [])

    def test_client_gone(self) -> None:
        """
        A client gone while its password was checked is answered nothing,
        and nothing fails.
        """
        protocol, transport = self.node.connect()
        protocol.dataReceived(request("PUT", "/kv/users/alice/y", b"new", Authorization=ALICE_BASIC))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.checks.answer()
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.node.call("GET", "/kv/users/alice/y", Authorization=ALICE_BASIC)[0], 404)

    def test_parallel_guesses(self) -> None:
        """
        Wrong passwords sent in parallel from one address are checked one
        after the other, and refused with C{429} as soon as they would be
        one by one: with one free failure, the third is never checked.
        """
        connections = [self.node.connect() for _ in range(3)]
        for protocol, _ in connections:
            protocol.dataReceived(request("GET", "/kv/users/x", Authorization=basic("alice", "guess")))
        self.assertEqual(len(self.checks.pending), 1)
        self.checks.answer()
        self.checks.answer()
        codes = [parse_responses(transport.value())[0][0] for _, transport in connections]
        self.assertEqual((codes, self.checks.pending), ([401, 401, 429], []))

    def test_busy(self) -> None:
        """
        While passwords from L{MAX_CHECKING_ADDRESSES} addresses wait for
        their checks, a password from another address is answered C{503}
        at once, with C{Retry-After}, and not counted as a failed login;
        a token is served meanwhile, and once a check is done the address
        is checked again.
        """
        protocol, transport = self.node.connect()
        protocol.dataReceived(request("POST", "/auth/token", Authorization=basic("root", "toor")))
        self.checks.answer()
        bearer = "Bearer " + json.loads(parse_responses(transport.value())[0][2])["token"]
        connections = [self.node.connect(f"10.1.0.{i}") for i in range(MAX_CHECKING_ADDRESSES)]
        for protocol, _ in connections:
            protocol.dataReceived(request("GET", "/kv/users/x", Authorization=basic("alice", "guess")))
        code, headers, body = self.node.call(
            "GET", "/kv/users/x", host="10.2.0.1", Authorization=ALICE_BASIC
        )
        self.assertEqual((code, headers[b"retry-after"]), (503, b"1"))
        self.assertEqual(json.loads(body)["error"], "busy")
        self.assertEqual(self.node.throttle.retry_after("10.2.0.1", self.node.clock.seconds()), 0)
        served = self.node.call("GET", "/kv/users/x", host="10.2.0.1", Authorization=bearer)
        self.assertEqual(served[0], 200)
        self.checks.answer()
        protocol, transport = self.node.connect("10.2.0.1")
        protocol.dataReceived(request("GET", "/kv/users/x", Authorization=ALICE_BASIC))
        while self.checks.pending:
            self.checks.answer()
        [(code, _, body)] = parse_responses(transport.value())
        self.assertEqual((code, body), (200, b"v"))


class PermissionTests(SynchronousTestCase):
    """
    What a user may reach.
    """

    def setUp(self) -> None:
        self.node = GuardedSite()

    def call(self, method: str, path: str, body: bytes = b"", user: str = ALICE_BASIC) -> int:
        return self.node.call(method, path, body, Authorization=user)[0]

    def test_keys(self) -> None:
        """
        A key outside the user's read prefixes is C{403}, whether or not it
        exists; writes need a write prefix.
        """
        self.node.store("private/x")
        self.node.store("users/x")
        self.assertEqual(self.call("GET", "/kv/private/x"), 403)
        self.assertEqual(self.call("HEAD", "/kv/private/missing"), 403)
        self.assertEqual(self.call("GET", "/kv/users/missing"), 404)
        self.assertEqual(self.call("GET", "/kv/users%2Fx"), 200)
        self.assertEqual(self.call("PUT", "/kv/users/x", b"w"), 403)
        self.assertEqual(self.call("DELETE", "/kv/users/x"), 403)
        self.assertEqual(self.call("PUT", "/kv/users/alice/x", b"w"), 201)
        self.assertEqual(self.call("PUT", "/kv/private/x", b"w", basic("root", "toor")), 200)

    def test_files(self) -> None:
        """
        C{/files/} serves the user's area and nothing else, not even the
        listing of the directories above it.
        """
        self.assertEqual(self.call("PUT", "/files/alice/a.txt", b"A"), 201)
        self.assertEqual(self.call("GET", "/files/alice/a.txt"), 200)
        self.assertEqual(self.call("GET", "/files/alice/"), 200)
        self.assertEqual(self.call("GET", "/files/alice"), 200)
        self.assertEqual(self.call("PUT", "/files/bob/a.txt", b"B"), 403)
        self.assertEqual(self.call("GET", "/files/"), 403)
        self.assertEqual(self.call("GET", "/files/alicebob"), 403)
        self.assertEqual(self.call("GET", "/files/alice%2F..%2Fbob/a.txt"), 400)
        self.assertEqual(self.call("GET", "/files/alice/../bob"), 400)

    def test_admin(self) -> None:
        """
        Backups and membership changes are for admins.
        """
        self.assertEqual(self.call("GET", "/admin/snapshot"), 403)
        self.assertEqual(self.call("POST", "/cluster/nodes", b"{}"), 403)
        self.assertEqual(self.call("DELETE", "/cluster/nodes/n4"), 403)
        self.assertEqual(self.call("GET", "/cluster"), 200)
        self.assertNotEqual(self.call("GET", "/admin/snapshot", user=basic("root", "toor")), 403)

    @given(
        stored=st.sets(ordered_keys.filter(bool), max_size=20),
        read=st.lists(ordered_keys, max_size=3),
        prefix=ordered_keys,
        limit=st.integers(min_value=1, max_value=4),
    )
    def test_listing(self, stored: set[str], read: list[str], prefix: str, limit: int) -> None:
        """
        Listing page by page returns exactly the readable keys under the
        prefix, and no other key, not even as C{next}.
        """
        user = User(name="u", password="plain:p", grant=Grant("u", read=tuple(read)))
        node = GuardedSite(users=(user,))
        for key in stored:
            node.store(key)
        listed: list[str] = []
        after: Optional[str] = None
        for _ in range(len(stored) + 2):
            query = f"/kv?prefix={quote(prefix)}&limit={limit}"
            if after is not None:
                query += f"&start_after={quote(after)}"
            code, _, body = node.call("GET", query, Authorization=basic("u", "p"))
            self.assertEqual(code, 200)
            page: dict[str, Any] = json.loads(body)
            listed += page["keys"]
            after = page["next"]
            if after is None:
                break
            self.assertTrue(user.grant.may_read(after))
        self.assertIsNone(after)
        expected = sorted(k for k in stored if k.startswith(prefix) and user.grant.may_read(k))
        self.assertEqual(listed, expected)
