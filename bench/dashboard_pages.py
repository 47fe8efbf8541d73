"""How long the dashboard's pages take to render on a PostgreSQL database with a
big history (1,000,000 results by default).

    python bench/dashboard_pages.py --server-url postgresql://postgres@127.0.0.1:5432/postgres

It creates its own database on that server, migrates it, fills it with one
``INSERT ... SELECT generate_series`` per table (results ended over the last 7
days, about 1 in 20 errored, 1 in 100 retried), runs VACUUM ANALYZE as
autovacuum would, then requests each page several times through the ASGI app
in-process (database and rendering time; no network) and prints the median,
fastest and slowest. The database is dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import uuid
import warnings
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

import errands
from errands import api
from errands.backends import open_backend

FILL_RESULTS = """
INSERT INTO errands_result (
    uuid, process_uuid, request_uuid, requested_at, started_at, ended_at, created_at,
    status, worker_id, job_class, parameters, queue, priority, retries, retry_attempt,
    concurrency_key, error_type, error, traceback, retry_request_uuid
)
SELECT
    gen_random_uuid(), gen_random_uuid(), gen_random_uuid(),
    t.ended - interval '3 seconds', t.ended - interval '2 seconds', t.ended, t.ended,
    t.status, %(worker)s,
    'app.jobs.' || (ARRAY['Send', 'Resize', 'Sync', 'Report', 'Bill'])[1 + i %% 5],
    jsonb_build_object('args', jsonb_build_array(i), 'kwargs', '{}'::jsonb),
    (ARRAY['default', 'emails', 'reports', 'billing'])[1 + i %% 4],
    0, 3, 0, CASE WHEN i %% 50 = 0 THEN 'customer-' || (i %% 997) ELSE '' END,
    CASE WHEN t.status = 'ERRORED' THEN 'ValueError' ELSE '' END,
    CASE WHEN t.status = 'ERRORED' THEN 'bad input ' || i ELSE '' END,
    CASE WHEN t.status = 'ERRORED'
        THEN E'Traceback (most recent call last):\\n  File "app/jobs.py", line 42, in run\\n'
            || 'ValueError: bad input'
        ELSE '' END,
    CASE WHEN i %% 100 = 1 THEN gen_random_uuid() END
FROM generate_series(1, %(rows)s) AS i
CROSS JOIN LATERAL (
    SELECT
        now() - (i * %(span_seconds)s::float8 / %(rows)s) * interval '1 second' AS ended,
        CASE
            WHEN i %% 20 = 1 THEN 'ERRORED'
            WHEN i %% 100 = 2 THEN 'LOST'
            WHEN i %% 100 = 3 THEN 'CANCELLED'
            WHEN i %% 50 = 4 THEN 'DEFERRED'
            ELSE 'SUCCESSFUL'
        END AS status
) AS t
"""
FILL_REQUESTS = """
INSERT INTO errands_request (uuid, start_at, job_class, parameters, queue)
SELECT gen_random_uuid(), now() + (i %% 7 - 3) * interval '1 hour', 'app.jobs.Send',
    jsonb_build_object('args', jsonb_build_array(i), 'kwargs', '{}'::jsonb),
    (ARRAY['default', 'emails', 'reports', 'billing'])[1 + i %% 4]
FROM generate_series(1, %(rows)s) AS i
"""
FILL_PROCESSES = """
INSERT INTO errands_process (
    uuid, request_uuid, requested_at, started_at, worker_id, start_at, job_class,
    parameters, queue, priority, retries, retry_attempt
)
SELECT gen_random_uuid(), gen_random_uuid(), now() - interval '1 minute', now(),
    %(worker)s, now(), 'app.jobs.Resize', '{"args": [], "kwargs": {}}', 'default', 0, 0, 0
