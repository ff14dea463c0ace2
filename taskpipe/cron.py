"""Cron entries and their pure fire-time logic (app layer; no Redis, no clock).

``@app.cron`` / ``app.add_cron`` build a ``CronEntry``. Every function here takes ``now`` (an
aware datetime), so the schedule is tested without sleeping; the ``Scheduler``
(``taskpipe/scheduler.py``) feeds it the Redis server clock and keeps the bookkeeping in the
Thoonk layer's cron store (``taskpipe/thoonk/cron_store.py``). See ``docs/scheduling.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from taskpipe.durations import parse_duration
from taskpipe.errors import CronError

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = [
    "CronEntry",
    "FirePlan",
    "MISFIRE_POLICIES",
    "ALL_MISFIRES_CAP",
    "DEFAULT_GRACE",
    "next_fire",
    "latest_fire",
    "plan_fires",
    "due_fires",
]
MISFIRE_POLICIES = ("skip", "once", "all")
ALL_MISFIRES_CAP = 100  # misfire="all" runs at most this many missed fires (the latest ones)
DEFAULT_GRACE = 2.0  # seconds a fire may be late and still count as on time (misfire="skip")
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
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
        raise CronError(
            f"unknown cron time zone {tz!r}: expected an IANA name such as 'Europe/Paris'"
        ) from None


def _normalize(expr: Any) -> str:
    if not isinstance(expr, str) or not expr.strip():
        raise CronError(f"bad cron expression {expr!r}: expected e.g. '*/5 * * * *'")
    text = " ".join(expr.split())
    text = _ALIASES.get(text.lower(), text)
    if len(text.split()) not in (5, 6):
        raise CronError(
            f"bad cron expression {expr!r}: expected 5 fields (minute hour day month "
            "weekday) or 6 with seconds first (second minute hour day month weekday)"
        )
    _check_steps(expr, text)
    return text


# (field name, lowest, highest) in the five-field order; six fields put seconds first
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 6),
)


def _check_steps(expr: Any, text: str) -> None:
    """A step larger than its field's range (``*/61`` minutes, ``*/24`` hours) would fire only
    at the start of the range (hourly, daily): croniter accepts it, cron users do not mean it."""
    fields = text.split()
    bounds = ((("second", 0, 59),) if len(fields) == 6 else ()) + _FIELDS
    for value, (name, low, high) in zip(fields, bounds):
        for part in value.split(","):
            _, slash, step = part.partition("/")
            if slash and step.isdigit() and not 1 <= int(step) <= high - low:
                raise CronError(
                    f"bad cron expression {expr!r}: step {step} in the {name} field is "
                    f"outside 1-{high - low} (the field runs {low}-{high})"
                )


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
            it = croniter(
                text,
                datetime(2000, 1, 1, tzinfo=zone),
                ret_type=datetime,
                second_at_beginning=len(text.split()) == 6,
            )
            it.get_next(datetime)
        except Exception as exc:  # noqa: BLE001 - croniter raises many types (and plain ones)
            raise CronError(f"bad cron expression {expr!r}: {exc}") from None

    @classmethod
    def new(cls, task: str, expr: str, **options: Any) -> CronEntry:
        """Build and check an entry (no app needed). Options as for ``TaskPipe.cron``."""
        unknown = set(options) - _OPTIONS
        if unknown:
            raise CronError(
                f"unknown cron option(s): {', '.join(sorted(unknown))}; "
                f"expected some of {', '.join(sorted(_OPTIONS))}"
            )
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
        grace = (
            parse_duration(options["grace"]) if options.get("grace") is not None else DEFAULT_GRACE
        )
        send = {k: options[k] for k in _SEND_OPTIONS if options.get(k) is not None}
        for key in ("result_ttl", "timeout", "hard_timeout"):
            if key in send:
                parse_duration(send[key])
        retries = send.get("retries")
        if retries is not None and (
            not isinstance(retries, int) or isinstance(retries, bool) or retries < 0
        ):
            raise CronError(f"cron retries must be a non-negative int, got {retries!r}")
        return cls(
            name=name,
            task=task,
            expr=_normalize(expr),
            tz=_zone(options.get("tz"))[0],
            channel=channel,
            args=tuple(args),
            kwargs=dict(kwargs),
            misfire=misfire,
            grace=grace,
            options=send,
        )

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
        encode_envelope(
            entry.task,
            entry.args,
            entry.kwargs,
            {},
            serializer=app.serializer,
            max_size=app.max_payload,
        )
        return entry

    # pure schedule logic ----------------------------------------------------------------------
    @property
    def zone(self) -> tzinfo:
        """The entry's time zone object."""
        return _zone(self.tz)[1]

    def _iter(self, start: datetime) -> Any:
        return croniter(
            self.expr,
            start.astimezone(self.zone),
            ret_type=datetime,
            second_at_beginning=len(self.expr.split()) == 6,
        )

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
