"""The dashboard's workflow pages: /workflows/{uuid} draws a workflow's jobs as an SVG
graph with their states, escapes their names, refreshes while it runs; /workflows
lists them; a workflow job's page links to its workflow. Over HTTP (Starlette's
TestClient) on both backends, and once in headless Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest
import sample_jobs
from dashboard_rows import claim, finish
from playwright.sync_api import Page, expect
from starlette.testclient import TestClient

import errands
from errands.backends import Backend
from errands.dashboard import create_app
from errands.dashboard.workflow_graph import COLUMN_GAP, MARGIN, NODE_WIDTH, build_graph
from errands.models import Status
from errands.workflows import EnqueuedWorkflow

# The browser test's fixtures (a served dashboard, Chromium), shared with its module.
from test_dashboard_browser import browser, dashboard, log_in, page, playwright  # noqa: F401

PASSWORD = "workflow pages password"
HOSTILE = "<script>alert('x')</script>"
WORKFLOW_TABLES = "errands_workflow_edge, errands_workflow_node, errands_workflow"


@pytest.fixture(autouse=True)
def workflows_emptied(db_url: str) -> Iterator[None]:
    """conftest's empty_postgres does not know the workflow tables (not in base.TABLES)."""
    yield
    if db_url.startswith("postgresql"):
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {WORKFLOW_TABLES}")


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(password=PASSWORD), base_url="http://localhost") as logged_in:
        form = logged_in.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        data = {"password": PASSWORD, "next": "/", "csrf_token": token.group(1) if token else ""}
        assert logged_in.post("/login", data=data, follow_redirects=False).status_code == 303
        yield logged_in


def hostile_workflow() -> EnqueuedWorkflow:
    """fetch, then a job named HOSTILE and "parse" side by side, then "notify" after both."""
    wf = errands.Workflow("nightly <b>import</b>")
    fetch = wf.add(sample_jobs.Echo("fetch"), name="fetch")
    evil = wf.add(sample_jobs.Echo("evil"), after=[fetch], name=HOSTILE)
    parse = wf.add(sample_jobs.Echo("parse"), after=[fetch], name="parse")
    wf.add(sample_jobs.Echo("notify"), after=[evil, parse], name="notify")
    return wf.enqueue()


def node_states(html: str) -> dict[str, str]:
    """Each drawn node's index and its data-state."""
    return dict(re.findall(r'class="wf-node [^"]*" data-node="(\d+)" data-state="(\w+)"', html))


def test_the_page_draws_each_job_with_its_state_and_escapes_names(
    client: TestClient, backend: Backend
) -> None:
    enqueued = hostile_workflow()
    finish(backend, claim(backend, "default"))  # fetch succeeded
    claim(backend, "default", limit=1)  # one of the two released jobs is running
    response = client.get(f"/workflows/{enqueued.uuid}")
    assert response.status_code == 200
    html = response.text
    assert "Content-Security-Policy" in response.headers
    states = node_states(html)
    assert states["0"] == "succeeded" and states["3"] == "waiting"
    assert sorted([states["1"], states["2"]]) == ["pending", "running"]
    assert html.count('class="wf-edge') == 4
    assert "<script>alert" not in html and "<b>import" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "nightly &lt;b&gt;import&lt;/b&gt;" in html
    status = enqueued.status()
    assert f'href="/jobs/{status.node("fetch").result_uuid}"' in html  # its result
    assert f'href="/jobs/{status.node("notify").request_uuid}"' in html  # its request
    assert 'data-live="/workflows/' in html  # it refreshes while running


def test_an_ended_workflow_stops_refreshing(client: TestClient, backend: Backend) -> None:
    enqueued = hostile_workflow()
    finish(backend, claim(backend, "default"), Status.ERRORED, error="fetch broke")
    html = client.get(f"/workflows/{enqueued.uuid}").text
    assert set(node_states(html).values()) == {"failed", "cancelled"}
    assert 'data-role="workflow-state"><span class="status s-ERRORED">failed</span>' in html
    assert "fetch broke" in html
    assert "data-live=" not in html