FROM generate_series(1, %(rows)s) AS i
"""


def database_url(server_url: str, name: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def fill(url: str, rows: int, requests: int, processes: int) -> None:
    worker = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        params = {"rows": rows, "span_seconds": 7 * 24 * 3600, "worker": worker}
        conn.execute(FILL_RESULTS, params)
        conn.execute(FILL_REQUESTS, {"rows": requests})
        conn.execute(FILL_PROCESSES, {"rows": processes, "worker": worker})
        conn.execute(
            "INSERT INTO errands_worker (worker_id, hostname, pid, queues) "
            "VALUES (%s, 'bench-host', 1, ARRAY['default'])",
            (worker,),
        )
        conn.execute("VACUUM ANALYZE")
        print(f"filled {rows:,} results in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def pages(url: str) -> list[tuple[str, str]]:
    """(label, path) of every page to time, some found in the data itself."""
    with psycopg.connect(url) as conn:
        retried = conn.execute(
            "SELECT uuid FROM errands_result WHERE retry_request_uuid IS NOT NULL LIMIT 1"
        ).fetchone()[0]
        errored = conn.execute(
            "SELECT request_uuid FROM errands_result WHERE status = 'ERRORED' "
            "ORDER BY ended_at LIMIT 1"
        ).fetchone()[0]
    return [
        ("overview, 1 h", "/?window=1h"),
        ("overview, 24 h", "/?window=24h"),
        ("overview, 7 d", "/?window=7d"),
        ("overview, 24 h, first view (counts not cached yet)", "/?window=24h#cold"),
        ("overview, 7 d, first view (counts not cached yet)", "/?window=7d#cold"),
        ("results, first page", "/results"),
        ("results, oldest first", "/results?order=reverse"),
        ("results, errored", "/results?status=ERRORED"),
        ("results, one queue", "/results?queue=billing"),
        ("results, one job class, 1 h", "/results?job_class=app.jobs.Bill&window=1h"),
        ("results, concurrency key", "/results?concurrency_key=customer-7"),
        ("results, uuid search", f"/results?uuid={errored}"),
        ("requests", "/requests"),
        ("requests, scheduled", "/requests?state=scheduled"),
        ("processes", "/processes"),
        ("workers", "/workers"),
        ("job detail (retry chain)", f"/jobs/{retried}"),
        (
            "bulk confirm: retry all errored (count)",
            "/bulk?action=retry&kind=result&status=ERRORED",
        ),
        ("bulk confirm: delete all results (count)", "/bulk?action=delete&kind=result"),
        ("live refresh, overview 24 h", "/?window=24h#fragment"),
    ]


def time_pages(url: str, repeat: int) -> list[tuple[str, list[float]]]:
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

    from errands.dashboard import create_app

    errands.configure(database_url=url)
    client = TestClient(create_app(insecure_no_auth=True))
    timings = []
    for label, target in [*pages(url), ("results, page 200 (deep keyset)", deep_page(client))]:
        path, _, mode = target.partition("#")
        headers = {"X-Errands-Fragment": "1"} if mode == "fragment" else {}
        client.get(path, headers=headers)  # warm: plans, templates, the overview's counts
        samples = []
        for _ in range(repeat):
            # "cold": a new app, whose overview has counted nothing yet
            used = TestClient(create_app(insecure_no_auth=True)) if mode == "cold" else client
            started = time.perf_counter()
            response = used.get(path, headers=headers)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, (path, response.status_code)
        timings.append((label, samples))
    return timings


def deep_page(client: object) -> str:
    """The path of the 200th page of results (10,000 rows in), found by following links."""
    path = "/results"
    for _ in range(199):
        html = client.get(path).text  # type: ignore[attr-defined]
        path = "/results" + re.search(r'<a href="([^"]+)" rel="next">', html).group(1)  # type: ignore[union-attr]
        path = path.replace("&amp;", "&")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", metavar="URL", help="time a database kept by --keep")
    args = parser.parse_args()
    if args.reuse:
        report(time_pages(args.reuse, args.repeat), args.rows)
        return

    name = f"errands_bench_dashboard_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(args.server_url, name)
    if args.keep:
        print(f"database: {url}", file=sys.stderr)
    try:
        backend = open_backend(url)
        backend.migrate()
        backend.close()
        fill(url, args.rows, args.requests, args.processes)
        timings = time_pages(url, args.repeat)
    finally:
        api.backend().close()
        if not args.keep:
            with psycopg.connect(args.server_url, autocommit=True) as conn:
                drop = "DROP DATABASE IF EXISTS {} WITH (FORCE)"
                conn.execute(sql.SQL(drop).format(sql.Identifier(name)))
    report(timings, args.rows)


def report(timings: list[tuple[str, list[float]]], rows: int) -> None:
    print(f"| page ({rows:,} results) | median ms | fastest | slowest |")
    print("| --- | ---: | ---: | ---: |")
    for label, samples in timings:
        ms = [s * 1000 for s in samples]
        print(f"| {label} | {statistics.median(ms):.0f} | {min(ms):.0f} | {max(ms):.0f} |")


if __name__ == "__main__":
    main()
