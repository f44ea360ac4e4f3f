# -*- test-case-name: tests.test_layers -*-
"""
The layers of L{twisted_kv} import one way only, as docs/design.md's map
draws them: the pure core and the wire codec import nothing above them, the
node layer no edge, the edges no other edge, the clients nothing of the
server, and only C{app} wires everything together.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import twisted_kv

#: What each part of the package may import of the package, besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "_compat": frozenset(),
    "_autobahn_timer": frozenset(),
    "sending": frozenset({"_compat"}),
    "core": frozenset({"errors"}),
    "wire": frozenset(),
    "storage": frozenset({"errors"}),
    "interfaces": frozenset({"core", "errors"}),
    "tls": frozenset({"core"}),
    "peer": frozenset({"core", "wire", "interfaces", "errors", "tls", "sending"}),
    "cluster": frozenset({"core", "wire", "storage", "interfaces", "errors"}),
    "files": frozenset({"core", "interfaces", "errors"}),
    "logins": frozenset({"core", "errors"}),
    "web": frozenset(
        {"cluster", "files", "core", "interfaces", "errors", "_compat", "logins", "sending"}
    ),
    "ws": frozenset({"files", "core", "interfaces", "errors", "_compat", "_autobahn_timer"}),
    "ftp": frozenset({"files", "core", "interfaces", "errors", "_compat", "tls", "logins"}),
    "client": frozenset({"core", "errors", "_compat", "_autobahn_timer"}),
    "testing": frozenset(
        {"cluster", "core", "wire", "peer", "storage", "interfaces", "errors", "sending"}
    ),
    "app": frozenset(
        {
            "cluster", "client", "core", "wire", "storage", "peer", "files", "web", "ws", "ftp",
            "interfaces", "errors", "_compat", "tls", "logins", "sending",
        }
    ),
}


def _imports(source: str) -> set[str]:
    """
    The parts of C{twisted_kv} that a module's C{source} imports.
    """
    parts = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = node.module.split(".")
            if names[0] != "twisted_kv":
                continue
            if len(names) > 1:
                parts.add(names[1])
            else:
                parts.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "twisted_kv" and len(names) > 1:
                    parts.add(names[1])
    return parts


def package_imports() -> dict[str, set[str]]:
    """
    For every part of C{twisted_kv} (a subpackage or a top-level module),
    the other parts its modules import.
    """
    root = Path(twisted_kv.__file__).parent
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        relative = path.relative_to(root).parts
        part = relative[0].removesuffix(".py")
        if part == "__init__":
            continue
        found.setdefault(part, set()).update(_imports(path.read_text(encoding="utf-8")) - {part})
    return found


class LayerTests(SynchronousTestCase):
    """
    Every import inside the package goes the way the layers allow.
    """

    def test_every_part_has_a_place(self) -> None:
        """
        Every subpackage and top-level module is in the map, so a new one
        cannot slip in without a place in the layers.
        """
        self.assertEqual(set(package_imports()) - set(ALLOWED), set())

    def test_imports_go_one_way(self) -> None:
        """
        No part imports one it may not: nothing under the core imports
        the node layer, no node part imports an edge, and so on.
        """
        wrong = {
            part: sorted(imported - ALLOWED[part])
            for part, imported in package_imports().items()
            if imported - ALLOWED.get(part, frozenset())
        }
        self.assertEqual(wrong, {})

    def test_detects_an_upward_import(self) -> None:
        """
        The scan sees both forms of import, so a core module importing the
        node layer would be found.
        """
        self.assertEqual(
            _imports("from twisted_kv.cluster import node\nimport twisted_kv.web.site\n"),
            {"cluster", "web"},
        )
        self.assertEqual(_imports("from twisted_kv import errors, interfaces\n"), {"errors", "interfaces"})
