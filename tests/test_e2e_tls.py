# -*- test-case-name: tests.test_e2e_tls -*-
"""
End-to-end tests of a cluster with a C{[tls]} section (certificates made
as C{kvctl certs create} makes them), with real clients against real
nodes (L{tests.e2e.RealCluster}):

  - HTTPS with curl, the Python client and kvctl, WSS with the client's
    watch; plain HTTP is refused; C{openssl s_client} is refused TLS 1.1
    and served TLS 1.2 and 1.3;
  - explicit FTPS with curl (C{--ssl-reqd}), lftp (C{ftp:ssl-force},
    C{ftp:ssl-protect-data}) and Python's C{ftplib.FTP_TLS}, whose data
    connections resume the control connection's TLS session (as FileZilla
    requires); a login before C{AUTH TLS} and C{PROT C} are refused;
  - the dashboard in headless Chromium over HTTPS;
  - the peer port: no client certificate, or one from another CA, is
    dropped before the secret's handshake; the protocol violations and
    half-open connections of the plain peer port are dropped over TLS too;
  - a node whose certificate is unusable stops at once, with one line.
"""

from __future__ import annotations

import base64
import datetime
import ftplib
import hashlib
import io
import os
import random
import shutil
import ssl
import struct
import subprocess
import sys
from types import SimpleNamespace
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

import tests.test_dashboard as dashboard
from tests.e2e import RealCluster, kv_path, node_command, node_environment
from tests.test_e2e_peer_port import (
    HANDSHAKE_TIMEOUT,
    TAG_HELLO,
    PeerPortTestBase,
    frame,
    pack,
)
from twisted_kv.app.certs import Authority, issue, new_authority, write_pair
from twisted_kv.client import Client

KVCTL = [sys.executable, "-m", "twisted_kv.app.kvctl"]


def _tool(name: str) -> None:
    if shutil.which(name) is None:
        raise SkipTest(f"{name} is not installed")


def run(*command: str, data: Optional[bytes] = None) -> subprocess.CompletedProcess[bytes]:
    """
    Run a client program to its end (in a thread: L{deferToThread}).
    """
    return subprocess.run(command, input=data, capture_output=True, timeout=60)


class TLSClusterTestCase(TestCase):
    """
    A three-node TLS cluster, started for each test.
    """

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.cluster = RealCluster(3, self.mktemp(), tls=True)
        self.addCleanup(self.cluster.stop_all)
        await self.cluster.start()
        self.ca = self.cluster.ca_path

    def url(self, node_id: str, path: str = "") -> str:
        return self.cluster.url(node_id, path)


