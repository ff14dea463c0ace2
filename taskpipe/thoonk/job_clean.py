"""Cleaning a Thoonk job channel in bounded batches: old finished jobs (index entry, stored result
and log) and old stalled jobs (retracted).

``JobCleaning`` holds these calls; ``JobChannel`` inherits it, so they are ``JobChannel`` methods
(mapping broker errors like its own). Every removal is atomic per batch or per job:
``job_clean_finished.lua`` forgets a batch of finished ids, keeping the result and log of an id
published again since; ``job_retract.lua`` with a guard retracts a stalled job only if it is still
stalled (and, for age-based cleaning, was stalled at or before the cutoff), so a job retried
meanwhile is never removed. The paging (oldest first, by server-time scores) is read here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from taskpipe.thoonk.script_keys import contract

if TYPE_CHECKING:
    from taskpipe.thoonk.keys import JobKeys
    from taskpipe.thoonk.scripts import ScriptRegistry
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["JobCleaning", "MAX_CLEAN_BATCH"]

#: the most ids one cleaning call takes (the scripts' bound)
MAX_CLEAN_BATCH = 1000


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _batch(ids: Sequence[str]) -> list[str]:
    if len(ids) > MAX_CLEAN_BATCH:
        raise ValueError(f"at most {MAX_CLEAN_BATCH} ids per cleaning call, got {len(ids)}")
    return [str(i) for i in ids]


class JobCleaning:
    """The cleaning calls of ``JobChannel`` (a mixin: ``JobChannel.__init__`` sets the state)."""

    #: ``maps_broker_errors`` on ``JobChannel`` maps these methods' errors too, as its own
    _broker_errors_mapped_by_subclass: ClassVar[bool] = True

    # set by JobChannel.__init__
    thoonk: Thoonk
    name: str
    keys: JobKeys
    client: Any
    scripts: ScriptRegistry

    # finished ---------------------------------------------------------------------------------
    def finished_before(self, cutoff_ms: int, offset: int = 0, count: int = 500) -> list[str]:
        """Ids in the finished index finished at or before ``cutoff_ms`` (server time), oldest
        first, from position ``offset``, at most ``count``."""
        return [
            _s(i)
            for i in self.client.zrangebyscore(
                self.keys.finished, "-inf", int(cutoff_ms), start=int(offset), num=int(count)
            )
        ]

    def count_finished_before(self, cutoff_ms: int) -> int:
        """How many entries of the finished index are at or before ``cutoff_ms`` (O(log n))."""
        return int(self.client.zcount(self.keys.finished, "-inf", int(cutoff_ms)))

    def forget_finished(self, ids: Sequence[str]) -> list[str]:
        """Drop ``ids`` (at most 1000) from the finished index, and the stored result and log of
        each one not published again since, in one atomic step; returns the ids whose result and
        log were removed (an id published again keeps them)."""
        ids = _batch(ids)
        if not ids:
            return []
        k = self.keys
        per_id = [key for job_id in ids for key in (k.result(job_id), k.log(job_id))]
        keys = contract("job_clean_finished").build(k, *per_id)
        return [_s(i) for i in self.scripts["job_clean_finished"](self.client, keys, ids)]

    # stalled ----------------------------------------------------------------------------------
    def stalled_before(self, cutoff_ms: int, offset: int = 0, count: int = 500) -> list[str]:
        """Ids of jobs stalled at or before ``cutoff_ms`` (server time, ``feed.stalledat:<f>``),
        oldest first, from position ``offset``, at most ``count``."""
        return [
            _s(i)
            for i in self.client.zrangebyscore(
                self.keys.stalled_at, "-inf", int(cutoff_ms), start=int(offset), num=int(count)
            )
        ]

    def count_stalled_before(self, cutoff_ms: int) -> int:
        """How many jobs have a stall time at or before ``cutoff_ms`` (O(log n))."""
        return int(self.client.zcount(self.keys.stalled_at, "-inf", int(cutoff_ms)))

    def scan_stalled(self, cursor: int = 0, count: int = 500) -> tuple[int, list[str]]:
        """One ``SSCAN`` step over the stalled set: ``(next cursor, ids)``; cursor 0 = done."""
        nxt, found = self.client.sscan(self.keys.stalled, int(cursor), count=int(count))
        return int(nxt), [_s(i) for i in found]

    def unstamped(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` with no stall time (stalled by a legacy Thoonk client, or not stalled)."""
        if not ids:
            return []
        stamped = self.client.zmscore(self.keys.stalled_at, list(ids))
        return [job_id for job_id, at in zip(ids, stamped) if at is None]
