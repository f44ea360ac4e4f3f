# -*- test-case-name: tests.test_e2e_users -*-
"""
Users and permissions (CONTRACT.md section 9) on a real three-node cluster
(L{tests.e2e.RealCluster}) over plain HTTP, driven with real clients: curl
with C{-u} and bearer tokens, the Python clients over HTTP and WebSocket,
C{kvctl} run as a process, and ftplib.
"""

from __future__ import annotations

import ftplib
import io
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

import tests.test_dashboard as dashboard
from tests.e2e import RealCluster, kv_path
from tests.polling import poll
from twisted_kv.client import TxClient
from twisted_kv.core.passwords import hash_password

ALICE_PASSWORD = "wonder land:1"
USERS = {
    "root": {"password": "plain:toor", "read": "*", "write": "*", "files": "*", "admin": "yes"},
    "alice": {
        "password": hash_password(ALICE_PASSWORD),
        "read": "users/, public/",
        "write": "users/alice/",
        "files": "/alice/",
    },
}
ALICE = f"alice:{ALICE_PASSWORD}"
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def _kvctl(url: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twisted_kv.app.kvctl", "--node", url, *argv],
        capture_output=True, text=True, timeout=60,
    )


def _ftp(port: int, user: str, password: str) -> ftplib.FTP:
    client = ftplib.FTP(timeout=30)
    client.connect("127.0.0.1", port)
    client.login(user, password)
    return client


async def start_cluster(test: TestCase) -> RealCluster:
    """
    Start a cluster of L{USERS} and C{[ftp_users]} C{bob}, stopped when
    C{test} ends; its own requests log in as root.
    """
    cluster = RealCluster(
        3,
        test.mktemp(),
        election_timeout="1s",
        ftp_users={"bob": "plain:builder"},
        users=USERS,
        login="root:toor",
    )
    test.addCleanup(cluster.stop_all)
    await cluster.start()
    return cluster


