"""Recovery after a worker process dies, with default settings: SIGKILL a worker mid-job and
time until another worker has finished the job. Prints each run and the median.

Starts its own redis-server on a free loopback port (never 6379), two real ``taskpipe worker``
processes with the app's defaults (lease, reaper, ``dead_after``), and repeats ``--runs`` times
(default 5): publish a job that sleeps on its first run only, wait until the victim runs it,
SIGKILL the victim, wait for the result (the rescuer reruns it; a rerun returns at once).
With ``--sigstop`` the victim is frozen instead (SIGSTOP): recovery then takes the lease path.

    python benchmarks/recovery.py [--runs 5] [--sigstop]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from taskpipe import TaskPipe  # noqa: E402

APP = textwrap.dedent("""
    import os, time
    from taskpipe import TaskPipe, current_job
    app = TaskPipe(broker=os.environ["REC_BROKER"], prefix=os.environ["REC_PREFIX"])

    @app.task(name="victim_job")
    def victim_job(marker):
        job = current_job()
        app.connection.client.set(marker, os.getpid())
        if job.cancel_count == 0:
            time.sleep(300)
        return os.getpid()
""")


def _redis_server() -> Any:
    """``tests/redis_server.py``'s RedisServer (``run.py`` loads it by path)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import _load_redis_server

    return _load_redis_server()


def _worker(env: dict[str, str], name: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskpipe", "worker", "-A", "recapp:app", "-c", "1", "--name", name],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sigstop", action="store_true", help="freeze the victim instead")
    opts = parser.parse_args()
    server = _redis_server()().start()
    tmp = Path(tempfile.mkdtemp(prefix="taskpipe-recovery-"))
    (tmp / "recapp.py").write_text(APP)
    prefix = f"rec{uuid.uuid4().hex[:6]}:"
    env = {
        **os.environ,
        "REC_BROKER": server.url,
        "REC_PREFIX": prefix,
        "PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    app = TaskPipe(broker=server.url, prefix=prefix)
    r = redis.Redis.from_url(server.url)
    print(f"defaults: lease {app.lease:g} s; signal {'SIGSTOP' if opts.sigstop else 'SIGKILL'}")
    times: list[float] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for run in range(opts.runs):
            victim = _worker(env, f"victim{run}", tmp / f"victim{run}.log")
            procs.append(victim)
            marker = f"{prefix}marker{run}"
            result = app.send("victim_job", (marker,))
            pid = str(victim.pid).encode()
            _wait(lambda m=marker, p=pid: r.get(m) == p, 60, "the victim to start")
            rescuer = _worker(env, f"rescuer{run}", tmp / f"rescuer{run}.log")
            procs.append(rescuer)
            name = f"rescuer{run}"
            _wait(
                lambda n=name: r.zscore(app.thoonk.keys.presence(), n) is not None,
                60,
                "the rescuer to start",
            )
            started = time.monotonic()
            victim.send_signal(signal.SIGSTOP if opts.sigstop else signal.SIGKILL)
            value = result.get(timeout=120)
            elapsed = time.monotonic() - started
            assert value == rescuer.pid, (value, rescuer.pid)
            times.append(elapsed)
            print(f"run {run + 1}: finished elsewhere {elapsed:.2f} s after the signal", flush=True)
            for p in (victim, rescuer):
                p.kill()
                p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        app.close()
        server.cleanup()
    print(
        f"median of {len(times)}: {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f})"
    )


if __name__ == "__main__":
    main()
