# -*- test-case-name: tests.test_ftp -*-
"""
The FTP front end: Twisted's FTP server over the cluster's file system.

L{build_ftp_factory} wires together a twisted.cred portal (users from the
C{[ftp_users]} section, optionally anonymous read-only access), a realm
handing out one L{FileShell} per session, and L{FileFTP}, Twisted's
protocol with what clients such as FileZilla, lftp, curl and ftplib
expect added on top:

  - C{FEAT} lists C{EPSV}, C{MDTM}, C{MLST type*;size*;modify*;perm*;},
    C{PASV}, C{REST STREAM}, C{SIZE}, C{TVFS} and C{UTF8};
  - C{OPTS UTF8 ON} (paths are always UTF-8) and C{OPTS MLST <facts>};
  - C{MLST} and C{MLSD} with the RFC 3659 facts C{type}, C{size},
    C{modify} and C{perm};
  - C{REST <offset>} before C{RETR} (resume a download) or C{STOR} (resume
    an upload), and C{APPE};
  - C{PASV} and C{EPSV} listen on the address the client reached (on a
    port of the node's C{ftp_passive_ports} when it has them), and only
    accept the data connection from the client's own host; C{PASV}
    announces the node's C{ftp_passive_address} when it has one (the public
    address of a server behind NAT), else the address reached; active mode
    (C{PORT}, C{EPRT}) is refused, so the server is never used to connect
    elsewhere;
  - C{NLST dir} lists the entries as paths (C{dir/a.txt}, as vsftpd and
    proftpd do), C{LIST dir} by name; both take a glob in the last segment,
    ignore leading C{ls} options and refuse a missing path with C{550};
  - C{RNFR} checks that its path exists; C{SIZE} refuses directories; C{ABOR};
  - explicit FTPS (RFC 4217) when the factory has TLS settings: C{AUTH TLS}
    (C{FEAT} lists C{AUTH TLS}, C{PBSZ} and C{PROT}) must come before the
    login, C{PBSZ 0} and C{PROT P} before any data connection, which is
    then TLS too (C{PROT C} is refused).  Data connections use the control
    connection's TLS settings, so they can resume its TLS session, as
    FileZilla does.

Transfers are always binary (C{TYPE A} is accepted and ignored).  Paths are
resolved against the working directory by L{twisted.protocols.ftp.toSegments}
(which refuses to climb above the root) and then checked by
L{twisted_kv.files.FSPath}, so they never leave the file system's root.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import time
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from twisted.cred.checkers import ANONYMOUS, AllowAnonymousAccess, ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IConsumer, IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols import ftp
from twisted.python.failure import Failure
from twisted.python.filepath import Permissions
from zope.interface import implementer

from twisted_kv._compat import set_rename_source, validate_network_protocol
from twisted_kv.core.passwords import check_stored, hash_password
from twisted_kv.core.users import LoginThrottle, User
from twisted_kv.errors import (
    InsufficientStorage,
    InvalidRequest,
    KVError,
    LoginsBusy,
    OutcomeUnknown,
    PreconditionFailed,
    TooManyLogins,
    Unavailable,
    ValueTooLarge,
)
from twisted_kv.files import (
    DEFAULT_MAX_FILE_BYTES,
    BadPath,
    Download,
    Entry,
    FileChanged,
    FileSystem,
    ROOT,
    FSPath,
    TransferAborted,
    Upload,
    UploadExpired,
)
from twisted_kv.interfaces import IKeyValue
from twisted_kv.logins import CheckPassword, Logins, check_now
from twisted_kv.tls import tls_server_factory

__all__ = ["FileFTP", "FileRealm", "FileShell", "PasswordChecker", "build_ftp_factory"]


class FTPReply(ftp.FTPCmdError):
    """
    A failed command, answered with C{code} and C{message}.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def response(self) -> str:
        return f"{self.code} {self.message}"


# How each failure of the file system or the store is answered: the first
# matching class wins.  4xx replies tell the client to try again later.
_REPLY_CODES: Sequence[tuple[type[KVError], int]] = (
    (BadPath, 553),
    (FileChanged, 450),
    (Unavailable, 450),
    (OutcomeUnknown, 451),
    (UploadExpired, 451),
    (TransferAborted, 426),
    (ValueTooLarge, 552),
    (InsufficientStorage, 552),
    (PreconditionFailed, 550),
    (InvalidRequest, 501),
)


def ftp_error(error: KVError) -> FTPReply:
    """
    The FTP reply for a failure of the file system or of the store; most
    are C{550}, transient ones C{45x}, size limits C{552}.
    """
    for kind, code in _REPLY_CODES:
        if isinstance(error, kind):
            return FTPReply(code, error.message)
    return FTPReply(451 if error.status >= 500 else 550, error.message)


