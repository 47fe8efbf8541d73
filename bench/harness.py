"""Worker subprocesses for the benchmark, and sampling their CPU and memory.

Workers run as subprocesses (``worker_process.py``) so that their CPU time and
memory, children included, are measured apart from the benchmark's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# -- worker subprocesses -------------------------------------------------------------------


class WorkerProcess:
    """``worker_process.py`` in a subprocess, stopped with SIGTERM like a deploy would."""

    def __init__(self, url: str, settings: Mapping[str, Any]) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
        environ.update(
            {
                "ERRANDS_DATABASE_URL": url,
                "ERRANDS_IMPORT": "bench_jobs",
                "ERRANDS_LOG_LEVEL": "WARNING",
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(BENCH_DIR), environ.get("PYTHONPATH", "")) if p
                ),
            }
        )
        environ.update({f"ERRANDS_{k.upper()}": str(v) for k, v in settings.items()})
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "worker_process.py")],
            env=environ,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 60) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # no child may outlive the run

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- /proc sampling ---------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; it ends at the last ')'.
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (by scanning /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    tree = [root]
    for pid in tree:
        tree += [child for child, parent in parents.items() if parent == pid]
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of these processes (all their threads)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of one process."""
    try:
        resident = Path(f"/proc/{pid}/statm").read_text().split()[1]
    except OSError:
        return 0
    return int(resident) * PAGE_SIZE


def wait_until(
    condition: Any, *, timeout: float, step: float = 0.05, what: str = "benchmark condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(step)


def write_report(path: Path | None, report: Mapping[str, Any]) -> None:
    """The run's report as JSON at ``path`` (``--json``), if one was given."""
    if path is not None:
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nJSON written to {path}")
