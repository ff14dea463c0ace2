"""Maintenance commands: ``status``, ``jobs ...``, ``pause``/``resume``, ``tasks``, ``publish``.

Every command takes ``-A module:app`` or, to inspect without the workers' code, ``--broker URL``
(env ``TASKPIPE_BROKER_URL``) and ``--prefix P`` (env ``TASKPIPE_PREFIX``); and ``--json`` for
scripts. Reads go through ``taskpipe.inspection.Inspector`` (paged, never ``KEYS``). A wrong-state
action or an unknown id prints an error, changes nothing and exits with status 1.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import click
import redis
from click.core import ParameterSource

from taskpipe.cli.interrupt import exit_on_interrupt
from taskpipe.cli.main import app_option, cli, finite_float, load_app
from taskpipe.connection import redact_url as _redact
from taskpipe.durations import format_duration, parse_duration
from taskpipe.errors import JobNotFound, TaskpipeError
from taskpipe.inspection import (
    LIST_STATES,
    MAX_PAGE,
    Inspector,
    JobDetail,
    Page,
    jsonable,
    safe_text,
)
from taskpipe.states import DONE_STATES, JobState
from taskpipe.thoonk.broker_check import eviction_policy, eviction_warning

__all__ = ["status", "jobs", "pause", "resume", "tasks", "publish"]


# plumbing ---------------------------------------------------------------------------------------
def _common(app_required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add ``-A``, ``--broker``, ``--prefix`` and ``--json`` and turn errors into clean exits."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except TaskpipeError as exc:  # KeyError subclasses would print their message quoted
                text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
                raise click.ClickException(text) from None
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                raise click.ClickException(f"cannot reach the broker: {exc}") from None

        wrapper = click.option(
            "--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of tables."
        )(wrapper)
        wrapper = click.option(
            "--prefix",
            envvar="TASKPIPE_PREFIX",
            default=None,
            metavar="P",
            help="Key prefix of the app (env TASKPIPE_PREFIX).",
        )(wrapper)
        wrapper = click.option(
            "--broker",
            envvar="TASKPIPE_BROKER_URL",
            default=None,
            metavar="URL",
            help="Broker URL when no -A is given (env TASKPIPE_BROKER_URL).",
        )(wrapper)
        return app_option(required=app_required)(wrapper)  # type: ignore[no-any-return]

    return deco


def _app(app_path: str | None, broker: str | None, prefix: str | None) -> Any:
    """The app from ``-A``, else one built from ``--broker``/``--prefix`` (closed on exit)."""
    ctx = click.get_current_context()
    if app_path:
        explicit = [
            f"--{n}"
            for n in ("broker", "prefix")
            if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE
        ]
        if explicit:
            raise click.UsageError(f"give either -A or {' / '.join(explicit)}, not both")
        return load_app(app_path)
    from taskpipe.app import TaskPipe

    app = TaskPipe(broker=broker, prefix=prefix or "")
    ctx.call_on_close(app.close)
    return app


def _inspector(app_path: str | None, broker: str | None, prefix: str | None) -> Inspector:
    return Inspector(_app(app_path, broker, prefix))


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(jsonable(data), indent=2))


def _table(headers: list[str], rows: Iterable[Iterable[Any]], width: int = 60) -> str:
    cells = [[safe_text(str(c), width) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _ago(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    delta = (ms - now_ms) / 1000.0
    text = format_duration(round(abs(delta))) if abs(delta) >= 1 else format_duration(abs(delta))
    return f"in {text}" if delta > 0 else f"{text} ago"


def _stamp(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    iso = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    return f"{iso.replace('+00:00', 'Z')} ({_ago(ms, now_ms)})"


def _resolve(insp: Inspector, job_id: str, channel: str | None) -> str:
    """The channel of a job: ``--channel``, else the one channel that knows the id."""
    if channel:
        return insp.shard_of(channel, job_id)  # a sharded channel: the shard that has the id
    found = insp.find_job(job_id)
    if len(found) > 1:
        raise click.ClickException(
            f"job {job_id!r} exists in channels {', '.join(found)}; pass --channel"
        )
    if not found:
        raise JobNotFound(f"no job {job_id!r} in any channel")
    return found[0]


def _channel_option(by_id: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    help_text = "The job channel. Default: " + (
        "the one channel that has the id." if by_id else "the app's default channel."
    )
    return click.option("-c", "--channel", default=None, help=help_text)


# status -----------------------------------------------------------------------------------------
@cli.command()
@_common()
@click.option(
    "--watch",
    "watch",
    type=click.FloatRange(min=0.2),
    callback=finite_float,
    default=None,
    metavar="SECONDS",
    help="Redraw every SECONDS until Ctrl-C.",
)
@click.option("--iterations", type=click.IntRange(min=1), default=None, hidden=True)
def status(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
    watch: float | None = None,
    iterations: int | None = None,
) -> None:
    """Channels with jobs per state, paused flags, and live workers with their current jobs."""
    insp = _inspector(app_path, broker, prefix)
    if watch is None:
        _status_once(insp, as_json)
        return
    import time

    n = 0
    try:
        while iterations is None or n < iterations:
            if n:
                time.sleep(watch)  # the redraw interval the user asked for
            click.clear()
            click.echo(f"every {watch:g}s (Ctrl-C to stop)", err=True)
            _status_once(insp, as_json)
            n += 1
    except KeyboardInterrupt:
        sys.exit(130)


def _status_once(insp: Inspector, as_json: bool) -> None:
    channels, workers, now = insp.overview(), insp.workers(), insp.server_time_ms()
    warning = (
        None
        if insp.app.connection.is_memory or insp.app.connection.is_cluster
        else (eviction_warning(eviction_policy(insp.app.connection.client)))
    )
    if as_json:
        _emit_json(
            {
                "broker": _redact(insp.app.broker_url),
                "prefix": insp.app.prefix,
                "server_time_ms": now,
                "channels": channels,
                "workers": workers,
                "warnings": [warning] if warning else [],
            }
        )
        return
    click.echo(f"broker {_redact(insp.app.broker_url)}  prefix {insp.app.prefix!r}")
    if warning:
        click.echo(f"WARNING: {warning}", err=True)
    if channels:
        click.echo(
            _table(
                [
                    "CHANNEL",
                    "AVAILABLE",
                    "DELAYED",
                    "CLAIMED",
                    "STALLED",
                    "FINISHED",
                    "FAILED(total)",
                    "PAUSED",
                ],
                [
                    [
                        c["channel"],
                        c["available"],
                        c["delayed"],
                        c["claimed"],
                        c["stalled"],
                        c["finished"],
                        c["failed_total"],
                        "yes" if c["paused"] else "",
                    ]
                    for row in channels
                    for c in [row, *row.get("shards", [])]
                ],
            )
        )
        limited = [(c["channel"], c["limits"]) for c in channels if c.get("limits")]
        if limited:  # flow control (docs/flow-control.md)
            click.echo("\nflow control")
            click.echo(_table(["CHANNEL", "LIMITS"], [list(x) for x in limited], width=120))
    else:
        click.echo("no job channels")
    click.echo(f"\n{len(workers)} live worker(s)")
    if workers:
        click.echo(
            _table(
                ["WORKER", "HOST", "PID", "CHANNELS", "POOL", "CONC", "HEARTBEAT", "RUNNING"],
                [
                    [
                        w.get("name"),
                        w.get("host"),
                        w.get("pid"),
                        w.get("channels"),
                        w.get("pool"),
                        w.get("concurrency"),
                        _ago(int(w.get("heartbeat") or 0) * 1000, now),
                        ", ".join(w.get("jobs") or []) or "-",
                    ]
                    for w in workers
                ],
                width=120,
            )
        )


# jobs -------------------------------------------------------------------------------------------
@cli.group()
def jobs() -> None:
    """List, show, follow and act on jobs."""


def _row_cells(state: JobState, page: Page, now: int) -> tuple[list[str], list[list[Any]]]:
    # every listable state has a column here (the done ones a FINISHED time, waiting none)
    when = {
        JobState.AVAILABLE: "PUBLISHED",
        JobState.DELAYED: "DUE",
        JobState.CLAIMED: "CLAIMED",
        JobState.STALLED: "STALLED",
        JobState.WAITING: "WAITING",
    }.get(state, "FINISHED")
    headers = ["ID", "TASK", when, "CANCELS", "ATTEMPTS"]
    extra: dict[JobState, tuple[list[str], Callable[[Any], list[Any]]]] = {
        JobState.CLAIMED: (
            ["WORKER", "PROGRESS", "LEASE"],
            lambda r: [r.worker, r.progress or "-", _ago(r.lease_deadline_ms, now)],
        ),
        JobState.STALLED: (["REASON"], lambda r: [r.reason or "-"]),
        JobState.FINISHED: (["OUTCOME", "ERROR"], lambda r: [r.outcome, r.error or "-"]),
        JobState.FAILED: (["ERROR"], lambda r: [r.error]),
        JobState.TIMEOUT: (["ERROR"], lambda r: [r.error]),
        JobState.ABORTED: (["ERROR"], lambda r: [r.error]),
        JobState.EXPIRED: (["ERROR"], lambda r: [r.error]),
    }
    more_h, more = extra.get(state, ([], lambda r: []))
    rows = [
        [
            r.id,
            r.task or ("-" if state in DONE_STATES else "(not an envelope)"),
            _ago(r.when_ms, now),
            r.cancels,
            r.attempts,
            *more(r),
        ]
        for r in page.rows
    ]
    return headers + more_h, rows


@jobs.command("list")
@_common()
@_channel_option(by_id=False)
@click.option(
    "-s",
    "--state",
    type=click.Choice([s.value for s in LIST_STATES]),
    default=JobState.AVAILABLE.value,
    show_default=True,
)
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=50, show_default=True)
@click.option("--cursor", default=None, help="The next-page cursor printed by the previous page.")
def list_jobs(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
    channel: str | None,
    state: str,
    limit: int,
    cursor: str | None,
) -> None:
    """One page of the jobs of a channel in one state."""
    insp = _inspector(app_path, broker, prefix)
    name = channel or insp.app.default_channel
    page = insp.list_jobs(name, state, cursor=cursor, limit=limit)
    if as_json:
        _emit_json({"channel": name, "state": state, **page.to_dict()})
        return
    headers, rows = _row_cells(JobState(state), page, insp.server_time_ms())
    click.echo(_table(headers, rows) if rows else f"no {state} jobs in {name!r}")
    total = f" of {page.total}" if page.total is not None else ""
    click.echo(f"-- {len(rows)}{total} {state} job(s) in {name!r}", err=True)
    if page.next_cursor is not None:
        click.echo(f"-- next page: --cursor {page.next_cursor}", err=True)


def _record_lines(d: JobDetail) -> list[tuple[str, Any]]:
    """The job-record lines of ``jobs show`` (docs/history.md), those that have a value."""
    lines: list[tuple[str, Any]] = []
    if d.last_error:
        lines.append(("last error", f"{d.last_error} (will retry)"))
    if d.runtime_ms is not None:
        lines.append(("run time", f"{d.runtime_ms / 1000:.3f}s"))
    if d.code:
        lines.append(("error code", d.code))
    if d.requeues:
        lines.append(("requeued", f"{d.requeues} time(s), last ended {d.previous or '?'}"))
    return lines


def _show_text(d: JobDetail) -> None:
    now = d.server_time_ms
    click.echo(f"job {d.id} in channel {d.channel!r}")
    fields: list[tuple[str, Any]] = [("state", d.state), ("task", d.task or "-")]
    if d.payload is not None:
        for key in ("args", "kwargs", "options"):
            fields.append((key, json.dumps(jsonable(d.payload[key]))))
    elif d.raw_payload is not None:
        fields.append(("payload", f"not a taskpipe envelope ({d.payload_error})"))
        raw = d.raw_payload
        fields.append(
            (
                "raw",
                f"{raw['size']} bytes: "
                + (repr(raw["text"]) if raw["text"] is not None else f"base64 {raw['base64']}"),
            )
        )
    fields += [
        ("attempts", d.attempts),
        ("cancels", d.cancels),
        ("worker", d.worker or "-"),
        ("progress", d.progress or "-"),
        ("reason", d.reason or "-"),
        *_record_lines(d),
    ]
    for key, ms in d.timestamps.items():
        if ms is not None:
            fields.append((key.removesuffix("_ms").replace("_", " "), _stamp(ms, now)))
    if d.result is not None:
        if d.result.get("ok"):
            value = d.result.get("value") if "raw" not in d.result else d.result["raw"]
            fields.append(("result", json.dumps(jsonable(value))))
        else:
            fields.append(("error", f"{d.result['exc_type']}: {d.result['exc_message']}"))
        if d.result_ttl_ms is not None:
            fields.append(("result ttl", format_duration(round(d.result_ttl_ms / 1000))))
    elif d.state in DONE_STATES:
        fields.append(("result", "not stored (expired, or result_ttl=0)"))
    for key, value in fields:
        click.echo(f"  {key:<18} {safe_text(str(value), 2000)}")
    if d.result is not None and not d.result.get("ok") and d.result.get("traceback"):
        click.echo("  traceback:")
        for line in safe_text(d.result["traceback"], newlines=True).splitlines():
            click.echo(f"    {line}")
    if d.log_total:
        click.echo(f"  log (last {len(d.logs)} of {d.log_total} lines):")
        for line in d.logs:
            click.echo(f"    {line}")


@jobs.command("show")
@_common()
@click.argument("job_id")
@_channel_option()
@click.option(
    "--log-lines",
    type=click.IntRange(0, 10000),
    default=20,
    show_default=True,
    help="How many of the last log lines to include.",
)
def show_job(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
    job_id: str,
    channel: str | None,
    log_lines: int,
) -> None:
    """One job: payload, state, attempts, cancels, timestamps, worker, progress, result or error."""
    insp = _inspector(app_path, broker, prefix)
    detail = insp.job_detail(_resolve(insp, job_id, channel), job_id, log_lines=log_lines)
    if as_json:
        _emit_json(detail.to_dict())
    else:
        _show_text(detail)


@jobs.command("logs")
@_common()
@click.argument("job_id")
@_channel_option()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
@click.option(
    "--timeout",
    default=None,
    help="With --follow: give up after this long (e.g. 30s); exit status 124.",
)
def job_logs(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
    job_id: str,
    channel: str | None,
    follow: bool,
    tail: int | None,
    timeout: str | None,
) -> None:
    """A job's log lines; with --follow, live lines and progress until the job ends (or Ctrl-C)."""
    insp = _inspector(app_path, broker, prefix)
    name = _resolve(insp, job_id, channel)
    if not follow:
        lines = list(insp.logs(name, job_id, tail=tail))
        if not lines and insp.channel(name).info(job_id).state == JobState.UNKNOWN:
            raise JobNotFound(f"no job {job_id!r} in channel {name!r}")
        if as_json:
            _emit_json({"id": job_id, "channel": name, "lines": lines})
        else:
            for line in lines:
                click.echo(line)
        return
    seconds = parse_duration(timeout) if timeout is not None else None
    end = ("", "")
    with exit_on_interrupt():  # Ctrl-C: status 130 at once, wherever it lands
        for ev in insp.follow(
            name, job_id, timeout=seconds, backlog=1000 if tail is None else tail
        ):
            if ev.kind in ("end", "timeout"):
                end = (ev.kind, ev.data)
            elif as_json:
                click.echo(json.dumps({"event": ev.kind, "id": ev.job_id, "data": ev.data}))
            else:
                click.echo(ev.data if ev.kind == "log" else f"[{ev.kind}] {ev.data}")
            sys.stdout.flush()
    kind, state = end
    if as_json:
        click.echo(json.dumps({"event": kind, "id": job_id, "data": state}))
    else:
        click.echo(f"-- job {job_id} {'is still ' if kind == 'timeout' else ''}{state}", err=True)
    if kind == "timeout":
        sys.exit(124)


