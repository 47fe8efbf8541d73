"""The dashboard's actions: every state change is a POST here, and only here.

Each action passes the same checks before it runs: the dashboard is not
read-only, and the form carries the session's CSRF token. It then runs in the
thread pool, leaves a one-line message for the next page (the "flash") and
redirects (303, so reloading the next page does not repeat the action).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from errands import api, scheduler, settings
from errands.dashboard import queries, security, sessions
from errands.dashboard.pages import BULK_ACTIONS
from errands.errors import AlreadyRetried, ErrandsError
from errands.jobs import EnqueueOptions, enqueue_many
from errands.models import JobProcess, JobResult, Kind

Endpoint = Callable[[Request], Awaitable[Response]]
#: The ``source`` of the jobs the dashboard's Retry buttons (one job, or a selection) enqueue.
RETRY_SOURCE = "dashboard:retry"


@dataclass(frozen=True)
class Done:
    """What an action tells the operator, and where it sends the browser."""

    message: str
    to: str = ""  # a route name; empty: back to the form's ``next``
    ok: bool = True
    job: uuid.UUID | None = None  # the job page to link from the message


Work = Callable[[Request, FormData], Done]


class Actions:
    def __init__(self, *, read_only: bool) -> None:
        self.read_only = read_only

    def endpoint(self, work: Work) -> Endpoint:
        async def run(request: Request) -> Response:
            form = await request.form()
            if self.read_only:
                return PlainTextResponse("the dashboard is read-only", status_code=403)
            refusal = security.csrf_refusal(request, _text(form, security.CSRF_FIELD))
            if refusal is not None:
                return refusal
            done = await run_in_threadpool(_attempt, work, request, form)
            return _redirect(request, form, done)

        return run

    # -- one job -----------------------------------------------------------------------
    @staticmethod
    def retry(request: Request, form: FormData) -> Done:
        try:
            request_made = api.retry(request.path_params["uuid"], delay=0, source=RETRY_SOURCE)
        except AlreadyRetried as exc:
            return Done(f"already retried: request {exc.request_uuid}", ok=False)
        if request_made is None:
            return Done("the job declined the retry (should_enqueue returned False)", ok=False)
        return Done("retry enqueued", to="job", job=request_made.uuid)

    @staticmethod
    def cancel(request: Request, form: FormData) -> Done:
        found = api.cancel(request.path_params["uuid"])
        if isinstance(found, JobResult):
            return Done("cancelled before it started", to="job", job=found.uuid)
        if isinstance(found, JobProcess):
            return Done("its worker was asked to stop it", to="job", job=found.uuid)
        return Done("nothing pending or running has this uuid any more", ok=False)

    @staticmethod
    def delete(request: Request, form: FormData) -> Done:
        if api.delete(request.path_params["uuid"]):
            return Done("deleted")
        return Done("nothing to delete: it is running, or already gone", ok=False)

    # -- a selection ---------------------------------------------------------------------
    @staticmethod
    def bulk(request: Request, form: FormData) -> Done:
        action, kind_name = _text(form, "action"), _text(form, "kind")
        if kind_name not in {str(k) for k in Kind} or action not in BULK_ACTIONS[Kind(kind_name)]:
            return Done(f"unknown bulk action {action!r} on {kind_name!r}", ok=False)
        kind = Kind(kind_name)
        filters = {
            name: _text(form, name) for name in queries.FILTERS_OF[kind] if _text(form, name)
        }
        now = api.backend().now()
        selection = queries.bounded(queries.selection_of(filters, now), _text(form, "until"))
        if action == "retry":
            outcome = api.retry_selected(selection, limit=api.BULK_BATCH, source=RETRY_SOURCE)
        elif action == "cancel":
            outcome = api.cancel_selected(kind, selection)
        else:
            outcome = api.delete_selected(kind, selection)
        skipped = (
            f" ({outcome.skipped} could not be retried: see the log)" if outcome.skipped else ""
        )
        return Done(f"{action}: {outcome.done} {kind}(s){skipped}")

    # -- queues and schedules -------------------------------------------------------------
    @staticmethod
    def pause(request: Request, form: FormData) -> Done:
        queue = _text(form, "queue")
        if not queue:
            return Done("name the queue to pause", ok=False)
        changed = api.pause_queue(queue)
        return Done(f"queue {queue!r} paused" if changed else f"queue {queue!r} was already paused")

    @staticmethod
    def resume(request: Request, form: FormData) -> Done:
        queue = _text(form, "queue")
        changed = api.resume_queue(queue)
        return Done(f"queue {queue!r} resumed" if changed else f"queue {queue!r} was not paused")

    @staticmethod
    def run_schedule(request: Request, form: FormData) -> Done:
        key = _text(form, "key")
        current = settings.current()
        entries = scheduler.parse_entries(current.schedule, current.timezone)
        entry = next((e for e in entries if e.key == key), None)
        if entry is None:
            return Done("that schedule entry no longer exists", ok=False)
        options = EnqueueOptions(source=f"dashboard:run schedule:{entry.key}")
        [made] = enqueue_many([entry.build_job()], options=options)
        if made is None:
            return Done(f"{entry.job} declined to be enqueued (should_enqueue)", ok=False)
        return Done(f"{entry.job} enqueued to run now", to="job", job=made.uuid)


async def log_in(
    request: Request, access: security.Access, throttle: security.LoginThrottle
) -> Response:
    form = await request.form()
    refusal = security.csrf_refusal(request, _text(form, security.CSRF_FIELD))
    if refusal is not None:
        return refusal
    address = security.client_address(request)
    wait = throttle.wait_seconds(address)
    if wait:
        return PlainTextResponse(
            f"too many wrong passwords: try again in {math.ceil(wait)} seconds",
            status_code=429,
            headers={"Retry-After": str(math.ceil(wait))},
        )
    target = security.safe_next(request, _text(form, "next"))
    if not security.password_matches(_text(form, "password"), access.password):
        throttle.failed(address)
        sessions.session_of(request)["flash"] = {"text": "wrong password", "ok": False}
        login = request.url_for("login").path
        return RedirectResponse(f"{login}{queries_next(target)}", status_code=303)
    throttle.succeeded(address)
    await sessions.log_in(request, lifetime=access.session_lifetime)
    return RedirectResponse(target, status_code=303)


async def log_out(request: Request) -> Response:
    form = await request.form()
    refusal = security.csrf_refusal(request, _text(form, security.CSRF_FIELD))
    if refusal is not None:
        return refusal
    await sessions.log_out(request)
    return RedirectResponse(request.url_for("login").path, status_code=303)


def queries_next(target: str) -> str:
    return "?" + urlencode({"next": target})


def _attempt(work: Work, request: Request, form: FormData) -> Done:
    """Run the action; a refusal by errands (unknown job, bad filter...) becomes a message."""
    try:
        return work(request, form)
    except (ErrandsError, LookupError, ValueError) as exc:
        return Done(str(exc), ok=False)


def _redirect(request: Request, form: FormData, done: Done) -> Response:
    flash: dict[str, object] = {"text": done.message, "ok": done.ok}
    if done.job is not None:
        flash["job"] = str(done.job)
    sessions.session_of(request)["flash"] = flash
    if done.to == "job" and done.job is not None:
        target = request.url_for("job", uuid=str(done.job)).path
    else:
        target = security.safe_next(request, _text(form, "next"))
    return RedirectResponse(target, status_code=303)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""
