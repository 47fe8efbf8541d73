"""What ``errands demo`` prints when its jobs are done: the results table, where to
look next (commands that run as printed), and which database it used."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from errands import formatting, settings
from errands.models import JobResult, Status

if TYPE_CHECKING:
    from errands.demo import Chain, Tracker


def _duration(result: JobResult) -> str:
    if result.started_at is None:
        return "-"
    return f"{(result.ended_at - result.started_at).total_seconds():.2f}s"


def _what_happened(chain: Chain, index: int) -> str:
    result = chain.results[index]
    if result.status == Status.DEFERRED:
        return "raised DeferJob: enqueued again" if result.retry_request_uuid else "deferred"
    if result.status in (Status.ERRORED, Status.LOST):
        if result.retry_request_uuid is not None:
            return "failed: retry enqueued"
        return "failed: no retries left" if result.retries else "failed: no retries"
    if result.status != Status.SUCCESSFUL:
        return result.status.value.lower()
    if index and chain.results[index - 1].status == Status.DEFERRED:
        return "succeeded after the deferral"
    if index:
        return f"succeeded on attempt {formatting.attempt_number(result)}"
    if chain.delayed and result.started_at is not None:
        waited = (result.started_at - result.requested_at).total_seconds()
        return f"succeeded; started {waited:.1f}s after enqueueing"
    return "succeeded"


def summary(tracker: Tracker, out: TextIO) -> None:
    headers = ["JOB", "STATUS", "ATTEMPT", "DURATION", "ERROR", "WHAT HAPPENED"]
    rows: list[list[str]] = []
    for chain in tracker.chains:
        for index, result in enumerate(chain.results):
            rows.append(
                [
                    chain.label if index == 0 else "  \u21b3 next attempt",
                    result.status.value,
                    formatting.attempt_text(result),
                    _duration(result),
                    result.error_type or "-",
                    _what_happened(chain, index),
                ]
            )
    for label in tracker.skipped:
        rows.append([label, "skipped", "-", "-", "-", "never enqueued: same concurrency key"])
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    out.write("\nResults:\n")
    for row in [headers, *rows]:
        out.write("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def hints(tracker: Tracker, out: TextIO, config: settings.Settings) -> None:
    failed = next(
        (
            r
            for chain in tracker.chains
            for r in chain.results
            if r.status == Status.ERRORED and chain.label.startswith("CallFlakyApi")
        ),
        None,
    )
    prefix = command_prefix()
    lines = ["", "Where to look next:"]
    if config.sources.get("database_url") == "the command line":
        lines.append("  (give each command the same --database-url as this demo)")
    lines += [
        f"  {prefix} results                 every result, newest first (--json for JSON)",
    ]
    if failed is not None:
        lines.append(f"  {prefix} get {failed.uuid}")
        lines.append(
            "      one result in full: CallFlakyApi's first failed attempt, with traceback"
        )
    lines += [
        f"  {prefix} stats                   counts per queue, results by status, workers",
        "  README.md: 'Tutorial' to write your own jobs, 'A job's life' for the statuses above",
        "",
    ]
    out.write("\n".join(lines))
    out.flush()


def command_prefix(argv0: str | None = None) -> str:
    """How to run ``errands`` again as this process was run: ``errands`` when that is the
    command found on PATH, else the path it was run by (a venv not activated), or
    ``python -m errands``."""
    invoked = argv0 if argv0 is not None else sys.argv[0]
    # Run as a module, or from code (python -c, an embedding process): no script to name.
    if Path(invoked).name == "__main__.py" or not os.path.isfile(invoked):
        return f"{shlex.quote(sys.executable)} -m errands"
    found = shutil.which("errands")
    if found and os.path.realpath(found) == os.path.realpath(invoked):
        return "errands"
    return shlex.quote(invoked)


def describe(config: settings.Settings) -> str:
    from errands.backends import DEFAULT_URL

    url = config.database_url or DEFAULT_URL
    if url.startswith("sqlite:"):
        path = url.split(":", 1)[1]
        path = path[3:] if path.startswith("///") else path.lstrip("/")
        return f"SQLite file {os.path.abspath(path)}"
    host = url.split("@")[-1]
    return f"PostgreSQL at {host}"
