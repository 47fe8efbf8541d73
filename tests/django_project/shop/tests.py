"""Run by `manage.py test shop` (from tests/test_django.py): errands in Django's test runner."""

from django.db import connection
from django.test import TestCase, TransactionTestCase

import errands
from errands import testing
from shop.jobs import ShipOrder
from shop.models import Order


class JobsInTheTestDatabase(TransactionTestCase):
    """Without a wrapping transaction, enqueued jobs are committed to the test database."""

    def test_jobs_go_to_the_test_database(self) -> None:
        assert errands.backend().url.endswith(connection.settings_dict["NAME"])
        order = Order.objects.create(item="kiwi")
        request = ShipOrder(order).run_in_worker()
        assert request is not None
        assert [r.uuid for r in errands.requests()] == [request.uuid]


class CapturedJobs(TestCase):
    """Inside TestCase's transaction, capture mode records and runs jobs in-process."""

    def test_capture_and_drain(self) -> None:
        order = Order.objects.create(item="lime")
        with testing.capture() as jobs:
            ShipOrder(order).run_in_worker()
            jobs.assert_enqueued(ShipOrder, order=order)
            assert [r.return_value for r in jobs.drain()] == ["lime"]
        order.refresh_from_db()
        assert order.shipped
