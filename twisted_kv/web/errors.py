# -*- test-case-name: tests.test_web_errors -*-
"""
Error answers of the HTTP front end: C{/kv}, C{/files} and the Klein routes
answer every failure through L{render_failure}.

The one mapping from failures to HTTP answers is here: a
L{twisted_kv.errors.KVError} (and so every failure of
L{twisted_kv.files}) answers with its C{status} and C{code}; the headers
some failures add (C{Retry-After}, C{Allow}, C{Content-Range}) are set in
one place, so that the two resources cannot drift apart in how they round
or spell them.  The body is always the JSON C{{"error": code, "message":
text}} that every error of the HTTP API has (README, "Errors").
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from werkzeug.exceptions import MethodNotAllowed as _RouteMethodNotAllowed
from werkzeug.exceptions import NotFound as _RouteNotFound
from werkzeug.routing import RequestRedirect as _RouteRedirect

from twisted_kv.errors import KVError, TooManyLogins, Unauthorized, Unavailable

JSON_TYPE = b"application/json"

_log = Logger()
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


def to_json(value: Any) -> bytes:
    """
    C{value} as compact JSON, the form of every JSON body the API sends.
    """
    return _encode_json(value).encode("ascii")


class MethodNotAllowed(KVError, status=405, code="method_not_allowed"):
    """The method is not supported on this path."""

    def __init__(self, allowed: Iterable[str], message: str = "") -> None:
        """
        @param allowed: the methods the path takes, in the order the
            C{Allow} header lists them.
        """
        super().__init__(message)
        self.allowed = tuple(allowed)


class NoSuchResource(KVError, status=404, code="not_found"):
    """Nothing is served at this path."""


class RangeNotSatisfiable(KVError, status=416, code="range_not_satisfiable"):
    """The requested range is outside the file."""

    def __init__(self, size: int) -> None:
        """
        @param size: the file's length, which the C{Content-Range} of the
            answer tells.
        """
        super().__init__(f"the file has {size} bytes")
        self.size = size


#: The challenges of a C{401}: Basic for people and tools, Bearer for
#: clients holding a token (see L{twisted_kv.web.auth}).
CHALLENGES = [b'Basic realm="twisted_kv", charset="UTF-8"', b'Bearer realm="twisted_kv"']


def _as_kv_error(failure: Failure) -> KVError:
    error = failure.value
    if isinstance(error, KVError):
        return error
    if isinstance(error, _RouteMethodNotAllowed):
        return MethodNotAllowed(sorted(error.valid_methods or ()))
    if isinstance(error, (_RouteNotFound, _RouteRedirect)):
        return NoSuchResource()
    _log.failure("Unexpected error answering an HTTP request", failure)
    return KVError("internal error")


def render_failure(request: IRequest, failure: Failure) -> bytes:
    """
    Set the status and headers of the error answer to C{request} and return
    its JSON body.

    L{KVError}s map to their C{status} and C{code}; L{Unavailable} and
    L{TooManyLogins} add C{Retry-After} (whole seconds, rounded up, so that
    a client never retries early), L{Unauthorized} C{WWW-Authenticate}, L{MethodNotAllowed} adds C{Allow} and
    L{RangeNotSatisfiable} adds C{Content-Range}.  Klein's routing failures
    (no such route, a redirect to the canonical spelling of a route, a wrong
    method) become C{404} and C{405}.  Anything else is logged with its
    traceback and answered C{500}.

    @return: the body, whose length is already set as C{Content-Length}.
    """
    error = _as_kv_error(failure)
    request.setResponseCode(error.status)
    if isinstance(error, (Unavailable, TooManyLogins)):
        request.setHeader(b"Retry-After", b"%d" % math.ceil(error.retry_after))
    elif isinstance(error, Unauthorized):
        request.responseHeaders.setRawHeaders(b"WWW-Authenticate", CHALLENGES)
    elif isinstance(error, MethodNotAllowed):
        request.setHeader(b"Allow", ", ".join(error.allowed).encode("ascii"))
    elif isinstance(error, RangeNotSatisfiable):
        request.setHeader(b"Content-Range", b"bytes */%d" % error.size)
    body = to_json({"error": error.code, "message": error.message})
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def send_failure(request: IRequest, failure: Failure) -> None:
    """
    Answer C{request} with the error answer to C{failure} (see
    L{render_failure}) and finish it, unless its client has gone away.
    """
    body = render_failure(request, failure)
    if request.channel is not None:
        request.write(body)
        request.finish()


class ErrorResource(Resource):
    """
    A leaf answering every request with the same error.
    """

    isLeaf = True

    def __init__(self, error: KVError) -> None:
        super().__init__()
        self._error = error

    def render(self, request: IRequest) -> bytes:
        return render_failure(request, Failure(self._error))
