"""Job output whole: what jobs print or log reaches the worker's output line by line.

Real ``errands worker`` processes run many jobs at once, on several job processes
(and threads, and an event loop), each printing or logging long lines; every line
of the worker's captured output must then be one whole line: a job's line exactly
as it wrote it, or one of the worker's own (its banner, its JSON log records).
Before, block-buffered stdout cut lines every 8 KiB and print()'s separate write
of the newline let threads interleave: lines merged, others were left blank.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_process import WorkerProcess

import errands
from conftest import WorkerRunner, wait_for

pytestmark = pytest.mark.slow  # real workers

JOBS_MODULE = textwrap.dedent(
    '''
    """Jobs that print and log long lines (written by tests/test_job_output.py)."""

    import asyncio
    import logging
    import sys

    from errands import Job, register_job

    log = logging.getLogger("output_jobs")
    log.addHandler(logging.StreamHandler(sys.stderr))  # sys.stderr as the job module sees it
    log.setLevel(logging.INFO)
    log.propagate = False


    def text(n, kind, i):
        """A line whose width varies from 1 to 5000 characters, recognisable whole."""
        return f"job {n} {kind} line {i} " + "x" * ((n * 7919 + i * 104729) % 5000 + 1)


    @register_job
    class Chatty(Job):
        def __init__(self, n, lines, log=False):
            self.n, self.lines, self.log = n, lines, log

        def run(self):
            for i in range(self.lines):
                print(text(self.n, "print", i))
                if self.log:
                    log.info(text(self.n, "log", i))
            print(f"job {self.n} done", end="")  # no newline: the line ends with the job


    @register_job
    class AsyncChatty(Job):
        def __init__(self, n, lines):
            self.n, self.lines = n, lines

        async def run(self):
            for i in range(self.lines):
                print(text(self.n, "print", i))
                await asyncio.sleep(0)
            print(f"job {self.n} done", end="")
    '''
)

JOB_LINE = re.compile(r"job (\d+) (print|log) line (\d+) (x+)")
DONE_LINE = re.compile(r"job (\d+) done")


def expected_width(n: int, i: int) -> int:
    return (n * 7919 + i * 104729) % 5000 + 1


@pytest.fixture
def jobs_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``output_jobs`` importable here and in worker processes."""
    directory = tmp_path / "jobs"
    directory.mkdir()
    (directory / "output_jobs.py").write_text(JOBS_MODULE)
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(directory), os.environ["PYTHONPATH"]]))
    yield directory
    sys.modules.pop("output_jobs", None)


def enqueue(job: str, count: int, lines: int, **more: object) -> None:
    import output_jobs

    job_class = getattr(output_jobs, job)
    for n in range(count):
        job_class(n=n, lines=lines, **more).run_in_worker()


#: Python buffers a redirected stdout in blocks, unless PYTHONUNBUFFERED is set (then
#: print() writes its text and its newline in two calls): each way merged lines.
BUFFERING = pytest.mark.parametrize("buffering", ["buffered", "unbuffered"])


def run_worker_process(
    db_url: str, log: Path, count: int, *options: str, buffering: str = "buffered"
) -> str:
    """Run ``errands worker`` until ``count`` jobs have results; everything it wrote."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if buffering == "unbuffered":
        env["PYTHONUNBUFFERED"] = "1"
    with WorkerProcess.errands(
        db_url,
        log,
        "--import",
        "output_jobs",
        "worker",
        "--poll-interval",
        "0.1",
        "--stats-every",
        "0",
        "--log-format",
        "json",
        *options,
        env=env,
    ) as worker:
        wait_for(lambda: len(errands.results(limit=1000)) >= count, timeout=120)
        assert worker.stop(signal.SIGTERM, timeout=60) == 0
        return worker.log()


def check_whole_lines(output: str, *, count: int, lines: int, kinds: tuple[str, ...]) -> None:
    """Every line is whole; every line each job wrote is there exactly once."""
    _banner, rest = output.split("Stop with Ctrl-C or SIGTERM", 1)
    seen: Counter[tuple[int, str, int]] = Counter()
    done: Counter[int] = Counter()
    for line in rest.splitlines()[1:]:
        if match := JOB_LINE.fullmatch(line):
            n, kind, i = int(match[1]), match[2], int(match[3])
            assert len(match[4]) == expected_width(n, i), f"a cut line: {line[:80]}..."
            seen[n, kind, i] += 1
        elif match := DONE_LINE.fullmatch(line):
            done[int(match[1])] += 1
        else:
            try:
                record = json.loads(line)  # one of the worker's own log records
            except ValueError:
                raise AssertionError(f"not a whole line: {line[:200]!r}") from None
            assert isinstance(record, dict) and "message" in record, line[:200]
    expected = {(n, kind, i) for n in range(count) for kind in kinds for i in range(lines)}
    assert set(seen) == expected
    assert set(seen.values()) == {1}
    assert done == Counter(range(count))


@BUFFERING
def test_print_lines_of_concurrent_job_processes_never_merge(
    db_url: str, jobs_module: Path, tmp_path: Path, buffering: str
) -> None:
    enqueue("Chatty", count=12, lines=60)

    output = run_worker_process(
        db_url, tmp_path / "worker.log", 12, "--max-processes", "3", buffering=buffering
    )

    check_whole_lines(output, count=12, lines=60, kinds=("print",))


@BUFFERING
def test_print_and_log_lines_of_threads_never_merge(
    db_url: str, jobs_module: Path, tmp_path: Path, buffering: str
) -> None:
    enqueue("Chatty", count=12, lines=40, log=True)

    output = run_worker_process(
        db_url,
        tmp_path / "worker.log",
        12,
        "--max-processes",
        "2",
        "--threads",
        "4",
        buffering=buffering,
    )

    check_whole_lines(output, count=12, lines=40, kinds=("print", "log"))


@BUFFERING
def test_lines_of_async_jobs_sharing_an_event_loop_never_merge(
    db_url: str, jobs_module: Path, tmp_path: Path, buffering: str
) -> None:
    enqueue("AsyncChatty", count=9, lines=40)

    output = run_worker_process(
        db_url,
        tmp_path / "worker.log",
        9,
        "--max-processes",
        "2",
        "--threads",
        "3",
        buffering=buffering,
    )

    check_whole_lines(output, count=9, lines=40, kinds=("print",))


def test_lines_can_start_with_their_job_class_and_short_id(
    run_worker: WorkerRunner,
    jobs_module: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    enqueue("Chatty", count=4, lines=5)

    run_worker(
        lambda: len(errands.results()) == 4,
        worker_label_output=True,
        import_modules=("output_jobs",),
        worker_max_processes=2,
        worker_threads=2,
    )

    short_ids = {str(r.process_uuid)[:8] for r in errands.results()}
    printed = [line for line in capfd.readouterr().out.splitlines() if line]
    jobs_of_label: dict[str, set[str]] = {}
    for line in printed:
        match = re.fullmatch(r"\[output_jobs\.Chatty ([0-9a-f]{8})\] (job (\d+) .*)", line)
        assert match is not None, line[:200]
        assert JOB_LINE.fullmatch(match[2]) or DONE_LINE.fullmatch(match[2]), line[:200]
        jobs_of_label.setdefault(match[1], set()).add(match[3])
    assert len(printed) == 4 * 6  # 5 lines and the unended one, each job
    assert set(jobs_of_label) == short_ids
    assert sorted(n for ns in jobs_of_label.values() for n in ns) == ["0", "1", "2", "3"]
