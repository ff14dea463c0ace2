"""Helpers for testing code that uses taskpipe, with no Redis server needed.

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

import uuid
from collections.abc import Sequence
from typing import Any

from taskpipe.app import TaskPipe
from taskpipe.worker import Worker

__all__ = ["memory_app", "run_until_idle"]


def memory_app(name: str | None = None, **options: Any) -> TaskPipe:
    """A ``TaskPipe`` on a fresh embedded ``memory://`` broker of its own."""
    return TaskPipe(name, broker=f"memory://{uuid.uuid4().hex}", **options)


def run_until_idle(app: TaskPipe, channels: Sequence[str] | None = None, *,
                   concurrency: int = 1, max_jobs: int | None = None) -> dict[str, int]:
    """Run a worker in this process until the channels are empty (retries due soon included).

    ``channels`` defaults to every channel the app's tasks use. Returns the worker's counts
    (finished, failed, retried, stalled, ...).
    """
    if channels is None:
        names = {t.channel for t in app.tasks.values()} | {app.default_channel}
        channels = sorted(names)
    worker = Worker(app, list(channels), concurrency=concurrency, burst=True, max_jobs=max_jobs,
                    heartbeat_interval=60.0, capture_logs=True)
    worker.run()
    return dict(worker.writer.stats)
