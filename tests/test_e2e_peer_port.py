# -*- test-case-name: tests.test_e2e_peer_port -*-
"""
End-to-end tests of the peer port, which serves only peers that prove
knowledge of the cluster secret, against a running
three-node cluster of real processes (L{tests.e2e.RealCluster}).

Raw TCP connections to a node's peer port send what no peer would: random
garbage, a length prefix of 2**31, a well-formed handshake with a wrong
secret, or nothing at all.  Each connection must be closed by the node
within the handshake timeout, while HTTP clients keep writing and reading
through every node without a single failure, and without anything lost.

Frames are built here from the documented format (a 4-byte big-endian
length, a 1-byte tag, a msgpack body; the HMAC of C{AUTH}), independently
of the node's own code, which only the cluster runs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import struct
from typing import Any, Optional

import msgpack
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python import log
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.e2e import RealCluster, kv_path
from tests.polling import poll

#: The node's handshake timeout (twisted_kv.peer.protocol), in seconds.
HANDSHAKE_TIMEOUT = 5.0

#: Slack for a loaded machine on top of the handshake timeout.
SLACK = 2.0

TAG_HELLO, TAG_AUTH, TAG_MESSAGE, TAG_KEEPALIVE = 1, 2, 3, 4
AUTH_LABEL = b"twisted_kv-peer-auth\0"


def frame(tag: int, body: bytes = b"") -> bytes:
    return struct.pack(">IB", len(body) + 1, tag) + body


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def mac(
    secret: bytes, peer_nonce: bytes, own_nonce: bytes, own_id: str, own_incarnation: int
) -> bytes:
    return hmac.new(
        secret,
        AUTH_LABEL + peer_nonce + own_nonce + own_id.encode() + struct.pack(">Q", own_incarnation),
        hashlib.sha256,
    ).digest()


class RawConnection(Protocol):
    """
    A TCP client that records what it receives and when it was closed.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.connected_at = 0.0
        self.closed_at: Optional[float] = None
        self.reason: Optional[Failure] = None
        self._closed: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        self.connected_at = reactor.seconds()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.closed_at = reactor.seconds()
        self.reason = reason
        waiters, self._closed = self._closed, []
        for waiter in waiters:
            waiter.callback(None)

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def frames(self) -> list[tuple[int, bytes]]:
        """
        The complete frames received so far: C{(tag, body)}.
        """
        result, offset, data = [], 0, bytes(self.received)
        while len(data) - offset >= 5:
            (length,) = struct.unpack_from(">I", data, offset)
            if len(data) - offset - 4 < length:
                break
            result.append((data[offset + 4], data[offset + 5 : offset + 4 + length]))
            offset += 4 + length
        return result

    async def frame(self, tag: int, timeout: float = 5.0) -> bytes:
        """
        The body of the first received frame with C{tag}.
        """

        async def found() -> Optional[bytes]:
            for got, body in self.frames():
                if got == tag:
                    return body
            if self.closed_at is not None:
                raise AssertionError(f"closed before a frame of type {tag} arrived")
            return None

        return await poll(found, timeout, f"a frame of type {tag}", interval=0.02)

    def closed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.closed_at is not None:
            d.callback(None)
        else:
            self._closed.append(d)
        return d

    @property
    def lifetime(self) -> float:
        assert self.closed_at is not None
        return self.closed_at - self.connected_at


class Traffic:
    """
    HTTP clients writing and reading through every node, one request at a
    time each, until stopped; every answer must be a success.
    """

    def __init__(self, cluster: RealCluster, clients: int = 3) -> None:
        self.cluster = cluster
        self.written: dict[str, bytes] = {}
        self.failures: list[str] = []
        self.requests = 0
        self._stopping = False
        self._clients = [ensureDeferred(self._client(i)) for i in range(clients)]

    async def _client(self, index: int) -> None:
        c = self.cluster
        seq = 0
        while not self._stopping:
            node = c.node_ids[(index + seq) % len(c.node_ids)]
            key = f"traffic/{index}/{seq:05d}"
            value = os.urandom(8).hex().encode()
            try:
                put = await c.request("PUT", node, kv_path(key), value, timeout=10)
                self.requests += 1
                if put.status != 201:
                    self.failures.append(f"PUT {key} on {node}: {put!r}")
                else:
                    self.written[key] = value
                other = c.node_ids[(index + seq + 1) % len(c.node_ids)]
                get = await c.request("GET", other, kv_path(key), timeout=10)
                self.requests += 1
                if (get.status, get.body) != (200, value):
                    self.failures.append(f"GET {key} on {other}: {get!r}")
            except Exception as e:
                self.failures.append(f"{key} on {node}: {e!r}")
            seq += 1
            # A steady trickle, not a flood: the nodes share two cores.
            await deferLater(reactor, 0.05, lambda: None)

    async def stop(self) -> None:
        self._stopping = True
        await DeferredList(self._clients)


