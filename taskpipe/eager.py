"""Eager (test) mode: ``TaskPipe(..., eager=True)`` runs each published task inline.

Nothing goes to the broker. Each call is still encoded into a real job envelope and decoded
again before the task runs, and the return value is encoded as a result record, so an argument
or a result that production could not carry fails here too, with the same error. A delayed call
(``delay=``, ``eta=``) and every cron entry wait for the app's controllable clock:
``app.clock.advance("10m")`` runs, in time order, what became due.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from taskpipe.callbacks import failure_info
from taskpipe.durations import DurationLike, parse_duration
from taskpipe.errors import (
    ConfigError,
    ResultExpired,
    ResultTimeout,
    ResultUnknown,
    TaskFailed,
    UnknownParent,
    UnknownTask,
    WorkflowError,
)
from taskpipe.publishing import plan_send
from taskpipe.results import AsyncResult, final_state
from taskpipe.serialization import (
    ResultRecord,
    decode_envelope,
    decode_result,
    encode_envelope,
    encode_failure,
    encode_result,
)
from taskpipe.states import DONE_STATES, JobState
from taskpipe.task import Signature

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.thoonk.job import JobInfo

__all__ = ["EagerClock", "EagerResult", "EagerRunner"]

log = logging.getLogger("taskpipe.eager")


class EagerResult(AsyncResult[Any]):
    """The handle of an eagerly run call: its outcome is kept here, not in Redis."""

    def __init__(self, app: TaskPipe, id: str, channel: str) -> None:
        super().__init__(app, id, channel)
        self._eager_state = JobState.DELAYED
        self._forgotten = False  # forget() dropped the outcome of a call that ran

    def info(self) -> JobInfo:
        from taskpipe.thoonk.job import JobInfo

        return JobInfo(
            id=self.id,
            state=self.state,
            cancel_count=0,
            attempts=0,
            reason="",
            worker="eager",
            progress="",
            lease_deadline_ms=None,
            due_ms=None,
            finished_ms=None,
            published_ms=None,
            result_ttl_ms=None,
        )

    @property
    def state(self) -> JobState:
        """delayed (waiting for the test clock), finished or failed."""
        if self._record is not None:
            return final_state(self._record)
        return self._eager_state

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """The outcome, at once: a call still waiting for the test clock raises ``ResultTimeout``,
        an id no eager call had ``ResultUnknown``."""
        if self._record is None and self._eager_state == JobState.UNKNOWN:
            raise ResultUnknown(f"no eager call with id {self.id!r}")
        if self._record is None and self._forgotten:
            raise ResultExpired(f"job {self.id!r} finished but its result was forgotten")
        if self._record is None:
            raise ResultTimeout(
                f"job {self.id!r} is still {self._eager_state} (eager mode: "
                "advance the app's test clock to run it)"
            )
        return self._outcome(self._record, propagate)

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """``get`` (an eager outcome is already here)."""
        return self.get(timeout, propagate)

    def logs(self) -> list[str]:
        """Eager runs keep no log."""
        return []

    def forget(self) -> None:
        """Drop the outcome of a call that ran (``get()`` then raises ``ResultExpired``)."""
        if self._record is not None:
            self._record = None
            self._eager_state = JobState.FINISHED
            self._forgotten = True

    def retract(self) -> None:
        """Drop a call still waiting for the test clock."""
        if self._record is None:
            self.app.eager_runner.drop(self.id)
            self._eager_state = JobState.UNKNOWN


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    result: EagerResult = field(compare=False)
    payload: bytes = field(compare=False)
    options: dict[str, Any] = field(compare=False)


class EagerClock:
    """The test clock of an eager app: ``now()`` starts at the real time and moves only by
    ``advance()`` (or ``set()``), which runs the delayed calls and cron fires that became due."""

    def __init__(self, runner: EagerRunner) -> None:
        self._runner = runner
        self._now = time.time()

    def now(self) -> float:
        """The clock's time (epoch seconds)."""
        return self._now

    def as_datetime(self) -> datetime:
        """The clock's time as an aware UTC datetime."""
        return datetime.fromtimestamp(self._now, timezone.utc)

    def advance(self, duration: DurationLike) -> int:
        """Move the clock forward by ``duration`` (``"10m"``, seconds, a timedelta); returns how
        many calls ran (delayed calls and cron fires, each at its own due time)."""
        return self.set(self._now + parse_duration(duration))

    def set(self, when: datetime | float) -> int:
        """Move the clock forward to ``when``; returns how many calls ran."""
        target = when.timestamp() if isinstance(when, datetime) else float(when)
        if target < self._now:
            raise ConfigError("the test clock only moves forward")
        return self._runner.run_due(target)


