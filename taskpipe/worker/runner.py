"""Runs one claimed job and turns what happened into an ``Outcome`` (no Redis writes here)."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import random
import reprlib
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskpipe.context import JobContext, _reset_current, _set_current
from taskpipe.durations import parse_duration
from taskpipe.errors import (
    JobAborted,
    JobTimeout,
    Retry,
    SerializationError,
    TaskpipeError,
    UnknownTask,
)
from taskpipe.limits import COUNT_OPTIONS, count_problem
from taskpipe.serialization import Envelope, decode_envelope
from taskpipe.states import OutcomeKind
from taskpipe.task import DURATION_OPTIONS, option_of
from taskpipe.worker.hooks import after_run, before_run

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.task import Task
    from taskpipe.thoonk.job import Claim

__all__ = [
    "Outcome",
    "aborted_outcome",
    "prepare",
    "run_prepared",
    "backoff_delay",
    "decide_failure",
    "option_of",
    "reap_limit",
    "option_problem",
    "cancel_on_abort",
]

log = logging.getLogger("taskpipe.worker")

#: bytes over ``max_payload`` still decoded (the producer's limit counts the whole envelope;
#: this only keeps a producer with a slightly different framing from being stalled)
_ENVELOPE_SLACK = 1024


@dataclass
class Outcome:
    """What to do with a claimed job after running it.

    ``kind``: ``success`` (finish with ``value``), ``failure`` (finish as failed), ``retry``
    (run again after ``delay`` seconds), ``stall`` (park with ``reason``), ``cancel`` (send back),
    ``release`` (never started: back to the head of the queue, cancel count unchanged),
    ``aborted`` (the task stopped after an abort, which already ended the job: nothing to write),
    ``expired`` (claimed after its ``expires`` deadline: finished as failed ``JobExpired``, not run).
    ``duration`` is how long the task ran, in seconds (None when it never started).
    """

    kind: OutcomeKind
    claim: Claim
    value: Any = None
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    delay: float = 0.0
    reason: str = ""
    envelope: Envelope | None = None
    task: Task[Any] | None = None
    duration: float | None = None
    #: set by ``OutcomeWriter`` once applied (a write retried after a broker error skips it)
    written: bool = False
    #: an error code the task's exception carried (its ``code`` attribute), kept in the record
    code: str = ""


@dataclass
class Prepared:
    """A decoded job ready to run, or an outcome that says it cannot run."""

    claim: Claim
    envelope: Envelope | None = None
    task: Task[Any] | None = None
    early: Outcome | None = None


def prepare(app: TaskPipe, claim: Claim) -> Prepared:
    """Decode the payload and find the task; a bad payload or unknown task becomes a stall."""
    raw_task = app.raw_channels.get(claim.channel)
    if raw_task is None and app.raw_channels and app.connection.is_cluster:
        # on a cluster the wire name carries a hash tag: "{legacy}" for "legacy"
        raw_task = next(
            (t for n, t in app.raw_channels.items() if app.channel(n).name == claim.channel), None
        )
    if raw_task is not None:
        return _within_max_cancels(
            app, Prepared(claim, Envelope(1, raw_task.name, (claim.item,), {}, {}, "raw"), raw_task)
        )
    limit = app.max_payload
    if limit is not None and len(claim.item) > limit + _ENVELOPE_SLACK:
        # never decode a payload no producer of this app could have written (a 50 MB entry
        # written raw): park it with the reason; raise max_payload and retry it if it is wanted
        return Prepared(
            claim,
            early=Outcome(
                "stall",
                claim,
                reason=(
                    f"payload_too_large: {len(claim.item)} bytes, over max_payload={limit}; not decoded"
                ),
            ),
        )
    try:
        env = decode_envelope(claim.item)
    except SerializationError as exc:
        return Prepared(claim, early=Outcome("stall", claim, reason=f"bad_payload: {exc}"))
    try:
        task = app.get_task(env.task)
    except UnknownTask:
        return Prepared(
            claim,
            env,
            early=Outcome("stall", claim, reason=f"unknown_task: {env.task}", envelope=env),
        )
    options = env.options
    if not options and claim.cancel_count == 0:  # the common case: nothing to check
        return Prepared(claim, env, task)
    problem = option_problem(options)
    if problem is not None:  # fails the job once, before it runs: never a silent cancel
        log.error(
            "job %s/%s has a bad call option (%s): failing it without running it",
            claim.channel,
            claim.id,
            problem,
        )
        return Prepared(
            claim,
            env,
            task,
            early=Outcome(
                "failure",
                claim,
                exc_type="ConfigError",
                envelope=env,
                task=task,
                exc_message=f"job {claim.id} has a bad call option and was not run: {problem}",
            ),
        )
    prepared = _within_max_cancels(app, Prepared(claim, env, task))
    if "expires_ms" in env.options and prepared.early is None:
        prepared.early = _expired(claim, env, task)
    if "parents" in env.options:  # a dependant: its parents' results (depends_on, chain, chord)
        from taskpipe.worker.dependencies import with_parents

        prepared = with_parents(app, prepared)
    return prepared


def _expired(claim: Claim, env: Envelope, task: Task[Any]) -> Outcome | None:
    """An ``expired`` outcome for a job claimed (broker clock) or about to start (this host's
    clock) after its ``expires`` deadline; None while it may still run."""
    deadline = env.options["expires_ms"]
    now = max(claim.claimed_ms, int(time.time() * 1000))
    if now <= deadline:
        return None
    late = (now - deadline) / 1000.0
    return Outcome(
        "expired",
        claim,
        exc_type="JobExpired",
        envelope=env,
        task=task,
        exc_message=f"job {claim.id} expired {late:.3f} s before it could start "
        "(expires=); it was not run",
    )


def option_problem(options: dict[str, Any]) -> str | None:
    """What is wrong with a job's call options (as written by any producer), or None.

    Checked when a job is claimed, before it runs, so that a malformed ``retries``, ``timeout``,
    ``result_ttl`` or ``on_finish`` fails that one job with the reason instead of breaking its
    run or its outcome write."""
    for key in DURATION_OPTIONS:  # as a producer may write them
        value = options.get(key)
        if value is not None:
            try:
                parse_duration(value)
            except (TaskpipeError, TypeError, ValueError) as exc:
                return f"{key}={_short(value)}: {str(exc)[:200]}"
    expires = options.get("expires_ms")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float))):
        return f"expires_ms={_short(expires)}: not a unix time in ms"
    for key in COUNT_OPTIONS:
        value = options.get(key)
        problem = None if value is None else count_problem(value)
        if problem is not None:
            return f"{key}={_short(value)}: {problem}"
    for name in ("on_finish", "on_failure"):
        problem = _signature_problem(name, options.get(name))
        if problem is not None:
            return problem
    return None


def _signature_problem(name: str, sig: Any) -> str | None:
    """What is wrong with a durable callback signature's data (``on_finish``/``on_failure``)."""
    if sig is not None:
        if not isinstance(sig, dict) or not isinstance(sig.get("task"), str) or not sig["task"]:
            return f"{name}={_short(sig)}: not a task signature (a map with a task name)"
        for key, kind in (("args", (list, tuple)), ("kwargs", dict), ("options", dict)):
            if sig.get(key) is not None and not isinstance(sig[key], kind):
                return f"{name} {key}={_short(sig[key])}: wrong type"
        if sig.get("kwargs") and not all(isinstance(k, str) for k in sig["kwargs"]):
            return f"{name} kwargs: keys must be strings"
        channel = (sig.get("options") or {}).get("channel")
        if channel is not None and (not isinstance(channel, str) or not channel):
            return f"{name} channel={_short(channel)}: not a channel name"
    return None


