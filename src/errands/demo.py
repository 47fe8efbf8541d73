"""``errands demo``: example jobs and a worker that runs them, start to finish.

The example jobs show a job's life: successes, a job that fails twice and then
succeeds through retries, a deferred job, a delayed job, a duplicate skipped by
its concurrency key and a job that fails for good. They use their own queue,
``errands-demo``, so a demo run against a real database leaves other jobs alone.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from errands import api, demo_report, settings
from errands.errors import DeferJob
from errands.jobs import EnqueueOptions, Job, enqueue_many
from errands.models import JobResult
from errands.registry import register_job

DEMO_QUEUE = "errands-demo"
#: The ``source`` of the jobs the demo enqueues.
DEMO_SOURCE = "demo"
DEMO_PROCESSES = 3
DEMO_POLL_INTERVAL = 0.2


class DemoJob(Job):
    """Base of the demo's jobs: they all run on the ``errands-demo`` queue."""

    def default_queue(self) -> str:
        return DEMO_QUEUE


@register_job
class ResizeImage(DemoJob):
    """A plain success that returns a value (stored as the result's return_value)."""

    def __init__(self, filename: str, width: int) -> None:
        self.filename = filename
        self.width = width

    def run(self) -> dict[str, Any]:
        time.sleep(0.3)
        stem, _, ext = self.filename.rpartition(".")
        return {"thumbnail": f"{stem}-{self.width}w.{ext}"}


@register_job
class SendWelcomeEmail(DemoJob):
    def __init__(self, user_id: int) -> None:
        self.user_id = user_id

    def run(self) -> str:
        time.sleep(0.2)
        return f"welcome email sent to user {self.user_id}"


@register_job
class CallFlakyApi(DemoJob):
    """Fails its first ``failures`` attempts, then succeeds: retries at work.

    A job does not see its attempt number, so the attempts are counted in a file
    whose path is a parameter (parameters are the same for every attempt).
    """

    def __init__(self, counter_path: str, failures: int = 2) -> None:
        self.counter_path = counter_path
        self.failures = failures

    def default_retries(self) -> int:
        return 3

    def calculate_retry_delay(self, attempt: int) -> float:
        return 0.5 * attempt  # 0.5 s before the first retry, 1 s before the second

    def run(self) -> str:
        with open(self.counter_path, "a") as counter:
            counter.write("attempt\n")
        attempt = len(Path(self.counter_path).read_text().splitlines())
        if attempt <= self.failures:
            raise ConnectionError(f"payment API answered 503 (attempt {attempt})")
        return f"payment API answered 200 OK (attempt {attempt})"


@register_job
class ProcessUpload(DemoJob):
    """Defers itself once (the upload is "not there yet"), then succeeds."""

    def __init__(self, marker_path: str) -> None:
        self.marker_path = marker_path

    def run(self) -> str:
        if not os.path.exists(self.marker_path):
            Path(self.marker_path).touch()
            raise DeferJob(delay=1)
        return "upload processed"


@register_job
class SendReminder(DemoJob):
    """Enqueued with ``delay=2``: a worker runs it no sooner than two seconds later."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id

    def run(self) -> str:
        return f"reminder sent to user {self.user_id}"


@register_job
class RebuildSearchIndex(DemoJob):
    """At most one pending-or-running rebuild: enqueueing a second one is skipped."""

    def default_concurrency_key(self) -> str:
        return "search-index"

    def run(self) -> str:
        time.sleep(0.3)
        return "search index rebuilt"


@register_job
class ImportSpreadsheet(DemoJob):
    """Fails for good (no retries): its result keeps the error and the traceback."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def run(self) -> None:
        raise ValueError(f"{self.filename}, row 7: price 'twelve' is not a number")


# -- running the demo -------------------------------------------------------------------


@dataclass
class Chain:
    """One enqueued job and every attempt (result) it has had so far."""

    label: str
    note: str
    request_uuid: uuid.UUID
    delayed: bool = False
    results: list[JobResult] = field(default_factory=list)
    awaiting: uuid.UUID | None = None  # the request that will produce the next result

    @property
    def finished(self) -> bool:
        return self.awaiting is None


