# -*- test-case-name: tests.test_replica -*-
"""
Tests for L{twisted_kv.core.replica}.

A primary L{Replica} and backup L{Replica}s are driven by hand: each helper
below passes one message through the peer codec and hands it to the other
side exactly as the node layer does (C{"app"} -> L{Replica.on_append} ->
C{"app_ok"}/C{"app_no"}, C{"snap"} -> L{Replica.on_snapshot}), including the
node layer's own check that refuses messages from an older epoch.
"""

from __future__ import annotations

from typing import Optional

from hypothesis import given
from twisted.trial.unittest import SynchronousTestCase

from tests.strategies import changes, entries
from twisted_kv.core import replica as replica_module
from twisted_kv.core.memstore import MemStore
from twisted_kv.core.merkle import digest_of
from twisted_kv.core.records import (
    Change,
    Delete,
    Expire,
    Put,
    Record,
    format_version,
    make_version,
)
from twisted_kv.core.replica import (
    Entry,
    Replica,
    decode_change,
    decode_entry,
    encode_change,
    encode_entry,
    encode_records,
)
from twisted_kv.errors import KeyExists, KeyNotFound, PreconditionFailed
from twisted_kv.wire import codec

PARTITION = 3


def wire(message: list) -> list:
    """
    What the other node receives: the message after the peer codec.
    """
    return codec.decode(codec.encode(message))


def answer(primary: Replica, backup: Replica, name: str, message: list) -> Optional[list]:
    """
    Deliver an C{"app"} message to C{backup} (called C{name}) and its answer
    to C{primary}.

    @return: the changes the primary has to announce after the answer
        (L{Replica.take_announcements}), or C{None} if the backup refused
        (stale epoch or missing entry).
    """
    tag, partition, epoch, prev_seq, prev_epoch, entries_, commit, round_, origin = wire(message)
    assert (tag, partition) == ("app", PARTITION)
    if epoch < backup.epoch:
        return None
    ok, last = backup.on_append(epoch, prev_seq, prev_epoch, entries_, commit, origin)
    if ok:
        primary.on_append_ok(name, epoch, last, round_, backup.filled)
        return primary.take_announcements()
    primary.on_append_refused(name, epoch, last)
    return None


def deliver_snapshot(backup: Replica, message: list) -> None:
    tag, partition, epoch, seq, seq_epoch, first, last, records, origin, part = wire(message)
    assert (tag, partition) == ("snap", PARTITION)
    if epoch >= backup.epoch:
        backup.on_snapshot(epoch, seq, seq_epoch, first, last, records, origin, part)


def snapshot_messages(primary: Replica, name: str) -> list[list]:
    """
    Every chunk of a snapshot to C{name}, started now.
    """
    chunks = [primary.start_snapshot(name)]
    while (chunk := primary.next_snapshot_chunk(name)) is not None:
        chunks.append(chunk)
    return chunks


def push(primary: Replica, backup: Replica, name: str) -> Optional[list]:
    """
    One flush of the node layer towards one member: a snapshot first if the
    member is behind the primary's log, then the next C{"app"} message.
    """
    if primary.needs_snapshot(name):
        for message in snapshot_messages(primary, name):
            deliver_snapshot(backup, message)
    return answer(primary, backup, name, primary.append_message(name))


class Group:
    """
    A primary C{"p"} and its backups, all in one epoch.
    """

    def __init__(self, backups: tuple = ("b1", "b2"), epoch: int = 1) -> None:
        self.primary = Replica(PARTITION)
        self.backups = {name: Replica(PARTITION) for name in backups}
        for backup in self.backups.values():
            backup.epoch = epoch
        self.primary.become_primary(epoch, list(backups), list(backups) + ["p"])

    def push(self, name: str) -> Optional[list]:
        return push(self.primary, self.backups[name], name)

    def settle(self) -> None:
        """
        Push to every backup until every member holds and knows the commit
        of everything.
        """
        for _ in range(3):
            for name in self.backups:
                self.push(name)

    def write(self, key: str, value: bytes, op_id: Optional[str] = None, **kw) -> Entry:
        entry = self.primary.propose(Put(key, value, **kw), op_id, 0.0)
        assert entry is not None
        return entry


class CommitTests(SynchronousTestCase):
    """
    A write commits only once every member stores it.
    """

    def test_commit_waits_for_every_member(self) -> None:
        """
        With two backups, a write is pending after the first acknowledges
        and committed (to be announced) after the second.
        """
        group = Group()
        entry = group.write("k", b"v")
        self.assertEqual((entry.epoch, entry.seq), (1, 1))
        self.assertEqual(entry.change.version, make_version(1, 1))
        self.assertEqual(group.primary.commit_seq, 0)
        self.assertEqual(group.push("b1"), [])
        self.assertEqual(group.primary.commit_seq, 0)
        self.assertIsNone(group.primary.read("k", 0.0))
        self.assertEqual(group.push("b2"), [entry])
        self.assertEqual(group.primary.commit_seq, 1)
        self.assertEqual(group.primary.read("k", 0.0).value, b"v")

    def test_backups_apply_once_told(self) -> None:
        """
        A backup stores entries at once but applies them to its store only
        when a later message carries the commit position.
        """
        group = Group()
        group.write("k", b"v")
        group.push("b1")
        group.push("b2")
        backup = group.backups["b1"]
        self.assertEqual(backup.last_seq, 1)
        self.assertIsNone(backup.read("k", 0.0))
        self.assertEqual(backup.newest("k").value, b"v")
        group.push("b1")
        self.assertEqual(backup.commit_seq, 1)
        self.assertEqual(backup.read("k", 0.0).value, b"v")

    def test_one_record_from_decode_to_store(self) -> None:
        """
        The record a member decodes from the primary's message is the one
        its log entry holds and its store keeps, as the record the primary
        made is at the primary: the value is packed once on each node and
        never copied again on the way to the store.
        """
        group = Group(backups=("b1",))
        entry = group.write("k", b"v" * 100)
        group.push("b1")
        group.push("b1")
        backup = group.backups["b1"]
        (logged,) = [e for e in backup.log if e.seq == entry.seq]
        self.assertIs(backup.store.get("k").packed, logged.change.record.packed)
        self.assertIs(group.primary.store.get("k").packed, entry.change.record.packed)
        self.assertEqual(backup.store.get("k"), entry.change.record)

    def test_no_backups(self) -> None:
        """
        A primary without other members commits each write as it orders it,
        and announces it.
        """
        group = Group(backups=())
        entry = group.write("k", b"v")
        self.assertEqual(group.primary.commit_seq, 1)
        self.assertEqual(group.primary.read("k", 0.0).value, b"v")
        self.assertEqual(group.primary.take_announcements(), [entry])
        self.assertEqual(group.primary.take_announcements(), [])

    def test_member_lagging(self) -> None:
        """
        A member lags while it has not acknowledged every entry or the
        latest round, and stops lagging once it has.
        """
        group = Group()
        self.assertFalse(group.primary.member_lagging("b1"))
        group.write("k", b"v")
        self.assertTrue(group.primary.member_lagging("b1"))
        group.push("b1")
        self.assertFalse(group.primary.member_lagging("b1"))
        self.assertTrue(group.primary.member_lagging("b2"))
        group.primary.new_round(0.0)
        self.assertTrue(group.primary.member_lagging("b1"))
        group.push("b1")
        self.assertFalse(group.primary.member_lagging("b1"))

    def test_resend_after_lost_message(self) -> None:
        """
        After a message is lost, L{Replica.resend} makes the next message
        carry again everything the member has not acknowledged.
        """
        group = Group()
        group.write("a", b"1")
        group.primary.append_message("b1")  # lost
        group.write("b", b"2")
        self.assertEqual([e[1] for e in group.primary.append_message("b1")[5]], [2])
        group.primary.resend("b1")
        message = group.primary.append_message("b1")
        self.assertEqual((message[3], [e[1] for e in message[5]]), (0, [1, 2]))
        group.primary.append_message("b2")  # lost
        group.primary.resend()
        self.assertEqual([e[1] for e in group.primary.append_message("b2")[5]], [1, 2])
        self.assertEqual(answer(group.primary, group.backups["b1"], "b1", message), [])
        self.assertEqual(group.backups["b1"].last_seq, 2)

    def test_refusal_backs_off(self) -> None:
        """
        A member that lacks the entry before a message refuses with a hint,
        and the primary's next message starts right after it.
        """
        group = Group()
        group.write("a", b"1")
        group.primary.append_message("b1")  # lost
        group.write("b", b"2")
        self.assertIsNone(group.push("b1"))  # prev_seq 1 is missing: refused
        self.assertEqual(group.backups["b1"].last_seq, 0)
        group.push("b1")
        self.assertEqual(group.backups["b1"].last_seq, 2)

    def test_redelivery_is_harmless(self) -> None:
        """
        Receiving the same entries twice stores them once.
        """
        group = Group()
        group.write("a", b"1")
        message = group.primary.append_message("b1")
        backup = group.backups["b1"]
        answer(group.primary, backup, "b1", message)
        answer(group.primary, backup, "b1", message)
        self.assertEqual([e.seq for e in backup.log], [1])


