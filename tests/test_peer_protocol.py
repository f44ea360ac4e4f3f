# -*- test-case-name: tests.test_peer_protocol -*-
"""
Tests for L{twisted_kv.peer.protocol}: framing, handshake, keepalives and
every reason to drop a connection, over L{StringTransport} and iosim with a
L{Clock}.
"""

from __future__ import annotations

import hmac
import os
import random
import struct
from hashlib import sha256
from typing import Any, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.peer.protocol import (
    AUTH_LABEL,
    HANDSHAKE_MAX_LENGTH,
    MAX_LENGTH,
    TAG_AUTH,
    TAG_HELLO,
    TAG_KEEPALIVE,
    TAG_MESSAGE,
    MessageTooLarge,
    PeerProtocol,
    PeerSettings,
    RefusalLog,
    auth_mac,
    frame,
)
from twisted_kv.sending import TurnWriter
from twisted_kv.app.certs import issue, new_authority, write_pair
from twisted_kv.core.config import TLSConfig
from twisted_kv.tls import NodeTLS, load_node_tls, tls_server_factory
from twisted_kv.wire.codec import PROTOCOL_VERSION, decode, encode

SECRET = b"a-long-random-string"
CLUSTER = "demo"
N1_NONCE = b"\x01" * 32
N2_NONCE = b"\x02" * 32


def _settings(node_id: str = "n1", incarnation: int = 5, **kwargs: Any) -> PeerSettings:
    """
    Settings for one node of the three-node cluster C{n1}, C{n2}, C{n3}.
    """
    defaults: dict[str, Any] = dict(
        cluster_name=CLUSTER,
        secret=SECRET,
        peer_ids={"n1", "n2", "n3"} - {node_id},
    )
    defaults.update(kwargs)
    return PeerSettings(node_id=node_id, incarnation=incarnation, **defaults)


def _n2_dialling_n1(
    clock: Clock, received: list[Any], ready: list[str], writer: Optional[TurnWriter] = None,
) -> tuple[PeerProtocol, PeerProtocol]:
    """
    The protocols of n1, which delivers each message into C{received}, and
    of n2 (incarnation 7), which dials n1 and writes through C{writer}, if
    given; each notes in C{ready} whom it has authenticated.
    """
    acceptor = PeerProtocol(
        _settings("n1"),
        clock,
        deliver=lambda *event: received.append(event),
        on_ready=lambda p: ready.append(f"n1 sees {p.peer_id}"),
    )
    connector = PeerProtocol(
        _settings("n2", incarnation=7),
        clock,
        expected_peer="n1",
        on_ready=lambda p: ready.append(f"n2 sees {p.peer_id}"),
        writer=writer,
    )
    return acceptor, connector


def _connect(acceptor: IProtocol, connector: IProtocol, clock: Clock) -> iosim.IOPump:
    """
    Connect C{connector} to C{acceptor} in memory; the pump moves the bytes.
    """
    return iosim.connect(
        acceptor,
        iosim.makeFakeServer(acceptor),
        connector,
        iosim.makeFakeClient(connector),
        clock=clock,
    )


def _parse(data: bytes) -> list[tuple[int, Any]]:
    """
    Split bytes written by a L{PeerProtocol} into (tag, decoded body)
    pairs; an empty body gives C{None}.
    """
    frames = []
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        body = data[offset + 5 : offset + 4 + length]
        frames.append((data[offset + 4], decode(body) if body else None))
        offset += 4 + length
    return frames


def _hello(
    node_id: str = "n2",
    incarnation: int = 9,
    nonce: bytes = N2_NONCE,
    version: Any = PROTOCOL_VERSION,
    cluster: Any = CLUSTER,
) -> bytes:
    """
    A HELLO frame as a well-behaved (or deliberately not) peer sends it.
    """
    return frame(TAG_HELLO, encode([version, cluster, node_id, incarnation, nonce]))


def _auth(
    their_nonce: bytes = N1_NONCE,
    node_id: str = "n2",
    incarnation: int = 9,
    nonce: bytes = N2_NONCE,
    secret: bytes = SECRET,
) -> bytes:
    """
    The AUTH frame peer C{node_id} sends in answer to C{their_nonce}.
    """
    return frame(TAG_AUTH, encode([auth_mac(secret, their_nonce, nonce, node_id, incarnation)]))


def _message(message: Any) -> bytes:
    return frame(TAG_MESSAGE, encode(message))


KEEPALIVE = frame(TAG_KEEPALIVE)


