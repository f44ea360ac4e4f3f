# -*- test-case-name: tests.test_dashboard -*-
"""
Tests for L{twisted_kv.web.dashboard}.

L{PageTests} check the served document without sockets.  L{BrowserTests}
load it in headless Chromium (Debian's C{chromium}; skipped when it is not
installed), driven over the DevTools protocol on a pipe from a Twisted
process protocol, against a real node on a loopback port.  Set
C{TWISTED_KV_SCREENSHOTS} to a directory to keep the screenshots they take.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from typing import Any, Callable, Optional, Sequence

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from tests.polling import WaitTimeout, poll
from tests.test_client_support import serve, three_nodes
from twisted_kv.core import keyspace
from twisted_kv.core.users import Grant
from twisted_kv.web.dashboard import dashboard_page, dashboard_resource

CHROMIUM = shutil.which("chromium")



def create_through_page(page: Any, key: str, value: str) -> Deferred:
    """
    Create C{key} with C{value} through the dashboard's form.

    @return: a Deferred firing with the text of the live feed's line for the
        change, once it arrives.
    """
    d = page.evaluate(
        f"""(() => {{
            document.getElementById('create').open = true;
            document.getElementById('new-key').value = {json.dumps(key)};
            document.getElementById('new-value').value = {json.dumps(value)};
            document.getElementById('create-form').requestSubmit();
        }})()"""
    )
    return d.addCallback(
        lambda _: page.wait_for(
            f"""Array.from(document.querySelectorAll('#event-list li'))
                .filter(li => li.dataset.name === {json.dumps(key)} && li.dataset.type === 'put')
                .map(li => li.textContent)[0]"""
        )
    )

class PageTests(SynchronousTestCase):
    """
    The document served at C{/}.
    """

    def get(self, method: str = "GET") -> tuple[Any, bytes]:
        root = Resource()
        root.putChild(b"", dashboard_resource())
        client = StubTreq(root)
        response = self.successResultOf(client.request(method, "http://node.example/"))
        return response, self.successResultOf(response.content())

    def test_html(self) -> None:
        """
        C{GET /} answers the page as UTF-8 HTML, not cached stale.
        """
        response, body = self.get()
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"]
        )
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-cache"])
        self.assertTrue(body.startswith(b"<!doctype html>"))

    def test_head(self) -> None:
        """
        C{HEAD /} answers the headers alone.
        """
        response, body = self.get("HEAD")
        self.assertEqual((response.code, body), (200, b""))

    def test_other_methods(self) -> None:
        """
        The page is read-only.
        """
        response, _ = self.get("POST")
        self.assertEqual(response.code, 405)

    def test_self_contained(self) -> None:
        """
        The style sheet and script are inline: the page refers to no other
        document, let alone another host.
        """
        _, body = self.get()
        page = body.decode("utf-8")
        self.assertEqual(re.findall(r"<link [^>]*>", page), ['<link rel="icon" href="data:,">'])
        self.assertNotIn("<script src", page)
        self.assertNotIn("@import", page)
        self.assertNotIn("url(", page)
        self.assertEqual(re.findall(r"(?:src|href)=\"(?:https?:)?//", page), [])

    def test_content_security_policy(self) -> None:
        """
        The policy allows exactly the inline style sheet and script, by hash,
        and connections to the node itself.
        """
        response, body = self.get()
        [policy] = response.headers.getRawHeaders("content-security-policy")
        page = body.decode("utf-8")

        def digest(pattern: str) -> str:
            [text] = re.findall(pattern, page, re.S)
            value = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest())
            return "'sha256-" + value.decode("ascii") + "'"

        self.assertIn("script-src " + digest(r"<script>(.*?)</script>"), policy)
        self.assertIn("style-src " + digest(r"<style>(.*?)</style>"), policy)
        self.assertIn("default-src 'none'", policy)
        self.assertIn("connect-src 'self'", policy)

    def test_token_login(self) -> None:
        """
        On a node with users the page is told (on its body) to open its
        live feed with a token; elsewhere the page is the same without it.
        """
        with_users = dashboard_page(token_login=True)
        self.assertIn(b'<body data-login="token">', with_users.html)
        self.assertNotIn(b"data-login", dashboard_page().html)
        self.assertEqual(with_users.content_security_policy, dashboard_page().content_security_policy)

    def test_opens_on_the_users_file_area(self) -> None:
        """
        For a logged-in user the page names the user's file area, which
        its file list opens on (C{""}: none), and is not to be kept by
        shared caches; without users it names none.
        """
        pages = {}
        for name, files in [("alice", "/alice/"), ("bob", None), ("root", "/"), (None, "/")]:
            request = DummyRequest([b""])
            if name is not None:
                request.grant = Grant(name, files=files)
            body = dashboard_resource(token_login=name is not None).render(request)
            pages[name] = (re.search(rb"<body[^>]*>", body).group(0), request.responseHeaders.getRawHeaders(b"cache-control"))
        self.assertEqual(
            pages,
            {
                "alice": (b'<body data-files="/alice/" data-login="token">', [b"private, no-cache"]),
                "bob": (b'<body data-files="" data-login="token">', [b"private, no-cache"]),
                "root": (b'<body data-files="/" data-login="token">', [b"private, no-cache"]),
                None: (b"<body>", [b"no-cache"]),
            },
        )
        script = dashboard_page().html.decode("utf-8")
        self.assertIn("document.body.dataset.files", script)

    def test_labels(self) -> None:
        """
        Every form field has a label.
        """
        page = dashboard_page().html.decode("utf-8")
        fields = re.findall(r"<(?:input|textarea)[^>]* id=\"([^\"]+)\"", page)
        labelled = set(re.findall(r"<label for=\"([^\"]+)\"", page))
        self.assertTrue(fields)
        self.assertEqual(set(fields) - labelled, set())


class DevToolsError(Exception):
    """
    Chromium answered a DevTools command with an error.
    """


class _Chromium(ProcessProtocol):
    """
    Headless Chromium speaking the DevTools protocol over its pipe: commands
    to its fd 3, answers and events from its fd 4, NUL-terminated JSON.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._next_id = 0
        self._pending: dict[int, Deferred[dict]] = {}
        self.events: list[dict] = []
        #: Called with every event as it arrives.
        self.listeners: list[Callable[[dict], object]] = []
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != 4:
            return
        self._buffer += data
        while b"\0" in self._buffer:
            raw, _, self._buffer = self._buffer.partition(b"\0")
            message = json.loads(raw)
            if "id" not in message:
                self.events.append(message)
                for listener in self.listeners:
                    listener(message)
                continue
            waiter = self._pending.pop(message["id"])
            if "error" in message:
                waiter.errback(DevToolsError(message["error"].get("message", "?")))
            else:
                waiter.callback(message.get("result", {}))

    def processEnded(self, reason: Failure) -> None:
        for waiter in self._pending.values():
            waiter.errback(DevToolsError("chromium exited"))
        self._pending.clear()
        self.ended.callback(None)

    def send(self, method: str, session: Optional[str] = None, **params: Any) -> Deferred[dict]:
        """
        Send a command (to a page's C{session}); fires with its result.
        """
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        waiter: Deferred[dict] = Deferred()
        self._pending[self._next_id] = waiter
        self.transport.writeToChild(3, json.dumps(message).encode("utf-8") + b"\0")
        return waiter


