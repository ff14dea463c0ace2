"""An aborted job keeps a record (docs/history.md), as every other end does: ``job_abort.lua``
writes it in the step that ends the job (outcome ``aborted``, kept for ``failure_ttl``, indexed
with the other non-successes and counted per task), so ``record()``, ``app.jobs``, the per-task
breakdown, requeue (only when asked for: an abort is an operator's decision) and clean see it.

The jobs are claimed by hand (no worker: the abort ends them); the Lua runs on real Redis and on
``memory://``.
"""

from __future__ import annotations

from typing import Any

import pytest
from worker_helpers import burst

from taskpipe import ConfigError, TaskPipe, WrongJobState, current_job
from taskpipe.history import requeue_many, task_breakdown
from taskpipe.inspection import Inspector

HOUR_MS = 3600 * 1000


def _charge(app: TaskPipe) -> Any:
    @app.task(name="pay.charge", failure_ttl="3d")
    def charge(order: int, card: str = "visa") -> bool:
        job = current_job()
        assert job is not None
        return job.aborted  # a requeued aborted job must not read as aborted again

    return charge


def _claim_by(app: TaskPipe, job_id: str, worker: str) -> str:
    """Claim the next job (``job_id``) as ``worker`` would; returns its fencing token."""
    claims = app.channel().claim(1, worker=worker)
    assert [c.id for c in claims] == [job_id]
    return claims[0].token


def test_an_aborted_job_keeps_a_record_indexed_and_counted(broker_url: str, prefix: str) -> None:
    app = TaskPipe(broker=broker_url, prefix=prefix, result_ttl="1h")
    try:
        charge = _charge(app)
        r = charge.delay(42, card="amex")
        ch = app.channel()
        ch.cancel(r.id, _claim_by(app, r.id, "w-lost"))  # sent back once: cancels 1
        ch.defer(r.id, _claim_by(app, r.id, "w-retry"), 0)  # a run that will be retried
        _claim_by(app, r.id, "w-last")
        r.abort(by="ops")
        assert r.state == "aborted"
        rec = r.record()
        assert rec is not None, "an aborted job keeps a record"
        assert rec.outcome == "aborted" and rec.task == "pay.charge" and rec.channel == "default"
        assert rec.args == [42] and rec.kwargs == {"card": "amex"} and rec.payload_kept
        assert rec.attempts == 2 and rec.cancels == 1 and rec.worker == "w-last"
        assert rec.published_ms and rec.started_ms and rec.finished_ms
        assert rec.published_ms <= rec.started_ms <= rec.finished_ms
        assert rec.runtime_ms is None and rec.requeues == 0
        assert rec.exc_type == "JobAborted" and rec.exc_message.startswith("aborted by ops at ")
        assert rec.error.startswith("JobAborted: aborted by ops at ")
        # indexed with the other non-successes, found by outcome and by task
        assert [j.id for j in app.jobs(state="aborted")] == [r.id]
        assert [j.id for j in app.jobs(state="aborted", task="pay.charge")] == [r.id]
        assert [j.id for j in app.jobs(error="aborted by ops")] == [r.id]
        assert app.jobs(state="failed") == []
        assert task_breakdown(app) == {
            "pay.charge": {"succeeded": 0, "failed": 0, "timeout": 0, "aborted": 1}
        }
        # kept for the task's failure_ttl (3 days), not the app's result_ttl (1 hour): the
        # record and the stored error live alike
        client = ch.client
        for key in (ch.keys.record(r.id), ch.keys.result(r.id)):
            assert HOUR_MS < client.pttl(key) <= 3 * 24 * HOUR_MS, key
    finally:
        app.close()