class _Recorder:
    """
    Records what a L{PeerProtocol} tells its owner, in order.
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def deliver(self, peer_id: str, incarnation: int, message: Any) -> None:
        self.events.append(("message", peer_id, incarnation, message))

    def ready(self, protocol: PeerProtocol) -> None:
        self.events.append(("ready", protocol.peer_id, protocol.peer_incarnation))

    def closed(self, protocol: PeerProtocol, was_ready: bool) -> None:
        self.events.append(("closed", was_ready))


class _ProtocolTestMixin:
    """
    Builds a L{PeerProtocol} for node C{n1} on a L{StringTransport}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.recorder = _Recorder()
        self.transport = StringTransport()
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def build(
        self,
        outbound: bool = False,
        settings: Optional[PeerSettings] = None,
        expected_peer: str = "n2",
        connect: bool = True,
        writer: Optional[TurnWriter] = None,
    ) -> PeerProtocol:
        protocol = PeerProtocol(
            settings or _settings(),
            self.clock,
            expected_peer=expected_peer if outbound else None,
            deliver=None if outbound else self.recorder.deliver,
            on_ready=self.recorder.ready,
            on_closed=self.recorder.closed,
            nonce=N1_NONCE,
            writer=writer,
        )
        if connect:
            protocol.makeConnection(self.transport)
        return protocol

    def handshake(self, protocol: PeerProtocol) -> None:
        """
        Complete the handshake as a well-behaved C{n2} and forget what
        C{n1} wrote so far.
        """
        protocol.dataReceived(_hello() + _auth())
        self.assertTrue(protocol.authenticated)  # type: ignore[attr-defined]
        self.transport.clear()

    def assertDropped(self, protocol: PeerProtocol, was_ready: bool = False) -> None:
        """
        C{protocol} aborted its connection, told its owner once, logged
        exactly one warning without a traceback, and left no timer behind.
        """
        self.assertTrue(self.transport.disconnecting)  # type: ignore[attr-defined]
        self.assertTrue(self.transport.disconnected)  # type: ignore[attr-defined]
        self.assertFalse(protocol.authenticated)  # type: ignore[attr-defined]
        self.assertEqual(self.recorder.events[-1], ("closed", was_ready))  # type: ignore[attr-defined]
        self.assertEqual(
            [e for e in self.recorder.events if e[0] == "closed"], [("closed", was_ready)]
        )  # type: ignore[attr-defined]
        warnings = [e for e in self.log if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1, warnings)  # type: ignore[attr-defined]
        self.assertNotIn("log_failure", warnings[0])  # type: ignore[attr-defined]
        self.assertEqual(self.clock.getDelayedCalls(), [])  # type: ignore[attr-defined]
        protocol.connectionLost(Failure(ConnectionDone()))

    def assertNothingDelivered(self) -> None:
        """
        The owner heard of no message and no authenticated peer.
        """
        self.assertEqual(
            [e for e in self.recorder.events if e[0] in ("message", "ready")], []
        )  # type: ignore[attr-defined]


class SettingsTests(SynchronousTestCase):
    """
    L{PeerSettings} refuses settings that cannot work.
    """

    def test_self_in_peers(self) -> None:
        """
        A node is never its own peer.
        """
        self.assertRaises(ValueError, _settings, peer_ids={"n1", "n2"})

    def test_incarnation_range(self) -> None:
        """
        Incarnations fit in 8 unsigned bytes.
        """
        self.assertRaises(ValueError, _settings, incarnation=-1)
        self.assertRaises(ValueError, _settings, incarnation=2**64)
        _settings(incarnation=2**64 - 1)

    def test_empty_secret(self) -> None:
        """
        An empty secret authenticates nobody.
        """
        self.assertRaises(ValueError, _settings, secret=b"")

    def test_timeouts(self) -> None:
        """
        Timeouts are positive and the idle timeout exceeds the keepalive
        interval.
        """
        self.assertRaises(ValueError, _settings, handshake_timeout=0)
        self.assertRaises(ValueError, _settings, keepalive_interval=2, idle_timeout=2)

    def test_secret_not_in_repr(self) -> None:
        """
        The secret never shows up in a repr (and so in a log).
        """
        self.assertNotIn(SECRET.decode(), repr(_settings()))

    def test_defaults(self) -> None:
        """
        The documented defaults: 5 s handshake, 1 s keepalive, 5 s idle.
        """
        s = _settings()
        self.assertEqual(
            (s.handshake_timeout, s.keepalive_interval, s.idle_timeout), (5.0, 1.0, 5.0)
        )


class AuthMacTests(SynchronousTestCase):
    """
    L{auth_mac} is the documented HMAC.
    """

    def test_formula(self) -> None:
        """
        HMAC-SHA256 over the label, the peer's nonce, the own nonce, the own
        node id in UTF-8 and the own incarnation as 8 big-endian bytes.
        """
        expected = hmac.new(
            SECRET,
            b"twisted_kv-peer-auth\0"
            + N2_NONCE
            + N1_NONCE
            + "nœud".encode("utf-8")
            + (258).to_bytes(8, "big"),
            sha256,
        ).digest()
        self.assertEqual(AUTH_LABEL, b"twisted_kv-peer-auth\0")
        self.assertEqual(auth_mac(SECRET, N2_NONCE, N1_NONCE, "nœud", 258), expected)


