# -*- test-case-name: tests.test_site -*-
"""
Tests for L{twisted_kv.web.site}: the site itself, driven with raw
HTTP/1.1 bytes over a L{StringTransport}, for what only the site does:
bounding request bodies as they arrive, and the HTTP metrics; and the sites
of the nodes of an in-memory cluster, for what C{/health} and C{/live} say
as the cluster forms and loses nodes.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from prometheus_client.metrics_core import Metric
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.test_http_api import FakeClusterStatus, ScriptedKeyValue
from tests.test_metrics import parse, values
from tests.test_sending import loopback_connection, received
from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.core.keyspace import user_key
from twisted_kv.core.records import Record
from twisted_kv.interfaces import IKeyValue, ReadResult
from twisted_kv.testing import MemoryCluster
from twisted_kv.web.site import build_site
from twisted_kv.web.status import NodeStatus

Response = tuple[int, dict[bytes, bytes], bytes]


def parse_responses(data: bytes) -> list[Response]:
    """
    Split the bytes a server wrote into responses (none of them to HEAD).

    @return: each response's status, headers (lower-cased names) and body.
    """
    responses = []
    while data:
        head, separator, data = data.partition(b"\r\n\r\n")
        if not separator:
            raise ValueError(f"incomplete response head: {head!r}")
        status_line, *lines = head.split(b"\r\n")
        code = int(status_line.split(b" ")[1])
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.lower()] = value.strip()
        if code < 200 or code in (204, 304):
            body = b""
        elif b"content-length" in headers:
            length = int(headers[b"content-length"])
            body, data = data[:length], data[length:]
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body, data = body + data[:size], data[size + 2 :]
                if not size:
                    break
        else:
            body, data = data, b""
        responses.append((code, headers, body))
    return responses


def request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    """
    The bytes of an HTTP/1.1 request with a C{Content-Length}; header names
    are given with C{_} for C{-}.
    """
    lines = [f"{method} {path} HTTP/1.1", "Host: node.example"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if body or method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


class _BodyLength(Resource):
    """
    A mounted resource answering with the length of the body it got.
    """

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        return b"%d" % len(request.content.read())


class SiteTestCase(SynchronousTestCase):
    """
    A site over a store of values up to 16 bytes, with a C{files} child that
    reads whole bodies.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.serve(LocalKeyValue(self.clock, max_value_bytes=16))
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def serve(self, kv: IKeyValue) -> None:
        self.kv = kv
        self.site = build_site(
            kv, FakeClusterStatus(), clock=self.clock, children={b"files": _BodyLength()}
        )

    def connect(self) -> tuple[IProtocol, StringTransport]:
        """
        A new connection to the site.
        """
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return protocol, transport

    def exchange(self, *data: bytes) -> list[Response]:
        """
        Send C{data} on a new connection, in that many writes.

        @return: the responses.
        """
        protocol, transport = self.connect()
        for chunk in data:
            protocol.dataReceived(chunk)
        return parse_responses(transport.value())

    def stored(self, key: str) -> bytes:
        record = self.successResultOf(self.kv.get(user_key(key))).record
        return b"" if record is None else record.value


