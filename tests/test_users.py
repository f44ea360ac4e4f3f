# -*- test-case-name: tests.test_users -*-
"""
Tests for L{twisted_kv.core.users}: the permission rules (with property
tests: no key outside a user's read prefixes is ever listed or watched),
tokens and the throttle of failed logins; and the C{[user:NAME]} sections
of L{twisted_kv.core.config}.
"""

from __future__ import annotations

import json
from typing import Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.strategies import key_sets, ordered_keys
from tests.test_ws import _Feed, _file_event_for, _file_change, _put
from twisted_kv.core.config import ConfigError, parse_config
from twisted_kv.core.passwords import hash_password
from twisted_kv.core.users import (
    EVERYTHING,
    Grant,
    LoginThrottle,
    User,
    issue_token,
    parse_files_root,
    parse_prefixes,
    require_admin,
    token_key,
    verify_token,
)
from twisted_kv.errors import BadToken, Forbidden, TooManyLogins
from twisted_kv.ws.server import WatchHub, WatchSession

prefix_lists = st.lists(ordered_keys, max_size=4).map(tuple)


def payload(frame: bytes) -> dict:
    """
    The JSON message of a server's unmasked text frame.
    """
    length = frame[1] & 0x7F
    start = {126: 4, 127: 10}.get(length, 2)
    return json.loads(frame[start:])


def grant(
    read: tuple[str, ...] = (), write: tuple[str, ...] = (), files: Optional[str] = None
) -> Grant:
    return Grant(name="alice", read=read, write=write, files=files)


class GrantTests(SynchronousTestCase):
    """
    What a L{Grant} allows.
    """

    def test_prefixes(self) -> None:
        """
        A key may be read (or written) when it starts with one of the read
        (or write) prefixes; the empty prefix is every key.
        """
        alice = grant(read=("users/", "public/"), write=("users/alice/",))
        self.assertTrue(alice.may_read("users/bob"))
        self.assertTrue(alice.may_read("public/"))
        self.assertFalse(alice.may_read("users"))
        self.assertFalse(alice.may_read("private/x"))
        self.assertTrue(alice.may_write("users/alice/x"))
        self.assertFalse(alice.may_write("users/bob"))
        self.assertTrue(EVERYTHING.may_read("anything"))
        self.assertTrue(EVERYTHING.may_write(""))

    def test_files(self) -> None:
        """
        A file area is its directory and everything under it; no area is no
        file at all; C{/} is the whole tree.
        """
        alice = grant(files="/alice/")
        self.assertTrue(alice.may_use_file("/alice"))
        self.assertTrue(alice.may_use_file("/alice/a/b.txt"))
        self.assertFalse(alice.may_use_file("/"))
        self.assertFalse(alice.may_use_file("/alicebob"))
        self.assertFalse(alice.may_use_file("/bob/x"))
        self.assertFalse(grant().may_use_file("/alice"))
        self.assertTrue(grant(files="/").may_use_file("/"))
        self.assertTrue(grant(files="/").may_use_file("/x/y"))

    def test_admin(self) -> None:
        """
        L{require_admin} refuses non-admins with a 403.
        """
        require_admin(Grant(name="root", admin=True))
        error = self.assertRaises(Forbidden, require_admin, grant())
        self.assertEqual(error.status, 403)

    def test_parse_prefixes(self) -> None:
        """
        Prefixes are comma-separated; C{*} is every key, nothing is none;
        an empty item is refused.
        """
        self.assertEqual(parse_prefixes(" users/ , public/,users/"), ("users/", "public/"))
        self.assertEqual(parse_prefixes("a/, *"), ("",))
        self.assertEqual(parse_prefixes(""), ())
        self.assertRaises(ValueError, parse_prefixes, "a/,,b/")

    def test_parse_files_root(self) -> None:
        """
        A files area is an absolute directory, normalised to end in C{/}.
        """
        self.assertEqual(parse_files_root("/alice"), "/alice/")
        self.assertEqual(parse_files_root("/a/b/"), "/a/b/")
        self.assertEqual(parse_files_root("*"), "/")
        self.assertIsNone(parse_files_root(" "))
        for bad in ["alice/", "/a/../b", "/a//b", "/./a"]:
            self.assertRaises(ValueError, parse_files_root, bad)

    @given(read=prefix_lists, prefix=ordered_keys, keys=key_sets)
    def test_listable(self, read: tuple[str, ...], prefix: str, keys: set[str]) -> None:
        """
        The prefixes a listing goes through are in key order, none a prefix
        of another, and name exactly the readable keys under the prefix
        listed.
        """
        prefixes = grant(read=read).listable(prefix)
        self.assertEqual(prefixes, sorted(prefixes))
        for i, first in enumerate(prefixes):
            for second in prefixes[i + 1:]:
                self.assertFalse(second.startswith(first))
        covered = {key for key in keys if any(key.startswith(p) for p in prefixes)}
        readable = {key for key in keys if key.startswith(prefix) and grant(read=read).may_read(key)}
        self.assertEqual(covered, readable)


