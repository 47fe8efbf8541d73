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
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import resources

_BLOCK_LINE = re.compile(r"^--\s*(name|fragment):\s*(\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_MIGRATION_FILE = re.compile(r"^(\d+)_\w+\.sql$")


class Statements(Mapping[str, str]):
    """Named statements, each worked out on first use (a process's first enqueue
    needs one of the hundred or so: it does not pay for the others)."""

    def __init__(self, names: Iterable[str], make: Callable[[str], str]) -> None:
        self._names = dict.fromkeys(names)  # in the order of the file
        self._make = make
        self._made: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        try:
            return self._made[name]
        except KeyError:
            if name not in self._names:
                raise
        # Two threads may both make it: the same text, and the last one wins.
        statement = self._made[name] = self._make(name)
        return statement

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def derived(self, change: Callable[[str], str]) -> Statements:
        """These statements, each passed through ``change`` on first use."""
        return Statements(self._names, lambda name: change(self[name]))


@functools.cache
def load_queries(dialect: str) -> Statements:
    """The blocks of ``errands/backends/<dialect>/queries.sql`` by name.

    The file is read and split once; a block's statement (trimmed, its fragments
    expanded) is made when first asked for."""
    package = resources.files(f"errands.backends.{dialect}")
    text = package.joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _BLOCK_LINE.split(text)
    # parts = [preamble, kind1, name1, body1, kind2, name2, body2, ...]
    blocks = list(zip(parts[1::3], parts[2::3], parts[3::3], strict=True))
    bodies = {name: body for kind, name, body in blocks if kind == "name"}
    fragment_bodies = {name: body for kind, name, body in blocks if kind == "fragment"}
    fragments = Statements(fragment_bodies, lambda name: _fragment(fragment_bodies[name]))

    def statement(name: str) -> str:
        made = _statement(bodies[name])
        return _expand(made, fragments) if "{{" in made else made

    return Statements(bodies, statement)


def _fragment(body: str) -> str:
    lines = _statement(body).splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines)


def _expand(statement: str, fragments: Mapping[str, str]) -> str:
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
