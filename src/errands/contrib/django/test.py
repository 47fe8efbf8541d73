"""Django test runner support.

errands keeps its own connections to the test database (a pool on PostgreSQL),
which would stop Django from dropping it at the end of the run. Use this runner::

    TEST_RUNNER = "errands.contrib.django.test.DiscoverRunner"

or call :func:`close_connections` before the test database is destroyed (with
pytest-django, in a session fixture that depends on ``django_db_setup``).
"""

from __future__ import annotations

from typing import Any

from django.test import runner

from errands import api


def close_connections() -> None:
    """Close errands' database connections; they reopen on next use."""
    from errands.contrib.django import conf
    from errands.contrib.django.backends import opener

    api.set_backend_opener(opener(conf.read().database))


class DiscoverRunner(runner.DiscoverRunner):
    """Django's test runner, closing errands' connections before dropping test databases."""

    def teardown_databases(self, old_config: Any, **kwargs: Any) -> None:
        close_connections()
        super().teardown_databases(old_config, **kwargs)