class PendingTests(SynchronousTestCase):
    """
    The primary decides each write against the newest state, committed or
    not, and reads only committed state.
    """

    def test_latest_sees_pending_read_does_not(self) -> None:
        """
        L{Replica.latest} and L{Replica.pending_seq} see a pending put or
        delete; L{Replica.read} still sees the committed record.
        """
        group = Group()
        group.write("k", b"v1")
        group.settle()
        primary = group.primary
        group.write("k", b"v2")
        self.assertEqual(primary.latest("k").value, b"v2")
        self.assertEqual(primary.read("k", 0.0).value, b"v1")
        self.assertEqual(primary.pending_seq("k"), 2)
        self.assertIsNone(primary.pending_seq("other"))
        primary.propose(Delete("k"), None, 0.0)
        self.assertIsNone(primary.latest("k"))
        self.assertEqual(primary.read("k", 0.0).value, b"v1")
        self.assertEqual(primary.pending_seq("k"), 3)
        group.settle()
        self.assertIsNone(primary.read("k", 0.0))
        self.assertIsNone(primary.pending_seq("k"))

    def test_conditions_against_pending(self) -> None:
        """
        Conditions are checked against pending writes: a second creation of
        a key whose creation is pending fails; an C{if_match} on the pending
        version succeeds.
        """
        group = Group()
        first = group.write("k", b"v1")
        self.assertRaises(
            PreconditionFailed,
            group.primary.propose, Put("k", b"x", if_none_match=True), None, 0.0,
        )
        self.assertRaises(
            KeyExists, group.primary.propose, Put("k", b"x", create_only=True), None, 0.0
        )
        tag = format_version(first.change.version)
        second = group.primary.propose(Put("k", b"v2", if_match=tag), None, 0.0)
        self.assertEqual(second.seq, 2)

    def test_failed_conditions_order_nothing(self) -> None:
        """
        An operation whose condition fails leaves the log untouched.
        """
        group = Group()
        self.assertRaises(KeyNotFound, group.primary.propose, Delete("k"), None, 0.0)
        self.assertRaises(
            PreconditionFailed, group.primary.propose, Put("k", b"x", if_match="1.1"), None, 0.0
        )
        self.assertEqual((group.primary.last_seq, group.primary.log), (0, []))

    def test_overtaken_expiry_is_no_op(self) -> None:
        """
        An expiry of a version that was overwritten orders nothing.
        """
        group = Group()
        first = group.write("k", b"v1", ttl=5.0)
        group.write("k", b"v2")
        self.assertIsNone(group.primary.propose(Expire("k", first.change.version), None, 9.0))
        self.assertEqual(group.primary.last_seq, 2)


class OperationIdTests(SynchronousTestCase):
    """
    Client operation ids let a retried operation be recognised.
    """

    def test_find_operation(self) -> None:
        """
        An operation's id maps to its log position and its change without
        the value, on the primary and, once replicated, on backups too; it
        is remembered after commit.
        """
        group = Group()
        entry = group.write("k", b"value", op_id="c1/7")
        seq, change = group.primary.find_operation("c1/7", "k")
        self.assertEqual(seq, entry.seq)
        self.assertEqual((change.kind, change.key, change.version), ("put", "k", entry.change.version))
        self.assertTrue(change.created)
        self.assertIsNone(change.record)
        self.assertIsNone(group.primary.find_operation("c1/8", "k"))
        group.settle()
        self.assertEqual(group.backups["b2"].find_operation("c1/7", "k"), (seq, change))
        self.assertEqual(group.primary.find_operation("c1/7", "k"), (seq, change))

    def test_delete_and_replacement_found(self) -> None:
        """
        A delete is found as a delete, and a put that replaced a value as
        one that created nothing.
        """
        group = Group(backups=())
        group.write("k", b"1", op_id="put1")
        replaced = group.write("k", b"2", op_id="put2")
        deleted = group.primary.propose(Delete("k"), "del", 0.0)
        assert deleted is not None
        found = {
            op_id: group.primary.find_operation(op_id, "k")[1]
            for op_id in ("put1", "put2", "del")
        }
        self.assertEqual(
            [(c.kind, c.created) for c in found.values()],
            [("put", True), ("put", False), ("delete", False)],
        )
        self.assertEqual(found["put2"].version, replaced.change.version)
        self.assertEqual(found["del"].version, deleted.change.version)

    def test_recent_operations_bounded(self) -> None:
        """
        Only the most recent L{replica_module.RECENT_OPERATIONS} ids are
        remembered.
        """
        self.patch(replica_module, "RECENT_OPERATIONS", 3)
        group = Group(backups=())
        for i in range(5):
            group.write(f"k{i}", b"v", op_id=f"op{i}")
        self.assertIsNone(group.primary.find_operation("op1", "k1"))
        self.assertEqual(group.primary.find_operation("op2", "k2")[0], 3)

    def test_truncated_operation_forgotten(self) -> None:
        """
        An operation whose entry a backup dropped as a conflicting tail was
        never committed: it must not be reported as already ordered, or a
        retry of it would be answered with another write's position.
        """
        old, new, backup = _diverged()
        self.assertEqual(backup.find_operation("op2", "k2")[0], 2)
        new.propose(Put("k2", b"other"), "op2b", 0.0)
        push(new, backup, "B")
        self.assertEqual(backup.find_operation("op2b", "k2")[0], 2)
        self.assertIsNone(backup.find_operation("op2", "k2"))



def _diverged() -> tuple[Replica, Replica, Replica]:
    """
    The classic failover with a divergent tail.

    Epoch 1: primary "old" with members B and C commits seq 1 (key k1);
    then orders seq 2 (key k2, op "op2"), which only B receives.  Epoch 2:
    C becomes primary, with B as its member, both in sync.

    @return: (old, new primary C, backup B)
    """
    old = Replica(PARTITION)
    b, c = Replica(PARTITION), Replica(PARTITION)
    b.epoch = c.epoch = 1
    old.become_primary(1, ["B", "C"], ["old", "B", "C"])
    old.propose(Put("k1", b"1"), "op1", 0.0)
    for _ in range(2):
        push(old, b, "B")
        push(old, c, "C")
    old.propose(Put("k2", b"2"), "op2", 0.0)
    push(old, b, "B")
    assert (old.commit_seq, b.last_seq, c.last_seq) == (1, 2, 1)
    b.epoch = 2
    c.become_primary(2, ["B"], ["B", "C"])
    return old, c, b


