"""Job history commands: ``jobs find`` (filters), ``jobs tasks`` (per-task breakdown),
``jobs requeue`` (one job or in bulk), ``jobs edit`` (a waiting job's arguments) and
``jobs empty`` (retract every waiting job of a channel). See ``docs/history.md``.

Bulk actions print a count preview and ask for confirmation (``--yes`` skips it), then show a
progress bar on long work. A wrong-state action changes nothing and exits with status 1.
"""

from __future__ import annotations

import math
import sys
import time
from datetime import datetime

import click

from taskpipe.cli.admin import (
    _channel_option,
    _common,
    _emit_json,
    _inspector,
    _json_arg,
    _resolve,
    _stamp,
    _table,
    jobs,
)
from taskpipe.durations import parse_duration
from taskpipe.errors import ConfigError, DurationError
from taskpipe.history import (
    ENDED_STATES,
    REQUEUE_STATES,
    count_matching,
    count_waiting,
    edit_args,
    empty_channel,
    find_jobs,
    requeue,
    requeue_many,
    task_breakdown,
)

__all__ = ["find", "tasks_breakdown", "requeue_cmd", "edit_cmd", "empty_cmd"]


def _when(value: str | None, what: str) -> float | None:
    """A time bound: a duration ago (``1h``), an ISO 8601 datetime, or a unix timestamp."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number
        raise click.BadParameter(
            "expected a duration ago (e.g. 2h), an ISO 8601 datetime or a unix timestamp "
            f"(a finite number, not {value!r})",
            param_hint=what,
        )
    try:
        return time.time() - parse_duration(value)
    except (DurationError, ConfigError, ValueError, TypeError):
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.BadParameter(
            "expected a duration ago (e.g. 2h), an ISO 8601 datetime or a unix timestamp",
            param_hint=what,
        ) from None


@jobs.command("find")
@_common()
@_channel_option(by_id=False)
@click.option(
    "-s",
    "--state",
    type=click.Choice(ENDED_STATES),
    default=None,
    help="Only jobs that ended so (default: all ended jobs).",
)
@click.option("--task", default=None, help="Only jobs of this task.")
@click.option("--error", default=None, help="Only jobs whose error type or message contains this.")
@click.option(
    "--since", default=None, help="Finished since: 2h (ago), an ISO datetime or a unix ts."
)
@click.option("--until", default=None, help="Finished until (same forms as --since).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def find(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
    channel: str | None,
    state: str | None,
    task: str | None,
    error: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> None:
    """Ended jobs, newest first, filtered by state, task, error text and finish time."""
    insp = _inspector(app_path, broker, prefix)
    app = insp.app
    name = channel or app.default_channel
    insp.channel(name)  # it must exist
    found = find_jobs(
        app,
        name,
        state=state,
        task=task,
        error=error,
        since=_when(since, "--since"),
        until=_when(until, "--until"),
        limit=limit,
    )
    if as_json:
        _emit_json({"channel": name, "jobs": [r.to_dict() for r in found]})
        return
    now = int(time.time() * 1000)
    rows = [
        [
            r.id,
            r.task or "-",
            r.outcome,
            _stamp(r.finished_ms, now),
            r.attempts,
            r.worker or "-",
            r.args_display,
            r.error or "-",
        ]
        for r in found
    ]
    click.echo(
        _table(
            ["ID", "TASK", "STATE", "FINISHED", "ATTEMPTS", "WORKER", "ARGS", "ERROR"],
            rows,
            width=60,
        )
        if rows
        else f"no matching jobs in {name!r}"
    )
    click.echo(f"-- {len(rows)} job(s) in {name!r}", err=True)


@jobs.command("tasks")
@_common()
@_channel_option(by_id=False)
def tasks_breakdown(
    app_path: str | None, broker: str | None, prefix: str | None, as_json: bool, channel: str | None
) -> None:
    """Jobs ended per task and outcome (succeeded, failed, timeout) on a channel."""
    insp = _inspector(app_path, broker, prefix)
    app = insp.app
    name = channel or app.default_channel
    insp.channel(name)
    counts = task_breakdown(app, name)
    if as_json:
        _emit_json({"channel": name, "tasks": counts})
        return
    if not counts:
        click.echo(f"no ended jobs recorded in {name!r}")
        return
    click.echo(
        _table(
            ["TASK", *(s.upper() for s in ENDED_STATES)],
            [[task, *(c[s] for s in ENDED_STATES)] for task, c in counts.items()],
        )
    )


def _confirm(what: str, count: int, yes: bool, as_json: bool) -> bool:
    """Print the count preview; ask unless ``--yes``. False: the user said no (or nothing to do)."""
    if count == 0:
        return False
    if yes:
        return True
    if as_json:
        raise click.UsageError("a bulk action with --json needs --yes")
    return click.confirm(f"{what}: {count} job(s). Go on?", default=False, err=True)


@jobs.command("requeue")
@_common()
@click.argument("job_id", required=False)
@_channel_option()
@click.option(
    "--all", "all_", is_flag=True, help="Requeue every matching ended job of the channel."
)
@click.option(
    "-s",
    "--state",
    "states",
    type=click.Choice(ENDED_STATES),
    multiple=True,
    help="Outcomes to requeue (repeatable; default: failed and timeout; aborted only when named).",
)
@click.option("--task", default=None, help="With --all: only jobs of this task.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def requeue_cmd(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
    job_id: str | None,
    channel: str | None,
    all_: bool,
    states: tuple[str, ...],
    task: str | None,
    yes: bool,
) -> None:
    """Run a failed or timed-out job again with its original arguments (same id, attempts
    reset, history kept); with --all, every such job of the channel (optionally of one task)."""
    chosen = states or REQUEUE_STATES
    if all_ == bool(job_id):
        raise click.UsageError("give a job id or --all, not both and not neither")
    insp = _inspector(app_path, broker, prefix)
    app = insp.app
    if job_id:
        name = _resolve(insp, job_id, channel)
        was = requeue(app, name, job_id, chosen)
        if as_json:
            _emit_json(
                {
                    "ok": True,
                    "action": "requeue",
                    "id": job_id,
                    "channel": name,
                    "was": was,
                    "state": insp.channel(name).info(job_id).state,
                }
            )
        else:
            click.echo(f"requeue: job {job_id} in {name!r} ({was}) is now available")
        return
    name = channel or app.default_channel
    insp.channel(name)
    total = count_matching(app, name, chosen, task)
    what = f"requeue {'/'.join(chosen)} jobs{f' of task {task}' if task else ''} in {name!r}"
    if not _confirm(what, total, yes, as_json):
        if as_json:
            _emit_json(
                {"ok": True, "action": "requeue", "channel": name, "requeued": 0, "skipped": 0}
            )
        else:
            click.echo(f"nothing requeued ({total} matching job(s))")
        return
    if as_json or total <= 500:
        done, skipped = requeue_many(app, name, chosen, task)
    else:
        with click.progressbar(length=total, label=what, file=sys.stderr) as bar:
            done, skipped = requeue_many(app, name, chosen, task, on_progress=bar.update)
    if as_json:
        _emit_json(
            {"ok": True, "action": "requeue", "channel": name, "requeued": done, "skipped": skipped}
        )
    else:
        click.echo(
            f"requeued {done} job(s) in {name!r}"
            + (f" ({skipped} skipped: changed meanwhile, or payload not kept)" if skipped else "")
        )


@jobs.command("edit")
@_common()
@click.argument("job_id")
@_channel_option()
@click.option(
    "--args", "args_json", default=None, metavar="JSON", help="New positional args: '[1, 2]'."
)
@click.option(
    "--kwargs", "kwargs_json", default=None, metavar="JSON", help="New keyword args: '{\"a\": 1}'."
)
def edit_cmd(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
    job_id: str,
    channel: str | None,
    args_json: str | None,
    kwargs_json: str | None,
) -> None:
    """Replace the arguments of a job still waiting (available, delayed or stalled); its task
    and options stay. Refused, with nothing changed, once a worker holds it or it ended."""
    if args_json is None and kwargs_json is None:
        raise click.UsageError("give --args and/or --kwargs")
    args = _json_arg(args_json, list, "--args") if args_json is not None else None
    kwargs = _json_arg(kwargs_json, dict, "--kwargs") if kwargs_json is not None else None
    insp = _inspector(app_path, broker, prefix)
    app = insp.app
    name = _resolve(insp, job_id, channel)
    edit_args(app, name, job_id, args, kwargs)
    if as_json:
        _emit_json({"ok": True, "action": "edit", "id": job_id, "channel": name})
    else:
        click.echo(f"edit: job {job_id} in {name!r} has its new arguments")


@jobs.command("empty")
@_common()
@click.argument("channel")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def empty_cmd(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
    channel: str,
    yes: bool,
) -> None:
    """Retract every waiting job of CHANNEL (available, delayed, stalled); claimed jobs run on."""
    insp = _inspector(app_path, broker, prefix)
    insp.channel(channel)  # it must exist
    total = count_waiting(insp.app, channel)
    if not _confirm(f"retract every waiting job of {channel!r}", total, yes, as_json):
        if as_json:
            _emit_json({"ok": True, "action": "empty", "channel": channel, "retracted": 0})
        else:
            click.echo(f"nothing retracted ({total} waiting job(s))")
        return
    if as_json or total <= 500:
        done = empty_channel(insp.app, channel)
    else:
        with click.progressbar(length=total, label=f"emptying {channel!r}", file=sys.stderr) as bar:
            done = empty_channel(insp.app, channel, on_progress=bar.update)
    if as_json:
        _emit_json({"ok": True, "action": "empty", "channel": channel, "retracted": done})
    else:
        click.echo(f"retracted {done} waiting job(s) from {channel!r}")
