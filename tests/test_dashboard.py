"""The dashboard over HTTP (Starlette's TestClient), on each backend: authentication,
CSRF, escaping, read-only mode, every page and every action."""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Callable, Iterator
from html import unescape as html_unescape
from typing import Any

import pytest
from dashboard_rows import claim, enqueue, failed, finish, results
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from starlette.testclient import TestClient

import errands
from conftest import wait_for
from errands import api, scheduler, settings
from errands.backends import Backend
from errands.dashboard import create_app, serve
from errands.dashboard.security import (
    LOGIN_FAILURES_ALLOWED,
    LOGIN_LOCKOUT_SECONDS,
    LoginThrottle,
)
from errands.errors import ConfigurationError
from errands.models import JobProcess, JobRequest, JobResult, Kind, Selection, Status

PASSWORD = "correct horse battery staple"
SCRIPT = "<script>alert('owned')</script>"
PAGES = ("/", "/requests", "/processes", "/results", "/workers", "/schedules")
ACTIONS = (
    "/jobs/{uuid}/retry",
    "/jobs/{uuid}/cancel",
    "/jobs/{uuid}/delete",
    "/bulk",
    "/queues/pause",
    "/queues/resume",
    "/schedules/run",
)

Client = Callable[..., TestClient]


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def log_in(client: TestClient, password: str = PASSWORD, prefix: str = "") -> Any:
    token = csrf_token(client.get(f"{prefix}/login").text)
    return client.post(
        f"{prefix}/login",
        data={"password": password, "csrf_token": token, "next": f"{prefix}/"},
        follow_redirects=False,
    )


def post(client: TestClient, path: str, **data: str) -> Any:
    """An action as the dashboard's own forms send it: with the page's CSRF token."""
    token = csrf_token(client.get("/results").text)
    return client.post(path, data={"csrf_token": token, **data}, follow_redirects=False)


@pytest.fixture
def make_client(db_url: str) -> Iterator[Client]:
    clients: list[TestClient] = []

    def make(**options: Any) -> TestClient:
        options.setdefault("password", PASSWORD)
        client = TestClient(create_app(**options), base_url="http://localhost")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Client) -> TestClient:
    """Logged in with the password."""
    client = make_client()
    assert log_in(client).status_code == 303
    return client


# -- authentication -------------------------------------------------------------------


def test_every_page_requires_logging_in(make_client: Client) -> None:
    client = make_client()
    for path in PAGES:
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=")
    fragment = client.get("/results", headers={"X-Errands-Fragment": "1"})
    assert fragment.status_code == 401
    assert client.get("/jobs/" + str(uuid.uuid4()), follow_redirects=False).status_code == 303
    assert client.get("/static/dashboard.css").status_code == 200


def test_a_wrong_password_is_refused(make_client: Client) -> None:
    client = make_client()
    refused = log_in(client, password="guess")
    assert refused.status_code == 303
    assert refused.headers["location"].startswith("/login")
    assert "wrong password" in client.get(refused.headers["location"]).text
    assert client.get("/", follow_redirects=False).status_code == 303
    accepted = log_in(client)
    assert accepted.headers["location"] == "/"
    assert client.get("/").status_code == 200


def test_password_guessing_is_throttled(make_client: Client) -> None:
    client = make_client()
    for _ in range(LOGIN_FAILURES_ALLOWED):
        assert log_in(client, password="guess").status_code == 303
    refused = log_in(client)  # the right password, but too late
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= LOGIN_LOCKOUT_SECONDS
    assert "too many wrong passwords" in refused.text
    assert client.get("/", follow_redirects=False).status_code == 303
    # Another dashboard process (its own count) lets the right password in.
    assert log_in(make_client()).headers["location"] == "/"


def test_a_login_throttle_waits_out_its_lockout_and_forgets_on_success() -> None:
    now = [0.0]
    throttle = LoginThrottle(allowed=2, lockout=60, clock=lambda: now[0])
    throttle.failed("a")
    assert throttle.wait_seconds("a") == 0  # one failure: no wait yet
    throttle.failed("a")
    assert throttle.wait_seconds("a") == 60
    assert throttle.wait_seconds("b") == 0  # per address
    now[0] = 45
    assert throttle.wait_seconds("a") == 15
    now[0] = 61
    assert throttle.wait_seconds("a") == 0
    throttle.failed("a")  # a fresh start after the wait: one failure again
    assert throttle.wait_seconds("a") == 0
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.wait_seconds("a") == 0  # the success forgot the earlier failure


