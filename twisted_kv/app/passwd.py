# -*- test-case-name: tests.test_passwords -*-
"""
C{python -m twisted_kv.app.passwd}: read a password (twice on a terminal, or
once on standard input) and print its salted C{scrypt:} form, to paste into
the C{[ftp_users]} section of a cluster file.
"""

from __future__ import annotations

import getpass
import sys
from typing import Callable, TextIO

from twisted_kv.core.passwords import hash_password


def main(
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
    ask: Callable[[str], str] = getpass.getpass,
) -> int:
    """
    Read a password and print its C{scrypt:} form.

    @return: the exit status.
    """
    if stdin.isatty():
        password = ask("Password: ")
        if ask("Again: ") != password:
            print("The passwords differ.", file=stderr)
            return 1
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        print("The password is empty.", file=stderr)
        return 1
    print(hash_password(password), file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
