"""Wake-ups: a worker looks for work as soon as it is told some may be due, and a
wake-up is never lost to a claim that was on its way when it came."""

from __future__ import annotations

import time
from typing import Any, cast

import sample_jobs

import errands
from conftest import wait_for, worker_config
from errands import api
from errands.backends import Backend
from errands.models import JobProcess, JobResult, Status
from errands.worker import Worker


class EnqueueDuringSecondClaim:
    """The real backend, whose second claim enqueues a job after its own statements
    ran (so that it cannot have seen that job) and returns only once the job's
    notification had time to reach the worker."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.claims = 0
        self.late: list[errands.JobRequest] = []

    def claim(self, **arguments: Any) -> list[JobProcess]:
        claimed = self.backend.claim(**arguments)
        self.claims += 1
        if self.claims == 2:
            request = sample_jobs.Noop().run_in_worker()
            assert request is not None
            self.late.append(request)
            time.sleep(0.3)
        return claimed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def test_a_job_enqueued_during_a_claim_is_claimed_at_once(db_url: str) -> None:
    spy = EnqueueDuringSecondClaim(api.backend())
    # A poll an hour away: only a wake-up can find the late job in time.
    worker = Worker(config=worker_config(db_url, poll_interval=3600), backend=cast(Backend, spy))
    worker.start()
    try:
        wait_for(lambda: spy.claims >= 1, timeout=30, step=worker.turn)  # the first, empty
        first = sample_jobs.Noop().run_in_worker()  # wakes the worker: the second claim
        assert first is not None
        wait_for(lambda: bool(spy.late), timeout=30, step=worker.turn)
        late = spy.late[0].uuid
        enqueued = time.monotonic()

        def late_done() -> bool:
            result = errands.get(late)
            return isinstance(result, JobResult) and result.status == Status.SUCCESSFUL

        wait_for(late_done, timeout=30, step=worker.turn)
        assert time.monotonic() - enqueued < 5
    finally:
        worker.stop()
        while not worker.finished():
            worker.turn()
        worker.shut_down()
