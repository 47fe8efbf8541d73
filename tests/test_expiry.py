"""Expiry (errands.expiry): a job not claimed by its expiry never runs and ends
CANCELLED "expired"; on PostgreSQL and SQLite (the claim's own rule on every backend
is in test_backend_contract)."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest

import errands
from errands import EnqueueOptions, Job, register_job
from errands.backends import Backend
from errands.errors import OptionError
from errands.expiry import EXPIRED_TYPE
from errands.models import JobRequest, JobResult, PageSpec, Selection, Status

UTC = datetime.UTC


@register_job
class Plain(Job):
    def run(self) -> None:
        pass


@register_job
class Expiring(Job):
    expires = 30

    def run(self) -> None:
        pass


@register_job
class ExpiringByMethod(Job):
    def default_expires(self) -> datetime.timedelta:
        return datetime.timedelta(minutes=2)

    def run(self) -> None:
        pass


def _claim(backend: Backend) -> list[Any]:
    return list(backend.claim(worker_id=errands.models.uuid7(), queues=(), limit=100))


def _results(backend: Backend) -> list[JobResult]:
    return backend.page_results(selection=Selection(), page=PageSpec(limit=100))


def _seconds_left(request: JobRequest | None) -> float:
    assert request is not None and request.expires_at is not None
    return (request.expires_at - datetime.datetime.now(UTC)).total_seconds()


def test_an_expired_job_never_runs_and_ends_cancelled_expired(backend: Backend) -> None:
    request = Plain().run_in_worker(expires=0.05)
    assert request is not None and request.expires_at is not None
    time.sleep(0.06)
    assert _claim(backend) == []
    (result,) = _results(backend)
    assert (result.request_uuid, result.status) == (request.uuid, Status.CANCELLED)
    assert (result.error_type, result.error) == (EXPIRED_TYPE, "expired")
    assert result.started_at is None and result.expires_at == request.expires_at
    assert errands.stats().results_by_status == {"CANCELLED": 1}


def test_a_job_claimed_before_its_expiry_runs(backend: Backend) -> None:
    request = Plain().run_in_worker(expires=datetime.timedelta(minutes=5))
    (process,) = _claim(backend)
    assert (process.request_uuid, process.expires_at) == (request.uuid, request.expires_at)
    assert _results(backend) == []


@pytest.mark.slow  # waits a second for the expiry
def test_a_delayed_job_whose_due_time_passes_its_expiry_ends_when_it_expires(
    backend: Backend,
) -> None:
    soon = datetime.datetime.now(UTC) + datetime.timedelta(seconds=1)
    request = Plain().run_in_worker(delay=3600, expires=soon)
    assert request is not None
    assert _claim(backend) == []
    assert _results(backend) == []  # not expired yet: it waits for its due time
    time.sleep(max((soon - datetime.datetime.now(UTC)).total_seconds(), 0) + 0.05)
    assert _claim(backend) == []
    (result,) = _results(backend)
    assert (result.request_uuid, result.error_type) == (request.uuid, EXPIRED_TYPE)
    assert result.start_at == request.start_at


def test_the_class_default_and_the_call(db_url: str) -> None:
    assert _seconds_left(Expiring().run_in_worker()) == pytest.approx(30, abs=5)
    assert _seconds_left(Expiring().run_in_worker(expires=600)) == pytest.approx(600, abs=5)
    assert _seconds_left(ExpiringByMethod().run_in_worker()) == pytest.approx(120, abs=5)
    (many,) = errands.enqueue_many([Expiring()], options=EnqueueOptions(expires=5))
    assert _seconds_left(many) == pytest.approx(5, abs=5)
    at = datetime.datetime(2099, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    request = Plain().run_in_worker(expires=at)
    assert request is not None and request.expires_at == at
    none = Plain().run_in_worker()
    assert none is not None and none.expires_at is None
    stored = errands.get(request.uuid)
    assert isinstance(stored, JobRequest) and stored.expires_at == at


@pytest.mark.parametrize(
    "value",
    [0, -1, float("nan"), float("inf"), True, "60", datetime.timedelta(0), 1e300],
)
def test_a_bad_expiry_is_refused_before_anything_is_written(db_url: str, value: Any) -> None:
    with pytest.raises(OptionError, match=r"tests?[.\w]*Plain: expires"):
        Plain().run_in_worker(expires=value)
    with pytest.raises(OptionError, match="expires"):
        errands.enqueue_many([Plain()], options=EnqueueOptions(expires=value))
    assert errands.requests() == []


def test_a_naive_datetime_is_refused(db_url: str) -> None:
    with pytest.raises(OptionError, match=r"Plain: expires: .*timezone-aware"):
        Plain().run_in_worker(expires=datetime.datetime(2099, 1, 1))
    assert errands.requests() == []


@pytest.mark.slow
def test_a_worker_runs_the_live_job_and_never_the_expired_one(run_worker: Any) -> None:
    from sample_jobs import Echo  # the worker's children import sample_jobs

    live = Echo("live").run_in_worker(expires=60)
    dead = Echo("dead").run_in_worker(expires=0.01)
    assert live is not None and dead is not None
    time.sleep(0.02)
    run_worker(lambda: len(errands.results()) == 2)
    by_request = {r.request_uuid: r for r in errands.results()}
    assert (by_request[live.uuid].status, by_request[live.uuid].return_value) == (
        Status.SUCCESSFUL,
        "live",
    )
    assert (by_request[dead.uuid].status, by_request[dead.uuid].error) == (
        Status.CANCELLED,
        "expired",
    )
