from django.db import transaction
from django.http import HttpRequest, JsonResponse

from shop.jobs import ShipOrder
from shop.models import Order


def ship(request: HttpRequest, order_id: int) -> JsonResponse:
    """Enqueues the shipping job in the request's transaction."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        job = ShipOrder(order).run_in_worker()
    return JsonResponse({"job": str(job.uuid) if job else None})
