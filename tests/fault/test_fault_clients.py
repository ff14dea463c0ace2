"""Clients ride out broker restarts (issue 17, item 2), with real worker subprocesses and a
redis-server the test restarts itself.

A producer thread publishes 1,000 jobs (half before the fault, half while the broker is away)
and four reader threads wait on each with ``get(timeout=60)``, across a graceful restart (AOF),
a SIGKILL of Redis (AOF, appendfsync always) and a real LOADING phase (an RDB loaded with a
per-key delay, ``key-load-delay``). The first 100 jobs finish before the fault; the other 400
of the first half are held at a gate that opens only when the broker goes away, so the readers
always wait through the fault, however fast the workers are. Each run must end with 0 jobs
lost, 0 raw redis-py exceptions in the clients, and every ``get()`` returning its job's value.
And a task that logs and reports progress through an 8 s outage finishes successfully with every
line kept.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from fault.harness import Fault, RedisServer
from polling import wait_for
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskpipe import TaskPipe
from taskpipe.errors import BrokerUnavailable
from taskpipe.results import AsyncResult

pytestmark = pytest.mark.timeout(180)

Figure = Callable[[str, str], None]
N = 1000
READERS = 4
DOWN = 3.0  # seconds Redis stays away in the restart and SIGKILL runs
#: jobs of the first half from this index on wait for the fault: they are held by a gate (in the
#: ledger Redis) that the producer opens when the broker goes away, so exactly this many jobs
#: finish before the fault however fast the workers are, and the rest run into the outage
FREE = 100
GATE = "first-half"


def _finished(h: Fault) -> int:
    try:
        return int(h.app.channel().counts()["finished"])
    except (redis.exceptions.RedisError, BrokerUnavailable):
        return 0


def _pong(server: RedisServer) -> bool:
    try:
        # one try: redis-py's default retries a refused or LOADING reply ten times (seconds)
        return bool(
            server.client(
                socket_connect_timeout=0.2, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
            ).ping()
        )
    except redis.exceptions.RedisError:  # refused, LOADING (a ConnectionError in redis-py), timeout
        return False


class Run:
    """The producer and the readers of one 1,000-job run."""

    def __init__(self, h: Fault, server: RedisServer) -> None:
        self.h, self.server = h, server
        self.producer = TaskPipe(
            "producer", broker=server.url, prefix=h.prefix, publish_retry="60s"
        )
        self.readers = [
            TaskPipe(f"reader{i}", broker=server.url, prefix=h.prefix) for i in range(READERS)
        ]
        self.handles: queue.Queue[tuple[int, AsyncResult] | None] = queue.Queue()
        self.results: list[AsyncResult] = []
        self.errors: list[BaseException] = []  # anything a client raised
        self.wrong: list[tuple[int, Any]] = []  # get() returned another value
        self.got = 0
        self.half = threading.Event()  # the producer published the first half
        self.fault_on = threading.Event()  # the broker is going away now
        self.during: list[float] = []  # publish times of the second half (monotonic)
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._produce, daemon=True)] + [
            threading.Thread(target=self._read, args=(app,), daemon=True) for app in self.readers
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _produce(self) -> None:
        try:
            for i in range(N):
                if i == N // 2:
                    self.half.set()
                    self.fault_on.wait(60)
                    self.h.open_gate(GATE)  # the held jobs run into the outage
                r = self.producer.send("nap_after", (0.02, i, GATE if FREE <= i < N // 2 else ""))
                if i >= N // 2:
                    self.during.append(time.monotonic())
                self.results.append(r)
                self.handles.put((i, r))
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.errors.append(exc)
        finally:
            for _ in self.readers:
                self.handles.put(None)

    def _read(self, app: TaskPipe) -> None:
        while (item := self.handles.get()) is not None:
            i, r = item
            try:
                value = AsyncResult(app, r.id, r.channel).get(timeout=60)
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                self.errors.append(exc)
                continue
            with self._lock:
                self.got += 1
                if value != i:
                    self.wrong.append((i, value))

    def finish(self) -> None:
        for t in self.threads:
            t.join(120)
        assert not any(t.is_alive() for t in self.threads), "a client thread is stuck"
        for app in (self.producer, *self.readers):
            app.close()

    def check(self, figure: Figure, label: str, outage: float) -> None:
        raw = [e for e in self.errors if isinstance(e, redis.exceptions.RedisError)]
        assert not raw, f"raw redis-py exceptions reached the clients: {raw[:3]}"
        assert not self.errors, f"client errors: {[repr(e) for e in self.errors[:5]]}"
        assert not self.wrong, f"get() returned the wrong value: {self.wrong[:5]}"
        assert len(self.results) == N and self.got == N
        tracebacks = [p.args for p in self.h.procs if "Traceback" in p.output()]
        assert not tracebacks, f"a worker logged a traceback: {tracebacks}"
        self.h.expect(self.results, max_runs=2)
        runs = self.h.check_invariants()  # 0 lost: every job finished, none left anywhere
        doubled = {j for j in (r.id for r in self.results) if runs[j] > 1}
        lost_leases = self.h.lease_lost_ids()
        assert doubled <= lost_leases, (
            f"jobs run twice without a lost lease: {doubled - lost_leases}"
        )
        figure(
            label,
            f"{N} published ({N // 2} of them from the moment the broker went away), "
            f"{self.got} get(timeout=60) returned their values, 0 lost, 0 client errors; "
            f"broker away {outage:.1f} s; {len(doubled)} run twice after a lost lease",
        )


def _one_run(
    h: Fault, server: RedisServer, figure: Figure, label: str, fault: Callable[[Run], float]
) -> None:
    """Workers, producer and readers running; ``fault(run)`` takes the broker away, sets
    ``run.fault_on`` (the producer publishes its second half into the outage) and brings the
    broker back; it returns how long the broker was away. Then check everything."""
    for _ in range(2):
        h.worker("-c", "4", "--lease", "5s")
    run = Run(h, server)
    run.start()
    assert run.half.wait(60), "the producer did not publish the first half"
    wait_for(lambda: _finished(h) >= FREE, timeout=60, what=f"{FREE} jobs to finish")
    # the others of the first half are held at the gate: the readers wait through the fault
    assert _finished(h) == FREE, "jobs behind the gate finished before the fault"
    outage = fault(run)
    run.finish()
    assert all(p.alive() for p in h.procs), "a worker died"
    run.check(figure, label, outage)


def _down_then_up(server: RedisServer, run: Run, how: str) -> float:
    start = time.monotonic()
    server.stop(how)
    run.fault_on.set()
    time.sleep(DOWN)  # the fault itself: the broker stays away this long (not a synchronisation)
    server.start()
    return time.monotonic() - start


@pytest.mark.slow
def test_1000_jobs_across_a_graceful_restart(
    own_redis: Callable[..., RedisServer], make_fault: Callable[..., Fault], figure: Figure
) -> None:
    server = own_redis(appendonly=True)
    _one_run(
        make_fault(server.url),
        server,
        figure,
        "1,000 jobs across a graceful Redis restart (AOF)",
        lambda run: _down_then_up(server, run, "term"),
    )


@pytest.mark.slow
def test_1000_jobs_across_a_sigkill_of_redis(
    own_redis: Callable[..., RedisServer], make_fault: Callable[..., Fault], figure: Figure
) -> None:
    server = own_redis(appendonly=True)  # appendfsync always: nothing acknowledged is lost
    _one_run(
        make_fault(server.url),
        server,
        figure,
        "1,000 jobs across a SIGKILL of Redis (AOF)",
        lambda run: _down_then_up(server, run, "kill"),
    )


@pytest.mark.slow
def test_1000_jobs_across_a_loading_phase(
    own_redis: Callable[..., RedisServer], make_fault: Callable[..., Fault], figure: Figure
) -> None:
    """A graceful shutdown that saves an RDB, then a start that loads it slowly: 8,000 filler
    keys at 500 us each (``key-load-delay``), so clients meet LOADING (and unanswered calls)
    for several seconds; the time until the first PONG is reported."""
    server = own_redis()
    h = make_fault(server.url)
    filler = server.client()
    pipe = filler.pipeline(transaction=False)
    for i in range(8000):
        pipe.set(f"filler:{i}", i)
    pipe.execute()
    loading: list[float] = []

    def fault(run: Run) -> float:
        start = time.monotonic()
        assert server.proc is not None
        try:
            # one try: redis-py's default retries the SHUTDOWN whose connection Redis closed,
            # backing off for 3 s before it gives up on a server that is already gone
            server.client(retry=Retry(NoBackoff(), 0)).shutdown(save=True)
        except redis.exceptions.ConnectionError:
            pass
        server.proc.wait(30)
        run.fault_on.set()
        args = [
            shutil.which("redis-server") or "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(server.port),
            "--dir",
            server.dir,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--key-load-delay",
            "500",
            "--loading-process-events-interval-bytes",
            "1024",
        ]
        server.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        began = time.monotonic()
        wait_for(lambda: _pong(server), timeout=90, interval=0.05, what="Redis to finish loading")
        loading.append(time.monotonic() - began)
        return time.monotonic() - start

    _one_run(
        h, server, figure, "1,000 jobs across a LOADING phase (RDB with key-load-delay)", fault
    )
    figure("LOADING phase", f"{loading[0]:.1f} s from start to the first PONG")
    assert filler.dbsize() >= 8000  # the data set came back


@pytest.mark.slow
def test_a_task_logging_through_an_8s_outage_finishes(
    own_redis: Callable[..., RedisServer], make_fault: Callable[..., Fault], figure: Figure
) -> None:
    """log() and progress() every 50 ms while Redis is away 8 s: the task keeps running, finishes
    successfully, once, and its log has every line in order."""
    server = own_redis(appendonly=True)
    h = make_fault(server.url, TP_FAULT_LEASE="30s")  # the default lease
    h.worker("-c", "2")
    r = h.send("chatty", "done")

    def logged() -> int:
        return int(h.ledger.get(f"{h.prefix}logged:{r.id}") or 0)

    wait_for(lambda: logged() >= 5, what="the task to log")
    down_at = time.monotonic()
    server.stop()
    before = logged()
    # the outage: at least 8 s, and the task kept logging through it
    wait_for(
        lambda: time.monotonic() - down_at >= 8.0 and logged() >= before + 100,
        timeout=60,
        interval=0.1,
        what="8 s of outage with the task logging",
    )
    during = logged() - before
    server.start()
    outage = time.monotonic() - down_at
    back = logged()
    wait_for(lambda: logged() >= back + 5, what="the task to log after the outage")
    # progress reported during the outage was kept, and reporting goes on (the finish clears it)
    wait_for(lambda: (r.progress or (0.0, 0.0))[0] >= back, what="progress after the outage")
    h.open_gate(r.id)
    assert r.get(timeout=60) == "done"
    total = logged()
    lines = r.logs()
    numbered = [int(line.rsplit(" ", 1)[1]) for line in lines if " line " in line]
    assert numbered == list(range(total)), "log lines lost or out of order"
    assert h.runs(r.id) == 1
    h.expect([r])
    h.check_invariants({r.id: "finished"})
    figure(
        "task logging through an outage",
        f"Redis away {outage:.1f} s; {during} log lines + progress buffered during it, all "
        f"{total} lines in the job's log in order; finished once",
    )
