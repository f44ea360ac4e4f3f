# -*- test-case-name: tests.test_netns -*-
"""
Tests for L{tests.netns}: the namespaces of the partition tests are removed,
even those of a test process that was killed before it could remove them.
"""

from __future__ import annotations

import os
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import Namespaces


def _namespaces() -> set[str]:
    output = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in output.splitlines() if line.strip()}


def _dead_pid() -> int:
    """
    The id of a process that does not exist.
    """
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


class NamespacesTests(SynchronousTestCase):
    """
    L{Namespaces} creates one namespace per node and removes them all.
    """

    def test_created_and_removed(self) -> None:
        """
        A namespace per node exists until L{Namespaces.remove}.
        """
        network = Namespaces(["n1", "n2"])
        self.addCleanup(network.remove)
        names = {network.namespace("n1"), network.namespace("n2")}
        self.assertLessEqual(names, _namespaces())
        network.remove()
        self.assertFalse(names & _namespaces())

    def test_orphans_removed(self) -> None:
        """
        Namespaces and bridges named for a process that no longer exists are
        removed when new ones are made; those of live processes stay.
        """
        orphan = f"kv{_dead_pid()}x0"
        subprocess.run(["ip", "netns", "add", f"{orphan}n1"], capture_output=True)
        subprocess.run(["ip", "link", "add", f"{orphan}b", "type", "bridge"], capture_output=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", f"{orphan}n1"], capture_output=True)
        self.addCleanup(subprocess.run, ["ip", "link", "del", f"{orphan}b"], capture_output=True)
        network = Namespaces(["n1"])
        self.addCleanup(network.remove)
        self.assertNotIn(f"{orphan}n1", _namespaces())
        self.assertIn(network.namespace("n1"), _namespaces())
        bridges = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        self.assertNotIn(f"{orphan}b:", bridges)
        self.assertIn(f"{network.bridge}:", bridges)
