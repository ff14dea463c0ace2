"""Job channels under concurrency (real Redis): exactly-once claims across threads and processes,
and a reaper running flat out never takes back a job whose lease is still valid."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

import pytest

from taskpipe.connection import Connection
from taskpipe.thoonk.job import FinishRequest, JobChannel, PutRequest, wait_and_claim
from taskpipe.thoonk.thoonk import Thoonk

TOTAL = 10_000
BATCH = 50
LEASE = 30_000

# One worker loop, shared by the threads (imported below) and the subprocesses (run as text).
WORKER = textwrap.dedent("""
    from taskpipe.thoonk.job import FinishRequest, wait_and_claim


    def work(thoonk, channel, name, done_key, batch, lease):
        got = []
        while True:
            done = thoonk.client.get(done_key)  # read before claiming: then empty means drained
            claims = wait_and_claim(thoonk, [channel], batch, lease, name, 0.2)
            if claims:
                codes = channel.finish_many([FinishRequest(c.id, c.token) for c in claims])
                if codes != [1] * len(claims):
                    raise AssertionError(f"finish refused: {codes}")
                got += [c.id for c in claims]
            elif done:
                return got
""")

PROCESS_MAIN = WORKER + textwrap.dedent("""
    import sys
    from taskpipe.thoonk.thoonk import Thoonk

    url, prefix, name, tag = sys.argv[1:5]
    thoonk = Thoonk(url, prefix=prefix)
    channel = thoonk.job(name)
    thoonk.client.incr(prefix + "test.ready")
    ids = work(thoonk, channel, tag, prefix + "test.done", 50, 30000)
    sys.stdout.write("\\n".join(ids))
""")

_ns: dict[str, object] = {}
exec(WORKER, _ns)  # noqa: S102 - the same loop the subprocesses run
work = cast(Callable[..., list[str]], _ns["work"])


@pytest.fixture
def thoonk(real_conn: Connection, prefix: str) -> Thoonk:
    return Thoonk(connection=real_conn, prefix=prefix)


@pytest.mark.timeout(90)
def test_threads_and_processes_claim_each_job_exactly_once(thoonk: Thoonk, prefix: str) -> None:
    channel = thoonk.job("crowd")
    url = thoonk.connection.url
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS_MAIN, url, prefix, "crowd", f"p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def thread_main(tag: str) -> None:
        try:
            results[tag] = work(thoonk, channel, tag, prefix + "test.done", BATCH, LEASE)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=thread_main, args=(f"t{i}",)) for i in range(8)]
    try:
        deadline = time.monotonic() + 30
        while int(thoonk.client.get(prefix + "test.ready") or 0) < 2:
            for p in procs:
                assert p.poll() is None, p.stderr.read().decode() if p.stderr else ""
            assert time.monotonic() < deadline, "worker processes did not start"
            time.sleep(0.05)
        for t in threads:
            t.start()
        put: list[str] = []
        for start in range(0, TOTAL, 250):  # published while the workers are claiming
            out = channel.put_many(
                [PutRequest(f"job {i}".encode()) for i in range(start, start + 250)]
            )
            assert all(created for _, created in out)
            put += [jid for jid, _ in out]
        thoonk.client.set(prefix + "test.done", "1")
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        thoonk.client.set(prefix + "test.done", "1")
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert errors == []
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err.decode()
    from_procs = [line.decode() for out, _ in outputs for line in out.splitlines() if line]
    from_threads = [jid for ids in results.values() for jid in ids]
    everything = from_threads + from_procs
    dupes = [jid for jid, n in Counter(everything).items() if n > 1]
    assert dupes == []
    assert len(everything) == TOTAL
    assert set(everything) == set(put)
    assert from_threads and from_procs  # both kinds of worker took part
    counts = channel.counts()
    assert (counts["available"], counts["claimed"], counts["delayed"], counts["stalled"]) == (
        0,
        0,
        0,
        0,
    )
    assert (counts["finished"], counts["finished_total"], counts["published_total"]) == (
        TOTAL,
        TOTAL,
        TOTAL,
    )
    assert channel.get_ids() == []


@pytest.mark.timeout(60)
def test_reaper_never_takes_back_a_valid_lease(thoonk: Thoonk) -> None:
    channel: JobChannel = thoonk.job("reaped")
    n = 3000
    put = [jid for jid, _ in channel.put_many([PutRequest(b"x") for _ in range(n)])]
    stop = threading.Event()
    reaper_calls = 0
    reaped: list[tuple[list[str], list[str]]] = []
    claimed: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def reaper() -> None:
        nonlocal reaper_calls
        try:
            while not stop.is_set():
                out = channel.reap(max_cancels=1)
                reaper_calls += 1
                if out != ([], []):
                    reaped.append(out)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def worker(tag: str) -> None:
        try:
            while True:
                claims = wait_and_claim(thoonk, [channel], 20, LEASE, tag, None)
                if not claims:
                    return
                with lock:
                    claimed.extend(c.id for c in claims)
                codes = channel.finish_many([FinishRequest(c.id, c.token) for c in claims])
                assert codes == [1] * len(claims)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    r = threading.Thread(target=reaper)
    r.start()
    workers = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(45)
    stop.set()
    r.join(10)
    assert errors == []
    assert reaper_calls > 0
    assert reaped == []
    assert len(claimed) == n and set(claimed) == set(put)
    counts = channel.counts()
    assert (counts["available"], counts["claimed"], counts["finished"]) == (0, 0, n)
    assert sum(int(v) for v in thoonk.client.hvals(channel.keys.cancelled)) == 0

    # the same reaper does take back a lease that has expired
    jid = channel.put(b"short")
    channel.claim(1, lease_ms=1)
    deadline = time.monotonic() + 5
    while True:
        requeued, _ = channel.reap()
        if requeued:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert requeued == [jid]
