"""The FastAPI, Starlette and Flask examples (examples/), with a real worker, on both backends."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from conftest import SERVER_URL
from errands.testing.databases import BackgroundWorker, TestDatabases

pytestmark = pytest.mark.slow  # each example app runs a real worker (not in scripts/test --fast)

EXAMPLES = Path(__file__).parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
# Worker children import the examples' jobs modules too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(EXAMPLES), os.environ.get("PYTHONPATH", "")) if p
)

FRAMEWORKS = ["fastapi_example", "starlette_example", "flask_example"]
# A test worker's children load the jobs its settings name and those this process had
# registered when it started (errands.testing.databases.worker_settings), as a real
# worker loads those of its 'import' setting: register them before any worker starts.
for _example in FRAMEWORKS:
    importlib.import_module(f"{_example}.jobs")
TEXT = "the cat and the hat"


@pytest.fixture(params=["postgresql", "sqlite"])
def errands_test_databases(request: pytest.FixtureRequest) -> Iterator[TestDatabases]:
    """Overrides the plugin's fixture: every test below runs on both backends."""
    databases = TestDatabases(SERVER_URL if request.param == "postgresql" else None)
    try:
        yield databases
    finally:
        databases.close()


def client_of(example: str) -> TestClient:
    module: Any = importlib.import_module(f"{example}.app")
    # localhost: a name the mounted dashboard answers for by default (not testserver).
    return TestClient(module.app, base_url="http://localhost")


@pytest.mark.parametrize("example", FRAMEWORKS)
def test_a_job_enqueued_by_a_handler_runs_on_the_worker(
    example: str, errands_worker: BackgroundWorker
) -> None:
    client = client_of(example)
    submitted = client.post("/documents", json={"text": TEXT})
    assert submitted.status_code == 202
    job_id = submitted.json()["job"]
    answer = client.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    assert answer == {"status": "SUCCESSFUL", "result": {"words": 5, "most_common": "the"}}


@pytest.mark.parametrize("example", FRAMEWORKS)
def test_a_job_waiting_for_a_worker_is_reported_pending(
    example: str, errands_database: str
) -> None:
    client = client_of(example)
    job_id = client.post("/documents", json={"text": TEXT}).json()["job"]
    assert client.get(f"/jobs/{job_id}", params={"wait": 0.1}).json() == {"status": "PENDING"}
    assert client.get("/jobs/00000000-0000-0000-0000-000000000000").status_code == 404


@pytest.mark.parametrize("example", FRAMEWORKS)
def test_the_dashboard_is_behind_the_applications_login(
    example: str, errands_database: str
) -> None:
    client = client_of(example)
    assert client.get("/errands/", follow_redirects=False).status_code != 200
    assert client.post("/login", data={"password": "wrong"}).status_code == 403
    assert client.get("/errands/", follow_redirects=False).status_code != 200
    assert client.post("/login", data={"password": "change-me"}).status_code == 200
    overview = client.get("/errands/", follow_redirects=False)
    assert overview.status_code == 200 and "errands" in overview.text
