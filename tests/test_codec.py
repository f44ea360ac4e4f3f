# -*- test-case-name: tests.test_codec -*-
"""
Tests for L{twisted_kv.wire.codec} and L{twisted_kv.wire._purepack}.

The round-trip and garbage tests run against both: the codec as this
runtime selects it (msgpack's C extension on CPython, L{_purepack} on PyPy),
and L{_purepack} itself, so that CPython runs cover it too.
"""

from __future__ import annotations

import enum
import struct
from collections import OrderedDict
from typing import Any, Callable, ClassVar

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.wire import _purepack, codec
from twisted_kv.wire.codec import PROTOCOL_VERSION, DecodeError

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
# Every size class of every type: fixed, 8-, 16- and 32-bit sizes and
# integers, NaN and infinities, tuples, long strings and bytes.
_wide_scalars = (
    _scalars
    | st.floats()
    | st.sampled_from(
        [0, 2**7, 2**8, 2**16, 2**32, 2**63, 2**64 - 1]
        + [-(2**5), -(2**7), -(2**15), -(2**31), -(2**63)]
    ).flatmap(
        lambda edge: st.integers(
            min_value=max(edge - 1, -(2**63)), max_value=min(edge + 1, 2**64 - 1)
        )
    )
    | st.integers(min_value=0, max_value=70_000).map(lambda n: "\u00e9" * n)
    | st.integers(min_value=0, max_value=70_000).map(lambda n: b"b" * n)
)
_wide_messages = st.recursive(
    _wide_scalars,
    lambda children: (
        st.lists(children, max_size=20)
        | st.tuples(children, children)
        | st.dictionaries(_keys, children, max_size=20)
    ),
    max_leaves=40,
)


# The mixins' properties run once per codec class. Examples are derandomized,
# never replayed from a database, so sharing one test function is safe.
_per_codec = settings(
    suppress_health_check=[*settings.default.suppress_health_check, HealthCheck.differing_executors]
)


def _msgpack_encode(message: Any) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _msgpack_decode(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, max_ext_len=0)


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


class _Codec:
    """
    The encoder and decoder under test, as static methods.
    """

    encode: ClassVar[Callable[[Any], bytes]]
    decode: ClassVar[Callable[[Any], Any]]


class RoundTripTestsMixin(_Codec):
    """
    Whatever C{encode} accepts, C{decode} gives back.
    """

    assertEqual: Callable[..., None]
    assertRaises: Callable[..., Any]
    assertIsInstance: Callable[..., None]

    @_per_codec
    @given(_messages)
    def test_round_trip(self, message: object) -> None:
        """
        Every msgpack-able value survives encoding and decoding with its
        types intact.
        """
        self.assertEqual(_typed(self.decode(self.encode(message))), _typed(message))

    @_per_codec
    @given(_messages)
    def test_memoryview(self, message: object) -> None:
        """
        L{decode} accepts a C{memoryview} slice, as the framing layer hands
        over frames without copying them.
        """
        framed = memoryview(b"\x03" + self.encode(message) + b"\xff")
        self.assertEqual(_typed(self.decode(framed[1:-1])), _typed(message))

    def test_bytearray(self) -> None:
        """
        C{decode} accepts a C{bytearray}.
        """
        self.assertEqual(self.decode(bytearray(self.encode([1, b"two"]))), [1, b"two"])

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
        self.assertEqual(_typed(self.decode(self.encode(message))), _typed(message))

    def test_tuple_becomes_list(self) -> None:
        """
        Tuples are encoded as msgpack arrays and come back as lists.
        """
        self.assertEqual(self.decode(self.encode((1, ("a", b"b")))), [1, ["a", b"b"]])

    def test_packer_reused(self) -> None:
        """
        Each L{encode} returns its own bytes: reusing the packer never
        clobbers an earlier result.
        """
        first = self.encode([1, b"first"])
        second = self.encode([2, b"second"])
        self.assertEqual(self.decode(first), [1, b"first"])
        self.assertEqual(self.decode(second), [2, b"second"])

    def test_unencodable(self) -> None:
        """
        A value msgpack cannot carry raises L{TypeError}, an integer outside
        the 64-bit ranges L{OverflowError} (as msgpack raises), and the
        encoder keeps working afterwards.
        """
        self.assertRaises(TypeError, self.encode, [1, object()])
        self.assertRaises(OverflowError, self.encode, [1, 2**64])
        self.assertRaises(OverflowError, self.encode, {"k": -(2**63) - 1})
        self.assertEqual(self.decode(self.encode([1, 2])), [1, 2])


