# -*- test-case-name: tests.test_compat -*-
"""
Tests for L{twisted_kv._compat}: each fails when the library whose private
API a function relies on stops behaving the way its docstring says.
"""

from __future__ import annotations

import socket
from io import BytesIO
from typing import Any, Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols import ftp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http
from twisted.web.test.requesthelper import DummyChannel

from twisted_kv._compat import (
    keep_form_body,
    nothing_to_send,
    parse_request_line,
    pending_request_target,
    raise_listen_errors,
    set_rename_source,
    use_fast_request_line_parser,
    use_timer,
    validate_network_protocol,
)

_FORM = b"application/x-www-form-urlencoded"


class WebTests(SynchronousTestCase):
    """
    The twisted.web internals: L{keep_form_body} and
    L{pending_request_target}.
    """

    def received(self, keep: bool) -> dict[bytes, list[bytes]]:
        """
        The C{args} of a form C{POST} received with or without
        L{keep_form_body}.
        """
        request = http.Request(DummyChannel())
        request.content = BytesIO()
        request.content.write(b"a=1")
        request.requestHeaders.setRawHeaders(b"Content-Type", [_FORM])
        if keep:
            keep_form_body(request)
        request.requestReceived(b"POST", b"/kv/k", b"HTTP/1.1")
        return request.args

    def test_keep_form_body(self) -> None:
        """
        A form body is parsed into C{args}, unless L{keep_form_body} was
        called first.
        """
        self.assertEqual(self.received(keep=False), {b"a": [b"1"]})
        self.assertEqual(self.received(keep=True), {})

    def test_pending_request_target(self) -> None:
        """
        While C{gotLength} runs, the channel tells the request target; a
        channel without it tells C{b""}.
        """
        seen: list[bytes] = []

        class Recording(http.Request):
            def gotLength(self, length: Any) -> None:
                seen.append(pending_request_target(self.channel))
                super().gotLength(length)

        channel = http.HTTPChannel()
        channel.requestFactory = Recording
        channel.makeConnection(StringTransport())
        channel.dataReceived(
            b"PUT /kv/a%2Fb?ttl=5 HTTP/1.1\r\nHost: node\r\nContent-Length: 2\r\n\r\n"
        )
        self.assertEqual(seen, [b"/kv/a%2Fb?ttl=5"])
        self.assertEqual(pending_request_target(object()), b"")


class RequestLineTests(SynchronousTestCase):
    """
    L{parse_request_line} against twisted.web's own parser, and
    L{use_fast_request_line_parser}.
    """

    lines = [
        b"GET /kv/a HTTP/1.1",
        b"PUT /kv/a%2Fb?ttl=5 HTTP/1.0",
        b"M-SEARCH * HTTP/1.1",
        b"G@T /kv/a HTTP/1.1",
        b" /kv/a HTTP/1.1",
        b"GET  HTTP/1.1",
        b"GET /kv/\xb1 HTTP/1.1",
        b"GET /kv/\xb0 HTTP/1.1",
        b"GET /kv/\x7f HTTP/1.1",
        b"GET /kv/a\tb HTTP/1.1",
        b"GET /kv/a HTTP/2.0",
        b"GET /kv/a HTTP/1.1 extra",
        b"GET",
    ]

    def outcome(self, parse: Callable[[bytes], Any], line: bytes) -> Any:
        try:
            return parse(line)
        except ValueError:
            return ValueError

    def test_same_as_twisted(self) -> None:
        """
        Every line is accepted, split or refused as twisted.web's parser does.
        """
        original = http._parseRequestLine
        if original is parse_request_line:
            original = self.twisted_parser()
        for line in self.lines:
            self.assertEqual(
                self.outcome(parse_request_line, line), self.outcome(original, line), line
            )

    def twisted_parser(self) -> Callable[[bytes], Any]:
        """
        twisted.web's own parser, from a fresh copy of its module.
        """
        import importlib.util

        spec = importlib.util.find_spec("twisted.web.http")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parse: Callable[[bytes], Any] = module._parseRequestLine
        return parse

    def test_channel_uses_it(self) -> None:
        """
        Once installed, a channel parses its request lines with it, and
        answers a malformed one C{400}.
        """
        calls: list[bytes] = []

        def recording(line: bytes) -> tuple[bytes, bytes, bytes]:
            calls.append(line)
            return parse_request_line(line)

        self.patch(http, "_parseRequestLine", http._parseRequestLine)
        use_fast_request_line_parser()
        self.assertIs(http._parseRequestLine, parse_request_line)
        self.patch(http, "_parseRequestLine", recording)
        transport = StringTransport()
        channel = http.HTTPChannel()
        channel.makeConnection(transport)
        channel.dataReceived(b"G@T /kv/a HTTP/1.1\r\nHost: node\r\n\r\n")
        self.assertEqual(calls, [b"G@T /kv/a HTTP/1.1"])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())


