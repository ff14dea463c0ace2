"""Abort a running job (``job_abort.lua``) and read which running jobs were aborted.

``AbortOps`` holds these calls; ``JobChannel`` inherits it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from taskpipe.thoonk.keys import JobKeys
    from taskpipe.thoonk.scripts import ScriptRegistry

__all__ = ["AbortOps"]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _parse(raw: Any) -> tuple[str, str, int]:
    """``(who, token, server ms)`` of a ``feed.aborted:<f>:<id>`` value: ``<who>\0<token>\0<ms>``
    (the token of the claim the abort ended), or ``<who>\0<ms>`` as written before the token was
    kept (token ''): the time is last, then the token; ``who`` has no NUL."""
    head, _, ms = _text(raw).rpartition("\0")
    who, sep, token = head.rpartition("\0")
    if not sep:  # no token: an abort of whichever run held the job
        who, token = head, ""
    return who, token, int(ms or 0)


class AbortOps:
    """``abort`` a claimed job; ``aborted_among`` / ``abort_info`` read the abort."""

    #: ``maps_broker_errors`` on ``JobChannel`` maps these methods' errors too, as its own
    _broker_errors_mapped_by_subclass: ClassVar[bool] = True

    name: str
    keys: JobKeys
    client: Any
    scripts: ScriptRegistry

    def workflow_section(self, id: str | None) -> tuple[list[str], list[Any]]:  # WorkflowOps
        raise NotImplementedError

    def abort(
        self,
        id: str,
        record: bytes,
        result_ttl_ms: int,
        who: str,
        event: bytes | None = None,
        label: str | None = None,
    ) -> int:
        """End claimed job ``id`` as aborted by ``who`` with result ``record``, kept for
        ``result_ttl_ms``; returns 1, or 0 when it is not claimed (nothing changed). ``event``
        (a JSON object) is published as the job's ``aborted`` event on ``feed.jobevent:<f>`` in
        the same step, with ``attempt`` added (the run it ended); None publishes none.
        ``label`` (the task name, '' for none) keeps the job's record (outcome ``aborted``, for
        ``result_ttl_ms``: docs/history.md) in the same step; None keeps none."""
        from taskpipe.thoonk.job import FINISHED_INDEX_MS
        from taskpipe.thoonk.job_records import record_section
        from taskpipe.thoonk.script_keys import contract

        k = self.keys
        keys = contract("job_abort").build(k, aborted=k.aborted(id), result=k.result(id))
        args: list[Any] = [
            id,
            record,
            max(0, int(result_ttl_ms)),
            k.ch_finish,
            who,
            FINISHED_INDEX_MS,
            k.ch_events if event is not None else "",
            event or b"",
        ]
        rec_keys: list[str] = []
        rec_args: list[Any] = []
        if label is not None:  # the record section of lua/_record.lua, for this one job
            rec_keys, rec_args = record_section(
                k, FINISHED_INDEX_MS, [(id, "aborted", label, "", None)]
            )
        code = -2
        for attempt in range(100):  # -2: it has dependants (or more than were read)
            wf_keys, wf_args = self.workflow_section(id if attempt else None)
            code = int(
                self.scripts["job_abort"](
                    self.client, [*keys, *wf_keys, *rec_keys], [*args, *wf_args, *rec_args]
                )
            )
            if code != -2:
                break
        return code

    def aborted_among(self, runs: Sequence[tuple[str, str]]) -> set[str]:
        """Which of ``runs`` (``(id, claim token)`` of claimed jobs) were aborted (one MGET).

        An abort names the claim it ended: a later run of the same id (published again, or
        requeued) holds another token and is not stopped by it. An abort that names no claim
        (written before the token was kept, or of a job claimed without one) stops any run."""
        if not runs:
            return set()
        flags = self.client.mget([self.keys.aborted(i) for i, _ in runs])
        out: set[str] = set()
        for (i, token), flag in zip(runs, flags):
            if flag is not None:  # rare: parse only an abort
                mark = _parse(flag)[1]
                if not mark or mark == token:
                    out.add(i)
        return out

    def abort_info(self, id: str) -> tuple[str, int] | None:
        """``(who, server ms)`` of the abort that ended job ``id``, or None: never aborted, or
        it ran again since (published again, or requeued) or was forgotten (``clean``). The
        abort and the job's ``feed.finished:<f>`` entry are written with the same time: a job
        that was published again since has left that index, and one that ended again has
        another time there."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.aborted(id))
        pipe.zscore(self.keys.finished, id)
        raw, finished = pipe.execute()
        if raw is None:
            return None
        who, _, ms = _parse(raw)
        if finished is None or int(finished) != ms:
            return None  # an abort of an earlier run
        return who, ms
