"""A result gets one next attempt, however often and from wherever it is retried
(issue 18, item 5): the API, the CLI, the dashboard (tests/test_dashboard.py), or
several at once."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner
from dashboard_rows import failed

from errands import api
from errands.backends import Backend, open_backend
from errands.cli import cli
from errands.errors import AlreadyRetried
from errands.models import JobRequest, JobResult
from errands.registry import build_job
from errands.retrying import enqueue_retry

pytestmark = pytest.mark.usefixtures("cli_state_restored")


def test_a_second_retry_raises_and_names_the_first_attempt(backend: Backend) -> None:
    result = failed(backend)
    first = api.retry(result.uuid, delay=0)
    assert first is not None
    with pytest.raises(AlreadyRetried, match=str(first.uuid)) as raised:
        api.retry(result.uuid, delay=0)
    assert raised.value.request_uuid == first.uuid
    assert [r.uuid for r in api.requests()] == [first.uuid]


def test_a_stale_copy_of_the_result_cannot_retry_it_again(backend: Backend) -> None:
    result = failed(backend)  # read before the first retry: its retry_request_uuid is None
    first = api.retry_result(result, delay=0)
    assert first is not None and result.retry_request_uuid is None
    with pytest.raises(AlreadyRetried) as raised:
        api.retry_result(result, delay=0)
    assert raised.value.request_uuid == first.uuid
    assert len(api.requests()) == 1


def test_retries_at_once_make_one_attempt(backend: Backend, db_url: str) -> None:
    result = failed(backend)
    backends = [open_backend(db_url) for _ in range(4)]
    barrier = threading.Barrier(4)
    outcomes: list[object] = [None] * 4

    def retry(i: int) -> None:
        # What api.retry_result does, on a backend (a connection) of its own.
        job = build_job(result.job_class, result.parameters)
        barrier.wait()
        try:
            with backends[i].enqueue_transaction() as tx:
                outcomes[i] = enqueue_retry(tx, result, job, delay=0)
        except AlreadyRetried as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=retry, args=(i,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for b in backends:
            b.close()
    made = [o for o in outcomes if isinstance(o, JobRequest)]
    refused = [o for o in outcomes if isinstance(o, AlreadyRetried)]
    assert len(made) == 1 and len(refused) == 3
    assert [r.uuid for r in api.requests()] == [made[0].uuid]
    linked = api.get(result.uuid)
    assert isinstance(linked, JobResult) and linked.retry_request_uuid == made[0].uuid


def test_the_cli_says_which_attempt_the_earlier_retry_made(backend: Backend, db_url: str) -> None:
    result = failed(backend)
    args = ["--database-url", db_url, "--import", "sample_jobs", "retry", str(result.uuid)]
    first = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    (request,) = api.requests()
    second = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert second.exit_code == 1
    assert "already retried, as attempt 2 of 1" not in second.output  # never "2 of 1"
    assert f"request {request.uuid}; nothing enqueued" in second.output
    assert len(api.requests()) == 1
