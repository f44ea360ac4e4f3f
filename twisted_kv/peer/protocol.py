# -*- test-case-name: tests.test_peer_protocol -*-
"""
The cluster-internal peer protocol: the peer port serves only peers that
prove knowledge of the cluster secret, and drops anything else (see
docs/peer-protocol.md).

Every node keeps one I{outbound} connection to each peer, on which it sends,
and accepts I{inbound} connections from its peers, on which it receives.
A reply travels on the replier's own outbound link, never back down the
connection the request came in on. Inbound connections carry traffic in
both directions only for the handshake and keepalives.

Framing
=======

Every frame is::

    length: uint32, big-endian   number of bytes that follow (tag + body)
    tag:    uint8                the frame type, below
    body:   length - 1 bytes     msgpack (L{twisted_kv.wire.codec}) or empty

A length prefix above the current limit drops the connection at once,
before any of the frame is buffered. The limit is L{HANDSHAKE_MAX_LENGTH}
(4 KiB) until the peer has authenticated and L{MAX_LENGTH} (64 MiB: a
16 MiB value plus generous overhead) afterwards, so an unauthenticated
client can never make a node buffer more than a few kilobytes.

Frames
======

C{HELLO} (tag 1), sent by both sides as soon as the connection is made::

    [PROTOCOL_VERSION, cluster_name, node_id, incarnation, nonce]

    PROTOCOL_VERSION  int, L{twisted_kv.wire.codec.PROTOCOL_VERSION}
    cluster_name      str, the [cluster] name; must equal ours
    node_id           str, the sender; must be one of our configured peers
                      (on an outbound connection: the very peer we dialled)
    incarnation       int, 0 <= incarnation < 2**64; changes on every restart
    nonce             bytes, 32 fresh bytes from os.urandom, per connection

C{AUTH} (tag 2), sent by each side in answer to the other's C{HELLO}::

    [mac]

    mac = HMAC-SHA256(secret, b"twisted_kv-peer-auth\\0" + peer_nonce
                      + own_nonce + own_node_id (UTF-8)
                      + own_incarnation (8 bytes, big-endian))

Each side checks the other's C{mac} with C{hmac.compare_digest}. Fresh
nonces on both sides defeat replay; the sender's node id and incarnation in
the MAC bind the proof to the identity announced in C{HELLO} and defeat
reflection (a node never accepts its own id, nor its own nonce, back). The
secret itself never crosses the wire.

C{MESSAGE} (tag 3), only after authentication, only from the connecting
side to the accepting side: the body is one msgpack-encoded application
message, handed to C{peer_message(peer_id, incarnation, message)}.

C{KEEPALIVE} (tag 4), only after authentication, both directions, empty
body: sent every C{keepalive_interval} (1 s) when nothing else was sent
in that interval.

Conversation
============

::

    connector (outbound)                 acceptor (inbound)
      HELLO  ------------------------->
             <-------------------------  HELLO
      AUTH   ------------------------->            (answers acceptor's HELLO)
             <-------------------------  AUTH      (answers connector's HELLO)
      MESSAGE / KEEPALIVE  ----------->
             <-------------------------  KEEPALIVE

Both C{HELLO}s cross in flight; each side answers the C{HELLO} it receives
with its C{AUTH}, and is authenticated once it has verified the other's
C{AUTH}. The connector's messages follow its C{AUTH} on the same stream, so
they always arrive after the acceptor has authenticated it.

Dropping
========

The connection (and only that connection) is aborted, with one log line
and no traceback, on: a length prefix above the limit; an empty frame; an
unknown tag; a body that does not decode; a malformed C{HELLO} or C{AUTH};
a wrong protocol version, cluster name or secret; an unknown, unexpected or
own node id; a reflected nonce; any frame out of order (C{MESSAGE} or
C{KEEPALIVE} before authentication, C{AUTH} before C{HELLO}, a second
C{HELLO}, a C{MESSAGE} sent to the connecting side); no authentication
within C{handshake_timeout} (5 s) of connecting; nothing at all received
for C{idle_timeout} (5 s) once authenticated. Nothing from a connection
reaches the node before that connection has authenticated, and nothing
after it has been dropped.

This authenticates peers; by itself it does not encrypt or sign the frames
that follow.  With the cluster's C{[tls]} section every peer connection is
mutual TLS first (L{twisted_kv.peer.links}): this protocol then sees only
the bytes of a peer whose certificate the CA signed, and a failed TLS
handshake is one more reason to drop the connection, logged as the others.
"""

