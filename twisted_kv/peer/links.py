# -*- test-case-name: tests.test_peer_links -*-
"""
A node's links to its peers: one outbound connection per peer, and a
listener for the peers' inbound connections.

The node layer sees the peer transport only through L{PeerLinks} (an
L{IMessenger}) and the L{IPeerHandler} it supplies::

    handler.peer_message(peer_id, incarnation, message)  # inbound message
    handler.peer_up(peer_id, incarnation)    # outbound link authenticated
    handler.peer_down(peer_id)               # that outbound link lost

and asks L{PeerLinks.hears_from} before a request whose answer it awaits:
answers travel on the peer's own outbound link, which a peer that has just
restarted, or is redialling us, may not have yet.

Each peer's outbound connection is kept up by its own L{ClientService},
which reconnects with jittered exponential backoff (0.05 s growing to 1 s)
on the injected reactor. C{peer_up} fires only once the peer has
authenticated, C{peer_down} as soon as that connection is dropped or lost;
a peer that restarts is therefore seen going down, then up again with its
new incarnation. Connections that fail the handshake count as failed
attempts, so a peer with the wrong secret is retried ever more slowly
(up to the 1 s cap) rather than hammered.

The log tells an outage of a link once, not once per retry: the first
failed attempt logs the peer, its address and the reason ("lost peer n2 at
127.0.0.1:7102 (connection refused); retrying"), a reminder follows every
C{REMINDER_INTERVAL} seconds while it lasts, and one line reports the link
back, with how long it was out.  A peer never reached yet is logged as
unreachable only once it has failed for C{STARTUP_GRACE} seconds.  A
handshake refused for a wrong secret (a node started with another one
retries for ever) is logged once per host a minute, inbound and outbound
alike, the next line counting the refusals in between (L{RefusalLog}).

Inbound connections are independent of outbound ones: a peer reconnecting
to us replaces nothing on our outbound side. Each one delivers the
messages its peer sends, tagged with the incarnation that peer announced.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional

from attrs import evolve
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet import error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_kv.core.config import format_address
from twisted_kv.interfaces import IMessenger, IPeerHandler
from twisted_kv.peer.protocol import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    PeerProtocol,
    PeerSettings,
    RefusalLog,
)
from twisted_kv.sending import TurnWriter
from twisted_kv.tls import NodeTLS, tls_server_factory
from twisted_kv.wire.codec import encode

__all__ = ["PeerLinks", "default_retry_policy"]

_log = Logger(namespace="twisted_kv.peer")

RETRY_INITIAL_DELAY = 0.05
RETRY_MAX_DELAY = 1.0
RETRY_JITTER = 0.1
#: seconds between the log lines recalling a peer still unreachable
REMINDER_INTERVAL = 60.0
#: seconds a peer never reached yet may take to come up before it is logged
#: as unreachable (the nodes of a cluster start at about the same time)
STARTUP_GRACE = 5.0

# What a failed attempt to reach a peer is logged as; the first match wins.
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (error.ConnectionRefusedError, "connection refused"),
    (error.TimeoutError, "timed out"),
    (error.TCPTimedOutError, "timed out"),
    (error.NoRouteError, "no route to host"),
    (error.DNSLookupError, "host name not found"),
    (error.ConnectionDone, "connection closed"),
    (error.ConnectionLost, "connection lost"),
)


def default_retry_policy(
    jitter: Optional[Callable[[], float]] = None,
) -> Callable[[int], float]:
    """
    The reconnection policy of outbound peer links.

    @param jitter: a 0-argument callable returning extra seconds of delay;
        by default uniform in [0, C{RETRY_JITTER}).
    @return: a L{backoffPolicy} starting at C{RETRY_INITIAL_DELAY} and
        capped at C{RETRY_MAX_DELAY} seconds, plus jitter. (Twisted's default
        jitter of up to a whole second would dwarf a 50 ms first retry.)
    """
    if jitter is None:
        uniform = random.random

        def jitter() -> float:
            return uniform() * RETRY_JITTER

    return backoffPolicy(
        initialDelay=RETRY_INITIAL_DELAY, maxDelay=RETRY_MAX_DELAY, jitter=jitter
    )


def _client_endpoint(
    reactor: Any, host: str, port: int, timeout: float
) -> IStreamClientEndpoint:
    """
    The endpoint that dials one peer: plain TCP for an IP address, happy
    eyeballs for a host name.
    """
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


def _reason(failure: Failure) -> str:
    """
    Why an attempt to reach a peer failed, in a few words.
    """
    for kind, reason in _REASONS:
        if failure.check(kind):
            return reason
    return failure.getErrorMessage()


class _PeerClientService(ClientService):
    """
    A L{ClientService} that leaves the reporting to L{_OutboundLink}: its
    own line per retry names an endpoint object rather than the peer.
    """

    _log = Logger(observer=LogPublisher())


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """
    Dials through C{endpoint} and tells C{on_failure} why an attempt
    failed (L{ClientService}'s retry policy only learns how many did).
    """

    def __init__(
        self, endpoint: IStreamClientEndpoint, on_failure: Callable[[str], None]
    ) -> None:
        self._endpoint = endpoint
        self._on_failure = on_failure

    def connect(self, factory: Any) -> Deferred[Any]:
        def failed(failure: Failure) -> Failure:
            if not failure.check(CancelledError):
                self._on_failure(_reason(failure))
            return failure

        return self._endpoint.connect(factory).addErrback(failed)


class _OutboundLink:
    """
    The outbound side of one peer: the authenticated connection, if any,
    the count of handshakes failed in a row, and the outage being logged.

    @ivar protocol: the authenticated outbound connection, or C{None}.
    """

    def __init__(
        self,
        links: PeerLinks,
        peer_id: str,
        address: str,
        policy: Callable[[int], float],
    ) -> None:
        self._links = links
        self.peer_id = peer_id
        self._address = address
        self._policy = policy
        self.protocol: Optional[PeerProtocol] = None
        self._failed_handshakes = 0
        self._ever_connected = False
        # when the link was lost or first failed; None while it is up
        self._down_since: Optional[float] = None
        # when the outage was last logged; None until it is
        self._reported_at: Optional[float] = None

    def attempt_failed(self, reason: str) -> None:
        """
        An attempt to reach the peer failed: log it if it starts an outage,
        or if the last line about it is C{REMINDER_INTERVAL} old.
        """
        if not self._links.running:
            return  # the link is being closed on purpose
        now = self._links._reactor.seconds()
        if self._down_since is None:
            self._down_since = now
        if self._reported_at is None:
            if not self._ever_connected and now - self._down_since < STARTUP_GRACE:
                return
            _log.info(
                "{what} peer {peer} at {address} ({reason}); retrying",
                what="lost" if self._ever_connected else "cannot reach",
                peer=self.peer_id,
                address=self._address,
                reason=reason,
            )
        elif now - self._reported_at >= REMINDER_INTERVAL:
            _log.info(
                "peer {peer} at {address} still unreachable after {elapsed:.0f} s"
                " ({reason}); retrying",
                peer=self.peer_id,
                address=self._address,
                elapsed=now - self._down_since,
                reason=reason,
            )
        else:
            return
        self._reported_at = now

    def retry_delay(self, failed_attempts: int) -> float:
        """
        The L{ClientService} retry policy: L{ClientService} counts refused
        connections, this adds the connections that failed the handshake.
        """
        return self._policy(failed_attempts + self._failed_handshakes)

    def ready(self, protocol: PeerProtocol) -> None:
        after = ""
        if self._reported_at is not None and self._down_since is not None:
            after = f" after {self._links._reactor.seconds() - self._down_since:.0f} s"
        _log.info(
            "{what} peer {peer} at {address}{after} (incarnation {incarnation:x})",
            what="reconnected to" if self._ever_connected else "connected to",
            peer=self.peer_id,
            address=self._address,
            after=after,
            incarnation=protocol.peer_incarnation,
        )
        self._failed_handshakes = 0
        self._ever_connected = True
        self._down_since = self._reported_at = None
        self.protocol = protocol
        self._links._notify("peer_up", self.peer_id, protocol.peer_incarnation)

    def closed(self, protocol: PeerProtocol, was_ready: bool) -> None:
        if not was_ready:
            self._failed_handshakes += 1
            self.attempt_failed("handshake failed")
            return
        if self.protocol is protocol:
            self.protocol = None
            self._down_since = self._links._reactor.seconds()
            self._links._notify("peer_down", self.peer_id)


class _OutboundFactory(Factory):
    """
    Builds the outbound protocol for one peer.
    """

    noisy = False

    def __init__(self, links: PeerLinks, link: _OutboundLink) -> None:
        self._links = links
        self._link = link

    def buildProtocol(self, addr: Optional[IAddress]) -> PeerProtocol:
        return PeerProtocol(
            self._links._settings,
            self._links._reactor,
            expected_peer=self._link.peer_id,
            on_ready=self._link.ready,
            on_closed=self._link.closed,
            refusals=self._links._refusals,
            writer=self._links._writer,
        )


class _InboundFactory(Factory):
    """
    Builds the protocol of each accepted peer connection.
    """

    noisy = False

    def __init__(self, links: PeerLinks) -> None:
        self._links = links

    def buildProtocol(self, addr: Optional[IAddress]) -> Optional[PeerProtocol]:
        links = self._links
        if not links.running:
            return None
        protocol = PeerProtocol(
            links._settings,
            links._reactor,
            deliver=links._handler.peer_message,
            on_ready=links._inbound_ready,
            on_closed=links._inbound_closed,
            refusals=links._refusals,
        )
        links._inbound.add(protocol)
        protocol.when_closed().addCallback(lambda _: links._inbound.discard(protocol))
        return protocol


@implementer(IMessenger)
class PeerLinks(MultiService):
    """
    This node's authenticated links to its peers (an L{IService}).

    @ivar listening_port: the L{IListeningPort} for inbound peer
        connections once the service has started (C{None} before, or when
        there is no C{listen_endpoint}).
    """

    def __init__(
        self,
        *,
        node_id: str,
        incarnation: int,
        cluster_name: str,
        secret: bytes,
        peers: dict[str, tuple[str, int]],
        handler: IPeerHandler,
        reactor: Any,
        listen_endpoint: Optional[str] = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        retry_policy: Optional[Callable[[int], float]] = None,
        tls: Optional[NodeTLS] = None,
    ) -> None:
        """
        @param node_id: this node's id.
        @param incarnation: this node's incarnation, 0 <= incarnation < 2**64;
            a restarted node must use a new one.
        @param cluster_name: the cluster's name.
        @param secret: the cluster secret.
        @param peers: every other node: id -> (host, peer port).
        @param handler: the node, told of messages and of links up and down.
        @param reactor: provides C{IReactorTCP} and C{IReactorTime}; used
            for every connection and every timer.
        @param listen_endpoint: a server endpoint string for inbound peer
            connections (e.g. C{"tcp:7101:interface=127.0.0.1"}), or C{None}
            to accept none.
        @param handshake_timeout: seconds a connection may take to
            authenticate.
        @param keepalive_interval: seconds of sending silence after which a
            keepalive frame is sent.
        @param idle_timeout: seconds of receiving silence after which an
            authenticated connection is dropped.
        @param retry_policy: reconnection delays, as for L{ClientService};
            L{default_retry_policy} by default.
        @param tls: this node's TLS credentials for mutual TLS on every
            link (both ends present a certificate signed by the CA, checked
            before the secret's handshake starts), or C{None} for plain TCP.
        @raise ValueError: C{peers} includes C{node_id}, or a setting is out
            of range.
        """
        super().__init__()
        self._settings = PeerSettings(
            node_id=node_id,
            incarnation=incarnation,
            cluster_name=cluster_name,
            secret=secret,
            peer_ids=frozenset(peers),
            handshake_timeout=handshake_timeout,
            keepalive_interval=keepalive_interval,
            idle_timeout=idle_timeout,
        )
        self._handler = handler
        self._reactor = reactor
        self._tls = tls
        self._listen_endpoint = (
            None
            if listen_endpoint is None
            else serverFromString(reactor, listen_endpoint)
        )
        self.listening_port: Optional[IListeningPort] = None
        self._inbound: set[PeerProtocol] = set()
        # one log line a minute per host refused for a wrong secret
        self._refusals = RefusalLog()
        # one for every outbound connection: their messages of a reactor
        # turn go out at its end, each connection's in one send
        self._writer = TurnWriter(reactor)
        # the authenticated inbound connections of each peer
        self._heard_on: dict[str, set[PeerProtocol]] = {}
        self._outbound: dict[str, _OutboundLink] = {}
        self._policy = default_retry_policy() if retry_policy is None else retry_policy
        self._addresses: dict[str, tuple[str, int]] = {}
        self.set_peers(peers)

    def set_peers(self, peers: dict[str, tuple[str, int]]) -> None:
        """
        Link to C{peers} (id -> (host, peer port)) from now on, as the
        cluster's membership changes: a new peer is dialled, a peer gone
        (or moved) is let go.
        """
        self._settings = evolve(self._settings, peer_ids=frozenset(peers))
        for peer_id, address in list(self._addresses.items()):
            if peers.get(peer_id) != address:
                del self._addresses[peer_id]
                del self._outbound[peer_id]
                self.getServiceNamed(f"peer:{peer_id}").disownServiceParent()
        for peer_id, (host, port) in sorted(peers.items()):
            if peer_id in self._addresses:
                continue
            self._addresses[peer_id] = (host, port)
            link = _OutboundLink(self, peer_id, format_address(host, port), self._policy)
            self._outbound[peer_id] = link
            endpoint = _client_endpoint(self._reactor, host, port, self._settings.handshake_timeout)
            if self._tls is not None:
                endpoint = wrapClientTLS(self._tls.peer_client(host), endpoint)
            service = _PeerClientService(
                _ReportingEndpoint(endpoint, link.attempt_failed),
                _OutboundFactory(self, link),
                retryPolicy=link.retry_delay,
                clock=self._reactor,
            )
            service.setName(f"peer:{peer_id}")
            service.setServiceParent(self)

    # -- the node's API -----------------------------------------------------

    def send(self, peer_id: str, message: Any) -> bool:
        """
        Queue C{message} for C{peer_id} on this node's authenticated
        outbound link.

        Messages to one peer arrive in send order while the link lives.

        @param peer_id: a configured peer's id.
        @param message: any msgpack-encodable value.
        @return: C{True} if queued; C{False} (and the message dropped) if
            there is no authenticated link to that peer right now, or
            C{peer_id} is not a configured peer.
        @raise TypeError: C{message} cannot be encoded (whether or not the
            link is up).
        @raise twisted_kv.peer.protocol.MessageTooLarge: it does not fit in
            one frame.
        """
        # Encode first, so that an unencodable message fails the same way
        # whether or not the link is up.
        payload = encode(message)
        link = self._outbound.get(peer_id)
        if link is None or link.protocol is None:
            return False
        return link.protocol.send_encoded(payload)

    def hears_from(self, peer_id: str) -> bool:
        """
        Whether C{peer_id} has an authenticated link to us, on which its
        answers to our requests would arrive.
        """
        return bool(self._heard_on.get(peer_id))

    def connected(self) -> set[str]:
        """
        @return: the ids of the peers with an authenticated outbound link.
        """
        return {
            peer_id
            for peer_id, link in self._outbound.items()
            if link.protocol is not None
        }

    # -- IService -----------------------------------------------------------

    def startService(self) -> None:
        """
        Listen for inbound peer connections, then start dialling every peer.

        @raise Exception: listening failed at once (e.g. the port is in
            use); nothing has been started then.
        """
        if self._listen_endpoint is not None:
            failed_at_once: list[Failure] = []
            starting = True

            def listen_failed(failure: Failure) -> None:
                if starting:
                    failed_at_once.append(failure)
                else:
                    _log.failure("Cannot listen for peer connections", failure)

            factory: Factory = _InboundFactory(self)
            if self._tls is not None:
                factory = tls_server_factory(self._tls.peer_server, factory, self._reactor)
            listening = self._listen_endpoint.listen(factory)
            listening.addCallbacks(self._listening, listen_failed)
            starting = False
            if failed_at_once:
                failed_at_once[0].raiseException()
        super().startService()

    def _listening(self, port: IListeningPort) -> None:
        self.listening_port = port
        address = port.getHost()
        _log.info(
            "Peer port listening on {host}:{port}",
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, close every peer connection and stop reconnecting.

        @return: a L{Deferred} that fires with C{None} once every connection
            is closed.
        """
        stopping: list[Deferred[Any]] = []
        if self.listening_port is not None:
            stopping.append(maybeDeferred(self.listening_port.stopListening))
            self.listening_port = None
        for protocol in list(self._inbound):
            protocol.transport.loseConnection()
            stopping.append(protocol.when_closed())
        stopping.append(super().stopService())
        done: Deferred[Any] = DeferredList(stopping, consumeErrors=True)
        return done.addCallback(lambda _: None)

    # -- callbacks from the protocols ----------------------------------------

    def _inbound_ready(self, protocol: PeerProtocol) -> None:
        assert protocol.peer_id is not None
        self._heard_on.setdefault(protocol.peer_id, set()).add(protocol)

    def _inbound_closed(self, protocol: PeerProtocol, was_ready: bool) -> None:
        if was_ready and protocol.peer_id is not None:
            self._heard_on.get(protocol.peer_id, set()).discard(protocol)

    def _notify(self, event: str, *args: Any) -> None:
        """
        Call one of the handler's link methods; a failure there is the
        node's bug, logged here so it cannot break the link.
        """
        try:
            getattr(self._handler, event)(*args)
        except Exception:
            _log.failure("Peer link handler {event}{args!r} failed", event=event, args=args)
