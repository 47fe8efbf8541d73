"""``manage.py errands <command>``: errands' command line inside a Django project.

Everything after ``errands`` goes to the ``errands`` command unchanged
(``manage.py errands worker --queue mail``, ``manage.py errands --help``), with
Django set up, so the worker and its children use the project's settings.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

#: Django's own options, already applied by manage.py before this command runs.
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


class Command(BaseCommand):
    help = "Run an errands command (worker, migrate, results, ...); see `errands --help`."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("errands_args", nargs="*", help="arguments of `errands`")

    def run_from_argv(self, argv: list[str]) -> None:
        # Not parsed by Django: options such as --help and --queue belong to errands.
        run_errands(_without_django_options(argv[2:]))

    def handle(self, *args: Any, **options: Any) -> None:
        run_errands([*args, *options.get("errands_args", [])])


def run_errands(args: list[str]) -> None:
    """Run ``errands ARGS``; a non-zero exit becomes a CommandError (for call_command)."""
    from errands import cli

    try:
        cli.main(args)
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise CommandError(f"errands {' '.join(args)} failed", returncode=_code(exit)) from None


def _code(exit: SystemExit) -> int:
    return exit.code if isinstance(exit.code, int) else 1


def _without_django_options(args: list[str]) -> list[str]:
    kept: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in _DJANGO_OPTIONS:
            skip_next = True
        elif not arg.startswith(tuple(f"{option}=" for option in _DJANGO_OPTIONS)):
            kept.append(arg)
    return kept
