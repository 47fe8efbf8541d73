"""The dashboard in a real headless Chromium, served by uvicorn over a real database,
with a real worker running the jobs.

Chromium is Debian's (``apt-get install chromium``), driven by Playwright for
Python; Playwright's own browser download is not used. Without Chromium these
tests fail (they do not skip): CI must install it.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from dashboard_rows import enqueue
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from conftest import WorkerRunner
from errands import api
from errands.backends import Backend
from errands.dashboard import create_app
from errands.models import JobRequest, JobResult, Kind, Selection, Status

pytestmark = pytest.mark.slow  # a real browser and server (not in scripts/test --fast)

CHROMIUM = os.environ.get("ERRANDS_TEST_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "browser-test-password"
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the dashboard's browser tests need "
            "Debian's chromium package (apt-get install -y chromium), or set "
            "ERRANDS_TEST_CHROMIUM to a Chromium executable"
        )
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield launched
    launched.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def dashboard(db_url: str) -> Iterator[str]:
    """The dashboard served on localhost by uvicorn in a thread; its base URL."""
    app = create_app(password=PASSWORD, refresh_seconds=0.5)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def page(browser: Browser, dashboard: str) -> Iterator[Page]:
    context = browser.new_context(base_url=dashboard)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    opened.on("dialog", lambda dialog: dialog.accept())  # the "are you sure?" prompts
    yield opened
    context.close()


def log_in(page: Page, path: str = "/") -> None:
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/login"))
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    expect(page.locator("h1").first).not_to_have_text("Log in to errands")


def test_log_in_see_a_traceback_retry_and_watch_it_succeed(
    page: Page, run_worker: WorkerRunner, backend: Backend, tmp_path: Path
) -> None:
    from sample_jobs import FailTimes

    first = FailTimes(str(tmp_path / "attempts"), 1).run_in_worker(queue="flaky")
    assert first is not None
    run_worker(lambda: isinstance(api.get(first.uuid), JobResult))
    failed = api.get(first.uuid)
    assert isinstance(failed, JobResult) and failed.status == Status.ERRORED

    log_in(page, "/results?status=ERRORED")
    page.click(f"tr[data-uuid='{failed.uuid}'] a[href*='/jobs/']")
    expect(page.locator("[data-role=traceback]")).to_contain_text("RuntimeError: attempt 1 fails")

    page.click("button:has-text('Retry now')")
    expect(page.locator(".flash")).to_contain_text("retry enqueued")
    expect(page.locator(".detail .status")).to_have_text("pending")
    retried = api.get(failed.uuid)
    assert isinstance(retried, JobResult) and retried.retry_request_uuid is not None
    assert retried.retry_request_uuid.hex[:8] in page.url.replace("-", "")

    run_worker(lambda: isinstance(api.get(retried.retry_request_uuid), JobResult))
    # The page refreshes itself: no reload.
    expect(page.locator(".detail .status")).to_have_text("successful")
    expect(page.locator(".chain li")).to_have_count(2)


def test_bulk_cancel_of_a_filtered_selection(page: Page, backend: Backend) -> None:
    enqueue(backend, 5, queue="imports")
    kept = enqueue(backend, 2, queue="exports")
    log_in(page, "/requests?queue=imports")
    expect(page.locator("tbody tr")).to_have_count(5)

    page.click("a.button:has-text('Cancel')")
    expect(page.locator("h1")).to_have_text("Cancel 5 requests?")
    page.click("button:has-text('Cancel 5 requests')")

    expect(page.locator(".flash")).to_contain_text("cancel: 5 request(s)")
    expect(page.locator("tbody tr")).to_have_count(0)
    assert api.count(Kind.RESULT, Selection(status=Status.CANCELLED, queue="imports")) == 5
    assert {r.uuid for r in api.requests()} == {r.uuid for r in kept}


def shown_rows(page: Page, href: str) -> list[str]:
    """The uuids a listing shows once the browser is at ``href`` (a query string)."""
    expect(page).to_have_url(re.compile(re.escape(href) + "$"))
    page.wait_for_load_state()  # the whole table, not the part parsed so far
    uuids: list[str] = page.locator("tbody tr").evaluate_all(
        "rows => rows.map(row => row.dataset.uuid)"
    )
    return uuids


def follow(page: Page, label: str) -> list[str]:
    link = page.locator(f"nav.pager a:has-text('{label}')")
    href = link.get_attribute("href") or ""
    link.click()
    return shown_rows(page, href)


def test_paging_forward_then_back_with_the_pager_links(page: Page, backend: Backend) -> None:
    enqueue(backend, 70, queue="paged")
    enqueue(backend, 60, queue="paged", delay=60)
    enqueue(backend, 5, queue="elsewhere")
    log_in(page, "/requests?queue=paged&order=reverse")
    first = shown_rows(page, "/requests?queue=paged&order=reverse")
    expect(page.locator("nav.pager a:has-text('Previous page')")).to_have_count(0)
    second = follow(page, "Next page")
    third = follow(page, "Next page")
    assert [len(first), len(second), len(third)] == [50, 50, 30]

    assert follow(page, "Previous page") == second
    assert "order=reverse" in page.url and "queue=paged" in page.url
    assert follow(page, "Previous page") == first
    expect(page.locator("nav.pager a:has-text('Previous page')")).to_have_count(0)
    expect(page.locator("nav.pager a:has-text('First page')")).to_have_count(0)
    assert follow(page, "Next page") == second


def test_a_paused_queue_is_not_claimed_until_resumed(
    page: Page, run_worker: WorkerRunner, tmp_path: Path
) -> None:
    from sample_jobs import Echo

    log_in(page, "/")
    page.fill(".pause-form input[name=queue]", "slow")
    page.click(".pause-form button")
    expect(page.locator("tr[data-queue=slow] .badge")).to_have_text("paused")
    assert api.paused_queues() == ["slow"]

    held = Echo("held").run_in_worker(queue="slow")
    passing = Echo("passing").run_in_worker(queue="fast")
    assert held is not None and passing is not None
    finished_fast = [0]

    def fast_done_then_more_turns() -> bool:
        # Keep the worker going a little after the other queue's job ran.
        if isinstance(api.get(passing.uuid), JobResult):
            finished_fast[0] += 1
        return finished_fast[0] > 20

    run_worker(fast_done_then_more_turns)
    assert isinstance(api.get(held.uuid), JobRequest)  # never claimed

    page.reload()
    expect(page.locator("tr[data-queue=slow] td").nth(1)).to_have_text("1")
    page.click("tr[data-queue=slow] button:has-text('Resume')")
    expect(page.locator(".flash")).to_contain_text("queue 'slow' resumed")
    run_worker(lambda: isinstance(api.get(held.uuid), JobResult))
    done = api.get(held.uuid)
    assert isinstance(done, JobResult) and done.status == Status.SUCCESSFUL


def test_unauthenticated_and_tokenless_requests_are_refused(
    browser: Browser, page: Page, dashboard: str
) -> None:
    stranger = browser.new_context(base_url=dashboard)
    try:
        visit = stranger.new_page()
        visit.goto("/results")
        expect(visit).to_have_url(re.compile(r"/login\?next="))
        refused = visit.evaluate(
            """() => fetch('/queues/pause', {method: 'POST',
                   body: new URLSearchParams({queue: 'mail'})}).then(r => r.status)"""
        )
        assert refused == 401
    finally:
        stranger.close()

    log_in(page, "/")
    without_token = page.evaluate(
        """() => fetch('/queues/pause', {method: 'POST',
               body: new URLSearchParams({queue: 'mail'})}).then(r => r.status)"""
    )
    assert without_token == 403
    # A form whose token was tampered with is refused too.
    page.eval_on_selector(".pause-form input[name=csrf_token]", "el => { el.value = 'forged'; }")
    page.fill(".pause-form input[name=queue]", "mail")
    page.click(".pause-form button")
    expect(page.locator("body")).to_contain_text("CSRF")
    assert api.paused_queues() == []


def test_times_are_shown_in_the_viewers_time_zone(
    browser: Browser, dashboard: str, backend: Backend
) -> None:
    enqueue(backend, 1, queue="tz", delay=3600)
    context = browser.new_context(base_url=dashboard, timezone_id="Asia/Kolkata")
    try:
        page = context.new_page()
        log_in(page, "/requests")
        shown = page.locator("tbody time").first
        expect(shown).to_contain_text("in 59 min")
        assert "India Standard Time" in (shown.get_attribute("title") or "")
    finally:
        context.close()