def _translate(failure: Failure) -> Failure:
    if isinstance(failure.value, KVError):
        return Failure(ftp_error(failure.value))
    return failure


@implementer(ftp.IReadFile)
class _ReadFile:
    def __init__(self, download: Download, offset: int, opened: set[Download]) -> None:
        self._download = download
        self._offset = offset
        self._opened = opened
        opened.add(download)

    def send(self, consumer: IConsumer) -> Deferred[Any]:
        def forget(result: object) -> object:
            self._opened.discard(self._download)
            return result

        return (
            self._download.send(consumer, self._offset)
            .addBoth(forget)
            .addErrback(_translate)
        )


@implementer(ftp.IWriteFile)
class _WriteFile:
    def __init__(self, upload: Upload, opened: set[Upload]) -> None:
        self._upload = upload
        self._opened = opened
        opened.add(upload)

    def receive(self) -> Deferred[IConsumer]:
        return succeed(self._upload)

    def close(self) -> Deferred[object]:
        return self._end(self._upload.finish())

    def abort(self) -> Deferred[object]:
        return self._end(self._upload.abort())

    def _end(self, ending: Deferred[Any]) -> Deferred[object]:
        def forget(result: object) -> object:
            self._opened.discard(self._upload)
            return result

        return ending.addBoth(forget).addErrback(_translate)


def _stat_values(entry: Entry, keys: Iterable[str], read_only: bool) -> list[Any]:
    """
    The values of C{keys} (see L{ftp.IFTPShell.list}) for C{entry}.
    """
    mode = 0o755 if entry.is_directory else 0o644
    if read_only:
        mode &= 0o555
    facts = {
        "size": entry.size,
        "directory": entry.is_directory,
        "permissions": Permissions(mode),
        "hardlinks": 1,
        "modified": entry.modified,
        "owner": "kv",
        "group": "kv",
    }
    return [facts[key] for key in keys]


