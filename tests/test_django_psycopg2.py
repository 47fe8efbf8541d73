"""Django on psycopg2 (issue 21, item 9): enqueues join ``transaction.atomic()`` as on
psycopg 3. The project runs Django's PostgreSQL backend on psycopg2
(tests/django_project/project/postgresql_psycopg2) while errands keeps psycopg 3."""

from __future__ import annotations

import pytest

from test_django import Project, project  # noqa: F401  (the fixture: the Django project)

pytest.importorskip("psycopg2")


@pytest.mark.slow
@pytest.mark.parametrize("project", ["postgresql"], indirect=True)
def test_jobs_join_djangos_transaction_on_psycopg2(project: Project) -> None:  # noqa: F811
    project.environ["PROJECT_DB_DRIVER"] = "psycopg2"  # migrated on psycopg 3: same tables
    project.scenario("psycopg2_joins_transactions")