def _action(
    name: str,
    doc: str,
    act: Callable[[Any, str, dict[str, Any]], None],
    params: list[Callable[[Callable[..., Any]], Callable[..., Any]]] | None = None,
) -> None:
    def command(
        app_path: str | None,
        broker: str | None,
        prefix: str | None,
        as_json: bool,
        job_id: str,
        channel: str | None,
        **extra: Any,
    ) -> None:
        insp = _inspector(app_path, broker, prefix)
        ch_name = _resolve(insp, job_id, channel)
        ch = insp.channel(ch_name)
        act(ch, job_id, {**extra, "inspector": insp})
        state = ch.info(job_id).state
        if state == JobState.FINISHED and name == "abort":
            state = JobState.ABORTED
        if as_json:
            _emit_json(
                {"ok": True, "action": name, "id": job_id, "channel": ch_name, "state": state}
            )
        else:
            click.echo(
                f"{name}: job {job_id} in {ch_name!r} is now "
                f"{'gone' if state == JobState.UNKNOWN else state}"
            )

    command.__doc__ = doc
    fn: Any = command
    for param in reversed(params or []):
        fn = param(fn)
    fn = _channel_option()(fn)
    fn = click.argument("job_id")(fn)
    jobs.command(name)(_common()(fn))


_action(
    "cancel",
    "Send a claimed job back to the queue (Thoonk cancel; its cancel count +1).\n\n"
    "The worker running it loses its lease: its outcome is refused. To remove a job, use retract.",
    lambda ch, i, x: ch.cancel(i),
)
_action(
    "stall",
    "Park a claimed job (with --reason); it is not run again until retried.",
    lambda ch, i, x: ch.stall(i, reason=x["reason"]),
    [click.option("--reason", default="stalled by operator", show_default=True)],
)
_action(
    "retract",
    "Remove a job from every state, its result and log included (a job that had "
    "not ended keeps a 'retracted' record with its payload for 7 days: docs/history.md).",
    lambda ch, i, x: ch.retract(i, 7 * 86_400_000),
)
_action(
    "abort",
    "Abort a running job: it ends 'aborted' at once (lease released, never run "
    "again by itself) and its worker stops the task (docs/workflows.md).",
    lambda ch, i, x: _abort(x["inspector"], ch, i, x["by"]),
    [click.option("--by", default="cli", show_default=True, help="Who aborts (recorded).")],
)


