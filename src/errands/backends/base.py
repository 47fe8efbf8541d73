"""The seam between errands and a database: a job's life, named by its transitions.

The jobs API and the worker talk only to :class:`Backend`; PostgreSQL and SQLite
implement it (``postgres.py`` and ``sqlite.py``, each with its SQL in a ``.sql``
file beside it). State machine of one job::

    enqueue -> JobRequest --claim--> JobProcess --complete--> JobResult
                  ^   ^                 |  |  \\--rescue (worker dead)--> JobResult(LOST)
                  |   '----release------'  '--cancel (pending)--> JobResult(CANCELLED)
                  '---- requeue (retry/defer, same transaction as the result)

Guarantees every implementation keeps:

* a request is claimed by at most one worker (claims never overlap);
* a process produces at most one result: completing or rescuing a process that
  no longer exists writes nothing (``complete_many`` skips it);
* due times and heartbeat staleness are judged by the database clock.
"""

from __future__ import annotations

import abc

from errands.backends.notifier import Listener, Notifier
from errands.backends.reader import JobReader
from errands.backends.store import (
    ConcurrencySlot,
    EnqueueTransaction,
    JobStore,
    iter_chunks,
    kept_results,
)

__all__ = [
    "TABLES",
    "Backend",
    "ConcurrencySlot",
    "DashboardStore",
    "EnqueueTransaction",
    "JobReader",
    "JobStore",
    "Listener",
    "Notifier",
    "Schema",
    "iter_chunks",
    "kept_results",
]

#: The tables holding errands' data, as the migrations create them (besides
#: ``errands_schema``, which records the schema version). Tests and the benchmark
#: empty these between runs.
TABLES = (
    "errands_request",
    "errands_process",
    "errands_result",
    "errands_worker",
    "errands_occurrence",
    "errands_paused_queue",
    "errands_secret",
    "errands_dashboard_session",
    "errands_followup",
    "errands_limit_start",
    # A workflow's edges and nodes before the workflow they belong to.
    "errands_workflow_edge",
    "errands_workflow_node",
    "errands_workflow",
)


class Schema(abc.ABC):
    """errands' tables: create, upgrade and report their version."""

    @abc.abstractmethod
    def migrate(self) -> list[int]:
        """Create or upgrade the schema; return the versions applied. Safe to run concurrently."""

    @abc.abstractmethod
    def migration_sql(self) -> str:
        """The SQL ``migrate`` would run on an empty database, for external tools."""

    @abc.abstractmethod
    def schema_version(self) -> int | None:
        """The recorded schema version, or None when errands' tables do not exist."""

    @abc.abstractmethod
    def latest_schema_version(self) -> int:
        """The version this release of errands needs."""


class DashboardStore(abc.ABC):
    """The dashboard's shared secret and its server-side login sessions."""

    @abc.abstractmethod
    def shared_secret(self, *, name: str, candidate: str) -> str:
        """The secret stored as ``name``, storing ``candidate`` first if there is none.

        Race-free: processes asking at once all get the one value that was stored.
        """

    @abc.abstractmethod
    def start_dashboard_session(self, *, session_id: str, lifetime_seconds: float) -> None:
        """Record a login valid for ``lifetime_seconds`` (database clock); forget expired ones."""

    @abc.abstractmethod
    def dashboard_session_active(self, *, session_id: str) -> bool:
        """True while the login was recorded, not ended and not expired."""

    @abc.abstractmethod
    def end_dashboard_session(self, *, session_id: str) -> None:
        """Forget a login (logging out): its cookie is refused from now on."""


class Backend(Schema, JobStore, JobReader, Notifier, DashboardStore):
    """A database that stores errands' requests, processes, results and workers.

    The jobs API and the worker talk only to this: the job's life
    (:class:`JobStore`), what can be read about it (:class:`JobReader`), wake-ups
    (:class:`Notifier`), the schema and the dashboard's state.
    """

    #: "postgresql" or "sqlite"
    name: str
    url: str

    @abc.abstractmethod
    def close(self) -> None: ...
