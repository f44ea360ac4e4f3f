# -*- test-case-name: tests.test_durable -*-
"""
What a node keeps in its data directory (C{DATA_DIR/nX/}), and the one place
its records are encoded and decoded.

Everything goes to one log per node (L{twisted_kv.storage}): one sequence of
writes and syncs for the whole node, so that group commit gathers the
records of every partition and of the consensus state that one reactor turn
produced into one write and one sync.  Each record's payload is a msgpack
list (L{twisted_kv.wire.codec}); its type says what it is:

  - L{CONSENSUS}: C{[term, voted_for, index, entry_term, wire_map,
    commit_index]}, the node's consensus state
    (L{twisted_kv.core.consensus.Consensus.durable_state}); the last one
    read wins.  Written and synced before the node sends anything that
    follows a change of it, whatever the C{fsync} policy.

Recovery reads the log once, at start, before the node is built
(L{NodeDisk.open}); what it finds is a L{Recovered}.
"""

from __future__ import annotations

import time
from typing import Optional

from attrs import define, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twisted_kv.core.consensus import DurableState
from twisted_kv.errors import StorageCorrupt
from twisted_kv.storage.committer import GroupCommitter, RunInThread
from twisted_kv.storage.fs import IFileSystem
from twisted_kv.storage.recovery import Storage
from twisted_kv.wire import codec

log = Logger()

#: Record type: the consensus state.
CONSENSUS = 1


def encode_consensus(state: DurableState) -> bytes:
    """
    The payload of a L{CONSENSUS} record.
    """
    return codec.encode(list(state))


def decode_consensus(payload: bytes) -> DurableState:
    """
    The state a L{CONSENSUS} record holds.

    @raise ValueError: the payload is not one.
    """
    fields = codec.decode(payload)
    if not isinstance(fields, list) or len(fields) != 6:
        raise ValueError("not a consensus record")
    term, voted_for, index, entry_term, wire_map, commit_index = fields
    return (term, voted_for, index, entry_term, wire_map, commit_index)


@frozen
class Recovered:
    """
    What a node found in its data directory.

    @ivar consensus: its last consensus state, if it wrote any.
    @ivar records: how many records were read.
    @ivar seconds: how long reading them took.
    """

    consensus: Optional[DurableState]
    records: int
    seconds: float


@define
class NodeDisk:
    """
    A node's data directory, recovered and open for appending.

    @ivar path: the directory.
    @ivar policy: the C{fsync} policy of client data.
    @ivar recovered: what L{open} found.
    """

    path: str
    policy: str
    recovered: Recovered
    _storage: Storage
    _committer: GroupCommitter

    @classmethod
    def open(
        cls,
        fs: IFileSystem,
        path: str,
        policy: str,
        run_in_thread: RunInThread,
        clock: IReactorTime,
    ) -> "NodeDisk":
        """
        Read what C{path} holds (see L{recovered}), then open its log for
        appending.

        @raise twisted_kv.errors.StorageCorrupt: a file is damaged other
            than by a torn last write (the error names it).
        @raise OSError: the directory cannot be read or created.
        """
        started = time.monotonic()
        storage = Storage.at(fs, path)
        consensus = None
        count = 0
        for record_type, payload in storage.recover():
            count += 1
            try:
                if record_type == CONSENSUS:
                    consensus = decode_consensus(payload)
            except ValueError as error:
                raise StorageCorrupt(path, 0, f"record {count} unreadable: {error}") from None
        if storage.log.torn is not None:
            torn = storage.log.torn
            log.warn(
                "dropped a torn write at the end of {path} ({size} bytes at offset {offset})",
                path=torn.path,
                size=torn.dropped,
                offset=torn.offset,
            )
        committer = GroupCommitter(storage.log, policy, run_in_thread, clock)
        return cls(path, policy, Recovered(consensus, count, time.monotonic() - started),
                   storage, committer)

    def save_consensus(self, state: DurableState) -> "Deferred[None]":
        """
        Append the consensus state.

        @return: a Deferred that fires once the record is synced, whatever
            the policy, or fails as L{GroupCommitter.append} does (the
            outputs that follow the change must then never be sent).
        """
        written = self._committer.append(CONSENSUS, encode_consensus(state))
        if self.policy == "always":
            return written
        synced = self._committer.exclusive(self._storage.log.sync)
        written.addErrback(lambda failure: None)
        return synced

    def stop(self) -> "Deferred[None]":
        """
        Sync everything appended, and stop.
        """
        return self._committer.stop()
