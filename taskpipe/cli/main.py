"""The root ``taskpipe`` command group, and loading the app named by ``-A module:app``."""

from __future__ import annotations

import importlib
import math
from typing import Any

import click

from taskpipe.errors import BrokerError, BrokerUnavailable, ConfigError
from taskpipe.loading import load_app

__all__ = ["cli", "main", "load_app", "app_option", "finite_float", "loglevel_option"]


def finite_float(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Option callback: refuse NaN and infinities (``click.FloatRange`` lets NaN through, as it
    compares false with every bound, and an unbounded range takes ``inf``)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", param=param)
    return value


def app_option(required: bool = True) -> Any:
    """The ``-A/--app module:app`` option shared by commands (env ``TASKPIPE_APP``)."""
    return click.option(
        "-A",
        "--app",
        "app_path",
        envvar="TASKPIPE_APP",
        required=required,
        metavar="MODULE:APP",
        help="The app to load, e.g. myproject.tasks:app (env TASKPIPE_APP).",
    )


def loglevel_option(default: str = "INFO") -> Any:
    """The ``-l/--loglevel`` option of the long-running commands (worker, scheduler, dashboard)."""
    return click.option(
        "--loglevel",
        "-l",
        default=default,
        show_default=True,
        type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskpipe")
def cli() -> None:
    """taskpipe: a task queue on Thoonk job channels in Redis."""


def _register() -> None:
    # each module adds its commands to ``cli``; imported here so ``cli`` is complete
    for name in (
        "worker_cmd",
        "admin",
        "history_cmd",
        "cron_cmd",
        "dashboard_cmd",
        "doctor_cmd",
        "events_cmd",
    ):
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
    except (BrokerUnavailable, BrokerError) as exc:  # e.g. a worker starting with Redis away
        click.echo(f"Error: {exc}", err=True)
        return 1
