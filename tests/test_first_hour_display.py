"""What a newcomer reads in the CLI and the dashboard (issue 19 items 6, 8 and 9):
one way to count attempts, times that name their zone, schedules that tell the
occurrence queued from the last run, and a ``source`` that names where a job
came from. CLI through click's CliRunner or as a real process; the dashboard
through Starlette's TestClient; each on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import uuid
import zoneinfo
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import sample_jobs
from click.testing import CliRunner, Result
from dashboard_rows import claim, enqueue, failed, finish
from starlette.testclient import TestClient

import errands
from errands import api, formatting, scheduler, settings
from errands.backends import Backend
from errands.cli import cli
from errands.dashboard import create_app
from errands.jobs import EnqueueOptions, enqueue_many
from errands.models import JobRequest, JobResult, Status

pytestmark = pytest.mark.usefixtures("cli_state_restored")  # the CLI sets process-wide state

ERRANDS = str(Path(sys.executable).with_name("errands"))
PASSWORD = "correct horse battery staple"
#: A time as errands shows it: to the second, then its zone (a name, or an offset).
SHOWN_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?:[A-Za-z]+|[+-]\d\d:\d\d)"
EVERY_MINUTE = [["sample_jobs.Noop", "* * * * *"]]


def invoke(url: str, *args: str, **kwargs: Any) -> Result:
    result = CliRunner().invoke(cli, ["--database-url", url, *args], **kwargs)
    assert result.exit_code == 0, result.output
    return result


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    """The dashboard, logged in."""
    with TestClient(create_app(password=PASSWORD), base_url="http://localhost") as client:
        token = csrf_token(client.get("/login").text)
        client.post("/login", data={"password": PASSWORD, "csrf_token": token, "next": "/"})
        yield client


def post(client: TestClient, path: str, **data: str) -> Any:
    token = csrf_token(client.get("/results").text)
    return client.post(path, data={"csrf_token": token, **data}, follow_redirects=False)


def text_of(html: str) -> str:
    """The page's text, tags dropped and white space collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def finished(backend: Backend, *, retries: int, retry_attempt: int = 0) -> JobResult:
    """One ERRORED result of a job allowed ``retries``, at this attempt."""
    queue = f"q{uuid.uuid4().hex[:8]}"
    enqueue(backend, queue=queue, retries=retries, retry_attempt=retry_attempt)
    (result,) = finish(backend, claim(backend, queue), Status.ERRORED, error_type="ValueError")
    return result


def schedule_entries() -> list[scheduler.Entry]:
    return scheduler.parse_entries(EVERY_MINUTE)


def run_one_occurrence(backend: Backend) -> JobResult:
    """An occurrence of EVERY_MINUTE enqueued as due now, claimed and finished."""
    earlier = backend.now() - datetime.timedelta(minutes=3)
    scheduler.sync(backend, schedule_entries(), horizon=datetime.timedelta(0), now=earlier)
    (process,) = claim(backend, "default")
    (result,) = finish(backend, [process])
    return result


# -- attempts: one numbering everywhere ---------------------------------------------------


def test_the_first_attempt_of_a_job_without_retries_is_1_of_1(backend: Backend) -> None:
    assert formatting.attempt_text(finished(backend, retries=0)) == "1 of 1"


def test_a_first_retry_of_three_is_attempt_2_of_4(backend: Backend) -> None:
    assert formatting.attempt_text(finished(backend, retries=3, retry_attempt=1)) == "2 of 4"


def test_a_retry_beyond_the_allowance_reads_as_a_manual_retry(backend: Backend) -> None:
    shown = formatting.attempt_text(finished(backend, retries=0, retry_attempt=1))
    assert shown == "2 (manual retry)"


def test_cli_tables_show_the_attempt_of_those_allowed(db_url: str, backend: Backend) -> None:
    result = finished(backend, retries=2)
    table = invoke(db_url, "results").output
    (row,) = [line for line in table.splitlines() if str(result.uuid) in line]
    assert " 1 of 3 " in row
    assert "1/3" not in row and "0/2" not in row


def test_cli_retry_of_a_job_without_retries_is_a_manual_retry(
    db_url: str, backend: Backend
) -> None:
    bad = failed(backend)  # sample_jobs.Fail, no retries
    said = invoke(db_url, "--import", "sample_jobs", "retry", str(bad.uuid), "--delay", "600")
    assert "again as attempt 2 (manual retry)" in said.output
    table = invoke(db_url, "requests").output
    assert "2 (manual retry)" in table and "2/1" not in table


def test_cli_json_adds_the_attempt_counted_from_1(db_url: str, backend: Backend) -> None:
    result = finished(backend, retries=3, retry_attempt=1)
    (listed,) = json.loads(invoke(db_url, "results", "--json").stdout)
    one = json.loads(invoke(db_url, "get", str(result.uuid), "--json").stdout)
    for data in (listed, one):
        assert (data["retry_attempt"], data["retries"], data["attempt"]) == (1, 3, 2)
        keys = list(data)
        assert keys.index("attempt") == keys.index("retry_attempt") + 1