class HandshakeTests(_ProtocolTestMixin, SynchronousTestCase):
    """
    The symmetric HELLO / AUTH handshake.
    """

    def test_hello_on_connect(self) -> None:
        """
        Each side sends HELLO at once: version, cluster, node id,
        incarnation and a 32-byte nonce.
        """
        self.build()
        self.assertEqual(
            _parse(self.transport.value()),
            [(TAG_HELLO, [PROTOCOL_VERSION, CLUSTER, "n1", 5, N1_NONCE])],
        )

    def test_random_nonce(self) -> None:
        """
        Without an explicit nonce, each connection draws a fresh random one.
        """
        nonces = set()
        for _ in range(3):
            transport = StringTransport()
            protocol = PeerProtocol(_settings(), self.clock, deliver=self.recorder.deliver)
            protocol.makeConnection(transport)
            [(_, hello)] = _parse(transport.value())
            self.assertEqual(len(hello[4]), 32)
            nonces.add(hello[4])
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(nonces), 3)

    def test_auth_answers_hello(self) -> None:
        """
        The peer's HELLO is answered by AUTH, proving knowledge of the
        secret for this pair of nonces; the secret itself is never sent.
        """
        protocol = self.build()
        self.transport.clear()
        protocol.dataReceived(_hello())
        self.assertEqual(
            _parse(self.transport.value()),
            [(TAG_AUTH, [auth_mac(SECRET, N2_NONCE, N1_NONCE, "n1", 5)])],
        )
        self.assertNotIn(SECRET, self.transport.value())
        self.assertFalse(protocol.authenticated)

    def test_authenticated(self) -> None:
        """
        A correct AUTH authenticates the peer, with the id and incarnation
        its HELLO announced, and messages then reach the owner.
        """
        protocol = self.build()
        protocol.dataReceived(_hello() + _auth() + _message(["hi", b"\x00"]))
        self.assertTrue(protocol.authenticated)
        self.assertEqual((protocol.peer_id, protocol.peer_incarnation), ("n2", 9))
        self.assertEqual(
            self.recorder.events,
            [("ready", "n2", 9), ("message", "n2", 9, ["hi", b"\x00"])],
        )
        self.assertEqual([e for e in self.log if e["log_level"] == LogLevel.warn], [])

    def _stream(self) -> tuple[bytes, list[tuple[Any, ...]]]:
        messages: list[Any] = [[i, "p1", b"v" * (i * 37 % 300), None] for i in range(50)]
        messages += [{"big": b"z" * 70_000}, [], 0]
        data = _hello() + _auth() + b"".join(_message(m) for m in messages) + KEEPALIVE
        expected = [("ready", "n2", 9)] + [("message", "n2", 9, m) for m in messages]
        return data, expected

    def test_one_byte_at_a_time(self) -> None:
        """
        A handshake and messages fed one byte at a time arrive intact and
        in order.
        """
        protocol = self.build()
        data, expected = self._stream()
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
        self.assertEqual(self.recorder.events, expected)
        self.assertTrue(protocol.authenticated)
        # Nothing of the stream is left over to spoil the next frame.
        protocol.dataReceived(_message("next"))
        self.assertEqual(self.recorder.events[len(expected) :], [("message", "n2", 9, "next")])

    def test_random_chunks(self) -> None:
        """
        The same stream cut into random chunks arrives intact and in order.
        """
        data, expected = self._stream()
        for seed in range(20):
            self.setUp()
            protocol = self.build()
            rng = random.Random(seed)
            offset = 0
            while offset < len(data):
                size = rng.choice([1, 2, 3, 5, 7, 100, 4096, 65536])
                protocol.dataReceived(data[offset : offset + size])
                offset += size
            self.assertEqual(self.recorder.events, expected, f"seed {seed}")

    def test_outbound_handshake(self) -> None:
        """
        The connecting side runs the same handshake and accepts the peer it
        dialled.
        """
        protocol = self.build(outbound=True)
        protocol.dataReceived(_hello() + _auth())
        self.assertEqual(self.recorder.events, [("ready", "n2", 9)])

    def test_two_protocols_over_iosim(self) -> None:
        """
        Two real protocols, n2 dialling n1, authenticate each other; n2's
        messages reach n1 in order.
        """
        received: list[Any] = []
        ready: list[str] = []
        acceptor, connector = _n2_dialling_n1(self.clock, received, ready)
        pump = _connect(acceptor, connector, self.clock)
        self.assertEqual(sorted(ready), ["n1 sees n2", "n2 sees n1"])
        self.assertTrue(acceptor.authenticated and connector.authenticated)
        for i in range(100):
            self.assertTrue(connector.send([i, b"x" * i]))
        pump.flush()
        self.assertEqual(received, [("n2", 7, [i, b"x" * i]) for i in range(100)])
        connector.transport.loseConnection()
        pump.flush()
        self.assertFalse(acceptor.authenticated or connector.authenticated)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_messages_of_a_turn_together(self) -> None:
        """
        With a L{TurnWriter}, the messages sent in a reactor turn, small
        and large, are written together, in one write once the turn is
        over, and reach the peer in order.
        """
        received: list[Any] = []
        acceptor, connector = _n2_dialling_n1(self.clock, received, [], TurnWriter(self.clock))
        pump = _connect(acceptor, connector, self.clock)
        messages = [[i, b"x" * (i * 1000)] for i in range(10)]
        for message in messages:
            self.assertTrue(connector.send(message))
        self.assertEqual(connector.transport.stream, [])
        self.clock.advance(0)
        self.assertEqual(len(connector.transport.stream), 1)
        pump.flush()
        self.assertEqual(received, [("n2", 7, message) for message in messages])

    def test_wrong_secret_over_iosim(self) -> None:
        """
        With different secrets, both sides drop the connection and neither
        owner hears of an authenticated peer or a message.
        """
        received: list[Any] = []
        ready: list[Any] = []
        acceptor = PeerProtocol(
            _settings("n1"), self.clock, deliver=lambda *e: received.append(e), on_ready=ready.append
        )
        connector = PeerProtocol(
            _settings("n2", secret=b"not the secret"),
            self.clock,
            expected_peer="n1",
            on_ready=ready.append,
        )
        pump = _connect(acceptor, connector, self.clock)
        self.assertFalse(connector.send(["never"]))
        pump.flush()
        self.assertEqual((received, ready), ([], []))
        self.assertEqual(
            (self.successResultOf(acceptor.when_closed()), self.successResultOf(connector.when_closed())),
            (None, None),
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RejectionTests(_ProtocolTestMixin, SynchronousTestCase):
    """
    Every way to fail the handshake drops that connection, with one log
    line, and nothing reaches the owner.
    """

    def assertRejected(self, data: bytes, outbound: bool = False, **settings: Any) -> None:
        protocol = self.build(outbound=outbound, settings=_settings(**settings))
        protocol.dataReceived(data)
        self.assertDropped(protocol)
        self.assertNothingDelivered()

    def test_wrong_secret(self) -> None:
        """
        An AUTH made with another secret is refused.
        """
        self.assertRejected(_hello() + _auth(secret=b"guess") + _message("sneaky"))

    def test_auth_for_other_nonce(self) -> None:
        """
        An AUTH replayed from another connection (other nonces) is refused.
        """
        self.assertRejected(_hello() + _auth(their_nonce=b"\x07" * 32))

    def test_auth_for_other_identity(self) -> None:
        """
        An AUTH computed for another node id or incarnation than the HELLO
        announced is refused.
        """
        self.assertRejected(_hello() + _auth(node_id="n3"))
        self.setUp()
        self.assertRejected(_hello() + _auth(incarnation=10))

    def test_wrong_cluster(self) -> None:
        """
        A HELLO naming another cluster is refused before any AUTH is sent.
        """
        self.assertRejected(_hello(cluster="other"))
        self.assertEqual([tag for tag, _ in _parse(self.transport.value())], [TAG_HELLO])

    def test_unknown_node(self) -> None:
        """
        A HELLO from a node id that is not a configured peer is refused.
        """
        self.assertRejected(_hello(node_id="n9"))

    def test_own_node_id(self) -> None:
        """
        A HELLO claiming this node's own id is refused.
        """
        self.assertRejected(_hello(node_id="n1"))

    def test_unexpected_peer_outbound(self) -> None:
        """
        On an outbound connection, only the dialled peer may answer.
        """
        self.assertRejected(_hello(node_id="n3"), outbound=True)

    def test_bad_version(self) -> None:
        """
        Another protocol version is refused, whatever follows it.
        """
        self.assertRejected(_hello(version=PROTOCOL_VERSION + 1))
        self.setUp()
        self.assertRejected(frame(TAG_HELLO, encode([99, "a", "future", "format"])))
        self.setUp()
        self.assertRejected(_hello(version=True))

    def test_reflected_nonce(self) -> None:
        """
        A HELLO carrying this side's own nonce is refused.
        """
        self.assertRejected(_hello(nonce=N1_NONCE))

    def test_malformed_hello(self) -> None:
        """
        HELLOs of the wrong shape or types are refused.
        """
        bad = [
            encode("hello"),
            encode([]),
            encode([PROTOCOL_VERSION, CLUSTER, "n2", 9]),
            encode([PROTOCOL_VERSION, CLUSTER, "n2", 9, N2_NONCE, "extra"]),
            encode([PROTOCOL_VERSION, CLUSTER, b"n2", 9, N2_NONCE]),
            encode([PROTOCOL_VERSION, CLUSTER, "n2", -1, N2_NONCE]),
            encode([PROTOCOL_VERSION, CLUSTER, "n2", "9", N2_NONCE]),
            encode([PROTOCOL_VERSION, CLUSTER, "n2", 9, N2_NONCE[:31]]),
            encode([PROTOCOL_VERSION, CLUSTER, "n2", 9, "x" * 32]),
            b"\xc1",
        ]
        for body in bad:
            self.setUp()
            self.assertRejected(frame(TAG_HELLO, body))

    def test_malformed_auth(self) -> None:
        """
        AUTHs of the wrong shape are refused.
        """
        for body in [encode([]), encode([b"x" * 31]), encode(b"x" * 32), b"\x92"]:
            self.setUp()
            self.assertRejected(_hello() + frame(TAG_AUTH, body))

    def test_message_before_authentication(self) -> None:
        """
        A MESSAGE before authentication is refused, before or after HELLO.
        """
        self.assertRejected(_message(["put", "k", b"v"]))
        self.setUp()
        self.assertRejected(_hello() + _message(["put", "k", b"v"]))

    def test_keepalive_before_authentication(self) -> None:
        """
        A KEEPALIVE before authentication is refused.
        """
        self.assertRejected(KEEPALIVE)

    def test_auth_before_hello(self) -> None:
        """
        An AUTH before HELLO is refused.
        """
        self.assertRejected(_auth() + _hello())

    def test_garbage(self) -> None:
        """
        Bytes that are not this protocol are refused at the first frame.
        """
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.setUp()
        self.assertRejected(b"\x00\x00\x00\x00")
        self.setUp()
        self.assertRejected(b"\x00\x00\x00\x01\x63")

    def test_oversized_before_authentication(self) -> None:
        """
        Before authentication, a length prefix above 4 KiB drops the
        connection at once, without buffering anything; 4 KiB itself is
        waited for.
        """
        protocol = self.build()
        protocol.dataReceived(struct.pack(">I", HANDSHAKE_MAX_LENGTH) + b"\x01")
        self.assertFalse(self.transport.disconnecting)
        self.setUp()
        protocol = self.build()
        protocol.dataReceived(struct.pack(">I", HANDSHAKE_MAX_LENGTH + 1) + b"\x01" * 100)
        self.assertDropped(protocol)

    def test_nothing_after_drop(self) -> None:
        """
        Once dropped, nothing further is parsed, not even complete frames
        already received.
        """
        protocol = self.build()
        protocol.dataReceived(_hello(node_id="n9") + _hello() + _auth())
        protocol.dataReceived(_message("late"))
        self.assertDropped(protocol)
        self.assertNothingDelivered()


class RefusalLogTests(_ProtocolTestMixin, SynchronousTestCase):
    """
    Handshakes refused for a wrong secret again and again, as a node
    started with another secret makes them: logged once per host a
    minute, with a count of those in between, while every one is still
    dropped; other drops are logged each time.
    """

    def refuse(self, refusals: RefusalLog, host: str, data: bytes) -> StringTransport:
        """
        Connect to C{n1} from C{host} and send C{data}, which it refuses.
        """
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol = PeerProtocol(
            _settings(), self.clock, deliver=self.recorder.deliver, nonce=N1_NONCE,
            refusals=refusals,
        )
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        self.assertTrue(transport.disconnected)
        protocol.connectionLost(Failure(ConnectionDone()))
        return transport

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.log if e["log_level"] == LogLevel.warn]

    def test_wrong_secret_again_and_again(self) -> None:
        """
        The first wrong-secret refusal of a host is logged, saying that
        more are logged once a minute; the next ones within the minute are
        not, unless they come from another host; the first one after the
        minute says how many went unlogged.  Other refusals of the host
        are logged each time.
        """
        refusals = RefusalLog()
        wrong_secret = _hello() + _auth(secret=b"guess")
        for _ in range(4):
            self.refuse(refusals, "10.0.0.2", wrong_secret)
            self.clock.advance(10)
        [first] = self.warnings()
        self.assertIn("from 10.0.0.2:40000 claiming to be 'n2' (awaiting AUTH): bad AUTH", first)
        self.assertIn("more from this host are logged once every 60 s", first)
        self.refuse(refusals, "10.0.0.3", wrong_secret)
        for _ in range(2):
            self.refuse(refusals, "10.0.0.2", _hello(cluster="other"))
        self.assertEqual(len(self.warnings()), 4)
        self.clock.advance(20)
        self.refuse(refusals, "10.0.0.2", wrong_secret)
        later = self.warnings()[4:]
        self.assertEqual(len(later), 1, later)
        self.assertIn("from 10.0.0.2:40000", later[0])
        self.assertIn("bad AUTH (wrong cluster secret?); 3 more refused from this host", later[0])
        self.assertEqual(
            [e for e in self.recorder.events if e[0] != "closed"], []
        )

    def test_forgets_the_oldest(self) -> None:
        """
        The log remembers at most C{limit} hosts, the one logged longest
        ago forgotten first (and so logged at once again).
        """
        refusals = RefusalLog(interval=60, limit=2)
        self.assertEqual(refusals.refused("a", 0), 0)
        self.assertEqual(refusals.refused("b", 1), 0)
        self.assertIsNone(refusals.refused("a", 2))
        self.assertEqual(refusals.refused("c", 3), 0)
        self.assertEqual(refusals.refused("a", 4), 0)
        self.assertIsNone(refusals.refused("c", 5))


