"""Task and publishing options: durations, priority, delay/eta, timeouts, retries and backoff.

Runs on ``memory://``; the tests marked ``redis_smoke`` also on real Redis (where Redis semantics
matter: the server clock, leases, the reaper). Due times are checked against the job's own
bookkeeping (publish and due times both come from the Redis server clock), so no test depends on
how fast this machine is (the delay-accuracy check asserts that a delayed job never runs early
and prints how late it ran).
"""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from polling import wait_for
from worker_helpers import burst, worker_running

from taskpipe import ConfigError, DurationError, Retry, TaskFailed, TaskPipe, current_job
from taskpipe.errors import ResultStalled
from taskpipe.worker.runner import backoff_delay

# the task layer on memory://; the redis_smoke tests also on real Redis (tests/conftest.py)
pytestmark = pytest.mark.task_layer

HOUR_MS = 3_600_000


# helpers ---------------------------------------------------------------------------------------


def server_ms(app: TaskPipe) -> int:
    sec, usec = app.connection.client.time()
    return int(sec) * 1000 + int(usec) // 1000


def retry_window(
    app: TaskPipe, due_ms: int | None, before: int, after: int, low_ms: int, high_ms: int
) -> None:
    """The retry was deferred between ``before`` and ``after`` (server ms) to ``due_ms``: check
    that its delay can lie in ``[low_ms, high_ms]``, whatever the time the worker took."""
    assert due_ms is not None
    assert due_ms - before >= low_ms, (due_ms - before, low_ms)
    assert due_ms - after <= high_ms, (due_ms - after, high_ms)


def delay_ms_of(app: TaskPipe, result: Any) -> int:
    """How long after its publication a job is due (both stamps from the server clock)."""
    info = result.info()
    assert info.state == "delayed", info
    return int(info.due_ms - info.published_ms)


# durations -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("10ms", 10),
        ("30s", 30_000),
        ("45m", 2_700_000),
        ("2h", 7_200_000),
        ("6d", 518_400_000),
        ("1h30m", 5_400_000),
        (timedelta(minutes=5), 300_000),
        (timedelta(milliseconds=1500), 1500),
        (90, 90_000),
        (0.25, 250),
        ("2.5", 2500),
    ],
)
def test_duration_forms_as_delay(app: TaskPipe, value: Any, ms: int) -> None:
    @app.task(name="dur.noop")
    def noop() -> None: ...

    r = noop.apply_async(delay=value)
    assert delay_ms_of(app, r) == ms


@pytest.mark.parametrize("bad", ["soon", "10 parsecs", "-5s", "1m1m", "30m1h", "", True, [1]])
def test_bad_durations_name_the_value(app: TaskPipe, bad: Any) -> None:
    @app.task(name="dur.noop")
    def noop() -> None: ...

    for option in ("delay", "result_ttl", "timeout", "retry_backoff"):
        with pytest.raises(
            DurationError, match="invalid duration " + repr(bad).replace("[", r"\[")
        ):
            noop.apply_async(**{option: bad})
    for option in ("timeout", "retry_backoff", "retry_backoff_max", "result_ttl", "hard_timeout"):
        with pytest.raises(DurationError) as info:
            app.task(name=f"dur.bad_{option}", **{option: bad})(lambda: None)
        assert repr(bad) in str(info.value)
        assert f"dur.bad_{option}" not in app.tasks
    for option in ("result_ttl", "retry_backoff", "lease", "timeout"):
        with pytest.raises(DurationError):
            TaskPipe(broker="memory://", **{option: bad})
    assert isinstance(DurationError("x"), ValueError)
    counts = app.channel().counts()
    assert counts["published_total"] == 0 and counts["delayed"] == 0  # nothing was written


# priority --------------------------------------------------------------------------------------
@pytest.mark.redis_smoke
def test_priority_jobs_go_to_the_head(app: TaskPipe) -> None:
    order: list[str] = []

    @app.task(name="prio.work")
    def work(label: str) -> None:
        order.append(label)

    @app.task(name="prio.urgent", priority=True)
    def urgent(label: str) -> None:
        order.append(label)

    work.delay("n1")
    work.delay("n2")
    work.apply_async(["p1"], priority=True)
    urgent.delay("p2")  # task-level priority
    urgent.apply_async(["n3"], priority=False)  # a call option overrides the task's
    work.delay("n4")
    burst(app, concurrency=1)
    # priority jobs jump the queue; among themselves the newest runs first (Thoonk v1: RPUSH)
    assert order == ["p2", "p1", "n1", "n2", "n3", "n4"]


