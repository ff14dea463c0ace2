"""``expires=`` (issue 15 item 4): a job not started by its deadline is not run and ends
``expired`` (counted by the worker); on real Redis and ``memory://``, in eager mode, and with a
real worker process that claims the job after its deadline (``test_workflows_crash.py``)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from worker_helpers import burst

from taskpipe import DurationError, TaskFailed, TaskPipe


@pytest.fixture
def ran(app: TaskPipe) -> list[Any]:
    calls: list[Any] = []

    @app.task(name="work")
    def work(x: Any) -> Any:
        calls.append(x)
        return x

    return calls


def test_expired_job_is_not_run(app: TaskPipe, ran: list[Any]) -> None:
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    gone = app.send("work", ("late",), expires=past)
    naive = app.send("work", ("naive",), expires=datetime.utcnow() - timedelta(seconds=1))
    fine = app.send("work", ("on time",), expires="1h")
    later = app.send("work", ("datetime",), expires=datetime.now(timezone.utc) + timedelta(hours=1))
    stats = burst(app)
    assert sorted(ran) == ["datetime", "on time"]
    assert stats.get("expired") == 2 and stats.get("finished") == 2
    for job in (gone, naive):
        assert job.state == "expired" and job.failed() and job.ready()
        with pytest.raises(TaskFailed, match="expired") as info:
            job.get(timeout=5)
        assert info.value.exc_type == "JobExpired"
    assert fine.get(timeout=5) == "on time" and later.get(timeout=5) == "datetime"


def test_expired_parent_fails_its_dependants_and_fires_on_failure(
    app: TaskPipe, ran: list[Any]
) -> None:
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    parent = app.send("work", ("p",), expires=past, on_failure=app.signature("work"))
    kid = app.send("work", ("k",), depends_on=[parent])
    burst(app)
    with pytest.raises(TaskFailed, match="JobExpired"):
        kid.get(timeout=5)
    info = app.AsyncResult(f"{parent.id}.on_failure").get(timeout=5)
    assert info["exc_type"] == "JobExpired"


def test_bad_expires_is_a_typed_error(app: TaskPipe, ran: list[Any]) -> None:
    before = app.channel().counts()["published_total"]
    with pytest.raises(DurationError):
        app.send("work", (1,), expires="soon")
    with pytest.raises(DurationError):
        app.send("work", (1,), expires=True)
    assert app.channel().counts()["published_total"] == before


def test_eager_expiry_follows_the_test_clock() -> None:
    app = TaskPipe(eager=True)
    calls: list[int] = []

    @app.task(name="work")
    def work(x: int) -> int:
        calls.append(x)
        return x

    late = work.apply_async((1,), delay="10m", expires="5m")
    on_time = work.apply_async((2,), delay="1m", expires="5m")
    app.clock.advance("10m")
    assert calls == [2] and on_time.get() == 2
    assert late.state == "expired"
    with pytest.raises(TaskFailed, match="JobExpired"):
        late.get()


def test_expired_jobs_are_listed(app: TaskPipe, ran: list[Any]) -> None:
    from taskpipe.inspection import Inspector

    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    gone = app.send("work", ("late",), expires=past)
    ok = app.send("work", ("fine",))
    burst(app)
    insp = Inspector(app)
    name = app.channel().name
    assert [r.id for r in insp.list_jobs(name, "expired").rows] == [gone.id]
    assert [(r.id, r.state, r.outcome) for r in insp.list_jobs(name, "failed").rows] == [
        (gone.id, "failed", "job_expired")
    ]
    assert insp.list_jobs(name, "aborted").rows == []
    assert ok.get(timeout=5) == "fine"
