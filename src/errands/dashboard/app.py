"""Assembling the dashboard: ``create_app`` (an ASGI app to mount) and ``serve`` (standalone)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from errands import settings
from errands.dashboard import actions, security
from errands.dashboard.actions import Actions
from errands.dashboard.pages import Pages
from errands.dashboard.render import Look, Renderer
from errands.errors import ConfigurationError, ErrandsError

STATIC_DIR = Path(__file__).parent / "static"


def create_app(
    *,
    password: str | None = None,
    authenticate: security.Authenticate | None = None,
    read_only: bool | None = None,
    insecure_no_auth: bool = False,
    secret_key: str | None = None,
    refresh_seconds: float = 5.0,
) -> Starlette:
    """The dashboard as an ASGI application, to mount at any path or serve alone.

    Access needs one of: ``password`` (default: the ``dashboard_password`` setting,
    environment ``ERRANDS_DASHBOARD_PASSWORD``) for a login form; ``authenticate``,
    a callable (sync or async) given the Starlette ``Request`` that returns True for
    people the application already knows (its own session, a header from its
    proxy...); or ``insecure_no_auth=True``, for a dashboard on your own machine.
    ``read_only`` (default: setting ``dashboard_read_only``) hides and refuses
    every action. ``secret_key`` signs the session cookie; it defaults to a key
    derived from the password (random without one: then pass it when several
    processes serve the dashboard). Errands' database is the one configured
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
    access = security.Access(
        password=password,
        authenticate=authenticate,
        insecure_no_auth=insecure_no_auth,
        secret_key=security.session_secret(password, secret_key),
    )
    look = Look(read_only=read_only, has_login=bool(password), refresh_seconds=refresh_seconds)
    pages = Pages(Renderer(look))
    return Starlette(
        routes=_routes(pages, Actions(read_only=read_only), password, security.LoginThrottle()),
        middleware=[
            Middleware(security.SessionCookie, secret_key=access.secret_key),
            Middleware(security.Gate, access=access),
        ],
        exception_handlers={ErrandsError: pages.failure},
    )


def _routes(
    pages: Pages, act: Actions, password: str, throttle: security.LoginThrottle
) -> list[Route | Mount]:
    async def login_form(request: Request) -> Response:
        return pages.render(
            request, "login.html", nav="", next=request.query_params.get("next", "")
        )

    async def login(request: Request) -> Response:
        return await actions.log_in(request, password, throttle)

    return [
        Route("/", pages.overview, name="overview"),
        Route("/requests", pages.requests, name="requests"),
        Route("/processes", pages.processes, name="processes"),
        Route("/results", pages.results, name="results"),
        Route("/jobs/{uuid}", pages.job, name="job"),
        Route("/workers", pages.workers, name="workers"),
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
    """Serve the dashboard with uvicorn until interrupted; ``options`` go to :func:`create_app`.

    Refuses to serve without authentication on an address other machines can reach.
    """
    import uvicorn

    if options.get("insecure_no_auth") and not _is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the dashboard without authentication on {host}: "
            "bind 127.0.0.1 or set a password"
        )
    uvicorn.run(create_app(**options), host=host, port=port, log_level=log_level)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