def test_strict_channel_order(app: TaskPipe) -> None:
    order: list[str] = []

    @app.task(name="prio.any")
    def any_(label: str) -> None:
        order.append(label)

    any_.apply_async(["low-1"], channel="low")
    any_.delay("default-1")
    any_.apply_async(["high-1"], channel="high")
    any_.apply_async(["low-2"], channel="low")
    any_.apply_async(["high-2"], channel="high")
    burst(app, ["high", "default", "low"], concurrency=1)
    assert order == ["high-1", "high-2", "default-1", "low-1", "low-2"]


# delay and eta ---------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.redis_smoke
def test_delay_accuracy(app: TaskPipe) -> None:
    """A 1 s delay starts no sooner than 1 s after publishing. How late it started is printed,
    never asserted (a loaded machine makes any upper bound flaky); what makes it prompt is
    tested without a clock: the put wakes a blocked worker (``job_put.lua``) and the claim
    returns the next due time the worker re-times its wait to (``test_job_conformance.py``)."""
    started: list[float] = []
    ran = threading.Event()

    @app.task(name="delay.stamp")
    def stamp() -> None:
        started.append(time.time())
        ran.set()

    with worker_running(app, concurrency=2):
        time.sleep(0.2)  # the worker is idle and blocked before we publish
        t0 = time.time()
        r = stamp.apply_async(delay=1)
        assert r.state == "delayed"
        assert ran.wait(10)
    elapsed = started[0] - t0
    # the lower bound is strict, less the 1 ms the server's ms-truncated clock may lag
    assert elapsed >= 0.999, elapsed
    print(f"\n1 s delay ran after {elapsed:.3f} s")


@pytest.mark.parametrize("kind", ["aware", "aware-offset", "naive-utc", "timestamp"])
def test_eta_forms(app: TaskPipe, kind: str) -> None:
    @app.task(name="eta.noop")
    def noop() -> None: ...

    when = datetime.now(timezone.utc) + timedelta(hours=1)
    eta: Any = {
        "aware": when,
        "aware-offset": when.astimezone(timezone(timedelta(hours=-5))),
        "naive-utc": when.replace(tzinfo=None),
        "timestamp": when.timestamp(),
    }[kind]
    r = noop.apply_async(eta=eta)
    info = r.info()
    assert info.state == "delayed"
    assert abs(int(info.due_ms or 0) - when.timestamp() * 1000) < 1000


def test_eta_in_the_past_runs_now(app: TaskPipe) -> None:
    @app.task(name="eta.now")
    def now() -> str:
        return "ran"

    r = now.apply_async(eta=datetime.now(timezone.utc) - timedelta(days=1))
    assert r.state == "available"
    burst(app)
    assert r.get(timeout=5) == "ran"


@pytest.mark.redis_smoke
def test_delayed_priority_job_goes_to_the_head_when_due(app: TaskPipe) -> None:
    order: list[str] = []

    @app.task(name="eta.order")
    def rec(label: str) -> None:
        order.append(label)

    r = rec.apply_async(["urgent-later"], delay="50ms", priority=True)
    rec.delay("plain")
    wait_for(lambda: app.channel().promote()[0] or r.state == "available", what="the job due")
    assert r.state == "available"
    burst(app, concurrency=1)
    assert order == ["urgent-later", "plain"]


# timeouts --------------------------------------------------------------------------------------
def test_soft_timeouts(app: TaskPipe) -> None:
    @app.task(name="to.busy", timeout="100ms")
    def busy(steps: int) -> int:
        for _ in range(steps):
            time.sleep(0.01)
        return steps

    slow = busy.delay(3000)
    fast = busy.delay(1)
    override = busy.apply_async([20], timeout="5s")  # a call option beats the task's
    burst(app)
    with pytest.raises(TaskFailed) as info:
        slow.get(timeout=5)
    assert info.value.exc_type == "JobTimeout" and "time limit" in info.value.exc_message
    assert fast.get(timeout=5) == 1
    assert override.get(timeout=5) == 20


def test_a_time_limit_too_long_for_the_platform_timer_is_no_limit(app: TaskPipe) -> None:
    # timeout=1e10 (317 years, past threading.TIMEOUT_MAX): setitimer raised OverflowError, so
    # a job run on the main thread failed with it, and a thread pool's Timer thread died with it
    @app.task(name="to.endless", timeout=1e10)
    def endless(x: int) -> int:
        return x

    main_thread = endless.delay(1)
    burst(app, concurrency=1, prefetch=0)
    assert main_thread.get(timeout=5) == 1
    in_pool = [endless.delay(i) for i in range(2)]
    with worker_running(app):
        assert [r.get(timeout=10) for r in in_pool] == [0, 1]
    called = endless.apply_async([3], timeout=10**12)  # a call option too
    burst(app)
    assert called.get(timeout=5) == 3


