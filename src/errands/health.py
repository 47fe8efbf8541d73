"""Health of an errands deployment, for container liveness and readiness probes.

Healthy means: the database answers, errands' schema is the version this release
needs, and every queue asked about is served by at least one worker whose heartbeat
is fresh (a worker started without queues serves them all). ``errands health``
exits 0 when healthy and non-zero with the reasons otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from errands.backends.base import Backend
from errands.models import WorkerInfo


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The outcome of :func:`check_health`; ``reasons`` says what is wrong, if anything."""

    reasons: list[str] = field(default_factory=list)
    schema_version: int | None = None
    latest_schema_version: int | None = None
    workers_fresh: int = 0
    workers_stale: int = 0

    @property
    def ok(self) -> bool:
        return not self.reasons

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def check_health(
    queues: Sequence[str], *, backend: Backend, heartbeat_timeout: float
) -> HealthReport:
    """Check the database, the schema and the workers serving ``queues``.

    With no ``queues``, one fresh worker (serving any queue) is enough. A heartbeat
    is fresh when it is younger than ``heartbeat_timeout`` seconds by the database
    clock. Never raises for an unhealthy deployment: failures become reasons.
    """
    try:
        version = backend.schema_version()
        latest = backend.latest_schema_version()
    except Exception as exc:
        return HealthReport(reasons=[f"database unreachable: {_describe(exc)}"])
    if version != latest:
        reason = _schema_reason(version, latest)
        return HealthReport(reasons=[reason], schema_version=version, latest_schema_version=latest)
    try:
        workers = backend.workers(timeout_seconds=heartbeat_timeout)
    except Exception as exc:
        return HealthReport(
            reasons=[f"cannot read worker heartbeats: {_describe(exc)}"],
            schema_version=version,
            latest_schema_version=latest,
        )
    fresh = [w for w in workers if not w.stale]
    return HealthReport(
        reasons=_worker_reasons(queues, fresh, len(workers) - len(fresh), heartbeat_timeout),
        schema_version=version,
        latest_schema_version=latest,
        workers_fresh=len(fresh),
        workers_stale=len(workers) - len(fresh),
    )


def _schema_reason(version: int | None, latest: int) -> str:
    if version is None:
        return "errands' tables do not exist: run `errands migrate`"
    if version < latest:
        return f"schema version {version} is older than {latest}: run `errands migrate`"
    return f"schema version {version} is newer than this errands release knows ({latest})"


def _worker_reasons(
    queues: Sequence[str], fresh: list[WorkerInfo], stale: int, timeout: float
) -> list[str]:
    silent = f"no worker heartbeat within {timeout:g} s"
    if stale:
        silent += f" ({stale} stale worker{'s' if stale != 1 else ''})"
    if not fresh:
        return [silent]
    return [
        f"no worker with a fresh heartbeat serves queue {queue!r}"
        for queue in dict.fromkeys(queues)
        if not any(not w.queues or queue in w.queues for w in fresh)
    ]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
