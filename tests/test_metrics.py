"""Prometheus metrics: scraped over real HTTP from a real worker on a real redis-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from polling import wait_for
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer, free_port

from taskpipe import TaskPipe, Worker
from taskpipe.contrib.metrics import MetricsServer, serve_metrics
from taskpipe.errors import ConfigError

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def app(redis_server: RedisServer, prefix: str) -> Iterator[TaskPipe]:
    a = TaskPipe(broker=redis_server.url, prefix=prefix, retry_backoff="10ms")
    yield a
    a.close()


def test_counters_depths_and_histogram_move_after_jobs_run(app: TaskPipe) -> None:
    calls = {"flaky": 0}

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="boom")
    def boom() -> None:
        raise ValueError("no")

    @app.task(name="flaky", retries=1)
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("first time fails")
        return "ok"

    w = Worker(app, ["default"], concurrency=2, burst=True, heartbeat_interval=60)
    with serve_metrics(app, 0, worker=w) as m:
        assert m.host == "127.0.0.1" and m.port > 0
        before = scrape(m.url)
        assert val(before, "taskpipe_broker_up") == 1
        assert val(before, "taskpipe_worker_jobs_total", channel="default", outcome="finished") == 0

        for i in range(5):
            add.delay(i, 1)
        boom.delay()
        flaky.delay()
        app.send("no.such.task")  # stalled by the worker: unknown_task
        add.apply_async((1, 1), delay=3600)

        queued = scrape(m.url)
        assert val(queued, "taskpipe_jobs_published_total", channel="default") == 9
        assert val(queued, "taskpipe_queue_depth", channel="default", state="available") == 8
        assert val(queued, "taskpipe_queue_depth", channel="default", state="delayed") == 1

        w.run()
        after = scrape(m.url)

    def job(outcome: str) -> float | None:
        return val(after, "taskpipe_worker_jobs_total", channel="default", outcome=outcome)

    assert job("finished") == 6  # 5 x add + flaky on its second run
    assert job("failed") == 1
    assert job("retried") == 1
    assert job("stalled") == 1
    assert val(after, "taskpipe_jobs_finished_total", channel="default") == 7
    assert val(after, "taskpipe_jobs_failed_total", channel="default") == 1
    for state, n in (("available", 0), ("delayed", 1), ("claimed", 0), ("stalled", 1)):
        assert val(after, "taskpipe_queue_depth", channel="default", state=state) == n
    assert val(after, "taskpipe_task_duration_seconds_count", task="add") == 5
    assert val(after, "taskpipe_task_duration_seconds_count", task="flaky") == 2
    assert val(after, "taskpipe_task_duration_seconds_count", task="boom") == 1
    assert val(after, "taskpipe_task_duration_seconds_bucket", task="add", le="+Inf") == 5
    assert val(after, "taskpipe_worker_concurrency") == 2
    # the writer's own counters agree with what was exported
    assert w.writer.stats["finished"] == 6 and w.writer.stats["stalled"] == 1
    # closed: the metrics listener is detached (the worker's own job event announcer stays)
    assert w.writer.listeners == [w.announcer]


def test_lease_expirations_paused_and_worker_count(app: TaskPipe) -> None:
    done = threading.Event()

    @app.task(name="mark")
    def mark() -> None:
        done.set()

    mark.delay()
    ghost = app.channel().claim(1, lease_ms=50, worker="ghost")  # a worker that dies at once
    assert len(ghost) == 1
    w = Worker(
        app, ["default"], concurrency=1, lease="1s", reaper_interval=0.05, heartbeat_interval=0.2
    )
    m = serve_metrics(app, 0, worker=w)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        assert done.wait(20)
        wait_for(
            lambda: (
                val(
                    scrape(m.url),
                    "taskpipe_lease_expired_total",
                    channel="default",
                    action="requeued",
                )
                == 1
            )
        )
        wait_for(lambda: val(scrape(m.url), "taskpipe_workers") == 1)
        s = scrape(m.url)
        assert val(s, "taskpipe_channel_workers", channel="default") == 1
        assert val(s, "taskpipe_channel_paused", channel="default") == 0
        app.channel().pause()
        assert val(scrape(m.url), "taskpipe_channel_paused", channel="default") == 1
        app.channel().resume()
    finally:
        w.stop()
        t.join(20)
        m.close()
    assert not t.is_alive()
    assert w.writer.stats["lease_expired"] == 1
    assert app.channel().counts()["finished_total"] == 1


def test_two_apps_have_separate_registries(redis_server: RedisServer) -> None:
    a = TaskPipe(broker=redis_server.url, prefix=f"ma{time.time_ns()}:")
    b = TaskPipe(broker=redis_server.url, prefix=f"mb{time.time_ns()}:")
    a.send("x", channel="only_a")
    b.send("x", channel="only_b")
    ma, mb = serve_metrics(a, 0), serve_metrics(b, 0)
    try:
        sa, sb = scrape(ma.url), scrape(mb.url)
    finally:
        ma.close()
        mb.close()
        a.close()
        b.close()
    assert val(sa, "taskpipe_jobs_published_total", channel="only_a") == 1
    assert val(sa, "taskpipe_jobs_published_total", channel="only_b") is None
    assert val(sb, "taskpipe_jobs_published_total", channel="only_b") == 1
    assert val(sb, "taskpipe_jobs_published_total", channel="only_a") is None
    assert val(sa, "taskpipe_worker_concurrency") is None  # no worker attached


def test_scrape_answers_when_the_broker_is_down(prefix: str) -> None:
    app = TaskPipe(broker=f"redis://127.0.0.1:{free_port()}/0", prefix=prefix)
    with serve_metrics(app, 0) as m:
        s = scrape(m.url)
    assert val(s, "taskpipe_broker_up") == 0
    assert not any(name.startswith("taskpipe_queue_depth") for name, _ in s)


def test_bad_ports_are_config_errors(app: TaskPipe) -> None:
    with pytest.raises(ConfigError):
        serve_metrics(app, -1)
    with pytest.raises(ConfigError):
        serve_metrics(app, "80")  # type: ignore[arg-type]
    with serve_metrics(app, 0) as m:
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            serve_metrics(app, m.port)
        assert isinstance(m, MetricsServer)


@pytest.mark.timeout(60)
def test_worker_cli_metrics_port(redis_server: RedisServer, prefix: str, tmp_path: Path) -> None:
    (tmp_path / "metricsapp.py").write_text(
        textwrap.dedent("""
        import os
        from taskpipe import TaskPipe
        app = TaskPipe(broker=os.environ["TP_URL"], prefix=os.environ["TP_PREFIX"])

        @app.task(name="double")
        def double(x):
            return 2 * x
    """)
    )
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "TP_URL": redis_server.url,
        "TP_PREFIX": prefix,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskpipe",
            "worker",
            "-A",
            "metricsapp:app",
            "-c",
            "2",
            "--metrics-port",
            str(port),
            "-l",
            "WARNING",
        ],
        env=env,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    app = TaskPipe(broker=redis_server.url, prefix=prefix)
    try:
        results = [app.send("double", (i,)) for i in range(20)]
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(20)]

        def finished() -> bool:
            try:
                s = scrape(url)
            except OSError:
                return False
            return val(s, "taskpipe_worker_jobs_total", channel="default", outcome="finished") == 20

        wait_for(finished, timeout=30)
        s = scrape(url)
        assert val(s, "taskpipe_task_duration_seconds_count", task="double") == 20
        assert val(s, "taskpipe_jobs_finished_total", channel="default") == 20
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        app.close()
    assert code == 0


def test_running_prefetched_oldest_waiting_task_outcomes_and_no_created(app: TaskPipe) -> None:
    gate = threading.Event()

    @app.task(name="hold")
    def hold() -> None:
        gate.wait(20)

    @app.task(name="bad")
    def bad() -> None:
        raise ValueError("x")

    @app.task(name="slowpoke", timeout=0.05)
    def slowpoke() -> None:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            pass

    for _ in range(4):
        hold.delay()
    w = Worker(app, ["default"], concurrency=1, prefetch=2, heartbeat_interval=60)
    with serve_metrics(app, 0, worker=w) as m:
        wait_for(
            lambda: (
                (val(scrape(m.url), "taskpipe_oldest_waiting_seconds", channel="default") or 0) > 0
            ),
            what="the oldest job's age",
        )
        waiting = scrape(m.url)
        assert val(waiting, "taskpipe_worker_running_jobs") == 0
        thread = threading.Thread(target=w.run, daemon=True)
        thread.start()
        try:
            wait_for(
                lambda: w.executing_count == 1 and w.prefetched_count == 2,
                what="one job running, two prefetched",
            )
            busy = scrape(m.url)
            assert val(busy, "taskpipe_worker_running_jobs") == 1
            assert val(busy, "taskpipe_worker_prefetched_jobs") == 2
            bad.delay()
            slowpoke.delay()
            gate.set()
            wait_for(
                lambda: w.writer.stats["failed"] == 1 and w.writer.stats["timeout"] == 1,
                what="the failure and the timeout written",
            )
            after = scrape(m.url)
            with urllib.request.urlopen(m.url, timeout=10) as resp:
                text = resp.read().decode()
        finally:
            gate.set()
            w.stop()
            thread.join(20)
    assert val(after, "taskpipe_task_outcomes_total", task="hold", outcome="succeeded") == 4
    assert val(after, "taskpipe_task_outcomes_total", task="bad", outcome="failed") == 1
    assert val(after, "taskpipe_task_outcomes_total", task="slowpoke", outcome="timeout") == 1
    assert val(after, "taskpipe_worker_jobs_total", channel="default", outcome="timeout") == 1
    assert val(after, "taskpipe_oldest_waiting_seconds", channel="default") == 0
    assert "_created" not in text


def test_wait_time_histogram_per_channel(app: TaskPipe) -> None:
    @app.task(name="w.noop")
    def noop() -> None:
        return None

    for _ in range(3):
        noop.delay()
    noop.apply_async(channel="other")
    w = Worker(app, ["default", "other"], concurrency=1, burst=True, heartbeat_interval=60)
    with serve_metrics(app, 0, worker=w) as m:
        before = scrape(m.url)
        assert val(before, "taskpipe_job_wait_seconds_count", channel="default") == 0
        # the jobs have waited a while (broker clock) before the worker claims them
        oldest = wait_for(
            lambda: val(scrape(m.url), "taskpipe_oldest_waiting_seconds", channel="default"),
            what="the oldest job's age",
        )
        w.run()
        after = scrape(m.url)
    assert val(after, "taskpipe_job_wait_seconds_count", channel="default") == 3
    assert val(after, "taskpipe_job_wait_seconds_count", channel="other") == 1
    assert val(after, "taskpipe_job_wait_seconds_bucket", channel="default", le="+Inf") == 3
    # each wait is publish to claim: claimed after the scrape that saw the first one waiting
    assert (val(after, "taskpipe_job_wait_seconds_sum", channel="default") or 0) >= oldest
    assert w.claim_listeners == []  # closed: detached
