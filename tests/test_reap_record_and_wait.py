"""Issue 14 gaps: a job the reaper stalls keeps its record (``job_reap`` finds it,
``job_reap_stall`` stalls it with its record in one step),
and the claim returns each job's publish time (``Claim.published_ms``, the wait-time histogram).

Real lease expiry (short leases, ``reap`` called directly), on real Redis and ``memory://``.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from polling import wait_for

from taskpipe import TaskPipe
from taskpipe.connection import Connection
from taskpipe.inspection import Inspector
from taskpipe.thoonk.job import JobChannel, claim_from
from taskpipe.thoonk.job_reads import _s
from taskpipe.thoonk.script_keys import contract
from taskpipe.thoonk.thoonk import Thoonk
from taskpipe.worker import Worker
from taskpipe.worker.keeper import task_label

LONG = 60_000
SHORT = 30  # ms: the lease the tests let expire


@pytest.fixture
def thoonk(conn: Connection, prefix: str) -> Thoonk:
    return Thoonk(connection=conn, prefix=prefix)


@pytest.fixture
def job(thoonk: Thoonk) -> JobChannel:
    return thoonk.job_channel("jobs")


def _lose(job: JobChannel, worker: str, **reap: object) -> tuple[list[str], list[str]]:
    """Claim the one available job under a short lease and reap it once the lease expired."""
    assert len(job.claim(1, lease_ms=SHORT, worker=worker)) == 1

    def reaped() -> tuple[list[str], list[str]] | None:
        r = job.reap(**reap)  # type: ignore[arg-type]
        return r if r[0] or r[1] else None

    out: tuple[list[str], list[str]] = wait_for(reaped, what="the expired lease reaped")
    return out


# the claim's publish time ------------------------------------------------------------------------
def test_a_claim_carries_each_jobs_publish_time(thoonk: Thoonk, job: JobChannel) -> None:
    other = thoonk.job_channel("other")
    first, second = job.put(b"a"), job.put(b"b")
    third = other.put(b"c")
    published = {
        jid: ch.info(jid).published_ms for ch, jid in ((job, first), (job, second), (other, third))
    }
    assert all(isinstance(p, int) and p > 0 for p in published.values())
    claims, _, now = claim_from(thoonk, [job, other], 3, LONG, "w")
    assert {c.id: c.published_ms for c in claims} == published
    for c in claims:
        assert c.claimed_ms == now and c.claimed_ms >= c.published_ms


def test_a_job_with_no_publish_time_claims_with_zero(job: JobChannel) -> None:
    jid = job.put(b"x")
    job.client.zrem(job.keys.published, jid)  # as a job put by an original Thoonk client
    (c,) = job.claim(1, lease_ms=LONG)
    assert c.id == jid and c.published_ms == 0 and c.item == b"x"


# records of reaper-stalled jobs ------------------------------------------------------------------
def test_a_job_the_reaper_stalls_keeps_its_record(job: JobChannel) -> None:
    jid = job.put(b"payload")
    published = job.info(jid).published_ms
    record = (LONG, lambda item: "t.lost" if item == b"payload" else "?")
    assert _lose(job, "w-one", max_cancels=1, record=record) == ([jid], [])
    assert job.record(jid) is None  # requeued: not ended, no record
    assert _lose(job, "w-two", max_cancels=1, record=record) == ([], [jid])

    info = job.info(jid)
    assert info.state == "stalled" and info.reason == "worker_lost: lease expired 2 times"
    rec = job.record(jid)
    assert rec is not None
    assert rec["outcome"] == b"stalled" and rec["label"] == b"t.lost"
    assert rec["worker"] == b"w-two" and rec["cancels"] == b"2"
    assert int(rec["published"]) == published
    assert published <= int(rec["started"]) <= int(rec["finished"])
    assert int(rec["finished"]) == int(job.client.zscore(job.keys.stalled_at, jid))
    assert 0 < job.client.pttl(job.keys.record(jid)) <= LONG
    assert job.get_item(jid) == b"payload"  # the stalled job itself is untouched


def test_without_a_record_argument_the_reaper_keeps_none(job: JobChannel) -> None:
    jid = job.put(b"p")
    _lose(job, "w", max_cancels=1)
    assert _lose(job, "w", max_cancels=1) == ([], [jid])
    assert job.record(jid) is None and job.info(jid).state == "stalled"


def _find_to_stall(job: JobChannel) -> list[Any]:
    """Run only the reaper's first script (``job_reap``, max cancels 1) until it finds the
    claimed job to stall; returns its reply (nothing is stalled by it)."""

    def found() -> list[Any] | None:
        reply = job.scripts["job_reap"](job.client, contract("job_reap").build(job.keys), [10, 1])
        return list(reply) if reply[1] else None

    out: list[Any] = wait_for(found, what="the job to stall")
    return out


def test_a_reaper_stopped_between_its_two_calls_leaves_the_job_for_the_next_pass(
    job: JobChannel,
) -> None:
    jid = job.put(b"payload")
    _lose(job, "w", max_cancels=1)
    job.claim(1, lease_ms=SHORT, worker="w")
    reply = _find_to_stall(job)  # the reaper "dies" here: job_reap_stall never runs
    assert [_s(i) for i in reply[1]] == [jid] and reply[4][2] == b"payload"
    assert _s(reply[4][1]) == "lease expired"
    info = job.info(jid)
    assert info.state == "claimed" and info.cancel_count == 1  # untouched: no stall, no record
    assert job.record(jid) is None
    record = (LONG, lambda item: "t.lost")
    assert job.reap(max_cancels=1, record=record) == ([], [jid])  # the next pass
    info = job.info(jid)
    assert info.state == "stalled" and info.reason == "worker_lost: lease expired 2 times"
    rec = job.record(jid)
    assert rec is not None and rec["outcome"] == b"stalled" and rec["label"] == b"t.lost"
    assert rec["cancels"] == b"2" and rec["worker"] == b"w"


def test_a_job_finished_or_renewed_between_the_two_calls_is_not_stalled(
    job: JobChannel,
) -> None:
    finished, renewed = job.put(b"f"), job.put(b"r")
    for jid in (finished, renewed):  # each lost once already
        job.client.hset(job.keys.cancelled, jid, 1)
    claims = {c.id: c for c in job.claim(2, lease_ms=SHORT, worker="w")}  # one deadline
    reply = _find_to_stall(job)
    found = [_s(i) for i in reply[1]]
    assert sorted(found) == sorted([finished, renewed])
    job.finish(finished, b"done", LONG, token=claims[finished].token)  # the worker was late
    assert job.extend([(renewed, claims[renewed].token)], LONG) == []  # and renewed its lease
    assert job._stall_reaped(found, list(reply[4]), (LONG, lambda item: "t")) == []
    assert job.info(finished).state == "finished" and job.info(renewed).state == "claimed"
    assert job.record(renewed) is None
    assert job.info(renewed).cancel_count == 1


def test_the_worker_reaper_keeps_the_record_for_every_view(
    app: TaskPipe, prefix: str, broker_url: str
) -> None:
    app.max_cancels = 1

    @app.task(name="t.lost")
    def lost(x: int) -> int:
        return x

    r = lost.delay(7)
    ch = app.channel("default")
    w = Worker(app, ["default"], concurrency=1, heartbeat_interval=60)

    def lose(worker: str) -> None:
        assert len(ch.claim(1, lease_ms=SHORT, worker=worker)) == 1

        def reaped() -> bool:
            w._reap()
            return ch.info(r.id).state != "claimed"

        wait_for(reaped, what="the reap")

    lose("host-a")
    assert r.state == "available" and r.record() is None
    lose("host-b")
    assert r.state == "stalled"

    rec = r.record()
    assert rec.outcome == "stalled" and rec.task == "t.lost" and rec.worker == "host-b"
    assert rec.cancels == 2 and rec.published_ms and rec.started_ms and rec.finished_ms
    assert rec.published_ms <= rec.started_ms <= rec.finished_ms
    ttl = ch.client.pttl(ch.keys.record(r.id))
    assert 0 < ttl <= int(app.failure_ttl * 1000)

    detail = Inspector(app).job_detail("default", r.id)  # `jobs show` and the dashboard page
    assert detail.state == "stalled" and detail.task == "t.lost" and detail.worker == "host-b"
    assert detail.timestamps["claimed_ms"] == rec.started_ms
    assert detail.timestamps["published_ms"] == rec.published_ms
    assert detail.reason.startswith("worker_lost: lease expired 2 times")

    if broker_url.startswith("memory://"):
        return  # the CLI opens its own connection: a memory:// broker is not shared with it
    import taskpipe.cli.admin  # noqa: F401 - registers the `jobs` commands
    from taskpipe.cli import cli

    out = CliRunner().invoke(
        cli,
        ["jobs", "show", r.id],
        catch_exceptions=False,
        env={"TASKPIPE_BROKER_URL": broker_url, "TASKPIPE_PREFIX": prefix},
    )
    assert out.exit_code == 0, out.output
    assert "host-b" in out.output and "t.lost" in out.output and "worker_lost" in out.output


def test_task_label_of_a_payload() -> None:
    assert task_label(b"not an envelope") == ""
