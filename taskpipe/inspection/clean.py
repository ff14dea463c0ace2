"""Cleaning old jobs in bounded batches: ended jobs (index entries, result, record, log) and stalled
jobs.

The Redis side is ``JobChannel``'s cleaning calls (``taskpipe/thoonk/job_clean.py``); this module
pages through them and fills the ``CleanReport``.

``finished`` / ``failed`` / ``timeout`` / ``aborted``: the ``feed.finished:<f>`` index (ZSET
id -> finish ms) is read oldest first; each job is classified by its record (or, without one, by
its stored result) and only the asked outcome is removed: ``finished`` removes succeeded jobs and
leaves failed, timed-out and aborted ones (as Kinetik's ``clean`` does), which go only when asked
for with ``failed`` / ``timeout`` / ``aborted``. Each batch is forgotten atomically by
``JobChannel.forget_finished`` (the index entries and, for ids not published again since, the
stored results and logs), then their records and record-index entries go
(``JobChannel.forget_records``).

``stalled``: ids come from ``feed.stalledat:<f>`` (id -> stall ms), oldest first; each is
retracted by ``job_retract`` with a guard "still stalled, stalled at or before the cutoff", so a
job retried meanwhile is never removed.
"""

from __future__ import annotations

from collections.abc import Callable

from taskpipe.inspection.views import CleanReport, outcome_of
from taskpipe.thoonk.job import JobChannel

__all__ = ["clean_finished", "clean_stalled"]

Progress = Callable[[int], None] | None


def _note(report: CleanReport, removed: list[str], progress: Progress, examined: int) -> None:
    report.ids += removed[: max(0, 100 - len(report.ids))]
    if progress is not None:
        progress(examined)


#: a stored result's outcome (``outcome_of``) -> the job's, for a job with no record: a job that
#: expired before it ran is a failure (as its record says); a success, a raw (non-taskpipe) result
#: and no result (expired) count as succeeded
_BY_RESULT = {
    "failed": "failed",
    "job_expired": "failed",
    "timeout": "timeout",
    "aborted": "aborted",
}


def _outcomes(ch: JobChannel, ids: list[str]) -> list[tuple[str, str]]:
    """``(outcome, label)`` of ended jobs: succeeded, failed, timeout or aborted, from each
    record, else from the stored result (``_BY_RESULT``)."""
    out = []
    for outcome, label, result in ch.record_outcomes(ids):
        if outcome is None:
            outcome = _BY_RESULT.get(outcome_of(result)[0], "succeeded")
        out.append((outcome, label))
    return out


def clean_finished(
    ch: JobChannel,
    report: CleanReport,
    batch: int,
    progress: Progress,
    outcomes: tuple[str, ...] = ("succeeded",),
) -> None:
    """Remove ended jobs older than ``report.cutoff_ms`` whose outcome is in ``outcomes``,
    ``batch`` at a time; the others are kept (counted in ``report.kept``)."""
    offset = 0
    while True:
        ids = ch.finished_before(report.cutoff_ms, offset, batch)
        if not ids:
            return
        report.examined += len(ids)
        chosen = [(i, label) for i, (o, label) in zip(ids, _outcomes(ch, ids)) if o in outcomes]
        report.kept += len(ids) - len(chosen)
        offset += len(ids) - len(chosen)  # kept entries stay in the index: page past them
        cids = [i for i, _ in chosen]
        if report.dry_run:
            offset += len(cids)  # nothing is removed, so page on
            report.removed += len(cids)
            _note(report, cids, progress, len(ids))
            continue
        gone = set(ch.forget_finished(cids)) if cids else set()
        ch.forget_records([(i, label) for i, label in chosen if i in gone])
        report.removed += len(gone)
        report.skipped += len(cids) - len(gone)
        _note(report, [i for i in cids if i in gone], progress, len(ids))


def clean_stalled(ch: JobChannel, report: CleanReport, batch: int, progress: Progress) -> None:
    """Retract jobs stalled at or before ``report.cutoff_ms`` (server time), ``batch`` at a time.

    Candidates come from ``feed.stalledat:<f>`` (id -> stall ms) read oldest first; each is
    retracted by ``job_retract`` with its stall-time guard, so a job retried (or stalled again
    later) meanwhile is never removed. Jobs stalled by a legacy client have no stall time: they
    are cleaned only with ``older_than 0`` (found by ``SSCAN`` of ``feed.stalled:<f>``).
    """
    offset = 0
    while True:
        ids = ch.stalled_before(report.cutoff_ms, offset, batch)
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
    if report.cutoff_ms < ch.thoonk.server_ms():
        return
    cursor = 0
    while True:  # older_than 0: also jobs with no stall time (stalled by a legacy client)
        cursor, found = ch.scan_stalled(cursor, batch)
        legacy = ch.unstamped(found)
        if legacy:
            report.examined += len(legacy)
            gone = legacy if report.dry_run else ch.retract_stalled(legacy)
            report.removed += len(gone)
            report.skipped += len(legacy) - len(gone)
            _note(report, gone, progress, len(legacy))
        if cursor == 0:
            return