class FailoverTests(SynchronousTestCase):
    """
    A new primary takes over the log of a former member; members repair
    divergent tails.
    """

    def test_divergent_tail_replaced(self) -> None:
        """
        A backup holding an uncommitted entry the new primary lacks drops it
        and adopts the primary's entry at that position.
        """
        old, new, backup = _diverged()
        entry = new.propose(Put("k2", b"other"), "op2b", 0.0)
        self.assertEqual((entry.epoch, entry.seq), (2, 2))
        # Seq 1 again: the old primary may have died before announcing it.
        committed = push(new, backup, "B")
        self.assertEqual([e.seq for e in committed], [1, 2])
        self.assertEqual(committed[-1], entry)
        self.assertEqual(backup.entry(2), entry)
        self.assertEqual(backup.last_seq, 2)
        push(new, backup, "B")
        self.assertEqual(backup.read("k2", 0.0).value, b"other")
        self.assertEqual(new.read("k2", 0.0).value, b"other")
        self.assertEqual(backup.commit_seq, 2)

    def test_stale_tail_is_not_an_acknowledgement(self) -> None:
        """
        A backup whose log runs past the new primary's (an entry of the old
        epoch the new primary never got) must not count as holding the new
        primary's entry at that position: the new write stays uncommitted
        until the backup really stores it.
        """
        old, new, backup = _diverged()
        push(new, backup, "B")  # prev_seq 1 matches; B still holds seq 2 of epoch 1
        new.propose(Put("k3", b"acked?"), "op3", 0.0)
        self.assertEqual(new.commit_seq, 1)
        self.assertIsNone(new.read("k3", 0.0))
        for _ in range(3):
            push(new, backup, "B")
        self.assertEqual(backup.read("k3", 0.0).value, b"acked?")
        self.assertIsNone(backup.read("k2", 0.0))


    def test_conflicting_prev_truncates_and_hints(self) -> None:
        """
        A message whose previous entry conflicts with the member's drops the
        member's entries from there and hints the position before it.
        """
        backup = Replica(PARTITION)
        backup.epoch = 1
        entries_ = [
            encode_entry(Entry(1, seq, Change("delete", f"k{seq}", make_version(1, seq), None)))
            for seq in (1, 2, 3)
        ]
        self.assertEqual(backup.on_append(1, 0, 0, entries_, 0), (True, 3))
        self.assertEqual(backup.on_append(2, 2, 2, [], 0), (False, 1))
        self.assertEqual([e.seq for e in backup.log], [1])
        self.assertEqual(backup.epoch, 2)

    def test_missing_prev_hints_last(self) -> None:
        """
        A message starting past the member's log is refused with the
        member's last position.
        """
        backup = Replica(PARTITION)
        self.assertEqual(backup.on_append(1, 4, 1, [], 4), (False, 0))

    def test_commit_limited_to_verified_entries(self) -> None:
        """
        A backup marks committed only entries it just checked against the
        primary's log, however far the primary's commit position is.
        """
        _retain_nothing(self)
        backup = Replica(PARTITION)
        entries_ = [
            encode_entry(Entry(1, seq, Change("delete", f"k{seq}", make_version(1, seq), None)))
            for seq in (1, 2, 3)
        ]
        backup.on_append(1, 0, 0, entries_, 0)
        backup.on_append(2, 1, 1, [], 5)
        self.assertEqual(backup.commit_seq, 1)
        self.assertEqual([e.seq for e in backup.log], [2, 3])

    def test_new_primary_serves_after_committing_its_log(self) -> None:
        """
        A backup taking over with an uncommitted entry is primary but not
        serving until every member stores that entry; meanwhile the entry
        counts for decisions.
        """
        old, c, b = _diverged()
        b.become_primary(3, ["C"], ["B", "C"])
        c.step_down(3)
        self.assertTrue(b.is_primary)
        self.assertFalse(b.serving)
        self.assertEqual(b.latest("k2").value, b"2")
        self.assertIsNone(b.read("k2", 0.0))
        self.assertIsNone(push(b, c, "C"))  # C lacks seq 2: refused
        self.assertFalse(b.serving)
        committed = push(b, c, "C")
        # Seq 1 again: the old primary may have died before announcing it.
        self.assertEqual([e.seq for e in committed], [1, 2])
        self.assertTrue(b.serving)
        push(b, c, "C")
        self.assertEqual(c.read("k2", 0.0).value, b"2")

    def test_primary_without_backlog_serves_at_once(self) -> None:
        """
        A primary with nothing uncommitted serves as soon as it takes over;
        a replica that is not primary never serves.
        """
        replica = Replica(PARTITION)
        self.assertFalse(replica.serving)
        replica.become_primary(1, ["b"], ["b"])
        self.assertTrue(replica.serving)

    def test_newer_epoch_demotes_primary(self) -> None:
        """
        A primary that receives entries of a newer epoch steps down: it no
        longer decides against its pending writes.
        """
        group = Group()
        primary = group.primary
        group.write("k", b"v")
        primary.on_append(2, 0, 0, [], 0)
        self.assertFalse(primary.is_primary)
        self.assertEqual(primary.epoch, 2)
        self.assertEqual(primary.members, [])
        self.assertIsNone(primary.latest("k"))

    def test_newer_snapshot_demotes_primary(self) -> None:
        """
        So does a primary that receives a snapshot of a newer epoch.
        """
        group = Group()
        primary = group.primary
        group.write("k", b"v")
        primary.on_snapshot(2, 0, 0, True, True, [])
        self.assertFalse(primary.is_primary)
        self.assertEqual(primary.epoch, 2)
        self.assertIsNone(primary.latest("k"))

    def test_epoch_never_goes_back(self) -> None:
        """
        L{Replica.on_append}, L{Replica.on_snapshot} and L{Replica.step_down}
        never lower the adopted epoch.
        """
        replica = Replica(PARTITION)
        replica.epoch = 5
        replica.on_append(3, 0, 0, [], 0)
        replica.on_snapshot(4, 0, 0, True, True, [])
        replica.step_down(2)
        self.assertEqual(replica.epoch, 5)

    def test_stale_answers_ignored(self) -> None:
        """
        Acknowledgements and refusals about another epoch, or from a node
        that is not a member, change nothing at the primary.
        """
        group = Group(epoch=4)
        primary = group.primary
        group.write("k", b"v")
        primary.on_append_ok("b1", 3, 1, 0)
        primary.on_append_ok("b2", 3, 1, 0)
        primary.on_append_ok("x", 4, 1, 0)
        self.assertEqual(primary.commit_seq, 0)
        self.assertEqual(primary.take_announcements(), [])
        primary.append_message("b1")
        primary.on_append_refused("b1", 3, 0)
        self.assertEqual(primary.append_message("b1")[5], [])
        primary.on_append_refused("b1", 4, 0)
        self.assertEqual(len(primary.append_message("b1")[5]), 1)

    def test_old_primary_fenced(self) -> None:
        """
        Once members adopt a newer epoch, the old primary's messages are
        refused, so it can no longer commit anything.
        """
        group = Group()
        for backup in group.backups.values():
            backup.epoch = 2
        group.write("k", b"v")
        self.assertIsNone(group.push("b1"))
        self.assertIsNone(group.push("b2"))
        self.assertEqual(group.primary.commit_seq, 0)


