# -*- test-case-name: tests.test_codec -*-
"""
The value codec of the peer protocol: msgpack, with decode limits.

A message is any value msgpack can carry: C{None}, C{bool}, C{int} (signed
or unsigned 64-bit), C{float}, C{str}, C{bytes}, lists (tuples encode as
lists) and dicts (keys of any hashable type above). C{str} and C{bytes} stay
distinct on the wire (C{use_bin_type=True}, C{raw=False}).

This module carries every replicated write, so it stays lean: one
module-level C{msgpack.Packer} is built once and reused by L{encode} (the
reactor thread is the only caller), and L{decode} accepts a C{memoryview}
so the framing layer can hand over a frame without copying it.

Decode limits: msgpack sizes every string, binary, array and map limit from
the length of the input, so a short frame can never claim a huge
allocation; nesting depth is bounded by msgpack's fixed parse stack;
extension types (including msgpack timestamps) are refused. Whatever goes
wrong while decoding surfaces as one typed exception, L{DecodeError}.
"""

from __future__ import annotations

from typing import Any, Union

import msgpack

__all__ = ["PROTOCOL_VERSION", "DecodeError", "encode", "decode"]

PROTOCOL_VERSION = 2
"""
Version of the peer protocol (framing, handshake and message layout). Peers
announce it in their HELLO and refuse any other version.
"""


class DecodeError(ValueError):
    """
    Bytes that are not exactly one well-formed msgpack value of the types
    this protocol carries.
    """


_packer = msgpack.Packer(use_bin_type=True, autoreset=True)
_pack = _packer.pack
_unpackb = msgpack.unpackb


def encode(message: Any) -> bytes:
    """
    Encode one message.

    @param message: a msgpack-encodable value (see the module docstring).
    @return: its msgpack encoding.
    @raise TypeError: C{message} holds a value msgpack cannot encode.
    @raise ValueError: C{message} holds an integer outside the 64-bit range,
        or nests deeper than msgpack allows.
    """
    # msgpack's Packer resets its buffer when packing fails, so an
    # unencodable message never corrupts the next one.
    return _pack(message)


def decode(data: Union[bytes, bytearray, memoryview]) -> Any:
    """
    Decode exactly one message.

    @param data: the msgpack encoding of one value, and nothing else.
    @return: the value; msgpack arrays decode as lists.
    @raise DecodeError: C{data} is truncated, has trailing bytes, is not
        msgpack, holds invalid UTF-8, an extension type, an unhashable map
        key or nests too deeply.
    """
    try:
        return _unpackb(data, raw=False, strict_map_key=False, max_ext_len=0)
    except Exception as e:
        raise DecodeError(f"undecodable message ({type(e).__name__}: {e})") from None
