"""The backends' SQL files: numbered migrations, and one vocabulary of query names."""

from __future__ import annotations

import ast
import re
from importlib import resources

import pytest

from errands.backends.sql.files import load_migrations, load_queries

DIALECTS = ("postgres", "sqlite")

#: The schema version each dialect's migrations end at. Databases in use record
#: these numbers (errands_schema); renumbering a migration would make errands
#: re-apply it, or skip one, on an existing database.
LATEST_VERSIONS = {"postgres": 11, "sqlite": 10}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_migrations_are_numbered_files_applied_in_order(dialect: str) -> None:
    folder = resources.files(f"errands.backends.{dialect}").joinpath("migrations")
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


# -- one vocabulary of query names ------------------------------------------------------

#: Query names only one dialect has, and why. Everything else is named the same in
#: postgres/queries.sql and sqlite/queries.sql and means the same there. Most entries come in
#: groups: one PostgreSQL statement that moves rows between tables with DELETE ...
#: RETURNING inside WITH (SQLite has no data-modifying CTEs), against the two or
#: three SQLite statements that do the same inside one BEGIN IMMEDIATE transaction.
DIALECT_ONLY = {
    "postgres": {
        # Claims: SELECT ... FOR UPDATE SKIP LOCKED + DELETE + INSERT in one statement.
        "claim",
        # Outcomes: lock processes in uuid order, delete them, insert their results.
        "complete_many",
        # Cancelling pending requests: delete them and insert CANCELLED results.
        "cancel_pending",
        "cancel_pending_selected",
        # Unstarted processes back to requests, with NOTIFY of their queues.
        "release",
        # Rescue of dead workers' processes: row locks (SKIP LOCKED for orphans).
        "lock_orphaned_processes",
        "lose_processes",
        # Enqueueing: advisory locks per concurrency slot (SQLite's writer is already
        # alone), COPY for big batches, NOTIFY wake-ups (SQLite's listeners poll
        # data_version), and now() (the transaction's start; SQLite's `now` is read
        # once per transaction and passed as a parameter).
        "lock_slots",
        "copy_requests",
        "notify_queues",
        "transaction_now",
        # LISTEN/NOTIFY.
        "listen",
        "listen_results",
        # Concurrent migrators queue on an advisory lock (SQLite: BEGIN IMMEDIATE).
        "lock_migrations",
        # Keeping the request table's dead tuples in check (MVCC; SQLite has none).
        "queue_size_estimate",
        "vacuum_queue",
        "vacuum_processes",
        # A worker's statement_timeout (database_timeout), lifted around the vacuum.
        "no_statement_timeout",
        "worker_statement_timeout",
        # Claiming the requests flow control admitted, logging their starts, in one
        # statement (SQLite: claim_move_to_process and claim_delete_requests, then
        # log_limit_starts and trim_limit_starts).
        "claim_limited",
    },
    "sqlite": {
        # Transactions are explicit statements (psycopg manages PostgreSQL's).
        "begin_read",
        "begin_write",
        "commit",
        "rollback",
        "savepoint",
        "release_savepoint",
        "rollback_to_savepoint",
        # Connection setup and the file (PRAGMAs).
        "journal_mode",
        "enable_wal",
        "set_synchronous",
        # Workflow triggers fire triggers (a cancelled dependent ends its node).
        "set_recursive_triggers",
        # Which claimed jobs are a workflow's: PostgreSQL's claim statement says so.
        "claimed_in_workflows",
        "data_version",
        "database_file",
        # Migrations record their version here; PostgreSQL's record their own.
        "record_schema_version",
        # The SQLite halves of claim.
        "due_requests_any_queue",
        "due_requests_of_queues",
        "claim_move_to_process",
        "claim_delete_requests",
        # Expiry: PostgreSQL's claim ends the expired requests in its own statement.
        "expired_exist",
        "take_expired_requests",
        # Rows a TEXT PRIMARY KEY lets raw SQL write with a NULL or blob key
        # (PostgreSQL's uuid column refuses them), removed by the claim meeting one.
        "take_keyless_requests",
        # The SQLite halves of complete_many, cancel_pending(s), lose_processes and
        # release: delete the rows, then insert_result each (and a LOST one's
        # insert_followup; PostgreSQL writes both in lose_processes).
        "insert_result",
        "insert_followup",
        "delete_processes",
        "delete_request",
        "delete_selected_requests_returning",
        "delete_processes_of_worker",
        "delete_listed_processes_of_worker",
        "delete_orphaned_processes_of_worker",
        "release_to_requests",
        "release_delete_processes",
        # The SQLite halves of claim_limited: the starts of rate-limited keys.
        "log_limit_starts",
        "trim_limit_starts",
    },
}

#: The modules that run each dialect's queries: its own package, and the operations
#: written once for both (errands.backends.sql).
BACKEND_MODULES = {
    dialect: ("sql/backend.py", "sql/workflows.py", *(f"{dialect}/{m}" for m in modules))
    for dialect, modules in {
        "postgres": (
            "backend.py",
            "connection.py",
            "enqueue.py",
            "listener.py",
            "codec.py",
            "limited.py",
            "vacuum.py",
            "rescue.py",
        ),
        "sqlite": (
            "backend.py",
            "connection.py",
            "enqueue.py",
            "listener.py",
            "rules.py",
            "limited.py",
        ),
    }.items()
}


def _queries(dialect: str) -> dict[str, str]:
    return load_queries(dialect)


def test_both_dialects_name_their_queries_alike() -> None:
    postgres, sqlite = set(_queries("postgres")), set(_queries("sqlite"))
    assert postgres - sqlite == DIALECT_ONLY["postgres"]
    assert sqlite - postgres == DIALECT_ONLY["sqlite"]


def _names_in(source: str) -> set[str]:
    """The string literals of a module, and those an f-string would build from them.

    ``f"page_{name}_reversed"`` with ``name`` among the literals yields
    ``page_<literal>_reversed``, as the backends' paging does.
    """
    tree = ast.parse(source)
    literals = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    built = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.JoinedStr):
            continue
        first, last = node.values[0], node.values[-1]
        if len(node.values) not in (2, 3) or not isinstance(first, ast.Constant):
            continue
        if not isinstance(node.values[1], ast.FormattedValue):
            continue
        suffix = last.value if isinstance(last, ast.Constant) and len(node.values) == 3 else ""
        built |= {f"{first.value}{literal}{suffix}" for literal in literals}
    return literals | built


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_query_is_used_by_its_backend(dialect: str) -> None:
    folder = resources.files("errands.backends")
    used: set[str] = set()
    for module in BACKEND_MODULES[dialect]:
        used |= _names_in(folder.joinpath(module).read_text(encoding="utf-8"))
    assert set(_queries(dialect)) - used == set()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_no_query_is_left_among_the_migrations(dialect: str) -> None:
    assert not [name for name in _queries(dialect) if name.startswith("migration_")]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_fragments_are_expanded_and_used(dialect: str) -> None:
    text = resources.files(f"errands.backends.{dialect}").joinpath("queries.sql").read_text("utf-8")
    fragments = re.findall(r"^-- fragment: (\w+)$", text, re.MULTILINE)
    assert fragments
    for fragment in fragments:
        assert "{{" + fragment + "}}" in text, f"fragment {fragment} is not used"
    assert not [name for name, sql in _queries(dialect).items() if "{{" in sql or "}}" in sql]


def test_fragments_keep_the_indentation_of_their_placeholder() -> None:
    sql = _queries("sqlite")["delete_requests"]
    assert "\n    WHERE (:queue IS NULL OR queue = :queue)\n        AND (:job_class" in sql
