"""errands jobs of the shop app (found because the app is installed)."""

import os

from errands import Job, register_job
from shop.models import Order


@register_job
class ShipOrder(Job):
    """Takes an Order instance: stored by reference, fetched again in the worker."""

    def __init__(self, order: Order) -> None:
        self.order = order

    def run(self) -> str:
        self.order.shipped = True
        self.order.shipped_by = f"worker pid {os.getpid()}"
        self.order.save()
        return self.order.item