def _short(value: Any) -> str:
    """A repr cut to a readable length (a malformed option may be megabytes long)."""
    return reprlib.repr(value)


def _within_max_cancels(app: TaskPipe, prepared: Prepared) -> Prepared:
    """A job sent back more often than its task's ``max_cancels`` (else the app's; 0 = no limit)
    is stalled ``worker_lost`` instead of run. The reaper stalls only past the highest limit any
    task may have (``reap_limit``), so a task with a lower one is held to it here, on claim."""
    claim = prepared.claim
    if claim.cancel_count == 0:
        return prepared
    limit = option_of(prepared.envelope, prepared.task, app, "max_cancels")
    if not limit or claim.cancel_count <= int(limit):
        return prepared
    prepared.early = Outcome(
        "stall",
        claim,
        envelope=prepared.envelope,
        task=prepared.task,
        reason=f"worker_lost: sent back {claim.cancel_count} times (lease expired or worker "
        f"stopped), more than max_cancels={limit}",
    )
    return prepared


def reap_limit(app: TaskPipe) -> int:
    """The ``max_cancels`` the reaper applies: the highest limit of the app and its tasks, or 0
    (no limit) if any of them has none. A job past its own task's lower limit is stalled when it
    is next claimed (``prepare``)."""
    limits = [app.max_cancels] + [
        t.options.max_cancels for t in list(app.tasks.values()) if t.options.max_cancels is not None
    ]
    return 0 if 0 in limits else max(limits)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random; ``attempt`` counts from 1."""
    rng = rng or random.Random()
    full = min(cap, base * (2.0 ** max(0, attempt - 1)))
    return float(full / 2 + rng.uniform(0, full / 2))


def timeout_of(env: Envelope, task: Task[Any], app: TaskPipe) -> float | None:
    """The soft time limit for this call (call option, else task option, else app default).

    A limit longer than the platform's timers can count (``threading.TIMEOUT_MAX``, about 292
    years: ``setitimer`` and ``threading.Timer`` raise ``OverflowError`` past it) is no limit."""
    value = option_of(env, task, app, "timeout")
    if value is None:
        return None
    seconds = parse_duration(value)
    return seconds if seconds < threading.TIMEOUT_MAX else None


def decide_failure(app: TaskPipe, prepared: Prepared, exc: BaseException, tb: str) -> Outcome:
    """Retry with backoff if attempts remain, else fail (or stall if the task asks for it)."""
    claim, env, task = prepared.claim, prepared.envelope, prepared.task
    assert env is not None and task is not None
    retries = int(option_of(env, task, app, "retries") or 0)
    attempt = claim.attempts + 1
    name = type(exc).__name__
    if attempt <= retries:
        if isinstance(exc, Retry) and exc.delay is not None:
            delay = parse_duration(exc.delay)
        else:
            base = parse_duration(option_of(env, task, app, "retry_backoff") or 0)
            cap = parse_duration(option_of(env, task, app, "retry_backoff_max") or base)
            delay = backoff_delay(attempt, base, cap)  # retry_backoff_max may be below the base
        return Outcome(
            "retry",
            claim,
            exc_type=name,
            exc_message=str(exc),
            traceback=tb,
            delay=delay,
            envelope=env,
            task=task,
        )
    if isinstance(exc, Retry):
        name, message = "MaxRetriesExceeded", f"gave up after {attempt} attempts: {exc}"
    else:
        message = str(exc)
    if task.options.stall_on_failure or task.options.raw:
        # a raw (Thoonk-native) job's result goes to legacy listeners as is: an error envelope
        # there would read as success, so a raw task out of retries is stalled, never failed
        return Outcome("stall", claim, reason=f"failed: {name}: {message}", envelope=env, task=task)
    return Outcome(
        "failure",
        claim,
        exc_type=name,
        exc_message=message,
        traceback=tb,
        envelope=env,
        task=task,
        code=error_code(exc),
    )


def error_code(exc: BaseException) -> str:
    """The ``code`` attribute of a task's exception (a str or int, as Kinetik's ``done(err)``
    carries ``err.code``), as text cut to 200 characters; '' if it has none."""
    code = getattr(exc, "code", None)
    if isinstance(code, bool) or not isinstance(code, (str, int)):
        return ""
    return str(code)[:200]


class _SoftTimer:
    """Raises ``JobTimeout`` inside a running thread when its soft time limit passes.

    In the main thread (a process-pool child) it uses ``SIGALRM``, which also interrupts a
    blocking call such as ``time.sleep``; in other threads an asynchronous exception, which is
    raised at the thread's next Python instruction.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.fired = False
        self._timer: threading.Timer | None = None
        self._ident = threading.get_ident()
        self._old_handler: Any = None
        self._old_timer: tuple[float, float] = (0.0, 0.0)
        self._armed_at = 0.0
        self._alarm = (
            bool(seconds)
            and hasattr(signal, "setitimer")
            and (threading.current_thread() is threading.main_thread())
        )

    def __enter__(self) -> _SoftTimer:
        if self._alarm and self.seconds:
            pending = signal.getitimer(signal.ITIMER_REAL)[0]
            if pending and pending <= self.seconds:  # someone's alarm comes first: leave it be
                self._alarm = False
            else:
                self._old_handler = signal.signal(signal.SIGALRM, self._on_alarm)
                self._old_timer = signal.setitimer(signal.ITIMER_REAL, self.seconds)
                self._armed_at = time.monotonic()
        if not self._alarm and self.seconds:
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _on_alarm(self, signum: int, frame: Any) -> None:
        self.fired = True
        raise JobTimeout()

    def _fire(self) -> None:
        self.fired = True
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(self._ident), ctypes.py_object(JobTimeout)
        )

    def __exit__(self, *exc: object) -> None:
        if self._alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old_handler or signal.SIG_DFL)
            delay, interval = self._old_timer
            if delay:  # re-arm an alarm that was pending before (e.g. a test watchdog)
                left = delay - (time.monotonic() - self._armed_at)
                signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), interval)
        if self._timer is not None:
            self._timer.cancel()


