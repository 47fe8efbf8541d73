"""The reading half of the backend seam: what the API, CLI and dashboard look at."""

from __future__ import annotations

import abc
import datetime
import uuid

from errands.limiting import LimitUsage
from errands.models import (
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    PageSpec,
    QueueStats,
    Selection,
    Stats,
    Throughput,
    WorkerInfo,
)
from errands.workflow_models import DependencyResult, WorkflowStatus


def prefix_range(prefix: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The lowest and highest uuid starting with ``prefix`` (hex digits; hyphens and
    case ignored). Uuids order as their hex text does (PostgreSQL compares their
    bytes, SQLite their lowercase text), so "starts with" is this range: a range
    scan of each uuid column's index. ValueError if ``prefix`` is not hex or too long.
    """
    digits = prefix.replace("-", "").lower()
    if not digits or len(digits) > 32 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"{prefix!r} is not the start of a uuid (hex digits, e.g. 3f1c2a4e)")
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


class JobReader(abc.ABC):
    """Look jobs up, page through them, count them and summarise them.

    Every listing takes a :class:`~errands.models.Selection` (None fields mean
    "any"); pages are keyset pages in each table's natural order.
    """

    @abc.abstractmethod
    def get(self, *, uuid: uuid.UUID) -> JobRequest | JobProcess | JobResult | None:
        """Look a uuid up among requests, processes and results (request uuids of results too)."""

    @abc.abstractmethod
    def find_prefix(self, *, prefix: str, limit: int) -> list[JobRequest | JobProcess | JobResult]:
        """Rows with a uuid starting with ``prefix`` (see :func:`prefix_range`): requests
        by their uuid, processes by theirs or their request's, results by theirs, their
        process's or their request's. At most ``limit`` of each table, in uuid order;
        requests first, then processes, then results."""

    @abc.abstractmethod
    def limit_usage(self) -> list[LimitUsage]:
        """Every limit key of a pending or claimed job, with its jobs and recent starts."""

    @abc.abstractmethod
    def next_requests(self, *, selection: Selection, limit: int) -> list[JobRequest]:
        """Selected requests in the order workers claim them (priority, then due time)."""

    @abc.abstractmethod
    def page_requests(self, *, selection: Selection, page: PageSpec) -> list[JobRequest]:
        """Selected requests due soonest first (``start_at``, then uuid), after ``page.after``."""

    @abc.abstractmethod
    def page_processes(self, *, selection: Selection, page: PageSpec) -> list[JobProcess]:
        """Selected processes claimed longest ago first (``created_at``, then uuid)."""

    @abc.abstractmethod
    def page_results(self, *, selection: Selection, page: PageSpec) -> list[JobResult]:
        """Selected results ended most recently first (``ended_at``, then uuid)."""

    @abc.abstractmethod
    def count(self, *, kind: Kind, selection: Selection) -> int:
        """How many rows of the table ``kind`` the selection covers."""

    @abc.abstractmethod
    def stats(self, *, heartbeat_timeout_seconds: float) -> Stats: ...

    @abc.abstractmethod
    def queue_stats(self) -> list[QueueStats]:
        """Per queue: pending, scheduled and running jobs (``stats`` without the history)."""

    @abc.abstractmethod
    def throughput(self, *, since: datetime.datetime, bucket_seconds: int) -> list[Throughput]:
        """Results ended at or after ``since``, counted per status and time bucket.

        Buckets start at whole multiples of ``bucket_seconds`` since the Unix epoch;
        empty buckets are left out. Ordered by bucket, then status.
        """

    @abc.abstractmethod
    def retried_by(self, *, request_uuid: uuid.UUID) -> JobResult | None:
        """The result whose retry or deferral enqueued this request, if any."""

    @abc.abstractmethod
    def workers(self, *, timeout_seconds: float) -> list[WorkerInfo]:
        """Heartbeat rows, each marked stale when silent for ``timeout_seconds``."""

    @abc.abstractmethod
    def processes_of_worker(self, *, worker_id: uuid.UUID) -> list[JobProcess]: ...

    @abc.abstractmethod
    def paused_queues(self) -> list[str]: ...

    @abc.abstractmethod
    def workflow(self, *, uuid: uuid.UUID) -> WorkflowStatus | None:
        """A workflow and each of its jobs (errands.workflows), or None if there is none."""

    @abc.abstractmethod
    def workflow_of_request(self, *, request_uuid: uuid.UUID) -> uuid.UUID | None:
        """The workflow a job belongs to, by the request of its current (or, once it
        ended, its last) attempt."""

    @abc.abstractmethod
    def recent_workflows(self, *, limit: int) -> list[tuple[uuid.UUID, str, datetime.datetime]]:
        """The latest workflows, newest first: (uuid, name, created_at)."""

    @abc.abstractmethod
    def dependency_results(self, *, request_uuid: uuid.UUID) -> list[DependencyResult]:
        """The jobs the job of ``request_uuid`` depends on, with their final results, in
        the order the job listed them (empty for a job outside any workflow)."""

    @abc.abstractmethod
    def now(self) -> datetime.datetime:
        """The database clock."""
