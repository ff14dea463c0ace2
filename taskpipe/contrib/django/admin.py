"""The admin index links to the dashboard: ``taskpipe › Dashboard`` opens it (staff only)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import NoReverseMatch, reverse

from taskpipe.contrib.django.models import Dashboard


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):  # type: ignore[misc]
    """A link, not a model page: the changelist redirects to the dashboard."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        from taskpipe.contrib.django import get_app

        url = get_app().django_settings.get("dashboard_url")
        if not url:
            try:
                url = reverse("taskpipe-dashboard")
            except NoReverseMatch:
                url = None
        if not url:
            from django.http import HttpResponse

            return HttpResponse(
                "The taskpipe dashboard is not mounted: add path('taskpipe/', "
                "include('taskpipe.contrib.django.urls')) to your URLs, or set "
                "TASKPIPE['dashboard_url'].",
                content_type="text/plain",
                status=404,
            )
        return HttpResponseRedirect(url)
