"""Plain views of jobs for operators: rows, pages, details, events, and safe display helpers.

Everything here is data (frozen dataclasses with ``to_dict()`` for JSON) or a pure function;
nothing talks to Redis.
"""

from __future__ import annotations

import base64
import json
import math
import unicodedata
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any, Literal

from taskpipe.errors import SerializationError
from taskpipe.serialization import ResultRecord, decode_envelope, decode_result
from taskpipe.states import JobState, ResultOutcome

__all__ = [
    "JobRow",
    "Page",
    "JobDetail",
    "CleanReport",
    "JobEvent",
    "jsonable",
    "safe_text",
    "raw_view",
    "record_view",
    "outcome_of",
    "task_name_of",
    "worker_view",
]


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def safe_text(text: str, limit: int = 0, newlines: bool = False) -> str:
    """``text`` with control and format characters escaped (safe to print on a terminal).

    ``newlines`` keeps ``\\n``; tabs are always kept; ``limit`` > 0 truncates with an ellipsis.
    """
    out = []
    for ch in text:
        if ch == "\t" or (newlines and ch == "\n"):
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    result = "".join(out)
    return result[:limit] + "…" if limit and len(result) > limit else result


def jsonable(value: Any, _depth: int = 0) -> Any:
    """Turn a decoded payload or result into plain JSON data (bytes as ``{"$bytes": base64}``)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if _depth > 100:
        return "…"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else repr(k)): jsonable(v, _depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, _depth + 1) for v in value]
    return repr(value)


def raw_view(data: bytes, limit: int = 2048) -> dict[str, Any]:
    """A safe description of bytes that are not a taskpipe envelope or result."""
    head = data[:limit]
    try:
        text: str | None = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "size": len(data),
        "truncated": len(data) > limit,
        "text": safe_text(text, newlines=True) if text is not None else None,
        "base64": None if text is not None else base64.b64encode(head).decode("ascii"),
    }


@dataclass(frozen=True)
class JobRow:
    """One line of a job listing. ``when_ms`` depends on the state: publish time (available),
    due time (delayed), claim time (claimed), finish time (finished/failed), None (stalled,
    waiting)."""

    id: str
    channel: str
    state: JobState
    task: str | None = None
    when_ms: int | None = None
    cancels: int = 0
    attempts: int = 0
    worker: str = ""
    progress: str = ""
    lease_deadline_ms: int | None = None
    reason: str = ""
    outcome: ResultOutcome | Literal[""] = ""  # finished rows: ok, failed, expired, raw
    error: str = ""  # failed rows: "ExcType: message" (first line)
    parents_left: int | None = None  # waiting rows: parents not finished yet (depends_on)
    args: str = ""  # the call's args and kwargs for display, cut with a marker (any state)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return asdict(self)


@dataclass(frozen=True)
class Page:
    """One page of a listing: ``rows``, the cursor of the next page (None at the end) and
    ``total`` jobs in that state (None when unknown, e.g. ``failed``)."""

    rows: list[JobRow]
    next_cursor: str | None
    total: int | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            "rows": [r.to_dict() for r in self.rows],
            "next_cursor": self.next_cursor,
            "total": self.total,
        }


@dataclass(frozen=True)
class JobDetail:
    """Everything known about one job. ``payload`` is the decoded envelope (task, args, kwargs,
    options) or None; ``raw_payload`` describes bytes that are not an envelope (a Thoonk-native
    job, or a bad payload); ``result`` is ``{ok, value}`` or ``{ok: False, exc_type, exc_message,
    traceback}``, or ``{raw: ...}`` for non-taskpipe result bytes. Timestamps are server ms."""

    id: str
    channel: str
    state: JobState
    task: str | None
    payload: dict[str, Any] | None
    raw_payload: dict[str, Any] | None
    payload_error: str
    cancels: int
    attempts: int
    worker: str
    progress: str
    reason: str
    timestamps: dict[str, int | None]
    result_ttl_ms: int | None
    result: dict[str, Any] | None
    logs: list[str]
    log_total: int
    server_time_ms: int = 0
    # from the job's record, once it ended (docs/history.md)
    runtime_ms: int | None = None
    code: str = ""
    requeues: int = 0
    previous: str = ""
    last_error: str = ""  # the error of the last run, while the job waits out its retry backoff

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output (payload and result values made JSON-safe)."""
        data = asdict(self)
        data["payload"] = jsonable(self.payload)
        data["result"] = jsonable(self.result)
        return data


