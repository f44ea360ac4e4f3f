"""
Tests for L{twisted_kv.service}: one node's service tree.
"""

from __future__ import annotations

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.service import build_node_service, listen_endpoint
from twisted_kv.testing import cluster_config


class BusyPortReactor(MemoryReactorClock):
    """
    A memory reactor on which one port is already taken.
    """

    def __init__(self, busy: int) -> None:
        super().__init__()
        self._busy = busy

    def listenTCP(self, port, factory, backlog=50, interface=""):  # type: ignore[no-untyped-def]
        if port == self._busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


class ServiceTests(SynchronousTestCase):
    """
    The node listens on its three ports, dials its peers, and names the
    config key of a port it cannot listen on.
    """

    def test_listens_and_dials(self) -> None:
        """
        Starting the service listens on the node's HTTP, peer and FTP ports on
        its host and connects to every other node's peer port.
        """
        config = cluster_config(3)
        reactor = MemoryReactorClock()
        service = build_node_service(config, "n2", reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        me = config.node("n2")
        listened = sorted((port, interface) for port, _, _, interface in reactor.tcpServers)
        self.assertEqual(
            listened,
            sorted((p, "127.0.0.1") for p in (me.http_port, me.peer_port, me.ftp_port)),
        )
        dialled = sorted(port for _, port, _, _, _ in reactor.tcpClients)
        self.assertEqual(dialled, sorted(n.peer_port for n in config.peers("n2")))
        self.assertEqual(
            [child.name for child in service],
            ["peers", "node", "changes", "http", "ftp", "orphan-collector"],
        )

    def test_busy_port_is_one_line(self) -> None:
        """
        A port already in use ends start-up with one line naming the file,
        the node's section and the key.
        """
        config = cluster_config(3)
        me = config.node("n1")
        service = build_node_service(config, "n1", BusyPortReactor(me.ftp_port))
        with self.assertRaises(SystemExit) as caught:
            service.privilegedStartService()
            service.startService()
        message = str(caught.exception)
        self.assertIn("<test>: [node:n1] ftp_port: cannot listen on 127.0.0.1:", message)
        self.assertNotIn("\n", message)

    def test_ipv6_interface_escaped(self) -> None:
        """
        An IPv6 host's colons are escaped in the endpoint description.
        """
        self.assertEqual(listen_endpoint("::1", 80), "tcp:80:interface=\\:\\:1")