class WatchFilterTests(SynchronousTestCase):
    """
    A watch session sends only what its grant may read.
    """

    @given(
        read=prefix_lists, watched=ordered_keys, keys=st.lists(ordered_keys.filter(bool), max_size=20)
    )
    def test_keys(self, read: tuple[str, ...], watched: str, keys: list[str]) -> None:
        """
        Live and replayed key events reach a session for exactly the
        readable keys under its watch.
        """
        feed = _Feed()
        hub = WatchHub(feed, file_event_for=_file_event_for)
        hub.start()
        half = len(keys) // 2
        for revision, key in enumerate(keys[:half], start=1):
            feed.emit(_put(key, seq=revision), revision)
        frames: list[dict] = []
        alice = grant(read=read)
        session = WatchSession(hub, lambda frame: frames.append(payload(frame)), 10, alice)
        session.received(json.dumps({"op": "watch", "prefix": watched, "since": 0}).encode(), False)
        for revision, key in enumerate(keys[half:], start=half + 1):
            feed.emit(_put(key, seq=revision), revision)
        hub.remove(session)
        hub.stop()
        sent = [frame["key"] for frame in frames if frame["type"] == "put"]
        expected = [key for key in keys if key.startswith(watched) and alice.may_read(key)]
        self.assertEqual(sent, expected)

    def test_files(self) -> None:
        """
        File events reach a session only inside its files area; a rename
        across its edge is not sent.
        """
        feed = _Feed()
        hub = WatchHub(feed, file_event_for=_file_event_for)
        hub.start()
        self.addCleanup(hub.stop)
        frames: list[dict] = []
        session = WatchSession(hub, lambda frame: frames.append(payload(frame)), 10, grant(files="/a/"))
        session.received(b'{"op": "watch_files", "path": ""}', False)
        for revision, name in enumerate(["m/a/x", "m/b/y", "m/b/z>/a/z", "m/a"], start=1):
            feed.emit(_file_change(name, seq=revision), revision)
        hub.remove(session)
        self.assertEqual([f["path"] for f in frames if f["type"] == "file"], ["/a/x", "/a"])


def user(name: str = "alice", password: str = "plain:wonderland") -> User:
    return User(name=name, password=password, grant=grant())


class TokenTests(SynchronousTestCase):
    """
    Signed tokens.
    """

    key = token_key(b"cluster secret")

    def test_round_trip(self) -> None:
        """
        A token names its user until it expires.
        """
        token = issue_token(self.key, user(), 1000)
        self.assertEqual(verify_token(self.key, token, {"alice": user()}, 999.9), user())

    def test_expired(self) -> None:
        """
        From its expiry on, a token is refused.
        """
        token = issue_token(self.key, user(), 1000)
        error = self.assertRaises(BadToken, verify_token, self.key, token, {"alice": user()}, 1000)
        self.assertIn("expired", error.message)

    def test_tampered(self) -> None:
        """
        A token whose claims or MAC were changed is refused, as is one
        naming another user with the same MAC.
        """
        token = issue_token(self.key, user(), 1000)
        payload, mac = token.split(".")
        users = {"alice": user(), "mallory": user("mallory")}
        forged = issue_token(self.key, user(), 10**9).split(".")[0]
        other = issue_token(self.key, user("mallory"), 1000).split(".")[0]
        for bad in [
            f"{forged}.{mac}",
            f"{other}.{mac}",
            f"{payload}.{mac[:-2]}AA",
            payload,
            "",
            "not.a-token",
            "e30.x",
        ]:
            self.assertRaises(BadToken, verify_token, self.key, bad, users, 0)

    def test_other_cluster(self) -> None:
        """
        A token signed under another cluster's secret is refused.
        """
        token = issue_token(token_key(b"another secret"), user(), 1000)
        self.assertRaises(BadToken, verify_token, self.key, token, {"alice": user()}, 0)

    def test_revoked(self) -> None:
        """
        A token dies with its user and with the password it was issued
        under.
        """
        token = issue_token(self.key, user(), 1000)
        self.assertRaises(BadToken, verify_token, self.key, token, {}, 0)
        changed = {"alice": user(password=hash_password("wonderland", salt=bytes(16)))}
        self.assertRaises(BadToken, verify_token, self.key, token, changed, 0)

    def test_key_is_not_the_secret(self) -> None:
        """
        The token key is derived from the secret, not the secret itself.
        """
        self.assertNotEqual(token_key(b"s"), b"s")
        self.assertEqual(len(token_key(b"s")), 32)


