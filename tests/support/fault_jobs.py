"""Jobs for the fault tests, and the accounting that checks what became of them.

Every job carries a ``token`` (one per enqueued job, kept by its retries) and appends
a line to a trail file each time it starts and ends: the token, the process uuid
(one per attempt: the attempt's ``errands_process`` row, later its result's
``process_uuid``), the pid and the time. :func:`account` then matches the trail
against the database: every job exactly one final result, retries as configured,
and each execution explained by an attempt of its own (a retry after ERRORED or
LOST); any other is an unexplained duplicate.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from errands import Job, register_job

FINAL_STATUSES = {"SUCCESSFUL", "ERRORED", "LOST", "CANCELLED"}


def _process_uuid() -> str:
    """The uuid of the attempt this job runs as (``-`` outside a worker)."""
    from errands.worker import output

    job = output._job.get()  # (class, process uuid), set around each job in a child
    return str(job[1]) if job is not None else "-"


def _append(path: str, text: str) -> None:
    # One short O_APPEND write per line: concurrent children never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def mark(trail: str, token: str, what: str) -> None:
    _append(trail, f"{token} {_process_uuid()} {os.getpid()} {time.time():.6f} {what}")


@register_job
class Step(Job):
    """Runs ``seconds`` and ends as told: ``ok``, ``fail`` (always raises), or
    ``fail-once`` (raises on its first execution only, remembered in a marker file)."""

    def __init__(
        self, trail: str, token: str, seconds: float = 0, ending: str = "ok", delay: float = 0
    ) -> None:
        self.trail = trail
        self.token = token
        self.seconds = seconds
        self.ending = ending
        self.delay = delay

    def run(self) -> str:
        mark(self.trail, self.token, "start")
        if self.seconds:
            time.sleep(self.seconds)
        if self.ending == "fail":
            mark(self.trail, self.token, "fail")
            raise RuntimeError("fails every time")
        if self.ending == "fail-once":
            try:
                fd = os.open(f"{self.trail}.{self.token}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                mark(self.trail, self.token, "fail")
                raise RuntimeError("fails the first time")
        mark(self.trail, self.token, "end")
        return self.token

    def calculate_retry_delay(self, attempt: int) -> float:
        return self.delay


# -- the trail ------------------------------------------------------------------------


@dataclasses.dataclass
class Execution:
    token: str
    process_uuid: str
    pid: int
    started: float
    ended: float | None = None  # ran to its end ("end" or "fail")
    outcome: str = ""


def executions(trail: Path) -> list[Execution]:
    """Every execution in the trail, in start order."""
    found: dict[tuple[str, str, int], Execution] = {}
    ordered: list[Execution] = []
    if not trail.exists():
        return []
    for line in trail.read_text().splitlines():
        token, process, pid, at, what = line.split()
        key = (token, process, int(pid))
        if what == "start":
            execution = Execution(token, process, int(pid), float(at))
            if key in found:  # the same attempt started again in one process
                ordered.append(execution)
            found[key] = execution
            ordered.append(execution)
        elif key in found:
            found[key].ended = float(at)
            found[key].outcome = what
    return ordered


# -- the database ---------------------------------------------------------------------


def rows(url: str, query: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(query).fetchall()


def results_by_token(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every result of a Step job, by token, oldest attempt first; each row whole
    (``to_jsonb``: whatever columns the result table has) plus ``token``."""
    by_token: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in rows(url, "SELECT to_jsonb(r) AS r FROM errands_result r"):
        result = row["r"]
        token = token_of(result["parameters"])
        if token is not None:
            by_token[token].append(result)
    for chain in by_token.values():
        chain.sort(key=lambda r: (r["retry_attempt"], r["created_at"]))
    return by_token


def token_of(parameters: Any) -> str | None:
    """A Step's token from its stored arguments (``{"args": [trail, token, ...], ...}``)."""
    if not isinstance(parameters, dict):
        return None
    args, kwargs = parameters.get("args") or [], parameters.get("kwargs") or {}
    token = args[1] if len(args) > 1 else kwargs.get("token")
    return token if isinstance(token, str) else None


def unfinished(url: str) -> int:
    """Requests and processes left (a drained queue has none)."""
    (row,) = rows(
        url,
        "SELECT (SELECT count(*) FROM errands_request)"
        " + (SELECT count(*) FROM errands_process) AS n",
    )
    return int(row["n"])


def timestamp(value: str | None) -> float | None:
    if value is None:
        return None
    return datetime.datetime.fromisoformat(value).timestamp()


@dataclasses.dataclass
class Accounting:
    jobs: int = 0
    results: int = 0
    executions: int = 0
    retries: int = 0
    duplicates_explained: int = 0  # executions beyond a job's first, each its own attempt
    by_status: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    #: Why attempts were LOST: their error texts, uuids and figures masked.
    lost_why: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    problems: list[str] = dataclasses.field(default_factory=list)
    #: Executions that started after their attempt had been recorded LOST (a worker
    #: running a job it held although a peer had rescued it: issue 18, item 2).
    after_rescue: list[Execution] = dataclasses.field(default_factory=list)
    #: Attempts recorded LOST whose execution ran to its end (late outcomes).
    late: list[tuple[dict[str, Any], Execution]] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        return (
            f"jobs {self.jobs}, results {self.results} ({statuses}), executions"
            f" {self.executions}, retries {self.retries}, duplicates explained"
            f" {self.duplicates_explained}, unexplained {len(self.problems)},"
            f" started after their rescue {len(self.after_rescue)},"
            f" late outcomes of LOST attempts {len(self.late)}"
            + (f"; LOST because {dict(self.lost_why)}" if self.lost_why else "")
        )


