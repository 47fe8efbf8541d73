"""The dashboard's pages: each GET handler reads the database and renders; none writes.

Handlers are plain functions (Starlette runs them in its thread pool, since the
backends block). Every listing is a keyset page of at most ``PAGE_SIZE`` rows,
linked to the first, previous and next pages of the same filters and order.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from errands import api, formatting, settings, why
from errands.dashboard import chart, queries, workflow_graph
from errands.dashboard.render import Renderer
from errands.errors import ErrandsError
from errands.models import (
    Cursor,
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    PageSpec,
    QueueStats,
    Selection,
    Status,
)

LIST_TEMPLATES = {
    Kind.REQUEST: "requests.html",
    Kind.PROCESS: "processes.html",
    Kind.RESULT: "results.html",
}
#: The listing (route name) of each table.
PLURAL = {Kind.REQUEST: "requests", Kind.PROCESS: "processes", Kind.RESULT: "results"}
#: How many of the latest workflows the workflows page lists.
WORKFLOWS_LISTED = 50
BULK_ACTIONS: dict[Kind, tuple[str, ...]] = {
    Kind.REQUEST: ("cancel", "delete"),
    Kind.PROCESS: ("cancel",),
    Kind.RESULT: ("retry", "delete"),
}


@dataclass(frozen=True)
class ListingPage:
    """The rows of one listing page, and the query strings of the pages around it
    (None where there is no such page: the first page links to no first or previous one)."""

    rows: list[Any]
    first: str | None = None
    previous: str | None = None
    next: str | None = None


@dataclass(frozen=True)
class QueueRow:
    name: str
    stats: QueueStats | None
    paused: bool


class Pages:
    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer
        self.counts = chart.ThroughputCache()

    def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response:
        return self.renderer.page(request, template, context, status=status)

    def failure(self, request: Request, exc: Exception) -> Response:
        """errands' own errors (database unreachable, schema out of date) as a page."""
        return self.render(request, "failure.html", status=503, nav="", message=str(exc))

    # -- overview ------------------------------------------------------------------------
    def overview(self, request: Request) -> Response:
        window = request.query_params.get("window", "24h")
        window = window if window in queries.WINDOWS else "24h"
        backend = api.backend()
        now = backend.now()
        bucket = chart.BUCKET_SECONDS[window]
        since = chart.aligned(now - queries.window(window), bucket)  # whole buckets only
        rows = self.counts.rows(backend, since=since, now=now, bucket_seconds=bucket)
        return self.render(
            request,
            "overview.html",
            nav="overview",
            window=window,
            windows=list(queries.WINDOWS),
            now=now,
            # None while a long first count runs: the page's next refresh shows it.
            counts=None if rows is None else chart.outcome_counts(rows),
            chart=None
            if rows is None
            else chart.build_chart(rows, since=since, now=now, bucket_seconds=bucket),
            queues=queue_rows(),
            workers=api.workers(),
            limits=api.limit_usage(),
        )

    # -- listings ------------------------------------------------------------------------
    def requests(self, request: Request) -> Response:
        return self._listing(request, Kind.REQUEST)

    def processes(self, request: Request) -> Response:
        return self._listing(request, Kind.PROCESS)

    def results(self, request: Request) -> Response:
        return self._listing(request, Kind.RESULT)

    def _listing(self, request: Request, kind: Kind) -> Response:
        now = api.backend().now()
        queues = queue_rows()
        context: dict[str, Any] = {
            "nav": PLURAL[kind],
            "kind": str(kind),
            "now": now,
            "queues": queues,
            "paused": {q.name for q in queues if q.paused},
            "statuses": [str(s) for s in Status],
            "bulk_actions": BULK_ACTIONS[kind],
        }
        try:
            query = queries.parse_list_query(kind, request.query_params, now)
        except queries.BadQuery as exc:
            return self._unusable_filters(request, kind, str(exc), context)
        page = fetch_page(kind, query)
        return self.render(
            request,
            LIST_TEMPLATES[kind],
            error="",
            rows=page.rows,
            query=query,
            filters=query.filters,
            first_page=page.first,
            previous_page=page.previous,
            next_page=page.next,
            **context,
        )

    def _unusable_filters(
        self, request: Request, kind: Kind, error: str, context: dict[str, Any]
    ) -> Response:
        """The listing's form, refilled as given, with what is wrong and no rows."""
        given = {k: v for k, v in request.query_params.items() if k in queries.FILTER_NAMES}
        return self.render(
            request,
            LIST_TEMPLATES[kind],
            status=400,
            error=error,
            rows=[],
            query=None,
            filters=given,
            first_page=None,
            previous_page=None,
            next_page=None,
            **context,
        )

    # -- one job ---------------------------------------------------------------------------
    def job(self, request: Request) -> Response:
        key = request.path_params["uuid"]
        try:
            wanted = uuid.UUID(key)
        except ValueError:
            return self.render(request, "missing.html", status=404, nav="", uuid=key)
        chain = api.retry_chain(wanted)
        found = next((attempt for attempt in chain if _is(attempt, wanted)), None)
        if found is None:
            return self.render(request, "missing.html", status=404, nav="", uuid=key)
        workflow = workflow_graph.workflow_of_job(
            api.backend(), [a.uuid if isinstance(a, JobRequest) else a.request_uuid for a in chain]
        )
        return self.render(
            request,
            "job.html",
            nav=PLURAL[Kind(found.kind)],
            job=found,
            chain=chain,
            workflow=workflow,
            now=api.backend().now(),
            paused=found.queue in api.paused_queues(),
            why=why.explain(
                why.gather(
                    api.backend(), found, heartbeat_timeout=settings.current().heartbeat_timeout
                ),
                time_text=formatting.utc_time,
            ),
        )

    # -- workflows -------------------------------------------------------------------------
    def workflows(self, request: Request) -> Response:
        return self.render(
            request,
            "workflows.html",
            nav="workflows",
            rows=workflow_graph.recent(api.backend(), WORKFLOWS_LISTED),
            now=api.backend().now(),
        )

    def workflow(self, request: Request) -> Response:
        key = request.path_params["uuid"]
        try:
            found = api.backend().workflow(uuid=uuid.UUID(key))
        except ValueError:
            found = None
        if found is None:
            return self.render(request, "missing.html", status=404, nav="", uuid=key)
        return self.render(
            request,
            "workflow.html",
            nav="workflows",
            workflow=found,
            graph=workflow_graph.build_graph(found),
            counts=workflow_graph.shown_counts(found),
            now=api.backend().now(),
        )

    # -- workers and schedules -------------------------------------------------------------
    def workers(self, request: Request) -> Response:
        return self.render(
            request, "workers.html", nav="workers", workers=api.workers(), now=api.backend().now()
        )

    def schedules(self, request: Request) -> Response:
        try:
            entries, error = api.schedule_status(count=3), ""
        except ErrandsError as exc:
            entries, error = [], str(exc)
        return self.render(
            request,
            "schedules.html",
            nav="schedules",
            entries=entries,
            error=error,
            now=api.backend().now(),
        )

    # -- bulk confirmation -------------------------------------------------------------------
    def confirm_bulk(self, request: Request) -> Response:
        """States how many rows a bulk action would touch; the action itself is a POST."""
        params = request.query_params
        action, kind = params.get("action", ""), params.get("kind", "")
        if kind not in {str(k) for k in Kind} or action not in BULK_ACTIONS[Kind(kind)]:
            return self.render(request, "missing.html", status=404, nav="", uuid="")
        now = api.backend().now()
        try:
            query = queries.parse_list_query(Kind(kind), params, now)
        except queries.BadQuery as exc:
            return self.render(request, "missing.html", status=400, nav="", uuid=str(exc))
        selection = replace(query.selection, until=now)
        if action == "retry":
            selection = replace(selection, retried=False)
        return self.render(
            request,
            "confirm.html",
            nav=PLURAL[Kind(kind)],
            action=action,
            kind=kind,
            count=api.count(kind, selection),
            filters=query.filters,
            until=now.isoformat(),
            until_at=now,
            back=query.link(),
        )