from __future__ import annotations

import hmac
import os
import struct
from hashlib import sha256
from typing import Any, Callable, Optional

from attrs import define, field, frozen, validators
from OpenSSL.SSL import Error as TLSError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from twisted_kv.sending import TurnWriter
from twisted_kv.wire.codec import PROTOCOL_VERSION, DecodeError, decode, encode

__all__ = [
    "AUTH_LABEL",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "HANDSHAKE_MAX_LENGTH",
    "MAX_LENGTH",
    "NONCE_LENGTH",
    "REFUSAL_LOG_INTERVAL",
    "TAG_AUTH",
    "TAG_HELLO",
    "TAG_KEEPALIVE",
    "TAG_MESSAGE",
    "MessageTooLarge",
    "PeerProtocol",
    "PeerSettings",
    "RefusalLog",
    "auth_mac",
    "frame",
]

_log = Logger(namespace="twisted_kv.peer")

MAX_LENGTH = 64 * 1024 * 1024
"""Largest frame (tag and body) accepted from an authenticated peer."""

HANDSHAKE_MAX_LENGTH = 4096
"""Largest frame accepted before the peer has authenticated."""

NONCE_LENGTH = 32
AUTH_LABEL = b"twisted_kv-peer-auth\0"

DEFAULT_HANDSHAKE_TIMEOUT = 5.0
DEFAULT_KEEPALIVE_INTERVAL = 1.0
DEFAULT_IDLE_TIMEOUT = 5.0

REFUSAL_LOG_INTERVAL = 60.0
"""Seconds between two log lines about handshakes refused for a wrong
secret with one host (see L{RefusalLog})."""

_WRONG_SECRET = "bad AUTH (wrong cluster secret?)"

TAG_HELLO = 1
TAG_AUTH = 2
TAG_MESSAGE = 3
TAG_KEEPALIVE = 4

_TAG_NAMES = {
    TAG_HELLO: "HELLO",
    TAG_AUTH: "AUTH",
    TAG_MESSAGE: "MESSAGE",
    TAG_KEEPALIVE: "KEEPALIVE",
}

_LENGTH = struct.Struct(">I")
_HEADER = struct.Struct(">IB")
_INCARNATION = struct.Struct(">Q")
_KEEPALIVE_FRAME = _HEADER.pack(1, TAG_KEEPALIVE)

# Frames (tag and payload) up to this size are sent as one concatenated
# write, larger ones with writeSequence: for small payloads the copy costs
# less than the transport's extra list handling, for large ones the copy
# dominates. The two break even near 4 KiB (bench/peer_codec.py).
_CONCATENATE_MAX = 4096


class MessageTooLarge(ValueError):
    """
    An encoded message does not fit in one frame of L{MAX_LENGTH} bytes.
    """


def frame(tag: int, body: bytes = b"") -> bytes:
    """
    Build one complete frame.

    @param tag: one of the C{TAG_*} constants.
    @param body: the encoded body.
    @return: length prefix, tag and body.
    """
    return _HEADER.pack(len(body) + 1, tag) + body


def auth_mac(
    secret: bytes,
    peer_nonce: bytes,
    own_nonce: bytes,
    own_node_id: str,
    own_incarnation: int,
) -> bytes:
    """
    The proof one side sends in its C{AUTH} frame.

    @param secret: the cluster secret.
    @param peer_nonce: the nonce from the other side's C{HELLO}.
    @param own_nonce: the nonce from the sender's own C{HELLO}.
    @param own_node_id: the sender's node id.
    @param own_incarnation: the sender's incarnation.
    @return: 32 bytes of HMAC-SHA256.
    """
    return hmac.new(
        secret,
        AUTH_LABEL
        + peer_nonce
        + own_nonce
        + own_node_id.encode("utf-8")
        + _INCARNATION.pack(own_incarnation),
        sha256,
    ).digest()


