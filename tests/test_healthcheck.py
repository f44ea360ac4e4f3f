# -*- test-case-name: tests.test_healthcheck -*-
"""
Tests for L{twisted_kv.app.healthcheck}: the container image's health check
finds the node process 1 runs and asks its C{/health}.
"""

from __future__ import annotations

import io
import os
import sys
import urllib.error
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.app.healthcheck import health_url, main, node_arguments
from twisted_kv.core.config import NodeConfig

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LOCAL = os.path.join(_REPO, "etc", "cluster-local.ini")


def _node(host: str, bind: Any = None) -> NodeConfig:
    return NodeConfig(node_id="n1", host=host, bind=bind, http_port=7001, peer_port=7101, ftp_port=7201)


class _Reply:
    status = 200

    def __enter__(self) -> "_Reply":
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class HealthCheckTests(SynchronousTestCase):
    """
    The node of process 1's command line, its URL and the verdict.
    """

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.asked: list[tuple[str, float]] = []

    def cmdline(self, *words: str) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"".join(word.encode() + b"\0" for word in words))
        return path

    def test_node_arguments(self) -> None:
        """
        The options after C{kvnode} in a NUL-separated command line; a
        command line without C{kvnode} is refused.
        """
        self.assertEqual(
            node_arguments(b"/opt/twisted-kv/bin/python3\0/opt/twisted-kv/bin/twistd\0-n\0"
                           b"--pidfile=\0kvnode\0--config\0/etc/c.ini\0--node\0\0--node\0n2\0"),
            ["--config", "/etc/c.ini", "--node", "", "--node", "n2"],
        )
        self.assertRaises(ValueError, node_arguments, b"/bin/sh\0-c\0sleep 1\0")

    def test_health_url(self) -> None:
        """
        The node is asked where it listens: on loopback when that is every
        interface; IPv6 addresses are bracketed.
        """
        self.assertEqual(
            [health_url(node) for node in [_node("n1"), _node("n1", "0.0.0.0"), _node("n1", "::"), _node("::1")]],
            [
                "http://n1:7001/health",
                "http://127.0.0.1:7001/health",
                "http://[::1]:7001/health",
                "http://[::1]:7001/health",
            ],
        )

    def urlopen(self, url: str, timeout: float) -> _Reply:
        self.asked.append((url, timeout))
        return _Reply()

    def test_healthy(self) -> None:
        """
        Process 1's node (its last C{--node} wins, as for twistd) answering
        C{200}: exit status 0, nothing printed.
        """
        cmdline = self.cmdline("twistd", "-n", "kvnode", "--config", _LOCAL, "--node", "", "--node", "n2")
        self.assertEqual(main([], _cmdline=cmdline, _urlopen=self.urlopen), 0)
        self.assertEqual(self.asked, [("http://127.0.0.1:7002/health", 4.0)])
        self.assertEqual(self.stderr.getvalue(), "")

    def test_unhealthy(self) -> None:
        """
        A C{503} (or no answer) is exit status 1 and one line saying why.
        """

        def unavailable(url: str, timeout: float) -> Any:
            body = io.BytesIO(b'{"error": "unavailable",\n "reason": "no_majority"}')
            raise urllib.error.HTTPError(url, 503, "Service Unavailable", {}, body)  # type: ignore[arg-type]

        def refused(url: str, timeout: float) -> Any:
            raise ConnectionRefusedError(111, "Connection refused")

        arguments = ["--config", _LOCAL, "--node", "n1"]
        self.assertEqual(main(arguments, _urlopen=unavailable), 1)
        self.assertEqual(main(arguments, _urlopen=refused), 1)
        self.assertEqual(
            self.stderr.getvalue(),
            'healthcheck: http://127.0.0.1:7001/health: 503 {"error": "unavailable", "reason": "no_majority"}\n'
            "healthcheck: http://127.0.0.1:7001/health: [Errno 111] Connection refused\n",
        )

    def test_not_a_node(self) -> None:
        """
        Process 1 not being a node, or naming an unknown one, is exit
        status 1 and one line.
        """
        self.assertEqual(main([], _cmdline=self.cmdline("/bin/sh"), _urlopen=self.urlopen), 1)
        self.assertEqual(main(["--config", _LOCAL, "--node", "n9"], _urlopen=self.urlopen), 1)
        self.assertEqual(
            self.stderr.getvalue().splitlines(),
            [
                "healthcheck: process 1 is not twistd kvnode",
                f"healthcheck: {_LOCAL}: --node: unknown node id 'n9' (the file defines n1, n2, n3)",
            ],
        )
        self.assertEqual(self.asked, [])
