"""The fault harness: a task module, real worker/scheduler subprocesses, an execution ledger
kept in a second redis-server, and the end-of-test invariant check.

- ``FAULT_APP`` is written to a temp dir as the task module; worker subprocesses run
  ``python -m taskpipe worker -A <module>:app`` and read their broker URL, key prefix and
  ledger URL from env vars. Each execution of a task INCRs ``<prefix>ledger:<job id>`` and
  RPUSHes ``<pid>:<fencing token>`` to ``<prefix>runs:<job id>`` in the **ledger** Redis, which
  the fault tests never restart, freeze or fill up, so the ledger survives every broker fault.
  (``noop`` pipelines its INCRs, 500 at a time and the rest at exit: see the task.)
- ``run_worker_subprocess`` starts one worker (or ``scheduler``) process, output in a log file
  (``WorkerProc`` is ``tests/worker_proc.py``'s ``WorkerProcess``, shared with the crash tests).
- ``Fault.check_invariants`` runs at the end of every test: each published job is in exactly
  one terminal state (finished, failed-finished or stalled), ran no more often than allowed,
  nothing is left available/claimed/delayed, and every taskpipe key outside the channel
  structures has a TTL (per-job result and log keys included).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import hiredis
import redis
from polling import wait_for

# tests/ is on sys.path (tests/conftest.py puts it there); this module is ``fault.harness``
from redis_server import RedisServer, free_port
from worker_proc import WorkerProcess as WorkerProc  # the suite's one subprocess helper

from taskpipe.app import TaskPipe
from taskpipe.loading import load_app
from taskpipe.results import AsyncResult

__all__ = [
    "RedisServer",
    "free_port",
    "FAULT_APP",
    "SITECUSTOMIZE",
    "WorkerProc",
    "Fault",
    "run_worker_subprocess",
    "stop_all",
    "wait_for",
    "LEASE_LOST_PATTERNS",
]

FAULT_APP = '''
"""Task module of the fault tests (written by the harness to a temp dir)."""
import atexit
import os
import threading
import time

import redis

from taskpipe import TaskPipe, current_job

BROKER = os.environ["TP_FAULT_BROKER"]
PREFIX = os.environ["TP_FAULT_PREFIX"]
if os.environ.get("TP_FAULT_NAMED"):
    # name this process's broker connections so a test can CLIENT KILL exactly them
    BROKER += ("&" if "?" in BROKER else "?") + f"client_name=tp-worker-{os.getpid()}"
app = TaskPipe("fault", broker=BROKER, prefix=PREFIX,
               lease=os.environ.get("TP_FAULT_LEASE", "1s"),
               max_cancels=int(os.environ.get("TP_FAULT_MAX_CANCELS", "3")))
# the ledger lives in its own Redis; no socket timeout: gates block in BLPOP for up to 60 s
L = redis.Redis.from_url(os.environ["TP_FAULT_LEDGER"], socket_timeout=None)
B = redis.Redis.from_url(os.environ["TP_FAULT_BROKER"])  # for TIME only


def _mark():
    """Ledger: INCR per execution, plus who ran it under which fencing token."""
    job = current_job()
    pipe = L.pipeline(transaction=False)
    pipe.incr(PREFIX + "ledger:" + job.id)
    pipe.rpush(PREFIX + "runs:" + job.id, f"{os.getpid()}:{job.claim.token}")
    return job, int(pipe.execute()[0])


@app.task(name="record")
def record(tag):
    _mark()
    return tag


_counted = []  # ``noop``'s ledger counts not written yet (job ids)
_counted_lock = threading.Lock()


def _write_counts(ids):
    pipe = L.pipeline(transaction=False)
    for job_id in ids:
        pipe.incr(PREFIX + "ledger:" + job_id)
    pipe.execute()


@atexit.register
def _flush_counts():
    with _counted_lock:
        ids = _counted[:]
        _counted.clear()
    if ids:
        _write_counts(ids)


@app.task(name="noop")
def noop():
    """Counts its run in the ledger like the others (INCR ledger:<id>), but pipelined: 500 at a
    time, the rest when the worker exits (the 100,000-job test stops its workers gracefully
    before it reads the ledger). One INCR round trip per job cost that test more CPU than the
    worker's own claim, run and finish of the job."""
    job_id = current_job().id
    with _counted_lock:
        _counted.append(job_id)
        if len(_counted) < 500:
            return
        ids = _counted[:]
        _counted.clear()
    _write_counts(ids)


