"""Scenarios run inside the test project: ``python scenarios.py NAME``.

Each sets Django up, exercises errands as a project would, asserts, and exits 0.
tests/test_django.py runs them in subprocesses so Django never loads in the test
process itself.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import django

HERE = Path(__file__).resolve().parent
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
sys.path.insert(0, str(HERE))
django.setup()

from django.db import transaction  # noqa: E402
from django.test import Client  # noqa: E402
from shop import tasks  # noqa: E402
from shop.jobs import ShipOrder  # noqa: E402
from shop.models import Order  # noqa: E402

import errands  # noqa: E402
from errands.contrib.django.backends import DjangoPostgresBackend, DjangoSqliteBackend  # noqa: E402
from errands.contrib.django.conf import database_url  # noqa: E402
from errands.errors import ParameterError  # noqa: E402


@contextlib.contextmanager
def worker() -> Iterator[subprocess.Popen[bytes]]:
    """``manage.py errands worker`` in the background, stopped gracefully at the end."""
    process = subprocess.Popen([sys.executable, str(HERE / "manage.py"), "errands", "worker"])
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


class DeliberateRollback(Exception):
    pass


def schema() -> None:
    backend = errands.backend()
    assert backend.url == database_url("default"), backend.url
    assert isinstance(backend, DjangoPostgresBackend | DjangoSqliteBackend)
    assert backend.schema_version() == backend.latest_schema_version()


def django_tasks() -> None:
    Order.objects.create(item="apple")
    Order.objects.create(item="apricot")
    counted = tasks.count_orders.enqueue("ap")
    assert counted.status == "READY" and counted.id
    request = errands.get(counted.id)
    assert (request.queue, request.priority) == ("shop", 5), request
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    delayed = tasks.count_orders.using(run_after=later).enqueue("x")
    assert abs((errands.get(delayed.id).start_at - later).total_seconds()) < 1
    failing = tasks.always_fails.enqueue("no luck")
    doubled = tasks.async_double.enqueue(21)
    with worker():
        for result in (counted, failing, doubled):
            errands.wait_for_result(result.id, timeout=60)
    counted.refresh()
    assert counted.status == "SUCCESSFUL" and counted.return_value == {"orders": 2}
    assert counted.attempts == 1 and counted.finished_at is not None
    failed = tasks.always_fails.get_result(failing.id)
    assert failed.status == "FAILED" and failed.attempts == 2, failed
    assert [e.exception_class for e in failed.errors] == [ValueError, ValueError]
    assert "no luck" in failed.errors[-1].traceback
    assert tasks.async_double.get_result(doubled.id).return_value == 42
    assert tasks.count_orders.get_result(delayed.id).status == "READY"


def jobs_join_transactions() -> None:
    order = Order.objects.create(item="pear")
    with contextlib.suppress(DeliberateRollback), transaction.atomic():
        ShipOrder(order).run_in_worker()
        raise DeliberateRollback
    assert errands.requests() == [], "a rolled-back enqueue must leave no job"
    with transaction.atomic():
        committed = ShipOrder(order).run_in_worker()
        assert committed is not None
    assert [r.uuid for r in errands.requests()] == [committed.uuid]
    try:
        ShipOrder(Order(item="unsaved")).run_in_worker()
    except ParameterError as exc:
        assert "save it first" in str(exc)
    else:
        raise AssertionError("an unsaved instance must be refused")
    other = Order.objects.create(item="plum")
    response = Client().post(f"/orders/{other.pk}/ship")
    from_view = response.json()["job"]
    with worker():
        assert errands.wait_for_result(committed.uuid, timeout=60).return_value == "pear"
        assert errands.wait_for_result(from_view, timeout=60).return_value == "plum"
    for shipped in Order.objects.filter(item__in=["pear", "plum"]):
        assert shipped.shipped and shipped.shipped_by != f"worker pid {os.getpid()}"


def psycopg2_joins_transactions() -> None:
    """Django on psycopg2: the enqueue runs through Django's own psycopg2 connection."""
    from django.db import connection

    connection.ensure_connection()
    assert type(connection.connection).__module__.startswith("psycopg2"), connection.connection
    order = Order.objects.create(item="quince")
    with contextlib.suppress(DeliberateRollback), transaction.atomic():
        ShipOrder(order).run_in_worker()
        errands.enqueue_many([ShipOrder(order), ShipOrder(order)])
        raise DeliberateRollback
    assert errands.requests() == [], "a rolled-back enqueue must leave no job"
    with transaction.atomic():
        Order.objects.filter(pk=order.pk).update(item="quince!")
        committed = ShipOrder(order).run_in_worker(delay=60)
        batch = errands.enqueue_many([ShipOrder(order), ShipOrder(order)])
        assert committed is not None and all(batch)
        assert errands.requests() == [], "not visible outside the transaction before it commits"
    stored = {r.uuid for r in errands.requests(limit=10)}
    assert stored == {committed.uuid, *(r.uuid for r in batch if r)}, stored
    assert Order.objects.get(pk=order.pk).item == "quince!"


def separate_database() -> None:
    """errands on its own database: tasks enqueued in a transaction wait for the commit."""
    assert errands.backend().url == os.environ["PROJECT_ERRANDS_URL"]
    with contextlib.suppress(DeliberateRollback), transaction.atomic():
        tasks.count_orders.enqueue("rolled back")
        raise DeliberateRollback
    assert errands.requests() == []
    with transaction.atomic():
        result = tasks.count_orders.enqueue("committed")
        assert result.id == "" and errands.requests() == []
    assert result.id and [str(r.uuid) for r in errands.requests()] == [result.id]


def dashboard() -> None:
    from django.contrib.auth.models import User
    from project.asgi import application
    from starlette.testclient import TestClient

    User.objects.create_user("staff", password="x", is_staff=True)
    User.objects.create_user("visitor", password="x")
    client = TestClient(application)
    assert client.get("/errands/", follow_redirects=False).status_code != 200
    for username, allowed in (("staff", True), ("visitor", False)):
        django_client = Client()
        django_client.login(username=username, password="x")
        cookie = django_client.cookies["sessionid"].value
        client.cookies.set("sessionid", cookie)
        response = client.get("/errands/", follow_redirects=False)
        assert (response.status_code == 200) is allowed, (username, response.status_code)
    order = Order.objects.create(item="fig")
    assert client.post(f"/orders/{order.pk}/ship").status_code == 200  # Django, not shadowed
    dashboard_hosts()


def dashboard_hosts() -> None:
    """The mounted dashboard answers for Django's ALLOWED_HOSTS (Django never sees its
    requests, so it cannot check their Host header itself)."""
    from django.test import override_settings
    from starlette.testclient import TestClient

    from errands.contrib.django.dashboard import dashboard_application

    with override_settings(ALLOWED_HOSTS=[".example.com", "10.0.0.5"]):
        app = dashboard_application()
    for host, answered in (
        ("ops.example.com", True),
        ("example.com", True),
        ("10.0.0.5:8000", True),
        ("attacker.example", False),
        ("localhost", False),
    ):
        status = TestClient(app, base_url=f"http://{host}").get("/").status_code
        assert (status != 400) is answered, (host, status)


if __name__ == "__main__":
    globals()[sys.argv[1]]()
    print(f"scenario {sys.argv[1]} passed")
