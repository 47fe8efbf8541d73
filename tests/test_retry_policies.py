"""Retry policies: Backoff (its delays and bounds, as a class attribute and as the
retry_backoff setting), retry_on, fail_on and FailJob; the delays a real worker
applies between attempts, on PostgreSQL and SQLite."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from policy_jobs import Flaky, FlakyBySetting, FlakyOwnDelay, GivesUp, NeverOnValue, read
from policy_jobs import RetryOnlyConnection as RetryOnly

import errands
from conftest import WorkerRunner
from errands import Backoff, FailJob, Job, lifecycle, settings, testing
from errands.errors import ConfigurationError, JobTimeout
from errands.models import JobResult, Status
from errands.registry import job_class_path, register_job
from errands.worker.execution import Assignment, ended


@pytest.fixture
def no_backoff_setting() -> Iterator[None]:
    errands.configure(retry_backoff=None)
    yield
    errands.configure(retry_backoff=None)


# -- Backoff ----------------------------------------------------------------------------


def test_backoff_grows_by_its_factor_up_to_its_maximum() -> None:
    backoff = Backoff(base=1.0, factor=2.0, maximum=10.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay(100_000) == 10.0  # factor ** attempt overflows a float: capped
    assert Backoff(base=0).delay(5) == 0.0
    assert Backoff(base=3, factor=1, jitter=0).delay(9) == 3.0


def test_jitter_spreads_each_delay_within_its_bounds_never_past_the_maximum() -> None:
    backoff = Backoff(base=1.0, factor=2.0, maximum=10.0, jitter=0.1)
    assert backoff.bounds(1) == (0.9, 1.1)
    assert backoff.bounds(3) == pytest.approx((3.6, 4.4))
    assert backoff.bounds(9) == (9.0, 10.0)
    for attempt in (1, 3, 9):
        low, high = backoff.bounds(attempt)
        draws = [backoff.delay(attempt) for _ in range(300)]
        assert all(low <= d <= high for d in draws)
        assert max(draws) - min(draws) > (high - low) / 2  # spread, not one value


def test_the_default_backoff_is_a_second_doubling_up_to_an_hour() -> None:
    assert Backoff() == Backoff(base=1.0, factor=2.0, maximum=3600.0, jitter=0.1)


@pytest.mark.parametrize(
    "fields",
    [{"base": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"maximum": float("inf")}, {"base": True}],
)
def test_backoff_refuses_values_it_cannot_use(fields: dict[str, float]) -> None:
    name = next(iter(fields))
    with pytest.raises(ValueError, match=rf"Backoff\({name}="):
        Backoff(**fields)


# -- the retry_backoff setting ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("base=0.5,factor=3,jitter=0", Backoff(base=0.5, factor=3, jitter=0)),
        ("true", Backoff()),
        ("none", None),
        ("", None),
    ],
)
def test_retry_backoff_from_the_environment(given: str, expected: Backoff | None) -> None:
    loaded = settings.load(environ={"ERRANDS_RETRY_BACKOFF": given}, cwd=Path("/"))
    assert loaded.retry_backoff == expected
    again = settings.load(environ=settings.to_environ(loaded), cwd=Path("/"))
    assert again.retry_backoff == expected  # what a worker's children receive


def test_retry_backoff_from_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.errands]\nretry_backoff = { base = 2, maximum = 60 }\n"
    )
    loaded = settings.load(environ={}, cwd=tmp_path)
    assert loaded.retry_backoff == Backoff(base=2.0, maximum=60.0)
    assert settings.as_dict(loaded)["retry_backoff"]["maximum"] == 60.0


@pytest.mark.parametrize("given", ["base=-1", "bse=1", "sometimes", {"base": "x"}])
def test_a_bad_retry_backoff_names_the_setting(given: object) -> None:
    with pytest.raises(ConfigurationError, match="retry_backoff"):
        errands.configure(retry_backoff=given)


@register_job
class Plain(Job):
    def run(self) -> None:
        raise ConnectionError


@register_job
class OwnBackoff(Plain):
    retry_backoff = Backoff(base=5, factor=1, jitter=0)


@register_job
class OwnDelay(OwnBackoff):
    def calculate_retry_delay(self, attempt: int) -> float:
        return 7.0


def test_which_delay_applies(no_backoff_setting: None) -> None:
    assert Plain().calculate_retry_delay(3) == 0  # neither: at once, as before
    errands.configure(retry_backoff={"base": 1, "jitter": 0})
    assert Plain().calculate_retry_delay(3) == 4.0  # the setting's
    assert OwnBackoff().calculate_retry_delay(3) == 5.0  # the class's wins
    assert OwnDelay().calculate_retry_delay(3) == 7.0  # an override wins over both


# -- which failures are retried ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "retry_on", "fail_on", "retried"),
    [
        (ValueError, (), (), True),
        (ValueError, (ValueError,), (), True),
        (KeyError, (LookupError,), (), True),  # subclasses match
        (ValueError, (ConnectionError,), (), False),
        (ValueError, (), (ValueError,), False),
        (ValueError, (ValueError,), (ValueError,), False),  # fail_on wins
        (ValueError, ValueError, (), True),  # one class alone
        (FailJob, (FailJob,), (), False),  # FailJob never is
    ],
)
def test_retry_of_failure(
    raised: type[BaseException], retry_on: object, fail_on: object, retried: bool
) -> None:
    retry, why = lifecycle.retry_of_failure(raised, retry_on=retry_on, fail_on=fail_on)  # type: ignore[arg-type]
    assert (retry is lifecycle.Retry.IF_ATTEMPTS_LEFT) == retried
    assert bool(why) != retried


def test_a_policy_that_names_no_exception_is_refused() -> None:
    with pytest.raises(TypeError, match="exception classes"):
        lifecycle.retry_of_failure(ValueError, retry_on=("ValueError",), fail_on=())  # type: ignore[arg-type]


def _results(recorder: testing.Recorder) -> list[JobResult]:
    return sorted(recorder.results, key=lambda r: r.retry_attempt)


def test_policies_in_immediate_mode(tmp_path: Path) -> None:
    trail = str(tmp_path / "trail")
    with testing.immediate() as jobs:
        GivesUp(trail, "gives-up", 0).run_in_worker(retries=3)
        NeverOnValue(trail, "never", 0).run_in_worker(retries=3)
        RetryOnly(trail, "only", 0).run_in_worker(retries=3)
        Flaky(trail, "flaky", 2).run_in_worker(retries=3)
    by_class: dict[str, list[JobResult]] = {}
    for result in _results(jobs):
        by_class.setdefault(result.job_class.rpartition(".")[2], []).append(result)
    (gave_up,) = by_class["GivesUp"]
    assert (gave_up.status, gave_up.error_type) == (Status.ERRORED, "errands.errors.FailJob")
    assert gave_up.error == "gives-up: the account is closed"
    assert gave_up.retry_request_uuid is None
    assert "Not retried: the job raised FailJob" in gave_up.traceback
    (never,) = by_class["NeverOnValue"]
    assert "Not retried: ValueError is one of the job's fail_on" in never.traceback
    (only,) = by_class["RetryOnlyConnection"]
    assert "Not retried: ValueError is not one of the job's retry_on" in only.traceback
    statuses = [r.status for r in by_class["Flaky"]]
    assert statuses == [Status.ERRORED, Status.ERRORED, Status.SUCCESSFUL]


def test_fail_job_in_the_last_attempt_adds_no_note(tmp_path: Path) -> None:
    with testing.immediate() as jobs:
        GivesUp(str(tmp_path / "trail"), "t", 0).run_in_worker()
    (result,) = jobs.results
    assert result.error == "t: the account is closed"
    assert "Not retried" not in result.traceback


@register_job
class RetriedOnConnection(Plain):
    retry_on = (ConnectionError,)


@register_job
class NeverOnTimeout(Plain):
    fail_on = (JobTimeout,)


@pytest.mark.parametrize(
    ("cls", "retried"), [(Plain, True), (RetriedOnConnection, False), (NeverOnTimeout, False)]
)
def test_a_timeout_counts_as_job_timeout(
    cls: type[Job], retried: bool, no_backoff_setting: None
) -> None:
    assignment = Assignment(uuid.uuid4(), job_class_path(cls), {}, retries=2, retry_attempt=0)
    outcome = ended(assignment, lifecycle.timed_out(1.0), started_at=None)
    assert (outcome.requeue is not None) == retried
    # A dead process is no failure of the job's own: retried whatever its policies.
    died = ended(assignment, lifecycle.process_died(1, -9, begun=True), started_at=None)
    assert died.requeue is not None


# -- on real workers ---------------------------------------------------------------------------


def _gaps(trail: Path, token: str) -> list[float]:
    """Seconds from the end of each attempt to the start of the next."""
    runs = sorted((r for r in read(trail) if r["token"] == token), key=lambda r: r["attempt"])
    return [b["start"] - a["end"] for a, b in itertools.pairwise(runs)]


SLACK = 0.5  # seconds a worker may take to claim a due retry and start it (a loaded CI)


@pytest.mark.slow
def test_a_real_worker_waits_the_backoff_between_attempts(
    db_url: str, run_worker: WorkerRunner, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    Flaky(str(trail), "class", 2).run_in_worker(retries=3)  # Backoff(0.5, factor 2)
    FlakyBySetting(str(trail), "setting", 1).run_in_worker(retries=1)
    FlakyOwnDelay(str(trail), "own", 1).run_in_worker(retries=1)
    GivesUp(str(trail), "gives-up", 0).run_in_worker(retries=3)
    expected = 3 + 2 + 2 + 1
    run_worker(
        lambda: len(errands.results(limit=50)) >= expected,
        import_modules=("sample_jobs", "policy_jobs"),
        retry_backoff=Backoff(base=0.3, factor=1.0, jitter=0.0),
        timeout=60,
    )
    first, second = _gaps(trail, "class")
    print(f"gaps: class {first:.3f} {second:.3f}, setting {_gaps(trail, 'setting')}")
    assert 0.5 <= first < 0.5 + SLACK
    assert 1.0 <= second < 1.0 + SLACK
    (by_setting,) = _gaps(trail, "setting")
    assert 0.3 <= by_setting < 0.3 + SLACK
    (own,) = _gaps(trail, "own")
    assert own < 0.3  # its own calculate_retry_delay (0) wins over both backoffs
    assert [r["attempt"] for r in read(trail) if r["token"] == "gives-up"] == [1]
    results = errands.results(limit=50)
    assert len(results) == expected
    assert sum(r.status is Status.SUCCESSFUL for r in results) == 3
