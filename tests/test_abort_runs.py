"""An abort stops the run it aborted, and only that run.

A job's id outlives its runs: a job published again with the id of an aborted one
(``apply_async(id="report:2024-05")``) or requeued from its record is a new run. The abort of
the old run (``feed.aborted:<f>:<id>``, kept 7 days) must not stop the new one, and it must
still stop the old run's task when the new run was published before that task looked.

In-process workers (threads), the Lua on real Redis and on ``memory://``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from polling import wait_for
from worker_helpers import burst, worker_running

from taskpipe import AsyncResult, TaskPipe, current_job

pytestmark = pytest.mark.timeout(60)

JOB_ID = "report:2024-05"


def _report(app: TaskPipe) -> Any:
    @app.task(name="report")
    def report(month: str) -> str:
        job = current_job()
        assert job is not None
        job.check_abort()  # an abort of an earlier run of this id must not stop this one
        return f"report {month}"

    return report


def test_a_job_published_again_with_an_aborted_jobs_id_runs(app: TaskPipe) -> None:
    report = _report(app)
    old = report.apply_async(args=("april",), id=JOB_ID)
    [claim] = app.channel().claim(1, worker="w-old")  # the old run, held by hand
    assert claim.id == JOB_ID
    old.abort(by="ops")
    assert old.state == "aborted"
    new = report.apply_async(args=("may",), id=JOB_ID)
    assert new.state == "available"
    assert new.aborted_by() is None  # the abort was of the old run
    stats = burst(app)
    assert new.get(timeout=5) == "report may"
    assert stats.get("aborted") is None
    rec = new.record()
    assert rec is not None and rec.outcome == "succeeded"
    assert new.aborted_by() is None


def _republish(app: TaskPipe, old: AsyncResult[Any], report: Any) -> AsyncResult[Any]:
    return report.apply_async(args=("new",), id=old.id)  # type: ignore[no-any-return]


def _requeue(app: TaskPipe, old: AsyncResult[Any], report: Any) -> AsyncResult[Any]:
    old.requeue(states=("aborted",))
    return old


@pytest.mark.parametrize("again", [_republish, _requeue], ids=["republish", "requeue"])
def test_an_abort_stops_the_old_run_and_not_the_new_one(
    app: TaskPipe, again: Callable[[TaskPipe, AsyncResult[Any], Any], AsyncResult[Any]]
) -> None:
    """Abort a running job, then publish its id again (or requeue it) before its task looked:
    the old run's task still sees its abort; the new run (on another worker) is not stopped."""
    started = threading.Event()
    look = threading.Event()  # the old run looks for its abort only once this is set
    seen: dict[str, bool] = {}

    @app.task(name="loop")
    def loop(tag: str) -> str:
        job = current_job()
        assert job is not None
        if "old" in seen:  # the new run
            seen["new"] = job.aborted
            return "new run"
        seen["old"] = False
        started.set()
        assert look.wait(30)
        seen["old"] = job.aborted
        job.check_abort()
        return "old run not stopped"

    old = loop.apply_async(args=("old",), id=JOB_ID)
    with worker_running(app, concurrency=1, prefetch=0) as first:
        assert started.wait(10)
        old.abort(by="ops")
        new = again(app, old, loop)
        with worker_running(app, concurrency=1, prefetch=0) as second:
            assert new.get(timeout=10) == "new run"
        look.set()
        wait_for(lambda: first.writer.stats, what="the old run's outcome")
    assert seen == {"old": True, "new": False}
    assert dict(first.writer.stats) == {"aborted": 1}  # not a finish refused (lease_lost)
    assert dict(second.writer.stats) == {"finished": 1}
    rec = new.record()
    assert rec is not None and rec.outcome == "succeeded"


def test_an_abort_names_the_claim_it_ended(app: TaskPipe) -> None:
    """``aborted_among`` honours an abort of the caller's claim only; an abort that names no
    claim (``<who>\\0<ms>``, as older versions wrote it) stops whichever run holds the id."""
    report = _report(app)
    r = report.delay("june")
    ch = app.channel()
    [claim] = ch.claim(1, worker="w")
    r.abort(by="ops")
    assert ch.aborted_among([(r.id, claim.token), ("other", claim.token)]) == {r.id}
    assert ch.aborted_among([(r.id, "1:1")]) == set()  # another claim of the id
    who, token, ms = ch.client.get(ch.keys.aborted(r.id)).split(b"\0")
    assert (who, token) == (b"ops", claim.token.encode())
    assert ch.abort_info(r.id) == ("ops", int(ms))
    ch.client.set(ch.keys.aborted(r.id), b"ops\0" + ms)  # as written before the token was kept
    assert ch.aborted_among([(r.id, "1:1")]) == {r.id}
    assert ch.abort_info(r.id) == ("ops", int(ms))
