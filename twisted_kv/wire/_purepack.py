# -*- test-case-name: tests.test_codec -*-
"""
msgpack for the peer protocol's types, in plain Python that PyPy's JIT
compiles well.

msgpack's C extension does not build on PyPy, where msgpack runs its
pure-Python C{msgpack.fallback}: generic code, several calls and a buffer
object per value, and the largest single cost of a node under PyPy. This
module knows only the types L{twisted_kv.wire.codec} carries, and walks a
whole message in one loop, with a stack of the open arrays and maps rather
than a recursive call per value: PyPy compiles that loop once, while every
call into a function holding a loop of its own costs about 65 ns. It
decodes by indexing one C{bytes} object, with precompiled L{struct.Struct}
readers. L{twisted_kv.wire.codec} uses it when msgpack runs its fallback.

The wire format is msgpack's: L{encode} gives byte for byte what
C{msgpack.Packer(use_bin_type=True)} gives, and L{decode} returns what
C{msgpack.unpackb(data, raw=False, strict_map_key=False)} returns, so nodes
on either runtime talk to each other. L{decode} refuses, with
L{DecodeError}, what L{twisted_kv.wire.codec.decode} refuses: anything but
exactly one value, truncated input, invalid UTF-8, extension types, the
reserved byte 0xc1, unhashable map keys and containers nested more than
L{MAX_DEPTH} deep. A length is checked against the bytes left before
anything is allocated for it.
"""

from __future__ import annotations

import struct
from itertools import chain
from typing import Any, Iterator, Union

__all__ = ["MAX_DEPTH", "DecodeError", "encode", "decode"]

MAX_DEPTH = 512
"""
The deepest nesting of arrays and maps that L{encode} writes and L{decode}
reads. Far beyond any message of the protocol, and shallow enough for
L{decode}'s recursion to stay well within Python's recursion limit.
"""


class DecodeError(ValueError):
    """
    Bytes that are not exactly one well-formed msgpack value of the types
    this protocol carries.
    """


_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_I8 = struct.Struct(">b").unpack_from
_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
# Read as signed: PyPy builds a big integer for every unsigned 64-bit read.
_I64 = struct.Struct(">q").unpack_from
_F32 = struct.Struct(">f").unpack_from
_F64 = struct.Struct(">d").unpack_from

_TYPE_U16 = struct.Struct(">BH").pack
_TYPE_U32 = struct.Struct(">BI").pack
_TYPE_U64 = struct.Struct(">BQ").pack
_TYPE_I16 = struct.Struct(">Bh").pack
_TYPE_I32 = struct.Struct(">Bi").pack
_TYPE_I64 = struct.Struct(">Bq").pack
_TYPE_F64 = struct.Struct(">Bd").pack

_UINT64_WRAP = 1 << 64

_CHUNK_MIN = 64
"""
Strings and bytes this long or longer are joined to the output at the end
instead of being copied into its C{bytearray}, which PyPy does byte by byte:
a 16 MiB value would otherwise take longer than with msgpack's fallback.
"""

# What L{encode}'s iterators return once exhausted, and a map's key in
# L{_read} until it is read.
_END = object()


def encode(message: Any) -> bytes:
    """
    Encode one message as msgpack.

    @param message: a value of the types L{twisted_kv.wire.codec} carries.
    @return: its msgpack encoding.
    @raise TypeError: C{message} holds a value of another type.
    @raise OverflowError: C{message} holds an integer outside the signed and
        unsigned 64-bit ranges.
    @raise ValueError: C{message} nests deeper than L{MAX_DEPTH}, or holds a
        string, bytes, array or map of 2**32 items or more.
    """
    out = bytearray()
    # Long strings and bytes, each after the encoding that precedes it.
    chunks: list[bytes] = []
    # Iterators over the arrays and maps being written, innermost last.
    open_: list[Iterator[Any]] = []
    value = message
    while True:
        # Exact types first, most frequent first: one guard each under the JIT.
        kind = type(value)
        if kind is str:
            data = value.encode("utf-8")
            _write_str_header(out, len(data))
            _write_data(out, chunks, data)
        elif kind is int:
            _write_int(out, value)
        elif kind is list or kind is tuple:
            _write_container_header(out, len(value), 0x90, 0xDC)
            if len(open_) >= MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH}")
            open_.append(iter(value))
        elif kind is bytes:
            _write_bin_header(out, len(value))
            _write_data(out, chunks, value)
        elif value is None:
            out.append(0xC0)
        elif kind is bool:
            out.append(0xC3 if value else 0xC2)
        elif kind is float:
            out += _TYPE_F64(0xCB, value)
        elif kind is dict:
            _write_container_header(out, len(value), 0x80, 0xDE)
            if len(open_) >= MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH}")
            open_.append(chain.from_iterable(value.items()))
        else:
            value = _plain(value)
            continue
        # Then the next value of the innermost array or map not yet done.
        while open_:
            value = next(open_[-1], _END)
            if value is not _END:
                break
            open_.pop()
        else:
            break
    if chunks:
        chunks.append(bytes(out))
        return b"".join(chunks)
    return bytes(out)