class BodyTests(SiteTestCase):
    """
    Request bodies of C{/kv/{key}} writes are bounded as they arrive.
    """

    def test_pipelined(self) -> None:
        """
        Requests pipelined on one connection are all answered, in order,
        with a C{Content-Length} rather than chunks.
        """
        responses = self.exchange(
            request("PUT", "/kv/a%2Fb", b"hello", Content_Type="text/plain")
            + request("GET", "/kv/a/b")
            + request("DELETE", "/kv/a/b")
        )
        self.assertEqual([code for code, _, _ in responses], [201, 200, 204])
        code, headers, body = responses[1]
        self.assertEqual(body, b"hello")
        self.assertEqual(headers[b"content-type"], b"text/plain")
        self.assertNotIn(b"transfer-encoding", headers)

    def test_at_limit(self) -> None:
        """
        A body of exactly C{max_value_bytes} is stored.
        """
        [(code, _, _)] = self.exchange(request("PUT", "/kv/k", b"x" * 16))
        self.assertEqual(code, 201)
        self.assertEqual(self.stored("k"), b"x" * 16)

    def test_refused_before_body(self) -> None:
        """
        A C{Content-Length} over the limit is answered 413 as soon as the
        headers are in, without a C{100 Continue}, and the connection is
        closed; the body that follows is not read.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"PUT /kv/big HTTP/1.1\r\nHost: node.example\r\n"
            b"Content-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n"
        )
        [(code, headers, body)] = parse_responses(transport.value())
        self.assertEqual(code, 413)
        self.assertEqual(json.loads(body)["error"], "too_large")
        self.assertEqual(headers[b"connection"], b"close")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.stored("big"), b"")

    def test_refused_with_body(self) -> None:
        """
        The same without C{Expect}, when the body starts in the same read as
        the headers.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /kv/big HTTP/1.1\r\nHost: node.example\r\n"
            b"Content-Length: 1048576\r\n\r\n" + b"x" * 8192
        )
        [(code, headers, _)] = parse_responses(transport.value())
        self.assertEqual((code, headers[b"connection"]), (413, b"close"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.stored("big"), b"")

    def test_chunked(self) -> None:
        """
        A chunked body within the limit is stored; one that grows past it is
        dropped and answered 413, and the connection goes on.
        """
        head = b"PUT /kv/%s HTTP/1.1\r\nHost: node.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        responses = self.exchange(
            head % b"small",
            b"8\r\n01234567\r\n",
            b"8\r\n89abcdef\r\n0\r\n\r\n",
            head % b"large",
            b"8\r\n01234567\r\n" * 3,
            b"0\r\n\r\n" + request("GET", "/kv/small"),
        )
        self.assertEqual([code for code, _, _ in responses], [201, 413, 200])
        self.assertEqual(json.loads(responses[1][2])["error"], "too_large")
        self.assertEqual(responses[2][2], b"0123456789abcdef")
        self.assertEqual(self.stored("large"), b"")

    def test_form_body_kept(self) -> None:
        """
        A form-encoded body is a value like any other.
        """
        content_type = "application/x-www-form-urlencoded"
        self.exchange(request("POST", "/kv/form", b"a=1&b=2", Content_Type=content_type))
        self.assertEqual(self.stored("form"), b"a=1&b=2")

    def test_other_paths_unbounded(self) -> None:
        """
        Bodies for other resources are not bounded by the store's limit.
        """
        [(code, _, body)] = self.exchange(request("PUT", "/files/a", b"x" * 100))
        self.assertEqual((code, body), (200, b"100"))

    def test_client_gone(self) -> None:
        """
        An answer that arrives after the client went away is dropped.
        """
        pending: Deferred[Any] = Deferred()
        self.serve(ScriptedKeyValue(lambda: pending))
        protocol, transport = self.connect()
        protocol.dataReceived(request("GET", "/kv/k"))
        protocol.connectionLost(Failure(ConnectionDone()))
        pending.callback(ReadResult(Record(b"v", "text/plain", 1)))
        self.assertEqual(transport.value(), b"")


class HeaderTests(SiteTestCase):
    """
    Answers on the C{/kv} path carry the same general headers as any other.
    """

    def test_date_follows_clock(self) -> None:
        """
        The C{Date} header is the site clock's time, to the second, and
        moves on with it.
        """
        self.clock.advance(1_700_000_000.7)
        protocol, transport = self.connect()
        protocol.dataReceived(request("GET", "/kv/missing"))
        self.clock.advance(1)
        protocol.dataReceived(request("GET", "/kv"))
        dates = [headers[b"date"] for _, headers, _ in parse_responses(transport.value())]
        self.assertEqual(
            dates, [b"Tue, 14 Nov 2023 22:13:20 GMT", b"Tue, 14 Nov 2023 22:13:21 GMT"]
        )

    def test_same_as_other_paths(self) -> None:
        """
        A C{/kv} answer has the C{Server} header of other answers, and a path
        that only starts like C{/kv} is not taken for it.
        """
        [(kv_code, kv, _), (other_code, other, _)] = self.exchange(
            request("PUT", "/kv/a", b"v") + request("PUT", "/kvx/a", b"v")
        )
        self.assertEqual((kv_code, other_code), (201, 404))
        self.assertEqual(kv[b"server"], other[b"server"])
        self.assertEqual(self.stored("x/a"), b"")


