"""What differs between the SQL dialects below the queries: how values are sent and read.

PostgreSQL sends uuids, times and lists as themselves (psycopg adapts them) and
reads them back typed; SQLite stores uuids as text, times as REAL unix seconds
and lists as JSON. A :class:`Session` runs named queries inside whatever
transaction its backend opened. With these two, :class:`~errands.backends.sql.backend.SqlBackend`
writes every operation that is the same statement in both dialects once.
"""

from __future__ import annotations

import abc
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol
from uuid import UUID

from errands.models import JobProcess, JobRequest, JobResult, PageSpec, Selection, WorkerInfo


class Row(Protocol):
    """A row as both drivers return it (a dict, an ``sqlite3.Row``): values by column name."""

    def __getitem__(self, key: str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


class Session(Protocol):
    """Named queries run inside one connection's current transaction (or autocommit)."""

    def rows(self, name: str, params: Mapping[str, Any] | None = None, /) -> Sequence[Row]:
        """The rows the named query returns."""
        ...

    def run(self, name: str, params: Mapping[str, Any] | None = None, /) -> int:
        """Run the named statement; how many rows it touched."""
        ...


class Codec(abc.ABC):
    """One dialect's encoding of parameters and decoding of rows."""

    @abc.abstractmethod
    def uuid(self, value: UUID) -> Any:
        """A uuid as the dialect stores it."""

    @abc.abstractmethod
    def time(self, value: datetime.datetime) -> Any:
        """An aware datetime as the dialect stores it."""

    @abc.abstractmethod
    def texts(self, values: Sequence[str]) -> Any:
        """A list of strings as one parameter (an array, or JSON)."""

    @abc.abstractmethod
    def moment(self, value: Any) -> datetime.datetime:
        """A stored time as an aware datetime in UTC."""

    @abc.abstractmethod
    def uuid_of(self, value: Any) -> UUID:
        """A stored uuid as a UUID."""

    @abc.abstractmethod
    def request(self, row: Row) -> JobRequest: ...

    @abc.abstractmethod
    def process(self, row: Row) -> JobProcess: ...

    @abc.abstractmethod
    def result(self, row: Row) -> JobResult: ...

    @abc.abstractmethod
    def worker(self, row: Row) -> WorkerInfo: ...

    def json_value(self, value: Any) -> Any:
        """A stored JSON value (a return value) as Python data: PostgreSQL's jsonb comes
        back decoded."""
        return value

    # -- written once from the above ----------------------------------------------------
    def optional_uuid(self, value: UUID | None) -> Any:
        return None if value is None else self.uuid(value)

    def optional_time(self, value: datetime.datetime | None) -> Any:
        return None if value is None else self.time(value)

    def selection(self, selection: Selection) -> dict[str, Any]:
        """A Selection as the ``*_selection`` fragments' parameters; None means "any"."""
        return {
            "queue": selection.queue or None,
            "job_class": selection.job_class or None,
            "concurrency_key": selection.concurrency_key or None,
            "uuid": self.optional_uuid(selection.uuid),
            "since": self.optional_time(selection.since),
            "until": self.optional_time(selection.until),
            "due": selection.due,
            "status": str(selection.status) if selection.status else None,
            "retried": selection.retried,
            "final": selection.final,
            "tag": selection.tag or None,
        }

    def page(self, selection: Selection, page: PageSpec) -> dict[str, Any]:
        """A Selection and a keyset page as the ``page_*`` queries' parameters."""
        after = page.after
        return {
            **self.selection(selection),
            "after_at": self.time(after.at) if after else None,
            "after_uuid": self.uuid(after.uuid) if after else None,
            "limit": page.limit,
        }
