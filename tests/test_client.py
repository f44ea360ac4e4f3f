# -*- test-case-name: tests.test_client -*-
"""
Tests for L{twisted_kv.client.sync} and L{twisted_kv.client.txclient}.

The request builders and the error mapping are tested with
L{twisted_kv.client._logic}, in L{tests.test_client_logic}; L{TxClientTests}
run the Twisted client against the node's site in memory (treq's
C{StubTreq}, a L{Clock}); L{ClientTests} and L{WatchTests} run the blocking
client, in a thread, and the L{Watcher}, against a node listening on a
loopback port.  The watch's frame and node logic is tested without I/O in
L{tests.test_client_logic}.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.polling import poll
from tests.test_client_support import serve, three_nodes
from twisted_kv import errors
from twisted_kv.client import Client, Page, TxClient, Value, Watcher
from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.core import keyspace
from twisted_kv.core.records import format_version, make_version, parse_version
from twisted_kv.interfaces import Health, IClusterStatus
from twisted_kv.web.site import build_site


@implementer(IClusterStatus)
class _Status:
    def cluster_view(self) -> dict:
        return three_nodes(5)

    def health(self) -> Health:
        return Health(None, "", {})

    def metrics(self) -> list:
        return []


class TxClientTests(SynchronousTestCase):
    """
    L{TxClient} against the node's site, in memory.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        site = build_site(LocalKeyValue(self.clock), _Status(), clock=self.clock)
        self.stub = StubTreq(site.resource)
        self.client = TxClient("http://node.example:7001", reactor=self.clock, http=self.stub)

    def result(self, deferred: Deferred[Any]) -> Any:
        self.stub.flush()
        return self.successResultOf(deferred)

    def failure(self, deferred: Deferred[Any], cls: type) -> Any:
        self.stub.flush()
        return self.failureResultOf(deferred, cls).value

    def test_put_get(self) -> None:
        """
        A value written is read back with its type and version.
        """
        version = self.result(self.client.put("a/b", b"v", content_type="x/y"))
        self.assertEqual(self.result(self.client.get("a/b")), Value(b"v", "x/y", version))

    def test_conditional(self) -> None:
        """
        A write conditional on a stale version fails with
        L{PreconditionFailed}; on the current one, it succeeds.
        """
        old = self.result(self.client.put("k", "1"))
        new = self.result(self.client.put("k", "2", if_match=old))
        self.failure(self.client.put("k", "3", if_match=old), errors.PreconditionFailed)
        self.failure(self.client.put("k", "3", if_none_match=True), errors.PreconditionFailed)
        self.failure(self.client.delete("k", if_match=old), errors.PreconditionFailed)
        self.assertIsNone(self.result(self.client.delete("k", if_match=new)))

    def test_create(self) -> None:
        """
        Creating an existing key fails with L{KeyExists}.
        """
        self.result(self.client.create("k", b"1"))
        self.failure(self.client.create("k", b"2"), errors.KeyExists)

    def test_missing(self) -> None:
        """
        Reading or deleting a missing key fails with L{KeyNotFound}.
        """
        self.failure(self.client.get("nope"), errors.KeyNotFound)
        self.failure(self.client.delete("nope"), errors.KeyNotFound)

    def test_list_and_keys(self) -> None:
        """
        L{TxClient.list} gives one page; L{TxClient.keys} follows the pages.
        """
        for name in ["a1", "a2", "a3", "b1"]:
            self.result(self.client.put(name, b""))
        self.assertEqual(self.result(self.client.list("a", limit=2)), Page(["a1", "a2"], "a2"))
        self.assertEqual(self.result(self.client.keys("a", page_size=2)), ["a1", "a2", "a3"])

    def test_ttl(self) -> None:
        """
        A key written with a C{ttl} is gone after that many seconds.
        """
        self.result(self.client.put("k", b"", ttl=5))
        self.clock.advance(5)
        self.failure(self.client.get("k"), errors.KeyNotFound)

    def test_cluster(self) -> None:
        """
        L{TxClient.cluster} gives the C{/cluster} object.
        """
        self.assertEqual(self.result(self.client.cluster()), three_nodes(5))

    def test_close(self) -> None:
        """
        A client given its HTTP client has no pool of its own to close.
        """
        self.assertIsNone(self.successResultOf(self.client.close()))


