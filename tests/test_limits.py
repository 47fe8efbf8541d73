"""errands.Limit without a worker: its checks, what an enqueue stores, the admission
rule, the queue_limits setting and ``--queue NAME:N``."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import errands
from errands import EnqueueOptions, Job, Limit, register_job, settings
from errands.backends.admission import RATE_GUARD, Candidate, KeyUsage, admit
from errands.cli import cli
from errands.errors import ConfigurationError, OptionError
from errands.limiting import decode_limits, encode_limits, parse_rate
from errands.worker.intake import split_queue_caps


@register_job
class Plain(Job):
    def run(self) -> None:
        pass


@register_job
class Limited(Job):
    limits = [Limit("api", concurrency=2, rate="10/s")]

    def __init__(self, account: str = "a") -> None:
        self.account = account

    def run(self) -> None:
        pass


@register_job
class PerAccount(Limited):
    def get_limits(self) -> list[Limit]:
        return [Limit(f"account:{self.account}", concurrency=1)]


@register_job
class BadKey(Job):
    limits = [Limit(lambda job: 42, concurrency=1)]  # type: ignore[arg-type, return-value]

    def run(self) -> None:
        pass


# -- Limit's own checks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((("",), {"concurrency": 1}), "non-empty string"),
        ((("k" * 201,), {"concurrency": 1}), "longer than 200"),
        ((("k",), {}), "give concurrency=, rate= or both"),
        ((("k",), {"concurrency": 0}), "at least 1"),
        ((("k",), {"concurrency": True}), "whole number"),
        ((("k",), {"concurrency": 1.5}), "whole number"),
        ((("k",), {"rate": "fast"}), 'such as "20/s"'),
        ((("k",), {"rate": "0/s"}), "at least 1"),
        ((("k",), {"rate": "5/week"}), 'such as "20/s"'),
    ],
)
def test_limit_refuses_bad_arguments(arguments: tuple, message: str) -> None:
    args, kwargs = arguments
    with pytest.raises(ValueError, match=message):
        Limit(*args, **kwargs)


@pytest.mark.parametrize(
    ("rate", "window"),
    [("20/s", (20, 1.0)), ("100 / min", (100, 60.0)), ("5/hour", (5, 3600.0)), ("1/S", (1, 1.0))],
)
def test_rates_read_as_count_and_seconds(rate: str, window: tuple[int, float]) -> None:
    assert parse_rate(rate) == window


def test_stored_limits_round_trip_and_odd_ones_are_left_out() -> None:
    limits = (Limit("api", concurrency=2), Limit("mail", rate="5/min"))
    assert decode_limits(encode_limits(limits)) == limits
    assert encode_limits(()) is None
    stored = '[{"key": "ok", "concurrency": 1}, {"key": 3}, "x", {"key": "k", "rate": "no"}]'
    assert decode_limits(stored) == (Limit("ok", concurrency=1),)
    assert decode_limits("not json") == ()
    assert decode_limits({"key": "k"}) == ()


# -- what an enqueue stores ----------------------------------------------------------


def test_class_limits_are_stored_and_overridden_per_call(backend: object) -> None:
    stored = Limited().run_in_worker()
    assert stored is not None and stored.limits == (Limit("api", concurrency=2, rate="10/s"),)
    replaced = Limited().run_in_worker(limits=[Limit("other", concurrency=5)])
    assert replaced is not None and replaced.limits == (Limit("other", concurrency=5),)
    removed = Limited().run_in_worker(limits=[])
    assert removed is not None and removed.limits == ()
    (plain,) = errands.enqueue_many(
        [Plain()], options=EnqueueOptions(limits=[Limit("x", rate="1/s")])
    )
    assert plain is not None and plain.limits == (Limit("x", rate="1/s"),)
    listed = {r.uuid: r.limits for r in errands.requests()}
    assert listed[stored.uuid] == stored.limits and listed[removed.uuid] == ()


def test_get_limits_and_callable_keys_are_resolved_at_enqueue(backend: object) -> None:
    request = PerAccount("acme").run_in_worker()
    assert request is not None and request.limits == (Limit("account:acme", concurrency=1),)
    keyed = Limit(lambda job: f"acct:{job.account}", rate="2/s")
    request = Limited("zeta").run_in_worker(limits=[keyed])
    assert request is not None and request.limits == (Limit("acct:zeta", rate="2/s"),)


@pytest.mark.parametrize(
    ("job", "limits", "message"),
    [
        (Plain(), "api", "expected a list of errands.Limit"),
        (Plain(), [("api", 2)], "expected errands.Limit items"),
        (BadKey(), None, "BadKey.*non-empty string, got 42"),
    ],
)
def test_bad_limits_are_refused_before_anything_is_written(
    backend: object, job: Job, limits: object, message: str
) -> None:
    with pytest.raises(OptionError, match=message):
        job.run_in_worker(limits=limits)  # type: ignore[arg-type]
    assert errands.requests() == []


# -- the admission rule --------------------------------------------------------------


def _candidates(count: int, *limits: Limit, queue: str = "default") -> list[Candidate]:
    return [Candidate(ref=i, limits=limits, queue=queue) for i in range(count)]


def test_concurrency_admits_what_the_running_jobs_leave() -> None:
    limit = Limit("k", concurrency=3)
    assert admit(_candidates(5, limit), {}, room=10).taken == [0, 1, 2]
    assert admit(_candidates(5, limit), {"k": KeyUsage(running=2)}, room=10).taken == [0]
    held = admit(_candidates(5, limit), {"k": KeyUsage(running=3)}, room=10)
    assert held.taken == [] and held.retry_in is None  # a completion wakes the workers


def test_a_rate_admits_what_its_window_leaves_and_says_when_to_look_again() -> None:
    limit = Limit("k", rate="3/s")
    fresh = admit(_candidates(5, limit), {}, room=10)
    assert fresh.taken == [0, 1, 2] and fresh.started == {"k": 3}
    assert fresh.retry_in == pytest.approx(1.0 + RATE_GUARD)
    usage = {"k": KeyUsage(starts=[0.9, 0.5, 0.2])}
    held = admit(_candidates(2, limit), usage, room=10)
    assert held.taken == [] and held.retry_in == pytest.approx(1.0 + RATE_GUARD - 0.9)
    aged = {"k": KeyUsage(starts=[1.2, 0.5, 0.2])}  # one start left the window
    assert admit(_candidates(2, limit), aged, room=10).taken == [0]


def test_every_limit_of_a_job_must_allow_it() -> None:
    both = (Limit("a", concurrency=5), Limit("b", concurrency=1))
    taken = admit(_candidates(3, *both), {}, room=10).taken
    assert taken == [0]


def test_held_jobs_of_one_key_do_not_hold_back_another_key() -> None:
    full = _candidates(3, Limit("full", concurrency=1))
    other = [Candidate(ref="other", limits=(Limit("free", concurrency=1),))]
    usage = {"full": KeyUsage(running=1)}
    assert admit([*full, *other], usage, room=10).taken == ["other"]


def test_rated_jobs_go_only_into_idle_slots_and_queues_keep_their_caps() -> None:
    rated = _candidates(4, Limit("r", rate="100/s"))
    assert admit(rated, {}, room=10, idle=2).taken == [0, 1]
    counted = _candidates(4, Limit("c", concurrency=10))
    assert admit(counted, {}, room=10, idle=0).taken == [0, 1, 2, 3]
    mail = _candidates(4, Limit("c", concurrency=10), queue="mail")
    assert admit(mail, {}, room=10, queue_rooms={"mail": 1}).taken == [0]


# -- settings and the worker's --queue --------------------------------------------------


def test_queue_limits_setting_reads_from_every_source() -> None:
    loaded = settings.load(environ={"ERRANDS_QUEUE_LIMITS": "mail=10, sms=2"})
    assert loaded.queue_limits == (("mail", 10), ("sms", 2))
    assert settings.to_environ(loaded)["ERRANDS_QUEUE_LIMITS"] == "mail=10,sms=2"
    with pytest.raises(ConfigurationError, match="queue_limits"):
        settings.load(environ={"ERRANDS_QUEUE_LIMITS": "mail=0"})
    with pytest.raises(ConfigurationError, match="queue_limits"):
        settings.load(environ={"ERRANDS_QUEUE_LIMITS": "mail=lots"})


def test_worker_queue_entries_split_into_names_and_caps() -> None:
    assert split_queue_caps(["mail:4", "default"]) == (["mail", "default"], {"mail": 4})
    assert split_queue_caps([]) == ([], {})
    for bad in ("mail:0", "mail:x", ":3"):
        with pytest.raises(ValueError, match="NAME:N"):
            split_queue_caps([bad])


def test_the_worker_command_refuses_a_bad_queue_cap() -> None:
    result = CliRunner().invoke(cli, ["worker", "--queue", "mail:none"])
    assert result.exit_code == 2
    assert "NAME or NAME:N" in result.output


def test_two_limits_on_one_key_count_each_job_once() -> None:
    both = (Limit("api", concurrency=3), Limit("api", rate="100/s"))
    taken = admit(_candidates(5, *both), {}, room=10).taken
    assert taken == [0, 1, 2]