class UsersTests(TestCase):
    """
    A cluster with users C{root} (everything) and C{alice} (a hashed
    password, reads C{users/} and C{public/}, writes C{users/alice/},
    files in C{/alice/}), and C{[ftp_users]} C{bob}.
    """

    timeout = 120

    async def curl(self, *args: str) -> tuple[int, str, str]:
        """
        Run curl: the status, the head and the body of its answer.
        """
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        out, err, code = await getProcessOutputAndValue(curl, ["-s", "-S", "-i", *args], env=os.environ)
        self.assertEqual(code, 0, err)
        head, _, body = out.decode("utf-8").partition("\r\n\r\n")
        return int(head.split(" ", 2)[1]), head, body

    async def test_http_websocket_and_kvctl(self) -> None:
        """
        curl needs credentials (C{401} with C{WWW-Authenticate} without),
        Basic or a token from C{/auth/token} that every node accepts, and
        stays inside alice's prefixes (C{403}, for missing keys too); her
        watch over WebSocket (Basic on the upgrade, or C{?token=}) and her
        listings show only what she may read; kvctl logs in with
        C{--user} or C{--token}; C{/health} is open; no password or token
        shows in the logs.
        """
        c = await start_cluster(self)
        url = {n: c.url(n, kv_path("users/alice/note")) for n in c.node_ids}
        status, head, body = await self.curl("-X", "PUT", "--data-binary", "x", url["n1"])
        self.assertEqual(status, 401)
        self.assertIn('www-authenticate: basic realm="twisted_kv"', head.lower())
        self.assertEqual(json.loads(body)["error"], "unauthorized")
        status, _, _ = await self.curl("-u", "alice:wrong", url["n1"])
        self.assertEqual(status, 401)
        status, _, _ = await self.curl("-u", ALICE, "-X", "PUT", "--data-binary", "mine", url["n1"])
        self.assertEqual(status, 201)
        status, _, body = await self.curl("-u", ALICE, url["n2"])
        self.assertEqual((status, body), (200, "mine"))
        for path in ["private/x", "private/missing"]:
            status, _, body = await self.curl("-u", ALICE, c.url("n2", kv_path(path)))
            self.assertEqual((status, json.loads(body)["error"]), (403, "forbidden"), path)
        public = c.url("n2", kv_path("public/y"))
        status, _, _ = await self.curl("-u", ALICE, "-X", "PUT", "-d", "y", public)
        self.assertEqual(status, 403)
        status, _, _ = await self.curl(c.url("n3", "/health"))
        self.assertEqual(status, 200)

        status, _, body = await self.curl("-u", ALICE, "-X", "POST", c.url("n1", "/auth/token"))
        self.assertEqual(status, 200)
        token = json.loads(body)["token"]
        bearer = f"Authorization: Bearer {token}"
        status, _, body = await self.curl("-H", bearer, url["n3"])
        self.assertEqual((status, body), (200, "mine"))

        # Watches: alice's, with Basic and with a token, see public/ and
        # users/ changes only.
        refused = await c.request("GET", "n1", "/ws", headers=UPGRADE)
        self.assertEqual(refused.status, 401)
        seen: dict[str, list[dict]] = {"basic": [], "token": []}
        watchers = [
            TxClient(c.url("n2"), user=ALICE).watch(seen["basic"].append),
            TxClient(c.url("n3"), token=token).watch(seen["token"].append),
        ]
        for watcher in watchers:
            self.addCleanup(watcher.stop)
            await watcher.when_watching()
        for key in ["private/secret", "public/news", "users/bob", "private/more", "public/last"]:
            reply = await c.request("PUT", "n1", kv_path(key), b"v")
            self.assertIn(reply.status, (200, 201))
        for name, events in seen.items():
            await poll(lambda: any(e.get("key") == "public/last" for e in events), 10, f"{name} watch")
            keys = [e["key"] for e in events]
            self.assertEqual(keys, ["public/news", "users/bob", "public/last"], name)

        root = await c.request("GET", "n1", "/kv")
        self.assertIn("private/secret", root.json()["keys"])
        status, _, body = await self.curl("-H", bearer, c.url("n2", "/kv?limit=2"))
        self.assertEqual(status, 200)
        page = json.loads(body)
        self.assertEqual(page, {"keys": ["public/last", "public/news"], "next": "public/news"})

        listed = await deferToThread(_kvctl, c.url("n1"), "--user", ALICE, "list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertEqual(
            listed.stdout.split(), ["public/last", "public/news", "users/alice/note", "users/bob"]
        )
        refused_put = await deferToThread(
            _kvctl, c.url("n1"), "--token", token, "put", "private/x", "v"
        )
        self.assertEqual(refused_put.returncode, 1)
        self.assertIn("(403)", refused_put.stderr)
        got = await deferToThread(_kvctl, c.url("n3"), "--token", token, "get", "users/alice/note")
        self.assertEqual((got.returncode, got.stdout), (0, "mine"))
        made = await deferToThread(_kvctl, c.url("n2"), "--user", ALICE, "token")
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertIn("expires", json.loads(made.stdout))
        anonymous = await deferToThread(_kvctl, c.url("n2"), "get", "users/alice/note")
        self.assertEqual(anonymous.returncode, 1)
        self.assertIn("(401)", anonymous.stderr)
        for node_id in c.node_ids:
            for secret in [ALICE_PASSWORD, token, "toor", "wrong"]:
                self.assertNotIn(secret, c.logs(node_id))

    async def test_ftp_files_and_throttle(self) -> None:
        """
        ftplib logs alice in to her files area, which she cannot leave and
        which C{/files/} shows at C{/alice/}; bob of C{[ftp_users]} sees the
        whole tree.  Repeated wrong passwords from one address are then
        answered C{429} over HTTP and C{421} over FTP.
        """
        c = await start_cluster(self)
        port = c.ftp_port("n2")

        def alice_session() -> tuple[str, str, list[str]]:
            client = _ftp(port, "alice", ALICE_PASSWORD)
            client.storbinary("STOR hello.txt", io.BytesIO(b"hi from ftp"))
            try:
                client.cwd("..")
                climbed = "climbed"
            except ftplib.error_perm as error:
                climbed = str(error)
            where = client.pwd()
            names = client.nlst()
            client.quit()
            return climbed, where, names

        climbed, where, names = await deferToThread(alice_session)
        self.assertTrue(climbed.startswith("550 "), climbed)
        self.assertEqual((where, names), ("/", ["hello.txt"]))
        status, _, body = await self.curl("-u", ALICE, c.url("n3", "/files/alice/hello.txt"))
        self.assertEqual((status, body), (200, "hi from ftp"))
        status, _, _ = await self.curl("-u", ALICE, c.url("n3", "/files/"))
        self.assertEqual(status, 403)

        def bob_session() -> list[str]:
            client = _ftp(port, "bob", "builder")
            names = client.nlst("/alice")
            client.quit()
            return names

        self.assertEqual(await deferToThread(bob_session), ["/alice/hello.txt"])

        for _ in range(6):
            status, _, _ = await self.curl("-u", "alice:guess", c.url("n2", "/cluster"))
            self.assertEqual(status, 401)
        status, head, _ = await self.curl("-u", ALICE, c.url("n2", "/cluster"))
        self.assertEqual(status, 429)
        self.assertIn("retry-after:", head.lower())

        def refused_login() -> str:
            try:
                _ftp(port, "alice", ALICE_PASSWORD)
            except ftplib.error_temp as error:
                return str(error)
            return "logged in"

        self.assertTrue((await deferToThread(refused_login)).startswith("421 "))


