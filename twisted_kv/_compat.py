# -*- test-case-name: tests.test_compat -*-
"""
Every use twisted_kv makes of another library's private API, one small
function each.

Twisted, Autobahn and the rest may change a private name in any release
without a deprecation period.  Keeping each such use here, with what it
relies on said in its docstring and a test in L{tests.test_compat} that
fails when the library stops behaving that way, makes an upgrade that
breaks one of them fail loudly in one place rather than quietly somewhere
in a front end.  Nothing else in the package reaches into another library's
underscored names.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.tcp import Connection
    from twisted.protocols.ftp import FTP
    from twisted.web.http import Request


def keep_form_body(request: Request) -> None:
    """
    Stop twisted.web from parsing the body of C{request} as a form.

    A C{/kv} value posted with a form content type is a value like any
    other: it must be neither parsed into C{request.args} nor read before
    the resource asks for it.  The decision is made per request, once its
    target is known (see L{pending_request_target}), which the public
    C{parsePOSTFormSubmission} argument of C{Site} cannot do.

    Relies on C{twisted.web.http.Request._parsePOSTFormSubmission}, which
    C{requestReceived} reads to decide whether to parse a C{POST} body of
    type C{application/x-www-form-urlencoded} or C{multipart/form-data}.
    """
    request._parsePOSTFormSubmission = False


def pending_request_target(channel: object) -> bytes:
    """
    The request target (path and query) of the request whose headers
    C{channel} has just read, before its body is in; C{b""} when the
    channel does not tell it.

    No public API tells a request its target before C{requestReceived};
    C{gotLength} needs it to bound the body of C{/kv} writes while it is
    being received.

    Relies on C{twisted.web.http.HTTPChannel._path}, set from the request
    line and kept until the whole body is in.  Other channels (HTTP/2) lack
    it.
    """
    target: bytes = getattr(channel, "_path", b"")
    return target


def raise_listen_errors(service: StreamServerEndpointService) -> None:
    """
    Make C{service.startService} raise when its endpoint fails to listen
    synchronously (port in use, bad interface), so that C{twistd} stops
    with the error instead of running a node that listens nowhere.

    Relies on C{StreamServerEndpointService._raiseSynchronously}, which
    makes C{startService} raise a failure of C{endpoint.listen} that has
    already happened, rather than only log it.
    """
    service._raiseSynchronously = True


def use_timer(factory: Any, timer: Any) -> None:
    """
    Make the WebSocket protocols of C{factory} schedule their timeouts
    (opening and closing handshakes, pings) through C{timer}, which has
    txaio's C{call_later(delay, function, *args, **kwargs)} returning
    something with C{cancel()}.

    Autobahn's factories take a C{reactor}, but their protocols schedule
    timeouts on txaio's batched timer, built on the global reactor; this is
    the one way to put them on an injected clock.

    Relies on Autobahn's C{WebSocketServerFactory._batched_timer} and
    C{WebSocketClientFactory._batched_timer}, through which the protocols
    call C{self.factory._batched_timer.call_later}.
    """
    factory._batched_timer = timer


def set_rename_source(protocol: FTP, name: str) -> None:
    """
    Tell C{protocol} that C{RNFR} named C{name}, so that Twisted's
    C{ftp_RNTO} renames it.

    Our C{ftp_RNFR} checks that the source exists before it answers C{350}
    (Twisted's answers C{350} for any name), so it replaces Twisted's and
    must leave the name where Twisted's C{ftp_RNTO} looks for it.

    Relies on C{twisted.protocols.ftp.FTP._fromName}, which C{ftp_RNTO}
    reads (and deletes) as the source of the rename.
    """
    protocol._fromName = name


def validate_network_protocol(protocol: FTP, family: str) -> None:
    """
    Check the network protocol (address family number, RFC 2428) of an
    C{EPSV} or C{EPRT} command as Twisted's own commands do.

    @raise twisted.protocols.ftp.FTPCmdError: it is not a number, or not
        one the server supports.

    Relies on C{twisted.protocols.ftp.FTP._validateNetworkProtocol}.
    """
    protocol._validateNetworkProtocol(family)


# RFC 9110's token (a method), and the request-target twisted.web accepts:
# bytes 33 to 176, none of them whitespace.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(rb"[\x21-\xb0]+\Z")
_METHODS = frozenset((b"GET", b"PUT", b"POST", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"))


def parse_request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """
    twisted.web's C{_parseRequestLine}, the same checks with the same
    outcome, without a Python loop over every byte: the common methods are
    looked up, the rest and the target matched by a regular expression.
    Twisted's loops cost 10-13 % of an entry node's CPU under PyPy.

    @raise ValueError: the line is malformed.
    """
    method, request, version = line.split(b" ")
    if method not in _METHODS and _TOKEN.match(method) is None:
        raise ValueError("Invalid method")
    if request == b"":
        raise ValueError("Empty request-target")
    if _TARGET.match(request) is None:
        raise ValueError("Invalid request-target")
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise ValueError("Invalid version")
    return method, request, version


def use_fast_request_line_parser() -> None:
    """
    Make twisted.web's HTTP/1 channels parse request lines with
    L{parse_request_line}.

    Relies on C{twisted.web.http.HTTPChannel.lineReceived} calling the
    module's C{_parseRequestLine} for the first line of each request, and
    answering C{400} when it raises C{ValueError}.
    """
    from twisted.web import http

    http._parseRequestLine = parse_request_line


def nothing_to_send(connection: Connection) -> bool:
    """
    Whether the TCP connection C{connection} holds no bytes still to be
    sent: what is written next may go straight to its socket without
    overtaking any (see L{twisted_kv.sending.send}).

    Relies on C{twisted.internet.abstract.FileDescriptor} keeping what it
    has yet to send in C{dataBuffer} (from C{offset}, emptied once all of it
    went out) and C{_tempDataBuffer} (writes not yet moved to it).
    """
    return not connection.dataBuffer and not connection._tempDataBuffer
