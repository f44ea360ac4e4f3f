# -*- test-case-name: tests.test_web_auth -*-
"""
Authentication and access control of the HTTP front end (CONTRACT.md
section 9), as one layer: the site asks L{Guard.admit} about every request
before any resource sees it.

With users configured, a request needs credentials, except C{GET} (and
C{HEAD}) of C{/health} and C{/live}:

  - C{Authorization: Basic} with a user's name and password;
  - C{Authorization: Bearer TOKEN}, a token from C{POST /auth/token};
  - C{?token=TOKEN} on C{/ws} (browsers cannot set headers on a WebSocket).

Missing or wrong credentials answer C{401} with C{WWW-Authenticate};
an address with too many failed logins is answered C{429} with
C{Retry-After} (see L{LoginThrottle}) before its credentials are looked at;
a request outside the user's rights (L{Grant}) answers C{403}, whether or
not the key or file exists: C{/kv/{key}} by the key's read or write
prefixes, C{/files/{path}} by the user's file area, C{/admin} and changes
of C{/cluster/nodes} for admins only.  Listings and watches filter what
they send by the request's grant (L{twisted_kv.core.users.grant_of}).  A browser request from
another origin (an C{Origin} header naming another host) is refused, so
that credentials a browser remembers cannot be used by other sites' pages.

A password is checked with scrypt once per user and process, off the
reactor thread (L{twisted_kv.logins}); later requests with the same
password cost one HMAC (the process remembers a keyed digest of the last
good password, never the password).  A token is verified once,
then remembered until it expires.  No credential is logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import os
from typing import Callable, Mapping, Optional
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from twisted_kv.core.passwords import hash_password
from twisted_kv.core.users import (
    Grant,
    User,
    issue_token,
    require_admin,
    token_expiry,
    token_key,
    verify_token,
)
from twisted_kv.errors import Forbidden, KVError, Unauthorized
from twisted_kv.files import FSPath
from twisted_kv.logins import Logins
from twisted_kv.web.errors import (
    JSON_TYPE,
    MethodNotAllowed,
    NoSuchResource,
    render_failure,
    send_failure,
    to_json,
)
from twisted_kv.web.http_api import client_key

__all__ = ["Guard", "TokenResource", "check_access"]

#: Seconds a token from C{POST /auth/token} is accepted.
DEFAULT_TOKEN_LIFETIME = 3600

_OPEN = frozenset({b"/health", b"/live"})
_READS = frozenset({b"GET", b"HEAD"})
_KEY_PATH = b"/kv/"
_FILES = b"/files"
_TOKEN_PARAMETER = b"token="
# Verified tokens remembered at most (then forgotten all at once).
_MAX_TOKENS = 10_000


def _client_address(request: IRequest) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


def _same_origin(request: IRequest) -> bool:
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = request.getHeader(b"host") or b""
    return origin.partition(b"://")[2].lower() == host.lower()


class Guard:
    """
    Admits or refuses every request of a site (see the module docstring).

    @param users: user name -> L{User}, from the cluster file; not empty.
    @param secret: the cluster secret, which the token key is derived from.
    @param logins: checks passwords and counts failed logins (shared with
        FTP).
    @param clock: tells token expiry and the throttle's time.
    """

    def __init__(
        self,
        users: Mapping[str, User],
        secret: bytes,
        logins: Logins,
        clock: IReactorTime,
        token_lifetime: float = DEFAULT_TOKEN_LIFETIME,
    ) -> None:
        self._users = dict(users)
        self._token_key = token_key(secret)
        self._logins = logins
        self._throttle = logins.throttle
        self._clock = clock
        self.token_lifetime = token_lifetime
        self._decoy = hash_password("", salt=bytes(16))
        # Keyed digests of the last password that passed scrypt, per user.
        self._digest_key = os.urandom(32)
        self._verified: dict[str, bytes] = {}
        # Tokens already verified, and when they expire: the users and the
        # key do not change while the process runs.
        self._tokens: dict[str, tuple[User, float]] = {}

    def admit(self, request: IRequest, proceed: Callable[[], None]) -> None:
        """
        Let C{request} through: set C{request.grant} (and, with
        credentials, C{request.user} and C{request.authenticated_by}, the
        scheme) and call C{proceed}; or answer it (C{401}, C{403}, C{429},
        or C{400} for a malformed path).  A password not seen before is
        checked off the reactor thread: C{proceed} is then called later.
        """
        if request.path in _OPEN and request.method in _READS:
            proceed()
            return
        try:
            if not _same_origin(request):
                raise Forbidden("cross-origin request refused")
            found = self._authenticate(request)
        except KVError as error:
            send_failure(request, Failure(error))
            return
        if isinstance(found, Deferred):
            found.addCallbacks(
                self._admit_user, self._refuse,
                callbackArgs=(request, proceed), errbackArgs=(request,),
            )
        else:
            self._admit_user(found, request, proceed)

    def _admit_user(self, user: User, request: IRequest, proceed: Callable[[], None]) -> None:
        request.user = user
        request.grant = user.grant
        try:
            check_access(user.grant, request.method, request.path)
        except KVError as error:
            send_failure(request, Failure(error))
            return
        proceed()

    def _refuse(self, failure: Failure, request: IRequest) -> None:
        send_failure(request, failure)

    def issue(self, user: User) -> dict[str, object]:
        """
        A new token for C{user}: the body of C{POST /auth/token}.
        """
        expires = math.floor(self._clock.seconds() + self.token_lifetime)
        return {"token": issue_token(self._token_key, user, expires), "expires": expires}

    def _authenticate(self, request: IRequest) -> User | Deferred[User]:
        """
        The user C{request} authenticates as, or a Deferred firing with it
        once a password has been checked.

        @raise Unauthorized: missing or wrong credentials.
        @raise TooManyLogins: the client's address is blocked.
        """
        scheme, credentials = self._credentials(request)
        request.authenticated_by = scheme
        address = _client_address(request)
        now = self._clock.seconds()
        self._throttle.check(address, now)
        try:
            if scheme == b"basic":
                name, password = _basic_credentials(credentials)
                user = self._remembered(name, password)
                if user is None:
                    return self._logins.attempt(
                        address, lambda: self._check_password(name, password)
                    )
            elif scheme == b"bearer":
                user = self._bearer(credentials.decode("ascii", "replace"), now)
            else:
                name = scheme.decode("ascii", "replace")
                raise Unauthorized(f"unsupported authorization scheme {name!r}")
        except Unauthorized:
            self._throttle.failed(address, now)
            raise
        self._throttle.succeeded(address)
        return user

    def _credentials(self, request: IRequest) -> tuple[bytes, bytes]:
        header = request.getHeader(b"authorization")
        if header is not None:
            scheme, _, credentials = header.strip().partition(b" ")
            return scheme.lower(), credentials.strip()
        if request.path == b"/ws":
            for element in request.uri.partition(b"?")[2].split(b"&"):
                if element.startswith(_TOKEN_PARAMETER):
                    return b"bearer", unquote_to_bytes(element[len(_TOKEN_PARAMETER):])
        raise Unauthorized("credentials required: HTTP Basic or a bearer token")

    def _bearer(self, token: str, now: float) -> User:
        known = self._tokens.get(token)
        if known is not None and now < known[1]:
            return known[0]
        user = verify_token(self._token_key, token, self._users, now)
        if len(self._tokens) >= _MAX_TOKENS:
            self._tokens.clear()
        self._tokens[token] = (user, token_expiry(token))
        return user

    def _digest(self, password: str) -> bytes:
        return hmac.digest(self._digest_key, password.encode("utf-8"), "sha256")

    def _remembered(self, name: str, password: str) -> Optional[User]:
        """
        User C{name}, if C{password} is the last one of it that passed
        scrypt in this process.
        """
        user = self._users.get(name)
        remembered = self._verified.get(name)
        if user is not None and remembered is not None:
            if hmac.compare_digest(self._digest(password), remembered):
                return user
        return None

    def _check_password(self, name: str, password: str) -> Deferred[User]:
        """
        Check C{password} of user C{name} with scrypt (an attempt queued
        behind another may find it remembered by then).

        @return: a Deferred firing with the user, or failing with
            L{Unauthorized}.
        """
        user = self._remembered(name, password)
        if user is not None:
            return succeed(user)
        user = self._users.get(name)
        # An unknown user costs as much time as a wrong password.
        checked = self._logins.check_password(user.password if user else self._decoy, password)

        def decided(matches: bool) -> User:
            if not matches or user is None:
                raise Unauthorized("wrong user name or password")
            self._verified[name] = self._digest(password)
            return user

        return checked.addCallback(decided)


def _basic_credentials(credentials: bytes) -> tuple[str, str]:
    """
    The user name and password of Basic C{credentials}.

    @raise Unauthorized: they are malformed.
    """
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("malformed Basic credentials") from None
    name, colon, password = decoded.partition(":")
    if not colon:
        raise Unauthorized("malformed Basic credentials")
    return name, password


def check_access(grant: Grant, method: bytes, path: bytes) -> None:
    """
    Refuse what C{grant} does not allow of C{method} on C{path}: reading or
    changing a key, a file, backups or the membership.  Listings and
    watches are filtered later, by their resources.

    @raise Forbidden: it is not allowed.
    @raise twisted_kv.errors.InvalidRequest: the key or path is malformed.
    """
    if path.startswith(_KEY_PATH):
        key = client_key(path[len(_KEY_PATH):])
        allowed = grant.may_read(key) if method in _READS else grant.may_write(key)
        if not allowed:
            raise Forbidden(f"user {grant.name!r} may not {_verb(method)} this key")
    elif path == _FILES or path.startswith(_FILES + b"/"):
        segments = [unquote_to_bytes(s).decode("utf-8", "replace") for s in path.split(b"/")[2:]]
        while segments and segments[-1] == "":
            segments.pop()
        if not grant.may_use_file(FSPath.from_segments(segments).text):
            raise Forbidden(f"user {grant.name!r} may not use this path")
    elif path == b"/admin" or path.startswith(b"/admin/"):
        require_admin(grant)
    elif path.startswith(b"/cluster/nodes") and method not in _READS:
        require_admin(grant)


def _verb(method: bytes) -> str:
    return "read" if method in _READS else "change"


class TokenResource(Resource):
    """
    C{POST /auth/token} with Basic credentials: C{{"token", "expires"}}.
    A token cannot be traded for another one, so that none outlives its
    lifetime.
    """

    isLeaf = True

    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self._guard = guard

    def render(self, request: IRequest) -> bytes:
        try:
            if request.postpath != [b"token"]:
                raise NoSuchResource()
            if request.method != b"POST":
                raise MethodNotAllowed(["POST"])
            if getattr(request, "authenticated_by", None) != b"basic":
                raise Unauthorized("POST /auth/token needs Basic credentials")
        except KVError as error:
            return render_failure(request, Failure(error))
        body = to_json(self._guard.issue(request.user))
        request.setHeader(b"Content-Type", JSON_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        return body
