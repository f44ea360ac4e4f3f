# -*- test-case-name: tests.test_dashboard -*-
"""
The browser dashboard at C{/}: one self-contained HTML page.

The page is written as three files in C{static/} (C{index.html},
C{style.css}, C{app.js}); L{dashboard_page} inlines the style sheet and the
script into the HTML once, so that the node serves a single resource with no
external (or even local) dependency, and a Content-Security-Policy that
allows exactly that style sheet and script (by hash), and connections to the
node itself (C{/cluster}, C{/kv}, C{/files/}, C{/ws}).
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from importlib.resources import files
from typing import Any

from attrs import frozen
from twisted.web.resource import IResource, Resource

from twisted_kv.core.users import Grant, grant_of

__all__ = ["dashboard_page", "dashboard_resource", "for_user"]

_STYLE_TAG = '<link rel="stylesheet" href="style.css">'
_SCRIPT_TAG = '<script src="app.js"></script>'
_BODY_TAG = "<body>"


@frozen
class Page:
    """
    A ready-to-serve HTML document and the policy that goes with it.
    """

    html: bytes
    content_security_policy: str


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _inline(html: str, tag: str, replacement: str) -> str:
    if html.count(tag) != 1:
        raise ValueError(f"index.html must contain {tag!r} exactly once")
    return html.replace(tag, replacement)


def dashboard_page(token_login: bool = False) -> Page:
    """
    Assemble the dashboard from C{static/}.

    @param token_login: the node has users: the browser logs in (HTTP
        Basic) to load the page, and the page's live feed asks for a token
        to open its WebSocket with.
    """
    static = files("twisted_kv.web") / "static"
    html = (static / "index.html").read_text("utf-8")
    style = (static / "style.css").read_text("utf-8")
    script = (static / "app.js").read_text("utf-8")
    if "</script" in script.lower() or "</style" in style.lower():
        raise ValueError("an inlined script or style sheet must not close its own tag")
    html = _inline(html, _STYLE_TAG, f"<style>{style}</style>")
    html = _inline(html, _SCRIPT_TAG, f"<script>{script}</script>")
    if token_login:
        html = _inline(html, _BODY_TAG, '<body data-login="token">')
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hash(script)}",
            f"style-src {_hash(style)}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(html.encode("utf-8"), policy)


def for_user(html: bytes, grant: Grant) -> bytes:
    """
    The page C{html} for the user of C{grant}: its body names the user's
    file area (C{data-files}, empty for none), which the file list opens
    on, so that a user limited to one area never opens on a folder it may
    not see.  Without users (C{grant.name} is C{None}), C{html} as it is.
    """
    if grant.name is None:
        return html
    root = escape(grant.files or "", quote=True).encode("utf-8")
    return html.replace(b"<body", b'<body data-files="' + root + b'"', 1)


class _Dashboard(Resource):
    """
    Answers C{GET} and C{HEAD} with the page.
    """

    isLeaf = True

    def __init__(self, page: Page) -> None:
        super().__init__()
        self._page = page

    def render_GET(self, request: Any) -> bytes:
        grant = grant_of(request)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Content-Security-Policy", self._page.content_security_policy.encode("ascii"))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        # a user's page is that user's alone
        request.setHeader(b"Cache-Control", b"no-cache" if grant.name is None else b"private, no-cache")
        return for_user(self._page.html, grant)


def dashboard_resource(token_login: bool = False) -> IResource:
    """
    The dashboard, to mount at C{/} (the child C{b""} of the site's root).

    @param token_login: see L{dashboard_page}.
    """
    return _Dashboard(dashboard_page(token_login))
