# -*- test-case-name: tests.test_web_auth -*-
"""
The cost of authentication per request: the HTTP front end with no users,
with HTTP Basic and with a bearer token, in one run.  Prints figures only.

    python bench/auth_cost.py                    # 3 rounds of 5 s per run, 16 connections
    python bench/auth_cost.py --duration 2 --connections 64 --rounds 5

Serves L{build_site} over a L{LocalKeyValue} on 127.0.0.1 (port 0), as
C{bench/http_local.py} does, and runs C{wrk} (C{apt-get install -y wrk})
against C{GET /kv/bench} and C{PUT /kv/bench} (100-byte values):

  none     no users: no guard at all
  basic    one user whose password is an scrypt hash, sent with HTTP Basic
           on every request; the first is checked with scrypt, the others
           against the process's keyed digest of it
  bearer   the same user's token from POST /auth/token: one HMAC-SHA256 per
           request

Each figure is the median of C{--rounds} rounds, the variants taking
turns within a round, so that a machine busy with other work weighs on all
of them alike.  Besides requests per second and latency it gives the
server's CPU time per request (this process's, which serves; wrk runs in
another), the figure least disturbed by other load, and what
authentication adds to it.  It also times the guard alone on
in-memory requests (best of three), and one scrypt check: the cost of a
login the process has not seen before (and of every wrong password); and
how long the reactor stalls while wrong passwords are checked on it, as
nodes once did, and in the threads nodes now check them in.
The server and wrk share the machine: compare the figures with each other,
not across machines.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
from functools import partial
import sys
import tempfile
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import ensureDeferred, succeed  # noqa: E402
from twisted.web.test.requesthelper import DummyRequest  # noqa: E402

from http_local import PUT_SCRIPT, NullStatus, wrk_figures, wrk_output  # noqa: E402
from twisted_kv.cluster.local import LocalKeyValue  # noqa: E402
from twisted_kv.core.passwords import hash_password, verify_password  # noqa: E402
from twisted_kv.core.users import EVERYTHING, LoginThrottle, User  # noqa: E402
from twisted_kv.logins import (  # noqa: E402
    CheckPassword,
    Logins,
    check_in_threads,
    check_now,
    password_pool,
)
from twisted_kv.web.auth import Guard  # noqa: E402
from twisted_kv.web.site import build_site  # noqa: E402

_PASSWORD = "correct horse battery staple"
# wrong passwords checked, and the timer that tells how late the reactor is
_CHECKS = 5
_TICK = 0.01


async def _main(reactor, duration: float, connections: int, rounds: int) -> None:
    stored = hash_password(_PASSWORD)
    started = time.perf_counter()
    verify_password(stored, _PASSWORD)
    print(f"one scrypt check: {1000 * (time.perf_counter() - started):.1f} ms", flush=True)
    pool = password_pool()
    pool.start()
    try:
        for name, check in [
            ("not at all (the timer alone)", lambda stored, candidate: succeed(False)),
            ("on the reactor", check_now),
            ("in threads", check_in_threads(reactor, pool)),
        ]:
            stall = await _worst_stall(reactor, check, stored)
            print(f"longest reactor stall over {_CHECKS} wrong passwords checked {name}: {stall:.0f} ms", flush=True)
    finally:
        pool.stop()
    bench = User(name="bench", password=stored, grant=EVERYTHING)
    # A node checks passwords in threads: here the only check (the first
    # Basic request's) runs inline, which the figures do not see.
    guard = Guard({"bench": bench}, b"bench secret", Logins(LoginThrottle(), reactor, check_now), reactor)
    basic = base64.b64encode(f"bench:{_PASSWORD}".encode()).decode()
    token = guard.issue(bench)["token"]
    for name, header in [("basic", f"Basic {basic}"), ("bearer", f"Bearer {token}")]:
        print(f"the guard alone, {name}: {_admit_cost(guard, header):.1f} us per request", flush=True)
    variants: dict[str, tuple[Optional[Guard], tuple[str, ...]]] = {
        "none": (None, ()),
        "basic": (guard, (f"Authorization: Basic {basic}",)),
        "bearer": (guard, (f"Authorization: Bearer {token}",)),
    }
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(PUT_SCRIPT)
        script.flush()
        for _ in range(rounds):
            for name, (site_guard, headers) in variants.items():
                kv = LocalKeyValue(reactor)
                site = build_site(kv, NullStatus(), clock=reactor, guard=site_guard)
                port = reactor.listenTCP(0, site, interface="127.0.0.1")
                url = f"http://127.0.0.1:{port.getHost().port}/kv/bench"
                try:
                    for method, lua in [("PUT", script.name), ("GET", "")]:
                        cpu = time.process_time()
                        text = await wrk_output(url, duration, connections, lua, headers)
                        cpu = time.process_time() - cpu
                        rate, requests, p50, _, non2xx = wrk_figures(text)
                        if non2xx:
                            raise RuntimeError(f"{name} {method}: {non2xx} non-2xx answers")
                        runs.setdefault((name, method), []).append(
                            (rate, _milliseconds(p50), 1e6 * cpu / requests)
                        )
                finally:
                    await port.stopListening()
    print(f"median of {rounds} rounds of {duration:g} s, {connections} connections", flush=True)
    for method in ("GET", "PUT"):
        base = statistics.median(cpu for _, _, cpu in runs[("none", method)])
        for name in variants:
            figures = runs[(name, method)]
            rate = statistics.median(r for r, _, _ in figures)
            p50 = statistics.median(p for _, p, _ in figures)
            cpu = statistics.median(c for _, _, c in figures)
            print(
                f"{method} {name:6}  {rate:7.0f} req/s  p50 {p50:6.2f} ms"
                f"  server CPU {cpu:6.1f} us/request ({cpu - base:+6.1f})",
                flush=True,
            )


async def _worst_stall(reactor, check: CheckPassword, stored: str) -> float:
    """
    The longest the reactor was late for a 10 ms timer, in milliseconds,
    while C{check} checked L{_CHECKS} wrong passwords one after the other:
    what every other connection of a node waits while a login is checked.
    """
    worst = 0.0
    last = time.monotonic()

    def tick() -> None:
        nonlocal worst, last
        now = time.monotonic()
        worst = max(worst, now - last - _TICK)
        last = now

    ticker = task.LoopingCall(tick)
    ticker.clock = reactor
    ticker.start(_TICK)
    try:
        for _ in range(_CHECKS):
            await check(stored, "wrong")
            await task.deferLater(reactor, 2 * _TICK, lambda: None)
    finally:
        ticker.stop()
    return 1000 * worst


def _admit_cost(guard: Guard, authorization: str, count: int = 20000) -> float:
    """
    Microseconds the guard takes to admit one C{GET /kv/bench} with the
    C{Authorization} header given, best of three runs of C{count}.
    """

    def request() -> DummyRequest:
        made = DummyRequest([b"kv", b"bench"])
        made.path = made.uri = b"/kv/bench"
        made.requestHeaders.setRawHeaders(b"authorization", [authorization.encode("ascii")])
        return made

    best = float("inf")
    for _ in range(3):
        requests = [request() for _ in range(count)]
        admitted: list[DummyRequest] = []
        started = time.perf_counter()
        for made in requests:
            guard.admit(made, partial(admitted.append, made))
        best = min(best, time.perf_counter() - started)
        if len(admitted) != count:
            raise RuntimeError(f"refused: {authorization.split()[0]}")
    return 1e6 * best / count


def _milliseconds(text: str) -> float:
    """
    A wrk latency (C{812.00us}, C{1.20ms}, C{2.01s}) in milliseconds.
    """
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise ValueError(f"not a wrk latency: {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant (median)")
    options = parser.parse_args()
    task.react(
        lambda reactor: ensureDeferred(
            _main(reactor, options.duration, options.connections, options.rounds)
        )
    )


if __name__ == "__main__":
    main()