@app.task(name="nap")
def nap(seconds, tag=None):
    """Sleeps on every run (a job that takes time)."""
    _mark()
    time.sleep(seconds)
    return tag


@app.task(name="nap_after")
def nap_after(seconds, tag, gate):
    """``nap``, but first (when ``gate`` is not empty) waits up to 60 s for the test to open
    gate:<gate> (``Fault.open_gate(gate)``). The gate is a latch: once open it stays open (BLMOVE
    takes the token and puts it back), so a second run of the job passes too."""
    _mark()
    key = PREFIX + f"gate:{gate}"
    if gate and L.blmove(key, key, 60, "RIGHT", "LEFT") is None:
        raise RuntimeError(f"gate {gate} was never opened")
    time.sleep(seconds)
    return tag


@app.task(name="slow")
def slow(seconds):
    """Sleeps on its first run only (a rerun after a crash finishes at once); returns the pid."""
    _job, n = _mark()
    if n == 1:
        time.sleep(seconds)
    return os.getpid()


@app.task(name="gated")
def gated():
    """Blocks until the test opens gate:<id>:<run number>; returns the pid."""
    job, n = _mark()
    L.set(PREFIX + f"started:{job.id}:{n}", os.getpid())
    L.blpop([PREFIX + f"gate:{job.id}:{n}"], timeout=60)
    return os.getpid()


