"""
FTP throughput: upload and download MB/s of one large file through the
twisted_kv FTP service, next to vsftpd serving the same file from tmpfs.

    python bench/ftp_throughput.py [--size-mib 100] [--repeat 3]
    python bench/ftp_throughput.py --url ftp://alice:wonderland@127.0.0.1:7201/

Both servers are driven by curl (passive mode, binary), so the client costs
the same for both.  By default the twisted_kv server runs in its own process
over a single-process store (L{LocalKeyValue}); with C{--url} the running
node at that URL is measured instead (a node of a cluster).  vsftpd
gets a temporary configuration (anonymous uploads into a directory on
tmpfs) and the script removes everything it created when it ends.  Each
figure is the median of the runs, in MiB/s.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator, Optional

_SERVE = """
import sys
from twisted.internet import reactor
from twisted_kv.ftp.server import build_ftp_factory
from twisted_kv.cluster.local import LocalKeyValue

factory = build_ftp_factory(
    LocalKeyValue(reactor), {"bench": "plain:bench"}, clock=reactor,
    max_file_bytes=int(sys.argv[1]),
)
port = reactor.listenTCP(0, factory, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""

_VSFTPD = """\
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root={root}
write_enable=YES
anon_upload_enable=YES
anon_other_write_enable=YES
anon_umask=022
local_enable=NO
pasv_enable=YES
pasv_address=127.0.0.1
seccomp_sandbox=NO
secure_chroot_dir={empty}
xferlog_enable=NO
ftp_username={user}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def twisted_kv_server(size: int) -> Iterator[str]:
    """
    Run the twisted_kv FTP service; yield its base URL.
    """
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, PYTHONPATH=repository)
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(2 * size)],
        stdout=subprocess.PIPE,
        env=environment,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"ftp://bench:bench@127.0.0.1:{port}/"
    finally:
        _stop(process)


@contextmanager
def vsftpd_server(tmpfs: str) -> Iterator[str]:
    """
    Run vsftpd with a temporary configuration, anonymous uploads into a
    directory on C{tmpfs}; yield its base URL.
    """
    binary = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
    if not os.path.exists(binary):
        raise RuntimeError("vsftpd is not installed (apt-get install vsftpd)")
    user = "ftp"
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        user, account = "nobody", pwd.getpwnam("nobody")
    workspace = tempfile.mkdtemp(prefix="vsftpd-bench-", dir=tmpfs)
    try:
        root, empty = os.path.join(workspace, "root"), os.path.join(workspace, "empty")
        uploads = os.path.join(root, "up")
        os.makedirs(uploads)
        os.makedirs(empty)
        os.chown(uploads, account.pw_uid, account.pw_gid)
        os.chmod(root, 0o555)
        port = _free_port()
        config = os.path.join(workspace, "vsftpd.conf")
        with open(config, "w") as file:
            file.write(_VSFTPD.format(port=port, root=root, empty=empty, user=user))
        process = subprocess.Popen([binary, config], stdin=subprocess.DEVNULL)
        try:
            _wait_for(port, process)
            yield f"ftp://anonymous:@127.0.0.1:{port}/up/"
        finally:
            _stop(process)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _curl(*arguments: str) -> float:
    """
    Run one curl transfer; its speed in MiB/s.
    """
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "600", *arguments],
        capture_output=True,
        check=True,
    )
    return float(result.stdout.decode()) / (1024 * 1024)


def measure(base: str, source: str, repeat: int) -> tuple[float, float]:
    """
    Upload then download C{source} C{repeat} times through the server at
    C{base}; the median upload and download speeds.
    """
    uploads, downloads = [], []
    url = base + "bench.bin"
    for _ in range(repeat):
        uploads.append(_curl("-T", source, "-w", "%{speed_upload}", url))
        downloads.append(_curl("-o", os.devnull, "-w", "%{speed_download}", url))
    return statistics.median(uploads), statistics.median(downloads)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmpfs", default="/dev/shm")
    parser.add_argument("--url", help="measure the running FTP service at this URL")
    options = parser.parse_args(argv)
    if shutil.which("curl") is None:
        print("curl is needed (apt-get install curl)", file=sys.stderr)
        return 1
    size = options.size_mib * 1024 * 1024
    workspace = tempfile.mkdtemp(prefix="ftp-bench-", dir=options.tmpfs)
    try:
        source = os.path.join(workspace, "bench.bin")
        with open(source, "wb") as file:
            for _ in range(options.size_mib):
                file.write(os.urandom(1024 * 1024))
        rows = []
        if options.url:
            base = options.url if options.url.endswith("/") else options.url + "/"
            rows.append(("twisted_kv (cluster node)", *measure(base, source, options.repeat)))
        else:
            with twisted_kv_server(size) as base:
                rows.append(("twisted_kv (LocalKeyValue)", *measure(base, source, options.repeat)))
        try:
            with vsftpd_server(options.tmpfs) as base:
                rows.append(("vsftpd (tmpfs)", *measure(base, source, options.repeat)))
        except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
            print(f"vsftpd skipped: {error}", file=sys.stderr)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    print(f"{options.size_mib} MiB file, median of {options.repeat} runs, curl")
    print(f"{'server':<28} {'upload MiB/s':>13} {'download MiB/s':>15}")
    for name, upload, download in rows:
        print(f"{name:<28} {upload:>13.1f} {download:>15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