class _Page:
    """
    One browser tab.
    """

    def __init__(self, browser: _Chromium, session: str) -> None:
        self._browser = browser
        self._session = session

    def send(self, method: str, **params: Any) -> Deferred[dict]:
        return self._browser.send(method, self._session, **params)

    @inlineCallbacks
    def evaluate(self, expression: str) -> Any:
        """
        The value of a JavaScript expression (awaited if a promise).
        """
        result = yield self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise DevToolsError(json.dumps(result["exceptionDetails"])[:500])
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Deferred[Any]:
        """
        Poll until C{expression} is truthy (a page still loading may make
        it throw meanwhile); fires with its value.
        """
        errors: list[Exception] = []

        async def value() -> Any:
            try:
                return (await self.evaluate(expression)) or None
            except DevToolsError as failed:
                errors[:] = [failed]
                return None

        async def wait() -> Any:
            try:
                return await poll(value, timeout, expression)
            except WaitTimeout as e:
                raise WaitTimeout(f"{e} (last error: {errors[0] if errors else None})") from None

        return Deferred.fromCoroutine(wait())

    @inlineCallbacks
    def press(self, key: str) -> Any:
        """
        Press and release one of the keys C{Enter}, C{Tab} or C{Escape}.
        """
        code, text = {"Enter": (13, "\r"), "Tab": (9, ""), "Escape": (27, "")}[key]
        event = {"key": key, "code": key, "windowsVirtualKeyCode": code}
        yield self.send("Input.dispatchKeyEvent", type="keyDown", text=text, **event)
        yield self.send("Input.dispatchKeyEvent", type="keyUp", **event)

    @inlineCallbacks
    def screenshot(self, name: str, directory: str) -> Any:
        """
        Save a PNG of the whole page as C{name}.png in C{directory}, and in
        C{$TWISTED_KV_SCREENSHOTS} if set.
        """
        shot = yield self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        data = base64.b64decode(shot["data"])
        for target in filter(None, [directory, os.environ.get("TWISTED_KV_SCREENSHOTS")]):
            os.makedirs(target, exist_ok=True)
            with open(os.path.join(target, name + ".png"), "wb") as png:
                png.write(data)
        return data


