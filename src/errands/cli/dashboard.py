"""``errands dashboard``: serve the web dashboard (the app lives in :mod:`errands.dashboard`)."""

from __future__ import annotations

import errno
import os
import signal
import socket

import click

from errands.cli import configuration
from errands.cli.errors import CliError, ListenError, SetupError, friendly_errors


@click.command("dashboard")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but 127.0.0.1 lets other machines connect.",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--password",
    metavar="TEXT",
    help="The login password [dashboard_password]. Prefer the environment variable "
    "ERRANDS_DASHBOARD_PASSWORD: a flag is visible to other users in `ps`.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="No login at all, for a dashboard on your own machine (127.0.0.1 only).",
)
@click.option(
    "--read-only",
    is_flag=True,
    default=None,
    help="Show everything but allow no action [dashboard_read_only].",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A host name browsers reach the dashboard by (repeatable) "
    "[dashboard_allowed_hosts]. Default: --host and the loopback names.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDRESS",
    help="A reverse proxy's address or network (repeatable) whose X-Forwarded-For, "
    "-Proto and -Host are believed [dashboard_trusted_proxies].",
)
def dashboard_command(
    host: str,
    port: int,
    password: str | None,
    insecure_no_auth: bool,
    read_only: bool | None,
    allowed_hosts: tuple[str, ...],
    trusted_proxies: tuple[str, ...],
) -> None:
    """Serve the web dashboard: queues, jobs, tracebacks, workers, schedules.

    Needs the dashboard extra: pip install 'errands[dashboard]'. Every page asks
    for the password (setting dashboard_password) unless --insecure-no-auth.
    To add the dashboard to your own ASGI application instead, mount
    errands.dashboard.create_app() (see the README).

    Exits 2 when a setting forbids serving (no password, no login on a public
    address), 4 when it cannot listen on --host/--port (the port is in use).

    \b
    Examples:
      ERRANDS_DASHBOARD_PASSWORD=... errands dashboard
      errands dashboard --insecure-no-auth --port 9000
      ERRANDS_DASHBOARD_PASSWORD=... errands dashboard --host 0.0.0.0 --read-only \\
        --allowed-host ops.example.com --trusted-proxy 10.0.0.2
    """
    # An absent flag must not override the setting from the environment or pyproject.
    config = configuration.apply(
        {
            "dashboard_password": password,
            "dashboard_read_only": read_only or None,
            "dashboard_allowed_hosts": list(allowed_hosts) or None,
            "dashboard_trusted_proxies": list(trusted_proxies) or None,
        }
    )
    configuration.import_job_modules(config)  # retries rebuild jobs; schedules name their classes
    try:
        from errands.dashboard import app
    except ImportError as exc:
        raise CliError(
            f"the dashboard needs its extra: pip install 'errands[dashboard]' ({exc})"
        ) from None
    configuration.check_schema(config)
    # Every refusal (no password, no login on a public address, a port in use) comes
    # before the line that says the dashboard is serving.
    if not config.dashboard_password and not insecure_no_auth:
        raise SetupError(
            "the dashboard needs a password: set ERRANDS_DASHBOARD_PASSWORD (or "
            "--password), or pass --insecure-no-auth for a dashboard on 127.0.0.1 only"
        )
    with friendly_errors():
        asgi_app = app.standalone_app(host, insecure_no_auth=insecure_no_auth)
    import uvicorn

    server = uvicorn.Server(app.server_config(asgi_app, host, port, "info"))
    # From here on Ctrl-C (or SIGTERM) asks the server to stop, even before uvicorn
    # installs its own handlers: a signal in between would otherwise be lost, and
    # the dashboard would serve on.
    previous = {s: signal.signal(s, server.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        listening = listen(host, port)
        click.echo(
            f"errands dashboard on http://{_url_host(host)}:{port}/ "
            f"({configuration.describe_database(config)}); Ctrl-C stops it",
            err=True,
        )
        try:
            server.run(sockets=[listening])
        finally:
            listening.close()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` for uvicorn, or a ListenError (exit code 4)
    saying why not: the port is in use, the address is not this machine's..."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        return socket.create_server(sockaddr, family=family)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"cannot serve the dashboard on {address}: the port is already in use "
                f"(another dashboard or program listens there); stop it or choose "
                f"another --port"
            ) from None
        gai = isinstance(exc, socket.gaierror)
        reason = exc.strerror if gai or not exc.errno else os.strerror(exc.errno)
        raise ListenError(f"cannot serve the dashboard on {address}: {reason}") from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
