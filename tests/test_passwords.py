# -*- test-case-name: tests.test_passwords -*-
"""
Tests for L{twisted_kv.core.passwords}.
"""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.app.passwd import main
from twisted_kv.core.passwords import check_stored, hash_password, verify_password


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class PasswordTests(SynchronousTestCase):
    """
    Stored passwords in both forms.
    """

    def test_plain(self) -> None:
        """
        C{plain:} stores the password itself.
        """
        self.assertTrue(verify_password("plain:wonderland", "wonderland"))
        self.assertFalse(verify_password("plain:wonderland", "Wonderland"))
        self.assertTrue(verify_password("plain:", ""))
        self.assertTrue(verify_password("plain:a:b", "a:b"))

    def test_scrypt(self) -> None:
        """
        C{scrypt:} hashes are salted: the same password hashes differently
        each time, and each hash accepts only its password.
        """
        first, second = hash_password("s3cret"), hash_password("s3cret")
        self.assertNotEqual(first, second)
        self.assertTrue(first.startswith("scrypt:16384:8:1:"))
        for stored in (first, second):
            self.assertTrue(verify_password(stored, "s3cret"))
            self.assertFalse(verify_password(stored, "s3cret "))

    def test_fixed_salt(self) -> None:
        """
        A given salt gives a reproducible hash.
        """
        self.assertEqual(hash_password("x", bytes(16)), hash_password("x", bytes(16)))

    def test_malformed(self) -> None:
        """
        Anything else is refused with a message saying what is expected.
        """
        for stored in [
            "wonderland",
            "md5:abc",
            "scrypt:abc",
            "scrypt:16384:8:1:!!:AAAA",
            "scrypt:1000:8:1:AAAA:AAAA",
            "scrypt:16384:8:1:AAAA:",
            "scrypt:1048576:64:1:AAAA:AAAA",
        ]:
            self.assertRaises(ValueError, check_stored, stored)
            self.assertRaises(ValueError, verify_password, stored, "x")

    def test_command_from_stdin(self) -> None:
        """
        The command reads one line from a pipe and prints its hash.
        """
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(io.StringIO("hunter2\n"), out, err), 0)
        self.assertTrue(verify_password(out.getvalue().strip(), "hunter2"))
        self.assertEqual(err.getvalue(), "")

    def test_command_on_terminal(self) -> None:
        """
        On a terminal the password is asked twice and must match.
        """
        out, err = io.StringIO(), io.StringIO()
        answers = iter(["pw", "pw"])
        self.assertEqual(main(_Terminal(), out, err, lambda prompt: next(answers)), 0)
        self.assertTrue(verify_password(out.getvalue().strip(), "pw"))
        answers = iter(["pw", "other"])
        self.assertEqual(main(_Terminal(), io.StringIO(), err, lambda prompt: next(answers)), 1)
        self.assertIn("differ", err.getvalue())

    def test_command_empty(self) -> None:
        """
        An empty password is refused.
        """
        err = io.StringIO()
        self.assertEqual(main(io.StringIO("\n"), io.StringIO(), err), 1)
        self.assertIn("empty", err.getvalue())
