"""Jobs for the thread-mode tests (imported by workers as ``thread_jobs``).

Each job appends lines ``<event> <token> <time> <pid> <detail>`` to a file, so
tests can see which jobs overlapped, in which process, and on which event loop.

With ``THREAD_JOBS_IMPORT_DELAY`` set, a worker's child processes take that many
seconds to import this module: jobs handed to such a child wait, not yet begun.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sample_jobs import append_line

from errands import Job, register_job

if multiprocessing.parent_process() is not None:  # in a worker's child only
    time.sleep(float(os.environ.get("THREAD_JOBS_IMPORT_DELAY", "0")))


def mark(path: str, event: str, token: str, detail: object = "") -> None:
    append_line(path, f"{event} {token} {time.time()} {os.getpid()} {detail}")


@register_job
class Hold(Job):
    """Waits ``seconds`` as an I/O-bound job does (the GIL is free meanwhile)."""

    def __init__(self, path: str, token: str, seconds: float) -> None:
        self.path = path
        self.token = token
        self.seconds = seconds

    def run(self) -> str:
        mark(self.path, "start", self.token, threading.current_thread().name)
        time.sleep(self.seconds)
        mark(self.path, "end", self.token)
        return self.token


@register_job
class AsyncHold(Job):
    """The same wait, as a coroutine; records which event loop ran it."""

    def __init__(self, path: str, token: str, seconds: float) -> None:
        self.path = path
        self.token = token
        self.seconds = seconds

    async def run(self) -> str:
        mark(self.path, "start", self.token, id(asyncio.get_running_loop()))
        await asyncio.sleep(self.seconds)
        mark(self.path, "end", self.token)
        return self.token


@dataclass(frozen=True)
class Mark:
    event: str
    token: str
    at: float
    pid: int
    detail: str


def marks(path: Path) -> list[Mark]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        event, token, at, pid, *detail = line.split(" ")
        found.append(Mark(event, token, float(at), int(pid), " ".join(detail)))
    return found


def spans(path: Path) -> dict[str, tuple[float, float]]:
    """(start, end) of each token that both started and ended (its last run)."""
    starts = {m.token: m.at for m in marks(path) if m.event == "start"}
    ends = {m.token: m.at for m in marks(path) if m.event == "end"}
    return {token: (starts[token], ends[token]) for token in ends if token in starts}


def most_at_once(path: Path) -> int:
    """The largest number of runs in progress at the same moment."""
    events = sorted((m.at, 1 if m.event == "start" else -1) for m in marks(path))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak
