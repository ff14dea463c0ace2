"""Job history: the record a job keeps when it ends, finding jobs, requeue and edit.

When a worker finishes a job, ``job_finish`` keeps its record (``lua/_record.lua``): the payload
as published, attempts (runs), cancels, worker, published / started / finished times, run time,
outcome (``succeeded``, ``failed``, ``timeout``; ``aborted``, kept by ``job_abort``) and an
optional error ``code``; the result or error itself is the job's stored result. A record lives as
long as its result: ``result_ttl`` for a success, ``failure_ttl`` for a failure, timeout or abort.
Indexes kept by the same scripts (``feed.failedidx:<f>`` and one ``feed.labelidx:<f>:<task>`` per
task for the jobs that did not succeed, id -> finish ms; ``feed.finished:<f>`` for all) let
``find_jobs`` list and filter without scanning every job. See ``docs/history.md``.
"""

from __future__ import annotations

import math
import reprlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from taskpipe.errors import (
    ConfigError,
    JobNotFound,
    SerializationError,
    TaskpipeError,
    WrongJobState,
)
from taskpipe.flow import build_flow
from taskpipe.serialization import decode_envelope, decode_result, encode_envelope

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.thoonk.flow import PutFlow
    from taskpipe.thoonk.job import JobChannel

__all__ = [
    "JobRecord",
    "find_jobs",
    "read_record",
    "requeue",
    "requeue_many",
    "edit_args",
    "task_breakdown",
    "count_matching",
    "count_waiting",
    "empty_channel",
    "display_args",
    "ENDED_STATES",
    "REQUEUE_STATES",
    "FAILURE_STATES",
    "ARGS_DISPLAY_MAX",
    "SCAN_BUDGET",
]

#: the outcomes a record can have (``app.jobs(state=...)`` takes these, or None for all)
ENDED_STATES = ("succeeded", "failed", "timeout", "aborted")
#: what ``requeue`` accepts by default (an aborted job was stopped by an operator: it is
#: requeued only when asked for by name, as a succeeded one)
REQUEUE_STATES = ("failed", "timeout")
#: the outcomes kept in the failure indexes (``feed.failedidx``, ``feed.labelidx``)
FAILURE_STATES = ("failed", "timeout", "aborted")
#: arguments shown for display are cut at this many characters, with a marker
ARGS_DISPLAY_MAX = 1000
#: ``requeue_many`` reads the jobs to requeue in pages of this many
REQUEUE_BATCH = 500
#: ``find_jobs`` examines at most this many index entries per call (a filter that matches few
#: jobs stops there and says so with ``truncated``)
SCAN_BUDGET = 200_000


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _opt_int(value: Any) -> int | None:
    text = _s(value) if value is not None else ""
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


def display_args(args: Sequence[Any], kwargs: dict[str, Any], limit: int = ARGS_DISPLAY_MAX) -> str:
    """``args`` and ``kwargs`` as one readable line, cut at ``limit`` characters with a marker
    ``… [+N chars]`` saying how much was left out."""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    text = ", ".join(parts)
    if len(text) > limit:
        return text[:limit] + f"… [+{len(text) - limit} chars]"
    return text


@dataclass(frozen=True)
class JobRecord:
    """What is kept of an ended job. Times are server ms; ``attempts`` counts runs (this one
    included); ``args_display`` is the arguments for display (cut with a marker); ``args`` and
    ``kwargs`` are None when the payload was not kept (over the cap) or is not an envelope."""

    id: str
    channel: str
    outcome: str
    task: str
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    args_display: str
    payload_size: int
    payload_kept: bool
    attempts: int
    cancels: int
    worker: str
    published_ms: int | None
    started_ms: int | None
    finished_ms: int | None
    runtime_ms: int | None
    code: str
    requeues: int
    previous: str
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""

    @property
    def error(self) -> str:
        """``"ExcType: first line of the message"`` ('' for a success)."""
        if not self.exc_type:
            return ""
        first = self.exc_message.splitlines()[0] if self.exc_message else ""
        return f"{self.exc_type}: {first}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``args`` / ``kwargs`` as decoded: make them JSON-safe for output)."""
        data = asdict(self)
        data["error"] = self.error
        return data


