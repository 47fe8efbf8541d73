"""How many jobs a worker holds per process: measured from the jobs' run time by
default ("auto"), or fixed by ``worker_max_pending_per_process``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import sample_jobs

import errands
from conftest import wait_for, worker_config
from errands import api, settings
from errands.backends import Backend
from errands.models import JobProcess
from errands.worker import Worker
from errands.worker.intake import AHEAD_SECONDS, AUTO_CEILING, AUTO_FLOOR, ClaimAhead

# -- the rule ----------------------------------------------------------------------------


def test_auto_starts_at_the_floor_before_any_job_ran() -> None:
    assert ClaimAhead(fixed=None, threads=1).per_process == AUTO_FLOOR


def test_auto_grows_to_the_ceiling_for_very_short_jobs() -> None:
    claim_ahead = ClaimAhead(fixed=None, threads=1)
    for _ in range(10):
        claim_ahead.observe(0.00001)
    assert claim_ahead.per_process == AUTO_CEILING


def test_auto_holds_about_the_ahead_time_of_work_between_floor_and_ceiling() -> None:
    claim_ahead = ClaimAhead(fixed=None, threads=2)
    for _ in range(10):
        claim_ahead.observe(0.002)
    # 2 runners, each job ~2.1 ms with its overhead: ~48 jobs cover the ahead time.
    assert claim_ahead.per_process == int(2 * AHEAD_SECONDS / 0.0021)
    assert AUTO_FLOOR < claim_ahead.per_process < AUTO_CEILING


def test_auto_stays_at_the_floor_for_long_jobs() -> None:
    claim_ahead = ClaimAhead(fixed=None, threads=1)
    for _ in range(10):
        claim_ahead.observe(1.0)
    assert claim_ahead.per_process == AUTO_FLOOR


def test_auto_shrinks_when_jobs_get_longer_and_grows_back() -> None:
    claim_ahead = ClaimAhead(fixed=None, threads=1)
    for _ in range(50):
        claim_ahead.observe(0.00001)
    assert claim_ahead.per_process == AUTO_CEILING
    claim_ahead.observe(2.0)  # one long job is enough to stop claiming far ahead
    assert claim_ahead.per_process == AUTO_FLOOR
    for _ in range(400):
        claim_ahead.observe(0.00001)
    assert claim_ahead.per_process == AUTO_CEILING


def test_auto_never_holds_fewer_jobs_than_a_process_runs_at_once() -> None:
    claim_ahead = ClaimAhead(fixed=None, threads=32)
    claim_ahead.observe(5.0)
    assert claim_ahead.per_process == 32


def test_a_fixed_limit_ignores_run_times() -> None:
    claim_ahead = ClaimAhead(fixed=3, threads=1)
    for _ in range(10):
        claim_ahead.observe(0.00001)
    assert claim_ahead.per_process == 3
    assert ClaimAhead(fixed=3, threads=8).per_process == 8  # never fewer than its runners


def test_only_jobs_long_enough_refill_in_batches() -> None:
    unknown = ClaimAhead(fixed=None, threads=1)
    assert not unknown.refills_in_batches  # nothing measured: refill at once
    long_jobs, short_jobs = ClaimAhead(fixed=None, threads=1), ClaimAhead(fixed=200, threads=1)
    for _ in range(10):
        long_jobs.observe(0.02)  # half of the floor's 10 is 100 ms of work
        short_jobs.observe(0.00001)  # half of 200 is a few milliseconds
    assert long_jobs.refills_in_batches
    assert not short_jobs.refills_in_batches
    fixed_long = ClaimAhead(fixed=200, threads=1)
    fixed_long.observe(0.01)
    assert fixed_long.refills_in_batches  # a fixed setting still measures run times


def test_descriptions_name_the_mode() -> None:
    assert ClaimAhead(fixed=None, threads=1).describe() == "auto, 10 to 200 by how long jobs run"
    assert ClaimAhead(fixed=7, threads=1).describe() == "7"


# -- the setting -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["auto", "AUTO", " auto ", "none", ""])
def test_the_setting_reads_auto_as_unset(value: str, tmp_path: Path) -> None:
    environ = {"ERRANDS_WORKER_MAX_PENDING_PER_PROCESS": value}
    assert settings.load(environ=environ, cwd=tmp_path).worker_max_pending_per_process is None


def test_the_setting_names_auto_when_a_value_is_bad(tmp_path: Path) -> None:
    environ = {"ERRANDS_WORKER_MAX_PENDING_PER_PROCESS": "lots"}
    with pytest.raises(errands.ConfigurationError, match=r"expected an integer \(or 'auto'\)"):
        settings.load(environ=environ, cwd=tmp_path)


# -- in a worker (real child processes, real database) ------------------------------------


class ClaimSpy:
    """The real backend, recording the limit of every claim made through it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.limits: list[int] = []

    def claim(self, **arguments: Any) -> list[JobProcess]:
        self.limits.append(arguments["limit"])
        return self.backend.claim(**arguments)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def drain(url: str, count: int, job: errands.Job, **overrides: Any) -> tuple[Worker, ClaimSpy]:
    errands.enqueue_many([job] * count)
    spy = ClaimSpy(api.backend())
    worker = Worker(config=worker_config(url, **overrides), backend=cast(Backend, spy))
    worker.start()
    try:
        done = lambda: len(errands.results(limit=count)) == count  # noqa: E731
        wait_for(done, timeout=60, step=worker.turn)
    finally:
        worker.stop()
        while not worker.finished():
            worker.turn()
        worker.shut_down()
    return worker, spy


@pytest.mark.slow
def test_a_worker_claims_far_ahead_once_it_sees_jobs_are_short(db_url: str) -> None:
    worker, spy = drain(db_url, 2_000, sample_jobs.Noop())
    assert spy.limits[0] == 2 * AUTO_FLOOR  # nothing measured yet: the floor
    # Later claims take far more than the floor's 20 at once.
    assert max(spy.limits) > 5 * 2 * AUTO_FLOOR
    assert worker.claim_ahead.per_process > 5 * AUTO_FLOOR


@pytest.mark.slow
def test_a_worker_stays_at_the_floor_for_jobs_of_tens_of_milliseconds(db_url: str) -> None:
    worker, spy = drain(db_url, 40, sample_jobs.Sleep(0.03))
    assert max(spy.limits) <= 2 * AUTO_FLOOR
    assert worker.claim_ahead.per_process == AUTO_FLOOR


@pytest.mark.slow
def test_a_fixed_setting_caps_every_claim(db_url: str) -> None:
    worker, spy = drain(db_url, 300, sample_jobs.Noop(), worker_max_pending_per_process=3)
    assert max(spy.limits) <= 2 * 3
    assert worker.claim_ahead.per_process == 3
