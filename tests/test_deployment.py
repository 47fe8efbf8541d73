"""The deployment examples under ``examples/deploy/`` do what their README says.

* The systemd units pass ``systemd-analyze verify`` (Debian package ``systemd``,
  brought by ``scripts/install-test-deps``), stop the worker alone with SIGTERM and
  wait longer than its drain timeout; and signalling the whole group, which
  systemd's default ``KillMode`` would do, kills running jobs (why the units say
  ``KillMode=mixed``).
* The Dockerfile's and the Kubernetes manifest's commands are real ``errands``
  commands and options (parsed by the CLI itself), their grace periods exceed the
  drain timeout, and the health command they probe with, run exactly as written,
  exits 0 with a live worker and 1 without one, with a dead one, with an old schema
  and with an unreachable database.
* A rolling restart as the manifest does it (a second pod starts, then the first gets
  SIGTERM mid-drain) with the manifest's own worker command runs every job exactly
  once. ``tests/test_batching.py`` stops a worker mid-drain and lets another start
  afterwards; here both run at once, as a surge of one does.

The manifest is read with a small parser of the YAML it uses (block mappings and
sequences, plain and double-quoted scalars, flow sequences): PyYAML is no dependency
of the project, and the parser fails on anything else the file might grow.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import flow_jobs
import pytest
import sample_jobs
from staleness import backdate_heartbeat
from worker_process import WorkerProcess

import errands
from conftest import wait_for
from errands import Status, settings
from errands.backends import Backend
from errands.cli import cli

DEPLOY = Path(__file__).parents[1] / "examples" / "deploy"
ERRANDS = Path(sys.executable).with_name("errands")
#: Where the units expect the application's virtualenv.
UNIT_ERRANDS = "/srv/myapp/venv/bin/errands"
DEFAULTS = settings.Settings()


# -- reading the examples ----------------------------------------------------------------


def parse_command(argv: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The errands command ``argv`` runs and its options, as the CLI parses them (a
    misspelt command or option, or a bad value, fails here)."""
    assert argv[0] in ("errands", UNIT_ERRANDS), argv
    name, args = argv[1], list(argv[2:])
    assert name in cli.commands, f"errands has no command {name!r}"
    command = cli.commands[name]
    with command.make_context(name, args) as ctx:
        return name, dict(ctx.params)


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string((DEPLOY / name).read_text())
    return parser


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [
        line
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    instructions = []
    for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
        keyword, _, rest = line.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for keyword, rest in dockerfile() if keyword == name]


