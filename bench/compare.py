"""
twisted_kv side by side with etcd and Redis, on loopback, in one run.

    bench/run                      # the whole run, CPython and PyPy, about 15 minutes
    bench/run --quick              # about 3 minutes
    bench/run --runtime cpython    # twisted_kv under CPython only
    bench/run --profile            # where a node spends its CPU time
    bench/run --durable            # with data on disk and fsync = always, beside etcd on disk

(bench/run installs what is missing and then runs this file with the same
options; docs/performance.md explains every figure.)

It starts:

  a. a three-node twisted_kv cluster (a cluster file in a temporary
     directory, its own ports, every tunable at its default), one per
     C{--runtime};
  b. a three-member etcd cluster (Debian's etcd-server) with its data on
     tmpfs, driven through its HTTP JSON gateway (C{/v3/kv/put},
     C{/v3/kv/range});
  c. one redis-server, driven by redis-benchmark: the in-memory ceiling.

and drives (a) and (b) with the same wrk and the same Lua workloads
(bench/lua/): PUT of 100-byte values under new keys, GET of preloaded keys,
and a 90/10 GET/PUT mix, at 16 and 64 connections, each run sent to the
leader (twisted_kv: C{leader} in C{GET /cluster}; etcd: the Raft leader).
The runs are interleaved (twisted_kv, then etcd, for each cell), so both
see the same machine.  Then: leader failover time (SIGKILL the leader while
writing to every partition), resident memory per key and copy (a fresh
cluster, C{--memory-keys} keys), and the WebSocket fan-out and repair
figures where their benchmarks exist.

With C{--durable}, it compares persistence instead: each runtime's cluster
twice, with C{data_dir} on the disk of the temporary directory and
C{fsync = always}, and in memory as above; etcd twice, with its data on
the same disk and on tmpfs.  Each twisted_kv row is compared with the etcd
of the same kind (disk with disk, memory with tmpfs).  Then it runs
bench/durability.py (recovery, whole-cluster restart, catch-up) instead of
the Redis, failover, memory and WebSocket steps.

Every process it starts runs in its own session and is stopped on exit,
on failure and on Ctrl-C (and killed by the kernel if this process dies).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
import cpuprof  # noqa: E402
from benchlib import (  # noqa: E402
    BENCH,
    EtcdCluster,
    KvCluster,
    Ports,
    Processes,
    Redis,
    Runtime,
    log,
    version,
)
from memory import describe as describe_memory  # noqa: E402
from memory import measure_memory  # noqa: E402

WORKLOADS = {
    "put": "PUT new keys",
    "get": "GET",
    "mix": "90/10 GET/PUT",
}

DEFAULT_PYPY = os.path.join(
    os.environ.get("KVBENCH_CACHE") or os.path.expanduser("~/.cache/twisted_kv-bench"),
    "pypy3", "bin", "pypy3",
)


# -- the steps ------------------------------------------------------------------


def preload_kv(cluster: KvCluster, keys: int) -> None:
    leader = cluster.current_leader()
    result = benchlib.load(
        [("127.0.0.1", cluster.http_ports[leader])],
        lambda i: benchlib.kv_put_request(f"bench/pre/{i}"),
        keys,
        32,
    )
    log(f"twisted_kv ({cluster.runtime.label}) preload: {result}")
    if result.failed:
        raise RuntimeError(f"twisted_kv preload failed: {result}")


def preload_etcd(etcd: EtcdCluster, keys: int) -> None:
    leader = etcd.leader()
    result = benchlib.load(
        [("127.0.0.1", etcd.client_ports[leader])],
        lambda i: benchlib.etcd_put_request(f"bench/pre/{i}"),
        keys,
        32,
    )
    log(f"etcd preload: {result}")
    if result.failed:
        raise RuntimeError(f"etcd preload failed: {result}")


class System:
    """
    One of the systems wrk drives: how to find its entry point, its Lua
    script, its server processes.
    """

    def __init__(self, label: str, script: str, url, pids, versus: Optional[str] = None) -> None:
        self.label = label
        self.script = script
        self.url = url
        self.pids = pids
        #: the label of the etcd system its rows are compared with (the
        #: first etcd when None)
        self.versus = versus


def kv_system(cluster: KvCluster, suffix: str = "", versus: Optional[str] = None) -> System:
    return System(
        f"twisted_kv ({cluster.runtime.label}{suffix})",
        "kv.lua",
        lambda: cluster.url(cluster.current_leader()),
        cluster.pids,
        versus,
    )


def etcd_system(etcd: EtcdCluster, etcd_version: str, suffix: str = "") -> System:
    return System(
        f"etcd {etcd_version}{suffix}",
        "etcd.lua",
        lambda: etcd.url(etcd.leader()),
        etcd.pids,
    )


def run_matrix(
    systems: list[System],
    workloads: list[str],
    connections: list[int],
    duration: float,
    preload: int,
    rows: list[dict],
) -> None:
    run_id = os.urandom(3).hex()
    for workload in workloads:
        for conns in connections:
            for system in systems:
                url = system.url()
                tag = f"{run_id}-{workload}-{conns}"
                log(f"{system.label}: {WORKLOADS[workload]}, {conns} connections, "
                    f"{duration:g} s at {url}")
                figures = benchlib.run_wrk(
                    url, system.script, [workload, tag, str(preload)], conns, duration,
                    system.pids(),
                )
                row = {"system": system.label, "workload": workload, "connections": conns,
                       **figures}
                if system.versus:
                    row["versus"] = system.versus
                rows.append(row)
                log(f"  {figures['ops']:.0f} ops/s, p50 {figures['p50_ms']:.2f} ms, "
                    f"p99 {figures['p99_ms']:.2f} ms, {figures['cpu_us_per_op']:.0f} us CPU/op, "
                    f"non-2xx {figures['non2xx']}, socket errors {figures['errors']}")


def warm_up(systems: list[System], seconds: float, preload: int) -> None:
    for system in systems:
        for workload in ("put", "mix"):
            benchlib.run_wrk(system.url(), system.script, [workload, "warmup", str(preload)],
                             16, seconds, system.pids())


def run_redis(redis: Redis, connections: list[int], requests: int, rows: list[dict],
              label: str) -> None:
    assert redis.proc is not None
    for test in ("set", "get"):
        for conns in connections:
            before = benchlib.cpu_seconds(redis.proc.pid)
            argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(redis.port), "-t", test,
                    "-d", "100", "-c", str(conns), "-n", str(requests), "-P", "1",
                    "-r", "10000", "--csv"]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=300).stdout
            used = benchlib.cpu_seconds(redis.proc.pid) - before
            for record in csv.DictReader(io.StringIO(out)):
                if record.get("test", "").upper() != test.upper():
                    continue
                ops = float(record["rps"])
                rows.append({
                    "system": label, "workload": "put" if test == "set" else "get",
                    "connections": conns, "ops": ops,
                    "p50_ms": float(record["p50_latency_ms"]),
                    "p99_ms": float(record["p99_latency_ms"]),
                    "requests": requests, "non2xx": 0, "errors": 0,
                    "cpu_us_per_op": used * 1e6 / requests,
                    "note": test.upper(),
                })
                log(f"{label} {test.upper()} c{conns}: {ops:.0f} ops/s")


# -- failover -------------------------------------------------------------------


async def _failover(cluster: KvCluster, processes: Processes, limit: float) -> dict:
    leader = cluster.current_leader()
    survivors = [node for node in cluster.node_ids if node != leader]
    # Each key is held by a majority of the three nodes: two copies.
    held = sum(node["keys"] for node in cluster.cluster_view(leader)["nodes"]) // 2
    keys = benchlib.keys_for_partitions(cluster.partitions, "failover/")
    answers: list[list[tuple[float, float, int]]] = [[] for _ in keys]
    stop = asyncio.Event()
    kill_time = [float("inf")]
    new_leader: dict = {}

    async def probe(partition: int) -> None:
        port = cluster.http_ports[survivors[partition % len(survivors)]]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = benchlib.kv_put_request(keys[partition])
        try:
            while not stop.is_set():
                sent = time.monotonic()
                writer.write(request)
                status, _ = await benchlib._read_response(reader)
                answers[partition].append((sent, time.monotonic(), status))
                await asyncio.sleep(0.01)
        finally:
            writer.close()

    async def watch_leader() -> None:
        while not stop.is_set():
            try:
                view = await asyncio.to_thread(cluster.cluster_view, survivors[0], 1.0)
                seen = view.get("leader")
                if time.monotonic() > kill_time[0] and seen and seen != leader:
                    new_leader.setdefault("id", seen)
                    new_leader.setdefault("after", time.monotonic() - kill_time[0])
                    return
            except Exception:
                pass
            await asyncio.sleep(0.02)

    tasks = [asyncio.ensure_future(probe(p)) for p in range(len(keys))]
    watcher = asyncio.ensure_future(watch_leader())
    await asyncio.sleep(2.0)
    before = sum(1 for a in answers for (_, _, s) in a if s // 100 == 2)
    kill_time[0] = time.monotonic()
    processes.kill(cluster.procs[leader])
    killed = kill_time[0]

    def recovered(partition: int) -> Optional[float]:
        for _, answered, status in answers[partition]:
            if answered > killed and status // 100 == 2:
                return answered - killed
        return None

    while time.monotonic() - killed < limit:
        await asyncio.sleep(0.1)
        if new_leader and all(recovered(p) is not None for p in range(len(keys))):
            break
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks, watcher, return_exceptions=True)

    first = [recovered(p) for p in range(len(keys))]
    stalled = [t for t in first if t is None or t > 0.25]
    others: dict[int, int] = {}
    for partition in answers:
        for _, answered, status in partition:
            if answered > killed and status // 100 != 2:
                others[status] = others.get(status, 0) + 1
    return {
        "runtime": cluster.runtime.label,
        "keys": held,
        "killed": leader,
        "acks_before": before,
        "new_leader": new_leader.get("id"),
        "election_s": new_leader.get("after"),
        "partitions": len(keys),
        "stalled": len(stalled),
        "first_stalled_ack_s": min((t for t in stalled if t is not None), default=None),
        "all_partitions_s": None if any(t is None for t in first) else max(first),
        "unrecovered": sum(1 for t in first if t is None),
        "other_statuses": others,
        "per_partition": first,
    }


def measure_failover(cluster: KvCluster, processes: Processes) -> dict:
    return asyncio.run(_failover(cluster, processes, limit=30.0))


def describe_failover(result: dict) -> list[str]:
    def secs(value: Optional[float]) -> str:
        return "never (within 30 s)" if value is None else f"{value:.2f} s"

    return [
        f"leader failover ({result['runtime']}, {result['keys']:,} keys): SIGKILL of the leader "
        f"{result['killed']} while PUTs go to every partition ({result['partitions']}) "
        f"through the survivors",
        f"  new partition leader {result['new_leader']} after {secs(result['election_s'])}",
        f"  first acknowledged PUT in a partition the kill stopped: "
        f"{secs(result['first_stalled_ack_s'])} ({result['stalled']} partitions stalled)",
        f"  PUTs acknowledged again in every partition after {secs(result['all_partitions_s'])}",
        f"  non-2xx answers after the kill: {result['other_statuses'] or 0}",
    ]


# -- extras -----------------------------------------------------------------------


def run_extra(processes: Processes, workdir: str, name: str, argv: list[str],
              timeout: float, drop_progress: bool = False) -> list[str]:
    """
    Run another benchmark of this directory, if it exists, in a process
    group of its own (stopped with everything else), and return its output
    (without its time-stamped progress lines if C{drop_progress}).
    """
    path = os.path.join(BENCH, argv[0])
    if not os.path.exists(path):
        return [f"{name}: not measured (bench/{argv[0]} does not exist yet)"]
    log(f"{name}: bench/{' '.join(argv)}")
    output = os.path.join(workdir, f"extra-{argv[0]}.log")
    proc = processes.start([sys.executable, path, *argv[1:]], output, cwd=benchlib.ROOT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        processes.stop(proc)
        return [f"{name}: bench/{argv[0]} did not finish within {timeout:.0f} s"]
    with open(output, errors="replace") as source:
        lines = [line.rstrip() for line in source if line.strip()]
    if drop_progress and not proc.returncode:
        lines = [line for line in lines if not re.match(r"\[\d\d:\d\d:\d\d\] ", line)]
    if proc.returncode:
        lines = lines[-12:] + [f"(exit status {proc.returncode})"]
    return [f"{name} (bench/{' '.join(argv)}):", *("  " + line for line in lines)]


# -- the table ---------------------------------------------------------------------


def format_table(rows: list[dict]) -> list[str]:
    etcd: dict = {}
    for r in rows:
        if r["system"].startswith("etcd"):
            etcd.setdefault((r["workload"], r["connections"]), r)
            etcd[(r["system"], r["workload"], r["connections"])] = r
    header = ["system", "workload", "conns", "ops/s", "p50 ms", "p99 ms", "CPU us/op",
              "non-2xx", "ops/s vs etcd", "p99 vs etcd"]
    table = [header]
    order = {"put": 0, "get": 1, "mix": 2}

    def key(row: dict) -> tuple:
        system = row["system"]
        rank = 0 if system.startswith("twisted_kv") else 1 if system.startswith("etcd") else 2
        return (order[row["workload"]], row["connections"], rank, system)

    for row in sorted(rows, key=key):
        workload = row.get("note") or WORKLOADS[row["workload"]]
        versus = etcd.get((row["versus"], row["workload"], row["connections"])
                          if row.get("versus") else (row["workload"], row["connections"]))
        ratio = p99_ratio = ""
        if row["system"].startswith("twisted_kv") and versus and versus["ops"]:
            ratio = f"{row['ops'] / versus['ops']:.2f}x"
            p99_ratio = f"{row['p99_ms'] / versus['p99_ms']:.2f}x" if versus["p99_ms"] else ""
        bad = row["non2xx"] + row["errors"]
        table.append([
            row["system"], workload, str(row["connections"]), f"{row['ops']:,.0f}",
            f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", f"{row['cpu_us_per_op']:,.0f}",
            f"{row['non2xx']}" + (f" +{row['errors']} sock" if row["errors"] else "")
            + (" !" if bad else ""),
            ratio, p99_ratio,
        ])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    out = []
    for index, line in enumerate(table):
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


# -- profile mode --------------------------------------------------------------------


def executed_counts(cluster: KvCluster) -> dict[str, int]:
    """
    How many operations each node has executed, as the node itself says.
    """
    counts = {}
    for node in cluster.node_ids:
        for entry in cluster.cluster_view(node)["nodes"]:
            if entry["id"] == node:
                counts[node] = entry["executed"]
    return counts


def run_profile(options, processes: Processes, ports: Ports, workdir: str,
                runtime: Runtime) -> list[str]:
    """
    wrk load on one node while every node is profiled; one report per node
    and scenario.
    """
    outdir = options.profile_dir or os.path.join(workdir, "profiles")
    os.makedirs(outdir, exist_ok=True)
    use_sampler = options.profiler == "cpuprof"
    storage = {}
    if options.durable:
        storage = {"data_dir": os.path.join(workdir, "disk", f"profile-{runtime.name}"),
                   "fsync": options.fsync}
    if use_sampler:
        cluster = KvCluster(
            processes, ports, workdir, runtime, name=f"profile-{runtime.name}",
            wrapper=[os.path.join(BENCH, "cpuprof.py")],
            extra_env={"KVBENCH_PROFILE": lambda node: os.path.join(outdir, f"{runtime.name}-{node}")},
            **storage,
        )
    else:
        cluster = KvCluster(processes, ports, workdir, runtime, name=f"profile-{runtime.name}",
                            **storage)
    cluster.start()
    dumps = {node: 0 for node in cluster.node_ids}
    lines = [f"profile: twisted_kv under {runtime.label}, profiler {options.profiler}, "
             f"{options.profile_seconds:g} s per scenario at 16 connections"
             + (f", data on disk, fsync = {options.fsync}" if options.durable else "")]
    try:
        preload_kv(cluster, options.preload)
        leader = cluster.current_leader()
        other = next(node for node in cluster.node_ids if node != leader)
        scenarios = [(workload, target) for target in (leader, other)
                     for workload in ("put", "get")]
        for workload, target in scenarios:
            role = "leader" if target == leader else "a non-leader node"
            views = executed_counts(cluster)
            wrk_log = os.path.join(workdir, f"wrk-{runtime.name}-{workload}-{target}.log")
            seconds = options.profile_seconds
            argv = ["wrk", "-t2", "-c16", f"-d{seconds + 4:g}s", "--timeout", "10s", "-s",
                    os.path.join(benchlib.LUA, "kv.lua"), cluster.url(target), "--",
                    workload, f"prof-{target}", str(options.preload)]
            log(f"profile: {WORKLOADS[workload]} sent to {target} ({role})")
            wrk = processes.start(argv, wrk_log)
            time.sleep(2)
            files = {}
            if use_sampler:
                warm_up = []
                for node, proc in cluster.procs.items():
                    os.kill(proc.pid, signal.SIGUSR2)  # drop the warm-up samples
                    warm_up.append(f"{os.path.join(outdir, runtime.name + '-' + node)}.{dumps[node]}")
                    dumps[node] += 1
                # Writing them takes a while (under PyPy above all): not
                # part of the scenario's CPU time.
                for _ in range(100):
                    if all(os.path.exists(path) for path in warm_up):
                        break
                    time.sleep(0.1)
                cpu0 = {n: benchlib.cpu_seconds(p.pid) for n, p in cluster.procs.items()}
                time.sleep(seconds)
                for node, proc in cluster.procs.items():
                    os.kill(proc.pid, signal.SIGUSR2)
                    files[node] = f"{os.path.join(outdir, runtime.name + '-' + node)}.{dumps[node]}"
                    dumps[node] += 1
                cpu1 = {n: benchlib.cpu_seconds(p.pid) for n, p in cluster.procs.items()}
            else:
                cpu0 = {n: benchlib.cpu_seconds(p.pid) for n, p in cluster.procs.items()}
                spies = []
                for node, proc in cluster.procs.items():
                    files[node] = os.path.join(outdir, f"pyspy-{workload}-{target}-{node}.txt")
                    spies.append(subprocess.Popen(
                        ["py-spy", "record", "--nonblocking", "-r", "250", "-f", "raw",
                         "-d", f"{seconds:g}", "-o", files[node], "--pid", str(proc.pid)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                for spy in spies:
                    spy.wait(seconds + 60)
                cpu1 = {n: benchlib.cpu_seconds(p.pid) for n, p in cluster.procs.items()}
            wrk.wait(seconds + 60)
            with open(wrk_log) as source:
                figures = next(
                    (json.loads(line[10:]) for line in source if line.startswith("BENCHJSON ")),
                    None,
                )
            executed = {node: count - views.get(node, 0)
                        for node, count in executed_counts(cluster).items()}
            rate = figures["requests"] / (figures["duration_us"] / 1e6) if figures else 0
            lines.append("")
            lines.append(f"== {WORKLOADS[workload]} sent to {target} ({role}): {rate:.0f} ops/s "
                         f"(with the profiler on), non-2xx {figures and figures['non2xx']}")
            per_op: dict[str, float] = {}
            shares: dict[str, dict[str, float]] = {}
            for node in cluster.node_ids:
                node_role = ("leader" if node == leader else "non-leader primary")
                node_role += ", entry node" if node == target else ""
                time.sleep(0.2)
                path = files[node]
                for _ in range(50):
                    if os.path.exists(path):
                        break
                    time.sleep(0.1)
                used = cpu1[node] - cpu0[node]
                per_op[node] = 1e6 * used / (rate * seconds) if rate else 0.0
                lines.append(f"-- {node} ({node_role}): {100 * used / seconds:.0f}% of a core, "
                             f"{per_op[node]:.0f} us CPU per operation, "
                             f"executed {executed.get(node, 0)} operations; {path}")
                stacks = cpuprof.read_collapsed([path]) if os.path.exists(path) else []
                lines.extend(cpuprof.report(stacks, options.profile_top))
                shares[node] = cpuprof.item_shares(stacks)
            lines.extend(items_table(cluster.node_ids, target, per_op, shares))
    finally:
        cluster.stop()
    return lines


def items_table(nodes: list[str], entry: str, per_op: dict[str, float],
                shares: dict[str, dict[str, float]]) -> list[str]:
    """
    The CPU microseconds per operation of each node and of the three
    together, by item (L{cpuprof.ITEMS}): each node's CPU time per operation
    shared out as its samples are.
    """
    items = [item for item, _ in cpuprof.ITEMS] + [cpuprof.SOCKET_IO, cpuprof.REACTOR]
    names = [f"{node}{' (entry)' if node == entry else ''}" for node in nodes]
    width = max(map(len, items))
    lines = ["", "  CPU us per operation by item (each node's us/op shared out as its samples)",
             f"  {'item':<{width}}  " + "  ".join(f"{name:>10}" for name in names)
             + f"  {'all nodes':>10}"]
    for item in items:
        cells = [per_op[node] * shares[node].get(item, 0.0) for node in nodes]
        lines.append(f"  {item:<{width}}  " + "  ".join(f"{cell:10.1f}" for cell in cells)
                     + f"  {sum(cells):10.1f}")
    lines.append(f"  {'total':<{width}}  " + "  ".join(f"{per_op[n]:10.1f}" for n in nodes)
                 + f"  {sum(per_op.values()):10.1f}")
    return lines


def profile_etcd(options, processes: Processes, ports: Ports, workdir: str) -> list[str]:
    """
    etcd's CPU per PUT of a new key under the load of the profile's
    scenarios (16 connections, the same duration), for comparison.
    """
    etcd = EtcdCluster(processes, ports, workdir)
    etcd.start()
    try:
        seconds = options.profile_seconds
        url = etcd.url(etcd.leader())
        benchlib.run_wrk(url, "etcd.lua", ["put", "warmup", "0"], 16, 3.0, etcd.pids())
        log(f"profile: etcd, {WORKLOADS['put']} sent to its leader")
        figures = benchlib.run_wrk(url, "etcd.lua", ["put", "prof", "0"], 16, seconds,
                                   etcd.pids())
    finally:
        etcd.stop()
    return ["", f"== etcd: {WORKLOADS['put']} sent to its leader, 16 connections, "
                f"{seconds:g} s: {figures['ops']:.0f} ops/s, "
                f"{figures['cpu_us_per_op']:.0f} us CPU per operation (three members), "
                f"non-2xx {figures['non2xx']}"]


# -- main -----------------------------------------------------------------------------


def parse_args(argv: Optional[list[str]] = None):
    parser = argparse.ArgumentParser(
        prog="bench/run", description="twisted_kv side by side with etcd and Redis, on loopback.")
    parser.add_argument("--quick", action="store_true",
                        help="short runs (about 2 minutes in all)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (15; quick: 5)")
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--workloads", default="put,get,mix")
    parser.add_argument("--preload", type=int, default=10_000,
                        help="keys loaded before the GET and mix runs")
    parser.add_argument("--runtime", default="cpython,pypy3",
                        help="twisted_kv's interpreter(s), comma-separated: cpython, pypy3")
    parser.add_argument("--pypy-python", default=os.environ.get("KVBENCH_PYPY_PYTHON", DEFAULT_PYPY),
                        help="the PyPy interpreter with twisted_kv's dependencies")
    parser.add_argument("--memory-keys", type=int,
                        help="keys loaded for memory per key (1,000,000; quick: 50,000)")
    parser.add_argument("--redis-requests", type=int, help="requests per redis-benchmark run")
    parser.add_argument("--no-etcd", action="store_true")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the WebSocket fan-out and repair benchmarks")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (cluster files, logs)")
    parser.add_argument("--durable", action="store_true",
                        help="twisted_kv with data_dir on disk and fsync = always beside etcd "
                             "on the same disk, the in-memory modes beside them; then "
                             "bench/durability.py")
    parser.add_argument("--fsync", default="always", choices=["always", "everysec", "never"],
                        help="the fsync policy of the durable clusters")
    parser.add_argument("--durability-keys", type=int,
                        help="keys for bench/durability.py (200,000; quick: 50,000)")
    parser.add_argument("--no-durability", action="store_true",
                        help="with --durable, skip bench/durability.py")
    parser.add_argument("--profile", action="store_true",
                        help="profile the nodes under wrk load instead of comparing "
                             "(with --durable: their data on disk, with --fsync)")
    parser.add_argument("--profiler", choices=["cpuprof", "py-spy"], default="cpuprof")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument("--profile-dir", help="where the collapsed stacks go")
    options = parser.parse_args(argv)
    if options.duration is None:
        options.duration = 5.0 if options.quick else 15.0
    if options.memory_keys is None:
        options.memory_keys = 50_000 if options.quick else 1_000_000
    if options.durability_keys is None:
        options.durability_keys = 50_000 if options.quick else 200_000
    if options.redis_requests is None:
        options.redis_requests = 50_000 if options.quick else 200_000
    options.connections = [int(c) for c in options.connections.split(",") if c]
    options.workloads = [w for w in options.workloads.split(",") if w]
    for workload in options.workloads:
        if workload not in WORKLOADS:
            parser.error(f"unknown workload {workload!r}")
    options.runtimes = []
    for name in options.runtime.split(","):
        if name == "cpython":
            options.runtimes.append(Runtime("cpython", sys.executable))
        elif name in ("pypy3", "pypy"):
            if not os.path.exists(options.pypy_python):
                parser.error(f"no PyPy at {options.pypy_python}; bench/run sets it up")
            options.runtimes.append(Runtime("pypy3", options.pypy_python))
        else:
            parser.error(f"unknown runtime {name!r}")
    return options


def main() -> int:
    options = parse_args()
    benchlib.install_signal_handlers()
    workdir = os.environ.get("KVBENCH_WORKDIR") or tempfile.mkdtemp(prefix="kvbench-")

    def body(processes: Processes, ports: Ports) -> int:
        if options.profile:
            for runtime in options.runtimes:
                print("\n".join(run_profile(options, processes, ports, workdir, runtime)),
                      flush=True)
            if not options.no_etcd:
                print("\n".join(profile_etcd(options, processes, ports, workdir)), flush=True)
            return 0
        if options.durable:
            return compare_durable(options, processes, ports, workdir)
        return compare(options, processes, ports, workdir)

    return benchlib.run_in_workdir(workdir, options.keep, body)


def compare(options, processes: Processes, ports: Ports, workdir: str) -> int:
    info = benchlib.machine()
    etcd_version = version(["etcd", "--version"]).replace("etcd Version: ", "")
    redis_version = re.sub(r"^Redis server v=(\S+).*", r"\1", version(["redis-server", "--version"]))
    wrk_version = version(["wrk", "-v"]).split(" [")[0]
    runtimes = ", ".join(
        f"{r.label} {version([r.python, '-c', 'import sys; print(sys.version.split()[0])'])}"
        for r in options.runtimes)
    header = [
        f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB, "
        f"Linux {info['kernel']}, load average at start "
        + " ".join(f"{x:.1f}" for x in info["load"]),
        f"twisted_kv under {runtimes}; etcd {etcd_version}; Redis {redis_version}; {wrk_version}",
        f"wrk: 2 threads, {options.duration:g} s per run, 100-byte values, "
        f"{options.preload:,} preloaded keys; everything on 127.0.0.1",
    ]
    for line in header:
        log(line)
    rows: list[dict] = []
    figures: dict = {"machine": info, "rows": rows}
    clusters: list[KvCluster] = []
    systems: list[System] = []
    for runtime in options.runtimes:
        cluster = KvCluster(processes, ports, workdir, runtime, name=f"kv-{runtime.name}")
        log(f"starting twisted_kv ({runtime.label}): {cluster.config}")
        cluster.start()
        preload_kv(cluster, options.preload)
        clusters.append(cluster)
        systems.append(kv_system(cluster))
    etcd = None
    if not options.no_etcd:
        etcd = EtcdCluster(processes, ports, workdir)
        log(f"starting etcd, data in {etcd.datadir}")
        etcd.start()
        preload_etcd(etcd, options.preload)
        systems.append(etcd_system(etcd, etcd_version))
    log("warming up")
    warm_up(systems, 2.0 if options.quick else 3.0, options.preload)
    if any(r.name != "cpython" for r in options.runtimes):
        # Give PyPy's JIT a little longer.
        warm_up([s for s in systems if "PyPy" in s.label], 5.0, options.preload)
    run_matrix(systems, options.workloads, options.connections, options.duration,
               options.preload, rows)
    if etcd is not None:
        etcd.stop()
    if not options.no_redis:
        redis = Redis(processes, ports, workdir)
        redis.start()
        run_redis(redis, options.connections, options.redis_requests, rows,
                  f"redis {redis_version}")
        redis.stop()

    extra: list[str] = []
    if not options.no_failover:
        # Twice: on a fresh cluster holding only the preloaded keys, and on
        # the benchmark's cluster, which holds every key the runs wrote.
        for runtime, cluster in zip(options.runtimes, clusters):
            fresh = KvCluster(processes, ports, workdir, runtime, name=f"failover-{runtime.name}")
            log(f"failover ({runtime.label}): a fresh cluster with {options.preload} keys")
            fresh.start()
            preload_kv(fresh, options.preload)
            for target in (fresh, cluster):
                log(f"failover ({runtime.label}): killing the leader of {target.config}")
                result = measure_failover(target, processes)
                figures.setdefault("failover", []).append(result)
                extra += describe_failover(result)
            fresh.stop()
    for cluster in clusters:
        cluster.stop()
    if not options.no_memory:
        for runtime in options.runtimes:
            result = measure_memory(processes, ports, workdir, runtime, options.memory_keys)
            figures.setdefault("memory", []).append(result)
            extra += describe_memory(result)
    if not options.no_extras:
        if options.quick:
            extra.append("WebSocket fan-out, repair and failover rounds: skipped with --quick")
        else:
            extra += run_extra(processes, workdir, "WebSocket fan-out",
                               ["ws_fanout.py", "--writes", "500", "--watchers", "10"], 240)
            extra += run_extra(processes, workdir, "repair time", ["repair.py", "--keys", "20000"], 300)
            extra += run_extra(processes, workdir, "leader failover, kill and restart rounds",
                               ["failover.py", "--rounds", "3"], 300)

    return report(header, rows, extra, figures, options.json)


def compare_durable(options, processes: Processes, ports: Ports, workdir: str) -> int:
    """
    C{--durable}: twisted_kv with its data on disk and C{fsync} beside etcd
    with its data on the same disk, and both in memory (tmpfs for etcd) for
    reference, in one interleaved run; then bench/durability.py.
    """
    info = benchlib.machine()
    etcd_version = version(["etcd", "--version"]).replace("etcd Version: ", "")
    wrk_version = version(["wrk", "-v"]).split(" [")[0]
    runtimes = ", ".join(
        f"{r.label} {version([r.python, '-c', 'import sys; print(sys.version.split()[0])'])}"
        for r in options.runtimes)
    disk = os.path.join(workdir, "disk")
    os.makedirs(disk, exist_ok=True)
    fstype = benchlib.filesystem_type(disk)
    header = [
        f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB, "
        f"Linux {info['kernel']}, load average at start "
        + " ".join(f"{x:.1f}" for x in info["load"]),
        f"twisted_kv under {runtimes}; etcd {etcd_version}; {wrk_version}",
        f"durable: twisted_kv data_dir and etcd --data-dir under {disk} ({fstype}), "
        f"twisted_kv fsync = {options.fsync}; memory: twisted_kv without data_dir, "
        f"etcd on tmpfs",
        f"wrk: 2 threads, {options.duration:g} s per run, 100-byte values, "
        f"{options.preload:,} preloaded keys; everything on 127.0.0.1",
    ]
    for line in header:
        log(line)
    rows: list[dict] = []
    figures: dict = {"machine": info, "rows": rows, "fsync": options.fsync,
                     "filesystem": fstype}
    systems: list[System] = []
    etcd_disk_label = f"etcd {etcd_version} (disk)"
    etcd_memory_label = f"etcd {etcd_version} (tmpfs)"
    for runtime in options.runtimes:
        durable = KvCluster(processes, ports, workdir, runtime, name=f"kv-durable-{runtime.name}",
                            data_dir=os.path.join(disk, f"kv-{runtime.name}"),
                            fsync=options.fsync)
        log(f"starting twisted_kv ({runtime.label}) with data_dir {durable.data_dir}, "
            f"fsync = {options.fsync}")
        durable.start()
        preload_kv(durable, options.preload)
        systems.append(kv_system(durable, f", fsync {options.fsync}",
                                 None if options.no_etcd else etcd_disk_label))
        memory = KvCluster(processes, ports, workdir, runtime, name=f"kv-{runtime.name}")
        log(f"starting twisted_kv ({runtime.label}) in memory")
        memory.start()
        preload_kv(memory, options.preload)
        systems.append(kv_system(memory, ", memory",
                                 None if options.no_etcd else etcd_memory_label))
    etcds = []
    if not options.no_etcd:
        for datadir, suffix in ((os.path.join(disk, "etcd"), " (disk)"), (None, " (tmpfs)")):
            etcd = EtcdCluster(processes, ports, workdir, datadir,
                               name="etcd-disk" if datadir else "etcd-tmpfs")
            log(f"starting etcd, data in {etcd.datadir}")
            etcd.start()
            preload_etcd(etcd, options.preload)
            etcds.append(etcd)
            systems.append(etcd_system(etcd, etcd_version, suffix))
    log("warming up")
    warm_up(systems, 2.0 if options.quick else 3.0, options.preload)
    if any(r.name != "cpython" for r in options.runtimes):
        warm_up([s for s in systems if "PyPy" in s.label], 5.0, options.preload)
    run_matrix(systems, options.workloads, options.connections, options.duration,
               options.preload, rows)
    sizes = []
    for cluster_dir in sorted(os.listdir(disk)):
        path = os.path.join(disk, cluster_dir)
        sizes.append(f"{cluster_dir}: {benchlib.directory_bytes(path) / 2**20:.0f} MiB")
    extra = [f"data on disk after the runs: {', '.join(sizes)}"]
    processes.stop_all()
    if not options.no_durability:
        argv = ["durability.py", "--keys", str(options.durability_keys),
                "--fsync", options.fsync]
        extra += run_extra(processes, workdir, "durability", argv, 1800, drop_progress=True)

    return report(header, rows, extra, figures, options.json)


def report(header: list[str], rows: list[dict], extra: list[str], figures: dict, json_path: Optional[str]) -> int:
    """
    Print the run's header, table and extra figures, and write them all to
    C{json_path} if given.

    @return: the exit status: 1 if a twisted_kv run had non-2xx answers or
        socket errors, else 0.
    """
    table = format_table(rows)
    print()
    print("\n".join(header))
    print()
    print("\n".join(table))
    if extra:
        print()
        print("\n".join(extra))
    bad = [r for r in rows if r["system"].startswith("twisted_kv") and (r["non2xx"] or r["errors"])]
    if bad:
        print(f"\n! {len(bad)} twisted_kv runs had non-2xx answers or socket errors (marked !)")
    figures["table"] = table
    figures["extra"] = extra
    if json_path:
        with open(json_path, "w") as out:
            json.dump(figures, out, indent=2, default=str)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
