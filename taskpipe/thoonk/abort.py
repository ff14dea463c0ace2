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


class AbortOps:
    """``abort`` a claimed job; ``aborted_among`` / ``abort_info`` read the record."""

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
        from taskpipe.thoonk.job_records import RECORD_ITEM_MAX
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
            rec_keys = [k.failed_index, k.label_stats, k.record(id), k.label_index(label)]
            rec_args = [RECORD_ITEM_MAX, FINISHED_INDEX_MS, "aborted", label, "", "", "\0record"]
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

    def aborted_among(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` were aborted (one MGET)."""
        if not ids:
            return set()
        flags = self.client.mget([self.keys.aborted(i) for i in ids])
        return {i for i, f in zip(ids, flags) if f is not None}

    def abort_info(self, id: str) -> tuple[str, int] | None:
        """``(who, server ms)`` of an aborted job, or None."""
        raw = self.client.get(self.keys.aborted(id))
        if raw is None:
            return None
        who, _, ms = _text(raw).rpartition("\0")  # the time is last: who may hold a NUL
        return who, int(ms or 0)
