"""The dashboard's job-history routes (docs/history.md), called from ``DashboardAPI._route``:

- ``GET  /api/channels/<ch>/history?state=&task=&error=&since=&until=&limit=``: ended jobs,
  newest first (their records: task, args, attempts, worker, times, error), and the per-task
  breakdown; ``since`` / ``until`` are epoch seconds
- ``GET  /api/channels/<ch>/requeue?state=&task=``: how many jobs a bulk requeue would touch
- ``POST /api/channels/<ch>/requeue?state=&task=``: requeue them all (``state`` comma-separated,
  default failed,timeout; ``aborted`` and ``succeeded`` only when named)
- ``POST /api/channels/<ch>/jobs/<id>/requeue?state=``: requeue one failed or timed-out job (an
  aborted one with ``state=aborted``)
- ``POST /api/channels/<ch>/jobs/<id>/edit?args=<JSON array>&kwargs=<JSON object>``: new
  arguments for a job still waiting (409 once claimed or ended, 400 for malformed JSON)
- ``GET  /api/channels/<ch>/empty``: how many waiting jobs an empty would retract;
  ``POST``: retract them (claimed jobs run on)
- ``GET  /api/channels/<ch>/clean?state=finished|failed|timeout|aborted|stalled&older_than=7d``: how many
  jobs a clean would examine; ``POST``: clean them (the ``jobs clean`` report)
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from taskpipe.durations import parse_duration
from taskpipe.errors import ConfigError
from taskpipe.history import (
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
from taskpipe.inspection import jsonable

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.inspection import Inspector

__all__ = ["route_history"]


def _float(query: dict[str, str], name: str) -> float | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    try:
        return float(str(raw))
    except ValueError:
        raise ConfigError(f"{name} must be epoch seconds, got {raw!r}") from None


def _int(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(str(raw))
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _json(query: dict[str, str], name: str, kind: type) -> Any:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    try:
        value = json.loads(str(raw))
    except ValueError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be a JSON {'array' if kind is list else 'object'}")
    return value


def _states(query: dict[str, str]) -> tuple[str, ...]:
    raw = query.get("state") or ""
    return tuple(s for s in raw.split(",") if s) or REQUEUE_STATES


def route_history(
    app: TaskPipe, inspector: Inspector, method: str, parts: list[str], query: dict[str, str]
) -> Any:
    """Answer a history route, or return ``NotImplemented`` if ``parts`` is not one."""
    n = len(parts)
    if n < 3 or parts[0] != "channels":
        return NotImplemented
    channel = parts[1]
    if n == 3 and parts[2] == "history" and method == "GET":
        inspector.channel(channel)
        limit = _int(query, "limit", 50)
        jobs = find_jobs(
            app,
            channel,
            state=query.get("state") or None,
            task=query.get("task") or None,
            error=query.get("error") or None,
            since=_float(query, "since"),
            until=_float(query, "until"),
            limit=max(1, min(limit, 500)),
        )
        return {
            "channel": channel,
            "jobs": [jsonable(r.to_dict()) for r in jobs],
            "tasks": task_breakdown(app, channel),
        }
    if n == 3 and parts[2] == "requeue":
        inspector.channel(channel)
        task = query.get("task") or None
        if method == "GET":
            return {"channel": channel, "count": count_matching(app, channel, _states(query), task)}
        if method == "POST":
            done, skipped = requeue_many(app, channel, _states(query), task)
            return {"ok": True, "channel": channel, "requeued": done, "skipped": skipped}
    if n == 3 and parts[2] == "empty" and method in ("GET", "POST"):
        inspector.channel(channel)
        if method == "GET":
            return {"channel": channel, "count": count_waiting(app, channel)}
        return {"ok": True, "channel": channel, "retracted": empty_channel(app, channel)}
    if n == 3 and parts[2] == "clean" and method in ("GET", "POST"):
        state = query.get("state") or "finished"
        age = parse_duration(query.get("older_than") or "0")
        inspector.check_clean(state, age)
        if method == "GET":
            return {
                "channel": channel,
                "state": state,
                "count": inspector.count_cleanable(channel, state, age),
            }
        return {"ok": True, **inspector.clean(channel, state, age).to_dict()}
    if n == 5 and parts[2] == "jobs" and method == "POST" and parts[4] in ("requeue", "edit"):
        inspector.channel(channel)
        job_id = parts[3]
        if parts[4] == "requeue":
            was = requeue(app, channel, job_id, _states(query))
            return {
                "ok": True,
                "id": job_id,
                "was": was,
                "state": app.channel(channel).info(job_id).state,
            }
        args, kwargs = _json(query, "args", list), _json(query, "kwargs", dict)
        if args is None and kwargs is None:
            raise ConfigError("give args and/or kwargs")
        edit_args(app, channel, job_id, args, kwargs)
        return {"ok": True, "id": job_id, "state": app.channel(channel).info(job_id).state}
    return NotImplemented
