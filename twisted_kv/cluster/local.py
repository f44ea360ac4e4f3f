# -*- test-case-name: tests.test_local -*-
"""
A single-process L{IKeyValue}: the whole store in one L{MemStore}.

It runs the same operation rules as a cluster primary
(L{twisted_kv.core.records.decide}), so front ends are tested against it
without sockets or replicas.
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from twisted_kv.cluster.feed import ChangeHistory, Replayed
from twisted_kv.core.backup import BackupRecord, DumpExpired, DumpPage, Dumps
from twisted_kv.core.memstore import MemStore
from twisted_kv.core.replica import encode_change
from twisted_kv.core.records import (
    Change,
    Delete,
    Expire,
    Operation,
    Put,
    decide,
    format_version,
    live,
    make_version,
)
from twisted_kv.errors import (
    InsufficientStorage,
    InvalidRequest,
    KVError,
    SnapshotExpired,
    ValueTooLarge,
)
from twisted_kv.interfaces import (
    ChangeEvent,
    IKeyValue,
    ISnapshotSource,
    KeyPage,
    ReadResult,
    WriteResult,
)
from twisted_kv.wire.codec import encode as encode_message


@implementer(IKeyValue, ISnapshotSource)
class LocalKeyValue:
    """
    An in-memory, single-replica key-value store.

    @param clock: schedules expiries and tells the time.
    @param memory_limit: refuse writes (L{InsufficientStorage}) that would
        take the store past this many bytes; 0 means no limit.
    @param history: changes kept, encoded, for replays.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_value_bytes: int = 16 * 1024 * 1024,
        memory_limit: int = 0,
        history: int = 10000,
    ) -> None:
        self._clock = clock
        self.max_value_bytes = max_value_bytes
        self._memory_limit = memory_limit
        self._store = MemStore()
        self._sequence = itertools.count(1)
        self._listeners: list[Callable[[ChangeEvent], None]] = []
        self._history = ChangeHistory(0, history)
        self._dumps = Dumps("local")
        self._last_seq = 0

    def get(self, key: str) -> Deferred[ReadResult]:
        return succeed(ReadResult(live(self._store.get(key), self._clock.seconds())))

    def put(
        self,
        key: str,
        value: bytes,
        content_type: str = "application/octet-stream",
        ttl: Optional[float] = None,
        if_match: Optional[str] = None,
        if_none_match: bool = False,
        create_only: bool = False,
    ) -> Deferred[WriteResult]:
        if len(value) > self.max_value_bytes:
            return fail(ValueTooLarge(f"the value exceeds {self.max_value_bytes} bytes"))
        if self._memory_limit and self._store.bytes_used + self._store.growth(key, value) > self._memory_limit:
            return fail(InsufficientStorage("the memory limit would be exceeded"))
        operation = Put(key, value, content_type, ttl, if_match, if_none_match, create_only)
        return self._execute(operation).addCallback(
            lambda change: WriteResult(format_version(change.version), change.created)
        )

    def delete(self, key: str, if_match: Optional[str] = None) -> Deferred[str]:
        return self._execute(Delete(key, if_match)).addCallback(
            lambda change: format_version(change.version)
        )

    def list_keys(self, prefix: str, start_after: Optional[str], limit: int) -> Deferred[KeyPage]:
        if limit < 1:
            return fail(InvalidRequest("the limit must be at least 1"))
        now = self._clock.seconds()
        keys = []
        for key in self._store.keys_from(prefix, start_after):
            if live(self._store.get(key), now) is None:
                continue
            if len(keys) == limit:
                return succeed(KeyPage(keys, keys[-1]))
            keys.append(key)
        return succeed(KeyPage(keys, None))

    def bytes_used(self) -> int:
        """
        The memory the records hold, as the memory limit counts it (key,
        value and a per-record overhead), like a cluster node's.
        """
        return self._store.bytes_used

    def partition_count(self) -> int:
        """
        The whole store is one partition.
        """
        return 1

    def dump_page(
        self, partition: int, dump_id: Optional[str], after: Optional[str], limit: int
    ) -> Deferred[DumpPage]:
        if partition != 0:
            return fail(InvalidRequest(f"no partition {partition}"))
        now = self._clock.seconds()
        try:
            if dump_id is None:
                dump_id = self._dumps.take(0, make_version(1, self._last_seq), self._store, now).dump_id
            return succeed(self._dumps.page(0, dump_id, after, limit, now))
        except DumpExpired as error:
            return fail(SnapshotExpired(str(error)))

    def restore(self, records: Sequence[BackupRecord], batch_id: Optional[str] = None) -> Deferred[int]:
        """
        Each record is written at once, in order, as a PUT is, and the
        first failure, if any, is the answer: a batch is never left in
        flight, so one sent again writes the same values again and nothing
        else.
        """
        failures: list = []
        for record in records:
            written = self.put(record.key, record.value, record.content_type, record.ttl)
            written.addErrback(failures.append)
        return fail(failures[0]) if failures else succeed(len(records))

    def subscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        self._listeners.remove(listener)

    def replay(self, after: int) -> Deferred[Replayed]:
        return succeed((self._history.since(after), self._history.newest))

    def _execute(self, operation: Operation) -> Deferred[Change]:
        try:
            change = self._apply(operation)
        except KVError as error:
            return fail(error)
        return succeed(change)

    def _apply(self, operation: Operation) -> Optional[Change]:
        seq = self._last_seq = next(self._sequence)
        change = decide(
            operation, self._store.get(operation.key), make_version(1, seq), self._clock.seconds()
        )
        if change is None:
            return None
        self._store.apply(change)
        if change.record is not None and change.record.expires_at is not None:
            self._clock.callLater(
                change.record.expires_at - self._clock.seconds(),
                self._apply,
                Expire(change.key, change.version),
            )
        event = ChangeEvent(change, seq, previous=self._history.newest)
        self._history.add(seq, event.previous, 1, encode_message([encode_change(change)]), False)
        for listener in list(self._listeners):
            listener(event)
        return change
