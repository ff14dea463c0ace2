"""Scheduling on real Redis: cron with several scheduler processes (one SIGKILLed), misfire after
downtime (driven by ``tick(now_ms=)``), ``worker --beat`` and ``cron list``, and 10,000 delayed
jobs due at once promoted by running workers in bounded batches (how long the Redis calls took
is a figure of ``benchmarks/slowlog.py``, not an assertion).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from polling import wait_for
from redis_server import RedisServer

import taskpipe.cli.cron_cmd  # noqa: F401  (registers the commands)
from taskpipe import TaskPipe, Worker, current_job
from taskpipe.cli.main import cli, main
from taskpipe.loading import load_app
from taskpipe.scheduler import Scheduler
from taskpipe.serialization import encode_envelope
from taskpipe.thoonk.job import PutRequest

ROOT = Path(__file__).resolve().parent.parent


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


APP_MODULE = textwrap.dedent("""
    import os

    import redis

    from taskpipe import TaskPipe, current_job

    URL = os.environ["TASKPIPE_BROKER_URL"]
    PREFIX = os.environ["TP_PREFIX"]
    app = TaskPipe("cronproc", broker=URL, prefix=PREFIX)
    r = redis.Redis.from_url(URL)


    @app.cron("* * * * * *", name="every", misfire="all")
    @app.task(name="beat.every")
    def every():
        r.rpush(PREFIX + "ran", current_job().id)


    @app.cron("* * * * * *", name="every_once")
    @app.task(name="beat.every_once")
    def every_once():
        r.rpush(PREFIX + "ran", current_job().id)


    @app.cron("0 0 1 1 *", tz="Europe/Paris", name="new_year")
    @app.task(name="beat.new_year")
    def new_year():
        pass
""")


@pytest.fixture
def appdir(
    tmp_path: Path, redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The environment of processes that load the cron module above (its ``-A`` path is
    ``TP_CRON_APP``: a module name of its own, as the test process may load it too)."""
    module = f"cronmod_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{module}.py").write_text(APP_MODULE)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]),
        TASKPIPE_BROKER_URL=redis_server.url,
        TP_PREFIX=prefix,
        PYTHONUNBUFFERED="1",
        TP_CRON_APP=f"{module}:app",
    )
    monkeypatch.setenv("TASKPIPE_BROKER_URL", redis_server.url)
    monkeypatch.setenv("TP_PREFIX", prefix)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield env


