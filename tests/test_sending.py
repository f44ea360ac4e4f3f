"""
Tests for L{twisted_kv.sending}.
"""

from __future__ import annotations

import socket

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.sending import TurnWriter, send


class _SocketPair:
    """
    A Twisted TCP connection object on one end of a socket pair (a
    L{MemoryReactor} records whether it asked to be watched for room), and
    the other end to read what it sent.
    """

    def __init__(self, test: SynchronousTestCase) -> None:
        ours, self.far = socket.socketpair()
        test.addCleanup(ours.close)
        test.addCleanup(self.far.close)
        self.reactor = MemoryReactor()
        self.connection = Connection(ours, Protocol(), self.reactor)
        self.connection.connected = True

    def received(self) -> bytes:
        return received(self.far)


def received(far: socket.socket) -> bytes:
    """
    What has arrived at C{far} so far, without waiting.
    """
    far.setblocking(False)
    chunks = []
    while True:
        try:
            chunk = far.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class _Accepted(Connection):
    """
    A Twisted TCP connection on a socket accepted by hand (Twisted's own
    server connection wants its listening port).
    """

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", *self.socket.getsockname())

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", *self.socket.getpeername())


def loopback_connection(
    test: SynchronousTestCase, protocol: IProtocol
) -> tuple[Connection, socket.socket, MemoryReactor]:
    """
    A Twisted TCP connection to C{protocol} on 127.0.0.1, connected, on a
    L{MemoryReactor} (which records whether it asked to be watched for
    room); the client's socket, to read what it sent.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        far = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    test.addCleanup(ours.close)
    test.addCleanup(far.close)
    reactor = MemoryReactor()
    connection = _Accepted(ours, protocol, reactor)
    connection.connected = True
    protocol.makeConnection(connection)
    return connection, far, reactor


def _raise(data: bytes) -> None:
    raise RuntimeError("broken transport")


class TurnWriterTests(SynchronousTestCase):
    def test_writes_go_out_at_the_end_of_the_turn(self) -> None:
        """
        What a turn writes on a transport reaches it, in order and at once,
        only when the turn is over; one call does it for every transport.
        """
        clock = Clock()
        writer = TurnWriter(clock)
        first, second = StringTransport(), StringTransport()
        writer.write(first, b"one ")
        writer.write(second, b"other")
        writer.write(first, b"two")
        self.assertEqual((first.value(), second.value()), (b"", b""))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0)
        self.assertEqual((first.value(), second.value()), (b"one two", b"other"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_next_turn(self) -> None:
        """
        Writes after a flush wait for the end of their own turn.
        """
        clock = Clock()
        writer = TurnWriter(clock)
        transport = StringTransport()
        writer.write(transport, b"a")
        clock.advance(0)
        writer.write(transport, b"b")
        self.assertEqual(transport.value(), b"a")
        clock.advance(0)
        self.assertEqual(transport.value(), b"ab")

    def test_discard(self) -> None:
        """
        What waits for a transport whose connection is being aborted is
        dropped; other transports' bytes still go out.
        """
        clock = Clock()
        writer = TurnWriter(clock)
        aborted, other = StringTransport(), StringTransport()
        writer.write(aborted, b"never")
        writer.write(other, b"sent")
        writer.discard(aborted)
        clock.advance(0)
        self.assertEqual((aborted.value(), other.value()), (b"", b"sent"))

    def test_broken_transport(self) -> None:
        """
        A transport whose write raises is logged, and the transports after
        it still get their bytes.
        """
        clock = Clock()
        writer = TurnWriter(clock)
        broken, other = StringTransport(), StringTransport()
        broken.write = _raise  # type: ignore[method-assign]
        writer.write(broken, b"lost")
        writer.write(other, b"sent")
        clock.advance(0)
        self.assertEqual(other.value(), b"sent")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_flush_now(self) -> None:
        """
        L{TurnWriter.flush} sends what waits at once, and the end of the
        turn finds nothing more to do.
        """
        clock = Clock()
        writer = TurnWriter(clock)
        transport = StringTransport()
        writer.write(transport, b"now")
        writer.flush()
        self.assertEqual(transport.value(), b"now")
        self.assertEqual(clock.getDelayedCalls(), [])


class SendTests(SynchronousTestCase):
    def test_straight_to_the_socket(self) -> None:
        """
        On a TCP connection with nothing buffered, the bytes go to the
        socket: the transport buffers nothing and never asks the reactor to
        watch for room.
        """
        pair = _SocketPair(self)
        send(pair.connection, b"hello")
        self.assertEqual(pair.received(), b"hello")
        self.assertEqual(pair.connection.dataBuffer, b"")
        self.assertEqual(pair.reactor.getWriters(), [])

    def test_behind_what_the_transport_holds(self) -> None:
        """
        When the transport still holds bytes, new ones go behind them
        through the transport, never ahead.
        """
        pair = _SocketPair(self)
        pair.connection.write(b"first ")
        send(pair.connection, b"second")
        self.assertEqual(pair.received(), b"")
        pair.connection.doWrite()
        self.assertEqual(pair.received(), b"first second")

    def test_rest_through_the_transport(self) -> None:
        """
        What the socket does not take goes to the transport, which sends
        it once there is room, in order.
        """
        pair = _SocketPair(self)
        data = bytes(range(256)) * 40_000
        send(pair.connection, data)
        self.assertEqual(pair.reactor.getWriters(), [pair.connection])
        received = [pair.received()]
        while pair.reactor.getWriters():
            pair.connection.doWrite()
            received.append(pair.received())
        self.assertEqual(b"".join(received), data)

    def test_broken_connection(self) -> None:
        """
        A send that fails (the other end is gone) hands the bytes to the
        transport, whose own write finds the loss: nothing is raised here.
        """
        pair = _SocketPair(self)
        pair.far.close()
        send(pair.connection, b"lost")
        self.assertIsInstance(pair.connection.doWrite(), Exception)

    def test_tls_started(self) -> None:
        """
        On a connection that started TLS on itself, the bytes go through
        the transport, which encrypts them: never to the socket in clear.
        """
        pair = _SocketPair(self)
        written: list[bytes] = []
        pair.connection.TLS = True
        pair.connection.write = written.append  # type: ignore[method-assign]
        send(pair.connection, b"secret")
        self.assertEqual((written, pair.received()), ([b"secret"], b""))

    def test_other_transports(self) -> None:
        """
        A transport that is not a plain TCP connection gets the bytes
        through its C{write}.
        """
        transport = StringTransport()
        send(transport, b"tls or test")
        self.assertEqual(transport.value(), b"tls or test")

    def test_closing_connection(self) -> None:
        """
        A connection being closed gets no bytes behind the transport's
        back.
        """
        pair = _SocketPair(self)
        pair.connection.disconnecting = True
        send(pair.connection, b"late")
        self.assertEqual(pair.received(), b"")
