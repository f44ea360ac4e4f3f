# -*- test-case-name: tests.test_web_conditions -*-
"""
Tests for L{twisted_kv.web.conditions}: the C{If-Match} and
C{If-None-Match} parser and evaluation shared by C{/kv} and C{/files}.
"""

from __future__ import annotations

from typing import Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from twisted_kv.errors import InvalidRequest, PreconditionFailed, Unavailable
from twisted_kv.web.conditions import (
    CONDITION_ATTEMPTS,
    UNCONDITIONAL,
    EntityTags,
    Preconditions,
    etag,
    parse_entity_tags,
    preconditions,
    tag_current,
    write_conditionally,
)

# Opaque tags: any etagc (RFC 9110 section 8.8.3), commas included.
_OPAQUE = st.text(
    st.sampled_from([chr(c) for c in [0x21, *range(0x23, 0x7F), 0x80, 0xE9, 0xFF]]), max_size=6
)
_OWS = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def _field_lines(draw: st.DrawFn) -> tuple[list[bytes], EntityTags]:
    """
    Some entity-tags, written as a list with optional whitespace and empty
    elements over one or more field lines, and what they parse to.
    """
    tags = draw(st.lists(st.tuples(st.booleans(), _OPAQUE), min_size=1, max_size=5))
    elements = []
    for weak, tag in tags:
        elements.append(draw(_OWS) + ("W/" if weak else "") + f'"{tag}"' + draw(_OWS))
        elements.extend([draw(_OWS)] * draw(st.integers(0, 1)))
    cut = draw(st.integers(0, len(elements) - 1))
    lines = [",".join(elements[:cut]), ",".join(elements[cut:])] if cut else [",".join(elements)]
    expected = EntityTags(
        strong=frozenset(tag for weak, tag in tags if not weak),
        weak=frozenset(tag for weak, tag in tags if weak),
    )
    return [line.encode("latin-1") for line in lines], expected


class EntityTagParsingTests(SynchronousTestCase):
    """
    L{parse_entity_tags}.
    """

    def test_parse(self) -> None:
        """
        Lists of strong and weak entity-tags, with optional whitespace and
        empty list elements, over several field lines, and C{*}.
        """
        cases = [
            ([b"*"], EntityTags(any=True)),
            ([b" * "], EntityTags(any=True)),
            ([b'"a"'], EntityTags(strong=frozenset({"a"}))),
            ([b'""'], EntityTags(strong=frozenset({""}))),
            ([b'W/"a"'], EntityTags(weak=frozenset({"a"}))),
            (
                [b'"a", W/"b" ,"c,d"'],
                EntityTags(strong=frozenset({"a", "c,d"}), weak=frozenset({"b"})),
            ),
            ([b', "a",, "b",'], EntityTags(strong=frozenset({"a", "b"}))),
            ([b'"a"', b'W/"b"'], EntityTags(strong=frozenset({"a"}), weak=frozenset({"b"}))),
        ]
        for values, expected in cases:
            self.assertEqual(parse_entity_tags(values, "If-Match"), expected, values)

    def test_malformed(self) -> None:
        """
        Anything else raises L{InvalidRequest}.
        """
        for value in [b"", b"a", b'"a', b'a"', b'"a b"', b'w/"a"', b'"a""b"', b"*,", b'"\x7f"']:
            self.assertRaises(InvalidRequest, parse_entity_tags, [value], "If-Match")

    @given(_field_lines())
    def test_lists(self, case: tuple[list[bytes], EntityTags]) -> None:
        """
        Any list of entity-tags parses to the strong and weak tags it names,
        however it is spaced and split into field lines.
        """
        lines, expected = case
        self.assertEqual(parse_entity_tags(lines, "If-Match"), expected)

    @given(st.lists(st.binary(max_size=12), min_size=1, max_size=3))
    def test_total(self, lines: list[bytes]) -> None:
        """
        Any field value either parses or is refused with L{InvalidRequest}
        (a 400), never another exception (a 500); and what parses names at
        least one entity-tag or is C{*}.
        """
        try:
            tags = parse_entity_tags(lines, "If-None-Match")
        except InvalidRequest as error:
            self.assertIn("If-None-Match", error.message)
            return
        self.assertTrue(tags.any or tags.strong or tags.weak)

    @given(_OPAQUE)
    def test_etag_round_trip(self, version: str) -> None:
        """
        The C{ETag} sent for a version, given back in C{If-Match}, names
        that version as a strong entity-tag.
        """
        self.assertEqual(
            parse_entity_tags([etag(version)], "If-Match"), EntityTags(strong=frozenset({version}))
        )


class MatchTests(SynchronousTestCase):
    """
    L{EntityTags.strong_match} and L{EntityTags.weak_match}.
    """

    @given(_field_lines(), st.one_of(st.none(), _OPAQUE))
    def test_comparisons(
        self, case: tuple[list[bytes], EntityTags], version: Optional[str]
    ) -> None:
        """
        The strong comparison (C{If-Match}) matches only strong tags; the
        weak one (C{If-None-Match}) matches both; neither matches a missing
        record.
        """
        _, tags = case
        self.assertEqual(tags.strong_match(version), version in tags.strong)
        self.assertEqual(
            tags.weak_match(version), version in tags.strong or version in tags.weak
        )

    @given(st.one_of(st.none(), _OPAQUE))
    def test_any(self, version: Optional[str]) -> None:
        """
        C{*} matches every existing record and no missing one.
        """
        tags = EntityTags(any=True)
        exists = version is not None
        self.assertEqual((tags.strong_match(version), tags.weak_match(version)), (exists, exists))


