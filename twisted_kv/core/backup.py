# -*- test-case-name: tests.test_backup -*-
"""
Backups: a partition's records as of one moment, served a page at a time,
and the file format of C{kvctl snapshot} (C{docs/backup.md}).

A L{PartitionDump} is taken by a partition's primary at one moment, under
its read lease, as a linearizable read is: it holds the partition's
committed records as they were then, however the partition changes while
the pages are fetched.  It costs a copy of the store's index (one pointer a
key; the values themselves are shared, immutable), not a copy of the data.
L{Dumps} keeps the dumps a primary is serving, by id, and forgets the ones
nobody asked for lately.

The file, read and written as a stream (never the whole cluster in
memory)::

    TWISTED-KV-SNAPSHOT 1\\n                       magic and format version
    {"partition": 0, "as_of": "3.17", "taken_at": 1733570000.0}\\n
    {"ns": "k", "key": "a", "value": "<base64>", "content_type": "text/plain",
     "version": "3.12", "ttl": 59.5}\\n          one line a record (ttl null: none)
    ...                                         every partition, each marker first
    {"end": {"partitions": 64, "records": 10, ...}}\\n   what the file holds
    SHA256 <64 hex digits>\\n                    of every byte before this line

L{SnapshotWriter} writes it; L{read_snapshot} reads it back, checking it as
it goes, and raises L{BadSnapshot} (one line saying what is wrong) for a
wrong magic or version, a damaged line, a missing end or a wrong checksum.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
from typing import IO, Iterator, Optional, Union

from attrs import define, field, frozen

from twisted_kv.core.keyspace import FILES, USER, name_of, namespace_of
from twisted_kv.core.memstore import MemStore
from twisted_kv.core.records import Record, format_version, live

MAGIC = b"TWISTED-KV-SNAPSHOT"
FORMAT_VERSION = 1
HEADER = MAGIC + b" %d\n" % FORMAT_VERSION
_TRAILER = b"SHA256 "
# A line longer than this is refused rather than read into memory: no
# record's value comes near it (C{max_value_bytes} is far smaller).
MAX_LINE_BYTES = 256 * 1024 * 1024

# A page holds no more records once their values reach this many bytes:
# with one record of the largest value allowed (16 MiB), it stays far below
# the peer protocol's 64 MiB frames.
PAGE_BYTES = 8 * 1024 * 1024

# How long a dump nobody asks for stays held by its primary.
DUMP_IDLE_SECONDS = 60.0
# How many dumps a primary holds at once; the least recently used goes.
MAX_DUMPS = 128


class BadSnapshot(Exception):
    """
    A snapshot file that cannot be restored; the message says why, in one
    line.
    """


@frozen
class BackupRecord:
    """
    One key of a backup.

    @ivar key: the store key (namespace tag, then the name: see
        L{twisted_kv.core.keyspace}).
    @ivar version: the version the key had, as L{format_version} shows it
        (for information: a restore writes new versions).
    @ivar ttl: seconds the key had left to live when it was dumped, or
        C{None}.
    """

    key: str
    value: bytes
    content_type: str
    version: str
    ttl: Optional[float]

    @classmethod
    def of(cls, key: str, record: Record, now: float) -> BackupRecord:
        ttl = None if record.expires_at is None else record.expires_at - now
        return cls(key, record.value, record.content_type, format_version(record.version), ttl)

    def to_json(self) -> dict:
        """
        The record as the admin API and the file show it.
        """
        return {
            "ns": namespace_of(self.key),
            "key": name_of(self.key),
            "value": base64.b64encode(self.value).decode("ascii"),
            "content_type": self.content_type,
            "version": self.version,
            "ttl": self.ttl,
        }

    @classmethod
    def from_json(cls, fields: object) -> BackupRecord:
        """
        @raise ValueError: C{fields} is not what L{to_json} gives.
        """
        if not isinstance(fields, dict):
            raise ValueError("a record is not a JSON object")
        try:
            ns, key, content_type = fields["ns"], fields["key"], fields["content_type"]
            value = base64.b64decode(fields["value"], validate=True)
            version, ttl = fields.get("version", ""), fields.get("ttl")
        except (KeyError, TypeError, binascii.Error):
            raise ValueError("a record lacks a field or has a bad value") from None
        if not (isinstance(ns, str) and len(ns) == 1 and isinstance(key, str) and key):
            raise ValueError("a record has a bad namespace or key")
        if not isinstance(content_type, str) or not isinstance(version, str):
            raise ValueError("a record has a bad content type or version")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))):
            raise ValueError("a record has a bad ttl")
        return cls(ns + key, value, content_type, version, None if ttl is None else float(ttl))


@frozen
class DumpPage:
    """
    One page of a partition's dump.

    @ivar dump_id: names the dump at its primary, for the next pages.
    @ivar as_of: the version of the partition's last committed change the
        dump holds (C{epoch.seq}): the moment it was taken.
    @ivar taken_at: the primary's clock then.
    @ivar next: the C{after} of the next page, or C{None} after the last.
    """

    partition: int
    dump_id: str
    as_of: str
    taken_at: float
    records: list[BackupRecord]
    next: Optional[str]

    def to_json(self) -> dict:
        return {
            "partition": self.partition,
            "dump": self.dump_id,
            "as_of": self.as_of,
            "taken_at": self.taken_at,
            "records": [record.to_json() for record in self.records],
            "next": self.next,
        }

    @classmethod
    def from_json(cls, fields: dict) -> DumpPage:
        return cls(
            fields["partition"],
            fields["dump"],
            fields["as_of"],
            fields["taken_at"],
            [BackupRecord.from_json(record) for record in fields["records"]],
            fields["next"],
        )


@define
class PartitionDump:
    """
    A partition's committed records as of one moment.

    @ivar store: a copy of the primary's store taken at that moment.
    @ivar last_used: when a page was last asked for.
    """

    partition: int
    dump_id: str
    as_of: int
    taken_at: float
    store: MemStore
    last_used: float

    def page(self, after: Optional[str], limit: int) -> DumpPage:
        """
        The records after key C{after}, in key order: at most C{limit}, and
        no more once their values reach L{PAGE_BYTES} (a page crosses the
        peer protocol in one frame).  A record whose time to live ran out
        before the dump was taken is left out, and the others keep the time
        they had left then.
        """
        records = []
        size = 0
        last = None
        for key in self.store.keys_from("", after):
            if len(records) == limit or size >= PAGE_BYTES:
                break
            last = key
            record = live(self.store.get(key), self.taken_at)
            if record is not None:
                records.append(BackupRecord.of(key, record, self.taken_at))
                size += len(record.value)
        else:
            last = None
        return DumpPage(
            self.partition, self.dump_id, format_version(self.as_of), self.taken_at, records, last
        )


class DumpExpired(Exception):
    """
    The dump asked for is not held here (forgotten, or this node is not the
    primary that took it): start the partition's dump again.
    """


@define
class Dumps:
    """
    The dumps a primary serves, by id.
    """

    prefix: str
    _held: dict[str, PartitionDump] = field(factory=dict)
    _ids: Iterator[int] = field(factory=lambda: itertools.count(1))

    def take(self, partition: int, as_of: int, store: MemStore, now: float) -> PartitionDump:
        """
        Hold a new dump of C{partition}, whose committed state at C{as_of}
        is C{store} (copied here, so later writes do not change it).
        """
        self.forget_idle(now)
        while len(self._held) >= MAX_DUMPS:
            oldest = min(self._held.values(), key=lambda dump: dump.last_used)
            del self._held[oldest.dump_id]
        dump_id = f"{self.prefix}/{next(self._ids)}"
        dump = PartitionDump(partition, dump_id, as_of, now, store.copy(), now)
        self._held[dump_id] = dump
        return dump

    def page(
        self, partition: int, dump_id: str, after: Optional[str], limit: int, now: float
    ) -> DumpPage:
        """
        The next page of a dump; the last page forgets it.

        @raise DumpExpired: no such dump of C{partition} is held.
        """
        self.forget_idle(now)
        dump = self._held.get(dump_id)
        if dump is None or dump.partition != partition:
            raise DumpExpired(f"dump {dump_id} of partition {partition} is not held here")
        dump.last_used = now
        page = dump.page(after, limit)
        if page.next is None:
            del self._held[dump_id]
        return page

    def __len__(self) -> int:
        return len(self._held)

    def forget_idle(self, now: float) -> None:
        """
        Forget the dumps nobody asked a page of for L{DUMP_IDLE_SECONDS}:
        a client that stopped half-way would otherwise leave its copies,
        and the old values they keep alive, held until the next dump.
        """
        for dump_id, dump in list(self._held.items()):
            if now - dump.last_used > DUMP_IDLE_SECONDS:
                del self._held[dump_id]


# -- the file -----------------------------------------------------------------


@frozen
class PartitionMark:
    """
    The records after this marker, up to the next, are partition
    C{partition} as of version C{as_of}, dumped at C{taken_at}.
    """

    partition: int
    as_of: str
    taken_at: float


@frozen
class Summary:
    """
    What a whole snapshot file holds.

    @ivar keys: client keys (namespace C{k}).
    @ivar file_records: records of the FTP files (namespace C{f}: chunks,
        manifests, directories, upload leases).
    @ivar value_bytes: the bytes of every value.
    """

    partitions: int = 0
    records: int = 0
    keys: int = 0
    file_records: int = 0
    value_bytes: int = 0

    def to_json(self) -> dict:
        return {
            "partitions": self.partitions,
            "records": self.records,
            "keys": self.keys,
            "file_records": self.file_records,
            "value_bytes": self.value_bytes,
        }

    @classmethod
    def from_json(cls, fields: object) -> Summary:
        if not isinstance(fields, dict) or set(fields) != set(cls().to_json()):
            raise ValueError("a bad summary")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in fields.values()):
            raise ValueError("a bad summary")
        return cls(**fields)


def _counted(summary: Summary, item: Union[PartitionMark, BackupRecord]) -> Summary:
    if isinstance(item, PartitionMark):
        return Summary(
            summary.partitions + 1, summary.records, summary.keys, summary.file_records,
            summary.value_bytes,
        )
    ns = namespace_of(item.key)
    return Summary(
        summary.partitions,
        summary.records + 1,
        summary.keys + (ns == USER),
        summary.file_records + (ns == FILES),
        summary.value_bytes + len(item.value),
    )


def _line(fields: dict) -> bytes:
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class SnapshotWriter:
    """
    Writes a snapshot file to a binary stream, one line at a time.

    A partition is begun with L{begin_partition}; if its dump must start
    again (its primary moved mid-way), L{restart_partition} rewinds the
    stream and the checksum to where the partition began, so the file never
    holds two states of one partition.  The stream must then be seekable.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.summary = Summary()
        self._mark: Optional[tuple[int, object, Summary]] = None
        self._write(HEADER)

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._hash.update(data)

    def begin_partition(self, partition: int, as_of: str, taken_at: float) -> None:
        self._mark = (self._stream.tell(), self._hash.copy(), self.summary)
        mark = PartitionMark(partition, as_of, taken_at)
        self._write(_line({"partition": partition, "as_of": as_of, "taken_at": taken_at}))
        self.summary = _counted(self.summary, mark)

    def restart_partition(self) -> None:
        """
        Forget what was written since the last L{begin_partition}.
        """
        assert self._mark is not None
        offset, digest, self.summary = self._mark
        self._stream.seek(offset)
        self._stream.truncate()
        self._hash = digest  # type: ignore[assignment]

    def add(self, record: BackupRecord) -> None:
        self._write(_line(record.to_json()))
        self.summary = _counted(self.summary, record)

    def finish(self) -> Summary:
        """
        Write the end and the checksum.
        """
        self._write(_line({"end": self.summary.to_json()}))
        self._stream.write(_TRAILER + self._hash.hexdigest().encode("ascii") + b"\n")
        return self.summary


