# -*- test-case-name: tests.test_messages -*-
"""
Every message nodes send each other, built and taken apart here only.

A message is a list whose first element is its tag; the peer codec
(L{twisted_kv.wire.codec}, C{docs/peer-protocol.md}) turns it into bytes.
The builders below return exactly the lists the nodes always exchanged, so
the bytes on the wire do not depend on this module; the parsers return
plain tuples, in the order of the fields, so that the per-request path
allocates nothing it did not before.

  - consensus (L{twisted_kv.core.consensus}): L{prevote} and L{vote}
    C{[term, entry_index, entry_term]}, answered by L{prevoted} and
    L{voted} C{[term, granted]}; L{map_append} C{[term, entry_index,
    entry_term, map or None, commit_index]} from the leader, answered by
    L{map_appended} C{[term, ok, entry_index, entry_term]};
  - L{status} C{[state, [entry_index, entry_term], revision]}: gossip of
    the node's state, of its map entry and of the last change revision it
    delivered, several times a second; a node that does not hear from the
    leader and learns that a peer holds a newer committed map asks for it
    with L{map_request}, answered by L{map_answer} C{[index, term, map]};
  - replication (L{twisted_kv.core.replica}): L{append} C{[partition,
    epoch, prev_seq, prev_epoch, entries, commit, round, origin]} from a
    primary, answered by L{append_ok} C{[partition, epoch, last_seq,
    round]}, L{append_refused} C{[partition, epoch, hint]} or L{stale}
    C{[partition, epoch]}; L{snapshot} C{[partition, epoch, seq, seq_epoch,
    first, last, records, origin]}; L{release} C{[partition, epoch]} from a
    primary that stepped down to the primary that follows it;
  - to the partition leader: L{report} C{[partition, epoch, node]} tagged
    C{in_sync} (a new member caught up) or C{drop} (a member stopped
    answering its primary);
  - a membership change asked of the partition leader (L{MemberRequest}
    C{[id, kind, node]}: C{kind} C{add} with the node's fields (a dict), or
    C{remove} with its id), answered as client operations are;
  - client operations forwarded to a primary (L{OpRequest},
    L{RestoreRequest}, L{ReadRequest}, L{PeekRequest}, L{ListRequest},
    L{DumpRequest}), each with a request id
    the sender's L{twisted_kv.cluster.calls.Calls} picks (and those for a
    primary, last, the epoch of the configuration that named it), all answered by
    C{["res", id, status, payload]} (L{ok_answer}, L{retry_answer},
    L{error_answer});
  - change events: L{publish} C{[batch_id, count, changes]} from a primary
    to the leader, C{changes} being the msgpack encoding of C{count}
    changes; the leader numbers them and forwards the same bytes, undecoded,
    in L{events} C{[first_revision, changes, previous_revision]} to every
    other node, and answers L{published} C{[batch_id]};
  - anti-entropy (L{twisted_kv.core.merkle}): L{digest} C{[partition, epoch,
    seq, root]} from a primary, answered by L{digest_ok} C{[partition,
    epoch, seq]} or L{digest_diff} C{[partition, epoch, seq,
    bucket_hashes]}; L{check} C{[partition]} asks a primary for a round now.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from attrs import frozen

from twisted_kv.core.backup import BackupRecord, DumpPage
from twisted_kv.core.records import Delete, Expire, Operation, Put, Record

STATUS = "status"
MAP_REQ = "map_req"
MAP = "map"
APP = "app"
APP_OK = "app_ok"
APP_NO = "app_no"
STALE = "stale"
SNAP = "snap"
IN_SYNC = "in_sync"
DROP = "drop"
OP = "op"
RESTORE = "restore"
READ = "read"
PEEK = "peek"
LIST = "list"
DUMP = "dump"
RES = "res"
PUB = "pub"
PUB_OK = "pub_ok"
EV = "ev"
SUB = "sub"
SUB_OK = "sub_ok"
UNSUB = "unsub"
RPL = "rpl"
RPL_OK = "rpl_ok"
DIGEST = "digest"
DIGEST_OK = "digest_ok"
DIGEST_DIFF = "digest_diff"
CHECK = "check"
MEMBER = "member"
RELEASE = "release"
PREVOTE = "prevote"
PREVOTED = "prevoted"
VOTE = "vote"
VOTED = "voted"
APPEND = "append"
APPENDED = "appended"
CONSENSUS = (PREVOTE, PREVOTED, VOTE, VOTED, APPEND, APPENDED)

# the status of an answer
OK = "ok"
RETRY = "retry"
ERROR = "err"


# -- payloads -------------------------------------------------------------


def encode_operation(operation: Operation) -> list:
    if isinstance(operation, Put):
        return [
            0, operation.key, operation.value, operation.content_type, operation.ttl,
            operation.if_match, operation.if_none_match, operation.create_only,
        ]
    if isinstance(operation, Delete):
        return [1, operation.key, operation.if_match]
    return [2, operation.key, operation.version]


def decode_operation(data: list) -> Operation:
    if data[0] == 0:
        return Put(*data[1:])
    if data[0] == 1:
        return Delete(data[1], data[2])
    return Expire(data[1], data[2])


def encode_record(record: Optional[Record]) -> Optional[list]:
    if record is None:
        return None
    return list(record.fields())


def decode_record(data: Optional[list]) -> Optional[Record]:
    return None if data is None else Record(*data)


class Peek(NamedTuple):
    """
    A replica's answer to a degraded read
    (L{twisted_kv.cluster.operations.ClientOperations.peek_local}).
    """

    holds: bool
    record: Optional[Record]
    epoch: int


def encode_peek(peek: Peek) -> list:
    return [peek.holds, encode_record(peek.record), peek.epoch]


def decode_peek(data: list) -> Peek:
    return Peek(data[0], decode_record(data[1]), data[2])


# -- the cluster map ------------------------------------------------------


def consensus_term(message: list) -> int:
    """
    The term any consensus message carries.
    """
    return message[1]


def prevote(term: int, index: int, entry_term: int) -> list:
    return [PREVOTE, term, index, entry_term]


def vote(term: int, index: int, entry_term: int) -> list:
    return [VOTE, term, index, entry_term]


def parse_ballot(message: list) -> tuple[int, int, int]:
    """
    Take apart a L{prevote} or a L{vote}: term, entry index, entry term.
    """
    _, term, index, entry_term = message
    return term, index, entry_term


def prevoted(term: int, granted: bool) -> list:
    return [PREVOTED, term, granted]


def voted(term: int, granted: bool) -> list:
    return [VOTED, term, granted]


def parse_ballot_answer(message: list) -> tuple[int, bool]:
    """
    Take apart a L{prevoted} or a L{voted}: term, granted.
    """
    _, term, granted = message
    return term, granted


def map_append(term: int, index: int, entry_term: int, wire_map: Any, commit_index: int) -> list:
    """
    The leader's entry (its map only if the follower may lack it) and
    commit index.
    """
    return [APPEND, term, index, entry_term, wire_map, commit_index]


def parse_map_append(message: list) -> tuple[int, int, int, Any, int]:
    _, term, index, entry_term, wire_map, commit_index = message
    return term, index, entry_term, wire_map, commit_index


def map_appended(term: int, ok: bool, index: int, entry_term: int) -> list:
    return [APPENDED, term, ok, index, entry_term]


def parse_map_appended(message: list) -> tuple[int, bool, int, int]:
    _, term, ok, index, entry_term = message
    return term, ok, index, entry_term


def status(state: dict, entry: list, revision: int) -> list:
    return [STATUS, state, entry, revision]


def parse_status(message: list) -> tuple[dict, list, int]:
    _, state, entry, revision = message
    return state, entry, revision


def map_request() -> list:
    return [MAP_REQ]


def map_answer(index: int, term: int, wire_map: Any) -> list:
    return [MAP, index, term, wire_map]


def parse_map(message: list) -> tuple[int, int, Any]:
    _, index, term, wire_map = message
    return index, term, wire_map


# -- replication ----------------------------------------------------------


def append(
    partition: int, epoch: int, prev_seq: int, prev_epoch: int,
    entries: list, commit: int, round_: int, origin: int,
) -> list:
    return [APP, partition, epoch, prev_seq, prev_epoch, entries, commit, round_, origin]


def parse_append(message: list) -> tuple[int, int, int, int, list, int, int, int]:
    _, partition, epoch, prev_seq, prev_epoch, entries, commit, round_, origin = message
    return partition, epoch, prev_seq, prev_epoch, entries, commit, round_, origin


def append_ok(partition: int, epoch: int, last: int, round_: int, filled: bool) -> list:
    """
    @param filled: whether the member holds everything up to the start of
        its log; C{False} while a snapshot is still arriving, when it holds
        only the entries after the snapshot's position.
    """
    return [APP_OK, partition, epoch, last, round_, filled]


def parse_append_ok(message: list) -> tuple[int, int, int, int, bool]:
    _, partition, epoch, last, round_, filled = message
    return partition, epoch, last, round_, filled


def append_refused(partition: int, epoch: int, hint: int) -> list:
    return [APP_NO, partition, epoch, hint]


def parse_append_refused(message: list) -> tuple[int, int, int]:
    _, partition, epoch, hint = message
    return partition, epoch, hint


def stale(partition: int, epoch: int) -> list:
    return [STALE, partition, epoch]


def parse_stale(message: list) -> tuple[int, int]:
    _, partition, epoch = message
    return partition, epoch


def release(partition: int, epoch: int) -> list:
    """
    A primary that stepped down for a new one tells it so: the promises
    made to it up to C{epoch} hold no lease any more.
    """
    return [RELEASE, partition, epoch]


def parse_release(message: list) -> tuple[int, int]:
    _, partition, epoch = message
    return partition, epoch


def snapshot(
    partition: int, epoch: int, seq: int, seq_epoch: int,
    first: bool, last: bool, records: list, origin: int, part: int,
) -> list:
    """
    @param part: the chunk's number in its snapshot, from 0: a member takes
        only the next one, so a snapshot missing a chunk never completes.
    """
    return [SNAP, partition, epoch, seq, seq_epoch, first, last, records, origin, part]


def parse_snapshot(message: list) -> tuple[int, int, int, int, bool, bool, list, int, int]:
    _, partition, epoch, seq, seq_epoch, first, last, records, origin, part = message
    return partition, epoch, seq, seq_epoch, first, last, records, origin, part


def report(kind: str, partition: int, epoch: int, member: str) -> list:
    """
    @param kind: L{IN_SYNC} or L{DROP}.
    """
    return [kind, partition, epoch, member]


def parse_report(message: list) -> tuple[str, int, int, str]:
    kind, partition, epoch, member = message
    return kind, partition, epoch, member


# -- client operations ----------------------------------------------------


@frozen
class OpRequest:
    """
    Run a write (or expiry) at the primary of C{partition}.

    This and the other requests for a partition's primary carry the C{epoch}
    of the configuration that named the node asked as its primary (0: none
    in particular): a node that has not taken over yet holds the request
    until it does (L{twisted_kv.cluster.operations.ClientOperations}).
    """

    partition: int
    operation: Operation
    op_id: Optional[str]
    epoch: int = 0

    def to_wire(self, request_id: int) -> list:
        return [
            OP, request_id, self.partition, encode_operation(self.operation), self.op_id, self.epoch
        ]


@frozen
class RestoreRequest:
    """
    Write C{records} of a backup, C{[index, key, value, content_type,
    ttl]} each, at the primary of C{partition}: the record at C{index} in
    batch C{batch_id} is the operation C{batch_id/index}, so a batch sent
    again is applied once.
    """

    partition: int
    batch_id: str
    records: list
    epoch: int = 0

    def to_wire(self, request_id: int) -> list:
        return [RESTORE, request_id, self.partition, self.batch_id, self.records, self.epoch]


def parse_restore(message: list) -> tuple[int, int, str, list, int]:
    _, request_id, partition, batch_id, records, epoch = message
    return request_id, partition, batch_id, records, epoch


@frozen
class ReadRequest:
    """
    A linearizable read at the primary of C{partition}.
    """

    partition: int
    key: str
    epoch: int = 0

    def to_wire(self, request_id: int) -> list:
        return [READ, request_id, self.partition, self.key, self.epoch]


def parse_read(message: list) -> tuple[int, int, str, int]:
    _, request_id, partition, key, epoch = message
    return request_id, partition, key, epoch


@frozen
class MemberRequest:
    """
    A membership change for the partition leader to make: C{kind} is
    C{add} (C{node} the new node's fields, a dict of
    L{twisted_kv.core.roster.NODE_FIELDS}) or C{remove} (C{node} its id).
    """

    kind: str
    node: Any

    def to_wire(self, request_id: int) -> list:
        return [MEMBER, request_id, self.kind, self.node]


def parse_member_request(message: list) -> tuple[int, str, Any]:
    _, request_id, kind, node = message
    return request_id, kind, node


@frozen
class PeekRequest:
    """
    A degraded read of any replica of C{partition}: answered by a L{Peek}.
    """

    partition: int
    key: str

    def to_wire(self, request_id: int) -> list:
        return [PEEK, request_id, self.partition, self.key]


@frozen
class ListRequest:
    """
    The live keys of C{partitions} after C{start_after}, at most C{limit}.
    """

    partitions: list
    prefix: str
    start_after: Optional[str]
    limit: int

    def to_wire(self, request_id: int) -> list:
        return [LIST, request_id, self.partitions, self.prefix, self.start_after, self.limit]


@frozen
class DumpRequest:
    """
    A page of a backup of C{partition} at its primary: a new dump when
    C{dump_id} is C{None}, else the records of dump C{dump_id} after key
    C{after}; answered by L{encode_dump_page}.
    """

    partition: int
    dump_id: Optional[str]
    after: Optional[str]
    limit: int
    epoch: int = 0

    def to_wire(self, request_id: int) -> list:
        return [DUMP, request_id, self.partition, self.dump_id, self.after, self.limit, self.epoch]


def parse_dump(message: list) -> tuple[int, int, Optional[str], Optional[str], int, int]:
    _, request_id, partition, dump_id, after, limit, epoch = message
    return request_id, partition, dump_id, after, limit, epoch


def encode_dump_page(page: DumpPage) -> list:
    return [
        page.partition, page.dump_id, page.as_of, page.taken_at,
        [[r.key, r.value, r.content_type, r.version, r.ttl] for r in page.records],
        page.next,
    ]


def decode_dump_page(data: list) -> DumpPage:
    partition, dump_id, as_of, taken_at, records, next_after = data
    return DumpPage(
        partition, dump_id, as_of, taken_at, [BackupRecord(*record) for record in records], next_after
    )


def parse_op(message: list) -> tuple[int, int, Operation, Optional[str], int]:
    _, request_id, partition, operation, op_id, epoch = message
    return request_id, partition, decode_operation(operation), op_id, epoch


def parse_key_request(message: list) -> tuple[int, int, str]:
    """
    Take apart a L{PeekRequest}.
    """
    _, request_id, partition, key = message
    return request_id, partition, key


def parse_list(message: list) -> tuple[int, list, str, Optional[str], int]:
    _, request_id, partitions, prefix, start_after, limit = message
    return request_id, partitions, prefix, start_after, limit


def ok_answer(request_id: int, payload: Any) -> list:
    return [RES, request_id, OK, payload]


def retry_answer(request_id: int, reason: str, maybe_applied: bool) -> list:
    return [RES, request_id, RETRY, [reason, maybe_applied]]


def error_answer(request_id: int, code: str, text: str) -> list:
    return [RES, request_id, ERROR, [code, text]]


def parse_answer(message: list) -> tuple[int, str, Any]:
    """
    @return: the request id, the status (L{OK}, L{RETRY} or L{ERROR}) and
        the payload: the result, or what L{parse_failure} reads.
    """
    _, request_id, answer_status, payload = message
    return request_id, answer_status, payload


def parse_failure(payload: list) -> tuple[Any, Any]:
    """
    @return: C{(reason, maybe_applied)} of a L{RETRY} answer, C{(code,
        text)} of an L{ERROR} answer.
    """
    first, second = payload
    return first, second


# -- change events --------------------------------------------------------


def publish(batch_id: int, count: int, changes: bytes, repeated: bool) -> list:
    """
    @param repeated: whether the changes may have been numbered before.
    """
    return [PUB, batch_id, count, changes, repeated]


def parse_publish(message: list) -> tuple[int, int, bytes, bool]:
    _, batch_id, count, changes, repeated = message
    return batch_id, count, changes, repeated


def published(batch_id: int) -> list:
    return [PUB_OK, batch_id]


def parse_published(message: list) -> int:
    return message[1]


def events(first: int, changes: bytes, previous: int) -> list:
    return [EV, first, changes, previous]


def parse_events(message: list) -> tuple[int, bytes, int]:
    _, first, changes, previous = message
    return first, changes, previous


def subscribe(after: Optional[int]) -> list:
    """
    Ask the leader for its stream of changes: those it holds after
    revision C{after}, then every new one; C{None}: from now on.
    """
    return [SUB, after]


def parse_subscribe(message: list) -> Optional[int]:
    return message[1]


def subscribed(newest: int) -> list:
    return [SUB_OK, newest]


def parse_subscribed(message: list) -> int:
    return message[1]


def unsubscribe() -> list:
    return [UNSUB]


def replay(request_id: int, after: int) -> list:
    return [RPL, request_id, after]


def parse_replay(message: list) -> tuple[int, int]:
    _, request_id, after = message
    return request_id, after


def replayed(
    request_id: int, newest: int, batches: Optional[list[tuple[int, int, bytes]]]
) -> list:
    """
    @param batches: C{(first, previous, changes)} of the batches holding the
        changes asked for, or C{None} when they are not all held.
    """
    wire = None if batches is None else [list(batch) for batch in batches]
    return [RPL_OK, request_id, newest, wire]


def parse_replayed(message: list) -> tuple[int, int, Optional[list[tuple[int, int, bytes]]]]:
    _, request_id, newest, wire = message
    batches = None if wire is None else [(first, previous, changes) for first, previous, changes in wire]
    return request_id, newest, batches


# -- anti-entropy ---------------------------------------------------------


def digest(partition: int, epoch: int, seq: int, root: bytes) -> list:
    return [DIGEST, partition, epoch, seq, root]


def parse_digest(message: list) -> tuple[int, int, int, bytes]:
    _, partition, epoch, seq, root = message
    return partition, epoch, seq, root


def digest_ok(partition: int, epoch: int, seq: int) -> list:
    return [DIGEST_OK, partition, epoch, seq]


def digest_diff(partition: int, epoch: int, seq: int, buckets: list) -> list:
    return [DIGEST_DIFF, partition, epoch, seq, buckets]


def parse_digest_answer(message: list) -> tuple[int, int, int, Optional[list]]:
    """
    @return: partition, epoch, seq and the bucket hashes of a L{digest_diff}
        (C{None} for a L{digest_ok}).
    """
    buckets = message[4] if message[0] == DIGEST_DIFF else None
    return message[1], message[2], message[3], buckets


def check(partition: int) -> list:
    return [CHECK, partition]


def parse_check(message: list) -> int:
    return message[1]
