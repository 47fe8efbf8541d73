"""The worker's background services, one ``run_once()`` pass at a time, on both backends.

The loop drives them on its tick (see ``errands.worker.loop``); here each pass is
called directly and its return value says what it did.
"""

from __future__ import annotations

import datetime
import uuid

import pytest
import sample_jobs  # noqa: F401  (registers the job class the rows name)

import errands
from errands.backends import Backend
from errands.models import NewRequest, Outcome, PageSpec, Selection, Status
from errands.worker.heartbeat import Heartbeat
from errands.worker.prune import Prune
from errands.worker.rescue import Rescue
from errands.worker.schedules import Schedules

NOOP = "sample_jobs.Noop"


def enqueue_noops(backend: Backend, count: int) -> None:
    with backend.enqueue_transaction() as tx:
        tx.insert_requests([NewRequest(job_class=NOOP, parameters={}) for _ in range(count)])


def test_heartbeat_pass_reregisters_a_worker_declared_dead(backend: Backend) -> None:
    heartbeat = Heartbeat(backend, uuid.uuid4(), ["mail"])
    heartbeat.register()
    assert heartbeat.run_once() is True
    heartbeat.deregister()  # as a peer's rescue does

    assert heartbeat.run_once() is False
    (row,) = backend.workers(timeout_seconds=60)
    assert (row.worker_id, row.queues) == (heartbeat.worker_id, ["mail"])


def test_rescue_pass_loses_the_started_orphans_of_its_own_worker_only(backend: Backend) -> None:
    worker_id = uuid.uuid4()
    Heartbeat(backend, worker_id, []).register()
    enqueue_noops(backend, 3)
    kept, *orphans = backend.claim(worker_id=worker_id, queues=[], limit=3)
    now = backend.now()
    backend.mark_started(started=[(p.uuid, now) for p in (kept, *orphans)])
    aborted: list[list[errands.JobResult]] = []
    rescue = Rescue(
        backend,
        worker_id,
        heartbeat_timeout=60,
        tracked=lambda: {kept.uuid},
        on_aborted=aborted.append,
    )

    lost = rescue.run_once()

    assert {r.process_uuid for r in lost} == {p.uuid for p in orphans}
    assert all(r.status == Status.LOST for r in lost)
    assert aborted == [lost]
    assert [p.uuid for p in backend.processes_of_worker(worker_id=worker_id)] == [kept.uuid]
    assert rescue.run_once() == []  # nothing left to rescue


def test_rescue_pass_returns_orphans_that_never_started_to_the_queue(backend: Backend) -> None:
    """A claim whose answer was lost with the connection: the worker never had those
    jobs, so they are not LOST (with retries=0 they would never run) but pending again."""
    worker_id = uuid.uuid4()
    Heartbeat(backend, worker_id, []).register()
    enqueue_noops(backend, 3)
    kept, *unreceived = backend.claim(worker_id=worker_id, queues=[], limit=3)
    rescue = Rescue(
        backend, worker_id, heartbeat_timeout=60, tracked=lambda: {kept.uuid}, on_aborted=list
    )

    assert rescue.run_once() == []

    assert [p.uuid for p in backend.processes_of_worker(worker_id=worker_id)] == [kept.uuid]
    pending = backend.next_requests(selection=Selection(), limit=10)
    assert sorted(r.uuid for r in pending) == sorted(p.request_uuid for p in unreceived)
    assert backend.page_results(selection=Selection(), page=PageSpec()) == []


def test_prune_pass_deletes_results_older_than_the_retention(backend: Backend) -> None:
    enqueue_noops(backend, 2)
    processes = backend.claim(worker_id=uuid.uuid4(), queues=[], limit=2)
    ended = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    backend.complete_many(
        outcomes=[
            Outcome(p.uuid, Status.SUCCESSFUL, started_at=ended, ended_at=ended) for p in processes
        ]
    )

    assert Prune(backend, retention_seconds=3 * 3600).run_once() == 0
    assert Prune(backend, retention_seconds=3600).run_once() == 2
    assert errands.results() == []


def test_schedules_pass_enqueues_each_occurrence_once(backend: Backend) -> None:
    from errands import scheduler

    entries = scheduler.parse_entries([[NOOP, "* * * * *"]])
    schedules = Schedules(backend, entries, horizon_seconds=150, history_seconds=3600)

    created = schedules.run_once(starting=True)

    assert created >= 2  # every minute, 150 s ahead
    assert schedules.run_once() == 0  # the same occurrences: already enqueued
    assert len(errands.requests()) == created
    assert schedules.wakeups == sorted(schedules.wakeups) != []  # the loop wakes for each
    assert Schedules(backend, [], horizon_seconds=150, history_seconds=3600).run_once() == 0


def test_backoff_says_database_unavailable_only_for_database_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from errands.errors import BackendError
    from errands.worker.timing import Backoff

    backoff = Backoff()
    with caplog.at_level("INFO", logger="errands"):
        backoff.failed("schedules", RuntimeError("a bug in a schedule's job"))
        backoff.failed("claim", BackendError("cannot use the database: server closed"))
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "schedules failed",
        "database unavailable: cannot use the database: server closed",
    ]