class IdleTimeoutTests(SiteTestCase):
    """
    A connection is closed once it has been idle for the site's timeout,
    never while one of its requests is being answered, with one timer per
    connection.
    """

    def test_closed_when_idle(self) -> None:
        """
        Each request moves the timeout on; a connection idle for the whole
        timeout is closed.
        """
        timeout = self.site.timeOut
        protocol, transport = self.connect()
        self.clock.advance(timeout - 1)
        protocol.dataReceived(request("GET", "/kv/k"))
        self.clock.advance(timeout - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_not_while_answering(self) -> None:
        """
        A request whose answer takes longer than the timeout keeps its
        connection; the timeout runs again from the answer.
        """
        pending: Deferred[Any] = Deferred()
        self.serve(ScriptedKeyValue(lambda: pending))
        timeout = self.site.timeOut
        protocol, transport = self.connect()
        protocol.dataReceived(request("GET", "/kv/k"))
        self.clock.advance(3 * timeout)
        self.assertFalse(transport.disconnecting)
        pending.callback(ReadResult(Record(b"v", "text/plain", 1)))
        [(code, _, body)] = parse_responses(transport.value())
        self.assertEqual((code, body), (200, b"v"))
        self.clock.advance(timeout - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_taken_over(self) -> None:
        """
        A connection that a resource takes over, as the WebSocket upgrade
        takes its transport, keeps no timer.
        """

        class TakingOver(Resource):
            isLeaf = True

            def render(self, request: IRequest) -> object:
                request.channel.transport = None
                return NOT_DONE_YET

        self.site = build_site(
            self.kv, FakeClusterStatus(), clock=self.clock, children={b"ws": TakingOver()}
        )
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(request("GET", "/ws"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_timer(self) -> None:
        """
        Answering requests schedules no timer beside the connection's one.
        """
        protocol, transport = self.connect()
        [timer] = self.clock.getDelayedCalls()
        protocol.dataReceived(request("PUT", "/kv/k", b"v") + request("GET", "/kv/k"))
        self.assertEqual(self.clock.getDelayedCalls(), [timer])
        self.assertEqual(len(parse_responses(transport.value())), 2)


class _CountingTransport(StringTransport):
    """
    A transport that counts the calls that write to it.
    """

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.writes += 1
        StringTransport.write(self, b"".join(data))


class WriteHeadersTests(SiteTestCase):
    """
    The site's connections write the head of an answer in one piece, the
    same bytes as twisted.web's.
    """

    def test_same_bytes_in_one_write(self) -> None:
        """
        A head with several values of one header and the body that follows
        reach the transport in one write, byte for byte as twisted.web's
        channel writes them.
        """
        headers = Headers({b"Content-Type": [b"text/plain"], b"Vary": [b"a", b"b"]})
        answers = []
        for protocol in (self.site.buildProtocol(None), HTTPChannel()):
            transport = _CountingTransport()
            protocol.transport = transport
            protocol.writeHeaders(b"HTTP/1.1", b"200", b"OK", headers)
            protocol.write(b"body")
            answers.append((transport.value(), transport.writes))
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nVary: a\r\nVary: b\r\n\r\n"
        self.assertEqual(answers[0], (head + b"body", 1))
        self.assertEqual(answers[0][0], answers[1][0])

    def test_one_write_an_answer(self) -> None:
        """
        Each answer, with a body or without (a HEAD), is written in one
        piece.
        """
        protocol, transport = self.connect()
        transport.__class__ = _CountingTransport
        protocol.dataReceived(
            request("PUT", "/kv/k", b"value")
            + request("HEAD", "/kv/k")
            + request("GET", "/kv/k")
            + request("GET", "/kv/none")
        )
        self.assertEqual(transport.writes, 4)
        statuses = re.findall(rb"HTTP/1\.1 (\d+) ", transport.value())
        self.assertEqual(statuses, [b"201", b"200", b"200", b"404"])


class SocketTests(SiteTestCase):
    """
    On a TCP connection, answers go straight to the socket.
    """

    def test_answers_without_the_write_watch(self) -> None:
        """
        Answers to pipelined requests, head and body, reach the socket
        whole and in order, and the connection never asks the reactor to
        watch it for room to write.
        """
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        _, far, reactor = loopback_connection(self, protocol)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        protocol.dataReceived(
            request("PUT", "/kv/k", b"value") + request("GET", "/kv/k") + request("GET", "/kv/none")
        )
        responses = parse_responses(received(far))
        self.assertEqual([status for status, _, _ in responses], [201, 200, 404])
        self.assertEqual(responses[1][2], b"value")
        self.assertEqual(reactor.getWriters(), [])


class RoutingTests(SiteTestCase):
    """
    Where C{/kv} requests go.
    """

    def test_root_routes_without_direct_resource(self) -> None:
        """
        A site without a direct C{/kv} resource has its root resource route
        C{/kv} requests to the same API.
        """
        self.site.kv_resource = None
        responses = self.exchange(request("PUT", "/kv/a/b", b"v") + request("GET", "/kv?prefix=a"))
        self.assertEqual([code for code, _, _ in responses], [201, 200])
        self.assertEqual(json.loads(responses[1][2])["keys"], ["a/b"])


class MetricsTests(SiteTestCase):
    """
    The site counts and times the requests it answers, and C{/metrics}
    shows them with the process's metrics.
    """

    def metrics(self) -> dict[str, Metric]:
        [(code, headers, body)] = self.exchange(request("GET", "/metrics"))
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"content-type"], b"text/plain; version=0.0.4; charset=utf-8")
        return parse(body.decode("utf-8"))

    def latency(self) -> dict[tuple[str, frozenset], float]:
        """
        The samples of the request latency histogram.
        """
        family = self.metrics()["twisted_kv_http_request_duration_seconds"]
        self.assertEqual(family.type, "histogram")
        return values(family)

    def test_requests(self) -> None:
        """
        Answered requests are counted by method and status code; unknown
        methods are counted together.
        """
        self.exchange(
            request("PUT", "/kv/k", b"v")
            + request("PUT", "/kv/k", b"v")
            + request("GET", "/kv/k")
            + request("GET", "/kv/missing")
            + request("BREW", "/kv/k")
        )
        family = self.metrics()["twisted_kv_http_requests"]
        self.assertEqual(family.type, "counter")
        counts = {
            s.labels["method"] + " " + s.labels["code"]: s.value
            for s in family.samples
            if s.name == "twisted_kv_http_requests_total"
        }
        self.assertEqual(
            counts, {"PUT 201": 1, "PUT 200": 1, "GET 200": 1, "GET 404": 1, "other 405": 1}
        )

    def test_latency(self) -> None:
        """
        The latency histogram puts each request's time, on the site's clock,
        in buckets by handler and method, with their count and sum.
        """
        pending: Deferred[Any] = Deferred()
        self.serve(ScriptedKeyValue(lambda: pending))
        protocol, transport = self.connect()
        protocol.dataReceived(request("GET", "/kv/k"))
        self.clock.advance(0.25)
        pending.callback(ReadResult(Record(b"v", "text/plain", 1)))
        self.assertEqual(parse_responses(transport.value())[0][0], 200)
        get = {("handler", "/kv"), ("method", "GET")}
        buckets = {
            dict(labels)["le"]: value
            for (name, labels), value in self.latency().items()
            if name.endswith("_bucket") and get < labels
        }
        self.assertEqual(
            buckets,
            {"0.0005": 0, "0.001": 0, "0.0025": 0, "0.005": 0, "0.01": 0, "0.025": 0,
             "0.05": 0, "0.1": 0, "0.25": 1, "0.5": 1, "1.0": 1, "2.5": 1, "5.0": 1,
             "10.0": 1, "+Inf": 1},
        )
        latency = self.latency()
        self.assertEqual(latency["twisted_kv_http_request_duration_seconds_count", frozenset(get)], 1)
        self.assertEqual(latency["twisted_kv_http_request_duration_seconds_sum", frozenset(get)], 0.25)

    def test_handlers(self) -> None:
        """
        A request's handler is the first segment of its path when the site
        serves it, and C{other} otherwise; each has series of its own.
        """
        self.exchange(
            request("GET", "/kv/a/b")
            + request("GET", "/kv?prefix=a")
            + request("POST", "/files/x", b"abc")
            + request("GET", "/cluster")
            + request("GET", "/nowhere/kv")
        )
        counts = {
            (s.labels["handler"], s.labels["method"]): s.value
            for s in self.metrics()["twisted_kv_http_request_duration_seconds"].samples
            if s.name.endswith("_count")
        }
        self.assertEqual(
            counts,
            {("/kv", "GET"): 2, ("/files", "POST"): 1, ("/cluster", "GET"): 1,
             ("other", "GET"): 1},
        )

    def test_handler_of_other_targets(self) -> None:
        """
        A request whose target is not an absolute path (C{*}, an absolute
        URI) is timed under the handler C{other}, also beside a handler
        for C{/}.
        """
        self.site = build_site(
            self.kv, FakeClusterStatus(), clock=self.clock, children={b"": _BodyLength()}
        )
        responses = self.exchange(
            request("OPTIONS", "*") + request("GET", "http://node.example/kv/k")
        )
        self.assertEqual(len(responses), 2)
        counts = {
            (s.labels["handler"], s.labels["method"]): s.value
            for s in self.metrics()["twisted_kv_http_request_duration_seconds"].samples
            if s.name.endswith("_count")
        }
        self.assertEqual(counts, {("other", "OPTIONS"): 1, ("other", "GET"): 1})

    def test_moves_with_requests(self) -> None:
        """
        Every scrape shows the requests answered before it, earlier scrapes
        included.
        """
        name = "twisted_kv_http_request_duration_seconds_count"
        kv_get = frozenset({("handler", "/kv"), ("method", "GET")})
        scrape = frozenset({("handler", "/metrics"), ("method", "GET")})
        self.exchange(request("GET", "/kv/k"))
        first = self.latency()
        self.exchange(request("GET", "/kv/k") + request("GET", "/kv/k"))
        second = self.latency()
        self.assertEqual((first[name, kv_get], second[name, kv_get]), (1, 3))
        self.assertEqual((first.get((name, scrape), 0), second[name, scrape]), (0, 1))

    def test_node_and_process(self) -> None:
        """
        C{/metrics} also shows the node's own metrics and, on Linux, the
        process's.
        """
        families = self.metrics()
        self.assertEqual(families["twisted_kv_keys"].type, "gauge")
        if not sys.platform.startswith("linux"):
            raise SkipTest("process metrics are read from /proc")
        self.assertEqual(families["process_cpu_seconds"].type, "counter")
        self.assertGreater(families["process_resident_memory_bytes"].samples[0].value, 0)


class HealthTests(SynchronousTestCase):
    """
    C{/health} and C{/live} of the nodes of a L{MemoryCluster}: the site of
    each node over its coordinator and its L{NodeStatus}.
    """

    def setUp(self) -> None:
        self.cluster = MemoryCluster(3)
        self.addCleanup(self.cluster.stop)

    def get(self, node_id: str, path: str) -> tuple[int, dict]:
        """
        Ask node C{node_id}'s site for C{path}.

        @return: the status and the decoded JSON body.
        """
        node = self.cluster.nodes[node_id]
        site = build_site(
            self.cluster.coordinators[node_id],
            NodeStatus(node, self.cluster.clock),
            clock=self.cluster.clock,
        )
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(request("GET", path))
        protocol.connectionLost(Failure(ConnectionDone()))
        [(code, headers, body)] = parse_responses(transport.value())
        self.assertEqual(headers[b"content-type"], b"application/json")
        return code, json.loads(body)

    def assertUnhealthy(self, node_id: str, reason: str) -> dict:
        """
        Assert that node C{node_id}'s C{/health} is a 503 for C{reason}, and
        that its C{/live} is a 200 all the same.

        @return: the 503's body.
        """
        code, body = self.get(node_id, "/health")
        self.assertEqual((code, body["error"], body["reason"]), (503, "unavailable", reason), body)
        self.assertIsInstance(body["message"], str)
        self.assertEqual(self.get(node_id, "/live"), (200, {"status": "ok"}))
        return body

    def test_forming(self) -> None:
        """
        While the first election runs, no node is healthy for want of a
        leader; once one is elected, for want of the map it commits; then
        every node is healthy.
        """
        for node_id in self.cluster.nodes:
            self.assertUnhealthy(node_id, "no_leader")
        while self.cluster.leader() is None:
            self.cluster.run(0.005)
        body = self.assertUnhealthy("n1", "no_map")
        self.assertEqual((body["leader"], body["has_map"]), (self.cluster.leader(), False))
        leader = self.cluster.settle()
        for node_id in self.cluster.nodes:
            code, body = self.get(node_id, "/health")
            self.assertEqual((code, body["status"], body["leader"]), (200, "ok", leader))

    def test_majority_lost(self) -> None:
        """
        A node that sees two of three nodes die stops being healthy once
        they are taken for dead, saying that no majority is reachable and
        how many nodes it reaches; C{/live} stays a 200.  When one comes
        back (empty), a majority is back, but the partitions whose every
        copy was on the two are not served until the other one is back
        too; then it is healthy again.
        """
        leader = self.cluster.settle()
        survivor, other = sorted(set(self.cluster.nodes) - {leader})
        partitions = self.cluster.nodes[survivor].cluster_map.partitions
        elsewhere = [i for i, c in enumerate(partitions) if c.member(survivor) is None]
        self.cluster.kill(leader)
        self.cluster.kill(other)
        self.assertEqual(self.get(survivor, "/health")[0], 200)
        self.cluster.run(self.cluster.config.failure_timeout)
        body = self.assertUnhealthy(survivor, "no_majority")
        self.assertEqual(
            {key: body[key] for key in ("node", "nodes", "reachable", "majority")},
            {"node": survivor, "nodes": 3, "reachable": 1, "majority": 2},
        )
        self.cluster.start(other)
        self.cluster.run(self.cluster.config.election_timeout + self.cluster.config.failure_timeout)
        body = self.assertUnhealthy(survivor, "partitions_unserved")
        self.assertEqual(body["unserved_partitions"], elsewhere)
        self.cluster.start(leader)
        self.cluster.settle()
        self.assertEqual(self.get(survivor, "/health")[0], 200)

    def test_partitions_without_a_live_copy(self) -> None:
        """
        With one copy of each key, a node's death takes the only copy of
        the partitions it was the primary of: the others still reach a
        majority and the leader, but cannot serve those partitions and say
        which.  Once the node is back, empty, the leader starts them again
        and every node is healthy.
        """
        self.cluster = MemoryCluster(3, replicas=1)
        self.addCleanup(self.cluster.stop)
        leader = self.cluster.settle()
        victim = sorted(set(self.cluster.nodes) - {leader})[0]
        partitions = self.cluster.nodes[leader].cluster_map.partitions
        held = [index for index, config in enumerate(partitions) if config.primary.node_id == victim]
        self.assertTrue(held)
        self.cluster.kill(victim)
        self.cluster.run(self.cluster.config.failure_timeout + 1)
        for survivor in self.cluster.nodes:
            body = self.assertUnhealthy(survivor, "partitions_unserved")
            self.assertEqual(body["unserved_partitions"], held)
            self.assertIn(f"{len(held)} of {len(partitions)} partitions", body["message"])
        self.cluster.start(victim)
        self.cluster.settle()
        for node_id in self.cluster.nodes:
            code, body = self.get(node_id, "/health")
            self.assertEqual((code, body["unserved_partitions"]), (200, []), body)

    def test_cut_off_from_leader(self) -> None:
        """
        A node cut off from the leader alone still reaches a majority and
        holds the map, but is not healthy: it cannot serve the partitions
        whose primary it does not reach.  It says so once the leader is
        suspect, and that it knows no leader once it gave up on it (the
        other node still hears the leader, so no election can succeed).
        """
        leader = self.cluster.settle()
        cut = sorted(set(self.cluster.nodes) - {leader})[0]
        self.cluster.network.partition([leader], [cut])
        self.cluster.run(self.cluster.config.failure_timeout / 2)
        body = self.assertUnhealthy(cut, "leader_unreachable")
        self.assertEqual((body["leader"], body["reachable"], body["has_map"]), (leader, 3, True))
        self.cluster.run(self.cluster.config.failure_timeout)
        body = self.assertUnhealthy(cut, "no_leader")
        self.assertEqual((body["leader"], body["reachable"], body["has_map"]), (None, 2, True))