class OriginTests(SynchronousTestCase):
    """
    A partition whose every in-sync copy was lost starts again, empty, from
    a new origin; a member still holding the old data drops it.
    """

    def lost_and_restarted(self) -> tuple[Replica, Replica]:
        """
        A backup that committed three writes of origin 0, and the empty
        primary of the partition started again at epoch 3 (its origin).
        """
        group = Group(backups=("b1",))
        for index in range(3):
            group.write(f"old{index}", b"v")
        group.settle()
        backup = group.backups["b1"]
        self.assertEqual((backup.commit_seq, backup.origin), (3, 0))
        primary = Replica(PARTITION)
        primary.adopt_origin(3)
        primary.become_primary(3, ["b1"], ["p"])
        return primary, backup

    def test_member_drops_data_of_an_older_origin(self) -> None:
        """
        The new primary's first message makes the backup drop everything it
        held (its committed positions clash with the new log's), and the
        writes of the new origin then commit on both.
        """
        primary, backup = self.lost_and_restarted()
        self.assertEqual(push(primary, backup, "b1"), [])
        self.assertEqual((backup.origin, backup.last_seq, len(backup.store)), (3, 0, 0))
        entry = primary.propose(Put("new", b"n"), None, 0.0)
        push(primary, backup, "b1")
        self.assertEqual(primary.commit_seq, entry.seq)
        push(primary, backup, "b1")
        self.assertEqual([k for k, _ in backup.store.items()], ["new"])

    def test_snapshot_of_a_newer_origin(self) -> None:
        """
        A snapshot carries the origin too, so a member first reached by one
        drops the old data just the same.
        """
        primary, backup = self.lost_and_restarted()
        primary.propose(Put("new", b"n"), None, 0.0)
        for message in snapshot_messages(primary, "b1"):
            deliver_snapshot(backup, message)
        self.assertEqual(backup.origin, 3)
        self.assertNotIn("old0", dict(backup.store.items()))

    def test_older_origin_changes_nothing(self) -> None:
        """
        L{Replica.adopt_origin} with an origin not newer keeps the data.
        """
        _, backup = self.lost_and_restarted()
        backup.adopt_origin(0)
        self.assertEqual(backup.commit_seq, 3)


def _retain_nothing(case: SynchronousTestCase) -> None:
    """
    Make replicas trim their logs as far as they may, at once.
    """
    case.patch(replica_module, "RETAINED_ENTRIES", 0)
    case.patch(replica_module, "TRIM_BATCH", 1)


def _with_new_member(case: SynchronousTestCase) -> Group:
    """
    A primary C{"p"} whose log is trimmed past k0, k1 and k2 (committed
    with B), and which has just been given a new, empty member D in epoch 2.
    """
    group = Group(backups=("B",))
    for i in range(3):
        group.write(f"k{i}", b"v%d" % i, ttl=100.0 if i == 0 else None)
    group.settle()
    primary = group.primary
    case.assertEqual((primary.base_seq, primary.log), (3, []))
    primary.become_primary(2, ["B", "D"], ["p", "B"])
    group.backups["D"] = Replica(PARTITION)
    group.backups["D"].epoch = group.backups["B"].epoch = 2
    return group


class SnapshotTests(SynchronousTestCase):
    """
    A member behind the primary's trimmed log is refilled from a snapshot.
    """

    def setUp(self) -> None:
        _retain_nothing(self)

    def _trimmed(self) -> Group:
        return _with_new_member(self)

    def test_stalled_member_keeps_its_snapshot(self) -> None:
        """
        Resending to a member that is slow to acknowledge does not start its
        snapshot over (a busy member would be sent one after another); only
        a lost link does.
        """
        group = self._trimmed()
        primary = group.primary
        primary.on_append_refused("D", 2, 0)
        self.assertTrue(primary.needs_snapshot("D"))
        snapshot_messages(primary, "D")
        self.assertFalse(primary.needs_snapshot("D"))
        primary.resend()
        self.assertFalse(primary.needs_snapshot("D"))
        primary.resend("D", link_lost=True)
        self.assertTrue(primary.needs_snapshot("D"))

    def test_stalled_member_nudged(self) -> None:
        """
        A member catching up that acknowledged nothing between two nudges
        is sent again what it lacks: from its last acknowledgement, or, if
        it acknowledged nothing since it was added, the probe of where its
        log ends (a snapshot follows the refusal, here), or, with a snapshot
        in flight, what follows the snapshot; a member that progressed, or
        is in sync, is not.
        """
        group = self._trimmed()
        primary = group.primary
        primary.append_message("D")  # answered by a refusal that is lost
        self.assertFalse(primary.nudge_stalled_members())  # nothing to compare yet
        self.assertTrue(primary.nudge_stalled_members())
        self.assertFalse(primary.needs_snapshot("D"))
        self.assertIsNone(answer(primary, group.backups["D"], "D", primary.append_message("D")))
        self.assertTrue(primary.needs_snapshot("D"))
        snapshot = snapshot_messages(primary, "D")
        self.assertTrue(primary.nudge_stalled_members())
        self.assertFalse(primary.needs_snapshot("D"))
        self.assertEqual(primary.append_message("D")[3], 3)  # right after the snapshot
        for message in snapshot:
            deliver_snapshot(group.backups["D"], message)
        self.assertEqual(group.push("D"), [])
        self.assertEqual(primary.caught_up(), ["D"])
        self.assertFalse(primary.nudge_stalled_members())

    def test_log_trimmed_to_commit(self) -> None:
        """
        The primary forgets committed entries every member acknowledged and
        keeps those still pending.
        """
        group = Group()
        group.write("a", b"1")
        group.push("b1")
        group.push("b2")
        group.write("b", b"2")
        group.push("b1")
        self.assertEqual(group.primary.commit_seq, 1)
        self.assertEqual(group.primary.base_seq, 1)
        self.assertEqual([e.seq for e in group.primary.log], [2])

    def test_refill(self) -> None:
        """
        A new member refuses the first append, gets a snapshot of the
        committed store and its log position, is then reported caught up,
        and takes part in later commits.
        """
        group = self._trimmed()
        primary, d = group.primary, group.backups["D"]
        self.assertEqual(primary.caught_up(), [])
        self.assertIsNone(group.push("D"))
        self.assertTrue(primary.needs_snapshot("D"))
        group.push("D")
        self.assertEqual(dict(d.store.items()), dict(primary.store.items()))
        self.assertEqual((d.base_seq, d.commit_seq, d.base_epoch), (3, 3, 1))
        self.assertEqual(primary.caught_up(), ["D"])
        entry = group.write("k9", b"new")
        group.push("B")
        self.assertEqual(primary.commit_seq, 3)
        group.push("D")
        self.assertEqual(primary.commit_seq, entry.seq)
        group.push("D")
        self.assertEqual(d.read("k9", 0.0).value, b"new")
        self.assertEqual(d.read("k0", 0.0).expires_at, 100.0)

    def test_snapshot_in_chunks(self) -> None:
        """
        A store larger than the chunk size goes in several messages; only
        the first says C{first} and only the last says C{last}; together
        they carry every record.
        """
        self.patch(replica_module, "FILL_CHUNK_BYTES", 4)
        group = self._trimmed()
        primary = group.primary
        primary.on_append_refused("D", 2, 0)
        messages = snapshot_messages(primary, "D")
        self.assertGreater(len(messages), 2)
        self.assertEqual([m[5] for m in messages], [True] + [False] * (len(messages) - 1))
        self.assertEqual([m[6] for m in messages], [False] * (len(messages) - 1) + [True])
        self.assertEqual({tuple(m[:5]) for m in messages}, {("snap", PARTITION, 2, 3, 1)})
        carried = [r for m in messages for r in m[7]]
        self.assertEqual(carried, encode_records(primary.store.items()))
        d = group.backups["D"]
        for message in messages:
            deliver_snapshot(d, message)
        self.assertEqual(dict(d.store.items()), dict(primary.store.items()))

    def test_first_chunk_replaces_old_state(self) -> None:
        """
        A snapshot replaces whatever the member held, log included.
        """
        d = Replica(PARTITION)
        d.on_append(1, 0, 0, [encode_entry(Entry(1, 1, Change("delete", "x", 1, None)))], 0)
        d.on_snapshot(2, 7, 2, True, False, [["a", b"1", "t", 5, None]])
        d.on_snapshot(2, 7, 2, False, True, [["b", b"2", "t", 6, 9.0]])
        self.assertEqual(d.log, [])
        self.assertEqual(sorted(k for k, _ in d.store.items()), ["a", "b"])
        self.assertEqual(d.store.get("b").expires_at, 9.0)
        self.assertEqual((d.base_seq, d.base_epoch, d.commit_seq, d.applied_seq), (7, 2, 7, 7))

    def test_first_chunk_carries_no_records(self) -> None:
        """
        Starting a snapshot costs only the copy of the store's index: its
        first chunk, sent in the same turn, carries no records (they follow,
        paced), unless the store holds none, when it is also the last.
        """
        group = self._trimmed()
        primary = group.primary
        primary.on_append_refused("D", 2, 0)
        first = primary.start_snapshot("D")
        self.assertEqual((first[5], first[6], first[7]), (True, False, []))
        self.assertIsNotNone(primary.next_snapshot_chunk("D"))
        empty = Replica(PARTITION)
        empty.become_primary(1, ["E"], ["E"])
        only = empty.start_snapshot("E")
        self.assertEqual((only[5], only[6], only[7]), (True, True, []))
        self.assertEqual(empty.filling, [])

    def test_chunk_taken_in_without_lookups(self) -> None:
        """
        A member takes a chunk's records in without looking up what its
        store held for each key (it emptied its store at the first chunk):
        a chunk is taken in within one reactor turn, and at 500 records a
        chunk the lookups were a good part of it.
        """
        d = Replica(PARTITION)
        d.on_snapshot(2, 7, 2, True, False, [["a", b"1", "t", 5, None]])
        looked_up = []
        get = MemStore.get
        self.patch(MemStore, "get", lambda store, key: looked_up.append(key) or get(store, key))
        d.on_snapshot(2, 7, 2, False, True, [["b", b"2", "t", 6, None], ["c", b"3", "t", 6, None]])
        self.assertEqual(looked_up, [])
        self.assertEqual(d.read("c", 0.0).value, b"3")
        self.assertEqual(d.digest.root(), digest_of(d.store.items()).root())

    def test_not_in_sync_before_acknowledging(self) -> None:
        """
        Sending a snapshot is not enough to report a member caught up: until
        it acknowledges, it may never have received it (a lost link), and
        marking it in sync could make an empty node primary.
        """
        group = self._trimmed()
        primary = group.primary
        primary.on_append_refused("D", 2, 0)
        snapshot_messages(primary, "D")  # lost
        self.assertEqual(primary.caught_up(), [])


    def test_caught_up_until_marked(self) -> None:
        """
        A member not in sync is reported once its acknowledged position
        reaches the primary's log at the time it joined, and no longer once
        the map lists it in sync.
        """
        group = Group(backups=("B",))
        group.write("a", b"1")
        primary = group.primary
        primary.become_primary(2, ["B", "D"], ["p", "B"])
        group.backups["D"] = Replica(PARTITION)
        group.backups["D"].epoch = group.backups["B"].epoch = 2
        self.assertEqual(primary.caught_up(), [])
        group.push("B")
        self.assertEqual(primary.caught_up(), [])
        self.assertIsNone(group.push("D"))  # D starts empty: refused
        self.assertEqual(primary.caught_up(), [])
        group.push("D")
        self.assertEqual(primary.caught_up(), ["D"])
        primary.become_primary(2, ["B", "D"], ["p", "B", "D"])
        self.assertEqual(primary.caught_up(), [])

    def test_member_removed(self) -> None:
        """
        A member left out of a new configuration no longer holds commits
        back: what that commits is announced.
        """
        group = Group()
        entry = group.write("a", b"1")
        group.push("b1")
        self.assertEqual(group.primary.take_announcements(), [])
        group.primary.become_primary(2, ["b1"], ["p", "b1"])
        self.assertEqual(group.primary.commit_seq, 1)
        self.assertEqual(group.primary.members, ["b1"])
        self.assertEqual(group.primary.take_announcements(), [entry])


