"""``taskpipe events``: print the job events of the channels live (``docs/extending.md``)."""

from __future__ import annotations

import json
import queue
import sys
import time
from datetime import datetime, timezone
from typing import Any

import click

from taskpipe.cli.admin import _app, _common
from taskpipe.cli.main import cli
from taskpipe.durations import parse_duration
from taskpipe.events import APP_EVENTS, JobEvent

__all__ = ["events"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(ev: JobEvent) -> str:
    data = ev.data
    if isinstance(data, dict):
        detail = " ".join(f"{k}={data[k]}" for k in sorted(data) if k != "task")
    else:
        detail = str(data)
    return f"{_now()} {ev.kind:<8} {ev.channel}/{ev.id} {ev.task or '-'} {detail}".rstrip()


@cli.command()
@_common()
@click.option(
    "-Q",
    "--queues",
    default=None,
    metavar="A,B",
    help="Only these channels (comma-separated). Default: every channel.",
)
@click.option(
    "-e",
    "--events",
    "only",
    default=None,
    metavar="KIND,KIND",
    help="Only these kinds of event (e.g. fail,timeout). Default: all.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Exit after printing this many events.",
)
@click.option("--timeout", default=None, help="Exit after this long (e.g. 30s).")
def events(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
    queues: str | None,
    only: str | None,
    count: int | None,
    timeout: str | None,
) -> None:
    """Print job events live: complete, fail, timeout, retry, stall, aborted, expired, log,
    progress, and empty / drain of a channel; one line each (JSON lines with --json), until Ctrl-C."""
    app = _app(app_path, broker, prefix)
    channels = [c.strip() for c in queues.split(",") if c.strip()] if queues else None
    deadline = None if timeout is None else time.monotonic() + parse_duration(timeout)
    kinds = [k.strip() for k in only.split(",") if k.strip()] if only else list(APP_EVENTS)
    unknown = set(kinds) - set(APP_EVENTS)
    if unknown:
        raise click.UsageError(
            f"unknown event kind(s) {', '.join(sorted(unknown))}; expected {', '.join(APP_EVENTS)}"
        )
    inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    for name in kinds:
        if name in ("empty", "drain"):
            app.on(name, lambda channel, _n=name: inbox.put((_n, channel)))
        else:
            app.on(
                name,
                lambda *args, _n=name: inbox.put(
                    (_n, next(a for a in args if isinstance(a, JobEvent)))
                ),
            )
    app.listen(channels)
    click.echo(
        f"following job events of {', '.join(channels) if channels else 'every channel'}"
        " (Ctrl-C to stop)",
        err=True,
    )
    printed = 0
    try:
        while count is None or printed < count:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                name, item = inbox.get(timeout=wait)
            except queue.Empty:
                continue
            if isinstance(item, JobEvent):
                line = json.dumps(item.to_dict(), default=str) if as_json else _text(item)
            elif as_json:
                line = json.dumps({"event": name, "channel": item})
            else:
                line = f"{_now()} {name:<8} {item}"
            click.echo(line)
            sys.stdout.flush()
            printed += 1
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        app.events.stop()