class GarbageTestsMixin(_Codec):
    """
    Anything but exactly one well-formed value raises L{DecodeError}.
    """

    assertRaises: Callable[..., Any]
    assertIsInstance: Callable[..., None]

    def assertGarbage(self, data: bytes) -> None:
        """
        C{data} is refused with L{DecodeError}, which is a L{ValueError}.
        """
        e = self.assertRaises(DecodeError, self.decode, data)
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
        data = self.encode([1, "two", b"three", {4: 5}])
        for cut in range(len(data)):
            self.assertGarbage(data[:cut])

    def test_trailing_bytes(self) -> None:
        """
        Bytes after the message are refused.
        """
        self.assertGarbage(self.encode([1, 2]) + b"\x00")

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

    @_per_codec
    @given(st.binary(max_size=64))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """
        Arbitrary bytes either decode or raise L{DecodeError}; never any
        other exception.
        """
        try:
            self.decode(data)
        except DecodeError:
            pass


class CodecRoundTripTests(RoundTripTestsMixin, SynchronousTestCase):
    """
    L{codec.encode} and L{codec.decode}, as this runtime selects them.
    """

    encode = staticmethod(codec.encode)
    decode = staticmethod(codec.decode)


class PurePackRoundTripTests(RoundTripTestsMixin, SynchronousTestCase):
    """
    L{_purepack.encode} and L{_purepack.decode}.
    """

    encode = staticmethod(_purepack.encode)
    decode = staticmethod(_purepack.decode)


class CodecGarbageTests(GarbageTestsMixin, SynchronousTestCase):
    """
    L{codec.decode}, as this runtime selects it.
    """

    encode = staticmethod(codec.encode)
    decode = staticmethod(codec.decode)