def spawn(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child writes to its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "taskpipe", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(log.parent),
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def fire_seconds(ids: list[str], entry: str) -> list[int]:
    return sorted(int(i.rsplit(":", 1)[1]) for i in ids if i.startswith(f"cron:{entry}:"))


def server_now(client: redis.Redis) -> float:
    sec, usec = client.time()
    return sec + usec / 1e6


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_three_schedulers_fire_exactly_once_and_survive_sigkill(
    appdir: dict[str, str], redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    client = redis_server.client()
    # the schedulers are real processes (one is SIGKILLed); the worker that runs the fires is
    # not what is tested: it runs here, on the same module
    cron_app = load_app(appdir["TP_CRON_APP"])
    worker = Worker(cron_app, concurrency=4, grace="5s", heartbeat_interval=60)
    worker_thread = threading.Thread(target=worker.run, daemon=True)
    worker_thread.start()
    scheds = [
        spawn(appdir, "scheduler", "-A", appdir["TP_CRON_APP"], log=tmp_path / f"sched{i}.log")
        for i in range(3)
    ]
    ran_key = prefix + "ran"

    def fired(entry: str) -> list[int]:
        return fire_seconds([_text(x) for x in client.lrange(ran_key, 0, -1)], entry)

    try:
        # three contiguous fires of each entry while all three schedulers run (no fixed sleeps)
        wait_for(
            lambda: len(fired("every")) >= 3 and len(fired("every_once")) >= 3,
            30,
            "three fires of each entry with three schedulers",
        )
        scheds[1].send_signal(signal.SIGKILL)
        killed_at = server_now(client)
        # the two survivors keep firing: each entry fires over two seconds after the kill
        wait_for(
            lambda: all(f and f[-1] > killed_at + 2 for f in (fired("every"), fired("every_once"))),
            30,
            "fires after the SIGKILL",
        )
        codes = [stop(p) for p in scheds]
    finally:
        for p in scheds:
            stop(p, signal.SIGKILL)
    try:
        app = TaskPipe("check", broker=redis_server.url, prefix=prefix)
        wait_for(
            lambda: (
                app.channel().counts()["available"] == 0 and app.channel().counts()["claimed"] == 0
            ),
            30,
            "the worker to drain",
        )
    finally:
        worker.stop()
        worker_thread.join(20)
        cron_app.close()
    assert not worker_thread.is_alive(), "the worker did not stop"
    assert codes[1] == -signal.SIGKILL and codes[0] == 0 and codes[2] == 0
    ran = [_text(x) for x in client.lrange(ran_key, 0, -1)]
    assert len(ran) == len(set(ran)), "a fire ran twice"
    # the channel only ever created each id once: no fire was enqueued twice
    assert app.channel().counts()["published_total"] == len(set(ran))
    every = fire_seconds(ran, "every")
    once = fire_seconds(ran, "every_once")
    assert len(every) >= 5 and len(once) >= 5
    assert every == list(range(every[0], every[-1] + 1)), "misfire=all: no gaps at all"
    assert every[0] < killed_at and every[-1] > killed_at + 2
    assert any(f > killed_at + 1 for f in once), "the survivors kept firing"
    gaps = [b - a for a, b in zip(once, once[1:])]
    assert max(gaps) <= 2, f"largest gap {max(gaps)}s > one interval plus a second: {once}"
    before_kill = [f for f in once if f < killed_at - 1]
    assert before_kill == list(range(before_kill[0], before_kill[-1] + 1))


def test_misfire_policies_after_downtime(redis_server: RedisServer, prefix: str) -> None:
    """One scheduler fires on time, stops; a second one starts after 3.75 s of downtime.

    Driven by ``Scheduler.tick(now_ms=)`` on real Redis (instants a whole second apart from the
    server's clock), so the downtime takes no wall time and the fires are exact. The scheduler's
    own loop on the real clock is covered by the SIGKILL and ``--beat`` tests.
    """
    app = TaskPipe("misfire", broker=redis_server.url, prefix=prefix)
    for policy in ("skip", "once", "all"):
        app.add_cron(
            "misfire.tick",
            "* * * * * *",
            name=policy,
            misfire=policy,
            channel=policy,
            grace="500ms",
        )
    first = Scheduler(app)
    t0 = (first.server_ms() // 1000 + 1) * 1000  # a whole second
    first.tick(t0 + 5)  # initialises the cursors: only later fires run
    first.tick(t0 + 1_005)  # on time
    first.tick(t0 + 2_005)
    second = Scheduler(app)  # down from t0 + 2.005 s to t0 + 5.75 s
    restart = t0 + 5_750  # the latest missed fire (t0 + 5 s) is 0.75 s late, past the grace
    second.tick(restart)
    second.tick(restart)  # the same instant again fires nothing twice
    second.tick(t0 + 6_005)  # on time again
    fires = {p: fire_seconds(app.channel(p).get_ids(), p) for p in ("skip", "once", "all")}
    s0 = t0 // 1000
    missed = [s0 + 3, s0 + 4, s0 + 5]
    assert fires["all"] == list(range(s0 + 1, s0 + 7)), "misfire=all: every missed fire, in order"
    assert set(missed) <= set(fires["all"])
    assert fires["once"] == [s0 + 1, s0 + 2, s0 + 5, s0 + 6], "once: the latest missed fire only"
    assert fires["skip"] == [s0 + 1, s0 + 2, s0 + 6], "skip: none of the missed fires"
    assert first.fired + second.fired == 6 + 4 + 3
    app.close()


@pytest.mark.timeout(60)
def test_worker_beat_and_cron_list(
    appdir: dict[str, str], redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    cron_app = appdir["TP_CRON_APP"]
    worker = spawn(appdir, "worker", "-A", cron_app, "--beat", log=tmp_path / "beat.log")
    app = TaskPipe("check", broker=redis_server.url, prefix=prefix)
    try:
        wait_for(lambda: app.channel().counts()["finished"] >= 2, 20, "two cron jobs to run")
    finally:
        assert stop(worker) == 0
        app.close()
    # ``cron list`` runs here (CliRunner); the command line itself is the worker's above
    out = CliRunner().invoke(cli, ["cron", "list", "-A", cron_app, "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"every", "every_once", "new_year"}
    assert rows["every"]["expr"] == "* * * * * *" and rows["every"]["misfire"] == "all"
    assert rows["every"]["last_fire"] < rows["every"]["next_fire"]
    assert rows["every"]["last_job"].startswith("cron:every:")
    assert rows["every"]["last_outcome"] in ("finished", "available", "claimed")
    assert rows["new_year"]["last_fire"] is None and rows["new_year"]["last_outcome"] == "never"
    assert rows["new_year"]["next_fire"].endswith("+01:00")  # Europe/Paris in January
    assert rows["new_year"]["next_fire"][5:19] == "01-01T00:00:00"
    table = CliRunner().invoke(cli, ["cron", "list", "-A", cron_app])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "TASK",
        "SCHEDULE",
        "NEXT",
        "FIRE",
        "LAST",
        "FIRE",
        "LAST",
        "OUTCOME",
    ]
    assert any(
        line.startswith("new_year") and "(Europe/Paris)" in line and "never" in line
        for line in lines
    )


def test_bad_cron_expression_fails_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "badcron.py").write_text(
        textwrap.dedent("""
        from taskpipe import TaskPipe
        app = TaskPipe("bad", broker="memory://")

        @app.cron("*/5 * * *")
        @app.task
        def t(): pass
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # ``python -m taskpipe`` is ``main``: run here, the load fails before the scheduler starts
    assert main(["scheduler", "-A", "badcron:app"]) == 2
    assert "bad cron expression" in capsys.readouterr().err
    assert "badcron" not in sys.modules


# delayed jobs --------------------------------------------------------------------------------
@pytest.fixture
def slow_redis() -> Iterator[RedisServer]:
    server = RedisServer(extra=["--slowlog-log-slower-than", "50000", "--slowlog-max-len", "1024"])
    server.start()
    yield server
    server.cleanup()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ten_thousand_delayed_jobs_due_at_once(slow_redis: RedisServer, prefix: str) -> None:
    n = 10_000
    # no crash here: a lease no loaded machine outlives keeps "each job exactly once" timing-free
    app = TaskPipe("delayed", broker=slow_redis.url, prefix=prefix, lease="120s")
    client = slow_redis.client()
    # the workers are threads of this process: the run count is kept here (one HINCRBY round
    # trip per job cost more CPU than claiming and finishing it)
    runs: collections.Counter[str] = collections.Counter()
    runs_lock = threading.Lock()

    @app.task(name="delayed.mark")
    def mark(i: int) -> None:
        job = current_job()
        assert job is not None
        with runs_lock:
            runs[job.id] += 1

    ch = app.channel()
    assert client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"] == "50000"
    client.slowlog_reset()
    due_ms = int(server_now(client) * 1000) + 3000
    item = encode_envelope("delayed.mark", (0,), {}, {}, serializer=app.serializer)
    created = ch.put_many(PutRequest(item, f"d{i}", False, 0, due_ms) for i in range(n))
    assert sum(c for _, c in created) == n
    assert ch.counts()["delayed"] == n and ch.counts()["available"] == 0
    time.sleep(max(0.0, due_ms / 1000 - server_now(client)) + 0.05)
    started = time.monotonic()
    workers = [
        Worker(app, concurrency=8, burst=True, heartbeat_interval=60, capture_logs=False)
        for _ in range(2)
    ]
    promoted: list[int] = []

    def promoter() -> None:  # the explicit promote op races the workers' claim-time promotion
        while True:
            moved, _ = ch.promote()
            promoted.append(moved)
            if moved == 0:
                return

    threads = [threading.Thread(target=w.run) for w in workers]
    threads.append(threading.Thread(target=promoter))
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    elapsed = time.monotonic() - started
    assert len(runs) == n and set(runs.values()) == {1}, "every job ran exactly once"
    counts = ch.counts()
    assert counts["finished"] == n and counts["delayed"] == counts["available"] == 0
    assert sum(w.claimed_total for w in workers) == n
    assert max(promoted) <= 1000  # bounded batches
    slow = client.slowlog_get(1024)  # a figure, not an assertion (benchmarks/slowlog.py)
    print(
        f"\n10,000 delayed jobs due at once: all ran in {elapsed:.2f}s with 2 workers "
        f"(+{sum(promoted)} promoted by JobChannel.promote); Redis calls over 50 ms: {len(slow)}"
    )
