"""No tables: one unmanaged model so the admin index lists a "Dashboard" link (see admin.py)."""

from __future__ import annotations

from django.db import models


class Dashboard(models.Model):  # type: ignore[misc]
    """Stands for the taskpipe dashboard in the admin (no table is ever created)."""

    class Meta:
        managed = False
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"
        default_permissions = ("view",)
