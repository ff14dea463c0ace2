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


# command -> the modules that define it (and its subcommands), imported when it is used: a
# worker does not import the admin, history, dashboard... commands (tests/test_cli_lazy.py
# checks this table against what the modules define)
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "worker": ("worker_cmd",),
    "status": ("admin",),
    "jobs": ("admin", "history_cmd"),
    "tasks": ("admin",),
    "pause": ("admin",),
    "resume": ("admin",),
    "publish": ("admin",),
    "scheduler": ("cron_cmd",),
    "cron": ("cron_cmd",),
    "dashboard": ("dashboard_cmd",),
    "doctor": ("doctor_cmd",),
    "events": ("events_cmd",),
}


def _import_command_modules(names: tuple[str, ...]) -> None:
    for name in names:
        try:
            importlib.import_module(f"taskpipe.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"taskpipe.cli.{name}":
                raise


class _LazyGroup(click.Group):
    """A group whose commands are imported when one is looked up by name (the one command a
    process runs), or all of them when they are listed (``taskpipe --help``)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            _import_command_modules(COMMAND_MODULES.get(cmd_name, ()))
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        _register()
        return super().list_commands(ctx)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskpipe")
def cli() -> None:
    """taskpipe: a task queue on Thoonk job channels in Redis."""


def _register() -> None:
    """Import every command module, so that ``cli.commands`` is complete."""
    _import_command_modules(
        tuple(dict.fromkeys(m for names in COMMAND_MODULES.values() for m in names))
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``taskpipe`` script and ``python -m taskpipe``."""
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