def read_snapshot(stream: IO[bytes]) -> Iterator[Union[PartitionMark, BackupRecord, Summary]]:
    """
    The partition markers and records of a snapshot file, in file order,
    then its L{Summary}; checked as they are read.  Whoever must not act on
    a damaged file reads it whole once (L{verify}) before acting.

    @raise BadSnapshot: the file is not a snapshot, or is damaged or
        truncated; raised when the damage is reached.
    """
    digest = hashlib.sha256()
    header = stream.readline(len(HEADER) + 16)
    if not header.startswith(MAGIC + b" "):
        raise BadSnapshot("not a twisted_kv snapshot (wrong magic)")
    if header != HEADER:
        raise BadSnapshot(f"unsupported snapshot format {header[len(MAGIC):].strip()!r}")
    digest.update(header)
    summary = Summary()
    number = 1
    while True:
        line = stream.readline(MAX_LINE_BYTES)
        number += 1
        if not line:
            raise BadSnapshot(f"truncated: the file ends at line {number} before its end marker")
        if not line.endswith(b"\n"):
            raise BadSnapshot(f"truncated or damaged at line {number}")
        if line.startswith(_TRAILER):
            raise BadSnapshot(f"damaged: a checksum at line {number} before the end marker")
        digest.update(line)
        try:
            fields = json.loads(line)
            if not isinstance(fields, dict):
                raise ValueError("not an object")
            if "end" in fields:
                end = Summary.from_json(fields["end"])
                break
            item: Union[PartitionMark, BackupRecord]
            if "partition" in fields:
                item = PartitionMark(
                    int(fields["partition"]), str(fields["as_of"]), float(fields["taken_at"])
                )
            else:
                item = BackupRecord.from_json(fields)
        except (ValueError, KeyError, TypeError):
            raise BadSnapshot(f"damaged at line {number}") from None
        summary = _counted(summary, item)
        yield item
    trailer = stream.readline(len(_TRAILER) + 80)
    expected = _TRAILER + digest.hexdigest().encode("ascii") + b"\n"
    if not trailer:
        raise BadSnapshot("truncated: the checksum line is missing")
    if trailer != expected or stream.read(1):
        raise BadSnapshot("damaged: the checksum does not match the contents")
    if end != summary:
        raise BadSnapshot("damaged: the end marker does not match the contents")
    yield summary


def verify(stream: IO[bytes]) -> Summary:
    """
    Read a whole snapshot file and check it.

    @return: what it holds.
    @raise BadSnapshot: it is damaged, truncated or not a snapshot.
    """
    for item in read_snapshot(stream):
        if isinstance(item, Summary):
            return item
    raise AssertionError("read_snapshot ends with a summary")  # pragma: no cover


def records_of(stream: IO[bytes]) -> Iterator[BackupRecord]:
    """
    The records of a snapshot file (already L{verify}-ed), in file order.
    """
    for item in read_snapshot(stream):
        if isinstance(item, BackupRecord):
            yield item
