"""Load a backend's SQL: named blocks from its ``.sql`` file, and its migrations.

A block starts with a line ``-- name: some_name`` and runs until the next one.
Comments inside blocks are kept (they document locking) and are harmless to run.

Migrations are files ``migrations/<dialect>/<version>_<what it adds>.sql`` beside
this module, one per schema version (``0001_jobs_tables.sql``, ...), applied in the
order of their version numbers.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d+)_\w+\.sql$")


@functools.cache
def load_queries(filename: str) -> dict[str, str]:
    """The blocks of ``errands/backends/<filename>`` by name."""
    text = resources.files("errands.backends").joinpath(filename).read_text(encoding="utf-8")
    parts = _NAME_LINE.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: _statement(body) for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def _statement(body: str) -> str:
    """A block without the section heading comments that may trail it."""
    lines = body.strip().splitlines()
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
        lines.pop()
    return "\n".join(lines)


@functools.cache
def load_migrations(dialect: str) -> tuple[tuple[int, str], ...]:
    """(version, script) of each file in ``errands/backends/migrations/<dialect>``, by version.

    Versions must run 1, 2, 3, ... without gaps or repeats: a missing or doubled
    file would silently change which schema a version number means.
    """
    folder = resources.files("errands.backends").joinpath("migrations", dialect)
    found: dict[int, str] = {}
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"two {dialect} migrations have version {version}")
        found[version] = entry.read_text(encoding="utf-8").strip()
    if sorted(found) != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migration versions are not 1..n: {sorted(found)}")
    return tuple(sorted(found.items()))