def _record_of(channel: str, job_id: str, raw: dict[str, bytes], result: bytes | None) -> JobRecord:
    item = raw.get("item")
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    size = _opt_int(raw.get("item_size")) or (len(item) if item is not None else 0)
    display = f"<payload not kept: {size} bytes>"
    if item is not None:
        try:
            env = decode_envelope(item)
            args, kwargs = list(env.args), dict(env.kwargs)
            display = display_args(args, kwargs)
        except SerializationError:
            display = f"<raw payload: {reprlib.repr(item)}>"
    exc_type = exc_message = tb = ""
    if result is not None:
        try:
            rec = decode_result(result)
            if not rec.ok:
                exc_type, exc_message, tb = (
                    rec.exc_type or "",
                    rec.exc_message or "",
                    rec.traceback or "",
                )
        except SerializationError:
            pass
    return JobRecord(
        id=job_id,
        channel=channel,
        outcome=_s(raw.get("outcome", b"")),
        task=_s(raw.get("label", b"")),
        args=args,
        kwargs=kwargs,
        args_display=display,
        payload_size=size,
        payload_kept=item is not None,
        attempts=_opt_int(raw.get("attempts")) or 0,
        cancels=_opt_int(raw.get("cancels")) or 0,
        worker=_s(raw.get("worker", b"")),
        published_ms=_opt_int(raw.get("published")),
        started_ms=_opt_int(raw.get("started")),
        finished_ms=_opt_int(raw.get("finished")),
        runtime_ms=_opt_int(raw.get("runtime_ms")),
        code=_s(raw.get("code", b"")),
        requeues=_opt_int(raw.get("requeues")) or 0,
        previous=_s(raw.get("previous", b"")),
        exc_type=exc_type,
        exc_message=exc_message,
        traceback=tb,
    )


def read_record(app: TaskPipe, channel: str, job_id: str) -> JobRecord | None:
    """The record of an ended job, or None (it has not ended, or its record expired)."""
    ch = app.existing_channel(channel)
    if ch is None:  # reading never creates a channel
        return None
    fields, result = ch.records_with_results([job_id])[0]
    if "outcome" not in fields:  # none, or only the last error of a run that will be retried
        return None
    return _record_of(ch.name, job_id, fields, result)


def _ms(value: Any, what: str) -> int | None:
    """A time bound: epoch seconds (int/float), a datetime, or None."""
    if value is None:
        return None
    from datetime import datetime

    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(value * 1000)
    raise ConfigError(f"{what} must be epoch seconds (finite) or a datetime, got {value!r}")


