"""The dashboard served by Django, for staff users (``taskpipe.contrib.django.urls``)."""

from __future__ import annotations

import functools
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from taskpipe.contrib.dashboard import Dashboard
from taskpipe.contrib.dashboard.mount import route

__all__ = ["dashboard"]


@functools.lru_cache(maxsize=1)
def _dashboard() -> Dashboard:
    from taskpipe.contrib.django import get_app

    app = get_app()
    return Dashboard(app, token=app.django_settings.get("dashboard_token"))


# actions are POSTs guarded by the X-Taskpipe: 1 header (a cross-site form can't send it), so
# the CSRF token is not needed; staff_member_required sends anyone else to the admin login
@csrf_exempt  # type: ignore[untyped-decorator]
@staff_member_required  # type: ignore[untyped-decorator]
def dashboard(request: HttpRequest, path: str = "") -> Any:
    """Serve the dashboard page, its static files and its API below the mount point."""
    if not path and not request.path.endswith("/"):
        return HttpResponse(status=308, headers={"Location": request.path + "/"})
    reply = route(
        _dashboard(),
        request.method or "GET",
        "/" + path,
        request.headers,
        request.META.get("QUERY_STRING", ""),
    )
    response = HttpResponse(reply.body, status=reply.status)
    for key, value in reply.headers.items():
        response[key] = value
    return response
