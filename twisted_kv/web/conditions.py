# -*- test-case-name: tests.test_web_conditions -*-
"""
Conditional requests (RFC 9110 section 13) for C{/kv} and C{/files}: the
one parser of C{If-Match} and C{If-None-Match} and the one evaluation of
them.

The stores check one precondition themselves: "the record is at this
version" or "there is no record".  L{Preconditions.version} and
L{Preconditions.store_checkable} say when a request's headers come down to
that, so that the write stays one store operation.  Anything else (C{*} in
C{If-Match}, lists, weak entity-tags, C{If-None-Match} with entity-tags) is
evaluated by L{write_conditionally} on a read, and the write is then made
conditional on the version that read found.
"""

from __future__ import annotations

import re
from typing import Awaitable, Callable, Optional, TypeVar

from attrs import frozen
from twisted.web.iweb import IRequest

from twisted_kv.errors import InvalidRequest, PreconditionFailed, Unavailable

_T = TypeVar("_T")

# How often a precondition that the store cannot check itself is evaluated
# again after a concurrent write changed the record under it.
CONDITION_ATTEMPTS = 8

# One element of an entity-tag list (RFC 9110 section 8.8.3 and 5.6.1): an
# optional (weak or strong) entity-tag, then a comma or the end.  Empty list
# elements are allowed.
_LIST_ELEMENT = re.compile(rb'[ \t]*(?:(W/)?"([\x21\x23-\x7e\x80-\xff]*)")?[ \t]*(,|\Z)')


def etag(version: str) -> bytes:
    """
    The strong entity-tag of C{version}, as the C{ETag} header sends it.
    """
    return b'"%s"' % version.encode("latin-1")


@frozen
class EntityTags:
    """
    The value of an C{If-Match} or C{If-None-Match} header.

    @ivar any: the value is C{*}.
    @ivar strong: the opaque tags of the strong entity-tags listed.
    @ivar weak: the opaque tags of the weak (C{W/}) entity-tags listed.
    """

    any: bool = False
    strong: frozenset[str] = frozenset()
    weak: frozenset[str] = frozenset()

    def strong_match(self, version: Optional[str]) -> bool:
        """
        Whether C{If-Match} holds for a record at C{version} (C{None}: there
        is none); weak entity-tags never match.
        """
        return version is not None and (self.any or version in self.strong)

    def weak_match(self, version: Optional[str]) -> bool:
        """
        Whether C{If-None-Match} matches a record at C{version} (C{None}:
        there is none), so that the condition is false.
        """
        return version is not None and (
            self.any or version in self.strong or version in self.weak
        )


def parse_entity_tags(values: list[bytes], header: str) -> EntityTags:
    """
    Parse the field lines of an C{If-Match} or C{If-None-Match} header.

    @param values: the raw field values, in order.
    @param header: the header's name, for the error message.
    @raise InvalidRequest: the value is neither C{*} nor a list of
        entity-tags.
    """
    text = b",".join(values)
    if text.strip(b" \t") == b"*":
        return EntityTags(any=True)
    strong, weak = set(), set()
    position = 0
    while True:
        match = _LIST_ELEMENT.match(text, position)
        if match is None:
            raise InvalidRequest(f"malformed {header}: expected * or quoted entity-tags")
        weakness, tag, separator = match.groups()
        if tag is not None:
            (weak if weakness else strong).add(tag.decode("latin-1"))
        if not separator:
            break
        position = match.end()
    if not (strong or weak):
        raise InvalidRequest(f"empty {header}")
    return EntityTags(strong=frozenset(strong), weak=frozenset(weak))


@frozen
class Preconditions:
    """
    The C{If-Match} and C{If-None-Match} headers of one request.
    """

    if_match: Optional[EntityTags] = None
    if_none_match: Optional[EntityTags] = None

    @property
    def version(self) -> Optional[str]:
        """
        The version C{If-Match} requires when it names exactly one strong
        entity-tag (the store can check that alone), else C{None}.
        """
        tags = self.if_match
        if tags is None or tags.any or len(tags.strong) != 1:
            return None
        (version,) = tags.strong
        return version

    def store_checkable(self, none_match_any: bool) -> bool:
        """
        Whether the store alone can check these preconditions, given its
        C{if_match} (one version) and, if C{none_match_any}, its
        C{if_none_match} (C{If-None-Match: *}).
        """
        if self.if_match is not None and self.version is None:
            return False
        return self.if_none_match is None or (none_match_any and self.if_none_match.any)

    def evaluate(self, version: Optional[str]) -> bool:
        """
        Evaluate the preconditions for a record at C{version} (C{None}: no
        such record), in the order of RFC 9110 section 13.2.2.

        @return: C{False} when C{If-None-Match} matches (C{304} for a read,
            C{412} for a write).
        @raise PreconditionFailed: C{If-Match} does not hold.
        """
        if self.if_match is not None and not self.if_match.strong_match(version):
            raise PreconditionFailed("If-Match does not match the current version")
        return self.if_none_match is None or not self.if_none_match.weak_match(version)


UNCONDITIONAL = Preconditions()


def preconditions(request: IRequest) -> Preconditions:
    """
    The preconditions of C{request}.

    @raise InvalidRequest: a header is malformed.
    """
    headers = request.requestHeaders
    if_match = headers.getRawHeaders(b"If-Match")
    if_none_match = headers.getRawHeaders(b"If-None-Match")
    if if_match is None and if_none_match is None:
        return UNCONDITIONAL
    return Preconditions(
        None if if_match is None else parse_entity_tags(if_match, "If-Match"),
        None if if_none_match is None else parse_entity_tags(if_none_match, "If-None-Match"),
    )


async def tag_current(
    request: IRequest, current: Callable[[], Awaitable[tuple[Optional[str], bool]]]
) -> None:
    """
    Give the C{412} answering a failed precondition the C{ETag} of the
    record's current version, when there is one, so that the client can
    retry without reading it again.

    @param current: reads the record, as for L{write_conditionally}.  When
        the read fails or is degraded (the version may be stale), the
        answer gets no C{ETag}: the C{412} stands on its own.
    """
    try:
        version, degraded = await current()
    except Exception:
        return
    if version is not None and not degraded:
        request.setHeader(b"ETag", etag(version))


async def write_conditionally(
    conditions: Preconditions,
    current: Callable[[], Awaitable[tuple[Optional[str], bool]]],
    write: Callable[[Optional[str]], Awaitable[_T]],
    what: str,
) -> _T:
    """
    Evaluate C{conditions} on a read of the current version, then C{write},
    conditional on the version read; start again when a concurrent write
    made that condition fail.

    @param current: reads the record: its version (C{None}: there is none)
        and whether the read is degraded (no majority answered, so the
        version may be stale).
    @param write: called with the version read; fails with
        L{PreconditionFailed} if the record is no longer at that version.
    @param what: the record, for messages (C{"the key"}).
    @return: the result of C{write}.
    @raise PreconditionFailed: the preconditions do not hold.
    @raise Unavailable: the read is degraded, or the record kept changing.
    """
    for _ in range(CONDITION_ATTEMPTS):
        version, degraded = await current()
        if degraded:
            raise Unavailable("no majority answered to evaluate the preconditions")
        if not conditions.evaluate(version):
            raise PreconditionFailed("If-None-Match matches the current version")
        try:
            return await write(version)
        except PreconditionFailed:
            continue
    raise Unavailable(f"{what} kept changing while its preconditions were evaluated")
