# -*- test-case-name: tests.test_files_paths -*-
"""
Tests for L{twisted_kv.files._paths}: path validation (nothing escapes the
root) and the mapping of paths onto store keys.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core.keyspace import FILES, namespace_of
from twisted_kv.files import ROOT, BadPath, FSPath
from twisted_kv.files._paths import (
    MAX_PATH_BYTES,
    after_chunks_of,
    child_directories_prefix,
    child_manifests_prefix,
    chunk_key,
    chunks_prefix,
    directory_key,
    lease_key,
    manifest_key,
    new_upload_id,
    path_of_entry_key,
    upload_id_of_chunk_key,
    upload_id_of_lease_key,
)

segments = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1,
    max_size=12,
).filter(lambda segment: segment not in (".", ".."))
paths = st.lists(segments, max_size=6).map(FSPath.from_segments)


class FSPathTests(SynchronousTestCase):
    """
    Building and checking paths.
    """

    def test_parse_and_text(self) -> None:
        """
        Absolute paths parse into segments and print back.
        """
        path = FSPath.parse("/docs/a.txt")
        self.assertEqual(path.segments, ("docs", "a.txt"))
        self.assertEqual((path.text, str(path), path.name, path.depth), ("/docs/a.txt",) * 2 + ("a.txt", 2))
        self.assertEqual(path.parent, FSPath.parse("/docs"))
        self.assertEqual(FSPath.parse("/"), ROOT)
        self.assertTrue(ROOT.is_root)
        self.assertEqual(ROOT.text, "/")

    def test_refused(self) -> None:
        """
        Relative paths, empty, C{.} and C{..} segments, slashes and
        backslashes inside segments, control characters, undecodable bytes
        and overlong paths are all refused: a path cannot name anything
        outside the root.
        """
        for text in ["docs", "", "/a//b", "/a/", "/..", "/a/../b", "/./a", "/a\\..\\b", "/a\x00b", "/a\nb", "/a\x7f"]:
            self.assertRaises(BadPath, FSPath.parse, text)
        for segments in [[".."], ["a/b"], ["\udcff"], [""], ["a" * (MAX_PATH_BYTES + 1)]]:
            self.assertRaises(BadPath, FSPath.from_segments, segments)
        self.assertRaises(BadPath, ROOT.child, "..")

    def test_relations(self) -> None:
        """
        Ancestors leave out the root; C{is_within} includes the path itself.
        """
        path = FSPath.parse("/a/b/c")
        self.assertEqual([p.text for p in path.ancestors()], ["/a", "/a/b"])
        self.assertTrue(path.is_within(FSPath.parse("/a")))
        self.assertTrue(path.is_within(path))
        self.assertTrue(path.is_within(ROOT))
        self.assertFalse(FSPath.parse("/ab").is_within(FSPath.parse("/a")))
        self.assertEqual(ROOT.child("x"), FSPath.parse("/x"))


class KeyTests(SynchronousTestCase):
    """
    Store keys of the file system.
    """

    def test_entry_keys(self) -> None:
        """
        Manifests and directories carry their depth, in the files
        namespace.
        """
        path = FSPath.parse("/docs/a.txt")
        self.assertEqual(manifest_key(path), "fm2/docs/a.txt")
        self.assertEqual(directory_key(path), "fd2/docs/a.txt")
        self.assertEqual(namespace_of(manifest_key(path)), FILES)

    def test_children_prefixes(self) -> None:
        """
        The children prefixes of a directory match its children and no
        grandchildren, nor siblings sharing a name prefix.
        """
        docs = FSPath.parse("/docs")
        prefix = child_manifests_prefix(docs)
        self.assertTrue(manifest_key(FSPath.parse("/docs/a")).startswith(prefix))
        self.assertFalse(manifest_key(FSPath.parse("/docs/a/b")).startswith(prefix))
        self.assertFalse(manifest_key(FSPath.parse("/docsx/a")).startswith(prefix))
        self.assertEqual(child_manifests_prefix(ROOT), "fm1/")
        self.assertEqual(child_directories_prefix(docs), "fd2/docs/")

    @given(paths)
    def test_entry_key_round_trip(self, path: FSPath) -> None:
        """
        The path of a manifest or directory key is the path it was made
        from, and the key is under its parent's children prefix.
        """
        self.assertEqual(path_of_entry_key(manifest_key(path)), path)
        self.assertEqual(path_of_entry_key(directory_key(path)), path)
        if not path.is_root:
            self.assertTrue(manifest_key(path).startswith(child_manifests_prefix(path.parent)))

    def test_other_keys_have_no_path(self) -> None:
        """
        Chunk, lease and client keys are not entries.
        """
        for key in [chunk_key("ab" * 8, 0), lease_key("ab" * 8), "kdocs/a", "fx"]:
            self.assertIsNone(path_of_entry_key(key))

    def test_upload_keys(self) -> None:
        """
        Upload ids are 16 hex digits; the chunks of an upload share a
        prefix, and C{after_chunks_of} sorts after every one of them and
        before the next upload's.
        """
        upload_id = new_upload_id()
        self.assertRegex(upload_id, "^[0-9a-f]{16}$")
        keys = [chunk_key(upload_id, n) for n in (0, 9, 10, 123456)]
        self.assertTrue(all(key.startswith(chunks_prefix(upload_id)) for key in keys))
        self.assertTrue(all(key < after_chunks_of(upload_id) for key in keys))
        self.assertLess(after_chunks_of(upload_id), chunk_key(upload_id[:-1] + "g", 0))
        self.assertEqual(upload_id_of_chunk_key(keys[2]), upload_id)
        self.assertEqual(upload_id_of_lease_key(lease_key(upload_id)), upload_id)
