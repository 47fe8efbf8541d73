"""Short ids (issue 19, item 7): every command that takes a uuid takes a unique
prefix of 6 or more of its characters, as the dashboard shows them; an ambiguous
prefix lists its matches, one too short says the minimum. The CLI runs in-process
(CliRunner) on real SQLite files and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from click.testing import CliRunner, Result
from dashboard_rows import claim, enqueue, finish

import errands
from errands import api
from errands.backends import Backend
from errands.cli import cli
from errands.models import JobRequest

pytestmark = pytest.mark.usefixtures("cli_state_restored")  # the CLI sets process-wide state


def invoke(url: str, *args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(cli, ["--database-url", url, *args], catch_exceptions=False, **kwargs)


def keyed(start: str) -> uuid.UUID:
    """A uuid starting with ``start`` (hex), the rest random."""
    return uuid.UUID(start + uuid.uuid4().hex[len(start) :])


def one(backend: Backend, start: str, **fields: Any) -> JobRequest:
    (request,) = enqueue(backend, uuid=keyed(start), **fields)
    return request


# -- the API ----------------------------------------------------------------------------


def test_get_takes_a_unique_prefix(backend: Backend) -> None:
    request = one(backend, "01a24f63")
    one(backend, "99a24f63")
    assert errands.get("01a24f63") == request
    assert errands.get("01a24f") == request  # six characters suffice when unique
    assert errands.get(str(request.uuid)[:13]) == request  # with its hyphen


def test_get_of_a_prefix_no_uuid_starts_with_is_none(backend: Backend) -> None:
    one(backend, "01a24f63")
    assert errands.get("fedcba98") is None


def test_an_ambiguous_prefix_lists_the_matches(backend: Backend) -> None:
    first = one(backend, "01a24f6300")
    second = one(backend, "01a24f6311", job_class="sample_jobs.Fail")
    with pytest.raises(api.AmbiguousUuid) as raised:
        errands.get("01a24f63")
    assert [m.uuid for m in raised.value.matches] == [first.uuid, second.uuid]
    message = str(raised.value)
    assert "'01a24f63' is the start of 2 uuids" in message
    assert f"{first.uuid}  request" in message and "sample_jobs.Echo" in message
    assert f"{second.uuid}  request" in message and "sample_jobs.Fail" in message


def test_a_prefix_too_short_says_the_minimum(backend: Backend) -> None:
    one(backend, "01a24f63")
    with pytest.raises(ValueError, match="too short for a uuid prefix: give at least 6"):
        errands.get("01a24")


def test_a_result_is_found_by_the_prefix_of_its_request(backend: Backend) -> None:
    request = one(backend, "abcdef12")
    (result,) = finish(backend, claim(backend, "default"))
    assert errands.get("abcdef12") == result
    (match,) = api.find_uuids("abcdef12")
    assert (match.uuid, match.kind, match.role) == (request.uuid, "result", "its request")


# -- the CLI ------------------------------------------------------------------------------


def test_cli_get_takes_a_prefix(db_url: str, backend: Backend) -> None:
    request = one(backend, "01a24f63")
    shown = invoke(db_url, "get", "01a24f63", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["uuid"] == str(request.uuid)


def test_cli_get_of_an_ambiguous_prefix_lists_the_matches(db_url: str, backend: Backend) -> None:
    first = one(backend, "01a24f6300")
    second = one(backend, "01a24f6311")
    refused = invoke(db_url, "get", "01a24f63")
    assert refused.exit_code == 2
    assert "is the start of 2 uuids; give more characters" in refused.stderr
    assert str(first.uuid) in refused.stderr and str(second.uuid) in refused.stderr


def test_cli_get_of_a_prefix_too_short_says_the_minimum(db_url: str, backend: Backend) -> None:
    one(backend, "01a24f63")
    refused = invoke(db_url, "get", "01a24")
    assert refused.exit_code == 2
    assert "give at least 6 of its characters" in refused.stderr


def test_cli_get_of_a_prefix_nothing_starts_with(db_url: str, backend: Backend) -> None:
    one(backend, "01a24f63")
    missing = invoke(db_url, "get", "fedcba98")
    assert missing.exit_code == 1
    assert "no job has a uuid starting with fedcba98" in missing.stderr


def test_cli_get_of_text_that_is_no_uuid(db_url: str) -> None:
    refused = invoke(db_url, "get", "not-a-uuid")
    assert refused.exit_code == 2
    assert "is not a uuid, nor the start of one" in refused.stderr


def test_cli_cancel_takes_a_prefix(db_url: str, backend: Backend) -> None:
    request = one(backend, "0cab1e00", delay=3600)
    cancelled = invoke(db_url, "cancel", "0cab1e00")
    assert cancelled.exit_code == 0, cancelled.output
    assert f"Cancelled pending job sample_jobs.Echo ({request.uuid})" in cancelled.stdout


def test_cli_retry_takes_a_prefix(db_url: str, backend: Backend) -> None:
    enqueue(backend, uuid=keyed("2e7a1e00"))
    (result,) = finish(backend, claim(backend, "default"), errands.Status.ERRORED)
    retried = invoke(db_url, "--import", "sample_jobs", "retry", result.uuid.hex[:10])
    assert retried.exit_code == 0, retried.output
    assert "Enqueued sample_jobs.Echo again as attempt" in retried.stdout


def test_a_prefix_of_one_results_own_and_process_uuid_is_not_ambiguous(backend: Backend) -> None:
    one(backend, "abcdef34")
    (result,) = finish(backend, claim(backend, "default"))
    # Made in the same millisecond (PostgreSQL writes both in one statement), they
    # share their first 12 characters; the prefix they share finds the one result.
    shared = 0
    while result.uuid.hex[shared] == result.process_uuid.hex[shared]:
        shared += 1
    assert errands.get(result.uuid.hex[: max(shared, 6)]) == result
