# -*- test-case-name: tests.test_ftp -*-
"""
Tests for L{twisted_kv.ftp.server} without sockets: the shell called
directly, the realm and checker, every added command over
L{StringTransport} (data connections included), and Twisted's own
L{FTPClient} talking to the server over L{iosim}.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.cred.checkers import ANONYMOUS
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols import ftp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.test_logins import HeldChecks
from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.core.passwords import hash_password
from twisted_kv.core.users import Grant, LoginThrottle, User
from twisted_kv.errors import (
    InsufficientStorage,
    KVError,
    OutcomeUnknown,
    PreconditionFailed,
    Unavailable,
)
from twisted_kv.files import (
    BadPath,
    DirectoryNotEmpty,
    FileChanged,
    FileNotFound,
    FileSystem,
    FileTooLarge,
    TransferAborted,
)
from twisted_kv.files.testing import PREFIXES, ControlledKeyValue, on
from twisted_kv.ftp.server import (
    FileRealm,
    FileShell,
    PasswordChecker,
    build_ftp_factory,
    ftp_error,
)
from twisted_kv.logins import MAX_CHECKING_ADDRESSES, Logins

HOST = IPv4Address("TCP", "127.0.0.1", 2121)
PEER = IPv4Address("TCP", "127.0.0.1", 50000)
NOW = 1_700_000_000.0
USERS = {"alice": "plain:wonderland", "bob": hash_password("builder", bytes(16))}


class Sink(Protocol):
    """
    The client end of a data connection, keeping what it receives.
    """

    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.done.callback(None)


@implementer(IConsumer)
class PausingConsumer:
    """
    A consumer that pauses its producer at once.
    """

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        producer.pauseProducing()

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        raise AssertionError("paused")


class ErrorMappingTests(SynchronousTestCase):
    """
    L{ftp_error} answers each failure with the right reply.
    """

    def test_codes(self) -> None:
        """
        Missing things and refusals are 550, bad names 553, size and memory
        limits 552, transient store trouble 45x.
        """
        cases = [
            (FileNotFound("/a: no such file"), 550),
            (DirectoryNotEmpty("/d is not empty"), 550),
            (PreconditionFailed("changed"), 550),
            (BadPath("bad"), 553),
            (FileTooLarge("big"), 552),
            (InsufficientStorage("full"), 552),
            (Unavailable("no quorum"), 450),
            (FileChanged("changed"), 450),
            (OutcomeUnknown("lost"), 451),
            (TransferAborted("stopped"), 426),
            (KVError("internal"), 451),
        ]
        for error, code in cases:
            reply = ftp_error(error)
            self.assertEqual(reply.response(), f"{code} {error.message}")


class ShellTests(SynchronousTestCase):
    """
    L{FileShell} methods called directly.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.kv = LocalKeyValue(self.clock)
        self.fs = FileSystem(self.kv, self.clock, chunk_bytes=4, max_file_bytes=32)
        self.shell = FileShell(self.fs)

    def store(self, path: list[str], data: bytes) -> None:
        writer = self.successResultOf(self.shell.openForWriting(path))
        consumer = self.successResultOf(writer.receive())
        consumer.write(data)
        self.successResultOf(writer.close())

    def read(self, path: list[str], offset: int = 0) -> bytes:
        reader = self.successResultOf(self.shell.open_for_reading(path, offset))
        sink = StringTransport()
        self.successResultOf(reader.send(sink))
        return sink.value()

    def reply(self, deferred: Deferred[Any]) -> str:
        return self.failureResultOf(deferred, ftp.FTPCmdError).value.response()

    def test_interfaces(self) -> None:
        """
        The shell, its readers and writers provide Twisted's interfaces.
        """
        verifyObject(ftp.IFTPShell, self.shell)
        writer = self.successResultOf(self.shell.openForWriting(["f"]))
        verifyObject(ftp.IWriteFile, writer)
        self.successResultOf(writer.close())
        verifyObject(ftp.IReadFile, self.successResultOf(self.shell.openForReading(["f"])))

    def test_files(self) -> None:
        """
        Files are stored, stat'ed, listed, read (from an offset), renamed
        and removed.
        """
        self.successResultOf(self.shell.makeDirectory(["d"]))
        self.store(["d", "f"], b"0123456789")
        self.assertEqual(
            self.successResultOf(self.shell.stat(["d", "f"], ("size", "directory", "modified"))),
            [10, False, NOW],
        )
        listing = self.successResultOf(self.shell.list(["d"], ("size", "hardlinks", "owner")))
        self.assertEqual(listing, [("f", [10, 1, "kv"])])
        self.assertEqual(self.successResultOf(self.shell.list(["d", "f"], ())), [("f", [])])
        self.assertEqual(self.read(["d", "f"], 7), b"789")
        self.successResultOf(self.shell.rename(["d", "f"], ["g"]))
        self.assertEqual(self.read(["g"]), b"0123456789")
        self.successResultOf(self.shell.removeFile(["g"]))
        self.successResultOf(self.shell.removeDirectory(["d"]))
        self.assertEqual(self.successResultOf(self.shell.list([], ())), [])

    def test_permissions(self) -> None:
        """
        Listings show usual Unix modes.
        """
        self.successResultOf(self.shell.makeDirectory(["d"]))
        self.store(["f"], b"x")
        listing = dict(self.successResultOf(self.shell.list([], ("permissions",))))
        self.assertEqual(listing["d"][0].shorthand(), "rwxr-xr-x")
        self.assertEqual(listing["f"][0].shorthand(), "rw-r--r--")

    def test_access(self) -> None:
        """
        Only existing directories can be entered.
        """
        self.successResultOf(self.shell.access([]))
        self.store(["f"], b"x")
        self.assertEqual(self.reply(self.shell.access(["f"])), "550 /f: not a directory")
        self.assertTrue(self.reply(self.shell.access(["nope"])).startswith("550 "))

    def test_errors_are_replies(self) -> None:
        """
        File-system failures come out as FTP replies.
        """
        self.successResultOf(self.shell.makeDirectory(["d"]))
        self.store(["d", "f"], b"x")
        self.assertEqual(self.reply(self.shell.removeDirectory(["d"])), "550 /d is not empty")
        self.assertEqual(self.reply(self.shell.removeFile(["d"])), "550 /d is a directory")
        self.assertEqual(self.reply(self.shell.makeDirectory(["d"])), "550 /d already exists")
        self.assertTrue(self.reply(self.shell.stat(["x", ".."])).startswith("553 "))
        self.assertTrue(self.reply(self.shell.openForReading(["a\x00"])).startswith("553 "))

    def test_too_large(self) -> None:
        """
        An upload over the maximum fails with 552 and stores nothing.
        """
        writer = self.successResultOf(self.shell.openForWriting(["f"]))
        consumer = self.successResultOf(writer.receive())
        consumer.write(b"x" * 33)
        self.assertEqual(
            self.reply(writer.close()), "552 the file exceeds 32 bytes"
        )
        self.assertEqual(self.successResultOf(self.kv.list_keys("f", None, 10)).keys, [])

    def test_read_only(self) -> None:
        """
        A read-only shell reads but refuses every change.
        """
        self.store(["f"], b"x")
        shell = FileShell(self.fs, read_only=True)
        self.assertEqual(self.successResultOf(shell.stat(["f"], ("size",))), [1])
        listing = dict(self.successResultOf(shell.list([], ("permissions",))))
        self.assertEqual(listing["f"][0].shorthand(), "r--r--r--")
        for refused in [
            shell.makeDirectory(["d"]),
            shell.removeFile(["f"]),
            shell.removeDirectory(["d"]),
            shell.rename(["f"], ["g"]),
            shell.openForWriting(["g"]),
        ]:
            self.failureResultOf(refused, ftp.AnonUserDeniedError)

    def test_end_session(self) -> None:
        """
        Ending the session aborts unfinished uploads (nothing is stored)
        and stops downloads.
        """
        self.store(["f"], b"0123456789")
        writer = self.successResultOf(self.shell.openForWriting(["g"]))
        self.successResultOf(writer.receive()).write(b"partial data")
        reader = self.successResultOf(self.shell.openForReading(["f"]))
        sending = reader.send(PausingConsumer())
        self.assertNoResult(sending)
        self.shell.end_session()
        self.assertEqual(self.reply(sending), "426 the transfer was stopped")
        self.failureResultOf(writer.close(), ftp.FTPCmdError)
        chunks = self.successResultOf(self.kv.list_keys(PREFIXES["chunk"], None, 10)).keys
        self.assertEqual(len(chunks), 3)
        self.assertTrue(self.reply(self.shell.stat(["g"])).startswith("550 "))