@inlineCallbacks
def launch_browser(test: TestCase, options: Sequence[str] = ()) -> Any:
    """
    Start Chromium for C{test}, with the command-line C{options}, closed
    when the test ends.
    """
    browser = _Chromium()
    profile = test.mktemp()
    os.makedirs(profile)
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
        *options,
        "about:blank",
    ]
    process = reactor.spawnProcess(
        browser, CHROMIUM, args, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"}
    )

    @inlineCallbacks
    def close() -> Any:
        try:
            yield browser.send("Browser.close").addTimeout(5, reactor)
        except Exception:
            process.signalProcess("KILL")
        yield browser.ended

    test.addCleanup(close)
    yield browser.send("Browser.getVersion").addTimeout(30, reactor)
    return browser


def answer_logins(browser: _Chromium, session: str, login: Optional[tuple[str, str]]) -> None:
    """
    Answer the HTTP authentication prompts of the page of C{session} as a
    person would: log in as C{login} (user name and password), or cancel
    the prompt when it is C{None}.  Every other paused request goes on.
    """

    def answer(event: dict) -> None:
        if event.get("sessionId") != session:
            return
        request_id = event.get("params", {}).get("requestId")
        if event["method"] == "Fetch.requestPaused":
            browser.send("Fetch.continueRequest", session, requestId=request_id)
        elif event["method"] == "Fetch.authRequired":
            if login is None:
                response: dict[str, str] = {"response": "CancelAuth"}
            else:
                response = {"response": "ProvideCredentials", "username": login[0], "password": login[1]}
            browser.send("Fetch.continueWithAuth", session, requestId=request_id, authChallengeResponse=response)

    browser.listeners.append(answer)


@inlineCallbacks
def open_page(
    browser: _Chromium,
    url: str,
    width: int,
    height: int,
    mobile: bool = False,
    login: Optional[tuple[str, str]] = None,
    prompt: bool = False,
) -> Any:
    """
    A new tab showing C{url}.

    @param prompt: the node asks for a login: answer it with C{login}
        (see L{answer_logins}).
    """
    target = yield browser.send("Target.createTarget", url="about:blank")
    attached = yield browser.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
    page = _Page(browser, attached["sessionId"])
    for domain in ("Page", "Runtime", "Log", "Network"):
        yield page.send(f"{domain}.enable")
    if prompt:
        answer_logins(browser, attached["sessionId"], login)
        yield page.send("Fetch.enable", handleAuthRequests=True)
    yield page.send(
        "Emulation.setDeviceMetricsOverride",
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=mobile,
    )
    yield page.send("Page.navigate", url=url)
    yield page.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")
    return page


