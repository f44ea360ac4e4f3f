"""
Tests for L{twisted_kv.app.service}: one node's service tree.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.app.service import build_node_service, check_ports, listen_endpoint, open_disk
from twisted_kv.storage.log import encode_record
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
            ["peers", "node", "changes", "password-checks", "http", "ftp", "orphan-collector"],
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
        self.assertEqual(
            str(caught.exception),
            f"kvnode n1: cannot listen on 127.0.0.1:{me.ftp_port} (ftp_port):"
            " address already in use",
        )

    def test_ipv6_interface_escaped(self) -> None:
        """
        An IPv6 host's colons are escaped in the endpoint description.
        """
        self.assertEqual(listen_endpoint("::1", 80), "tcp:80:interface=\\:\\:1")


class _Socket:
    """
    A socket that records what is done to it; binding to C{refused} fails
    with C{error}.
    """

    def __init__(self, log: list[tuple[Any, ...]], refused: int, error: int) -> None:
        self._log = log
        self._refused = refused
        self._error = error

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._log.append(("close",))

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self._log.append(("setsockopt", level, option, value))

    def bind(self, address: tuple[str, int]) -> None:
        self._log.append(("bind", address))
        if address[1] == self._refused:
            raise OSError(self._error, "refused")


class CheckPortsTests(SynchronousTestCase):
    """
    L{check_ports} finds a port the node cannot listen on before twistd
    starts logging, so that it is reported in one line.
    """

    def check(self, refused: int = 0, error: int = errno.EADDRINUSE) -> list[tuple[Any, ...]]:
        log: list[tuple[Any, ...]] = []

        def make_socket(family: int, kind: int) -> _Socket:
            log.append(("socket", family, kind))
            return _Socket(log, refused, error)

        check_ports(cluster_config(3).node("n2"), _socket=make_socket)
        return log

    def test_all_free(self) -> None:
        """
        Each port is bound, as Twisted binds it (C{SO_REUSEADDR}, so that a
        port in C{TIME_WAIT} is not taken for a busy one), and let go.
        """
        me = cluster_config(3).node("n2")
        expected = []
        for port in (me.http_port, me.peer_port, me.ftp_port):
            expected += [
                ("socket", socket.AF_INET, socket.SOCK_STREAM),
                ("setsockopt", socket.SOL_SOCKET, socket.SO_REUSEADDR, 1),
                ("bind", ("127.0.0.1", port)),
                ("close",),
            ]
        self.assertEqual(self.check(), expected)

    def test_busy(self) -> None:
        """
        A port in use is one line naming the node, the address, the key and
        the reason, in words.
        """
        me = cluster_config(3).node("n2")
        with self.assertRaises(SystemExit) as caught:
            self.check(refused=me.peer_port)
        self.assertEqual(
            str(caught.exception),
            f"kvnode n2: cannot listen on 127.0.0.1:{me.peer_port} (peer_port):"
            " address already in use",
        )

    def test_not_allowed(self) -> None:
        """
        Other reasons are given in words too.
        """
        me = cluster_config(3).node("n2")
        with self.assertRaises(SystemExit) as caught:
            self.check(refused=me.http_port, error=errno.EACCES)
        self.assertEqual(
            str(caught.exception),
            f"kvnode n2: cannot listen on 127.0.0.1:{me.http_port} (http_port):"
            " permission denied",
        )


class DataDirTests(SynchronousTestCase):
    """
    The service opens the node's data directory, and refuses a damaged one
    in one line.
    """

    def test_opened(self) -> None:
        """
        With C{data_dir}, the node gets its data directory, created under
        C{data_dir/NODE}.
        """
        data = self.mktemp()
        config = cluster_config(3, data_dir=data)
        disk = open_disk(config, "n2", MemoryReactorClock())
        assert disk is not None
        self.assertEqual(disk.path, os.path.join(data, "n2"))
        self.assertTrue(os.path.isdir(disk.path))
        self.assertIsNone(open_disk(cluster_config(3), "n2", MemoryReactorClock()))

    def test_damaged(self) -> None:
        """
        A damaged log is moved aside with one line naming the file, and the
        node starts from an empty directory.
        """
        data = self.mktemp()
        config = cluster_config(3, data_dir=data)
        disk = open_disk(config, "n1", MemoryReactorClock())
        assert disk is not None
        segment = os.path.join(disk.path, sorted(os.listdir(disk.path))[0])
        with open(segment, "wb") as f:
            f.write(b"\xff" * 64 + encode_record(1, b"\x90"))
        with capturedLogs() as events:
            disk = open_disk(config, "n1", MemoryReactorClock())
        assert disk is not None
        self.assertEqual(disk.recovered.records, 0)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(segment, lines[0])
        self.assertIn(f"moved {disk.path} to {disk.path}.damaged-1", lines[0])
        self.assertEqual(
            os.listdir(disk.path + ".damaged-1"), [os.path.basename(segment)]
        )