class CredentialTests(SynchronousTestCase):
    """
    The password checker and the realm.
    """

    def test_checker(self) -> None:
        """
        C{plain:} and C{scrypt:} passwords are checked; wrong passwords and
        unknown users are refused alike.
        """
        checker = PasswordChecker(USERS)
        self.assertEqual(
            self.successResultOf(checker.requestAvatarId(UsernamePassword("alice", "wonderland"))),
            "alice",
        )
        self.assertEqual(
            self.successResultOf(checker.requestAvatarId(UsernamePassword(b"bob", b"builder"))),
            "bob",
        )
        for name, password in [("alice", "Wonderland"), ("bob", "wonderland"), ("eve", "")]:
            self.failureResultOf(
                checker.requestAvatarId(UsernamePassword(name, password)), UnauthorizedLogin
            )

    def test_bad_config(self) -> None:
        """
        A malformed stored password is refused up front, naming the user.
        """
        error = self.assertRaises(ValueError, PasswordChecker, {"carol": "secret"})
        self.assertIn("'carol'", str(error))

    def test_realm(self) -> None:
        """
        The realm gives each session its own shell and that shell's
        C{end_session} as the logout; anonymous shells are read-only.
        """
        clock = MemoryReactorClock()
        realm = FileRealm(FileSystem(LocalKeyValue(clock), clock))
        interface, shell, logout = self.successResultOf(
            realm.requestAvatar("alice", None, ftp.IFTPShell)
        )
        self.assertIs(interface, ftp.IFTPShell)
        self.assertFalse(shell.read_only)
        self.assertEqual(logout, shell.end_session)
        _, anonymous, _ = self.successResultOf(realm.requestAvatar(ANONYMOUS, None, ftp.IFTPShell))
        self.assertTrue(anonymous.read_only)
        self.assertRaises(NotImplementedError, realm.requestAvatar, "alice", None, object)


class Session:
    """
    One FTP control connection over a L{StringTransport}.
    """

    def __init__(
        self, factory: ftp.FTPFactory, reactor: MemoryReactorClock, peer: IPv4Address = PEER
    ) -> None:
        self.reactor = reactor
        self.transport = StringTransport(hostAddress=HOST, peerAddress=peer)
        self.protocol = factory.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        self.greeting = self.replies()

    def replies(self) -> list[str]:
        lines = self.transport.value().decode("utf-8").splitlines()
        self.transport.clear()
        return lines

    def send(self, line: str | bytes) -> list[str]:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.protocol.dataReceived(line + b"\r\n")
        return self.replies()

    def login(self, user: str = "alice", password: str = "wonderland") -> None:
        self.send(f"USER {user}")
        self.send(f"PASS {password}")

    def data(self, command: str = "PASV", peer: IPv4Address = PEER) -> StringTransport:
        """
        Open a passive data connection from C{peer}.
        """
        self.passive_replies = self.send(command)
        factory = self.reactor.tcpServers[-1][1]
        dtp = factory.buildProtocol(IPv4Address("TCP", peer.host, 50001))
        transport = StringTransport(hostAddress=HOST, peerAddress=peer)
        dtp.makeConnection(transport)
        self.dtp = dtp
        return transport

    def upload(self, command: str, data: bytes) -> list[str]:
        """
        Run C{command} (C{STOR}, C{APPE}) sending C{data}; the replies.
        """
        self.data()
        replies = self.send(command)
        self.dtp.dataReceived(data)
        self.dtp.connectionLost(Failure(ConnectionDone()))
        return replies + self.replies()

    def download(self, command: str) -> tuple[list[str], bytes]:
        """
        Run C{command} (C{RETR}, C{LIST}, ...); the replies and the data.
        """
        transport = self.data()
        replies = self.send(command)
        return replies, transport.value()


