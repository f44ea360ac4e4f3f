# -*- test-case-name: tests.test_e2e_ftp_clients -*-
"""
End-to-end tests of the FTP service on real sockets: L{build_ftp_factory}
over a L{LocalKeyValue} listens on 127.0.0.1, port 0, in this process, with
C{/files} beside it, and real clients drive it: Python's ftplib (in a
thread), and the C{lftp} and C{curl} programs when they are installed.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import random
import shutil
import socket
import subprocess
import tempfile
from typing import Any, Callable

from twisted.internet import reactor, tcp
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.polling import poll
from twisted_kv.cluster.local import LocalKeyValue
from twisted_kv.core.passwords import hash_password
from twisted_kv.files.testing import PREFIXES
from twisted_kv.ftp.server import build_ftp_factory
from twisted_kv.web.files_http import files_resource

USER, PASSWORD = "alice", "wonder land"
MAX_FILE_BYTES = 16 * 1024 * 1024
DATA = random.Random(5).randbytes(3 * 1024 * 1024 + 4321)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ServerMixin:
    """
    Runs the FTP and HTTP front ends on loopback for each test, and waits
    at the end until every connection they accepted is closed.
    """

    def setUp(self) -> None:
        # The store's own clock never moves, so tombstones never expire
        # during a test and leave no timer behind.
        self.kv = LocalKeyValue(Clock())
        self.factory = build_ftp_factory(
            self.kv,
            {USER: hash_password(PASSWORD), "bob": "plain:builder"},
            clock=reactor,
            max_file_bytes=MAX_FILE_BYTES,
            anonymous=True,
        )
        root = Resource()
        root.putChild(b"files", files_resource(self.kv, clock=reactor))
        self.ports = [
            reactor.listenTCP(0, self.factory, interface="127.0.0.1"),
            reactor.listenTCP(0, Site(root), interface="127.0.0.1"),
        ]
        self.ftp_port = self.ports[0].getHost().port
        self.http_port = self.ports[1].getHost().port
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        for port in self.ports:
            self.addCleanup(port.stopListening)
        self.addCleanup(self.settle)

    async def settle(self) -> None:
        """
        Wait until the server side of every connection is closed.
        """

        def closed() -> bool:
            busy = [
                selectable
                for selectable in reactor.getReaders() + reactor.getWriters()
                if isinstance(selectable, (tcp.Server, tcp.Port)) and selectable not in self.ports
            ]
            return not busy and self.factory.connectionCount == 0

        await poll(closed, 5, "the server side of every connection to close", interval=0.01)

    def url(self, path: str = "", user: str = USER, password: str = PASSWORD) -> str:
        credentials = f"{user}:{password.replace(' ', '%20')}"
        return f"ftp://{credentials}@127.0.0.1:{self.ftp_port}/{path}"

    def local(self, name: str, data: bytes = b"") -> str:
        path = os.path.join(self.directory, name)
        if data:
            with open(path, "wb") as file:
                file.write(data)
        return path

    def read_local(self, name: str) -> bytes:
        with open(os.path.join(self.directory, name), "rb") as file:
            return file.read()

    def stored_chunks(self) -> list[str]:
        return self.successResultOf(  # type: ignore[attr-defined]
            self.kv.list_keys(PREFIXES["chunk"], None, 10_000)
        ).keys

    def in_thread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return deferToThread(function, *args, **kwargs)

    def run_tool(self, *command: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(command, capture_output=True, timeout=60, cwd=self.directory)


def _connect(port: int, user: str = USER, password: str = PASSWORD) -> ftplib.FTP:
    """
    A logged-in client; on a refused login the connection is closed at once
    rather than whenever the garbage collector gets to it.
    """
    client = ftplib.FTP(timeout=20)
    client.connect("127.0.0.1", port)
    try:
        client.login(user, password)
    except BaseException:
        client.close()
        raise
    return client


class FtplibTests(ServerMixin, TestCase):
    """
    Python's ftplib against the server.
    """

    async def test_upload_download(self) -> None:
        """
        A file stored with C{STOR} comes back byte for byte with C{RETR},
        from an offset with C{REST}, and over HTTP; C{SIZE}, C{MDTM},
        C{MLST} and C{MLSD} describe it.
        """

        def session() -> dict[str, Any]:
            client = _connect(self.ftp_port)
            results: dict[str, Any] = {"features": client.sendcmd("FEAT")}
            results["utf8"] = client.sendcmd("OPTS UTF8 ON")
            client.mkd("docs")
            client.cwd("docs")
            client.storbinary("STOR data.bin", io.BytesIO(DATA))
            results["size"] = client.size("data.bin")
            results["mdtm"] = client.sendcmd("MDTM data.bin")
            whole, tail = io.BytesIO(), io.BytesIO()
            client.retrbinary("RETR data.bin", whole.write)
            client.retrbinary("RETR data.bin", tail.write, rest=1_000_000)
            results["whole"], results["tail"] = whole.getvalue(), tail.getvalue()
            results["mlst"] = client.sendcmd("MLST data.bin")
            results["mlsd"] = list(client.mlsd("/docs"))
            client.quit()
            return results

        results = await self.in_thread(session)
        self.assertIn(" EPSV", results["features"])
        self.assertEqual(results["utf8"], "200 Always in UTF8 mode.")
        self.assertEqual(results["size"], len(DATA))
        self.assertRegex(results["mdtm"], r"^213 \d{14}$")
        self.assertEqual(sha256(results["whole"]), sha256(DATA))
        self.assertEqual(results["tail"], DATA[1_000_000:])
        self.assertIn(f"type=file;size={len(DATA)};", results["mlst"])
        self.assertEqual(results["mlsd"][0][0], "data.bin")
        self.assertEqual(results["mlsd"][0][1]["perm"], "adfrw")
        over_http = await self.in_thread(self.http_get, "/files/docs/data.bin")
        self.assertEqual(sha256(over_http), sha256(DATA))

    def http_get(self, path: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=20) as connection:
            connection.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            response = b""
            while chunk := connection.recv(1 << 16):
                response += chunk
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")), head)
        return body

    async def test_append_rename_delete(self) -> None:
        """
        C{APPE} appends, C{RNFR}/C{RNTO} rename, C{DELE} and C{RMD} remove,
        and no chunk is left over; C{EPSV} works as well as C{PASV}.
        """

        def session() -> dict[str, Any]:
            client = _connect(self.ftp_port)
            results: dict[str, Any] = {}
            client.storbinary("STOR a.txt", io.BytesIO(b"hello "))
            client.storbinary("APPE a.txt", io.BytesIO(b"world"))
            client.mkd("d")
            client.rename("a.txt", "d/b.txt")
            client.af = socket.AF_INET6  # ftplib then uses EPSV
            results["epsv"] = client.nlst("d")
            client.af = socket.AF_INET
            content = io.BytesIO()
            client.retrbinary("RETR /d/b.txt", content.write)
            results["content"] = content.getvalue()
            client.delete("d/b.txt")
            client.rmd("d")
            results["root"] = client.nlst()
            client.quit()
            return results

        results = await self.in_thread(session)
        self.assertEqual(results["epsv"], ["d/b.txt"])
        self.assertEqual(results["content"], b"hello world")
        self.assertEqual(results["root"], [])
        self.assertEqual(self.stored_chunks(), [])

    async def test_listings(self) -> None:
        """
        C{nlst} of a directory gives paths that C{RETR} accepts as they are,
        of a glob the matching paths, of nothing the working directory's
        names; C{nlst} of a missing path fails at once; C{LIST} with C{ls}
        options lists the directory by name.
        """

        def session() -> dict[str, Any]:
            client = _connect(self.ftp_port)
            client.mkd("d")
            client.mkd("d/sub")
            for name in ["a.txt", "b.txt", "c.bin"]:
                client.storbinary(f"STOR d/{name}", io.BytesIO(name.encode()))
            results: dict[str, Any] = {"nlst": client.nlst("d"), "glob": client.nlst("d/*.txt")}
            contents = []
            for path in results["glob"]:
                received = io.BytesIO()
                client.retrbinary(f"RETR {path}", received.write)
                contents.append(received.getvalue())
            results["contents"] = contents
            client.cwd("d")
            results["cwd"] = client.nlst()
            try:
                client.nlst("missing")
            except ftplib.error_perm as error:
                results["missing"] = str(error)
            lines: list[str] = []
            client.dir("-la", "/d", lines.append)
            results["list"] = [line.split()[-1] for line in lines]
            client.quit()
            return results

        results = await self.in_thread(session)
        self.assertEqual(results["nlst"], ["d/a.txt", "d/b.txt", "d/c.bin", "d/sub"])
        self.assertEqual(results["glob"], ["d/a.txt", "d/b.txt"])
        self.assertEqual(results["contents"], [b"a.txt", b"b.txt"])
        self.assertEqual(results["cwd"], ["a.txt", "b.txt", "c.bin", "sub"])
        self.assertEqual(results["missing"], "550 /d/missing: no such file or directory")
        self.assertEqual(results["list"], ["a.txt", "b.txt", "c.bin", "sub"])

    async def test_refusals(self) -> None:
        """
        Wrong passwords, paths outside the root, anonymous writes and files
        over the maximum are all refused.
        """

        def session() -> dict[str, str]:
            results = {}
            try:
                _connect(self.ftp_port, password="wrong")
            except ftplib.error_perm as error:
                results["password"] = str(error)
            client = _connect(self.ftp_port)
            client.storbinary("STOR f", io.BytesIO(b"x"))
            for name, command in [
                ("cwd", "CWD ../.."),
                ("size", "SIZE ../../etc/passwd"),
                ("backslash", "SIZE ..\\..\\etc\\passwd"),
                ("absolute", "CWD /../../etc"),
            ]:
                try:
                    results[name] = client.sendcmd(command)
                except ftplib.error_perm as error:
                    results[name] = str(error)
            try:
                client.storbinary("STOR big", io.BytesIO(bytes(MAX_FILE_BYTES + 1)))
            except ftplib.Error as error:
                results["big"] = str(error)
            client.quit()
            anonymous = ftplib.FTP(timeout=20)
            anonymous.connect("127.0.0.1", self.ftp_port)
            anonymous.login()
            results["anonymous-read"] = anonymous.size("f")
            try:
                anonymous.delete("f")
            except ftplib.error_perm as error:
                results["anonymous-write"] = str(error)
            anonymous.quit()
            return results

        results = await self.in_thread(session)
        self.assertEqual(results["password"], "530 Sorry, Authentication failed.")
        for name in ["cwd", "size", "absolute"]:
            self.assertTrue(results[name].startswith("550 "), results[name])
        self.assertTrue(results["backslash"].startswith("553 "))
        self.assertTrue(results["big"].startswith("552 "), results["big"])
        self.assertEqual(results["anonymous-read"], 1)
        self.assertTrue(results["anonymous-write"].startswith("550 "))
        self.assertEqual(len(self.stored_chunks()), 1)


class LftpTests(ServerMixin, TestCase):
    """
    The C{lftp} client against the server.
    """

    def setUp(self) -> None:
        if shutil.which("lftp") is None:
            raise SkipTest("lftp is not installed")
        super().setUp()

    def lftp(self, *commands: str, password: str = PASSWORD) -> subprocess.CompletedProcess[bytes]:
        script = "; ".join(
            [
                "set net:max-retries 1",
                "set net:timeout 10",
                "set ftp:ssl-allow no",
                "set xfer:clobber on",
                *commands,
            ]
        )
        return self.run_tool(
            "lftp", "-u", f"{USER},{password}", "-p", str(self.ftp_port), "127.0.0.1", "-e", script + "; quit"
        )

    async def test_session(self) -> None:
        """
        lftp stores a file, resumes a download with C{REST}, lists with
        C{MLSD}, renames and deletes.
        """
        self.local("up.bin", DATA)
        self.local("part.bin", DATA[:1_234_567])
        result = await self.in_thread(
            self.lftp,
            "mkdir dir",
            "put up.bin -o dir/up.bin",
            "get -c dir/up.bin -o part.bin",
            "get dir/up.bin -o whole.bin",
            "mv dir/up.bin dir/renamed.bin",
            "cls -1 dir",
            "debug 0",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.decode().split(), ["dir/renamed.bin"])
        self.assertEqual(sha256(self.read_local("part.bin")), sha256(DATA))
        self.assertEqual(sha256(self.read_local("whole.bin")), sha256(DATA))
        result = await self.in_thread(self.lftp, "rm dir/renamed.bin", "rmdir dir", "cls -1")
        self.assertEqual((result.returncode, result.stdout), (0, b""), result.stderr)
        self.assertEqual(self.stored_chunks(), [])

    async def test_wrong_password(self) -> None:
        """
        lftp cannot log in with a wrong password.
        """
        result = await self.in_thread(self.lftp, "cls", password="wrong")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"530", result.stderr)


class CurlTests(ServerMixin, TestCase):
    """
    The C{curl} client against the server (it prefers C{EPSV}).
    """

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        super().setUp()

    def curl(self, *arguments: str) -> subprocess.CompletedProcess[bytes]:
        return self.run_tool("curl", "-sS", "--max-time", "30", *arguments)

    async def test_session(self) -> None:
        """
        curl uploads (creating directories), downloads whole and resumed,
        appends, resumes an upload (C{SIZE} then C{APPE}), renames and
        deletes with quoted commands; HTTP serves the same bytes.
        """
        half = len(DATA) // 2
        self.local("data.bin", DATA)
        self.local("half.bin", DATA[:half])
        self.local("extra.bin", b"extra")
        steps = [
            ("--ftp-create-dirs", "-T", "data.bin", self.url("a/b/data.bin")),
            ("-o", "back.bin", self.url("a/b/data.bin")),
            ("-C", "1000", "-o", "tail.bin", self.url("a/b/data.bin")),
            ("--disable-epsv", "-a", "-T", "extra.bin", self.url("a/b/data.bin")),
            ("-T", "half.bin", self.url("resumed.bin")),
            ("-C", "-", "-T", "data.bin", self.url("resumed.bin")),
            ("-o", "resumed.bin", self.url("resumed.bin")),
            ("-Q", "RNFR a/b/data.bin", "-Q", "RNTO a/moved.bin", "-o", "listing.txt", self.url("a/")),
            ("-o", "http.bin", f"http://127.0.0.1:{self.http_port}/files/a/moved.bin"),
            ("-Q", "DELE a/moved.bin", "-Q", "DELE resumed.bin", "-o", "after.txt", self.url("a/")),
        ]
        for step in steps:
            result = await self.in_thread(self.curl, *step)
            self.assertEqual(result.returncode, 0, (step, result.stderr))
        self.assertEqual(sha256(self.read_local("back.bin")), sha256(DATA))
        self.assertEqual(self.read_local("tail.bin"), DATA[1000:])
        self.assertEqual(sha256(self.read_local("resumed.bin")), sha256(DATA))
        self.assertEqual(sha256(self.read_local("http.bin")), sha256(DATA + b"extra"))
        self.assertIn(b"moved.bin", self.read_local("listing.txt"))
        self.assertNotIn(b"moved.bin", self.read_local("after.txt"))
        self.assertEqual(self.stored_chunks(), [])

    async def test_refusals(self) -> None:
        """
        curl is refused with a wrong password, and cannot climb out of the
        root even with encoded dots.
        """
        result = await self.in_thread(self.curl, self.url("", password="wrong"))
        self.assertEqual(result.returncode, 67, result.stderr)
        for path in ["%2e%2e/%2e%2e/etc/passwd", "../../etc/passwd"]:
            result = await self.in_thread(self.curl, "--path-as-is", self.url(path))
            self.assertNotEqual(result.returncode, 0, path)
            self.assertEqual(result.stdout, b"")
