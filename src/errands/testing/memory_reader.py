"""The reading half of the in-memory backend: look-ups, pages, counts and summaries.

The same answers as the SQL backends' queries (``sqlite.sql``): selections and
pages follow :mod:`errands.testing.memory_selection`, summaries group as the
``queue_stats``, ``results_by_status`` and ``throughput`` queries do.
"""

from __future__ import annotations

import datetime
import uuid
from collections import Counter

from errands.backends.base import JobReader
from errands.backends.reader import prefix_range
from errands.limiting import LimitUsage, encode_limits, summarize
from errands.models import (
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    PageSpec,
    QueueStats,
    Selection,
    Stats,
    Status,
    Throughput,
    WorkerInfo,
)
from errands.testing import memory_workflows
from errands.testing.memory_rows import claim_order, utcnow
from errands.testing.memory_selection import page_of, selected
from errands.testing.memory_tables import MemoryTables
from errands.workflow_models import DependencyResult, WorkflowStatus

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def bucket_start(moment: datetime.datetime, bucket_seconds: int) -> datetime.datetime:
    """The start of the bucket holding ``moment``: a whole multiple of
    ``bucket_seconds`` since the Unix epoch (exact: timedelta arithmetic, no floats)."""
    width = datetime.timedelta(seconds=bucket_seconds)
    return _EPOCH + (moment - _EPOCH) // width * width


