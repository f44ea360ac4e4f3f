# -*- test-case-name: tests.test_e2e_ws -*-
"""
How fast changes reach C{/ws} watchers, on loopback.

    python bench/ws_fanout.py [--writes 2000] [--watchers 10] [--size 100]

Runs a single-process node (a L{LocalKeyValue} behind the node's site, with
C{/ws}) in a child process, and measures from this one:

  1. write-to-delivery latency: C{PUT /kv/lat/N} over HTTP, one at a time,
     until the change arrives at a watcher; p50 and p99;
  2. fan-out: the node writes changes itself at rising rates (so that HTTP
     is not the bottleneck), and C{--watchers} watchers each count what
     they receive.  A step passes when every watcher received every change
     and none was disconnected; the figure is the highest rate that passed,
     and the events per second delivered in total (rate times watchers).

The child also serves C{/bench/burst?count=N&rate=R&size=S}, which writes N
changes at R per second and answers with how long that took.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import treq  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import NOT_DONE_YET  # noqa: E402
from zope.interface import implementer  # noqa: E402

from bench.benchlib import connect_watcher, percentile  # noqa: E402
from twisted_kv.client import TxClient  # noqa: E402
from twisted_kv.cluster.local import LocalKeyValue  # noqa: E402
from twisted_kv.core import keyspace  # noqa: E402
from twisted_kv.interfaces import Health, IClusterStatus  # noqa: E402
from twisted_kv.web.site import build_site  # noqa: E402
from twisted_kv.ws.server import build_ws_resource  # noqa: E402

RATES = (2000, 5000, 10000, 12500, 15000, 20000, 30000, 40000)
STEP_SECONDS = 2.0


@implementer(IClusterStatus)
class _Status:
    def cluster_view(self) -> dict:
        return {"self": "bench", "leader": "bench", "term": 1, "nodes": []}

    def health(self) -> Health:
        return Health(None, "", {})

    def metrics(self) -> list:
        return []


class _Burst(Resource):
    """
    C{/bench/burst}: write changes at a steady rate, in 1 ms ticks.
    """

    isLeaf = True

    def __init__(self, kv: LocalKeyValue, reactor: Any) -> None:
        super().__init__()
        self._kv = kv
        self._reactor = reactor

    def render_POST(self, request: Any) -> Any:
        count = int(request.args[b"count"][0])
        rate = float(request.args[b"rate"][0])
        value = b"x" * int(request.args[b"size"][0])
        start = self._reactor.seconds()
        written = 0

        def tick() -> None:
            nonlocal written
            due = min(count, int((self._reactor.seconds() - start) * rate) + 1)
            while written < due:
                self._kv.put(keyspace.user_key(f"bench/{written % 1000}"), value)
                written += 1
            if written == count:
                ticker.stop()

        def done(_: object) -> None:
            elapsed = self._reactor.seconds() - start
            request.write(json.dumps({"count": count, "seconds": elapsed}).encode())
            request.finish()

        ticker = task.LoopingCall(tick)
        ticker.clock = self._reactor
        ticker.start(0.001).addCallback(done)
        return NOT_DONE_YET


def serve() -> None:
    """
    The child: a node on a loopback port, its URL on stdout.
    """
    from twisted.internet import reactor

    kv = LocalKeyValue(reactor)
    ws, service = build_ws_resource(kv, clock=reactor, max_queue=10000)
    bench = Resource()
    bench.putChild(b"burst", _Burst(kv, reactor))
    site = build_site(kv, _Status(), clock=reactor, children={b"ws": ws, b"bench": bench})
    service.startService()
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    print(f"http://127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


def _ws(url: str) -> str:
    return url.replace("http://", "ws://") + "/ws"


@defer.inlineCallbacks
def latency(reactor: Any, url: str, writes: int, size: int) -> Any:
    watcher = yield connect_watcher(reactor, _ws(url), "lat/", timed=True)
    client = TxClient(url, reactor=reactor)
    value = b"v" * size
    samples = []
    for n in range(writes):
        key = f"lat/{n}"
        arrived = defer.Deferred()
        watcher.factory.waiting[key] = arrived
        start = time.perf_counter()
        yield client.put(key, value)
        yield arrived
        samples.append(watcher.arrivals[key] - start)
    yield client.close()
    watcher.sendClose(1000)
    return samples


@defer.inlineCallbacks
def fanout(reactor: Any, url: str, watchers: int, size: int) -> Any:
    counters = []
    for _ in range(watchers):
        counter = yield connect_watcher(reactor, _ws(url), "bench/")
        counters.append(counter)
    best = None
    for rate in RATES:
        count = int(rate * STEP_SECONDS)
        before = [c.received for c in counters]
        response = yield treq.post(f"{url}/bench/burst?count={count}&rate={rate}&size={size}")
        burst = json.loads((yield treq.content(response)))
        for _ in range(500):
            if all(c.received - b >= count or c.close_code for c, b in zip(counters, before)):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        achieved = count / burst["seconds"]
        complete = all(c.received - b == count and not c.close_code for c, b in zip(counters, before))
        dropped = sum(1 for c in counters if c.close_code)
        behind = sum(1 for c, b in zip(counters, before) if not c.close_code and c.received - b < count)
        print(
            f"  {rate:>6}/s asked, {achieved:>8.0f}/s written: "
            + ("all watchers got every change" if complete else f"{dropped} watcher(s) dropped, {behind} behind")
        )
        if not complete:
            break
        best = (rate, achieved)
    for counter in counters:
        if not counter.close_code:
            counter.sendClose(1000)
    return best


@defer.inlineCallbacks
def run(reactor: Any, arguments: argparse.Namespace) -> Any:
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        url = child.stdout.readline().strip()
        print(f"node {url} (LocalKeyValue, one process)")
        samples = yield latency(reactor, url, arguments.writes, arguments.size)
        print(
            f"write-to-delivery latency over {len(samples)} sequential HTTP writes: "
            f"p50 {statistics.median(samples) * 1000:.2f} ms, "
            f"p99 {percentile(samples, 0.99) * 1000:.2f} ms"
        )
        print(f"fan-out to {arguments.watchers} watchers, {arguments.size}-byte values, {STEP_SECONDS:.0f} s per step:")
        best = yield fanout(reactor, url, arguments.watchers, arguments.size)
        if best is None:
            print("no step passed")
        else:
            rate, achieved = best
            print(
                f"highest rate with nothing dropped: {achieved:.0f} changes/s written, "
                f"{achieved * arguments.watchers:.0f} events/s delivered in total"
            )
    finally:
        child.terminate()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--writes", type=int, default=2000, help="latency samples")
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument("--size", type=int, default=100, help="value size in bytes")
    arguments = parser.parse_args()
    if arguments.serve:
        serve()
    else:
        task.react(run, [arguments])


if __name__ == "__main__":
    main()