class AuthenticatedTests(_ProtocolTestMixin, SynchronousTestCase):
    """
    Rules and limits once the peer has authenticated.
    """

    def test_dropped_before_the_end_of_the_turn(self) -> None:
        """
        Messages waiting for the end of the turn when the connection is
        dropped never go out on it.
        """
        protocol = self.build(outbound=True, writer=TurnWriter(self.clock))
        self.handshake(protocol)
        self.assertTrue(protocol.send("waiting"))
        protocol.drop("a test")
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), b"")
        self.assertDropped(protocol, was_ready=True)

    def test_max_length(self) -> None:
        """
        A length prefix of exactly L{MAX_LENGTH} is waited for.
        """
        protocol = self.build()
        self.handshake(protocol)
        protocol.dataReceived(struct.pack(">I", MAX_LENGTH) + b"\x03")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(MAX_LENGTH, 64 * 1024 * 1024)
        self.assertEqual(PeerProtocol.MAX_LENGTH, MAX_LENGTH)

    def test_max_length_exceeded(self) -> None:
        """
        A length prefix of L{MAX_LENGTH} + 1 drops the connection at once,
        without buffering the frame; a 2 GiB prefix likewise.
        """
        for length in (MAX_LENGTH + 1, 2**31, 2**32 - 1):
            self.setUp()
            protocol = self.build()
            self.handshake(protocol)
            protocol.dataReceived(_message(1) + struct.pack(">I", length) + b"\x03" * 1000)
            self.assertEqual(self.recorder.events[1], ("message", "n2", 9, 1))
            self.assertDropped(protocol, was_ready=True)

    def test_garbage_after_handshake(self) -> None:
        """
        Garbage after a valid handshake drops the connection; frames after
        it are not delivered.
        """
        protocol = self.build()
        self.handshake(protocol)
        protocol.dataReceived(
            _message("before") + frame(TAG_MESSAGE, b"\xc1\xc1") + _message("after")
        )
        self.assertEqual(
            self.recorder.events,
            [("ready", "n2", 9), ("message", "n2", 9, "before"), ("closed", True)],
        )
        self.assertDropped(protocol, was_ready=True)

    def test_raw_garbage_after_handshake(self) -> None:
        """
        Raw non-protocol bytes after the handshake drop the connection.
        """
        protocol = self.build()
        self.handshake(protocol)
        protocol.dataReceived(b"\xde\xad\xbe\xef" * 4)
        self.assertDropped(protocol, was_ready=True)

    def test_unknown_tag(self) -> None:
        """
        An unknown frame type drops the connection.
        """
        protocol = self.build()
        self.handshake(protocol)
        protocol.dataReceived(frame(99, encode(None)))
        self.assertDropped(protocol, was_ready=True)

    def test_empty_frame(self) -> None:
        """
        A frame without even a tag drops the connection.
        """
        protocol = self.build()
        self.handshake(protocol)
        protocol.dataReceived(b"\x00\x00\x00\x00")
        self.assertDropped(protocol, was_ready=True)

    def test_second_hello(self) -> None:
        """
        Handshake frames after authentication drop the connection.
        """
        protocol = self.build()
        self.handshake(protocol)
        protocol.dataReceived(_hello())
        self.assertDropped(protocol, was_ready=True)

    def test_keepalive_with_body(self) -> None:
        """
        A KEEPALIVE frame carrying a body drops the connection.
        """
        protocol = self.build()
        self.handshake(protocol)
        protocol.dataReceived(frame(TAG_KEEPALIVE, b"\x00"))
        self.assertDropped(protocol, was_ready=True)

    def test_message_to_connecting_side(self) -> None:
        """
        Messages flow only from the connecting side: a MESSAGE arriving on
        an outbound connection drops it.
        """
        protocol = self.build(outbound=True)
        self.handshake(protocol)
        protocol.dataReceived(_message("wrong way"))
        self.assertDropped(protocol, was_ready=True)
        self.assertEqual(
            [e for e in self.recorder.events if e[0] == "message"], []
        )

    def test_send(self) -> None:
        """
        L{PeerProtocol.send} writes one MESSAGE frame per message, small or
        large, in order.
        """
        protocol = self.build(outbound=True)
        self.assertFalse(protocol.send("too early"))
        self.handshake(protocol)
        messages = [[1, b"x"], {"big": b"y" * 10_000}, None]
        for m in messages:
            self.assertTrue(protocol.send(m))
        self.assertEqual(
            _parse(self.transport.value()), [(TAG_MESSAGE, m) for m in messages]
        )

    def test_send_on_accepting_side(self) -> None:
        """
        The accepting side never sends messages: trying is a bug, not a
        frame the peer would have to drop the connection for.
        """
        protocol = self.build()
        self.handshake(protocol)
        self.assertRaises(RuntimeError, protocol.send, "wrong way")
        self.assertEqual(self.transport.value(), b"")

    def test_send_unencodable(self) -> None:
        """
        An unencodable message raises L{TypeError}, sends nothing and
        leaves the link usable.
        """
        protocol = self.build(outbound=True)
        self.handshake(protocol)
        self.assertRaises(TypeError, protocol.send, [object()])
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(protocol.send("fine"))

    def test_send_too_large(self) -> None:
        """
        A message that cannot fit in one frame raises L{MessageTooLarge}
        and sends nothing.
        """
        protocol = self.build(outbound=True)
        self.handshake(protocol)
        protocol.MAX_LENGTH = 100
        self.assertRaises(MessageTooLarge, protocol.send, b"x" * 100)
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(protocol.send(b"x" * 90))

    def test_deliver_failure_logged(self) -> None:
        """
        A failure in the owner's message handling is logged with its
        traceback and the connection keeps working.
        """
        protocol = PeerProtocol(
            _settings(), self.clock, deliver=lambda *e: 1 / 0, nonce=N1_NONCE
        )
        protocol.makeConnection(self.transport)
        protocol.dataReceived(_hello() + _auth() + _message(1) + _message(2))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertTrue(protocol.authenticated)
        protocol.connectionLost(Failure(ConnectionDone()))