def _plain(value: Any) -> Any:
    """
    C{value}, an instance of a subclass of one of the protocol's types (an
    C{IntEnum}, an C{OrderedDict}, ...) or a C{bytearray} or C{memoryview},
    as the type msgpack encodes it as.

    @raise TypeError: C{value} is of no type msgpack encodes.
    """
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    raise TypeError(f"cannot encode {type(value).__name__!r} object")


def _write_int(out: bytearray, value: int) -> None:
    if value >= 0:
        if value < 0x80:
            out.append(value)
        elif value <= 0xFF:
            out.append(0xCC)
            out.append(value)
        elif value <= 0xFFFF:
            out += _TYPE_U16(0xCD, value)
        elif value <= 0xFFFFFFFF:
            out += _TYPE_U32(0xCE, value)
        elif value <= 0x7FFFFFFFFFFFFFFF:
            out += _TYPE_I64(0xCF, value)
        elif value <= 0xFFFFFFFFFFFFFFFF:
            out += _TYPE_U64(0xCF, value)
        else:
            raise OverflowError("integer out of the 64-bit range")
    elif value >= -0x20:
        out.append(value + 0x100)
    elif value >= -0x80:
        out.append(0xD0)
        out.append(value + 0x100)
    elif value >= -0x8000:
        out += _TYPE_I16(0xD1, value)
    elif value >= -0x80000000:
        out += _TYPE_I32(0xD2, value)
    elif value >= -0x8000000000000000:
        out += _TYPE_I64(0xD3, value)
    else:
        raise OverflowError("integer out of the 64-bit range")


def _write_str_header(out: bytearray, size: int) -> None:
    if size < 0x20:
        out.append(0xA0 | size)
    elif size <= 0xFF:
        out.append(0xD9)
        out.append(size)
    else:
        _write_long_size(out, size, 0xDA)


def _write_bin_header(out: bytearray, size: int) -> None:
    if size <= 0xFF:
        out.append(0xC4)
        out.append(size)
    else:
        _write_long_size(out, size, 0xC5)


def _write_container_header(out: bytearray, size: int, fixed: int, type_16: int) -> None:
    if size < 0x10:
        out.append(fixed | size)
    else:
        _write_long_size(out, size, type_16)


def _write_long_size(out: bytearray, size: int, type_16: int) -> None:
    """
    Write a type byte and a size: C{type_16} and a 16-bit size or, for a
    larger size, the next type byte and a 32-bit size.
    """
    if size <= 0xFFFF:
        out += _TYPE_U16(type_16, size)
    elif size <= 0xFFFFFFFF:
        out += _TYPE_U32(type_16 + 1, size)
    else:
        raise ValueError(f"{size} items are too many for msgpack")


def _write_data(out: bytearray, chunks: list[bytes], data: bytes) -> None:
    if len(data) < _CHUNK_MIN:
        out += data
    else:
        chunks.append(bytes(out))
        chunks.append(data)
        del out[:]


def decode(data: Union[bytes, bytearray, memoryview]) -> Any:
    """
    Decode exactly one msgpack value.

    @param data: the msgpack encoding of one value, and nothing else.
    @return: the value; arrays decode as lists.
    @raise DecodeError: C{data} is truncated, has trailing bytes, is not
        msgpack, holds invalid UTF-8, an extension type, an unhashable map
        key or nests deeper than L{MAX_DEPTH}.
    """
    if type(data) is not bytes:
        data = bytes(data)
    try:
        value, end = _read(data)
    except DecodeError:
        raise
    except Exception as e:
        # An index or struct read past the end, invalid UTF-8, or an
        # unhashable key.
        raise DecodeError(f"undecodable message ({type(e).__name__}: {e})") from None
    if end != len(data):
        raise DecodeError(f"{len(data) - end} bytes after the message")
    return value


class _Open:
    """
    An array or map being decoded.

    @ivar items: its list or dict, filled as its values are read.
    @ivar left: how many values (maps: key/value pairs) are still to come.
    @ivar key: a map's key read last, waiting for its value, or C{_END}.
    """

    __slots__ = ("items", "left", "key")

    def __init__(self, items: Union[list, dict], left: int) -> None:
        self.items = items
        self.left = left
        self.key: Any = _END


