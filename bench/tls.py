"""
The cost of TLS: twisted_kv and etcd, each plain and with TLS on its client
and peer ports, on loopback, in one run.

    python bench/tls.py                        # about 3 minutes
    python bench/tls.py --duration 10 --connections 16 64

It makes a CA and certificates for 127.0.0.1 with C{kvctl certs create}
(ECDSA P-256) and starts, side by side:

  a. a three-node twisted_kv cluster without C{[tls]};
  b. the same with C{[tls]}: HTTPS to clients, mutual TLS between nodes;
  c. a three-member etcd cluster (Debian's etcd-server, data on tmpfs),
     plain;
  d. the same with the same certificates on its client port and its peer
     port (C{--peer-client-cert-auth}).

Each is driven through its leader by the same wrk and Lua workloads as
bench/compare.py (PUT of 100-byte values under new keys, GET of preloaded
keys) over keep-alive connections, and by GET with a new connection per
request (C{Connection: close}: one TCP connect and, with TLS, one full
handshake per request).  The four systems take turns for each cell, so that
all see the same machine.  The table gives requests/s, latency and the
server CPU time per request; below it, what TLS adds per request to each
system (CPU and median latency).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
from benchlib import EtcdCluster, KvCluster, Ports, Processes, Runtime, log, version  # noqa: E402

#: workload name -> (wrk workload, extra wrk options, description)
WORKLOADS = {
    "put": ("put", [], "PUT new keys"),
    "get": ("get", [], "GET"),
    "get-close": ("get", ["-H", "Connection: close"], "GET, new connection each"),
}


class Target:
    """
    One system wrk drives: its label, Lua script, entry URL and processes.
    """

    def __init__(self, label: str, script: str, url, pids) -> None:
        self.label = label
        self.script = script
        self.url = url
        self.pids = pids


def make_certificates(workdir: str) -> str:
    """
    A CA and certificates for three nodes on 127.0.0.1, made by kvctl.
    """
    config = os.path.join(workdir, "certs.ini")
    lines = ["[cluster]", "secret = certs"]
    for i in range(1, 4):
        lines += [f"[node:n{i}]", "host = 127.0.0.1", f"http_port = {7000 + i}",
                  f"peer_port = {7100 + i}", f"ftp_port = {7200 + i}"]
    with open(config, "w") as out:
        out.write("\n".join(lines) + "\n")
    folder = os.path.join(workdir, "certs")
    subprocess.run(
        [sys.executable, "-m", "twisted_kv.app.kvctl", "certs", "create", folder, "--config", config],
        check=True, capture_output=True, env=Runtime("cpython", sys.executable).environment(workdir),
    )
    return folder


def preload(label: str, port: int, make, keys: int, tls) -> None:
    result = benchlib.load([("127.0.0.1", port)], make, keys, 32, tls=tls)
    log(f"{label} preload: {result}")
    if result.failed:
        raise RuntimeError(f"{label} preload failed: {result}")


def format_table(rows: list[dict]) -> list[str]:
    lines = [
        f"{'workload':<26} {'conns':>5}  {'system':<22} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'CPU us/op':>10}",
    ]
    for row in rows:
        flag = " !" if row["non2xx"] or row["errors"] else ""
        lines.append(
            f"{WORKLOADS[row['workload']][2]:<26} {row['connections']:>5}  {row['system']:<22}"
            f" {row['ops']:>8.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}"
            f" {row['cpu_us_per_op']:>10.0f}{flag}"
        )
    return lines


def tls_costs(rows: list[dict], pairs: list[tuple[str, str]]) -> list[str]:
    """
    For each (plain, TLS) pair of systems and each cell: what TLS adds per
    request (server CPU, median latency) and what it takes off throughput.
    """
    found = {(r["system"], r["workload"], r["connections"]): r for r in rows}
    lines = ["What TLS adds per request (TLS minus plain, same cell):"]
    for plain, secure in pairs:
        for (system, workload, conns), row in found.items():
            if system != plain or (secure, workload, conns) not in found:
                continue
            other = found[(secure, workload, conns)]
            lines.append(
                f"  {secure:<22} {WORKLOADS[workload][2]:<26} {conns:>3} conns:"
                f" CPU {other['cpu_us_per_op'] - row['cpu_us_per_op']:+.0f} us/op,"
                f" p50 {other['p50_ms'] - row['p50_ms']:+.2f} ms,"
                f" throughput {100 * (other['ops'] / row['ops'] - 1) if row['ops'] else 0:+.0f}%"
            )
    return lines


def run(options, processes: Processes, ports: Ports, workdir: str) -> int:
    info = benchlib.machine()
    etcd_version = version(["etcd", "--version"]).replace("etcd Version: ", "")
    header = [
        f"machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, load average at"
        " start " + " ".join(f"{x:.1f}" for x in info["load"]),
        f"twisted_kv under Python {sys.version.split()[0]}; etcd {etcd_version};"
        f" {version(['wrk', '-v']).split(' [')[0]}; {version(['openssl', 'version'])}",
        f"wrk: 2 threads, {options.duration:g} s per run, 100-byte values, {options.preload:,}"
        " preloaded keys; ECDSA P-256 certificates; everything on 127.0.0.1",
    ]
    for line in header:
        log(line)
    certs = make_certificates(workdir)
    runtime = Runtime("cpython", sys.executable)
    kv_plain = KvCluster(processes, ports, workdir, runtime, name="kv-plain")
    kv_tls = KvCluster(processes, ports, workdir, runtime, name="kv-tls", tls_dir=certs)
    etcd_plain = EtcdCluster(processes, ports, workdir, name="etcd-plain")
    etcd_tls = EtcdCluster(processes, ports, workdir, name="etcd-tls", tls_dir=certs)
    for system in (kv_plain, kv_tls, etcd_plain, etcd_tls):
        system.start()
    for cluster in (kv_plain, kv_tls):
        leader = cluster.current_leader()
        preload(cluster.workdir, cluster.http_ports[leader],
                lambda i: benchlib.kv_put_request(f"bench/pre/{i}"), options.preload, cluster.tls)
    for etcd in (etcd_plain, etcd_tls):
        preload(etcd.workdir, etcd.client_ports[etcd.leader()],
                lambda i: benchlib.etcd_put_request(f"bench/pre/{i}"), options.preload, etcd.tls)

    targets = [
        Target("twisted_kv", "kv.lua", lambda: kv_plain.url(kv_plain.current_leader()), kv_plain.pids),
        Target("twisted_kv TLS", "kv.lua", lambda: kv_tls.url(kv_tls.current_leader()), kv_tls.pids),
        Target(f"etcd {etcd_version}", "etcd.lua", lambda: etcd_plain.url(etcd_plain.leader()),
               etcd_plain.pids),
        Target(f"etcd {etcd_version} TLS", "etcd.lua", lambda: etcd_tls.url(etcd_tls.leader()),
               etcd_tls.pids),
    ]
    rows: list[dict] = []
    run_id = os.urandom(3).hex()
    for name in options.workloads:
        workload, wrk_options, description = WORKLOADS[name]
        for connections in options.connections:
            for target in targets:
                url = target.url()
                log(f"{target.label}: {description}, {connections} connections, {options.duration:g} s at {url}")
                figures = benchlib.run_wrk(
                    url, target.script, [workload, f"{run_id}-{name}-{connections}", str(options.preload)],
                    connections, options.duration, target.pids(), options=wrk_options,
                )
                rows.append({"system": target.label, "workload": name, "connections": connections,
                             **figures})
                log(f"  {figures['ops']:.0f} ops/s, p50 {figures['p50_ms']:.2f} ms,"
                    f" p99 {figures['p99_ms']:.2f} ms, {figures['cpu_us_per_op']:.0f} us CPU/op,"
                    f" non-2xx {figures['non2xx']}, socket errors {figures['errors']}")
    print()
    print("\n".join(header))
    print()
    print("\n".join(format_table(rows)))
    print()
    print("\n".join(tls_costs(rows, [(targets[0].label, targets[1].label),
                                     (targets[2].label, targets[3].label)])))
    bad = [r for r in rows if r["system"].startswith("twisted_kv") and (r["non2xx"] or r["errors"])]
    if bad:
        print(f"\n! {len(bad)} twisted_kv runs had non-2xx answers or socket errors (marked !)")
    return 1 if bad else 0


def parse_args(argv: Optional[list[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, nargs="+", default=[16])
    parser.add_argument("--preload", type=int, default=5000, help="keys preloaded for GET")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--keep", action="store_true", help="keep the logs and cluster files")
    return parser.parse_args(argv)


def main() -> int:
    options = parse_args()
    benchlib.install_signal_handlers()
    workdir = tempfile.mkdtemp(prefix="kvbench-tls-")
    return benchlib.run_in_workdir(
        workdir, options.keep,
        lambda processes, ports: run(options, processes, ports, workdir),
    )


if __name__ == "__main__":
    sys.exit(main())