def find_jobs(
    app: TaskPipe,
    channel: str | None = None,
    *,
    state: str | None = None,
    task: str | None = None,
    since: Any = None,
    until: Any = None,
    error: str | None = None,
    limit: int = 50,
) -> list[JobRecord]:
    """Ended jobs of ``channel`` (default: the app's default channel), newest first.

    ``state``: succeeded, failed, timeout, aborted (None: all); ``task``: a task name; ``since`` /
    ``until``: finish time bounds (epoch seconds or datetimes); ``error``: text the error type or
    message contains (case-insensitive). Reads an index kept by the finish script newest first,
    in pages (failed / timeout / aborted: the task's failures, else every failure; otherwise every
    finished job, records filtered), so the cost is the jobs examined, not the jobs stored; at
    most ``SCAN_BUDGET`` entries are examined.
    """
    if state is not None and state not in ENDED_STATES:
        raise ConfigError(f"unknown state {state!r}; expected one of {', '.join(ENDED_STATES)}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ConfigError(f"limit must be an int from 1 to 10000, got {limit!r}")
    for name, text in (("task", task), ("error", error)):
        if text is not None and not isinstance(text, str):
            raise ConfigError(f"{name} must be a str, got {text!r}")
    lo, hi = _ms(since, "since"), _ms(until, "until")
    ch = app.existing_channel(channel)
    if ch is None:  # a channel that does not exist has ended no job (and is not created)
        return []
    # the task's failures, else every failure; otherwise every finished job (records filtered)
    index = ch.record_index(state in FAILURE_STATES, task)
    needle = error.lower() if error else None
    out: list[JobRecord] = []
    start, examined, page = 0, 0, max(100, min(limit * 4, 1000))
    while len(out) < limit and examined < SCAN_BUDGET:
        ids = ch.record_index_page(index, hi, lo, start, page)
        if not ids:
            break
        start += len(ids)
        examined += len(ids)
        gone: list[str] = []
        for job_id, (raw, result) in zip(ids, ch.records_with_results(ids)):
            if not raw:
                gone.append(job_id)
                continue
            rec = _record_of(ch.name, job_id, raw, result)
            if state is not None and rec.outcome != state:
                continue
            if task and rec.task != task:
                continue
            if needle is not None and needle not in f"{rec.exc_type}: {rec.exc_message}".lower():
                continue
            out.append(rec)
            if len(out) == limit:
                break
        if gone and index != ch.keys.finished:
            # records that expired: drop their stale entries from this index (repair on read)
            ch.drop_from_record_index(index, gone)
            start -= len(gone)
    return out


def task_breakdown(app: TaskPipe, channel: str | None = None) -> dict[str, dict[str, int]]:
    """Jobs ended per task per outcome on ``channel`` (lifetime counters kept by the finish
    and abort scripts): ``{task: {"succeeded": n, "failed": n, "timeout": n, "aborted": n}}``."""
    ch = app.existing_channel(channel)
    if ch is None:
        return {}
    out: dict[str, dict[str, int]] = {}
    for field, count in ch.label_counts().items():
        task, _, outcome = field.partition("\0")
        out.setdefault(task, dict.fromkeys(ENDED_STATES, 0))[outcome] = int(count)
    return dict(sorted(out.items()))


def _check_states(states: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(states)
    bad = [s for s in chosen if s not in ENDED_STATES]
    if bad or not chosen:
        raise ConfigError(
            f"can requeue jobs that ended {', '.join(ENDED_STATES)}, not {bad or 'nothing'}"
        )
    return chosen


def requeue(
    app: TaskPipe, channel: str | None, job_id: str, states: Iterable[str] = REQUEUE_STATES
) -> str:
    """Publish an ended job again with its original arguments (same id, attempts reset, its
    record kept with ``requeues`` + 1). Only a job whose outcome is in ``states`` (failed or
    timed out by default; an aborted or succeeded job only when asked for). Returns the outcome
    it had.

    Raises ``JobNotFound`` (no record), ``WrongJobState`` (not ended, or another outcome) or
    ``ThoonkError`` (its payload was too large to keep); nothing changes then.
    """
    chosen = _check_states(states)
    return app.channel(channel).requeue(job_id, chosen, partial(_prepare_requeue, app))


def _prepare_requeue(app: TaskPipe, item: bytes) -> tuple[bytes | None, PutFlow | None]:
    """What a job is requeued with, from its payload as published: the payload without its
    ``expires=`` deadline when that has passed (else it would expire again at once and never
    run; None: as it is), and its task's flow control (numeric priority, rate limit,
    concurrency cap, as a publish computes them from the task's options: a job's own flow spec
    is dropped when it ends). Per-call flow options (``priority=`` on one call) are not kept in
    the payload; the task's apply."""
    try:
        env = decode_envelope(item)
    except SerializationError:
        return None, None  # a raw (Thoonk-native) payload: requeued as it is
    known = app.tasks.get(env.task)
    flow = None
    if known is not None and known.options.flowing:
        try:
            _, flow = build_flow(env.task, known.options, tuple(env.args), env.kwargs, {})
        except ConfigError:  # e.g. its concurrency_key fails on these arguments now
            flow = None
    deadline = env.options.get("expires_ms")
    if not isinstance(deadline, (int, float)) or deadline > time.time() * 1000:
        return None, flow
    options = {k: v for k, v in env.options.items() if k != "expires_ms"}
    new = encode_envelope(
        env.task,
        tuple(env.args),
        dict(env.kwargs),
        options,
        serializer=env.serializer,
        max_size=app.max_payload,
    )
    return new, flow


def requeue_many(
    app: TaskPipe,
    channel: str | None,
    states: Iterable[str] = REQUEUE_STATES,
    task: str | None = None,
    *,
    limit: int = 1_000_000,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Requeue every ended job of ``channel`` in ``states`` (optionally of one ``task``), each
    atomically; returns ``(requeued, skipped)`` (skipped: changed meanwhile, or no payload kept).
    ``on_progress(n)`` is called after each batch of ``n`` jobs."""
    chosen = _check_states(states)
    done = skipped = 0
    seen: set[str] = set()
    for state in chosen:
        # pages back by finish time: a job that could not be requeued stays in the index, so
        # each page ends at the oldest finish of the one before (ties included), and a page of
        # jobs all seen already (more of them than a page, finished in that ms) is read again
        # larger, until it brings a new job or holds every job left
        until: float | None = None
        size = REQUEUE_BATCH
        while done + skipped < limit:
            found = find_jobs(app, channel, state=state, task=task, until=until, limit=size)
            batch = [r for r in found if r.id not in seen]
            if not batch:
                if len(found) < size or size + REQUEUE_BATCH > 10_000:
                    break
                size += REQUEUE_BATCH
                continue
            until = (min(r.finished_ms or 0 for r in found) + 0.5) / 1000
            size = REQUEUE_BATCH
            for rec in batch:
                seen.add(rec.id)
                try:
                    requeue(app, channel, rec.id, chosen)
                    done += 1
                except TaskpipeError:
                    skipped += 1
            if on_progress is not None:
                on_progress(len(batch))
    return done, skipped


def count_matching(
    app: TaskPipe, channel: str | None, states: Iterable[str], task: str | None = None
) -> int:
    """How many ended jobs ``requeue_many`` would look at (a preview), counted from the records."""
    total = 0
    for state in _check_states(states):
        total += len(find_jobs(app, channel, state=state, task=task, limit=10_000))
    return total


def count_waiting(app: TaskPipe, channel: str | None) -> int:
    """Jobs ``empty_channel`` would retract: available, delayed and stalled."""
    counts = app.channel(channel).counts()
    return int(counts["available"] + counts["delayed"] + counts["stalled"])


def empty_channel(
    app: TaskPipe, channel: str | None, on_progress: Callable[[int], None] | None = None
) -> int:
    """Retract every waiting job of ``channel`` (available, delayed, stalled), each atomically
    and only if still unclaimed: claimed jobs run on. No record is kept (this is cleaning).
    Pages through ``feed.items`` with ``HSCAN``; returns how many were retracted."""
    ch = app.channel(channel)
    done, cursor = 0, 0
    while True:
        cursor, ids = ch.scan_items(cursor, 500)
        done += len(ch.retract_waiting(ids))
        if on_progress is not None:
            on_progress(len(ids))
        if int(cursor) == 0:
            return done


def edit_args(
    app: TaskPipe,
    channel: str | None,
    job_id: str,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> None:
    """Replace the arguments of a job still waiting (available, delayed or stalled), keeping its
    task and options; atomic (a job claimed meanwhile is left alone: ``WrongJobState``).
    ``None`` keeps that part as it is."""
    if args is not None and not isinstance(args, (list, tuple)):
        raise ConfigError(f"args must be a list, got {type(args).__name__}")
    if kwargs is not None and (
        not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs)
    ):
        raise ConfigError("kwargs must be a dict with str keys")
    ch: JobChannel = app.channel(channel)
    item = ch.get_item(job_id)
    if item is None:
        state = ch.info(job_id).state
        if state == "unknown":
            raise JobNotFound(f"no job {job_id!r} in channel {ch.name!r}")
        raise WrongJobState(job_id, "available, delayed or stalled", state)
    try:
        env = decode_envelope(item)
    except SerializationError as exc:
        raise SerializationError(
            f"job {job_id!r} is not a taskpipe job, its arguments cannot be edited: {exc}"
        ) from None
    new = encode_envelope(
        env.task,
        tuple(env.args if args is None else args),
        dict(env.kwargs if kwargs is None else kwargs),
        env.options,
        serializer=env.serializer,
        max_size=app.max_payload,
    )
    ch.edit(job_id, new)