class CommandTests(SynchronousTestCase):
    """
    The FTP commands over a L{StringTransport}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW)
        self.kv = ControlledKeyValue(LocalKeyValue(self.reactor))
        self.factory = build_ftp_factory(
            self.kv, USERS, clock=self.reactor, max_file_bytes=1000, anonymous=True
        )
        self.session = Session(self.factory, self.reactor)

    def chunks(self) -> list[str]:
        return self.successResultOf(self.kv.list_keys(PREFIXES["chunk"], None, 1000)).keys

    def test_greeting_and_features(self) -> None:
        """
        The server greets, and answers C{FEAT}, C{OPTS UTF8 ON} and C{AUTH}
        before login; other commands need a login.
        """
        self.assertEqual(self.session.greeting, ["220 twisted_kv FTP service ready"])
        self.assertEqual(
            self.session.send("FEAT"),
            [
                "211-Features:",
                " EPSV",
                " MDTM",
                " MLST type*;size*;modify*;perm*;",
                " PASV",
                " REST STREAM",
                " SIZE",
                " TVFS",
                " UTF8",
                "211 End",
            ],
        )
        self.assertEqual(self.session.send("OPTS UTF8 ON"), ["200 Always in UTF8 mode."])
        self.assertEqual(self.session.send("AUTH TLS"), ["502 Command 'AUTH' not implemented"])
        self.assertEqual(self.session.send("PWD"), ["530 Please login with USER and PASS."])

    def test_login(self) -> None:
        """
        Wrong passwords are refused with 530; right ones let the user in.
        """
        self.session.send("USER alice")
        self.assertEqual(self.session.send("PASS nope"), ["530 Sorry, Authentication failed."])
        self.session.send("USER bob")
        self.assertEqual(self.session.send("PASS builder"), ["230 User logged in, proceed"])
        self.assertEqual(self.session.send("PWD"), ['257 "/"'])

    def test_anonymous(self) -> None:
        """
        Anonymous sessions read but cannot change anything.
        """
        self.session.login()
        self.session.upload("STOR f", b"data")
        anonymous = Session(self.factory, self.reactor)
        anonymous.send("USER anonymous")
        self.assertEqual(
            anonymous.send("PASS guest@"), ["230 Anonymous login ok, access restrictions apply."]
        )
        self.assertEqual(
            anonymous.send("MLST f"),
            ["250-Listing /f", " type=file;size=4;modify=20231114221320;perm=r; /f", "250 End"],
        )
        self.assertEqual(
            anonymous.send("DELE f"),
            ["550 Anonymous users are forbidden to change the filesystem"],
        )

    def test_anonymous_off(self) -> None:
        """
        Without anonymous access, C{anonymous} is just an unknown user.
        """
        factory = build_ftp_factory(self.kv, USERS, clock=self.reactor, max_file_bytes=10)
        session = Session(factory, self.reactor)
        session.send("USER anonymous")
        self.assertEqual(session.send("PASS guest@"), ["530 Sorry, Authentication failed."])

    def test_directories(self) -> None:
        """
        C{MKD}, C{CWD}, C{CDUP}, C{PWD} and C{RMD}.
        """
        self.session.login()
        self.assertEqual(self.session.send("MKD docs"), ['257 "docs" created'])
        self.assertEqual(
            self.session.send("CWD docs"), ["250 Requested File Action Completed OK"]
        )
        self.assertEqual(self.session.send("PWD"), ['257 "/docs"'])
        self.session.send("CDUP")
        self.assertEqual(self.session.send("PWD"), ['257 "/"'])
        self.assertEqual(self.session.send("CWD nope"), ["550 /nope: no such file or directory"])
        self.assertEqual(self.session.send("RMD docs"), ["250 Requested File Action Completed OK"])

    def test_store_and_retrieve(self) -> None:
        """
        C{STOR} stores what the data connection carries; C{RETR} sends it
        back; C{SIZE} and C{MDTM} describe it.
        """
        self.session.login()
        data = bytes(range(256)) * 3
        self.assertEqual(
            self.session.upload("STOR f.bin", data),
            ["125 Data connection already open, starting transfer", "226 Transfer Complete."],
        )
        self.assertEqual(
            self.session.passive_replies, ["227 Entering Passive Mode (127,0,0,1,0,0)."]
        )
        self.assertEqual(self.session.send("SIZE f.bin"), ["213 768"])
        self.assertEqual(self.session.send("MDTM f.bin"), ["213 20231114221320"])
        replies, received = self.session.download("RETR f.bin")
        self.assertEqual(received, data)
        self.assertEqual(
            replies,
            ["125 Data connection already open, starting transfer", "226 Transfer Complete."],
        )
        self.assertTrue(self.session.dtp.transport.disconnecting)

    def test_rest_retr(self) -> None:
        """
        C{REST} then C{RETR} resumes a download at the offset, once.
        """
        self.session.login()
        self.session.upload("STOR f", b"0123456789")
        self.assertEqual(self.session.send("REST 6"), ["350 Restarting at 6. Send STOR or RETR."])
        self.assertEqual(self.session.download("RETR f")[1], b"6789")
        self.assertEqual(self.session.download("RETR f")[1], b"0123456789")
        self.assertEqual(self.session.send("REST -1"), ["501 syntax error in argument(s) -1."])
        self.assertEqual(self.session.send("REST x"), ["501 syntax error in argument(s) x."])

    def test_rest_stor_and_appe(self) -> None:
        """
        C{REST} then C{STOR} rewrites from the offset; C{APPE} appends.
        """
        self.session.login()
        self.session.upload("STOR f", b"0123456789")
        self.session.send("REST 4")
        self.session.upload("STOR f", b"abc")
        self.assertEqual(self.session.download("RETR f")[1], b"0123abc")
        self.session.upload("APPE f", b"XYZ")
        self.assertEqual(self.session.download("RETR f")[1], b"0123abcXYZ")
        self.session.upload("APPE new", b"fresh")
        self.assertEqual(self.session.download("RETR new")[1], b"fresh")

    def test_too_large(self) -> None:
        """
        An upload over the maximum is answered 552 and leaves no chunks.
        """
        self.session.login()
        replies = self.session.upload("STOR big", b"x" * 1001)
        self.assertEqual(replies[-1], "552 the file exceeds 1000 bytes")
        self.assertEqual(self.chunks(), [])
        self.assertEqual(self.session.send("SIZE big"), ["550 /big: no such file or directory"])

    def test_store_unavailable(self) -> None:
        """
        A store that refuses the write gives a transient 450.
        """
        self.session.login()
        self.kv.fail_with(on("put", "manifest"), Unavailable("no quorum reachable"))
        replies = self.session.upload("STOR f", b"0123456789")
        self.assertEqual(replies[-1], "450 no quorum reachable")
        self.assertEqual(self.chunks(), [])

    def test_listings(self) -> None:
        """
        C{LIST}, C{NLST} (with or without a path) and C{MLSD} list a
        directory over the data connection; C{NLST} of a path gives paths
        a client can use as they are.
        """
        self.session.login()
        self.session.send("MKD d")
        self.session.upload("STOR d/b.txt", b"bb")
        self.session.upload("STOR d/a.txt", b"a")
        self.session.send("MKD d/sub")
        self.assertEqual(self.session.download("NLST d")[1], b"d/a.txt\r\nd/b.txt\r\nd/sub\r\n")
        self.session.send("CWD d")
        self.assertEqual(self.session.download("NLST")[1], b"a.txt\r\nb.txt\r\nsub\r\n")
        replies, listing = self.session.download("MLSD")
        self.assertEqual(
            listing.decode("utf-8").splitlines(),
            [
                "type=file;size=1;modify=20231114221320;perm=adfrw; a.txt",
                "type=file;size=2;modify=20231114221320;perm=adfrw; b.txt",
                "type=dir;modify=20231114221320;perm=cdeflmp; sub",
            ],
        )
        self.assertEqual(replies[-1], "226 Transfer Complete.")
        lines = self.session.download("LIST")[1].decode("utf-8").splitlines()
        self.assertEqual([line.split()[0] for line in lines], ["-rw-r--r--", "-rw-r--r--", "drwxr-xr-x"])
        self.assertEqual([line.split()[-1] for line in lines], ["a.txt", "b.txt", "sub"])

    def nlst(self, argument: str) -> list[str]:
        """
        The lines C{NLST argument} sends, after checking it answered
        C{125} then C{226}.
        """
        replies, listing = self.session.download(f"NLST {argument}".rstrip())
        self.assertEqual([reply[:4] for reply in replies], ["125 ", "226 "], argument)
        return listing.decode("utf-8").splitlines()

    def tree(self) -> None:
        """
        Log in and make C{/d} with C{a.txt}, C{b.txt} and C{sub}, and
        C{/top.txt}.
        """
        self.session.login()
        self.session.send("MKD d")
        self.session.upload("STOR d/a.txt", b"a")
        self.session.upload("STOR d/b.txt", b"bb")
        self.session.send("MKD d/sub")
        self.session.upload("STOR top.txt", b"t")

    def test_nlst_paths(self) -> None:
        """
        C{NLST} of a directory lists its entries as paths starting with the
        argument (as vsftpd and proftpd do, so that C{RETR} of each line
        works); of a file, names the file; of nothing or C{.}, lists the
        working directory by name.
        """
        self.tree()
        entries = ["d/a.txt", "d/b.txt", "d/sub"]
        self.assertEqual(self.nlst("d"), entries)
        self.assertEqual(self.nlst("d/"), entries)
        self.assertEqual(self.nlst("/d"), ["/d/a.txt", "/d/b.txt", "/d/sub"])
        self.assertEqual(self.nlst("/"), ["/d", "/top.txt"])
        self.assertEqual(self.nlst("d/a.txt"), ["d/a.txt"])
        self.assertEqual(self.nlst("top.txt"), ["top.txt"])
        self.assertEqual(self.nlst("/top.txt"), ["/top.txt"])
        self.assertEqual(self.nlst(""), ["d", "top.txt"])
        self.assertEqual(self.nlst("."), ["d", "top.txt"])
        self.session.send("CWD d")
        self.assertEqual(self.nlst("sub"), [])
        self.assertEqual(self.nlst(".."), ["../d", "../top.txt"])

    def test_nlst_glob(self) -> None:
        """
        A glob in the last segment of an C{NLST} path filters the entries
        of the directory before it; matching nothing is an empty listing.
        """
        self.tree()
        self.assertEqual(self.nlst("d/*.txt"), ["d/a.txt", "d/b.txt"])
        self.assertEqual(self.nlst("*.txt"), ["top.txt"])
        self.assertEqual(self.nlst("d/[ab].*"), ["d/a.txt", "d/b.txt"])
        self.assertEqual(self.nlst("/*.txt"), ["/top.txt"])
        self.assertEqual(self.nlst("d/?.none"), [])
        self.assertEqual(
            self.session.download("NLST top.txt/*")[0], ["550 /top.txt: not a directory"]
        )

    def test_list_missing(self) -> None:
        """
        C{NLST} and C{LIST} of a path that does not exist answer C{550}
        before any transfer starts (a C{226} without a C{125} would leave
        ftplib waiting for a second reply).
        """
        self.tree()
        for command in ["NLST nope", "NLST nope/*.txt", "LIST nope", "LIST nope/*.txt"]:
            replies, listing = self.session.download(command)
            self.assertEqual(replies, ["550 /nope: no such file or directory"], command)
            self.assertEqual(listing, b"")

    def test_list_arguments(self) -> None:
        """
        C{LIST} of a directory lists its entries by name, ignores the C{ls}
        options clients put first, and takes a glob in the last segment.
        """
        self.tree()

        def names(argument: str) -> list[str]:
            replies, listing = self.session.download(f"LIST {argument}".rstrip())
            self.assertEqual([reply[:4] for reply in replies], ["125 ", "226 "], argument)
            return [line.split()[-1] for line in listing.decode("utf-8").splitlines()]

        self.assertEqual(names("d"), ["a.txt", "b.txt", "sub"])
        self.assertEqual(names("-la d"), ["a.txt", "b.txt", "sub"])
        self.assertEqual(names("-l"), ["d", "top.txt"])
        self.assertEqual(names("-a -l d/sub"), [])
        self.assertEqual(names("d/*.txt"), ["a.txt", "b.txt"])
        self.assertEqual(names("d/a.txt"), ["a.txt"])

    def test_mlsd_file(self) -> None:
        """
        C{MLSD} of a file is refused.
        """
        self.session.login()
        self.session.upload("STOR f", b"x")
        self.session.data()
        self.assertEqual(self.session.send("MLSD f"), ["501 f: not a directory"])

    def test_mlst(self) -> None:
        """
        C{MLST} gives the facts of one path; C{OPTS MLST} selects them, and
        C{FEAT} shows the selection.
        """
        self.session.login()
        self.session.send("MKD d")
        self.session.upload("STOR d/f", b"hello")
        self.assertEqual(
            self.session.send("MLST d"),
            ["250-Listing /d", " type=dir;modify=20231114221320;perm=cdeflmp; /d", "250 End"],
        )
        self.assertEqual(self.session.send("OPTS MLST size;TYPE;bogus;"), ["200 MLST OPTS type;size;"])
        self.assertEqual(
            self.session.send("MLST /d/f"),
            ["250-Listing /d/f", " type=file;size=5; /d/f", "250 End"],
        )
        self.assertIn(" MLST type*;size*;modify;perm;", self.session.send("FEAT"))
        self.assertEqual(self.session.send("OPTS MODE Z"), ["501 Option 'MODE Z' not understood."])

    def test_size_of_directory(self) -> None:
        """
        C{SIZE} is only for files.
        """
        self.session.login()
        self.session.send("MKD d")
        self.assertEqual(self.session.send("SIZE d"), ["550 d: not a regular file"])

    def test_rename(self) -> None:
        """
        C{RNFR} checks the source exists; C{RNTO} renames.
        """
        self.session.login()
        self.assertEqual(self.session.send("RNFR nope"), ["550 /nope: no such file or directory"])
        self.session.upload("STOR a", b"data")
        self.assertEqual(
            self.session.send("RNFR a"), ["350 Requested file action pending further information."]
        )
        self.assertEqual(self.session.send("RNTO b"), ["250 Requested File Action Completed OK"])
        self.assertEqual(self.session.download("RETR b")[1], b"data")
        self.assertEqual(self.session.send("DELE b"), ["250 Requested File Action Completed OK"])
        self.assertEqual(self.session.send("DELE b"), ["550 /b: no such file"])

    def test_traversal(self) -> None:
        """
        No path leaves the root: climbing above it is refused, and names
        with backslashes, control characters or invalid UTF-8 are refused.
        """
        self.session.login()
        self.session.send("MKD d")
        self.session.send("CWD d")
        for command in ["CWD ../..", "CWD /../etc", "SIZE ../../etc/passwd", "RNFR ../../x"]:
            self.assertEqual(self.session.send(command)[0][:4], "550 ", command)
        self.assertEqual(self.session.send("SIZE ..\\..\\etc")[0][:4], "553 ")
        self.assertEqual(self.session.send(b"MKD \xff\xfe")[0][:4], "553 ")
        self.assertEqual(self.session.send("MKD a\x01b")[0][:4], "553 ")
        self.assertEqual(self.session.send("PWD"), ['257 "/d"'])

    def test_utf8_names(self) -> None:
        """
        Names are UTF-8 on the wire, in commands and listings.
        """
        self.session.login()
        self.session.upload("STOR h\u00e9llo \u2603.txt", b"x")
        self.assertEqual(self.session.download("NLST")[1], "h\u00e9llo \u2603.txt\r\n".encode())

    def test_epsv(self) -> None:
        """
        C{EPSV} listens on the address the client reached; C{EPSV ALL}
        then rules out C{PASV}.
        """
        self.session.login()
        self.session.data("EPSV")
        self.assertEqual(
            self.session.passive_replies, ["229 Entering Extended Passive Mode (|||0|)."]
        )
        self.assertEqual(self.reactor.tcpServers[-1][3], "127.0.0.1")
        self.assertEqual(self.session.upload("STOR f", b"data")[-1], "226 Transfer Complete.")
        self.assertEqual(self.session.download("RETR f")[1], b"data")
        self.assertEqual(self.session.send("EPSV 3")[0][:4], "522 ")
        self.assertEqual(self.session.send("EPSV 3")[0][:4], "522 ")
        self.assertEqual(self.session.send("EPSV ALL"), ["200 EPSV ALL OK"])
        self.assertEqual(self.session.send("PASV")[0][:4], "503 ")

    def test_data_connection_timeout(self) -> None:
        """
        A client that never opens the data connection gets 425.
        """
        self.session.login()
        self.session.send("PASV")
        self.reactor.advance(10)
        self.assertEqual(self.session.replies(), ["425 Can't open data connection."])

    def test_transfers_log_nothing(self) -> None:
        """
        Passive transfers, a data connection from another host and one
        that never comes add nothing to the log (Twisted's own data
        connection factory logs five lines a transfer).
        """
        self.session.login()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.assertEqual(self.session.upload("STOR f", b"data")[-1], "226 Transfer Complete.")
        self.assertEqual(self.session.download("RETR f")[1], b"data")
        self.session.send("PASV")
        self.assertIsNone(self.reactor.tcpServers[-1][1].buildProtocol(IPv4Address("TCP", "10.9.8.7", 4000)))
        self.reactor.advance(10)
        self.assertEqual(self.session.replies(), ["425 Can't open data connection."])
        self.assertEqual([formatEvent(event) for event in logged], [])

    def test_data_connection_from_elsewhere(self) -> None:
        """
        Only the client's host may open the data connection.
        """
        self.session.login()
        self.session.send("PASV")
        factory = self.reactor.tcpServers[-1][1]
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "10.9.8.7", 4000)))

    def test_active_mode_refused(self) -> None:
        """
        C{PORT} and C{EPRT} are refused.
        """
        self.session.login()
        for command in ["PORT 10,0,0,1,4,1", "EPRT |1|10.0.0.1|1025|"]:
            self.assertEqual(
                self.session.send(command), ["502 Active mode is not supported; use PASV or EPSV."]
            )
        self.assertEqual(self.reactor.tcpClients, [])

    def test_transfer_needs_data_connection(self) -> None:
        """
        Transfers without a data connection are out of sequence.
        """
        self.session.login()
        for command in ["RETR f", "STOR f", "APPE f", "MLSD"]:
            self.assertEqual(self.session.send(command)[0][:4], "503 ")

    def test_missing_argument(self) -> None:
        """
        Commands missing their argument get 501.
        """
        self.session.login()
        self.assertEqual(self.session.send("RETR"), ["501 Wrong arguments for RETR."])

    def test_abort(self) -> None:
        """
        C{ABOR} closes any data connection and answers 226.
        """
        self.session.login()
        transport = self.session.data()
        self.assertEqual(self.session.send("ABOR"), ["226 Abort successful"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.session.send("RETR f")[0][:4], "503 ")

    def test_lost_connection_aborts_upload(self) -> None:
        """
        Losing the control connection in the middle of an upload logs the
        session out, which aborts the upload: nothing is stored.
        """
        self.session.login()
        self.session.data()
        self.session.send("STOR f")
        self.session.dtp.dataReceived(b"0123456789")
        self.session.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.session.dtp.transport.producerState, "stopped")
        self.assertTrue(self.session.dtp.transport.disconnecting)
        self.session.dtp.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(self.kv.list_keys("f", None, 10)).keys, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_lost_connection_during_download(self) -> None:
        """
        Losing the control connection in the middle of a download stops it
        and closes the data connection; the late answer goes nowhere.
        """
        self.session.login()
        self.session.upload("STOR f", b"0123456789")
        transport = self.session.data()
        self.kv.hold(on("get", "chunk"))
        self.session.send("RETR f")
        self.session.protocol.connectionLost(Failure(ConnectionDone()))
        self.kv.hold(None)
        self.kv.release_all()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_new_passive_closes_old(self) -> None:
        """
        A new C{PASV} or C{EPSV} closes the data connection left unused.
        """
        self.session.login()
        first = self.session.data()
        self.session.data("EPSV")
        self.assertTrue(first.disconnecting)

    def test_idle_timeout(self) -> None:
        """
        An idle session is disconnected after the factory's timeout.
        """
        self.session.login()
        self.reactor.advance(self.factory.timeOut)
        self.assertTrue(self.session.transport.disconnecting)

    def test_quit(self) -> None:
        """
        C{QUIT} says goodbye and leaves no timers behind.
        """
        self.session.login()
        self.assertEqual(self.session.send("QUIT"), ["221 Goodbye."])
        self.session.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_needs_tcp_reactor(self) -> None:
        """
        The clock must be a reactor able to listen for data connections.
        """
        from twisted.internet.task import Clock

        self.assertRaises(TypeError, build_ftp_factory, self.kv, USERS, clock=Clock())


class _BusyPortsReactor(MemoryReactorClock):
    """
    A memory reactor on which the given ports are taken.
    """

    def __init__(self, busy: set[int]) -> None:
        super().__init__()
        self.busy = busy

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.busy:
            raise CannotListenError(interface, port, OSError("address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


class PassiveModeTests(SynchronousTestCase):
    """
    A node behind NAT announces its public address in C{PASV} and keeps its
    data connections to the range of ports opened (or published) for them.
    """

    def session(self, busy: tuple[int, ...] = (), **passive: Any) -> Session:
        self.reactor = _BusyPortsReactor(set(busy))
        kv = ControlledKeyValue(LocalKeyValue(self.reactor))
        factory = build_ftp_factory(kv, USERS, clock=self.reactor, **passive)
        session = Session(factory, self.reactor)
        session.login()
        return session

    def test_passive_address_announced(self) -> None:
        """
        C{PASV} names C{passive_address}, while the data port listens on the
        address the client reached, and a transfer works through it.
        """
        session = self.session(passive_address="203.0.113.7", passive_ports=(30000, 30009))
        self.assertEqual(session.upload("STOR f", b"data")[-1], "226 Transfer Complete.")
        self.assertEqual(
            session.passive_replies, ["227 Entering Passive Mode (203,0,113,7,117,48)."]
        )
        port, _, _, interface = self.reactor.tcpServers[-1]
        self.assertEqual((port, interface), (30000, "127.0.0.1"))

    def test_passive_ports_range(self) -> None:
        """
        Ports of the range in use are skipped, for C{PASV} and C{EPSV}
        alike; with every one taken the client gets C{425}, and the session
        goes on.
        """
        session = self.session(busy=(30000,), passive_ports=(30000, 30001))
        session.data("EPSV")
        self.assertEqual(session.passive_replies, ["229 Entering Extended Passive Mode (|||30001|)."])
        self.reactor.busy.add(30001)
        self.assertEqual(
            session.send("PASV"), ["425 Can't open data connection: every passive port is in use."]
        )
        self.reactor.busy.clear()
        self.assertEqual(session.upload("STOR f", b"data")[-1], "226 Transfer Complete.")
        self.assertEqual(self.reactor.tcpServers[-1][0], 30000)


class FTPClientTests(SynchronousTestCase):
    """
    Twisted's L{FTPClient} against the server, both over L{iosim}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.kv = LocalKeyValue(self.reactor)
        factory = build_ftp_factory(self.kv, USERS, clock=self.reactor, max_file_bytes=10**7)
        self.pumps: list[iosim.IOPump] = []
        self.client = ftp.FTPClient("alice", "wonderland", passive=1)
        self.client.connectFactory = self.connect_data
        server = factory.buildProtocol(PEER)
        self.pumps.append(
            iosim.connect(
                server,
                iosim.FakeTransport(server, True, HOST, PEER),
                self.client,
                iosim.FakeTransport(self.client, False, PEER, HOST),
            )
        )
        self.pump()

    def connect_data(self, host: str, port: int, factory: Any) -> None:
        server_factory = self.reactor.tcpServers[-1][1]
        server = server_factory.buildProtocol(PEER)
        client = factory.buildProtocol(HOST)
        self.pumps.append(
            iosim.connect(
                server,
                iosim.FakeTransport(server, True, HOST, PEER),
                client,
                iosim.FakeTransport(client, False, PEER, HOST),
            )
        )

    def pump(self) -> None:
        while any([pump.pump() for pump in list(self.pumps)]):
            pass

    def result(self, deferred: Deferred[Any]) -> Any:
        self.pump()
        return self.successResultOf(deferred)

    def test_session(self) -> None:
        """
        Store a file, list it, read it back with the same digest, rename it,
        remove it.
        """
        data = bytes(range(256)) * 5000
        self.result(self.client.makeDirectory("docs"))
        self.result(self.client.cwd("docs"))
        consumer, stored = self.client.storeFile("big.bin")
        sender = self.result(consumer)
        sender.write(data[:700_000])
        sender.write(data[700_000:])
        sender.finish()
        self.result(stored)

        listing = ftp.FTPFileListProtocol()
        self.result(self.client.list(".", listing))
        self.assertEqual(
            [(f["filename"], f["size"]) for f in listing.files], [("big.bin", len(data))]
        )

        received = Sink()
        self.result(self.client.retrieveFile("big.bin", received))
        self.assertEqual(hashlib.sha256(received.data).digest(), hashlib.sha256(data).digest())

        self.result(self.client.rename("big.bin", "/moved.bin"))
        self.result(self.client.cdup())
        self.assertEqual(self.result(self.client.pwd()), ['257 "/"'])
        partial = Sink()
        self.result(self.client.retrieveFile("moved.bin", partial, offset=1_000_000))
        self.assertEqual(partial.data, data[1_000_000:])
        self.result(self.client.removeFile("moved.bin"))
        self.result(self.client.removeDirectory("docs"))
        failed = self.client.removeFile("moved.bin")
        self.pump()
        self.failureResultOf(failed, ftp.CommandFailed)


