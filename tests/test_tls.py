# -*- test-case-name: tests.test_tls -*-
"""
Tests of the C{[tls]} section (L{twisted_kv.core.config}), of the checks a
node makes of its certificate files at start (L{twisted_kv.tls}) and of
C{kvctl certs create} (L{twisted_kv.app.certs}).
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet.ssl import CertificateOptions
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.app.certs import create_certificates, issue, new_authority, write_pair
from twisted_kv.app.kvctl import main as kvctl
from twisted_kv.core.config import ConfigError, TLSConfig, load_config, parse_config
from twisted_kv.app.service import node_tls
from twisted_kv.tls import NodeTLS, TLSSetupError, load_node_tls

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.timezone.utc)

CLUSTER = """\
[cluster]
name = t
secret = s

[node:n1]
host = 127.0.0.1
http_port = 7001
peer_port = 7101
ftp_port = 7201

[node:n2]
host = kv2.example.org
http_port = 7002
peer_port = 7102
ftp_port = 7202
"""

TLS = """
[tls]
ca = certs/ca.pem
cert = certs/{node}.pem
key = certs/{node}.key
"""


class TLSSectionTests(SynchronousTestCase):
    """
    The C{[tls]} section of the cluster file.
    """

    def test_absent(self) -> None:
        """
        Without C{[tls]}, there are no TLS settings and the URLs are
        http and ws.
        """
        config = parse_config(CLUSTER, "etc/x.ini")
        self.assertIsNone(config.tls)
        self.assertEqual(config.nodes[0].http_url, "http://127.0.0.1:7001")
        self.assertEqual(config.nodes[0].ws_url, "ws://127.0.0.1:7001/ws")

    def test_paths_from_the_file_folder(self) -> None:
        """
        Relative paths are from the cluster file's folder; C{{node}} is
        kept until a node is chosen; the nodes' URLs are https and wss.
        """
        config = parse_config(CLUSTER + TLS, "etc/x.ini")
        self.assertEqual(
            config.tls,
            TLSConfig(ca="etc/certs/ca.pem", cert="etc/certs/{node}.pem", key="etc/certs/{node}.key"),
        )
        self.assertEqual(
            config.tls.for_node("n2"),
            TLSConfig(ca="etc/certs/ca.pem", cert="etc/certs/n2.pem", key="etc/certs/n2.key"),
        )
        self.assertEqual(config.nodes[1].http_url, "https://kv2.example.org:7002")
        self.assertEqual(config.nodes[1].ws_url, "wss://kv2.example.org:7002/ws")

    def test_loaded_paths_are_absolute(self) -> None:
        """
        L{load_config} makes the paths absolute, so that a node finds its
        files whatever its working directory; absolute paths stay as they
        are.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "c.ini")
        with open(path, "w") as f:
            f.write(CLUSTER + TLS.replace("certs/ca.pem", "/etc/kv/ca.pem"))
        tls = load_config(path).tls
        self.assertEqual(tls.ca, "/etc/kv/ca.pem")
        self.assertEqual(tls.cert, os.path.abspath(os.path.join(directory, "certs/{node}.pem")))

    def assertRefused(self, section: str, message: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config(CLUSTER + section, "etc/x.ini")
        self.assertEqual(str(caught.exception), message)

    def test_missing_key(self) -> None:
        """
        Each of C{ca}, C{cert} and C{key} is required.
        """
        self.assertRefused("[tls]\nca = a\ncert = b\n", "etc/x.ini: [tls] key: missing key")

    def test_unknown_key(self) -> None:
        """
        A misspelt key is an error, not ignored.
        """
        self.assertRefused(
            TLS + "certificate = x\n",
            "etc/x.ini: [tls] certificate: unknown key (expected ca, cert and key)",
        )

    def test_empty_value(self) -> None:
        """
        An empty path is an error.
        """
        self.assertRefused(
            "[tls]\nca =\ncert = b\nkey = c\n", "etc/x.ini: [tls] ca: must not be empty"
        )


class CheckTests(SynchronousTestCase):
    """
    L{load_node_tls} refuses, with one line naming the file, what would
    only fail at the first handshake.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.authority = new_authority("test CA", now=NOW)
        write_pair(self.directory, "ca", self.authority.certificate, self.authority.key)
        write_pair(self.directory, "n1", *issue(self.authority, "n1", ["127.0.0.1"], now=NOW))
        self.tls = TLSConfig(
            ca=self.path("ca.pem"), cert=self.path("{node}.pem"), key=self.path("{node}.key")
        )

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def replace(self, stem: str, certificate: x509.Certificate, key: object) -> None:
        for suffix in (".pem", ".key"):
            os.remove(self.path(stem + suffix))
        write_pair(self.directory, stem, certificate, key)  # type: ignore[arg-type]

    def replace_key(
        self, key: ec.EllipticCurvePrivateKey, encryption: serialization.KeySerializationEncryption,
    ) -> None:
        """
        Put C{key} in n1's key file instead of its own, encrypted with
        C{encryption}.
        """
        os.remove(self.path("n1.key"))
        with open(self.path("n1.key"), "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
                )
            )

    def assertRefused(self, message: str, now: datetime.datetime = NOW) -> None:
        with self.assertRaises(TLSSetupError) as caught:
            load_node_tls(self.tls, "n1", now=now)
        self.assertEqual(str(caught.exception), message)
        self.assertNotIn("\n", message)

    def test_usable(self) -> None:
        """
        Good files give a node's settings: TLS 1.2 or newer everywhere, a
        client certificate required on the peer port only.
        """
        tls = load_node_tls(self.tls, "n1", now=NOW)
        self.assertIsInstance(tls, NodeTLS)
        for options in (tls.server, tls.peer_server):
            self.assertIsInstance(options, CertificateOptions)
            refused = SSL.OP_NO_SSLv3 | SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1
            self.assertEqual(options._options & refused, refused)
            self.assertFalse(options._options & SSL.OP_NO_TLSv1_2)
        self.assertFalse(tls.server.verify)
        self.assertTrue(tls.peer_server.verify)
        self.assertTrue(tls.peer_server.requireCertificate)
        self.assertTrue(tls.server.enableSessions)

    def test_missing_file(self) -> None:
        """
        A missing file is named, with the system's reason.
        """
        os.remove(self.path("n1.key"))
        self.assertRefused(
            f"{self.path('n1.key')}: cannot read the private key: No such file or directory"
        )

    def test_not_pem(self) -> None:
        """
        A file that is not a PEM certificate is named.
        """
        with open(self.path("ca.pem"), "w") as f:
            f.write("not a certificate\n")
        self.assertRefused(f"{self.path('ca.pem')}: not a PEM certificate (the CA certificate)")

    def test_ca_that_is_not_a_ca(self) -> None:
        """
        A node certificate given as the CA is refused.
        """
        self.tls = TLSConfig(ca=self.path("n1.pem"), cert=self.tls.cert, key=self.tls.key)
        self.assertRefused(
            f"{self.path('n1.pem')}: not a CA certificate (no basicConstraints CA:TRUE)"
        )

    def test_key_not_matching(self) -> None:
        """
        A key that is not the certificate's is refused.
        """
        _, other_key = issue(self.authority, "n2", ["127.0.0.1"], now=NOW)
        self.replace_key(other_key, serialization.NoEncryption())
        self.assertRefused(
            f"{self.path('n1.key')}: the private key does not match the certificate {self.path('n1.pem')}"
        )

    def test_encrypted_key(self) -> None:
        """
        A key protected by a passphrase cannot be used by a daemon.
        """
        _, key = issue(self.authority, "n1", ["127.0.0.1"], now=NOW)
        self.replace_key(key, serialization.BestAvailableEncryption(b"secret"))
        self.assertRefused(
            f"{self.path('n1.key')}: the private key is encrypted (use one without a passphrase)"
        )

    def test_other_authority(self) -> None:
        """
        A certificate signed by another CA is refused.
        """
        other = new_authority("other CA", now=NOW)
        self.replace("n1", *issue(other, "n1", ["127.0.0.1"], now=NOW))
        self.assertRefused(
            f"{self.path('n1.pem')}: the certificate is not signed by the CA {self.path('ca.pem')}"
        )

    def test_expired(self) -> None:
        """
        An expired certificate is refused, with the date it expired.
        """
        self.replace("n1", *issue(self.authority, "n1", ["127.0.0.1"], now=NOW, days=10))
        self.assertRefused(
            f"{self.path('n1.pem')}: the certificate expired on 2026-06-11 12:00 UTC",
            now=NOW + datetime.timedelta(days=11),
        )

    def test_not_yet_valid(self) -> None:
        """
        A certificate (here the CA) from the future is refused.
        """
        self.assertRefused(
            f"{self.path('ca.pem')}: the CA certificate is not valid before 2026-06-01 11:55 UTC",
            now=NOW - datetime.timedelta(days=1),
        )

    def test_expired_authority(self) -> None:
        """
        An expired CA is refused.
        """
        self.assertRefused(
            f"{self.path('ca.pem')}: the CA certificate expired on 2036-05-29 12:00 UTC",
            now=NOW + datetime.timedelta(days=3651),
        )


class CreateTests(SynchronousTestCase):
    """
    C{kvctl certs create DIR --config FILE}.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.config_path = os.path.join(self.directory, "cluster.ini")
        with open(self.config_path, "w") as f:
            f.write(CLUSTER + TLS)

    def run_kvctl(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = io.BytesIO(), io.StringIO()
        status = kvctl(list(argv), stdout=stdout, stderr=stderr, environ={})
        return status, stdout.getvalue().decode(), stderr.getvalue()

    def test_two_commands(self) -> None:
        """
        The files it writes are the ones the example C{[tls]} section
        names, and every node's pass the checks a node makes at start;
        each certificate names its node's host (an IP address or a DNS
        name); the keys are readable by their owner only.
        """
        certs = os.path.join(self.directory, "certs")
        status, out, err = self.run_kvctl("certs", "create", certs, "--config", self.config_path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("wrote ca.pem, ca.key, n1.pem, n1.key, n2.pem, n2.key", out)
        config = load_config(self.config_path)
        for node in config.nodes:
            load_node_tls(config.tls, node.node_id)
            with open(os.path.join(certs, f"{node.node_id}.pem"), "rb") as f:
                certificate = x509.load_pem_x509_certificate(f.read())
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            mode = stat.S_IMODE(os.stat(os.path.join(certs, f"{node.node_id}.key")).st_mode)
            self.assertEqual(mode, 0o600)
            if node.node_id == "n1":
                self.assertEqual(
                    names.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("127.0.0.1")]
                )
            else:
                self.assertEqual(names.get_values_for_type(x509.DNSName), ["kv2.example.org"])

    def test_never_overwrites(self) -> None:
        """
        A second run into the same folder changes nothing and says why
        (exit status 4).
        """
        certs = os.path.join(self.directory, "certs")
        self.run_kvctl("certs", "create", certs, "--config", self.config_path)
        with open(os.path.join(certs, "ca.pem"), "rb") as f:
            before = f.read()
        status, _, err = self.run_kvctl("certs", "create", certs, "--config", self.config_path)
        self.assertEqual(status, 4)
        self.assertIn("exists already", err)
        with open(os.path.join(certs, "ca.pem"), "rb") as f:
            self.assertEqual(f.read(), before)

    def test_bad_config(self) -> None:
        """
        An unusable cluster file is a usage error naming it.
        """
        status, _, err = self.run_kvctl(
            "certs", "create", self.directory, "--config", os.path.join(self.directory, "none.ini")
        )
        self.assertEqual(status, 2)
        self.assertIn("none.ini: cannot read the cluster file", err)

    def test_creates_into_a_new_folder(self) -> None:
        """
        L{create_certificates} makes the folder and returns the names written.
        """
        config = load_config(self.config_path)
        names = create_certificates(config, os.path.join(self.directory, "new", "certs"))
        self.assertEqual(len(names), 6)
        authority_file = os.path.join(self.directory, "new", "certs", "ca.pem")
        with open(authority_file, "rb") as f:
            authority = x509.load_pem_x509_certificate(f.read())
        constraints = authority.extensions.get_extension_for_class(x509.BasicConstraints).value
        self.assertTrue(constraints.ca)


class StartTests(SynchronousTestCase):
    """
    What a node does with its C{[tls]} section when it starts.
    """

    def test_unusable_file_stops_the_node(self) -> None:
        """
        An unusable file ends the process with one line naming the node
        and the file (as a config error does), before anything listens.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "c.ini")
        with open(path, "w") as f:
            f.write(CLUSTER + TLS)
        with self.assertRaises(SystemExit) as caught:
            node_tls(load_config(path), "n1")
        self.assertEqual(
            str(caught.exception),
            f"kvnode n1: [tls] {os.path.abspath(directory)}/certs/ca.pem:"
            " cannot read the CA certificate: No such file or directory",
        )

    def test_without_tls(self) -> None:
        """
        Without C{[tls]}, a node has no TLS settings.
        """
        self.assertIsNone(node_tls(parse_config(CLUSTER, "x.ini"), "n1"))

    def test_example_cluster_file(self) -> None:
        """
        C{etc/cluster-tls.ini} names the files C{kvctl certs create
        etc/certs} writes.
        """
        repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = load_config(os.path.join(repository, "etc", "cluster-tls.ini"))
        certs = os.path.join(repository, "etc", "certs")
        self.assertEqual(
            config.tls.for_node("n2"),
            TLSConfig(
                ca=os.path.join(certs, "ca.pem"),
                cert=os.path.join(certs, "n2.pem"),
                key=os.path.join(certs, "n2.key"),
            ),
        )
        self.assertEqual([node.http_url for node in config.nodes][0], "https://127.0.0.1:7001")