class FillTests(SynchronousTestCase):
    """
    A new member counts for commits and rounds from the first chunk of its
    snapshot on, holding every entry after the snapshot's position, and is
    caught up only once it holds the whole snapshot.
    """

    def setUp(self) -> None:
        _retain_nothing(self)
        self.patch(replica_module, "FILL_CHUNK_BYTES", 4)  # a record a chunk

    def _started(self) -> Group:
        """
        D, refused, is sent the first chunk of a snapshot (no records);
        its three records are still to be sent.
        """
        group = _with_new_member(self)
        primary = group.primary
        self.assertIsNone(group.push("D"))
        self.assertTrue(primary.needs_snapshot("D"))
        deliver_snapshot(group.backups["D"], primary.start_snapshot("D"))
        self.assertEqual(primary.filling, ["D"])
        return group

    def _rest(self, primary: Replica) -> list[list]:
        rest = []
        while (chunk := primary.next_snapshot_chunk("D")) is not None:
            rest.append(chunk)
        self.assertEqual((len(rest), primary.filling), (3, []))
        return rest

    def test_counts_while_filling(self) -> None:
        """
        While the rest of its snapshot is on its way, the new member takes
        in and acknowledges new entries: a write commits once it and B hold
        it (not before), and a round is confirmed.  It applies nothing, and
        is not caught up, until the last chunk; then its store is the
        primary's, though the primary changed keys of the snapshot since.
        """
        group = self._started()
        primary, d = group.primary, group.backups["D"]
        changed = group.write("k1", b"changed")
        deleted = primary.propose(Delete("k2"), None, 0.0)
        round_ = primary.new_round(0.0)
        group.push("B")
        self.assertEqual(primary.commit_seq, 3)
        self.assertLess(primary.confirmed_round, round_)
        group.push("D")
        self.assertEqual((primary.commit_seq, primary.confirmed_round), (deleted.seq, round_))
        group.push("D")
        self.assertEqual((d.commit_seq, d.applied_seq, d.filled), (deleted.seq, 3, False))
        self.assertEqual(primary.caught_up(), [])
        for chunk in self._rest(primary):
            deliver_snapshot(d, chunk)
        self.assertTrue(d.filled)
        self.assertEqual(d.applied_seq, deleted.seq)
        self.assertEqual(primary.caught_up(), [])  # until it says so
        group.push("D")
        self.assertEqual(primary.caught_up(), ["D"])
        self.assertEqual(dict(d.store.items()), dict(primary.store.items()))
        self.assertEqual((d.read("k1", 0.0).value, d.read("k2", 0.0)), (b"changed", None))
        self.assertEqual(changed.seq, deleted.seq - 1)

    def test_lost_chunk(self) -> None:
        """
        A member that missed a chunk ignores every later one and stays
        filling; once it says so in a round after the last chunk went out,
        the primary sends another snapshot, which fills it.
        """
        group = self._started()
        primary, d = group.primary, group.backups["D"]
        deliver_snapshot(d, self._rest(primary)[1])  # the second chunk lost
        self.assertFalse(d.filled)
        group.push("D")  # answered in the round the last chunk went out in
        self.assertFalse(primary.needs_snapshot("D"))
        primary.new_round(0.0)
        group.push("D")
        self.assertTrue(primary.needs_snapshot("D"))
        self.assertEqual(primary.caught_up(), [])
        group.push("D")
        self.assertTrue(d.filled)
        group.push("D")
        self.assertEqual(primary.caught_up(), ["D"])
        self.assertEqual(dict(d.store.items()), dict(primary.store.items()))

    def test_first_chunk_lost(self) -> None:
        """
        A member that never got the first chunk refuses what follows the
        snapshot, as it refused before it; sent that again at a nudge, and
        silent until the next, it is sent another snapshot.
        """
        group = self._started_and_lost()
        primary = group.primary
        self.assertIsNone(group.push("D"))
        self.assertFalse(primary.nudge_stalled_members())  # the first look
        self.assertTrue(primary.nudge_stalled_members())
        self.assertFalse(primary.needs_snapshot("D"))
        self.assertIsNone(group.push("D"))
        self.assertTrue(primary.nudge_stalled_members())
        self.assertTrue(primary.needs_snapshot("D"))
        group.push("D")
        group.push("D")
        self.assertEqual(primary.caught_up(), ["D"])
        self.assertEqual(dict(group.backups["D"].store.items()), dict(primary.store.items()))

    def _started_and_lost(self) -> Group:
        """
        D, refused, is sent a whole snapshot, which is lost.
        """
        group = _with_new_member(self)
        self.assertIsNone(group.push("D"))
        group.primary.start_snapshot("D")
        self._rest(group.primary)
        return group

    def test_new_snapshot_keeps_what_was_acknowledged(self) -> None:
        """
        A member sent a new snapshot (its link lost) keeps the entries
        after its position that it holds, so an acknowledgement of them
        that was still on its way stays true.
        """
        group = self._started()
        primary, d = group.primary, group.backups["D"]
        entry = group.write("k9", b"new")
        group.push("D")
        primary.resend("D", link_lost=True)
        self.assertTrue(primary.needs_snapshot("D"))
        deliver_snapshot(d, primary.start_snapshot("D"))
        primary.on_append_ok("D", 2, entry.seq, 0, False)  # sent before the new snapshot came
        self.assertEqual(d.newest("k9").value, b"new")
        group.push("B")
        self.assertEqual(primary.commit_seq, entry.seq)
        self.assertFalse(d.filled)

    def test_new_snapshot_drops_another_history(self) -> None:
        """
        Entries after a new snapshot's position that do not follow its own
        entry there (of an older primary's replaced tail) are dropped.
        """
        d = Replica(PARTITION)
        entries = [encode_entry(Entry(1, seq, Change("delete", "x", seq, None))) for seq in (1, 2)]
        d.on_append(1, 0, 0, entries, 0)
        d.on_snapshot(2, 1, 2, True, False, [])
        self.assertEqual((d.base_seq, d.log), (1, []))

    def test_new_primary_refills(self) -> None:
        """
        A member still filling when its primary is replaced tells the new
        one, which sends it a snapshot of its own.
        """
        group = self._started()
        b, d = group.backups["B"], group.backups["D"]
        group.push("B")
        group.push("D")
        b.become_primary(3, ["D"], ["B"])
        d.epoch = 3
        push(b, d, "D")
        self.assertEqual((b.caught_up(), b.needs_snapshot("D")), ([], True))
        push(b, d, "D")
        push(b, d, "D")
        self.assertEqual(b.caught_up(), ["D"])
        self.assertEqual(dict(d.store.items()), dict(b.store.items()))

    def test_no_digest_compared_while_filling(self) -> None:
        """
        A member filling has only part of the store: it compares no digest
        (a mismatch would have the primary repair what is still on its way).
        """
        group = self._started()
        d = group.backups["D"]
        d.expect_digest(3, group.primary.digest.root())
        self.assertIsNone(d.digest_result)

    def test_exported_empty_while_filling(self) -> None:
        """
        A replica filling is recorded in a snapshot of the data directory
        as empty: restored, it holds nothing and is sent a new snapshot,
        rather than taking part of one for the whole.
        """
        group = self._started()
        d = group.backups["D"]
        header, chunks = d.export_state()
        self.assertEqual(list(chunks), [])
        restored = Replica(PARTITION)
        restored.restore_state(*header)
        self.assertEqual((restored.epoch, restored.last_seq, len(restored.store)), (2, 0, 0))
        self.assertTrue(restored.filled)


