# -*- test-case-name: tests.test_peer_links -*-
"""
Tests for L{twisted_kv.peer.links.PeerLinks}.

Most tests run whole nodes' links in memory: every node shares one
L{MemoryReactorClock}, and L{_Network} completes their TCP connection
attempts with iosim pumps, refuses those aimed at a port nobody listens
on, and can hang a connection to play a silent half-open peer. One test
class uses real loopback sockets.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_kv.interfaces import IMessenger, IPeerHandler
from twisted_kv.peer import PeerLinks
from twisted_kv.peer.links import (
    RETRY_INITIAL_DELAY,
    RETRY_MAX_DELAY,
    default_retry_policy,
)
from twisted_kv.peer.protocol import TAG_AUTH, TAG_HELLO, TAG_MESSAGE, auth_mac, frame
from twisted_kv.wire.codec import PROTOCOL_VERSION, decode, encode

SECRET = b"a-long-random-string"
CLUSTER = "demo"
PORTS = {"n1": 7101, "n2": 7102, "n3": 7103}


def _no_jitter() -> float:
    return 0.0


@implementer(IPeerHandler)
class _Handler:
    """
    The node's side of L{PeerLinks}: records every call, in order.
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def peer_message(self, peer_id: str, incarnation: int, message: Any) -> None:
        self.events.append(("message", peer_id, incarnation, message))

    def peer_up(self, peer_id: str, incarnation: int) -> None:
        self.events.append(("up", peer_id, incarnation))

    def peer_down(self, peer_id: str) -> None:
        self.events.append(("down", peer_id))

    def links(self) -> list[tuple[Any, ...]]:
        """
        Only the peer_up / peer_down calls.
        """
        return [e for e in self.events if e[0] in ("up", "down")]

    def messages(self) -> list[tuple[Any, ...]]:
        """
        Only the peer_message calls.
        """
        return [e for e in self.events if e[0] == "message"]


class _Connection:
    """
    One in-memory TCP connection between two nodes.
    """

    def __init__(self, pump: iosim.IOPump, to: PeerLinks) -> None:
        """
        @param to: the links of the node dialled.
        """
        self.pump = pump
        self.to = to
        self.hung = False

    @property
    def closed(self) -> bool:
        return bool(self.pump.clientIO.disconnected and self.pump.serverIO.disconnected)

    def step(self) -> bool:
        """
        Move data (or, when hung, lose it) and report closes; C{True} if
        anything happened.
        """
        if not self.hung:
            return self.pump.pump(advanceClock=False)
        moved = False
        for io in (self.pump.clientIO, self.pump.serverIO):
            if io.getOutBuffer():
                moved = True
            # A hung peer never learns about the close; the side that
            # closes learns at once, as with a real half-open socket.
            if io.disconnecting and not io.disconnected:
                io.disconnected = True
                io.reportDisconnect()
                moved = True
        return moved