class ClientTests(TestCase):
    """
    The blocking L{Client} against a node on a loopback port.
    """

    def setUp(self) -> None:
        self.node = serve(self)
        self.client = Client(self.node.url)
        self.addCleanup(self.client.close)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Call a method of the client in a thread, as a program would.
        """
        return deferToThread(getattr(self.client, method), *args, **kwargs)

    @inlineCallbacks
    def test_round_trip(self) -> Any:
        """
        Write, read, list, delete: one connection serves every request.
        """
        version = yield self.call("put", "users/é/1", '{"a": 1}', content_type="application/json")
        value = yield self.call("get", "users/é/1")
        self.assertEqual(value, Value(b'{"a": 1}', "application/json", version))
        self.assertEqual(value.text, '{"a": 1}')
        yield self.call("put", "users/é/2", b"\x00")
        page = yield self.call("list", "users/é/", limit=1)
        self.assertEqual(page, Page(["users/é/1"], "users/é/1"))
        keys = yield deferToThread(lambda: list(self.client.keys("users/", page_size=1)))
        self.assertEqual(keys, ["users/é/1", "users/é/2"])
        yield self.call("delete", "users/é/1")
        error = yield self.assertFailure(self.call("get", "users/é/1"), errors.KeyNotFound)
        self.assertEqual(error.message, "no key 'users/é/1'")
        self.assertEqual(self.node.connections, 1)

    @inlineCallbacks
    def test_reconnect(self) -> Any:
        """
        When the node closed the idle connection, the next request opens a
        new one.
        """
        yield self.call("put", "k", b"1")
        yield self.node.close_connections()
        value = yield self.call("get", "k")
        self.assertEqual(value.data, b"1")

    @inlineCallbacks
    def test_cluster(self) -> Any:
        """
        L{Client.cluster} gives the C{/cluster} object.
        """
        view = yield self.call("cluster")
        self.assertEqual(view["leader"], "n2")

    @inlineCallbacks
    def test_node_down(self) -> Any:
        """
        A node that does not answer is an C{OSError}.
        """
        yield self.node.stop()
        yield self.assertFailure(self.call("get", "k"), OSError)

    def test_bad_url(self) -> None:
        """
        Only C{http} and C{https} URLs name a node.
        """
        self.assertRaises(ValueError, Client, "ftp://127.0.0.1:7001")


class WatchTests(TestCase):
    """
    Watching changes over C{/ws}, blocking and with Deferreds.
    """

    def setUp(self) -> None:
        self.node = serve(self)

    @inlineCallbacks
    def test_blocking_watch(self) -> Any:
        """
        L{Client.watch} is active once it returns, and yields each change of
        the keys under its prefix as a dict.
        """
        watch = yield deferToThread(Client(self.node.url).watch, "users/")
        self.addCleanup(deferToThread, watch.close)
        yield self.node.kv.put(keyspace.user_key("other"), b"x")
        yield self.node.kv.put(keyspace.user_key("users/a"), b"hello")
        yield self.node.kv.delete(keyspace.user_key("users/a"))
        first = yield deferToThread(watch.next_event, 10)
        second = yield deferToThread(watch.next_event, 10)
        self.assertEqual(
            (first["type"], first["key"], first["value"], second["type"]),
            ("put", "users/a", "hello", "delete"),
        )
        self.assertEqual(watch.revision, second["revision"])
        nothing = yield deferToThread(watch.next_event, 0.05)
        self.assertIsNone(nothing)

    @inlineCallbacks
    def test_blocking_watch_timeout(self) -> Any:
        """
        L{Client.watch} gives up with L{TimeoutError} when no node accepts
        the watch in time.
        """
        url = self.node.url
        yield self.node.stop()
        error = yield self.assertFailure(
            deferToThread(Client(url).watch, "", timeout=0.3), TimeoutError
        )
        self.assertEqual(str(error), f"{url} did not accept the watch within 0.3 s")

    @inlineCallbacks
    def test_resume(self) -> Any:
        """
        A L{Watcher} whose connection is lost reconnects, and resumes after
        the last change it received: what changed meanwhile arrives, and
        nothing twice.
        """
        received: list[dict] = []
        watcher = Watcher(self.node.url, received.append, "k", retry_policy=lambda attempt: 0.01)
        watcher.start()
        self.addCleanup(watcher.stop)
        yield watcher.when_watching()
        yield self.node.kv.put(keyspace.user_key("k1"), b"1")
        yield self.node.close_connections()
        yield self.node.kv.put(keyspace.user_key("k2"), b"2")
        yield self.node.kv.put(keyspace.user_key("k3"), b"3")
        yield Deferred.fromCoroutine(
            poll(lambda: len(received) == 3, 5, "three events at the watcher", interval=0.01)
        )
        self.assertEqual([event["key"] for event in received], ["k1", "k2", "k3"])
        self.assertEqual(received[1]["value"], "2")
        self.assertEqual(watcher.revision, received[2]["revision"])

    @inlineCallbacks
    def test_moves_through_the_nodes(self) -> Any:
        """
        Each lost connection or failed attempt is reported with the node
        tried next, round the given nodes (the first one given once), and
        the watch goes on at the next node that answers; closing the watch
        is not reported.

        Which frames a L{Watcher} delivers is L{WatchPosition}'s, the order
        of the nodes L{NodeRing}'s, both tested in L{tests.test_client_logic}.
        """
        down = serve(self)
        yield down.stop()
        lost: list = []
        watching: list = []
        watcher = Watcher(
            down.url,
            [].append,
            others=[self.node.url, down.url],
            retry_policy=lambda attempt: 0.01,
            on_lost=lambda *args: lost.append(args),
            on_watching=watching.append,
        )
        watcher.start()
        yield watcher.when_watching()
        yield self.node.close_connections()
        yield Deferred.fromCoroutine(
            poll(lambda: len(watching) == 2, 5, "the watch again at the live node", interval=0.01)
        )
        yield watcher.stop()
        self.assertEqual(
            lost,
            [
                (down.url, "connection refused", self.node.url),
                (self.node.url, "connection lost", down.url),
                (down.url, "connection refused", self.node.url),
            ],
        )
        self.assertEqual(watching, [self.node.url, self.node.url])


class VersionTests(SynchronousTestCase):
    """
    The versions the client reads in answers and watch frames.
    """

    def test_parse_version_inverts_format(self) -> None:
        """
        L{parse_version} reads what L{format_version} writes, and nothing else.
        """
        self.assertEqual(parse_version(format_version(make_version(3, 17))), make_version(3, 17))
        for junk in ("", "3", "a.b", "1.2.3", "-1.2"):
            self.assertIsNone(parse_version(junk), junk)
