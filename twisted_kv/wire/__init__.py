# -*- test-case-name: tests.test_codec -*-
"""
Wire formats shared by the node's cluster-internal protocols.

L{twisted_kv.wire.codec} turns messages into bytes and back; the framing and
the handshake that carry them live in L{twisted_kv.peer.protocol}.
"""

from twisted_kv.wire.codec import PROTOCOL_VERSION, DecodeError, decode, encode

__all__ = ["PROTOCOL_VERSION", "DecodeError", "decode", "encode"]