class HTTPSTests(TLSClusterTestCase):
    """
    The HTTP API and the WebSocket feed over TLS only.
    """

    async def test_https_clients(self) -> None:
        """
        curl writes and reads over HTTPS with the cluster's CA, and is
        refused without it (an unknown issuer) or over plain HTTP; the
        Python client and kvctl do the same with C{cacert}/C{--cacert}; a
        watch over WSS sees a change made through another node.
        """
        _tool("curl")
        put = await deferToThread(
            run, "curl", "-sS", "--cacert", self.ca, "-X", "PUT", "--data-binary", "over tls",
            self.url("n1", "/kv/tls/curl"),
        )
        self.assertEqual(put.returncode, 0, put.stderr)
        got = await deferToThread(run, "curl", "-sS", "--cacert", self.ca, self.url("n2", "/kv/tls/curl"))
        self.assertEqual(got.stdout, b"over tls")
        untrusted = await deferToThread(run, "curl", "-sS", self.url("n2", "/kv/tls/curl"))
        self.assertEqual(untrusted.returncode, 60, untrusted.stderr)  # peer certificate not trusted
        plain = await deferToThread(run, "curl", "-sS", self.url("n2", "/health").replace("https:", "http:"))
        self.assertNotEqual(plain.returncode, 0)
        self.assertNotIn(b"status", plain.stdout)

        def python_client() -> tuple[bytes, list[str]]:
            with Client(self.url("n3"), cacert=self.ca) as kv:
                kv.put("tls/python", b"from python")
                with kv.watch("tls/", timeout=10) as events:
                    with Client(self.url("n1"), cacert=self.ca) as other:
                        other.put("tls/watched", b"seen over wss")
                    event = events.next_event(timeout=10)
                return kv.get("tls/python").data, [event["key"], event["value"]]

        value, event = await deferToThread(python_client)
        self.assertEqual(value, b"from python")
        self.assertEqual(event, ["tls/watched", "seen over wss"])

        env = {**os.environ, **node_environment()}
        kvctl = [*KVCTL, "--node", self.url("n2"), "--cacert", self.ca]
        stored = await deferToThread(lambda: subprocess.run(
            [*kvctl, "put", "tls/kvctl", "from kvctl"], capture_output=True, env=env, timeout=60
        ))
        self.assertEqual(stored.returncode, 0, stored.stderr)
        read = await deferToThread(lambda: subprocess.run(
            [*KVCTL, "--node", self.url("n1"), "get", "tls/kvctl"],
            capture_output=True, env={**env, "KVCTL_CACERT": self.ca}, timeout=60,
        ))
        self.assertEqual(read.stdout, b"from kvctl")
        refused = await deferToThread(lambda: subprocess.run(
            [*KVCTL, "--node", self.url("n1"), "get", "tls/kvctl"], capture_output=True,
            env={k: v for k, v in env.items() if k != "KVCTL_CACERT"}, timeout=60,
        ))
        self.assertEqual(refused.returncode, 3)
        self.assertIn(b"over TLS: CERTIFICATE_VERIFY_FAILED", refused.stderr)

    async def test_tls_versions(self) -> None:
        """
        C{openssl s_client} is refused TLS 1.1 (a protocol version alert)
        and served TLS 1.2 and 1.3, with a certificate that verifies
        against the CA; TLS 1.2 without forward secrecy or with old
        ciphers finds no cipher in common.
        """
        _tool("openssl")
        address = f"127.0.0.1:{self.cluster.http_port('n1')}"

        def s_client(*options: str) -> str:
            result = run(
                "openssl", "s_client", "-connect", address, "-CAfile", self.ca,
                "-verify_return_error", *options, data=b"",
            )
            return (result.stdout + result.stderr).decode("utf-8", "replace")

        old = await deferToThread(s_client, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        self.assertIn("alert protocol version", old)
        for option, protocol in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            text = await deferToThread(s_client, option)
            # (the "Protocol" line of the session block needs a TLS 1.3
            # ticket, which may arrive after s_client has read its empty input)
            self.assertIn(f"New, {protocol}, Cipher is", text)
            self.assertIn("Verify return code: 0 (ok)", text)
        weak = await deferToThread(s_client, "-tls1_2", "-cipher", "AES128-SHA:DES-CBC3-SHA:RC4")
        self.assertIn("handshake failure", weak)


class FTPSTests(TLSClusterTestCase):
    """
    Explicit FTP over TLS (RFC 4217) with real clients.
    """

    def ftp_url(self, node_id: str, path: str = "") -> str:
        return f"ftp://alice:wonderland@127.0.0.1:{self.cluster.ftp_port(node_id)}/{path}"

    async def test_curl_and_lftp(self) -> None:
        """
        curl C{--ssl-reqd} uploads through one node and downloads and lists
        through another; lftp with C{ftp:ssl-force} and
        C{ftp:ssl-protect-data} lists, downloads and uploads; what each
        stored is the same bytes over HTTPS; plain FTP cannot log in.
        """
        _tool("curl")
        _tool("lftp")
        data = random.Random(18).randbytes(200_000)
        local = self.mktemp()
        os.makedirs(local)
        source = os.path.join(local, "source.bin")
        with open(source, "wb") as f:
            f.write(data)
        curl = ["curl", "-sS", "--ssl-reqd", "--cacert", self.ca]
        up = await deferToThread(run, *curl, "-T", source, self.ftp_url("n1", "curl.bin"))
        self.assertEqual(up.returncode, 0, up.stderr)
        down = await deferToThread(run, *curl, self.ftp_url("n2", "curl.bin"))
        self.assertEqual(hashlib.sha256(down.stdout).hexdigest(), hashlib.sha256(data).hexdigest())
        listing = await deferToThread(run, *curl, "-l", self.ftp_url("n3"))
        self.assertIn(b"curl.bin", listing.stdout)
        plain = await deferToThread(run, "curl", "-sS", self.ftp_url("n2"))
        self.assertEqual(plain.returncode, 67, plain.stderr)  # login denied

        script = "; ".join([
            "set ftp:ssl-force true",
            "set ftp:ssl-protect-data true",
            f"set ssl:ca-file {self.ca}",
            # lftp never reads the TLS 1.3 session ticket sent on a data
            # connection, so its close of an upload becomes a reset, which
            # may discard the end of the upload (then refused with 426):
            # TLS 1.2 sends no ticket (docs/security.md).
            "set ssl:priority NORMAL:-VERS-TLS1.3",
            "set net:max-retries 1",
            "cls -1",
            f"get curl.bin -o {local}/lftp.bin",
            f"put {source} -o lftp-up.bin",
            "quit",
        ])
        lftp = await deferToThread(
            run, "lftp", "-u", "alice,wonderland", "-p", str(self.cluster.ftp_port("n3")),
            "127.0.0.1", "-e", script,
        )
        self.assertEqual(lftp.returncode, 0, lftp.stderr)
        self.assertIn(b"curl.bin", lftp.stdout)
        with open(f"{local}/lftp.bin", "rb") as f:
            self.assertEqual(f.read(), data)
        reply = await self.cluster.request("GET", "n1", "/files/lftp-up.bin")
        self.assertEqual(
            (reply.status, len(reply.body), hashlib.sha256(reply.body).hexdigest()),
            (200, len(data), hashlib.sha256(data).hexdigest()),
            lftp.stderr,
        )

    async def test_ftplib_and_session_resumption(self) -> None:
        """
        C{ftplib.FTP_TLS} logs in after C{AUTH TLS}, sees C{AUTH TLS},
        C{PBSZ} and C{PROT} in C{FEAT}, and with C{PROT P} stores and reads
        back a file; a client that offers the control connection's TLS
        session on its data connections (as FileZilla does) has it
        resumed there.  Before C{AUTH TLS}, a login is refused with C{530};
        C{PROT C} is refused with C{534}, and a data connection before
        C{PROT P} with C{521}.
        """
        port = self.cluster.ftp_port("n2")
        context = ssl.create_default_context(cafile=self.ca)

        class ResumingFTP(ftplib.FTP_TLS):
            """
            FTP_TLS offering the control connection's session on each
            data connection, and recording whether it was resumed.
            """

            resumed: list[bool] = []

            def ntransfercmd(self, cmd: str, rest: Any = None) -> Any:
                conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
                if self._prot_p:
                    conn = self.context.wrap_socket(
                        conn, server_hostname=self.host, session=self.sock.session
                    )
                    self.resumed.append(conn.session_reused)
                return conn, size

        def session() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            plain = ftplib.FTP()
            plain.connect("127.0.0.1", port, timeout=10)
            try:
                plain.login("alice", "wonderland")
            except ftplib.error_perm as error:
                seen["plain login"] = str(error)
            plain.close()

            ftps = ResumingFTP(context=context, timeout=10)
            ftps.connect("127.0.0.1", port)
            seen["feat"] = ftps.sendcmd("FEAT")
            ftps.auth()
            ftps.login("alice", "wonderland")
            try:
                ftps.nlst()
            except ftplib.error_perm as error:
                seen["before prot"] = str(error)
            ftps.sendcmd("PBSZ 0")
            try:
                ftps.sendcmd("PROT C")
            except ftplib.error_perm as error:
                seen["prot c"] = str(error)
            ftps.prot_p()
            payload = b"private bytes " * 5000
            ftps.storbinary("STOR ftplib.bin", io.BytesIO(payload))
            chunks: list[bytes] = []
            ftps.retrbinary("RETR ftplib.bin", chunks.append)
            seen["round trip"] = b"".join(chunks) == payload
            seen["names"] = ftps.nlst()
            seen["resumed"] = list(ResumingFTP.resumed)
            ftps.quit()
            return seen

        seen = await deferToThread(session)
        self.assertTrue(seen["plain login"].startswith("530 "), seen)
        self.assertIn("AUTH TLS", seen["plain login"])
        for feature in (" AUTH TLS", " PBSZ", " PROT"):
            self.assertIn(feature, seen["feat"].splitlines())
        self.assertTrue(seen["before prot"].startswith("521 "), seen)
        self.assertTrue(seen["prot c"].startswith("534 "), seen)
        self.assertTrue(seen["round trip"])
        self.assertIn("ftplib.bin", seen["names"])
        self.assertEqual(seen["resumed"], [True, True, True])


class DashboardOverHTTPSTests(TestCase):
    """
    The dashboard, in a browser that trusts the nodes' certificates.
    """

    if dashboard.CHROMIUM is None:
        skip = "Debian's chromium is not installed (apt-get install chromium)"

    timeout = 120

    async def test_dashboard_over_https(self) -> None:
        """
        Headless Chromium, pinned to the nodes' keys, loads the dashboard
        over HTTPS, which follows the live feed over WSS and shows the
        three nodes; nothing fails and nothing is loaded over plain HTTP.
        """
        cluster = RealCluster(3, self.mktemp(), tls=True)
        self.addCleanup(cluster.stop_all)
        await cluster.start()
        pins = []
        for node_id in cluster.node_ids:
            with open(os.path.join(os.path.dirname(cluster.ca_path), f"{node_id}.pem"), "rb") as f:
                key = Certificate.loadPEM(f.read()).original.get_pubkey().to_cryptography_key()
            spki = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            pins.append(base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii"))
        self.node = SimpleNamespace(url=cluster.url("n2"))
        self.browser = await dashboard.launch_browser(
            self, [f"--ignore-certificate-errors-spki-list={','.join(pins)}"]
        )
        page = await dashboard.open_page(self.browser, cluster.url("n2", "/"), 1280, 900)
        await page.wait_for("document.querySelectorAll('#nodes tr').length === 3")
        await page.wait_for("document.getElementById('feed-state').textContent === 'live'")
        self.assertEqual(await page.evaluate("location.protocol"), "https:")
        reply = await cluster.request("PUT", "n1", kv_path("dashboard/tls"), b"over https")
        self.assertEqual(reply.status, 201)
        await page.wait_for(
            "Array.from(document.querySelectorAll('#event-list li'))"
            ".some(li => li.dataset.name === 'dashboard/tls')"
        )
        self.assertEqual(dashboard.BrowserTests.problems(self), [])


class TLSPeerPortTests(PeerPortTestBase):
    """
    The peer port speaks mutual TLS: only a client certificate signed by
    the cluster's CA gets to the secret's handshake, and the plain peer
    port's guarantees hold behind TLS.
    """

    tls = True

    def identity(self, directory: str, issued_by_cluster: bool = True) -> PrivateCertificate:
        """
        A certificate for 127.0.0.1 with its key: node C{n2}'s, or one
        from a CA of our own.
        """
        if issued_by_cluster:
            stem = os.path.join(directory, "n2")
        else:
            os.makedirs(directory, exist_ok=True)
            authority = new_authority("another CA")
            write_pair(directory, "intruder", *issue(authority, "n2", ["127.0.0.1"]))
            stem = os.path.join(directory, "intruder")
        with open(stem + ".pem", "rb") as cert, open(stem + ".key", "rb") as key:
            return PrivateCertificate.loadPEM(cert.read() + key.read())

    def endpoint(self, port: int, identity: Any = True) -> IStreamClientEndpoint:
        """
        TLS trusting the cluster's CA, presenting C{identity}: node
        C{n2}'s certificate by default, C{None} for none.
        """
        if identity is True:
            identity = self.identity(os.path.dirname(self.cluster.ca_path))
        with open(self.cluster.ca_path, "rb") as f:
            authority = Certificate.loadPEM(f.read())
        options = optionsForClientTLS("127.0.0.1", trustRoot=authority, clientCertificate=identity)
        return wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5))

    async def test_certificate_required(self) -> None:
        """
        A TLS client without a certificate, one with a certificate from
        another CA, and a plain TCP client sending a HELLO are each dropped
        at once, without a byte of the secret's handshake (no HELLO) from
        the node; each drop is logged as a failed TLS handshake.
        """
        port = self.cluster.peer_port(self.target)
        intruder = self.identity(self.mktemp(), issued_by_cluster=False)
        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
        hello = frame(TAG_HELLO, pack([1, self.cluster.name, "n2", 1, os.urandom(32)]))
        connections = []
        for endpoint in (self.endpoint(port, None), self.endpoint(port, intruder), plain):
            connection = await self.connect_with(endpoint)
            connections.append(connection)
        connections[2].send(hello)
        await self.assertDropped(*connections, within=1.0)
        for connection in connections:
            self.assertNotIn(TAG_HELLO, [tag for tag, _ in connection.frames()])
        await self.assertUnharmed(len(connections))
        self.assertEqual(
            self.cluster.logs(self.target, self.mark).count("TLS handshake failed"), 3
        )

    async def test_protocol_violations_over_tls(self) -> None:
        """
        With a good certificate, garbage, a 2**31 length prefix, an empty
        frame and a malformed HELLO are dropped at once, as on the plain
        peer port.
        """
        payloads = [
            random.Random(7).randbytes(3000),
            struct.pack(">I", 2**31) + b"\x01" * 100,
            b"\x00\x00\x00\x00",
            frame(TAG_HELLO, b"\xc1\xc1\xc1"),
        ]
        connections = [await self.connect() for _ in payloads]
        for connection, payload in zip(connections, payloads):
            connection.send(payload)
        await self.assertDropped(*connections, within=1.0)
        await self.assertUnharmed(len(payloads))

    async def test_half_open(self) -> None:
        """
        A connection silent after its TLS handshake, one that never starts
        TLS, and one that stops in the middle of a frame are closed once
        the handshake timeout has passed.
        """
        silent = await self.connect()
        partial = await self.connect()
        partial.send(b"\x00\x00")
        no_tls = await self.connect_with(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.cluster.peer_port(self.target), timeout=5)
        )
        connections = [silent, partial, no_tls]
        await self.assertDropped(*connections)
        for connection in connections:
            self.assertGreaterEqual(connection.lifetime, HANDSHAKE_TIMEOUT - 1.0)
        await self.assertUnharmed(len(connections))