@dataclass
class Tracker:
    """Follows the demo's requests through retries and deferrals to their final results."""

    chains: list[Chain] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pending: int = 0
    running: int = 0

    def add(self, label: str, note: str, request_uuid: uuid.UUID, *, delayed: bool = False) -> None:
        chain = Chain(label, note, request_uuid, delayed=delayed, awaiting=request_uuid)
        self.chains.append(chain)

    @property
    def done(self) -> int:
        return sum(chain.finished for chain in self.chains)

    @property
    def complete(self) -> bool:
        return all(chain.finished for chain in self.chains)

    def refresh(self) -> None:
        by_request = {c.awaiting: c for c in self.chains if c.awaiting is not None}
        results = api.results(queue=DEMO_QUEUE, limit=500)
        # Oldest first, so a retry's result is seen after the result that caused it.
        for result in reversed(results):
            chain = by_request.pop(result.request_uuid, None)
            if chain is None:
                continue
            chain.results.append(result)
            chain.awaiting = result.retry_request_uuid
            if chain.awaiting is not None:
                by_request[chain.awaiting] = chain
        awaiting = {c.awaiting for c in self.chains if c.awaiting is not None}
        requests = api.requests(queue=DEMO_QUEUE, limit=500)
        processes = [
            p for p in api.processes(queue=DEMO_QUEUE, limit=500) if p.request_uuid in awaiting
        ]
        running = sum(p.started_at is not None for p in processes)
        self.running = running
        self.pending = sum(r.uuid in awaiting for r in requests) + len(processes) - running


