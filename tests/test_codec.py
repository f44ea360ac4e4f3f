# -*- test-case-name: tests.test_codec -*-
"""
Tests for L{twisted_kv.wire.codec}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.wire import codec
from twisted_kv.wire.codec import PROTOCOL_VERSION, DecodeError, decode, encode

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
_keys = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text()
    | st.binary()
)
_messages = st.recursive(
    _scalars,
    lambda children: st.lists(children) | st.dictionaries(_keys, children),
    max_leaves=30,
)


def _typed(value: object) -> object:
    """
    A form of C{value} whose equality also compares types, so that C{True}
    and C{1}, C{1} and C{1.0}, or C{b"a"} and C{"a"} never compare equal.
    """
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, dict):
        return (
            "dict",
            sorted(((repr(_typed(k)), _typed(v)) for k, v in value.items()), key=repr),
        )
    return (type(value).__name__, value)


class RoundTripTests(SynchronousTestCase):
    """
    Whatever L{encode} accepts, L{decode} gives back.
    """

    @given(_messages)
    def test_round_trip(self, message: object) -> None:
        """
        Every msgpack-able value survives encoding and decoding with its
        types intact.
        """
        self.assertEqual(_typed(decode(encode(message))), _typed(message))

    @given(_messages)
    def test_memoryview(self, message: object) -> None:
        """
        L{decode} accepts a C{memoryview} slice, as the framing layer hands
        over frames without copying them.
        """
        framed = memoryview(b"\x03" + encode(message) + b"\xff")
        self.assertEqual(_typed(decode(framed[1:-1])), _typed(message))

    def test_replication_message(self) -> None:
        """
        A typical replication message keeps its str/bytes distinction and
        its integer map keys.
        """
        message = [
            7,
            "p12",
            5,
            1234,
            [[1234, "kuser:1", b"x" * 100, "application/octet-stream", None]],
            {1: b"\x00", "k": [True, 1.5]},
        ]
        self.assertEqual(_typed(decode(encode(message))), _typed(message))

    def test_tuple_becomes_list(self) -> None:
        """
        Tuples are encoded as msgpack arrays and come back as lists.
        """
        self.assertEqual(decode(encode((1, ("a", b"b")))), [1, ["a", b"b"]])

    def test_packer_reused(self) -> None:
        """
        Each L{encode} returns its own bytes: reusing the packer never
        clobbers an earlier result.
        """
        first = encode([1, b"first"])
        second = encode([2, b"second"])
        self.assertEqual(decode(first), [1, b"first"])
        self.assertEqual(decode(second), [2, b"second"])

    def test_unencodable(self) -> None:
        """
        A value msgpack cannot carry raises L{TypeError}, and the shared
        packer keeps working afterwards.
        """
        self.assertRaises(TypeError, encode, [1, object()])
        self.assertRaises((OverflowError, ValueError), encode, 2**64)
        self.assertEqual(decode(encode([1, 2])), [1, 2])

    def test_protocol_version(self) -> None:
        """
        The protocol version is a positive integer.
        """
        self.assertIsInstance(PROTOCOL_VERSION, int)
        self.assertGreater(PROTOCOL_VERSION, 0)
        self.assertIs(codec.PROTOCOL_VERSION, PROTOCOL_VERSION)


class GarbageTests(SynchronousTestCase):
    """
    Anything but exactly one well-formed value raises L{DecodeError}.
    """

    def assertGarbage(self, data: bytes) -> None:
        """
        C{data} is refused with L{DecodeError}, which is a L{ValueError}.
        """
        e = self.assertRaises(DecodeError, decode, data)
        self.assertIsInstance(e, ValueError)

    def test_empty(self) -> None:
        """
        No bytes at all is not a message.
        """
        self.assertGarbage(b"")

    def test_truncated(self) -> None:
        """
        A truncated message is refused, whatever the cut.
        """
        data = encode([1, "two", b"three", {4: 5}])
        for cut in range(len(data)):
            self.assertGarbage(data[:cut])

    def test_trailing_bytes(self) -> None:
        """
        Bytes after the message are refused.
        """
        self.assertGarbage(encode([1, 2]) + b"\x00")

    def test_reserved_byte(self) -> None:
        """
        msgpack's never-used byte 0xc1 is refused.
        """
        self.assertGarbage(b"\xc1")

    def test_invalid_utf8(self) -> None:
        """
        A str holding invalid UTF-8 is refused.
        """
        self.assertGarbage(b"\xa2\xff\xfe")

    def test_extension_types(self) -> None:
        """
        Extension types, including msgpack timestamps, are refused.
        """
        self.assertGarbage(b"\xd4\x05\x00")
        self.assertGarbage(b"\xd6\xff\x00\x00\x00\x01")

    def test_unhashable_key(self) -> None:
        """
        A map keyed by an array is refused.
        """
        self.assertGarbage(b"\x81\x91\x01\x02")

    def test_huge_claimed_length(self) -> None:
        """
        A short input claiming a 4 GiB binary or array is refused without
        allocating it.
        """
        self.assertGarbage(b"\xc6\xff\xff\xff\xff")
        self.assertGarbage(b"\xdd\xff\xff\xff\xff")

    def test_deep_nesting(self) -> None:
        """
        Nesting deeper than the parser's stack is refused.
        """
        self.assertGarbage(b"\x91" * 100_000 + b"\xc0")

    @given(st.binary(max_size=64))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """
        Arbitrary bytes either decode or raise L{DecodeError}; never any
        other exception.
        """
        try:
            decode(data)
        except DecodeError:
            pass
