"""Who may see the dashboard and how its actions are protected.

* The session (a signed cookie, and a database record per login) lives in
  :mod:`errands.dashboard.sessions`; which hosts and proxies are believed, in
  :mod:`errands.dashboard.proxies`.
* Every request passes :class:`Gate` first: the application's ``authenticate``
  callable or a password login lets it through, ``insecure_no_auth`` lets
  everything through; the login page and static files are always reachable.
* Every action is a POST carrying the session's CSRF token (:func:`csrf_refusal`),
  from the dashboard's own origin, so another site cannot make a browser act.
* Password guessing is throttled per client address (:class:`LoginThrottle`).
"""

from __future__ import annotations

import hmac
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from errands.dashboard import sessions
from errands.dashboard.sessions import session_of
from errands.errors import ErrandsError

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: Requests made by the dashboard's own script to refresh part of a page.
FRAGMENT_HEADER = "x-errands-fragment"
#: Paths (below the mount point) reachable without authentication.
PUBLIC_PREFIXES = ("/login", "/static/")
DEFAULT_PORTS = {"http": 80, "https": 443}

Authenticate = Callable[[Request], bool | Awaitable[bool]]

LOGIN_FAILURES_ALLOWED = 5  # wrong passwords from one address before it must wait
LOGIN_LOCKOUT_SECONDS = 300.0  # how long it waits (each failure after that restarts it)


@dataclass(frozen=True)
class Access:
    """How the dashboard authenticates; built once by ``create_app``."""

    password: str
    authenticate: Authenticate | None
    insecure_no_auth: bool
    session_lifetime: float

    @property
    def has_login(self) -> bool:
        return bool(self.password)


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


# -- authentication ----------------------------------------------------------------------


class Gate:
    """ASGI middleware: refuses unauthenticated requests before any page is built."""

    def __init__(self, app: ASGIApp, *, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            allowed = scope["type"] != "http" or await self._allowed(scope)
        except ErrandsError as exc:  # the database holding the logins does not answer
            await sessions.unavailable(exc)(scope, receive, send)
            return
        if allowed:
            await self.app(scope, receive, send)
            return
        await self._refusal(scope)(scope, receive, send)

    async def _allowed(self, scope: Scope) -> bool:
        path = route_path(scope)
        if self.access.insecure_no_auth or path.startswith(PUBLIC_PREFIXES):
            return True
        if self.access.has_login and await sessions.logged_in(scope[sessions.SESSION_KEY]):
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
        return PlainTextResponse(
            "cross-site request refused (behind a reverse proxy that changes the scheme or "
            "host? name it in the setting dashboard_trusted_proxies)",
            status_code=403,
        )
    given = form_token or request.headers.get(CSRF_HEADER, "")
    expected = str(session_of(request).get("csrf", ""))
    if not given or not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return PlainTextResponse(
            "missing or wrong CSRF token: reload the page and try again", status_code=403
        )
    return None


def _same_origin(request: Request) -> bool:
    """False when the browser says the request came from another origin: another
    scheme, host or port than this request's (as a trusted proxy forwarded them)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not sent by older browsers for same-origin forms; the token decides
    if origin == "null":
        return False  # an opaque origin: a sandboxed frame, a data: URL...
    here = _origin_of(f"{request.url.scheme}://{request.headers.get('host', '')}")
    return here is not None and _origin_of(origin) == here


def _origin_of(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the scheme's default port filled in; None if malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS.get(scheme)


class LoginThrottle:
    """Counts wrong passwords per client address and refuses logins from an address
    that gave ``allowed`` of them, until ``lockout`` seconds after its last one.

    While an address waits, even the right password is refused, or guessing could
    simply go on. A successful login forgets the address's failures. The counts live
    in this process: several processes serving the dashboard each count their own.
    Behind a reverse proxy every client has the proxy's address, so they share one
    count, unless the proxy is named in ``dashboard_trusted_proxies``: then its
    ``X-Forwarded-For`` gives the address (see :mod:`errands.dashboard.proxies`).
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