def test_errands_get_shows_the_attempt_in_words(db_url: str, backend: Backend) -> None:
    result = finished(backend, retries=3, retry_attempt=1)
    shown = invoke(db_url, "get", str(result.uuid)).output
    assert re.search(r"^attempt\s+2 of 4$", shown, re.MULTILINE), shown


def test_dashboard_lists_show_the_attempt_of_those_allowed(
    client: TestClient, backend: Backend
) -> None:
    finished(backend, retries=2)
    cells = re.findall(r'<td class="num">([^<]*)</td>', client.get("/results").text)
    assert "1 of 3" in cells and "0/2" not in cells


def test_dashboard_job_page_shows_the_same_attempt(client: TestClient, backend: Backend) -> None:
    result = finished(backend, retries=0)
    page = text_of(client.get(f"/jobs/{result.uuid}").text)
    assert "Attempt 1 of 1" in page
    assert "retry attempt" not in page


def test_dashboard_job_page_of_a_manual_retry(client: TestClient, backend: Backend) -> None:
    result = finished(backend, retries=0, retry_attempt=1)
    assert "Attempt 2 (manual retry)" in text_of(client.get(f"/jobs/{result.uuid}").text)


# -- times that name their zone -----------------------------------------------------------


def test_a_time_in_utc_names_utc() -> None:
    moment = datetime.datetime(2026, 12, 7, 11, 20, 3, 999, tzinfo=datetime.UTC)
    assert formatting.display_time(moment, datetime.UTC) == "2026-12-07 11:20:03 UTC"


def test_a_time_in_a_named_zone_names_it() -> None:
    moment = datetime.datetime(2026, 12, 7, 11, 20, 3, tzinfo=datetime.UTC)
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    assert formatting.display_time(moment, paris) == "2026-12-07 12:20:03 CET"


def test_a_zone_without_a_name_is_written_as_its_offset() -> None:
    moment = datetime.datetime(2026, 12, 7, 11, 20, 3, tzinfo=datetime.UTC)
    assert formatting.display_time(moment, zoneinfo.ZoneInfo("Asia/Dubai")).endswith(" +04:00")
    west = datetime.timezone(-datetime.timedelta(hours=3, minutes=30))
    assert formatting.display_time(moment, west) == "2026-12-07 07:50:03 -03:30"