def test_logging_in_needs_the_csrf_token_of_the_session(make_client: Client) -> None:
    client = make_client()
    client.get("/login")
    response = client.post("/login", data={"password": PASSWORD}, follow_redirects=False)
    assert response.status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 303


def test_logging_out_ends_the_session(client: TestClient) -> None:
    response = post(client, "/logout")
    assert response.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


def test_a_login_redirects_only_inside_the_dashboard(make_client: Client) -> None:
    client = make_client()
    token = csrf_token(client.get("/login").text)
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        response = client.post(
            "/login",
            data={"password": PASSWORD, "csrf_token": token, "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == "/", target
        token = csrf_token(client.get("/login").text)  # logging in renews the token


def test_the_password_comes_from_the_settings(db_url: str) -> None:
    errands.configure(dashboard_password="from-settings")
    try:
        client = TestClient(create_app(), base_url="http://localhost")
        assert log_in(client, password="from-settings").headers["location"] == "/"
    finally:
        errands.configure(dashboard_password=None)


def test_without_any_authentication_the_app_is_not_built(db_url: str) -> None:
    with pytest.raises(ConfigurationError, match="ERRANDS_DASHBOARD_PASSWORD"):
        create_app()


def test_serving_without_authentication_is_refused_beyond_localhost(db_url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"0\.0\.0\.0"):
        serve(host="0.0.0.0", insecure_no_auth=True)


def test_an_application_callable_decides_who_gets_in(make_client: Client) -> None:
    def authenticate(request: Request) -> bool:
        return request.headers.get("x-user") == "ops"

    client = make_client(password="", authenticate=authenticate)
    assert client.get("/", headers={"x-user": "ops"}).status_code == 200
    assert client.get("/", headers={"x-user": "someone"}).status_code == 403


def test_an_async_authentication_callable_is_awaited(make_client: Client) -> None:
    async def authenticate(request: Request) -> bool:
        return request.headers.get("x-user") == "ops"

    client = make_client(password="", authenticate=authenticate)
    assert client.get("/workers", headers={"x-user": "ops"}).status_code == 200
    assert client.get("/workers").status_code == 403


def test_insecure_no_auth_opens_every_page(make_client: Client) -> None:
    client = make_client(password="", insecure_no_auth=True)
    for path in PAGES:
        assert client.get(path).status_code == 200, path


# -- CSRF and methods ------------------------------------------------------------------


def test_actions_without_the_csrf_token_are_refused(client: TestClient) -> None:
    missing = client.post("/queues/pause", data={"queue": "mail"})
    assert missing.status_code == 403
    wrong = client.post("/queues/pause", data={"queue": "mail", "csrf_token": "forged"})
    assert wrong.status_code == 403
    assert api.paused_queues() == []
    assert post(client, "/queues/pause", queue="mail").status_code == 303
    assert api.paused_queues() == ["mail"]


def test_the_token_of_another_session_is_refused(client: TestClient, make_client: Client) -> None:
    other = make_client()
    log_in(other)
    foreign_token = csrf_token(other.get("/").text)
    response = client.post("/queues/pause", data={"queue": "mail", "csrf_token": foreign_token})
    assert response.status_code == 403
    assert api.paused_queues() == []


def test_a_post_from_another_origin_is_refused_even_with_the_token(client: TestClient) -> None:
    token = csrf_token(client.get("/").text)
    response = client.post(
        "/queues/pause",
        data={"queue": "mail", "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert api.paused_queues() == []


@pytest.mark.slow
def test_get_never_changes_anything(client: TestClient, backend: Backend) -> None:
    result = failed(backend)
    (request,) = enqueue(backend, 1, queue="waiting")
    before = snapshot(backend)
    for action in ACTIONS:
        for target in (result.uuid, request.uuid):
            path = action.format(uuid=target) + "?queue=waiting&action=delete&kind=result"
            assert client.get(path).status_code in (405, 200), path
    for path in PAGES:
        client.get(path)
    client.get(f"/jobs/{result.uuid}")
    client.get("/bulk?action=delete&kind=result")
    client.get("/bulk?action=cancel&kind=request")
    assert snapshot(backend) == before


def snapshot(backend: Backend) -> tuple[int, int, int, list[str]]:
    counts = tuple(backend.count(kind=kind, selection=Selection()) for kind in Kind)
    return (*counts, backend.paused_queues())  # type: ignore[return-value]


# -- escaping ---------------------------------------------------------------------------


@pytest.mark.slow
def test_job_data_is_escaped_on_every_page(client: TestClient, backend: Backend) -> None:
    result = failed(backend, SCRIPT, queue=SCRIPT)
    enqueue(backend, 1, queue=SCRIPT, parameters={"args": [SCRIPT], "kwargs": {}})
    api.pause_queue(SCRIPT)
    pages = [*PAGES, f"/jobs/{result.uuid}", "/results?status=ERRORED", "/requests?state=pending"]
    for path in pages:
        html = client.get(path).text
        assert SCRIPT not in html, path
        assert "alert(" not in html or "&lt;script&gt;" in html, path
    detail = client.get(f"/jobs/{result.uuid}").text
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in detail


def test_pages_forbid_inline_scripts_and_framing(client: TestClient) -> None:
    headers = client.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"


# -- read-only -----------------------------------------------------------------------------


def test_read_only_mode_refuses_every_action_and_offers_none(
    make_client: Client, backend: Backend
) -> None:
    result = failed(backend)
    client = make_client(read_only=True)
    log_in(client)
    page = client.get(f"/jobs/{result.uuid}").text
    assert "read-only" in page
    assert "/retry" not in page
    assert "Pause" not in client.get("/").text
    token = csrf_token(page)
    for action in ACTIONS:
        path = action.format(uuid=result.uuid)
        response = client.post(path, data={"csrf_token": token, "queue": "mail"})
        assert response.status_code == 403, path
    assert api.paused_queues() == []
    assert api.get(result.uuid) == result


def test_read_only_comes_from_the_settings(make_client: Client) -> None:
    errands.configure(dashboard_read_only=True)
    try:
        settings.reset()
        client = make_client()
        log_in(client)
        assert post(client, "/queues/pause", queue="mail").status_code == 403
    finally:
        errands.configure(dashboard_read_only=None)


# -- pages ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_page_renders_with_jobs_in_every_state(client: TestClient, backend: Backend) -> None:
    results(backend, 3)
    failed(backend)
    enqueue(backend, 2, queue="running")
    claim(backend, "running")
    enqueue(backend, 1, queue="later", delay=3600)
    api.pause_queue("later")
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 200, path
    overview = client.get("/?window=1h").text
    assert 'data-count="SUCCESSFUL">3<' in overview
    assert 'data-count="ERRORED">1<' in overview
    assert "paused" in overview
    assert "later" in client.get("/requests?state=scheduled").text


def test_a_fragment_request_gets_only_the_live_part(client: TestClient, backend: Backend) -> None:
    results(backend, 2)
    page = client.get("/results").text
    fragment = client.get("/results", headers={"X-Errands-Fragment": "1"}).text
    assert page.startswith("<!doctype html>")
    assert "<html" not in fragment
    assert "<table" in fragment
    assert "Filter" not in fragment


def test_listings_page_through_every_row_by_keyset(client: TestClient, backend: Backend) -> None:
    written = {str(r.uuid) for r in results(backend, 120)}
    seen: list[str] = []
    path = "/results"
    while path:
        html = client.get(path).text
        seen += re.findall(r'<tr data-uuid="([0-9a-f-]+)"', html)
        found = re.search(r'<a href="([^"]+)" rel="next">', html)
        path = "/results" + found.group(1).replace("&amp;", "&") if found else ""
    assert len(seen) == 120
    assert set(seen) == written


def listed(html: str) -> list[str]:
    """The uuids of a listing page's rows, in the order shown."""
    return re.findall(r'<tr data-uuid="([0-9a-f-]+)"', html)


def pager_link(html: str, rel: str) -> str | None:
    """The query string of the pager's link with this ``rel`` (next, prev), if shown."""
    found = re.search(rf'<a href="([^"]+)" rel="{rel}">', html)
    return html_unescape(found.group(1)) if found else None


def paged_rows(backend: Backend, listing: str) -> set[str]:
    """130 rows of queue "mail" (three pages: 50, 50, 30) among rows of another queue,
    written in several batches so that both sort times and uuids order them."""
    if listing == "results":
        rows: list[Any] = [*results(backend, 60, queue="mail"), *results(backend, 70, queue="mail")]
        results(backend, 12, queue="other")
    elif listing == "processes":
        enqueue(backend, 130, queue="mail")
        enqueue(backend, 12, queue="other")
        rows = claim(backend, "mail", limit=60)
        claim(backend, "other")
        rows += claim(backend, "mail")
    else:
        rows = [*enqueue(backend, 70, queue="mail"), *enqueue(backend, 60, queue="mail", delay=60)]
        enqueue(backend, 12, queue="other", delay=30)
    return {str(row.uuid) for row in rows}


@pytest.mark.parametrize("order", ["", "reverse"])
@pytest.mark.parametrize("listing", ["results", "requests", "processes"])
@pytest.mark.slow
def test_previous_page_steps_back_over_the_pages_gone_forward(
    client: TestClient, backend: Backend, listing: str, order: str
) -> None:
    mail = paged_rows(backend, listing)
    path = f"/{listing}?queue=mail" + ("&order=reverse" if order else "")
    first = client.get(path).text
    assert pager_link(first, "prev") is None
    assert "Previous page" not in first and "First page" not in first
    forward = [first]
    for _ in range(2):
        following = pager_link(forward[-1], "next")
        assert following is not None
        forward.append(client.get(f"/{listing}{following}").text)
    pages = [listed(html) for html in forward]
    assert [len(rows) for rows in pages] == [50, 50, 30]
    assert set(pages[0] + pages[1] + pages[2]) == mail
    assert pager_link(forward[2], "next") is None

    back = forward[2]
    for expected in (pages[1], pages[0]):
        previous = pager_link(back, "prev")
        assert previous is not None
        assert "before=" in previous and "after=" not in previous
        assert "queue=mail" in previous
        assert ("order=reverse" in previous) == bool(order)
        response = client.get(f"/{listing}{previous}")
        assert response.status_code == 200
        back = response.text
        assert listed(back) == expected
    # Back on the first page: exactly as it was, with no way further back.
    assert pager_link(back, "prev") is None
    assert "First page" not in back
    assert pager_link(back, "next") == pager_link(first, "next")


def test_the_page_stepped_back_to_links_on_like_the_one_gone_forward_to(
    client: TestClient, backend: Backend
) -> None:
    paged_rows(backend, "results")
    second = client.get("/results" + (pager_link(client.get("/results").text, "next") or "?"))
    third = client.get("/results" + (pager_link(second.text, "next") or "?")).text
    again = client.get("/results" + (pager_link(third, "prev") or "?")).text
    assert listed(again) == listed(second.text)
    assert pager_link(again, "next") == pager_link(second.text, "next")
    assert pager_link(again, "prev") is not None
    assert "First page" in again


def test_previous_page_of_the_second_lands_on_the_whole_first_page_after_deletions(
    client: TestClient, backend: Backend
) -> None:
    paged_rows(backend, "requests")
    first = client.get("/requests?queue=mail").text
    second = client.get("/requests" + (pager_link(first, "next") or "?")).text
    for gone in listed(first)[:5]:
        backend.delete(kind=Kind.REQUEST, selection=Selection(uuid=uuid.UUID(gone)), limit=1)
    back = client.get("/requests" + (pager_link(second, "prev") or "?")).text
    # Fewer than a page precede the second page now: the first page, filled up as it is.
    assert listed(back) == listed(first)[5:] + listed(second)[:5]
    assert pager_link(back, "prev") is None


@pytest.mark.parametrize(
    "query",
    [
        "before=garbage",
        "before=2026-01-01T00:00:00%2B00:00~not-a-uuid",
        f"before=yesterday~{uuid.UUID(int=1)}",
        f"after=2026-01-01T00:00:00~{uuid.UUID(int=1)}&before=2026-01-01T00:00:00~{uuid.UUID(int=2)}",
    ],
)
def test_a_malformed_previous_page_cursor_is_refused_with_a_reason(
    client: TestClient, query: str
) -> None:
    for listing in ("results", "requests", "processes"):
        response = client.get(f"/{listing}?queue=mail&{query}")
        assert response.status_code == 400, listing
        assert "before: " in response.text
        assert 'value="mail"' in response.text  # the form keeps the filters as given
        assert listed(response.text) == []
    confirm = client.get(f"/bulk?action=delete&kind=result&{query}")
    assert confirm.status_code == 400


def test_filters_narrow_the_listing_and_bad_ones_are_explained(
    client: TestClient, backend: Backend
) -> None:
    ok = results(backend, 2, queue="fast")
    bad = failed(backend)
    listed = client.get("/results?status=ERRORED").text
    assert str(bad.uuid) in listed
    assert str(ok[0].uuid) not in listed
    assert str(ok[1].uuid) in client.get(f"/results?uuid={ok[1].uuid}").text
    assert str(bad.uuid) not in client.get("/results?queue=fast&window=1h").text
    response = client.get("/results?uuid=not-a-uuid")
    assert response.status_code == 400
    assert "uuid: &#39;not-a-uuid&#39; is not a uuid" in response.text


def test_the_job_page_shows_the_traceback_and_links_the_retries(
    client: TestClient, backend: Backend
) -> None:
    first = failed(backend, "first failure")
    retry = api.retry_result(first, delay=3600)
    assert retry is not None
    page = client.get(f"/jobs/{first.uuid}").text
    assert "ValueError: first failure" in page
    assert f'href="/jobs/{retry.uuid}"' in page
    later = client.get(f"/jobs/{retry.uuid}").text
    assert f'href="/jobs/{first.uuid}"' in later
    assert "scheduled" in later
    assert client.get(f"/jobs/{uuid.uuid4()}").status_code == 404


@pytest.mark.slow
def test_the_job_page_shows_when_a_delayed_job_was_due(
    client: TestClient, backend: Backend
) -> None:
    due = backend.now() + datetime.timedelta(seconds=1.2)
    enqueue(backend, queue="delayed", start_at=due)
    enqueue(backend, queue="prompt")
    processes: list[JobProcess] = []
    wait_for(lambda: bool(processes.extend(claim(backend, "delayed")) or processes), timeout=10)
    (delayed,) = finish(backend, processes)
    (prompt,) = finish(backend, claim(backend, "prompt"))
    page = client.get(f"/jobs/{delayed.uuid}").text
    assert "<dt>Due</dt>" in page and "<dt>Waited</dt>" in page
    page = client.get(f"/jobs/{prompt.uuid}").text
    assert "<dt>Due</dt>" not in page and "<dt>Waited</dt>" in page


# -- actions -------------------------------------------------------------------------------


def test_retrying_a_failed_job_enqueues_its_next_attempt(
    client: TestClient, backend: Backend
) -> None:
    result = failed(backend)
    response = post(client, f"/jobs/{result.uuid}/retry", next="/results")
    retried = api.get(result.uuid)
    assert isinstance(retried, JobResult) and retried.retry_request_uuid is not None
    assert response.headers["location"] == f"/jobs/{retried.retry_request_uuid}"
    request = api.get(retried.retry_request_uuid)
    assert isinstance(request, JobRequest) and request.retry_attempt == 1
    assert "retry enqueued" in client.get(response.headers["location"]).text


def test_retrying_a_job_twice_makes_one_attempt_and_says_so(
    client: TestClient, backend: Backend
) -> None:
    result = failed(backend)
    post(client, f"/jobs/{result.uuid}/retry", next="/results")
    first = api.get(result.uuid)
    assert isinstance(first, JobResult) and first.retry_request_uuid is not None
    response = post(client, f"/jobs/{result.uuid}/retry", next="/results")
    page = client.get(response.headers["location"]).text
    assert f"already retried: request {first.retry_request_uuid}" in page
    assert len(api.requests()) == 1


def test_cancelling_a_pending_and_a_running_job(client: TestClient, backend: Backend) -> None:
    (pending,) = enqueue(backend, 1, queue="a")
    enqueue(backend, 1, queue="b")
    (running,) = claim(backend, "b")
    post(client, f"/jobs/{pending.uuid}/cancel")
    cancelled = api.get(pending.uuid)
    assert isinstance(cancelled, JobResult) and cancelled.status == Status.CANCELLED
    post(client, f"/jobs/{running.uuid}/cancel")
    flagged = api.get(running.uuid)
    assert isinstance(flagged, JobProcess) and flagged.cancel_requested


def test_deleting_a_result_and_a_request(client: TestClient, backend: Backend) -> None:
    result = failed(backend)
    (request,) = enqueue(backend, 1, queue="a")
    assert post(client, f"/jobs/{result.uuid}/delete", next="/results").headers["location"] == (
        "/results"
    )
    post(client, f"/jobs/{request.uuid}/delete")
    assert api.get(result.uuid) is None
    assert api.get(request.uuid) is None


def test_bulk_cancel_states_the_count_and_acts_only_on_counted_rows(
    client: TestClient, backend: Backend
) -> None:
    enqueue(backend, 3, queue="mail")
    enqueue(backend, 2, queue="other")
    confirm = client.get("/bulk?action=cancel&kind=request&queue=mail").text
    assert "Cancel 3 requests?" in confirm
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm))
    late = enqueue(backend, 1, queue="mail")  # after the count: left alone
    response = client.post("/bulk", data=form, follow_redirects=False)
    assert response.status_code == 303
    assert api.count(Kind.RESULT, Selection(status=Status.CANCELLED)) == 3
    assert [r.uuid for r in api.requests(queue="mail")] == [late[0].uuid]
    assert len(api.requests(queue="other")) == 2
    assert "cancel: 3 request(s)" in client.get(response.headers["location"]).text


def test_bulk_retry_and_delete_of_results(client: TestClient, backend: Backend) -> None:
    for _ in range(2):
        failed(backend)
    results(backend, 3)
    confirm = client.get("/bulk?action=retry&kind=result&status=ERRORED").text
    assert "Retry 2 results?" in confirm
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm))
    client.post("/bulk", data=form)
    assert len(api.requests()) == 2
    confirm = client.get("/bulk?action=delete&kind=result&status=SUCCESSFUL").text
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm))
    client.post("/bulk", data=form)
    assert api.count(Kind.RESULT, Selection()) == 2