class TimerTests(_ProtocolTestMixin, SynchronousTestCase):
    """
    Handshake timeout, keepalives and idle detection, on a L{Clock}.
    """

    def test_handshake_timeout(self) -> None:
        """
        A connection that has not authenticated 5 s after connecting is
        dropped, even if the peer keeps sending partial data.
        """
        protocol = self.build()
        protocol.dataReceived(_hello())
        self.clock.advance(4.9)
        protocol.dataReceived(b"\x00")
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertDropped(protocol)

    def test_handshake_timeout_configurable(self) -> None:
        """
        The handshake timeout comes from the settings.
        """
        protocol = self.build(settings=_settings(handshake_timeout=0.5))
        self.clock.advance(0.5)
        self.assertDropped(protocol)

    def test_no_timeout_after_authentication(self) -> None:
        """
        Authentication cancels the handshake timeout.
        """
        protocol = self.build()
        self.clock.advance(4)
        self.handshake(protocol)
        for _ in range(10):
            self.clock.advance(1)
            protocol.dataReceived(KEEPALIVE)
        self.assertTrue(protocol.authenticated)
        self.assertFalse(self.transport.disconnecting)

    def test_keepalive_when_silent(self) -> None:
        """
        An authenticated side that sent nothing for a keepalive interval
        sends one KEEPALIVE frame; one that sent a message does not.
        """
        protocol = self.build(outbound=True)
        self.handshake(protocol)
        self.clock.advance(1)
        self.assertEqual(_parse(self.transport.value()), [(TAG_KEEPALIVE, None)])
        self.transport.clear()
        protocol.dataReceived(KEEPALIVE)
        protocol.send("busy")
        self.clock.advance(1)
        self.assertEqual(_parse(self.transport.value()), [(TAG_MESSAGE, "busy")])
        self.transport.clear()
        self.clock.advance(1)
        self.assertEqual(_parse(self.transport.value()), [(TAG_KEEPALIVE, None)])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_accepting_side_keepalives(self) -> None:
        """
        The accepting side, which never sends messages, sends a KEEPALIVE
        every interval.
        """
        protocol = self.build()
        self.handshake(protocol)
        for _ in range(3):
            self.clock.advance(1)
            protocol.dataReceived(KEEPALIVE)
        self.assertEqual(_parse(self.transport.value()), [(TAG_KEEPALIVE, None)] * 3)
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_idle_timeout(self) -> None:
        """
        An authenticated connection on which nothing is received for 5 s is
        dropped (a silent, half-open peer); anything received resets it.
        """
        protocol = self.build()
        self.handshake(protocol)
        for _ in range(20):
            self.clock.advance(1)
            protocol.dataReceived(KEEPALIVE)
        self.clock.advance(3)
        protocol.dataReceived(b"\x00\x00")  # half a frame still counts
        self.clock.advance(4.9)
        self.assertTrue(protocol.authenticated)
        self.clock.advance(0.1)
        self.assertDropped(protocol, was_ready=True)

    def test_idle_timeout_configurable(self) -> None:
        """
        The idle timeout comes from the settings.
        """
        protocol = self.build(settings=_settings(keepalive_interval=0.1, idle_timeout=0.3))
        self.handshake(protocol)
        self.clock.advance(0.3)
        self.assertDropped(protocol, was_ready=True)

    def test_timers_cancelled_on_lost(self) -> None:
        """
        Losing the connection, before or after authentication, cancels
        every timer and tells the owner once.
        """
        protocol = self.build()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.setUp()
        protocol = self.build()
        self.handshake(protocol)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.recorder.events, [("ready", "n2", 9), ("closed", True)])

    def test_when_closed(self) -> None:
        """
        L{PeerProtocol.when_closed} fires once the connection is lost, not
        when it is merely dropped.
        """
        protocol = self.build()
        waiting = protocol.when_closed()
        protocol.drop("test")
        self.assertNoResult(waiting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(waiting))
        self.assertIsNone(self.successResultOf(protocol.when_closed()))


