# -*- test-case-name: tests.test_storage_syncer -*-
"""
The log's syncs in a process of its own.

With a thread that writes and syncs, every hand-off of the interpreter
lock between it and the reactor costs a pair of context switches, several
per commit: under load the reactor thread spent half as much again on each
durable PUT as in memory, and under PyPy twice as much
(docs/performance.md).  A L{SyncProcess} takes the thread's place for the
common commit: the reactor writes the batch itself (into the page cache:
the write does not wait for the disk) and sends the file's descriptor over
a UNIX socket to a small process, which syncs it and answers; the answer
comes back as any socket's data does, and no thread of the node wants the
lock.

The process holds the very file the node writes (a passed descriptor is
the same open file), so an error of the sync is reported to it, and it
passes it on; the committer then treats the log as lost (fsyncgate).  If
the process ends, every sync asked of it fails the same way.

The process (L{serve}) ignores SIGINT and SIGTERM, which a terminal or a
service manager sends to the node's whole group: it ends when the node
closes its end of the socket, after the node's last sync.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from collections import deque
from typing import Deque, Optional, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProcessTransport, IReactorProcess, IReadDescriptor
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_kv.storage.fs import IAppendFile

log = Logger()

# The descriptor the process reads its requests from.
CHILD_FD = 3
# A request: sync the file whose descriptor comes with this byte.
SYNC = b"s"
# The answer to a sync that succeeded; otherwise, the errno in one byte.
SYNCED = b"\x00"

_datasync = getattr(os, "fdatasync", os.fsync)


class Syncer(Protocol):
    """
    Syncs files for a L{twisted_kv.storage.committer.GroupCommitter}, in
    the order asked.
    """

    def sync(self, file: IAppendFile) -> "Deferred[None]":
        """
        Make everything written to C{file} so far durable.

        @return: a Deferred that fires once it is, or fails with the
            C{OSError} of the sync.
        """


def serve(fd: int) -> None:
    """
    The sync process: answer the syncs asked on socket C{fd}.
    """
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    answer_syncs(socket.socket(fileno=fd))


def answer_syncs(channel: socket.socket) -> None:
    """
    Sync each file sent on C{channel} and answer, in order, until the
    other end closes.
    """
    while True:
        try:
            request, fds, _, _ = socket.recv_fds(channel, 16, 4)
        except OSError:
            return
        if not request:
            return
        answer = SYNCED if fds else bytes([errno.EBADF])
        for passed in fds:
            try:
                _datasync(passed)
            except OSError as error:
                answer = bytes([error.errno or errno.EIO])
            finally:
                os.close(passed)
        channel.send(answer)


class _Watch(ProcessProtocol):
    """
    Logs what the process prints and tells its L{SyncProcess} when it ends.
    """

    def __init__(self, owner: "SyncProcess") -> None:
        self._owner = owner

    def errReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            log.error("{name}: {line}", name=self._owner.name, line=line)

    def processEnded(self, reason: Failure) -> None:
        self._owner._ended(reason)


@implementer(IReadDescriptor)
class SyncProcess:
    """
    A L{Syncer} that syncs in a process of its own, started at the first
    sync and ended by L{stop}.

    @ivar name: names the process in the node's log.
    @ivar process: the process, once started.
    """

    def __init__(self, reactor: IReactorProcess, name: str = "syncer") -> None:
        self._reactor = reactor
        self.name = name
        self.process: Optional[IProcessTransport] = None
        self._channel: Optional[socket.socket] = None
        self._process_ended: Optional[Deferred[None]] = None
        # The syncs asked and not answered yet, oldest first.
        self._waiting: Deque[Deferred[None]] = deque()
        # Descriptors (our own copies) of syncs the socket took no more of.
        self._unsent: Deque[int] = deque()
        self._broken: Optional[OSError] = None

    def sync(self, file: IAppendFile) -> "Deferred[None]":
        if self._broken is not None:
            return fail(self._broken)
        if self._channel is None:
            try:
                self._start()
            except OSError as error:
                self._lost(error)
                return fail(error)
        done: Deferred[None] = Deferred()
        self._waiting.append(done)
        fd = file.fileno()
        if (self._unsent or not self._send(fd)) and self._channel is not None:
            self._unsent.append(os.dup(fd))
        return done

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._process_ended = Deferred()
        try:
            self.process = self._reactor.spawnProcess(
                _Watch(self),
                sys.executable,
                [sys.executable, "-c", f"from {__name__} import serve; serve({CHILD_FD})"],
                env=dict(os.environ),
                childFDs={0: "w", 1: "r", 2: "r", CHILD_FD: theirs.fileno()},
            )
        finally:
            theirs.close()
        self._channel = ours
        self._reactor.addReader(self)  # type: ignore[attr-defined]

    def _send(self, fd: int) -> bool:
        """
        Send one sync of C{fd}.

        @return: whether it was sent: not if the socket takes no more now
            (the process is behind), or the process is lost.
        """
        assert self._channel is not None
        try:
            socket.send_fds(self._channel, [SYNC], [fd])
        except BlockingIOError:
            return False
        except OSError as error:
            self._lost(error)
            return False
        return True

    def fileno(self) -> int:
        return -1 if self._channel is None else self._channel.fileno()

    def logPrefix(self) -> str:
        return self.name

    def doRead(self) -> None:
        while self._channel is not None:
            try:
                answer = self._channel.recv(16)
            except BlockingIOError:
                break
            except OSError as error:
                self._lost(error)
                return
            if not answer or not self._waiting:
                self._lost(OSError(errno.EIO, f"{self.name} ended"))
                return
            done = self._waiting.popleft()
            if answer == SYNCED:
                done.callback(None)
            else:
                done.errback(OSError(answer[0], os.strerror(answer[0])))
        while self._unsent and self._channel is not None:
            if not self._send(self._unsent[0]):
                return
            os.close(self._unsent.popleft())

    def connectionLost(self, reason: Failure) -> None:
        self._lost(OSError(errno.EIO, f"{self.name}: {reason.getErrorMessage()}"))

    def _ended(self, reason: Failure) -> None:
        ended, self._process_ended = self._process_ended, None
        if self._channel is not None:
            self._lost(OSError(errno.EIO, f"{self.name} ended: {reason.getErrorMessage()}"))
        if ended is not None:
            ended.callback(None)

    def _lost(self, error: OSError) -> None:
        """
        Fail every sync waiting, and every later one: nothing says whether
        the file reached the disk.
        """
        if self._broken is None:
            self._broken = error
        self._close()
        waiting, self._waiting = self._waiting, deque()
        for done in waiting:
            done.errback(error)

    def _close(self) -> None:
        if self._channel is not None:
            self._reactor.removeReader(self)  # type: ignore[attr-defined]
            self._channel.close()
            self._channel = None
        while self._unsent:
            os.close(self._unsent.popleft())

    def stop(self) -> "Deferred[None]":
        """
        End the process: it ends when its socket closes.  The node asks
        for no sync once its log stopped; any still waiting fail.

        @return: a Deferred that fires once the process ended.
        """
        self._broken = self._broken or OSError(errno.EIO, f"{self.name} was stopped")
        ended = self._process_ended
        self._close()
        waiting, self._waiting = self._waiting, deque()
        for done in waiting:
            done.errback(self._broken)
        return succeed(None) if ended is None else ended