class _Network:
    """
    Nodes' L{PeerLinks} on one L{MemoryReactorClock}, joined by iosim.
    """

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.listeners: dict[int, tuple[PeerLinks, Any]] = {}
        self.connections: list[_Connection] = []

    def node(
        self,
        node_id: str,
        incarnation: int = 1,
        secret: bytes = SECRET,
        cluster_name: str = CLUSTER,
        ports: dict[str, int] = PORTS,
        **kwargs: Any,
    ) -> tuple[PeerLinks, _Handler]:
        """
        Build (not start) the links of node C{node_id}, whose peers are the
        other nodes of C{ports}.
        """
        handler = _Handler()
        kwargs.setdefault("retry_policy", backoffPolicy(0.05, 1.0, jitter=_no_jitter))
        links = PeerLinks(
            node_id=node_id,
            incarnation=incarnation,
            cluster_name=cluster_name,
            secret=secret,
            peers={p: ("127.0.0.1", port) for p, port in ports.items() if p != node_id},
            handler=handler,
            reactor=self.reactor,
            listen_endpoint=f"tcp:{ports[node_id]}:interface=127.0.0.1",
            **kwargs,
        )
        return links, handler

    def start(self, links: PeerLinks) -> None:
        links.startService()
        port, factory, _, _ = self.reactor.tcpServers[-1]
        self.listeners[port] = (links, factory)

    def stop(self, links: PeerLinks) -> defer.Deferred[None]:
        """
        Stop C{links} and let every close run its course.
        """
        for port, (listening, _) in list(self.listeners.items()):
            if listening is links:
                del self.listeners[port]
        stopped = links.stopService()
        self.run()
        return stopped

    def _connect_pending(self) -> bool:
        attempted = False
        while self.reactor.tcpClients:
            host, port, factory, _, _ = self.reactor.tcpClients.pop(0)
            connector = self.reactor.connectors.pop(0)
            if connector.stoppedConnecting:
                continue
            attempted = True
            listener = self.listeners.get(port)
            server = None
            if listener is not None:
                server = listener[1].buildProtocol(IPv4Address("TCP", host, 50000))
            if server is None:
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
                continue
            client = factory.buildProtocol(IPv4Address("TCP", host, port))
            pump = iosim.connect(
                server,
                iosim.makeFakeServer(server),
                client,
                iosim.makeFakeClient(client),
                greet=False,
                clock=self.reactor,
            )
            self.connections.append(_Connection(pump, listener[0]))
        return attempted

    def run(self) -> None:
        """
        Complete connection attempts and move data until nothing changes
        (without advancing the clock, but running what is due now, as each
        turn of a reactor does: messages go out at the end of a turn).
        """
        for _ in range(10_000):
            self.reactor.advance(0)
            busy = self._connect_pending()
            for connection in self.connections:
                busy = connection.step() or busy
            self.connections = [c for c in self.connections if not c.closed]
            if not busy:
                return
        raise AssertionError("the network never settled")

    def advance(self, seconds: float, step: float = 0.01) -> None:
        """
        Let C{seconds} pass, running the network between small steps.
        """
        self.run()
        remaining = seconds
        while remaining > 1e-9:
            delta = min(step, remaining)
            self.reactor.advance(delta)
            remaining -= delta
            self.run()

    def connection_between(self, a: str, b: PeerLinks) -> _Connection:
        """
        The open connection node C{a} dialled to C{b}: C{b}'s side knows
        who dialled once the handshake is done.
        """
        for connection in self.connections:
            if connection.to is b and connection.pump.server.peer_id == a:
                return connection
        raise AssertionError("no such connection")


def _outbound_lines(events: list[Any], peer_id: str) -> list[str]:
    """
    The log lines about the outbound link to C{peer_id}, and any about
    retries.
    """
    lines = [formatEvent(event) for event in events]
    return [
        line
        for line in lines
        if (peer_id in line and "inbound" not in line) or "retry" in line.lower()
    ]


