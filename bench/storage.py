# -*- test-case-name: tests.test_storage_log -*-
"""
Micro-benchmarks of twisted_kv.storage on the real file system. Prints
figures only.

    python bench/storage.py                 # in a temporary directory under the current one
    python bench/storage.py --dir /mnt/x    # on another disk
    python bench/storage.py --quick         # 100,000 records to recover instead of 1,000,000

Run it on the disk the data directory will use: the default temporary
directory (/tmp) may be a tmpfs, where a sync costs nothing.

Sections:

  commit    records of 100 bytes appended then committed (one write + one
            fdatasync) in batches of 1, 32 and 128: records and commits per
            second, with and without the sync
  recover   1,000,000 records of 100 bytes written to a log (64 MiB
            segments), then read back by Log.replay, from the disk (cached
            pages dropped with posix_fadvise) and from the cache; the same
            records as a snapshot, read back by Snapshots.read
  crc       zlib.crc32 alone over the same bytes, to show what share of
            the recovery is the checksum
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted_kv.storage.fs import OSFileSystem  # noqa: E402
from twisted_kv.storage.log import Log, encode_record  # noqa: E402
from twisted_kv.storage.snapshot import Snapshots  # noqa: E402

PAYLOAD = b"v" * 100


def _commit(directory: str, batch: int, sync: bool, seconds: float) -> tuple[float, float]:
    """
    Records per second and commits per second for C{seconds}.
    """
    log = Log(OSFileSystem(), directory)
    list(log.replay())
    commits = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(batch):
            log.append(1, PAYLOAD)
        log.commit(sync)
        commits += 1
    elapsed = time.perf_counter() - start
    log.close()
    return commits * batch / elapsed, commits / elapsed


def _drop_cache(directory: str) -> None:
    """
    Drop the cached pages of the (synced) files of C{directory}, so that
    reading them goes to the disk.
    """
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _recover(directory: str, count: int) -> None:
    fs = OSFileSystem()
    log = Log(fs, directory)
    list(log.replay())
    for i in range(0, count, 10_000):
        for _ in range(min(10_000, count - i)):
            log.append(1, PAYLOAD)
        log.commit(sync=False)
    log.sync()
    log.close()
    size = sum(fs.size(f"{directory}/{name}") for name in fs.listdir(directory))
    for cold in (True, False):
        if cold:
            _drop_cache(directory)
        start = time.perf_counter()
        again = Log(fs, directory)
        found = sum(1 for _ in again.replay())
        elapsed = time.perf_counter() - start
        again.close()
        assert found == count, found
        print(
            f"  log:      {count:,} records, {size / 2**20:.0f} MiB,"
            f" {'not cached' if cold else 'cached    '}: replayed in {elapsed:.2f} s"
            f" ({count / elapsed:,.0f} records/s)"
        )

    snapshots = Snapshots(fs, f"{directory}-snap")
    start = time.perf_counter()
    written = snapshots.write(1, ((1, PAYLOAD) for _ in range(count)))
    elapsed = time.perf_counter() - start
    print(f"  snapshot: written in {elapsed:.2f} s")
    _drop_cache(f"{directory}-snap")
    start = time.perf_counter()
    found = sum(1 for _ in snapshots.read(written))
    elapsed = time.perf_counter() - start
    assert found == count, found
    print(f"  snapshot: not cached: read in {elapsed:.2f} s ({count / elapsed:,.0f} records/s)")

    record = encode_record(1, PAYLOAD)[8:]
    start = time.perf_counter()
    for _ in range(count):
        zlib.crc32(record)
    elapsed = time.perf_counter() - start
    large = record * 10_000
    rounds = max(count // 10_000, 1)
    begin = time.perf_counter()
    for _ in range(rounds):
        zlib.crc32(large)
    rate = rounds * len(large) / (time.perf_counter() - begin) / 2**30
    print(
        f"  crc:      zlib.crc32 of each record alone: {elapsed:.2f} s;"
        f" over large buffers {rate:.1f} GiB/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=".", help="where to make the temporary directory")
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    root = tempfile.mkdtemp(prefix="storage-bench-", dir=options.dir)
    try:
        print("commit (100-byte records)")
        for sync in (True, False):
            for batch in (1, 32, 128):
                directory = f"{root}/c-{batch}-{sync}"
                records, commits = _commit(directory, batch, sync, 1.0 if options.quick else 3.0)
                print(
                    f"  batch {batch:>3}, {'fdatasync' if sync else 'no sync  '}: "
                    f"{records:>10,.0f} records/s, {commits:>8,.0f} commits/s"
                )
        print("recover")
        _recover(f"{root}/r", 100_000 if options.quick else 1_000_000)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