def test_app_default_timeout(broker_url: str, prefix: str) -> None:
    app = TaskPipe(broker=broker_url, prefix=prefix, timeout="100ms")

    @app.task(name="to.app")
    def loop() -> None:
        while True:
            time.sleep(0.01)

    r = loop.delay()
    burst(app)
    failure = r.get(timeout=5, propagate=False)
    assert isinstance(failure, TaskFailed) and failure.exc_type == "JobTimeout"
    app.close()


# retries ---------------------------------------------------------------------------------------
@pytest.mark.redis_smoke
def test_retries_until_success(app: TaskPipe) -> None:
    seen: list[tuple[int, int]] = []

    @app.task(name="retry.flaky", retries=3, retry_backoff="20ms")
    def flaky() -> int:
        job = current_job()
        assert job is not None
        seen.append((job.attempts, job.cancel_count))
        if len(seen) < 3:
            raise ConnectionError("try again")
        return len(seen)

    r = flaky.delay()
    stats = burst(app, max_block=0.5)  # a burst worker waits for retries due within max_block
    assert stats == {"retried": 2, "finished": 1}
    assert r.get(timeout=5) == 3
    assert seen == [(0, 0), (1, 0), (2, 0)]


@pytest.mark.redis_smoke
def test_retry_waits_delayed_with_backoff_and_jitter(app: TaskPipe) -> None:
    @app.task(name="retry.backoff", retries=2, retry_backoff="1m")
    def fail() -> None:
        raise ValueError("down")

    r = fail.delay()
    before = server_ms(app)
    assert burst(app) == {"retried": 1}
    after = server_ms(app)
    info = r.info()
    assert r.state == "delayed" and info.attempts == 1 and info.cancel_count == 0
    # attempt 1: the base backoff, half fixed and half random ("equal jitter")
    retry_window(app, info.due_ms, before, after, 30_000, 60_000)
    with pytest.raises(TimeoutError):
        r.get(timeout=0.05)


def test_retry_backoff_max_caps_the_wait(app: TaskPipe) -> None:
    @app.task(name="retry.capped", retries=1, retry_backoff="1h", retry_backoff_max="10s")
    def fail() -> None:
        raise ValueError("down")

    @app.task(name="retry.app_cap", retries=1, retry_backoff="1h")
    def fail_too() -> None:
        raise ValueError("down")

    r, r_app = fail.delay(), fail_too.delay()
    before = server_ms(app)
    assert burst(app) == {"retried": 2}
    after = server_ms(app)
    retry_window(app, r.info().due_ms, before, after, 5_000, 10_000)
    # no task cap: the app's retry_backoff_max (10m) applies
    retry_window(app, r_app.info().due_ms, before, after, 300_000, 600_000)


