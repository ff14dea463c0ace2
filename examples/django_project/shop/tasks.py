"""Found by taskpipe's autodiscovery (``tasks.py`` in an installed app)."""

from __future__ import annotations

from typing import Any

from django.db import connection

from shop.models import Order
from taskpipe.contrib.django import app


@app.task
def fulfil(order_id: int) -> dict[str, Any]:
    """Runs in the worker. The order exists: the job was published after the commit."""
    order = Order.objects.get(pk=order_id)
    order.status = "fulfilled"
    order.fulfilled_by = "taskpipe"
    order.save()
    return {
        "order": order.pk,
        "item": order.item,
        "db": connection.vendor,
        "session": _session_id(),
    }


def _session_id() -> str:
    """The database session this task used (PostgreSQL backend pid; SQLite connection id)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_backend_pid()")
            return str(cursor.fetchone()[0])
    return hex(id(connection.connection))
