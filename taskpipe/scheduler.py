"""Cron: entries (``@app.cron`` / ``app.add_cron``), pure fire-time logic, and the ``Scheduler``.

The fire-time logic is pure: every function takes ``now`` (an aware datetime), so it is tested
without sleeping. At run time the Redis server clock (``TIME``) is the authority.

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
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from taskpipe.durations import parse_duration
from taskpipe.errors import BrokerUnavailable, CronError, TaskpipeError

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["CronEntry", "FirePlan", "Scheduler", "MISFIRE_POLICIES",
           "ALL_MISFIRES_CAP", "DEFAULT_GRACE", "next_fire", "latest_fire", "plan_fires",
           "due_fires"]

log = logging.getLogger("taskpipe.scheduler")

MISFIRE_POLICIES = ("skip", "once", "all")
ALL_MISFIRES_CAP = 100      # misfire="all" runs at most this many missed fires (the latest ones)
DEFAULT_GRACE = 2.0         # seconds a fire may be late and still count as on time (misfire="skip")
_ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
            "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
            "@hourly": "0 * * * *"}
_SEND_OPTIONS = ("priority", "result_ttl", "retries", "timeout", "hard_timeout")
_OPTIONS = {"tz", "channel", "args", "kwargs", "misfire", "name", "grace", *_SEND_OPTIONS}
_UTC = timezone.utc


def _zone(tz: Any) -> tuple[str, tzinfo]:
    if tz is None or tz == "UTC" or tz is _UTC:
        return "UTC", _UTC
    if isinstance(tz, ZoneInfo):
        return tz.key, tz
    if not isinstance(tz, str) or not tz.strip():
        raise CronError(f"bad cron time zone {tz!r}: expected an IANA name such as 'Europe/Paris'")
    try:
        return tz, ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(f"unknown cron time zone {tz!r}: expected an IANA name such as "
                        "'Europe/Paris'") from None


def _normalize(expr: Any) -> str:
    if not isinstance(expr, str) or not expr.strip():
        raise CronError(f"bad cron expression {expr!r}: expected e.g. '*/5 * * * *'")
    text = " ".join(expr.split())
    text = _ALIASES.get(text.lower(), text)
    if len(text.split()) not in (5, 6):
        raise CronError(f"bad cron expression {expr!r}: expected 5 fields (minute hour day month "
                        "weekday) or 6 with seconds first (second minute hour day month weekday)")
    _check_steps(expr, text)
    return text


# (field name, lowest, highest) in the five-field order; six fields put seconds first
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12),
           ("weekday", 0, 6))


def _check_steps(expr: Any, text: str) -> None:
    """A step larger than its field's range (``*/61`` minutes, ``*/24`` hours) would fire only
    at the start of the range (hourly, daily): croniter accepts it, cron users do not mean it."""
    fields = text.split()
    bounds = ((("second", 0, 59),) if len(fields) == 6 else ()) + _FIELDS
    for value, (name, low, high) in zip(fields, bounds):
        for part in value.split(","):
            _, slash, step = part.partition("/")
            if slash and step.isdigit() and not 1 <= int(step) <= high - low:
                raise CronError(f"bad cron expression {expr!r}: step {step} in the {name} field is "
                                f"outside 1-{high - low} (the field runs {low}-{high})")


@dataclass(frozen=True)
class CronEntry:
    """One cron entry: run ``task`` on the schedule ``expr`` in time zone ``tz``.

    Five fields (``'*/5 * * * *'``) or six with seconds first (``'*/10 * * * * *'``), and the
    ``@hourly`` / ``@daily`` / ``@weekly`` / ``@monthly`` / ``@yearly`` aliases. ``misfire``
    says what happens to fires missed while no scheduler ran: ``'once'`` (default) runs the
    latest missed fire once, ``'skip'`` runs none (a fire at most ``grace`` late still runs),
    ``'all'`` runs every missed fire (at most ``ALL_MISFIRES_CAP``, the latest ones).
    """

    name: str
    task: str
    expr: str
    tz: str = "UTC"
    channel: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    misfire: str = "once"
    grace: float = DEFAULT_GRACE
    options: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def validate(expr: str, tz: Any = None) -> None:
        """Raise ``CronError`` unless ``expr`` is a valid expression that fires, and ``tz`` a zone."""
        text = _normalize(expr)
        _, zone = _zone(tz)
        try:
            it = croniter(text, datetime(2000, 1, 1, tzinfo=zone), ret_type=datetime,
                          second_at_beginning=len(text.split()) == 6)
            it.get_next(datetime)
        except Exception as exc:  # noqa: BLE001 - croniter raises many types (and plain ones)
            raise CronError(f"bad cron expression {expr!r}: {exc}") from None

    @classmethod
    def new(cls, task: str, expr: str, **options: Any) -> CronEntry:
        """Build and check an entry (no app needed). Options as for ``TaskPipe.cron``."""
        unknown = set(options) - _OPTIONS
        if unknown:
            raise CronError(f"unknown cron option(s): {', '.join(sorted(unknown))}; "
                            f"expected some of {', '.join(sorted(_OPTIONS))}")
        cls.validate(expr, options.get("tz"))
        if not isinstance(task, str) or not task:
            raise CronError(f"a cron entry needs a task name, got {task!r}")
        name = options.get("name") or task
        if not isinstance(name, str) or any(c in name for c in "\0\r\n"):
            raise CronError(f"bad cron entry name {name!r}")
        misfire = options.get("misfire") or "once"
        if misfire not in MISFIRE_POLICIES:
            raise CronError(f"bad misfire policy {misfire!r}: expected one of {MISFIRE_POLICIES}")
        args = options.get("args") or ()
        if not isinstance(args, (list, tuple)):
            raise CronError(f"cron args must be a list or tuple, got {type(args).__name__}")
        kwargs = options.get("kwargs") or {}
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise CronError("cron kwargs must be a dict with string keys")
        channel = options.get("channel")
        if channel is not None and (not isinstance(channel, str) or not channel):
            raise CronError(f"bad cron channel {channel!r}")
        grace = parse_duration(options["grace"]) if options.get("grace") is not None \
            else DEFAULT_GRACE
        send = {k: options[k] for k in _SEND_OPTIONS if options.get(k) is not None}
        for key in ("result_ttl", "timeout", "hard_timeout"):
            if key in send:
                parse_duration(send[key])
        retries = send.get("retries")
        if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool)
                                    or retries < 0):
            raise CronError(f"cron retries must be a non-negative int, got {retries!r}")
        return cls(name=name, task=task, expr=_normalize(expr), tz=_zone(options.get("tz"))[0],
                   channel=channel, args=tuple(args), kwargs=dict(kwargs), misfire=misfire,
                   grace=grace, options=send)

    @classmethod
    def create(cls, app: TaskPipe, task_name: str, expr: str, **options: Any) -> CronEntry:
        """Build an entry for ``app`` (``app.add_cron`` appends it to ``app.crons``).

        Raises ``CronError`` for a bad expression, zone or option, or a name already in use
        (two entries for one task need ``name=``); the arguments must be serializable.
        """
        from taskpipe.serialization import encode_envelope

        entry = cls.new(task_name, expr, **options)
        if any(e.name == entry.name for e in app.crons):
            raise CronError(f"a cron entry named {entry.name!r} already exists; pass name=")
        encode_envelope(entry.task, entry.args, entry.kwargs, {}, serializer=app.serializer,
                        max_size=app.max_payload)
        return entry

    # pure schedule logic ----------------------------------------------------------------------
    @property
    def zone(self) -> tzinfo:
        """The entry's time zone object."""
        return _zone(self.tz)[1]

    def _iter(self, start: datetime) -> Any:
        return croniter(self.expr, start.astimezone(self.zone), ret_type=datetime,
                        second_at_beginning=len(self.expr.split()) == 6)

    def _repeat(self, fire: datetime) -> bool:
        """A second occurrence of a wall-clock time (DST fall-back) of a fixed-hour entry."""
        fields = self.expr.split()
        if fields[-4].startswith("*"):
            return False
        local = fire.astimezone(_UTC).astimezone(self.zone)
        return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()

    def job_id(self, fire: datetime) -> str:
        """The deterministic job id of one fire: ``cron:<entry>:<fire epoch seconds>``."""
        return f"cron:{self.name}:{int(fire.timestamp())}"