def account(url: str, trail: Path, retries: dict[str, int]) -> Accounting:
    """Check every job of ``retries`` (token: retries it was enqueued with): problems
    are listed in ``Accounting.problems`` (empty when all holds)."""
    acc = Accounting(jobs=len(retries))
    chains = results_by_token(url)
    runs: dict[str, list[Execution]] = collections.defaultdict(list)
    for execution in executions(trail):
        runs[execution.token].append(execution)
    left = unfinished(url)
    if left:
        acc.problems.append(f"{left} requests or processes left unfinished")
    for token in set(chains) - set(retries):
        acc.problems.append(f"results of a job never enqueued: {token}")
    for token, allowed in retries.items():
        chain = chains.get(token, [])
        ran = runs.get(token, [])
        acc.results += len(chain)
        acc.executions += len(ran)
        _account_job(acc, token, allowed, chain, ran)
    return acc


def _account_job(
    acc: Accounting, token: str, allowed: int, chain: list[dict[str, Any]], ran: list[Execution]
) -> None:
    problem = acc.problems.append
    if not chain:
        problem(f"{token}: no result")
        return
    finals = [r for r in chain if r["retry_request_uuid"] is None]
    if len(finals) != 1:
        problem(f"{token}: {len(finals)} final results: {[r['status'] for r in chain]}")
    for result in chain:
        acc.by_status[result["status"]] += 1
        if result["status"] == "LOST":
            acc.lost_why[_masked(result.get("error") or "")] += 1
        if result["retries"] != allowed:
            problem(f"{token}: retries {result['retries']}, enqueued with {allowed}")
    requests = {r["request_uuid"] for r in chain}
    for result in chain:
        if result["retry_request_uuid"] is None:
            final = result
            if final["status"] not in FINAL_STATUSES:
                problem(f"{token}: ends {final['status']}")
            elif (
                final["status"] in ("ERRORED", "LOST")
                and final["retry_attempt"] < allowed
                and not late_success_noted(final)
            ):
                problem(
                    f"{token}: ends {final['status']} on attempt {final['retry_attempt'] + 1}"
                    f" of {allowed + 1}, never retried"
                )
            continue
        acc.retries += 1
        if result["status"] not in ("ERRORED", "LOST"):
            problem(f"{token}: a {result['status']} result was retried")
        if result["retry_request_uuid"] not in requests:
            problem(f"{token}: retried as a request that has no result")
    attempts = [r["retry_attempt"] for r in chain]
    if attempts != list(range(len(chain))) or len(chain) > allowed + 1:
        problem(f"{token}: attempts {attempts}, {allowed} retries allowed")
    by_process = {r["process_uuid"]: r for r in chain}
    seen: set[str] = set()
    for execution in ran:
        attempt = by_process.get(execution.process_uuid)
        if execution.process_uuid in seen:
            problem(f"{token}: attempt {execution.process_uuid} executed twice")
        elif attempt is None:
            problem(f"{token}: an execution ({execution.process_uuid}) no result accounts for")
        seen.add(execution.process_uuid)
        if attempt is None:
            continue
        if attempt["status"] in ("SUCCESSFUL", "ERRORED") and attempt["started_at"] is None:
            problem(f"{token}: {attempt['status']} without a start")
        if attempt["status"] == "LOST":
            lost_at = timestamp(attempt["created_at"]) or 0.0
            if execution.started > lost_at:
                acc.after_rescue.append(execution)
            if execution.ended is not None:
                acc.late.append((attempt, execution))
    acc.duplicates_explained += max(len(seen & set(by_process)) - 1, 0)
    for result in chain:
        executed = result["process_uuid"] in seen
        timed_out = result.get("error_type") == "errands.worker.JobTimeout"
        if result["status"] in ("SUCCESSFUL", "ERRORED") and not executed and not timed_out:
            problem(f"{token}: {result['status']} attempt {result['retry_attempt']} never ran")


#: Columns a result's annotation of a late outcome is not in.
_NOT_NOTES = {"parameters", "return_value", "job_class", "status", "source", "queue"}


def late_success_noted(result: dict[str, Any]) -> bool:
    """Whether a LOST result says its job ran to success after all (issue 18, item 4:
    "the LOST result annotated with what really happened"): any of its other columns
    names the success. A LOST whose retry was withdrawn for it ends the job."""
    if result["status"] != "LOST":
        return False
    if result.get("return_value") is not None:
        return True  # the late run's return value, kept
    notes = [str(v) for k, v in result.items() if k not in _NOT_NOTES and v not in (None, "")]
    return any(re.search(r"succe(ss|ed)", note, re.IGNORECASE) for note in notes)


def _masked(text: str) -> str:
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<uuid>", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?( UTC)?", "<time>", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)[:160]


def new_token() -> str:
    return uuid.uuid4().hex[:12]
