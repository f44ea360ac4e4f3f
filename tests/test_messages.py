"""
Tests for L{twisted_kv.core.messages}: every builder gives the list the
nodes have always exchanged (so the bytes on the wire stay the same), and
its parser gives back the fields.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core import messages
from twisted_kv.core.records import Delete, Expire, Put, Record
from twisted_kv.wire.codec import decode, encode


class BuildersTests(SynchronousTestCase):
    """
    Each message, built, is the documented list and parses back.
    """

    def check(self, built: list, expected: list, parse: Callable[[list], Any], fields: Any) -> None:
        self.assertEqual(built, expected)
        self.assertEqual(decode(encode(built)), expected)
        self.assertEqual(parse(decode(encode(built))), fields)

    def test_consensus(self) -> None:
        """
        Ballots, their answers, and the leader's append with its answer.
        """
        self.check(messages.prevote(4, 2, 3), ["prevote", 4, 2, 3], messages.parse_ballot, (4, 2, 3))
        self.check(messages.vote(4, 2, 3), ["vote", 4, 2, 3], messages.parse_ballot, (4, 2, 3))
        self.check(messages.prevoted(4, True), ["prevoted", 4, True], messages.parse_ballot_answer, (4, True))
        self.check(messages.voted(4, False), ["voted", 4, False], messages.parse_ballot_answer, (4, False))
        self.check(
            messages.map_append(4, 2, 3, None, 1), ["append", 4, 2, 3, None, 1],
            messages.parse_map_append, (4, 2, 3, None, 1),
        )
        self.check(
            messages.map_appended(4, True, 2, 3), ["appended", 4, True, 2, 3],
            messages.parse_map_appended, (4, True, 2, 3),
        )
        self.assertEqual(messages.consensus_term(messages.voted(9, True)), 9)

    def test_map(self) -> None:
        """
        Status gossip, and a committed map asked for and sent.
        """
        self.check(
            messages.status({"term": 2}, [3, 2], 77), ["status", {"term": 2}, [3, 2], 77],
            messages.parse_status, ({"term": 2}, [3, 2], 77),
        )
        self.assertEqual(messages.map_request(), ["map_req"])
        self.check(messages.map_answer(3, 2, [1]), ["map", 3, 2, [1]], messages.parse_map, (3, 2, [1]))

    def test_replication(self) -> None:
        """
        A primary's log and snapshots, the members' answers, and reports to
        the leader.
        """
        self.check(
            messages.append(1, 2, 3, 2, [[2, 4, None, [1, "k", 9, False]]], 3, 7, 5),
            ["app", 1, 2, 3, 2, [[2, 4, None, [1, "k", 9, False]]], 3, 7, 5],
            messages.parse_append, (1, 2, 3, 2, [[2, 4, None, [1, "k", 9, False]]], 3, 7, 5),
        )
        self.check(
            messages.append_ok(1, 2, 4, 7, False), ["app_ok", 1, 2, 4, 7, False],
            messages.parse_append_ok, (1, 2, 4, 7, False),
        )
        self.check(
            messages.append_refused(1, 2, 3), ["app_no", 1, 2, 3], messages.parse_append_refused, (1, 2, 3)
        )
        self.check(messages.stale(1, 3), ["stale", 1, 3], messages.parse_stale, (1, 3))
        self.check(
            messages.snapshot(1, 2, 3, 2, True, False, [], 5, 0), ["snap", 1, 2, 3, 2, True, False, [], 5, 0],
            messages.parse_snapshot, (1, 2, 3, 2, True, False, [], 5, 0),
        )
        self.check(
            messages.report(messages.IN_SYNC, 1, 2, "n3"), ["in_sync", 1, 2, "n3"],
            messages.parse_report, ("in_sync", 1, 2, "n3"),
        )
        self.assertEqual(messages.report(messages.DROP, 1, 2, "n3"), ["drop", 1, 2, "n3"])

    def test_requests(self) -> None:
        """
        A client operation's request takes the id its sender picks; one for
        a partition's primary carries the epoch of the configuration that
        named it (0 unless given).
        """
        put = Put("k", b"v", "text/plain", 5.0, None, False, True)
        self.check(
            messages.OpRequest(2, put, "n1/a/1", 6).to_wire(8),
            ["op", 8, 2, [0, "k", b"v", "text/plain", 5.0, None, False, True], "n1/a/1", 6],
            messages.parse_op, (8, 2, put, "n1/a/1", 6),
        )
        self.assertEqual(
            messages.parse_op(messages.OpRequest(2, Delete("k", "v1"), None).to_wire(1))[2],
            Delete("k", "v1"),
        )
        self.assertEqual(
            messages.parse_op(messages.OpRequest(2, Expire("k", 3), None).to_wire(1))[2],
            Expire("k", 3),
        )
        records = [[0, "k", b"v", "text/plain", None], [3, "m", b"w", "t", 9.5]]
        self.check(
            messages.RestoreRequest(2, "~b-1", records, 6).to_wire(8),
            ["restore", 8, 2, "~b-1", records, 6],
            messages.parse_restore, (8, 2, "~b-1", records, 6),
        )
        self.check(
            messages.ReadRequest(2, "k", 6).to_wire(8), ["read", 8, 2, "k", 6],
            messages.parse_read, (8, 2, "k", 6),
        )
        self.assertEqual(messages.ReadRequest(2, "k").to_wire(8), ["read", 8, 2, "k", 0])
        self.check(
            messages.PeekRequest(2, "k").to_wire(8), ["peek", 8, 2, "k"],
            messages.parse_key_request, (8, 2, "k"),
        )
        self.check(
            messages.ListRequest([1, 2], "a", None, 10).to_wire(8), ["list", 8, [1, 2], "a", None, 10],
            messages.parse_list, (8, [1, 2], "a", None, 10),
        )

    def test_answers(self) -> None:
        """
        An answer is a result, a retry or an error.
        """
        self.check(messages.ok_answer(8, [1]), ["res", 8, "ok", [1]], messages.parse_answer, (8, "ok", [1]))
        retry = messages.retry_answer(8, "moved", True)
        self.check(
            retry, ["res", 8, "retry", ["moved", True]], messages.parse_answer, (8, "retry", ["moved", True])
        )
        self.assertEqual(messages.parse_failure(retry[3]), ("moved", True))
        self.assertEqual(messages.error_answer(8, "not_found", "no"), ["res", 8, "err", ["not_found", "no"]])

    def test_payloads(self) -> None:
        """
        Records and degraded-read answers travel as lists.
        """
        record = Record(b"v", "text/plain", 9, None)
        self.assertEqual(messages.encode_record(record), [b"v", "text/plain", 9, None])
        self.assertEqual(messages.decode_record(messages.encode_record(record)), record)
        self.assertIsNone(messages.decode_record(messages.encode_record(None)))
        peek = messages.Peek(True, record, 3)
        self.assertEqual(messages.encode_peek(peek), [True, [b"v", "text/plain", 9, None], 3])
        self.assertEqual(messages.decode_peek(messages.encode_peek(peek)), peek)

    def test_change_feed(self) -> None:
        """
        Batches to the leader, their confirmation, and numbered events.
        """
        self.check(
            messages.publish(3, 2, b"xx", True), ["pub", 3, 2, b"xx", True],
            messages.parse_publish, (3, 2, b"xx", True),
        )
        self.check(messages.published(3), ["pub_ok", 3], messages.parse_published, 3)
        self.check(messages.events(10, b"xx", 8), ["ev", 10, b"xx", 8], messages.parse_events, (10, b"xx", 8))
        self.check(messages.subscribe(None), ["sub", None], messages.parse_subscribe, None)
        self.check(messages.subscribe(5), ["sub", 5], messages.parse_subscribe, 5)
        self.check(messages.subscribed(5), ["sub_ok", 5], messages.parse_subscribed, 5)
        self.check(messages.replay(2, 5), ["rpl", 2, 5], messages.parse_replay, (2, 5))
        self.check(
            messages.replayed(2, 9, [(6, 5, b"xx")]), ["rpl_ok", 2, 9, [[6, 5, b"xx"]]],
            messages.parse_replayed, (2, 9, [(6, 5, b"xx")]),
        )
        self.check(messages.replayed(2, 9, None), ["rpl_ok", 2, 9, None], messages.parse_replayed, (2, 9, None))

    def test_antientropy(self) -> None:
        """
        Digests, their answers, and a check asked for.
        """
        self.check(
            messages.digest(1, 2, 3, b"r"), ["digest", 1, 2, 3, b"r"], messages.parse_digest, (1, 2, 3, b"r")
        )
        self.check(
            messages.digest_ok(1, 2, 3), ["digest_ok", 1, 2, 3], messages.parse_digest_answer, (1, 2, 3, None)
        )
        self.check(
            messages.digest_diff(1, 2, 3, [5]), ["digest_diff", 1, 2, 3, [5]],
            messages.parse_digest_answer, (1, 2, 3, [5]),
        )
        self.check(messages.check(4), ["check", 4], messages.parse_check, 4)
