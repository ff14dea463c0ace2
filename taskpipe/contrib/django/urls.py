"""``path("taskpipe/", include("taskpipe.contrib.django.urls"))``: the dashboard."""

from __future__ import annotations

from django.urls import path

from taskpipe.contrib.django.views import dashboard

urlpatterns = [
    path("", dashboard, name="taskpipe-dashboard"),
    path("<path:path>", dashboard, name="taskpipe-dashboard-path"),
]
