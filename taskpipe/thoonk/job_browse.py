"""Paged reads of a Thoonk job channel for operators (``taskpipe jobs list/show``, dashboards).

``JobBrowsing`` holds these calls; ``JobChannel`` inherits it, so they are ``JobChannel``
methods (mapping broker errors like its own). Nothing here reads a whole collection: listings
page with ``LRANGE`` / ``ZRANGE`` / ``SSCAN`` limits, and the per-job fields of a page come in
one pipelined round trip. The operators' layer (``taskpipe.inspection``) turns them into rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from taskpipe.thoonk.keys import JobKeys
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["JobBrowsing", "SORTED_STATES"]

#: states kept in a sorted set (id -> ms): delayed (due), claimed (claim), finished (finish)
SORTED_STATES = ("delayed", "claimed", "finished")


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class JobBrowsing:
    """The paged reads of ``JobChannel`` (a mixin: ``JobChannel.__init__`` sets the state)."""

    #: ``maps_broker_errors`` on ``JobChannel`` maps these methods' errors too, as its own
    _broker_errors_mapped_by_subclass: ClassVar[bool] = True

    # set by JobChannel.__init__
    thoonk: Thoonk
    keys: JobKeys
    client: Any

    def page_available(self, offset: int, limit: int) -> tuple[int, list[tuple[str, Any]]]:
        """``(total, [(id, publish ms or None)])``: available jobs, next to run first, from
        position ``offset``: the list (``feed.ids``), then numbered jobs (``feed.prio``) by
        priority and publish order (docs/flow-control.md)."""
        k = self.keys
        in_list = int(self.client.llen(k.ids))
        ids = (
            [_s(i) for i in self.client.lrange(k.ids, -(offset + limit), -(offset + 1))][::-1]
            if offset < in_list
            else []
        )
        # then the numbered jobs (priority=0..9, feed.prio), claimed after the list
        numbered = int(self.client.zcard(k.prio))
        start = max(0, offset - in_list)
        if len(ids) < limit and start < numbered:
            ids += [_s(i) for i in self.client.zrange(k.prio, start, start + limit - len(ids) - 1)]
        total = in_list + numbered
        if not ids:
            return total, []
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.zscore(k.published, job_id)
        return total, list(zip(ids, pipe.execute()))

    def page_sorted(self, state: str, offset: int, limit: int) -> tuple[int, list[tuple[str, Any]]]:
        """``(total, [(id, ms)])`` of a state kept in a sorted set (``SORTED_STATES``): delayed
        soonest due first, claimed oldest claim first, finished newest first."""
        if state not in SORTED_STATES:
            raise ValueError(f"state must be one of {SORTED_STATES}, got {state!r}")
        key = {
            "delayed": self.keys.delayed,
            "claimed": self.keys.claimed,
            "finished": self.keys.finished,
        }[state]
        total = int(self.client.zcard(key))
        fetch = self.client.zrevrange if state == "finished" else self.client.zrange
        return total, [
            (_s(i), sc) for i, sc in fetch(key, offset, offset + limit - 1, withscores=True)
        ]

    def count_stalled(self) -> int:
        """How many jobs are stalled (``SCARD``)."""
        return int(self.client.scard(self.keys.stalled))

    def row_fields(self, state: str, ids: Sequence[str]) -> dict[str, list[Any]]:
        """Per-job fields of a page, in one round trip, each a list in the order of ``ids``:
        ``cancelled``, ``attempts``, ``items``; for ``claimed`` also ``workers``, ``progress``,
        ``leases`` (deadline ms); for ``stalled`` ``reasons``; for ``finished`` ``results`` and
        ``records`` (label, runs, cancels, worker, outcome, item of each job's record)."""
        if not ids:
            return {}
        k, ids = self.keys, list(ids)
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(k.cancelled, ids).hmget(k.attempts, ids).hmget(k.items, ids)
        if state == "claimed":
            pipe.hmget(k.workers, ids).hmget(k.progress, ids)
            for job_id in ids:
                pipe.zscore(k.leases, job_id)
        elif state == "stalled":
            pipe.hmget(k.reasons, ids)
        elif state == "finished":
            for job_id in ids:
                pipe.get(k.result(job_id))
            for job_id in ids:  # the record (docs/history.md): label, runs, cancels, worker,
                pipe.hmget(k.record(job_id), "l", "a", "c", "w", "o", "i")  # outcome, item
        r = pipe.execute()
        out = {"cancelled": r[0], "attempts": r[1], "items": r[2]}
        if state == "claimed":
            out.update(workers=r[3], progress=r[4], leases=r[5:])
        elif state == "stalled":
            out["reasons"] = r[3]
        elif state == "finished":
            out["results"] = r[3 : 3 + len(ids)]
            out["records"] = r[3 + len(ids) :]
        return out

    def detail_fields(self, id: str, log_lines: int) -> tuple[Any, Any, Any, int, list[bytes]]:
        """``(item, claim ms, stored result, log length, last log_lines lines)`` of one job, in
        one round trip (each None / 0 / empty where there is none)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(k.items, id).zscore(k.claimed, id).get(k.result(id))
        pipe.llen(k.log(id)).lrange(k.log(id), -max(1, log_lines), -1)
        item, claimed_ms, result_raw, log_total, logs = pipe.execute()
        return item, claimed_ms, result_raw, int(log_total), list(logs)

    def log_length(self, id: str) -> int:
        """How many log lines a job has (``LLEN``)."""
        return int(self.client.llen(self.keys.log(id)))
