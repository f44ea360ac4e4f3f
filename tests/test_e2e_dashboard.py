# -*- test-case-name: tests.test_e2e_dashboard -*-
"""
The dashboard (C{GET /}) of a real three-node cluster (L{tests.e2e.RealCluster})
in headless Chromium, driven over the DevTools protocol with the helpers of
L{tests.test_dashboard}.  Skipped when Debian's C{chromium} is not installed.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from twisted.trial.unittest import TestCase

import tests.test_dashboard as dashboard
from tests.e2e import RealCluster, kv_path


class ClusterDashboardTests(TestCase):
    """
    The page served by a follower of a real cluster.
    """

    if dashboard.CHROMIUM is None:
        skip = "Debian's chromium is not installed (apt-get install chromium)"

    timeout = 120

    async def test_cluster_in_the_browser(self) -> None:
        """
        The page, loaded from a node that is not the leader, shows that
        node, the leader, its term and the three nodes; a key created
        through the page is stored for the whole cluster and its event
        arrives in the live feed, as does a change made through another
        node; the summary says that one node may be lost, and once one is
        killed, that none more may, with the dead node's keys as "—" and
        not synced; nothing fails and nothing is loaded from elsewhere.
        """
        cluster = RealCluster(3, self.mktemp(), election_timeout="1s")
        self.addCleanup(cluster.stop_all)
        leader = await cluster.start()
        served_by, elsewhere = [n for n in cluster.node_ids if n != leader]
        view = await cluster.cluster_view(served_by)
        # What BrowserTests.problems reads: the browser and the page's node.
        self.node = SimpleNamespace(url=cluster.url(served_by))
        self.browser = await dashboard.launch_browser(self)

        page = await dashboard.open_page(self.browser, cluster.url(served_by, "/"), 1280, 900)
        await page.wait_for("document.querySelectorAll('#nodes tr').length === 3")
        rows = await page.evaluate(
            "Array.from(document.querySelectorAll('#nodes tr'), tr => tr.dataset.node)"
        )
        self.assertEqual(sorted(rows), cluster.node_ids)
        await page.wait_for(f"document.getElementById('leader-id').textContent === {json.dumps(leader)}")
        summary = await page.evaluate(
            "['self-id', 'leader-id', 'term'].map(id => document.getElementById(id).textContent)"
        )
        self.assertEqual(summary, [served_by, leader, str(view["term"])])
        marked = await page.evaluate(
            "Array.from(document.querySelectorAll('#nodes tr.leader'), tr => tr.dataset.node)"
        )
        self.assertEqual(marked, [leader])
        await page.wait_for("document.getElementById('feed-state').textContent === 'live'")

        key = "dashboard/é from the page"
        arrived = await dashboard.create_through_page(page, key, "hello from the browser")
        self.assertIn("hello from the browser", arrived)
        await page.wait_for(
            "Array.from(document.querySelectorAll('#key-list button'))"
            f".some(b => b.dataset.key === {json.dumps(key)})"
        )
        for node_id in cluster.node_ids:
            reply = await cluster.request("GET", node_id, kv_path(key))
            self.assertEqual((reply.status, reply.body), (200, b"hello from the browser"), node_id)

        reply = await cluster.request("PUT", elsewhere, kv_path("dashboard/other node"), b"via HTTP")
        self.assertIn(reply.status, (200, 201), reply)
        arrived = await page.wait_for(
            """Array.from(document.querySelectorAll('#event-list li'))
                .filter(li => li.dataset.name === 'dashboard/other node' && li.dataset.type === 'put')
                .map(li => li.textContent)[0]"""
        )
        self.assertIn("via HTTP", arrived)
        await page.wait_for(
            "document.getElementById('cluster-summary').textContent === '3 of 3 alive: can lose 1 more'"
        )
        await page.screenshot("dashboard-cluster", self.mktemp())
        self.assertEqual(dashboard.BrowserTests.problems(self), [])
        seen = len(self.browser.events)

        await cluster.kill(elsewhere)
        await page.wait_for(
            "document.getElementById('cluster-summary').textContent === '2 of 3 alive: can lose 0 more'"
        )
        row = await page.wait_for(
            f"""(() => {{
                const cells = document.querySelector('#nodes tr[data-node={elsewhere}]').cells;
                const text = Array.from(cells, c => c.textContent);
                return cells[2].textContent === '—' && [text[1], text[2], text[4]];
            }})()"""
        )
        self.assertEqual(row, ["dead", "—", "no"])
        await page.screenshot("dashboard-cluster-node-dead", self.mktemp())
        # Until the killed node is taken for dead, the key listing the page
        # asks for may be refused with 503 (the browser logs each refusal);
        # nothing else may go wrong.
        del self.browser.events[:seen]
        refused = "log: Failed to load resource: the server responded with a status of 503"
        problems = dashboard.BrowserTests.problems(self)
        self.assertEqual([p for p in problems if not p.startswith(refused)], [])
