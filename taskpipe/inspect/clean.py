"""Cleaning old jobs in bounded batches: finished jobs (index entry, result, log) and stalled jobs.

``finished``: the ``feed.finished:<f>`` index (ZSET id -> finish ms) is read oldest first with
``ZRANGEBYSCORE ... LIMIT``; each batch removes the index entries and, in the same MULTI, the
stored results and logs. An id that was published again since (it is in ``feed.items:<f>``)
keeps its result and log; only its stale index entry goes.

``stalled``: ids come from ``SSCAN`` of ``feed.stalled:<f>``; each batch is retracted with the
``job_retract`` script inside ``WATCH feed.stalled`` / ``MULTI``, only for ids still stalled, so a
job retried meanwhile is never removed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from taskpipe.errors import ThoonkError
from taskpipe.inspect.views import CleanReport, _s
from taskpipe.thoonk.job import JobChannel

__all__ = ["clean_finished", "clean_stalled"]

Progress = Callable[[int], None] | None


def _note(report: CleanReport, removed: list[str], progress: Progress, examined: int) -> None:
    report.ids += removed[:max(0, 100 - len(report.ids))]
    if progress is not None:
        progress(examined)


def clean_finished(ch: JobChannel, report: CleanReport, batch: int, progress: Progress) -> None:
    """Remove finished jobs older than ``report.cutoff_ms``, ``batch`` at a time."""
    k, client, offset = ch.keys, ch.client, 0
    while True:
        ids = [_s(i) for i in client.zrangebyscore(k.finished, "-inf", report.cutoff_ms,
                                                   start=offset, num=batch)]
        if not ids:
            return
        report.examined += len(ids)
        if report.dry_run:
            offset += len(ids)  # nothing is removed, so page on
            report.removed += len(ids)
            _note(report, ids, progress, len(ids))
            continue
        live = client.hmget(k.items, ids)
        pipe = client.pipeline(transaction=True)
        pipe.zrem(k.finished, *ids)
        gone = [job_id for job_id, item in zip(ids, live) if item is None]
        for job_id in gone:
            pipe.delete(k.result(job_id), k.log(job_id))
        pipe.execute()
        report.removed += len(gone)
        report.skipped += len(ids) - len(gone)
        _note(report, gone, progress, len(ids))


def clean_stalled(ch: JobChannel, report: CleanReport, batch: int, progress: Progress) -> None:
    """Retract every job stalled now (only those still stalled when their batch commits)."""
    k, client, cursor = ch.keys, ch.client, 0
    if not report.dry_run:
        ch.scripts.ensure_loaded(client, "job_retract")
    while True:
        cursor, found = client.sscan(k.stalled, cursor, count=batch)
        cursor = int(cursor)
        ids = [_s(i) for i in found]
        for start in range(0, len(ids), batch):
            part = ids[start:start + batch]
            report.examined += len(part)
            gone = part if report.dry_run else _retract_if_stalled(ch, part)
            report.removed += len(gone)
            report.skipped += len(part) - len(gone)
            _note(report, gone, progress, len(part))
        if cursor == 0:
            return


def _retract_keys(ch: JobChannel, job_id: str) -> list[Any]:
    """KEYS of job_retract.lua for one job, in the order of its header (as ``JobChannel.retract``)."""
    k = ch.keys
    return [k.items, k.ids, k.claimed, k.leases, k.tokens, k.workers, k.stalled, k.reasons,
            k.cancelled, k.attempts, k.published, k.delayed, k.urgent, k.progress, k.finished,
            k.result(job_id), k.log(job_id)]


def _retract_if_stalled(ch: JobChannel, ids: list[str]) -> list[str]:
    """Retract those of ``ids`` that are still stalled, atomically; returns the retracted ids."""
    k, script = ch.keys, ch.scripts["job_retract"]
    retract_channel = ch.thoonk.keys.feed(ch.name).ch_retract
    with ch.client.pipeline(transaction=True) as pipe:
        for _ in range(50):
            try:
                pipe.watch(k.stalled)
                flags = pipe.smismember(k.stalled, ids)
                still = [job_id for job_id, flag in zip(ids, flags) if int(flag)]
                if not still:
                    pipe.unwatch()
                    return []
                pipe.multi()
                for job_id in still:
                    script.queue(pipe, _retract_keys(ch, job_id), [job_id, retract_channel])
                results = pipe.execute()
                return [job_id for job_id, ok in zip(still, results) if int(ok)]
            except redis.WatchError:
                continue
    raise ThoonkError(f"the stalled set of {ch.name!r} kept changing during the clean; "
                            "nothing more was removed, run it again")
