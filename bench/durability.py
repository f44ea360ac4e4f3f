"""
What persistence costs and gives back, on a real disk: recovery time and
disk bytes per key, a whole-cluster restart, and the catch-up of a node
that missed some writes.

    python bench/durability.py                  # 200,000 keys, about 3 minutes
    python bench/durability.py --keys 1000000 --replicas 3   # 1,000,000 keys on every node, about 11 minutes
    python bench/durability.py --keys 1000000 --replicas 3 --load restore   # loaded as a backup is
    python bench/durability.py --dir /mnt/x     # data on another disk

It starts a three-node cluster (every tunable at its default, C{data_dir}
on the disk of C{--dir}, C{fsync = always} unless C{--fsync} says
otherwise), loads C{--keys} keys of 100 bytes through every node over 64
keep-alive connections, and then:

  1. disk: the bytes in each node's data directory, per key it holds, and
     the live data (keys + values) they stand for;
  2. recovery of one node: SIGTERM a node that is not the leader, start it
     again, and time until it logs
     C{recovered K keys (B bytes) from PATH in S s}, until a GET through it
     answers, and until the leader sees it alive and synced again;
  3. whole-cluster restart: SIGTERM every node, start them all, and time
     until every node logged its recovery, until they agree on a leader,
     and until every key of a sample of C{--sample} acknowledged keys has
     been served (200, right value; a key served is not read again, so
     the figure is not that of a whole pass over the sample);
     It also reads what the node wrote to its log since it restarted (no
     write was made meanwhile: nothing should have been copied);
  4. catch-up: SIGTERM a node that is not the leader, write new keys for
     C{--missed-seconds} seconds through the others, start it again, time
     until the leader sees it synced, and read what it wrote to its log
     since it restarted: how many entries came in replication messages
     (C{APPEND} records) and how many in snapshot chunks (C{SNAPSHOT}
     records, i.e. whole copies of partitions), against the keys it missed
     and the keys it holds.

The nodes are stopped at the end and their data removed (unless C{--keep}).
Run alone or by C{bench/run --durable}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
import urllib.parse
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import benchlib  # noqa: E402
from benchlib import KvCluster, Ports, Processes, Runtime, log  # noqa: E402

from twisted_kv.cluster import durable  # noqa: E402
from twisted_kv.storage.log import Scan, segment_number  # noqa: E402
from twisted_kv.wire import codec  # noqa: E402

RECOVERED = re.compile(
    rb"recovered (\d+) keys \((\d+) bytes\) from (\S+) in ([\d.]+) s"
)

# -- loading ------------------------------------------------------------------


def load_keys(cluster: KvCluster, prefix: str, count: int, connections: int) -> set[int]:
    """
    PUT C{prefix}NNNNNNNN for N in 0 .. C{count} - 1 through every node;
    the indexes acknowledged (2xx).
    """
    targets = [("127.0.0.1", cluster.http_ports[node]) for node in cluster.node_ids]
    failed: set[int] = set()
    started = time.monotonic()
    last = [started]
    result = benchlib.LoadResult()

    def on_done(i: int, status: int) -> None:
        if status // 100 != 2:
            failed.add(i)
        now = time.monotonic()
        if now - last[0] > 15:
            last[0] = now
            log(f"loading: {result.ok:,}/{count:,} in {now - started:.0f} s")

    asyncio.run(benchlib._load(
        targets, lambda i: benchlib.kv_put_request(f"{prefix}{i:08d}"), count, connections,
        result, on_done,
    ))
    result.seconds = time.monotonic() - started
    log(f"loaded: {result}")
    if result.errors:
        raise RuntimeError(f"the load lost connections: {result}")
    return set(range(count)) - failed


def restore_keys(cluster: KvCluster, prefix: str, count: int, workdir: str) -> set[int]:
    """
    Write a backup file of C{prefix}NNNNNNNN for N in 0 .. C{count} - 1
    and load it through node n1 as C{kvctl snapshot restore} does; the
    indexes acknowledged (every one, or the run stops).
    """
    from twisted_kv.app import snapshot
    from twisted_kv.client.sync import Client
    from twisted_kv.core.backup import BackupRecord, SnapshotWriter

    path = os.path.join(workdir, "load.kvs")
    with open(path, "wb") as stream:
        writer = SnapshotWriter(stream)
        writer.begin_partition(0, "0.0", 0.0)
        for i in range(count):
            writer.add(BackupRecord(f"k{prefix}{i:08d}", benchlib.VALUE, "application/octet-stream",
                                    "0.0", None))
        writer.finish()
    client = Client(cluster.url(cluster.node_ids[0]), timeout=60)
    try:
        outcome = snapshot.restore(client, path)
    finally:
        client.close()
        os.unlink(path)
    log(outcome.describe("restored", "from", path))
    return set(range(count))


async def _write_for(targets: list[tuple[str, int]], prefix: str, seconds: float,
                     connections: int) -> tuple[list[int], dict[int, int]]:
    acked: list[int] = []
    others: dict[int, int] = {}
    counter = iter(range(10**9))
    deadline = time.monotonic() + seconds

    async def worker(index: int) -> None:
        reader, writer = await asyncio.open_connection(*targets[index % len(targets)])
        try:
            for i in counter:
                if time.monotonic() >= deadline:
                    return
                writer.write(benchlib.kv_put_request(f"{prefix}{i:08d}"))
                status, _ = await benchlib._read_response(reader)
                if status // 100 == 2:
                    acked.append(i)
                else:
                    others[status] = others.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return acked, others


def write_for(cluster: KvCluster, nodes: list[str], prefix: str, seconds: float,
              connections: int = 16) -> tuple[list[int], dict[int, int]]:
    """
    PUT new keys through C{nodes} for C{seconds}; the indexes acknowledged
    and the count of every other status.
    """
    targets = [("127.0.0.1", cluster.http_ports[node]) for node in nodes]
    return asyncio.run(_write_for(targets, prefix, seconds, connections))


def get_status(cluster: KvCluster, node: str, key: str, timeout: float = 5.0) -> tuple[int, bytes]:
    return benchlib.http("GET", cluster.url(node) + "/kv/" + urllib.parse.quote(key),
                         timeout=timeout)


def served(cluster: KvCluster, node: str, keys: list[str]) -> int:
    """
    How many of C{keys} a GET through C{node} answers with 200 and the
    value written.
    """
    return len(served_keys(cluster, node, keys))


def served_keys(cluster: KvCluster, node: str, keys: list[str]) -> set[str]:
    """
    The keys of C{keys} that a GET through C{node} answers with 200 and
    the value written.
    """
    ok: set[str] = set()

    async def run() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.http_ports[node])
        try:
            for key in keys:
                writer.write(f"GET /kv/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                status, body = await benchlib._read_response(reader)
                if status == 200 and body == benchlib.VALUE:
                    ok.add(key)
        finally:
            writer.close()

    try:
        asyncio.run(asyncio.wait_for(run(), 60))
    except Exception:
        pass
    return ok


# -- watching a node ------------------------------------------------------------


def log_size(cluster: KvCluster, node: str) -> int:
    try:
        return os.path.getsize(cluster.log(node))
    except OSError:
        return 0


def recovered_line(cluster: KvCluster, node: str, offset: int) -> Optional[dict]:
    """
    The recovery line node C{node} logged after byte C{offset} of its log.
    """
    with open(cluster.log(node), "rb") as source:
        source.seek(offset)
        match = RECOVERED.search(source.read())
    if match is None:
        return None
    return {"keys": int(match[1]), "bytes": int(match[2]), "path": match[3].decode(),
            "seconds": float(match[4])}


def leader_view(cluster: KvCluster, nodes: list[str]) -> Optional[tuple[str, dict]]:
    for node in nodes:
        try:
            view = cluster.cluster_view(node, timeout=1.0)
        except Exception:
            continue
        leader = view.get("leader")
        if leader:
            try:
                return leader, cluster.cluster_view(leader, timeout=1.0)
            except Exception:
                return None
    return None


def node_state(cluster: KvCluster, node: str, asked: list[str]) -> Optional[tuple[str, bool]]:
    """
    C{node}'s (state, synced) in the leader's view.
    """
    found = leader_view(cluster, asked)
    if found is None:
        return None
    for entry in found[1]["nodes"]:
        if entry["id"] == node:
            return entry["state"], bool(entry["synced"])
    return None


def all_synced(cluster: KvCluster) -> bool:
    found = leader_view(cluster, cluster.node_ids)
    if found is None:
        return False
    return all(e["state"] == "alive" and e["synced"] for e in found[1]["nodes"])


def keys_held(cluster: KvCluster) -> dict[str, int]:
    found = leader_view(cluster, cluster.node_ids)
    assert found is not None
    return {entry["id"]: entry["keys"] for entry in found[1]["nodes"]}


def metrics(cluster: KvCluster, node: str) -> dict[str, float]:
    """
    The unlabelled samples and C{node="..."} samples of C{node}'s own
    /metrics, by name (labelled ones as C{name{node}}).
    """
    status, body = benchlib.http("GET", cluster.url(node) + "/metrics", timeout=5)
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in body.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


# -- what a node's log holds ----------------------------------------------------


def written_end(data: bytes) -> int:
    """
    Where the bytes of a log segment end, before the zeros the log writes
    ahead: no record written after this starts before it (a record's last
    bytes may be zeros, but not its header's).
    """
    return len(data.rstrip(b"\0"))


def segment_ends(directory: str) -> dict[int, int]:
    """
    L{written_end} of each log segment in C{directory}.
    """
    ends = {}
    for name in os.listdir(directory):
        number = segment_number(name)
        if number is not None:
            with open(os.path.join(directory, name), "rb") as source:
                ends[number] = written_end(source.read())
    return ends


def records_since(directory: str, before: dict[int, int]) -> dict:
    """
    Count the records of the (stopped) node's log in C{directory} written
    after the segment ends C{before} (L{segment_ends}): by type, with
    their bytes, and the entries (APPEND) or snapshot records (SNAPSHOT)
    they carry.
    """
    names = {durable.CONSENSUS: "consensus", durable.APPEND: "append",
             durable.SNAPSHOT: "snapshot", durable.FORGET: "forget",
             durable.IDENTITY: "identity", durable.CLEAN: "clean"}
    counts: dict[str, dict[str, int]] = {}
    for file_name in sorted(os.listdir(directory)):
        number = segment_number(file_name)
        if number is None:
            continue
        with open(os.path.join(directory, file_name), "rb") as source:
            data = source.read()
        start = before.get(number, 0)
        if written_end(data) <= start:
            continue
        scan = Scan(data)
        offset = 0
        for record_type, payload in scan:
            here = offset
            offset += 9 + len(payload)
            if here < start:
                continue
            name = names.get(record_type, str(record_type))
            entry = counts.setdefault(name, {"records": 0, "bytes": 0, "items": 0})
            entry["records"] += 1
            entry["bytes"] += 9 + len(payload)
            if record_type in (durable.APPEND, durable.SNAPSHOT):
                fields = codec.decode(payload)
                # after the partition and the record's number: an append's
                # epoch, prev_seq, prev_epoch, entries; a snapshot's epoch,
                # seq, seq_epoch, first, last, records
                items = fields[5] if record_type == durable.APPEND else fields[7]
                entry["items"] += len(items) if isinstance(items, (list, tuple)) else 0
    return counts


# -- the steps -------------------------------------------------------------------


def measure_disk(cluster: KvCluster, acked: int) -> dict:
    held = keys_held(cluster)
    out = {"nodes": {}}
    for node in cluster.node_ids:
        path = cluster.node_data_dir(node)
        assert path is not None
        size = benchlib.directory_bytes(path)
        out["nodes"][node] = {"bytes": size, "keys": held.get(node, 0),
                              "bytes_per_key": size / held[node] if held.get(node) else None}
    total = sum(n["bytes"] for n in out["nodes"].values())
    copies = sum(n["keys"] for n in out["nodes"].values())
    out["bytes_per_key_copy"] = total / copies if copies else None
    out["copies"] = copies
    out["acked"] = acked
    return out


def recover_one(cluster: KvCluster, sample: list[str], timeout: float) -> dict:
    leader = cluster.current_leader()
    node = next(n for n in cluster.node_ids if n != leader)
    others = [n for n in cluster.node_ids if n != node]
    log(f"recovery: stopping {node} (the leader is {leader})")
    t = time.monotonic()
    cluster.stop_node(node)
    stop_s = time.monotonic() - t
    path = cluster.node_data_dir(node)
    assert path is not None
    before = segment_ends(path)
    time.sleep(1)
    offset = log_size(cluster, node)
    started = time.monotonic()
    proc = cluster.start_node(node)
    line = benchlib.wait_for(f"{node}'s recovery line",
                             lambda: proc.poll() is None and recovered_line(cluster, node, offset),
                             timeout, step=0.05)
    logged = time.monotonic() - started
    benchlib.wait_for(f"a GET through {node}",
                      lambda: get_status(cluster, node, sample[0], 1.0)[0] == 200,
                      timeout, step=0.05)
    serving = time.monotonic() - started
    benchlib.wait_for(f"{node} alive and synced",
                      lambda: node_state(cluster, node, others) == ("alive", True),
                      timeout, step=0.1)
    synced = time.monotonic() - started
    ok = served(cluster, node, sample)
    time.sleep(2)
    # read while the node runs: a record being written ends the scan
    records = records_since(path, before)
    return {"node": node, "stop_s": stop_s, "line": line, "logged_s": logged,
            "serving_s": serving, "synced_s": synced, "sample": len(sample), "sample_ok": ok,
            "records": records}


def profile_mark(cluster: KvCluster, profile: Optional[str]) -> None:
    """
    With C{--profile}, have every node write the CPU samples taken since
    its start or its last mark (L{cpuprof}: C{DIR/nX.N}, N counting the
    marks of that process from 0).
    """
    if profile is not None:
        for proc in cluster.procs.values():
            os.kill(proc.pid, benchlib.signal.SIGUSR2)


def restart_all(cluster: KvCluster, sample: list[str], timeout: float,
                profile: Optional[str] = None) -> dict:
    log("whole-cluster restart: stopping every node")
    t = time.monotonic()
    for proc in cluster.procs.values():
        benchlib._signal_group(proc.pid, benchlib.signal.SIGTERM)
    for node in cluster.node_ids:
        cluster.stop_node(node)
    stop_s = time.monotonic() - t
    time.sleep(1)
    offsets = {node: log_size(cluster, node) for node in cluster.node_ids}
    started = time.monotonic()
    for node in cluster.node_ids:
        cluster.start_node(node)
    logged: dict[str, float] = {}
    lines: dict[str, dict] = {}
    leader_s = None
    served_s = None
    ok = 0
    pending = set(sample)
    deadline = started + timeout
    while time.monotonic() < deadline:
        for node in cluster.node_ids:
            if node not in logged:
                if cluster.procs[node].poll() is not None:
                    raise RuntimeError(f"{node} exited:\n" + benchlib.tail(cluster.log(node)))
                line = recovered_line(cluster, node, offsets[node])
                if line:
                    logged[node] = time.monotonic() - started
                    lines[node] = line
                    if len(logged) == len(cluster.node_ids):
                        profile_mark(cluster, profile)  # DIR/nX.0: up to the last recovery
        if leader_s is None and len(logged) == len(cluster.node_ids):
            views = []
            for node in cluster.node_ids:
                try:
                    views.append(cluster.cluster_view(node, 1.0).get("leader"))
                except Exception:
                    views.append(None)
            if None not in views and len(set(views)) == 1:
                leader_s = time.monotonic() - started
        if leader_s is not None:
            # A key once served stays served: read again only those not
            # served yet, so that the figure is when the last of them was
            # first served, not the end of a whole pass over the sample.
            pending -= served_keys(cluster, cluster.current_leader(), sorted(pending))
            ok = len(sample) - len(pending)
            if not pending:
                served_s = time.monotonic() - started
                profile_mark(cluster, profile)  # DIR/nX.1: from there until served
                break
        time.sleep(0.05)
    if profile is not None:
        time.sleep(2)
        for node in cluster.node_ids:
            window = os.path.join(profile, f"{node}.1")
            if os.path.exists(window):
                os.replace(window, os.path.join(profile, f"{node}.after-recovery"))
    last_logged = max(logged.values()) if logged else None
    return {"stop_s": stop_s, "logged_s": logged, "lines": lines, "leader_s": leader_s,
            "served_s": served_s, "after_last_recovery_s":
            served_s - last_logged if served_s is not None and last_logged is not None else None,
            "sample": len(sample), "sample_ok": ok}


def catch_up(cluster: KvCluster, missed_seconds: float, timeout: float) -> dict:
    leader = cluster.current_leader()
    node = next(n for n in cluster.node_ids if n != leader)
    others = [n for n in cluster.node_ids if n != node]
    path = cluster.node_data_dir(node)
    assert path is not None
    held_before = keys_held(cluster).get(node, 0)
    log(f"catch-up: stopping {node}, then writing through {', '.join(others)} "
        f"for {missed_seconds:g} s")
    cluster.stop_node(node)
    before = segment_ends(path)
    bytes_before = benchlib.directory_bytes(path)
    acked, others_status = write_for(cluster, others, "missed/", missed_seconds)
    log(f"catch-up: {len(acked):,} writes acknowledged while {node} was down "
        f"(other statuses: {others_status})")
    time.sleep(0.5)
    offset = log_size(cluster, node)
    started = time.monotonic()
    proc = cluster.start_node(node)
    benchlib.wait_for(f"{node}'s recovery line",
                      lambda: proc.poll() is None and recovered_line(cluster, node, offset),
                      timeout, step=0.05)
    logged = time.monotonic() - started
    benchlib.wait_for(f"{node} alive and synced",
                      lambda: node_state(cluster, node, others) == ("alive", True),
                      timeout, step=0.1)
    synced = time.monotonic() - started
    benchlib.wait_for("every node synced", lambda: all_synced(cluster), timeout, step=0.2)
    all_s = time.monotonic() - started
    time.sleep(2)
    grown = benchlib.directory_bytes(path) - bytes_before
    held_after = keys_held(cluster).get(node, 0)
    io = {}
    try:
        with open(f"/proc/{proc.pid}/io") as source:
            for line in source:
                name, value = line.split(":")
                io[name] = int(value)
    except OSError:
        pass
    sample = [f"missed/{i:08d}" for i in random.sample(acked, min(500, len(acked)))]
    ok = served(cluster, node, sample)
    node_log = open(cluster.log(node), "rb").read()[offset:].decode("utf-8", "replace")
    interesting = [line.split(" ", 2)[-1] for line in node_log.splitlines()
                   if re.search(r"repair|snapshot|differs|lost|refus|error|Traceback|full",
                                line, re.I)]
    return {"node": node, "missed_writes": len(acked), "other_statuses": others_status,
            "held_before": held_before, "held_after": held_after,
            "logged_s": logged, "synced_s": synced, "all_synced_s": all_s,
            "log_bytes_written": grown, "rchar": io.get("rchar"),
            "segments_before": before, "path": path,
            "sample": len(sample), "sample_ok": ok, "log_lines": interesting[:10]}


def run(processes: Processes, ports: Ports, workdir: str, runtime: Runtime, options) -> dict:
    data = os.path.join(workdir, "data")
    settings = {"replicas": options.replicas} if options.replicas != "majority" else None
    profiled = {}
    if options.profile:
        os.makedirs(options.profile, exist_ok=True)
        profiled = {"wrapper": [os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "cpuprof.py")],
                    "extra_env": {"KVBENCH_PROFILE":
                                  lambda node: os.path.join(options.profile, node)}}
    cluster = KvCluster(processes, ports, workdir, runtime, name="durability",
                        data_dir=data, fsync=options.fsync, settings=settings, **profiled)
    result: dict = {"keys": options.keys, "fsync": options.fsync, "replicas": options.replicas,
                    "filesystem": benchlib.filesystem_type(workdir), "data_dir": data,
                    "machine": benchlib.machine()}
    log(f"durability: {options.keys:,} keys, fsync = {options.fsync}, data in {data} "
        f"({result['filesystem']})")
    cluster.start()
    try:
        started = time.monotonic()
        if options.load == "restore":
            acked = restore_keys(cluster, "dur/", options.keys, workdir)
        else:
            acked = load_keys(cluster, "dur/", options.keys, options.connections)
        result["load_s"] = time.monotonic() - started
        result["load"] = options.load
        result["loadavg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        result["acked"] = len(acked)
        benchlib.wait_for("every node synced", lambda: all_synced(cluster), 120)
        time.sleep(2)
        sample = [f"dur/{i:08d}" for i in random.sample(sorted(acked),
                                                         min(options.sample, len(acked)))]
        result["disk"] = measure_disk(cluster, len(acked))
        result["recovery"] = recover_one(cluster, sample, options.timeout)
        result["restart"] = restart_all(cluster, sample, options.timeout, options.profile)
        benchlib.wait_for("every node synced", lambda: all_synced(cluster), 120)
        result["catch_up"] = catch_up(cluster, options.missed_seconds, options.timeout)
        node = result["catch_up"]["node"]
        result["catch_up"]["metrics"] = {
            name: value for name, value in metrics(cluster, cluster.current_leader()).items()
            if "antientropy_bytes" in name or "repaired" in name}
        cluster.stop_node(node)
        result["catch_up"]["records"] = records_since(
            result["catch_up"]["path"], result["catch_up"].pop("segments_before"))
    finally:
        cluster.stop()
    return result


def copied(records: dict) -> str:
    """
    What L{records_since} found, in words.
    """
    appended = records.get("append", {})
    snapped = records.get("snapshot", {})
    return (
        f"{appended.get('records', 0):,} append records carrying {appended.get('items', 0):,} "
        f"entries ({appended.get('bytes', 0) / 2**20:.1f} MiB), "
        f"{snapped.get('records', 0):,} snapshot chunks carrying {snapped.get('items', 0):,} "
        f"records ({snapped.get('bytes', 0) / 2**20:.1f} MiB)"
        + (f", {records['forget']['records']} forget records" if "forget" in records else "")
    )


def describe(result: dict) -> list[str]:
    disk = result["disk"]
    live = 100 + len("kdur/00000000")
    lines = [
        f"durability: {result['keys']:,} keys of 100 bytes, fsync = {result['fsync']}, "
        f"replicas = {result['replicas']}, data on {result['filesystem']}; loaded "
        + (f"by a restore through n1 at {result['acked'] / result['load_s']:,.0f} keys/s "
           if result["load"] == "restore" else
           f"through every node at {result['acked'] / result['load_s']:,.0f} PUT/s ")
        + f"({result['acked']:,} acknowledged; load average at the end "
        f"{result['loadavg']})",
        "disk:",
    ]
    for node, figures in disk["nodes"].items():
        per_key = figures["bytes_per_key"]
        lines.append(f"  {node}: {figures['bytes'] / 2**20:.1f} MiB for {figures['keys']:,} keys"
                     + (f" = {per_key:.0f} bytes per key ({per_key / live:.1f}x the "
                        f"~{live} bytes of key + value)" if per_key else ""))
    rec = result["recovery"]
    line = rec["line"]
    lines += [
        f"recovery of one node ({rec['node']}, SIGTERM, stopped in {rec['stop_s']:.1f} s):",
        f"  logged 'recovered {line['keys']:,} keys ({line['bytes']:,} bytes) from "
        f"{line['path']} in {line['seconds']:.2f} s' {rec['logged_s']:.2f} s after start",
        f"  first GET through it answered at {rec['serving_s']:.2f} s; alive and synced in "
        f"the leader's view at {rec['synced_s']:.2f} s; sample {rec['sample_ok']}/"
        f"{rec['sample']} served with the right value",
        "  written to its log since the restart (no write was made while it was down): "
        + copied(rec["records"]),
    ]
    rs = result["restart"]
    lines.append(f"whole-cluster restart (every node SIGTERM, stopped in {rs['stop_s']:.1f} s, "
                 "then all started):")
    for node, seconds in sorted(rs["logged_s"].items()):
        ln = rs["lines"][node]
        lines.append(f"  {node}: recovered {ln['keys']:,} keys in {ln['seconds']:.2f} s, "
                     f"logged {seconds:.2f} s after start")
    fmt = (lambda v: f"{v:.2f} s" if v is not None else "never")
    lines.append(f"  leader agreed by every node at {fmt(rs['leader_s'])}; "
                 f"{rs['sample_ok']}/{rs['sample']} sampled acknowledged keys served at "
                 f"{fmt(rs['served_s'])} ({fmt(rs['after_last_recovery_s'])} after the last "
                 "recovery line)")
    cu = result["catch_up"]
    lines += [
        f"catch-up of {cu['node']} after missing {cu['missed_writes']:,} writes "
        f"(other answers while it was down: {cu['other_statuses'] or 'none'}):",
        f"  recovery line at {cu['logged_s']:.2f} s, synced in the leader's view at "
        f"{cu['synced_s']:.2f} s, every node synced at {cu['all_synced_s']:.2f} s",
        f"  keys held {cu['held_before']:,} before -> {cu['held_after']:,} after; "
        f"its log grew by {cu['log_bytes_written'] / 2**20:.1f} MiB since the restart "
        f"(the process read {(cu['rchar'] or 0) / 2**20:.1f} MiB from files and sockets)",
        "  records written since the restart: " + copied(cu["records"]),
        f"  sample of missed keys through it: {cu['sample_ok']}/{cu['sample']} served",
    ]
    if cu["metrics"]:
        lines.append("  leader's /metrics: " + ", ".join(
            f"{name} {value:,.0f}" for name, value in sorted(cu["metrics"].items())))
    for line in cu["log_lines"]:
        lines.append(f"  {cu['node']} logged: {line}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--fsync", default="always", choices=["always", "everysec", "never"])
    parser.add_argument("--replicas", default="majority")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--load", choices=["put", "restore"], default="put",
                        help="load the keys by PUTs over --connections connections (the load "
                        "rate is then a PUT throughput), or by restoring a backup file of them "
                        "as kvctl snapshot restore does (much faster)")
    parser.add_argument("--sample", type=int, default=1000,
                        help="acknowledged keys read back after each restart")
    parser.add_argument("--missed-seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds each wait may take before the run fails")
    parser.add_argument("--dir", help="where the data goes (default: a temporary directory "
                        "in $KVBENCH_WORKDIR or the system's)")
    parser.add_argument("--runtime", default="cpython")
    parser.add_argument("--runtime-python", default=sys.executable)
    parser.add_argument("--profile", metavar="DIR",
                        help="run the nodes under bench/cpuprof.py and keep, for the "
                        "whole-cluster restart, each node's CPU samples from the last "
                        "recovery line until the sample was served in DIR/nX.after-recovery "
                        "(python bench/cpuprof.py --report FILE)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs")
    options = parser.parse_args()
    benchlib.install_signal_handlers()
    processes = Processes()
    parent = options.dir or os.environ.get("KVBENCH_WORKDIR") or None
    workdir = tempfile.mkdtemp(prefix="kvbench-durability-", dir=parent)
    if benchlib.filesystem_type(workdir) == "tmpfs":
        log(f"warning: {workdir} is on tmpfs, where a sync costs nothing: give --dir")
    try:
        result = run(processes, Ports(), workdir,
                     Runtime(options.runtime, options.runtime_python), options)
        print("\n".join(describe(result)), flush=True)
        if options.json:
            with open(options.json, "w") as out:
                json.dump(result, out, indent=2, default=str)
    except benchlib.Interrupted as why:
        log(f"interrupted ({why})")
        return 130
    finally:
        processes.stop_all()
        if options.keep:
            log(f"kept {workdir}")
        else:
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
