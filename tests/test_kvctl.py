# -*- test-case-name: tests.test_kvctl -*-
"""
Tests for L{twisted_kv.app.kvctl}, run in a thread against a node listening on a
loopback port.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any, Iterator

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.polling import poll
from tests.test_client_support import serve
from twisted_kv.app.kvctl import main
from twisted_kv.core import keyspace
from twisted_kv.core.passwords import verify_password


class KvctlTests(TestCase):
    """
    The commands, their output and their exit status.
    """

    def setUp(self) -> None:
        self.node = serve(self)

    @inlineCallbacks
    def kvctl(self, *argv: str, stdin: bytes = b"", env: Any = None) -> Any:
        """
        Run C{kvctl} with C{argv}: fires with (status, stdout, stderr).
        """
        stdout = io.BytesIO()
        stderr = io.StringIO()
        environ = {"KVCTL_NODE": self.node.url} if env is None else env
        status = yield deferToThread(
            main, list(argv), stdin=io.BytesIO(stdin), stdout=stdout, stderr=stderr, environ=environ
        )
        return status, stdout.getvalue(), stderr.getvalue()

    @inlineCallbacks
    def test_put_get_delete(self) -> Any:
        """
        C{put} prints the version, C{get} the value as stored, C{delete}
        nothing.
        """
        status, out, err = yield self.kvctl("put", "users/é", "hello")
        self.assertEqual((status, err), (0, ""))
        version = out.decode().strip()
        self.assertEqual((yield self.kvctl("get", "users/é")), (0, b"hello", ""))
        stored = yield self.node.kv.get(keyspace.user_key("users/é"))
        self.assertEqual(stored.record.content_type, "text/plain; charset=utf-8")
        self.assertEqual((yield self.kvctl("delete", "users/é", "--if-match", version)), (0, b"", ""))
        status, _, err = yield self.kvctl("get", "users/é")
        self.assertEqual((status, err), (1, "kvctl: no key 'users/é' (404)\n"))

    @inlineCallbacks
    def test_put_stdin(self) -> Any:
        """
        C{put KEY -} stores standard input, bytes as they are.
        """
        status, _, _ = yield self.kvctl("put", "bin", "-", "--content-type", "x/y", stdin=b"\x00\xff")
        self.assertEqual(status, 0)
        stored = yield self.node.kv.get(keyspace.user_key("bin"))
        self.assertEqual((stored.record.value, stored.record.content_type), (b"\x00\xff", "x/y"))
        self.assertEqual((yield self.kvctl("get", "bin")), (0, b"\x00\xff", ""))

    @inlineCallbacks
    def test_conditions(self) -> Any:
        """
        A failed condition exits with 1 and says why.
        """
        yield self.kvctl("put", "k", "1")
        status, _, err = yield self.kvctl("put", "k", "2", "--if-match", "9.9")
        self.assertEqual(status, 1)
        self.assertTrue(err.startswith("kvctl: ") and err.endswith(" (412)\n"), err)
        status, _, err = yield self.kvctl("put", "k", "2", "--if-none-match")
        self.assertEqual((status, err[-7:]), (1, " (412)\n"))

    @inlineCallbacks
    def test_ttl(self) -> Any:
        """
        C{--ttl} is passed on: the key expires.
        """
        yield self.kvctl("put", "k", "1", "--ttl", "5")
        self.node.kv_clock.advance(5)
        status, _, _ = yield self.kvctl("get", "k")
        self.assertEqual(status, 1)

    @inlineCallbacks
    def test_list(self) -> Any:
        """
        C{list} prints the keys under a prefix in order, across pages, up to
        C{--limit}.
        """
        for name in ["a/2", "a/1", "a/3", "b"]:
            yield self.node.kv.put(keyspace.user_key(name), b"")
        self.assertEqual((yield self.kvctl("list", "--prefix", "a/")), (0, b"a/1\na/2\na/3\n", ""))
        self.assertEqual((yield self.kvctl("list", "--limit", "2")), (0, b"a/1\na/2\n", ""))
        status, _, err = yield self.kvctl("list", "--limit", "0")
        self.assertEqual(status, 2)
        self.assertIn("0 is not a positive integer", err)

    @inlineCallbacks
    def test_watch(self) -> Any:
        """
        C{watch} prints one JSON line per change under the prefix, here
        replayed from C{--since}, and exits after C{--count}.
        """
        for name in ["users/a", "other", "users/b", "users/c"]:
            yield self.node.kv.put(keyspace.user_key(name), name.encode())
        status, out, err = yield self.kvctl("watch", "users/", "--since", "0", "--count", "2")
        self.assertEqual((status, err), (0, ""))
        events = [json.loads(line) for line in out.decode().splitlines()]
        self.assertEqual(
            [(e["type"], e["key"], e["value"], e["revision"]) for e in events],
            [("put", "users/a", "users/a", 1), ("put", "users/b", "users/b", 3)],
        )

    @inlineCallbacks
    def test_watch_moves_to_another_node(self) -> Any:
        """
        When the node watched through goes away, C{watch} says so at once,
        moves to another node of the cluster (from C{/cluster}), says when it
        watches again, and resumes after the last change it printed: the
        change made meanwhile is printed, none twice.
        """
        other = serve(self, kv=self.node.kv)
        self.node.cluster = {
            **self.node.cluster,
            "nodes": [
                {"id": "n1", "state": "alive", "http": self.node.url},
                {"id": "n2", "state": "alive", "http": other.url},
            ],
        }
        yield self.node.kv.put(keyspace.user_key("k1"), b"1")
        stdout, stderr = _Stream(), io.StringIO()
        watching = deferToThread(
            main,
            ["watch", "k", "--since", "0", "--count", "2"],
            stdout=stdout,
            stderr=stderr,
            environ={"KVCTL_NODE": self.node.url},
        )
        yield stdout.printed(1)
        yield self.node.stop()
        yield self.node.kv.put(keyspace.user_key("k2"), b"2")
        self.assertEqual((yield watching), 0)
        events = [json.loads(line) for line in stdout.getvalue().decode().splitlines()]
        self.assertEqual([(e["key"], e["revision"]) for e in events], [("k1", 1), ("k2", 2)])
        self.assertEqual(
            stderr.getvalue(),
            "kvctl: lost n1 (closed 1001: the node is stopping); trying n2...\n"
            "kvctl: watching again through n2 after revision 1\n",
        )

    @inlineCallbacks
    def test_cluster(self) -> Any:
        """
        C{cluster} prints the cluster's state as JSON.
        """
        status, out, _ = yield self.kvctl("cluster")
        self.assertEqual((status, json.loads(out)["leader"]), (0, "n2"))

    @inlineCallbacks
    def test_member(self) -> Any:
        """
        C{member add} and C{member remove} print the membership they leave,
        C{member list} the membership and the change in progress; a refused
        change exits 1 with the node's reason.
        """
        status, out, err = yield self.kvctl(
            "member", "add", "n4", "--host", "10.0.0.4", "--http-port", "7001",
            "--peer-port", "7101", "--ftp-port", "7201",
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out.decode().splitlines()[-2:],
            [
                "n4 10.0.0.4 http=7001 peer=7101 ftp=7201 joining primaries=0",
                "in progress: adding n4, 0 partitions moving",
            ],
        )
        status, out, err = yield self.kvctl("member", "remove", "n1")
        self.assertEqual(status, 1)
        self.assertIn("in progress (adding n4)", err)
        self.assertIn("(409)", err)
        status, out, _ = yield self.kvctl("member", "list")
        self.assertEqual(
            out.decode().splitlines()[0], "n1 127.0.0.1 http=17001 peer=17101 ftp=17201 member primaries=4"
        )
        status, _, err = yield self.kvctl("member", "add", "n5", "--host", "h", "--http-port", "x")
        self.assertEqual(status, 2)

    @inlineCallbacks
    def test_node_option(self) -> Any:
        """
        C{--node} names the node; without it and C{$KVCTL_NODE}, the default
        is C{http://127.0.0.1:7001}.
        """
        status, out, _ = yield self.kvctl("--node", self.node.url, "cluster", env={})
        self.assertEqual(status, 0)
        yield self.node.stop()
        status, _, err = yield self.kvctl("get", "k")
        self.assertEqual(status, 3)
        self.assertTrue(err.startswith(f"kvctl: cannot reach {self.node.url}: "), err)
        self.assertEqual(err.count("\n"), 1)

    @inlineCallbacks
    def test_usage(self) -> Any:
        """
        A usage error exits with 2; an empty key is refused by the client.
        """
        status, _, err = yield self.kvctl("frobnicate")
        self.assertEqual(status, 2)
        self.assertIn("invalid choice: 'frobnicate'", err)
        status, _, err = yield self.kvctl("get", "")
        self.assertEqual((status, err), (1, "kvctl: the key is empty (400)\n"))
        status, _, err = yield self.kvctl("--node", "localhost:7001", "get", "k")
        self.assertEqual((status, err), (2, "kvctl: not an http:// or https:// URL: 'localhost:7001'\n"))


class _Frames:
    """
    A stand-in for L{Client}: C{/cluster} names two nodes, and C{watch}
    yields scripted items, either frames or C{(callback name, args)}.
    """

    def __init__(self, script: list) -> None:
        self._script = script
        self.watched: dict = {}

    def __enter__(self) -> _Frames:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass

    def cluster(self) -> dict:
        return {"nodes": [{"id": "n1", "http": "http://h:1/"}, {"id": "n2", "http": "http://h:2"}]}

    @contextlib.contextmanager
    def watch(self, prefix: str, **options: Any) -> Iterator[Iterator[dict]]:
        self.watched = {"prefix": prefix, **options}
        yield self._frames(options)

    def _frames(self, options: dict) -> Iterator[dict]:
        for item in self._script:
            if isinstance(item, dict):
                yield item
            else:
                name, args = item
                options[name](*args)


class WatchOutputTests(SynchronousTestCase):
    """
    What C{kvctl watch} prints around lost connections, with the client
    scripted.
    """

    def watch(self, script: list, *argv: str) -> tuple[_Frames, list[dict], str]:
        client = _Frames(script)
        stdout, stderr = io.BytesIO(), io.StringIO()
        status = main(
            ["watch", *argv],
            stdout=stdout,
            stderr=stderr,
            environ={},
            client_factory=lambda url, **options: client,
        )
        self.assertEqual(status, 0)
        return client, [json.loads(line) for line in stdout.getvalue().splitlines()], stderr.getvalue()

    def test_nodes_from_cluster(self) -> None:
        """
        The other nodes come from C{/cluster}.
        """
        client, _, _ = self.watch([], "p/")
        self.assertEqual(client.watched["others"], ["http://h:1", "http://h:2"])

    def test_one_compacted_notice_per_gap(self) -> None:
        """
        C{compacted} frames with no change between them are one gap: only
        the first is printed.  Connection news goes to stderr, naming the
        nodes, once a connection was lost ("lost") or could not be made
        ("cannot reach").
        """
        put = {"type": "put", "key": "k", "revision": 5}
        script = [
            ("on_watching", ("http://h:1",)),
            put,
            ("on_lost", ("http://h:1/", "connection lost", "http://h:2")),
            ("on_lost", ("http://h:2", "connection refused", "http://h:1")),
            ("on_watching", ("http://h:1",)),
            {"type": "compacted", "revision": 0},
            {"type": "compacted", "revision": 9},
            {**put, "revision": 10},
            {"type": "compacted", "revision": 12},
        ]
        _, printed, err = self.watch(script)
        self.assertEqual(
            [(f["type"], f["revision"]) for f in printed],
            [("put", 5), ("compacted", 0), ("put", 10), ("compacted", 12)],
        )
        self.assertEqual(
            err,
            "kvctl: lost n1 (connection lost); trying n2...\n"
            "kvctl: cannot reach n2 (connection refused); trying n1...\n"
            "kvctl: watching again through n1 after revision 5\n",
        )


class _Stream(io.BytesIO):
    """
    A standard output whose lines the test can wait for.
    """

    def printed(self, lines: int) -> Deferred[None]:
        """
        Fires once C{lines} lines have been written.
        """
        return Deferred.fromCoroutine(
            poll(
                lambda: self.getvalue().count(b"\n") >= lines,
                10,
                f"{lines} lines on standard output",
                interval=0.01,
            )
        ).addCallback(lambda _: None)



class _Recorded:
    """
    A client that records how it was made and answers C{get} with C{b"v"},
    and C{token}.
    """

    made: list[tuple[str, dict]] = []

    def __init__(self, url: str, **options: Any) -> None:
        self.options = options
        self.made.append((url, options))

    def __enter__(self) -> _Recorded:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def get(self, key: str) -> Any:
        return type("Value", (), {"data": b"v"})()

    def token(self) -> dict:
        return {"token": "t0k3n", "expires": 99}


class CACertificateTests(SynchronousTestCase):
    """
    C{--cacert} and C{$KVCTL_CACERT} name the CA the client trusts.
    """

    def run_kvctl(self, argv: list[str], environ: dict[str, str]) -> tuple[int, str]:
        _Recorded.made = []
        stderr = io.StringIO()
        status = main(
            argv, stdout=io.BytesIO(), stderr=stderr, environ=environ, client_factory=_Recorded
        )
        return status, stderr.getvalue()

    def test_option_and_environment(self) -> None:
        """
        The option wins over the environment, which wins over nothing (the
        system's CAs: C{None}).
        """
        url = "https://kv.example:7001"
        self.run_kvctl(["--node", url, "--cacert", "a.pem", "get", "k"], {"KVCTL_CACERT": "b.pem"})
        self.assertEqual(_Recorded.made, [(url, {"timeout": 10.0, "cacert": "a.pem"})])
        self.run_kvctl(["--node", url, "get", "k"], {"KVCTL_CACERT": "b.pem"})
        self.assertEqual(_Recorded.made[0][1]["cacert"], "b.pem")
        self.run_kvctl(["--node", url, "get", "k"], {})
        self.assertIsNone(_Recorded.made[0][1]["cacert"])

    def test_unreadable_file(self) -> None:
        """
        A CA file the client cannot read is a file problem (status 4)
        naming it, before any connection.
        """
        stderr = io.StringIO()
        status = main(
            ["--node", "https://127.0.0.1:1", "--cacert", "/nonexistent/ca.pem", "get", "k"],
            stdout=io.BytesIO(),
            stderr=stderr,
            environ={},
        )
        self.assertEqual(status, 4)
        self.assertEqual(
            stderr.getvalue(),
            "kvctl: /nonexistent/ca.pem: cannot use the CA certificate: No such file or directory\n",
        )


class CredentialTests(SynchronousTestCase):
    """
    C{--user}, C{--token}, C{kvctl token} and C{kvctl passwd}, with the
    client and the prompt scripted.
    """

    def run_kvctl(self, *argv: str, stdin: bytes = b"", answers: tuple[str, ...] = ()) -> tuple[int, str, str]:
        self.made: list[_Recorded] = []
        self.asked: list[str] = []
        replies = list(answers)

        def make(url: str, **options: Any) -> _Recorded:
            self.made.append(_Recorded(url, **options))
            return self.made[-1]

        def ask(prompt: str) -> str:
            self.asked.append(prompt)
            return replies.pop(0)

        stdout, stderr = io.BytesIO(), io.StringIO()
        status = main(
            list(argv), stdin=io.BytesIO(stdin), stdout=stdout, stderr=stderr, environ={},
            client_factory=make, ask=ask,
        )
        return status, stdout.getvalue().decode(), stderr.getvalue()

    def test_user(self) -> None:
        """
        C{--user NAME:PASSWORD} is given to the client as is; C{--user NAME}
        asks for the password first.
        """
        status, out, _ = self.run_kvctl("--user", "alice:wonder:land", "token")
        self.assertEqual((status, json.loads(out)), (0, {"token": "t0k3n", "expires": 99}))
        self.assertEqual(self.made[0].options, {"timeout": 10.0, "cacert": None, "user": "alice:wonder:land"})
        self.assertEqual(self.asked, [])
        self.run_kvctl("--user", "alice", "token", answers=("secret",))
        self.assertEqual(self.made[0].options["user"], "alice:secret")
        self.assertEqual(self.asked, ["Password for alice: "])

    def test_token(self) -> None:
        """
        C{--token} is given to the client; it excludes C{--user}.
        """
        self.run_kvctl("--token", "abc", "token")
        self.assertEqual(self.made[0].options, {"timeout": 10.0, "cacert": None, "token": "abc"})
        status, _, err = self.run_kvctl("--token", "abc", "--user", "a:b", "token")
        self.assertEqual(status, 2)
        self.assertIn("not allowed with argument", err)

    def test_passwd(self) -> None:
        """
        C{kvctl passwd} prints the salted hash of the password read from
        standard input, which checks against it.
        """
        status, out, _ = self.run_kvctl("passwd", stdin=b"wonderland\n")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("scrypt:"), out)
        self.assertTrue(verify_password(out.strip(), "wonderland"))
        self.assertEqual(self.made, [])