def load_yaml_documents(text: str) -> list[Any]:
    """The documents of ``text``, in the YAML subset the manifest uses."""
    documents = []
    for chunk in re.split(r"^---\s*$", text, flags=re.MULTILINE):
        lines = [
            (len(line) - len(line.lstrip(" ")), line.strip())
            for line in chunk.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if lines:
            value, end = _yaml_block(lines, 0, lines[0][0])
            assert end == len(lines), f"unparsed YAML from: {lines[end]}"
            documents.append(value)
    return documents


#: A mapping's key, and its scalar value if on the same line.
KEY = r"([A-Za-z_][\w.-]*):(?: (.*))?"


def _yaml_block(lines: list[tuple[int, str]], at: int, indent: int) -> tuple[Any, int]:
    if lines[at][1].startswith("- "):
        items: list[Any] = []
        while at < len(lines) and lines[at][0] == indent and lines[at][1].startswith("- "):
            # "- key: value" opens a mapping whose other keys sit two columns further in.
            inner = [(indent + 2, lines[at][1][2:])]
            at += 1
            while at < len(lines) and lines[at][0] > indent:
                inner.append(lines[at])
                at += 1
            if len(inner) == 1 and not re.fullmatch(KEY, inner[0][1]):
                items.append(_yaml_scalar(inner[0][1]))
                continue
            value, end = _yaml_block(inner, 0, indent + 2)
            assert end == len(inner), f"unparsed YAML from: {inner[end]}"
            items.append(value)
        return items, at
    mapping: dict[str, Any] = {}
    while at < len(lines) and lines[at][0] == indent:
        match = re.fullmatch(KEY, lines[at][1])
        assert match, f"not YAML this parser knows: {lines[at][1]!r}"
        key, scalar = match.groups()
        assert key not in mapping, f"duplicate key {key!r}"
        at += 1
        if scalar is not None:
            mapping[key] = _yaml_scalar(scalar)
        else:
            assert at < len(lines) and lines[at][0] > indent, f"{key!r} has no value"
            mapping[key], at = _yaml_block(lines, at, lines[at][0])
    assert at == len(lines) or lines[at][0] < indent, f"bad indentation: {lines[at][1]!r}"
    return mapping, at


def _yaml_scalar(text: str) -> Any:
    if text.startswith(("[", '"')) or text == "{}":
        return json.loads(text)
    assert not re.search(r"\s#|[{}&*!|>']", text), f"not YAML this parser knows: {text!r}"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    assert text.lower() not in ("null", "yes", "no", "on", "off", "~"), text
    return text


def manifests() -> dict[str, Any]:
    """The manifest's objects by kind."""
    documents = load_yaml_documents((DEPLOY / "kubernetes.yaml").read_text())
    by_kind = {document["kind"]: document for document in documents}
    assert len(by_kind) == len(documents), "one object of each kind"
    return by_kind


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifests()["Deployment"]["spec"]["template"]["spec"]
    return spec


def worker_container() -> dict[str, Any]:
    (container,) = pod_spec()["containers"]
    return dict(container)


def container_env(container: Mapping[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def test_the_yaml_reader_reads_what_the_manifest_means() -> None:
    text = (
        'a: 1\nb:\n  c: "x y"\n  d: ["e", "f"]\n  g:\n    - name: h\n      value: "2"\n'
        "    - name: i\n      items:\n        - j\n---\nk: {}\n"
    )
    assert load_yaml_documents(text) == [
        {
            "a": 1,
            "b": {
                "c": "x y",
                "d": ["e", "f"],
                "g": [{"name": "h", "value": "2"}, {"name": "i", "items": ["j"]}],
            },
        },
        {"k": {}},
    ]
    with pytest.raises(AssertionError):
        load_yaml_documents("a: yes\n")  # YAML 1.1 would read a boolean
    with pytest.raises(AssertionError):
        load_yaml_documents("a:\n  b: 1\n c: 2\n")  # bad indentation


# -- systemd --------------------------------------------------------------------------


def verifiable_copy(name: str, directory: Path, instance: str | None = None) -> Path:
    """The unit, its ExecStart pointed at this venv's errands (verify checks that it
    exists), under its instance name if it is a template."""
    text = (DEPLOY / name).read_text()
    assert UNIT_ERRANDS in text
    target = directory / (name.replace("@.", f"@{instance}.") if instance else name)
    target.write_text(text.replace(UNIT_ERRANDS, str(ERRANDS)))
    return target


@pytest.mark.parametrize(
    ("name", "instance"), [("errands-worker.service", None), ("errands-worker@.service", "mail")]
)
def test_systemd_analyze_verifies_the_units(
    name: str, instance: str | None, tmp_path: Path
) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run scripts/install-test-deps"
    path = verifiable_copy(name, tmp_path, instance)
    verified = subprocess.run(
        [analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )
    # Unknown keys and bad values are only warnings: none may be printed.
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


def test_systemd_analyze_catches_a_misspelt_setting(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run scripts/install-test-deps"
    path = verifiable_copy("errands-worker.service", tmp_path)
    path.write_text(path.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    verified = subprocess.run(
        [analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )
    assert "mixd" in verified.stderr


@pytest.mark.parametrize("name", ["errands-worker.service", "errands-worker@.service"])
def test_the_units_stop_the_worker_gently_and_wait_past_its_drain(name: str) -> None:
    service = unit(name)["Service"]
    command, options = parse_command(shlex.split(service["ExecStart"]))
    assert command == "worker"
    drain = options["drain_timeout"]
    assert drain is not None and drain > 0
    # The drain timeout comes from ExecStart, which wins over the EnvironmentFile.
    assert "DRAIN" not in service.get("Environment", "")
    assert float(service["TimeoutStopSec"]) >= drain + 20
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # SIGTERM to the worker alone
    assert service["Restart"] == "on-failure"  # a drained worker exits 0: stays stopped
    assert service["EnvironmentFile"] == "/etc/errands/worker.env"
    assert service["User"] != "root"
    hardening = {key: service.get(key) for key in ("NoNewPrivileges", "PrivateTmp")}
    assert hardening == {"NoNewPrivileges": "yes", "PrivateTmp": "yes"}
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "errands"
    assert service["ReadWritePaths"] == "/var/lib/errands"
    if name.startswith("errands-worker@"):
        assert options["queues"] == ("%i",)  # the instance name is the queue
    # The environment file's example names real settings.
    names = {f.name for f in dataclasses.fields(settings.Settings)}
    for line in (DEPLOY / "worker.env.example").read_text().splitlines():
        if match := re.match(r"#? ?(ERRANDS_\w+)=", line):
            assert match[1] in {settings.env_name(n) for n in names}, match[1]


@pytest.mark.slow
def test_sigterm_to_the_whole_group_kills_running_jobs(pg_backend: Backend, tmp_path: Path) -> None:
    """What ``KillMode=control-group`` (systemd's default) does on stop: the job
    processes get SIGTERM too and the running job dies, where the worker alone would
    have let it finish."""
    argv = [str(ERRANDS), "--import", "sample_jobs", "worker", "--max-processes", "1"]
    env = {**os.environ, "ERRANDS_DATABASE_URL": pg_backend.url}
    with WorkerProcess(argv, tmp_path / "worker.log", url=pg_backend.url, env=env) as worker:
        worker.wait_registered()
        job = sample_jobs.Sleep(3).run_in_worker()
        wait_for(
            lambda: bool(errands.processes()) and errands.processes()[0].started_at is not None
        )
        worker.signal_group(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    (result,) = errands.results()
    assert result.request_uuid == job.uuid
    assert result.status is Status.LOST  # its job process died of the SIGTERM


# -- Docker -----------------------------------------------------------------------------


def test_the_dockerfile_runs_a_draining_worker_as_a_user() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    (user,) = instruction("USER")
    assert user.split(":")[0] not in ("root", "0")
    keywords = [keyword for keyword, _ in dockerfile()]
    assert keywords.index("USER") < keywords.index("CMD")
    assert instruction("STOPSIGNAL") == ["SIGTERM"]
    # tini forwards SIGTERM to its child only, the worker; -g would reach job processes.
    assert [json.loads(rest) for rest in instruction("ENTRYPOINT")] == [["tini", "--"]]
    assert any("tini" in run for run in instruction("RUN"))
    (cmd,) = instruction("CMD")
    command, options = parse_command(json.loads(cmd))
    assert command == "worker"
    assert options["drain_timeout"] == 60
    assert ".venv" in (DEPLOY / ".dockerignore").read_text().split()


def dockerfile_healthcheck() -> tuple[dict[str, str], list[str]]:
    (healthcheck,) = instruction("HEALTHCHECK")
    flags, _, cmd = healthcheck.partition(" CMD ")
    options = dict(flag.removeprefix("--").split("=") for flag in flags.split())
    return options, json.loads(cmd)


def test_the_dockerfile_healthcheck_is_errands_health() -> None:
    options, argv = dockerfile_healthcheck()
    assert parse_command(argv)[0] == "health"
    # Longer than errands' own database deadline, so a slow database reports itself.
    assert float(options["timeout"].removesuffix("s")) > DEFAULTS.database_timeout
    # The image's default command is the one the manifest runs, probes included.
    (cmd,) = instruction("CMD")
    assert json.loads(cmd) == worker_container()["args"]
    assert argv == worker_container()["livenessProbe"]["exec"]["command"]


# -- Kubernetes ---------------------------------------------------------------------------


def test_the_deployment_surges_before_it_stops_a_worker() -> None:
    deployment = manifests()["Deployment"]["spec"]
    assert deployment["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert deployment["replicas"] >= 2
    assert deployment["minReadySeconds"] > 0
    command, options = parse_command(worker_container()["args"])
    assert command == "worker"
    drain = options["drain_timeout"]
    assert drain is not None
    assert pod_spec()["terminationGracePeriodSeconds"] >= drain + 20
    assert "command" not in worker_container()  # the image's tini stays PID 1


def test_every_container_reads_the_database_url_from_the_secret() -> None:
    secret = manifests()["Secret"]
    assert set(secret["stringData"]) == {"ERRANDS_DATABASE_URL"}
    (init,) = pod_spec()["initContainers"]
    assert parse_command(init["args"]) == ("migrate", {"print_sql": False})
    assert init["image"] == worker_container()["image"]
    for container in (init, worker_container()):
        assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    for name in container_env(worker_container()):
        assert name in {settings.env_name(f.name) for f in dataclasses.fields(DEFAULTS)}


def test_the_liveness_probe_is_errands_health_with_room_for_outages() -> None:
    probe = worker_container()["livenessProbe"]
    command, options = parse_command(probe["exec"]["command"])
    assert command == "health"
    assert probe["timeoutSeconds"] > DEFAULTS.database_timeout
    max_age = options["max_age"] or DEFAULTS.heartbeat_timeout
    assert max_age > DEFAULTS.heartbeat_interval  # a live worker is always fresh
    # Five minutes of failures before a restart: a short database outage (workers
    # ride it out) does not restart every pod at once.
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 300


def run_probe(argv: Sequence[str], url: str) -> subprocess.CompletedProcess[str]:
    """``argv`` as the kubelet runs it in the container: the Secret's variable set."""
    env = {**os.environ, "ERRANDS_DATABASE_URL": url}
    env.pop("ERRANDS_HEARTBEAT_TIMEOUT", None)
    return subprocess.run(
        [str(ERRANDS), *argv[1:]], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_the_probe_passes_with_a_live_worker_and_fails_with_a_dead_one(
    pg_backend: Backend, tmp_path: Path
) -> None:
    argv = worker_container()["livenessProbe"]["exec"]["command"]
    url = pg_backend.url

    idle = run_probe(argv, url)
    assert idle.returncode == 1
    assert "no worker heartbeat within 300 s" in idle.stderr

    with WorkerProcess.main(url, tmp_path / "worker.log") as worker:
        info = worker.wait_registered()
        live = run_probe(argv, url)
        assert live.returncode == 0, live.stderr
        assert live.stdout.startswith("ok: ")

        worker.signal_group(signal.SIGKILL)  # the pod's node is gone
        worker.wait(timeout=10)
    assert run_probe(argv, url).returncode == 0  # its heartbeat is still fresh...
    backdate_heartbeat(url, info.worker_id, DEFAULTS.heartbeat_timeout + 1)
    dead = run_probe(argv, url)  # ...until heartbeat_timeout
    assert dead.returncode == 1
    assert "1 stale worker" in dead.stderr


@pytest.mark.slow
def test_the_init_container_makes_the_probe_see_a_current_schema(empty_pg_url: str) -> None:
    probe = worker_container()["livenessProbe"]
    (init,) = pod_spec()["initContainers"]
    before = run_probe(probe["exec"]["command"], empty_pg_url)
    assert before.returncode == 1
    assert "run `errands migrate`" in before.stderr
    assert run_probe(init["args"], empty_pg_url).returncode == 0
    after = run_probe(probe["exec"]["command"], empty_pg_url)
    assert after.returncode == 1
    assert "no worker heartbeat" in after.stderr  # the schema is fine now


def test_the_probe_fails_in_time_without_a_database() -> None:
    probe = worker_container()["livenessProbe"]
    started = time.monotonic()
    down = run_probe(probe["exec"]["command"], "postgresql://nobody@127.0.0.1:1/none")
    assert down.returncode == 1
    assert "database unreachable" in down.stderr
    assert time.monotonic() - started < probe["timeoutSeconds"]


# -- a rolling restart ----------------------------------------------------------------------


@pytest.fixture
def pods(pg_backend: Backend, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for pod in started:
        pod.close()


def start_pod(url: str, tmp_path: Path, pods: list[WorkerProcess]) -> WorkerProcess:
    """The manifest's worker container, its jobs module swapped for the test's."""
    container = worker_container()
    args = ["flow_jobs" if arg == "myapp.jobs" else arg for arg in container["args"]]
    assert "flow_jobs" in args
    env = {**os.environ, **container_env(container), "ERRANDS_DATABASE_URL": url}
    pod = WorkerProcess(
        [str(ERRANDS), *args[1:]], tmp_path / f"pod{len(pods)}.log", url=url, env=env
    )
    pods.append(pod)
    pod.wait_registered()
    return pod


@pytest.mark.slow
def test_a_rolling_restart_runs_every_job_exactly_once(
    pg_backend: Backend, pods: list[WorkerProcess], tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    old = start_pod(pg_backend.url, tmp_path, pods)
    tokens = [f"j{n}" for n in range(200)]
    errands.enqueue_many([flow_jobs.Timed(str(trail), token, 0.02) for token in tokens])
    wait_for(lambda: len(flow_jobs.read_trail(trail)) >= 20, timeout=30)

    start_pod(pg_backend.url, tmp_path, pods)  # maxSurge 1: the new pod first
    old.signal(signal.SIGTERM)  # then the kubelet stops the old one
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert old.wait(timeout=grace) == 0
    stopped = time.time()
    assert "Traceback" not in old.log()

    def done() -> bool:
        return len(errands.results(limit=400)) >= len(tokens) and not errands.requests()

    wait_for(done, timeout=60)
    runs = flow_jobs.read_trail(trail)
    started = Counter(run.token for run in runs)
    assert started == Counter(tokens)  # none lost, none run twice
    assert all(run.end is not None for run in runs)
    assert any(run.start > stopped for run in runs)  # the new pod took over the rest
    results = errands.results(limit=400)
    assert Counter(result.status for result in results) == {Status.SUCCESSFUL: len(tokens)}
    assert len({result.request_uuid for result in results}) == len(tokens)
