"""Worker acceptance tests: the pools (thread, async, process), strict priority, pause/resume
across worker processes, ``--burst``, ``--max-jobs``, channels from the environment, ``--help``.

Worker processes are real: ``python -m taskpipe worker -A <module>:app`` on a task module that
the tests write to a temp dir (it reads its broker URL and key prefix from env vars). Every
task keeps an execution ledger in Redis (``INCR`` per job id), and every test ends by checking
that each job is in exactly one terminal state and ran no more often than allowed.

The helpers here are shared with ``test_worker_crash.py``.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from polling import wait_for
from worker_helpers import burst
from worker_proc import WorkerProcess

from taskpipe import TaskFailed, Worker
from taskpipe.app import TaskPipe
from taskpipe.cli import main
from taskpipe.errors import ConfigError
from taskpipe.loading import load_app
from taskpipe.worker.procpool import ProcessPool

APP_SOURCE = '''
"""Task module for the worker acceptance tests (written by the tests to a temp dir)."""
import asyncio
import os
import time

import redis

from taskpipe import TaskPipe, current_job

BROKER = os.environ["TP_TEST_BROKER"]
PREFIX = os.environ["TP_TEST_PREFIX"]
app = TaskPipe("wtest", broker=BROKER, prefix=PREFIX, lease=os.environ.get("TP_TEST_LEASE", "1s"),
               max_cancels=int(os.environ.get("TP_TEST_MAX_CANCELS", "3")))
r = redis.Redis.from_url(BROKER, socket_timeout=None)  # gates block in BLPOP up to 60 s


def _mark(tag):
    """Ledger: one INCR per execution, the start order, and who runs it (pid)."""
    job = current_job()
    r.incr(PREFIX + "ledger:" + job.id)
    r.rpush(PREFIX + "starts", tag)
    r.set(PREFIX + "started:" + job.id, os.getpid())
    return job


@app.task(name="record")
def record(tag, spawn=None):
    _mark(tag)
    if spawn:
        app.tasks["record"].apply_async(args=(spawn,), channel="high")
    return tag


@app.task(name="slow")
def slow(seconds, tag="slow"):
    """Sleeps on its first run only (a rerun after a crash finishes at once)."""
    job = _mark(tag)
    if job.cancel_count == 0 and job.attempts == 0:
        time.sleep(seconds)
    return os.getpid()


@app.task(name="report")
def report(x):
    job = _mark("report")
    job.progress(3, 4)
    job.log("reporting", x=x)
    import logging
    logging.getLogger("user.code").warning("captured %s", x)
    return {"pid": os.getpid(), "progress": app.AsyncResult(job.id).progress}


@app.task(name="soft", timeout="0.3s")
def soft():
    _mark("soft")
    time.sleep(30)


@app.task(name="spin", hard_timeout="0.5s")
def spin():
    """CPU-bound past its hard time limit (it burns a core until killed: a short limit)."""
    _mark("spin")
    while True:
        pass


@app.task(name="poison")
def poison():
    _mark("poison")
    os.kill(os.getpid(), 9)


@app.task(name="exit3")
def exit3():
    _mark("exit3")
    os._exit(3)


@app.task(name="async_record")
async def async_record(tag):
    _mark(tag)
    n = r.incr(PREFIX + "concurrent")
    r.set(PREFIX + "max_concurrent", max(n, int(r.get(PREFIX + "max_concurrent") or 0)))
    await asyncio.sleep(0.2)
    r.decr(PREFIX + "concurrent")
    return tag


@app.task(name="async_stuck", timeout="0.5s")
async def async_stuck():
    _mark("async_stuck")
    assert current_job() is not None
    await asyncio.sleep(30)


def _alive(pid):
    """True while process ``pid`` exists and has not exited (a zombie has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@app.task(name="guarded")
def guarded(seconds):
    """Counts an overlap if the process of the job's previous run is still alive when this run
    starts; records the cancel count it was claimed with; sleeps on its first run only."""
    job = _mark("guarded")
    prev = r.getset(PREFIX + "runner:" + job.id, os.getpid())
    if prev is not None and int(prev) != os.getpid() and _alive(int(prev)):
        r.incr(PREFIX + "overlap:" + job.id)
    r.set(PREFIX + "cancels:" + job.id, job.cancel_count)
    if job.cancel_count == 0 and job.attempts == 0:
        time.sleep(seconds)
    return os.getpid()


@app.task(name="aguarded")
async def aguarded(seconds):
    """``guarded`` as a coroutine (the async pool runs it on its event loop)."""
    job = _mark("aguarded")
    prev = r.getset(PREFIX + "runner:" + job.id, os.getpid())
    if prev is not None and int(prev) != os.getpid() and _alive(int(prev)):
        r.incr(PREFIX + "overlap:" + job.id)
    r.set(PREFIX + "cancels:" + job.id, job.cancel_count)
    if job.cancel_count == 0 and job.attempts == 0:
        await asyncio.sleep(seconds)
    return os.getpid()


# --- test-only hooks (never in taskpipe itself): hold a job in a window of the worker -------
if os.environ.get("TP_TEST_HOLD_RUN"):
    # claimed, handed to the pool, but the task function has not started yet
    import taskpipe.worker.pools as _pools

    _orig_run = _pools.run_prepared

    def _held_run(app_, prepared, channel, *a, **kw):
        r.set(PREFIX + "claimed:" + prepared.claim.id, os.getpid())
        time.sleep(float(os.environ["TP_TEST_HOLD_RUN"]))
        return _orig_run(app_, prepared, channel, *a, **kw)

    _pools.run_prepared = _held_run

if os.environ.get("TP_TEST_HOLD_FINISH"):
    # the task returned, its outcome is not written yet
    from taskpipe.worker.outcomes import OutcomeWriter

    _orig_write = OutcomeWriter.write

    def _held_write(self, outcomes):
        for o in outcomes:
            r.set(PREFIX + "returned:" + o.claim.id, os.getpid())
        if outcomes:
            time.sleep(float(os.environ["TP_TEST_HOLD_FINISH"]))
        return _orig_write(self, outcomes)

    OutcomeWriter.write = _held_write
'''


class Harness:
    """One test's task module, its app (loaded in the test process too), Redis and workers."""

    def __init__(
        self, tmp_path: Path, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.tmp = tmp_path
        self.url = redis_url
        self.prefix = prefix
        self.module = f"tpw_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{self.module}.py").write_text(APP_SOURCE)
        self.app_path = f"{self.module}:app"
        self.base_env = {
            "TP_TEST_BROKER": redis_url,
            "TP_TEST_PREFIX": prefix,
            "TP_TEST_LEASE": "1s",
            "TP_TEST_MAX_CANCELS": "3",
        }
        for key, value in self.base_env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.syspath_prepend(str(tmp_path))
        self.app: TaskPipe = load_app(self.app_path)
        self.r = redis.Redis.from_url(redis_url)
        self.workers: list[WorkerProcess] = []
        self.jobs: dict[str, tuple[str, int]] = {}  # id -> (channel, max runs allowed)

    def add_source(self, source: str) -> None:
        """Append ``source`` (more tasks) to the task module and reload it here (jobs are
        prepared in this process too); workers started after this import the whole module."""
        with open(self.tmp / f"{self.module}.py", "a") as f:
            f.write(source)
        self.app.close()
        self.app = importlib.reload(sys.modules[self.module]).app

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("QUEUE", "TASKPIPE_QUEUES", "TASKPIPE_APP")
        }
        env.update(self.base_env)
        env["PYTHONPATH"] = os.pathsep.join([str(self.tmp), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        env.update(extra)
        return env

    def worker(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        new_session: bool = False,
        **extra_env: str,
    ) -> WorkerProcess:
        """Start ``taskpipe worker -A <module>:app <args>``."""
        n = len(self.workers)
        w = WorkerProcess(
            ["worker", "-A", self.app_path, *args],
            env if env is not None else self.env(**extra_env),
            self.tmp / f"worker{n}.log",
            new_session=new_session,
        )
        self.workers.append(w)
        return w

    def process_worker(self, concurrency: int, **settings: Any) -> Worker:
        """An in-process ``Worker`` with a process pool on ``default`` (children load this
        test's module), its heartbeat out of the way."""
        return Worker(
            self.app,
            ["default"],
            concurrency=concurrency,
            pool="process",
            app_path=self.app_path,
            heartbeat_interval=60,
            **settings,
        )

    def send(self, task: str, *args: Any, max_runs: int = 1, **options: Any) -> Any:
        """Publish a job and remember how often it may run."""
        result = self.app.send(task, args, **options)
        self.jobs[result.id] = (result.channel, max_runs)
        return result

    def runs(self, job_id: str) -> int:
        return int(self.r.get(f"{self.prefix}ledger:{job_id}") or 0)

    def starts(self) -> list[str]:
        raw: list[bytes] = self.r.lrange(f"{self.prefix}starts", 0, -1)  # type: ignore[assignment]
        return [x.decode() for x in raw]

    def flag(self, name: str, job_id: str) -> int | None:
        value = self.r.get(f"{self.prefix}{name}:{job_id}")
        return int(value) if value is not None else None

    def registered(self) -> set[str]:
        from taskpipe.worker.registry import WorkerRegistry

        return {w["name"] for w in WorkerRegistry(self.app).live()}

    def where(self, channel: str, job_id: str) -> list[str]:
        """Every state structure that holds the job (exactly one is expected)."""
        k = self.app.channel(channel).keys
        places = []
        if self.r.zscore(k.finished, job_id) is not None:
            places.append("finished")
        if self.r.sismember(k.stalled, job_id):
            places.append("stalled")
        if self.r.zscore(k.claimed, job_id) is not None:
            places.append("claimed")
        if self.r.zscore(k.delayed, job_id) is not None:
            places.append("delayed")
        if job_id.encode() in self.r.lrange(k.ids, 0, -1):
            places.append("available")
        return places

    def check_ledger(self, expect: dict[str, str] | None = None) -> dict[str, int]:
        """Every job in exactly one terminal state, run at least once and at most as allowed."""
        runs = {}
        for job_id, (channel, max_runs) in self.jobs.items():
            places = self.where(channel, job_id)
            assert len(places) == 1 and places[0] in ("finished", "stalled"), (job_id, places)
            if expect and job_id in expect:
                assert places[0] == expect[job_id], (job_id, places)
            n = self.runs(job_id)
            assert 1 <= n <= max_runs, f"job {job_id} ran {n} times (allowed {max_runs})"
            runs[job_id] = n
        for channel in {c for c, _ in self.jobs.values()}:
            counts = self.app.channel(channel).counts()
            assert counts["available"] == counts["claimed"] == counts["delayed"] == 0, counts
        return runs

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.app.close()
        self.r.close()


def run_worker_in_thread(worker: Worker) -> Any:
    import threading

    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    return t


# --- pools, in process ------------------------------------------------------------------------
def test_thread_pool_runs_jobs_with_progress_and_logs(harness: Harness) -> None:
    results = [harness.send("record", f"t{i}") for i in range(8)]
    rep = harness.send("report", 7)
    w = Worker(harness.app, ["default"], concurrency=4, burst=True, heartbeat_interval=60)
    assert w.run() == 0
    assert [r.get(timeout=5) for r in results] == [f"t{i}" for i in range(8)]
    out = rep.get(timeout=5)
    assert out["pid"] == os.getpid() and out["progress"] == (3.0, 4.0)
    logs = rep.logs()
    assert any("reporting" in line for line in logs)
    assert any("user.code: captured 7" in line for line in logs)
    assert w.writer.stats["finished"] == 9
    harness.check_ledger()


def test_async_pool_runs_coroutines_concurrently_and_times_them_out(harness: Harness) -> None:
    results = [harness.send("async_record", f"a{i}") for i in range(6)]
    stuck = harness.send("async_stuck")
    w = Worker(
        harness.app, ["default"], concurrency=8, pool="async", burst=True, heartbeat_interval=60
    )
    assert w.run() == 0
    assert sorted(r.get(timeout=5) for r in results) == sorted(f"a{i}" for i in range(6))
    # the coroutines overlapped on the one event loop
    assert int(harness.r.get(f"{harness.prefix}max_concurrent") or 0) > 1
    with pytest.raises(TaskFailed) as err:
        stuck.get(timeout=5)
    assert err.value.exc_type == "JobTimeout"
    harness.check_ledger()


def test_process_pool_runs_jobs_in_children(harness: Harness) -> None:
    results = [harness.send("slow", 0.0, f"p{i}") for i in range(6)]
    rep = harness.send("report", 5)
    w = harness.process_worker(2, burst=True)
    assert w.run() == 0
    pids = {r.get(timeout=5) for r in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    out = rep.get(timeout=5)
    # current_job(), progress and logs work inside the child, on its own connection
    assert out["pid"] not in (os.getpid(),) and out["progress"] == (3.0, 4.0)
    assert any("reporting" in line for line in rep.logs())
    assert any("user.code: captured 5" in line for line in rep.logs())
    harness.check_ledger()


def test_process_pool_timeouts_and_child_death(harness: Harness) -> None:
    harness.app.max_cancels = 2
    spin = harness.send("spin")  # CPU-bound, past its hard timeout
    soft = harness.send("soft")  # soft timeout raises inside the child
    dead = harness.send("exit3", max_runs=3)  # kills its child every time
    after = [harness.send("record", f"after{i}") for i in range(3)]
    w = harness.process_worker(1, burst=True)
    assert w.run() == 0
    with pytest.raises(TaskFailed) as err:
        spin.get(timeout=5)
    assert err.value.exc_type == "JobTimeout" and "hard time limit" in err.value.exc_message
    with pytest.raises(TaskFailed) as err:
        soft.get(timeout=5)
    assert err.value.exc_type == "JobTimeout"
    assert [r.get(timeout=5) for r in after] == ["after0", "after1", "after2"]
    info = dead.info()
    assert info.state == "stalled" and info.cancel_count == 2
    # the exit code of the child (a fork of the pool's fork server) is the task's own
    reason = harness.app.channel().stall_reason(dead.id)
    assert reason == "worker_lost: the child process died (exit code 3) 3 times", reason
    assert harness.runs(dead.id) == 3  # cancel, cancel, then stall (max_cancels=2)
    assert w.writer.stats["cancelled"] == 2 and w.writer.stats["stalled"] == 1
    harness.check_ledger(expect={dead.id: "stalled"})


def test_process_pool_hard_timeout_retries_by_policy(harness: Harness) -> None:
    spin = harness.send("spin", max_runs=2, retries=1, retry_backoff=0.05)
    ok = harness.send("record", "next")
    w = harness.process_worker(1, burst=True)
    assert w.run() == 0
    with pytest.raises(TaskFailed) as err:
        spin.get(timeout=5)
    assert err.value.exc_type == "JobTimeout"
    assert harness.runs(spin.id) == 2  # the first run was killed, the retry too
    assert ok.get(timeout=5) == "next"
    harness.check_ledger()


def test_process_pool_replaces_a_child_killed_by_a_signal(harness: Harness) -> None:
    job = harness.send("slow", 30.0, max_runs=2)
    w = harness.process_worker(1)
    t = run_worker_in_thread(w)
    try:
        child = wait_for(lambda: harness.flag("started", job.id), what="the job to start")
        assert child != os.getpid()
        os.kill(child, signal.SIGKILL)
        assert job.get(timeout=20) not in (child, os.getpid())  # rerun in a new child
        later = harness.send("record", "later")
        assert later.get(timeout=20) == "later"
    finally:
        w.stop()
        t.join(20)
    assert w.writer.stats["cancelled"] == 1
    harness.check_ledger()


def test_process_pool_needs_app_path_and_a_shared_broker(harness: Harness) -> None:
    with pytest.raises(ConfigError, match="-A"):
        ProcessPool(harness.app, 1, None)
    mem = TaskPipe(broker=f"memory://{uuid.uuid4().hex}")
    with pytest.raises(ConfigError, match="memory"):
        ProcessPool(mem, 1, harness.app_path)
    with pytest.raises(ConfigError, match="could not load the app"):
        ProcessPool(harness.app, 1, f"{harness.module}:nothing_here")


# --- real worker processes --------------------------------------------------------------------
def test_strict_priority_across_three_channels(harness: Harness) -> None:
    for i in range(3):
        harness.send("record", f"low{i}", channel="low")
    for i in range(3):
        harness.send("record", f"default{i}", channel="default")
    harness.send("record", "high0", "high-spawned", channel="high")  # publishes one more high job
    for i in range(1, 3):
        harness.send("record", f"high{i}", channel="high")
    w = harness.worker("-Q", "high,default,low", "-c", "1", "--burst")
    assert w.wait() == 0, w.output()
    order = harness.starts()
    assert len(order) == 10, order
    ranks = ["high" if t.startswith("high") else t.rstrip("0123456789") for t in order]
    assert ranks == ["high"] * 4 + ["default"] * 3 + ["low"] * 3, order
    assert order.index("high-spawned") < order.index("default0")
    assert harness.app.channel("high").get_ids() == []  # nothing left behind
    harness.check_ledger()


def test_pause_and_resume_across_two_worker_processes(harness: Harness) -> None:
    ch = harness.app.channel("default")
    ch.pause()
    results = [harness.send("record", f"j{i}") for i in range(6)]
    workers = [
        harness.worker("-Q", "default,probe", "-c", "2", "--name", f"pw{i}") for i in range(2)
    ]
    wait_for(lambda: {"pw0", "pw1"} <= harness.registered(), what="both workers to register")
    # both loops have claimed with the paused jobs available: each ran a job of "probe", which
    # a claim looks at after "default" (strict order)
    probed: set[int] = set()

    def probe_both() -> bool:
        probe = harness.send("record", "probe", channel="probe")
        assert probe.get(timeout=20) == "probe"
        probed.add(harness.flag("started", probe.id) or 0)
        return probed == {w.pid for w in workers}

    wait_for(probe_both, what="each worker to claim past the paused channel")
    assert ch.paused and ch.counts()["available"] == 6
    assert all(harness.runs(r.id) == 0 for r in results)
    ch.resume()
    assert [r.get(timeout=20) for r in results] == [f"j{i}" for i in range(6)]
    for w in workers:
        w.send(signal.SIGTERM)
    for w in workers:
        assert w.wait() == 0, w.output()
    harness.check_ledger()


def test_burst_exits_when_empty(harness: Harness) -> None:
    results = [harness.send("record", f"b{i}") for i in range(5)]
    w = harness.worker("--burst", "-c", "2")
    assert w.wait() == 0, w.output()
    assert [r.get(timeout=1) for r in results] == [f"b{i}" for i in range(5)]
    harness.check_ledger()


def test_max_jobs_exits_after_that_many(harness: Harness) -> None:
    results = [harness.send("record", f"m{i}") for i in range(5)]
    w = harness.worker("--max-jobs", "2", "-c", "1")
    assert w.wait() == 0, w.output()
    assert sum(harness.runs(r.id) for r in results) == 2
    assert harness.app.channel().counts()["available"] == 3
    assert burst(harness.app, ["default"])["finished"] == 3  # the rest, run here
    harness.check_ledger()


@pytest.mark.parametrize("var", ["QUEUE", "TASKPIPE_QUEUES"])
def test_channels_from_the_environment(
    harness: Harness, var: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = harness.send("record", "on-a", channel="env-a")
    b = harness.send("record", "on-b", channel="env-b")
    other = harness.app.send("record", ("not-mine",))  # default channel: not consumed
    for name in ("QUEUE", "TASKPIPE_QUEUES", "TASKPIPE_APP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(var, "env-a,env-b")
    # the command line as ``python -m taskpipe`` runs it (``main``), in this process: what is
    # tested is how the command reads the environment
    with pytest.raises(SystemExit) as exited:
        main(["worker", "-A", harness.app_path, "--burst"])
    assert exited.value.code == 0
    assert (a.get(timeout=1), b.get(timeout=1)) == ("on-a", "on-b")
    assert harness.runs(other.id) == 0 and other.info().state == "available"
    other.retract()
    harness.check_ledger()


def test_worker_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    from taskpipe.cli.worker_cmd import worker

    assert main(["worker", "--help"]) == 0  # what ``python -m taskpipe worker --help`` runs
    out = capsys.readouterr().out
    for param in worker.params:
        for opt in param.opts:
            assert opt in out, f"{opt} missing from --help"
    assert "--pool" in out and "--grace" in out
