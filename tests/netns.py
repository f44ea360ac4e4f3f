# -*- test-case-name: tests.test_e2e_partition -*-
"""
Real-process clusters whose nodes each run in a network namespace of their
own (Linux), joined by a bridge, so that a test can cut the link between two
nodes and heal it: a network partition as the nodes' TCP connections see it,
packets silently lost.  The test process reaches every node through the
bridge.

Needs root (CAP_NET_ADMIN) and iproute2's C{ip}; L{NamespacedCluster}
raises L{SkipTest} without them::

    cluster = NamespacedCluster(3, self.mktemp())
    self.addCleanup(cluster.stop_all)     # stops the nodes, then removes the namespaces
    await cluster.start()
    cluster.network.isolate("n1", cluster.node_ids)
    cluster.network.heal()
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from typing import Any, Iterable

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest

from tests.e2e import RealCluster

_instances = itertools.count()

# The nodes listen on the same ports, each in its own namespace.
_PORTS = (7001, 7101, 7201)

# The names of the namespaces and links of this module start with "kv",
# the creating process's id and "x" (interface names have 15 characters
# at most: "kv" + 7 digits + "x" + 2 digits + "v" + the node's index).
_OWNED_NAME = re.compile(r"^(?:\d+: )?(kv(\d+)x\w+)", re.MULTILINE)


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, text=True)


def _remove_orphans() -> None:
    """
    Delete the namespaces and bridges left by test processes that were
    killed before they could remove them (a namespace takes its end of
    each veth pair with it).
    """
    listings = {
        ("netns", "del"): ["ip", "netns", "list"],
        ("link", "del"): ["ip", "-o", "link", "show", "type", "bridge"],
    }
    for removal, listing in listings.items():
        output = subprocess.run(listing, capture_output=True, text=True).stdout
        for owner in _OWNED_NAME.finditer(output):
            if not _alive(int(owner.group(2))):
                subprocess.run(["ip", *removal, owner.group(1)], capture_output=True)


def _alive(pid: int) -> bool:
    """
    Whether a process with this id exists.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class Namespaces:
    """
    One namespace per node, each with one address on a common bridge, and
    the links cut between them.
    """

    def __init__(self, node_ids: Iterable[str]) -> None:
        if shutil.which("ip") is None:
            raise SkipTest("network namespaces need iproute2's ip")
        _remove_orphans()
        tag = f"{os.getpid()}x{next(_instances)}"
        self.bridge = f"kv{tag}b"
        subnet = self._free_subnet()
        self._names = {node_id: f"kv{tag}{node_id}" for node_id in node_ids}
        self._addresses = {node_id: f"{subnet}.{i}" for i, node_id in enumerate(self._names, 1)}
        self._cut: set[tuple[str, str]] = set()
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
        except subprocess.CalledProcessError as error:
            raise SkipTest(f"cannot create network namespaces: {error.stderr.strip()}") from None
        try:
            _ip("addr", "add", f"{subnet}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for index, (node_id, name) in enumerate(self._names.items(), 1):
                veth = f"kv{tag}v{index}"
                _ip("netns", "add", name)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", name, "addr", "add", f"{self._addresses[node_id]}/24", "dev", "eth0")
                _ip("-n", name, "link", "set", "eth0", "up")
                _ip("-n", name, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as error:
            self.remove()
            raise SkipTest(f"cannot set up network namespaces: {error.stderr.strip()}") from None

    @staticmethod
    def _free_subnet() -> str:
        """
        A /24 in 10.233.0.0/16 that no interface of this host uses.
        """
        used = subprocess.run(
            ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True
        ).stdout
        start = os.getpid() % 250
        for offset in range(250):
            subnet = f"10.233.{(start + offset) % 250}"
            if f" {subnet}." not in used:
                return subnet
        raise SkipTest("no free subnet in 10.233.0.0/16")

    def address(self, node_id: str) -> str:
        return self._addresses[node_id]

    def namespace(self, node_id: str) -> str:
        return self._names[node_id]

    def cut(self, a: str, b: str) -> None:
        """
        Lose every packet between nodes C{a} and C{b}, both ways.
        """
        for source, target in ((a, b), (b, a)):
            if (source, target) not in self._cut:
                _ip("-n", self._names[source], "route", "add", "blackhole", f"{self._addresses[target]}/32")
                self._cut.add((source, target))

    def isolate(self, node_id: str, others: Iterable[str]) -> None:
        """
        Cut C{node_id} from every one of C{others}.
        """
        for other in others:
            if other != node_id:
                self.cut(node_id, other)

    def heal(self) -> None:
        """
        Restore every link cut.
        """
        for source, target in sorted(self._cut):
            _ip("-n", self._names[source], "route", "del", "blackhole", f"{self._addresses[target]}/32")
        self._cut.clear()

    def remove(self) -> None:
        """
        Delete the namespaces and the bridge (run once the nodes are gone).
        """
        for name in self._names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class NamespacedCluster(RealCluster):
    """
    A L{RealCluster} whose nodes each run in a network namespace of their
    own; L{network} cuts and heals the links between them.
    """

    def __init__(self, size: int, tmpdir: str, **options: Any) -> None:
        self.network = Namespaces(f"n{i}" for i in range(1, size + 1))
        super().__init__(size, tmpdir, **options)

    def host(self, node_id: str) -> str:
        return self.network.address(node_id)

    def _choose_ports(self) -> dict[str, tuple[int, int, int]]:
        return {node_id: _PORTS for node_id in self.node_ids}

    def _command(self, node_id: str) -> list[str]:
        ip = shutil.which("ip") or "ip"
        return [ip, "netns", "exec", self.network.namespace(node_id), *super()._command(node_id)]

    def stop_all(self, timeout: float = 10.0) -> Deferred[None]:
        def remove_namespaces(result: object) -> object:
            self.network.remove()
            return result

        return super().stop_all(timeout).addBoth(remove_namespaces)
