# -*- test-case-name: tests.test_keyspace -*-
"""
Tests for L{twisted_kv.core.keyspace}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core import keyspace
from twisted_kv.core.keyspace import (
    FILES,
    MAX_KEY_BYTES,
    USER,
    check_user_key,
    file_key,
    name_of,
    namespace_of,
    to_user,
    user_key,
)
from twisted_kv.errors import InvalidRequest


class CheckUserKeyTests(SynchronousTestCase):
    """
    Client keys are 1 to 1024 bytes of UTF-8.
    """

    def test_limit_is_1024(self) -> None:
        """
        The documented limit is 1024 bytes.
        """
        self.assertEqual(MAX_KEY_BYTES, 1024)

    def test_empty(self) -> None:
        """
        The empty key is refused with L{InvalidRequest} (HTTP 400).
        """
        error = self.assertRaises(InvalidRequest, check_user_key, "")
        self.assertEqual(error.status, 400)

    def test_one_byte(self) -> None:
        """
        A one-byte key is accepted and returned unchanged.
        """
        self.assertEqual(check_user_key("a"), "a")

    def test_ascii_boundary(self) -> None:
        """
        1024 ASCII characters are accepted; 1025 are not.
        """
        self.assertEqual(check_user_key("a" * 1024), "a" * 1024)
        self.assertRaises(InvalidRequest, check_user_key, "a" * 1025)

    def test_bytes_not_characters(self) -> None:
        """
        The limit counts UTF-8 bytes: 600 two-byte characters (1200 bytes)
        are refused although they are fewer than 1024 characters.
        """
        self.assertRaises(InvalidRequest, check_user_key, "\u00e9" * 600)
        self.assertEqual(check_user_key("\u00e9" * 512), "\u00e9" * 512)

    def test_multibyte_character_straddling_the_limit(self) -> None:
        """
        A multi-byte character that would end at byte 1024 fits; one that
        would end past it does not, for 2-, 3- and 4-byte characters.
        """
        for char in ["\u00e9", "\u20ac", "\U0001f600"]:
            width = len(char.encode("utf-8"))
            fits = "a" * (1024 - width) + char
            self.assertEqual(len(fits.encode("utf-8")), 1024)
            self.assertEqual(check_user_key(fits), fits)
            over = "a" * (1025 - width) + char
            self.assertRaises(InvalidRequest, check_user_key, over)

    def test_slashes_and_spaces(self) -> None:
        """
        Keys may contain C{/}, spaces and other punctuation.
        """
        for key in ["a/b/c", "/", "a b", "?#%", "..", "a\x00b"]:
            self.assertEqual(check_user_key(key), key)

    def test_lone_surrogate_counted(self) -> None:
        """
        A key holding a lone surrogate (which cannot be strict UTF-8) is
        measured, not crashed on: three bytes per surrogate.
        """
        self.assertEqual(check_user_key("\ud800" * 341), "\ud800" * 341)
        self.assertRaises(InvalidRequest, check_user_key, "\ud800" * 342)

    @given(st.text(min_size=1))
    def test_accepts_exactly_short_keys(self, key: str) -> None:
        """
        Any non-empty key is accepted exactly when its UTF-8 form is at most
        1024 bytes.
        """
        size = len(key.encode("utf-8", "surrogatepass"))
        if size <= MAX_KEY_BYTES:
            self.assertEqual(check_user_key(key), key)
        else:
            self.assertRaises(InvalidRequest, check_user_key, key)


class NamespaceTests(SynchronousTestCase):
    """
    Store keys are a one-letter namespace tag followed by the name.
    """

    @given(st.text(min_size=1, max_size=256))
    def test_user_round_trip(self, key: str) -> None:
        """
        A client key's store key is in the user namespace and gives the key
        back.
        """
        store_key = user_key(key)
        self.assertEqual(namespace_of(store_key), USER)
        self.assertEqual(name_of(store_key), key)
        self.assertEqual(to_user(store_key), key)

    @given(st.text(max_size=300))
    def test_file_round_trip(self, name: str) -> None:
        """
        A file name's store key is in the file namespace and gives the name
        back.
        """
        store_key = file_key(name)
        self.assertEqual(namespace_of(store_key), FILES)
        self.assertEqual(name_of(store_key), name)

    @given(st.text(min_size=1, max_size=50), st.text(max_size=50))
    def test_namespaces_never_collide(self, key: str, name: str) -> None:
        """
        No client key and file name share a store key, and every user store
        key sorts with the same prefix (so a listing of C{USER} never shows
        a file).
        """
        self.assertNotEqual(user_key(key), file_key(name))
        self.assertTrue(user_key(key).startswith(USER))
        self.assertFalse(file_key(name).startswith(USER))

    def test_user_key_validates(self) -> None:
        """
        L{user_key} refuses what L{check_user_key} refuses.
        """
        self.assertRaises(InvalidRequest, user_key, "")
        self.assertRaises(InvalidRequest, user_key, "x" * 1025)

    def test_to_user_none(self) -> None:
        """
        L{to_user} passes C{None} (no next page) through.
        """
        self.assertIsNone(to_user(None))

    def test_tags_distinct(self) -> None:
        """
        The namespace tags are distinct single characters.
        """
        self.assertEqual(len(USER), 1)
        self.assertEqual(len(FILES), 1)
        self.assertNotEqual(USER, FILES)
        self.assertEqual(keyspace.namespace_of(""), "")