def test_an_abort_keeps_its_failure_when_successes_keep_no_result(
    broker_url: str, prefix: str
) -> None:
    # result_ttl=0 keeps no result for successes, failures still keep theirs (docs/history.md);
    # the abort stored its JobAborted result for result_ttl, so none was kept and the aborted job
    # read as a plain "finished" one
    app = TaskPipe(broker=broker_url, prefix=prefix, result_ttl=0)
    try:
        charge = _charge(app)
        r = charge.delay(1)
        _claim_by(app, r.id, "w")
        r.abort(by="ops")
        assert r.state == "aborted"
        rec = r.record()
        assert rec is not None and rec.outcome == "aborted" and rec.exc_type == "JobAborted"
    finally:
        app.close()


def test_an_aborted_job_is_requeued_only_when_asked_for(app: TaskPipe) -> None:
    charge = _charge(app)
    r = charge.delay(7)
    _claim_by(app, r.id, "w")
    r.abort(by="ops")
    # not by default: an abort is an operator's decision
    with pytest.raises(WrongJobState) as info:
        r.requeue()
    assert info.value.actual == "aborted"
    assert requeue_many(app, None) == (0, 0)
    assert r.state == "aborted"
    # asked for by outcome: run again, and the abort no longer stops it
    assert requeue_many(app, None, ("aborted",)) == (1, 0)
    assert r.state == "available" and r.aborted_by() is None
    burst(app)
    assert r.get(timeout=5) is False  # the task did not see its old abort
    rec = r.record()
    assert rec is not None and rec.outcome == "succeeded"
    assert rec.requeues == 1 and rec.previous == "aborted" and rec.attempts == 1


def test_requeue_one_aborted_job_by_its_outcome(app: TaskPipe) -> None:
    charge = _charge(app)
    r = charge.delay(8)
    _claim_by(app, r.id, "w")
    r.abort()
    r.requeue(states=("aborted",))
    assert r.state == "available"
    assert app.jobs(state="aborted") == []  # no longer ended: out of the index


def test_clean_aborted_jobs_by_name_only(app: TaskPipe) -> None:
    charge = _charge(app)
    r = charge.delay(9)
    _claim_by(app, r.id, "w")
    r.abort()
    insp = Inspector(app)
    kept = insp.clean("default", "finished", 0)
    assert (kept.removed, kept.kept) == (0, 1)  # like failed and timed-out jobs
    with pytest.raises(ConfigError, match="aborted"):
        insp.clean("default", "bogus", 0)
    gone = insp.clean("default", "aborted", 0)
    assert gone.removed == 1 and r.record() is None and app.jobs() == []


def test_clean_classifies_a_job_without_a_record_by_its_stored_result(app: TaskPipe) -> None:
    """An ended job whose record is gone (older data, or a record that expired before its
    finished-index entry) is classified by its stored result: a timed-out, aborted or expired
    job is not a success that ``clean finished`` removes (it was, for all but a plain failure)."""
    from taskpipe.serialization import encode_failure, encode_result

    ch = app.channel()
    ends = {
        "ok": encode_result(1, serializer=app.serializer),
        "failed": encode_failure("ValueError", "bad", "", serializer=app.serializer),
        "timeout": encode_failure("JobTimeout", "slow", "", serializer=app.serializer),
        "aborted": encode_failure("JobAborted", "by ops", "", serializer=app.serializer),
        "expired": encode_failure("JobExpired", "late", "", serializer=app.serializer),
    }
    for name, result in ends.items():
        ch.put(b"x", id=name)
        [claim] = ch.claim(1, worker="w")
        ch.finish(name, result, HOUR_MS, token=claim.token, failed=name != "ok")
        assert ch.client.exists(ch.keys.record(name)) == 0  # a finish with no record
    insp = Inspector(app)
    gone = {}
    for state in ("finished", "timeout", "aborted", "failed"):
        report = insp.clean("default", state, 0)
        gone[state] = sorted(report.ids)
    assert gone == {
        "finished": ["ok"],
        "timeout": ["timeout"],
        "aborted": ["aborted"],
        "failed": ["expired", "failed"],  # an expired job is a failure (its record says so)
    }
