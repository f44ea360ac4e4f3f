# -*- test-case-name: tests.test_files_records -*-
"""
Tests for L{twisted_kv.files._records}: stored values and the collection
rule.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.files import CorruptFile
from twisted_kv.files._records import (
    COMMITTED,
    MOVING,
    UPLOADING,
    DirectoryEntry,
    Lease,
    Manifest,
    Tombstone,
    collectable,
    decode_entry,
)

MANIFEST = Manifest(10, 5.5, "0123456789abcdef", 4, "00" * 32, "text/plain")


class ValueTests(SynchronousTestCase):
    """
    Encoding and decoding stored values.
    """

    def test_round_trips(self) -> None:
        """
        Manifests, tombstones, directories and leases decode to what was
        encoded.
        """
        for entry in [MANIFEST, MANIFEST.renamed("/old"), Tombstone(3), Tombstone(3, "/new")]:
            self.assertEqual(decode_entry(entry.encode()), entry)
        self.assertEqual(DirectoryEntry.decode(DirectoryEntry(1.5).encode()), DirectoryEntry(1.5))
        lease = Lease("/b", MOVING, 7.0, previous="/a")
        self.assertEqual(Lease.decode(lease.encode()), lease)

    def test_chunks(self) -> None:
        """
        A manifest knows how many chunks it has and how long each is.
        """
        self.assertEqual(MANIFEST.chunk_count, 3)
        self.assertEqual([MANIFEST.chunk_length(n) for n in range(3)], [4, 4, 2])
        self.assertEqual(Manifest(0, 0, "", 4, "").chunk_count, 0)

    def test_garbage(self) -> None:
        """
        Values that are not what they should be raise L{CorruptFile}.
        """
        for value in [b"", b"[]", b"{}", b'{"size": "x"}', b"\xff"]:
            self.assertRaises(CorruptFile, decode_entry, value)
            self.assertRaises(CorruptFile, DirectoryEntry.decode, value)
            self.assertRaises(CorruptFile, Lease.decode, value)


class CollectableTests(SynchronousTestCase):
    """
    When an upload's chunks are garbage.
    """

    @given(
        st.sampled_from([UPLOADING, MOVING, COMMITTED]),
        st.booleans(),
        st.floats(min_value=0, max_value=2000),
    )
    def test_rule(self, state: str, referenced: bool, age: float) -> None:
        """
        Referenced uploads are never garbage; unreferenced settled ones
        always are; others only once their lease has expired.
        """
        lease = Lease("/f", state, 1000.0)
        decision = collectable(lease, referenced, 1000.0 + age, 600.0)
        if referenced:
            self.assertFalse(decision)
        elif state == COMMITTED:
            self.assertTrue(decision)
        else:
            self.assertEqual(decision, age >= 600.0)

    def test_paths(self) -> None:
        """
        A lease in the middle of a rename covers both paths.
        """
        self.assertEqual(Lease("/b", MOVING, 0, "/a").paths, ("/b", "/a"))
        self.assertEqual(Lease("/b", COMMITTED, 0).paths, ("/b",))