class InMemoryLinksTests(SynchronousTestCase):
    """
    L{PeerLinks} of several nodes over an in-memory network.
    """

    def setUp(self) -> None:
        self.net = _Network()

    def pair(self, **kwargs: Any) -> tuple[PeerLinks, _Handler, PeerLinks, _Handler]:
        """
        Start nodes n1 and n2 of a two-node cluster and connect them.
        """
        ports = {"n1": 7101, "n2": 7102}
        n1, h1 = self.net.node("n1", incarnation=11, ports=ports, **kwargs)
        n2, h2 = self.net.node("n2", incarnation=22, ports=ports, **kwargs)
        self.net.start(n1)
        self.net.start(n2)
        self.net.run()
        return n1, h1, n2, h2

    def stop_all(self, *links: PeerLinks) -> None:
        """
        Stop every node, check each stop completes and nothing stays
        scheduled.
        """
        for link in links:
            self.successResultOf(self.net.stop(link))
        self.assertEqual(self.net.reactor.getDelayedCalls(), [])

    def test_interfaces(self) -> None:
        """
        L{PeerLinks} is the node's L{IMessenger}, and the recording handler
        of these tests an L{IPeerHandler}, as the node is.
        """
        n1, h1, n2, h2 = self.pair()
        verifyObject(IMessenger, n1)
        verifyObject(IPeerHandler, h1)
        self.stop_all(n1, n2)

    def test_peer_up(self) -> None:
        """
        Two started nodes authenticate each other's outbound links and
        report them with the peer's incarnation.
        """
        n1, h1, n2, h2 = self.pair()
        self.assertEqual(h1.events, [("up", "n2", 22)])
        self.assertEqual(h2.events, [("up", "n1", 11)])
        self.assertEqual((n1.connected(), n2.connected()), ({"n2"}, {"n1"}))
        self.stop_all(n1, n2)

    def test_listening_port(self) -> None:
        """
        C{listening_port} is the listening port once started, C{None}
        before, and there is none without a listen endpoint.
        """
        n1, _ = self.net.node("n1")
        self.assertIsNone(n1.listening_port)
        self.net.start(n1)
        self.assertEqual(n1.listening_port.getHost().port, 7101)
        quiet = PeerLinks(
            node_id="n9",
            incarnation=1,
            cluster_name=CLUSTER,
            secret=SECRET,
            peers={},
            handler=_Handler(),
            reactor=self.net.reactor,
        )
        quiet.startService()
        self.assertIsNone(quiet.listening_port)
        self.successResultOf(quiet.stopService())
        self.stop_all(n1)

    def test_messages_in_order(self) -> None:
        """
        Messages flow both ways, each on the sender's outbound link, in
        send order, tagged with the sender's incarnation.
        """
        n1, h1, n2, h2 = self.pair()
        sent = [[i, "p12", b"v" * (i % 50), None, {"k": i}] for i in range(1000)]
        for message in sent:
            self.assertTrue(n1.send("n2", message))
            self.assertTrue(n2.send("n1", ["ack", message[0]]))
        self.net.run()
        self.assertEqual(h2.messages(), [("message", "n1", 11, m) for m in sent])
        self.assertEqual(
            h1.messages(), [("message", "n2", 22, ["ack", i]) for i in range(1000)]
        )
        self.stop_all(n1, n2)

    def test_send_without_link(self) -> None:
        """
        Without an authenticated link, C{send} returns C{False} and the
        message is dropped, also for an id that is not a peer; an
        unencodable message raises all the same.
        """
        n1, h1 = self.net.node("n1")
        self.assertFalse(n1.send("n2", "early"))
        self.assertRaises(TypeError, n1.send, "n2", object())
        self.net.start(n1)
        self.net.run()
        self.assertFalse(n1.send("n2", "nobody there"))
        self.assertFalse(n1.send("n7", "not a peer"))
        self.assertEqual(n1.connected(), set())
        n2, h2 = self.net.node("n2")
        self.net.start(n2)
        self.net.advance(1)
        self.assertEqual(n1.connected(), {"n2"})
        self.assertTrue(n1.send("n2", "now"))
        self.net.run()
        self.assertEqual(h2.messages(), [("message", "n1", 1, "now")])
        self.stop_all(n1, n2)

    def test_full_mesh(self) -> None:
        """
        Three nodes each hold an authenticated link to both others.
        """
        nodes = [self.net.node(n, incarnation=i) for i, n in enumerate(PORTS)]
        for links, _ in nodes:
            self.net.start(links)
        self.net.run()
        for (links, handler), node_id in zip(nodes, PORTS):
            self.assertEqual(links.connected(), set(PORTS) - {node_id})
            self.assertEqual(len(handler.links()), 2)
        for (links, _), node_id in zip(nodes, PORTS):
            for peer in links.connected():
                links.send(peer, f"from {node_id}")
        self.net.run()
        for (_, handler), node_id in zip(nodes, PORTS):
            self.assertEqual(
                sorted(m[3] for m in handler.messages()),
                sorted(f"from {n}" for n in PORTS if n != node_id),
            )
        self.stop_all(*(links for links, _ in nodes))

    def test_peer_restart(self) -> None:
        """
        When a peer restarts with a new incarnation, the node sees it go
        down, then come back up with the new incarnation.
        """
        n1, h1, n2, h2 = self.pair()
        self.successResultOf(self.net.stop(n2))
        self.assertEqual(h1.links(), [("up", "n2", 22), ("down", "n2")])
        self.assertEqual(h2.links(), [("up", "n1", 11), ("down", "n1")])
        self.assertEqual(n1.connected(), set())
        self.net.advance(0.5)
        n2b, h2b = self.net.node("n2", incarnation=23, ports={"n1": 7101, "n2": 7102})
        self.net.start(n2b)
        self.net.advance(RETRY_MAX_DELAY + 0.1)
        self.assertEqual(
            h1.links(), [("up", "n2", 22), ("down", "n2"), ("up", "n2", 23)]
        )
        self.assertEqual(h2b.links(), [("up", "n1", 11)])
        n1.send("n2", "hello again")
        n2b.send("n1", "hi")
        self.net.run()
        self.assertEqual(h2b.messages(), [("message", "n1", 11, "hello again")])
        self.assertEqual(h1.messages(), [("message", "n2", 23, "hi")])
        self.stop_all(n1, n2b)

    def test_hears_from_needs_the_peers_own_link(self) -> None:
        """
        C{hears_from} is true only while the peer's outbound link to us is
        up: a peer that has just restarted reaches us before we redial it,
        and cannot hear our answers until then.
        """
        n1, h1, n2, h2 = self.pair()
        self.assertEqual((n1.hears_from("n2"), n2.hears_from("n1")), (True, True))
        self.successResultOf(self.net.stop(n2))
        self.assertFalse(n1.hears_from("n2"))
        self.net.advance(0.5)
        n2b, h2b = self.net.node("n2", incarnation=23, ports={"n1": 7101, "n2": 7102})
        self.net.start(n2b)
        self.net.run()
        self.assertEqual((n2b.connected(), n2b.hears_from("n1")), ({"n1"}, False))
        self.assertTrue(n1.hears_from("n2"))
        self.net.advance(RETRY_MAX_DELAY + 0.1)
        self.assertTrue(n2b.hears_from("n1"))
        self.stop_all(n1, n2b)

    def test_reconnect_with_backoff(self) -> None:
        """
        A lost link is redialled after the backoff delay (0.05 s * 1.5 for
        the first retry, here without jitter) and reported up again.
        """
        n1, h1, n2, h2 = self.pair()
        connection = self.net.connection_between("n1", n2)
        connection.pump.clientIO.abortConnection()
        self.net.run()
        self.assertEqual(h1.links(), [("up", "n2", 22), ("down", "n2")])
        self.assertFalse(n1.send("n2", "lost"))
        self.net.reactor.advance(0.074)
        self.net.run()
        self.assertEqual(n1.connected(), set())
        self.net.reactor.advance(0.002)
        self.net.run()
        self.assertEqual(n1.connected(), {"n2"})
        self.assertEqual(
            h1.links(), [("up", "n2", 22), ("down", "n2"), ("up", "n2", 22)]
        )
        # n2's own outbound link never noticed: the two are independent.
        self.assertEqual(h2.links(), [("up", "n1", 11)])
        self.stop_all(n1, n2)

    def test_backoff_grows_while_refused(self) -> None:
        """
        While a peer refuses connections, retries back off up to 1 s; once
        it listens, the link comes up within that cap.
        """
        n1, h1 = self.net.node("n1")
        self.net.start(n1)
        attempts = []
        for _ in range(1500):
            self.net.reactor.advance(0.01)
            if self.net.reactor.tcpClients:
                attempts.append(self.net.reactor.seconds())
            self.net.run()
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        # 0.05 * 1.5 ** attempt, seen through 10 ms steps.
        for gap, delay in zip(gaps, [0.075, 0.1125, 0.169, 0.253, 0.380, 0.570, 0.854]):
            self.assertLess(abs(gap - delay), 0.011, gaps)
        for gap in gaps[-5:]:
            self.assertLess(abs(gap - RETRY_MAX_DELAY), 0.011, gaps)
        n2, h2 = self.net.node("n2")
        self.net.start(n2)
        self.net.advance(1.01)
        self.assertIn("n2", n1.connected())
        self.stop_all(n1, n2)

    def test_outage_logged_once(self) -> None:
        """
        A lost peer is logged once, naming it, its address and why the
        redial failed; the retries are silent but for a reminder a minute
        into the outage; its return is one line, with the new incarnation in
        hex.  Nothing is logged per retry.
        """
        with capturedLogs() as events:
            n1, h1, n2, h2 = self.pair()
            self.successResultOf(self.net.stop(n2))
            self.net.advance(70, step=0.05)
            n2b, h2b = self.net.node("n2", incarnation=0x2B, ports={"n1": 7101, "n2": 7102})
            self.net.start(n2b)
            self.net.advance(RETRY_MAX_DELAY + 0.1)
        self.assertEqual(
            _outbound_lines(events, "n2"),
            [
                "connected to peer n2 at 127.0.0.1:7102 (incarnation 16)",
                "lost peer n2 at 127.0.0.1:7102 (connection refused); retrying",
                "peer n2 at 127.0.0.1:7102 still unreachable after 60 s"
                " (connection refused); retrying",
                "reconnected to peer n2 at 127.0.0.1:7102 after 71 s (incarnation 2b)",
            ],
        )
        self.stop_all(n1, n2b)

    def lines_about_a_peer_started_after(self, delay: float) -> list[str]:
        """
        Start n1, then n2 C{delay} seconds later, and give n1 time to reach
        it.

        @return: what n1 logged about its link to n2.
        """
        ports = {"n1": 7101, "n2": 7102}
        with capturedLogs() as events:
            n1, h1 = self.net.node("n1", ports=ports)
            self.net.start(n1)
            self.net.advance(delay, step=0.05)
            n2, h2 = self.net.node("n2", incarnation=0xFF, ports=ports)
            self.net.start(n2)
            self.net.advance(RETRY_MAX_DELAY + 0.1)
        self.stop_all(n1, n2)
        return _outbound_lines(events, "n2")

    def test_started_a_little_later(self) -> None:
        """
        A peer that comes up within a few seconds of the node is only
        logged once connected: nodes never start at quite the same time.
        """
        self.assertEqual(
            self.lines_about_a_peer_started_after(4),
            ["connected to peer n2 at 127.0.0.1:7102 (incarnation ff)"],
        )

    def test_unreachable_from_the_start(self) -> None:
        """
        A peer that cannot be reached when the node starts is logged once
        it has failed for a few seconds, then once when it is reached.
        """
        self.assertEqual(
            self.lines_about_a_peer_started_after(8),
            [
                "cannot reach peer n2 at 127.0.0.1:7102 (connection refused); retrying",
                "connected to peer n2 at 127.0.0.1:7102 after 9 s (incarnation ff)",
            ],
        )

    def test_wrong_secret(self) -> None:
        """
        Nodes with different secrets never authenticate each other; nothing
        reaches either handler, and the failing handshakes back off like
        refused connections.  Each node logs the refusals once (the next
        line would come a minute later), not once per attempt.
        """
        ports = {"n1": 7101, "n2": 7102}
        n1, h1 = self.net.node("n1", ports=ports)
        n2, h2 = self.net.node("n2", secret=b"not the secret", ports=ports)
        self.net.start(n1)
        self.net.start(n2)
        attempts = []
        with capturedLogs() as events:
            for _ in range(1000):
                self.net.reactor.advance(0.01)
                if self.net.reactor.tcpClients:
                    attempts.append(self.net.reactor.seconds())
                self.net.run()
        self.assertEqual((h1.events, h2.events), ([], []))
        self.assertEqual(n1.connected() | n2.connected(), set())
        self.assertLess(len(attempts), 40)
        self.assertGreater(len(attempts), 5)
        refused = [formatEvent(e) for e in events if "wrong cluster secret" in formatEvent(e)]
        self.assertIn(len(refused), (1, 2), refused)
        self.stop_all(n1, n2)

    def test_wrong_cluster(self) -> None:
        """
        A node of another cluster (same secret) is never served.
        """
        ports = {"n1": 7101, "n2": 7102}
        n1, h1 = self.net.node("n1", ports=ports)
        n2, h2 = self.net.node("n2", cluster_name="other", ports=ports)
        self.net.start(n1)
        self.net.start(n2)
        self.net.advance(2)
        self.assertEqual((h1.events, h2.events), ([], []))
        self.stop_all(n1, n2)

    def test_half_open_peer(self) -> None:
        """
        A connection that goes silent (a hung peer or a half-open socket)
        is dropped by the idle timeout on both sides; the link comes back
        once the network does.
        """
        n1, h1, n2, h2 = self.pair()
        for connection in self.net.connections:
            connection.hung = True
        self.net.advance(4.9)
        self.assertEqual(n1.connected(), {"n2"})
        self.net.advance(0.11)
        self.assertEqual(h1.links(), [("up", "n2", 22), ("down", "n2")])
        self.assertEqual(h2.links(), [("up", "n1", 11), ("down", "n1")])
        self.net.advance(0.1)
        self.assertEqual(h1.links()[2:], [("up", "n2", 22)])
        self.assertEqual(h2.links()[2:], [("up", "n1", 11)])
        self.assertEqual((n1.connected(), n2.connected()), ({"n2"}, {"n1"}))
        self.stop_all(n1, n2)

    def test_quiet_link_stays_up(self) -> None:
        """
        Keepalives hold an idle link up indefinitely.
        """
        n1, h1, n2, h2 = self.pair()
        self.net.advance(60, step=0.25)
        self.assertEqual(h1.links(), [("up", "n2", 22)])
        self.assertEqual(h2.links(), [("up", "n1", 11)])
        self.stop_all(n1, n2)

    def test_garbage_client(self) -> None:
        """
        An inbound connection sending garbage is dropped; the node's links
        keep working and its handler hears nothing from it.
        """
        n1, h1, n2, h2 = self.pair()
        _, factory = self.net.listeners[7101]
        for garbage in [b"GET / HTTP/1.0\r\n\r\n", struct.pack(">I", 2**31) + b"\x01"]:
            server = factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 4000))
            transport = iosim.makeFakeServer(server)
            server.makeConnection(transport)
            server.dataReceived(garbage)
            self.assertTrue(transport.disconnecting)
            server.connectionLost(Failure(ConnectionRefusedError()))
        self.assertTrue(n2.send("n1", "still here"))
        self.net.run()
        self.assertEqual(h1.messages(), [("message", "n2", 22, "still here")])
        self.stop_all(n1, n2)

    def test_handler_failure_logged(self) -> None:
        """
        A failing C{peer_up} is logged and does not break the link.
        """
        ports = {"n1": 7101, "n2": 7102}
        n1, h1 = self.net.node("n1", ports=ports)
        n2, h2 = self.net.node("n2", ports=ports)

        def broken(peer_id: str, incarnation: int) -> None:
            raise RuntimeError("node bug")

        h1.peer_up = broken  # type: ignore[method-assign]
        self.net.start(n1)
        self.net.start(n2)
        self.net.run()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(n1.connected(), {"n2"})
        self.assertTrue(n1.send("n2", "ok"))
        self.net.run()
        self.assertEqual(h2.messages(), [("message", "n1", 1, "ok")])
        self.stop_all(n1, n2)

    def test_stop_while_connecting(self) -> None:
        """
        Stopping while connection attempts are pending, or waiting for a
        retry, completes and leaves nothing scheduled.
        """
        n1, h1 = self.net.node("n1")
        self.net.start(n1)
        self.successResultOf(n1.stopService())
        self.assertEqual(self.net.reactor.getDelayedCalls(), [])
        n1, h1 = self.net.node("n1")
        self.net.start(n1)
        self.net.run()
        self.assertNotEqual(self.net.reactor.getDelayedCalls(), [])
        self.stop_all(n1)

    def test_self_in_peers(self) -> None:
        """
        A node is never its own peer.
        """
        self.assertRaises(
            ValueError,
            PeerLinks,
            node_id="n1",
            incarnation=1,
            cluster_name=CLUSTER,
            secret=SECRET,
            peers={"n1": ("127.0.0.1", 7101)},
            handler=_Handler(),
            reactor=self.net.reactor,
        )

    def test_default_retry_policy(self) -> None:
        """
        The default policy starts near 0.05 s, is capped at 1 s, and adds
        at most 0.1 s of jitter.
        """
        policy = default_retry_policy(jitter=_no_jitter)
        self.assertAlmostEqual(policy(0), RETRY_INITIAL_DELAY)
        self.assertAlmostEqual(policy(1), 0.075)
        self.assertEqual(policy(100), RETRY_MAX_DELAY)
        jittered = default_retry_policy()
        for attempt in range(20):
            delay = jittered(attempt)
            self.assertGreaterEqual(delay, policy(attempt))
            self.assertLess(delay, policy(attempt) + 0.1)


