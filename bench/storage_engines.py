"""
Storage engines for data_dir, measured on the disk the data would live on.

    python bench/storage_engines.py                 # CPython, 1,000,000 keys, about 2 minutes
    python bench/storage_engines.py --quick         # 200,000 keys, shorter runs, about 1 minute
    python bench/storage_engines.py --rounds 2      # every engine twice, interleaved
    python bench/storage_engines.py --pypy PATH     # also under PyPy (an interpreter
                                                    # with lmdb and twisted installed)
    python bench/storage_engines.py --etcd          # also etcd with its WAL on this disk

Everything is written under a temporary directory in --dir (default: the
system's temporary directory, which should be on the disk being judged), and
the directory is removed at the end, whatever happens.

Sections:

  fsync     the raw latency of this disk: a 4 KiB append + fdatasync, a
            4 KiB overwrite + fdatasync, an append + fsync
  engines   per engine and batch size (records per commit): commits/s,
            records/s, p50/p99 commit latency (records ready -> durable),
            CPU microseconds per record on the calling (reactor) thread
  recovery  per engine: load of --keys keys, disk bytes per key (after the
            load, and after the commit runs), then a
            fresh process recovering them into a dict (cold: the files are
            dropped from the page cache with posix_fadvise first), its time
            and resident memory per key
  etcd      (with --etcd) a three-member etcd with its data on this disk,
            PUT/s with wrk at 16 and 64 connections and WAL fsyncs per
            committed proposal, read from its /metrics

The write pattern is twisted_kv's: one record per client write, ~100-byte
values, group-committed, i.e. every record appended during one reactor turn
goes to the disk in one commit.  Every record is a key and the stored form
of twisted_kv's MemStore (a 10-byte header: version, content type; then the
value), keys drawn uniformly from the --keys loaded.

The engines:

  log         our own append-only log: per record <u32 length><u32 CRC32>
              <u16 key length><key><stored record>, CRC by zlib.crc32 over
              what follows it; one os.write + os.fdatasync per commit, on the
              calling thread
  log-thread  the same, with the fdatasync in a one-thread pool through
              Twisted's deferToThreadPool: the reactor thread encodes and
              writes, the pool thread waits for the disk
  log-prealloc-thread  log-thread on a tail zero-filled 64 MiB ahead (as
              etcd preallocates its WAL segments): commits overwrite
              allocated blocks, so fdatasync has no size or extent change
              to journal
  lmdb        LMDB through the lmdb package, one write transaction per
              commit, sync=True, metasync=True, on the calling thread
  lmdb-thread the whole transaction in a one-thread pool (Twisted)
  sqlite      SQLite, journal_mode=WAL, synchronous=FULL, one transaction
              (executemany INSERT OR REPLACE into a WITHOUT ROWID table) per
              commit, on the calling thread
  sqlite-thread  the whole transaction in a one-thread pool (Twisted)

  group-inline, group-thread  the log as a node would drive it: closed-loop
              writers (--clients), each write --work-us of CPU on the
              reactor (the rest of a PUT's work, ending in a system call
              as its answer's send would) and then one record; the
              records of a reactor turn are written together at its end,
              at most one fdatasync is in flight, and a write is answered
              when a sync covering it returns.  The sync on the reactor
              thread (inline, the reactor blocks) or in a one-thread pool.
              A 1 ms timer on the same reactor stands for everything else
              it serves: how late it fires is what a read waits.

The log's recovery is a snapshot of every key (64 KiB chunks, each with its
length and CRC32, written to a temporary name, fdatasync'ed, renamed) plus a
replay of a tail of --keys / 10 records written after it; "log-replay"
replays a log of --keys records without a snapshot.  LMDB's is opening the environment and reading
every key into a dict; "lmdb, served from the map" reads every key without
keeping it (what serving from LMDB directly costs: the pages of the file
mapped in, counted as RssFile).  SQLite's is SELECT key, rec into a dict.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Any, Callable

HERE = os.path.abspath(__file__)

KEY_FORMAT = "kuser:{:07d}"
# MemStore's stored form: <QH> version, content type number << 1, then the value.
_HEADER = struct.Struct("<QH")
VALUE = b"x" * 100
_FRAME = struct.Struct("<II")
_KEYLEN = struct.Struct("<H")
SNAPSHOT_MAGIC = b"TKVSNAP1"
CHUNK = 64 * 1024


def stored(version: int) -> bytes:
    return _HEADER.pack(version, 1 << 1) + VALUE


def key_of(i: int) -> str:
    return KEY_FORMAT.format(i)


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def rss() -> dict[str, int]:
    """
    Resident memory of this process, bytes: anonymous, file-backed, total.
    """
    figures = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                figures[name] = int(rest.split()[0]) * 1024
    return figures


def disk_bytes(path: str) -> int:
    """
    Bytes allocated on the disk under C{path} (st_blocks, so sparse maps count
    only what they use).
    """
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def evict(path: str) -> None:
    """
    Drop the files under C{path} from the page cache (theirs only: nothing
    else on the machine is touched), so that recovery reads the disk.
    """
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# -- the own log ----------------------------------------------------------------


def encode_record(key: str, record: bytes, crc32: Callable[[bytes], int] = zlib.crc32) -> bytes:
    body = _KEYLEN.pack(len(key)) + key.encode() + record
    return _FRAME.pack(len(body), crc32(body)) + body


def encode_batch(batch: list[tuple[str, bytes]]) -> bytes:
    return b"".join([encode_record(key, record) for key, record in batch])


def replay(path: str, into: dict) -> tuple[int, int]:
    """
    Replay the log at C{path} into C{into}; stop at the first torn or corrupt
    record (the tail a crash may leave).  Returns (records, valid bytes).
    """
    with open(path, "rb") as log:
        data = log.read()
    view = memoryview(data)
    offset = 0
    count = 0
    end = len(data)
    unpack_frame = _FRAME.unpack_from
    unpack_keylen = _KEYLEN.unpack_from
    crc32 = zlib.crc32
    while offset + 8 <= end:
        length, crc = unpack_frame(data, offset)
        start = offset + 8
        stop = start + length
        if length == 0 or stop > end or crc32(view[start:stop]) != crc:
            break  # zeros past the end of a preallocated log, or a torn record
        (keylen,) = unpack_keylen(data, start)
        key_end = start + 2 + keylen
        into[data[start + 2:key_end].decode()] = data[key_end:stop]
        offset = stop
        count += 1
    return count, offset


def write_snapshot(path: str, items: Any) -> int:
    """
    Every (key, record) of C{items} to C{path}: a magic, then chunks of
    <u32 length><u32 CRC32><records as <u16 key length><key><u32 length>
    <record>>, then a zero-length chunk whose CRC field holds the key count.
    Written to a temporary name, fdatasync'ed, renamed, the directory
    fsync'ed.  Returns the key count.
    """
    temporary = path + ".tmp"
    count = 0
    pack_keylen = _KEYLEN.pack
    pack_len = struct.Struct("<I").pack
    with open(temporary, "wb", buffering=1 << 20) as out:
        out.write(SNAPSHOT_MAGIC)
        parts: list[bytes] = []
        size = 0
        for key, record in items:
            encoded = key.encode()
            parts.append(pack_keylen(len(encoded)))
            parts.append(encoded)
            parts.append(pack_len(len(record)))
            parts.append(record)
            size += 6 + len(encoded) + len(record)
            count += 1
            if size >= CHUNK:
                chunk = b"".join(parts)
                out.write(_FRAME.pack(len(chunk), zlib.crc32(chunk)))
                out.write(chunk)
                parts = []
                size = 0
        if parts:
            chunk = b"".join(parts)
            out.write(_FRAME.pack(len(chunk), zlib.crc32(chunk)))
            out.write(chunk)
        out.write(_FRAME.pack(0, count))
        out.flush()
        os.fdatasync(out.fileno())
    os.rename(temporary, path)
    directory = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return count


def read_snapshot(path: str, into: dict) -> int:
    """
    Load a snapshot written by L{write_snapshot}; raise ValueError if any
    chunk's checksum or the final count is wrong.
    """
    with open(path, "rb") as snapshot:
        data = snapshot.read()
    if not data.startswith(SNAPSHOT_MAGIC):
        raise ValueError("not a snapshot")
    view = memoryview(data)
    offset = len(SNAPSHOT_MAGIC)
    count = 0
    unpack_frame = _FRAME.unpack_from
    unpack_keylen = _KEYLEN.unpack_from
    unpack_len = struct.Struct("<I").unpack_from
    crc32 = zlib.crc32
    while True:
        length, crc = unpack_frame(data, offset)
        offset += 8
        if length == 0:
            if crc != count:
                raise ValueError("snapshot count mismatch")
            return count
        stop = offset + length
        if crc32(view[offset:stop]) != crc:
            raise ValueError("snapshot chunk checksum mismatch")
        while offset < stop:
            (keylen,) = unpack_keylen(data, offset)
            offset += 2
            key = data[offset:offset + keylen].decode()
            offset += keylen
            (reclen,) = unpack_len(data, offset)
            offset += 4
            into[key] = data[offset:offset + reclen]
            offset += reclen
            count += 1


class OwnLog:
    name = "log"
    #: Zero-filled ahead of the writes, in steps of this many bytes, so that a
    #: commit overwrites allocated blocks and its fdatasync has no file size
    #: or extent change to journal; 0: plain appends.
    prealloc = 0

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.offset = 0
        self.allocated = 0
        os.makedirs(directory, exist_ok=True)
        self.snapshot = os.path.join(directory, "snapshot")
        self.full_log = os.path.join(directory, "full.log")
        self.tail_log = os.path.join(directory, "tail.log")
        self.commits_log = os.path.join(directory, "commits.log")
        self.fd = -1
        self.snapshot_seconds = 0.0
        self.snapshot_cpu = 0.0

    def load(self, keys: int) -> None:
        # The whole history as a log (one record per key, group-committed by
        # 128, one fdatasync at the end), then a snapshot of it.
        fd = os.open(self.full_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        state: dict[str, bytes] = {}
        batch = []
        for i in range(keys):
            key, record = key_of(i), stored(i + 1)
            state[key] = record
            batch.append((key, record))
            if len(batch) == 128:
                os.write(fd, encode_batch(batch))
                batch = []
        if batch:
            os.write(fd, encode_batch(batch))
        os.fdatasync(fd)
        os.close(fd)
        started, cpu = time.perf_counter(), time.thread_time()
        write_snapshot(self.snapshot, state.items())
        self.snapshot_seconds = time.perf_counter() - started
        self.snapshot_cpu = time.thread_time() - cpu
        del state
        # The tail recovery replays after the snapshot: a tenth of the keys
        # written again, in random order.
        rng = random.Random(1)
        fd = os.open(self.tail_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for start in range(0, keys // 10, 128):
            os.write(fd, encode_batch([
                (key_of(rng.randrange(keys)), stored(keys + start + j + 1))
                for j in range(min(128, keys // 10 - start))
            ]))
        os.fdatasync(fd)
        os.close(fd)
        # The commit runs' log, not replayed.
        if self.prealloc:
            self.fd = os.open(self.commits_log, os.O_WRONLY | os.O_CREAT, 0o644)
            self._extend()
        else:
            self.fd = os.open(self.commits_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _extend(self) -> None:
        zeros = bytes(1 << 20)
        for _ in range(self.prealloc >> 20):
            os.pwrite(self.fd, zeros, self.allocated)
            self.allocated += len(zeros)
        os.fsync(self.fd)

    def write(self, batch: list[tuple[str, bytes]]) -> None:
        data = encode_batch(batch)
        if self.prealloc:
            if self.offset + len(data) > self.allocated:
                self._extend()
            os.pwrite(self.fd, data, self.offset)
            self.offset += len(data)
        else:
            os.write(self.fd, data)

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def commit(self, batch: list[tuple[str, bytes]]) -> None:
        self.write(batch)
        self.sync()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Lmdb:
    name = "lmdb"

    def __init__(self, directory: str) -> None:
        import lmdb

        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.env = lmdb.open(
            directory, map_size=8 << 30, sync=True, metasync=True, max_dbs=0, readahead=False
        )

    def load(self, keys: int) -> None:
        for start in range(0, keys, 100_000):
            with self.env.begin(write=True) as txn:
                for i in range(start, min(keys, start + 100_000)):
                    txn.put(key_of(i).encode(), stored(i + 1))

    def commit(self, batch: list[tuple[str, bytes]]) -> None:
        with self.env.begin(write=True) as txn:
            for key, record in batch:
                txn.put(key.encode(), record)

    def close(self) -> None:
        self.env.close()


class Sqlite:
    name = "sqlite"

    def __init__(self, directory: str) -> None:
        import sqlite3

        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.db = sqlite3.connect(
            os.path.join(directory, "kv.sqlite"), isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL").close()
        self.db.execute("PRAGMA synchronous=FULL").close()
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, rec BLOB) WITHOUT ROWID"
        ).close()

    def load(self, keys: int) -> None:
        for start in range(0, keys, 100_000):
            self.db.execute("BEGIN").close()
            self.db.executemany(
                "INSERT OR REPLACE INTO kv VALUES (?, ?)",
                ((key_of(i), stored(i + 1)) for i in range(start, min(keys, start + 100_000))),
            ).close()
            self.db.execute("COMMIT").close()
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").close()

    def commit(self, batch: list[tuple[str, bytes]]) -> None:
        # Each cursor closed at once: PyPy's sqlite3 otherwise keeps the
        # statement running and refuses the COMMIT.
        self.db.execute("BEGIN").close()
        self.db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", batch).close()
        self.db.execute("COMMIT").close()

    def close(self) -> None:
        self.db.close()


class PreallocatedLog(OwnLog):
    name = "log-prealloc"
    prealloc = 64 << 20


ENGINES = {"log": OwnLog, "log-prealloc": PreallocatedLog, "lmdb": Lmdb, "sqlite": Sqlite}


# -- commit runs ------------------------------------------------------------------


def make_batches(keys: int, size: int, count: int, seed: int) -> list[list[tuple[str, bytes]]]:
    rng = random.Random(seed)
    version = 10_000_000 * (seed + 1)
    batches = []
    for _ in range(count):
        batch = []
        for _ in range(size):
            version += 1
            batch.append((key_of(rng.randrange(keys)), stored(version)))
        batches.append(batch)
    return batches


def run_inline(engine: Any, batches: list, seconds: float) -> dict:
    latencies = []
    cpu = time.thread_time()
    started = time.perf_counter()
    deadline = started + seconds
    records = 0
    for batch in batches:
        begin = time.perf_counter()
        engine.commit(batch)
        end = time.perf_counter()
        latencies.append(end - begin)
        records += len(batch)
        if end >= deadline:
            break
    elapsed = time.perf_counter() - started
    return summary(latencies, records, elapsed, time.thread_time() - cpu)


def summary(latencies: list[float], records: int, elapsed: float, cpu: float) -> dict:
    latencies.sort()
    return {
        "commits": len(latencies),
        "commits_per_s": len(latencies) / elapsed,
        "records_per_s": records / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "cpu_us_per_record": cpu * 1e6 / records if records else 0.0,
    }


def run_threaded(engine: Any, plan: list[tuple[int, list]], seconds: float) -> dict:
    """
    Run every (batch size, batches) of C{plan} under a Twisted reactor, the
    disk's part in a one-thread pool; what the reactor thread spends is
    measured with thread_time on the reactor thread itself.
    """
    from twisted.internet import defer, reactor
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(1, 1, name="disk")
    pool.start()
    results: dict[int, dict] = {}
    failure: list[Any] = []

    @defer.inlineCallbacks
    def drive() -> Any:
        try:
            for size, batches in plan:
                latencies = []
                records = 0
                cpu = time.thread_time()
                started = time.perf_counter()
                deadline = started + seconds
                for batch in batches:
                    begin = time.perf_counter()
                    if isinstance(engine, OwnLog):
                        engine.write(batch)
                        yield deferToThreadPool(reactor, pool, engine.sync)
                    else:
                        yield deferToThreadPool(reactor, pool, engine.commit, batch)
                    end = time.perf_counter()
                    latencies.append(end - begin)
                    records += len(batch)
                    if end >= deadline:
                        break
                elapsed = time.perf_counter() - started
                results[size] = summary(latencies, records, elapsed, time.thread_time() - cpu)
        except Exception as error:  # pragma: no cover - reported by the parent
            failure.append(repr(error))
        finally:
            pool.stop()
            reactor.stop()

    reactor.callWhenRunning(drive)
    reactor.run(installSignalHandlers=False)
    if failure:
        raise RuntimeError(failure[0])
    return results


# -- group commit under load: the pipeline the design would use ---------------------


class GroupLog:
    """
    The log as a node would drive it: appends during a reactor turn are
    written together at the end of the turn; at most one fdatasync is in
    flight, and whatever was written meanwhile waits for the next one.
    C{threaded}: the fdatasync runs in a one-thread pool; otherwise on the
    reactor thread, which blocks.
    """

    def __init__(self, reactor: Any, pool: Any, fd: int, threaded: bool) -> None:
        self.reactor = reactor
        self.pool = pool
        self.fd = fd
        self.threaded = threaded
        self.pending: list[tuple[str, bytes, Any]] = []
        self.written: list[Any] = []
        self.syncing = False
        self.scheduled = False
        self.syncs = 0

    def append(self, key: str, record: bytes) -> Any:
        from twisted.internet.defer import Deferred

        waiter: Any = Deferred()
        self.pending.append((key, record, waiter))
        if not self.scheduled:
            self.scheduled = True
            self.reactor.callLater(0, self.flush)
        return waiter

    def flush(self) -> None:
        self.scheduled = False
        if self.pending:
            os.write(self.fd, encode_batch([(key, record) for key, record, _ in self.pending]))
            self.written.extend(waiter for _, _, waiter in self.pending)
            self.pending = []
        if self.syncing or not self.written:
            return
        waiters, self.written = self.written, []
        self.syncs += 1
        if self.threaded:
            from twisted.internet.threads import deferToThreadPool

            self.syncing = True
            deferToThreadPool(self.reactor, self.pool, os.fdatasync, self.fd).addCallback(
                self.synced, waiters
            )
        else:
            os.fdatasync(self.fd)
            self.synced(None, waiters)

    def synced(self, _: Any, waiters: list[Any]) -> None:
        self.syncing = False
        for waiter in waiters:
            waiter.callback(None)
        # In a thread, start the next sync at once; inline, leave it to the
        # flush the appends scheduled, so that the reactor gets its turn.
        if self.threaded and (self.written or self.pending):
            self.flush()


def child_group(args: argparse.Namespace) -> dict:
    """
    Closed-loop clients (each a PUT: C{--work-us} of CPU on the reactor, then
    one record appended, then the wait until it is durable), at each
    concurrency of C{--clients}, for C{--seconds} each.
    """
    from twisted.internet import defer, reactor
    from twisted.python.threadpool import ThreadPool

    threaded = args.child == "group-thread"
    directory = os.path.join(args.workdir, f"{args.child}-{args.tag}")
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, "group.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pool = ThreadPool(1, 1, name="disk")
    pool.start()
    results: dict[str, Any] = {}
    failure: list[str] = []
    work = args.work_us / 1e6

    def busy() -> None:
        end = time.perf_counter() + work
        while time.perf_counter() < end:
            pass
        # A request's work ends with a system call (its answer's send), which
        # lets a thread waiting for the GIL have it: here a sleep of 0.
        time.sleep(0)

    @defer.inlineCallbacks
    def client(log: GroupLog, rng: random.Random, deadline: float, latencies: list) -> Any:
        version = 0
        while time.perf_counter() < deadline:
            begin = time.perf_counter()
            busy()
            version += 1
            yield log.append(key_of(rng.randrange(args.keys)), stored(version))
            latencies.append(time.perf_counter() - begin)
            # The answer goes out in a later turn, as a response would.
            yield defer.succeed(None)

    @defer.inlineCallbacks
    def drive() -> Any:
        try:
            for clients in args.clients:
                log = GroupLog(reactor, pool, fd, threaded)
                latencies: list[float] = []
                # Everything else the reactor serves (reads, peers' messages)
                # waits while it is blocked: a timer every millisecond notes
                # how late it runs.
                lateness: list[float] = []
                expected = [time.perf_counter() + 0.001]

                def tick() -> None:
                    now = time.perf_counter()
                    lateness.append(max(0.0, now - expected[0]))
                    expected[0] = now + 0.001
                    ticker[0] = reactor.callLater(0.001, tick)

                ticker = [reactor.callLater(0.001, tick)]
                cpu = time.thread_time()
                started = time.perf_counter()
                deadline = started + args.seconds
                yield defer.gatherResults([
                    client(log, random.Random(i), deadline, latencies) for i in range(clients)
                ])
                elapsed = time.perf_counter() - started
                cpu = time.thread_time() - cpu
                ticker[0].cancel()
                lateness.sort()
                latencies.sort()
                count = len(latencies)
                results[str(clients)] = {
                    "puts_per_s": count / elapsed,
                    "p50_ms": percentile(latencies, 0.5) * 1000,
                    "p99_ms": percentile(latencies, 0.99) * 1000,
                    "syncs_per_s": log.syncs / elapsed,
                    "records_per_sync": count / log.syncs if log.syncs else 0.0,
                    "reactor_cpu_us_per_put": cpu * 1e6 / count if count else 0.0,
                    "work_us": args.work_us,
                    "timer_late_p50_ms": percentile(lateness, 0.5) * 1000,
                    "timer_late_p99_ms": percentile(lateness, 0.99) * 1000,
                    "timer_late_max_ms": (lateness[-1] if lateness else 0.0) * 1000,
                }
        except Exception as error:  # pragma: no cover - reported by the parent
            failure.append(repr(error))
        finally:
            pool.stop()
            reactor.stop()

    try:
        reactor.callWhenRunning(drive)
        reactor.run(installSignalHandlers=False)
    finally:
        os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)
    if failure:
        raise RuntimeError(failure[0])
    return {"engine": args.child, "group": results}


# -- child: one engine, one runtime ----------------------------------------------------


def child_engine(args: argparse.Namespace) -> dict:
    threaded = args.child.endswith("-thread")
    kind = args.child.removesuffix("-thread")
    directory = os.path.join(args.workdir, f"{args.child}-{args.tag}")
    engine = ENGINES[kind](directory)
    out: dict[str, Any] = {"engine": args.child}
    try:
        started = time.perf_counter()
        engine.load(args.keys)
        out["load_s"] = time.perf_counter() - started
        out["disk_after_load"] = disk_bytes(directory)
        if isinstance(engine, OwnLog):
            out["snapshot_s"] = engine.snapshot_seconds
            out["snapshot_cpu_s"] = engine.snapshot_cpu
            out["snapshot_bytes"] = os.path.getsize(engine.snapshot)
            out["full_log_bytes"] = os.path.getsize(engine.full_log)
        plan = []
        for size in args.batch_sizes:
            # Enough batches for the time allowed at a generous 20,000 commits/s,
            # capped so that building them stays cheap.
            count = max(50, min(int(args.seconds * 20_000), 400_000 // size))
            plan.append((size, make_batches(args.keys, size, count, seed=size)))
        if threaded:
            out["runs"] = {str(k): v for k, v in run_threaded(engine, plan, args.seconds).items()}
        else:
            out["runs"] = {
                str(size): run_inline(engine, batches, args.seconds) for size, batches in plan
            }
        del plan
        engine.close()
        out["disk_after_commits"] = disk_bytes(directory)
        if isinstance(engine, OwnLog):
            out["tail_bytes"] = os.path.getsize(engine.tail_log)
            out["commits_log_bytes"] = os.path.getsize(engine.commits_log)
        if not threaded:
            recover = [kind if kind != "log-prealloc" else "log"] + (
                ["log-replay"] if kind == "log" else []) + (
                ["lmdb-map"] if kind == "lmdb" else []
            )
            out["recovery"] = {}
            for how in recover:
                for temperature in ("cold", "warm"):
                    if temperature == "cold":
                        evict(directory)
                    done = subprocess.run(
                        [sys.executable, HERE, "--recover", how, "--workdir", directory,
                         "--keys", str(args.keys)],
                        capture_output=True, text=True, timeout=600,
                    )
                    if done.returncode:
                        raise RuntimeError(f"recovery {how} failed: {done.stderr[-2000:]}")
                    out["recovery"][f"{how}/{temperature}"] = json.loads(done.stdout)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return out


def child_recover(args: argparse.Namespace) -> dict:
    import gc

    directory = args.workdir
    gc.collect()
    before = rss()
    started = time.perf_counter()
    state: dict[str, bytes] = {}
    extra: dict[str, Any] = {}
    if args.recover == "log":
        read_snapshot(os.path.join(directory, "snapshot"), state)
        extra["tail_records"], _ = replay(os.path.join(directory, "tail.log"), state)
    elif args.recover == "log-replay":
        extra["tail_records"], _ = replay(os.path.join(directory, "full.log"), state)
    elif args.recover in ("lmdb", "lmdb-map"):
        import lmdb

        env = lmdb.open(directory, map_size=8 << 30, readonly=True, lock=False, readahead=False)
        with env.begin(buffers=False) as txn:
            if args.recover == "lmdb":
                state = {key.decode(): value
                         for key, value in txn.cursor().iternext(keys=True, values=True)}
            else:
                total = 0
                for _, value in txn.cursor().iternext(keys=True, values=True):
                    total += len(value)
                extra["bytes_read"] = total
                extra["entries"] = env.stat()["entries"]
    elif args.recover == "sqlite":
        import sqlite3

        db = sqlite3.connect(os.path.join(directory, "kv.sqlite"))
        state = dict(db.execute("SELECT key, rec FROM kv"))
        db.close()
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss()
    keys = len(state) or extra.get("entries", 0)
    return {
        "seconds": elapsed,
        "keys": keys,
        "rss_anon_per_key": (after.get("RssAnon", 0) - before.get("RssAnon", 0)) / max(1, keys),
        "rss_file_per_key": (after.get("RssFile", 0) - before.get("RssFile", 0)) / max(1, keys),
        "rss_per_key": (after["VmRSS"] - before["VmRSS"]) / max(1, keys),
        **extra,
    }


# -- parent ---------------------------------------------------------------------------


def raw_fsync(workdir: str, seconds: float) -> dict:
    path = os.path.join(workdir, "fsync-probe")
    block = os.urandom(4096)
    out = {}
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, block * 256)
        os.fsync(fd)
        for label, prepare, sync in (
            ("append 4 KiB + fdatasync", lambda: os.write(fd, block), os.fdatasync),
            ("overwrite 4 KiB + fdatasync", lambda: os.pwrite(fd, block, 0), os.fdatasync),
            ("append 4 KiB + fsync", lambda: os.write(fd, block), os.fsync),
            ("append 128 x 130 B + fdatasync", lambda: os.write(fd, block[:130] * 128), os.fdatasync),
        ):
            os.lseek(fd, 0, os.SEEK_END)
            latencies = []
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                prepare()
                begin = time.perf_counter()
                sync(fd)
                latencies.append(time.perf_counter() - begin)
            latencies.sort()
            out[label] = {
                "count": len(latencies),
                "per_s": len(latencies) / sum(latencies),
                "p50_ms": percentile(latencies, 0.5) * 1000,
                "p99_ms": percentile(latencies, 0.99) * 1000,
            }
    finally:
        os.close(fd)
        os.unlink(path)
    return out


def crc_speed() -> dict:
    body = os.urandom(130)
    out = {}
    for label, function in (("zlib.crc32", zlib.crc32),):
        rounds = 200_000
        started = time.perf_counter()
        for _ in range(rounds):
            function(body)
        out[label] = (time.perf_counter() - started) * 1e9 / rounds
    return out


def run_child(python: str, engine: str, args: argparse.Namespace, workdir: str, tag: str) -> dict:
    argv = [
        python, HERE, "--child", engine, "--workdir", workdir, "--tag", tag,
        "--keys", str(args.keys), "--seconds", str(args.seconds),
        "--batches", ",".join(map(str, args.batch_sizes)),
        "--clients", ",".join(map(str, args.clients)), "--work-us", str(args.work_us),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        return {"engine": engine, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout)


def etcd_section(workdir: str, seconds: float) -> dict:
    sys.path.insert(0, os.path.dirname(HERE))
    import benchlib  # noqa: E402

    processes = benchlib.Processes()
    ports = benchlib.Ports()
    cluster = benchlib.EtcdCluster(processes, ports, workdir)
    cluster.datadir = os.path.join(workdir, "etcd-data")  # on this disk, not tmpfs
    out: dict[str, Any] = {}
    try:
        cluster.start()
        leader = cluster.leader()

        def metrics() -> dict[str, float]:
            _, body = benchlib.http("GET", cluster.url(leader) + "/metrics")
            figures = {}
            for line in body.decode().splitlines():
                for name in (
                    "etcd_disk_wal_fsync_duration_seconds_count",
                    "etcd_disk_wal_fsync_duration_seconds_sum",
                    "etcd_server_proposals_committed_total",
                    "etcd_disk_backend_commit_duration_seconds_count",
                ):
                    if line.startswith(name + " "):
                        figures[name] = float(line.split()[1])
            return figures

        for connections in (16, 64):
            before = metrics()
            result = benchlib.run_wrk(
                cluster.url(leader), "etcd.lua", ["put", f"c{connections}", "0"],
                connections, seconds, cluster.pids(),
            )
            after = metrics()
            delta = {name: after[name] - before.get(name, 0.0) for name in after}
            fsyncs = delta["etcd_disk_wal_fsync_duration_seconds_count"]
            result["leader_wal_fsyncs_per_s"] = fsyncs / seconds
            result["puts_per_fsync"] = result["requests"] / fsyncs if fsyncs else 0.0
            result["mean_fsync_ms"] = (
                delta["etcd_disk_wal_fsync_duration_seconds_sum"] * 1000 / fsyncs if fsyncs else 0.0
            )
            out[str(connections)] = result
    finally:
        cluster.stop()
        processes_stop = getattr(processes, "stop_all", None)
        if processes_stop:
            processes_stop()
    return out


def print_report(report: dict, batch_sizes: list[int]) -> None:
    print()
    print(f"disk: {report['disk']}    keys: {report['keys']:,}    CRC: "
          + ", ".join(f"{k} {v:.0f} ns / 130 B" for k, v in report["crc"].items()))
    print()
    print("raw fsync latency of this disk")
    print(f"  {'operation':<34} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for label, figures in report["fsync"].items():
        print(f"  {label:<34} {figures['per_s']:>8,.0f} {figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f}")
    for runtime, engines in report["runtimes"].items():
        print()
        print(f"{runtime}: group commits (records ready -> durable), CPU on the calling thread")
        print(f"  {'engine':<14} {'batch':>5} {'commits/s':>10} {'records/s':>10} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'CPU us/rec':>10}")
        for result in engines:
            if "error" in result:
                print(f"  {result['engine']:<14} failed: {result['error']}")
                continue
            if "group" in result:
                continue
            for size in batch_sizes:
                run = result["runs"][str(size)]
                print(f"  {result['engine']:<14} {size:>5} {run['commits_per_s']:>10,.0f} "
                      f"{run['records_per_s']:>10,.0f} {run['p50_ms']:>7.2f} {run['p99_ms']:>7.2f} "
                      f"{run['cpu_us_per_record']:>10.1f}")
        groups = [result for result in engines if "group" in result]
        if groups:
            print()
            print(f"{runtime}: closed-loop writers, each write {groups[0]['group'][next(iter(groups[0]['group']))]['work_us']:.0f} us "
                  "of reactor CPU + one record, answered once durable; one sync in flight")
            print(f"  {'sync':<14} {'writers':>7} {'writes/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
                  f"{'syncs/s':>8} {'rec/sync':>8} {'reactor us/write':>16} "
                  f"{'1 ms timer late p50/p99/max ms':>30}")
            for result in groups:
                for clients, figures in result["group"].items():
                    print(f"  {result['engine']:<14} {clients:>7} {figures['puts_per_s']:>9,.0f} "
                          f"{figures['p50_ms']:>7.2f} {figures['p99_ms']:>7.2f} "
                          f"{figures['syncs_per_s']:>8,.0f} {figures['records_per_sync']:>8.1f} "
                          f"{figures['reactor_cpu_us_per_put']:>16.1f} "
                          f"{figures['timer_late_p50_ms']:>14.2f} / {figures['timer_late_p99_ms']:.2f}"
                          f" / {figures['timer_late_max_ms']:.2f}")
        print()
        print(f"{runtime}: load, disk and recovery of {report['keys']:,} keys")
        print(f"  {'engine / recovery':<24} {'load s':>7} {'disk B/key':>10} {'after runs':>10} "
              f"{'recover s':>9} {'warm s':>7} {'RSS B/key':>9} {'anon':>6} {'file':>6}")
        for result in engines:
            if "error" in result or "recovery" not in result:
                continue
            keys = report["keys"]
            for how in sorted({name.split("/")[0] for name in result["recovery"]}):
                cold = result["recovery"][f"{how}/cold"]
                warm = result["recovery"][f"{how}/warm"]
                print(f"  {how:<24} {result['load_s']:>7.1f} {result['disk_after_load'] / keys:>10.0f} "
                      f"{result['disk_after_commits'] / keys:>10.0f} {cold['seconds']:>9.2f} "
                      f"{warm['seconds']:>7.2f} {warm['rss_per_key']:>9.0f} "
                      f"{warm['rss_anon_per_key']:>6.0f} {warm['rss_file_per_key']:>6.0f}")
            if "snapshot_s" in result:
                print(f"  (log: snapshot of {keys:,} keys written in {result['snapshot_s']:.2f} s, "
                      f"{result['snapshot_cpu_s']:.2f} s CPU, {result['snapshot_bytes'] / keys:.0f} B/key; "
                      f"full log {result['full_log_bytes'] / keys:.0f} B/record; "
                      f"tail {result['tail_bytes']:,} B replayed after it; "
                      f"the commit runs' log, not replayed: {result['commits_log_bytes']:,} B)")
    if report.get("etcd"):
        print()
        print("etcd 3.4, three members, data on this disk, wrk PUT of new keys to the leader")
        print(f"  {'conns':>5} {'PUT/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'WAL fsyncs/s':>12} "
              f"{'PUTs/fsync':>10} {'fsync ms':>8}")
        for connections, figures in report["etcd"].items():
            if "error" in figures:
                print(f"  {connections:>5} failed: {figures['error']}")
                continue
            print(f"  {connections:>5} {figures['ops']:>8,.0f} {figures['p50_ms']:>7.2f} "
                  f"{figures['p99_ms']:>7.2f} {figures['leader_wal_fsyncs_per_s']:>12,.0f} "
                  f"{figures['puts_per_fsync']:>10.1f} {figures['mean_fsync_ms']:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer keys, shorter runs")
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where the temporary directory goes: the disk judged")
    parser.add_argument("--keys", type=int, default=None, help="keys loaded and recovered")
    parser.add_argument("--seconds", type=float, default=None, help="per engine and batch size")
    parser.add_argument("--batches", default="1,8,32,128", help="records per commit")
    parser.add_argument("--engines", default=",".join(
        ["log", "log-thread", "log-prealloc-thread", "lmdb", "lmdb-thread", "sqlite",
         "sqlite-thread", "group-inline", "group-thread"]))
    parser.add_argument("--clients", default="16,64",
                        help="concurrent writers in the group-* runs")
    parser.add_argument("--work-us", type=float, default=150.0,
                        help="reactor CPU per write in the group-* runs, besides the log's")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the engines section, interleaved, to show the noise")
    parser.add_argument("--pypy", default=None, help="a PyPy interpreter with lmdb and twisted")
    parser.add_argument("--etcd", action="store_true", help="also etcd, its WAL on this disk")
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    # Internal: the child processes.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--recover", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="0", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch_sizes = [int(size) for size in args.batches.split(",")]
    args.clients = [int(count) for count in args.clients.split(",")]
    if args.keys is None:
        args.keys = 200_000 if args.quick else 1_000_000
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0

    if args.recover:
        print(json.dumps(child_recover(args)))
        return
    if args.child and args.child.startswith("group-"):
        print(json.dumps(child_group(args)))
        return
    if args.child:
        print(json.dumps(child_engine(args)))
        return

    workdir = tempfile.mkdtemp(prefix="kvbench-storage-", dir=args.dir)
    try:
        device = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", workdir],
                                capture_output=True, text=True).stdout.strip()
        report: dict[str, Any] = {"disk": device or "?", "keys": args.keys, "runtimes": {}}
        report["crc"] = crc_speed()
        print(f"[storage] fsync probe in {workdir} ({device})", file=sys.stderr, flush=True)
        report["fsync"] = raw_fsync(workdir, 1.0 if args.quick else 3.0)
        runtimes = {"CPython": sys.executable}
        if args.pypy:
            runtimes["PyPy"] = args.pypy
        engines = args.engines.split(",")
        for round_number in range(args.rounds):
            # Interleaved: every engine on every runtime, then again.
            for engine in engines:
                for runtime, python in runtimes.items():
                    print(f"[storage] {time.strftime('%H:%M:%S')} round {round_number + 1}: "
                          f"{engine} on {runtime}", file=sys.stderr, flush=True)
                    result = run_child(python, engine, args, workdir, f"{round_number}")
                    label = runtime if args.rounds == 1 else f"{runtime}, round {round_number + 1}"
                    report["runtimes"].setdefault(label, []).append(result)
        if args.etcd:
            print(f"[storage] {time.strftime('%H:%M:%S')} etcd", file=sys.stderr, flush=True)
            try:
                report["etcd"] = etcd_section(workdir, 5.0 if args.quick else 10.0)
            except Exception as error:
                report["etcd"] = {"all": {"error": repr(error)}}
        print_report(report, args.batch_sizes)
        if args.json:
            with open(args.json, "w") as out:
                json.dump(report, out, indent=1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
