# -*- test-case-name: tests.test_e2e_hosts -*-
"""
A cluster across hosts, each node reached at another address than the one
it listens on, as behind NAT: three real C{twistd kvnode} processes, each in
a network namespace of its own (L{tests.netns}), listening on its private
address (C{bind}) while its peers and clients reach it at a "public" one
(C{host}) that the namespace forwards to the private one (iptables DNAT),
with FTP's passive mode announcing the public address and keeping to its
port range.

They need root, iproute2 and iptables, and are skipped without them.
"""

from __future__ import annotations

import ftplib
import io
import shutil
import subprocess

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e import kv_path
from tests.netns import NamespacedCluster

#: The ports of FTP's passive data connections on every node.
PASSIVE_PORTS = (30000, 30004)


class NattedCluster(NamespacedCluster):
    """
    A L{NamespacedCluster} whose nodes listen on their namespace's address
    and are reached at another address of the same network, which each
    namespace forwards to its node.
    """

    def __init__(self, size: int, tmpdir: str) -> None:
        if shutil.which("iptables") is None:
            raise SkipTest("forwarding an address to a node needs iptables")
        self._public: dict[str, str] = {}
        super().__init__(size, tmpdir)

    def _write_config(self) -> None:
        for node_id in self.node_ids:
            self._public[node_id] = self._forward_public_address(node_id)
        super()._write_config()

    def _forward_public_address(self, node_id: str) -> str:
        """
        Give node C{node_id}'s namespace a second address, forwarded to the
        node's own (DNAT), and return it.
        """
        private = self.network.address(node_id)
        subnet, index = private.rsplit(".", 1)
        public = f"{subnet}.{100 + int(index)}"
        namespace = self.network.namespace(node_id)
        subprocess.run(
            ["ip", "-n", namespace, "addr", "add", f"{public}/24", "dev", "eth0"],
            check=True, capture_output=True,
        )
        result = subprocess.run(
            ["ip", "netns", "exec", namespace, "iptables", "-t", "nat", "-A", "PREROUTING",
             "-d", public, "-p", "tcp", "-j", "DNAT", "--to-destination", private],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            self.network.remove()
            raise SkipTest(f"cannot forward an address with iptables: {result.stderr.strip()}")
        return public

    def host(self, node_id: str) -> str:
        """
        The address peers and clients reach node C{node_id} at.
        """
        return self._public[node_id]

    def listening_addresses(self, node_id: str) -> set[str]:
        """
        The addresses of the TCP sockets listening in node C{node_id}'s
        namespace (only the node's).
        """
        listing = subprocess.run(
            ["ip", "netns", "exec", self.network.namespace(node_id), "ss", "-Hltn"],
            check=True, capture_output=True, text=True,
        ).stdout
        return {line.split()[3].rsplit(":", 1)[0] for line in listing.splitlines() if line.strip()}

    def _node_keys(self, node_id: str) -> dict[str, str]:
        low, high = PASSIVE_PORTS
        return {
            "bind": self.network.address(node_id),
            "ftp_passive_address": self.host(node_id),
            "ftp_passive_ports": f"{low}-{high}",
        }


class AcrossHostsTests(TestCase):
    """
    Nodes reached at another address than the one they listen on.
    """

    timeout = 120

    async def test_reached_at_another_address(self) -> None:
        """
        The nodes find each other at their C{host} addresses and elect a
        leader; a write through one node is read through another; a file
        stored over FTP through one node is read back through another,
        C{PASV} naming the node's public address and a port of its range;
        each node listens on its private address only, so everything went
        through the forwarding; C{/cluster} names the nodes by the addresses
        clients reach them at.
        """
        c = NattedCluster(3, self.mktemp())
        self.addCleanup(c.stop_all)
        await c.start()
        await c.write_keys({f"hosts/{i}": b"v%d" % i for i in range(10)}, nodes=["n1"])
        for i in range(10):
            reply = await c.request("GET", "n2", kv_path(f"hosts/{i}"))
            self.assertEqual((reply.status, reply.body), (200, b"v%d" % i))

        announced: list[tuple[str, int]] = []

        class PassiveFTP(ftplib.FTP):
            # Open data connections where PASV says, not to the control
            # connection's address (ftplib's default), and note it.
            trust_server_pasv_ipv4_address = True

            def makepasv(self) -> tuple[str, int]:
                announced.append(super().makepasv())
                return announced[-1]

        def session(node_id: str) -> ftplib.FTP:
            client = PassiveFTP(timeout=30)
            client.connect(c.host(node_id), c.ftp_port(node_id))
            client.login("alice", "wonderland")
            return client

        def ftp_round_trip() -> bytes:
            with session("n3") as upload:
                upload.storbinary("STOR hosts.bin", io.BytesIO(b"across hosts"))
            received = io.BytesIO()
            with session("n1") as download:
                download.retrbinary("RETR hosts.bin", received.write)
            return received.getvalue()

        self.assertEqual(await deferToThread(ftp_round_trip), b"across hosts")
        self.assertEqual([address for address, port in announced], [c.host("n3"), c.host("n1")])
        for address, port in announced:
            self.assertTrue(PASSIVE_PORTS[0] <= port <= PASSIVE_PORTS[1], port)

        for node_id in c.node_ids:
            self.assertEqual(
                c.listening_addresses(node_id), {c.network.address(node_id)}, node_id
            )

        view = (await c.request("GET", "n1", "/cluster")).json()
        self.assertEqual(
            sorted(node["http"] for node in view["nodes"]),
            sorted(c.url(node_id) for node_id in c.node_ids),
        )