class EagerRunner:
    """Runs an eager app's calls inline; owns its clock, waiting calls and cron bookkeeping."""

    def __init__(self, app: TaskPipe) -> None:
        self.app = app
        self.clock = EagerClock(self)
        self._pending: list[_Pending] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self._cron_last: dict[str, float] = {}
        self._results: dict[str, EagerResult] = {}  # by id, for app.AsyncResult(id)

    # publishing ----------------------------------------------------------------------------
    def send(
        self, name: str, args: Any, kwargs: dict[str, Any] | None, options: dict[str, Any]
    ) -> EagerResult:
        """Encode the call as production would, then run it now (or when the clock says)."""
        from taskpipe.thoonk.job import new_id

        plan = plan_send(options, now=self.clock.now())  # the checks production makes
        if name not in self.app.tasks:
            raise UnknownTask(
                f"no task registered as {name!r} in app {self.app.name!r} "
                "(eager mode runs only this app's tasks)"
            )
        task = self.app.tasks[name]
        if options.get("depends_on") is not None:  # parents ran already: their outcomes
            args, failure = self._after_parents(options, tuple(args))
            if failure:
                options = {**options, "_eager_failure": failure}
        elif options.get("allow_failure") is not None or options.get("pass_results") is not None:
            raise ConfigError("allow_failure / pass_results are only meaningful with depends_on=")
        payload = encode_envelope(
            name,
            tuple(args),
            dict(kwargs or {}),
            plan.envelope,
            serializer=self.app.serializer,
            max_size=self.app.max_payload,
        )
        job_id = plan.job_id or new_id()
        result = EagerResult(self.app, job_id, plan.channel or task.channel)
        with self._lock:
            self._results[job_id] = result
        delay = plan.delay_ms / 1000
        pending = _Pending(self.clock.now() + delay, next(self._seq), result, payload, options)
        if delay > 0:
            with self._lock:
                heapq.heappush(self._pending, pending)
        else:
            self._run(pending)
        return result

    def _parents_of(self, deps: Any) -> list[EagerResult]:
        """The eager results ``depends_on`` names (results, group results, ids, pairs)."""
        if isinstance(deps, (AsyncResult, str)) or hasattr(deps, "results"):
            deps = [deps]
        parents: list[EagerResult] = []
        for dep in deps:
            if hasattr(dep, "results"):
                parents += [self.lookup(r.id) for r in dep.results]
            elif isinstance(dep, (AsyncResult, str)):
                parents.append(self.lookup(dep if isinstance(dep, str) else dep.id))
            elif isinstance(dep, tuple) and len(dep) == 2:
                parents.append(self.lookup(str(dep[1])))
            else:
                raise ConfigError(f"depends_on: {dep!r} is not an AsyncResult or a job id")
        if not parents:
            raise ConfigError("depends_on is empty: give at least one parent (or leave it out)")
        return parents

    def _after_parents(
        self, options: dict[str, Any], args: tuple[Any, ...]
    ) -> tuple[tuple[Any, ...], str]:
        """``depends_on`` in eager mode: the parents ran already (or wait for the test clock:
        ``WorkflowError``). Returns the call's arguments with the parents' values in front
        (``pass_results``) and, if a parent failed (without ``allow_failure``), the reason the
        call fails without running."""
        parents = self._parents_of(options["depends_on"])
        mode, allow = options.get("pass_results"), bool(options.get("allow_failure"))
        if mode not in (None, "one", "all") or (mode == "one" and len(parents) != 1):
            raise ConfigError(f"pass_results={mode!r}: 'one' (one parent), 'all' or None")
        values: list[Any] = []
        for parent in parents:
            value, failure = _parent_value(parent, needs_value=mode is not None and not allow)
            if failure and not allow:
                return args, failure
            values.append(value)
        if mode == "one":
            return (values[0], *args), ""
        if mode == "all":
            return (values, *args), ""
        return args, ""

    def lookup(self, job_id: str) -> EagerResult:
        """The handle of an eager call by id (one in state ``unknown`` if there was none)."""
        with self._lock:
            found = self._results.get(job_id)
        if found is None:
            found = EagerResult(self.app, job_id, self.app.default_channel)
            found._eager_state = JobState.UNKNOWN
        return found

    def drop(self, job_id: str) -> None:
        """Forget a call still waiting for the clock."""
        with self._lock:
            self._pending = [p for p in self._pending if p.result.id != job_id]
            heapq.heapify(self._pending)

    # running -------------------------------------------------------------------------------
    def _run(self, pending: _Pending) -> None:
        env = decode_envelope(pending.payload)  # what a worker would see
        task = self.app.get_task(env.task)
        retries = env.options.get("retries")
        if retries is None:
            retries = task.options.retries if task.options.retries is not None else self.app.retries
        ser = self.app.serializer
        expires = env.options.get("expires_ms")
        not_run = expires is not None and self.clock.now() * 1000 > expires
        if not_run:  # as a worker does: not run, finished as JobExpired
            raw = encode_failure(
                "JobExpired",
                f"job {pending.result.id} expired before it could start (expires=); it was not run",
                "",
                serializer=ser,
            )
        elif pending.options.get("_eager_failure"):  # a parent failed: not run
            not_run = True
            raw = encode_failure(
                "DependencyFailed", pending.options["_eager_failure"], "", serializer=ser
            )
        for attempt in range(0 if not_run else int(retries) + 1):
            try:
                value = task.fn(*env.args, **env.kwargs)
                if asyncio.iscoroutine(value):
                    value = _run_coroutine(value)
                raw = encode_result(value, serializer=ser, max_size=self.app.max_payload)
                break
            except Exception as exc:  # noqa: BLE001 - the task's failure is its outcome
                if attempt < retries:  # a retry runs at once: eager mode does not wait
                    continue
                raw = encode_failure(
                    type(exc).__name__, str(exc), traceback.format_exc(), serializer=ser
                )
        record: ResultRecord = decode_result(raw)
        pending.result._record = record
        pending.result._eager_state = final_state(record)
        on_finish = pending.options.get("on_finish")
        if isinstance(on_finish, Signature):
            if record.ok:  # as the worker does: the follow-up gets the value first
                self.app.send(
                    on_finish.task, args=(record.value, *on_finish.args), kwargs=on_finish.kwargs
                )
        elif on_finish is not None:
            value = pending.result.get(propagate=False)
            try:
                on_finish(value, pending.result)
            except Exception:  # as in production: logged, never the job's fate
                log.exception("on_finish callback for job %s raised", pending.result.id)
        on_failure = pending.options.get("on_failure")
        if on_failure is not None and not record.ok:
            if isinstance(on_failure, Signature):  # as the worker does: the failure info first
                info = failure_info(
                    pending.result.id,
                    pending.result.channel,
                    env.task,
                    record.exc_type or "",
                    record.exc_message or "",
                )
                self.app.send(
                    on_failure.task, args=(info, *on_failure.args), kwargs=on_failure.kwargs
                )
            else:
                try:
                    on_failure(pending.result.get(propagate=False), pending.result)
                except Exception:
                    log.exception("on_failure callback for job %s raised", pending.result.id)

    def run_due(self, target: float) -> int:
        """Run delayed calls and cron fires due up to ``target``, in time order."""
        ran = 0
        while True:
            with self._lock:
                nxt = self._pending[0] if self._pending else None
                cron = self._next_cron(target)
                if cron is not None and (nxt is None or cron[0] < nxt.due):
                    at, entry = cron
                    self.clock._now = max(self.clock._now, at)
                    self._cron_last[entry.name] = at
                elif nxt is not None and nxt.due <= target:
                    heapq.heappop(self._pending)
                    self.clock._now = max(self.clock._now, nxt.due)
                    entry = None
                else:
                    self.clock._now = target
                    return ran
            if entry is not None:
                self.app.send(
                    entry.task,
                    args=entry.args,
                    kwargs=entry.kwargs,
                    id=f"cron:{entry.name}:{int(at)}",
                    **{k: v for k, v in entry.options.items() if k != "delay"},
                    **({"channel": entry.channel} if entry.channel else {}),
                )
            else:
                assert nxt is not None
                self._run(nxt)
            ran += 1

    def _next_cron(self, target: float) -> tuple[float, Any] | None:
        from taskpipe.cron import next_fire

        best: tuple[float, Any] | None = None
        for entry in self.app.crons:
            after = self._cron_last.get(entry.name, self.clock._now)
            fire = next_fire(entry, datetime.fromtimestamp(after, timezone.utc)).timestamp()
            if fire <= target and (best is None or fire < best[0]):
                best = (fire, entry)
        return best


def _parent_value(parent: EagerResult, needs_value: bool) -> tuple[Any, str]:
    """``(value, failure reason)`` of an eager parent; raises for one that has not run."""
    state = parent.state
    if state == JobState.UNKNOWN:
        raise UnknownParent(f"depends_on: no eager call with id {parent.id!r}")
    if parent._forgotten:  # ran, its result dropped (as an expired stored result)
        return None, (
            f"the result of parent job {parent.channel}/{parent.id} is not stored "
            "(forgotten), so it cannot be passed on; not run"
        ) if needs_value else ""
    if state not in DONE_STATES:
        raise WorkflowError(
            f"depends_on: parent {parent.id!r} is still {state} (eager mode: "
            "advance the test clock to run it first)"
        )
    outcome = parent.get(propagate=False)
    if not isinstance(outcome, TaskFailed):
        return outcome, ""
    if outcome.exc_type == "DependencyFailed":  # keep the first failure's story
        return None, outcome.exc_message
    return None, (
        f"parent job {parent.channel}/{parent.id} failed: {outcome.exc_type}: {outcome.exc_message}"
    )


def _run_coroutine(coro: Any) -> Any:
    """Run an ``async def`` task's coroutine to the end, even from inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="taskpipe-eager-async")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