class BrowserTests(TestCase):
    """
    The dashboard in a real browser, against a node on a loopback port.
    """

    if CHROMIUM is None:
        skip = "Debian's chromium is not installed (apt-get install chromium)"

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        self.node = serve(self)
        self.executed = 0
        self.lost: list[int] = []

        def busy() -> None:
            self.executed += 7
            self.node.cluster = {**three_nodes(self.executed), "lost_partitions": self.lost}

        ticker = LoopingCall(busy)
        ticker.start(0.25)
        self.addCleanup(ticker.stop)
        for i in range(30):
            yield self.node.kv.put(keyspace.user_key(f"users/{i:03}"), b'{"n": %d}' % i, "application/json")
        yield self.node.kv.put(keyspace.user_key("blob"), b"\x00\xffbinary")
        self.browser = yield launch_browser(self)

    def problems(self) -> list[str]:
        """
        Errors the browser reported, and requests that left the node.
        """
        found = []
        for event in self.browser.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append("exception: " + json.dumps(params["exceptionDetails"])[:300])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append("log: " + params["entry"]["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning"):
                found.append("console: " + json.dumps(params["args"])[:300])
            elif method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                host = self.node.url.split("//", 1)[1]
                if not re.match(rf"(https?|wss?)://{re.escape(host)}/|data:|about:", url):
                    found.append("external request: " + url)
        return found

    @inlineCallbacks
    def test_live_dashboard(self) -> Any:
        """
        The page shows the nodes, the leader and the term, request rates,
        and the keys; a key created through the page is stored, and its
        event arrives in the live feed; nothing fails and nothing is loaded
        from elsewhere.
        """
        page = yield open_page(self.browser, self.node.url + "/", 1280, 900)
        yield page.wait_for("document.querySelectorAll('#nodes tr').length === 3")
        summary = yield page.evaluate(
            "['self-id', 'leader-id', 'term'].map(id => document.getElementById(id).textContent)"
        )
        self.assertEqual(summary, ["n1", "n2", "3"])
        leader = yield page.evaluate("document.querySelector('#nodes tr.leader').dataset.node")
        self.assertEqual(leader, "n2")
        yield page.wait_for("document.getElementById('feed-state').textContent === 'live'")
        yield page.wait_for(
            "parseFloat(document.querySelector('#nodes tr[data-node=n2] output').textContent) > 0"
        )
        listed = yield page.wait_for("Array.from(document.querySelectorAll('#key-list button'), b => b.dataset.key)")
        self.assertEqual(listed[:3], ["blob", "users/000", "users/001"])
        self.assertEqual(len(listed), 25)

        key = "notes/é ?#/../x"
        arrived = yield create_through_page(page, key, "hello from the browser")
        self.assertIn("hello from the browser", arrived)
        stored = yield self.node.kv.get(keyspace.user_key(key))
        self.assertEqual(stored.record.value, b"hello from the browser")
        shown = yield page.wait_for(
            "document.getElementById('view-value').textContent === 'hello from the browser'"
            " && document.getElementById('view-key').textContent"
        )
        self.assertEqual(shown, key)
        yield page.wait_for(
            f"Array.from(document.querySelectorAll('#key-list button')).some(b => b.dataset.key === {json.dumps(key)})"
        )

        yield self.node.kv.put(keyspace.user_key("users/000"), b"changed elsewhere")
        yield page.wait_for(
            "Array.from(document.querySelectorAll('#event-list li')).some(li => li.dataset.name === 'users/000')"
        )
        yield page.screenshot("dashboard-desktop", self.mktemp())
        self.assertEqual(self.problems(), [])

    @inlineCallbacks
    def test_cluster_summary(self) -> Any:
        """
        Above the nodes, the page says how many are alive and how many more
        may fail; a dead node's key count shows as "—", with how long it
        has been silent in its tooltip; each node's primaries are shown;
        the headers and a legend below the table say what the keys,
        primaries and executed counts are.
        """
        page = yield open_page(self.browser, self.node.url + "/", 1280, 900)
        summary = yield page.wait_for("document.getElementById('cluster-summary').textContent")
        self.assertEqual(summary, "2 of 3 alive: can lose 0 more")
        keys = yield page.wait_for(
            "Array.from(document.querySelectorAll('#nodes tr'),"
            " tr => [tr.dataset.node, tr.cells[2].textContent, tr.cells[2].title])"
        )
        self.assertEqual(
            keys,
            [
                ["n1", "10", "10 client keys, 3 file records (chunks, manifests, folders)"],
                ["n2", "12", "12 client keys, 3 file records (chunks, manifests, folders)"],
                ["n3", "—", "No current count: not heard from for 13 s"],
            ],
        )
        primaries = yield page.evaluate(
            "Array.from(document.querySelectorAll('#nodes tr'), tr => tr.cells[3].textContent)"
        )
        self.assertEqual(primaries, ["4", "4", "0"])
        legend = yield page.evaluate("document.getElementById('cluster-legend').textContent")
        self.assertIn("each key is kept on 2 nodes", legend)
        self.assertIn("partitions the node is the primary of", legend)
        self.assertIn("executed as the primary", legend)
        titles = yield page.evaluate("Array.from(document.querySelectorAll('.nodes th'), th => th.title)")
        self.assertIn("whichever node received them", titles[-1])
        yield page.screenshot("dashboard-cluster-summary", self.mktemp())
        self.assertEqual(self.problems(), [])

    @inlineCallbacks
    def test_lost_partitions(self) -> Any:
        """
        Partitions that lost every in-sync copy are named in an alert, which
        goes away once they serve again.
        """
        page = yield open_page(self.browser, self.node.url + "/", 1280, 900)
        yield page.wait_for("document.querySelectorAll('#nodes tr').length === 3")
        self.assertTrue((yield page.evaluate("document.getElementById('lost-partitions').hidden")))
        self.lost = [3, 12]
        shown = yield page.wait_for(
            "!document.getElementById('lost-partitions').hidden"
            " && document.getElementById('lost-partitions').textContent"
        )
        self.assertIn("Partitions 3, 12 lost every in-sync copy (all restarted empty)", shown)
        self.lost = []
        yield page.wait_for("document.getElementById('lost-partitions').hidden")
        self.assertEqual(self.problems(), [])

    @inlineCallbacks
    def test_files(self) -> Any:
        """
        A file stored on the node shows up in the live feed and in the file
        list, whose folders open, with a download link for the file.
        """
        page = yield open_page(self.browser, self.node.url + "/", 1280, 900)
        yield page.wait_for("document.getElementById('feed-state').textContent === 'live'")
        status = yield page.evaluate(
            "fetch('/files/docs/read me.txt', {method: 'PUT', body: 'hello'}).then(r => r.status)"
        )
        self.assertEqual(status, 201)
        event = yield page.wait_for(
            "Array.from(document.querySelectorAll('#event-list li[data-type=file]'), li => li.textContent)[0]"
        )
        self.assertIn("/docs/read me.txt", event)
        yield page.wait_for(
            "Array.from(document.querySelectorAll('#file-list button')).some(b => b.textContent === 'docs/')"
        )
        yield page.evaluate(
            "Array.from(document.querySelectorAll('#file-list button')).find(b => b.textContent === 'docs/').click()"
        )
        link = yield page.wait_for("document.querySelector('#file-list a') && document.querySelector('#file-list a').getAttribute('href')")
        self.assertEqual(link, "/files/docs/read%20me.txt")
        body = yield page.evaluate(f"fetch({json.dumps(link)}).then(r => r.text())")
        self.assertEqual(body, "hello")
        folder = yield page.evaluate("document.getElementById('files-dir').textContent")
        self.assertEqual(folder, "/docs/")
        yield page.screenshot("dashboard-files", self.mktemp())
        self.assertEqual(self.problems(), [])

    @inlineCallbacks
    def test_keyboard(self) -> Any:
        """
        The key browser works from the keyboard: type a prefix and press
        Enter to list, Tab to a key and Enter to open it (focus moves to
        it), Escape to close it (focus goes back to the key).
        """
        page = yield open_page(self.browser, self.node.url + "/", 1280, 900)
        yield page.wait_for("document.querySelectorAll('#key-list button').length === 25")
        yield page.evaluate("document.getElementById('prefix').focus()")
        yield page.send("Input.insertText", text="users/02")
        yield page.press("Enter")
        listed = yield page.wait_for(
            "document.querySelectorAll('#key-list button').length === 10"
            " && Array.from(document.querySelectorAll('#key-list button'), b => b.dataset.key)"
        )
        self.assertEqual(listed[0], "users/020")
        yield page.press("Tab")
        yield page.press("Tab")
        focused = yield page.evaluate("document.activeElement.dataset.key")
        self.assertEqual(focused, "users/020")
        yield page.press("Enter")
        yield page.wait_for("document.getElementById('view-value').textContent === '{\"n\": 20}'")
        focused = yield page.evaluate("document.activeElement.id")
        self.assertEqual(focused, "viewer-title")
        yield page.press("Escape")
        focused = yield page.evaluate("document.activeElement.dataset.key")
        self.assertEqual(focused, "users/020")
        hidden = yield page.evaluate("document.getElementById('viewer').hidden")
        self.assertTrue(hidden)
        self.assertEqual(self.problems(), [])

    @inlineCallbacks
    def test_phone_width(self) -> Any:
        """
        On a phone-sized screen the page fits the width (no sideways
        scrolling of the page), and a binary value is shown in hexadecimal.
        """
        page = yield open_page(self.browser, self.node.url + "/", 390, 844, mobile=True)
        yield page.wait_for("document.querySelectorAll('#key-list button').length > 0")
        yield page.evaluate("document.querySelector('#key-list button[data-key=blob]').click()")
        value = yield page.wait_for("document.getElementById('view-size').textContent && document.getElementById('view-value').textContent")
        self.assertTrue(value.startswith("00 ff 62 69"))
        overflow = yield page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        self.assertLessEqual(overflow, 0)
        yield page.screenshot("dashboard-phone", self.mktemp())
        self.assertEqual(self.problems(), [])