def test_backoff_is_exponential_with_jitter() -> None:
    rng = random.Random(7)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (8, 60.0), (30, 60.0)]:
        values = [backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert all(full / 2 <= v <= full for v in values)
        assert max(values) - min(values) > full / 4  # jitter spreads the retries out


def test_raise_retry_with_a_delay(app: TaskPipe) -> None:
    @app.task(name="retry.explicit", retries=1)
    def later() -> None:
        raise Retry(delay="1h", reason="rate limited")

    r = later.delay()
    before = server_ms(app)
    assert burst(app) == {"retried": 1}
    after = server_ms(app)
    info = r.info()
    assert info.state == "delayed" and info.attempts == 1
    retry_window(app, info.due_ms, before, after, HOUR_MS, HOUR_MS)  # exact: no jitter


def test_retry_budget_used_up_fails(app: TaskPipe) -> None:
    @app.task(name="retry.forever", retries=2, retry_backoff="1ms")
    def again() -> None:
        raise Retry()

    @app.task(name="retry.broken", retries=1, retry_backoff="1ms")
    def broken() -> None:
        raise KeyError("missing")

    r1, r2 = again.delay(), broken.delay()
    assert burst(app) == {"retried": 3, "failed": 2}
    with pytest.raises(TaskFailed) as info:
        r1.get(timeout=5)
    assert info.value.exc_type == "MaxRetriesExceeded" and "3 attempts" in info.value.exc_message
    with pytest.raises(TaskFailed) as info:
        r2.get(timeout=5)
    assert info.value.exc_type == "KeyError"
    assert r2.state == "failed" and r2.info().attempts == 0  # bookkeeping is cleared on finish


def test_retries_call_option_and_app_default(broker_url: str, prefix: str) -> None:
    app = TaskPipe(broker=broker_url, prefix=prefix, retries=1, retry_backoff="1ms")
    runs: list[str] = []

    @app.task(name="retry.count")
    def count(label: str) -> None:
        runs.append(label)
        raise OSError(label)

    count.delay("app-default")  # 1 retry: 2 runs
    count.apply_async(["none"], retries=0)  # 1 run
    count.apply_async(["three"], retries=3)  # 4 runs
    burst(app)
    assert sorted(runs) == sorted(["app-default"] * 2 + ["none"] + ["three"] * 4)
    app.close()


def test_attempts_are_counted_apart_from_cancels(app: TaskPipe) -> None:
    seen: list[tuple[int, int]] = []

    @app.task(name="retry.cancels", retries=1, retry_backoff="1ms")
    def job() -> None:
        ctx = current_job()
        assert ctx is not None
        seen.append((ctx.attempts, ctx.cancel_count))
        raise RuntimeError("boom")

    r = job.delay()
    ch = app.channel()
    for _ in range(2):  # two claims lost (e.g. worker shut down): cancels, not attempts
        claim = ch.claim(1, 30_000, "test")[0]
        ch.cancel(claim.id, token=claim.token)
    assert r.info().cancel_count == 2 and r.info().attempts == 0
    burst(app)
    assert seen == [(0, 2), (1, 2)]
    assert r.state == "failed"


@pytest.mark.redis_smoke
def test_stall_on_failure(app: TaskPipe) -> None:
    @app.task(name="retry.park", retries=1, retry_backoff="1ms", stall_on_failure=True)
    def park(x: int) -> None:
        raise ValueError(f"bad {x}")

    r = park.delay(7)
    assert burst(app) == {"retried": 1, "stalled": 1}
    assert r.state == "stalled"
    assert app.channel().stall_reason(r.id) == "failed: ValueError: bad 7"
    with pytest.raises(ResultStalled, match="bad 7") as stalled:  # fails fast: no result comes
        r.get(timeout=60)
    # the message names a command that exists (it said "taskpipe retry", which is no command)
    assert f"taskpipe jobs retry {r.id}" in str(stalled.value)
    from taskpipe.cli.admin import jobs
    from taskpipe.cli.main import cli

    assert cli.commands["jobs"] is jobs and "retry" in jobs.commands
    assert "retry" not in cli.commands
    with pytest.raises(ConfigError):
        park.apply_async([1], retries="2")


def _send_back(app: TaskPipe, times: int, jobs: int = 1) -> None:
    """Claim the next ``jobs`` jobs and give them back, ``times`` times (as a worker stopping)."""
    ch = app.channel()
    for _ in range(times):
        claims = ch.claim(jobs, 30_000, "lost")
        assert len(claims) == jobs
        for claim in claims:
            ch.cancel(claim.id, token=claim.token)


def test_a_task_max_cancels_below_the_apps_stalls_on_the_next_claim(app: TaskPipe) -> None:
    ran: list[str] = []

    @app.task(name="cancels.strict", max_cancels=1)
    def strict() -> None:
        ran.append("strict")

    @app.task(name="cancels.default")
    def default() -> None:
        ran.append("default")

    s, d = strict.delay(), default.delay()
    _send_back(app, 2, jobs=2)  # count 2: over the strict task's 1, within the app's 3
    assert s.info().cancel_count == 2 and d.info().cancel_count == 2
    burst(app)
    assert ran == ["default"]  # the strict one is stalled, never run
    assert s.state == "stalled" and d.state == "finished"
    reason = app.channel().stall_reason(s.id)
    assert reason.startswith("worker_lost: sent back 2 times") and "max_cancels=1" in reason


@pytest.mark.redis_smoke
def test_the_reaper_spares_a_task_whose_max_cancels_is_above_the_apps(
    broker_url: str, prefix: str
) -> None:
    app = TaskPipe(broker=broker_url, prefix=prefix, max_cancels=1)
    try:
        ran: list[int] = []

        @app.task(name="cancels.patient", max_cancels=5)
        def patient() -> None:
            ctx = current_job()
            assert ctx is not None
            ran.append(ctx.cancel_count)

        r = patient.delay()
        _send_back(app, 1)
        claim = app.channel().claim(1, 50, "dies")[0]  # then its worker dies: the lease runs out
        assert claim.id == r.id
        time.sleep(0.1)
        with worker_running(app, concurrency=1, reaper_interval="20ms"):
            r.get(timeout=10)  # requeued with count 2 (over the app's 1, within the task's 5)
        assert ran == [2]
    finally:
        app.close()


def test_reap_limit_is_the_highest_limit_or_none(broker_url: str, prefix: str) -> None:
    from taskpipe.worker.runner import reap_limit

    app = TaskPipe(broker=broker_url, prefix=prefix, max_cancels=3)
    try:
        assert reap_limit(app) == 3
        app.task(name="lim.low", max_cancels=1)(lambda: None)
        assert reap_limit(app) == 3
        app.task(name="lim.high", max_cancels=7)(lambda: None)
        assert reap_limit(app) == 7
        app.task(name="lim.none", max_cancels=0)(lambda: None)
        assert reap_limit(app) == 0  # some task never stalls: the reaper leaves it to the claim
    finally:
        app.close()
