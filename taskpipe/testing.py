"""Helpers for testing code that uses taskpipe, with no Redis server needed.

Three ways, from the most faithful to the fastest (``docs/testing.md``):

- a real worker on the embedded broker: ``memory_app()`` and ``run_until_idle(app)`` below, or
  ``running_worker(app)`` (a worker thread for the duration of a ``with``);
- eager mode: ``TaskPipe(..., eager=True)`` or ``with eager(app) as clock:`` runs every call
  inline, with the same serialization checks, and ``clock.advance("10m")`` runs the delayed
  calls and cron fires that became due;
- the pytest plugin (``taskpipe.pytest_plugin``, loaded automatically once taskpipe is
  installed): fixtures ``taskpipe_app``, ``taskpipe_worker``, ``taskpipe_eager``.

    from taskpipe.testing import memory_app, run_until_idle

    app = memory_app()              # or your own TaskPipe(broker="memory://")

    @app.task
    def add(a, b): return a + b

    def test_add():
        r = add.delay(2, 3)
        run_until_idle(app)         # runs every queued job (and due retries) in this process
        assert r.get(timeout=1) == 5
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from taskpipe.app import TaskPipe
from taskpipe.worker import Worker

__all__ = ["memory_app", "run_until_idle", "eager", "running_worker", "app_channels"]


def memory_app(name: str | None = None, **options: Any) -> TaskPipe:
    """A ``TaskPipe`` on a fresh embedded ``memory://`` broker of its own."""
    return TaskPipe(name, broker=f"memory://{uuid.uuid4().hex}", **options)


def run_until_idle(
    app: TaskPipe,
    channels: Sequence[str] | None = None,
    *,
    concurrency: int = 1,
    max_jobs: int | None = None,
) -> dict[str, int]:
    """Run a worker in this process until the channels are empty (retries due soon included).

    ``channels`` defaults to every channel the app's tasks use. Returns the worker's counts
    (finished, failed, retried, stalled, ...).
    """
    if channels is None:
        channels = app_channels(app)
    worker = Worker(
        app,
        list(channels),
        concurrency=concurrency,
        burst=True,
        max_jobs=max_jobs,
        heartbeat_interval=60.0,
        capture_logs=True,
    )
    worker.run()
    return dict(worker.writer.stats)


def app_channels(app: TaskPipe) -> list[str]:
    """Every channel the app's tasks publish to (and the default channel), sorted."""
    return sorted({t.channel for t in app.tasks.values()} | {app.default_channel})


@contextmanager
def eager(app: TaskPipe) -> Iterator[Any]:
    """Run ``app`` in eager mode inside the ``with`` (a fresh test clock each time); yields the
    clock (``taskpipe.eager.EagerClock``: ``now()``, ``advance("10m")``, ``set(when)``)."""
    before, runner = app.eager, app._eager
    app.eager, app._eager = True, None
    try:
        yield app.clock
    finally:
        app.eager, app._eager = before, runner


@contextmanager
def running_worker(
    app: TaskPipe, channels: Sequence[str] | None = None, *, concurrency: int = 2, **options: Any
) -> Iterator[Worker]:
    """A worker for ``app`` in a thread of this process while the ``with`` runs (stopped and
    joined at the end). Options as for ``Worker``."""
    worker = Worker(
        app,
        list(channels or app_channels(app)),
        concurrency=concurrency,
        heartbeat_interval=options.pop("heartbeat_interval", 60.0),
        **options,
    )
    thread = threading.Thread(target=worker.run, name="taskpipe-test-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop(graceful=True)
        thread.join(30)
        if thread.is_alive():
            worker.stop(graceful=False)
            thread.join(30)