class _Refusing:
    """
    An endpoint whose C{listen} has already failed.
    """

    def listen(self, factory: Factory) -> Deferred[Any]:
        return fail(CannotListenError("127.0.0.1", 1, OSError("in use")))


class ApplicationTests(SynchronousTestCase):
    """
    L{raise_listen_errors}.
    """

    def test_raise_listen_errors(self) -> None:
        """
        A service told to raise listen errors raises from C{startService}.
        """
        service = StreamServerEndpointService(_Refusing(), Factory())
        raise_listen_errors(service)
        self.assertRaises(CannotListenError, service.startService)


class _Timer:
    """
    txaio's batched-timer interface, recording what is scheduled.
    """

    def __init__(self) -> None:
        self.scheduled: list[tuple[float, Callable[..., Any]]] = []

    def call_later(self, delay: float, function: Callable[..., Any], *args: Any) -> Any:
        self.scheduled.append((delay, function))
        return self

    def cancel(self) -> None:
        pass


class AutobahnTests(SynchronousTestCase):
    """
    L{use_timer}.
    """

    def test_use_timer(self) -> None:
        """
        A protocol of a factory given a timer schedules its opening
        handshake timeout on that timer.
        """
        factory = WebSocketServerFactory()
        factory.protocol = WebSocketServerProtocol
        factory.setProtocolOptions(openHandshakeTimeout=7)
        timer = _Timer()
        use_timer(factory, timer)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertEqual([delay for delay, _ in timer.scheduled], [7])
        protocol.connectionLost(Failure(ConnectionDone()))


class _Shell:
    """
    An FTP shell recording renames.
    """

    def __init__(self) -> None:
        self.renamed: list[tuple[list[str], list[str]]] = []

    def rename(self, source: list[str], target: list[str]) -> Deferred[None]:
        self.renamed.append((source, target))
        return succeed(None)


class FTPTests(SynchronousTestCase):
    """
    L{set_rename_source} and L{validate_network_protocol}.
    """

    def test_set_rename_source(self) -> None:
        """
        Twisted's C{RNTO} renames the source given to L{set_rename_source}.
        """
        protocol = ftp.FTP()
        protocol.shell = shell = _Shell()
        protocol.workingDirectory = ["home"]
        set_rename_source(protocol, "a.txt")
        done = protocol.ftp_RNTO("b.txt")
        self.assertEqual(self.successResultOf(done), (ftp.REQ_FILE_ACTN_COMPLETED_OK,))
        self.assertEqual(shell.renamed, [(["home", "a.txt"], ["home", "b.txt"])])

    def test_validate_network_protocol(self) -> None:
        """
        IPv4 (1) and IPv6 (2) are accepted; another number, or something
        else, is an FTP command error.
        """
        protocol = ftp.FTP()
        validate_network_protocol(protocol, "1")
        validate_network_protocol(protocol, "2")
        for family in ["3", "ip"]:
            self.assertRaises(ftp.FTPCmdError, validate_network_protocol, protocol, family)


class TransportTests(SynchronousTestCase):
    """
    The TCP transport's internals: L{nothing_to_send}.
    """

    def test_nothing_to_send(self) -> None:
        """
        A connection holds bytes to send from a write until they all went
        out, whether the transport moved them to its main buffer or not.
        """
        ours, far = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(far.close)
        connection = Connection(ours, Protocol(), MemoryReactor())
        connection.connected = True
        self.assertTrue(nothing_to_send(connection))
        connection.write(b"waiting")
        self.assertFalse(nothing_to_send(connection))
        connection.SEND_LIMIT = 3
        connection.doWrite()
        self.assertEqual(far.recv(100), b"wai")
        self.assertFalse(nothing_to_send(connection))
        connection.doWrite()
        connection.doWrite()
        self.assertEqual(far.recv(100), b"ting")
        self.assertTrue(nothing_to_send(connection))
