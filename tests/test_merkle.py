"""
Tests for L{twisted_kv.core.merkle}: incremental bucket digests.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core.merkle import BUCKETS, RangeDigest, bucket_of, differing, digest_of, leaf_hash
from twisted_kv.core.placement import partition_of
from twisted_kv.core.records import Record

records = st.dictionaries(
    st.text(min_size=1, max_size=20),
    st.builds(Record, st.binary(max_size=20), st.just("text/plain"), st.integers(1, 2**50)),
    max_size=40,
)


class DigestTests(SynchronousTestCase):
    """
    Bucket hashes depend only on the set of records, and diffs find exactly
    the buckets that changed.
    """

    def test_leaf_hash_is_stable(self) -> None:
        """
        A record's leaf hash never changes from one version of the code to
        the next: nodes of different versions compare their digests.
        """
        record = Record(b"value", "text/plain", 7 << 40 | 3, None)
        self.assertEqual(leaf_hash("ukey/\u00e9", record), 0x2367B37EF5C4919A)

    @given(records, st.randoms())
    def test_order_does_not_matter(self, content: dict, rng) -> None:
        """
        Adding the same records in any order gives the same digest.
        """
        items = list(content.items())
        shuffled = items[:]
        rng.shuffle(shuffled)
        self.assertEqual(digest_of(items).root(), digest_of(shuffled).root())

    @given(records)
    def test_toggle_twice_removes(self, content: dict) -> None:
        """
        Toggling every record in and out again leaves the empty digest.
        """
        digest = digest_of(content.items())
        for key, record in content.items():
            digest.toggle(key, record)
        self.assertEqual(digest.root(), RangeDigest().root())
        self.assertEqual(digest.buckets, [0] * BUCKETS)

    @given(records, st.text(min_size=1, max_size=20), st.binary(max_size=5))
    def test_diff_finds_the_changed_bucket(self, content: dict, key: str, value: bytes) -> None:
        """
        Changing one key's record changes the root and exactly its bucket.
        """
        before = digest_of(content.items())
        changed = dict(content)
        changed[key] = Record(value, "x", 2**51)
        after = digest_of(changed.items())
        self.assertNotEqual(before.root(), after.root())
        self.assertEqual(differing(before.buckets, after.buckets), [bucket_of(key)])

    def test_value_and_version_matter(self) -> None:
        """
        Records differing only in value, or only in version, hash apart.
        """
        base = digest_of([("k", Record(b"a", "x", 1))]).root()
        self.assertNotEqual(base, digest_of([("k", Record(b"b", "x", 1))]).root())
        self.assertNotEqual(base, digest_of([("k", Record(b"a", "x", 2))]).root())

    def test_partition_keys_spread_over_buckets(self) -> None:
        """
        The keys of one partition use most buckets (bucket and partition
        must not be the same hash), so a repair sends few keys.
        """
        keys = [f"kkey/{i}" for i in range(20_000)]
        in_partition = [k for k in keys if partition_of(k, 64) == 5]
        used = {bucket_of(k) for k in in_partition}
        self.assertGreater(len(used), len(in_partition) * 0.5)
