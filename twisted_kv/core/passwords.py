# -*- test-case-name: tests.test_passwords -*-
"""
Stored passwords (the values of the C{[ftp_users]} section): their forms,
their check at configuration time, and checking a password against one.

Two forms are accepted::

    plain:<password>                              the password itself
    scrypt:<n>:<r>:<p>:<salt>:<key>               scrypt, base64 salt and key

L{twisted_kv.app.passwd} prints the C{scrypt:} line for a password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Optional

PLAIN = "plain"
SCRYPT = "scrypt"

# scrypt cost: 2**14 rounds of 8 blocks take some tens of milliseconds and
# 16 MiB of memory per check.
_N = 2**14
_R = 8
_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
_MAX_MEMORY = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    if not hasattr(hashlib, "scrypt"):
        # PyPy's hashlib has no scrypt; cryptography's gives the same bytes.
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

        return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(password.encode("utf-8"))
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY, dklen=length
    )


def hash_password(password: str, salt: Optional[bytes] = None) -> str:
    """
    The C{scrypt:} form of C{password}, with a random salt unless one is
    given.
    """
    if salt is None:
        salt = os.urandom(_SALT_BYTES)
    key = _scrypt(password, salt, _N, _R, _P, _KEY_BYTES)
    return f"{SCRYPT}:{_N}:{_R}:{_P}:{_b64(salt)}:{_b64(key)}"


def check_stored(stored: str) -> None:
    """
    Validate a stored password.

    @raise ValueError: C{stored} is in neither accepted form.
    """
    scheme, _, rest = stored.partition(":")
    if scheme == PLAIN:
        return
    if scheme != SCRYPT:
        raise ValueError("a password must start with 'plain:' or 'scrypt:'")
    parts = rest.split(":")
    if len(parts) != 5:
        raise ValueError("a scrypt password is scrypt:<n>:<r>:<p>:<salt>:<key>")
    try:
        n, r, p = (int(part) for part in parts[:3])
        base64.b64decode(parts[3], validate=True)
        key = base64.b64decode(parts[4], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("malformed scrypt password") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or not key or 128 * r * n > _MAX_MEMORY:
        raise ValueError("unusable scrypt parameters")


def verify_password(stored: str, candidate: str) -> bool:
    """
    Whether C{candidate} is the password C{stored} describes, compared in
    constant time.

    @raise ValueError: C{stored} is malformed (see L{check_stored}).
    """
    check_stored(stored)
    scheme, _, rest = stored.partition(":")
    if scheme == PLAIN:
        return hmac.compare_digest(rest.encode("utf-8"), candidate.encode("utf-8"))
    n, r, p, salt, key = rest.split(":")
    expected = base64.b64decode(key)
    actual = _scrypt(candidate, base64.b64decode(salt), int(n), int(r), int(p), len(expected))
    return hmac.compare_digest(actual, expected)
