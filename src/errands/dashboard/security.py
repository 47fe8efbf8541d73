"""Who may see the dashboard and how its actions are protected.

* A signed session cookie (``errands_dashboard``), kept apart from any session of
  the application the dashboard is mounted in: it holds the CSRF token and, after
  a password login, the fact that this browser logged in.
* Every request passes :class:`Gate` first: the application's ``authenticate``
  callable or a password login lets it through, ``insecure_no_auth`` lets
  everything through; the login page and static files are always reachable.
* Every action is a POST carrying the session's CSRF token (:func:`csrf_refusal`),
  so another site cannot make a logged-in browser act.
* Password guessing is throttled per client address (:class:`LoginThrottle`).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "errands_dashboard"
SESSION_KEY = "errands.dashboard.session"
SESSION_MAX_AGE = 12 * 3600  # a login lasts half a day
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: Requests made by the dashboard's own script to refresh part of a page.
FRAGMENT_HEADER = "x-errands-fragment"
#: Paths (below the mount point) reachable without authentication.
PUBLIC_PREFIXES = ("/login", "/static/")

Authenticate = Callable[[Request], bool | Awaitable[bool]]

LOGIN_FAILURES_ALLOWED = 5  # wrong passwords from one address before it must wait
LOGIN_LOCKOUT_SECONDS = 300.0  # how long it waits (each failure after that restarts it)


@dataclass(frozen=True)
class Access:
    """How the dashboard authenticates; built once by ``create_app``."""

    password: str
    authenticate: Authenticate | None
    insecure_no_auth: bool
    secret_key: bytes

    @property
    def has_login(self) -> bool:
        return bool(self.password)


def session_secret(password: str, secret_key: str | None) -> bytes:
    """The key that signs session cookies.

    Derived from the password when none is given, so that every process serving
    the dashboard accepts the same cookies and changing the password logs
    everyone out. Without either, a random key: sessions last until a restart.
    """
    if secret_key:
        return secret_key.encode()
    if password:
        return hmac.new(password.encode(), b"errands.dashboard.session", hashlib.sha256).digest()
    return secrets.token_bytes(32)


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison: the time taken tells nothing about the password."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def route_path(scope: Scope) -> str:
    """The request's path below the dashboard's mount point."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


# -- the session cookie ---------------------------------------------------------------


class SessionCookie:
    """ASGI middleware: a signed cookie read into ``scope[SESSION_KEY]`` (a dict).

    The cookie is written back only when the session changed. Every session gets
    a CSRF token on first sight, so even the login form is protected.
    """

    def __init__(self, app: ASGIApp, *, secret_key: bytes) -> None:
        self.app = app
        self.serializer = URLSafeTimedSerializer(secret_key, salt="errands.dashboard")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session = self._load(Headers(scope=scope))
        before = json.dumps(session, sort_keys=True)
        session.setdefault("csrf", secrets.token_urlsafe(32))
        scope[SESSION_KEY] = session

        async def send_with_cookie(message: Message) -> None:
            starting = message["type"] == "http.response.start"
            if starting and json.dumps(scope[SESSION_KEY], sort_keys=True) != before:
                headers = list(message.get("headers", []))
                headers.append((b"set-cookie", self._cookie(scope).encode("latin-1")))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _load(self, headers: Headers) -> dict[str, Any]:
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE and value:
                try:
                    loaded = self.serializer.loads(value, max_age=SESSION_MAX_AGE)
                except BadSignature:
                    return {}
                return loaded if isinstance(loaded, dict) else {}
        return {}

    def _cookie(self, scope: Scope) -> str:
        value = self.serializer.dumps(scope[SESSION_KEY])
        path = scope.get("root_path") or "/"
        # Lax, not Strict: a link to a job page pasted in chat must open logged in.
        # Actions are safe either way: they need the CSRF token.
        cookie = f"{SESSION_COOKIE}={value}; Path={path}; HttpOnly; SameSite=Lax"
        if scope.get("scheme") == "https":
            cookie += "; Secure"
        return cookie


def session_of(request: Request) -> dict[str, Any]:
    session: dict[str, Any] = request.scope[SESSION_KEY]
    return session


def log_in(request: Request) -> None:
    """Mark the session logged in, with a fresh CSRF token (no fixation of the old one)."""
    session = session_of(request)
    session["auth"] = True
    session["csrf"] = secrets.token_urlsafe(32)


def log_out(request: Request) -> None:
    session_of(request).clear()


