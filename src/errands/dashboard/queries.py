"""Query strings to selections and back: what a listing shows, and links to more of it.

A listing's URL carries its filters (``queue``, ``job_class``, ``concurrency_key``,
``uuid``, ``window``, ``status``, ``state``, ``final``, ``tag``), its order (``order=reverse``) and,
past the first page, a keyset cursor: ``after`` (the rows that follow a row, for
the next page) or ``before`` (the rows that precede a row, for the previous
page); a listing takes one of them, not both. Bulk actions carry the same
filters plus ``until``, the database time at which their count was taken, so
they act on the rows the confirmation counted and not on rows that came later.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlencode

from errands.models import Cursor, Kind, PageSpec, Selection, Status

#: The time windows offered, by their name in URLs.
WINDOWS: dict[str, datetime.timedelta] = {
    "1h": datetime.timedelta(hours=1),
    "24h": datetime.timedelta(hours=24),
    "7d": datetime.timedelta(days=7),
}
FILTER_NAMES = (
    "queue",
    "job_class",
    "concurrency_key",
    "uuid",
    "window",
    "status",
    "state",
    "final",
    "tag",
)
#: Filter names that apply to each table.
FILTERS_OF: dict[Kind, tuple[str, ...]] = {
    Kind.REQUEST: ("queue", "job_class", "concurrency_key", "uuid", "window", "state", "tag"),
    Kind.PROCESS: ("queue", "job_class", "concurrency_key", "uuid", "window", "tag"),
    Kind.RESULT: (
        "queue",
        "job_class",
        "concurrency_key",
        "uuid",
        "window",
        "status",
        "final",
        "tag",
    ),
}
#: ``final=yes``: only the final failures ("dead letters", Selection.final).
FINAL = "yes"
STATES = {"pending": True, "scheduled": False}
PAGE_SIZE = 50
CURSOR_SEPARATOR = "~"


class BadQuery(ValueError):
    """A filter value that cannot be used; the message names the parameter."""


@dataclass(frozen=True)
class ListQuery:
    """A listing's query string, understood."""

    kind: Kind
    selection: Selection
    page: PageSpec
    #: set instead of ``page.after`` for a previous page: the rows just before this one
    before: Cursor | None = None
    #: the filters as given (only the non-empty ones), to refill forms and build links
    filters: dict[str, str] = field(default_factory=dict)

    @property
    def reverse(self) -> bool:
        return self.page.reverse

    def link(self, **changes: str | None) -> str:
        """This listing's query string with some parameters changed (None removes one)."""
        params: dict[str, str] = dict(self.filters)
        if self.page.reverse:
            params["order"] = "reverse"
        params.update({k: v for k, v in changes.items() if v is not None})
        for name in [k for k, v in changes.items() if v is None]:
            params.pop(name, None)
        return "?" + urlencode(params) if params else "?"

    def next_page(self, last: Cursor) -> str:
        """The page of the rows that follow ``last`` (the last row shown)."""
        return self.link(after=encode_cursor(last))

    def previous_page(self, first: Cursor) -> str:
        """The page of the rows that precede ``first`` (the first row shown)."""
        return self.link(before=encode_cursor(first))

    def backwards(self) -> PageSpec:
        """Where a previous page is found: from ``before``, in the opposite order,
        with one row more than a page to tell whether an earlier page exists."""
        return PageSpec(after=self.before, reverse=not self.reverse, limit=self.page.limit + 1)


def parse_list_query(kind: Kind, query: Mapping[str, str], now: datetime.datetime) -> ListQuery:
    """Raises BadQuery naming the parameter whose value is unusable."""
    filters = {
        name: query[name].strip() for name in FILTERS_OF[kind] if query.get(name, "").strip()
    }
    after = decode_cursor(query["after"], "after") if query.get("after") else None
    before = decode_cursor(query["before"], "before") if query.get("before") else None
    if after is not None and before is not None:
        raise BadQuery("before: a page is either after a row or before one, not both")
    page = PageSpec(after=after, reverse=query.get("order") == "reverse", limit=PAGE_SIZE)
    return ListQuery(
        kind=kind,
        selection=selection_of(filters, now),
        page=page,
        before=before,
        filters=filters,
    )


def selection_of(filters: Mapping[str, str], now: datetime.datetime) -> Selection:
    """The Selection named by non-empty filter values (``window`` counts back from ``now``)."""
    return Selection(
        queue=filters.get("queue") or None,
        job_class=filters.get("job_class") or None,
        concurrency_key=filters.get("concurrency_key") or None,
        uuid=_uuid(filters["uuid"]) if filters.get("uuid") else None,
        since=now - _window(filters["window"]) if filters.get("window") else None,
        status=_status(filters["status"]) if filters.get("status") else None,
        due=_state(filters["state"]) if filters.get("state") else None,
        final=_final(filters["final"]) if filters.get("final") else None,
        tag=filters.get("tag") or None,
    )


def bounded(selection: Selection, until: str) -> Selection:
    """The selection limited to rows that existed at ``until`` (an ISO time from a form)."""
    try:
        moment = datetime.datetime.fromisoformat(until)
    except ValueError:
        raise BadQuery(f"until: {until!r} is not an ISO time") from None
    if moment.tzinfo is None:
        raise BadQuery(f"until: {until!r} has no time zone")
    return replace(selection, until=moment)


def encode_cursor(cursor: Cursor) -> str:
    return f"{cursor.at.isoformat()}{CURSOR_SEPARATOR}{cursor.uuid}"


def decode_cursor(text: str, name: str = "after") -> Cursor:
    """The cursor in a URL's ``name`` parameter; BadQuery names it when unusable."""
    at, _, row = text.partition(CURSOR_SEPARATOR)
    try:
        moment = datetime.datetime.fromisoformat(at)
        return Cursor(
            at=moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC), uuid=uuid.UUID(row)
        )
    except ValueError:
        raise BadQuery(f"{name}: {text!r} is not a page cursor") from None


def window(name: str) -> datetime.timedelta:
    """The overview's time window; an unknown name means 24 hours."""
    return WINDOWS.get(name, WINDOWS["24h"])


def _window(name: str) -> datetime.timedelta:
    if name not in WINDOWS:
        raise BadQuery(f"window: {name!r} is not one of {', '.join(WINDOWS)}")
    return WINDOWS[name]


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise BadQuery(f"uuid: {text!r} is not a uuid") from None


def _status(text: str) -> Status:
    try:
        return Status(text.upper())
    except ValueError:
        raise BadQuery(f"status: {text!r} is not one of {', '.join(Status)}") from None


def _final(text: str) -> bool:
    if text != FINAL:
        raise BadQuery(f"final: {text!r} is not {FINAL!r} (leave it out for every result)")
    return True


def _state(text: str) -> bool:
    if text not in STATES:
        raise BadQuery(f"state: {text!r} is not one of {', '.join(STATES)}")
    return STATES[text]
