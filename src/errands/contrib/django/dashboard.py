"""errands' dashboard inside a Django project's ASGI application, for staff only.

In ``asgi.py``::

    django_application = get_asgi_application()
    from errands.contrib.django.dashboard import with_dashboard
    application = with_dashboard(django_application, path="/errands")

People get in with their Django session (log in through the admin or the site's
own login): active staff users only. Everyone else gets the dashboard's refusal.
Needs the dashboard's extra (``errands[dashboard]``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest


def is_staff_session(session_key: str) -> bool:
    """True when the Django session ``session_key`` belongs to an active staff user."""
    engine = import_module(settings.SESSION_ENGINE)
    request = HttpRequest()
    request.session = engine.SessionStore(session_key)
    user = get_user(request)  # checks the session's auth hash, as Django's middleware does
    return bool(user.is_active and getattr(user, "is_staff", False))


async def authenticate_staff(request: Any) -> bool:
    """The dashboard's ``authenticate`` callable: the request's Django session is staff's."""
    session_key = request.cookies.get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return False
    return bool(await sync_to_async(is_staff_session)(session_key))


def allowed_hosts() -> list[str]:
    """Django's ``ALLOWED_HOSTS`` written as the dashboard's host patterns.

    The dashboard is served beside Django, not through it, so Django never checks
    its requests' Host header: the dashboard checks it against the same names.
    """
    patterns = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not patterns:
        patterns = [".localhost", "127.0.0.1", "[::1]"]  # what Django allows then
    hosts = []
    for pattern in patterns:
        # Django's ".example.com" is the domain and every subdomain.
        hosts += [pattern[1:], f"*{pattern}"] if pattern.startswith(".") else [pattern]
    return hosts


def dashboard_application(**options: Any) -> Any:
    """The dashboard ASGI app gated by :func:`authenticate_staff` (``options`` go to
    ``errands.dashboard.create_app``, e.g. ``read_only=True``). It answers for the
    hosts of the setting ``dashboard_allowed_hosts``, or else Django's ``ALLOWED_HOSTS``."""
    from errands import settings as errands_settings
    from errands.dashboard.app import create_app

    if options.get("allowed_hosts") is None:
        configured = errands_settings.current().dashboard_allowed_hosts
        options["allowed_hosts"] = list(configured) or allowed_hosts()
    return create_app(authenticate=authenticate_staff, **options)


def with_dashboard(django_application: Any, *, path: str = "/errands", **options: Any) -> Any:
    """An ASGI application serving the dashboard under ``path`` and Django elsewhere."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    return Starlette(
        routes=[
            Mount(path.rstrip("/"), app=dashboard_application(**options)),
            Mount("/", app=django_application),
        ]
    )