@implementer(ftp.IFTPShell)
class FileShell:
    """
    One FTP session's view of the file system.  Paths are lists of
    segments from the root; every method returns a Deferred whose failures
    are L{FTPReply}s (or Twisted's own L{ftp.FTPCmdError}s).

    @ivar read_only: refuse every change (anonymous sessions).
    @ivar root: the directory the session sees as C{/}: a user's C{files}
        area; the paths of the session never leave it.
    """

    def __init__(self, fs: FileSystem, read_only: bool = False, root: FSPath = ROOT) -> None:
        self.read_only = read_only
        self.root = root
        self._fs = fs
        self._uploads: set[Upload] = set()
        self._downloads: set[Download] = set()

    def makeDirectory(self, path: Sequence[str]) -> Deferred[None]:
        return self._change(lambda: self._fs.make_directory(self._path(path)))

    def removeDirectory(self, path: Sequence[str]) -> Deferred[None]:
        return self._change(lambda: self._fs.remove_directory(self._path(path)))

    def removeFile(self, path: Sequence[str]) -> Deferred[None]:
        return self._change(
            lambda: self._fs.remove_file(self._path(path)).addCallback(lambda _: None)
        )

    def rename(self, fromPath: Sequence[str], toPath: Sequence[str]) -> Deferred[None]:
        return self._change(lambda: self._fs.rename(self._path(fromPath), self._path(toPath)))

    def access(self, path: Sequence[str]) -> Deferred[None]:
        def directory_only(entry: Entry) -> None:
            if not entry.is_directory:
                raise FTPReply(550, f"{entry.path}: not a directory")

        return self._look(lambda: self._fs.stat(self._path(path))).addCallback(directory_only)

    def stat(self, path: Sequence[str], keys: Iterable[str] = ()) -> Deferred[list[Any]]:
        return self._look(lambda: self._fs.stat(self._path(path))).addCallback(
            _stat_values, keys, self.read_only
        )

    def list(
        self, path: Sequence[str], keys: Iterable[str] = ()
    ) -> Deferred[list[tuple[str, list[Any]]]]:
        async def listing() -> list[tuple[str, list[Any]]]:
            fspath = self._path(path)
            entry = await self._fs.stat(fspath)
            entries = await self._fs.list_directory(fspath) if entry.is_directory else [entry]
            return [
                (child.path.name, _stat_values(child, keys, self.read_only)) for child in entries
            ]

        return self._look(lambda: Deferred.fromCoroutine(listing()))

    def openForReading(self, path: Sequence[str]) -> Deferred[_ReadFile]:
        return self.open_for_reading(path)

    def openForWriting(self, path: Sequence[str]) -> Deferred[_WriteFile]:
        return self.open_for_writing(path)

    def open_for_reading(self, path: Sequence[str], offset: int = 0) -> Deferred[_ReadFile]:
        """
        Open a file to be sent from byte C{offset} on (C{REST}).
        """
        return self._look(lambda: self._fs.open_download(self._path(path))).addCallback(
            _ReadFile, offset, self._downloads
        )

    def open_for_writing(
        self, path: Sequence[str], append: bool = False, resume_at: int = 0
    ) -> Deferred[_WriteFile]:
        """
        Open a file to be stored: replaced, appended to (C{APPE}) or
        rewritten from byte C{resume_at} on (C{REST} then C{STOR}).
        """
        return self._change(
            lambda: self._fs.open_upload(self._path(path), append=append, resume_at=resume_at)
        ).addCallback(_WriteFile, self._uploads)

    def end_session(self) -> None:
        """
        The realm's logout callable: abort the session's unfinished uploads
        (nothing of them is stored) and stop its downloads.
        """
        for upload in list(self._uploads):
            upload.abort()
        for download in list(self._downloads):
            download.stopProducing()

    def _path(self, segments: Sequence[str]) -> FSPath:
        return FSPath.from_segments((*self.root.segments, *segments))

    def _look(self, operation: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        return maybeDeferred(operation).addErrback(_translate)

    def _change(self, operation: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        if self.read_only:
            return fail(ftp.AnonUserDeniedError())
        return self._look(operation)



@implementer(IRealm)
class FileRealm:
    """
    Gives every authenticated session a L{FileShell}: read-only for
    anonymous sessions, inside their C{files} area for the users of the
    cluster file (created at their first login), on the whole tree for
    C{[ftp_users]}.

    @param roots: user name -> the root of the user's file area.
    """

    def __init__(self, fs: FileSystem, roots: Mapping[str, FSPath] = MappingProxyType({})) -> None:
        self._fs = fs
        self._roots = dict(roots)

    def requestAvatar(
        self, avatarId: object, mind: object, *interfaces: Any
    ) -> Deferred[tuple[Any, FileShell, Callable[[], None]]]:
        if ftp.IFTPShell not in interfaces:
            raise NotImplementedError("only IFTPShell avatars are available")
        root = self._roots.get(avatarId, ROOT) if isinstance(avatarId, str) else ROOT
        shell = FileShell(self._fs, read_only=avatarId is ANONYMOUS, root=root)
        created: Deferred[None] = succeed(None)
        if not root.is_root:
            created = maybeDeferred(self._fs.make_directories, root)
            # An existing area is the usual case; any other failure shows
            # on the session's first command.
            created.addErrback(lambda failure: None)
        return created.addCallback(lambda _: (ftp.IFTPShell, shell, shell.end_session))


@implementer(ICredentialsChecker)
class PasswordChecker:
    """
    Checks user names and passwords against stored passwords (see
    L{twisted_kv.core.passwords}).  An unknown user costs as much time as a
    wrong password.

    @raise ValueError: a stored password is malformed (the message names
        the user).
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: dict[str, str], check_password: CheckPassword = check_now) -> None:
        """
        @param users: user name to stored password.
        @param check_password: checks a password (off the reactor thread
            in a node); on the calling thread by default.
        """
        for name, stored in users.items():
            try:
                check_stored(stored)
            except ValueError as error:
                raise ValueError(f"user {name!r}: {error}") from None
        self._users = dict(users)
        self._check_password = check_password
        self._decoy = hash_password("", salt=bytes(16))

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[Any]:
        username: str | bytes = credentials.username
        password: str | bytes = credentials.password
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        stored = self._users.get(username)

        def decided(matches: bool) -> str:
            if not matches or stored is None:
                raise UnauthorizedLogin("wrong user name or password")
            return username

        return self._check_password(stored or self._decoy, password).addCallback(decided)


_MLST_FACTS = ("type", "size", "modify", "perm")
# Why a login is refused with 421 (and the connection closed).
_THROTTLED = "Too many failed logins from your address"
_BUSY = "Too many logins are being checked"
_MLST_KEYS = ("directory", "size", "modified")
_LIST_KEYS = ("size", "directory", "permissions", "hardlinks", "modified", "owner", "group")
_GLOB_CHARACTERS = frozenset("*?[")


def _listing_argument(argument: str) -> tuple[str, Optional[str]]:
    """
    The path a C{LIST} or C{NLST} argument names, and the glob its last
    segment holds, if any.  Leading C{ls} options (C{-la}), which clients
    such as lftp send, are dropped.
    """
    words = argument.split(" ")
    while words and words[0].startswith("-"):
        del words[0]
    path = " ".join(words)
    directory, slash, last = path.rpartition("/")
    if _GLOB_CHARACTERS.intersection(last):
        return directory + slash, last
    return path, None


def _path_prefix(path: str, directory: bool) -> str:
    """
    What turns the names listed for C{path} back into paths relative to
    where C{path} was given: the directory the names are in, as the client
    wrote it, ending in C{/}; nothing for the working directory.
    """
    if not directory:
        parent, slash, _ = path.rstrip("/").rpartition("/")
        return parent + slash
    return path.rstrip("/") + "/" if path not in ("", ".") else ""


class FileFTP(ftp.FTP):
    """
    Twisted's FTP protocol interpreter, completed (see the module
    docstring).  L{FileFTPFactory} gives it a reactor.
    """

    PUBLIC_COMMANDS = ["FEAT", "QUIT", "OPTS", "AUTH", "PBSZ", "PROT"]

    _log = Logger()
    _reactor: Any = None
    _restart_at = 0
    # EPSV ALL was received: PASV is refused from then on (RFC 2428).
    _epsv_all = False
    # What PASV announces instead of the address reached (NAT); set by the factory.
    passive_address: Optional[str] = None
    logout: Optional[Callable[[], None]] = None
    # The TLS settings (Twisted's CertificateOptions) when FTPS is required.
    _tls: Any = None
    # AUTH TLS succeeded; PBSZ 0 was received; PROT P was received.
    _secured = False
    _buffer_size_set = False
    _protect_data = False
    # Set by Twisted's FTP (which has no annotations).
    shell: Any
    transport: Any
    dtpFactory: Any
    dtpPort: Any
    dtpInstance: Any
    workingDirectory: list[str]

    def __init__(self) -> None:
        super().__init__()
        self._mlst_facts = list(_MLST_FACTS)

    @property
    def FEATURES(self) -> list[str]:  # type: ignore[override]
        facts = "".join(
            f"{fact}{'*' if fact in self._mlst_facts else ''};" for fact in _MLST_FACTS
        )
        features = ["EPSV", "MDTM", f"MLST {facts}", "PASV", "REST STREAM", "SIZE", "TVFS", "UTF8"]
        if self._tls is not None:
            features += ["AUTH TLS", "PBSZ", "PROT"]
        return sorted(features)

    # -- explicit FTPS (RFC 4217) ----------------------------------------

    def _tls_required(self, command: str) -> None:
        """
        Refuse C{command} without TLS settings (as an unknown command) or
        before C{AUTH TLS} succeeded.
        """
        if self._tls is None:
            raise ftp.CmdNotImplementedError(command)
        if not self._secured:
            raise FTPReply(503, f"{command} requires AUTH TLS first.")

    def ftp_AUTH(self, mechanism: str) -> Deferred[None]:
        if self._tls is None:
            return fail(ftp.CmdNotImplementedError("AUTH"))
        if mechanism.upper() not in ("TLS", "TLS-C", "SSL"):
            return fail(FTPReply(504, f"AUTH {mechanism} not supported; use AUTH TLS."))
        if self._secured:
            return fail(FTPReply(503, "TLS is already in use."))
        self.sendLine("234 AUTH TLS successful; start the TLS handshake.")
        self.transport.startTLS(self._tls)
        self._secured = True
        return succeed(None)

    def ftp_PBSZ(self, size: str) -> None:
        self._tls_required("PBSZ")
        self._buffer_size_set = True
        self.sendLine("200 PBSZ=0")

    def ftp_PROT(self, level: str) -> None:
        self._tls_required("PROT")
        if not self._buffer_size_set:
            raise FTPReply(503, "PROT requires PBSZ 0 first.")
        level = level.upper()
        if level == "P":
            self._protect_data = True
            self.sendLine("200 Protection level set to P (private).")
            return
        if level == "C":
            raise FTPReply(534, "Data connections must be protected: use PROT P.")
        if level in ("S", "E"):
            raise FTPReply(536, f"Protection level {level} not supported; use PROT P.")
        raise FTPReply(504, f"Unknown protection level {level!r}; use PROT P.")

    def ftp_USER(self, username: str) -> Any:
        if self._tls is not None and not self._secured:
            return fail(
                FTPReply(
                    530,
                    "This server requires explicit FTP over TLS: send AUTH TLS before logging in.",
                )
            )
        return super().ftp_USER(username)

    # -- the command loop ------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        """
        Run one command; read no further command until it is answered.
        Lines are UTF-8 (undecodable bytes end up in names the file system
        refuses).
        """
        self.resetTimeout()
        self.pauseProducing()
        command, space, argument = line.decode("utf-8", "surrogateescape").partition(" ")
        arguments = (argument,) if space else ()
        done = maybeDeferred(self.processCommand, command, *arguments)
        done.addCallbacks(self._answer, self._answer_failure, errbackArgs=(command,))
        done.addBoth(self._next_command)

    def _answer(self, result: object) -> None:
        if isinstance(result, tuple):
            self.reply(*result)
        elif result is not None:
            self.reply(result)

    def _answer_failure(self, failure: Failure, command: str) -> None:
        if failure.check(ftp.FTPCmdError):
            self.sendLine(failure.value.response())
        elif failure.check(TypeError) and "positional argument" in str(failure.value):
            self.sendLine(f"501 Wrong arguments for {command.upper()}.")
        else:
            self._log.failure("FTP command {command} failed", failure, command=command)
            self.reply(ftp.REQ_ACTN_NOT_TAKEN, "internal server error")

    def _next_command(self, ignored: object) -> None:
        transport = self.transport
        if transport is not None and not self.disconnected and not transport.disconnecting:
            self.resumeProducing()

    def sendLine(self, line: str | bytes) -> None:
        if self.transport is None:
            return  # the answer to a command that outlived its connection
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        super().sendLine(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        logout, self.logout = self.logout, None
        if logout is not None:
            logout()
        self._close_data()
        super().connectionLost(reason)

    def ftp_PASS(self, password: str) -> Any:
        """
        Log in, once the address's earlier attempts are counted (see
        L{Logins.attempt}), unless it failed too many logins lately, or
        too many other addresses' logins are being checked: then answer
        C{421} and close the connection.
        """
        logins: Logins = self.factory.logins
        address = str(getattr(self.transport.getPeer(), "host", ""))
        if logins.throttle.retry_after(address, self._reactor.seconds()) > 0:
            self._refuse_login(_THROTTLED)
            return None
        login = super().ftp_PASS

        def refused(failure: Failure) -> None:
            reason = failure.trap(TooManyLogins, LoginsBusy)
            self._refuse_login(_THROTTLED if reason is TooManyLogins else _BUSY)

        return logins.attempt(address, lambda: login(password)).addErrback(refused)

    def _refuse_login(self, why: str) -> None:
        self.sendLine(f"421 {why}; try again later.")
        self.transport.loseConnection()

    def _segments(self, path: str) -> list[str]:
        try:
            return ftp.toSegments(self.workingDirectory, path)
        except ftp.InvalidPath:
            raise FTPReply(550, f"{path}: no such file or directory") from None

    # -- data connections -------------------------------------------------

    def ftp_PASV(self) -> Deferred[None]:
        if self._epsv_all:
            return fail(ftp.BadCmdSequenceError("may not send PASV after EPSV ALL"))
        address = ipaddress.ip_address(self.transport.getHost().host)
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is None:
                return fail(ftp.PASVIPv6NotImplementedError())
            address = address.ipv4_mapped
        shown = self.passive_address or str(address)
        return self._listen_passive(
            lambda port: (ftp.ENTERING_PASV_MODE, ftp.encodeHostPort(shown, port))
        )

    def ftp_EPSV(self, protocol: str = "") -> Any:
        if protocol.upper() == "ALL":
            self._epsv_all = True
            return ftp.EPSV_ALL_OK
        if protocol:
            validate_network_protocol(self, protocol)
        return self._listen_passive(lambda port: (ftp.ENTERING_EPSV_MODE, port))

    def _listen_passive(self, reply: Callable[[int], tuple[str, Any]]) -> Deferred[None]:
        if self._tls is not None and not self._protect_data:
            return fail(
                FTPReply(521, "Data connections must be protected: send PBSZ 0 and PROT P first.")
            )
        self._close_data()
        local = self.transport.getHost().host
        self.dtpFactory = _DataFactory(self, self.transport.getPeer().host, self._reactor)
        listening = self.dtpFactory
        if self._tls is not None:
            listening = tls_server_factory(self._tls, self.dtpFactory, self._reactor)
        try:
            self.dtpPort = self.getDTPPort(listening, interface=local)
        except CannotListenError:
            self.dtpFactory = None
            return fail(FTPReply(425, "Can't open data connection: every passive port is in use."))
        self.dtpFactory.set_timeout(self.dtpTimeout)
        self.reply(*reply(self.dtpPort.getHost().port))

        def refused(failure: Failure) -> None:
            failure.trap(ftp.PortConnectionError)
            raise FTPReply(425, "Can't open data connection.")

        return self.dtpFactory.deferred.addCallbacks(lambda _: None, refused)

    def ftp_PORT(self, address: str) -> Deferred[None]:
        return fail(FTPReply(502, "Active mode is not supported; use PASV or EPSV."))

    def ftp_EPRT(self, address: str) -> Deferred[None]:
        return self.ftp_PORT(address)

    def _data_connection(self) -> Any:
        if self.dtpInstance is None or not self.dtpInstance.isConnected:
            raise ftp.BadCmdSequenceError("PASV or EPSV required first")
        return self.dtpInstance

    def _announce_transfer(self) -> None:
        self.reply(ftp.DATA_CNX_ALREADY_OPEN_START_XFR)

    def _transfer(self, transfer: Deferred[Any]) -> Deferred[Any]:
        """
        Run a transfer without the idle timeout; answer 226 when it is done.
        """
        self.setTimeout(None)

        def done(result: object) -> object:
            self.setTimeout(self.timeOut)
            return result

        return transfer.addCallback(lambda _: (ftp.TXFR_COMPLETE_OK,)).addBoth(done)

    def _close_data(self) -> None:
        """
        Close the data connection, if any, and stop listening for one.
        """
        if self.dtpInstance is not None and self.dtpInstance.transport is not None:
            self.dtpInstance.transport.loseConnection()
        if self.dtpFactory is not None:
            self.cleanupDTP()

    def cleanupDTP(self) -> None:
        """
        Stop listening for a data connection and forget it (Twisted's
        version also handles active mode, which is refused here, and logs
        every step).
        """
        port, self.dtpPort = self.dtpPort, None
        if port is not None:
            port.stopListening()
        factory, self.dtpFactory = self.dtpFactory, None
        if factory is not None:
            factory.stopFactory()
        self.dtpInstance = None

    def ftp_ABOR(self) -> tuple[str]:
        self._close_data()
        return (ftp.CLOSING_DATA_CNX,)

    # -- transfers -------------------------------------------------------

    def ftp_REST(self, marker: str) -> None:
        try:
            offset = int(marker)
        except ValueError:
            raise ftp.CmdArgSyntaxError(marker) from None
        if offset < 0:
            raise ftp.CmdArgSyntaxError(marker)
        self._restart_at = offset
        self.sendLine(f"350 Restarting at {offset}. Send STOR or RETR.")

    def _take_restart(self) -> int:
        offset, self._restart_at = self._restart_at, 0
        return offset

    def ftp_RETR(self, path: str) -> Deferred[Any]:
        offset = self._take_restart()
        dtp = self._data_connection()
        segments = self._segments(path)

        def send(readfile: _ReadFile) -> Deferred[None]:
            self._announce_transfer()
            return readfile.send(dtp)

        return self._transfer(self.shell.open_for_reading(segments, offset).addCallback(send))

    def ftp_STOR(self, path: str) -> Deferred[Any]:
        return self._receive(path, append=False)

    def ftp_APPE(self, path: str) -> Deferred[Any]:
        return self._receive(path, append=True)

    def _receive(self, path: str, append: bool) -> Deferred[Any]:
        offset = self._take_restart()
        dtp = self._data_connection()
        segments = self._segments(path)

        def receive(writefile: _WriteFile) -> Deferred[object]:
            self._announce_transfer()
            received = writefile.receive().addCallback(dtp.registerConsumer)
            return received.addCallbacks(
                lambda _: writefile.close(),
                lambda failure: writefile.abort().addBoth(lambda _: failure),
            )

        opened = self.shell.open_for_writing(segments, append=append, resume_at=offset)
        return self._transfer(opened.addCallback(receive))

    # -- listings and facts ----------------------------------------------

    def ftp_LIST(self, path: str = "") -> Deferred[Any]:
        return self._send_listing(
            path, _LIST_KEYS, lambda dtp, prefix, name, values: dtp.sendListResponse(name, values)
        )

    def ftp_NLST(self, path: str = "") -> Deferred[Any]:
        return self._send_listing(
            path, (), lambda dtp, prefix, name, values: dtp.sendLine(prefix + name)
        )

    def _send_listing(
        self,
        argument: str,
        keys: Sequence[str],
        send_entry: Callable[[Any, bytes, bytes, list[Any]], None],
    ) -> Deferred[Any]:
        """
        Send the entries C{argument} names: the entries of a directory, a
        file alone, or those matching a glob in the last segment.  Each is
        sent with its name and the prefix that turns the name into a path
        as the client wrote it (what C{NLST} shows, as vsftpd and proftpd
        do).  A missing path is refused before the transfer starts.
        """
        dtp = self._data_connection()
        path, pattern = _listing_argument(argument)
        segments = self._segments(path)

        async def listing() -> tuple[str, list[tuple[str, list[Any]]]]:
            (directory,) = await self.shell.stat(segments, ("directory",))
            if pattern is not None and not directory:
                raise FTPReply(550, f"/{'/'.join(segments)}: not a directory")
            entries = await self.shell.list(segments, keys)
            if pattern is not None:
                entries = [entry for entry in entries if fnmatch.fnmatchcase(entry[0], pattern)]
            return _path_prefix(path, directory), entries

        def send(listed: tuple[str, list[tuple[str, list[Any]]]]) -> None:
            prefix, entries = listed
            self._announce_transfer()
            for name, values in entries:
                send_entry(dtp, prefix.encode("utf-8"), name.encode("utf-8"), values)
            dtp.transport.loseConnection()

        return self._transfer(Deferred.fromCoroutine(listing()).addCallback(send))

    def ftp_SIZE(self, path: str) -> Deferred[tuple[str, str]]:
        def size(values: list[Any]) -> tuple[str, str]:
            length, directory = values
            if directory:
                raise FTPReply(550, f"{path}: not a regular file")
            return (ftp.FILE_STATUS, str(length))

        return self.shell.stat(self._segments(path), ("size", "directory")).addCallback(size)

    def ftp_RNFR(self, fromName: str) -> Deferred[tuple[str]]:
        def pending(values: object) -> tuple[str]:
            set_rename_source(self, fromName)
            self.state = self.RENAMING
            return (ftp.REQ_FILE_ACTN_PENDING_FURTHER_INFO,)

        return self.shell.stat(self._segments(fromName), ()).addCallback(pending)

    def ftp_OPTS(self, option: str) -> None:
        name, _, value = option.partition(" ")
        name = name.upper()
        if name == "UTF8" and value.upper() in ("", "ON"):
            self.sendLine("200 Always in UTF8 mode.")
        elif name == "MLST":
            wanted = [fact.lower() for fact in value.split(";")]
            self._mlst_facts = [fact for fact in _MLST_FACTS if fact in wanted]
            self.sendLine("200 MLST OPTS " + "".join(f"{f};" for f in self._mlst_facts))
        else:
            raise FTPReply(501, f"Option '{option}' not understood.")

    def _facts(self, values: list[Any]) -> str:
        directory, size, modified = values
        facts = {
            "type": "dir" if directory else "file",
            "size": str(size),
            "modify": time.strftime("%Y%m%d%H%M%S", time.gmtime(modified)),
        }
        if self.shell.read_only:
            facts["perm"] = "el" if directory else "r"
        else:
            facts["perm"] = "cdeflmp" if directory else "adfrw"
        return "".join(
            f"{fact}={facts[fact]};"
            for fact in self._mlst_facts
            if not (fact == "size" and directory)
        )

    def ftp_MLST(self, path: str = "") -> Deferred[None]:
        segments = self._segments(path)
        shown = "/" + "/".join(segments)

        def answer(values: list[Any]) -> None:
            self.sendLine(f"250-Listing {shown}")
            self.sendLine(f" {self._facts(values)} {shown}")
            self.sendLine("250 End")

        return self.shell.stat(segments, _MLST_KEYS).addCallback(answer)

    def ftp_MLSD(self, path: str = "") -> Deferred[Any]:
        dtp = self._data_connection()
        segments = self._segments(path)

        def directory_only(values: list[Any]) -> Deferred[Any]:
            if not values[0]:
                raise FTPReply(501, f"{path}: not a directory")
            return self.shell.list(segments, _MLST_KEYS)

        def send(listing: list[tuple[str, list[Any]]]) -> None:
            self._announce_transfer()
            for name, values in listing:
                dtp.sendLine(f"{self._facts(values)} {name}".encode("utf-8"))
            dtp.transport.loseConnection()

        listed = self.shell.stat(segments, ("directory",)).addCallback(directory_only)
        return self._transfer(listed.addCallback(send))


class _DataConnection(ftp.DTP):
    """
    A data connection whose upload counts only if it ended cleanly.

    Twisted's DTP ends an upload whenever its connection is lost.  A
    connection reset, or a TLS connection closed without its close-notify,
    may have lost data the client sent (an FTPS client that never reads what
    the server sent, such as a TLS 1.3 session ticket, resets the connection
    when it closes it, and the reset discards what the server had not read
    yet): such an upload is aborted with C{426}, never stored short.
    """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.isConnected = False
        waiting = self._onConnLost
        if waiting is None:
            return
        if reason.check(ConnectionDone):
            waiting.callback(None)
        else:
            waiting.errback(
                FTPReply(426, "Data connection lost before the end of the upload; transfer aborted.")
            )


class _DataFactory(ServerFactory):
    """
    Builds the one data connection of a passive transfer, for the client's
    host only, if it comes before the timeout.

    Twisted's C{DTPFactory} does the same with a log line at every step
    (timeout set, connection built, timeout cancelled, factory stopped):
    five lines a transfer in the node's log.  This one logs nothing.

    @ivar deferred: fires once the data connection is made; fails with
        C{ftp.PortConnectionError} if none came before the timeout.
    """

    noisy = False

    def __init__(self, pi: FileFTP, peer_host: str, reactor: IReactorTime) -> None:
        self.pi = pi
        self.peer_host = peer_host
        self.deferred: Deferred[None] = Deferred()
        self._reactor = reactor
        self._timeout: Optional[IDelayedCall] = None
        self._waiting = True

    def set_timeout(self, seconds: float) -> None:
        """
        Give up on the data connection if it has not come in C{seconds}.
        """
        self._timeout = self._reactor.callLater(seconds, self._timed_out)

    def buildProtocol(self, addr: Optional[IAddress]) -> Optional[_DataConnection]:
        if not self._waiting or getattr(addr, "host", None) != self.peer_host:
            return None
        self._waiting = False
        self.stopFactory()
        connection = _DataConnection()
        connection.factory = self
        connection.pi = self.pi
        self.pi.dtpInstance = connection
        return connection

    def stopFactory(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()

    def _timed_out(self) -> None:
        if not self._waiting:
            return
        self._waiting = False
        self.deferred.errback(ftp.PortConnectionError(TimeoutError("no data connection in time")))


class FileFTPFactory(ftp.FTPFactory):
    """
    Builds L{FileFTP} sessions on the injected reactor.

    @ivar fs: the file system served.
    @ivar logins: checks passwords and counts failed logins per address.
    """

    protocol = FileFTP
    welcomeMessage = "twisted_kv FTP service ready"

    def __init__(
        self,
        portal: Portal,
        fs: FileSystem,
        reactor: Any,
        anonymous: bool,
        logins: Logins,
        tls: Any = None,
        passive_address: Optional[str] = None,
        passive_ports: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(portal)
        self.allowAnonymous = anonymous
        self.logins = logins
        self.fs = fs
        self._reactor = reactor
        self._tls = tls
        self._passive_address = passive_address
        if passive_ports is not None:
            low, high = passive_ports
            self.passivePortRange = range(low, high + 1)

    def buildProtocol(self, addr: Optional[IAddress]) -> Any:
        wrapper = super().buildProtocol(addr)
        if wrapper is not None:
            session = wrapper.wrappedProtocol
            session._reactor = self._reactor
            session._tls = self._tls
            session.callLater = self._reactor.callLater
            session.listenFactory = self._reactor.listenTCP
            session.passive_address = self._passive_address
        return wrapper


def _can_listen(reactor: object) -> bool:
    return IReactorTCP.providedBy(reactor)


def build_ftp_factory(
    kv: IKeyValue,
    users: dict[str, str],
    *,
    clock: Any,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    anonymous: bool = False,
    tls: Any = None,
    passive_address: Optional[str] = None,
    passive_ports: Optional[tuple[int, int]] = None,
    accounts: Mapping[str, User] = MappingProxyType({}),
    logins: Optional[Logins] = None,
) -> ftp.FTPFactory:
    """
    The FTP service of a node: listen on it with C{ftp_port}.

    @param kv: the store the files live in.
    @param users: user name to stored password (C{plain:...} or
        C{scrypt:...}, see L{twisted_kv.core.passwords}), from C{[ftp_users]}.
    @param clock: the reactor (L{IReactorTime} and L{IReactorTCP}): it
        times sessions and leases and listens for passive data connections.
    @param max_file_bytes: the largest file accepted (larger: C{552}).
    @param anonymous: also let C{anonymous} log in, read-only.
    @param tls: TLS server settings (L{twisted_kv.tls.NodeTLS.server}) to
        require explicit FTPS with, or C{None} for plain FTP.
    @param passive_address: the IPv4 address C{PASV} announces (the public
        one behind NAT); by default the address the client reached.
    @param passive_ports: the inclusive range of ports passive data
        connections listen on; by default any free port.
    @param accounts: the users of the cluster file: those with a C{files}
        area log in to it (as their root); their names must not be in
        C{users}.
    @param logins: checks passwords, counts failed logins per address,
        and refuses an address that failed too many (C{421}); by default
        one of the factory's own, which checks on the calling thread (for
        tests and tools: a node passes one that checks in threads).

    @raise ValueError: a stored password is malformed.
    """
    if not _can_listen(clock):
        raise TypeError("clock must be a reactor that can listen on TCP ports")
    fs = FileSystem(kv, clock, max_file_bytes=max_file_bytes)
    roots = {
        name: FSPath.parse(user.grant.files.rstrip("/") or "/")
        for name, user in accounts.items()
        if user.grant.files is not None
    }
    passwords = {**users, **{name: accounts[name].password for name in roots}}
    if logins is None:
        logins = Logins(LoginThrottle(), clock, check_now)
    checkers: list[ICredentialsChecker] = [PasswordChecker(passwords, logins.check_password)]
    if anonymous:
        checkers.append(AllowAnonymousAccess())
    portal = Portal(FileRealm(fs, roots), checkers)
    return FileFTPFactory(
        portal, fs, clock, anonymous, logins, tls=tls,
        passive_address=passive_address, passive_ports=passive_ports,
    )