def _aware(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise CronError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value


def next_fire(entry: CronEntry, after: datetime) -> datetime:
    """The first fire strictly after ``after``."""
    it = entry._iter(_aware(after, "after"))
    for _ in range(8):
        fire: datetime = it.get_next(datetime)
        if not entry._repeat(fire):
            return fire
    return fire


def latest_fire(entry: CronEntry, at: datetime) -> datetime:
    """The last fire at or before ``at``."""
    it = entry._iter(_aware(at, "at") + timedelta(microseconds=1))
    for _ in range(8):
        fire: datetime = it.get_prev(datetime)
        if not entry._repeat(fire):
            return fire
    return fire


@dataclass(frozen=True)
class FirePlan:
    """What a scheduler does for one entry at ``now``: the fires to ``run`` (oldest first) and
    the new ``cursor`` (the latest due fire, run or skipped); ``cursor`` None = nothing due."""

    run: list[datetime]
    cursor: datetime | None


def plan_fires(entry: CronEntry, last_fire: datetime | None, now: datetime) -> FirePlan:
    """Apply the entry's misfire policy to the fires in ``(last_fire, now]``.

    ``last_fire`` None (the entry was never scheduled) starts the schedule at ``now``: no past
    fire runs and the cursor becomes ``now``.
    """
    _aware(now, "now")
    if last_fire is None:
        return FirePlan([], now)
    first = next_fire(entry, last_fire)
    if first > now:
        return FirePlan([], None)
    latest = latest_fire(entry, now)
    if latest < first:  # cannot happen for a sane croniter; be safe
        latest = first
    if entry.misfire == "once":
        return FirePlan([latest], latest)
    if entry.misfire == "skip":
        on_time = (now - latest).total_seconds() <= entry.grace
        return FirePlan([latest] if on_time else [], latest)
    fires = [latest]
    it = entry._iter(latest)
    while len(fires) < ALL_MISFIRES_CAP:
        prev: datetime = it.get_prev(datetime)
        if prev <= last_fire:
            break
        if not entry._repeat(prev):
            fires.append(prev)
    fires.reverse()
    return FirePlan(fires, latest)


def due_fires(entry: CronEntry, last_fire: datetime | None, now: datetime) -> list[datetime]:
    """The fires to enqueue at ``now`` given the last fire handled (misfire policy applied)."""
    return plan_fires(entry, last_fire, now).run


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


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# the scheduler --------------------------------------------------------------------------------
class Scheduler:
    """Enqueues the app's cron entries when due; safe to run in any number of processes.

    ``start()`` runs it in a background thread (``taskpipe worker --beat``), ``run()`` in the
    calling thread until ``stop()`` (``taskpipe scheduler``). ``takeover``: how long a fire taken
    by another scheduler may stay unconfirmed before this one assumes it died and sends it.
    """

    def __init__(self, app: TaskPipe, entries: list[CronEntry] | None = None, *,
                 name: str | None = None, takeover: Any = "1s", max_sleep: float = 1.0) -> None:
        self.app = app
        self.entries = list(app.crons if entries is None else entries)
        host = socket.gethostname().replace("|", "_")
        self.name = (name or f"{host}.{os.getpid()}.{uuid.uuid4().hex[:6]}").replace("|", "_")
        self.takeover_ms = int(parse_duration(takeover) * 1000)
        self.max_sleep = max_sleep
        self.fired = 0
        self._keys = app.thoonk.keys
        self._cas = app.thoonk.scripts["cron_claim_fire"]
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
            log.info("scheduler %s: %d cron entr%s: %s", self.name, len(self.entries),
                     "y" if len(self.entries) == 1 else "ies",
                     ", ".join(f"{e.name} [{e.expr}]" for e in self.entries))
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
        client = self.app.thoonk.client
        pipe = client.pipeline(transaction=False)
        for e in self.entries:
            pipe.sadd(self._keys.cron_entries(), e.name)
            pipe.hset(self._keys.cron_state(e.name), mapping={
                "task": e.task, "expr": e.expr, "tz": e.tz, "misfire": e.misfire,
                "channel": e.channel or self.channel_for(e)})
        pipe.execute()

    # one pass -------------------------------------------------------------------------------
    def server_ms(self) -> int:
        """Redis server time in ms (the authority for every fire decision)."""
        sec, usec = self.app.thoonk.client.time()
        return int(sec) * 1000 + int(usec) // 1000

    def tick(self, now_ms: int | None = None) -> float:
        """Handle every entry once at ``now_ms`` (default: the Redis server's clock, which is
        the authority at run time; tests inject it); returns seconds until the next pass."""
        if not self.entries:
            return self.max_sleep
        client = self.app.thoonk.client
        now = self.server_ms() if now_ms is None else int(now_ms)
        pipe = client.pipeline(transaction=False)
        for e in self.entries:
            pipe.hget(self._keys.cron_state(e.name), "cursor")
        cursors = pipe.execute()
        wake = now + int(self.max_sleep * 1000)
        for entry, raw in zip(self.entries, cursors):
            if self._stop.is_set():
                break
            try:
                wake = min(wake, self._service(entry, _s(raw) if raw is not None else "", now))
            except (TaskpipeError, ValueError) as exc:
                if isinstance(exc, BrokerUnavailable):
                    raise
                log.error("cron %s: %s", entry.name, exc)
                self._note_error(entry, exc)
        return max(0.001, (wake - now) / 1000.0 + 0.002)

    def _service(self, entry: CronEntry, raw: str, now: int) -> int:
        """Handle one entry; returns the server ms at which it next needs attention."""
        key = self._keys.cron_state(entry.name)
        if not raw:
            first = _dt_to_ms(next_fire(entry, _ms_to_dt(now)))
            self._cas(self.app.thoonk.client, [key], ["cursor", "", str(now), "next_fire", str(first)])
            return first
        cur = _Cursor.decode(raw)
        if cur.pending:
            if cur.owner != self.name and now - cur.since < self.takeover_ms:
                nxt = _dt_to_ms(next_fire(entry, _ms_to_dt(cur.ms)))
                return max(now + 1, min(cur.since + self.takeover_ms, nxt))
            mine = _Cursor(cur.ms, now, self.name, cur.fires).encode()
            if cur.owner != self.name:
                log.warning("cron %s: taking over fire(s) left unconfirmed by %s",
                            entry.name, cur.owner)
            if self._cas(self.app.thoonk.client, [key], ["cursor", raw, mine]) != 1:
                return now
            self._enqueue(entry, cur.ms, cur.fires, mine, now, check=True)
            return now
        plan = plan_fires(entry, _ms_to_dt(cur.ms), _ms_to_dt(now))
        if plan.cursor is None:
            return _dt_to_ms(next_fire(entry, _ms_to_dt(max(cur.ms, now))))
        new_ms = _dt_to_ms(plan.cursor)
        if not plan.run:
            log.info("cron %s: skipped missed fire(s) up to %s (misfire=skip)",
                     entry.name, plan.cursor.isoformat())
            following = str(_dt_to_ms(next_fire(entry, plan.cursor)))
            self._cas(self.app.thoonk.client, [key],
                      ["cursor", raw, str(new_ms), "next_fire", following])
            return now
        fires = tuple(_dt_to_ms(f) for f in plan.run)
        mine = _Cursor(new_ms, now, self.name, fires).encode()
        if self._cas(self.app.thoonk.client, [key], ["cursor", raw, mine]) == 1:
            self._enqueue(entry, new_ms, fires, mine, now, check=False)
        return now

    def channel_for(self, entry: CronEntry) -> str:
        """The channel an entry's jobs go to (entry, else task, else app default)."""
        task = self.app.tasks.get(entry.task)
        return entry.channel or (task.channel if task is not None else self.app.default_channel)

    def _enqueue(self, entry: CronEntry, cursor_ms: int, fires: tuple[int, ...], mine: str,
                 now: int, check: bool) -> None:
        """Send the fires we hold (oldest first), then confirm the cursor."""
        client = self.app.thoonk.client
        key = self._keys.cron_state(entry.name)
        channel = self.channel_for(entry)
        job_id = ""
        for fire_ms in fires:
            if _s(client.hget(key, "cursor") or b"") != mine:
                log.warning("cron %s: another scheduler took over our fires", entry.name)
                return
            job_id = entry.job_id(_ms_to_dt(fire_ms))
            shard = self.app.sharding.pick(channel, job_id, entry.options.get("shard_key"))
            if check and shard.info(job_id).state != "unknown":
                continue
            self.app.send(entry.task, entry.args, entry.kwargs, id=job_id, channel=channel,
                          **entry.options)
            self.fired += 1
            log.info("cron %s: fire %s enqueued as job %s", entry.name,
                     _ms_to_dt(fire_ms).astimezone(entry.zone).isoformat(), job_id)
        nxt = _dt_to_ms(next_fire(entry, _ms_to_dt(cursor_ms)))
        self._cas(client, [key], ["cursor", mine, str(cursor_ms), "last_fire", str(fires[-1]),
                                  "last_job", job_id, "last_sent_ms", str(now), "last_by",
                                  self.name, "next_fire", str(nxt), "last_error", ""])

    def _note_error(self, entry: CronEntry, exc: BaseException) -> None:
        try:
            self.app.thoonk.client.hset(self._keys.cron_state(entry.name),
                                        mapping={"last_error": f"{type(exc).__name__}: {exc}"})
        except Exception:  # noqa: BLE001 - best effort bookkeeping
            pass
