"""
A CPU-time sampling profiler for one twistd process, and its report.

Run a node under it (bench/compare.py --profile does this):

    KVBENCH_PROFILE=/tmp/n1.prof python bench/cpuprof.py -n --pidfile= kvnode ...

Every C{KVBENCH_PROFILE_INTERVAL} seconds of CPU time used by the process
(C{ITIMER_PROF}: user plus system time, 1 ms by default) a C{SIGPROF}
handler records the Python stack that was running.  Time spent in a system
call or in C code is charged to the Python function that made the call.
C{SIGUSR2} writes the samples so far to C{PREFIX.N} (N = 0, 1, ...) in the
"collapsed stacks" format of flamegraph.pl and py-spy's C{--format raw},
then starts counting afresh; the last file is written when twistd exits.

Why not only py-spy: it samples wall-clock time, and on a machine with more
runnable processes than cores a process spends much of its time preempted,
mostly right after a system call that woke another process (a loopback
C{send}), so py-spy charges that waiting to C{send}.  ITIMER_PROF counts
only CPU time actually used.

    python bench/cpuprof.py --report FILE [FILE ...]

prints the functions with the most samples of their own ("self") and
including callees ("total"), and the samples grouped by area.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
from typing import Iterable


def _where(code) -> str:
    path = code.co_filename
    for marker in ("site-packages/", "/lib/python3.", "/lib/pypy3.", "/lib_pypy/"):
        index = path.find(marker)
        if index >= 0:
            path = path[index + len(marker):]
            if marker.startswith("/lib/"):
                path = path.split("/", 1)[-1]
            break
    else:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/"
        if path.startswith(root):
            path = path[len(root):]
    name = getattr(code, "co_qualname", code.co_name)
    return f"{name} ({path}:{code.co_firstlineno})"


def run_twistd() -> None:
    prefix = os.environ["KVBENCH_PROFILE"]
    interval = float(os.environ.get("KVBENCH_PROFILE_INTERVAL", "0.001"))
    counts: collections.Counter = collections.Counter()
    written = [0]

    def sample(signum, frame) -> None:
        stack = []
        while frame is not None:
            stack.append(frame.f_code)
            frame = frame.f_back
        counts[tuple(stack)] += 1

    def dump(signum=None, frame=None) -> None:
        # Not sampled itself: under PyPy, writing the stacks takes a good
        # share of a scenario's CPU.
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        snapshot = list(counts.items())
        counts.clear()
        names: dict = {}
        lines = collections.Counter()
        for stack, count in snapshot:
            key = ";".join(
                names.get(code) or names.setdefault(code, _where(code))
                for code in reversed(stack)
            )
            lines[key] += count
        path = f"{prefix}.{written[0]}"
        written[0] += 1
        with open(path + ".tmp", "w") as out:
            for key, count in lines.items():
                out.write(f"{key} {count}\n")
        os.replace(path + ".tmp", path)
        if signum is not None:
            signal.setitimer(signal.ITIMER_PROF, interval, interval)

    signal.signal(signal.SIGPROF, sample)
    signal.signal(signal.SIGUSR2, dump)
    signal.setitimer(signal.ITIMER_PROF, interval, interval)
    sys.argv = ["twistd", *sys.argv[1:]]
    from twisted.scripts.twistd import run

    try:
        run()
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        dump()


# -- the report ---------------------------------------------------------------

#: (area, substring of a frame) in order: a sample's area is the first whose
#: substring occurs in its innermost frame.
AREAS = [
    ("socket I/O (send/recv system calls)", ("writeSomeData (twisted/internet/tcp.py", "untilConcludes",
                                             "doRead (twisted/internet/tcp.py")),
    ("reactor loop, epoll, timers", ("epollreactor", "internet/base.py", "posixbase", "callWithLogger", "callWithContext", "python/context.py", "python/log.py")),
    ("Deferred machinery", ("internet/defer.py",)),
    ("twisted.web HTTP parsing and responses", ("twisted/web/", "protocols/basic.py")),
    ("twisted.internet TCP buffering", ("internet/abstract.py", "internet/tcp.py")),
    ("twisted_kv change feed to WebSocket frames", ("twisted_kv/ws/server.py",)),
    ("twisted_kv HTTP front end", ("twisted_kv/web/",)),
    ("twisted_kv coordinator", ("twisted_kv/cluster/coordinator.py",)),
    ("twisted_kv node (peer dispatch)", ("twisted_kv/cluster/node.py",)),
    ("twisted_kv replication (core)", ("twisted_kv/core/",)),
    ("twisted_kv peer protocol and codec", ("twisted_kv/peer/", "twisted_kv/wire/")),
    ("msgpack / json", ("msgpack", "json/")),
    ("logging", ("twisted/logger/",)),
    ("record objects (attrs-generated __init__)", ("<attrs generated",)),
    ("sorted key index (sortedcontainers)", ("sortedcontainers/",)),
    ("zope.interface / attrs", ("zope/", "attr/", "attrs/")),
]


#: (item, substrings of a frame) in order, for the cost of a request by
#: item: a sample belongs to the item of the innermost frame on its stack
#: that names one, so that Twisted's and the standard library's frames
#: (Deferreds, transport writes, attrs-made records) count for the code of
#: ours that called them.  PyPy's frames carry no class names, hence the
#: needles by function name and file.
ITEMS = [
    ("metrics", ("twisted_kv/web/metrics.py", "observe (twisted_kv/web/http_api.py",
                 "log (twisted_kv/web/site.py")),
    ("store (memstore)", ("twisted_kv/core/memstore.py",)),
    ("change feed", ("twisted_kv/cluster/feed.py", "twisted_kv/ws/")),
    ("persistence", ("twisted_kv/storage/", "twisted_kv/cluster/durable.py")),
    ("peer codec", ("twisted_kv/wire/",)),
    ("peer protocol and links", ("twisted_kv/peer/",)),
    ("replication", ("twisted_kv/core/replica.py", "twisted_kv/cluster/replication.py",
                     "twisted_kv/core/merkle.py")),
    ("coordinator and calls", ("twisted_kv/cluster/coordinator.py", "twisted_kv/cluster/calls.py",
                               "twisted_kv/cluster/operations.py",
                               "twisted_kv/cluster/deadlines.py")),
    ("consensus, membership, anti-entropy", ("twisted_kv/core/consensus.py",
                                             "twisted_kv/core/membership.py",
                                             "twisted_kv/cluster/antientropy.py",
                                             "twisted_kv/cluster/members.py",
                                             "twisted_kv/core/placement.py")),
    ("node: peer dispatch", ("twisted_kv/cluster/node.py",)),
    ("HTTP: twisted_kv/web", ("twisted_kv/web/",)),
    ("HTTP: twisted.web", ("twisted/web/", "twisted/protocols/basic.py",
                           "twisted/protocols/policies.py")),
]
#: What a sample with none of the items on its stack is, by its innermost frame.
SOCKET_IO = "socket system calls (reactor-driven reads and writes)"
REACTOR = "reactor loop, timers, Deferreds, other"


def item_of(frames: list[str]) -> str:
    """
    The item a sample's stack (outermost frame first) counts for.
    """
    for frame in reversed(frames):
        for item, needles in ITEMS:
            if any(needle in frame for needle in needles):
                return item
    if any(needle in frames[-1] for needle in AREAS[0][1]):
        return SOCKET_IO
    return REACTOR


def item_shares(stacks: list[tuple[list[str], int]]) -> dict[str, float]:
    """
    The share of the samples of each item (see L{ITEMS}), from 0 to 1.
    """
    total = sum(count for _, count in stacks)
    counts: collections.Counter = collections.Counter()
    for frames, count in stacks:
        counts[item_of(frames)] += count
    return {item: count / total for item, count in counts.items()} if total else {}


def read_collapsed(paths: Iterable[str]) -> list[tuple[list[str], int]]:
    stacks = []
    for path in paths:
        with open(path) as source:
            for line in source:
                line = line.rstrip("\n")
                if not line:
                    continue
                stack, _, count = line.rpartition(" ")
                if "dump (bench/cpuprof.py" in stack:
                    continue  # the profiler's own work (in files written before it paused)
                stacks.append((stack.split(";"), int(count)))
    return stacks


def _area(frame: str) -> str:
    for area, needles in AREAS:
        if any(needle in frame for needle in needles):
            return area
    return "other"


def report(stacks: list[tuple[list[str], int]], top: int = 15) -> list[str]:
    total = sum(count for _, count in stacks)
    if not total:
        return ["  (no samples)"]
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    areas: collections.Counter = collections.Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        areas[_area(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"  {total} samples"]
    lines.append("  self  function (innermost frame)")
    for frame, count in own.most_common(top):
        lines.append(f"  {100 * count / total:4.1f}%  {frame}")
    lines.append("  total function (with callees; twisted_kv and twisted.web only)")
    shown = 0
    for frame, count in inclusive.most_common():
        if "twisted_kv/" in frame or "twisted/web/" in frame:
            lines.append(f"  {100 * count / total:4.1f}%  {frame}")
            shown += 1
            if shown == top:
                break
    lines.append("  by area (innermost frame)")
    for area, count in areas.most_common():
        lines.append(f"  {100 * count / total:4.1f}%  {area}")
    return lines


def main() -> None:
    if sys.argv[1:2] == ["--report"]:
        print("\n".join(report(read_collapsed(sys.argv[2:]))))
    else:
        run_twistd()


if __name__ == "__main__":
    main()
