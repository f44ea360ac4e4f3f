# -*- test-case-name: tests.test_codec -*-
"""
Micro-benchmarks of the peer transport's hot paths. Prints figures only.

    python bench/peer_codec.py            # everything, about 20 seconds
    python bench/peer_codec.py --quick    # fewer rounds

Sections:

  codec     encode + decode of typical peer messages: msgpack (its C
            extension, or its pure-Python fallback on PyPy) against
            twisted_kv.wire._purepack, which codec uses on PyPy
  frames    PeerProtocol.send into a Twisted write buffer, then parsing and
            delivery by a receiving PeerProtocol (no sockets)
  write     one concatenated write vs writeSequence([header, payload])
            through Twisted's FileDescriptor buffering, by payload size
  reassembly  one 16 MiB frame arriving in 64 KiB reads: the stock
            Int32StringReceiver vs PeerProtocol's reassembly
  loopback  two PeerLinks over real loopback TCP, messages/s end to end
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack  # noqa: E402
from twisted.internet.abstract import FileDescriptor  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.protocols.basic import Int32StringReceiver  # noqa: E402

from twisted_kv.peer.protocol import (  # noqa: E402
    TAG_AUTH,
    TAG_HELLO,
    PeerProtocol,
    PeerSettings,
    auth_mac,
    frame,
)
from twisted_kv.wire import _purepack, codec  # noqa: E402
from twisted_kv.wire.codec import PROTOCOL_VERSION, decode, encode  # noqa: E402

MESSAGE = [7, "p12", 5, 1234, [[1234, "kuser:1", b"x" * 100, "application/octet-stream", None]]]

_VERSION = (3 << 40) | 81_234
_CHANGE = [0, "kuser:81234", _VERSION, b"x" * 100, "application/octet-stream", None, True]
_CHANGES = encode([_CHANGE] * 8)
_REVISION = (2 << 32) | 40_000

TYPICAL = {
    # A primary replicating one write, then a batch of eight.
    "app, 1 entry": ["app", 12, 3, 81_233, 3, [[3, 81_234, "n1/5f/77", _CHANGE]], 81_233, 912],
    "app, 8 entries": [
        "app", 12, 3, 81_226, 3, [[3, 81_227, "n1/5f/77", _CHANGE]] * 8, 81_226, 913,
    ],
    "app_ok": ["app_ok", 12, 3, 81_234, 912],
    # A client PUT forwarded to its primary, and the answer.
    "op": ["op", 4_711, 12, [0, "kuser:81234", b"x" * 100, "application/octet-stream",
                             None, None, False, False], "n2/61/4711"],
    "res": ["res", 4_711, "ok", _CHANGE],
    # Eight changes, encoded once by their primary and carried as bytes.
    "pub": ["pub", 301, 8, _CHANGES],
    "ev": ["ev", _REVISION, _CHANGES, _REVISION - 1],
    "ev's changes": [_CHANGE] * 8,
}


def best_rate(run: Callable[[], None], count: int, repeat: int) -> float:
    """
    The best of C{repeat} timings of C{run}, as C{count} operations per
    second.
    """
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return count / best


def fmt(rate: float) -> str:
    return f"{rate:>14,.0f}"


class _Sink(FileDescriptor):
    """
    A connected Twisted transport whose socket accepts everything at once:
    write / writeSequence / doWrite run Twisted's real buffering code.
    """

    connected = 1

    def __init__(self) -> None:
        super().__init__(reactor=object())  # type: ignore[arg-type]
        self.written: list[bytes] = []
        self.keep = False

    def startWriting(self) -> None:
        pass

    def stopWriting(self) -> None:
        pass

    def writeSomeData(self, data: Any) -> int:
        if self.keep:
            self.written.append(bytes(data))
        return len(data)

    def drain(self) -> None:
        while self._tempDataLen or len(self.dataBuffer) - self.offset:
            self.doWrite()

    def getPeer(self) -> None:
        return None


def _msgpack_decode(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, max_ext_len=0)


def bench_codec(rounds: int, repeat: int) -> None:
    """
    Time encode + decode of each typical message, then of all of them in
    turn: varied shapes, as a node sees them, are harder on PyPy's JIT.
    """
    implementations: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
        msgpack.Packer.__module__: (msgpack.Packer(use_bin_type=True).pack, _msgpack_decode),
        "_purepack": (_purepack.encode, _purepack.decode),
    }
    names = list(implementations)
    chosen = "_purepack" if codec._encode is _purepack.encode else names[0]
    print(f"codec: encode + decode per message; codec uses {chosen}")
    print(f"  {'message':<16} {'bytes':>5}" + "".join(f"{name:>18}" for name in names)
          + "  first / second")
    rows = [(label, [message]) for label, message in TYPICAL.items()]
    rows.append(("all, in turn", list(TYPICAL.values())))
    for label, messages in rows:
        size = sum(len(encode(message)) for message in messages) // len(messages)
        passes = rounds // len(messages)
        timings = []
        for pack, unpack in implementations.values():
            for message in messages:
                assert pack(message) == encode(message)
                assert unpack(encode(message)) == decode(encode(message))

            def both() -> None:
                for _ in range(passes):
                    for message in messages:
                        unpack(pack(message))

            timings.append(1e9 / best_rate(both, passes * len(messages), repeat))
        print(f"  {label:<16} {size:>5}" + "".join(f"{t:>15,.0f} ns" for t in timings)
              + f"  {timings[0] / timings[1]:>13.1f}x")


def _authenticated_pair() -> tuple[PeerProtocol, _Sink, PeerProtocol]:
    clock = Clock()
    secret = b"bench"
    n1 = PeerSettings(
        node_id="n1", incarnation=1, cluster_name="c", secret=secret, peer_ids={"n2"}
    )
    n2 = PeerSettings(
        node_id="n2", incarnation=2, cluster_name="c", secret=secret, peer_ids={"n1"}
    )
    sender = PeerProtocol(n1, clock, expected_peer="n2", nonce=b"\x01" * 32)
    # Count deliveries without keeping the messages: retaining millions of
    # decoded lists would measure the garbage collector instead.
    received = [0]

    def deliver(peer_id: str, incarnation: int, message: Any) -> None:
        received[0] += 1

    receiver = PeerProtocol(n2, clock, deliver=deliver, nonce=b"\x02" * 32)
    wire = _Sink()
    sender.makeConnection(wire)
    receiver.makeConnection(_Sink())
    sender.dataReceived(
        frame(TAG_HELLO, encode([PROTOCOL_VERSION, "c", "n2", 2, b"\x02" * 32]))
        + frame(TAG_AUTH, encode([auth_mac(secret, b"\x01" * 32, b"\x02" * 32, "n2", 2)]))
    )
    receiver.dataReceived(
        frame(TAG_HELLO, encode([PROTOCOL_VERSION, "c", "n1", 1, b"\x01" * 32]))
        + frame(TAG_AUTH, encode([auth_mac(secret, b"\x02" * 32, b"\x01" * 32, "n1", 1)]))
    )
    assert sender.authenticated and receiver.authenticated
    wire.drain()
    return sender, wire, receiver


def bench_frames(rounds: int, repeat: int) -> None:
    print("frames: PeerProtocol.send -> Twisted write buffer -> PeerProtocol delivery")
    sender, wire, receiver = _authenticated_pair()
    batch = 100

    def send_only() -> None:
        for _ in range(rounds // batch):
            for _ in range(batch):
                sender.send(MESSAGE)
            wire.drain()

    print(f"  send              {fmt(best_rate(send_only, rounds, repeat))} msg/s")
    wire.keep = True
    for _ in range(batch):
        sender.send(MESSAGE)
    wire.drain()
    chunk = b"".join(wire.written)

    def receive_only() -> None:
        for _ in range(rounds // batch):
            receiver.dataReceived(chunk)

    print(f"  receive + deliver {fmt(best_rate(receive_only, rounds, repeat))} msg/s"
          f"  ({batch} frames per read)")


def bench_write(repeat: int) -> None:
    print("write: concatenated write vs writeSequence, through FileDescriptor buffering")
    header = struct.Struct(">IB")
    for size in (150, 1024, 4096, 16384, 65536, 1 << 20):
        payload = b"x" * size
        count = max(400, min(200_000, 400_000_000 // (size * 40)))
        count -= count % 100
        rates = {}
        for mode in ("concatenate", "writeSequence"):
            sink = _Sink()

            def run() -> None:
                for _ in range(count // 100):
                    for _ in range(100):
                        h = header.pack(len(payload) + 1, 3)
                        if mode == "concatenate":
                            sink.write(h + payload)
                        else:
                            sink.writeSequence((h, payload))
                    sink.drain()

            rates[mode] = best_rate(run, count, repeat)
        print(
            f"  {size:>8} B payload  concatenate {fmt(rates['concatenate'])}"
            f"  writeSequence {fmt(rates['writeSequence'])} frames/s"
        )


def bench_reassembly(repeat: int) -> None:
    print("reassembly: one 16 MiB frame in 64 KiB reads")
    size = 16 * 1024 * 1024
    body = encode([b"v" * size])
    data = struct.pack(">IB", len(body) + 1, 3) + body
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]

    class Stock(Int32StringReceiver):
        MAX_LENGTH = 64 * 1024 * 1024

        def stringReceived(self, string: bytes) -> None:
            decode(string[1:])

    def stock() -> None:
        protocol = Stock()
        for chunk in chunks:
            protocol.dataReceived(chunk)

    _, _, receiver = _authenticated_pair()

    def ours() -> None:
        for chunk in chunks:
            receiver.dataReceived(chunk)

    print(f"  Int32StringReceiver  {best_rate(stock, 1, repeat):8.1f} frames/s")
    print(f"  PeerProtocol         {best_rate(ours, 1, repeat):8.1f} frames/s")


def bench_loopback(count: int) -> None:
    from twisted.internet import defer, reactor, task
    from twisted.internet.protocol import Factory, Protocol

    from twisted_kv.peer import PeerLinks

    print(f"loopback: two PeerLinks over TCP on 127.0.0.1, {count:,} messages")
    result: dict[str, float] = {}

    class Handler:
        def __init__(self) -> None:
            self.up: defer.Deferred[None] = defer.Deferred()
            self.count = 0
            self.done: defer.Deferred[None] = defer.Deferred()

        def peer_up(self, peer_id: str, incarnation: int) -> None:
            if not self.up.called:
                self.up.callback(None)

        def peer_down(self, peer_id: str) -> None:
            pass

        def peer_message(self, peer_id: str, incarnation: int, message: Any) -> None:
            self.count += 1
            if self.count == count:
                self.done.callback(None)

    @defer.inlineCallbacks
    def run() -> Any:
        ports = {}
        for node_id in ("n1", "n2"):
            probe = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
            ports[node_id] = probe.getHost().port
            yield probe.stopListening()
        handlers = {"n1": Handler(), "n2": Handler()}
        nodes = {
            node_id: PeerLinks(
                node_id=node_id,
                incarnation=1,
                cluster_name="bench",
                secret=b"bench",
                peers={p: ("127.0.0.1", port) for p, port in ports.items() if p != node_id},
                handler=handlers[node_id],
                reactor=reactor,
                listen_endpoint=f"tcp:{ports[node_id]}:interface=127.0.0.1",
            )
            for node_id in ports
        }
        for node in nodes.values():
            node.startService()
        yield handlers["n1"].up
        started = time.perf_counter()
        sent = 0
        # Send in batches of 1000 per reactor turn, as a busy node would.
        while sent < count:
            for _ in range(min(1000, count - sent)):
                nodes["n1"].send("n2", MESSAGE)
                sent += 1
            yield task.deferLater(reactor, 0, lambda: None)
        yield handlers["n2"].done
        result["rate"] = count / (time.perf_counter() - started)
        for node in nodes.values():
            yield node.stopService()

    def main() -> Any:
        d = run()
        d.addErrback(lambda f: print(f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(main)
    reactor.run()
    print(f"  end to end        {fmt(result.get('rate', 0.0))} msg/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds, repeat = (50_000, 3) if args.quick else (300_000, 5)
    print(f"Python {sys.version.split()[0]}")
    bench_codec(rounds, repeat)
    bench_frames(rounds, repeat)
    bench_write(repeat)
    bench_reassembly(repeat)
    bench_loopback(20_000 if args.quick else 200_000)


if __name__ == "__main__":
    main()
