"""The process pool's fork server (``taskpipe/worker/forkserver.py``): children are forks of a
pre-imported, single-threaded server that never imports the app; the server goes with the pool,
and a server that dies (taking its children with it) is replaced. Without a fork server the
children are fresh interpreters, as before. Real Redis, real processes and signals.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for
from test_worker_process import Harness

from taskpipe.thoonk.claiming import claim_from
from taskpipe.worker import procpool
from taskpipe.worker.outcomes import OutcomeWriter
from taskpipe.worker.procpool import ProcessPool
from taskpipe.worker.runner import Outcome, prepare

pytestmark = pytest.mark.timeout(90)

#: Appended to the harness's task module: who imported it, and a job that waits for its gate.
EXTRA = """

r.rpush(PREFIX + "imported", os.getpid())


@app.task(name="gate")
def gate(tag="gate"):
    _mark(tag)
    r.blpop(PREFIX + "gate", 60)
    return os.getpid()
"""


@pytest.fixture
def harness(
    tmp_path: Path, redis_server: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    h = Harness(tmp_path, redis_server.url, prefix, monkeypatch)
    h.add_source(EXTRA)
    yield h
    h.close()


def _imported(h: Harness) -> list[int]:
    raw: list[bytes] = h.r.lrange(f"{h.prefix}imported", 0, -1)  # type: ignore[assignment]
    return [int(x) for x in raw]


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # state, ppid, ...


def _ppid(pid: int) -> int:
    return int(_stat(pid)[1])


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie has exited)."""
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return False


class _Outcomes:
    """The pool's ``done`` callback: collects outcomes, and waits for them."""

    def __init__(self) -> None:
        self.items: list[Outcome] = []
        self._cond = threading.Condition()

    def __call__(self, outcome: Outcome) -> None:
        with self._cond:
            self.items.append(outcome)
            self._cond.notify_all()

    def wait(self, n: int) -> list[Outcome]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= n, timeout=30), self.items
            return list(self.items)


def _submit(h: Harness, pool: ProcessPool, done: _Outcomes, n: int) -> None:
    """Claim the next ``n`` jobs of ``default`` and hand them to the pool."""
    claims, _, _ = claim_from(h.app.thoonk, [h.app.channel()], n, 30_000, "pool-test")
    assert len(claims) == n
    for c in claims:
        pool.submit(prepare(h.app, c), done)


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's"
)


@linux_only
def test_children_are_forks_of_a_server_that_never_imports_the_app(harness: Harness) -> None:
    h = harness
    before = _imported(h)  # this process loaded the module (twice: load, reload)
    pool = ProcessPool(h.app, 2, h.app_path)
    try:
        server = pool.server_pid
        assert server is not None and server != os.getpid() and _ppid(server) == os.getpid()
        with open(f"/proc/{server}/status") as f:
            assert "Threads:\t1\n" in f.read()  # forks only ever a single-threaded process
        children = pool.pids
        assert len(children) == 2 and all(_ppid(c) == server for c in children)
        # each child imported the app itself; the server never did
        assert sorted(_imported(h)) == sorted([*before, *children])
        jobs = [h.send("record", f"j{i}") for i in range(4)]
        done = _Outcomes()
        _submit(h, pool, done, 4)
        assert sorted(o.value for o in done.wait(4)) == ["j0", "j1", "j2", "j3"]
        assert {h.flag("started", j.id) for j in jobs} <= set(children)
    finally:
        pool.shutdown()
    OutcomeWriter(h.app).write(done.items)
    assert not _alive(server)  # the server goes with its pool
    assert not any(_alive(c) for c in children)
    h.check_ledger()


@linux_only
def test_a_dead_fork_server_takes_its_children_and_is_replaced(harness: Harness) -> None:
    """SIGKILL the server while its child runs a job: the child dies with it (the job is sent
    back, ``worker_lost``), and the next child comes from a new server."""
    h = harness
    running = h.send("gate", "first", max_runs=1)
    after = h.send("record", "after")
    pool = ProcessPool(h.app, 1, h.app_path)
    done = _Outcomes()
    try:
        server, child = pool.server_pid, pool.pids[0]
        assert server is not None
        _submit(h, pool, done, 1)
        assert wait_for(lambda: h.flag("started", running.id), what="the job to start") == child
        os.kill(server, signal.SIGKILL)
        lost = done.wait(1)[0]
        wait_for(lambda: not _alive(child), what="the child to die with its server")
        assert lost.claim.id == running.id and lost.kind == "cancel"
        assert lost.reason == "worker_lost: the child process died (signal 9)"
        _submit(h, pool, done, 1)
        assert done.wait(2)[1].value == "after"
        new_server, new_child = pool.server_pid, pool.pids[0]
        assert new_server not in (None, server) and _ppid(new_child) == new_server
        assert h.flag("started", after.id) == new_child
        assert pool.restarts == 1
    finally:
        pool.shutdown()
    assert h.runs(running.id) == 1 and h.runs(after.id) == 1


def test_without_a_fork_server_children_are_fresh_interpreters(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where fork or descriptor passing is missing the pool starts each child with
    ``python -c`` (a child of the worker itself), and works the same."""
    h = harness
    monkeypatch.setattr(procpool, "available", lambda: False)
    jobs = [h.send("record", f"j{i}") for i in range(3)]
    pool = ProcessPool(h.app, 1, h.app_path)
    done = _Outcomes()
    try:
        assert pool.server_pid is None
        child = pool.pids[0]
        if sys.platform.startswith("linux"):
            assert _ppid(child) == os.getpid()
        _submit(h, pool, done, 3)
        assert [o.value for o in done.wait(3)] == ["j0", "j1", "j2"]
        assert {h.flag("started", j.id) for j in jobs} == {child}
    finally:
        pool.shutdown()
    OutcomeWriter(h.app).write(done.items)
    h.check_ledger()
