# -*- test-case-name: tests.test_plugin -*-
"""
Tests for the C{kvnode} twistd plugin (C{twisted/plugins/kvnode_plugin.py}).
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.app import tap

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PluginTests(SynchronousTestCase):
    """
    twistd finds C{kvnode}, and loading it stays cheap.
    """

    def kvnode(self) -> IServiceMaker:
        found = [p for p in getPlugins(IServiceMaker) if p.tapname == "kvnode"]
        self.assertEqual(len(found), 1, found)
        return found[0]

    def test_found(self) -> None:
        """
        C{getPlugins(IServiceMaker)} finds exactly one C{kvnode}, which is
        also an L{IPlugin}.
        """
        plugin = self.kvnode()
        self.assertTrue(IPlugin.providedBy(plugin))
        self.assertEqual(
            (plugin.name, plugin.tapname, plugin.module),
            ("twisted_kv node", "kvnode", "twisted_kv.app.tap"),
        )

    def test_uses_tap(self) -> None:
        """
        The plugin's options and service maker are those of
        L{twisted_kv.app.tap}.
        """
        plugin = self.kvnode()
        self.assertIs(plugin.options, tap.Options)
        self.assertIs(plugin.makeService, tap.makeService)

    def test_cheap_import(self) -> None:
        """
        Importing the plugin file (as twistd does on every start) does not
        import the node's code.
        """
        script = (
            "import sys; import twisted.plugins.kvnode_plugin;"
            " print(sorted(m for m in sys.modules if m.startswith('twisted_kv')))"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=_REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        self.assertEqual(result.stdout, "[]\n")
