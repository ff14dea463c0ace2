"""Writes job outcomes back to Redis: batched finishes, retries, stalls, follow-up jobs.

Successes and failures of one channel that complete together are finished in one script call
(``finish_many``), which is what makes thousands of jobs per second possible. A finish refused
because the lease was lost is logged and dropped: the new owner's outcome stands (fencing).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskpipe.durations import parse_duration
from taskpipe.errors import LeaseLost, SerializationError, WrongJobState
from taskpipe.serialization import encode_envelope, encode_failure, encode_result
from taskpipe.thoonk.job import FinishRequest
from taskpipe.worker.runner import Outcome, option_of

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["OutcomeWriter", "OutcomeListener"]

log = logging.getLogger("taskpipe.worker")

#: ``listener(channel, event, outcome, n)``: called (on the finisher or keeper thread) each time
#: a counter in ``OutcomeWriter.stats`` moves by ``n``; ``event`` is the counter's name,
#: ``outcome`` the job's outcome (None for ``lease_expired`` / ``lease_expired_stalled``, which
#: the reaper counts).
OutcomeListener = Callable[[str, str, "Outcome | None", int], None]


class OutcomeWriter:
    """Applies outcomes for one worker; counts what it did (``stats``) and tells ``listeners``."""

    def __init__(self, app: TaskPipe) -> None:
        self.app = app
        self.stats: dict[str, int] = defaultdict(int)
        self.listeners: list[OutcomeListener] = []

    def _bump(self, channel: str, event: str, outcome: Outcome | None, n: int = 1) -> None:
        self.stats[event] += n
        for listener in list(self.listeners):
            try:
                listener(channel, event, outcome, n)
            except Exception:  # noqa: BLE001 - a metrics hook must never break the worker
                log.exception("outcome listener %r failed", listener)

    def reaped(self, channel: str, requeued: int, stalled: int) -> None:
        """Count jobs whose lease expired, as the reaper requeued or stalled them."""
        if requeued:
            self._bump(channel, "lease_expired", None, requeued)
        if stalled:
            self._bump(channel, "lease_expired_stalled", None, stalled)

    def _ttl_ms(self, outcome: Outcome) -> int:
        value = option_of(outcome.envelope, outcome.task, self.app, "result_ttl")
        return int(parse_duration(value) * 1000)

    def _result_bytes(self, outcome: Outcome) -> tuple[bytes, bool]:
        ser = self.app.serializer
        if outcome.kind == "success":
            if outcome.task is not None and getattr(outcome.task, "raw", False):
                value = outcome.value
                return (value if isinstance(value, bytes) else str(value).encode()), False
            try:
                return encode_result(outcome.value, serializer=ser, max_size=self.app.max_payload), False
            except SerializationError as exc:
                outcome.exc_type, outcome.exc_message = type(exc).__name__, str(exc)
        return encode_failure(outcome.exc_type, outcome.exc_message, outcome.traceback,
                              serializer=ser), True

    def write(self, outcomes: list[Outcome]) -> None:
        """Apply a batch of outcomes, finishing plain successes/failures per channel in one call."""
        batches: dict[str, list[tuple[Outcome, FinishRequest]]] = defaultdict(list)
        for outcome in outcomes:
            try:
                if outcome.kind in ("success", "failure"):
                    result, failed = self._result_bytes(outcome)
                    req = FinishRequest(outcome.claim.id, outcome.claim.token, result,
                                        self._ttl_ms(outcome), failed,
                                        keep_query=bool(outcome.task and outcome.task.raw))
                    followup = self._followup(outcome, failed)
                    if followup is not None:
                        self._finish_with_followup(outcome, req, followup)
                    else:
                        batches[outcome.claim.channel].append((outcome, req))
                else:
                    self._apply_other(outcome)
            except (LeaseLost, WrongJobState) as exc:
                self._bump(outcome.claim.channel, "lease_lost", outcome)
                log.warning("outcome of job %s/%s refused: %s", outcome.claim.channel,
                            outcome.claim.id, exc)
        for channel_name, items in batches.items():
            channel = self.app.channel(channel_name)
            for start in range(0, len(items), 500):
                chunk = items[start:start + 500]
                codes = channel.finish_many([req for _, req in chunk])
                for (outcome, req), code in zip(chunk, codes):
                    self._count(outcome, req, code)

    def _count(self, outcome: Outcome, req: FinishRequest, code: int) -> None:
        if code == 1:
            self._bump(outcome.claim.channel, "failed" if req.failed else "finished", outcome)
        else:
            self._bump(outcome.claim.channel, "lease_lost", outcome)
            log.warning("finish of job %s/%s refused (%s): the lease was lost; the new owner's "
                        "outcome stands", outcome.claim.channel, outcome.claim.id,
                        "not claimed" if code == 0 else "claimed under another token")

    def _followup(self, outcome: Outcome, failed: bool) -> tuple[Any, str, bytes] | None:
        env = outcome.envelope
        if failed or env is None or not env.options.get("on_finish"):
            return None
        from taskpipe.task import Signature

        sig = Signature.from_dict(env.options["on_finish"], self.app)
        target = self.app.channel(sig.options.get("channel") or (
            self.app.tasks[sig.task].channel if sig.task in self.app.tasks else None))
        item = encode_envelope(sig.task, (outcome.value, *sig.args), sig.kwargs, {},
                               serializer=self.app.serializer, max_size=self.app.max_payload)
        return target, f"{outcome.claim.id}.on_finish", item

    def _finish_with_followup(self, outcome: Outcome, req: FinishRequest,
                              followup: tuple[Any, str, bytes]) -> None:
        channel = self.app.channel(outcome.claim.channel)
        codes = channel.finish_many([req], followup=followup)
        self._count(outcome, req, codes[0])

    def _apply_other(self, outcome: Outcome) -> None:
        claim = outcome.claim
        channel = self.app.channel(claim.channel)
        if outcome.kind == "retry":
            channel.defer(claim.id, claim.token, int(outcome.delay * 1000), count_attempt=True)
            self._bump(claim.channel, "retried", outcome)
            log.info("job %s/%s raised %s; retry in %.2fs", claim.channel, claim.id,
                     outcome.exc_type, outcome.delay)
        elif outcome.kind == "stall":
            channel.stall(claim.id, outcome.reason, token=claim.token)
            self._bump(claim.channel, "stalled", outcome)
            log.warning("job %s/%s stalled: %s", claim.channel, claim.id, outcome.reason)
        elif outcome.kind == "cancel":
            channel.cancel(claim.id, token=claim.token)
            self._bump(claim.channel, "cancelled", outcome)
        else:
            raise ValueError(f"unknown outcome kind {outcome.kind!r}")
