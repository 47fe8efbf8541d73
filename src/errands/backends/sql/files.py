"""Load a backend's SQL: named blocks from its ``.sql`` file, and its migrations.

A block starts with a line ``-- name: some_name`` and runs until the next one.
Comments inside blocks are kept (they document locking) and are harmless to run.

A block ``-- fragment: some_fragment`` is no query but text that several queries
share, such as the dashboard's selection of jobs: ``{{some_fragment}}`` in a
query stands for it, its continuation lines indented like the line holding the
placeholder. A fragment's leading comment lines document it and are not copied.

Migrations are files ``migrations/<dialect>/<version>_<what it adds>.sql`` beside
this module, one per schema version (``0001_jobs_tables.sql``, ...), applied in the
order of their version numbers.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_BLOCK_LINE = re.compile(r"^--\s*(name|fragment):\s*(\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_MIGRATION_FILE = re.compile(r"^(\d+)_\w+\.sql$")


@functools.cache
def load_queries(dialect: str) -> dict[str, str]:
    """The blocks of ``errands/backends/<dialect>/queries.sql`` by name."""
    package = resources.files(f"errands.backends.{dialect}")
    text = package.joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _BLOCK_LINE.split(text)
    # parts = [preamble, kind1, name1, body1, kind2, name2, body2, ...]
    blocks = list(zip(parts[1::3], parts[2::3], parts[3::3], strict=True))
    fragments = {name: _fragment(body) for kind, name, body in blocks if kind == "fragment"}
    return {
        name: _expand(_statement(body), fragments) for kind, name, body in blocks if kind == "name"
    }


def _fragment(body: str) -> str:
    lines = _statement(body).splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines)


def _expand(statement: str, fragments: dict[str, str]) -> str:
    """``statement`` with each ``{{fragment}}`` replaced by the fragment's text."""
    lines = []
    for line in statement.splitlines():
        pad = line[: len(line) - len(line.lstrip())]

        def fragment(match: re.Match[str], pad: str = pad) -> str:
            return fragments[match.group(1)].replace("\n", "\n" + pad)

        lines.append(_PLACEHOLDER.sub(fragment, line))
    return "\n".join(lines)


def _statement(body: str) -> str:
    """A block without the section heading comments that may trail it."""
    lines = body.strip().splitlines()
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
        lines.pop()
    return "\n".join(lines)


@functools.cache
def load_migrations(dialect: str) -> tuple[tuple[int, str], ...]:
    """(version, script) of each file in ``errands/backends/<dialect>/migrations``, by version.

    Versions must run 1, 2, 3, ... without gaps or repeats: a missing or doubled
    file would silently change which schema a version number means.
    """
    folder = resources.files(f"errands.backends.{dialect}").joinpath("migrations")
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