def _abort(insp: Any, ch: Any, job_id: str, by: str) -> None:
    from taskpipe.results import AsyncResult

    AsyncResult(insp.app, job_id, ch.name).abort(by=by)


_action(
    "retry",
    "Make a stalled job available again (fresh attempt and cancel counts).",
    lambda ch, i, x: ch.retry(i, reset_counts=not x["keep_counts"]),
    [click.option("--keep-counts", is_flag=True, help="Keep the attempt and cancel counts.")],
)


@jobs.command("clean")
@_common()
@_channel_option(by_id=False)
@click.option(
    "-s",
    "--state",
    type=click.Choice(
        [
            JobState.FINISHED.value,
            JobState.FAILED.value,
            JobState.TIMEOUT.value,
            JobState.ABORTED.value,
            JobState.STALLED.value,
        ]
    ),
    required=True,
    help="finished = succeeded jobs; failed, timed-out and aborted jobs stay "
    "unless cleaned by name (-s failed / -s timeout / -s aborted).",
)
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="DURATION",
    help="e.g. 7d. Stalled jobs carry no stall time: use 0 (every job stalled now).",
)
@click.option("--batch", type=click.IntRange(1, 1000), default=500, show_default=True)
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
def clean_jobs(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
    channel: str | None,
    state: str,
    older_than: str,
    batch: int,
    dry_run: bool,
) -> None:
    """Remove old finished jobs (index entry, result, log) or retract stalled jobs, in batches."""
    insp = _inspector(app_path, broker, prefix)
    name = channel or insp.app.default_channel
    age = parse_duration(older_than)
    now = insp.server_time_ms()
    insp.check_clean(state, age, batch)  # refuse before drawing a progress bar
    total = insp.count_cleanable(name, state, age, now_ms=now)
    if as_json or total <= batch:
        report = insp.clean(name, state, age, batch=batch, now_ms=now, dry_run=dry_run)
    else:
        with click.progressbar(
            length=total, label=f"cleaning {state} jobs of {name!r}", file=sys.stderr
        ) as bar:
            report = insp.clean(
                name, state, age, batch=batch, now_ms=now, dry_run=dry_run, on_progress=bar.update
            )
    if as_json:
        _emit_json(report.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb} {report.removed} {state} job(s) from {name!r} "
        f"({report.examined} examined, {report.skipped} skipped: changed state meanwhile)"
    )
    if report.kept:
        click.echo(
            f"kept {report.kept} job(s) of another outcome (failed, timed-out and aborted jobs "
            "stay until cleaned with -s failed / -s timeout / -s aborted)"
        )


