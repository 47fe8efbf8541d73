"""Django tasks of the shop app, run by errands."""

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task

from shop.models import Order


@task(priority=5, queue_name="shop")
def count_orders(prefix: str) -> dict[str, int]:
    return {"orders": Order.objects.filter(item__startswith=prefix).count()}


@task(retries=1)
def always_fails(message: str) -> None:
    raise ValueError(message)


@task()
async def async_double(number: int) -> int:
    return number * 2
