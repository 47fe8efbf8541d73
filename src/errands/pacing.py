"""How many jobs a worker holds per child process: claimed ahead, waiting or running.

Holding more jobs lets the children keep working while the next claim is on its
way (Little's law: the jobs in hand are the rate times how long each stays in
hand, and a claim's round trip is part of that). Holding too many makes jobs wait
in one worker while another is idle, and makes a newly enqueued urgent job wait
behind them. The right number depends on how long the jobs run, so by default
(``worker_max_pending_per_process`` unset, or "auto") the worker measures it: it
holds about ``AHEAD_SECONDS`` of work per process, never fewer than
``AUTO_FLOOR`` jobs (the reference design's fixed default, kept for long jobs)
and never more than ``AUTO_CEILING``. A number in the setting fixes the limit.
"""

from __future__ import annotations

AHEAD_SECONDS = 0.05  # work a process holds at most, at the measured job length
AUTO_FLOOR = 10  # jobs per process, however long the jobs run
AUTO_CEILING = 200  # jobs per process, however short the jobs are
SMOOTHING = 0.05  # weight of each new job's run time in the running average
OVERHEAD_SECONDS = 0.0001  # a job's cost around its run() (pipes, parameters), at least


class ClaimAhead:
    """The number of jobs a worker may hold per child process."""

    def __init__(self, *, fixed: int | None, threads: int) -> None:
        self.fixed = fixed
        self.threads = threads
        self.floor = max(fixed or AUTO_FLOOR, threads)
        self.ceiling = max(fixed or AUTO_CEILING, threads)
        self.average_seconds: float | None = None  # of a job's run, once one was seen
        self.per_process = self.floor

    @property
    def adaptive(self) -> bool:
        return self.fixed is None

    def observe(self, run_seconds: float) -> None:
        """Take one finished job's run time into account."""
        if self.fixed is not None:
            return
        seconds = max(run_seconds, 0.0) + OVERHEAD_SECONDS
        average = self.average_seconds
        average = seconds if average is None else average + (seconds - average) * SMOOTHING
        self.average_seconds = average
        wanted = int(self.threads * AHEAD_SECONDS / average)
        self.per_process = min(max(wanted, self.floor), self.ceiling)

    def describe(self) -> str:
        if self.fixed is not None:
            return f"{self.per_process}"
        return f"auto, {self.floor} to {self.ceiling} by how long jobs run"