def test_pausing_and_resuming_a_queue(client: TestClient) -> None:
    post(client, "/queues/pause", queue="mail", next="/")
    assert api.paused_queues() == ["mail"]
    assert 'data-queue="mail"' in client.get("/").text
    post(client, "/queues/resume", queue="mail")
    assert api.paused_queues() == []


def test_running_a_scheduled_job_now(make_client: Client) -> None:
    errands.configure(schedule=[["sample_jobs.Echo", "@yearly", {"args": [7]}]])
    try:
        client = make_client()
        log_in(client)
        page = client.get("/schedules").text
        assert "sample_jobs.Echo" in page
        key = re.search(r'name="key" value="([0-9a-f]+)"', page)
        assert key
        response = post(client, "/schedules/run", key=key.group(1))
        (request,) = api.requests()
        assert request.job_class == "sample_jobs.Echo"
        assert response.headers["location"] == f"/jobs/{request.uuid}"
    finally:
        errands.configure(schedule=None)


def test_schedules_show_what_became_of_the_latest_occurrence(
    make_client: Client, backend: Backend
) -> None:
    errands.configure(schedule=[["sample_jobs.Noop", "@yearly"]])
    try:
        current = settings.current()
        entries = scheduler.parse_entries(current.schedule, current.timezone)
        scheduler.sync(backend, entries, horizon=datetime.timedelta(minutes=5), starting=True)
        (occurrence,) = api.requests()
        client = make_client()
        log_in(client)
        page = client.get("/schedules").text
        assert f'href="/jobs/{occurrence.uuid}"' in page
        assert "s-SCHEDULED" in page
    finally:
        errands.configure(schedule=None)


