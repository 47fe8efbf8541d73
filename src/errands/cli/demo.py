"""``errands demo``: watch a worker run example jobs (the jobs live in :mod:`errands.demo`)."""

from __future__ import annotations

import sys

import click

from errands.cli import configuration


@click.command("demo")
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the worker running after the demo's jobs finish, so you can enqueue "
    "more from another terminal; stop it with Ctrl-C.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    metavar="SECONDS",
    help="Give up if the demo's jobs have not finished by then.",
)
def demo_command(keep: bool, timeout: float) -> None:
    """Watch a worker run example jobs, then print a summary (no setup needed).

    Enqueues a few example jobs (successes, retries, a deferral, a delayed job,
    a duplicate skipped by its concurrency key, a failure), runs a worker in
    this process until each has its final result, and prints what happened.

    Uses the configured database: with no configuration, the SQLite file
    errands.sqlite3 in the working directory (created and migrated). The demo's
    jobs use their own queue, errands-demo, so other jobs are not touched.

    \b
    Examples:
      errands demo
      errands --database-url postgresql://postgres@127.0.0.1/postgres demo
    """
    from errands.demo import run_demo

    configuration.current()
    sys.exit(run_demo(keep_running=keep, timeout=timeout))
