# -*- test-case-name: tests.test_deployment -*-
"""
The deployment files say what CONTRACT.md §11 asks of them: the Dockerfile
takes its base from C{ARG BASE}, every port compose.yaml publishes on the
host can be overridden, its cluster file is valid, and the systemd unit
passes C{systemd-analyze verify}.  (tests/test_container.py builds and runs
the image and the Compose cluster.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from twisted_kv.core.config import load_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path: str) -> str:
    with open(os.path.join(_REPO, *path), encoding="utf-8") as f:
        return f.read()


def _instructions(dockerfile: str) -> list[str]:
    """
    The Dockerfile's instructions, one a line (continuations joined,
    comments dropped).
    """
    joined = re.sub(r"\\\n", " ", dockerfile)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class DockerfileTests(SynchronousTestCase):
    """
    The Dockerfile's shape.
    """

    def test_base_argument(self) -> None:
        """
        It starts with C{ARG BASE} (a slim Python image by default), and both
        stages are built from C{${BASE}}; the second installs the first's
        wheels without an index.
        """
        instructions = _instructions(_read("Dockerfile"))
        self.assertRegex(instructions[0], r"^ARG BASE=python:[0-9.]+-slim")
        self.assertEqual(
            [line for line in instructions if line.startswith("FROM")],
            ["FROM ${BASE} AS build", "FROM ${BASE}"],
        )
        self.assertIn("--no-index", instructions[instructions.index("FROM ${BASE}") + 2])

    def test_runs_a_node(self) -> None:
        """
        It runs as a user other than root, keeps the data directory in a
        volume, declares a stop signal and a health check, and execs twistd
        (PID 1) with the node and cluster file of the environment.
        """
        instructions = _instructions(_read("Dockerfile"))
        self.assertIn("USER kv", instructions)
        self.assertIn('VOLUME ["/var/lib/twisted-kv"]', instructions)
        self.assertIn("STOPSIGNAL SIGTERM", instructions)
        self.assertTrue(any(line.startswith("HEALTHCHECK ") for line in instructions))
        entrypoint = [line for line in instructions if line.startswith("ENTRYPOINT")]
        self.assertEqual(len(entrypoint), 1)
        self.assertIn('exec twistd -n --pidfile= kvnode --config \\"$KV_CONFIG\\" --node \\"$KV_NODE\\"', entrypoint[0])


class ComposeTests(SynchronousTestCase):
    """
    compose.yaml and its cluster file.
    """

    def test_published_ports_overridable(self) -> None:
        """
        Every port published on the host is C{${VAR:-default}}, a different
        variable for each, and a passive range is published on the same
        numbers it is announced with.
        """
        compose = _read("compose.yaml")
        published = re.findall(r'^\s+- "(.*)"$', compose, re.MULTILINE)
        self.assertEqual(len(published), 9)
        variables = []
        for mapping in published:
            host, container = re.fullmatch(r"(\$\{\w+:-[0-9-]+\}):(.*)", mapping).groups()  # type: ignore[union-attr]
            variables.append(host)
            if "PASSIVE" in host:
                self.assertEqual(container, host)
                self.assertIn(f"--ftp-passive-ports={host}", compose)
        self.assertEqual(len(set(variables)), 9)

    def test_cluster_file(self) -> None:
        """
        etc/cluster-compose.ini names the nodes by service name, listens on
        every address of each container and keeps the data in the volume.
        """
        config = load_config(os.path.join(_REPO, "etc", "cluster-compose.ini"))
        self.assertEqual(
            [(node.node_id, node.host, node.listen_host) for node in config.nodes],
            [("n1", "n1", "0.0.0.0"), ("n2", "n2", "0.0.0.0"), ("n3", "n3", "0.0.0.0")],
        )
        self.assertEqual(config.data_dir, "/var/lib/twisted-kv")
        for node_id in config.node_ids:
            self.assertIn(f"  {node_id}:\n", _read("compose.yaml"))


class SystemdTests(SynchronousTestCase):
    """
    etc/systemd/twisted-kv@.service.
    """

    def test_verify(self) -> None:
        """
        C{systemd-analyze verify} finds nothing to say about an instance of
        the unit (its twistd, not installed here, replaced by this Python,
        which exists wherever the tests run).
        """
        if shutil.which("systemd-analyze") is None:
            raise SkipTest("needs systemd-analyze (apt install systemd)")
        unit = _read("etc", "systemd", "twisted-kv@.service")
        self.assertIn("ExecStart=/opt/twisted-kv/bin/twistd -n --pidfile= kvnode --config /etc/twisted-kv/cluster.ini --node %i", unit)
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "twisted-kv@.service"), "w", encoding="utf-8") as f:
            f.write(unit.replace("/opt/twisted-kv/bin/twistd", sys.executable))
        result = subprocess.run(
            ["systemd-analyze", "verify", os.path.join(directory, "twisted-kv@n1.service")],
            capture_output=True,
            text=True,
        )
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))
