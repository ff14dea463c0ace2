"""Job and channel events: an in-process emitter fed from the Thoonk job events in Redis.

``app.on("complete", fn)`` / ``task.on("fail", fn)`` register callbacks; ``app.events.start()``
(or ``app.listen()``) starts a Thoonk listener thread that turns the pub/sub messages of the
job channels into calls of those callbacks, in this process, whichever process ran the jobs.

The stream (documented in ``docs/extending.md``) is the ``feed.jobevent:<f>`` pub/sub channel of
each job channel, one message per event, ``<kind>\\0<job id>\\0<data>``:

- ``log`` / ``progress`` (data: the line / ``current/total``), published by the scripts that
  write them (``job_log.lua``, ``job_progress.lua``);
- ``complete``, ``fail``, ``timeout``, ``retry``, ``stall``, ``expired`` (data: a JSON object
  with ``task``, ``attempt``, ``duration``, and ``error`` for all but ``complete``), published by
  the worker once the outcome is written (``taskpipe.worker.announce``; off with
  ``app.job_events = False``);
- ``aborted`` (data: JSON with ``task``, ``error`` and ``by``), published by ``job_abort.lua``
  in the step that ends the job (``AsyncResult.abort``; off with the aborting app's
  ``job_events = False``).

Callback arguments (Kinetik's): ``complete(job)``, ``fail(err, job)``, ``timeout(job)``,
``retry(err, job)``, ``stall(job)``, ``aborted(job)``, ``expired(job)``, ``log(job, line)``,
``progress(job, current, total)`` (task and app), and, on the app only, ``empty(channel)`` (no job waiting) and ``drain(channel)``
(none waiting, delayed or running). ``job`` is a :class:`JobEvent`; ``err`` a ``TaskFailed``.
A callback that raises is logged (logger ``taskpipe.events``) and never stops the stream.
Pub/sub has no replay: events published while no listener runs are not seen.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from taskpipe.errors import ConfigError, TaskFailed
from taskpipe.serialization import decode_envelope

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.thoonk.listener import Listener

__all__ = [
    "OutcomeEvent",
    "TASK_EVENTS",
    "APP_EVENTS",
    "OUTCOME_EVENTS",
    "JobEvent",
    "Emitter",
    "AppEvents",
    "parse_event",
]

log = logging.getLogger("taskpipe.events")

#: the kind of a job's outcome event: announced by the worker once the outcome is written
#: (``aborted`` by ``AsyncResult.abort``, in the step that ends the job)
OutcomeEvent = Literal["complete", "fail", "timeout", "retry", "stall", "aborted", "expired"]
#: events of one job's outcome, in the order of ``OutcomeEvent``
OUTCOME_EVENTS: tuple[OutcomeEvent, ...] = get_args(OutcomeEvent)
#: events a task emits (``task.on``); the app emits them too, for every task
TASK_EVENTS = (*OUTCOME_EVENTS, "log", "progress")
#: events the app emits (``app.on``)
APP_EVENTS = (*TASK_EVENTS, "empty", "drain")
#: how many job ids -> task names the stream remembers (for log and progress events)
_TASK_CACHE = 10_000
#: seconds a log/progress event of a job whose task is unknown waits for the job's outcome
ORPHAN_WAIT = 2.0
#: seconds between reads of the counts of channels that had events (empty / drain)
CHECK_INTERVAL = 0.1


@dataclass
class JobEvent:
    """One event of one job, as callbacks receive it (``job``).

    ``task`` is the task name (None if it could not be learnt: a raw job, or a job that ended
    before the stream saw it); ``data`` is the event's detail (the JSON object of an outcome,
    the log line, the progress text).
    """

    kind: str
    channel: str
    id: str
    task: str | None = None
    data: Any = None
    app: TaskPipe | None = field(default=None, repr=False, compare=False)

    @property
    def error(self) -> TaskFailed | None:
        """The error of a ``fail`` / ``timeout`` / ``retry`` / ``stall`` / ``aborted`` /
        ``expired`` event (None for the others)."""
        if not isinstance(self.data, dict) or "error" not in self.data:
            return None
        kind, _, message = str(self.data["error"]).partition(": ")
        return TaskFailed(self.id, kind, message)

    def result(self) -> Any:
        """The job's ``AsyncResult`` (needs the app)."""
        if self.app is None:
            raise ConfigError("this event is not bound to an app")
        return self.app.AsyncResult(self.id, self.channel)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what ``taskpipe events --json`` prints)."""
        return {
            "event": self.kind,
            "channel": self.channel,
            "id": self.id,
            "task": self.task,
            "data": self.data,
        }


def parse_event(channel: str, kind: str, rest: bytes | None) -> JobEvent | None:
    """Parse one ``feed.jobevent`` message (``kind``, then ``<id>\\0<data>``); None if malformed."""
    if rest is None:
        return None
    raw_id, _, payload = rest.partition(b"\0")
    job_id = raw_id.decode("utf-8", "replace")
    text = payload.decode("utf-8", "replace")
    if kind in OUTCOME_EVENTS:
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        task = data.get("task")
        return JobEvent(kind, channel, job_id, task if isinstance(task, str) else None, data)
    if kind in ("log", "progress"):
        return JobEvent(kind, channel, job_id, None, text)
    return None


class Emitter:
    """Callbacks by event name; ``emit`` calls them in order and logs (never raises) errors."""

    def __init__(self, events: Iterable[str]) -> None:
        self.events = tuple(events)
        self._callbacks: dict[str, list[Callable[..., Any]]] = {e: [] for e in self.events}
        self._lock = threading.Lock()

    def on(self, event: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``fn`` on every ``event``; returns ``fn``. Unknown events raise ``ConfigError``."""
        if event not in self._callbacks:
            raise ConfigError(f"unknown event {event!r}; expected one of {', '.join(self.events)}")
        if not callable(fn):
            raise ConfigError(f"an event callback must be callable, got {fn!r}")
        with self._lock:
            self._callbacks[event].append(fn)
        return fn

    def off(self, event: str, fn: Callable[..., Any]) -> None:
        """Stop calling ``fn`` on ``event`` (no error if it was not registered)."""
        with self._lock:
            callbacks = self._callbacks.get(event, [])
            if fn in callbacks:
                callbacks.remove(fn)

    def has(self, event: str) -> bool:
        """True if some callback listens to ``event``."""
        return bool(self._callbacks.get(event))

    def emit(self, event: str, *args: Any) -> int:
        """Call the callbacks of ``event`` with ``args``; returns how many ran without error."""
        with self._lock:
            callbacks = list(self._callbacks.get(event, ()))
        ok = 0
        for fn in callbacks:
            try:
                fn(*args)
                ok += 1
            except Exception:
                log.exception("event callback %r failed on %r", fn, event)
        return ok


