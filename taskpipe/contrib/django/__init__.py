"""Django integration: ``pip install 'taskpipe[django]'``.

    # settings.py
    INSTALLED_APPS = [..., "taskpipe.contrib.django"]
    TASKPIPE = {"broker": "redis://127.0.0.1:6379/0", "prefix": "shop:"}

    # shop/tasks.py (found by autodiscovery in every installed app)
    from taskpipe.contrib.django import app

    @app.task
    def ship(order_id: int) -> None:
        Order.objects.filter(pk=order_id).update(shipped=True)

    # a view
    with transaction.atomic():
        order = Order.objects.create(...)
        ship.delay_on_commit(order.pk)     # published only once the transaction commits

    $ python manage.py taskpipe worker -Q default -c 8

Each task run is wrapped like a Django request: stale or broken database connections are closed
before and after it (``close_old_connections``). The dashboard is served by Django for staff
users (``path("taskpipe/", include("taskpipe.contrib.django.urls"))``) and linked from
the admin index. See ``docs/django.md``.

``app`` is one ``DjangoTaskPipe`` per process, built from ``settings.TASKPIPE`` on first use
(Django's settings are per process already; this is the one place taskpipe keeps a
process-wide object, see the docs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskpipe.contrib.django.core import DjangoTaskPipe

    app: DjangoTaskPipe

__all__ = ["app", "get_app", "DjangoTaskPipe"]


def get_app() -> DjangoTaskPipe:
    """The process's Django taskpipe app (built from ``settings.TASKPIPE`` on first call)."""
    from taskpipe.contrib.django.core import get_app as build

    return build()


def __getattr__(name: str) -> Any:
    if name == "app":
        return get_app()
    if name == "DjangoTaskPipe":
        from taskpipe.contrib.django.core import DjangoTaskPipe

        return DjangoTaskPipe
    raise AttributeError(name)
