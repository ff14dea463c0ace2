"""``python manage.py taskpipe worker ...``: any ``taskpipe`` CLI command, with the app set to
the project's (``taskpipe.contrib.django:app``, through ``TASKPIPE_APP``) after Django is set up."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand

APP_PATH = "taskpipe.contrib.django:app"


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Run a taskpipe command for this project: worker, cron, dashboard, status, ... "
        "(the same options as the taskpipe CLI; -A is set for you)."
    )

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand everything after ``taskpipe`` to the taskpipe CLI (Django's parser is skipped)."""
        from taskpipe.cli import main

        before = os.environ.get("TASKPIPE_APP")
        os.environ["TASKPIPE_APP"] = APP_PATH  # what every command's -A defaults to
        try:
            code = main(argv[2:])
        finally:
            if before is None:
                os.environ.pop("TASKPIPE_APP", None)
            else:
                os.environ["TASKPIPE_APP"] = before
        sys.stdout.flush()
        if code:
            sys.exit(code)

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "args",
            nargs=argparse.REMAINDER,
            help="a taskpipe command and its options, e.g. worker -c 8",
        )

    def handle(self, *args: Any, **options: Any) -> None:  # call_command(): same thing
        self.run_from_argv(["manage.py", "taskpipe", *args])
