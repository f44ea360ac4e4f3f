# -*- test-case-name: tests.test_codec -*-
"""
The value codec of the peer protocol: msgpack, with decode limits.

A message is any value msgpack can carry: C{None}, C{bool}, C{int} (signed
or unsigned 64-bit), C{float}, C{str}, C{bytes}, lists (tuples encode as
lists) and dicts (keys of any hashable type above). C{str} and C{bytes} stay
distinct on the wire (C{use_bin_type=True}, C{raw=False}).

This module carries every replicated write, so it stays lean. With
msgpack's C extension (CPython), one module-level C{msgpack.Packer} is built
once and reused by L{encode} (the reactor thread is the only caller). Where
msgpack runs its slow pure-Python fallback (PyPy), L{encode} and L{decode}
use L{twisted_kv.wire._purepack} instead, which writes and reads the same
bytes. L{decode} accepts a C{memoryview} so the framing layer can hand over
a frame without copying it.

Decode limits: every string, binary, array and map length is checked
against the bytes left in the input, so a short frame can never claim a
huge allocation; nesting depth is bounded (by msgpack's fixed parse stack,
or L{twisted_kv.wire._purepack.MAX_DEPTH}); extension types (including
msgpack timestamps) are refused. Whatever goes wrong while decoding
surfaces as one typed exception, L{DecodeError}.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import msgpack

from twisted_kv.wire import _purepack
from twisted_kv.wire._purepack import DecodeError

__all__ = ["PROTOCOL_VERSION", "DecodeError", "encode", "decode"]

PROTOCOL_VERSION = 3
"""
Version of the peer protocol (framing, handshake and message layout). Peers
announce it in their HELLO and refuse any other version.
"""


def _msgpack_decode(data: Union[bytes, bytearray, memoryview]) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, max_ext_len=0)
    except Exception as e:
        raise DecodeError(f"undecodable message ({type(e).__name__}: {e})") from None


_encode: Callable[[Any], bytes]
_decode: Callable[[Union[bytes, bytearray, memoryview]], Any]
if msgpack.Packer.__module__ == "msgpack.fallback":
    _encode, _decode = _purepack.encode, _purepack.decode
else:
    _encode = msgpack.Packer(use_bin_type=True, autoreset=True).pack
    _decode = _msgpack_decode


def encode(message: Any) -> bytes:
    """
    Encode one message.

    @param message: a msgpack-encodable value (see the module docstring).
    @return: its msgpack encoding.
    @raise TypeError: C{message} holds a value msgpack cannot encode.
    @raise OverflowError: C{message} holds an integer outside the 64-bit
        range.
    @raise ValueError: C{message} nests too deeply.
    """
    # msgpack's Packer resets its buffer when packing fails, and _purepack
    # writes each message into a new buffer, so an unencodable message
    # never corrupts the next one.
    return _encode(message)


def decode(data: Union[bytes, bytearray, memoryview]) -> Any:
    """
    Decode exactly one message.

    @param data: the msgpack encoding of one value, and nothing else.
    @return: the value; msgpack arrays decode as lists.
    @raise DecodeError: C{data} is truncated, has trailing bytes, is not
        msgpack, holds invalid UTF-8, an extension type, an unhashable map
        key or nests too deeply.
    """
    return _decode(data)
