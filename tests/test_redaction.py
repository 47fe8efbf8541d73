"""Database passwords never shown: the URL's userinfo and ``?password=`` masked in
banners, ``errands settings``, logs, errors and the dashboard's banner."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from click.testing import CliRunner
from worker_process import WorkerProcess

from conftest import wait_for
from errands.cli import cli
from errands.redaction import redact_text, redact_url

ERRANDS = str(Path(sys.executable).with_name("errands"))
USERINFO_SECRET = "Us3rInfoS3cret"
QUERY_SECRET = "Qu3ryS3cret"

pytestmark = pytest.mark.usefixtures("cli_state_restored")  # the CLI sets process-wide state


def with_passwords(url: str) -> str:
    """``url`` carrying both kinds of password; trust authentication ignores them."""
    parts = urlsplit(url)
    netloc = f"{parts.username}:{USERINFO_SECRET}@{parts.hostname}:{parts.port or 5432}"
    query = f"password={QUERY_SECRET}&application_name=errands_test"
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def assert_no_secret(text: str) -> None:
    assert USERINFO_SECRET not in text
    assert QUERY_SECRET not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("postgresql://app:p%40ss@db/app", "postgresql://app:***@db/app"),
        ("postgresql://db/app?password=s3cret&sslmode=require", None),
        ("postgresql:///app?sslpassword=k3y", "postgresql:///app?sslpassword=***"),
        ("postgres://app:s3cret@[::1]:5432/app", "postgres://app:***@[::1]:5432/app"),
        ("postgresql://app:s3cret@db:notaport/app", "postgresql://app:***@db:notaport/app"),
        ("app:s3cret@db/app", "app:***@db/app"),
        ("sqlite:///errands.sqlite3", "sqlite:///errands.sqlite3"),
        ("sqlite:////var/lib/errands.db", "sqlite:////var/lib/errands.db"),
    ],
)
def test_redact_url(url: str, shown: str | None) -> None:
    masked = redact_url(url)
    for secret in ("s3cret", "p%40ss", "p@ss", "k3y"):
        assert secret not in masked
    if shown is not None:
        assert masked == shown
    else:
        assert masked == "postgresql://db/app?password=***&sslmode=require"


def test_redact_text_masks_the_password_wherever_it_appears() -> None:
    url = "postgresql://app:p%40ss@db/app?password=other"
    text = 'bad "p@ss" in postgresql://app:p%40ss@db/app, then other and ftp://u:zz@h'
    masked = redact_text(text, url)
    assert "p@ss" not in masked and "p%40ss" not in masked
    assert "other" not in masked and "zz" not in masked
    assert masked.count("***") == 4


def test_settings_listing_and_json_mask_both_passwords(pg_url: str) -> None:
    url = with_passwords(pg_url)
    for args in (["settings"], ["settings", "--json"]):
        result = CliRunner().invoke(cli, ["--database-url", url, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert_no_secret(result.output)
        assert "***" in result.output


def test_unsupported_scheme_error_masks_the_password() -> None:
    url = f"mysql://app:{USERINFO_SECRET}@db/app?password={QUERY_SECRET}"
    result = CliRunner().invoke(cli, ["--database-url", url, "results"])
    assert result.exit_code == 2
    assert "unsupported scheme" in result.stderr
    assert_no_secret(result.stderr)


@pytest.mark.slow
def test_missing_schema_error_masks_the_password(empty_pg_url: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", with_passwords(empty_pg_url), "results"])
    assert result.exit_code == 2
    assert "errands migrate" in result.stderr
    assert_no_secret(result.stderr)


@pytest.mark.slow
def test_connection_failure_masks_the_password() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = with_passwords(f"postgresql://postgres@127.0.0.1:{port}/none")
    result = CliRunner().invoke(cli, ["--database-url", url, "results"])
    assert result.exit_code != 0
    assert "cannot connect" in result.stderr
    assert_no_secret(result.output + result.stderr)


@pytest.mark.slow
def test_worker_banner_and_logs_mask_the_password(pg_url: str, tmp_path: Path) -> None:
    url = with_passwords(pg_url)
    log = tmp_path / "worker.log"
    with WorkerProcess.errands(url, log, "worker", "--log-level", "debug") as process:
        process.wait_registered(url=pg_url)
        process.stop(signal.SIGTERM)
        stderr = process.log()
    assert "database" in stderr and "***" in stderr
    assert_no_secret(stderr)


@pytest.mark.slow
def test_dashboard_banner_masks_the_password(pg_url: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = with_passwords(pg_url)
    command = [ERRANDS, "--database-url", url, "dashboard", "--port", str(port)]
    command.append("--insecure-no-auth")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _listening(port), timeout=20)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert "errands dashboard on" in stderr and "***" in stderr
    assert_no_secret(stderr)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
