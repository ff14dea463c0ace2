"""Cleaning old jobs in bounded batches: finished jobs (index entry, result, log) and stalled jobs.

``finished``: the ``feed.finished:<f>`` index (ZSET id -> finish ms) is read oldest first with
``ZRANGEBYSCORE ... LIMIT``; each batch removes the index entries and, in the same MULTI, the
stored results and logs. An id that was published again since (it is in ``feed.items:<f>``)
keeps its result and log; only its stale index entry goes.

``stalled``: ids come from ``feed.stalledat:<f>`` (id -> stall ms), oldest first; each is
retracted by ``job_retract`` with a guard "still stalled, stalled at or before the cutoff", so a
job retried meanwhile is never removed.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from taskpipe.errors import ThoonkError
from taskpipe.inspection.views import CleanReport, _s
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
    """Retract jobs stalled at or before ``report.cutoff_ms`` (server time), ``batch`` at a time.

    Candidates come from ``feed.stalledat:<f>`` (id -> stall ms) read oldest first; each is
    retracted by ``job_retract`` with its stall-time guard, so a job retried (or stalled again
    later) meanwhile is never removed. Jobs stalled by a legacy client have no stall time: they
    are cleaned only with ``older_than 0`` (found by ``SSCAN`` of ``feed.stalled:<f>``).
    """
    k, client, offset = ch.keys, ch.client, 0
    while True:
        ids = [_s(i) for i in client.zrangebyscore(k.stalled_at, "-inf", report.cutoff_ms,
                                                   start=offset, num=batch)]
        if not ids:
            break
        report.examined += len(ids)
        if report.dry_run:
            offset += len(ids)
            gone = ids
        else:
            gone = ch.retract_stalled_before(ids, report.cutoff_ms)
            offset += len(ids) - len(gone)
        report.removed += len(gone)
        report.skipped += len(ids) - len(gone)
        _note(report, gone, progress, len(ids))
    if report.cutoff_ms < _server_ms(ch):
        return
    cursor = 0
    while True:  # older_than 0: also jobs with no stall time (stalled by a legacy client)
        cursor, found = client.sscan(k.stalled, cursor, count=batch)
        cursor = int(cursor)
        ids = [_s(i) for i in found]
        stamped = client.zmscore(k.stalled_at, ids) if ids else []
        legacy = [job_id for job_id, at in zip(ids, stamped) if at is None]
        if legacy:
            report.examined += len(legacy)
            gone = legacy if report.dry_run else _retract_legacy_stalled(ch, legacy)
            report.removed += len(gone)
            report.skipped += len(legacy) - len(gone)
            _note(report, gone, progress, len(legacy))
        if cursor == 0:
            return


def _server_ms(ch: JobChannel) -> int:
    seconds, micros = ch.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _retract_legacy_stalled(ch: JobChannel, ids: list[str]) -> list[str]:
    """Retract legacy-stalled ids (no stall time) still stalled, inside WATCH/MULTI."""
    k, script = ch.keys, ch.scripts["job_retract"]
    retract_channel = ch.thoonk.keys.feed(ch.name).ch_retract
    ch.scripts.ensure_loaded(ch.client, "job_retract")
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
                    script.queue(pipe, ch.retract_keys(job_id), [job_id, retract_channel, ""])
                results = pipe.execute()
                return [job_id for job_id, ok in zip(still, results) if int(ok)]
            except redis.WatchError:
                continue
    raise ThoonkError(f"the stalled set of {ch.name!r} kept changing during the clean; "
                      "nothing more was removed, run it again")