def test_cli_tables_show_local_times_with_their_zone(tmp_path: Path) -> None:
    """A real process in Paris's zone, on a real SQLite file."""
    url = f"sqlite:///{tmp_path / 'tz.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    env.update(TZ="Europe/Paris", ERRANDS_DATABASE_URL=url)

    def errands_command(*args: str) -> str:
        done = subprocess.run(
            [ERRANDS, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    errands_command("migrate")
    errands_command("--import", "sample_jobs", "run", "sample_jobs.Noop", "--delay", "60")
    table = errands_command("requests")
    zone = datetime.datetime.now(zoneinfo.ZoneInfo("Europe/Paris")).tzname()
    assert len(re.findall(rf"\d\d:\d\d:\d\d {zone}\b", table)) == 2, table


def test_errands_get_shows_times_with_their_zone(db_url: str, backend: Backend) -> None:
    result = finished(backend, retries=0)
    shown = invoke(db_url, "get", str(result.uuid)).output
    for name in ("requested_at", "started_at", "ended_at", "created_at"):
        assert re.search(rf"^{name}\s+{SHOWN_TIME}$", shown, re.MULTILINE), shown


def test_cli_json_keeps_iso_times_with_their_offset(db_url: str, backend: Backend) -> None:
    result = finished(backend, retries=0)
    data = json.loads(invoke(db_url, "get", str(result.uuid), "--json").stdout)
    assert datetime.datetime.fromisoformat(data["ended_at"]).utcoffset() is not None


def test_dashboard_times_are_written_in_utc_and_say_so(
    client: TestClient, backend: Backend
) -> None:
    enqueue(backend, delay=3600)
    page = client.get("/requests").text
    (shown,) = re.findall(r'<time datetime="([^"]+)" title="[^"]+">([^<]+)</time>', page)
    iso, text = shown
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text)
    assert text == formatting.display_time(datetime.datetime.fromisoformat(iso), datetime.UTC)


# -- schedules: the queued occurrence apart from the last run -----------------------------


def test_schedule_shows_a_queued_occurrence_as_queued_not_as_run(
    db_url: str, backend: Backend
) -> None:
    scheduler.sync(backend, schedule_entries(), horizon=datetime.timedelta(0))
    (queued,) = api.requests()
    table = invoke(db_url, "schedule", env={"ERRANDS_SCHEDULE": json.dumps(EVERY_MINUTE)}).output
    header, row = table.splitlines()
    assert "QUEUED FOR" in header and "LAST RUN AT" not in header
    queued_for = header.index("QUEUED FOR")
    assert row[queued_for:].startswith(formatting.local_time(queued.start_at))
    assert row.split()[-2:] == ["-", "-"]  # never ran: no last run, no outcome


def test_schedule_shows_the_last_run_and_the_next_queued(db_url: str, backend: Backend) -> None:
    ran = run_one_occurrence(backend)
    scheduler.sync(backend, schedule_entries(), horizon=datetime.timedelta(0))
    (queued,) = api.requests()
    env = {"ERRANDS_SCHEDULE": json.dumps(EVERY_MINUTE)}
    (entry,) = json.loads(invoke(db_url, "schedule", "--json", env=env).stdout)
    assert entry["queued"]["request_uuid"] == str(queued.uuid)
    assert entry["last_run"]["uuid"] == str(ran.uuid)
    assert entry["last_run"]["outcome"] == "SUCCESSFUL"
    assert ran.started_at is not None
    assert datetime.datetime.fromisoformat(entry["last_run"]["started_at"]) == ran.started_at
    row = invoke(db_url, "schedule", env=env).output.splitlines()[1]
    assert formatting.local_time(ran.started_at) in row
    assert row.endswith("SUCCESSFUL")


def test_dashboard_schedules_page_shows_queued_and_last_run(
    client: TestClient, backend: Backend
) -> None:
    errands.configure(schedule=EVERY_MINUTE)
    try:
        ran = run_one_occurrence(backend)
        scheduler.sync(backend, schedule_entries(), horizon=datetime.timedelta(0))
        (queued,) = api.requests()
        page = client.get("/schedules").text
    finally:
        errands.configure(schedule=None)
    queued_cell = re.search(r'<td data-role="queued">(.*?)</td>', page, re.DOTALL)
    last_cell = re.search(r'<td data-role="last-run">(.*?)</td>', page, re.DOTALL)
    assert queued_cell and last_cell
    assert f"/jobs/{queued.uuid}" in queued_cell.group(1)
    assert f"/jobs/{ran.uuid}" in last_cell.group(1) and "successful" in last_cell.group(1)


# -- source: where a job came from --------------------------------------------------------


def test_a_scheduled_job_names_its_entry(backend: Backend) -> None:
    (entry,) = schedule_entries()
    scheduler.sync(backend, [entry], horizon=datetime.timedelta(0))
    (request,) = api.requests()
    assert request.source == f"schedule:{entry.key}"


def test_errands_run_names_the_command(db_url: str) -> None:
    printed = invoke(db_url, "--import", "sample_jobs", "run", "sample_jobs.Noop").output
    request = api.get(printed.strip())
    assert isinstance(request, JobRequest)
    assert request.source == "cli:errands run"


def test_errands_retry_names_the_command(db_url: str, backend: Backend) -> None:
    bad = failed(backend)
    invoke(db_url, "--import", "sample_jobs", "retry", str(bad.uuid))
    (request,) = api.requests()
    assert request.source == "cli:errands retry"


def test_the_dashboards_retry_names_the_dashboard(client: TestClient, backend: Backend) -> None:
    bad = failed(backend)
    post(client, f"/jobs/{bad.uuid}/retry", next="/results")
    (request,) = api.requests()
    assert request.source == "dashboard:retry"
    page = text_of(client.get(f"/jobs/{request.uuid}").text)
    assert "Enqueued from dashboard:retry" in page


def test_the_dashboards_run_now_names_the_schedule_entry(
    client: TestClient, backend: Backend
) -> None:
    errands.configure(schedule=EVERY_MINUTE)
    try:
        (entry,) = schedule_entries()
        post(client, "/schedules/run", key=entry.key)
    finally:
        errands.configure(schedule=None)
    (request,) = api.requests()
    assert request.source == f"dashboard:run schedule:{entry.key}"


def test_the_demo_names_itself(db_url: str, tmp_path: Path) -> None:
    from errands import demo

    demo._enqueue(tmp_path, demo.Tracker(), open(os.devnull, "w"))  # noqa: SIM115
    sources = {request.source for request in api.requests(queue=demo.DEMO_QUEUE, limit=100)}
    assert sources == {"demo"}


def test_user_code_keeps_its_file_and_line(db_url: str) -> None:
    line = sys._getframe().f_lineno + 1
    [request] = enqueue_many([sample_jobs.Noop()])
    assert request is not None and request.source == f"{__file__}:{line}"


def test_user_code_may_name_its_own_source(db_url: str) -> None:
    [request] = enqueue_many([sample_jobs.Noop()], options=EnqueueOptions(source="import:nightly"))
    assert request is not None and request.source == "import:nightly"


def test_errands_get_shows_the_source(db_url: str, backend: Backend) -> None:
    bad = failed(backend)
    invoke(db_url, "--import", "sample_jobs", "retry", str(bad.uuid))
    (request,) = api.requests()
    shown = invoke(db_url, "get", str(request.uuid)).output
    assert re.search(r"^source\s+cli:errands retry$", shown, re.MULTILINE), shown


# -- the demo tests' process markers are not reported as settings -------------------------


def test_test_markers_are_never_unknown_settings() -> None:
    marker = f"ERRANDS_TEST_DEMO_KEEP_{uuid.uuid4().hex.upper()}"
    assert settings.unknown_environment({marker: "1"}) == []