def _positive(instance: object, attribute: Any, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _incarnation_range(instance: object, attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not 0 <= value < 2**64:
        raise ValueError(f"incarnation must be in [0, 2**64), not {value!r}")


def _non_empty(instance: object, attribute: Any, value: bytes) -> None:
    if not value:
        raise ValueError("the cluster secret must not be empty")


@frozen
class PeerSettings:
    """
    What one node needs to know to speak the peer protocol.

    @ivar node_id: this node's id.
    @ivar incarnation: this node's incarnation (changes on every restart).
    @ivar cluster_name: the cluster's name; peers must announce the same.
    @ivar secret: the cluster secret (never logged, never sent).
    @ivar peer_ids: the ids of every other node of the cluster.
    @ivar handshake_timeout: seconds a connection may take to authenticate.
    @ivar keepalive_interval: seconds of silence after which a keepalive
        frame is sent on an authenticated connection.
    @ivar idle_timeout: seconds without receiving anything after which an
        authenticated connection is dropped; above C{keepalive_interval}.
    """

    node_id: str = field(validator=validators.instance_of(str))
    incarnation: int = field(
        validator=[validators.instance_of(int), _incarnation_range]
    )
    cluster_name: str = field(validator=validators.instance_of(str))
    secret: bytes = field(
        repr=False, validator=[validators.instance_of(bytes), _non_empty]
    )
    peer_ids: frozenset[str] = field(converter=frozenset)
    handshake_timeout: float = field(
        default=DEFAULT_HANDSHAKE_TIMEOUT, validator=_positive
    )
    keepalive_interval: float = field(
        default=DEFAULT_KEEPALIVE_INTERVAL, validator=_positive
    )
    idle_timeout: float = field(default=DEFAULT_IDLE_TIMEOUT, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.node_id in self.peer_ids:
            raise ValueError(f"peer ids must not include this node ({self.node_id})")
        if self.idle_timeout <= self.keepalive_interval:
            raise ValueError("idle_timeout must be longer than keepalive_interval")


@define
class _Refusals:
    """
    The wrong-secret refusals of one host since they were last logged.
    """

    logged_at: float
    since: int = 0


class RefusalLog:
    """
    Decides which handshakes refused for a wrong secret get a log line: a
    node started with another secret retries for ever, so its refusals
    are logged once per host every C{interval} seconds, the next line
    saying how many were refused meanwhile, rather than once per attempt.

    @ivar interval: seconds between two lines about one host.
    @ivar limit: hosts remembered at most, the ones logged longest ago
        forgotten first.
    """

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL, limit: int = 1024) -> None:
        self.interval = interval
        self.limit = limit
        self._refusals: dict[str, _Refusals] = {}

    def refused(self, host: str, now: float) -> Optional[int]:
        """
        Note a handshake with C{host} refused for a wrong secret at C{now}.

        @return: C{None} to stay quiet, else how many refusals of that
            host went unlogged since the last line.
        """
        refusals = self._refusals.get(host)
        if refusals is not None and now - refusals.logged_at < self.interval:
            refusals.since += 1
            return None
        self._refusals.pop(host, None)
        self._refusals[host] = _Refusals(now)
        while len(self._refusals) > self.limit:
            del self._refusals[next(iter(self._refusals))]
        return 0 if refusals is None else refusals.since


class _ProtocolViolation(Exception):
    """
    The peer broke the protocol; the message says how (for the log).
    """


def _short(value: object) -> str:
    """
    A bounded repr of a value a remote peer chose, for log lines.
    """
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Connection states (phases of one connection's life).
_AWAITING_HELLO = "awaiting HELLO"
_AWAITING_AUTH = "awaiting AUTH"
_READY = "authenticated"
_CLOSED = "closed"


def _tls_reason(error: TLSError) -> str:
    """
    OpenSSL's reasons for a failed handshake, in words (its error queue is
    a list of (library, function, reason) tuples).
    """
    reasons = [entry[-1] for entry in error.args[0] if isinstance(entry, tuple)] if error.args else []
    return "; ".join(reason for reason in reasons if reason) or str(error)


class PeerProtocol(Int32StringReceiver):
    """
    One peer connection, either direction: handshake, framing, keepalives.

    It is a thin adapter: it turns frames into calls on the callables it was
    built with and makes no decision beyond the protocol rules above.

    The framing is L{Int32StringReceiver}'s (same prefix, L{MAX_LENGTH},
    L{lengthLimitExceeded}), but L{dataReceived} is reimplemented: the
    inherited one re-concatenates everything buffered on every read, which
    costs quadratic time for a 16 MiB frame arriving in 64 KiB reads. This
    one keeps the reads in a list, joins them once the frame is complete,
    and hands each frame over as a C{memoryview}, without copying it.

    @ivar peer_id: the node id the peer's HELLO announced (C{None} before
        it); proven only once L{authenticated} is true.
    @ivar peer_incarnation: the incarnation the peer's HELLO announced.
    @ivar outbound: C{True} on the connecting side.
    """

    MAX_LENGTH = MAX_LENGTH

    def __init__(
        self,
        settings: PeerSettings,
        clock: IReactorTime,
        *,
        expected_peer: Optional[str] = None,
        deliver: Optional[Callable[[str, int, Any], None]] = None,
        on_ready: Optional[Callable[[PeerProtocol], None]] = None,
        on_closed: Optional[Callable[[PeerProtocol, bool], None]] = None,
        nonce: Optional[bytes] = None,
        refusals: Optional[RefusalLog] = None,
        writer: Optional[TurnWriter] = None,
    ) -> None:
        """
        @param settings: this node's identity, secret and timeouts.
        @param clock: schedules the timeouts and keepalives.
        @param expected_peer: on an outbound connection, the id of the peer
            dialled; C{None} makes this the accepting side.
        @param deliver: on the accepting side, called with
            C{(peer_id, incarnation, message)} for each C{MESSAGE}.
        @param on_ready: called with this protocol once the peer has
            authenticated.
        @param on_closed: called once with this protocol and whether it had
            authenticated, when the connection is dropped or lost.
        @param nonce: this side's C{HELLO} nonce (tests); by default 32
            bytes from C{os.urandom}.
        @param refusals: decides whether a handshake refused for a wrong
            secret is logged, shared by the connections of a node; by
            default every one is.
        @param writer: sends the messages of a reactor turn together at
            its end, shared by the connections of a node; by default each
            message is written on the transport at once.
        """
        self._settings = settings
        self._writer = writer
        self._clock = clock
        self._expected_peer = expected_peer
        self._deliver = deliver
        self._on_ready = on_ready
        self._on_closed = on_closed
        self._refusals = RefusalLog(interval=0) if refusals is None else refusals
        self._nonce = os.urandom(NONCE_LENGTH) if nonce is None else nonce
        if len(self._nonce) != NONCE_LENGTH:
            raise ValueError(f"nonce must be {NONCE_LENGTH} bytes")
        self.outbound = expected_peer is not None
        if not self.outbound and deliver is None:
            raise ValueError("the accepting side needs a deliver callable")
        self.peer_id: Optional[str] = None
        self.peer_incarnation: Optional[int] = None
        self._peer_nonce = b""
        self._state = _AWAITING_HELLO
        self._max_frame = HANDSHAKE_MAX_LENGTH
        # Receive buffer: the reads not parsed yet, their total length, and
        # how many bytes must be buffered before parsing can progress.
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = _LENGTH.size
        self._last_received = 0.0
        self._sent = False
        self._handshake_timer: Optional[IDelayedCall] = None
        self._keepalive_timer: Optional[IDelayedCall] = None
        self._idle_timer: Optional[IDelayedCall] = None
        self._lost = False
        self._lost_waiters: list[Deferred[None]] = []

    # -- public API ---------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        """
        C{True} from authentication until the connection is dropped or lost.
        """
        return self._state is _READY

    def send(self, message: Any) -> bool:
        """
        Send one application message (on an outbound connection).

        @param message: any msgpack-encodable value.
        @return: C{True} if queued on the transport, C{False} if this
            connection is not (or no longer) authenticated.
        @raise TypeError: C{message} cannot be encoded.
        @raise MessageTooLarge: the encoded message exceeds the frame limit.
        """
        return self.send_encoded(encode(message))

    def send_encoded(self, payload: bytes) -> bool:
        """
        Send one application message already encoded with
        L{twisted_kv.wire.codec.encode}.

        @param payload: the encoded message.
        @return: as for L{send}.
        @raise MessageTooLarge: C{payload} exceeds the frame limit.
        @raise RuntimeError: this is the accepting side of a connection.
        """
        if self._state is not _READY:
            return False
        if not self.outbound:
            raise RuntimeError("messages are only sent on outbound connections")
        size = len(payload) + 1
        if size > self.MAX_LENGTH:
            raise MessageTooLarge(
                f"encoded message of {size} bytes exceeds {self.MAX_LENGTH}"
            )
        if self._writer is not None:
            self._writer.write(self.transport, _HEADER.pack(size, TAG_MESSAGE))
            self._writer.write(self.transport, payload)
        elif size <= _CONCATENATE_MAX:
            self.transport.write(_HEADER.pack(size, TAG_MESSAGE) + payload)
        else:
            self.transport.writeSequence((_HEADER.pack(size, TAG_MESSAGE), payload))
        self._sent = True
        return True

    def when_closed(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires with C{None} once the connection
            has been lost (at once if it already has); it never fails.
        """
        if self._lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    def drop(self, why: str) -> None:
        """
        Abort this connection, logging one line.

        @param why: the reason, for the log.
        """
        if self._state is _CLOSED:
            return
        self._log_drop(why)
        self._close()
        if self._writer is not None:
            self._writer.discard(self.transport)
        self.transport.abortConnection()

    # -- Twisted protocol interface ------------------------------------------

    def connectionMade(self) -> None:
        tcp = ITCPTransport(self.transport, None)
        if tcp is not None:
            # Writes are already coalesced per reactor turn; Nagle would only
            # add delayed-ACK stalls to request/reply traffic.
            tcp.setTcpNoDelay(True)
        self._last_received = self._clock.seconds()
        s = self._settings
        self.transport.write(
            frame(
                TAG_HELLO,
                encode(
                    [PROTOCOL_VERSION, s.cluster_name, s.node_id, s.incarnation, self._nonce]
                ),
            )
        )
        self._handshake_timer = self._clock.callLater(
            s.handshake_timeout, self._handshake_timed_out
        )

    def dataReceived(self, data: bytes) -> None:
        if self._state is _CLOSED:
            return
        self._last_received = self._clock.seconds()
        chunks = self._chunks
        chunks.append(data)
        self._have += len(data)
        if self._have < self._need:
            return
        buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        view = memoryview(buf)
        end = len(buf)
        offset = 0
        need = _LENGTH.size
        unpack_from = _LENGTH.unpack_from
        while end - offset >= 4:
            (length,) = unpack_from(buf, offset)
            if length > self._max_frame:
                self.lengthLimitExceeded(length)
                return
            frame_end = offset + 4 + length
            if frame_end > end:
                need = 4 + length
                break
            self.stringReceived(view[offset + 4 : frame_end])
            offset = frame_end
            if self._state is _CLOSED:
                return
        if offset < end:
            rest = buf[offset:] if offset else buf
            self._chunks = [rest]
            self._have = len(rest)
        else:
            self._chunks = []
            self._have = 0
        self._need = need

    def lengthLimitExceeded(self, length: int) -> None:
        self._chunks = []
        self._have = 0
        self.drop(f"frame of {length} bytes exceeds the limit of {self._max_frame}")

    def stringReceived(self, string: memoryview) -> None:  # type: ignore[override]
        if not string:
            self.drop("empty frame")
            return
        tag = string[0]
        if tag == TAG_MESSAGE and self._state is _READY and not self.outbound:
            # The hot path: an application message from an authenticated peer.
            try:
                message = decode(string[1:])
            except DecodeError as e:
                self.drop(str(e))
                return
            try:
                self._deliver(self.peer_id, self.peer_incarnation, message)  # type: ignore[misc, arg-type]
            except Exception:
                _log.failure(
                    "Handling a message from peer {peer} failed", peer=self.peer_id
                )
            return
        handler = _TRANSITIONS[self._state].get(tag)
        if handler is None:
            self.drop(
                f"unexpected {_TAG_NAMES.get(tag, f'frame type {tag}')} frame"
                + (" on an outbound connection" if self.outbound else "")
            )
            return
        try:
            handler(self, string[1:])
        except _ProtocolViolation as e:
            self.drop(str(e))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(TLSError) and self._state is not _CLOSED:
            self._log_drop(f"TLS handshake failed: {_tls_reason(reason.value)}")
        self._close()
        self._lost = True
        self._chunks = []
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- frame handlers (inputs) ---------------------------------------------

    def _got_hello(self, body: memoryview) -> None:
        hello = self._decode_handshake(body, "HELLO")
        if not isinstance(hello, list) or not hello:
            raise _ProtocolViolation("malformed HELLO")
        if not _is_int(hello[0]) or hello[0] != PROTOCOL_VERSION:
            raise _ProtocolViolation(
                f"unsupported protocol version {_short(hello[0])}"
                f" (this node speaks {PROTOCOL_VERSION})"
            )
        if len(hello) != 5:
            raise _ProtocolViolation("malformed HELLO")
        _, cluster_name, node_id, incarnation, nonce = hello
        if not (
            isinstance(cluster_name, str)
            and isinstance(node_id, str)
            and _is_int(incarnation)
            and 0 <= incarnation < 2**64
            and isinstance(nonce, bytes)
            and len(nonce) == NONCE_LENGTH
        ):
            raise _ProtocolViolation("malformed HELLO")
        s = self._settings
        if cluster_name != s.cluster_name:
            raise _ProtocolViolation(f"wrong cluster name {_short(cluster_name)}")
        if node_id == s.node_id:
            raise _ProtocolViolation("peer claims this node's own id")
        if node_id not in s.peer_ids:
            raise _ProtocolViolation(f"unknown node id {_short(node_id)}")
        if self.outbound and node_id != self._expected_peer:
            raise _ProtocolViolation(
                f"dialled {self._expected_peer} but {_short(node_id)} answered"
            )
        if hmac.compare_digest(nonce, self._nonce):
            raise _ProtocolViolation("peer reflected this node's nonce")
        self.peer_id = node_id
        self.peer_incarnation = incarnation
        self._peer_nonce = nonce
        self._state = _AWAITING_AUTH
        self.transport.write(
            frame(
                TAG_AUTH,
                encode(
                    [auth_mac(s.secret, nonce, self._nonce, s.node_id, s.incarnation)]
                ),
            )
        )

    def _got_auth(self, body: memoryview) -> None:
        auth = self._decode_handshake(body, "AUTH")
        if not (
            isinstance(auth, list)
            and len(auth) == 1
            and isinstance(auth[0], bytes)
            and len(auth[0]) == sha256().digest_size
        ):
            raise _ProtocolViolation("malformed AUTH")
        expected = auth_mac(
            self._settings.secret,
            self._nonce,
            self._peer_nonce,
            self.peer_id,  # type: ignore[arg-type]
            self.peer_incarnation,  # type: ignore[arg-type]
        )
        if not hmac.compare_digest(auth[0], expected):
            raise _ProtocolViolation(_WRONG_SECRET)
        self._authenticated()

    def _got_keepalive(self, body: memoryview) -> None:
        if body:
            raise _ProtocolViolation("KEEPALIVE frame with a body")

    # -- actions and timers --------------------------------------------------

    def _decode_handshake(self, body: memoryview, what: str) -> Any:
        try:
            return decode(body)
        except DecodeError as e:
            raise _ProtocolViolation(f"{what}: {e}") from None

    def _authenticated(self) -> None:
        s = self._settings
        self._state = _READY
        self._max_frame = self.MAX_LENGTH
        self._peer_nonce = b""
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self._keepalive_timer = self._clock.callLater(
            s.keepalive_interval, self._keepalive_due
        )
        self._idle_timer = self._clock.callLater(s.idle_timeout, self._idle_check)
        # The owner reports the link (PeerLinks logs outbound links coming
        # and going); a line per connection here would repeat it.
        if self._on_ready is not None:
            self._on_ready(self)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        self.drop(
            f"no authentication within {self._settings.handshake_timeout} seconds"
        )

    def _keepalive_due(self) -> None:
        if not self._sent:
            self.transport.write(_KEEPALIVE_FRAME)
        self._sent = False
        self._keepalive_timer = self._clock.callLater(
            self._settings.keepalive_interval, self._keepalive_due
        )

    def _idle_check(self) -> None:
        timeout = self._settings.idle_timeout
        silent = self._clock.seconds() - self._last_received
        if silent >= timeout:
            self._idle_timer = None
            self.drop(f"nothing received for {timeout} seconds")
            return
        self._idle_timer = self._clock.callLater(timeout - silent, self._idle_check)

    def _close(self) -> None:
        """
        Enter the closed state once: stop the timers and tell the owner.
        """
        if self._state is _CLOSED:
            return
        was_ready = self._state is _READY
        self._state = _CLOSED
        for timer in (self._handshake_timer, self._keepalive_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._handshake_timer = self._keepalive_timer = self._idle_timer = None
        if self._on_closed is not None:
            self._on_closed(self, was_ready)

    def _log_drop(self, why: str) -> None:
        """
        Log that this connection is dropped for C{why}: a refusal for a
        wrong secret as L{RefusalLog} decides, anything else always.
        """
        note = ""
        if why == _WRONG_SECRET:
            address = self.transport.getPeer() if self.transport is not None else None
            host = str(getattr(address, "host", ""))
            unlogged = self._refusals.refused(host, self._clock.seconds())
            if unlogged is None:
                return
            if unlogged:
                note = f"; {unlogged} more refused from this host since the last such line"
            elif self._refusals.interval > 0:
                note = f"; more from this host are logged once every {self._refusals.interval:g} s"
        _log.warn(
            "Dropped {direction} peer connection {peer} ({state}): {why}{note}",
            direction="outbound" if self.outbound else "inbound",
            peer=self._describe_peer(),
            state=self._state,
            why=why,
            note=note,
        )

    def _describe_peer(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else None
        where = (
            f"{address.host}:{address.port}"
            if hasattr(address, "host") and hasattr(address, "port")
            else str(address)
        )
        if self._state is _READY:
            return f"{self.peer_id!r} at {where}"
        if self._expected_peer is not None:
            return f"to {self._expected_peer!r} at {where}"
        if self.peer_id is not None:
            return f"from {where} claiming to be {self.peer_id!r}"
        return f"from {where}"


# The transition table: for each state, which frame types are accepted and
# what handles them. Any other frame type in that state drops the
# connection. (The accepting side's MESSAGE frames take a fast path in
# stringReceived.)
_TRANSITIONS: dict[str, dict[int, Callable[[PeerProtocol, memoryview], None]]] = {
    _AWAITING_HELLO: {TAG_HELLO: PeerProtocol._got_hello},
    _AWAITING_AUTH: {TAG_AUTH: PeerProtocol._got_auth},
    _READY: {TAG_KEEPALIVE: PeerProtocol._got_keepalive},
    _CLOSED: {},
}