class PurePackGarbageTests(GarbageTestsMixin, SynchronousTestCase):
    """
    L{_purepack.decode}, and the limits only it has.
    """

    encode = staticmethod(_purepack.encode)
    decode = staticmethod(_purepack.decode)

    def test_every_extension_type(self) -> None:
        """
        All eight extension types are refused, whatever they hold.
        """
        for data in [
            b"\xc7\x01\x05\x00",
            b"\xc8\x00\x01\x05\x00",
            b"\xc9\x00\x00\x00\x01\x05\x00",
            b"\xd4\x05\x00",
            b"\xd5\x05" + b"\x00" * 2,
            b"\xd6\x05" + b"\x00" * 4,
            b"\xd7\x05" + b"\x00" * 8,
            b"\xd8\x05" + b"\x00" * 16,
        ]:
            self.assertGarbage(data)

    def test_truncated_wide_forms(self) -> None:
        """
        A message cut anywhere is refused, including inside the 16- and
        32-bit sizes and the integers and floats of every width.
        """
        data = struct.pack(
            ">B" "BHB" "BIB" "BHB" "BIB" "BH" "BI" "Bb" "Bh" "Bi" "Bq" "Bf" "Bd" "B",
            0x9D,
            0xDA, 1, ord("a"),
            0xDB, 1, ord("b"),
            0xC5, 1, ord("c"),
            0xC6, 1, ord("d"),
            0xDC, 0,
            0xDF, 0,
            0xD0, -1,
            0xD1, -1,
            0xD2, -1,
            0xD3, -1,
            0xCA, 1.5,
            0xCB, 2.5,
            0xC0,
        )
        self.assertEqual(len(_purepack.decode(data)), 13)
        for cut in range(len(data)):
            self.assertGarbage(data[:cut])

    def test_huge_claimed_sizes(self) -> None:
        """
        A short input claiming a 4 GiB string or map, or a map with more
        pairs than the bytes left can hold, is refused before anything is
        allocated for it.
        """
        self.assertGarbage(b"\xdb\xff\xff\xff\xff")
        self.assertGarbage(b"\xdf\xff\xff\xff\xff")
        self.assertGarbage(b"\x83\x01\x02\x03\x04\x05")

    def test_nesting_limit(self) -> None:
        """
        C{MAX_DEPTH} nested arrays or maps decode; one more is refused, even
        an empty one.
        """
        depth = _purepack.MAX_DEPTH
        self.assertEqual(
            _purepack.decode(b"\x91" * (depth - 1) + b"\x90"),
            _purepack.decode(_msgpack_encode(_nested(depth))),
        )
        self.assertGarbage(b"\x91" * depth + b"\x90")
        self.assertGarbage(b"\x81\x01" * depth + b"\x80")

    def test_caller_recursion_limit_irrelevant(self) -> None:
        """
        Decoding does not recurse: the deepest message decodes however deep
        the caller's stack already is.
        """
        data = b"\x91" * (_purepack.MAX_DEPTH - 1) + b"\xc0"

        def nest(levels: int) -> Any:
            return _purepack.decode(data) if levels == 0 else nest(levels - 1)

        self.assertEqual(nest(400), _purepack.decode(data))


def _nested(depth: int) -> list:
    """
    C{depth} lists, each holding the next, the innermost empty.
    """
    message: list = []
    for _ in range(depth - 1):
        message = [message]
    return message


class ProtocolVersionTests(SynchronousTestCase):
    """
    L{PROTOCOL_VERSION}.
    """

    def test_protocol_version(self) -> None:
        """
        The protocol version is a positive integer.
        """
        self.assertIsInstance(PROTOCOL_VERSION, int)
        self.assertGreater(PROTOCOL_VERSION, 0)
        self.assertIs(codec.PROTOCOL_VERSION, PROTOCOL_VERSION)


class SelectionTests(SynchronousTestCase):
    """
    The codec uses L{_purepack} exactly where msgpack runs its fallback.
    """

    def test_selection(self) -> None:
        """
        L{codec.encode} uses L{_purepack} if and only if msgpack has no C
        extension here, and both raise the same L{DecodeError}.
        """
        # Both write and read the same bytes, so only the module's own
        # bindings tell which one runs: read, never replaced, here.
        fallback = msgpack.Packer.__module__ == "msgpack.fallback"
        self.assertEqual(codec._encode is _purepack.encode, fallback)
        self.assertEqual(codec._decode is _purepack.decode, fallback)
        self.assertIs(codec.DecodeError, _purepack.DecodeError)


class _Flag(enum.IntEnum):
    ON = 1


class _Text(str):
    pass