# -- mounting ------------------------------------------------------------------------------


def test_mounted_under_a_prefix_every_link_and_cookie_stays_under_it(db_url: str) -> None:
    host = Starlette(routes=[Mount("/ops/errands", app=create_app(password=PASSWORD))])
    client = TestClient(host, base_url="http://localhost")
    redirect = client.get("/ops/errands/results", follow_redirects=False)
    assert redirect.headers["location"] == "/ops/errands/login?next=%2Fops%2Ferrands%2Fresults"
    response = log_in(client, prefix="/ops/errands")
    assert "Path=/ops/errands" in response.headers["set-cookie"]
    page = client.get("/ops/errands/").text
    assert 'href="/ops/errands/results"' in page
    assert "/ops/errands/static/dashboard.css" in page
    token = csrf_token(page)
    client.post("/ops/errands/queues/pause", data={"queue": "q", "csrf_token": token})
    assert api.paused_queues() == ["q"]


def test_a_plain_asgi_router_can_dispatch_to_it_with_a_root_path(db_url: str) -> None:
    """As a Django project's asgi.py would (see the README)."""
    dashboard = create_app(insecure_no_auth=True)

    async def application(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/errands"):
            scope = dict(scope, root_path=scope.get("root_path", "") + "/errands")
            await dashboard(scope, receive, send)
            return
        raise AssertionError("only the dashboard is routed in this test")

    page = TestClient(application, base_url="http://localhost").get("/errands/workers")
    assert page.status_code == 200
    assert 'href="/errands/schedules"' in page.text


def test_an_unreachable_database_gives_a_page_that_says_so(
    make_client: Client, tmp_path: Any
) -> None:
    client = make_client(password="", insecure_no_auth=True)
    errands.configure(database_url=f"sqlite:///{tmp_path}/missing-directory/errands.db")
    response = client.get("/results")
    assert response.status_code == 503
    assert "missing-directory" in response.text
    assert "errands cannot answer right now" in response.text
