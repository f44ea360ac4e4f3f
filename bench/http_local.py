# -*- test-case-name: tests.test_site -*-
"""
Throughput of the HTTP front end over a single-process store. Prints figures
only.

    python bench/http_local.py                   # 5 s per run, 16 connections
    python bench/http_local.py --duration 2 --connections 64
    python bench/http_local.py --in-process 20000 --variants floor,direct
                                                 # CPU per request, no sockets

Serves L{build_site} over a L{LocalKeyValue} on 127.0.0.1 (port 0) and runs
C{wrk} (C{apt-get install -y wrk}) against C{GET /kv/bench} and
C{PUT /kv/bench} (100-byte values), once for each way of routing C{/kv}:

  direct    the node's site as build_site serves it: C{/kv} requests go
            to KeyValueResource before any resource traversal
  root      the node's root resource routing C{/kv} too: it dispatches
            the first path segment with one dictionary lookup
  branch    Klein as the root resource, C{/kv} a branch route to the same
            KeyValueResource
  route     Klein as the root resource, C{/kv/<path:key>} a route returning
            the same KeyValueResource
  floor     a twisted.web leaf answering every request with a constant: the
            cost of twisted.web alone, no store and no API

Every variant runs on the same site (request bounding, metrics); only
C{site.resource} changes, and all but C{direct} route C{/kv} through it.
With C{--in-process N}, no wrk and no sockets: each variant answers N
C{GET} and N C{PUT} requests of the same bytes as wrk's, written one at a
time into one connection whose transport keeps the answers in memory, and
the line gives the CPU time per request (median of C{--rounds}).  That is
the cost of the HTTP parsing, routing and answering alone, without the
system calls, the reactor's polling, or the noise of a shared machine.

Besides the rates, each line gives the CPU time the server (this process:
wrk runs in processes of its own) used per request, which depends much
less on what else the machine is doing.
The server and wrk share the machine, so compare the figures with each
other, not across machines.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from klein import Klein  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.internet.utils import getProcessOutput  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web.iweb import IRequest  # noqa: E402
from twisted.web.resource import IResource, Resource  # noqa: E402
from zope.interface import implementer  # noqa: E402

from twisted_kv.cluster.local import LocalKeyValue  # noqa: E402
from twisted_kv.interfaces import Health, IClusterStatus  # noqa: E402
from twisted_kv.web.http_api import KeyValueResource  # noqa: E402
from twisted_kv.web.site import build_site  # noqa: E402

PUT_SCRIPT = """
wrk.method = "PUT"
wrk.body = string.rep("x", 100)
wrk.headers["Content-Type"] = "text/plain"
"""


@implementer(IClusterStatus)
class NullStatus:
    def cluster_view(self) -> dict:
        return {}

    def health(self) -> Health:
        return Health(None, "", {})

    def metrics(self) -> list:
        return []


def _klein_branch(kv: IResource) -> IResource:
    app = Klein()

    @app.route("/kv", branch=True)
    def branch(request: IRequest) -> IResource:
        return kv

    return app.resource()


def _klein_route(kv: IResource) -> IResource:
    app = Klein()

    @app.route("/kv/<path:key>", methods=["GET", "HEAD", "PUT", "POST", "DELETE"])
    def route(request: IRequest, key: str) -> IResource:
        return kv

    return app.resource()


class _Constant(Resource):
    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        return b"v"


_VARIANTS: dict[str, Callable[[IResource, IResource], IResource]] = {
    "direct": lambda root, kv: root,
    "root": lambda root, kv: root,
    "branch": lambda root, kv: _klein_branch(kv),
    "route": lambda root, kv: _klein_route(kv),
    "floor": lambda root, kv: _Constant(),
}


async def wrk_output(
    url: str, duration: float, connections: int, script: str = "", headers: tuple[str, ...] = ()
) -> str:
    """
    Run wrk against C{url}, with the Lua C{script} and the request
    C{headers} given; its report.
    """
    args = ["-t2", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if script:
        args += ["-s", script]
    for header in headers:
        args += ["-H", header]
    output = await getProcessOutput("wrk", args + [url], env=os.environ, errortoo=True)
    return output.decode("utf-8", "replace")


def wrk_figures(text: str) -> tuple[float, int, str, str, int]:
    """
    Requests per second, requests, p50, p99 and non-2xx answers of a wrk
    report.
    """
    rate = re.search(r"Requests/sec:\s*([\d.]+)", text)
    count = re.search(r"(\d+) requests in", text)
    p50 = re.search(r"^\s*50%\s+(\S+)", text, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+(\S+)", text, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if rate is None or count is None or p50 is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{text}")
    non2xx = int(errors.group(1)) if errors else 0
    return float(rate.group(1)), int(count.group(1)), p50.group(1), p99.group(1), non2xx


async def wrk_summary(url: str, duration: float, connections: int, script: str = "") -> str:
    """
    Run wrk against C{url} and summarise its figures in one line, with the
    CPU time this process (the server) spent per request.
    """
    started = time.process_time()
    output = await wrk_output(url, duration, connections, script)
    used = time.process_time() - started
    rate, requests, p50, p99, non2xx = wrk_figures(output)
    cpu = 1e6 * used / requests
    summary = f"{rate:9.0f} req/s  {cpu:6.1f} us CPU/req  p50 {p50:>8}  p99 {p99:>8}"
    return summary + (f"  ({non2xx} non-2xx)" if non2xx else "")


_HOST = IPv4Address("TCP", "127.0.0.1", 7000)
_CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)
_IN_PROCESS = {
    "GET": b"GET /kv/bench HTTP/1.1\r\nHost: 127.0.0.1:7000\r\n\r\n",
    "PUT": b"PUT /kv/bench HTTP/1.1\r\nHost: 127.0.0.1:7000\r\nContent-Length: 100\r\n"
    b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * 100,
}


def in_process_cost(reactor, name: str, data: bytes, requests: int) -> float:
    """
    CPU microseconds per request of variant C{name} answering C{data},
    sent C{requests} times over one connection, without sockets: a
    L{StringTransport} takes the answers, emptied after each.
    """
    kv = LocalKeyValue(reactor)
    site = build_site(kv, NullStatus(), clock=reactor)
    site.resource = _VARIANTS[name](site.resource, KeyValueResource(kv, reactor))
    if name != "direct":
        site.kv_resource = None
    channel = site.buildProtocol(_CLIENT)
    transport = StringTransport(hostAddress=_HOST, peerAddress=_CLIENT)
    channel.makeConnection(transport)
    channel.dataReceived(_IN_PROCESS["PUT"])  # the key the GETs read
    answers = transport.io
    for _ in range(min(requests, 2000)):  # warm-up, for PyPy's JIT above all
        channel.dataReceived(data)
    answers.seek(0)
    answers.truncate()
    started = time.process_time()
    for _ in range(requests):
        channel.dataReceived(data)
        answers.seek(0)
        answers.truncate()
    used = time.process_time() - started
    channel.dataReceived(data)
    if not transport.value().startswith(b"HTTP/1.1 20"):
        raise RuntimeError(f"{name}: unexpected answer {transport.value()[:200]!r}")
    channel.connectionLost(Failure(ConnectionDone()))
    return 1e6 * used / requests


def _in_process(reactor, variants: list[str], requests: int, rounds: int) -> None:
    for name in variants:
        for method, data in _IN_PROCESS.items():
            costs = sorted(in_process_cost(reactor, name, data, requests) for _ in range(rounds))
            print(f"{name:7}  {method} {costs[len(costs) // 2]:6.2f} us CPU/req in process "
                  f"(median of {rounds}; {costs[0]:.2f}-{costs[-1]:.2f})", flush=True)


async def _main(reactor, options: argparse.Namespace) -> None:
    if options.in_process:
        _in_process(reactor, options.variants, options.in_process, options.rounds)
        return
    duration, connections = options.duration, options.connections
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(PUT_SCRIPT)
        script.flush()
        for name in options.variants:
            variant = _VARIANTS[name]
            kv = LocalKeyValue(reactor)
            site = build_site(kv, NullStatus(), clock=reactor)
            site.resource = variant(site.resource, KeyValueResource(kv, reactor))
            if name != "direct":
                site.kv_resource = None
            port = reactor.listenTCP(0, site, interface="127.0.0.1")
            url = f"http://127.0.0.1:{port.getHost().port}/kv/bench"
            try:
                put = await wrk_summary(url, duration, connections, script.name)
                get = await wrk_summary(url, duration, connections)
            finally:
                await port.stopListening()
            print(f"{name:7}  GET {get}", flush=True)
            print(f"{'':7}  PUT {put}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--variants", default=",".join(_VARIANTS), help="comma-separated, from: " + ", ".join(_VARIANTS)
    )
    parser.add_argument(
        "--in-process",
        type=int,
        metavar="REQUESTS",
        help="instead of wrk over sockets, send REQUESTS requests over an in-memory connection",
    )
    parser.add_argument("--rounds", type=int, default=5, help="in-process rounds per figure")
    options = parser.parse_args()
    options.variants = options.variants.split(",")
    unknown = set(options.variants) - set(_VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    task.react(lambda reactor: ensureDeferred(_main(reactor, options)))


if __name__ == "__main__":
    main()
