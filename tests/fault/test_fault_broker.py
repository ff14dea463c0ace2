"""Broker-side faults on a redis-server the test owns, with real worker subprocesses: Redis
restarted with AOF mid-run, restarted empty, frozen (SIGSTOP, CLIENT PAUSE, DEBUG SLEEP) for
three leases, a wrong eviction policy, out of memory on publish, and 100,000 queued jobs.

The execution ledger lives in a second redis-server, so it survives every fault done here.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import redis
from fault.harness import Fault, RedisServer, WorkerProc, stop_all
from polling import wait_for

from taskpipe.errors import BrokerUnavailable

pytestmark = pytest.mark.timeout(120)

Figure = Callable[[str, str], None]
# lines about one job (a loaded machine loses more leases: one line per such job is not noise)
_PER_JOB = re.compile(r"lease (renewal )?of job|finish of job|outcome of job|job \S+ stalled")


def _finished(h: Fault) -> int:
    """Finished jobs of the default channel (0 while the broker does not answer)."""
    try:
        return h.app.channel().counts()["finished"]
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, BrokerUnavailable):
        return 0


def _noise(w: WorkerProc) -> list[str]:
    """Warning/error lines that are not about one job (outage noise)."""
    return [
        line
        for line in w.lines()
        if (" WARNING " in line or " ERROR " in line) and not _PER_JOB.search(line)
    ]


def _duplicates(h: Fault, ids: list[str]) -> tuple[dict[str, int], set[str]]:
    runs = h.runs_many(ids)
    dups = {j: n for j, n in runs.items() if n > 1}
    return dups, h.lease_lost_ids()


# --- Redis restarted with AOF during a 2,000-job run --------------------------------------------------
@pytest.mark.slow
def test_redis_restart_with_aof_during_a_2000_job_run(
    own_redis: Callable[..., RedisServer], make_fault: Callable[..., Fault], figure: Figure
) -> None:
    """All 2,000 jobs finish; a job runs twice only if its lease was lost; each worker logs a
    handful of lines about the outage, not one per try."""
    server = own_redis(appendonly=True)
    h = make_fault(server.url)
    n = 2000
    results = h.app.publish_many([h.app.signature("nap", 0.03) for _ in range(n)])
    h.expect(results, max_runs=2)
    workers = [h.worker("-c", "4", "--lease", "3s") for _ in range(4)]
    wait_for(lambda: _finished(h) >= 0.3 * n, what="30 % of the jobs to finish")
    server.stop()  # SIGTERM: Redis shuts down cleanly (appendfsync always: nothing acked is lost)
    time.sleep(2.0)
    server.start()
    back_ms = h.server_ms()
    wait_for(lambda: _finished(h) == n, timeout=90, what="all jobs to finish")
    fin = h.app.channel().keys.finished
    last_before = h.r.zrevrangebyscore(fin, back_ms, "-inf", start=0, num=1, withscores=True)
    first_after = h.r.zrangebyscore(fin, back_ms, "+inf", start=0, num=1, withscores=True)
    resumed = (first_after[0][1] - back_ms) / 1000
    gap = (first_after[0][1] - last_before[0][1]) / 1000
    assert all(w.alive() for w in workers)
    dups, lost = _duplicates(h, [r.id for r in results])
    assert set(dups) <= lost, f"jobs run twice without a lost lease: {set(dups) - lost}"
    noise = [len(_noise(w)) for w in workers]
    figure(
        "Redis restart with AOF (2,000 jobs, 4 workers, 2 s down at 30 %)",
        f"all finished; first finish {resumed:.2f} s after Redis was back (no finish for "
        f"{gap:.2f} s in all); duplicates "
        f"{len(dups)} (all with a lost lease); outage log lines per worker {noise}",
    )
    assert max(noise) <= 10, [_noise(w) for w in workers]
    for w, code in zip(workers, stop_all(workers)):
        assert code == 0, w.output()
    h.check_invariants()


# --- Redis restarted empty -------------------------------------------------------------------------
def test_redis_restarted_empty(
    own_redis: Callable[..., RedisServer], make_fault: Callable[..., Fault], figure: Figure
) -> None:
    """Redis comes back with no data while jobs run: the workers survive, the lost jobs' finishes
    are refused (logged, nothing written), new jobs run, the channel is registered again and no
    key of a lost job is recreated."""
    server = own_redis()
    h = make_fault(server.url)
    lost = [h.send("gated") for _ in range(4)]
    workers = [h.worker("-c", "4", "--name", f"restart-empty-{i}") for i in range(2)]
    for i in range(2):  # both up (signal handlers in place) before the broker goes away
        h.wait_registered(f"restart-empty-{i}")
    wait_for(lambda: all(h.flag(f"started:{r.id}:1") for r in lost), what="the jobs to start")
    server.restart(empty=True)
    restarted = time.monotonic()
    for r in lost:
        h.open_gate(f"{r.id}:1")
        del h.jobs[r.id]  # Redis lost them (no persistence): they cannot be in any state
    fresh = [h.send("record", f"new{i}") for i in range(20)]
    assert [r.get(timeout=30) for r in fresh] == [f"new{i}" for i in range(20)]
    served = time.monotonic() - restarted

    def refused(job_id: str) -> bool:
        return any(w.lines("refused", job_id) for w in workers)

    for r in lost:
        wait_for(partial(refused, r.id), what=f"the lost job {r.id}'s finish to be refused")
        assert r.info().state == "unknown"
    assert all(w.alive() for w in workers)
    wait_for(
        lambda: h.r.sismember(h.app.thoonk.keys.feeds, "default"),
        what="the channel to be registered again",
    )
    keys = [k.decode() for k in h.r.scan_iter(match=h.prefix + "*", count=1000)]
    orphans = [k for k in keys for r in lost if r.id in k]
    assert not orphans, orphans
    figure(
        "Redis restarted empty",
        f"new jobs served {served:.2f} s after the restart; "
        f"{len(lost)} lost in-flight jobs refused at finish; workers alive; no orphan keys",
    )
    for w, code in zip(workers, stop_all(workers)):
        assert code == 0, w.output()
    h.check_invariants()


# --- Redis frozen for three leases -----------------------------------------------------------------
@pytest.mark.parametrize("how", ["sigstop", "client_pause", "debug_sleep"])
def test_redis_frozen_for_three_leases(
    own_redis: Callable[..., RedisServer],
    make_fault: Callable[..., Fault],
    figure: Figure,
    how: str,
) -> None:
    """Redis does not answer for 3 s (lease 1 s) while jobs run. Every job finishes afterwards.
    Redis's clock ran on, so leases expired meanwhile: a job may run twice, but only one whose
    lease was reaped (the old owner's finish is then refused), never more than twice."""
    server = own_redis(extra=["--enable-debug-command", "local"])
    h = make_fault(server.url)
    n = 60
    results = [h.send("nap", 0.25, max_runs=2) for _ in range(n)]
    workers = [h.worker("-c", "4") for _ in range(2)]
    wait_for(lambda: _finished(h) >= n // 5, what="20 % of the jobs to finish")
    assert server.proc is not None
    admin: Any = server.client()
    if how == "sigstop":
        os.kill(server.proc.pid, signal.SIGSTOP)
        time.sleep(3.0)
        os.kill(server.proc.pid, signal.SIGCONT)
    elif how == "client_pause":
        admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
        time.sleep(3.0)
    else:
        admin.execute_command("DEBUG", "SLEEP", "3")
    thawed = time.monotonic()
    wait_for(lambda: _finished(h) == n, timeout=60, what="all jobs to finish")
    drained = time.monotonic() - thawed
    assert all(w.alive() for w in workers)
    dups, lost = _duplicates(h, [r.id for r in results])
    assert set(dups) <= lost, f"jobs run twice without a lost lease: {set(dups) - lost}"
    expired = sum(len(w.lines("expired: back to the queue")) for w in workers)
    figure(
        f"Redis frozen 3 s ({how}), lease 1 s",
        f"all {n} finished {drained:.2f} s after; "
        f"{expired} lease(s) reaped, {len(dups)} job(s) ran twice (each with a reaped lease)",
    )
    for w, code in zip(workers, stop_all(workers)):
        assert code == 0, w.output()
    h.check_invariants()


# --- eviction policy --------------------------------------------------------------------------------
@pytest.mark.parametrize("setup", ["allkeys-lru", "noeviction", "config_disabled"])
def test_eviction_policy_checked_at_worker_start(
    own_redis: Callable[..., RedisServer],
    make_fault: Callable[..., Fault],
    figure: Figure,
    setup: str,
) -> None:
    """A warning when maxmemory-policy is not noeviction; none otherwise; and a Redis with CONFIG
    disabled (managed Redis) is tolerated."""
    extra = (
        ["--rename-command", "CONFIG", ""]
        if setup == "config_disabled"
        else ["--maxmemory-policy", setup]
    )
    h = make_fault(own_redis(extra=extra).url)
    w = h.worker("-c", "1")
    job = h.send("record", "ok")
    assert job.get(timeout=30) == "ok"
    warned = w.lines("maxmemory-policy")
    if setup == "allkeys-lru":
        wait_for(lambda: w.lines("maxmemory-policy", "allkeys-lru"), what="the eviction warning")
        figure("eviction policy", w.lines("maxmemory-policy")[0].split(": ", 1)[-1])
    else:
        assert not warned, warned
    assert w.stop() == 0, w.output()
    h.check_invariants()


# --- out of memory on publish --------------------------------------------------------------------------
def test_out_of_memory_on_publish(
    own_redis: Callable[..., RedisServer], make_fault: Callable[..., Fault], figure: Figure
) -> None:
    """maxmemory reached with noeviction: ``.delay()`` raises BrokerUnavailable and writes
    nothing; workers still finish the jobs already queued; publishing works again once memory
    is available."""
    server = own_redis()
    h = make_fault(server.url)
    queued = [h.send("record", f"q{i}") for i in range(20)]
    used = int(h.r.info("memory")["used_memory"])
    h.r.config_set("maxmemory", used + 1024 * 1024)
    refused: tuple[str, BrokerUnavailable] | None = None
    for i in range(200):
        before = h.r.dbsize()
        try:
            h.send("record", "y" * 100_000, id=f"big{i}")
        except BrokerUnavailable as exc:
            refused = (f"big{i}", exc)
            break
    assert refused is not None, "publishing never hit maxmemory"
    job_id, oom = refused
    accepted = int(job_id[3:])
    assert "out of memory" in str(oom)
    assert h.r.dbsize() == before and h.app.AsyncResult(job_id).info().state == "unknown"
    w = h.worker("-c", "2")
    assert [r.get(timeout=30) for r in queued] == [f"q{i}" for i in range(20)]
    wait_for(lambda: h.app.channel().counts()["available"] == 0, what="the big jobs to drain")
    h.r.config_set("maxmemory", 0)
    after = h.send("record", "after")
    assert after.get(timeout=30) == "after"
    figure(
        "out of memory on publish",
        f"maxmemory = used + 1 MiB: {accepted} x 100 kB jobs "
        "accepted, then BrokerUnavailable (OOM); 20 queued jobs still finished",
    )
    assert w.stop() == 0, w.output()
    h.check_invariants()


# --- 100,000 queued jobs ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_100k_queued_jobs(
    own_redis: Callable[..., RedisServer], make_fault: Callable[..., Fault], figure: Figure
) -> None:
    """Publish 100,000 jobs with ``publish_many``, measure memory per queued job, drain them with
    4 workers, each job exactly once. How long the slowest Redis calls took (SLOWLOG over 50 ms)
    is printed as a figure, never asserted: a loaded machine fails any time limit, so the
    measurement lives in ``benchmarks/slowlog.py`` (docs/performance.md)."""
    server = own_redis()
    h = make_fault(server.url)
    h.r.config_set("slowlog-log-slower-than", 50_000)
    h.app.channel()  # created before the baseline
    h.r.slowlog_reset()
    base = int(h.r.info("memory")["used_memory"])
    n = 100_000
    t0 = time.monotonic()
    results = h.app.publish_many((h.app.signature("noop") for _ in range(n)), batch=1000)
    publish_s = time.monotonic() - t0
    per_job = (int(h.r.info("memory")["used_memory"]) - base) / n
    h.expect(results)
    t1 = time.monotonic()
    # no crash here: a lease no loaded machine outlives keeps "each job exactly once" timing-free;
    # WARNING: the INFO line per finished job (100,000 of them, read by nothing here) cost the
    # workers a fifth of their CPU
    workers = [h.worker("-c", "16", "--lease", "120s", "--loglevel", "WARNING") for _ in range(4)]
    wait_for(lambda: _finished(h) == n, timeout=180, interval=0.2, what="100k jobs to drain")
    drain_s = time.monotonic() - t1
    slow: list[Any] = h.r.slowlog_get(128)
    figure(
        "100,000 queued jobs",
        f"publish {publish_s:.1f} s ({n / publish_s:,.0f}/s); "
        f"{per_job:.0f} B per queued job; drained by 4 workers in {drain_s:.1f} s "
        f"({n / drain_s:,.0f}/s, worker start-up included); SLOWLOG > 50 ms: {len(slow)} entries",
    )
    assert per_job <= 1024
    for w in workers:  # all stop at once (each takes a moment to wind down)
        w.send(signal.SIGTERM)
    for w in workers:
        assert w.wait() == 0, w.output()
    h.check_invariants()
