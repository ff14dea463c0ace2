"""The record ``job_finish`` keeps (``lua/_record.lua``) at the edges its batched reads must get
right: a job that already has a record (requeued, or waiting out a retry with its last error)
next to fresh ones in one batch, a requeued job finishing again, a failure after a success, and
the owner and workflow checks read once per batch.

Thoonk layer (``JobChannel.finish_many``), on real Redis and ``memory://`` (fakeredis + Lua).
"""

from __future__ import annotations

import pytest

from taskpipe.connection import Connection
from taskpipe.thoonk.job import Claim, FinishRequest, JobChannel
from taskpipe.thoonk.thoonk import Thoonk

LONG = 60_000


@pytest.fixture
def thoonk(conn: Connection, prefix: str) -> Thoonk:
    return Thoonk(connection=conn, prefix=prefix)


@pytest.fixture
def job(thoonk: Thoonk) -> JobChannel:
    return thoonk.job_channel("jobs")


def _claim(job: JobChannel, count: int, worker: str = "w") -> dict[str, Claim]:
    claims = job.claim(count, lease_ms=LONG, worker=worker)
    assert len(claims) == count
    return {c.id: c for c in claims}


def _ok(c: Claim, **record: object) -> FinishRequest:
    fields = {"outcome": "succeeded", "label": "t.ok", "runtime_ms": 3, **record}
    return FinishRequest(c.id, c.token, b"fine", LONG, **fields)  # type: ignore[arg-type]


def _fail(c: Claim, **record: object) -> FinishRequest:
    fields = {"outcome": "failed", "label": "t.bad", "code": "E_OLD", "runtime_ms": 9, **record}
    return FinishRequest(c.id, c.token, b"boom", LONG, True, **fields)  # type: ignore[arg-type]


def test_a_requeued_job_keeps_its_history_and_drops_the_old_runs_fields(job: JobChannel) -> None:
    jid = job.put(b"payload")
    (c,) = _claim(job, 1, worker="w-one").values()
    assert job.finish_many([_fail(c)]) == [1]
    first = job.record(jid)
    assert first is not None and first["code"] == b"E_OLD" and first["runtime_ms"] == b"9"
    assert job.requeue(jid) == "failed"

    (c,) = _claim(job, 1, worker="w-two").values()
    assert job.finish_many([_ok(c, label="t.bad", runtime_ms=None)]) == [1]
    rec = job.record(jid)
    assert rec is not None
    assert rec["outcome"] == b"succeeded" and rec["worker"] == b"w-two"
    assert rec["requeues"] == b"1" and rec["previous"] == b"failed" and "requeued" in rec
    assert "code" not in rec and "runtime_ms" not in rec  # the old run's fields are gone
    assert rec["attempts"] == b"1" and rec["item"] == b"payload"


def test_a_failure_after_a_success(job: JobChannel) -> None:
    jid = job.put(b"p")
    (c,) = _claim(job, 1).values()
    assert job.finish_many([_ok(c)]) == [1]
    assert job.requeue(jid, outcomes=("succeeded",)) == "succeeded"
    (c,) = _claim(job, 1).values()
    assert job.finish_many([_fail(c, code="E_NEW")]) == [1]
    rec = job.record(jid)
    assert rec is not None
    assert rec["outcome"] == b"failed" and rec["code"] == b"E_NEW" and rec["label"] == b"t.bad"
    assert rec["requeues"] == b"1" and rec["previous"] == b"succeeded"
    assert job.client.zscore(job.keys.failed_index, jid) is not None
    assert job.client.zscore(job.keys.label_index("t.bad"), jid) is not None
    assert job.get_result(jid) == b"boom"


def test_one_batch_mixes_fresh_jobs_with_ones_that_have_a_record(job: JobChannel) -> None:
    fresh, requeued, retried = job.put(b"f"), job.put(b"r"), job.put(b"e")
    first = _claim(job, 3)
    assert job.finish_many([_fail(first[requeued])]) == [1]
    assert job.requeue(requeued) == "failed"
    job.note_error(retried, "ValueError: the last run", LONG)  # a retry's last error ('e')
    for i in (fresh, retried):
        job.cancel(i, first[i].token)  # back to the queue: cancels + 1

    again = _claim(job, 3)
    codes = job.finish_many([_ok(again[fresh]), _ok(again[requeued]), _fail(again[retried])])
    assert codes == [1, 1, 1]
    f, r, e = job.record(fresh), job.record(requeued), job.record(retried)
    assert f is not None and r is not None and e is not None
    assert f["outcome"] == b"succeeded" and "requeues" not in f and "previous" not in f
    assert f["cancels"] == b"1"  # cancelled once
    assert r["outcome"] == b"succeeded" and r["requeues"] == b"1" and r["previous"] == b"failed"
    assert "code" not in r and r["runtime_ms"] == b"3"
    assert e["outcome"] == b"failed" and "last_error" not in e  # the error is the result now
    assert e["code"] == b"E_OLD" and "requeues" not in e
    for jid in (fresh, requeued, retried):
        assert 0 < job.client.pttl(job.keys.record(jid)) <= LONG
    stats = job.label_counts()
    assert stats["t.ok\0succeeded"] == 2 and stats["t.bad\0failed"] == 2


def test_the_batched_owner_check_gives_each_job_its_own_code(job: JobChannel) -> None:
    ids = [job.put(b"%d" % n) for n in range(3)]
    claims = _claim(job, 2)
    held, other = [i for i in ids if i in claims]
    unclaimed = next(i for i in ids if i not in claims)
    codes = job.finish_many(
        [
            _ok(claims[held]),
            FinishRequest(other, "not-the-token", b"x", LONG, outcome="succeeded"),
            FinishRequest(unclaimed, "", b"x", LONG, outcome="succeeded"),
            _ok(claims[held]),  # the same id twice: the second is "not claimed"
        ]
    )
    assert codes == [1, -1, 0, 0]
    assert job.record(held) is not None
    assert job.record(other) is None and job.record(unclaimed) is None
    assert job.info(other).state == "claimed" and job.info(unclaimed).state == "available"
    rec = job.record(held)
    assert rec is not None and rec["started"] == str(claims[held].claimed_ms).encode()
    assert rec["published"] == str(claims[held].published_ms).encode()


def test_a_batch_without_fencing_tokens_and_without_records(job: JobChannel) -> None:
    ids = [job.put(b"%d" % n) for n in range(3)]
    _claim(job, 3)
    assert job.finish_many([FinishRequest(i, "", b"r", LONG) for i in ids]) == [1, 1, 1]
    assert all(job.info(i).state == "finished" and job.record(i) is None for i in ids)
    assert [job.get_result(i) for i in ids] == [b"r", b"r", b"r"]


def test_a_requeued_job_a_worker_stalls_keeps_its_requeue_history(job: JobChannel) -> None:
    jid = job.put(b"p")
    (c,) = _claim(job, 1).values()
    assert job.finish_many([_fail(c)]) == [1]
    assert job.requeue(jid) == "failed"
    (c,) = _claim(job, 1, worker="w-two").values()
    job.stall(jid, "bad input", token=c.token, record=("t.bad", LONG))
    rec = job.record(jid)
    assert rec is not None and rec["outcome"] == b"stalled" and rec["worker"] == b"w-two"
    assert rec["requeues"] == b"1" and rec["previous"] == b"failed" and "requeued" in rec
    assert "code" not in rec and "runtime_ms" not in rec
