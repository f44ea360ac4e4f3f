# -*- test-case-name: tests.test_benchlib -*-
"""
Tests for the pure helpers of C{bench/benchlib.py}, which the benchmarks'
reports rely on.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from types import ModuleType
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import free_ports


def _load_benchlib() -> ModuleType:
    """
    C{bench/benchlib.py}: the benchmarks import it from their own folder,
    which is no package.
    """
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "benchlib.py")
    spec = importlib.util.spec_from_file_location("benchlib", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchlib = _load_benchlib()

# A mount table as /proc/mounts gives it: ext4 at the root, a tmpfs on /tmp
# and one hiding an earlier mount of /srv/data, a mount point with a space.
_MOUNTS = """\
/dev/vda / ext4 rw,relatime,discard 0 0
proc /proc proc rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
/dev/vdb /srv/data xfs rw,relatime 0 0
tmpfs /srv/data tmpfs rw,relatime 0 0
/dev/vdc /mnt/my\\040disk btrfs rw,relatime 0 0
"""


class MountTypeTests(SynchronousTestCase):
    """
    L{benchlib.mount_type}: the file system a path is on, from the mount
    table.
    """

    def test_longest_mount_point(self) -> None:
        """
        A path is on the file system of the longest mount point holding it:
        the root's ext4 (not C{stat -f}'s "ext2/ext3") unless a deeper mount
        holds it; a name that merely starts like a mount point is not in it.
        """
        cases = {
            "/home/kv/data": "ext4",
            "/": "ext4",
            "/tmp": "tmpfs",
            "/tmp/kvbench-1/disk": "tmpfs",
            "/tmpfiles/x": "ext4",
            "/proc/1/stat": "proc",
        }
        self.assertEqual({path: benchlib.mount_type(_MOUNTS, path) for path in cases}, cases)

    def test_later_mount_hides_earlier(self) -> None:
        """
        Of two mounts on one point, the later one is what a path there is
        on.
        """
        self.assertEqual(benchlib.mount_type(_MOUNTS, "/srv/data/n1"), "tmpfs")

    def test_escaped_mount_point(self) -> None:
        """
        A mount point's octal escapes (C{\\040}, a space) are decoded
        before matching.
        """
        self.assertEqual(benchlib.mount_type(_MOUNTS, "/mnt/my disk/kv"), "btrfs")
        self.assertEqual(benchlib.mount_type(_MOUNTS, "/mnt/my"), "ext4")

    def test_unknown(self) -> None:
        """
        Without a mount holding the path (or a table), the type is unknown.
        """
        self.assertEqual(benchlib.mount_type("", "/data"), "?")
        self.assertEqual(benchlib.mount_type("tmpfs /tmp tmpfs rw 0 0\nbad line\n", "/data"), "?")


class PortsTests(SynchronousTestCase):
    """
    L{benchlib.Ports}: free loopback ports, each claimed by one run until
    it releases them, so that runs started at once never share one.
    """

    def setUp(self) -> None:
        self.lock_dir = self.mktemp()
        self.candidates = free_ports(3)

    def ports(self) -> Any:
        """
        A L{benchlib.Ports} of this test's candidates, as a run of its own
        has one; released when the test ends.
        """
        ports = benchlib.Ports(self.candidates, self.lock_dir)
        self.addCleanup(ports.release)
        return ports

    def test_runs_take_different_ports(self) -> None:
        """
        A port one run took, not yet listened on, is not handed to another
        run; once released, it is free again.
        """
        first = self.ports()
        taken = first.take()
        second = self.ports()
        self.assertEqual(sorted([taken, second.take(), second.take()]), sorted(self.candidates))
        self.assertRaises(RuntimeError, second.take)
        first.release()
        self.assertEqual(self.ports().take(), taken)

    def test_bound_port_skipped(self) -> None:
        """
        A port something is bound to is skipped and not kept claimed: once
        it is closed, a run takes it.
        """
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", self.candidates[0]))
        self.assertEqual(self.ports().take(), self.candidates[1])
        busy.close()
        self.assertEqual(self.ports().take(), self.candidates[0])