def _arguments(ev: JobEvent) -> tuple[Any, ...]:
    """Kinetik's callback arguments for one job event."""
    if ev.kind in ("fail", "retry"):
        return (ev.error, ev)
    if ev.kind == "log":
        return (ev, ev.data)
    if ev.kind == "progress":
        current, _, total = str(ev.data).partition("/")
        try:
            return (ev, float(current), float(total or 100))
        except ValueError:
            return (ev, ev.data, None)
    return (ev,)


class AppEvents:
    """The app's emitter (``app.events``), one per task, and the stream that feeds them."""

    def __init__(self, app: TaskPipe) -> None:
        self.app = app
        self.emitter = Emitter(APP_EVENTS)
        self._tasks: dict[str, Emitter] = {}
        self._lock = threading.Lock()
        self._listener: Listener | None = None
        self._channels: set[str] | None = None
        self._task_of: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        #: log/progress events of jobs whose task is not known yet (see ``dispatch``)
        self._orphans: OrderedDict[tuple[str, str], list[tuple[float, JobEvent]]] = OrderedDict()
        self._dirty: dict[str, bool] = {}  # channels with events since the last count check
        self._reported: dict[str, tuple[bool, bool]] = {}  # channel -> (empty, drain) emitted
        self._wake = threading.Condition()
        self._checker: threading.Thread | None = None
        self._stopping = threading.Event()

    # registration ----------------------------------------------------------------------------
    def on(self, event: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``app.on(event, fn)``: see the module docstring for the events and their arguments."""
        return self.emitter.on(event, fn)

    def off(self, event: str, fn: Callable[..., Any]) -> None:
        """Stop calling ``fn`` on ``event``."""
        self.emitter.off(event, fn)

    def task(self, name: str) -> Emitter:
        """The emitter of one task (``task.on`` registers there)."""
        with self._lock:
            emitter = self._tasks.get(name)
            if emitter is None:
                emitter = self._tasks[name] = Emitter(TASK_EVENTS)
            return emitter

    # dispatch --------------------------------------------------------------------------------
    def dispatch(self, ev: JobEvent) -> None:
        """Emit one job event on its task's emitter, then on the app's.

        A log or progress event names only the job: its task is read from the job's envelope.
        A short job may be gone by then; its events wait (up to ``ORPHAN_WAIT`` seconds) for
        the job's outcome event, which names the task, and are emitted first."""
        ev.app = self.app
        key = (ev.channel, ev.id)
        held: list[tuple[float, JobEvent]] | None = None
        if ev.task is None and ev.kind in ("log", "progress"):
            ev.task = self._learn_task(ev.channel, ev.id)
            if ev.task is None:
                with self._lock:
                    self._orphans.setdefault(key, []).append((time.monotonic(), ev))
                    while len(self._orphans) > _TASK_CACHE:
                        self._orphans.popitem(last=False)
                return
        elif ev.task is not None:
            self._remember(ev.channel, ev.id, ev.task)
            with self._lock:
                held = self._orphans.pop(key, None)
        for _, orphan in held or ():
            orphan.task = ev.task
            self._emit(orphan)
        self._emit(ev)
        if ev.kind in OUTCOME_EVENTS and (self.emitter.has("empty") or self.emitter.has("drain")):
            with self._wake:
                self._dirty[ev.channel] = True
                self._wake.notify()

    def _emit(self, ev: JobEvent) -> None:
        args = _arguments(ev)
        if ev.task is not None:
            with self._lock:
                emitter = self._tasks.get(ev.task)
            if emitter is not None:
                emitter.emit(ev.kind, *args)
        self.emitter.emit(ev.kind, *args)

    def _expire_orphans(self) -> None:
        """Emit (on the app only) log/progress events whose task never became known."""
        limit = time.monotonic() - ORPHAN_WAIT
        expired: list[JobEvent] = []
        with self._lock:
            for key in [k for k, v in self._orphans.items() if v[0][0] < limit]:
                expired.extend(ev for _, ev in self._orphans.pop(key))
        for ev in expired:
            self._emit(ev)

    def _remember(self, channel: str, job_id: str, task: str | None) -> None:
        with self._lock:
            self._task_of[(channel, job_id)] = task
            self._task_of.move_to_end((channel, job_id))
            while len(self._task_of) > _TASK_CACHE:
                self._task_of.popitem(last=False)

    def _learn_task(self, channel: str, job_id: str) -> str | None:
        """The task of a running job (from its envelope, read once per job and cached)."""
        with self._lock:
            if (channel, job_id) in self._task_of:
                return self._task_of[(channel, job_id)]
        try:
            item = self.app.channel(channel).get_item(job_id)
        except Exception:  # noqa: BLE001 - the broker away: the outcome event may name it
            return None
        if item is None:  # finished already: its record names the task (or the outcome event)
            return self._task_of_record(channel, job_id)
        try:
            task: str | None = decode_envelope(item).task
        except Exception:  # noqa: BLE001 - a raw (Thoonk-native) job: no task name
            task = None
        self._remember(channel, job_id, task)
        return task

    def _task_of_record(self, channel: str, job_id: str) -> str | None:
        """The task of an ended job, from its record: with outcome events off (or the outcome
        event yet to come) its log lines need not wait ``ORPHAN_WAIT`` to go out. None if it
        has no record (successes not recorded, or expired): the outcome event may name it."""
        from taskpipe.history import read_record

        try:
            record = read_record(self.app, channel, job_id)
        except Exception:  # noqa: BLE001 - the broker away: the outcome event may name it
            return None
        if record is None:
            return None
        self._remember(channel, job_id, record.task)
        return record.task

    def _on_message(self, channel: str, kind: str, rest: bytes | None) -> None:
        if self._channels is not None and channel not in self._channels:
            return
        ev = parse_event(channel, kind, rest)
        if ev is not None:
            self.dispatch(ev)

    # empty / drain ---------------------------------------------------------------------------
    def _check_loop(self) -> None:
        while not self._stopping.is_set():
            with self._wake:
                if not self._dirty:
                    self._wake.wait(0.5)
                dirty, self._dirty = list(self._dirty), {}
            for channel in dirty:
                self._check(channel)
            if self._orphans:
                self._expire_orphans()
            self._stopping.wait(CHECK_INTERVAL)

    def _check(self, channel: str) -> None:
        try:
            counts = self.app.channel(channel).counts()
        except Exception as exc:  # noqa: BLE001 - the broker away: the next event checks again
            log.warning("events: could not read the counts of %s: %s", channel, exc)
            return
        empty, drain = self._reported.get(channel, (False, False))
        waiting = counts["available"]
        if waiting:
            empty = False
        if waiting or counts["delayed"] or counts["claimed"]:
            drain = False
        if not waiting and not empty:
            empty = True
            self.emitter.emit("empty", channel)
        if not (waiting or counts["delayed"] or counts["claimed"]) and not drain:
            drain = True
            self.emitter.emit("drain", channel)
        self._reported[channel] = (empty, drain)

    # the stream ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the stream's listener runs."""
        return self._listener is not None and self._listener.running

    def start(self, channels: Iterable[str] | None = None, timeout: float = 10.0) -> AppEvents:
        """Follow the job events of ``channels`` (default: every channel; a sharded channel's
        name means every shard, and its events carry the shard's name) in a background
        thread; returns once subscribed. Raises the first attempt's error at once if it fails
        (``BrokerUnavailable`` for a broker that is down), ``BrokerUnavailable`` if subscribing
        takes longer than ``timeout``."""
        if self.running:
            return self
        names = None if channels is None else [c for c in channels]
        self._channels = (  # a sharded channel: every shard (docs/sharding.md)
            None
            if names is None
            else {self.app.channel(n).name for c in names for n in self.app.sharding.names(c)}
        )
        self._stopping.clear()
        listener = self.app.thoonk.listener()
        listener.on("jobevent", self._on_message)
        listener.start(timeout)
        self._listener = listener
        self._checker = threading.Thread(
            target=self._check_loop, name="taskpipe-events", daemon=True
        )
        self._checker.start()
        return self

    def stop(self) -> None:
        """Stop following (the callbacks stay registered)."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        checker, self._checker = self._checker, None
        if checker is not None and checker is not threading.current_thread():
            checker.join(5)