class _Built(Factory):
    """
    Hands out one protocol built beforehand.
    """

    def __init__(self, protocol: PeerProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> PeerProtocol:
        return self._protocol


class MutualTLSTests(SynchronousTestCase):
    """
    Two protocols behind mutual TLS (the peer port with C{[tls]}), over
    iosim: the secret's handshake runs only between certificates of the
    cluster's CA.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        directory = self.mktemp()
        os.makedirs(directory)
        self.authority = new_authority("cluster CA")
        write_pair(directory, "ca", self.authority.certificate, self.authority.key)
        for node_id in ("n1", "n2"):
            write_pair(directory, node_id, *issue(self.authority, node_id, ["127.0.0.1"]))
        self.directory = directory
        self.tls = TLSConfig(
            ca=os.path.join(directory, "ca.pem"),
            cert=os.path.join(directory, "{node}.pem"),
            key=os.path.join(directory, "{node}.key"),
        )
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.received: list[Any] = []

    def connect(self, connector_tls: NodeTLS) -> tuple[PeerProtocol, PeerProtocol, list[str]]:
        """
        n2 dials n1 through TLS with C{connector_tls}; n1 serves with its
        own certificate and requires one from the CA.
        """
        ready: list[str] = []
        acceptor, connector = _n2_dialling_n1(self.clock, self.received, ready)
        server = tls_server_factory(
            load_node_tls(self.tls, "n1").peer_server, _Built(acceptor), self.clock
        ).buildProtocol(None)
        client = TLSMemoryBIOFactory(
            connector_tls.peer_client("127.0.0.1"), True, _Built(connector), self.clock
        ).buildProtocol(None)
        pump = _connect(server, client, self.clock)
        pump.flush()
        self.pump = pump
        return acceptor, connector, ready

    def test_same_authority(self) -> None:
        """
        Two nodes of the CA authenticate each other behind TLS, and n2's
        messages reach n1.
        """
        acceptor, connector, ready = self.connect(load_node_tls(self.tls, "n2"))
        self.assertEqual(sorted(ready), ["n1 sees n2", "n2 sees n1"])
        self.assertTrue(acceptor.authenticated and connector.authenticated)
        self.assertTrue(connector.send(["over tls"]))
        self.pump.flush()
        self.assertEqual(self.received, [("n2", 7, ["over tls"])])

    def test_other_authority(self) -> None:
        """
        A peer whose certificate another CA signed never gets to the
        secret's handshake; the drop is logged with OpenSSL's reason.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        write_pair(directory, "n2", *issue(new_authority("another CA"), "n2", ["127.0.0.1"]))
        with open(os.path.join(directory, "n2.pem"), "rb") as cert, open(
            os.path.join(directory, "n2.key"), "rb"
        ) as key:
            identity = PrivateCertificate.loadPEM(cert.read() + key.read())
        # It trusts the cluster's CA: only its own certificate is wrong.
        genuine = load_node_tls(self.tls, "n2")
        intruder_tls = NodeTLS(
            authority=genuine.authority,
            identity=identity,
            server=genuine.server,
            peer_server=genuine.peer_server,
        )
        acceptor, connector, ready = self.connect(intruder_tls)
        self.assertEqual(ready, [])
        self.assertFalse(acceptor.authenticated or connector.authenticated)
        self.assertEqual(self.successResultOf(acceptor.when_closed()), None)
        drops = [
            formatEvent(event) for event in self.logged
            if "TLS handshake failed" in formatEvent(event) and "inbound" in formatEvent(event)
        ]
        self.assertEqual(len(drops), 1, drops)
        self.assertIn("certificate", drops[0])