class PeerPortTestBase(TestCase):
    """
    A running cluster with HTTP traffic through every node, and raw
    connections to one node's peer port (plain TCP, or TLS with C{tls}).
    """

    timeout = 90
    tls = False

    async def setUp(self) -> None:  # type: ignore[override]
        self.cluster = RealCluster(3, self.mktemp(), tls=self.tls)
        self.addCleanup(self.cluster.stop_all)
        self.leader = await self.cluster.start()
        self.target = "n1"
        self.mark = self.cluster.log_size(self.target)
        self.traffic = Traffic(self.cluster)
        self.addCleanup(self.traffic.stop)
        self.connections: list[RawConnection] = []

    def endpoint(self, port: int) -> IStreamClientEndpoint:
        """
        How L{connect} reaches a peer port: plain TCP.
        """
        return TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)

    async def connect(self, node_id: Optional[str] = None) -> RawConnection:
        return await self.connect_with(self.endpoint(self.cluster.peer_port(node_id or self.target)))

    async def connect_with(self, endpoint: IStreamClientEndpoint) -> RawConnection:
        """
        A connection through C{endpoint}, aborted at the end of the test.
        """
        connection = RawConnection()
        await connectProtocol(endpoint, connection)
        self.connections.append(connection)
        self.addCleanup(self._close, connection)
        return connection

    def _close(self, connection: RawConnection) -> Deferred[None]:
        if connection.closed_at is None:
            connection.transport.abortConnection()  # type: ignore[union-attr]
        return connection.closed()

    async def assertDropped(
        self, *connections: RawConnection, within: float = HANDSHAKE_TIMEOUT
    ) -> None:
        """
        The node closes each connection within C{within} seconds (plus
        L{SLACK}) of its opening.
        """
        deadline = within + SLACK
        for connection in connections:
            remaining = connection.connected_at + deadline - reactor.seconds()
            d = connection.closed()
            timer = reactor.callLater(max(remaining, 0), d.cancel)
            try:
                await d
            except Exception:
                self.fail(f"the node kept a connection open for over {deadline}s")
            finally:
                if timer.active():
                    timer.cancel()
            self.assertLessEqual(connection.lifetime, deadline)
            log.msg(f"peer connection dropped after {connection.lifetime:.3f}s")

    async def assertUnharmed(self, drops: int) -> None:
        """
        Let traffic run a little longer, then: no client request failed,
        every key written reads back from every node, the cluster still
        agrees on a synced leader, and the target node logged one drop per
        unwelcome connection and never heard of a new peer incarnation.
        """
        before = self.traffic.requests
        await poll(
            lambda: self.traffic.requests >= before + 20 and len(self.traffic.written) > 10,
            20,
            "20 more requests and over 10 keys written",
        )
        await self.traffic.stop()
        self.assertEqual(self.traffic.failures, [])
        self.assertEqual(await self.cluster.read_keys(self.traffic.written), [])
        self.assertEqual(await self.cluster.wait_for_leader(timeout=10), self.leader)

        async def all_logged() -> Optional[str]:
            text = self.cluster.logs(self.target, self.mark)
            return text if text.count("Dropped inbound peer connection") >= drops else None

        text = await poll(all_logged, 5, f"{drops} drops in {self.target}'s log")
        self.assertEqual(text.count("Dropped inbound peer connection"), drops, text)
        self.assertNotIn(" is up (incarnation", text)
        self.assertNotIn("Traceback", text)
        self.assertNotIn("Unhandled", text)