def run_prepared(
    app: TaskPipe, prepared: Prepared, channel: Any, loop: asyncio.AbstractEventLoop | None = None
) -> Outcome:
    """Run a prepared job in this thread (async tasks on ``loop`` or a private loop), with the
    app's run-side middleware hooks around it (``taskpipe.middleware``)."""
    if prepared.early is not None:
        return prepared.early
    env, task, claim = prepared.envelope, prepared.task, prepared.claim
    assert env is not None and task is not None
    started = time.perf_counter()
    ctx = JobContext(channel, claim, task.name)
    seconds = timeout_of(env, task, app)
    token = _set_current(ctx)
    try:
        job = None
        if app.middleware:
            job = before_run(app, prepared, ctx)
            started = time.perf_counter()  # the run time is the task's, not its hooks'
        outcome, error = _call(app, prepared, ctx, seconds, loop)
        outcome.duration = time.perf_counter() - started
        if job is not None:
            after_run(app, job, outcome, error)
        return outcome
    finally:
        if ctx.pending:  # log lines / progress a broker outage held back
            ctx.flush()
        _reset_current(token)


def aborted_outcome(prepared: Prepared, message: str) -> Outcome:
    """The outcome of a job whose task stopped because the job was aborted."""
    return Outcome(
        "aborted",
        prepared.claim,
        exc_type="JobAborted",
        exc_message=message,
        envelope=prepared.envelope,
        task=prepared.task,
    )


