"""Cron: the ``Scheduler`` that enqueues cron entries when due (entries and their pure fire-time
logic are in ``taskpipe.cron``, re-exported here). At run time the Redis server clock
(``TIME``) is the authority; the bookkeeping lives in the Thoonk layer's ``CronStore``.

Any number of schedulers may run at once (``taskpipe scheduler``, ``taskpipe worker --beat``).
Each entry has a bookkeeping hash (``Keyspace.cron_state``) whose ``cursor`` field is the last fire
time handled. A scheduler takes fires by advancing the cursor with an atomic compare-and-set
(``cron_claim_fire.lua``) to a *pending* value naming the fires it took, enqueues them with the
deterministic job id ``cron:<entry>:<fire epoch seconds>``, then sets the cursor to the plain fire
time. A fire is therefore taken by exactly one scheduler. A pending cursor left by a scheduler
that died is taken over after ``takeover`` (a job that already exists is not sent again).
See ``docs/scheduling.md``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from taskpipe.cron import (
    ALL_MISFIRES_CAP,
    DEFAULT_GRACE,
    MISFIRE_POLICIES,
    CronEntry,
    FirePlan,
    due_fires,
    latest_fire,
    next_fire,
    plan_fires,
)
from taskpipe.durations import parse_duration
from taskpipe.errors import BrokerUnavailable, TaskpipeError
from taskpipe.thoonk.cron_store import CronStore

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

# the pure cron names are defined in taskpipe.cron and re-exported here (their historic home)
__all__ = [
    "CronEntry",
    "FirePlan",
    "Scheduler",
    "MISFIRE_POLICIES",
    "ALL_MISFIRES_CAP",
    "DEFAULT_GRACE",
    "next_fire",
    "latest_fire",
    "plan_fires",
    "due_fires",
]

log = logging.getLogger("taskpipe.scheduler")

_UTC = timezone.utc


# cursor encoding ------------------------------------------------------------------------------
def _ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, _UTC)


def _dt_to_ms(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


@dataclass(frozen=True)
class _Cursor:
    """``'<ms>'`` (all fires up to ms handled) or ``'pending|<ms>|<since>|<owner>|<f1>,<f2>'``."""

    ms: int
    since: int = 0
    owner: str = ""
    fires: tuple[int, ...] = ()

    @property
    def pending(self) -> bool:
        return bool(self.fires)

    def encode(self) -> str:
        if not self.fires:
            return str(self.ms)
        return f"pending|{self.ms}|{self.since}|{self.owner}|{','.join(map(str, self.fires))}"

    @classmethod
    def decode(cls, raw: str) -> _Cursor:
        if raw.startswith("pending|"):
            _, ms, since, owner, fires = raw.split("|", 4)
            return cls(int(ms), int(since), owner, tuple(int(f) for f in fires.split(",") if f))
        return cls(int(raw))


# the scheduler --------------------------------------------------------------------------------
class Scheduler:
    """Enqueues the app's cron entries when due; safe to run in any number of processes.

    ``start()`` runs it in a background thread (``taskpipe worker --beat``), ``run()`` in the
    calling thread until ``stop()`` (``taskpipe scheduler``). ``takeover``: how long a fire taken
    by another scheduler may stay unconfirmed before this one assumes it died and sends it.
    """

    def __init__(
        self,
        app: TaskPipe,
        entries: list[CronEntry] | None = None,
        *,
        name: str | None = None,
        takeover: Any = "1s",
        max_sleep: float = 1.0,
    ) -> None:
        self.app = app
        self.entries = list(app.crons if entries is None else entries)
        host = socket.gethostname().replace("|", "_")
        self.name = (name or f"{host}.{os.getpid()}.{uuid.uuid4().hex[:6]}").replace("|", "_")
        self.takeover_ms = int(parse_duration(takeover) * 1000)
        self.max_sleep = max_sleep
        self.fired = 0
        self.store = CronStore(app.thoonk)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = -1e9

    # control --------------------------------------------------------------------------------
    def start(self) -> None:
        """Run in a daemon thread until ``stop()``."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="taskpipe-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop and wait (up to ``timeout``) for the thread started by ``start``."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def run(self) -> None:
        """Fire entries as they come due, until ``stop()``."""
        if not self.entries:
            log.warning("scheduler %s: the app has no cron entries", self.name)
        else:
            log.info(
                "scheduler %s: %d cron entr%s: %s",
                self.name,
                len(self.entries),
                "y" if len(self.entries) == 1 else "ies",
                ", ".join(f"{e.name} [{e.expr}]" for e in self.entries),
            )
        registered = False
        failures = 0
        while not self._stop.is_set():
            try:
                if not registered:
                    self.register()
                    registered = True
                wait = self.tick()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the loop must survive Redis outages
                failures += 1
                self._log_error(exc)
                wait = min(5.0, 0.1 * 2 ** min(failures, 6))
            self._stop.wait(wait)
        log.info("scheduler %s stopped (%d fires enqueued)", self.name, self.fired)

    def _log_error(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 30:
            self._last_error_log = now
            if isinstance(exc, BrokerUnavailable) or "Connection" in type(exc).__name__:
                log.warning("scheduler %s: broker unavailable (%s); retrying", self.name, exc)
            else:
                log.exception("scheduler %s: tick failed; retrying", self.name)

    def register(self) -> None:
        """Record the entries' definitions in their state hashes (for ``cron list`` and tools)."""
        self.store.register(
            {
                e.name: {
                    "task": e.task,
                    "expr": e.expr,
                    "tz": e.tz,
                    "misfire": e.misfire,
                    "channel": e.channel or self.channel_for(e),
                }
                for e in self.entries
            }
        )

    # one pass -------------------------------------------------------------------------------
    def server_ms(self) -> int:
        """Redis server time in ms (the authority for every fire decision)."""
        return self.app.thoonk.server_ms()

    def tick(self, now_ms: int | None = None) -> float:
        """Handle every entry once at ``now_ms`` (default: the Redis server's clock, which is
        the authority at run time; tests inject it); returns seconds until the next pass."""
        if not self.entries:
            return self.max_sleep
        now = self.server_ms() if now_ms is None else int(now_ms)
        cursors = self.store.cursors([e.name for e in self.entries])
        wake = now + int(self.max_sleep * 1000)
        for entry, raw in zip(self.entries, cursors):
            if self._stop.is_set():
                break
            try:
                wake = min(wake, self._service(entry, raw, now))
            except (TaskpipeError, ValueError) as exc:
                if isinstance(exc, BrokerUnavailable):
                    raise
                log.error("cron %s: %s", entry.name, exc)
                self._note_error(entry, exc)
        return max(0.001, (wake - now) / 1000.0 + 0.002)

    def _service(self, entry: CronEntry, raw: str, now: int) -> int:
        """Handle one entry; returns the server ms at which it next needs attention."""
        name = entry.name
        if not raw:
            first = _dt_to_ms(next_fire(entry, _ms_to_dt(now)))
            self.store.advance(name, "", str(now), {"next_fire": str(first)})
            return first
        cur = _Cursor.decode(raw)
        if cur.pending:
            if cur.owner != self.name and now - cur.since < self.takeover_ms:
                nxt = _dt_to_ms(next_fire(entry, _ms_to_dt(cur.ms)))
                return max(now + 1, min(cur.since + self.takeover_ms, nxt))
            mine = _Cursor(cur.ms, now, self.name, cur.fires).encode()
            if cur.owner != self.name:
                log.warning(
                    "cron %s: taking over fire(s) left unconfirmed by %s", entry.name, cur.owner
                )
            if not self.store.advance(name, raw, mine):
                return now
            self._enqueue(entry, cur.ms, cur.fires, mine, now, check=True)
            return now
        plan = plan_fires(entry, _ms_to_dt(cur.ms), _ms_to_dt(now))
        if plan.cursor is None:
            return _dt_to_ms(next_fire(entry, _ms_to_dt(max(cur.ms, now))))
        new_ms = _dt_to_ms(plan.cursor)
        if not plan.run:
            log.info(
                "cron %s: skipped missed fire(s) up to %s (misfire=skip)",
                entry.name,
                plan.cursor.isoformat(),
            )
            following = str(_dt_to_ms(next_fire(entry, plan.cursor)))
            self.store.advance(name, raw, str(new_ms), {"next_fire": following})
            return now
        fires = tuple(_dt_to_ms(f) for f in plan.run)
        mine = _Cursor(new_ms, now, self.name, fires).encode()
        if self.store.advance(name, raw, mine):
            self._enqueue(entry, new_ms, fires, mine, now, check=False)
        return now

    def channel_for(self, entry: CronEntry) -> str:
        """The channel an entry's jobs go to (entry, else task, else app default)."""
        task = self.app.tasks.get(entry.task)
        return entry.channel or (task.channel if task is not None else self.app.default_channel)

    def _enqueue(
        self,
        entry: CronEntry,
        cursor_ms: int,
        fires: tuple[int, ...],
        mine: str,
        now: int,
        check: bool,
    ) -> None:
        """Send the fires we hold (oldest first), then confirm the cursor."""
        channel = self.channel_for(entry)
        job_id = ""
        for fire_ms in fires:
            if self.store.cursor(entry.name) != mine:
                log.warning("cron %s: another scheduler took over our fires", entry.name)
                return
            job_id = entry.job_id(_ms_to_dt(fire_ms))
            shard = self.app.sharding.pick(channel, job_id, entry.options.get("shard_key"))
            if check and shard.info(job_id).state != "unknown":
                continue
            self.app.send(
                entry.task, entry.args, entry.kwargs, id=job_id, channel=channel, **entry.options
            )
            self.fired += 1
            log.info(
                "cron %s: fire %s enqueued as job %s",
                entry.name,
                _ms_to_dt(fire_ms).astimezone(entry.zone).isoformat(),
                job_id,
            )
        nxt = _dt_to_ms(next_fire(entry, _ms_to_dt(cursor_ms)))
        self.store.advance(
            entry.name,
            mine,
            str(cursor_ms),
            {
                "last_fire": str(fires[-1]),
                "last_job": job_id,
                "last_sent_ms": str(now),
                "last_by": self.name,
                "next_fire": str(nxt),
                "last_error": "",
            },
        )

    def _note_error(self, entry: CronEntry, exc: BaseException) -> None:
        try:
            self.store.note(entry.name, {"last_error": f"{type(exc).__name__}: {exc}"})
        except Exception:  # noqa: BLE001 - best effort bookkeeping
            pass