class PeerPortTests(PeerPortTestBase):
    """
    Unwelcome connections to one node's peer port are dropped; the cluster
    serves on, unharmed.
    """

    async def test_garbage(self) -> None:
        """
        Random bytes, a frame of an unknown type, a HELLO that is not
        msgpack and a MESSAGE before any handshake are each dropped.
        """
        rng = random.Random(7)
        garbage = rng.randbytes(3000)
        payloads = [
            garbage,
            frame(99, b"??"),
            frame(TAG_HELLO, b"\xc1\xc1\xc1"),
            frame(TAG_MESSAGE, pack(["op", 1, 0, [], "x"])),
            frame(TAG_HELLO, pack([1, "e2e", "n2", 1, b"short nonce"])),
            b"\x00\x00\x00\x00",  # an empty frame
        ]
        connections = [await self.connect() for _ in payloads]
        for connection, payload in zip(connections, payloads):
            connection.send(payload)
        await self.assertDropped(*connections, within=1.0)
        await self.assertUnharmed(len(payloads))

    async def test_huge_length_prefix(self) -> None:
        """
        A length prefix of 2**31 (and of 2**32 - 1, and one byte over the
        handshake limit) is refused at once, before any body arrives.
        """
        prefixes = [2**31, 2**32 - 1, 4097]
        connections = [await self.connect() for _ in prefixes]
        for connection, length in zip(connections, prefixes):
            connection.send(struct.pack(">I", length) + b"\x01" * 100)
        await self.assertDropped(*connections, within=1.0)
        for connection in connections:
            # At most the node's own HELLO came back (an abort may discard
            # it), nothing else.
            self.assertIn([tag for tag, _ in connection.frames()], ([], [TAG_HELLO]))
        await self.assertUnharmed(len(prefixes))

    async def test_wrong_secret(self) -> None:
        """
        A handshake that follows the protocol but proves the wrong secret
        is dropped as soon as its AUTH arrives; the node's own AUTH, sent in
        answer to our HELLO, shows that everything else was right.  The
        node logs the first such refusal of a host, saying that more are
        logged once a minute (a node with another secret retries for ever).
        """
        connection = await self.connect()
        hello = msgpack.unpackb(await connection.frame(TAG_HELLO), raw=False)
        version, cluster_name, node_id, incarnation, node_nonce = hello
        self.assertEqual((cluster_name, node_id), (self.cluster.name, self.target))
        our_nonce, our_incarnation = os.urandom(32), 12345
        our_hello = [version, cluster_name, "n2", our_incarnation, our_nonce]
        connection.send(frame(TAG_HELLO, pack(our_hello)))
        auth = msgpack.unpackb(await connection.frame(TAG_AUTH), raw=False)
        secret = self.cluster.secret.encode()
        self.assertEqual(auth, [mac(secret, our_nonce, node_nonce, node_id, incarnation)])
        wrong = mac(b"not-the-secret", node_nonce, our_nonce, "n2", our_incarnation)
        connection.send(frame(TAG_AUTH, pack([wrong])))
        await self.assertDropped(connection, within=1.0)
        self.assertEqual([tag for tag, _ in connection.frames()], [TAG_HELLO, TAG_AUTH])

        # The right MAC for another identity than the one announced, and a
        # replay of the node's own AUTH, fail the same way.
        replays = []
        for forged in ("wrong id", "reflection"):
            other = await self.connect()
            hello = msgpack.unpackb(await other.frame(TAG_HELLO), raw=False)
            nonce = os.urandom(32)
            other.send(frame(TAG_HELLO, pack([hello[0], hello[1], "n3", 1, nonce])))
            theirs = msgpack.unpackb(await other.frame(TAG_AUTH), raw=False)
            if forged == "wrong id":
                proof = mac(secret, hello[4], nonce, "n2", 1)
            else:
                proof = theirs[0]
            other.send(frame(TAG_AUTH, pack([proof])))
            replays.append(other)
        await self.assertDropped(*replays, within=1.0)
        await self.assertUnharmed(1)
        self.assertIn(
            "bad AUTH (wrong cluster secret?); more from this host are logged once every 60 s",
            self.cluster.logs(self.target, self.mark),
        )

    async def test_half_open(self) -> None:
        """
        Connections that send nothing, or stop in the middle of a frame,
        are closed by the node once the handshake timeout has passed.
        """
        silent = [await self.connect() for _ in range(8)]
        partial = await self.connect()
        partial.send(b"\x00\x00")
        stalled = await self.connect()
        hello = msgpack.unpackb(await stalled.frame(TAG_HELLO), raw=False)
        stalled.send(frame(TAG_HELLO, pack([hello[0], hello[1], "n2", 7, os.urandom(32)])))
        connections = silent + [partial, stalled]
        await self.assertDropped(*connections)
        for connection in connections:
            self.assertGreaterEqual(connection.lifetime, HANDSHAKE_TIMEOUT - 1.0)
        await self.assertUnharmed(len(connections))

    async def test_every_node_at_once(self) -> None:
        """
        All of the above at once against every node's peer port, while the
        cluster serves: nothing is lost, every connection is dropped.
        """
        connections = []
        for node_id in self.cluster.node_ids:
            for payload in (random.Random(node_id).randbytes(500), struct.pack(">I", 2**31), None):
                connection = await self.connect(node_id)
                if payload is not None:
                    connection.send(payload)
                connections.append(connection)
        await self.assertDropped(*connections)
        await self.assertUnharmed(3)
