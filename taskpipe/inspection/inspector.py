"""``Inspector``: the read layer over job channels used by the CLI and dashboards."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from taskpipe.errors import (
    ConfigError,
    FeedDoesNotExist,
    JobNotFound,
    SerializationError,
    WrongFeedType,
)
from taskpipe.history import display_args
from taskpipe.inspection.clean import clean_finished, clean_stalled
from taskpipe.inspection.follow import follow
from taskpipe.inspection.views import (
    CleanReport,
    JobDetail,
    JobEvent,
    JobRow,
    Page,
    _int,
    _opt,
    _s,
    outcome_of,
    raw_view,
    record_view,
    safe_text,
    task_name_of,
    worker_view,
)
from taskpipe.serialization import decode_envelope
from taskpipe.sharding import shard_index
from taskpipe.states import DONE_STATES, LISTABLE_STATES, OUTCOME_STATES, JobState
from taskpipe.thoonk.flow import flow_state, limits_summary
from taskpipe.thoonk.job import JobChannel
from taskpipe.thoonk.shards import parse_shard, shard_names, stored_count
from taskpipe.thoonk.workers import WorkerRegistry

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["Inspector", "LIST_STATES", "MAX_PAGE", "CLEAN_STATES"]

#: What ``clean`` removes: ``finished`` = succeeded jobs (failed, timed-out and aborted ones are
#: kept unless asked for by name), ``failed``, ``timeout``, ``aborted``, ``stalled``.
CLEAN_STATES = ("finished", "failed", "timeout", "aborted", "stalled")

#: States ``list_jobs`` pages through (``failed`` = finished jobs whose result is an error,
#: ``timeout`` = those that failed by running past their time limit).
LIST_STATES = LISTABLE_STATES
#: The states listed from the finished index by outcome: ``failed`` takes every failure
#: (timed-out, aborted and expired jobs too), ``timeout`` / ``aborted`` / ``expired`` only theirs.
_FAILED_OUTCOMES: dict[str, tuple[str, ...]] = {
    JobState.FAILED: ("failed", "timeout", "aborted", "job_expired"),
    JobState.TIMEOUT: ("timeout",),
    JobState.ABORTED: ("aborted",),
    JobState.EXPIRED: ("job_expired",),
}
#: The largest page ``list_jobs`` returns.
MAX_PAGE = 1000


class Inspector:
    """Read (and clean) the job channels of one app. Safe to share between threads."""

    def __init__(self, app: TaskPipe) -> None:
        self.app = app

    # channels -------------------------------------------------------------------------------
    def channels(self) -> list[str]:
        """Names of every job channel, sorted: a sharded channel once, by its logical name (its
        shards: ``shards(name)``)."""
        return sorted(
            {sharded[0] if (sharded := parse_shard(n)) else n for n in self.physical_channels()}
        )

    def shards(self, name: str) -> list[str]:
        """The physical channels of ``name``: its shards if it is sharded (by the shard count
        recorded in Redis), else ``[name]``."""
        if parse_shard(name) is not None or "{" in name or "}" in name:
            return [name]
        count = stored_count(self.app.thoonk, name)
        return shard_names(name, count) if count > 1 else [name]

    def physical_channels(self) -> list[str]:
        """Names of every job channel (``feeds`` members of type ``job``), sorted; SSCAN-paged."""
        return self.app.thoonk.scan_names("job")

    def channel(self, name: str) -> JobChannel:
        """The existing job channel ``name`` (never creates one). A sharded channel's logical
        name is refused (``ConfigError`` naming its shards): name one shard."""
        shards = self.shards(name)
        if len(shards) > 1:
            raise ConfigError(
                f"channel {name!r} is sharded over {len(shards)} channels; name one "
                f"of them: {', '.join(shards)}"
            )
        if self.app.connection.is_cluster:
            from taskpipe.thoonk.keys import cluster_name

            name = cluster_name(name)
        kind = self.app.thoonk.get_type(name)
        if kind is None:
            raise FeedDoesNotExist(f"no job channel named {name!r}")
        if kind != "job":
            raise WrongFeedType(f"{name!r} is a {kind}, not a job channel")
        return JobChannel(self.app.thoonk, name)

    def channel_counts(self, name: str, now_ms: int | None = None) -> dict[str, Any]:
        """Jobs per state of one channel, lifetime counters, whether it is paused, and its flow
        control (``flow``: limits and live limiter state at server time ``now_ms``, default
        asked now; ``limits``: the same as one line).

        ``finished`` counts the finished-job index (jobs finished within its retention, 7 days by
        default, or until cleaned); their results may have expired earlier.
        """
        shards = self.shards(name)
        if len(shards) > 1:  # the sum, paused if any shard is, and each shard's own counts
            rows = [self.channel_counts(s) for s in shards]
            total: dict[str, Any] = {"channel": name}
            for key in rows[0]:  # counters: summed; the rest (flow, limits...) is per shard
                if all(type(r.get(key)) is int for r in rows):
                    total[key] = sum(int(r[key]) for r in rows)
            total["paused"] = any(r["paused"] for r in rows)
            total["shards"] = rows
            return total
        ch = self.channel(name)
        counts: dict[str, Any] = dict(ch.counts())
        counts["paused"] = ch.paused
        # flow control (docs/flow-control.md): the channel's limits and the live limiter state
        flow = flow_state(ch, self.server_time_ms() if now_ms is None else now_ms)
        counts["flow"] = flow
        counts["limits"] = limits_summary(flow)
        # when the oldest available job (the next to run: the right end of ids) was published
        counts["oldest_waiting_ms"] = ch.oldest_waiting_ms()
        return {"channel": name, **counts}

    def overview(self) -> list[dict[str, Any]]:
        """``channel_counts`` of every job channel."""
        out = []
        now = self.server_time_ms()  # one clock read for every channel's limiter state
        for name in self.channels():
            try:
                out.append(self.channel_counts(name, now))
            except (FeedDoesNotExist, WrongFeedType):
                continue  # deleted meanwhile
        return out

    def pause(self, name: str) -> None:
        """Pause an existing channel (workers stop claiming from it); every shard of a sharded one."""
        for shard in self.shards(name):
            self.channel(shard).pause()

    def resume(self, name: str) -> None:
        """Resume an existing paused channel (every shard of a sharded one)."""
        for shard in self.shards(name):
            self.channel(shard).resume()

    def workers(self) -> list[dict[str, Any]]:
        """Live workers: name, host, pid, channels, pool, concurrency, jobs ("channel/id"), stats."""
        rows = [worker_view(fields) for fields in WorkerRegistry(self.app.thoonk).live()]
        return sorted(rows, key=lambda w: str(w.get("name")))

    def server_time_ms(self) -> int:
        """Redis server time in ms (what every stored timestamp is measured in)."""
        return self.app.thoonk.server_ms()

    # listing --------------------------------------------------------------------------------
    def list_jobs(
        self, channel: str, state: JobState | str, cursor: str | int | None = None, limit: int = 50
    ) -> Page:
        """One page of the jobs in ``state`` (one of ``LIST_STATES``).

        Order: available = next to run first; delayed = soonest due first; claimed = oldest claim
        first; finished/failed = newest first; stalled = set order. ``cursor`` is the
        ``next_cursor`` of the previous page (an opaque string; a position, so a page may skip or
        repeat jobs that changed state meanwhile). ``limit`` is 1..1000. A sharded channel is
        listed shard after shard (cursor ``<shard>:<cursor in it>``; ``total`` is the sum).
        """
        shards = self.shards(channel)
        if len(shards) > 1:
            return self._list_sharded(shards, state, cursor, limit)
        ch = self.channel(channel)
        if state not in LIST_STATES:
            raise ConfigError(
                f"unknown state {str(state)!r}; expected one of {', '.join(LIST_STATES)}"
            )
        state = JobState(state)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
            raise ConfigError(f"limit must be an int from 1 to {MAX_PAGE}, got {limit!r}")
        if state == "stalled":
            return self._list_stalled(ch, cursor, limit)
        if state == "waiting":
            return self._list_waiting(ch, cursor, limit)
        off = _offset(cursor, state)
        if state in _FAILED_OUTCOMES:  # finished jobs whose stored result says so
            return self._list_failed(ch, off, limit, JobState(state))
        if state == "available":
            total, scored = ch.page_available(off, limit)
        else:
            total, scored = ch.page_sorted(state, off, limit)
        rows = self._rows(ch, state, [(i, _opt(sc)) for i, sc in scored])
        nxt = off + len(rows)
        return Page(rows, str(nxt) if rows and nxt < total else None, total)

    def _list_sharded(
        self, shards: list[str], state: str, cursor: str | int | None, limit: int
    ) -> Page:
        index, inner = 0, ""
        if cursor not in (None, ""):
            head, _, inner = str(cursor).partition(":")
            if not head.isdigit() or int(head) >= len(shards):
                raise ConfigError(f"bad cursor {cursor!r} for a sharded channel")
            index = int(head)
        rows: list[JobRow] = []
        nxt: str | None = None
        inner_cursor: str | None = inner or None
        while True:  # fill the page from this shard on, shard after shard
            page = self.list_jobs(shards[index], state, inner_cursor, limit - len(rows))
            rows += page.rows
            if page.next_cursor is not None:
                nxt = f"{index}:{page.next_cursor}"
                break
            index, inner_cursor = index + 1, None
            if index >= len(shards):
                break
            if len(rows) >= limit:
                nxt = f"{index}:"
                break
        totals = [self.list_jobs(s, state, None, 1).total for s in shards]
        total = None if any(t is None for t in totals) else sum(int(t or 0) for t in totals)
        return Page(rows, nxt, total)

    def _list_stalled(self, ch: JobChannel, cursor: str | int | None, limit: int) -> Page:
        scan, skip = 0, 0
        if cursor not in (None, ""):
            try:
                a, _, b = str(cursor).partition(".")
                scan, skip = int(a), int(b or 0)
            except ValueError:
                raise ConfigError(f"bad cursor {cursor!r} for stalled jobs") from None
        ids: list[str] = []
        nxt: str | None = None
        while True:
            new_scan, batch = ch.scan_stalled(scan, max(limit, 100))
            batch = batch[skip:]
            room = limit - len(ids)
            if len(batch) > room:  # resume inside this scan step next time
                ids += batch[:room]
                nxt = f"{scan}.{skip + room}"
                break
            ids += batch
            scan, skip = int(new_scan), 0
            if scan == 0:
                break
            if len(ids) == limit:
                nxt = f"{scan}.0"
                break
        rows = self._rows(ch, JobState.STALLED, [(i, None) for i in ids])
        return Page(rows, nxt, ch.count_stalled())

    def _list_waiting(self, ch: JobChannel, cursor: str | int | None, limit: int) -> Page:
        """Jobs waiting for parents (``depends_on``): HSCAN order, with parents left."""
        try:
            scan = int(cursor) if cursor not in (None, "") else 0
        except ValueError:
            raise ConfigError(f"bad cursor {cursor!r} for waiting jobs") from None
        left: dict[str, int] = {}
        while len(left) < limit:
            scan, batch = ch.scan_waiting(scan, limit)
            left.update(batch)
            if scan == 0:
                break
        rows = [
            replace(row, parents_left=left[row.id])
            for row in self._rows(ch, JobState.WAITING, [(i, None) for i in left])
        ]
        return Page(rows, str(scan) if scan != 0 else None, ch.waiting_count())

    def _list_failed(
        self, ch: JobChannel, off: int, limit: int, state: JobState = JobState.FAILED
    ) -> Page:
        rows: list[JobRow] = []
        pos, budget, chunk = off, max(limit * 10, 1000), 200
        total, scored = ch.page_sorted("finished", pos, chunk)
        while len(rows) < limit and pos < total and pos - off < budget:
            if not scored:
                break
            for row in self._rows(ch, JobState.FINISHED, [(i, _opt(sc)) for i, sc in scored]):
                pos += 1
                if row.outcome in _FAILED_OUTCOMES[state]:
                    rows.append(replace(row, state=state))
                    if len(rows) == limit:
                        break
            if len(rows) < limit and pos < total and pos - off < budget:
                total, scored = ch.page_sorted("finished", pos, chunk)
        return Page(rows, str(pos) if pos < total else None, None)

    def _rows(
        self, ch: JobChannel, state: JobState, scored: list[tuple[str, int | None]]
    ) -> list[JobRow]:
        if not scored:
            return []
        f = ch.row_fields(state, [i for i, _ in scored])
        rows = []
        for n, (job_id, when) in enumerate(scored):
            extra: dict[str, Any] = {}
            if state == "claimed":
                extra = {
                    "worker": _s(f["workers"][n] or b""),
                    "progress": _s(f["progress"][n] or b""),
                    "lease_deadline_ms": _opt(f["leases"][n]),
                }
            elif state == "stalled":
                extra = {"reason": safe_text(_s(f["reasons"][n] or b""), 500)}
            counts = (_int(f["cancelled"][n]), _int(f["attempts"][n]))
            if state == "finished":
                outcome, error = outcome_of(f["results"][n])
                label, runs, cancels, worker, kept, item = f["records"][n]
                if kept is not None and _s(kept) == "timeout" and outcome == "failed":
                    outcome = "timeout"
                extra = {"outcome": outcome, "error": error, "worker": _s(worker or b"")}
                task = _s(label) if label else None  # the payload is gone: the record names it
                if runs is not None:
                    counts = (_int(cancels), _int(runs))
            else:
                item = f["items"][n]
                task = task_name_of(item)
            extra["args"] = _args_of(item)
            rows.append(JobRow(job_id, ch.name, state, task, when, *counts, **extra))
        return rows

    # one job --------------------------------------------------------------------------------
    def find_job(self, job_id: str) -> list[str]:
        """Channels that know a job with this id (in any state, finished included)."""
        out = []
        for name in self.physical_channels():
            ch = JobChannel(self.app.thoonk, name)
            if ch.info(job_id).state != "unknown" or ch.has_record(job_id):
                out.append(name)  # a record: a job retracted before it ended, and the like
        return out

    def job_detail(self, channel: str, job_id: str, log_lines: int = 200) -> JobDetail:
        """Everything about one job; ``JobNotFound`` if the channel has no such job (a sharded
        channel's logical name finds the shard that has it)."""
        channel = self.shard_of(channel, job_id)
        ch = self.channel(channel)
        info = ch.info(job_id)
        item, claimed_ms, result_raw, log_total, logs = ch.detail_fields(job_id, log_lines)
        rec = ch.record(job_id) or {}
        if item is None and rec.get("item") is not None:
            item = rec["item"]  # ended: the payload as published, kept in its record
        if info.state == "unknown" and not log_total and not rec:
            raise JobNotFound(f"no job {job_id!r} in channel {channel!r}")
        payload, raw_payload, payload_error, task = None, None, "", None
        if item is not None:
            try:
                env = decode_envelope(item)
                task = env.task
                payload = {
                    "task": env.task,
                    "args": list(env.args),
                    "kwargs": env.kwargs,
                    "options": env.options,
                    "serializer": env.serializer,
                }
            except SerializationError as exc:
                payload_error, raw_payload = str(exc), raw_view(item)
        state = info.state
        result = record_view(result_raw) if result_raw is not None else None
        if state == JobState.FINISHED and result is not None and not result["ok"]:
            state = OUTCOME_STATES.get(result["exc_type"] or "", JobState.FAILED)  # or timeout...
        ended = "outcome" in rec and state in (*DONE_STATES, JobState.UNKNOWN)
        if state == JobState.UNKNOWN and ended:
            kept = _s(rec.get("outcome", b""))
            state = JobState.FINISHED if kept == "succeeded" else JobState(kept)
        ts = {
            "published_ms": info.published_ms,
            "due_ms": info.due_ms,
            "claimed_ms": _opt(claimed_ms),
            "lease_deadline_ms": info.lease_deadline_ms,
            "finished_ms": info.finished_ms,
        }
        cancels, attempts, worker = info.cancel_count, info.attempts, info.worker
        if ended:  # the bookkeeping went at finish: the record kept it
            ts.update(
                published_ms=_opt(rec.get("published")),
                claimed_ms=_opt(rec.get("started")),
                finished_ms=_opt(rec.get("finished")) or info.finished_ms,
            )
            cancels, attempts = _int(rec.get("cancels")), _int(rec.get("attempts"))
            worker = _s(rec.get("worker", b""))
        elif state == "stalled" and rec:  # the stall kept who ran it last, and when
            worker = worker or _s(rec.get("worker", b""))
            ts["claimed_ms"] = ts["claimed_ms"] or _opt(rec.get("started"))
            ts["published_ms"] = ts["published_ms"] or _opt(rec.get("published"))  # ZREM'd at stall
        return JobDetail(
            id=job_id,
            channel=channel,
            state=state,
            task=task,
            payload=payload,
            raw_payload=raw_payload,
            payload_error=payload_error,
            cancels=cancels,
            attempts=attempts,
            worker=worker,
            progress=info.progress,
            reason=safe_text(info.reason),
            timestamps=ts,
            result_ttl_ms=info.result_ttl_ms if result_raw is not None else None,
            result=result,
            logs=[safe_text(_s(x)) for x in (logs if log_lines > 0 else [])],
            log_total=int(log_total),
            server_time_ms=self.server_time_ms(),
            runtime_ms=_opt(rec.get("runtime_ms")) if ended else None,
            code=_s(rec.get("code", b"")) if ended else "",
            requeues=_int(rec.get("requeues")),
            previous=_s(rec.get("previous", b"")),
            last_error=safe_text(_s(rec.get("last_error", b"")), 2000) if not ended else "",
        )

    def logs(
        self, channel: str, job_id: str, tail: int | None = None, chunk: int = 1000
    ) -> Iterator[str]:
        """A job's log lines, oldest first (the last ``tail`` only), read in bounded chunks."""
        ch = self.channel(self.shard_of(channel, job_id))
        total = ch.log_length(job_id)
        start = max(0, total - tail) if tail is not None else 0
        while start < total:
            lines = ch.logs(job_id, start, min(total, start + chunk) - 1)
            if not lines:
                return
            yield from (safe_text(_s(x)) for x in lines)
            start += len(lines)

    def follow(
        self,
        channel: str,
        job_id: str,
        timeout: float | None = None,
        backlog: int = 1000,
        poll: float = 1.0,
    ) -> Iterator[JobEvent]:
        """Yield a job's log (the last ``backlog`` lines), then its live log and progress events
        until it ends (an ``end`` event) or ``timeout`` seconds pass (a ``timeout`` event).
        See ``taskpipe.inspection.follow``."""
        return follow(
            self.app, self.channel(self.shard_of(channel, job_id)), job_id, timeout, backlog, poll
        )

    def shard_of(self, channel: str, job_id: str) -> str:
        """``channel``, or for a sharded channel the shard that knows ``job_id`` (else the shard
        a custom id maps to)."""
        shards = self.shards(channel)
        if len(shards) == 1:
            return channel
        for shard in shards:
            if JobChannel(self.app.thoonk, shard).info(job_id).state != "unknown":
                return shard
        return shards[shard_index(job_id, len(shards))]

    # cleaning -------------------------------------------------------------------------------
    def clean(
        self,
        channel: str,
        state: str,
        older_than_s: float,
        *,
        batch: int = 500,
        now_ms: int | None = None,
        dry_run: bool = False,
        on_progress: Callable[[int], None] | None = None,
    ) -> CleanReport:
        """Remove old ``finished`` jobs (index entry, stored result and log) or ``stalled`` jobs
        (retracted), ``batch`` (1..1000) at a time. ``now_ms`` defaults to the server clock;
        ``on_progress(n)`` is called after each batch with the number of ids examined.

        ``finished``: succeeded jobs of the finished index older than ``older_than_s`` (failed,
        timed-out and aborted ones are kept: clean them with ``failed`` / ``timeout`` /
        ``aborted``).
        ``stalled``: jobs stalled longer ago than ``older_than_s`` (by their stall time); a job is
        retracted only if it is still stalled. A sharded channel is cleaned shard after shard
        (one report).
        """
        chans = [self.channel(s) for s in self.shards(channel)]
        self.check_clean(state, older_than_s, batch)
        now = self.server_time_ms() if now_ms is None else now_ms
        report = CleanReport(channel, state, now - int(older_than_s * 1000), dry_run=dry_run)
        for ch in chans:
            if state == "stalled":
                clean_stalled(ch, report, batch, on_progress)
            else:
                clean_finished(
                    ch,
                    report,
                    batch,
                    on_progress,
                    ("succeeded",) if state == "finished" else (state,),
                )
        return report

    @staticmethod
    def check_clean(state: str, older_than_s: float, batch: int = 500) -> None:
        """Raise ``ConfigError`` if ``clean`` would refuse these arguments (nothing is read)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 1000:
            raise ConfigError(f"batch must be an int from 1 to 1000, got {batch!r}")
        if not math.isfinite(older_than_s) or older_than_s < 0:
            raise ConfigError(f"older_than must be a finite duration >= 0, got {older_than_s!r}")
        if state not in CLEAN_STATES:
            raise ConfigError(f"can only clean {', '.join(CLEAN_STATES)} jobs, not {state!r}")

    def count_cleanable(
        self, channel: str, state: str, older_than_s: float, now_ms: int | None = None
    ) -> int:
        """How many jobs ``clean`` would examine (for a progress bar), in O(log n)."""
        chans = [self.channel(s) for s in self.shards(channel)]
        now = self.server_time_ms() if now_ms is None else now_ms
        cutoff = now - int(older_than_s * 1000)
        return sum(
            ch.count_stalled_before(cutoff)
            if state == "stalled"
            else ch.count_finished_before(cutoff)
            for ch in chans
        )


def _args_of(item: bytes | None) -> str:
    """A job payload's args and kwargs for a list row (cut with a marker), '' if not an envelope."""
    if item is None:
        return ""
    try:
        env = decode_envelope(item)
    except SerializationError:
        return ""
    return safe_text(display_args(env.args, env.kwargs, 200))


def _offset(cursor: str | int | None, state: str) -> int:
    if cursor in (None, ""):
        return 0
    try:
        value = int(str(cursor))
    except ValueError:
        raise ConfigError(f"bad cursor {cursor!r} for {state} jobs") from None
    if value < 0:
        raise ConfigError(f"bad cursor {cursor!r} for {state} jobs")
    return value