class _TLSStringTransport(StringTransport):
    """
    A L{StringTransport} recording the TLS settings it was asked to start.
    """

    started_tls: Any = None

    def startTLS(self, options: Any) -> None:
        self.started_tls = options


class ExplicitTLSTests(SynchronousTestCase):
    """
    Explicit FTPS (RFC 4217): the commands, in the order a server that
    requires TLS accepts them.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW)
        self.options = CertificateOptions()
        factory = build_ftp_factory(
            LocalKeyValue(self.reactor), USERS, clock=self.reactor, tls=self.options
        )
        self.session = Session(factory, self.reactor)
        self.session.transport = _TLSStringTransport(hostAddress=HOST, peerAddress=PEER)
        self.session.protocol = factory.buildProtocol(PEER)
        self.session.protocol.makeConnection(self.session.transport)
        self.session.replies()

    def secure(self) -> None:
        self.assertEqual(
            self.session.send("AUTH TLS"), ["234 AUTH TLS successful; start the TLS handshake."]
        )

    def test_features(self) -> None:
        """
        C{FEAT} adds C{AUTH TLS}, C{PBSZ} and C{PROT}, before any login.
        """
        features = self.session.send("FEAT")
        for feature in (" AUTH TLS", " PBSZ", " PROT"):
            self.assertIn(feature, features)

    def test_login_requires_tls(self) -> None:
        """
        A login before C{AUTH TLS} is refused with 530, saying why; after
        it, the same login succeeds.
        """
        refused = self.session.send("USER alice")
        self.assertEqual(len(refused), 1)
        self.assertTrue(refused[0].startswith("530 "), refused)
        self.assertIn("AUTH TLS", refused[0])
        self.assertEqual(self.session.send("PASS wonderland"), ["503 Incorrect sequence of commands: USER required before PASS"])
        self.secure()
        self.session.login()
        self.assertEqual(self.session.send("PWD"), ['257 "/"'])

    def test_auth_starts_tls_after_its_reply(self) -> None:
        """
        C{AUTH TLS} answers 234 in the clear, then starts TLS with the
        factory's settings; a second one, or another mechanism, is refused.
        """
        transport = self.session.transport
        self.assertEqual(self.session.send("AUTH SSL")[0][:4], "234 ")
        self.assertIs(transport.started_tls, self.options)
        self.assertEqual(self.session.send("AUTH TLS"), ["503 TLS is already in use."])

    def test_unknown_mechanism(self) -> None:
        """
        C{AUTH KERBEROS} is not supported (504), and TLS is not started.
        """
        self.assertEqual(
            self.session.send("AUTH KERBEROS"), ["504 AUTH KERBEROS not supported; use AUTH TLS."]
        )
        self.assertIsNone(self.session.transport.started_tls)

    def test_protection_levels(self) -> None:
        """
        C{PBSZ} and C{PROT} need C{AUTH TLS} first, C{PROT} needs C{PBSZ};
        C{PROT C} is refused (534), C{S} and C{E} too (536), C{P} accepted.
        """
        self.assertEqual(self.session.send("PBSZ 0"), ["503 PBSZ requires AUTH TLS first."])
        self.assertEqual(self.session.send("PROT P"), ["503 PROT requires AUTH TLS first."])
        self.secure()
        self.assertEqual(self.session.send("PROT P"), ["503 PROT requires PBSZ 0 first."])
        self.assertEqual(self.session.send("PBSZ 0"), ["200 PBSZ=0"])
        self.assertEqual(
            self.session.send("PROT C"), ["534 Data connections must be protected: use PROT P."]
        )
        self.assertEqual(
            self.session.send("PROT S"), ["536 Protection level S not supported; use PROT P."]
        )
        self.assertEqual(
            self.session.send("PROT P"), ["200 Protection level set to P (private)."]
        )

    def test_data_connections_are_tls(self) -> None:
        """
        A passive data connection before C{PROT P} is refused (521); after
        it, the passive port listens behind TLS with the control
        connection's settings (so the session can be resumed), and still
        accepts only the client's host.
        """
        self.secure()
        self.session.login()
        self.assertEqual(
            self.session.send("PASV"),
            ["521 Data connections must be protected: send PBSZ 0 and PROT P first."],
        )
        self.assertEqual(self.reactor.tcpServers, [])
        self.session.send("PBSZ 0")
        self.session.send("PROT P")
        self.assertEqual(self.session.send("EPSV")[0][:4], "229 ")
        listening = self.reactor.tcpServers[-1][1]
        self.assertIsInstance(listening, TLSMemoryBIOFactory)
        self.assertIs(listening.wrappedFactory, self.session.protocol.wrappedProtocol.dtpFactory)
        # One settings object, one OpenSSL context: the control connection's
        # TLS session is in its cache.
        self.assertIsNone(listening.buildProtocol(IPv4Address("TCP", "10.0.0.9", 50001)))
        data = listening.buildProtocol(IPv4Address("TCP", PEER.host, 50001))
        data.makeConnection(StringTransport(hostAddress=HOST, peerAddress=PEER))
        self.assertIs(data._tlsConnection.get_context(), self.options.getContext())


class PlainFTPTests(SynchronousTestCase):
    """
    Without TLS settings, the FTPS commands are unknown.
    """

    def test_tls_commands_not_implemented(self) -> None:
        """
        C{AUTH}, C{PBSZ} and C{PROT} answer 502; C{FEAT} does not list them.
        """
        reactor = MemoryReactorClock()
        session = Session(build_ftp_factory(LocalKeyValue(reactor), USERS, clock=reactor), reactor)
        for command in ("AUTH", "PBSZ", "PROT"):
            self.assertEqual(
                session.send(f"{command} X"), [f"502 Command '{command}' not implemented"]
            )
        self.assertNotIn(" PBSZ", session.send("FEAT"))


class UserAreaTests(SynchronousTestCase):
    """
    The users of the cluster file log in to their C{files} area; failed
    logins slow their address down.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW)
        self.kv = LocalKeyValue(self.reactor)
        carol = User(name="carol", password="plain:c", grant=Grant("carol", files="/carol/"))
        dave = User(name="dave", password="plain:d", grant=Grant("dave"))
        self.throttle = LoginThrottle(free=2)
        self.checks = HeldChecks()
        self.factory = build_ftp_factory(
            self.kv,
            USERS,
            clock=self.reactor,
            accounts={"carol": carol, "dave": dave},
            logins=Logins(self.throttle, self.reactor, self.checks),
        )

    def send(self, session: Session, line: str) -> list[str]:
        """
        Send C{line}, answering the password checks it asks for.
        """
        session.protocol.dataReceived(line.encode("utf-8") + b"\r\n")
        while self.checks.pending:
            self.checks.answer()
        return session.replies()

    def test_confined(self) -> None:
        """
        A user's session sees her area (created at her first login) as
        C{/} and cannot climb out of it; C{[ftp_users]} users see the whole
        tree; a user without a files area cannot log in.
        """
        carol = Session(self.factory, self.reactor)
        carol.send("USER carol")
        self.send(carol, "PASS c")
        self.assertEqual(carol.send("PWD"), ['257 "/"'])
        self.assertEqual(carol.upload("STOR a.txt", b"A")[-1][:4], "226 ")
        self.assertEqual(carol.send("CWD ..")[0][:4], "550 ")
        self.assertEqual(carol.send("SIZE /carol/a.txt")[0][:4], "550 ")
        alice = Session(self.factory, self.reactor)
        alice.send("USER alice")
        self.send(alice, "PASS wonderland")
        self.assertEqual(alice.send("SIZE /carol/a.txt"), ["213 1"])
        dave = Session(self.factory, self.reactor)
        dave.send("USER dave")
        self.assertEqual(self.send(dave, "PASS d"), ["530 Sorry, Authentication failed."])

    def test_throttled(self) -> None:
        """
        Past the free failures an address is answered C{421} and cut off,
        good password or not, until its delay has passed.
        """
        for _ in range(3):
            session = Session(self.factory, self.reactor)
            session.send("USER alice")
            self.assertEqual(self.send(session, "PASS nope"), ["530 Sorry, Authentication failed."])
        session = Session(self.factory, self.reactor)
        session.send("USER alice")
        self.assertEqual(self.send(session, "PASS wonderland")[0][:4], "421 ")
        self.assertTrue(session.transport.disconnecting)
        self.reactor.advance(1)
        session = Session(self.factory, self.reactor)
        session.send("USER alice")
        self.assertEqual(self.send(session, "PASS wonderland"), ["230 User logged in, proceed"])

    def test_checked_off_the_reactor(self) -> None:
        """
        A password is answered once its check is done, other sessions
        going on meanwhile; logins sent in parallel from one address are
        checked one after the other and refused (C{421}) as soon as the
        same logins one by one would be: with two free failures, the
        fourth is never checked.
        """
        sessions = [Session(self.factory, self.reactor) for _ in range(4)]
        for session in sessions:
            session.send("USER alice")
            self.assertEqual(session.send("PASS nope"), [])
        self.assertEqual(len(self.checks.pending), 1)
        carol = Session(self.factory, self.reactor)
        self.assertEqual(carol.send("FEAT")[0], "211-Features:")
        for _ in range(3):
            self.checks.answer()
        self.assertEqual(
            [session.replies()[0][:4] for session in sessions], ["530 ", "530 ", "530 ", "421 "]
        )
        self.assertEqual(self.checks.pending, [])

    def test_busy(self) -> None:
        """
        While logins from L{MAX_CHECKING_ADDRESSES} addresses wait for
        their checks, a login from another address is answered C{421} at
        once and cut off, and not counted as a failed login.
        """
        for index in range(MAX_CHECKING_ADDRESSES):
            session = Session(self.factory, self.reactor, IPv4Address("TCP", f"10.1.0.{index}", 50000))
            session.send("USER alice")
            self.assertEqual(session.send("PASS nope"), [])
        other = IPv4Address("TCP", "10.2.0.1", 50000)
        late = Session(self.factory, self.reactor, other)
        late.send("USER alice")
        self.assertEqual(
            late.send("PASS wonderland"),
            ["421 Too many logins are being checked; try again later."],
        )
        self.assertTrue(late.transport.disconnecting)
        self.assertEqual(len(self.checks.pending), MAX_CHECKING_ADDRESSES)
        self.assertEqual(self.throttle.retry_after(other.host, self.reactor.seconds()), 0)
        self.checks.answer()
        again = Session(self.factory, self.reactor, other)
        again.send("USER alice")
        self.assertEqual(self.send(again, "PASS wonderland"), ["230 User logged in, proceed"])


class UploadEndTests(SynchronousTestCase):
    """
    An upload is stored only if its data connection ended cleanly.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW)
        self.kv = LocalKeyValue(self.reactor)
        self.session = Session(build_ftp_factory(self.kv, USERS, clock=self.reactor), self.reactor)
        self.session.login()

    def test_reset_aborts(self) -> None:
        """
        A data connection lost (reset, or TLS closed without close-notify)
        in the middle of an upload answers 426 and stores nothing.
        """
        self.session.data()
        replies = self.session.send("STOR cut.bin")
        self.session.dtp.dataReceived(b"x" * 100)
        self.session.dtp.connectionLost(Failure(ConnectionLost()))
        replies += self.session.replies()
        self.assertEqual(
            replies[-1],
            "426 Data connection lost before the end of the upload; transfer aborted.",
        )
        self.assertEqual(self.session.send("SIZE cut.bin")[0][:4], "550 ")

    def test_clean_end_stores(self) -> None:
        """
        A data connection closed cleanly ends the upload, which is stored.
        """
        replies = self.session.upload("STOR whole.bin", b"y" * 100)
        self.assertEqual(replies[-1][:4], "226 ")
        self.assertEqual(self.session.send("SIZE whole.bin"), ["213 100"])
