"""Writes job outcomes back to Redis: batched finishes, retries, stalls, follow-up jobs.

Successes and failures of one channel that complete together are finished in one script call
(``finish_many``), which is what makes thousands of jobs per second possible. A finish refused
because the lease was lost is logged and dropped: the new owner's outcome stands (fencing).
An outcome that cannot be written at all (too large, a bad option, a follow-up that cannot be
published) finishes that one job as failed with the reason; the rest of its batch is written.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskpipe.durations import ttl_ms
from taskpipe.errors import (
    JobNotFound,
    LeaseLost,
    SerializationError,
    TaskpipeError,
    WrongJobState,
)
from taskpipe.serialization import encode_envelope, encode_failure, encode_result
from taskpipe.states import WorkerEvent
from taskpipe.task import option_of
from taskpipe.thoonk.job import FinishRequest
from taskpipe.worker.eviction import EvictionWatch
from taskpipe.worker.keeper import BROKER_ERRORS
from taskpipe.worker.runner import Outcome

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["OutcomeWriter", "OutcomeListener", "BROKER_ERRORS"]

log = logging.getLogger("taskpipe.worker")

# BROKER_ERRORS (transient broker failures): an outcome write that meets one is retried as a
# whole (the jobs stay claimed, their leases renewed); any other error is the job's own
# (``_unwritable``).


class _FollowupError(Exception):
    """Wraps an error met while building or publishing a job's ``on_finish`` follow-up."""


#: ``listener(channel, event, outcome, n)``: called (on the finisher or keeper thread) each time
#: a counter in ``OutcomeWriter.stats`` moves by ``n``; ``event`` is the counter's name,
#: ``outcome`` the job's outcome (None for ``lease_expired`` / ``lease_expired_stalled``, which
#: the reaper counts).
OutcomeListener = Callable[[str, WorkerEvent, "Outcome | None", int], None]


def log_outcome(outcome: Outcome, req: FinishRequest, tracebacks: bool = False) -> None:
    """One log line per finished job: a success at INFO with its run time, a final failure at
    ERROR and a timeout at WARNING with type, message and job id (the traceback at DEBUG, or on
    the same line with ``tracebacks``)."""
    if not req.failed and not log.isEnabledFor(logging.INFO):
        return  # the common case: nothing to format
    claim = outcome.claim
    task = req.label or "?"
    runtime = "" if outcome.duration is None else f" in {outcome.duration:.3f}s"
    if not req.failed:
        log.info("job %s/%s %s succeeded%s", claim.channel, claim.id, task, runtime)
        return
    level = logging.WARNING if req.outcome == "timeout" else logging.ERROR
    what = "timed out" if req.outcome == "timeout" else "failed"
    message = (outcome.exc_message or "").splitlines()[0][:500] if outcome.exc_message else ""
    code = f" [code {outcome.code}]" if outcome.code else ""
    fmt = "job %s/%s %s %s%s: %s: %s%s"
    args = [claim.channel, claim.id, task, what, runtime, outcome.exc_type, message, code]
    if tracebacks and outcome.traceback:  # on the same line; else at DEBUG on its own
        log.log(level, fmt + "\n%s", *args, outcome.traceback.rstrip())
        return
    log.log(level, fmt, *args)
    if outcome.traceback and log.isEnabledFor(logging.DEBUG):
        log.debug("job %s/%s traceback:\n%s", claim.channel, claim.id, outcome.traceback.rstrip())