class ExportTests(SynchronousTestCase):
    """
    L{Replica.export_state} takes a replica's state as of one moment.
    """

    def test_chunks_built_later_as_of_the_call(self) -> None:
        """
        The chunks of the store are built only as they are asked for (by a
        snapshot's writer, outside the reactor's turn), and hold the store
        as it was when the state was exported, whatever was written since.
        """
        self.patch(replica_module, "SNAPSHOT_CHUNK_BYTES", 8)
        group = Group()
        for index in range(4):
            group.write(f"k{index}", b"12345")
        group.settle()
        primary = group.primary
        built = []
        encode = replica_module.encode_records
        self.patch(replica_module, "encode_records", lambda records: built.append(1) or encode(records))
        header, chunks = primary.export_state()
        self.assertEqual(built, [])
        group.write("k0", b"newer")
        group.write("k9", b"added")
        group.settle()
        exported = list(chunks)
        self.assertEqual(len(built), len(exported))
        self.assertGreater(len(exported), 1)
        restored = Replica(PARTITION)
        restored.restore_state(*header)
        for chunk in exported:
            restored.restore_keys(chunk)
        self.assertEqual(
            {key: record.value for key, record in restored.store.items()},
            {f"k{index}": b"12345" for index in range(4)},
        )


class RetentionTests(SynchronousTestCase):
    """
    Replicas keep the newest applied entries in their logs, so that a member
    that missed only those is sent them, not a snapshot.
    """

    def test_member_added_back_sent_what_it_missed(self) -> None:
        """
        A member dropped from the configuration and added back later, not in
        sync, is sent by log matching only the entries it missed, and is in
        sync once it acknowledged them.
        """
        group = Group()
        for i in range(5):
            group.write(f"k{i}", b"1")
        group.settle()
        back = group.backups["b1"]
        primary = group.primary
        primary.become_primary(2, ["b2"], ["p", "b2"])
        group.backups["b2"].epoch = 2
        for i in range(5):
            group.write(f"k{i}", b"2")
        for _ in range(3):
            group.push("b2")
        self.assertEqual(primary.base_seq, 0)
        primary.become_primary(3, ["b1", "b2"], ["p", "b2"])
        self.assertEqual(primary.caught_up(), [])
        for _ in range(4):
            self.assertFalse(primary.needs_snapshot("b1"))
            group.push("b1")
        self.assertEqual(primary.caught_up(), ["b1"])
        self.assertEqual(back.last_seq, 10)
        self.assertEqual(
            [back.store.get(f"k{i}").value for i in range(5)], [b"2"] * 5
        )

    def test_sent_again_from_where_it_was_probed(self) -> None:
        """
        What a member added back has not answered is sent again (a link
        lost, or a stalled member nudged) from the position it was probed
        at, not from the start of the primary's log: log matching then
        finds where its log ends, and it is sent only what it missed.
        """
        group = Group()
        for i in range(5):
            group.write(f"k{i}", b"1")
        group.settle()
        primary = group.primary
        primary.become_primary(2, ["b2"], ["p", "b2"])
        group.backups["b2"].epoch = 2
        for i in range(3):
            group.write(f"k{i}", b"2")
        group.push("b2")
        primary.become_primary(3, ["b1", "b2"], ["p", "b2"])
        primary.append_message("b1")  # lost with its link
        primary.resend("b1", link_lost=True)
        sent = []
        for _ in range(3):
            message = primary.append_message("b1")
            sent.append([entry[1] for entry in wire(message)[5]])
            answer(primary, group.backups["b1"], "b1", message)
        self.assertEqual(sent, [[], [6, 7, 8], []])
        self.assertEqual(primary.caught_up(), ["b1"])
        primary.resend("b1")
        self.assertEqual(wire(primary.append_message("b1"))[5], [])

    def stale_member(self) -> tuple[Group, Replica]:
        """
        A group where b1 took, at position 2, an entry of epoch 1 that the
        primary does not hold, and was then left out of epoch 2, in which
        the primary and b2 committed another entry there; and b1.
        """
        group = Group()
        group.write("a", b"1")
        group.settle()
        back = group.backups["b1"]
        version = make_version(1, 2)
        stale = Entry(1, 2, Change("put", "a", version, Record(b"x", "text/plain", version, None)))
        back.on_append(1, 1, 1, [encode_entry(stale)], 1)
        group.primary.become_primary(2, ["b2"], ["p", "b2"])
        group.backups["b2"].epoch = 2
        group.write("b", b"2")
        group.push("b2")
        return group, back

    def test_stale_tail_replaced(self) -> None:
        """
        A member added back with an entry of an older epoch that the primary
        does not hold drops it before taking the primary's entries: it is in
        sync only once its log matches.
        """
        group, back = self.stale_member()
        primary = group.primary
        primary.become_primary(3, ["b1", "b2"], ["p", "b2"])
        for _ in range(4):
            group.push("b1")
        self.assertEqual(primary.caught_up(), ["b1"])
        self.assertEqual((back.epoch_at(2), back.last_seq), (2, 2))
        self.assertEqual((back.store.get("a").value, back.store.get("b").value), (b"1", b"2"))

    def test_commit_learnt_before_log_checked(self) -> None:
        """
        A member added back with an entry of an older epoch at a position
        the primary has since committed with another entry, told of that
        commit (a digest) before the primary's entries reached it, neither
        marks its own entry committed nor applies it: it is replaced once
        log matching gets there.
        """
        group, back = self.stale_member()
        primary = group.primary
        self.assertEqual(primary.applied_seq, 2)
        primary.become_primary(3, ["b1", "b2"], ["p", "b2"])
        back.epoch = 3
        self.assertEqual(back.learn_commit(primary.applied_seq), [])
        self.assertEqual((back.commit_seq, back.store.get("a").value), (1, b"1"))
        for _ in range(4):
            group.push("b1")
        self.assertEqual(primary.caught_up(), ["b1"])
        self.assertEqual(back.epoch_at(2), 2)
        self.assertEqual((back.store.get("a").value, back.store.get("b").value), (b"1", b"2"))

    def test_bounded(self) -> None:
        """
        The log is trimmed back to L{replica_module.RETAINED_ENTRIES} entries
        beyond what every member holds, or fewer holding at most
        L{replica_module.RETAINED_BYTES} of keys and records, once the trim
        point moved by L{replica_module.TRIM_BATCH}.
        """
        self.patch(replica_module, "RETAINED_ENTRIES", 4)
        self.patch(replica_module, "TRIM_BATCH", 2)
        group = Group()
        for i in range(20):
            group.write("k", b"v")
            group.settle()
        primary = group.primary
        self.assertIn(primary.last_seq - primary.base_seq, (4, 5))
        # 12 bytes an entry: the key, and the value with its 10-byte header
        self.patch(replica_module, "RETAINED_BYTES", 30)
        for i in range(4):
            group.write("k", b"v")
            group.settle()
        self.assertIn(primary.last_seq - primary.base_seq, (3, 4))

    def test_bounded_in_bytes(self) -> None:
        """
        Entries holding L{replica_module.RETAINED_BYTES} of keys and values
        are trimmed before the trim point moved by
        L{replica_module.TRIM_BATCH}: large values do not pile up in the log.
        """
        self.patch(replica_module, "RETAINED_ENTRIES", 4)
        group = Group()
        value = b"v" * (100 * 1024)
        for i in range(20):
            group.write("k", value)
            group.settle()
        primary = group.primary
        self.assertLess(20, replica_module.TRIM_BATCH)
        self.assertIn(primary.last_seq - primary.base_seq, (3, 4, 5))