def fetch_page(kind: Kind, query: queries.ListQuery) -> ListingPage:
    """The page ``query`` names, with links to the pages around it.

    A previous page (``before``) is read backwards from its cursor and turned
    around. When less than a whole page precedes the cursor, the first page is
    shown instead, exactly as it is without a cursor, so stepping back always
    ends on the first page and every page but the first is a whole page.
    """
    limit = query.page.limit
    if query.before is not None:
        earlier = fetch_rows(kind, query.selection, query.backwards())
        if len(earlier) > limit:  # a page, and at least one row before it
            rows = earlier[:limit][::-1]
            # The cursor's own row follows these rows: there is a next page.
            return ListingPage(
                rows=rows,
                first=query.link(),
                previous=query.previous_page(cursor_of(rows[0])),
                next=query.next_page(cursor_of(rows[-1])),
            )
        query = replace(query, before=None)
    fetched = fetch_rows(kind, query.selection, replace(query.page, limit=limit + 1))
    rows = fetched[:limit]
    following = query.next_page(cursor_of(rows[-1])) if len(fetched) > limit else None
    if query.page.after is None:
        return ListingPage(rows=rows, next=following)
    return ListingPage(
        rows=rows,
        first=query.link(),
        # Past the end (the rows after the cursor are gone) only the first page is offered.
        previous=query.previous_page(cursor_of(rows[0])) if rows else None,
        next=following,
    )


def fetch_rows(kind: Kind, selection: Selection, page: PageSpec) -> list[Any]:
    backend = api.backend()
    if kind is Kind.REQUEST:
        return list(backend.page_requests(selection=selection, page=page))
    if kind is Kind.PROCESS:
        return list(backend.page_processes(selection=selection, page=page))
    return list(backend.page_results(selection=selection, page=page))


def cursor_of(row: JobRequest | JobProcess | JobResult) -> Cursor:
    """Where a row stands in its listing."""
    return Cursor(at=sort_time(row), uuid=row.uuid)


def sort_time(row: JobRequest | JobProcess | JobResult) -> datetime.datetime:
    """The column each listing is ordered by (see ``Backend.page_*``)."""
    if isinstance(row, JobRequest):
        return row.start_at
    if isinstance(row, JobProcess):
        return row.created_at
    return row.ended_at


def queue_rows() -> list[QueueRow]:
    """Every queue with jobs, and every paused queue even when it is empty."""
    stats = {s.queue: s for s in api.backend().queue_stats()}
    paused = set(api.paused_queues())
    return [
        QueueRow(name=name, stats=stats.get(name), paused=name in paused)
        for name in sorted(stats.keys() | paused)
    ]


def _is(attempt: JobRequest | JobProcess | JobResult, wanted: uuid.UUID) -> bool:
    """True when ``wanted`` names this attempt (its own, its request's or its process's uuid)."""
    ids = {attempt.uuid}
    if isinstance(attempt, JobProcess | JobResult):
        ids.add(attempt.request_uuid)
    if isinstance(attempt, JobResult):
        ids.add(attempt.process_uuid)
    return wanted in ids
