"""``check_health``: database reachable, schema current, fresh workers for the queues."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from staleness import backdate_heartbeat

from conftest import SERVER_URL, database_url
from errands.backends import Backend, open_backend
from errands.health import check_health
from errands.models import WorkerInfo


def register(backend: Backend, queues: list[str]) -> uuid.UUID:
    worker_id = uuid.uuid4()
    backend.register_worker(
        worker=WorkerInfo(worker_id=worker_id, hostname="probe", pid=os.getpid(), queues=queues)
    )
    return worker_id


def test_fresh_worker_serving_all_queues_is_healthy(backend: Backend) -> None:
    register(backend, [])
    report = check_health(["default", "emails"], backend=backend, heartbeat_timeout=60)
    assert report.ok, report.reasons
    assert report.reasons == []
    assert report.workers_fresh == 1
    assert report.schema_version == backend.latest_schema_version()


def test_no_worker_is_unhealthy_with_a_reason(backend: Backend) -> None:
    report = check_health([], backend=backend, heartbeat_timeout=60)
    assert not report.ok
    assert report.reasons == ["no worker heartbeat within 60 s"]


def test_queue_served_by_no_fresh_worker_is_named(backend: Backend) -> None:
    register(backend, ["reports"])
    report = check_health(["reports", "emails"], backend=backend, heartbeat_timeout=60)
    assert report.reasons == ["no worker with a fresh heartbeat serves queue 'emails'"]
    assert check_health(["reports"], backend=backend, heartbeat_timeout=60).ok


def test_stale_worker_is_unhealthy(backend: Backend) -> None:
    worker_id = register(backend, [])
    backdate_heartbeat(backend.url, worker_id, 60)  # silent for a minute
    report = check_health(["default"], backend=backend, heartbeat_timeout=1)
    assert not report.ok
    assert report.reasons == ["no worker heartbeat within 1 s (1 stale worker)"]
    assert (report.workers_fresh, report.workers_stale) == (0, 1)


@pytest.fixture(params=["postgresql", "sqlite"])
def unmigrated(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A reachable database without errands' tables."""
    if request.param == "sqlite":
        b = open_backend(f"sqlite:///{tmp_path / 'empty.db'}")
        yield b
        b.close()
        return
    name = f"errands_health_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    b = open_backend(database_url(SERVER_URL, name))
    try:
        yield b
    finally:
        b.close()
        with psycopg.connect(SERVER_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.slow
def test_missing_schema_is_unhealthy(unmigrated: Backend) -> None:
    report = check_health(["default"], backend=unmigrated, heartbeat_timeout=60)
    assert not report.ok
    assert report.reasons == ["errands' tables do not exist: run `errands migrate`"]
    assert report.schema_version is None


def test_unreachable_database_is_unhealthy(tmp_path: Path) -> None:
    b = open_backend(f"sqlite:///{tmp_path}")  # a directory: SQLite cannot open it
    try:
        report = check_health(["default"], backend=b, heartbeat_timeout=60)
    finally:
        b.close()
    assert not report.ok
    assert len(report.reasons) == 1
    assert report.reasons[0].startswith("database unreachable: BackendError: ")
    assert report.as_json()["ok"] is False
