"""``self.context``: what a job knows of its own run, in a worker (threads and async
jobs alike), in middleware and in errands.testing's helpers; an error elsewhere."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

import pytest
from policy_jobs import Reports, ReportsAsync, read

import errands
from conftest import WorkerRunner
from errands import ErrandsError, Job, JobContext, JobContextUnavailable, Limit, testing
from errands.models import JobResult, Status
from errands.registry import register_job
from errands.testing.memory import TEST_WORKER_ID


@register_job
class Remembers(Job):
    """Returns what its context says (attempt numbers as the CLI shows them)."""

    def run(self) -> dict[str, Any]:
        context = self.context
        if context.attempt == 1:
            raise ConnectionError("the first attempt fails")
        return {
            "process": str(context.process_uuid),
            "request": str(context.request_uuid),
            "attempt": f"{context.attempt} of {context.attempts}",
            "last": context.is_last_attempt,
            "queue": context.queue,
            "priority": context.priority,
            "worker": str(context.worker_id),
            "deadline": context.deadline.isoformat() if context.deadline else None,
            "started": context.started_at.isoformat(),
            "limits": [limit.key for limit in context.limits],
        }


@register_job
class HasItsOwnContext(Job):
    def __init__(self, context: str) -> None:
        # A parameter of that name: the instance's attribute hides Job.context.
        self.context = context  # type: ignore[assignment]

    def run(self) -> str:
        return self.context  # type: ignore[return-value]


def test_outside_a_worker_the_context_is_a_clear_error() -> None:
    job = Remembers()
    with pytest.raises(JobContextUnavailable, match="exists only while a worker runs the job"):
        job.run()
    assert issubclass(JobContextUnavailable, ErrandsError)
    assert getattr(job, "context", None) is None  # also an AttributeError


def test_a_job_keeps_its_own_attribute_called_context() -> None:
    assert HasItsOwnContext("mine").run() == "mine"
    with testing.immediate() as jobs:
        HasItsOwnContext("mine").run_in_worker()
    assert jobs.results[0].return_value == "mine"


def test_immediate_mode_gives_the_context_a_worker_would() -> None:
    with testing.immediate() as jobs:
        Remembers().run_in_worker(
            retries=1,
            queue="ctx",
            priority=5,
            timeout=30,
            limits=[Limit("ctx", concurrency=3)],
        )
    first, second = jobs.results
    assert (first.status, second.status) == (Status.ERRORED, Status.SUCCESSFUL)
    seen = second.return_value
    assert seen["process"] == str(second.process_uuid)
    assert seen["request"] == str(second.request_uuid)
    assert seen["attempt"] == "2 of 2"
    assert seen["last"] is True
    assert (seen["queue"], seen["priority"], seen["limits"]) == ("ctx", 5, ["ctx"])
    assert seen["worker"] == str(TEST_WORKER_ID)
    started = datetime.datetime.fromisoformat(seen["started"])
    assert datetime.datetime.fromisoformat(seen["deadline"]) == started + datetime.timedelta(
        seconds=30
    )


def test_the_context_is_frozen() -> None:
    field_names = {f.name for f in dataclasses.fields(JobContext)}
    assert {"process_uuid", "request_uuid", "attempt", "retries", "queue", "priority"} <= (
        field_names
    )
    assert {"requested_at", "start_at", "started_at", "timeout", "worker_id", "limits"} <= (
        field_names
    )
    context = JobContext(**dict.fromkeys(field_names))  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.attempt = 3  # type: ignore[misc]


# -- on real workers ---------------------------------------------------------------------------


def _close(recorded: str | None, stored: datetime.datetime | None) -> bool:
    if recorded is None or stored is None:
        return recorded is None and stored is None
    return abs(datetime.datetime.fromisoformat(recorded) - stored) < datetime.timedelta(
        milliseconds=1
    )


def _check_record(record: dict[str, Any], result: JobResult) -> None:
    assert result.parameters["args"][1] == record["token"]  # its own context, not a neighbour's
    assert record["request_uuid"] == str(result.request_uuid)
    assert record["worker_id"] == str(result.worker_id)
    assert record["attempt"] == result.retry_attempt + 1
    assert record["retries"] == result.retries
    assert (record["queue"], record["priority"]) == (result.queue, result.priority)
    assert _close(record["requested_at"], result.requested_at)
    assert _close(record["start_at"], result.start_at)
    assert _close(record["started_at"], result.started_at)


@pytest.mark.slow
def test_each_job_sees_its_own_context_in_a_worker(
    db_url: str, run_worker: WorkerRunner, tmp_path: Path
) -> None:
    trail = str(tmp_path / "trail")
    jobs: list[Job] = [Reports(trail, f"sync{n}", 0.2) for n in range(4)]
    jobs += [ReportsAsync(trail, f"async{n}", 0.2) for n in range(2)]
    errands.enqueue_many(jobs, options=errands.EnqueueOptions(priority=3, queue="ctx"))
    Reports(trail, "retried", 0.0, True).run_in_worker(
        retries=1, timeout=30, limits=[Limit("ctx", concurrency=5)]
    )
    run_worker(
        lambda: len(errands.results(limit=50)) >= 8,
        queues=["ctx", "default"],
        import_modules=("sample_jobs", "policy_jobs"),
        middleware=("policy_jobs.RecordContext",),
        worker_threads=3,
        timeout=60,
    )
    results = {str(r.process_uuid): r for r in errands.results(limit=50)}
    records = read(Path(trail))
    seen = [r for r in records if "token" in r]
    assert len(seen) == 8
    for record in seen:
        _check_record(record, results[record["process_uuid"]])
    assert sum(1 for r in seen if r.get("async")) == 2
    retried = sorted((r for r in seen if r["token"] == "retried"), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["attempts"], r["last"]) for r in retried] == [
        (1, 2, False),
        (2, 2, True),
    ]
    for record in retried:
        started = datetime.datetime.fromisoformat(record["started_at"])
        assert record["deadline"] == str(started + datetime.timedelta(seconds=30))
        assert record["limits"] == ["ctx"]
    # Middleware sees the context of the job it wraps, before the job runs.
    wrapped = {r["middleware"]: r["attempt"] for r in records if "middleware" in r}
    assert wrapped == {p: results[p].retry_attempt + 1 for p in results}
