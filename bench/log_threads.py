"""
Where a durable PUT's CPU goes, by thread: a three-node cluster with its data
on disk under wrk PUT load of new keys, sent to the leader.

    python bench/log_threads.py [--runtime cpython|pypy3] [--seconds 8]
                                [--connections 16] [--rounds 1]
                                [--fsync always|everysec|never|memory]

For each round, per node: the CPU time of the reactor thread and of every
other thread (the log's commits and syncs) per PUT, read from
C{/proc/PID/task/*/stat}, and the log's counters from C{/metrics} (commits
and syncs per PUT, records a commit, time a commit spent in flight).  A
sampling profiler cannot tell these apart: its signal always interrupts the
reactor thread.  C{--fsync memory} runs the cluster without C{data_dir},
for reference.  The nodes run the code of the tree this file is in.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
from benchlib import KvCluster, Processes, Ports, Runtime  # noqa: E402

DEFAULT_PYPY = os.path.expanduser("~/.cache/twisted_kv-bench/pypy3/bin/pypy3")
_COUNTER = re.compile(r"^twisted_kv_log_(\w+)_total(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)


def thread_cpu(pid: int) -> dict[int, float]:
    """
    CPU seconds (user + system) of each thread of process C{pid}.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as source:
                stat = source.read()
        except OSError:
            continue  # the thread ended
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def log_counters(url: str) -> dict[str, float]:
    """
    The log's counters in a node's C{/metrics}.
    """
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return {name: float(value) for name, value in _COUNTER.findall(text)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", default="cpython", choices=["cpython", "pypy3"])
    parser.add_argument("--pypy-python", default=os.environ.get("KVBENCH_PYPY_PYTHON", DEFAULT_PYPY))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warm-up", type=float, default=3.0, help="seconds of load first")
    parser.add_argument("--fsync", default="always", choices=["always", "everysec", "never", "memory"])
    options = parser.parse_args()
    python = sys.executable if options.runtime == "cpython" else options.pypy_python
    workdir = tempfile.mkdtemp(prefix="kvbench-threads-")
    processes = Processes()
    durable = options.fsync != "memory"
    cluster = KvCluster(
        processes, Ports(), workdir, Runtime(options.runtime, python), name="threads",
        data_dir=os.path.join(workdir, "disk") if durable else None,
        fsync=options.fsync if durable else "always",
    )
    try:
        cluster.start()
        leader = cluster.current_leader()
        url = cluster.url(leader)
        benchlib.run_wrk(url, "kv.lua", ["put", "warm", "1000"], options.connections,
                         options.warm_up, cluster.pids())
        for round_ in range(options.rounds):
            pids = {node: proc.pid for node, proc in cluster.procs.items()}
            cpu_before = {node: thread_cpu(pid) for node, pid in pids.items()}
            counts_before = {node: log_counters(cluster.url(node)) for node in pids}
            result = benchlib.run_wrk(url, "kv.lua", ["put", f"r{round_}", "1000"],
                                      options.connections, options.seconds, cluster.pids())
            cpu_after = {node: thread_cpu(pid) for node, pid in pids.items()}
            counts_after = {node: log_counters(cluster.url(node)) for node in pids}
            puts = result["requests"]
            print(f"{options.runtime}, fsync {options.fsync}, {options.connections} connections: "
                  f"{result['ops']:,.0f} PUT/s, p50 {result['p50_ms']:.2f} ms, "
                  f"p99 {result['p99_ms']:.2f} ms, {result['cpu_us_per_op']:.0f} us CPU per PUT, "
                  f"non-2xx {result['non2xx']}")
            totals = [0.0, 0.0]
            for node, pid in pids.items():
                used = {tid: seconds - cpu_before[node].get(tid, 0.0)
                        for tid, seconds in cpu_after[node].items()}
                reactor = used.get(pid, 0.0)
                others = sum(used.values()) - reactor
                totals[0] += reactor
                totals[1] += others
                counts = {name: counts_after[node].get(name, 0.0) - counts_before[node].get(name, 0.0)
                          for name in counts_after[node]}
                commits = counts.get("commits", 0.0)
                print(f"  {node}{' (leader)' if node == leader else ''}: reactor thread "
                      f"{1e6 * reactor / puts:.0f} us per PUT, other threads {1e6 * others / puts:.0f}; "
                      f"commits {commits / puts:.3f} and syncs {counts.get('syncs', 0.0) / puts:.3f} "
                      f"per PUT, {counts.get('records', 0.0) / max(commits, 1):.2f} records a commit, "
                      f"{1000 * counts.get('commit_seconds', 0.0) / max(commits, 1):.2f} ms in flight")
            print(f"  three nodes: reactor threads {1e6 * totals[0] / puts:.0f} us per PUT, "
                  f"other threads {1e6 * totals[1] / puts:.0f}", flush=True)
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