class RoundTests(SynchronousTestCase):
    """
    Confirmation rounds for linearizable reads.
    """

    def test_round_confirmed_by_every_member(self) -> None:
        """
        A new round is confirmed only once every member acknowledged a
        message sent in it (or later).
        """
        group = Group()
        primary = group.primary
        self.assertEqual(primary.confirmed_round, 0)
        self.assertEqual(primary.new_round(0.0), 1)
        self.assertEqual(primary.confirmed_round, 0)
        group.push("b1")
        self.assertEqual(primary.confirmed_round, 0)
        group.push("b2")
        self.assertEqual(primary.confirmed_round, 1)

    def test_earlier_message_does_not_confirm(self) -> None:
        """
        An acknowledgement of a message sent before the round started does
        not confirm it.
        """
        group = Group(backups=("b1",))
        primary = group.primary
        early = primary.append_message("b1")
        primary.new_round(0.0)
        answer(primary, group.backups["b1"], "b1", early)
        self.assertEqual(primary.confirmed_round, 0)

    def test_stale_epoch_does_not_confirm(self) -> None:
        """
        An acknowledgement from another epoch confirms nothing.
        """
        group = Group(backups=("b1",), epoch=3)
        primary = group.primary
        primary.new_round(0.0)
        primary.on_append_ok("b1", 2, 0, 1)
        self.assertEqual(primary.confirmed_round, 0)

    def test_alone(self) -> None:
        """
        Without other members every round is confirmed at once.
        """
        group = Group(backups=())
        group.primary.new_round(0.0)
        self.assertEqual(group.primary.confirmed_round, 1)


class LeaseTests(SynchronousTestCase):
    """
    The primary's read lease starts when a round every member confirmed
    started; members remember what they promised.
    """

    def test_lease_from_round_confirmed_by_every_member(self) -> None:
        """
        The lease starts at the start of the newest round every member has
        confirmed, not at a round only some confirmed.
        """
        group = Group()
        primary = group.primary
        self.assertEqual(primary.lease_start, float("-inf"))
        primary.new_round(10.0)
        group.push("b1")
        self.assertEqual(primary.lease_start, float("-inf"))
        group.push("b2")
        self.assertEqual(primary.lease_start, 10.0)
        primary.new_round(11.0)
        primary.new_round(12.0)
        group.settle()
        self.assertEqual(primary.lease_start, 12.0)

    def test_new_configuration_needs_new_round(self) -> None:
        """
        A change of members, or stepping down, ends the lease, and a round
        started before the change grants none.
        """
        group = Group()
        primary = group.primary
        primary.new_round(10.0)
        group.settle()
        primary.new_round(11.0)
        primary.become_primary(2, ["b1", "b2", "b3"], ["p", "b1", "b2"])
        self.assertEqual(primary.lease_start, float("-inf"))
        group.backups["b3"] = Replica(PARTITION)
        group.settle()
        self.assertEqual(primary.lease_start, float("-inf"))
        primary.new_round(13.0)
        group.settle()
        self.assertEqual(primary.lease_start, 13.0)
        primary.step_down(3)
        self.assertEqual(primary.lease_start, float("-inf"))

    def test_promise_only_grows(self) -> None:
        """
        A member keeps the latest of the promises it made.
        """
        member = Replica(PARTITION)
        member.promise_lease(5.0)
        member.promise_lease(3.0)
        self.assertEqual(member.promised_until, 5.0)


class ExpiryTests(SynchronousTestCase):
    """
    The primary schedules expiries of committed records with a TTL.
    """

    def test_due_expiries(self) -> None:
        """
        A committed record with a TTL is due at its deadline, once.
        """
        group = Group()
        entry = group.write("k", b"v", ttl=5.0)
        self.assertEqual(group.primary.due_expiries(10.0), [])
        group.settle()
        self.assertEqual(group.primary.due_expiries(4.99), [])
        self.assertEqual(group.primary.due_expiries(5.0), [Expire("k", entry.change.version)])
        self.assertEqual(group.primary.due_expiries(50.0), [])

    def test_in_deadline_order(self) -> None:
        """
        Several expiries come out in deadline order.
        """
        group = Group(backups=())
        late = group.write("late", b"v", ttl=9.0)
        early = group.write("early", b"v", ttl=2.0)
        self.assertEqual(
            group.primary.due_expiries(10.0),
            [Expire("early", early.change.version), Expire("late", late.change.version)],
        )

    def test_expiry_removes_key_everywhere(self) -> None:
        """
        Proposing a due expiry removes the key on every member.
        """
        group = Group()
        group.write("k", b"v", ttl=5.0)
        group.settle()
        (expiry,) = group.primary.due_expiries(6.0)
        entry = group.primary.propose(expiry, None, 6.0)
        self.assertEqual(entry.change.kind, "expire")
        group.settle()
        for replica in [group.primary, *group.backups.values()]:
            self.assertIsNone(replica.store.get("k"))

    def test_backups_do_not_schedule(self) -> None:
        """
        Backups keep no expiry schedule; one that takes over rebuilds it
        from its store.
        """
        group = Group()
        entry = group.write("k", b"v", ttl=5.0)
        group.settle()
        backup = group.backups["b1"]
        self.assertEqual(backup.due_expiries(6.0), [])
        backup.become_primary(2, ["b2"], ["b1", "b2"])
        self.assertEqual(backup.due_expiries(6.0), [Expire("k", entry.change.version)])

    def test_step_down_clears(self) -> None:
        """
        A primary that steps down forgets its schedule.
        """
        group = Group(backups=())
        group.write("k", b"v", ttl=5.0)
        group.primary.step_down(2)
        self.assertEqual(group.primary.due_expiries(6.0), [])