# channels ---------------------------------------------------------------------------------------
def _pause_command(name: str, paused: bool) -> click.Command:
    def command(
        app_path: str | None,
        broker: str | None,
        prefix: str | None,
        as_json: bool,
        channels: tuple[str, ...],
    ) -> None:
        insp = _inspector(app_path, broker, prefix)
        for ch_name in channels:
            for shard in insp.shards(ch_name):
                insp.channel(shard)  # every name must exist before anything changes
        for ch_name in channels:
            (insp.pause if paused else insp.resume)(ch_name)
        if as_json:
            _emit_json({"ok": True, "paused": paused, "channels": list(channels)})
        else:
            click.echo(f"{'paused' if paused else 'resumed'}: {', '.join(channels)}")

    command.__doc__ = (
        "Pause channels: workers claim nothing from them until resumed (running jobs finish)."
        if paused
        else "Resume paused channels."
    )
    return cli.command(name)(
        _common()(click.argument("channels", nargs=-1, required=True)(command))
    )


pause = _pause_command("pause", True)
resume = _pause_command("resume", False)


# tasks and publish ------------------------------------------------------------------------------
@cli.command()
@_common(app_required=True)
def tasks(app_path: str, broker: str | None, prefix: str | None, as_json: bool) -> None:
    """The app's registered tasks and their options."""
    from dataclasses import asdict, fields

    from taskpipe.task import TaskOptions

    app = _app(app_path, broker, prefix)
    defaults = {f.name: f.default for f in fields(TaskOptions)}
    out = []
    for name in sorted(app.tasks):
        task = app.tasks[name]
        opts = asdict(task.options)
        out.append(
            {
                "name": name,
                "channel": task.channel,
                "raw": task.raw,
                "async": task.is_async,
                "function": f"{task.fn.__module__}.{task.fn.__qualname__}",
                "options": opts,
                "set": {k: v for k, v in opts.items() if v != defaults.get(k)},
            }
        )
    if as_json:
        _emit_json(out)
        return
    if not out:
        click.echo("no tasks registered")
        return
    click.echo(
        _table(
            ["TASK", "CHANNEL", "OPTIONS"],
            [
                [t["name"], t["channel"], " ".join(f"{k}={v}" for k, v in t["set"].items()) or "-"]
                for t in out
            ],
            width=100,
        )
    )


