"""``taskpipe scheduler`` (run the cron scheduler) and ``taskpipe cron list`` (show entries)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from taskpipe.cli.main import app_option, cli, load_app, loglevel_option

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["scheduler", "cron", "cron_list", "EntryStatus", "entry_status"]


@dataclass(frozen=True)
class EntryStatus:
    """One cron entry as ``taskpipe cron list`` shows it."""

    name: str
    task: str
    expr: str
    tz: str
    channel: str
    misfire: str
    next_fire: datetime
    last_fire: datetime | None
    last_job: str
    last_outcome: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (times as ISO 8601 in the entry's zone)."""
        return {
            "name": self.name,
            "task": self.task,
            "expr": self.expr,
            "tz": self.tz,
            "channel": self.channel,
            "misfire": self.misfire,
            "next_fire": self.next_fire.isoformat(),
            "last_fire": self.last_fire.isoformat() if self.last_fire else None,
            "last_job": self.last_job or None,
            "last_outcome": self.last_outcome,
        }


def entry_status(app: TaskPipe, now: datetime | None = None) -> list[EntryStatus]:
    """Each cron entry of ``app``: next fire (after ``now``, default Redis server time), last fire,
    and last outcome (``never``, the last job's state — available, claimed, finished, failed... —
    or ``error: ...`` if enqueueing it failed)."""
    from taskpipe.results import AsyncResult
    from taskpipe.scheduler import Scheduler, next_fire

    sched = Scheduler(app)
    if now is None:
        now = datetime.fromtimestamp(sched.server_ms() / 1000.0).astimezone()
    out = []
    for e in app.crons:
        state = sched.store.state(e.name)
        channel = sched.channel_for(e)
        last = None
        if state.get("last_fire"):
            last = datetime.fromtimestamp(int(state["last_fire"]) / 1000.0, e.zone)
        job = state.get("last_job", "")
        outcome = "never"
        if state.get("last_error"):
            outcome = "error: " + state["last_error"]
        elif job:
            outcome = AsyncResult(app, job, channel).state
        out.append(
            EntryStatus(
                e.name,
                e.task,
                e.expr,
                e.tz,
                channel,
                e.misfire,
                next_fire(e, now).astimezone(e.zone),
                last,
                job,
                outcome,
            )
        )
    return out


@cli.command()
@app_option()
@loglevel_option()
@click.option(
    "--takeover",
    default="1s",
    show_default=True,
    help="How long a fire taken by another scheduler may stay unconfirmed before this "
    "one assumes that scheduler died and sends it.",
)
def scheduler(app_path: str, loglevel: str, takeover: str) -> None:
    """Run the cron scheduler: enqueue the app's cron entries when due.

    Run as many as you like (for availability): each fire is enqueued exactly once.
    """
    from taskpipe.scheduler import Scheduler

    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = load_app(app_path)
    sched = Scheduler(app, takeover=takeover)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: sched.stop(timeout=0))
    sched.run()
    sys.exit(0)


@cli.group()
def cron() -> None:
    """Inspect cron entries."""


@cron.command("list")
@app_option()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def cron_list(app_path: str, as_json: bool) -> None:
    """Show each entry: expression, next fire, last fire and last outcome."""
    app = load_app(app_path)
    rows = entry_status(app)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    if not rows:
        click.echo("no cron entries")
        return
    table = [("NAME", "TASK", "SCHEDULE", "NEXT FIRE", "LAST FIRE", "LAST OUTCOME")]
    for r in rows:
        schedule = r.expr if r.tz == "UTC" else f"{r.expr} ({r.tz})"
        last = r.last_fire.isoformat(timespec="seconds") if r.last_fire else "-"
        table.append(
            (
                r.name,
                r.task,
                schedule,
                r.next_fire.isoformat(timespec="seconds"),
                last,
                r.last_outcome,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
