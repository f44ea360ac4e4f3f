# -*- test-case-name: tests.test_merkle -*-
"""
Hashed key ranges for anti-entropy: a two-level Merkle tree over a partition.

Keys fall into a fixed number of buckets by a hash of the key.  Each bucket's
hash is the XOR of its records' leaf hashes, so a write updates it in constant
time (XOR the old leaf out, the new one in) and the hash depends only on the
set of records, never on the order they were written in.  The root hashes the
bucket hashes.  Comparing two replicas costs one root when they agree, and the
bucket hashes when they do not; only the keys of differing buckets are then
exchanged.

Hashes are domain-separated (leaf, root) BLAKE2b, truncated to 64 bits.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Iterable, Sequence

from twisted_kv.core.records import Record

BUCKETS = 256

_LEAF = b"twisted_kv leaf\0"
_ROOT = b"twisted_kv root\0"


def bucket_of(key: str) -> int:
    """
    The bucket of C{key}.  Partitions take the CRC's low bits, so buckets
    take higher ones: the keys of one partition must spread over every
    bucket, not a few.
    """
    return (zlib.crc32(key.encode("utf-8", "surrogatepass")) >> 16) % BUCKETS


_VERSION_AND_CRC = struct.Struct(">QI")


def leaf_hash(key: str, record: Record) -> int:
    """
    The hash of one record: its key, version, content type and value.
    Hashed in one call, which costs about a quarter less than feeding the
    parts in one by one (every key of a node is hashed at its recovery).
    """
    value, content_type, version, _ = record.fields()
    data = b"".join((
        _LEAF,
        key.encode("utf-8", "surrogatepass"),
        _VERSION_AND_CRC.pack(version, zlib.crc32(value)),
        content_type.encode(),
    ))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class RangeDigest:
    """
    The bucket hashes of one replica of one partition, kept up to date.
    """

    def __init__(self) -> None:
        self.buckets = [0] * BUCKETS

    def toggle(self, key: str, record: Record) -> None:
        """
        Add C{record} if absent, remove it if present (XOR).
        """
        self.buckets[bucket_of(key)] ^= leaf_hash(key, record)

    def clear(self) -> None:
        self.buckets = [0] * BUCKETS

    def root(self) -> bytes:
        h = hashlib.blake2b(_ROOT, digest_size=16)
        h.update(struct.pack(f">{BUCKETS}Q", *self.buckets))
        return h.digest()


def differing(mine: Sequence[int], theirs: Sequence[int]) -> list[int]:
    """
    The buckets whose hashes differ.
    """
    return [index for index, (a, b) in enumerate(zip(mine, theirs)) if a != b]


def digest_of(records: Iterable[tuple[str, Record]]) -> RangeDigest:
    """
    The digest of a set of records, computed from scratch.
    """
    digest = RangeDigest()
    for key, record in records:
        digest.toggle(key, record)
    return digest