# -- authentication ----------------------------------------------------------------------


class Gate:
    """ASGI middleware: refuses unauthenticated requests before any page is built."""

    def __init__(self, app: ASGIApp, *, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or await self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await self._refusal(scope)(scope, receive, send)

    async def _allowed(self, scope: Scope) -> bool:
        path = route_path(scope)
        if self.access.insecure_no_auth or path.startswith(PUBLIC_PREFIXES):
            return True
        if self.access.has_login and scope[SESSION_KEY].get("auth") is True:
            return True
        return await self._application_allows(Request(scope))

    async def _application_allows(self, request: Request) -> bool:
        check = self.access.authenticate
        if check is None:
            return False
        if inspect.iscoroutinefunction(check):
            return bool(await check(request))
        verdict = await run_in_threadpool(check, request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)

    def _refusal(self, scope: Scope) -> Response:
        request = Request(scope)
        navigating = request.method == "GET" and FRAGMENT_HEADER not in request.headers
        if navigating and self.access.has_login:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            login = f"{scope.get('root_path', '')}/login?{urlencode({'next': target})}"
            return RedirectResponse(login, status_code=303)
        if self.access.has_login:
            return PlainTextResponse("log in to errands' dashboard first", status_code=401)
        return PlainTextResponse("you are not allowed to use errands' dashboard", status_code=403)


def safe_next(request: Request, target: str) -> str:
    """``target`` if it is a path inside the dashboard, else the overview (no open redirect)."""
    root = request.scope.get("root_path", "")
    parts = urlsplit(target)
    inside = target.startswith(f"{root}/") and not target.startswith("//")
    if inside and not parts.scheme and not parts.netloc and "\\" not in target:
        return target
    return f"{root}/"


# -- CSRF ------------------------------------------------------------------------------


def csrf_refusal(request: Request, form_token: str | None) -> Response | None:
    """A 403 response unless the POST carries this session's token and comes from here."""
    if request.headers.get("sec-fetch-site") == "cross-site" or not _same_origin(request):
        return PlainTextResponse("cross-site request refused", status_code=403)
    given = form_token or request.headers.get(CSRF_HEADER, "")
    expected = str(session_of(request).get("csrf", ""))
    if not given or not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return PlainTextResponse(
            "missing or wrong CSRF token: reload the page and try again", status_code=403
        )
    return None


def _same_origin(request: Request) -> bool:
    """False when the browser says the request came from another origin."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not sent by older browsers for same-origin forms; the token decides
    if origin == "null":
        return False  # an opaque origin: a sandboxed frame, a data: URL...
    # Behind a reverse proxy that rewrites Host, the original host is forwarded.
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")}
    return urlsplit(origin).netloc in hosts - {""}


class LoginThrottle:
    """Counts wrong passwords per client address and refuses logins from an address
    that gave ``allowed`` of them, until ``lockout`` seconds after its last one.

    While an address waits, even the right password is refused, or guessing could
    simply go on. A successful login forgets the address's failures. The counts live
    in this process: several processes serving the dashboard each count their own.
    Behind a reverse proxy every client has the proxy's address, so they share one
    count, unless the server trusts the proxy's forwarded address (uvicorn's
    ``--proxy-headers`` and ``--forwarded-allow-ips``).
    """

    def __init__(
        self,
        *,
        allowed: int = LOGIN_FAILURES_ALLOWED,
        lockout: float = LOGIN_LOCKOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allowed = allowed
        self._lockout = lockout
        self._clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, last at)
        self._lock = threading.Lock()

    def wait_seconds(self, address: str) -> float:
        """How long ``address`` must wait before its next try (0: it may try now)."""
        with self._lock:
            count, last = self._failures.get(address, (0, 0.0))
            if count < self._allowed:
                return 0.0
            left = last + self._lockout - self._clock()
            if left <= 0:
                del self._failures[address]  # served its wait: a fresh start
                return 0.0
            return left

    def failed(self, address: str) -> None:
        with self._lock:
            count, _ = self._failures.get(address, (0, 0.0))
            self._failures[address] = (count + 1, self._clock())
            self._forget_expired()

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def _forget_expired(self) -> None:
        """Drop addresses whose last failure is older than the lockout (bounded memory)."""
        if len(self._failures) > 1000:
            oldest = self._clock() - self._lockout
            self._failures = {a: f for a, f in self._failures.items() if f[1] > oldest}


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
