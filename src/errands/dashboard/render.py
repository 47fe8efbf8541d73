"""Turning data into HTML: the Jinja2 environment, its filters, and page responses.

Autoescaping is on for every template, so job parameters, errors and tracebacks
(user data) are always escaped; nothing is marked safe by hand.

A page's template may define a ``live`` block: when the dashboard's script asks
for it (header ``X-Errands-Fragment``), only that block is rendered, and the page
swaps it in place. That is how lists and cards refresh without a page reload.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from errands import formatting, progress
from errands.dashboard import security, sessions, workflow_graph

#: Sent with every page: no caching of job data, no framing, no foreign scripts.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Vary": "Cookie, X-Errands-Fragment",
}
LIVE_BLOCK = "live"
#: The status colour each state of a job that has not finished wears (macro ``state``).
STATE_STYLES = {
    "cancelling": "CANCELLED",
    "running": "RUNNING",
    "claimed": "PENDING",
    "scheduled": "SCHEDULED",
    "pending": "PENDING",
    "waiting": "SCHEDULED",  # a workflow job waiting for its dependencies
}
try:
    VERSION = importlib.metadata.version("errands")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "dev"


@dataclass(frozen=True)
class Look:
    """What every page needs to know about this dashboard."""

    read_only: bool
    has_login: bool
    refresh_seconds: float
    title: str = "errands"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("errands.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        short_uuid=short_uuid,
        json_pretty=json_pretty,
        json_short=json_short,
        # Times, durations, attempts and states: errands.formatting, shared with the CLI.
        seconds=formatting.duration_in_words,
        iso=formatting.iso_utc,
        utc_time=formatting.utc_time,
        run_seconds=formatting.run_seconds,
        waited_seconds=formatting.waited_seconds,
        attempt=formatting.attempt_text,
        process_state=formatting.process_state,
        request_state=formatting.request_state,
        progress_text=progress_text,
        progress_percent=progress_percent,
    )
    env.globals.update(url=url, static=static, state_styles=STATE_STYLES)
    env.tests["undecodable"] = formatting.is_undecodable
    env.tests["delayed"] = formatting.was_delayed
    env.tests["held"] = formatting.is_held_time
    env.globals["held_text"] = formatting.HELD_TEXT
    env.globals["node_styles"] = workflow_graph.NODE_STYLES
    return env


class Renderer:
    def __init__(self, look: Look) -> None:
        self.look = look
        self.env = environment()

    def page(
        self, request: Request, template: str, context: dict[str, Any], *, status: int = 200
    ) -> HTMLResponse:
        """The whole page, or only its live block when the page's script asks for it."""
        full = {**self._common(request), **context}
        # The macros, bound to this request (they build URLs); every template calls them `m`.
        full["m"] = self.env.get_template("macros.html").make_module(full)
        compiled = self.env.get_template(template)
        html = None
        if security.FRAGMENT_HEADER in request.headers:
            html = self._live_block(compiled, full)
        if html is None:
            html = compiled.render(full)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def _live_block(self, template: jinja2.Template, variables: dict[str, Any]) -> str | None:
        """The ``live`` block alone, with the blocks it uses resolved as ``extends`` would:
        the page's own first, then each parent's."""
        context = template.new_context(variables)
        parent = self._parent_of(template)
        while parent is not None:
            for name, render in parent.blocks.items():
                context.blocks.setdefault(name, []).append(render)
            parent = self._parent_of(parent)
        if LIVE_BLOCK not in context.blocks:
            return None
        return "".join(context.blocks[LIVE_BLOCK][0](context))

    def _parent_of(self, template: jinja2.Template) -> jinja2.Template | None:
        if template.name is None:
            return None
        source, _, _ = self.env.loader.get_source(self.env, template.name)  # type: ignore[union-attr]
        extends = self.env.parse(source).find(jinja2.nodes.Extends)
        if extends is None or not isinstance(extends.template, jinja2.nodes.Const):
            return None
        return self.env.get_template(extends.template.value)

    def _common(self, request: Request) -> dict[str, Any]:
        session = sessions.session_of(request)
        fragment = security.FRAGMENT_HEADER in request.headers
        return {
            "request": request,
            "look": self.look,
            "can_act": not self.look.read_only,
            "csrf_token": session.get("csrf", ""),
            "logged_in": session.get("auth") is True,
            # A refreshing fragment must not eat the message meant for the next page.
            "flash": None if fragment else session.pop("flash", None),
            "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        }


# -- template helpers ---------------------------------------------------------------------


@jinja2.pass_context
def url(context: jinja2.runtime.Context, name: str, query: str = "", **path_params: Any) -> str:
    """The path of a named route, below wherever the dashboard is mounted."""
    request: Request = context["request"]
    path = request.url_for(name, **path_params).path
    return f"{path}{query}" if query and query != "?" else path


@jinja2.pass_context
def static(context: jinja2.runtime.Context, path: str) -> str:
    """A static file's path, with the version so browsers fetch it anew after upgrades."""
    return url(context, "static", path=path) + f"?v={VERSION}"


def progress_text(job: Any) -> str:
    """A process's or result's progress as the CLI shows it (errands.progress)."""
    return progress.progress_text(job.progress_done, job.progress_total, job.progress_message)


def progress_percent(job: Any) -> float | None:
    return progress.percent(job.progress_done, job.progress_total)


def short_uuid(value: Any) -> str:
    return str(value)[:8] if value else ""


def json_pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def json_short(value: Any, length: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return text if len(text) <= length else text[: length - 1] + "…"
