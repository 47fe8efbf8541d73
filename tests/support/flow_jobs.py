"""Jobs for the flow-control tests: each appends its start and end (wall-clock time,
shared by every process on the machine) to a trail file, so a test can check how
many ran at once and how often they started."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from errands import Job, Limit, register_job


def _append(path: str, line: str) -> None:
    # One write of one line with O_APPEND: lines of concurrent jobs never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@register_job
class Timed(Job):
    """Sleeps ``seconds``, recording its start and end under ``token``."""

    def __init__(self, trail: str, token: str, seconds: float = 0.0) -> None:
        self.trail = trail
        self.token = token
        self.seconds = seconds

    def run(self) -> None:
        _append(self.trail, f"start {self.token} {time.time():.6f}\n")
        if self.seconds:
            time.sleep(self.seconds)
        _append(self.trail, f"end {self.token} {time.time():.6f}\n")


@register_job
class PerCustomer(Timed):
    """Limited per customer, the key computed from the job at enqueue."""

    limits = [Limit(lambda job: f"customer:{job.token.split('-')[0]}", concurrency=1)]


@dataclass
class Run:
    token: str
    start: float
    end: float | None


def read_trail(path: Path) -> list[Run]:
    """Every run in the trail, in order of start."""
    runs: dict[str, Run] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        kind, token, at = line.split()
        if kind == "start":
            runs[token] = Run(token, float(at), None)
        else:
            runs[token].end = float(at)
    return sorted(runs.values(), key=lambda run: run.start)


def most_at_once(runs: list[Run]) -> int:
    """The largest number of runs in progress at one moment (an end at the very time
    of a start counts as before it: that start took the freed slot)."""
    events = [(run.start, 1) for run in runs] + [
        (run.end, -1) for run in runs if run.end is not None
    ]
    events.sort(key=lambda event: (event[0], event[1]))
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def most_starts_in(runs: list[Run], seconds: float) -> int:
    """The largest number of starts in any window of ``seconds`` (closed at both ends)."""
    starts = sorted(run.start for run in runs)
    peak = 0
    first = 0
    for last, at in enumerate(starts):
        while at - starts[first] > seconds:
            first += 1
        peak = max(peak, last - first + 1)
    return peak
