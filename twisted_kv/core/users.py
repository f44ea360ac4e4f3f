# -*- test-case-name: tests.test_users -*-
"""
Users and what they may do: the C{[user:NAME]} sections of the cluster file
(CONTRACT.md section 9), the signed tokens every node accepts, and the
slowing down of repeated failed logins.

    [user:alice]
    password = plain:wonderland    ; or a salted hash (see core.passwords)
    read = users/, public/         ; key prefixes she may read ("*" = all)
    write = users/alice/           ; key prefixes she may change
    files = /alice/                ; her FTP root and /files/ area ("*" = all)
    admin = no                     ; may change the membership

A L{Grant} is what one authenticated client may do; every front end asks
it, and nothing else, whether a key or a file may be read or changed.
Without any C{[user:...]} section every client gets L{EVERYTHING}.

Tokens (C{POST /auth/token}) are C{PAYLOAD.MAC}: the payload names the user
and the second the token expires at, the MAC is an HMAC-SHA256 under a key
derived from the cluster secret (so every node accepts every node's tokens)
over the payload and the user's stored password (so changing a password
revokes the tokens issued under the old one).

This module is pure: time is passed in as C{now}.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Mapping, Optional

from attrs import define, field, frozen

from twisted_kv.errors import BadToken, Forbidden, TooManyLogins

__all__ = [
    "EVERYTHING",
    "Grant",
    "LoginThrottle",
    "User",
    "grant_of",
    "issue_token",
    "parse_files_root",
    "parse_prefixes",
    "require_admin",
    "token_expiry",
    "token_key",
    "verify_token",
]

ALL = "*"


def _within(path: str, root: str) -> bool:
    """
    Whether absolute file path C{path} is C{root} (a directory ending in
    C{/}) or inside it.
    """
    return path.startswith(root) or path + "/" == root


@frozen
class Grant:
    """
    What one authenticated client may do.

    @ivar name: the user, or C{None} when the cluster has no users.
    @ivar read: key prefixes the user may read; C{""} matches every key.
    @ivar write: key prefixes the user may create, replace or delete.
    @ivar files: the root of the user's file area, an absolute path ending
        in C{/} (C{"/"}: the whole tree), or C{None}: no files at all.
    @ivar admin: whether the user may change the cluster's membership and
        take or restore backups.
    """

    name: Optional[str]
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    files: Optional[str] = None
    admin: bool = False

    def may_read(self, key: str) -> bool:
        """
        Whether client key C{key} may be read (and listed, and watched).
        """
        return any(key.startswith(prefix) for prefix in self.read)

    def may_write(self, key: str) -> bool:
        """
        Whether client key C{key} may be created, replaced or deleted.
        """
        return any(key.startswith(prefix) for prefix in self.write)

    def may_use_file(self, path: str) -> bool:
        """
        Whether the file or directory at absolute path C{path} (C{/a/b})
        is inside the user's file area.
        """
        return self.files is not None and _within(path, self.files)

    def listable(self, prefix: str) -> list[str]:
        """
        The prefixes to list for a listing of C{prefix}: in key order, none
        a prefix of another, together naming exactly the keys starting
        with C{prefix} that the user may read.  Listing them one after the
        other gives a listing whose every key, C{next} included, is
        readable.
        """
        within = []
        for allowed in sorted(self.read):
            if within and allowed.startswith(within[-1]):
                continue
            if prefix.startswith(allowed):
                return [prefix]
            if allowed.startswith(prefix):
                within.append(allowed)
        return within


#: What every client may do when the cluster has no users.
EVERYTHING = Grant(name=None, read=("",), write=("",), files="/", admin=True)


def grant_of(request: object) -> Grant:
    """
    What the client of a front end's C{request} may do: the C{grant} a
    guard gave it, else L{EVERYTHING} (a cluster without users).
    """
    return getattr(request, "grant", EVERYTHING)


def require_admin(grant: Grant) -> None:
    """
    Refuse a change of the cluster itself (membership, restore) to a
    non-admin user.

    @raise Forbidden: C{grant} is not an admin's.
    """
    if not grant.admin:
        raise Forbidden(f"user {grant.name!r} is not an admin")


@frozen
class User:
    """
    One C{[user:NAME]} section.

    @ivar password: the stored password (C{plain:...} or C{scrypt:...}).
    """

    name: str
    password: str = field(repr=False)
    grant: Grant


def parse_prefixes(text: str) -> tuple[str, ...]:
    """
    Parse C{read}/C{write}: comma-separated key prefixes, C{*} for all,
    empty for none.

    @raise ValueError: an empty prefix between commas.
    """
    items = [item.strip() for item in text.split(",")] if text.strip() else []
    if any(not item for item in items):
        raise ValueError("an empty prefix between commas (use * for every key)")
    if ALL in items:
        return ("",)
    return tuple(dict.fromkeys(items))


def parse_files_root(text: str) -> Optional[str]:
    """
    Parse C{files}: an absolute directory path (C{/alice/}), C{*} for the
    whole tree, empty for no files.

    @return: the path ending in C{/}, or C{None}.
    @raise ValueError: not an absolute path, or one with C{.}, C{..} or
        empty segments.
    """
    text = text.strip()
    if not text:
        return None
    if text in (ALL, "/"):
        return "/"
    if not text.startswith("/"):
        raise ValueError(f"{text!r} is not an absolute path (try /{text.lstrip('/')})")
    segments = text.strip("/").split("/")
    if any(segment in ("", ".", "..") or "\\" in segment for segment in segments):
        raise ValueError(f"{text!r} is not a plain directory path")
    return "/" + "/".join(segments) + "/"


# --------------------------------------------------------------------------
# Tokens


def token_key(secret: bytes) -> bytes:
    """
    The key tokens are signed with, derived from the cluster secret (and
    never equal to it, which the peers' handshake uses).
    """
    return hmac.digest(secret, b"twisted_kv user tokens v1", "sha256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str, user: User) -> str:
    message = payload.encode("ascii") + b"\0" + user.password.encode("utf-8")
    return _b64(hmac.digest(key, message, "sha256"))


def issue_token(key: bytes, user: User, expires: int) -> str:
    """
    A token for C{user}, valid until second C{expires} (POSIX time).
    """
    claims = json.dumps({"u": user.name, "e": expires}, separators=(",", ":"))
    payload = _b64(claims.encode("utf-8"))
    return f"{payload}.{_mac(key, payload, user)}"


def token_expiry(token: str) -> int:
    """
    The expiry a token verified by L{verify_token} claims.
    """
    return int(json.loads(_unb64(token.partition(".")[0]))["e"])


def verify_token(key: bytes, token: str, users: Mapping[str, User], now: float) -> User:
    """
    The user C{token} was issued to.

    @raise BadToken: the token is malformed, its MAC is wrong (another
        cluster's, tampered with, or issued before the user's password
        changed), it has expired, or its user is gone.
    """
    payload, dot, mac = token.partition(".")
    try:
        claims = json.loads(_unb64(payload))
        name, expires = claims["u"], claims["e"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise BadToken("malformed token") from None
    user = users.get(name) if isinstance(name, str) else None
    if user is None or not dot or not isinstance(expires, int):
        raise BadToken("invalid token")
    if not hmac.compare_digest(_mac(key, payload, user).encode(), mac.encode("ascii", "replace")):
        raise BadToken("invalid token")
    if now >= expires:
        raise BadToken("the token has expired: ask for a new one")
    return user


# --------------------------------------------------------------------------
# Failed logins


@define
class _Failures:
    count: int
    last: float
    blocked_until: float


@define
class LoginThrottle:
    """
    Slows down password guessing: after C{free} failed logins from one
    address, each further failure blocks the address for twice as long as
    the one before (C{delay}, 2 C{delay}, ... up to C{max_delay} seconds).
    A success, or C{forget_after} seconds without failures, clears the
    count.  At most C{max_addresses} addresses are remembered, the oldest
    failures forgotten first.
    """

    free: int = 5
    delay: float = 1.0
    max_delay: float = 60.0
    forget_after: float = 600.0
    max_addresses: int = 100_000
    _failures: dict[str, _Failures] = field(factory=dict, init=False)

    def retry_after(self, address: str, now: float) -> float:
        """
        Seconds C{address} must wait before its next login attempt is
        looked at (0: now).
        """
        failures = self._failures.get(address)
        if failures is None:
            return 0.0
        return max(0.0, failures.blocked_until - now)

    def check(self, address: str, now: float) -> None:
        """
        @raise TooManyLogins: C{address} is blocked.
        """
        wait = self.retry_after(address, now)
        if wait > 0:
            raise TooManyLogins(
                "too many failed logins from this address", retry_after=wait
            )

    def failed(self, address: str, now: float) -> None:
        """
        Count one failed login from C{address} at C{now}.
        """
        failures = self._failures.pop(address, None)
        if failures is None or now - failures.last > self.forget_after:
            failures = _Failures(0, now, now)
        failures.count += 1
        failures.last = now
        over = failures.count - self.free
        if over > 0:
            failures.blocked_until = now + min(self.max_delay, self.delay * 2 ** min(over - 1, 32))
        # Insertion order is the order of the latest failures.
        self._failures[address] = failures
        while len(self._failures) > self.max_addresses:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, address: str) -> None:
        """
        A login from C{address} succeeded: forget its failures.
        """
        self._failures.pop(address, None)
