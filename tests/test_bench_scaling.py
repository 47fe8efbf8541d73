"""bench/scaling.py (issue 24): its --help, and a quick run with 1 and 2 worker groups."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SERVER_URL

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "scaling.py"


def test_scaling_help_explains_each_measurement() -> None:
    shown = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--database-url", "--workers", "--quick", "--runs", "--json"):
        assert option in shown
    for measurement in ("io:", "noop:", "latency:", "idle:", "pg_stat_activity", "WAL"):
        assert measurement in shown


@pytest.mark.slow
@pytest.mark.postgres_only
def test_scaling_quick_run_measures_each_group_count(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--database-url",
            SERVER_URL,
            "--workers",
            "1,2",
            "--quick",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    rows = {row["groups"]: row for row in report["results"]}
    assert set(rows) == {1, 2}
    for groups, row in rows.items():
        assert row["io_rate"] > 0 and row["noop_rate"] > 0
        assert row["pickup_samples"] == 10
        assert row["max_connections"] >= groups  # each group holds a connection at least
        assert row["io_drains"][0]["failed"] == 0
        assert sum(row["io_drains"][0]["per_group_jobs"]) == row["io_drains"][0]["jobs"]