@app.task(name="stamp")
def stamp():
    """Records the broker's clock (Redis TIME, ms) when the run starts."""
    job, _n = _mark()
    sec, usec = B.time()
    L.set(PREFIX + "stamp:" + job.id, int(sec) * 1000 + int(usec) // 1000)
    return os.getpid()


@app.task(name="chatty")
def chatty(tag):
    """Logs a line and reports progress every 50 ms (the count in logged:<id>) until the test
    opens gate:<id>; returns tag."""
    job, _n = _mark()
    i = 0
    while not L.blpop([PREFIX + f"gate:{job.id}"], timeout=0.05):
        job.log(f"line {i}")
        job.progress(i, 100000)
        i += 1
        L.set(PREFIX + f"logged:{job.id}", i)
    return tag


@app.task(name="poison")
def poison():
    _mark()
    os.kill(os.getpid(), 9)


@app.task(name="big_result")
def big_result(n):
    _mark()
    return "x" * n


@app.task(name="bad_result")
def bad_result():
    _mark()
    return object()


if os.environ.get("TP_FAULT_V2"):
    # the new release of a rolling deploy: one more task
    @app.task(name="fault.v2")
    def v2(x):
        _mark()
        return x * 2


if os.environ.get("TP_FAULT_CRON"):
    @app.task(name="tick")
    def tick():
        job, _n = _mark()
        sec, usec = B.time()
        L.set(PREFIX + "stamp:" + job.id, int(sec) * 1000 + int(usec) // 1000)

    # misfire="all": a fire held by a scheduler that died is sent by the next one, none skipped
    app.add_cron("tick", "* * * * * *", name="tick", misfire="all")


# --- test-only hooks (never in taskpipe): hold a job in a window of the worker -----------------
if os.environ.get("TP_FAULT_HOLD_RUN"):
    # claimed and handed to the pool, but the task function has not started
    import taskpipe.worker.pools as _pools

    _orig_run = _pools.run_prepared

    def _held_run(app_, prepared, channel, *a, **kw):
        L.set(PREFIX + "claimed:" + prepared.claim.id, os.getpid())
        L.blpop([PREFIX + "gate:run:" + prepared.claim.id], timeout=60)
        return _orig_run(app_, prepared, channel, *a, **kw)

    _pools.run_prepared = _held_run

if os.environ.get("TP_FAULT_HOLD_FINISH"):
    # the task returned; its outcome is not written yet
    from taskpipe.worker.outcomes import OutcomeWriter

    _orig_write = OutcomeWriter.write

    def _held_write(self, outcomes):
        # hold the first write of each claim only (a retried write goes straight through)
        fresh = [o for o in outcomes
                 if L.set(PREFIX + "returned:" + o.claim.id + ":" + o.claim.token, os.getpid(), nx=True)]
        for o in fresh:
            L.set(PREFIX + "returned:" + o.claim.id, os.getpid())
        if fresh:
            L.blpop([PREFIX + "gate:finish"], timeout=60)
        return _orig_write(self, outcomes)

    OutcomeWriter.write = _held_write
'''

SITECUSTOMIZE = '''
"""Skews this process's wall clock by TP_FAULT_CLOCK_OFFSET seconds (fault tests only)."""
import os
import time

_offset = float(os.environ.get("TP_FAULT_CLOCK_OFFSET") or 0)
if _offset:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _offset
    time.time_ns = lambda: _time_ns() + int(_offset * 1e9)
'''

#: Worker log lines that name a job whose lease was lost (reaped, refused, or lost while running).
LEASE_LOST_PATTERNS = (
    re.compile(r"lease of job (\S+?)/(\S+) expired"),
    re.compile(r"lease renewal of job (\S+?)/(\S+) failed"),
    re.compile(r"finish of job (\S+?)/(\S+) refused"),
    re.compile(r"outcome of job (\S+?)/(\S+) refused"),
    re.compile(r"job (\S+?)/(\S+) stalled: worker_lost"),
)


#: Test-only script: one SCAN step (ARGV: cursor, MATCH pattern, COUNT) and, of the keys it
#: found, those without a TTL (PTTL -1; -2: gone since the SCAN): ``{next cursor, keys}``. The
#: keys stay in Redis: only those without a TTL come back (not 100,000 result keys, twice).
_SCAN_NO_TTL = """
local found = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local out = {}
for _, key in ipairs(found[2]) do
  if redis.call('PTTL', key) == -1 then out[#out + 1] = key end
end
return {found[1], out}
"""


def _up(p: WorkerProc) -> bool:
    return not p.alive() or p.started()


def stop_all(procs: Iterable[WorkerProc], timeout: float = 30.0) -> list[int]:
    """``WorkerProc.stop`` of several processes at once: every one is told to stop (SIGCONT,
    then SIGTERM once a worker has logged its start, as ``stop`` does) before any is waited
    for, so their wind-downs overlap instead of adding up (a worker's last blocking claim
    alone lasts up to ``max_block``, 1 s). Returns their exit codes, in order."""
    procs = list(procs)
    for p in procs:
        p.send(signal.SIGCONT)
    deadline = time.monotonic() + timeout
    for p in procs:
        if p._logs_its_start():
            wait_for(partial(_up, p), max(0.1, deadline - time.monotonic()), "a worker to start")
        p.send(signal.SIGTERM)
    return [p.wait(max(0.1, deadline - time.monotonic())) for p in procs]


def run_worker_subprocess(
    app_path: str, env: dict[str, str], log_path: Path, *args: str, command: str = "worker"
) -> WorkerProc:
    """Start ``python -m taskpipe <command> -A <app_path> <args>`` (worker or scheduler)."""
    return WorkerProc([command, "-A", app_path, *args], env, log_path)


class Fault:
    """One fault test: its task module, the app (also loaded here), broker, ledger and processes.

    ``broker_url`` is the Redis under test (a test may own it and restart, freeze or fill it);
    ``ledger_url`` is a second Redis holding the execution ledger.
    """

    def __init__(
        self, tmp: Path, broker_url: str, ledger_url: str, prefix: str, **base_env: str
    ) -> None:
        self.tmp = tmp
        self.broker_url = broker_url
        self.prefix = prefix
        self.module = f"tpfault_{uuid.uuid4().hex[:10]}"
        (tmp / f"{self.module}.py").write_text(FAULT_APP)
        (tmp / "skew").mkdir(exist_ok=True)
        (tmp / "skew" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.app_path = f"{self.module}:app"
        self.base_env = {
            "TP_FAULT_BROKER": broker_url,
            "TP_FAULT_PREFIX": prefix,
            "TP_FAULT_LEDGER": ledger_url,
            "TP_FAULT_LEASE": "1s",
            "TP_FAULT_MAX_CANCELS": "3",
            **base_env,
        }
        saved = {k: os.environ.get(k) for k in self.base_env}
        os.environ.update(self.base_env)
        sys.path.insert(0, str(tmp))
        try:
            self.app: TaskPipe = load_app(self.app_path)
        finally:
            sys.path.remove(str(tmp))
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.r: Any = redis.Redis.from_url(broker_url)  # plain client on the broker
        self.ledger: Any = redis.Redis.from_url(ledger_url)  # plain client on the ledger Redis
        self.procs: list[WorkerProc] = []
        self.jobs: dict[str, tuple[str, int, int]] = {}  # id -> (channel, min runs, max runs)

    # processes ---------------------------------------------------------------------------------
    def env(self, *, skew: float = 0.0, **extra: str) -> dict[str, str]:
        """The environment of a subprocess (``skew``: its wall clock offset in seconds)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("QUEUE", "TASKPIPE_QUEUES", "TASKPIPE_APP", "PYTEST_CURRENT_TEST")
        }
        env.update(self.base_env)
        paths = [str(self.tmp)]
        if skew:
            paths.insert(0, str(self.tmp / "skew"))
            env["TP_FAULT_CLOCK_OFFSET"] = str(skew)
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.update(extra)
        return env

    def worker(
        self, *args: str, skew: float = 0.0, command: str = "worker", **extra_env: str
    ) -> WorkerProc:
        """Start a worker (or another taskpipe command) subprocess on this test's app."""
        log_path = self.tmp / f"{command}{len(self.procs)}.log"
        p = run_worker_subprocess(
            self.app_path, self.env(skew=skew, **extra_env), log_path, *args, command=command
        )
        self.procs.append(p)
        return p

    def wait_registered(self, name: str, timeout: float = 30.0) -> None:
        """Wait until a worker of that name is in the registry (it is up and connected)."""
        from taskpipe.worker.registry import WorkerRegistry

        reg = WorkerRegistry(self.app)
        wait_for(
            lambda: name in {w["name"] for w in reg.live()}, timeout, f"worker {name} to register"
        )

    def lease_lost_ids(self) -> set[str]:
        """Ids of jobs whose lease some worker reported lost (reaped, refused, lost while running)."""
        ids: set[str] = set()
        for p in self.procs:
            text = p.output()
            for pattern in LEASE_LOST_PATTERNS:
                ids.update(m.group(2) for m in pattern.finditer(text))
        return ids

    # publishing and the ledger --------------------------------------------------------------------
    def send(
        self, task: str, *args: Any, max_runs: int = 1, min_runs: int = 1, **options: Any
    ) -> AsyncResult:
        """Publish a job and remember how often it may run."""
        result = self.app.send(task, args, **options)
        self.jobs[result.id] = (result.channel, min_runs, max_runs)
        return result

    def expect(self, results: Iterable[AsyncResult], max_runs: int = 1, min_runs: int = 1) -> None:
        """Remember jobs published another way (``publish_many``, schedulers, raw writes)."""
        for r in results:
            self.jobs[r.id] = (r.channel, min_runs, max_runs)

    def runs(self, job_id: str) -> int:
        """How many times the job started (ledger)."""
        return int(self.ledger.get(f"{self.prefix}ledger:{job_id}") or 0)

    def runs_many(self, ids: list[str]) -> dict[str, int]:
        """The ledger count of many jobs (MGET in chunks)."""
        out: dict[str, int] = {}
        for i in range(0, len(ids), 5000):
            chunk = ids[i : i + 5000]
            values = self.ledger.mget([f"{self.prefix}ledger:{j}" for j in chunk])
            out.update({j: int(v or 0) for j, v in zip(chunk, values)})
        return out

    def who_ran(self, job_id: str) -> list[tuple[int, str]]:
        """``(pid, fencing token)`` of every run of the job, in order."""
        out = []
        for raw in self.ledger.lrange(f"{self.prefix}runs:{job_id}", 0, -1):
            pid, _, token = raw.decode().partition(":")
            out.append((int(pid), token))
        return out

    def flag(self, name: str) -> int | None:
        """A test flag the task module set in the ledger (e.g. ``claimed:<id>``): a pid."""
        value = self.ledger.get(f"{self.prefix}{name}")
        return int(value) if value is not None else None

    def open_gate(self, name: str) -> None:
        """Release a task or hook blocked on ``gate:<name>`` (or every one, for a latch)."""
        self.ledger.rpush(f"{self.prefix}gate:{name}", "1")

    def server_ms(self) -> int:
        """The broker's clock (Redis TIME) in ms."""
        sec, usec = self.r.time()
        return int(sec) * 1000 + int(usec) // 1000

    # invariants -----------------------------------------------------------------------------------
    def states(self, channel: str, ids: list[str]) -> list[str]:
        """Each job's state from the ``job_state`` script (what ``JobChannel.info`` runs).

        Pipelined 1,000 calls at a time on one connection, each call packed by hiredis: a
        redis-py pipeline spent 22 us of this process's CPU per call in its own bookkeeping (the
        100,000-job test checks them all), this way 5 us."""
        ch = self.app.channel(channel)
        k = ch.keys
        sha = ch.scripts["job_state"].sha
        ch.scripts.ensure_loaded(self.r, "job_state")
        head = [k.items, k.claimed, k.stalled, k.delayed, k.finished]
        tail = [k.cancelled, k.attempts, k.reasons, k.workers, k.progress, k.leases, k.published]
        pack: Any = hiredis.pack_command  # (its stub takes a 1-tuple)
        out: list[str] = []
        pool = self.r.connection_pool
        conn = pool.get_connection()
        try:
            for i in range(0, len(ids), 1000):
                chunk = ids[i : i + 1000]
                packed = [pack(("EVALSHA", sha, 13, *head, k.result(j), *tail, j)) for j in chunk]
                conn.send_packed_command([b"".join(packed)])
                for _ in chunk:
                    state = conn.read_response()[0]
                    out.append(state.decode() if isinstance(state, bytes) else str(state))
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse this socket
            raise
        finally:
            pool.release(conn)
        return out

    def places(self, channel: str, ids: list[str]) -> list[list[str]]:
        """Every state structure that holds each job (exactly one is expected).

        Each structure is read whole, in one MULTI (a consistent snapshot), and every job is
        looked up in it: the same membership checks as a ZSCORE/SISMEMBER/LPOS per job, in six
        commands instead of six per job (the 100,000-job test checks them all)."""
        k = self.app.channel(channel).keys
        pipe = self.r.pipeline(transaction=True)
        pipe.zrange(k.finished, 0, -1).smembers(k.stalled).zrange(k.claimed, 0, -1)
        pipe.zrange(k.delayed, 0, -1).lrange(k.ids, 0, -1).hkeys(k.items)
        finished, stalled, claimed, delayed, available, items = (
            {x.decode() for x in members} for members in pipe.execute()
        )
        out: list[list[str]] = []
        for job_id in ids:
            where = [
                name
                for name, members in (
                    ("finished", finished),
                    ("stalled", stalled),
                    ("claimed", claimed),
                    ("delayed", delayed),
                    ("available", available),
                )
                if job_id in members
            ]
            if where == ["finished"] and job_id in items:
                where.append("item-left")  # a finished job must have no payload left
            out.append(where)
        return out

    def check_invariants(self, expect: dict[str, str] | None = None) -> dict[str, int]:
        """Every published job in exactly one terminal state, runs within bounds, TTLs on keys.

        ``expect`` maps job ids to ``finished``, ``failed`` (finished with an error record) or
        ``stalled``. Returns the ledger counts.
        """
        by_channel: dict[str, list[str]] = {}
        for job_id, (channel, _lo, _hi) in self.jobs.items():
            by_channel.setdefault(channel, []).append(job_id)
        runs = self.runs_many(list(self.jobs))
        for channel, ids in by_channel.items():
            states = self.states(channel, ids)
            places = self.places(channel, ids)
            for job_id, state, where in zip(ids, states, places):
                assert state in ("finished", "stalled"), f"job {job_id} is {state}, not terminal"
                assert where == [state], f"job {job_id} ({state}) is held by {where}"
            counts = self.app.channel(channel).counts()
            assert counts["available"] == counts["claimed"] == counts["delayed"] == 0, counts
        for job_id, (_channel, lo, hi) in self.jobs.items():
            assert lo <= runs[job_id] <= hi, (
                f"job {job_id} ran {runs[job_id]} times (allowed {lo}..{hi})"
            )
        for job_id, label in (expect or {}).items():
            state = AsyncResult(self.app, job_id, self.jobs[job_id][0]).state
            assert state == label, f"job {job_id} is {state}, expected {label}"
        self.check_ttls()
        return runs

    def check_ttls(self) -> None:
        """No taskpipe key without a TTL outside the channel structures (SCAN this prefix)."""
        keys = self.app.thoonk.keys
        allowed = {keys.feeds, keys.workers_registry(), keys.cron_entries()}
        channels = {c.decode() for c in self.r.smembers(keys.feeds)} | {
            c for c, _, _ in self.jobs.values()
        }
        for name in channels:
            allowed.update(keys.job_object_keys(name))
        cron_prefix = keys.cron_state("")
        offenders: list[str] = []
        match, cursor = self.prefix.replace("*", r"\*") + "*", b"0"
        while True:
            cursor, no_ttl = self.r.eval(_SCAN_NO_TTL, 0, cursor, match, 5000)
            for raw in no_ttl:
                key = raw.decode()
                if key not in allowed and not key.startswith(cron_prefix):
                    offenders.append(key)
            if int(cursor) == 0:
                break
        assert not offenders, f"keys without a TTL: {offenders[:10]} ({len(offenders)} in all)"

    def close(self) -> None:
        """Stop every process this test started (SIGCONT first: one may be frozen)."""
        for p in self.procs:
            p.send(signal.SIGCONT)
            p.kill()
        self.app.close()
        self.r.close()
        self.ledger.close()
