"""Assembling the dashboard: ``create_app`` (an ASGI app to mount) and ``serve`` (standalone)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from errands import settings
from errands.dashboard import actions, proxies, security, sessions
from errands.dashboard.actions import Actions
from errands.dashboard.pages import Pages
from errands.dashboard.render import Look, Renderer
from errands.errors import ConfigurationError, ErrandsError

STATIC_DIR = Path(__file__).parent / "static"
logger = logging.getLogger("errands.dashboard")


def create_app(
    *,
    password: str | None = None,
    authenticate: security.Authenticate | None = None,
    read_only: bool | None = None,
    insecure_no_auth: bool = False,
    secret_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    trusted_proxies: Sequence[str] | None = None,
    session_lifetime: float | None = None,
    refresh_seconds: float = 5.0,
) -> Starlette:
    """The dashboard as an ASGI application, to mount at any path or serve alone.

    Access needs one of: ``password`` (default: the ``dashboard_password`` setting,
    environment ``ERRANDS_DASHBOARD_PASSWORD``) for a login form; ``authenticate``,
    a callable (sync or async) given the Starlette ``Request`` that returns True for
    people the application already knows (its own session, a header from its
    proxy...); or ``insecure_no_auth=True``, for a dashboard on your own machine.
    ``read_only`` (default: setting ``dashboard_read_only``) hides and refuses
    every action. Each other option defaults to its setting: ``secret_key``
    (``dashboard_secret_key``; unset: a random key kept in errands' database),
    ``allowed_hosts`` (``dashboard_allowed_hosts``; unset: the loopback names only,
    see :func:`errands.dashboard.proxies.default_hosts`), ``trusted_proxies``
    (``dashboard_trusted_proxies``) and ``session_lifetime``
    (``dashboard_session_lifetime``). Errands' database is the one configured
    (``database_url``).
    """
    current = settings.current()
    password = current.dashboard_password if password is None else password
    read_only = current.dashboard_read_only if read_only is None else read_only
    if not (password or authenticate or insecure_no_auth):
        raise ConfigurationError(
            "the dashboard needs a way to authenticate: set dashboard_password "
            "(environment ERRANDS_DASHBOARD_PASSWORD), pass authenticate=..., or pass "
            "insecure_no_auth=True (local development only)"
        )
    chosen = _options(
        secret_key=secret_key,
        allowed_hosts=allowed_hosts,
        trusted_proxies=trusted_proxies,
        session_lifetime=session_lifetime,
    )
    access = security.Access(
        password=password,
        authenticate=authenticate,
        insecure_no_auth=insecure_no_auth,
        session_lifetime=chosen["session_lifetime"],
    )
    look = Look(read_only=read_only, has_login=bool(password), refresh_seconds=refresh_seconds)
    pages = Pages(Renderer(look))
    key = sessions.SigningKey(configured=chosen["secret_key"], password=password)
    return Starlette(
        routes=_routes(pages, Actions(read_only=read_only), access, security.LoginThrottle()),
        middleware=[
            Middleware(proxies.ForwardedHeaders, trusted=chosen["trusted_proxies"]),
            Middleware(
                TrustedHostMiddleware,
                allowed_hosts=chosen["allowed_hosts"] or proxies.default_hosts(),
                www_redirect=False,
            ),
            Middleware(sessions.SessionCookie, key=key, lifetime=access.session_lifetime),
            Middleware(security.Gate, access=access),
        ],
        exception_handlers={ErrandsError: pages.failure},
    )


def _options(**given: Any) -> dict[str, Any]:
    """Each option as given (checked like its setting), or else its setting."""
    current = settings.current()
    return {
        name: getattr(current, f"dashboard_{name}")
        if value is None
        else settings.parse_setting(f"dashboard_{name}", value, f"create_app({name}=...)")
        for name, value in given.items()
    }


def _routes(
    pages: Pages, act: Actions, access: security.Access, throttle: security.LoginThrottle
) -> list[Route | Mount]:
    async def login_form(request: Request) -> Response:
        return pages.render(
            request, "login.html", nav="", next=request.query_params.get("next", "")
        )

    async def login(request: Request) -> Response:
        return await actions.log_in(request, access, throttle)

    return [
        Route("/", pages.overview, name="overview"),
        Route("/requests", pages.requests, name="requests"),
        Route("/processes", pages.processes, name="processes"),
        Route("/results", pages.results, name="results"),
        Route("/jobs/{uuid}", pages.job, name="job"),
        Route("/workers", pages.workers, name="workers"),
        Route("/workflows", pages.workflows, name="workflows"),
        Route("/workflows/{uuid}", pages.workflow, name="workflow"),
        Route("/schedules", pages.schedules, name="schedules"),
        Route("/bulk", pages.confirm_bulk, name="confirm_bulk"),
        Route("/login", login_form, name="login"),
        Route("/login", login, methods=["POST"], name="login_post"),
        Route("/logout", actions.log_out, methods=["POST"], name="logout"),
        Route("/jobs/{uuid}/retry", act.endpoint(act.retry), methods=["POST"], name="retry"),
        Route("/jobs/{uuid}/cancel", act.endpoint(act.cancel), methods=["POST"], name="cancel"),
        Route("/jobs/{uuid}/delete", act.endpoint(act.delete), methods=["POST"], name="delete"),
        Route("/bulk", act.endpoint(act.bulk), methods=["POST"], name="bulk"),
        Route("/queues/pause", act.endpoint(act.pause), methods=["POST"], name="pause"),
        Route("/queues/resume", act.endpoint(act.resume), methods=["POST"], name="resume"),
        Route(
            "/schedules/run", act.endpoint(act.run_schedule), methods=["POST"], name="run_schedule"
        ),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serve the dashboard with uvicorn until interrupted; ``options`` go to :func:`create_app`."""
    import uvicorn

    app = standalone_app(host, **options)
    uvicorn.Server(server_config(app, host, port, log_level)).run()


def standalone_app(host: str, **options: Any) -> Starlette:
    """The dashboard as :func:`serve` serves it on ``host``.

    Refuses to serve without authentication on an address other machines can reach.
    Without ``dashboard_allowed_hosts``, answers for ``host`` and the loopback names.
    """
    if options.get("insecure_no_auth") and not _is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the dashboard without authentication on {host}: "
            "bind 127.0.0.1 or set a password"
        )
    if options.get("allowed_hosts") is None and not settings.current().dashboard_allowed_hosts:
        options["allowed_hosts"] = proxies.default_hosts(host)
        if host in ("0.0.0.0", "::"):
            logger.warning(
                "the dashboard answers only for the host names %s: list the names "
                "browsers use to reach it in the setting dashboard_allowed_hosts",
                ", ".join(options["allowed_hosts"]),
            )
    return create_app(**options)


def server_config(app: Starlette, host: str, port: int, log_level: str) -> Any:
    """uvicorn's configuration for ``app`` (a ``uvicorn.Config``).

    uvicorn's own proxy headers are off: by default it believes X-Forwarded-For
    from 127.0.0.1, which would let anyone on this machine (or any local proxy's
    client) choose the address the login throttle counts. The dashboard reads them
    itself, from ``dashboard_trusted_proxies`` only.
    """
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, proxy_headers=False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
