"""The dashboard's sessions, Host check and proxy headers, over real HTTP: each
dashboard is served by uvicorn in a thread, configured as ``errands dashboard``
serves it, on a real database of each kind."""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.applications import Starlette

from errands import api, settings
from errands.backends import Backend, open_backend
from errands.cli import cli
from errands.dashboard.app import create_app, server_config, standalone_app
from errands.dashboard.security import LOGIN_FAILURES_ALLOWED
from errands.dashboard.sessions import SCRYPT_COST, SECRET_NAME, SESSION_COOKIE
from errands.errors import ConfigurationError

PASSWORD = "correct horse battery staple"
HOST = "127.0.0.1"

Serve = Callable[[Starlette], str]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def serve(db_url: str) -> Iterator[Serve]:
    """Serves apps with uvicorn as ``errands dashboard`` does; gives their base URL."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: Starlette) -> str:
        port = free_port()
        server = uvicorn.Server(server_config(app, HOST, port, "warning"))
        thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        running.append((server, thread))
        return f"http://{HOST}:{port}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)


def dashboard(serve: Serve, **options: Any) -> str:
    """A password dashboard built as ``errands dashboard`` builds it, served."""
    options.setdefault("password", PASSWORD)
    return serve(standalone_app(HOST, **options))


def client(base_url: str, **cookies: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, cookies=cookies, timeout=10)


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def log_in(
    browser: httpx.Client, password: str = PASSWORD, headers: dict[str, str] | None = None
) -> httpx.Response:
    token = csrf_token(browser.get("/login", headers=headers).text)
    data = {"password": password, "csrf_token": token, "next": "/"}
    return browser.post("/login", data=data, headers=headers)


def logged_in(browser: httpx.Client) -> bool:
    status = browser.get("/").status_code
    assert status in (200, 303), status
    return status == 200


def pause(browser: httpx.Client, queue: str, headers: dict[str, str] | None = None) -> int:
    token = csrf_token(browser.get("/", headers=headers).text)
    data = {"queue": queue, "csrf_token": token, "next": "/"}
    return browser.post("/queues/pause", data=data, headers=headers).status_code


# -- 6. sessions ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_session_cookie_cannot_be_checked_against_password_guesses(
    serve: Serve, backend: Backend
) -> None:
    anonymous = client(dashboard(serve)).get("/login")
    cookie = anonymous.cookies[SESSION_COOKIE]
    # The key errands derived from the password until now: guesses could be tested offline.
    from_password = hmac.new(PASSWORD.encode(), b"errands.dashboard.session", hashlib.sha256)
    for key in (from_password.digest(), PASSWORD.encode()):
        with pytest.raises(BadSignature):
            URLSafeTimedSerializer(key, salt="errands.dashboard").loads(cookie)
    # It is signed with the random secret the dashboard stored, and the password
    # stretched by scrypt: even with the secret, a guess costs a memory-hard hash.
    stored = backend.shared_secret(name=SECRET_NAME, candidate="not the first")
    assert stored != "not the first" and len(stored) >= 32
    quick = hmac.new(stored.encode(), b"errands.dashboard.session\0" + PASSWORD.encode(), "sha256")
    with pytest.raises(BadSignature):
        URLSafeTimedSerializer(quick.digest(), salt="errands.dashboard").loads(cookie)
    salt = b"errands.dashboard.session\0" + stored.encode()
    stretched = hashlib.scrypt(PASSWORD.encode(), salt=salt, **SCRYPT_COST)
    key = hmac.new(stored.encode(), stretched, "sha256").digest()
    assert "csrf" in URLSafeTimedSerializer(key, salt="errands.dashboard").loads(cookie)


@pytest.mark.slow
def test_dashboards_on_one_database_accept_each_others_logins(serve: Serve) -> None:
    first, second = dashboard(serve), dashboard(serve)
    browser = client(first)
    assert log_in(browser).status_code == 303
    cookie = browser.cookies[SESSION_COOKIE]
    elsewhere = client(second, **{SESSION_COOKIE: cookie})
    assert logged_in(elsewhere)
    assert pause(elsewhere, "shared") == 303  # its CSRF token too
    assert api.paused_queues() == ["shared"]
    # Changing the password ends the sessions made with the old one.
    assert not logged_in(client(dashboard(serve, password="another"), **{SESSION_COOKIE: cookie}))


@pytest.mark.slow
def test_a_copy_of_the_cookie_is_refused_everywhere_after_logging_out(serve: Serve) -> None:
    first, second = dashboard(serve), dashboard(serve)
    browser = client(first)
    assert log_in(browser).status_code == 303
    copied = browser.cookies[SESSION_COOKIE]
    assert logged_in(client(first, **{SESSION_COOKIE: copied}))

    token = csrf_token(browser.get("/").text)
    assert browser.post("/logout", data={"csrf_token": token}).status_code == 303
    assert not logged_in(browser)
    assert not logged_in(client(first, **{SESSION_COOKIE: copied}))
    assert not logged_in(client(second, **{SESSION_COOKIE: copied}))


@pytest.mark.slow
def test_an_expired_login_is_refused(serve: Serve) -> None:
    short = dashboard(serve, session_lifetime=1)
    # A dashboard whose own cookies last long: only the database record expires there.
    long = dashboard(serve, session_lifetime=3600)
    browser = client(short)
    assert log_in(browser).status_code == 303
    cookie = browser.cookies[SESSION_COOKIE]
    assert logged_in(client(long, **{SESSION_COOKIE: cookie}))
    time.sleep(2.2)  # cookie timestamps count whole seconds
    assert not logged_in(client(short, **{SESSION_COOKIE: cookie}))
    assert not logged_in(client(long, **{SESSION_COOKIE: cookie}))


def test_dashboards_starting_at_once_agree_on_one_secret(db_url: str) -> None:
    backends = [open_backend(db_url) for _ in range(6)]
    start = threading.Barrier(len(backends))
    found: list[str] = []

    def generate(backend: Backend, candidate: str) -> None:
        start.wait()
        found.append(backend.shared_secret(name="race", candidate=candidate))

    threads = [
        threading.Thread(target=generate, args=(backend, f"candidate-{i}"))
        for i, backend in enumerate(backends)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for backend in backends:
            backend.close()
    assert len(found) == len(backends)
    assert len(set(found)) == 1 and found[0].startswith("candidate-")


def test_the_session_settings_are_checked(db_url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"'dashboard_secret_key'.*too short"):
        settings.load(environ={"ERRANDS_DASHBOARD_SECRET_KEY": "password123"})
    with pytest.raises(ConfigurationError, match="'dashboard_session_lifetime'"):
        create_app(password=PASSWORD, session_lifetime=0)
    key = "k" * 32
    assert settings.load(environ={"ERRANDS_DASHBOARD_SECRET_KEY": key}).dashboard_secret_key == key


# -- 7. the Host header ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_foreign_host_is_refused_even_without_authentication(
    serve: Serve, backend: Backend
) -> None:
    base = serve(standalone_app(HOST, insecure_no_auth=True))
    port = base.rsplit(":", 1)[1]
    browser = client(base)
    rebound = {"Host": f"attacker.example:{port}"}
    assert browser.get("/", headers=rebound).status_code == 400
    assert browser.get("/results", headers={"Host": "attacker.example"}).status_code == 400
    token = csrf_token(browser.get("/").text)
    action = {"queue": "q", "csrf_token": token}
    assert browser.post("/queues/pause", data=action, headers=rebound).status_code == 400
    assert backend.paused_queues() == []
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost"):
        assert browser.get("/", headers={"Host": host}).status_code == 200, host


@pytest.mark.slow
def test_allowed_hosts_come_from_the_setting(serve: Serve) -> None:
    settings.configure(dashboard_allowed_hosts=["ops.example.com", "*.ops.example.org"])
    try:
        base = serve(standalone_app(HOST, insecure_no_auth=True))
    finally:
        settings.configure(dashboard_allowed_hosts=None)
    browser = client(base)
    assert browser.get("/", headers={"Host": "ops.example.com"}).status_code == 200
    assert browser.get("/", headers={"Host": "a.ops.example.org:8000"}).status_code == 200
    assert browser.get("/").status_code == 400  # 127.0.0.1 is no longer listed
    assert browser.get("/", headers={"Host": "attacker.example"}).status_code == 400


@pytest.mark.slow
def test_mounted_without_a_bound_address_it_answers_for_loopback_names(serve: Serve) -> None:
    base = serve(create_app(insecure_no_auth=True))
    browser = client(base)
    assert browser.get("/").status_code == 200
    assert browser.get("/", headers={"Host": "localhost"}).status_code == 200
    assert browser.get("/", headers={"Host": "attacker.example"}).status_code == 400
    named = client(serve(create_app(insecure_no_auth=True, allowed_hosts=["ops.example.com"])))
    assert named.get("/", headers={"Host": "ops.example.com"}).status_code == 200


def test_bad_allowed_hosts_are_refused_naming_the_setting(db_url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"'dashboard_allowed_hosts'.*without scheme"):
        settings.load(environ={"ERRANDS_DASHBOARD_ALLOWED_HOSTS": "https://ops.example.com"})
    with pytest.raises(ConfigurationError, match=r"'dashboard_allowed_hosts'.*create_app"):
        create_app(insecure_no_auth=True, allowed_hosts=["ops.example.com:8000"])


# -- 8. client addresses and origins ------------------------------------------------------


def lock_out(browser: httpx.Client, headers: dict[str, str] | None = None) -> None:
    for _ in range(LOGIN_FAILURES_ALLOWED):
        assert log_in(browser, "guess", headers).status_code == 303
    assert log_in(browser, headers=headers).status_code == 429


@pytest.mark.slow
def test_a_forwarded_address_from_an_untrusted_peer_does_not_lift_a_lockout(
    serve: Serve,
) -> None:
    browser = client(dashboard(serve))
    lock_out(browser)  # 127.0.0.1 is locked out
    for spoofed in ({"X-Forwarded-For": "10.9.9.9"}, {"X-Real-IP": "10.9.9.9"}):
        assert log_in(browser, headers=spoofed).status_code == 429
    assert not logged_in(browser)


@pytest.mark.slow
def test_a_trusted_proxy_gives_the_client_address(serve: Serve) -> None:
    browser = client(dashboard(serve, trusted_proxies=[HOST]))
    lock_out(browser, {"X-Forwarded-For": "10.9.9.9"})
    # The proxy appends the address it saw: what the client wrote before it is not believed.
    chained = {"X-Forwarded-For": "10.9.9.10, 10.9.9.9"}
    assert log_in(browser, headers=chained).status_code == 429
    assert log_in(browser, headers={"X-Forwarded-For": "10.9.9.10"}).status_code == 303
    assert logged_in(browser)


@pytest.mark.slow
def test_an_origin_of_another_scheme_is_refused(serve: Serve, backend: Backend) -> None:
    base = dashboard(serve)
    browser = client(base)
    assert log_in(browser).status_code == 303
    https_origin = {"Origin": base.replace("http://", "https://")}
    assert pause(browser, "q", https_origin) == 403
    # X-Forwarded-Proto from an untrusted peer changes nothing.
    assert pause(browser, "q", {**https_origin, "X-Forwarded-Proto": "https"}) == 403
    assert backend.paused_queues() == []
    assert pause(browser, "q", {"Origin": base}) == 303
    assert backend.paused_queues() == ["q"]


@pytest.mark.slow
def test_a_trusted_proxy_gives_the_scheme_and_host_the_browser_used(
    serve: Serve, backend: Backend
) -> None:
    settings.configure(dashboard_allowed_hosts=["ops.example.com"])
    try:
        base = dashboard(serve, trusted_proxies=["127.0.0.0/8"])
    finally:
        settings.configure(dashboard_allowed_hosts=None)
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "ops.example.com"}
    # The cookies are Secure now (the browser used https): carried by hand over http.
    page = httpx.get(f"{base}/login", headers=proxied)
    assert "; Secure" in page.headers["set-cookie"]
    cookie = {"Cookie": f"{SESSION_COOKIE}={page.cookies[SESSION_COOKIE]}"}
    form = {"password": PASSWORD, "csrf_token": csrf_token(page.text), "next": "/"}
    login = httpx.post(f"{base}/login", data=form, headers={**proxied, **cookie})
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = {"Cookie": f"{SESSION_COOKIE}={login.cookies[SESSION_COOKIE]}"}
    token = csrf_token(httpx.get(f"{base}/", headers={**proxied, **cookie}).text)
    action = {"queue": "q", "csrf_token": token}
    for origin, status in (("http://ops.example.com", 403), ("https://ops.example.com", 303)):
        headers = {**proxied, **cookie, "Origin": origin}
        response = httpx.post(f"{base}/queues/pause", data=action, headers=headers)
        assert response.status_code == status, origin
    assert backend.paused_queues() == ["q"]


def test_bad_trusted_proxies_are_refused_naming_the_setting(db_url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"'dashboard_trusted_proxies'.*not an IP"):
        settings.load(environ={"ERRANDS_DASHBOARD_TRUSTED_PROXIES": "proxy.internal"})
    proxies = settings.load(environ={"ERRANDS_DASHBOARD_TRUSTED_PROXIES": "10.0.0.7, 10.0.0.0/8"})
    assert proxies.dashboard_trusted_proxies == ("10.0.0.7", "10.0.0.0/8")


def test_the_dashboard_command_takes_the_new_settings_as_flags(db_url: str) -> None:
    base = ["--database-url", db_url, "dashboard", "--password", PASSWORD]
    try:
        for flag, value, name in (
            ("--trusted-proxy", "proxy.internal", "dashboard_trusted_proxies"),
            ("--allowed-host", "https://ops.example.com", "dashboard_allowed_hosts"),
        ):
            result = CliRunner().invoke(cli, [*base, flag, value])
            assert result.exit_code == 2, result.output
            assert f"'{name}' (from the command line)" in result.output
    finally:
        settings.reset()
    secret = "s" * 40
    shown = CliRunner().invoke(cli, ["settings"], env={"ERRANDS_DASHBOARD_SECRET_KEY": secret})
    assert shown.exit_code == 0 and "dashboard_secret_key" in shown.output
    assert secret not in shown.output