class MiscTests(SynchronousTestCase):
    """
    Smaller accessors.
    """

    def test_entry_lookup(self) -> None:
        """
        L{Replica.entry} finds entries still in the log and nothing else.
        """
        group = Group()
        entry = group.write("a", b"1")
        self.assertEqual(group.primary.entry(1), entry)
        self.assertIsNone(group.primary.entry(0))
        self.assertIsNone(group.primary.entry(2))

    def test_newest(self) -> None:
        """
        L{Replica.newest} prefers the log's latest entry for the key (even a
        deletion) over the store.
        """
        group = Group()
        group.write("a", b"1")
        group.settle()
        backup = group.backups["b1"]
        group.primary.propose(Delete("a"), None, 0.0)
        group.push("b1")
        self.assertEqual(backup.read("a", 0.0).value, b"1")
        self.assertIsNone(backup.newest("a"))
        self.assertIsNone(backup.newest("zz"))

    def test_forget(self) -> None:
        """
        L{Replica.forget} drops store, log, positions and operation ids.
        """
        group = Group()
        group.write("a", b"1", op_id="x")
        group.settle()
        backup = group.backups["b1"]
        backup.forget()
        self.assertEqual(
            (len(backup.store), backup.log, backup.base_seq, backup.commit_seq, backup.applied_seq),
            (0, [], 0, 0, 0),
        )
        self.assertIsNone(backup.find_operation("x", "a"))

    def test_forget_frees_records_later(self) -> None:
        """
        L{Replica.forget} empties the store at once but frees its records
        only as L{Replica.release_dropped} is called, at most as many as
        each call allows: a large copy dropped does not hold up the
        reactor for the whole time its records take to free.
        """
        group = Group()
        for index in range(5):
            group.write(f"k{index}", b"v")
        group.settle()
        backup = group.backups["b1"]
        backup.forget()
        self.assertEqual((len(backup.store), backup.store.bytes_used), (0, 0))
        self.assertEqual(
            [backup.release_dropped(2) for _ in range(4)], [2, 2, 1, 0]
        )

    def test_first_chunk_frees_records_later(self) -> None:
        """
        The first chunk of a snapshot replaces the store at once, and the
        records it held are freed by L{Replica.release_dropped}.
        """
        d = Replica(PARTITION)
        d.on_snapshot(1, 3, 1, True, True, [["a", b"1", "t", 1, None], ["b", b"2", "t", 2, None]])
        d.on_snapshot(2, 7, 2, True, True, [["c", b"3", "t", 5, None]])
        self.assertEqual(sorted(d.store.keys()), ["c"])
        self.assertEqual((d.release_dropped(10), d.release_dropped(10)), (2, 0))

    def test_dropped_bytes_until_freed(self) -> None:
        """
        The records of dropped stores still count in C{dropped_bytes}
        until L{Replica.release_dropped} frees them, falling as it does,
        whether the store was dropped whole or replaced by a snapshot's
        first chunk.
        """
        group = Group()
        for index in range(5):
            group.write(f"k{index}", b"v")
        group.settle()
        backup = group.backups["b1"]
        held = backup.store.bytes_used
        self.assertEqual(backup.dropped_bytes, 0)
        backup.forget()
        self.assertEqual(backup.dropped_bytes, held)
        backup.on_snapshot(2, 3, 2, True, True, [["a", b"1", "t", 1, None]])
        snapshot = backup.store.bytes_used
        backup.on_snapshot(3, 4, 3, True, True, [])
        self.assertEqual(backup.dropped_bytes, held + snapshot)
        left = []
        for _ in range(3):
            backup.release_dropped(2)
            left.append(backup.dropped_bytes)
        self.assertEqual(left, [held * 4 // 5, held * 2 // 5, 0])


class EncodingTests(SynchronousTestCase):
    """
    Log entries and changes travel through the peer codec unchanged.
    """

    @given(changes())
    def test_change_round_trip(self, change) -> None:
        """
        L{decode_change} inverts L{encode_change} (after the codec).
        """
        self.assertEqual(decode_change(wire(encode_change(change))), change)

    @given(entries())
    def test_entry_round_trip(self, entry: Entry) -> None:
        """
        L{decode_entry} inverts L{encode_entry} (after the codec).
        """
        self.assertEqual(decode_entry(wire(encode_entry(entry))), entry)

    @given(changes().filter(lambda change: change.record is not None))
    def test_snapshot_records_round_trip(self, change) -> None:
        """
        A record sent in a snapshot arrives identical.
        """
        replica = Replica(PARTITION)
        (row,) = wire(encode_records([(change.key, change.record)]))
        replica.on_snapshot(1, 1, 1, True, True, [row])
        self.assertEqual(replica.store.get(change.key), change.record)


class DurableTests(SynchronousTestCase):
    """
    With a data directory, a primary counts its own copy only as far as it
    is on disk, and its log can be recorded and replayed.
    """

    def test_commit_waits_for_own_disk(self) -> None:
        """
        Every member storing a write commits it only once the primary's own
        record of it is durable.
        """
        group = Group()
        group.primary.durable_seq = 0
        entry = group.write("k", b"v")
        self.assertEqual(group.push("b1"), [])
        self.assertEqual(group.push("b2"), [])
        self.assertEqual(group.primary.commit_seq, 0)
        group.primary.mark_durable(entry.seq, entry.epoch)
        self.assertEqual(group.primary.commit_seq, 1)
        self.assertEqual(group.primary.take_announcements(), [entry])

    def test_replaced_entry_not_marked(self) -> None:
        """
        A record made durable after its entry was replaced says nothing
        about the entry now at that position.
        """
        backup = Replica(PARTITION)
        backup.durable_seq = 0
        group = Group(("b1",))
        group.write("k", b"v")
        answer(group.primary, backup, "b1", group.primary.append_message("b1"))
        backup.mark_durable(1, 2)
        self.assertEqual(backup.durable_seq, 0)
        backup.mark_durable(1, 1)
        self.assertEqual(backup.durable_seq, 1)

    def test_replay_of_recorded_entries(self) -> None:
        """
        What L{Replica.entries_after} gives, replayed through
        L{Replica.on_append} (twice: recovery may read a record again),
        rebuilds the log and the store.
        """
        group = Group(("b1",))
        for i in range(5):
            group.write(f"k{i}", b"v")
        primary = group.primary
        prev, prev_epoch, recorded = primary.entries_after(0)
        group.settle()
        # the commit position, recorded later, with what was added since
        later = primary.entries_after(5)
        self.assertEqual(later, (5, 1, []))
        copy = Replica(PARTITION)
        for _ in range(2):
            copy.on_append(primary.epoch, prev, prev_epoch, wire(recorded), 0)
            copy.on_append(primary.epoch, *later, primary.commit_seq)
        self.assertEqual((copy.last_seq, copy.commit_seq), (5, 5))
        self.assertEqual(sorted(copy.store.keys()), [f"k{i}" for i in range(5)])
