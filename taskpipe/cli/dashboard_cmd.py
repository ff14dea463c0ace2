"""``taskpipe dashboard``: serve the web dashboard (standard library HTTP server)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import click

from taskpipe.cli.main import app_option, cli, load_app, loglevel_option
from taskpipe.connection import redact_url as _redact
from taskpipe.errors import ConfigError

__all__ = ["dashboard"]


@cli.command()
@app_option(required=False)
@click.option(
    "--broker",
    default=None,
    metavar="URL",
    help="Broker URL when no -A app is given (default: TASKPIPE_BROKER_URL).",
)
@click.option("--prefix", default=None, help="Key prefix of the app (with --broker).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Anything but loopback should use --token or --basic.",
)
@click.option(
    "--port",
    "-p",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--token",
    envvar="TASKPIPE_DASHBOARD_TOKEN",
    default=None,
    help="Require this token (Authorization: Bearer T, or ?token=T in the URL; "
    "env TASKPIPE_DASHBOARD_TOKEN).",
)
@click.option(
    "--basic",
    envvar="TASKPIPE_DASHBOARD_BASIC",
    default=None,
    metavar="USER:PASS",
    help="Require HTTP basic auth (env TASKPIPE_DASHBOARD_BASIC).",
)
@loglevel_option("WARNING")
def dashboard(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    host: str,
    port: int,
    token: str | None,
    basic: str | None,
    loglevel: str,
) -> None:
    """Serve the web dashboard: channels, jobs, workers, cron; retry, retract, pause."""
    from taskpipe.app import TaskPipe
    from taskpipe.contrib.dashboard import Dashboard, parse_basic
    from taskpipe.contrib.dashboard.server import is_loopback

    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if app_path and (broker or prefix is not None):
        raise ConfigError("give either -A/--app or --broker/--prefix, not both")
    app = load_app(app_path) if app_path else TaskPipe(broker=broker, prefix=prefix or "")
    creds = parse_basic(basic) if basic else None
    board = Dashboard(app, token=token or None, basic=creds)
    server = board.serve(host, port)
    if not board.auth_required and not is_loopback(host):
        click.echo(
            f"warning: the dashboard on {host} has no --token or --basic: anyone who can "
            "reach it can retry, retract and pause",
            err=True,
        )
    url = server.url
    click.echo(
        f"taskpipe dashboard on {url} (broker {_redact(app.broker_url)}, prefix {app.prefix!r})"
    )
    sys.stdout.flush()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
        app.close()
