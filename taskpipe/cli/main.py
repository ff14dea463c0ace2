"""The root ``taskpipe`` command group, and loading the app named by ``-A module:app``."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from taskpipe.errors import ConfigError

__all__ = ["cli", "main", "load_app", "app_option"]


def load_app(path: str) -> Any:
    """Import ``module:attribute`` (or ``module``, taking its ``app``) and return the TaskPipe app."""
    from taskpipe.app import TaskPipe

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for -A {path!r}: {exc}") from None
    obj = getattr(module, attr or "app", None)
    if callable(obj) and not isinstance(obj, TaskPipe):
        obj = obj()
    if not isinstance(obj, TaskPipe):
        raise ConfigError(f"-A {path!r} does not name a TaskPipe app")
    return obj


def app_option(required: bool = True) -> Any:
    """The ``-A/--app module:app`` option shared by commands (env ``TASKPIPE_APP``)."""
    return click.option("-A", "--app", "app_path", envvar="TASKPIPE_APP", required=required,
                        metavar="MODULE:APP", help="The app to load, e.g. myproject.tasks:app "
                        "(env TASKPIPE_APP).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskpipe")
def cli() -> None:
    """taskpipe: a task queue on Thoonk job channels in Redis."""


def _register() -> None:
    # each module adds its commands to ``cli``; imported here so ``cli`` is complete
    for name in ("worker_cmd", "admin", "cron_cmd", "dashboard_cmd", "doctor_cmd"):
        try:
            importlib.import_module(f"taskpipe.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"taskpipe.cli.{name}":
                raise


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``taskpipe`` script and ``python -m taskpipe``."""
    _register()
    try:
        rv = cli.main(args=argv, prog_name="taskpipe", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        return 2
