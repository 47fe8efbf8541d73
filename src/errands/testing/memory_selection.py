"""Selections and keyset pages over the in-memory backend's rows.

The same rules as the ``*_selection`` fragments and ``page_*`` queries of the
SQL backends, in Python: a ``None`` field means "any", ``since``/``until`` bound
each table's own time column inclusively, and a page continues after its cursor
in the table's natural order (requests due soonest, processes claimed longest
ago, results ended most recently).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import TypeVar

from errands.models import (
    FAILED_STATUSES,
    JobProcess,
    JobRequest,
    JobResult,
    PageSpec,
    Selection,
)

Job = TypeVar("Job", JobRequest, JobProcess, JobResult)


def sort_time(job: JobRequest | JobProcess | JobResult) -> datetime.datetime:
    """The column a table is paged by: due time, claim time or end time."""
    if isinstance(job, JobRequest):
        return job.start_at
    if isinstance(job, JobResult):
        return job.ended_at
    return job.created_at


def _own_time(job: JobRequest | JobProcess | JobResult) -> datetime.datetime:
    """The column ``since``/``until`` bound: when it was enqueued, claimed or ended."""
    return job.ended_at if isinstance(job, JobResult) else job.created_at


def _uuids(job: JobRequest | JobProcess | JobResult) -> set[object]:
    if isinstance(job, JobRequest):
        return {job.uuid}
    if isinstance(job, JobProcess):
        return {job.uuid, job.request_uuid}
    return {job.uuid, job.request_uuid, job.process_uuid}


def selected(
    job: JobRequest | JobProcess | JobResult, selection: Selection, now: datetime.datetime
) -> bool:
    """Whether ``selection`` covers ``job`` (fields that do not apply to its table are ignored)."""
    s = selection
    if s.queue and job.queue != s.queue:
        return False
    if s.job_class and job.job_class != s.job_class:
        return False
    if s.concurrency_key and job.concurrency_key != s.concurrency_key:
        return False
    if s.uuid is not None and s.uuid not in _uuids(job):
        return False
    if s.since is not None and _own_time(job) < s.since:
        return False
    if s.until is not None and _own_time(job) > s.until:
        return False
    if s.tag and s.tag not in job.tags:
        return False
    if isinstance(job, JobRequest) and s.due is not None and (job.start_at <= now) != s.due:
        return False
    if isinstance(job, JobResult):
        if s.status is not None and job.status != s.status:
            return False
        if s.retried is not None and (job.retry_request_uuid is not None) != s.retried:
            return False
        if s.final is not None and _final_failure(job) != s.final:
            return False
    return True


def _final_failure(result: JobResult) -> bool:
    """A "dead letter": failed with no attempts left, and never retried since."""
    return (
        result.status in FAILED_STATUSES
        and result.retry_attempt >= result.retries
        and result.retry_request_uuid is None
    )


def page_of(
    jobs: Iterable[Job], selection: Selection, page: PageSpec, now: datetime.datetime
) -> list[Job]:
    """One keyset page of the selected ``jobs``, as the SQL backends' ``page_*`` queries."""
    rows = [job for job in jobs if selected(job, selection, now)]
    newest_first = bool(rows) and isinstance(rows[0], JobResult)
    descending = newest_first != page.reverse
    rows.sort(key=lambda job: (sort_time(job), job.uuid), reverse=descending)
    if page.after is not None:
        mark = (page.after.at, page.after.uuid)
        if descending:
            rows = [job for job in rows if (sort_time(job), job.uuid) < mark]
        else:
            rows = [job for job in rows if (sort_time(job), job.uuid) > mark]
    return rows[: page.limit]
