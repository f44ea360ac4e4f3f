# -*- test-case-name: tests.test_ws_e2e -*-
"""
End-to-end tests of C{/ws} over real loopback sockets.

The nodes here are sites sharing one L{LocalKeyValue}: each has its own
change feed, as the nodes of a cluster do.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.polling import poll
from tests.test_client_support import serve
from twisted_kv.core import keyspace
from twisted_kv.client.txclient import TxClient, Watcher


class _Stalling(WebSocketClientProtocol):
    """
    A client that watches everything, then stops reading.
    """

    def onOpen(self) -> None:
        self.sendMessage(json.dumps({"op": "watch", "prefix": ""}).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if json.loads(payload)["type"] == "watching":
            self.transport.pauseProducing()
            self.factory.stalled.callback(self)


class EndToEndTests(TestCase):
    """
    Several nodes, real sockets.
    """

    @inlineCallbacks
    def watch(self, url: str, prefix: str = "") -> Any:
        """
        A started L{Watcher} on C{url}, and the list it appends changes to.
        """
        received: list[dict] = []
        watcher = Watcher(url, received.append, prefix)
        watcher.start()
        self.addCleanup(watcher.stop)
        yield watcher.when_watching()
        return received

    @inlineCallbacks
    def test_change_through_another_node(self) -> Any:
        """
        Watchers on two nodes receive a change made over HTTP through a
        third, once each.
        """
        first = serve(self)
        second = serve(self, kv=first.kv)
        third = serve(self, kv=first.kv)
        on_first = yield self.watch(first.url, "users/")
        on_second = yield self.watch(second.url, "users/")
        client = TxClient(third.url)
        self.addCleanup(client.close)
        version = yield client.put("users/alice", b"hello")
        yield Deferred.fromCoroutine(
            poll(lambda: bool(on_first and on_second), 10, "the change at both watchers", interval=0.01)
        )
        for received in (on_first, on_second):
            self.assertEqual(
                [(e["type"], e["key"], e["version"], e["value"]) for e in received],
                [("put", "users/alice", version, "hello")],
            )

    @inlineCallbacks
    def test_stalled_consumer(self) -> Any:
        """
        A client that stops reading is disconnected once its queue is full;
        a client of the same node keeps receiving every change.
        """
        node = serve(self, max_queue=50, max_queue_bytes=1024 * 1024)
        received = yield self.watch(node.url)
        factory = WebSocketClientFactory(node.url.replace("http", "ws") + "/ws", reactor=reactor)
        factory.protocol = _Stalling
        factory.stalled = Deferred()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", int(node.url.rsplit(":", 1)[1]))
        slow = yield endpoint.connect(factory)
        self.addCleanup(slow.transport.abortConnection)
        yield factory.stalled
        self.assertEqual(node.ws_service.factory.connections, 2)
        value = b"x" * 8192
        sent = 0
        deadline = reactor.seconds() + 30
        # The kernel's buffers take megabytes before the node's queue fills;
        # then the node closes the connection, and drops it when the closing
        # handshake times out.  A few changes a turn, which the reading
        # client keeps up with.
        while node.ws_service.factory.connections == 2:
            self.assertLess(reactor.seconds(), deadline, "the stalled client was never dropped")
            for _ in range(4):
                sent += 1
                yield node.kv.put(keyspace.user_key(f"k{sent % 100}"), value)
            yield deferLater(reactor, 0, lambda: None)
        yield Deferred.fromCoroutine(
            poll(lambda: len(received) == sent, 10, f"{sent} changes at the reading client", interval=0.01)
        )
        self.assertEqual([e["revision"] for e in received], list(range(1, sent + 1)))