class ThrottleTests(SynchronousTestCase):
    """
    L{LoginThrottle}.
    """

    def test_doubling(self) -> None:
        """
        After the free failures each further one blocks the address twice
        as long, up to the maximum; other addresses are not affected.
        """
        throttle = LoginThrottle(free=2, delay=1.0, max_delay=5.0)
        blocked = []
        for now in [0, 1, 2, 5, 10, 20]:
            throttle.check("10.0.0.1", now)
            throttle.failed("10.0.0.1", now)
            blocked.append(throttle.retry_after("10.0.0.1", now))
        self.assertEqual(blocked, [0, 0, 1, 2, 4, 5])
        error = self.assertRaises(TooManyLogins, throttle.check, "10.0.0.1", 24)
        self.assertEqual((error.status, error.retry_after), (429, 1))
        throttle.check("10.0.0.2", 24)

    def test_success_and_forgetting(self) -> None:
        """
        A success clears the count; so do C{forget_after} quiet seconds.
        """
        throttle = LoginThrottle(free=1, forget_after=100)
        throttle.failed("a", 0)
        throttle.failed("a", 0)
        self.assertEqual(throttle.retry_after("a", 0), 1)
        throttle.succeeded("a")
        throttle.failed("a", 1)
        self.assertEqual(throttle.retry_after("a", 1), 0)
        throttle.failed("a", 200)
        self.assertEqual(throttle.retry_after("a", 200), 0)

    def test_bounded(self) -> None:
        """
        At most C{max_addresses} addresses are remembered, the stalest
        forgotten first.
        """
        throttle = LoginThrottle(free=0, max_addresses=2)
        for address in ["a", "b", "c"]:
            throttle.failed(address, 0)
        self.assertEqual([throttle.retry_after(a, 0) for a in "abc"], [0, 1, 1])


_NODE = "[node:n1]\nhost = 127.0.0.1\nhttp_port = 7001\npeer_port = 7101\nftp_port = 7201\n"
_BASE = "[cluster]\nsecret = s\n" + _NODE


class ConfigTests(SynchronousTestCase):
    """
    C{[user:NAME]} sections of the cluster file.
    """

    def test_users(self) -> None:
        """
        Each section becomes a L{User} with its grant; only the password is
        required, and the others default to nothing.
        """
        config = parse_config(
            _BASE
            + "[user:alice]\npassword = plain:w\nread = users/, public/\nwrite = users/alice/\n"
            "files = /alice\nadmin = yes\n[user:bob]\npassword = plain:b\n",
            "x.ini",
        )
        self.assertEqual(
            config.users["alice"].grant,
            Grant("alice", ("users/", "public/"), ("users/alice/",), "/alice/", True),
        )
        self.assertEqual(config.users["bob"].grant, Grant("bob"))
        self.assertEqual(config.users["bob"].password, "plain:b")
        self.assertNotIn("plain:b", repr(config.users["bob"]))
        self.assertEqual(parse_config(_BASE, "x.ini").users, {})

    def test_errors(self) -> None:
        """
        Bad sections are one-line errors naming the section and the key.
        """
        for section, message in [
            ("[user:a]\nread = *\n", "[user:a] password: missing key"),
            ("[user:a]\npassword = md5:x\n", "[user:a] password: a password must start"),
            ("[user:a]\npassword = plain:x\nreads = *\n", "[user:a] reads: unknown key"),
            ("[user:a]\npassword = plain:x\nwrite = a,,b\n", "[user:a] write: an empty prefix"),
            ("[user:a]\npassword = plain:x\nfiles = a/\n", "[user:a] files: 'a/' is not an absolute"),
            ("[user:a]\npassword = plain:x\nadmin = maybe\n", "[user:a] admin: not a boolean"),
            ("[user:a b]\npassword = plain:x\n", "[user:a b]: bad user name"),
            (
                "[ftp_users]\na = plain:y\n[user:a]\npassword = plain:x\n",
                "[user:a]: the user is also in [ftp_users]",
            ),

        ]:
            error = self.assertRaises(ConfigError, parse_config, _BASE + section, "x.ini")
            self.assertTrue(str(error).startswith("x.ini: " + message), str(error))

    def test_no_anonymous_ftp(self) -> None:
        """
        Anonymous FTP cannot be on with users: every login needs
        credentials then.
        """
        text = _BASE.replace("secret = s", "secret = s\nanonymous_ftp = yes")
        parse_config(text, "x.ini")
        error = self.assertRaises(
            ConfigError, parse_config, text + "[user:a]\npassword = plain:x\n", "x.ini"
        )
        self.assertTrue(str(error).startswith("x.ini: [cluster] anonymous_ftp: must be off"))
