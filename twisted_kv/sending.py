# -*- test-case-name: tests.test_sending -*-
"""
The writes of a reactor turn, sent together at its end.

Twisted's TCP transport keeps each write in its buffer and asks the reactor
to watch the socket for room (one C{epoll_ctl}), sends once the reactor
says there is (another pass through its loop), then stops watching (a
second C{epoll_ctl}): for every connection written to in a turn, however
little it carries.  A node's peer links carry many small messages every
turn, in both directions, and those steps cost about a tenth of the CPU of
a replicated write (docs/performance.md).

L{TurnWriter} gathers each connection's writes of a turn and, once the turn
is over, sends them straight to the socket when nothing else waits to go
out on it: most often the socket takes everything, and the transport is
never involved.  What the socket does not take, and everything for a
transport that is not a plain TCP connection (TLS, or a test's), goes to
the transport as before, behind whatever it still holds, so the bytes keep
their order.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from twisted.internet.tcp import Connection
from twisted.logger import Logger

from twisted_kv._compat import nothing_to_send

log = Logger()


class TurnWriter:
    """
    Writes on transports at the end of the reactor turn, one send per
    transport.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        # per transport, what this turn wrote on it, in order
        self._pending: dict[ITransport, list[bytes]] = {}
        self._flush_call: Optional[IDelayedCall] = None

    def write(self, transport: ITransport, data: bytes) -> None:
        """
        Write C{data} on C{transport} once this reactor turn is over, after
        what was written on it through here before.
        """
        chunks = self._pending.get(transport)
        if chunks is None:
            self._pending[transport] = [data]
            if self._flush_call is None:
                self._flush_call = self._clock.callLater(0, self.flush)
        else:
            chunks.append(data)

    def flush(self) -> None:
        """
        Send what waits, now.
        """
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        pending, self._pending = self._pending, {}
        for transport, chunks in pending.items():
            try:
                send(transport, chunks[0] if len(chunks) == 1 else b"".join(chunks))
            except Exception:
                # One broken transport must not keep the others' bytes.
                log.failure("cannot write on {transport}", transport=transport)

    def discard(self, transport: ITransport) -> None:
        """
        Forget what waits for C{transport}: its connection is being
        aborted, and nothing more may go out on it.
        """
        self._pending.pop(transport, None)


def send(transport: ITransport, data: bytes) -> None:
    """
    Write C{data} on C{transport}: straight to the socket of a TCP
    connection whose buffer is empty, for as much as the socket takes;
    through the transport otherwise, and for the rest.  Never straight to
    the socket of a connection that started TLS on itself (C{startTLS}):
    its transport encrypts what it is given.
    """
    if (
        isinstance(transport, Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport.TLS
        and nothing_to_send(transport)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # No room (EAGAIN), or the connection broke: the transport
            # waits for room, or finds out and reports the loss.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
