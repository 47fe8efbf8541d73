"""Printing for commands: aligned tables, JSON, and one job's fields in full.

Times, durations and attempts come from :mod:`errands.formatting`, shared with
the dashboard.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Sequence
from typing import Any

import click

from errands import formatting
from errands.models import JobProcess, JobRequest, JobResult


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned on the widest cell; the last column is not padded."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def field_text(value: Any) -> str:
    """A value in one cell: ``-`` for None, JSON for a dict or list, else its text."""
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def job_json(row: JobRequest | JobProcess | JobResult) -> dict[str, Any]:
    """A job as ``--json`` prints it: its stored fields, and ``attempt`` after ``retry_attempt``.

    ``attempt`` is the human count, from 1 (:func:`errands.formatting.attempt_number`);
    ``retry_attempt`` (from 0) and ``retries`` (retries allowed) are as stored.
    """
    data: dict[str, Any] = {}
    for key, value in row.as_json().items():
        data[key] = value
        if key == "retry_attempt":
            data["attempt"] = formatting.attempt_number(row)
    return data


def show_row(row: JobRequest | JobProcess | JobResult) -> None:
    """Every field of one job, one per line, then its traceback indented.

    Times are shown as the tables show them (with their zone), the attempt as
    ``2 of 4`` (:func:`errands.formatting.attempt_text`).
    """
    data = job_json(row)
    traceback = data.pop("traceback", "")
    data["attempt"] = formatting.attempt_text(row)
    for field in dataclasses.fields(row):
        value = getattr(row, field.name)
        if field.name == "start_at" and formatting.is_held_time(value):
            data[field.name] = formatting.HELD_TEXT  # a workflow job, not due yet
        elif isinstance(value, datetime.datetime) or formatting.is_undecodable(value):
            data[field.name] = formatting.local_time(value)
    if isinstance(row, JobResult):
        data["duration"] = formatting.compact_duration(formatting.run_seconds(row))
    width = max(len(k) for k in data)
    for key, value in data.items():
        click.echo(f"{key.ljust(width)}  {field_text(value)}")
    if traceback:
        click.echo("traceback:")
        for line in str(traceback).rstrip().splitlines():
            click.echo(f"    {line}")


def tagged_table(
    jobs: Sequence[JobRequest | JobProcess | JobResult],
    headers: list[str],
    rows: list[list[Any]],
) -> str:
    """``table``, with a TAGS column last when a job of the listing carries tags."""
    if any(job.tags for job in jobs):
        headers = [*headers, "TAGS"]
        rows = [[*row, ",".join(job.tags) or "-"] for row, job in zip(rows, jobs, strict=True)]
    return table(headers, rows)