class PreconditionsTests(SynchronousTestCase):
    """
    L{Preconditions} and L{preconditions}.
    """

    def request(self, **headers: bytes) -> DummyRequest:
        request = DummyRequest([b""])
        for name, value in headers.items():
            request.requestHeaders.addRawHeader(name.replace("_", "-"), value)
        return request

    def test_headers(self) -> None:
        """
        Both headers are read; without either, the request is
        unconditional.
        """
        self.assertIs(preconditions(self.request()), UNCONDITIONAL)
        request = self.request(If_Match=b'"a", W/"b"', If_None_Match=b"*")
        self.assertEqual(
            preconditions(request),
            Preconditions(
                EntityTags(strong=frozenset({"a"}), weak=frozenset({"b"})), EntityTags(any=True)
            ),
        )
        self.assertRaises(InvalidRequest, preconditions, self.request(If_Match=b"a"))

    def test_store_checkable(self) -> None:
        """
        One strong entity-tag in C{If-Match}, and C{If-None-Match: *} where
        the store takes it, are all a store checks itself.
        """
        one = EntityTags(strong=frozenset({"a"}))
        cases = [
            (Preconditions(), True, "", None),
            (Preconditions(one), True, "", "a"),
            (Preconditions(one, EntityTags(any=True)), True, "", "a"),
            (Preconditions(None, EntityTags(any=True)), False, "DELETE", None),
            (Preconditions(EntityTags(any=True)), False, "", None),
            (Preconditions(EntityTags(strong=frozenset({"a", "b"}))), False, "", None),
            (Preconditions(EntityTags(weak=frozenset({"a"}))), False, "", None),
            (Preconditions(None, one), False, "", None),
        ]
        for conditions, checkable, method, version in cases:
            self.assertEqual(
                conditions.store_checkable(none_match_any=method != "DELETE"),
                checkable,
                conditions,
            )
            self.assertEqual(conditions.version, version, conditions)

    def test_evaluate_order(self) -> None:
        """
        C{If-Match} is evaluated first (a L{PreconditionFailed}), then
        C{If-None-Match} (C{False}).
        """
        both = Preconditions(EntityTags(strong=frozenset({"a"})), EntityTags(any=True))
        self.assertRaises(PreconditionFailed, both.evaluate, "b")
        self.assertRaises(PreconditionFailed, both.evaluate, None)
        self.assertFalse(both.evaluate("a"))
        self.assertTrue(Preconditions(None, EntityTags(any=True)).evaluate(None))


class WriteConditionallyTests(SynchronousTestCase):
    """
    L{write_conditionally}.
    """

    def attempt(
        self,
        conditions: Preconditions,
        versions: list[tuple[Optional[str], bool]],
        refused: int = 0,
    ) -> tuple[Deferred[str], list[Optional[str]]]:
        """
        Run L{write_conditionally} over reads giving C{versions} in turn and
        a write that is refused (the record changed) C{refused} times.

        @return: its result and the versions the write was made on.
        """
        reads = iter(versions)
        writes: list[Optional[str]] = []

        def write(version: Optional[str]) -> Deferred[str]:
            writes.append(version)
            if len(writes) <= refused:
                return fail(PreconditionFailed("changed"))
            return succeed("written")

        result = Deferred.fromCoroutine(
            write_conditionally(conditions, lambda: succeed(next(reads)), write, "the key")
        )
        return result, writes

    def test_written_on_version_read(self) -> None:
        """
        The write is made on the version the preconditions were evaluated
        on, and is tried again on a new read when that version changed.
        """
        any_ = Preconditions(EntityTags(any=True))
        result, writes = self.attempt(any_, [("1", False), ("2", False)], refused=1)
        self.assertEqual((self.successResultOf(result), writes), ("written", ["1", "2"]))

    def test_refused(self) -> None:
        """
        Preconditions that do not hold fail without a write.
        """
        weak = Preconditions(EntityTags(weak=frozenset({"1"})))
        for conditions in [weak, Preconditions(None, weak.if_match)]:
            result, writes = self.attempt(conditions, [("1", False)])
            self.failureResultOf(result, PreconditionFailed)
            self.assertEqual(writes, [], conditions)

    def test_unavailable(self) -> None:
        """
        A degraded read, or a record that keeps changing, is L{Unavailable}.
        """
        any_ = Preconditions(EntityTags(any=True))
        result, writes = self.attempt(any_, [("1", True)])
        self.failureResultOf(result, Unavailable)
        self.assertEqual(writes, [])
        result, writes = self.attempt(
            any_, [("1", False)] * CONDITION_ATTEMPTS, refused=CONDITION_ATTEMPTS
        )
        error = self.failureResultOf(result, Unavailable).value
        self.assertIn("the key kept changing", error.message)
        self.assertEqual(len(writes), CONDITION_ATTEMPTS)


class TagCurrentTests(SynchronousTestCase):
    """
    L{tag_current}.
    """

    def tagged(self, read: Deferred[tuple[Optional[str], bool]]) -> Optional[list[bytes]]:
        """
        The C{ETag} that L{tag_current} gives an answer after C{read}.
        """
        request = DummyRequest([b""])
        self.successResultOf(Deferred.fromCoroutine(tag_current(request, lambda: read)))
        return request.responseHeaders.getRawHeaders(b"ETag")

    def test_current(self) -> None:
        """
        A record read with a majority gives its version as the C{ETag}.
        """
        self.assertEqual(self.tagged(succeed(("7.1", False))), [b'"7.1"'])

    def test_unknown(self) -> None:
        """
        No record, a degraded read (maybe stale) or a failed one give no
        C{ETag}, and no error: the C{412} stands on its own.
        """
        self.assertIsNone(self.tagged(succeed((None, False))))
        self.assertIsNone(self.tagged(succeed(("7.1", True))))
        self.assertIsNone(self.tagged(fail(Unavailable())))