class DashboardLoginTests(TestCase):
    """
    The dashboard of a cluster with users, in headless Chromium (skipped
    when Debian's C{chromium} is not installed).
    """

    if dashboard.CHROMIUM is None:
        skip = "Debian's chromium is not installed (apt-get install chromium)"

    timeout = 120

    async def test_login(self) -> None:
        """
        The page asks for a login: cancelled, it shows the C{401}; logged
        in as alice, its key list and live feed (opened with a token) show
        only what she may read, its file list opens on her files area, and
        a key she creates through the page is stored and its event arrives.
        """
        c = await start_cluster(self)
        for key in ["private/secret", "public/a"]:
            self.assertIn((await c.request("PUT", "n1", kv_path(key), b"v")).status, (200, 201))
        for path in ["/files/alice/notes.txt", "/files/other.txt"]:
            self.assertEqual((await c.request("PUT", "n1", path, b"v")).status, 201)
        self.node = SimpleNamespace(url=c.url("n2"))
        self.browser = await dashboard.launch_browser(self)
        url = c.url("n2", "/")

        refused = await dashboard.open_page(self.browser, url, 1280, 900, prompt=True)
        text = await refused.wait_for("document.body.innerText")
        self.assertIn('"error":"unauthorized"', text)

        page = await dashboard.open_page(
            self.browser, url, 1280, 900, prompt=True, login=("alice", ALICE_PASSWORD)
        )
        await page.wait_for("document.getElementById('feed-state').textContent === 'live'")
        listed = await page.wait_for(
            "(() => { const keys = Array.from(document.querySelectorAll('#key-list button'),"
            " b => b.dataset.key); return keys.length && keys; })()"
        )
        self.assertEqual(listed, ["public/a"])
        files = await page.wait_for(
            "(() => { const names = Array.from(document.querySelectorAll('#file-list a'),"
            " a => a.textContent); return names.length && names; })()"
        )
        folder = await page.evaluate("document.getElementById('files-dir').textContent")
        self.assertEqual((folder, files), ("/alice/", ["notes.txt"]))
        arrived = await dashboard.create_through_page(page, "users/alice/from the page", "hello")
        self.assertIn("hello", arrived)
        reply = await c.request("GET", "n3", kv_path("users/alice/from the page"))
        self.assertEqual((reply.status, reply.body), (200, b"hello"))
        for key in ["private/later", "public/later"]:
            self.assertIn((await c.request("PUT", "n1", kv_path(key), b"v")).status, (200, 201))
        await page.wait_for(
            "Array.from(document.querySelectorAll('#event-list li'))"
            ".some(li => li.dataset.name === 'public/later')"
        )
        names = await page.evaluate(
            "Array.from(document.querySelectorAll('#event-list li'), li => li.dataset.name)"
        )
        self.assertEqual([n for n in names if n.startswith("private/")], [])
        # the cancelled login's 401, and nothing else (no folder refused)
        problems = dashboard.BrowserTests.problems(self)
        expected = "log: Failed to load resource: the server responded with a status of 401"
        self.assertEqual([p for p in problems if not p.startswith(expected)], [])