class _RawClient(Protocol):
    """
    A raw TCP client for the loopback tests.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost.callback(None)


class LoopbackTests(TestCase):
    """
    Two L{PeerLinks} on real loopback sockets.
    """

    timeout = 30

    def _node(self, node_id: str, incarnation: int, ports: dict[str, int], handler: Any) -> PeerLinks:
        return PeerLinks(
            node_id=node_id,
            incarnation=incarnation,
            cluster_name=CLUSTER,
            secret=SECRET,
            peers={p: ("127.0.0.1", port) for p, port in ports.items() if p != node_id},
            handler=handler,
            reactor=global_reactor,
            listen_endpoint=f"tcp:{ports[node_id]}:interface=127.0.0.1",
        )

    @defer.inlineCallbacks
    def test_loopback(self) -> Any:
        """
        Two nodes on loopback exchange 10,000 messages in order; raw
        clients sending garbage, a 2 GiB length prefix or a wrong-secret
        handshake are dropped while the links keep working.
        """
        expected = 10_000
        done: defer.Deferred[None] = defer.Deferred()
        up: dict[str, defer.Deferred[None]] = {"n1": defer.Deferred(), "n2": defer.Deferred()}

        class Handler(_Handler):
            def __init__(self, node_id: str) -> None:
                super().__init__()
                self.node_id = node_id

            def peer_up(self, peer_id: str, incarnation: int) -> None:
                super().peer_up(peer_id, incarnation)
                if not up[self.node_id].called:
                    up[self.node_id].callback(None)

            def peer_message(self, peer_id: str, incarnation: int, message: Any) -> None:
                super().peer_message(peer_id, incarnation, message)
                if message == ["end"] and not done.called:
                    done.callback(None)

        h1, h2 = Handler("n1"), Handler("n2")
        # Each node must know the other's port before it starts: let the OS
        # pick two free ports, then listen on them.
        ports = {}
        for node_id in ("n1", "n2"):
            probe = global_reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
            ports[node_id] = probe.getHost().port
            yield probe.stopListening()
        n1 = self._node("n1", 1, ports, h1)
        n2 = self._node("n2", 2, ports, h2)
        n1.startService()
        self.addCleanup(n1.stopService)
        n2.startService()
        self.addCleanup(n2.stopService)
        yield defer.gatherResults([up["n1"], up["n2"]])

        def send_batch(start: int, stop: int) -> None:
            for i in range(start, stop):
                self.assertTrue(n1.send("n2", [i, "p12", b"x" * 100]))
                self.assertTrue(n2.send("n1", ["ack", i]))

        send_batch(0, expected // 2)

        # Hostile clients, each dropped by n2 while the links carry on.
        raw_clients = []
        endpoint = TCP4ClientEndpoint(global_reactor, "127.0.0.1", ports["n2"])
        for payload in [
            b"\xde\xad\xbe\xef" * 64,
            struct.pack(">I", 2**31),
            None,  # wrong-secret handshake, below
        ]:
            client = yield endpoint.connect(Factory.forProtocol(_RawClient))
            raw_clients.append(client)
            if payload is not None:
                client.transport.write(payload)
        wrong = raw_clients[-1]
        yield _until(lambda: _first_frame(wrong.received) is not None)
        hello = decode(_first_frame(wrong.received)[1:])
        self.assertEqual(hello[:4], [PROTOCOL_VERSION, CLUSTER, "n2", 2])
        nonce = b"\x05" * 32
        wrong.transport.write(
            frame(TAG_HELLO, encode([PROTOCOL_VERSION, CLUSTER, "n1", 9, nonce]))
            + frame(TAG_AUTH, encode([auth_mac(b"guess", hello[4], nonce, "n1", 9)]))
            + frame(TAG_MESSAGE, encode("sneaky"))
        )
        send_batch(expected // 2, expected)
        self.assertTrue(n1.send("n2", ["end"]))
        yield defer.gatherResults([c.lost for c in raw_clients])
        yield done
        yield _until(lambda: len(h1.messages()) == expected)

        received = [m[3] for m in h2.messages()]
        self.assertEqual(received[-1], ["end"])
        self.assertEqual(received[:-1], [[i, "p12", b"x" * 100] for i in range(expected)])
        self.assertEqual({m[1:3] for m in h2.messages()}, {("n1", 1)})
        self.assertEqual(h1.messages(), [("message", "n2", 2, ["ack", i]) for i in range(expected)])
        self.assertEqual(h2.links(), [("up", "n1", 1)])
        self.assertEqual(h1.links(), [("up", "n2", 2)])


def _first_frame(data: bytes) -> Any:
    """
    The first complete frame (tag and body) in C{data}, or C{None}.
    """
    if len(data) < 4:
        return None
    (length,) = struct.unpack_from(">I", data)
    return data[4 : 4 + length] if len(data) >= 4 + length else None


def _until(predicate: Any, interval: float = 0.01) -> defer.Deferred[None]:
    """
    Fire once C{predicate()} holds, polling on the reactor.
    """

    def check() -> None:
        if predicate():
            loop.stop()

    loop = LoopingCall(check)
    return loop.start(interval).addCallback(lambda _: None)
