"""The Django app config: ``INSTALLED_APPS = [..., "taskpipe.contrib.django"]``."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings


class TaskpipeConfig(AppConfig):  # type: ignore[misc]
    """Autodiscovers ``tasks.py`` in every installed app once Django is ready."""

    name = "taskpipe.contrib.django"
    label = "taskpipe"
    verbose_name = "taskpipe"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from django.test.signals import setting_changed
        from django.utils.module_loading import autodiscover_modules

        from taskpipe.contrib.django.core import settings_changed

        setting_changed.connect(settings_changed, dispatch_uid="taskpipe-settings")
        if (getattr(settings, "TASKPIPE", None) or {}).get("autodiscover", True):
            autodiscover_modules("tasks")
