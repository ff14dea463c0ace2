"""The dashboard's JSON API: reads through ``taskpipe.inspection.Inspector``, plus a few actions.

Routes (``<ch>`` and ``<id>`` are URL-encoded path segments):

- ``GET  /api/overview``: every channel's counts, live worker count and recent throughput samples
- ``GET  /api/channels/<ch>/jobs?state=&cursor=&limit=``: one page of jobs in a state
- ``GET  /api/channels/<ch>/jobs/<id>``: one job (payload, result, logs...); a payload or
  result over ``MAX_FIELD_BYTES`` of JSON is replaced by a marker ``{"truncated": true, "bytes":
  N, "preview": "...", "full": "<url>"}`` so a page that refreshes a big job every second does
  not resend it; ``?full=1`` returns it whole
- ``GET  /api/find?id=``: channels that know a job id
- ``GET  /api/workers``, ``GET /api/crons``
- ``POST /api/channels/<ch>/pause`` / ``resume``
- ``POST /api/channels/<ch>/jobs/<id>/retry`` / ``retract`` / ``abort`` (a running job)
- job history (records, filters, requeue, edit): see ``history_api.py``
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from taskpipe.contrib.dashboard.history_api import route_history
from taskpipe.errors import (
    ConfigError,
    FeedDoesNotExist,
    JobNotFound,
    TaskpipeError,
    WrongFeedType,
    WrongJobState,
)
from taskpipe.inspection import LIST_STATES, Inspector, jsonable
from taskpipe.states import JobState
from taskpipe.thoonk.cron_store import CronStore

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["DashboardAPI", "ApiError", "ThroughputSampler", "MAX_FIELD_BYTES"]

#: a job's payload or result bigger than this (as JSON) is sent as a marker unless ?full=1
MAX_FIELD_BYTES = 64 * 1024
PREVIEW_CHARS = 2000

log = logging.getLogger("taskpipe.dashboard")

_COUNTERS = ("published_total", "finished_total", "failed_total")


class ApiError(Exception):
    """An API answer other than 200: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ThroughputSampler:
    """Samples every channel's lifetime counters every ``interval`` seconds on a daemon thread,
    keeping the last ``size`` samples per channel, so pages can draw throughput over time."""

    def __init__(self, inspector: Inspector, interval: float = 1.0, size: int = 300) -> None:
        self.inspector = inspector
        self.interval = interval
        self.size = size
        self._history: dict[str, deque[list[int]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self, now_ms: int | None = None) -> None:
        """Take one sample now (the thread calls this; tests may too)."""
        overview = self.inspector.overview()
        t = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            for counts in overview:
                ring = self._history.setdefault(counts["channel"], deque(maxlen=self.size))
                ring.append([t, *(int(counts[c]) for c in _COUNTERS)])

    def history(self, last: int) -> dict[str, list[list[int]]]:
        """``{channel: [[t_ms, published_total, finished_total, failed_total], ...]}``."""
        with self._lock:
            return {name: list(ring)[-last:] for name, ring in self._history.items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - keep sampling; Redis may come back
                log.debug("sampler: %s", exc)
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Start the sampling thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="taskpipe-dashboard-sampler", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(str(raw))
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be from {low} to {high}, got {value}")
    return value


class DashboardAPI:
    """Answers API requests for one app. ``handle`` returns ``(status, json_data)``."""

    def __init__(self, app: TaskPipe, sampler_interval: float = 1.0) -> None:
        self.app = app
        self.inspector = Inspector(app)
        self.sampler = ThroughputSampler(self.inspector, sampler_interval)

    def handle(self, method: str, parts: list[str], query: dict[str, str]) -> tuple[int, Any]:
        """Route ``method`` and the decoded path ``parts`` after ``/api/``; errors become JSON."""
        try:
            return 200, self._route(method, parts, query)
        except ApiError as exc:
            return exc.status, {"error": exc.message}
        except (FeedDoesNotExist, WrongFeedType, JobNotFound) as exc:
            return 404, {"error": str(exc)}
        except WrongJobState as exc:
            return 409, {"error": str(exc)}
        except ConfigError as exc:
            return 400, {"error": str(exc)}
        except TaskpipeError as exc:  # e.g. a requeue whose payload was not kept
            return 409, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - Redis down or a bug: say so, keep serving
            log.warning("dashboard API %s /%s: %r", method, "/".join(parts), exc)
            return 503, {"error": f"{type(exc).__name__}: {exc}"}

    def _route(self, method: str, parts: list[str], query: dict[str, str]) -> Any:
        n = len(parts)
        history = route_history(self.app, self.inspector, method, parts, query)  # history_api.py
        if history is not NotImplemented:
            return history
        if method == "GET":
            if parts == ["overview"]:
                return self.overview(_int_param(query, "history", 120, 0, self.sampler.size))
            if parts == ["workers"]:
                return {"workers": self.inspector.workers()}
            if parts == ["crons"]:
                return {"crons": self.crons()}
            if parts == ["find"]:
                job_id = query.get("id", "")
                if not job_id:
                    raise ApiError(400, "id is required")
                return {"id": job_id, "channels": self.inspector.find_job(job_id)}
            if n == 3 and parts[0] == "channels" and parts[2] == "jobs":
                return self.jobs(parts[1], query)
            if n == 4 and parts[0] == "channels" and parts[2] == "jobs":
                detail = self.inspector.job_detail(parts[1], parts[3]).to_dict()
                return detail if query.get("full") == "1" else _capped(detail, parts)
            if n == 2 and parts[0] == "channels":
                return self.inspector.channel_counts(parts[1])
        elif method == "POST":
            if n == 3 and parts[0] == "channels" and parts[2] in ("pause", "resume"):
                getattr(self.inspector, parts[2])(parts[1])
                return self.inspector.channel_counts(parts[1])
            if (
                n == 5
                and parts[0] == "channels"
                and parts[2] == "jobs"
                and parts[4] in ("retry", "retract", "abort")
            ):
                return self.job_action(parts[1], parts[3], parts[4])
        else:
            raise ApiError(405, f"method {method} not allowed")
        raise ApiError(404, "no such API endpoint: /api/" + "/".join(parts))

    def job_action(self, channel_name: str, job_id: str, action: str) -> dict[str, Any]:
        """``POST /api/channels/<ch>/jobs/<id>/retry|retract|abort``."""
        channel = self.inspector.channel(self.inspector.shard_of(channel_name, job_id))
        if action == "abort":  # ends 'aborted'; its worker stops the task
            from taskpipe.results import AsyncResult

            job = AsyncResult(self.inspector.app, job_id, channel.name)
            job.abort(by="dashboard")
            return {"ok": True, "id": job_id, "state": job.state}
        if action == "retry":
            channel.retry(job_id)
        else:
            channel.retract(job_id, int(self.app.failure_ttl * 1000))
        return {"ok": True, "id": job_id, "state": channel.info(job_id).state}

    def overview(self, history: int) -> dict[str, Any]:
        """Counts of every channel, live workers, and the last ``history`` throughput samples."""
        return {
            "server_time_ms": self.inspector.server_time_ms(),
            "channels": self.inspector.overview(),
            "workers": len(self.inspector.workers()),
            "sample_interval": self.sampler.interval,
            "history": self.sampler.history(history),
        }

    def jobs(self, channel: str, query: dict[str, str]) -> dict[str, Any]:
        """One page of jobs of ``channel`` in ``state`` (default available)."""
        state = query.get("state") or JobState.AVAILABLE.value
        if state not in LIST_STATES:
            raise ApiError(
                400, f"unknown state {state!r}; expected one of {', '.join(LIST_STATES)}"
            )
        limit = _int_param(query, "limit", 25, 1, 500)
        page = self.inspector.list_jobs(channel, state, query.get("cursor") or None, limit)
        return {
            "channel": channel,
            "state": state,
            "counts": self.inspector.channel_counts(channel),
            **page.to_dict(),
        }

    def crons(self) -> list[dict[str, Any]]:
        """Cron entries of the app (``app.crons``) and those schedulers recorded in Redis."""
        try:
            import taskpipe.scheduler  # noqa: F401 - only there once the scheduler exists
        except ImportError:
            have_scheduler = False
        else:
            have_scheduler = True
        store = CronStore(self.app.thoonk)
        entries: dict[str, dict[str, Any]] = {}
        if have_scheduler:
            for entry in list(getattr(self.app, "crons", [])):
                info = _describe(entry)
                entries[str(info.get("name") or info.get("task") or repr(entry))] = info
        names = sorted(store.names() | set(entries))
        for name, state in store.states(names).items():
            entries.setdefault(name, {"name": name})["state"] = state
        return [entries[name] for name in sorted(entries)]


def _capped(detail: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """``detail`` with each big payload/result replaced by a marker saying how to get it whole."""
    from urllib.parse import quote

    for key in ("payload", "raw_payload", "result"):
        value = detail.get(key)
        if value is None:
            continue
        text = json.dumps(value, default=str)
        if len(text) > MAX_FIELD_BYTES:
            detail[key] = {
                "truncated": True,
                "bytes": len(text),
                "preview": text[:PREVIEW_CHARS],
                "full": f"/api/channels/{quote(parts[1], safe='')}/jobs/"
                f"{quote(parts[3], safe='')}?full=1",
            }
    return detail


def _describe(entry: Any) -> dict[str, Any]:
    """Plain data for a cron entry object, whatever its exact class looks like."""
    if hasattr(entry, "to_dict"):
        try:
            data = entry.to_dict()
            if isinstance(data, dict):
                return {str(k): jsonable(v) for k, v in data.items()}
        except Exception:  # noqa: BLE001 - fall back to attributes
            pass
    out: dict[str, Any] = {}
    for attr in ("name", "task", "expr", "tz", "channel", "args", "kwargs", "misfire"):
        if hasattr(entry, attr):
            out[attr] = jsonable(getattr(entry, attr))
    return out or {"name": repr(entry)}