class Progress:
    """A status line on stderr: rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""
        self.width = 0

    def show(self, elapsed: float, text: str) -> None:
        """Show ``text``; off a terminal only when it changed (not for each tick)."""
        if not self.tty and text == self.last:
            return
        self.last = text
        text = f"  {elapsed:4.1f}s  {text}"
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def _enqueue(workdir: Path, tracker: Tracker, out: TextIO) -> None:
    jobs: list[tuple[str, str, Job, dict[str, Any]]] = [
        ("ResizeImage('cat.jpg', 640)", "succeeds", ResizeImage("cat.jpg", 640), {}),
        ("ResizeImage('dog.jpg', 320)", "succeeds", ResizeImage("dog.jpg", 320), {}),
        ("SendWelcomeEmail(42)", "succeeds", SendWelcomeEmail(42), {}),
        (
            "CallFlakyApi()",
            "fails twice, then succeeds on its 2nd retry",
            CallFlakyApi(str(workdir / "flaky-attempts.txt")),
            {},
        ),
        (
            "ProcessUpload()",
            "defers itself once for 1s, then succeeds",
            ProcessUpload(str(workdir / "upload-arrived")),
            {},
        ),
        ("SendReminder(42)", "delayed: runs 2s after enqueueing", SendReminder(42), {"delay": 2}),
        (
            "ImportSpreadsheet('prices.csv')",
            "fails for good (no retries)",
            ImportSpreadsheet("prices.csv"),
            {},
        ),
        (
            "RebuildSearchIndex()",
            "concurrency key 'search-index'",
            RebuildSearchIndex(),
            {},
        ),
    ]
    width = max(len(label) for label, *_ in jobs) + 2
    out.write(f"Enqueueing example jobs on queue {DEMO_QUEUE!r}:\n")
    for label, note, job, options in jobs:
        [request] = enqueue_many([job], options=EnqueueOptions(**options, source=DEMO_SOURCE))
        if request is None:
            # Only possible when an earlier demo's rebuild is still pending.
            out.write(f"  {label.ljust(width)}skipped (one is already pending)\n")
            tracker.skipped.append(label)
            continue
        tracker.add(label, note, request.uuid, delayed="delay" in options)
        out.write(f"  {label.ljust(width)}{note}\n")
    [duplicate] = enqueue_many([RebuildSearchIndex()], options=EnqueueOptions(source=DEMO_SOURCE))
    label = "RebuildSearchIndex() again"
    if duplicate is None:
        out.write(
            f"  {label.ljust(width)}skipped: run_in_worker() returned None "
            "(key 'search-index' is taken)\n"
        )
        tracker.skipped.append(label)
    else:  # pragma: no cover - a custom should_enqueue could allow it
        tracker.add(label, "enqueued", duplicate.uuid)
    out.flush()


def _worker_config(base: settings.Settings, *, keep_running: bool) -> settings.Settings:
    return dataclasses.replace(
        base,
        import_modules=("errands.demo",),
        worker_max_processes=DEMO_PROCESSES,
        worker_max_pending_per_process=2,
        worker_max_jobs_per_process=None,
        poll_interval=DEMO_POLL_INTERVAL,
        worker_stats_every=0,
        worker_drain_timeout=None,
        log_jobs=keep_running,
    )


@contextmanager
def _stop_on_signals(worker: Any) -> Iterator[None]:
    """SIGINT/SIGTERM ask the worker to stop (a second one cancels running jobs)."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, lambda received, _frame: worker.stop(received))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_demo(
    *,
    keep_running: bool = False,
    timeout: float = 60.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Migrate, enqueue the example jobs, run a worker until they finish, print a summary.

    Returns the exit code: 0 when every job reached its final result, 1 on timeout.
    The worker and its child processes are always shut down before returning.
    """
    from errands.logs import configure_logging
    from errands.worker import Worker

    out = out or sys.stdout
    err = err or sys.stderr
    base = settings.current()
    config = _worker_config(base, keep_running=keep_running)
    configure_logging("INFO" if keep_running else "WARNING", base.log_format)

    backend = api.backend()
    applied = backend.migrate()
    where = demo_report.describe(base)
    if applied:
        out.write(f"Database: {where} (created errands' tables)\n")
    else:
        out.write(f"Database: {where} (errands' tables already there)\n")

    workdir = Path(tempfile.mkdtemp(prefix="errands-demo-"))
    tracker = Tracker()
    try:
        _enqueue(workdir, tracker, out)
        out.write(
            f"\nRunning a worker ({DEMO_PROCESSES} processes, queue {DEMO_QUEUE!r}) "
            "until every job has its final result...\n"
        )
        out.flush()
        worker = Worker(queues=[DEMO_QUEUE], config=config, backend=backend)
        progress = Progress(err)
        started = time.monotonic()
        finished_in_time = False
        worker.start()
        try:
            with _stop_on_signals(worker):
                next_check = 0.0
                while not worker.stopping:
                    worker.turn()
                    now = time.monotonic()
                    if now < next_check:
                        continue
                    next_check = now + 0.1
                    tracker.refresh()
                    progress.show(
                        now - started,
                        f"finished {tracker.done}/{len(tracker.chains)}"
                        f"  waiting {tracker.pending}  running {tracker.running}",
                    )
                    if tracker.complete:
                        finished_in_time = True
                        break
                    if now - started > timeout:
                        break
                progress.end()
                if finished_in_time:
                    demo_report.summary(tracker, out)
                    demo_report.hints(tracker, out, base)
                    if keep_running:
                        _keep_running(worker, out)
                elif worker.stopping:
                    err.write("Stopped before the demo's jobs finished.\n")
                else:
                    err.write(
                        f"The demo's jobs did not all finish within {timeout:g}s "
                        f"({tracker.done} of {len(tracker.chains)} did). Is the database busy, or "
                        f"another worker taking queue {DEMO_QUEUE!r}? Try `errands processes`.\n"
                    )
                if not worker.stopping:
                    worker.stop()
                while not worker.finished():
                    worker.turn()
        finally:
            worker.shut_down()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if finished_in_time else 1


def _keep_running(worker: Any, out: TextIO) -> None:
    out.write(
        f"The worker keeps running on queue {DEMO_QUEUE!r}. From another terminal, try:\n"
        "  errands run errands.demo.SendWelcomeEmail --param user_id=7\n"
        "  errands run errands.demo.CallFlakyApi --param counter_path=/tmp/flaky.txt\n"
        "Stop it with Ctrl-C.\n"
    )
    out.flush()
    while not worker.stopping:
        worker.turn()


__all__ = [
    "DEMO_QUEUE",
    "CallFlakyApi",
    "ImportSpreadsheet",
    "ProcessUpload",
    "RebuildSearchIndex",
    "ResizeImage",
    "SendReminder",
    "SendWelcomeEmail",
    "run_demo",
]