def _read(data: bytes) -> tuple[Any, int]:
    """
    Read the value at the start of C{data}.

    @return: the value and the position after it.
    """
    pos = 0
    value: Any
    # The arrays and maps being filled, innermost last.
    open_: list[_Open] = []
    while True:
        byte = data[pos]
        pos += 1
        if byte < 0x80:
            value = byte
        elif byte >= 0xE0:
            value = byte - 0x100
        elif 0xA0 <= byte < 0xC0:
            value, pos = _read_str(data, pos, byte & 0x1F)
        elif byte < 0xA0 or 0xDC <= byte <= 0xDF:
            if len(open_) >= MAX_DEPTH:
                raise DecodeError(f"nested deeper than {MAX_DEPTH}")
            value, size, pos = _read_container_header(data, pos, byte)
            if size:
                open_.append(_Open(value, size))
                continue
        else:
            value, pos = _read_typed(data, pos, byte)
        # Put the value into the innermost open array or map; one that it
        # fills is in turn a value for the one around it.
        while open_:
            top = open_[-1]
            items = top.items
            if type(items) is list:
                items.append(value)
            elif top.key is _END:
                top.key = value
                break
            else:
                items[top.key] = value
                top.key = _END
            top.left -= 1
            if top.left:
                break
            open_.pop()
            value = items
        else:
            return value, pos


def _read_container_header(data: bytes, pos: int, byte: int) -> tuple[Union[list, dict], int, int]:
    """
    Read the header of an array or a map, of type C{byte}.

    @return: an empty list or dict, its number of items (maps: pairs), and
        the position after the header.
    """
    if byte < 0x90:
        items: Union[list, dict] = {}
        size = byte & 0x0F
    elif byte < 0xA0:
        items = []
        size = byte & 0x0F
    else:
        items = [] if byte <= 0xDD else {}
        if byte & 1:
            size = _U32(data, pos)[0]
            pos += 4
        else:
            size = _U16(data, pos)[0]
            pos += 2
    # Every item takes at least one byte.
    if (size if type(items) is list else 2 * size) > len(data) - pos:
        raise DecodeError("truncated array or map")
    return items, size, pos


def _read_typed(data: bytes, pos: int, byte: int) -> tuple[Any, int]:
    """
    Read a value of type C{byte} (0xc0 to 0xdb, but not an array or map)
    whose type byte ends just before C{pos}.

    @return: the value and the position after it.
    """
    if byte == 0xC0:
        return None, pos
    if byte == 0xC2:
        return False, pos
    if byte == 0xC3:
        return True, pos
    if byte == 0xCF:
        value = _I64(data, pos)[0]
        return (value + _UINT64_WRAP if value < 0 else value), pos + 8
    if byte == 0xC4:
        return _read_bin(data, pos + 1, data[pos])
    if byte == 0xCB:
        return _F64(data, pos)[0], pos + 8
    if byte == 0xCC:
        return data[pos], pos + 1
    if byte == 0xCD:
        return _U16(data, pos)[0], pos + 2
    if byte == 0xCE:
        return _U32(data, pos)[0], pos + 4
    if byte == 0xD9:
        return _read_str(data, pos + 1, data[pos])
    if byte == 0xD0:
        return _I8(data, pos)[0], pos + 1
    if byte == 0xD1:
        return _I16(data, pos)[0], pos + 2
    if byte == 0xD2:
        return _I32(data, pos)[0], pos + 4
    if byte == 0xD3:
        return _I64(data, pos)[0], pos + 8
    if byte == 0xC5:
        return _read_bin(data, pos + 2, _U16(data, pos)[0])
    if byte == 0xC6:
        return _read_bin(data, pos + 4, _U32(data, pos)[0])
    if byte == 0xDA:
        return _read_str(data, pos + 2, _U16(data, pos)[0])
    if byte == 0xDB:
        return _read_str(data, pos + 4, _U32(data, pos)[0])
    if byte == 0xCA:
        return _F32(data, pos)[0], pos + 4
    if byte == 0xC1:
        raise DecodeError("the reserved byte 0xc1")
    raise DecodeError(f"an extension type (0x{byte:02x})")


def _read_str(data: bytes, pos: int, size: int) -> tuple[str, int]:
    end = pos + size
    if end > len(data):
        raise DecodeError("truncated string")
    return data[pos:end].decode("utf-8"), end


def _read_bin(data: bytes, pos: int, size: int) -> tuple[bytes, int]:
    end = pos + size
    if end > len(data):
        raise DecodeError("truncated bytes")
    return data[pos:end], end