@dataclass
class CleanReport:
    """What ``clean`` did: ids examined, removed, and skipped (changed state meanwhile)."""

    channel: str
    state: str
    cutoff_ms: int
    examined: int = 0
    removed: int = 0
    skipped: int = 0
    dry_run: bool = False
    kept: int = 0  # ended jobs of another outcome, left alone (failed/timeout by default)
    ids: list[str] = field(default_factory=list)  # the first 100 removed ids, for reports

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return asdict(self)


@dataclass(frozen=True)
class JobEvent:
    """One event of ``follow``: ``kind`` is ``log`` (``data`` = the line), ``progress``
    (``data`` = "current/total"), ``end`` (``data`` = finished, failed, stalled or unknown)
    or ``timeout`` (``data`` = the state the job is still in)."""

    kind: str
    job_id: str
    data: str


def record_view(raw: bytes) -> dict[str, Any]:
    """A stored result as ``{ok, value}``, ``{ok: False, exc_type, exc_message, traceback}``,
    or ``{ok: True, raw: raw_view}`` for bytes that are not a result record (Thoonk-native)."""
    try:
        rec: ResultRecord = decode_result(raw)
    except SerializationError:
        return {"ok": True, "raw": raw_view(raw)}
    if rec.ok:
        return {"ok": True, "value": rec.value}
    return {
        "ok": False,
        "exc_type": rec.exc_type,
        "exc_message": rec.exc_message,
        "traceback": rec.traceback,
    }


def outcome_of(raw: bytes | None) -> tuple[ResultOutcome, str]:
    """``(outcome, error)`` of stored result bytes: ok, failed / timeout / aborted / job_expired (with
    "Type: message"), raw, or expired (None: no stored result)."""
    if raw is None:
        return "expired", ""
    view = record_view(raw)
    if "raw" in view:
        return "raw", ""
    if view["ok"]:
        return "ok", ""
    first = (view["exc_message"] or "").splitlines()[0] if view["exc_message"] else ""
    outcome: ResultOutcome = "failed"
    if view["exc_type"] == "JobTimeout":
        outcome = "timeout"
    elif view["exc_type"] == "JobAborted":
        outcome = "aborted"
    elif view["exc_type"] == "JobExpired":
        outcome = "job_expired"
    return outcome, safe_text(f"{view['exc_type']}: {first}", 200)


def worker_view(fields: dict[str, str]) -> dict[str, Any]:
    """One registry entry for display: its text fields, with ``jobs`` (list of "channel/id") and
    ``stats`` (dict of counts) decoded from the JSON the worker wrote; bad JSON reads as empty."""
    info: dict[str, Any] = dict(fields)
    for name, empty in (("jobs", "[]"), ("stats", "{}")):
        try:
            info[name] = json.loads(info.get(name) or empty)
        except ValueError:
            info[name] = json.loads(empty)
    return info


def task_name_of(item: bytes | None) -> str | None:
    """The task name in a job payload, or None if it is not a taskpipe envelope."""
    if item is None:
        return None
    try:
        return decode_envelope(item).task
    except SerializationError:
        return None


def _int(value: Any) -> int:
    return int(float(_s(value))) if value not in (None, b"", "") else 0


def _opt(value: Any) -> int | None:
    return int(float(_s(value))) if value not in (None, b"", "") else None