def _call(
    app: TaskPipe,
    prepared: Prepared,
    ctx: JobContext,
    seconds: float | None,
    loop: asyncio.AbstractEventLoop | None,
) -> tuple[Outcome, BaseException | None]:
    """Run the task once: its outcome, and the exception it raised (None on success)."""
    env, task, claim = prepared.envelope, prepared.task, prepared.claim
    assert env is not None and task is not None
    try:
        if task.is_async:
            value = _run_async(task, env, ctx, seconds, loop)
        elif seconds:
            with _SoftTimer(seconds):
                value = task.fn(*env.args, **env.kwargs)
        else:  # no soft time limit: no timer to set up
            value = task.fn(*env.args, **env.kwargs)
        return Outcome("success", claim, value=value, envelope=env, task=task), None
    except JobAborted as aborted:
        return aborted_outcome(prepared, str(aborted)), None
    except JobTimeout:
        exc = JobTimeout(f"task {task.name} ran past its time limit of {seconds} s")
        return decide_failure(app, prepared, exc, traceback.format_exc()), exc
    except BaseException as exc:  # the task's error is the job's outcome
        # sys.exit() in a task (a script turned into a task) is that task's failure, not the
        # worker's: it fails the job like any exception. Ctrl-C reaches the main thread only,
        # and stops the worker.
        if isinstance(exc, KeyboardInterrupt):
            raise
        return decide_failure(app, prepared, exc, traceback.format_exc()), exc


def _run_async(
    task: Task[Any],
    env: Envelope,
    ctx: JobContext,
    seconds: float | None,
    loop: asyncio.AbstractEventLoop | None,
) -> Any:
    async def call() -> Any:
        _set_current(ctx)
        main = asyncio.ensure_future(task.fn(*env.args, **env.kwargs))
        watch = asyncio.ensure_future(cancel_on_abort(ctx, main))
        try:
            return await asyncio.wait_for(main, timeout=seconds) if seconds else await main
        except asyncio.TimeoutError:
            raise JobTimeout() from None
        except asyncio.CancelledError:
            if main.cancelled() and ctx.aborted:
                raise JobAborted(
                    f"job {ctx.id} was aborted (its coroutine was cancelled)"
                ) from None
            raise
        finally:
            watch.cancel()

    if loop is not None:
        return asyncio.run_coroutine_threadsafe(call(), loop).result()
    return asyncio.run(call())


#: seconds between an async task's checks for an abort (its coroutine is then cancelled)
ASYNC_ABORT_POLL = 0.25


async def cancel_on_abort(ctx: JobContext, main: asyncio.Future[Any]) -> None:
    """Cancel ``main`` (an async task's coroutine) once its job is aborted."""
    while not main.done():
        await asyncio.sleep(ASYNC_ABORT_POLL)
        if ctx.aborted:
            main.cancel()
            return
