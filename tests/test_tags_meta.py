"""Tags and metadata (errands.tagging): given per call or per class, checked before any
write, stored on request, process and result, kept by requeues and releases, and
filtered by tag in the API, the CLI and the dashboard; on PostgreSQL and SQLite."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

import errands
from errands import EnqueueOptions, Job, register_job
from errands.backends import Backend
from errands.cli import cli
from errands.dashboard import create_app
from errands.errors import OptionError
from errands.models import (
    Kind,
    Outcome,
    PageSpec,
    Requeue,
    Selection,
    Status,
    uuid7,
)
from errands.tagging import MAX_META_CHARS, MAX_TAG_LENGTH, MAX_TAGS

UTC = datetime.UTC


@register_job
class Plain(Job):
    def run(self) -> None:
        pass


@register_job
class Tagged(Job):
    tags = ["billing", "nightly"]
    meta = {"tenant": "acme"}

    def run(self) -> None:
        pass


@register_job
class TaggedByMethod(Job):
    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    def default_tags(self) -> list[str]:
        return [f"tenant:{self.tenant}"]

    def default_meta(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "n": 1}

    def run(self) -> None:
        pass


def _claim(backend: Backend) -> list[Any]:
    return list(backend.claim(worker_id=uuid7(), queues=(), limit=100))


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def test_tags_and_meta_travel_from_request_to_result(backend: Backend) -> None:
    request = Plain().run_in_worker(tags=["a", "b", "a"], meta={"k": [1, 2], "s": "x"})
    assert request is not None
    assert (request.tags, request.meta) == (("a", "b"), {"k": [1, 2], "s": "x"})
    (stored,) = errands.requests()
    assert (stored.tags, stored.meta) == (("a", "b"), {"k": [1, 2], "s": "x"})
    (process,) = _claim(backend)
    assert (process.tags, process.meta) == (("a", "b"), {"k": [1, 2], "s": "x"})
    (result,) = backend.complete_many(
        outcomes=[Outcome(process.uuid, Status.SUCCESSFUL, _now(), _now())]
    )
    assert (result.tags, result.meta) == (("a", "b"), {"k": [1, 2], "s": "x"})
    (listed,) = errands.results()
    assert (listed.tags, listed.meta) == (("a", "b"), {"k": [1, 2], "s": "x"})
    assert listed.as_json()["tags"] == ["a", "b"] and listed.as_json()["meta"]["s"] == "x"


def test_a_job_without_tags_stores_none(backend: Backend) -> None:
    request = Plain().run_in_worker()
    assert request is not None and (request.tags, request.meta) == ((), None)
    (process,) = _claim(backend)
    assert (process.tags, process.meta) == ((), None)
    assert process.as_json()["tags"] == [] and process.as_json()["meta"] is None


def test_class_defaults_and_call_overrides(backend: Backend) -> None:
    by_attribute = Tagged().run_in_worker()
    by_method = TaggedByMethod("t1").run_in_worker()
    overridden = Tagged().run_in_worker(tags=[], meta={})
    by_options = errands.enqueue_many(
        [Tagged()], options=EnqueueOptions(tags=["x"], meta={"y": True})
    )[0]
    assert by_attribute is not None and by_method is not None and overridden is not None
    assert by_options is not None
    assert (by_attribute.tags, by_attribute.meta) == (("billing", "nightly"), {"tenant": "acme"})
    assert (by_method.tags, by_method.meta) == (("tenant:t1",), {"tenant": "t1", "n": 1})
    assert (overridden.tags, overridden.meta) == ((), None)
    assert (by_options.tags, by_options.meta) == (("x",), {"y": True})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tags": "billing"}, "tags must be a list of strings"),
        ({"tags": [""]}, "non-empty string"),
        ({"tags": [3]}, "non-empty string"),
        ({"tags": ["a\x00b"]}, "NUL"),
        ({"tags": ["x" * (MAX_TAG_LENGTH + 1)]}, f"at most {MAX_TAG_LENGTH} characters"),
        ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, f"at most {MAX_TAGS} tags"),
        ({"meta": [1, 2]}, "meta must be a JSON object"),
        ({"meta": {"when": datetime.date(2020, 1, 1)}}, "JSON-serialisable"),
        ({"meta": {"nan": float("nan")}}, "JSON-serialisable"),
        ({"meta": {"x": "\x00"}}, "NUL"),
        ({"meta": {"big": "x" * MAX_META_CHARS}}, f"at most {MAX_META_CHARS}"),
    ],
)
def test_invalid_tags_or_meta_are_refused_before_any_write(
    backend: Backend, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(OptionError, match=message) as raised:
        Plain().run_in_worker(**options)
    assert "test_tags_meta.Plain" in str(raised.value)
    option = next(iter(options))
    assert option in str(raised.value)
    assert backend.count(kind=Kind.REQUEST, selection=Selection()) == 0


def test_a_bad_class_default_names_the_class(backend: Backend) -> None:
    @register_job
    class BadDefault(Job):
        tags = "not-a-list"

        def run(self) -> None:
            pass

    with pytest.raises(OptionError, match="BadDefault: tags"):
        BadDefault().run_in_worker()
    assert backend.count(kind=Kind.REQUEST, selection=Selection()) == 0


def test_requeue_and_release_keep_tags_and_meta(backend: Backend) -> None:
    Plain().run_in_worker(tags=["keep"], meta={"m": 1}, retries=1)
    Plain().run_in_worker(tags=["released"], meta={"r": 2})
    first, second = _claim(backend)
    failed = Outcome(
        first.uuid,
        Status.ERRORED,
        _now(),
        _now(),
        requeue=Requeue(delay_seconds=0, retry_attempt=1),
    )
    backend.complete_many(outcomes=[failed])
    backend.release(process_uuids=[second.uuid])
    pending = {r.tags: r.meta for r in errands.requests()}
    assert pending == {("keep",): {"m": 1}, ("released",): {"r": 2}}


def test_filter_by_tag_in_every_listing(backend: Backend) -> None:
    Plain().run_in_worker(tags=["red", "blue"])
    Plain().run_in_worker(tags=["blue"])
    Plain().run_in_worker()
    assert len(errands.requests(tag="blue")) == 2
    assert len(errands.requests(tag="red")) == 1
    assert errands.requests(tag="green") == []
    assert backend.count(kind=Kind.REQUEST, selection=Selection(tag="red")) == 1
    processes = _claim(backend)
    assert len(errands.processes(tag="blue")) == 2
    assert [p.tags for p in errands.processes(tag="red")] == [("red", "blue")]
    backend.complete_many(
        outcomes=[Outcome(p.uuid, Status.SUCCESSFUL, _now(), _now()) for p in processes]
    )
    assert len(errands.results(tag="blue")) == 2
    assert [r.tags for r in errands.results(tag="red")] == [("red", "blue")]
    assert len(errands.results()) == 3
    page = backend.page_results(selection=Selection(tag="red"), page=PageSpec(limit=10))
    assert len(page) == 1


def test_a_large_batch_with_tags_is_stored(backend: Backend) -> None:
    jobs = [Plain() for _ in range(300)]  # past PostgreSQL's COPY threshold
    options = EnqueueOptions(tags=["bulk"], meta={"batch": 7})
    requests = errands.enqueue_many(jobs, options=options)
    assert all(r is not None and r.tags == ("bulk",) for r in requests)
    assert len(errands.requests(tag="bulk", limit=1000)) == 300
    first = errands.requests(limit=1)[0]
    assert first.meta == {"batch": 7}
    # Mixed batches: each request keeps its own tags.
    mixed = errands.enqueue_many([Plain(), Tagged()])
    assert [r.tags for r in mixed if r is not None] == [(), ("billing", "nightly")]


def test_cli_filters_by_tag_and_prints_tags(backend: Backend, cli_state_restored: None) -> None:
    Plain().run_in_worker(tags=["cli-tag"], meta={"who": "cli"})
    Plain().run_in_worker()
    runner = CliRunner()
    listed = runner.invoke(cli, ["requests", "--tag", "cli-tag", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [row["tags"] for row in rows] == [["cli-tag"]]
    assert rows[0]["meta"] == {"who": "cli"}
    table = runner.invoke(cli, ["requests", "--tag", "cli-tag"])
    assert table.exit_code == 0 and "cli-tag" in table.output
    _claim(backend)
    processes = runner.invoke(cli, ["processes", "--tag", "nope"])
    assert processes.exit_code == 0
    assert "cli-tag" not in processes.output
    processes = runner.invoke(cli, ["processes", "--tag", "cli-tag"])
    assert "cli-tag" in processes.output
    results = runner.invoke(cli, ["results", "--tag", "cli-tag", "--json"])
    assert results.exit_code == 0


PASSWORD = "tags-password"


def _client() -> TestClient:
    client = TestClient(create_app(password=PASSWORD), base_url="http://localhost")
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    client.post("/login", data={"password": PASSWORD, "csrf_token": token.group(1), "next": "/"})
    return client


def test_dashboard_filters_by_tag_and_shows_tags(
    backend: Backend, cli_state_restored: None
) -> None:
    shown = Plain().run_in_worker(tags=["dash-red"], meta={"tenant": "acme"})
    hidden = Plain().run_in_worker(tags=["dash-blue"])
    assert shown is not None and hidden is not None
    client = _client()
    page = client.get("/requests", params={"tag": "dash-red"})
    assert page.status_code == 200
    assert str(shown.uuid) in page.text and str(hidden.uuid) not in page.text
    assert 'name="tag" value="dash-red"' in page.text and "?tag=dash-red" in page.text
    job = client.get(f"/jobs/{shown.uuid}")
    assert job.status_code == 200
    assert "dash-red" in job.text and "acme" in job.text
    _claim(backend)
    processes = client.get("/processes", params={"tag": "dash-blue"})
    assert processes.status_code == 200
    table = processes.text.split("<tbody")[-1]
    assert "dash-blue" in table and "dash-red" not in table
    results = client.get("/results", params={"tag": "dash-red"})
    assert results.status_code == 200 and "No" in results.text


def test_a_manual_retry_keeps_tags_and_meta(backend: Backend) -> None:
    Tagged().run_in_worker(tags=["retry-me"], meta={"try": 1})
    (process,) = _claim(backend)
    backend.complete_many(outcomes=[Outcome(process.uuid, Status.ERRORED, _now(), _now())])
    (result,) = errands.results()
    again = errands.api.retry_result(result)
    assert again is not None and (again.tags, again.meta) == (("retry-me",), {"try": 1})