def test_the_live_block_alone_is_sent_to_the_refreshing_script(
    client: TestClient, backend: Backend
) -> None:
    enqueued = hostile_workflow()
    fragment = client.get(f"/workflows/{enqueued.uuid}", headers={"X-Errands-Fragment": "1"})
    assert fragment.status_code == 200
    assert "<svg" in fragment.text and "<html" not in fragment.text
    assert node_states(fragment.text)["0"] == "pending"


def test_the_list_links_each_workflow_and_the_nav_links_the_list(
    client: TestClient, backend: Backend
) -> None:
    assert "No workflow yet" in client.get("/workflows").text
    first, second = hostile_workflow(), hostile_workflow()
    html = client.get("/workflows").text
    assert html.index(f'data-workflow="{second.uuid}"') < html.index(
        f'data-workflow="{first.uuid}"'
    )
    assert f'href="/workflows/{first.uuid}"' in html
    assert "<b>import" not in html
    assert 'href="/workflows"' in client.get("/").text


def test_a_workflow_job_links_to_its_workflow_and_has_no_year_9999(
    client: TestClient, backend: Backend
) -> None:
    enqueued = hostile_workflow()
    held = enqueued.status().node("notify").request_uuid
    html = client.get(f"/jobs/{held}").text
    assert f'href="/workflows/{enqueued.uuid}" data-role="workflow"' in html
    assert "after its dependencies" in html and "9999" not in html
    assert 'data-reason="dependencies"' in html
    listing = client.get("/requests").text
    assert "after its dependencies" in listing and "9999" not in listing
    outside = sample_jobs.Echo("alone").run_in_worker()  # a job outside any workflow
    assert outside is not None
    assert 'data-role="workflow"' not in client.get(f"/jobs/{outside.uuid}").text


def test_unknown_workflows_are_not_found(client: TestClient) -> None:
    assert client.get("/workflows/not-a-uuid").status_code == 404
    assert client.get("/workflows/00000000-0000-0000-0000-000000000000").status_code == 404


def test_columns_follow_the_longest_path_from_the_roots(db_url: str) -> None:
    wf = errands.Workflow("layers")
    a = wf.add(sample_jobs.Echo(1), name="a")
    b = wf.add(sample_jobs.Echo(2), after=[a], name="b")
    c = wf.add(sample_jobs.Echo(3), after=[b], name="c")
    wf.add(sample_jobs.Echo(4), after=[a, c], name="d")  # after a, but also after c
    wf.add(sample_jobs.Echo(5), name="e")  # a second root
    graph = build_graph(wf.enqueue().status())
    column = {n.node.name: (n.x - MARGIN) // (NODE_WIDTH + COLUMN_GAP) for n in graph.nodes}
    assert column == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 0}
    rows = {n.node.name: n.y for n in graph.nodes}
    assert rows["a"] < rows["e"]  # the second job of column 0 goes below the first
    assert len(graph.edges) == 4
    assert graph.width == 2 * MARGIN + 4 * NODE_WIDTH + 3 * COLUMN_GAP


@pytest.mark.slow
def test_the_graph_refreshes_in_a_browser_as_jobs_end(
    page: Page,  # noqa: F811  (the fixture imported above)
    backend: Backend,
) -> None:
    enqueued = hostile_workflow()
    log_in(page, f"/workflows/{enqueued.uuid}")
    page.goto(f"/workflows/{enqueued.uuid}")
    nodes = page.locator("svg a.wf-node")
    expect(nodes).to_have_count(4)
    # The name is text, not markup (its box shows its first characters).
    expect(page.locator('a.wf-node[data-node="1"] text.wf-name')).to_contain_text("<script>alert(")
    expect(page.locator('a.wf-node[data-node="0"]')).to_have_attribute("data-state", "pending")
    finish(backend, claim(backend, "default"))  # fetch ends; the page's refresh shows it
    expect(page.locator('a.wf-node[data-node="0"]')).to_have_attribute("data-state", "succeeded")
    expect(page.locator('a.wf-node[data-node="1"]')).to_have_attribute("data-state", "pending")
    page.locator('a.wf-node[data-node="0"]').click()
    expect(page).to_have_url(re.compile(r"/jobs/"))
    expect(page.locator('[data-role="workflow"]')).to_have_attribute(
        "href", f"/workflows/{enqueued.uuid}"
    )
