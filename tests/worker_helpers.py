"""In-process worker helpers shared by the task-layer tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from taskpipe import TaskPipe, Worker


def burst(app: TaskPipe, channels: list[str] | None = None, **options: Any) -> dict[str, int]:
    """Run a worker in this thread until the channels are empty; return its counts."""
    options.setdefault("concurrency", 4)
    options.setdefault("max_block", 0.1)
    w = Worker(app, channels, burst=True, heartbeat_interval=60.0, **options)
    w.run()
    return dict(w.writer.stats)


@contextmanager
def worker_running(
    app: TaskPipe, channels: list[str] | None = None, **options: Any
) -> Iterator[Worker]:
    """A worker consuming in a background thread for the duration of the block."""
    options.setdefault("concurrency", 4)
    options.setdefault("max_block", 0.2)
    w = Worker(app, channels, heartbeat_interval=60.0, **options)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        yield w
    finally:
        w.stop()
        t.join(15)
        assert not t.is_alive(), "worker did not stop"