class CompatibilityTests(SynchronousTestCase):
    """
    L{_purepack} writes the bytes msgpack writes and reads what msgpack
    reads, so nodes on CPython and on PyPy understand each other.
    """

    @given(_wide_messages)
    def test_same_bytes(self, message: object) -> None:
        """
        L{_purepack.encode} gives msgpack's bytes, and L{_purepack.decode}
        decodes them as msgpack does.
        """
        data = _msgpack_encode(message)
        self.assertEqual(_purepack.encode(message), data)
        self.assertEqual(
            repr(_typed(_purepack.decode(data))), repr(_typed(_msgpack_decode(data)))
        )

    def test_size_classes(self) -> None:
        """
        Integers, strings, bytes, arrays and maps on either side of every
        boundary between two of msgpack's forms are written and read as
        msgpack writes and reads them.
        """
        edges = [0, 2**5, 2**7, 2**8, 2**16, 2**32, 2**63]
        integers = [n + d for edge in edges for n in (edge, -edge) for d in (-1, 0, 1)]
        sizes = [n + d for n in (16, 32, 256, 2**16) for d in (-1, 0)]
        messages = (
            [n for n in integers if -(2**63) <= n < 2**64]
            + [2**64 - 1]
            + ["s" * n for n in sizes]
            + [b"b" * n for n in sizes]
            + [[None] * n for n in sizes]
            + [dict.fromkeys(range(n)) for n in sizes]
        )
        for message in messages:
            data = _msgpack_encode(message)
            self.assertEqual(_purepack.encode(message), data)
            self.assertEqual(_typed(_purepack.decode(data)), _typed(message))

    def test_subclasses_and_buffers(self) -> None:
        """
        Subclasses of the protocol's types, C{bytearray} and C{memoryview}
        encode as msgpack encodes them; other types are refused as msgpack
        refuses them.
        """
        message = [
            _Flag.ON,
            _Text("text"),
            OrderedDict([(b"k", 1.5)]),
            bytearray(b"ba"),
            memoryview(b"mv"),
            range(0),
        ]
        self.assertRaises(TypeError, _purepack.encode, message)
        self.assertRaises(TypeError, _msgpack_encode, message)
        del message[-1]
        self.assertEqual(_purepack.encode(message), _msgpack_encode(message))

    def test_long_values_among_short_ones(self) -> None:
        """
        Long strings and bytes, written apart from the short values around
        them, keep their place in the encoding.
        """
        message = [b"a", b"b" * 64, "c" * 63, "\u00e9" * 40, b"d" * 1_000_000, 5, [b"e" * 200]]
        self.assertEqual(_purepack.encode(message), _msgpack_encode(message))

    def test_non_canonical_forms(self) -> None:
        """
        Values in wider forms than msgpack's encoder picks (small integers
        in 64 bits, short strings with 32-bit sizes, float32, ...) decode
        as msgpack decodes them.
        """
        for data in [
            b"\xcf" + (5).to_bytes(8, "big"),
            b"\xd3" + (5).to_bytes(8, "big"),
            b"\xcd\x00\x01",
            b"\xdb\x00\x00\x00\x01a",
            b"\xd9\x01a",
            b"\xc6\x00\x00\x00\x01a",
            b"\xdd\x00\x00\x00\x01\x01",
            b"\xde\x00\x01\x01\x02",
            b"\xca" + struct.pack(">f", 0.25),
            b"\x82\x01\x02\x01\x03",
        ]:
            self.assertEqual(
                repr(_typed(_purepack.decode(data))), repr(_typed(_msgpack_decode(data)))
            )

    @given(st.binary(max_size=64))
    def test_same_verdict(self, data: bytes) -> None:
        """
        On arbitrary bytes, L{_purepack.decode} returns what msgpack returns,
        or refuses what msgpack refuses.
        """
        try:
            expected = repr(_typed(_msgpack_decode(data)))
        except Exception:
            self.assertRaises(DecodeError, _purepack.decode, data)
        else:
            self.assertEqual(repr(_typed(_purepack.decode(data))), expected)

    def test_encoding_limits(self) -> None:
        """
        L{_purepack.encode} writes C{MAX_DEPTH} nested arrays, and refuses
        one more with L{ValueError}.
        """
        depth = _purepack.MAX_DEPTH
        self.assertEqual(_purepack.encode(_nested(depth)), _msgpack_encode(_nested(depth)))
        self.assertRaises(ValueError, _purepack.encode, _nested(depth + 1))
        self.assertRaises(ValueError, _purepack.encode, [{1: _nested(depth)}])