def _json_arg(value: str | None, kind: type, what: str) -> Any:
    if value is None:
        return kind()
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from None
    if not isinstance(data, kind):
        raise click.BadParameter(
            f"must be a JSON {'array' if kind is list else 'object'}", param_hint=what
        )
    return data


def _eta(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            "expected an ISO 8601 datetime (UTC if no offset) or a unix timestamp",
            param_hint="--eta",
        ) from None


@cli.command()
@_common()
@click.argument("task")
@click.option(
    "--args", "args_json", default=None, metavar="JSON", help="Positional args: '[1, 2]'."
)
@click.option(
    "--kwargs", "kwargs_json", default=None, metavar="JSON", help="Keyword args: '{\"a\": 1}'."
)
@click.option("-c", "--channel", default=None, help="Default: the task's channel, else the app's.")
@click.option("--priority", is_flag=True, default=None, help="Put at the head of the queue.")
@click.option("--delay", default=None, metavar="DURATION", help="Run after this long, e.g. 10m.")
@click.option("--eta", default=None, metavar="WHEN", help="Run at this time (ISO 8601 or unix ts).")
@click.option("--id", "job_id", default=None, help="Job id (an id already queued is not doubled).")
@click.option("--result-ttl", default=None, metavar="DURATION", help="Keep the result this long.")
def publish(
    app_path: str | None,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
    task: str,
    args_json: str | None,
    kwargs_json: str | None,
    channel: str | None,
    priority: bool | None,
    delay: str | None,
    eta: str | None,
    job_id: str | None,
    result_ttl: str | None,
) -> None:
    """Enqueue a call of TASK (by name; -A not needed) and print its id."""
    if delay is not None and eta is not None:
        raise click.UsageError("give --delay or --eta, not both")
    args = _json_arg(args_json, list, "--args")
    kwargs = _json_arg(kwargs_json, dict, "--kwargs")
    app = _app(app_path, broker, prefix)
    options = {
        "channel": channel,
        "priority": priority,
        "delay": delay,
        "eta": _eta(eta),
        "id": job_id,
        "result_ttl": result_ttl,
    }
    result = app.send(task, args, kwargs, **{k: v for k, v in options.items() if v is not None})
    if as_json:
        _emit_json({"id": result.id, "channel": result.channel, "task": task})
    else:
        click.echo(result.id)