class MemoryReader(MemoryTables, JobReader):
    """Look jobs up, page through them, count them and summarise them, in memory."""

    def get(self, *, uuid: uuid.UUID) -> JobRequest | JobProcess | JobResult | None:
        with self.lock:
            if uuid in self.requests:
                return self.requests[uuid]
            for process in self.processes.values():
                if uuid in (process.uuid, process.request_uuid):
                    return process
            return self._result_for(uuid)

    def _result_for(self, key: uuid.UUID) -> JobResult | None:
        """By its own uuid or its process's; failing both, the request's latest result."""
        own = [r for r in self.results if key in (r.uuid, r.process_uuid)]
        of_request = [r for r in self.results if r.request_uuid == key]
        found = own or of_request
        return max(found, key=lambda r: r.ended_at) if found else None

    def find_prefix(self, *, prefix: str, limit: int) -> list[JobRequest | JobProcess | JobResult]:
        low, high = prefix_range(prefix)

        def starts(*keys: uuid.UUID) -> bool:
            return any(low <= key <= high for key in keys)

        with self.lock:
            requests = [r for r in self.requests.values() if starts(r.uuid)]
            processes = [p for p in self.processes.values() if starts(p.uuid, p.request_uuid)]
            results = [r for r in self.results if starts(r.uuid, r.process_uuid, r.request_uuid)]
        first = max(limit, 0)
        return [
            *sorted(requests, key=lambda row: row.uuid)[:first],
            *sorted(processes, key=lambda row: row.uuid)[:first],
            *sorted(results, key=lambda row: row.uuid)[:first],
        ]

    def next_requests(self, *, selection: Selection, limit: int) -> list[JobRequest]:
        now = utcnow()
        with self.lock:
            found = sorted(self.requests.values(), key=claim_order)
        return [r for r in found if selected(r, selection, now)][: max(limit, 0)]

    def page_requests(self, *, selection: Selection, page: PageSpec) -> list[JobRequest]:
        with self.lock:
            return page_of(list(self.requests.values()), selection, page, utcnow())

    def page_processes(self, *, selection: Selection, page: PageSpec) -> list[JobProcess]:
        with self.lock:
            return page_of(list(self.processes.values()), selection, page, utcnow())

    def page_results(self, *, selection: Selection, page: PageSpec) -> list[JobResult]:
        with self.lock:
            return page_of(list(self.results), selection, page, utcnow())

    def count(self, *, kind: Kind, selection: Selection) -> int:
        now = utcnow()
        with self.lock:
            rows: list[JobRequest | JobProcess | JobResult]
            if kind is Kind.REQUEST:
                rows = [*self.requests.values()]
            elif kind is Kind.PROCESS:
                rows = [*self.processes.values()]
            else:
                rows = [*self.results]
        return sum(1 for row in rows if selected(row, selection, now))

    # -- summaries ---------------------------------------------------------------------
    def stats(self, *, heartbeat_timeout_seconds: float) -> Stats:
        with self.lock:
            now = utcnow()
            active, stale = self.heartbeats.counts(now, heartbeat_timeout_seconds)
            by_status = Counter(str(r.status) for r in self.results)
            return Stats(
                queues=self._queue_stats(now),
                results_by_status=dict(sorted(by_status.items())),
                workers_active=active,
                workers_stale=stale,
            )

    def queue_stats(self) -> list[QueueStats]:
        with self.lock:
            return self._queue_stats(utcnow())

    def _queue_stats(self, now: datetime.datetime) -> list[QueueStats]:
        """Every queue that has a request or a process, by name."""
        jobs: list[JobRequest | JobProcess] = [*self.requests.values(), *self.processes.values()]
        return [self._one_queue(queue, now) for queue in sorted({job.queue for job in jobs})]

    def _one_queue(self, queue: str, now: datetime.datetime) -> QueueStats:
        requests = [r for r in self.requests.values() if r.queue == queue]
        due = [r for r in requests if r.start_at <= now]
        oldest = min((r.start_at for r in due), default=None)
        return QueueStats(
            queue=queue,
            pending=len(due),
            scheduled=len(requests) - len(due),
            running=sum(1 for p in self.processes.values() if p.queue == queue),
            oldest_pending_age=None if oldest is None else (now - oldest).total_seconds(),
        )

    def throughput(self, *, since: datetime.datetime, bucket_seconds: int) -> list[Throughput]:
        """Empty buckets are absent, as in SQL (no row is grouped into them)."""
        counts: Counter[tuple[datetime.datetime, Status]] = Counter()
        retried: Counter[tuple[datetime.datetime, Status]] = Counter()
        with self.lock:
            window = [r for r in self.results if r.ended_at >= since]
        for result in window:
            key = (bucket_start(result.ended_at, bucket_seconds), Status(result.status))
            counts[key] += 1
            # A deferral also links a follow-up request, but it is not a retry.
            if result.retry_request_uuid is not None and result.status != Status.DEFERRED:
                retried[key] += 1
        return [
            Throughput(bucket_start=at, status=status, count=n, retried=retried[(at, status)])
            for (at, status), n in sorted(counts.items())
        ]

    def retried_by(self, *, request_uuid: uuid.UUID) -> JobResult | None:
        with self.lock:
            linked = [r for r in self.results if r.retry_request_uuid == request_uuid]
        return max(linked, key=lambda r: r.ended_at) if linked else None

    # -- workers and queues --------------------------------------------------------------
    def workers(self, *, timeout_seconds: float) -> list[WorkerInfo]:
        """Registered workers; the testing helpers register none (see ``memory_workers``)."""
        with self.lock:
            return self.heartbeats.listed(utcnow(), timeout_seconds)

    def processes_of_worker(self, *, worker_id: uuid.UUID) -> list[JobProcess]:
        with self.lock:
            return [p for p in self.processes.values() if p.worker_id == worker_id]

    def paused_queues(self) -> list[str]:
        with self.lock:
            return sorted(self.paused)

    def limit_usage(self) -> list[LimitUsage]:
        """As the ``limited_jobs`` and ``limit_start_ages`` queries read them."""
        with self.lock:
            now = utcnow()
            jobs = [
                (encode_limits(r.limits), "waiting" if r.start_at <= now else "scheduled")
                for r in self.requests.values()
                if r.limits
            ]
            jobs += [
                (encode_limits(p.limits), "running") for p in self.processes.values() if p.limits
            ]
            starts = [
                (key, (now - at).total_seconds())
                for key, moments in self.limit_starts.items()
                for at in moments
            ]
        return summarize(jobs, starts)

    # -- workflows (the queries live in memory_workflows) -------------------------------
    def workflow(self, *, uuid: uuid.UUID) -> WorkflowStatus | None:
        with self.lock:
            return memory_workflows.workflow_status(self, uuid)

    def workflow_of_request(self, *, request_uuid: uuid.UUID) -> uuid.UUID | None:
        with self.lock:
            return memory_workflows.workflow_of_request(self, request_uuid)

    def recent_workflows(self, *, limit: int) -> list[tuple[uuid.UUID, str, datetime.datetime]]:
        with self.lock:
            return memory_workflows.recent_workflows(self, limit)

    def dependency_results(self, *, request_uuid: uuid.UUID) -> list[DependencyResult]:
        with self.lock:
            return memory_workflows.dependency_results(self, request_uuid)

    def now(self) -> datetime.datetime:
        return utcnow()