class UnusableCertificateTests(TestCase):
    """
    A node whose C{[tls]} files are unusable does not start.
    """

    timeout = 60

    async def test_one_line_naming_the_file(self) -> None:
        """
        An expired certificate, and a key file that is missing, each end
        the node at once with a non-zero status and one line on standard
        error naming the file; no traceback.
        """
        cluster = RealCluster(1, self.mktemp(), tls=True)
        certs = os.path.dirname(cluster.ca_path)
        with open(os.path.join(certs, "ca.key"), "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), password=None)
        with open(cluster.ca_path, "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())

        long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
        expired = issue(Authority(ca_cert, ca_key), "n1", ["127.0.0.1"], now=long_ago, days=1)
        for name in ("n1.pem", "n1.key"):
            os.remove(os.path.join(certs, name))
        write_pair(certs, "n1", *expired)

        async def start() -> tuple[bytes, int]:
            command = node_command(cluster.config_path, "n1")
            out, err, code = await getProcessOutputAndValue(
                command[0], command[1:], env=node_environment(), path=cluster.directory
            )
            return err, code

        err, code = await start()
        self.assertNotEqual(code, 0)
        lines = err.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertIn(os.path.join(certs, "n1.pem"), lines[0])
        self.assertIn("expired", lines[0])

        for name in ("n1.pem", "n1.key"):
            os.remove(os.path.join(certs, name))
        write_pair(certs, "n1", *issue(Authority(ca_cert, ca_key), "n1", ["127.0.0.1"]))
        os.remove(os.path.join(certs, "n1.key"))
        err, code = await start()
        self.assertNotEqual(code, 0)
        lines = err.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertIn(os.path.join(certs, "n1.key"), lines[0])
        self.assertNotIn("Traceback", err.decode())
