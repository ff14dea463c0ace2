"""Job history (issue 14): the record a job keeps when it ends, failure_ttl, the timeout outcome,
requeue and edit, finding jobs by state / task / time / error, the per-task breakdown, and the
worker's outcome log lines.

Runs on ``memory://``; the tests marked ``redis_smoke`` also on real Redis.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from worker_helpers import burst

from taskpipe import ConfigError, JobNotFound, TaskPipe, WrongJobState
from taskpipe.history import display_args, task_breakdown
from taskpipe.serialization import decode_envelope

pytestmark = pytest.mark.task_layer


class CodedError(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _tasks(app: TaskPipe) -> dict[str, Any]:
    @app.task(name="h.ok")
    def ok(x: int, label: str = "") -> int:
        return x * 2

    @app.task(name="h.flaky", retries=2, retry_backoff=0)
    def flaky(x: int) -> int:
        raise ValueError(f"kaput {x}")

    @app.task(name="h.coded")
    def coded() -> None:
        raise CodedError("card declined", "E_CARD")

    @app.task(name="h.slow", timeout=0.05)
    def slow() -> None:
        end = time.monotonic() + 5
        while time.monotonic() < end:  # busy: the soft time limit interrupts it at once
            pass

    return {"ok": ok, "flaky": flaky, "coded": coded, "slow": slow}


@pytest.mark.redis_smoke
def test_a_failed_job_keeps_its_whole_record(app: TaskPipe) -> None:
    t = _tasks(app)
    r = t["flaky"].delay(7)
    burst(app)
    assert r.state == "failed"
    rec = r.record()
    assert rec is not None
    assert rec.outcome == "failed" and rec.task == "h.flaky" and rec.channel == "default"
    assert rec.args == [7] and rec.kwargs == {} and rec.args_display == "7"
    assert rec.attempts == 3  # ran three times: the first run and two retries
    assert rec.cancels == 0
    assert rec.worker  # the worker that ran it last
    assert rec.published_ms and rec.started_ms and rec.finished_ms
    assert rec.published_ms <= rec.started_ms <= rec.finished_ms
    assert rec.runtime_ms is not None and rec.runtime_ms >= 0
    assert rec.exc_type == "ValueError" and rec.exc_message == "kaput 7"
    assert "Traceback" in rec.traceback and rec.error == "ValueError: kaput 7"
    assert rec.payload_kept and rec.requeues == 0


def test_a_success_keeps_a_record_too_and_the_error_code_is_kept(app: TaskPipe) -> None:
    t = _tasks(app)
    ok = t["ok"].delay(2, label="x")
    coded = t["coded"].delay()
    burst(app)
    rec = ok.record()
    assert rec is not None and rec.outcome == "succeeded" and rec.attempts == 1
    assert rec.args == [2] and rec.kwargs == {"label": "x"} and rec.args_display == "2, label='x'"
    assert rec.exc_type == ""
    crec = coded.record()
    assert crec is not None and crec.outcome == "failed" and crec.code == "E_CARD"


def test_args_for_display_are_capped_with_a_marker() -> None:
    text = display_args(["a" * 3000], {})
    assert len(text) < 1100 and text.endswith(" chars]") and "… [+" in text
    assert display_args([1, "b"], {"k": None}) == "1, 'b', k=None"


@pytest.mark.redis_smoke
def test_failure_ttl_is_separate_from_result_ttl(app: TaskPipe) -> None:
    t = _tasks(app)
    ok, bad = t["ok"].delay(1), t["flaky"].apply_async([1], retries=0)
    custom = t["flaky"].apply_async([2], retries=0, failure_ttl="1h")
    burst(app)
    ch = app.channel()
    day, week = 86_400_000, 7 * 86_400_000
    ok_ttl = ch.client.pttl(ch.keys.record(ok.id))
    bad_ttl = ch.client.pttl(ch.keys.record(bad.id))
    assert day - 60_000 < ok_ttl <= day  # result_ttl (1d)
    assert week - 60_000 < bad_ttl <= week  # failure_ttl (7d default)
    assert week - 60_000 < ch.client.pttl(ch.keys.result(bad.id)) <= week  # the error too
    assert 3_500_000 < ch.client.pttl(ch.keys.record(custom.id)) <= 3_600_000


def test_failure_ttl_per_task_and_app(broker_url: str, prefix: str) -> None:
    app = TaskPipe("t", broker=broker_url, prefix=prefix, failure_ttl="2h")
    try:

        @app.task(name="f.app")
        def f1() -> None:
            raise ValueError("x")

        @app.task(name="f.task", failure_ttl="30m")
        def f2() -> None:
            raise ValueError("y")

        a, b = f1.delay(), f2.delay()
        burst(app)
        ch = app.channel()
        assert 7_100_000 < ch.client.pttl(ch.keys.result(a.id)) <= 7_200_000
        assert 1_700_000 < ch.client.pttl(ch.keys.record(b.id)) <= 1_800_000
        with pytest.raises(ConfigError):
            TaskPipe("bad", broker=broker_url, failure_ttl="soon")
    finally:
        app.close()


@pytest.mark.redis_smoke
def test_a_timeout_is_its_own_outcome(app: TaskPipe) -> None:
    t = _tasks(app)
    r = t["slow"].delay()
    burst(app)
    assert r.state == "timeout" and r.failed() and r.ready()
    rec = r.record()
    assert rec is not None and rec.outcome == "timeout" and rec.exc_type == "JobTimeout"
    assert [j.id for j in app.jobs(state="timeout")] == [r.id]
    assert app.jobs(state="failed") == []


@pytest.mark.redis_smoke
def test_requeue_runs_a_failed_job_again_with_its_arguments(app: TaskPipe) -> None:
    calls: list[int] = []
    fail = {"on": True}

    @app.task(name="h.sometimes")
    def sometimes(x: int) -> int:
        calls.append(x)
        if fail["on"]:
            raise ValueError("not yet")
        return x + 1

    r = sometimes.delay(41)
    burst(app)
    assert r.state == "failed"
    fail["on"] = False
    r.requeue()
    assert r.state == "available"
    assert r.record() is not None  # history kept while it waits
    burst(app)
    assert r.get(timeout=5) == 42 and calls == [41, 41]
    rec = r.record()
    assert rec is not None and rec.outcome == "succeeded" and rec.requeues == 1
    assert rec.previous == "failed" and rec.attempts == 1  # attempts reset by the requeue


@pytest.mark.redis_smoke
def test_requeue_of_an_expired_job_runs_it(app: TaskPipe) -> None:
    # the payload kept its expires= deadline, so a requeued expired job (outcome failed,
    # JobExpired; `jobs requeue --all` picks it up) expired again at once and never ran
    from datetime import datetime, timezone

    calls: list[int] = []

    @app.task(name="h.late")
    def late(x: int) -> int:
        calls.append(x)
        return x * 10

    r = late.apply_async((4,), expires=datetime(2000, 1, 1, tzinfo=timezone.utc))
    kept = late.apply_async((5,), expires="1h")  # a deadline still ahead is kept as it is
    burst(app)
    assert r.state == "expired" and calls == [5]
    r.requeue()
    assert r.state == "available"
    burst(app)
    assert r.get(timeout=5) == 40 and calls == [5, 4]
    rec = r.record()
    assert rec is not None and rec.outcome == "succeeded" and rec.previous == "failed"
    kept.requeue(states=("succeeded",))
    env = decode_envelope(app.channel().get_item(kept.id) or b"")
    assert "expires_ms" in env.options  # not expired: requeued exactly as published


def test_requeue_refuses_what_it_must_not_touch(app: TaskPipe) -> None:
    t = _tasks(app)
    ok = t["ok"].delay(1)
    waiting = t["ok"].apply_async([2], delay=3600)
    burst(app)
    with pytest.raises(WrongJobState) as info:
        ok.requeue()  # succeeded: not failed
    assert info.value.actual == "succeeded"
    with pytest.raises(WrongJobState):
        waiting.requeue()  # has not ended
    with pytest.raises(JobNotFound):
        app.AsyncResult("no-such-job").requeue()
    with pytest.raises(ConfigError):
        ok.requeue(states=("bogus",))
    assert ok.get(timeout=1) == 2 and ok.state == "finished"  # nothing changed
    assert waiting.state == "delayed"
    # a succeeded job can be requeued when asked for explicitly
    ok.requeue(states=("succeeded",))
    assert ok.state == "available"


@pytest.mark.redis_smoke
def test_edit_a_waiting_job_and_refuse_a_claimed_one(app: TaskPipe) -> None:
    t = _tasks(app)
    r = t["ok"].apply_async([1], delay=3600)
    r.edit(args=[20], kwargs={"label": "edited"})
    env_item = app.channel().get_item(r.id)
    from taskpipe.serialization import decode_envelope

    assert env_item is not None
    env = decode_envelope(env_item)
    assert env.args == (20,) and env.kwargs == {"label": "edited"} and env.task == "h.ok"
    with pytest.raises(ConfigError):
        r.edit(args="not a list")
    with pytest.raises(ConfigError):
        r.edit(kwargs={1: 2})
    # claimed: refused, payload unchanged
    claimed = t["ok"].delay(5)
    claim = app.channel().claim(1, worker="me")
    assert claim and claim[0].id == claimed.id
    with pytest.raises(WrongJobState) as info:
        claimed.edit(args=[6])
    assert info.value.actual == "claimed"
    assert decode_envelope(app.channel().get_item(claimed.id) or b"").args == (5,)
    with pytest.raises(JobNotFound):
        app.AsyncResult("nope").edit(args=[1])


def test_find_jobs_by_state_task_error_and_time(app: TaskPipe) -> None:
    t = _tasks(app)
    before = time.time() - 60
    oks = [t["ok"].delay(i) for i in range(3)]
    bads = [t["flaky"].apply_async([i], retries=0) for i in range(4)]
    coded = t["coded"].delay()
    burst(app)
    assert {j.id for j in app.jobs(state="succeeded")} == {r.id for r in oks}
    assert {j.id for j in app.jobs(state="failed")} == {r.id for r in bads} | {coded.id}
    assert {j.id for j in app.jobs(task="h.flaky")} == {r.id for r in bads}
    assert {j.id for j in app.jobs(task="h.flaky", state="succeeded")} == set()
    assert [j.id for j in app.jobs(error="declined")] == [coded.id]
    assert {j.id for j in app.jobs(error="KAPUT 2")} == {bads[2].id}
    assert len(app.jobs(limit=2)) == 2
    assert len(app.jobs(since=before)) == 8
    assert app.jobs(until=before) == []
    newest = app.jobs(limit=8)
    assert [j.finished_ms for j in newest] == sorted((j.finished_ms for j in newest), reverse=True)
    with pytest.raises(ConfigError):
        app.jobs(state="nope")
    with pytest.raises(ConfigError):
        app.jobs(limit=0)
    with pytest.raises(ConfigError):
        app.jobs(since="yesterday")
    assert task_breakdown(app) == {
        "h.coded": {"succeeded": 0, "failed": 1, "timeout": 0, "aborted": 0},
        "h.flaky": {"succeeded": 0, "failed": 4, "timeout": 0, "aborted": 0},
        "h.ok": {"succeeded": 3, "failed": 0, "timeout": 0, "aborted": 0},
    }


def test_find_jobs_refuses_bounds_and_filters_of_the_wrong_kind(app: TaskPipe) -> None:
    # NaN and infinite bounds raised a bare ValueError / OverflowError from int(); a non-str
    # error filter an AttributeError
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ConfigError, match="since"):
            app.jobs(since=bad)
        with pytest.raises(ConfigError, match="until"):
            app.jobs(until=bad)
    with pytest.raises(ConfigError, match="error"):
        app.jobs(error=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="task"):
        app.jobs(task=5)  # type: ignore[arg-type]
    assert app.jobs(since=10**30) == []  # finite but far: no job, no error


def test_requeue_many_by_task(app: TaskPipe) -> None:
    from taskpipe.history import requeue_many

    t = _tasks(app)
    bads = [t["flaky"].apply_async([i], retries=0) for i in range(5)]
    coded = t["coded"].delay()
    burst(app)
    seen: list[int] = []
    done, skipped = requeue_many(app, None, task="h.flaky", on_progress=seen.append)
    assert (done, skipped) == (5, 0) and sum(seen) == 5
    assert all(r.state == "available" for r in bads)
    assert coded.state == "failed"


def test_requeue_many_looks_past_a_batch_of_jobs_it_cannot_requeue(
    app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each batch re-read the newest failures; jobs it could not requeue (payload not kept) stay
    # failed, so past one batch of them every read was the same batch, all seen: it stopped
    # and the older failures were never looked at
    import taskpipe.history
    import taskpipe.thoonk.job_records

    t = _tasks(app)
    monkeypatch.setattr(taskpipe.thoonk.job_records, "RECORD_ITEM_MAX", 1)  # keep no payload
    big = [t["flaky"].apply_async([i], retries=0) for i in range(5)]
    burst(app)
    monkeypatch.undo()
    small = [t["flaky"].apply_async([i], retries=0) for i in range(3)]
    burst(app)
    monkeypatch.setattr(taskpipe.history, "REQUEUE_BATCH", 2)
    done, skipped = taskpipe.history.requeue_many(app, None)
    assert (done, skipped) == (3, 5)
    assert all(r.state == "available" for r in small) and all(r.state == "failed" for r in big)


def test_expired_records_leave_the_indexes(app: TaskPipe) -> None:
    t = _tasks(app)
    r = t["flaky"].apply_async([1], retries=0)
    burst(app)
    ch = app.channel()
    ch.client.delete(ch.keys.record(r.id))  # as if it expired
    assert app.jobs(state="failed") == []
    assert ch.client.zscore(ch.keys.failed_index, r.id) is None
    assert ch.client.zscore(ch.keys.label_index("h.flaky"), r.id) is not None
    assert app.jobs(task="h.flaky", state="failed") == []  # through the task's index: repaired
    assert ch.client.zscore(ch.keys.label_index("h.flaky"), r.id) is None


def test_worker_logs_each_outcome(app: TaskPipe, caplog: pytest.LogCaptureFixture) -> None:
    t = _tasks(app)
    ok, bad, slow = t["ok"].delay(1), t["flaky"].apply_async([3], retries=0), t["slow"].delay()
    with caplog.at_level(logging.INFO, logger="taskpipe.worker"):
        burst(app)
    lines = {(r.levelno, r.getMessage()) for r in caplog.records if r.name == "taskpipe.worker"}
    assert any(lvl == logging.INFO and ok.id in m and "h.ok succeeded in" in m for lvl, m in lines)
    assert any(
        lvl == logging.ERROR and bad.id in m and "ValueError: kaput 3" in m and "Traceback" not in m
        for lvl, m in lines
    )
    assert any(
        lvl == logging.WARNING and slow.id in m and "timed out" in m and "JobTimeout" in m
        for lvl, m in lines
    )


def test_clean_finished_keeps_failed_and_timeout_until_asked(app: TaskPipe) -> None:
    from taskpipe.inspection import Inspector

    t = _tasks(app)
    ok, bad, slow = t["ok"].delay(1), t["flaky"].apply_async([1], retries=0), t["slow"].delay()
    burst(app)
    insp = Inspector(app)
    ch = app.channel()
    rep = insp.clean("default", "finished", 0)
    assert (rep.removed, rep.kept) == (1, 2)

    def state(r: Any) -> str:  # a fresh handle: no cached result
        return str(app.AsyncResult(r.id).state)

    assert state(ok) == "unknown" and ch.client.exists(ch.keys.record(ok.id)) == 0
    assert state(bad) == "failed" and state(slow) == "timeout"
    dry = insp.clean("default", "failed", 0, dry_run=True)
    assert dry.removed == 1 and state(bad) == "failed"
    rep = insp.clean("default", "failed", 0)
    assert rep.removed == 1 and rep.kept == 1 and state(bad) == "unknown"
    assert ch.client.exists(ch.keys.record(bad.id)) == 0
    assert ch.client.zscore(ch.keys.failed_index, bad.id) is None
    assert ch.client.zscore(ch.keys.label_index("h.flaky"), bad.id) is None
    assert insp.clean("default", "timeout", 0).removed == 1 and state(slow) == "unknown"
    with pytest.raises(ConfigError):
        insp.clean("default", "succeeded", 0)


def test_retract_and_delete_remove_records_and_indexes(app: TaskPipe) -> None:
    t = _tasks(app)
    bad = t["flaky"].apply_async([1], retries=0)
    burst(app)
    ch = app.channel()
    assert ch.client.exists(ch.keys.record(bad.id)) == 1
    bad.retract()
    assert ch.client.exists(ch.keys.record(bad.id)) == 0
    assert ch.client.zscore(ch.keys.failed_index, bad.id) is None
    assert app.AsyncResult(bad.id).state == "unknown" and app.jobs() == []
    with pytest.raises(JobNotFound):
        bad.retract()
    again = t["flaky"].apply_async([2], retries=0)
    burst(app)
    assert ch.client.exists(ch.keys.label_index("h.flaky")) == 1
    app.thoonk.delete(ch.name)
    assert (
        ch.client.exists(ch.keys.label_index("h.flaky"), ch.keys.failed_index, ch.keys.label_stats)
        == 0
    )
    assert again.id


def test_a_stalled_job_keeps_who_ran_it(app: TaskPipe) -> None:
    from taskpipe.inspection import Inspector

    @app.task(name="h.parked", stall_on_failure=True)
    def parked() -> None:
        raise ValueError("needs a human")

    r = parked.delay()
    burst(app)
    assert r.state == "stalled"
    detail = Inspector(app).job_detail("default", r.id)
    assert detail.worker and detail.timestamps["claimed_ms"]
    assert detail.reason == "failed: ValueError: needs a human" and detail.task == "h.parked"


def test_a_job_waiting_out_its_retry_backoff_shows_its_last_error(app: TaskPipe) -> None:
    from taskpipe.inspection import Inspector

    @app.task(name="h.later", retries=3, retry_backoff=3600)
    def later() -> None:
        raise ConnectionError("upstream down")

    r = later.delay()
    burst(app)
    assert r.state == "delayed" and r.record() is None  # not ended: no record yet
    detail = Inspector(app).job_detail("default", r.id)
    assert detail.last_error == "ConnectionError: upstream down" and detail.attempts == 1


def test_a_job_retracted_before_it_ended_keeps_a_retracted_record(app: TaskPipe) -> None:
    from taskpipe.inspection import Inspector

    t = _tasks(app)
    r = t["ok"].apply_async([3], delay=3600)
    r.retract()
    assert app.AsyncResult(r.id).state == "unknown"
    rec = r.record()
    assert rec is not None and rec.outcome == "retracted" and rec.args == [3] and rec.task == ""
    insp = Inspector(app)
    assert insp.find_job(r.id) == ["default"]
    detail = insp.job_detail("default", r.id)
    assert detail.state == "retracted" and detail.payload is not None
    assert detail.payload["args"] == [3] and detail.task == "h.ok"
    ch = app.channel()
    assert 0 < ch.client.pttl(ch.keys.record(r.id)) <= 7 * 86_400_000


def test_empty_channel_leaves_claimed_jobs_alone(app: TaskPipe) -> None:
    from taskpipe.history import count_waiting, empty_channel

    t = _tasks(app)
    held = t["ok"].delay(0)
    claim = app.channel().claim(1, worker="w")
    assert claim[0].id == held.id
    others = [t["ok"].delay(i) for i in range(3)] + [t["ok"].apply_async([9], delay=3600)]
    assert count_waiting(app, None) == 4
    seen: list[int] = []
    assert empty_channel(app, None, on_progress=seen.append) == 4 and sum(seen) == 5
    assert all(app.AsyncResult(r.id).state == "unknown" for r in others)
    assert held.state == "claimed"
    assert app.channel().retract_waiting([held.id]) == []  # the guard: claimed stays


def test_a_tasks_failure_index_expires_after_its_last_failure(app: TaskPipe) -> None:
    t = _tasks(app)
    t["flaky"].apply_async([1], retries=0)
    burst(app)
    ch = app.channel()
    ttl = ch.client.pttl(ch.keys.label_index("h.flaky"))
    assert 7 * 86_400_000 - 60_000 < ttl <= 7 * 86_400_000


def test_record_successes_off_keeps_failure_records_only(broker_url: str, prefix: str) -> None:
    app = TaskPipe("t", broker=broker_url, prefix=prefix, record_successes=False)
    try:
        t = _tasks(app)
        ok, bad = t["ok"].delay(1), t["flaky"].apply_async([1], retries=0)
        burst(app)
        assert ok.get(timeout=5) == 2 and ok.record() is None
        rec = bad.record()
        assert rec is not None and rec.outcome == "failed"
    finally:
        app.close()


def test_reading_history_never_creates_a_channel(app: TaskPipe) -> None:
    """``app.jobs("typo")`` is an empty answer, not a new empty channel named "typo"; so are
    the other history reads. A channel that exists is read as before."""
    assert not app.thoonk.feed_exists("typo")
    assert app.jobs("typo") == []
    assert app.jobs("typo", state="failed") == []
    assert task_breakdown(app, "typo") == {}
    assert app.AsyncResult("nope", channel="typo").record() is None
    assert not app.thoonk.feed_exists("typo") and "typo" not in app.thoonk.names()
    with pytest.raises(ConfigError):
        app.jobs("bad\0name")
    t = _tasks(app)
    r = t["slow"].delay()
    burst(app)
    assert [j.id for j in app.jobs(app.default_channel)] == [r.id]


def test_a_handle_sees_its_job_run_again_after_a_requeue_elsewhere(
    redis_server: Any, prefix: str
) -> None:
    """An ``AsyncResult`` that read a failure does not keep it once another process (another
    app here, as the CLI or the dashboard would) requeued the job: it reads the job as queued
    again, then the new outcome; also when the job ran again before the handle looked."""
    tries: list[int] = []
    with (
        TaskPipe("mine", broker=redis_server.url, prefix=prefix) as mine,
        TaskPipe("theirs", broker=redis_server.url, prefix=prefix) as theirs,
    ):

        @mine.task(name="h.second_time_lucky")
        def lucky() -> str:
            tries.append(1)
            if len(tries) % 2:
                raise ValueError("unlucky")
            return "ok"

        handle = lucky.delay()
        burst(mine)
        failure = handle.get(timeout=10, propagate=False)
        assert isinstance(failure, Exception) and handle.state == "failed"
        theirs.AsyncResult(handle.id).requeue()  # another process's handle
        assert handle.state == "available" and not handle.ready()
        burst(mine)
        assert handle.get(timeout=10) == "ok" and handle.state == "finished"

        # failed again, then requeued and run again before this handle looked: the new finish
        other = lucky.delay()
        burst(mine)
        assert other.state == "failed"
        theirs.AsyncResult(other.id).requeue()
        burst(mine)
        assert other.state == "finished" and other.get(timeout=10) == "ok"