class OutcomeWriter:
    """Applies outcomes for one worker; counts what it did (``stats``) and tells ``listeners``."""

    def __init__(self, app: TaskPipe) -> None:
        self.app = app
        self.stats: dict[str, int] = defaultdict(int)
        self.listeners: list[OutcomeListener] = []
        self._ttl_ms_of: dict[Any, int] = {}  # result_ttl option value -> milliseconds
        self._none_result: tuple[Any, bytes] | None = None  # (serializer, encoded None result)
        self.eviction = EvictionWatch(app)
        #: log a final failure's traceback at ERROR (``--log-tracebacks``); else at DEBUG
        self.log_tracebacks = False

    def _bump(self, channel: str, event: WorkerEvent, outcome: Outcome | None, n: int = 1) -> None:
        self.stats[event] += n
        if outcome is not None:  # every event with an outcome is final for it
            outcome.written = True
        if not self.listeners:
            return
        for listener in list(self.listeners):
            try:
                listener(channel, event, outcome, n)
            except Exception:  # a metrics hook must never break the worker
                log.exception("outcome listener %r failed", listener)

    def reaped(self, channel: str, requeued: int, stalled: int) -> None:
        """Count jobs whose lease expired, as the reaper requeued or stalled them."""
        if requeued:
            self._bump(channel, "lease_expired", None, requeued)
        if stalled:
            self._bump(channel, "lease_expired_stalled", None, stalled)

    def _ttl_ms(self, outcome: Outcome, failed: bool = False) -> int:
        """How long the job's result and record are kept: ``failure_ttl`` for a failure or a
        timeout, ``result_ttl`` for a success (call option, else task option, else app)."""
        try:
            value = option_of(
                outcome.envelope, outcome.task, self.app, "failure_ttl" if failed else "result_ttl"
            )
            try:
                return self._ttl_ms_of[value]
            except (KeyError, TypeError):  # not seen yet (or unhashable: parsed each time)
                pass
            ms = ttl_ms(value)  # capped: Redis refuses an expiry past its clock's range
        except (TaskpipeError, TypeError, ValueError):
            if not failed:
                raise
            return int(self.app.failure_ttl * 1000)  # a failure is stored even so (its reason)
        try:
            self._ttl_ms_of[value] = ms
        except TypeError:
            pass
        return ms

    def _record_fields(self, outcome: Outcome, failed: bool) -> dict[str, Any]:
        """The job-record fields of a ``FinishRequest`` (docs/history.md); a success keeps no
        record with ``app.record_successes`` off."""
        kind = (
            "succeeded"
            if not failed
            else ("timeout" if outcome.exc_type == "JobTimeout" else "failed")
        )
        if not failed and not getattr(self.app, "record_successes", True):
            kind = ""
        task = (
            outcome.task.name
            if outcome.task is not None
            else (outcome.envelope.task if outcome.envelope is not None else "")
        )
        runtime = None if outcome.duration is None else int(outcome.duration * 1000)
        return {"outcome": kind, "label": task, "code": outcome.code, "runtime_ms": runtime}

    def _result_bytes(self, outcome: Outcome) -> tuple[bytes, bool]:
        ser = self.app.serializer
        if outcome.kind == "success":
            if outcome.task is not None and outcome.task.options.raw:
                value = outcome.value
                return (value if isinstance(value, bytes) else str(value).encode()), False
            if outcome.value is None:  # the most common result: encoded once per serializer
                cached = self._none_result
                if cached is None or cached[0] is not ser:
                    cached = self._none_result = (ser, encode_result(None, serializer=ser))
                return cached[1], False
            try:
                return encode_result(
                    outcome.value, serializer=ser, max_size=self.app.max_payload
                ), False
            except SerializationError as exc:
                outcome.exc_type, outcome.exc_message = type(exc).__name__, str(exc)
        return encode_failure(
            outcome.exc_type, outcome.exc_message, outcome.traceback, serializer=ser
        ), True

    def write(self, outcomes: list[Outcome]) -> None:
        """Apply a batch of outcomes, finishing plain successes/failures per channel in one call.

        Each job is isolated: an outcome that cannot be written (a result or follow-up over
        ``max_payload``, a bad option, a write Redis refuses) finishes that job as failed with
        the reason (``_unwritable``); a batched finish that fails is written again job by job.
        Only a transient broker error (``BROKER_ERRORS``) propagates, for the caller to retry.
        """
        batches: dict[str, list[tuple[Outcome, FinishRequest]]] = defaultdict(list)
        for outcome in outcomes:
            if outcome.written:  # applied before a broker error interrupted this batch
                continue
            try:
                self._route(outcome, batches)
            except BROKER_ERRORS:
                raise
            except (LeaseLost, WrongJobState, JobNotFound) as exc:
                self._refused(outcome, exc)
            except Exception as exc:  # noqa: BLE001 - this job's outcome only, never the batch
                self._unwritable(outcome, exc)
        for channel_name, items in batches.items():
            self._finish_batched(channel_name, items)

    def _route(
        self, outcome: Outcome, batches: dict[str, list[tuple[Outcome, FinishRequest]]]
    ) -> None:
        """Apply one outcome, or queue it in ``batches`` for its channel's batched finish.

        A success/failure/expiry with a follow-up (``on_finish``/``on_failure``) is finished at
        once with it (``_finish_one``); the other kinds go to ``_apply_other``. Raises for the
        caller to isolate: a follow-up that cannot be built surfaces as ``_FollowupError``."""
        if outcome.kind not in ("success", "failure", "expired"):
            self._apply_other(outcome)
            return
        result, failed = self._result_bytes(outcome)
        req = FinishRequest(
            outcome.claim.id,
            outcome.claim.token,
            result,
            self._ttl_ms(outcome, failed),
            failed,
            keep_query=outcome.task is not None and outcome.task.options.raw,
            **self._record_fields(outcome, failed),
        )
        followup = None
        if outcome.envelope is not None and outcome.envelope.options:  # else: no follow-up
            try:
                followup = self._followup(outcome, failed)
            except BROKER_ERRORS:
                raise
            except Exception as exc:  # surfaces on the parent's result
                raise _FollowupError(exc) from exc
        if followup is not None:
            self._finish_one(outcome, req, followup)
        else:
            batches[outcome.claim.channel].append((outcome, req))

    def _finish_batched(
        self, channel_name: str, items: list[tuple[Outcome, FinishRequest]]
    ) -> None:
        """Finish one channel's queued outcomes, 500 per call; a call that fails for any reason
        but a transient broker error is written again job by job (``_finish_one``)."""
        channel = self.app.channel(channel_name)
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            try:
                codes = channel.finish_many([req for _, req in chunk])
            except BROKER_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - one poison finish must not sink the rest
                log.warning(
                    "batched finish of %d job(s) of %s failed (%s: %s); writing them one by one",
                    len(chunk),
                    channel_name,
                    type(exc).__name__,
                    exc,
                )
                for outcome, req in chunk:
                    self._finish_one(outcome, req)
                continue
            for (outcome, req), code in zip(chunk, codes):
                self._count(outcome, req, code)

    def _finish_one(
        self, outcome: Outcome, req: FinishRequest, followup: tuple[Any, str, bytes] | None = None
    ) -> None:
        """Finish one job (with its follow-up, if any); a write that fails for any reason but a
        transient broker error finishes it as failed with that reason instead."""
        try:
            codes = self.app.channel(outcome.claim.channel).finish_many([req], followup=followup)
        except BROKER_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - this job only
            self._unwritable(outcome, _FollowupError(exc) if followup is not None else exc)
            return
        self._count(outcome, req, codes[0])

    def _refused(self, outcome: Outcome, exc: Exception) -> None:
        claim = outcome.claim
        if isinstance(exc, JobNotFound) and self.eviction.finish_missed(claim.channel, claim.id):
            self._bump(claim.channel, "evicted", outcome)
            return
        self._bump(outcome.claim.channel, "lease_lost", outcome)
        log.warning(
            "outcome of job %s/%s refused: %s", outcome.claim.channel, outcome.claim.id, exc
        )

    def _unwritable(self, outcome: Outcome, exc: Exception) -> None:
        """The job's outcome cannot be written: finish the job once, as failed, with the reason
        (``get()`` raises ``TaskFailed`` naming it); if even that is refused, stall it with the
        reason. Never leaves the job to its lease (which would run it again)."""
        claim = outcome.claim
        channel = self.app.channel(claim.channel)
        cause = exc.__cause__ if isinstance(exc, _FollowupError) and exc.__cause__ else exc
        name = type(cause).__name__
        if isinstance(exc, _FollowupError):
            message = (
                f"the task returned, but its on_finish follow-up could not be published: {cause}"
            )
        else:
            message = f"the job's {outcome.kind} outcome could not be written: {cause}"
        log.error(
            "job %s/%s: %s: %s; finishing it as failed", claim.channel, claim.id, name, message
        )
        self.stats["outcome_errors"] += 1  # not an outcome of its own: listeners see "failed"
        try:
            data = encode_failure(name, message, outcome.traceback, serializer=self.app.serializer)
            req = FinishRequest(
                claim.id,
                claim.token,
                data,
                self._ttl_ms(outcome, True),
                True,
                **self._record_fields(outcome, True),
            )
            code = channel.finish_many([req])[0]
        except BROKER_ERRORS:
            raise
        except Exception as exc2:  # noqa: BLE001 - last resort: park it with the reason
            log.error(
                "job %s/%s: could not store its failure either (%s); stalling it",
                claim.channel,
                claim.id,
                exc2,
            )
            try:
                channel.stall(claim.id, f"outcome_error: {name}: {cause}"[:2000], token=claim.token)
                self._bump(claim.channel, "stalled", outcome)
            except BROKER_ERRORS:
                raise
            except (LeaseLost, WrongJobState, JobNotFound) as exc3:
                self._refused(outcome, exc3)
            except Exception as exc3:  # noqa: BLE001 - never let one job sink the batch
                log.error(
                    "job %s/%s: could not stall it either (%s); its lease will expire",
                    claim.channel,
                    claim.id,
                    exc3,
                )
            return
        self._count(outcome, req, code)

    def _count(self, outcome: Outcome, req: FinishRequest, code: int) -> None:
        if code == 1:
            event: WorkerEvent = (
                "expired"
                if outcome.kind == "expired"
                else ("timeout" if req.outcome == "timeout" else "failed")
                if req.failed
                else "finished"
            )
            self._bump(outcome.claim.channel, event, outcome)
            log_outcome(outcome, req, self.log_tracebacks)
        elif code == 0 and self.eviction.finish_missed(outcome.claim.channel, outcome.claim.id):
            self._bump(outcome.claim.channel, "evicted", outcome)
        else:
            self._bump(outcome.claim.channel, "lease_lost", outcome)
            log.warning(
                "finish of job %s/%s refused (%s): the lease was lost; the new owner's "
                "outcome stands",
                outcome.claim.channel,
                outcome.claim.id,
                "not claimed" if code == 0 else "claimed under another token",
            )

    def _followup(self, outcome: Outcome, failed: bool) -> tuple[Any, str, bytes] | None:
        env = outcome.envelope
        key = "on_failure" if failed else "on_finish"
        if env is None or not env.options.get(key):
            return None
        from taskpipe.callbacks import failure_info
        from taskpipe.task import Signature

        sig = Signature.from_dict(env.options[key], self.app)
        target = self.app.sharding.pick(
            sig.options.get("channel")
            or (self.app.tasks[sig.task].channel if sig.task in self.app.tasks else None)
            or self.app.default_channel,
            f"{outcome.claim.id}.{key}",
        )  # custom id: one shard
        first = (
            failure_info(
                outcome.claim.id,
                outcome.claim.channel,
                env.task,
                outcome.exc_type,
                outcome.exc_message,
            )
            if failed
            else outcome.value
        )
        item = encode_envelope(
            sig.task,
            (first, *sig.args),
            sig.kwargs,
            {},
            serializer=self.app.serializer,
            max_size=self.app.max_payload,
        )
        return target, f"{outcome.claim.id}.{key}", item

    def _apply_other(self, outcome: Outcome) -> None:
        claim = outcome.claim
        channel = self.app.channel(claim.channel)
        if outcome.kind == "retry":
            channel.defer(claim.id, claim.token, int(outcome.delay * 1000), count_attempt=True)
            self._bump(claim.channel, "retried", outcome)
            first = (outcome.exc_message or "").splitlines()[0] if outcome.exc_message else ""
            try:  # shown while it waits out its backoff (docs/history.md); informational only
                channel.note_error(
                    claim.id, f"{outcome.exc_type}: {first}", int(self.app.failure_ttl * 1000)
                )
            except BROKER_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - never fail a retry over its note
                log.debug("could not note the error of %s/%s: %s", claim.channel, claim.id, exc)
            log.info(
                "job %s/%s raised %s; retry in %.2fs",
                claim.channel,
                claim.id,
                outcome.exc_type,
                outcome.delay,
            )
        elif outcome.kind == "stall":
            label = self._record_fields(outcome, True)["label"]
            channel.stall(
                claim.id,
                outcome.reason,
                token=claim.token,
                record=(label, int(self.app.failure_ttl * 1000)),
            )
            self._bump(claim.channel, "stalled", outcome)
            log.warning("job %s/%s stalled: %s", claim.channel, claim.id, outcome.reason)
        elif outcome.kind == "cancel":
            channel.cancel(claim.id, token=claim.token)
            self._bump(claim.channel, "cancelled", outcome)
        elif outcome.kind == "aborted":  # the abort already ended the job (job_abort.lua)
            self._bump(claim.channel, "aborted", outcome)
            log.info("job %s/%s was aborted; its task stopped", claim.channel, claim.id)
        elif outcome.kind == "release":  # never started (process pool at shutdown)
            channel.release([(claim.id, claim.token)])
            self._bump(claim.channel, "released", outcome)
        else:
            raise ValueError(f"unknown outcome kind {outcome.kind!r}")
