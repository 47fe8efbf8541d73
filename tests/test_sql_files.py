"""The backends' SQL files: numbered migrations, and one vocabulary of query names."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from errands.backends.sqlfile import load_migrations

DIALECTS = ("postgres", "sqlite")

#: The schema version each dialect's migrations end at. Databases in use record
#: these numbers (errands_schema); renumbering a migration would make errands
#: re-apply it, or skip one, on an existing database.
LATEST_VERSIONS = {"postgres": 6, "sqlite": 5}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_migrations_are_numbered_files_applied_in_order(dialect: str) -> None:
    folder = resources.files("errands.backends").joinpath("migrations", dialect)
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    # Four digits, then what the migration adds.
    assert all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", name) for name in names), names
    versions = [version for version, _ in load_migrations(dialect)]
    assert versions == [int(name[:4]) for name in names]
    assert versions == list(range(1, LATEST_VERSIONS[dialect] + 1))
    assert all(script.strip() for _, script in load_migrations(dialect))


def test_postgres_migrations_record_their_own_version() -> None:
    # migrate() runs each PostgreSQL migration as one script that records its version.
    for version, script in load_migrations("postgres"):
        assert f"INSERT INTO errands_schema (version) VALUES ({version});" in script
