# -*- test-case-name: tests.test_web_errors -*-
"""
Tests for L{twisted_kv.web.errors}: the one error answer of C{/kv},
C{/files} and the Klein routes.
"""

from __future__ import annotations

import json

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel, DummyRequest
from werkzeug.exceptions import MethodNotAllowed as RouteMethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from twisted_kv import errors
from twisted_kv.files import _errors as file_errors
from twisted_kv.web.errors import (
    ErrorResource,
    MethodNotAllowed,
    NoSuchResource,
    RangeNotSatisfiable,
    render_failure,
    send_failure,
)


def _kv_errors() -> list[type[errors.KVError]]:
    """
    Every failure class of L{twisted_kv.errors} and L{twisted_kv.files}.
    """
    return [
        value
        for module in (errors, file_errors)
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, errors.KVError)
    ]


class RenderFailureTests(SynchronousTestCase):
    """
    L{render_failure} and L{send_failure}.
    """

    def render(self, error: BaseException) -> tuple[DummyRequest, dict]:
        request = DummyRequest([b""])
        body = render_failure(request, Failure(error))
        headers = request.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        self.assertEqual(headers.getRawHeaders(b"Content-Length"), [b"%d" % len(body)])
        return request, json.loads(body)

    def header(self, request: DummyRequest, name: bytes) -> object:
        return request.responseHeaders.getRawHeaders(name)

    def test_every_failure(self) -> None:
        """
        Every failure of the store and of the file system answers with its
        C{status}, and a JSON body of its C{code} and message, compactly.
        """
        classes = _kv_errors()
        self.assertIn(file_errors.IsADirectory, classes)
        for cls in classes:
            request, body = self.render(cls("what happened"))
            self.assertEqual(request.responseCode, cls.status, cls)
            self.assertEqual(body, {"error": cls.code, "message": "what happened"}, cls)
        request = DummyRequest([b""])
        self.assertEqual(
            render_failure(request, Failure(errors.KeyNotFound("no key 'k'"))),
            b'{"error":"not_found","message":"no key \'k\'"}',
        )

    def test_retry_after(self) -> None:
        """
        L{Unavailable} adds C{Retry-After} in whole seconds, rounded up so
        that no client retries early.
        """
        for retry_after, header in [(2.1, b"3"), (3.0, b"3"), (0.2, b"1"), (2.5, b"3")]:
            request, body = self.render(errors.Unavailable("no quorum", retry_after))
            self.assertEqual((request.responseCode, body["error"]), (503, "unavailable"))
            self.assertEqual(self.header(request, b"Retry-After"), [header], retry_after)
        request, _ = self.render(errors.OutcomeUnknown())
        self.assertIsNone(self.header(request, b"Retry-After"))

    def test_method_not_allowed(self) -> None:
        """
        L{MethodNotAllowed} is a 405 whose C{Allow} lists the methods in
        the order given.
        """
        request, body = self.render(MethodNotAllowed(("GET", "HEAD", "PUT", "DELETE")))
        self.assertEqual((request.responseCode, body["error"]), (405, "method_not_allowed"))
        self.assertEqual(self.header(request, b"Allow"), [b"GET, HEAD, PUT, DELETE"])

    def test_range_not_satisfiable(self) -> None:
        """
        L{RangeNotSatisfiable} is a 416 telling the file's length in
        C{Content-Range}.
        """
        request, body = self.render(RangeNotSatisfiable(10))
        self.assertEqual((request.responseCode, body["error"]), (416, "range_not_satisfiable"))
        self.assertEqual(self.header(request, b"Content-Range"), [b"bytes */10"])

    def test_routing(self) -> None:
        """
        Klein's routing failures are a 404, or a 405 with the route's
        methods.
        """
        request, body = self.render(RouteNotFound())
        self.assertEqual((request.responseCode, body["error"]), (404, "not_found"))
        request, body = self.render(RouteMethodNotAllowed(["HEAD", "GET"]))
        self.assertEqual((request.responseCode, body["error"]), (405, "method_not_allowed"))
        self.assertEqual(self.header(request, b"Allow"), [b"GET, HEAD"])

    def test_unexpected(self) -> None:
        """
        Any other exception is logged and answered with a bare 500.
        """
        request, body = self.render(ZeroDivisionError("secret detail"))
        self.assertEqual(request.responseCode, 500)
        self.assertEqual(body, {"error": "internal", "message": "internal error"})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_send(self) -> None:
        """
        L{send_failure} writes the answer and finishes the request, unless
        its client has gone away.
        """
        request = DummyRequest([b""])
        request.channel = DummyChannel()
        send_failure(request, Failure(NoSuchResource()))
        self.assertEqual((request.responseCode, request.finished), (404, 1))
        self.assertEqual(json.loads(b"".join(request.written))["error"], "not_found")
        gone = DummyRequest([b""])
        gone.channel = None
        send_failure(gone, Failure(NoSuchResource()))
        self.assertEqual((gone.written, gone.finished), ([], 0))

    def test_error_resource(self) -> None:
        """
        L{ErrorResource} answers every request with its error.
        """
        request = DummyRequest([b"anything"])
        body = ErrorResource(NoSuchResource()).render(request)
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(json.loads(body)["error"], "not_found")
