# -*- test-case-name: tests.test_storage_syncer -*-
"""
Tests for L{twisted_kv.storage.syncer}: the sync process's loop over a
socket pair, and L{SyncProcess} with a real process and files.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted_kv.errors import LogFailed
from twisted_kv.storage.committer import GroupCommitter
from twisted_kv.storage.fs import OSFileSystem
from twisted_kv.storage.log import Log
from twisted_kv.storage.syncer import SYNC, SYNCED, SyncProcess, answer_syncs
from twisted_kv.storage.worker import LogWorker


class AnswerSyncsTests(SynchronousTestCase):
    """
    L{answer_syncs} syncs each descriptor it is sent and answers, in order.
    """

    def serving(self) -> socket.socket:
        """
        Our end of a socket pair whose other end L{answer_syncs} reads, in
        a thread (it ends when our end closes).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.settimeout(10)
        thread = threading.Thread(target=answer_syncs, args=(theirs,))
        thread.start()

        def stop() -> None:
            ours.close()
            thread.join(10)
            theirs.close()

        self.addCleanup(stop)
        return ours

    def test_syncs(self) -> None:
        """
        A file's descriptor sent with a request is synced and the answer
        says so.
        """
        channel = self.serving()
        path = self.mktemp()
        with open(path, "wb") as file:
            file.write(b"data")
            for _ in range(2):
                socket.send_fds(channel, [SYNC], [file.fileno()])
            self.assertEqual([channel.recv(16), channel.recv(16)], [SYNCED, SYNCED])

    def test_error(self) -> None:
        """
        A sync that fails is answered with its errno (a pipe cannot be
        synced: C{EINVAL}); a request without a descriptor with C{EBADF}.
        """
        channel = self.serving()
        reading, writing = os.pipe()
        self.addCleanup(os.close, reading)
        self.addCleanup(os.close, writing)
        socket.send_fds(channel, [SYNC], [writing])
        self.assertEqual(channel.recv(16), bytes([errno.EINVAL]))
        channel.send(SYNC)
        self.assertEqual(channel.recv(16), bytes([errno.EBADF]))


class SyncProcessTests(TestCase):
    """
    L{SyncProcess} with a real process.
    """

    def syncer(self) -> SyncProcess:
        syncer = SyncProcess(reactor, "test syncer")  # type: ignore[arg-type]
        self.addCleanup(syncer.stop)
        return syncer

    def log(self) -> Log:
        log = Log(OSFileSystem(), self.mktemp())
        list(log.replay())
        self.addCleanup(log.close)
        return log

    def test_syncs(self) -> Deferred[Any]:
        """
        Syncs are answered in order; the process starts at the first.
        """
        syncer = self.syncer()
        log = self.log()
        log.write(b"data", sync=False)
        answered: list[int] = []
        syncs = [
            syncer.sync(log.file).addCallback(lambda _, i=i: answered.append(i))
            for i in range(5)
        ]
        return gatherResults(syncs).addCallback(
            lambda _: self.assertEqual(answered, list(range(5)))
        )

    def test_behind(self) -> Deferred[Any]:
        """
        While the process is stopped, syncs the socket takes no more of
        wait their turn, and all are answered in order once it goes on.
        """
        syncer = self.syncer()
        log = self.log()
        answered: list[int] = []

        def pile_up(_: object) -> Deferred[Any]:
            assert syncer.process is not None
            syncer.process.signalProcess(signal.SIGSTOP)
            syncs = [
                syncer.sync(log.file).addCallback(lambda _, i=i: answered.append(i))
                for i in range(600)
            ]
            self.assertGreater(len(syncer._unsent), 0)
            syncer.process.signalProcess(signal.SIGCONT)
            return gatherResults(syncs)

        def check(_: object) -> None:
            self.assertEqual(answered, list(range(600)))
            self.assertEqual(len(syncer._unsent), 0)

        return syncer.sync(log.file).addCallback(pile_up).addCallback(check)

    def test_stop(self) -> Deferred[Any]:
        """
        L{stop} ends the process; later syncs fail.
        """
        syncer = self.syncer()
        log = self.log()

        def stop(_: object) -> Deferred[None]:
            return syncer.stop()

        def check(_: object) -> None:
            self.failureResultOf(syncer.sync(log.file), OSError)

        return syncer.sync(log.file).addCallback(stop).addCallback(check)

    def test_signals_ignored(self) -> Deferred[Any]:
        """
        The process ignores SIGINT and SIGTERM, which a terminal or a
        service manager sends to the node's whole group: it still syncs.
        """
        syncer = self.syncer()
        log = self.log()

        def signal_it(_: object) -> Deferred[None]:
            assert syncer.process is not None
            syncer.process.signalProcess("INT")
            syncer.process.signalProcess("TERM")
            return syncer.sync(log.file)

        return syncer.sync(log.file).addCallback(signal_it)

    def test_process_ends(self) -> Deferred[Any]:
        """
        If the process ends, a sync waiting or asked fails with
        C{OSError}, and so does every later one at once: nothing says the
        file reached the disk.
        """
        syncer = self.syncer()
        log = self.log()

        def kill(_: object) -> Deferred[Any]:
            assert syncer.process is not None
            syncer.process.signalProcess("KILL")
            return syncer.sync(log.file).addCallbacks(
                lambda _: self.fail("synced by a killed process"), lambda f: f.trap(OSError)
            )

        def later(_: object) -> None:
            self.failureResultOf(syncer.sync(log.file), OSError)

        return syncer.sync(log.file).addCallback(kill).addCallback(later)

    def test_committer(self) -> Deferred[Any]:
        """
        A committer writing in the reactor and syncing through the
        process: appends fire once their records are on disk, in order;
        a sync that fails fails the log.
        """
        syncer = self.syncer()
        log = self.log()
        worker = LogWorker(reactor, "test log")  # type: ignore[arg-type]
        self.addCleanup(worker.stop)
        committer = GroupCommitter(log, "always", worker, reactor, syncer)  # type: ignore[arg-type]
        payloads = [b"%d" % i for i in range(50)]
        fired: list[bytes] = []
        results = [
            committer.append(1, payload).addCallback(lambda _, p=payload: fired.append(p))
            for payload in payloads
        ]

        def check(_: object) -> Deferred[None]:
            self.assertEqual(fired, payloads)
            again = Log(OSFileSystem(), log.directory)
            self.addCleanup(again.close)
            self.assertEqual([payload for _, payload in again.replay()], payloads)
            assert syncer.process is not None
            syncer.process.signalProcess("KILL")
            return committer.append(1, b"more").addCallbacks(
                lambda _: self.fail("acknowledged without a sync"),
                lambda failure: failure.trap(LogFailed),
            )

        def later(_: object) -> None:
            self.assertTrue(log.failed)
            self.failureResultOf(committer.append(1, b"later"), LogFailed)

        return gatherResults(results).addCallback(check).addCallback(later)
