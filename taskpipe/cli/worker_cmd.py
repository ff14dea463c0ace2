"""``taskpipe worker``: run a worker process."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, cast

import click

from taskpipe.cli.main import app_option, cli, finite_float, load_app, loglevel_option
from taskpipe.thoonk.keys import cluster_name

if TYPE_CHECKING:
    from taskpipe.worker.settings import PoolKind

__all__ = ["worker"]


def channels_from_env() -> list[str] | None:
    """Channels from ``TASKPIPE_QUEUES`` or Kinetik's ``QUEUE`` (comma-separated), if set."""
    value = os.environ.get("TASKPIPE_QUEUES") or os.environ.get("QUEUE")
    return [c.strip() for c in value.split(",") if c.strip()] if value else None


def unknown_channels(app: Any, channels: list[str]) -> list[str]:
    """The channels of ``-Q`` that no task or cron entry of the app uses and that do not exist
    in Redis yet: most likely typos (``-Q hihg``). Empty if Redis cannot be asked now."""
    known = {app.default_channel, *app.raw_channels}
    known |= {t.channel for t in app.tasks.values()}
    known |= {e.channel for e in app.crons if getattr(e, "channel", None)}
    known |= set(app.sharding.counts)  # a sharded name is never in Redis: its shards are
    suspects = [c for c in channels if c not in known]
    if not suspects:
        return []
    try:
        existing = set(app.thoonk.names())
    except Exception:  # noqa: BLE001 - Redis down: the worker reports it; no check now
        return []
    return [c for c in suspects if c not in existing and cluster_name(c) not in existing]


@cli.command()
@app_option()
@click.option(
    "-Q",
    "--queues",
    "queues",
    metavar="HIGH,DEFAULT,...",
    help="Channels in strict priority order (env TASKPIPE_QUEUES or QUEUE). "
    "Default: the app's default channel.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs run at once (default: 4 x CPUs for threads, CPUs for processes).",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=None,
    help="Jobs claimed ahead of free slots, so a finished slot starts the next job "
    "without a round trip (default: 2 x concurrency; 0 for long jobs shared "
    "fairly between workers).",
)
@click.option(
    "--pool",
    type=click.Choice(["thread", "process", "async"]),
    default="thread",
    show_default=True,
    help="thread: I/O-bound; process: CPU-bound, hard timeouts; "
    "async: async def tasks on one event loop.",
)
@click.option("--burst", is_flag=True, help="Exit once the channels are empty.")
@click.option(
    "--max-jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Exit after claiming this many jobs.",
)
@loglevel_option()
@click.option(
    "--log-tracebacks",
    is_flag=True,
    help="Log a failed job's traceback with its ERROR line (else at DEBUG).",
)
@click.option("--name", "-n", default=None, help="Worker name (default host.pid.random).")
@click.option(
    "--lease", default=None, help="Lease of a claimed job, e.g. 30s (default: the app's)."
)
@click.option(
    "--grace",
    default="30s",
    show_default=True,
    help="On SIGTERM/SIGINT, how long running jobs may take before they go back to the queue.",
)
@click.option(
    "--dead-after",
    default="1s",
    show_default=True,
    help="A worker whose connections to Redis all closed (its process died) is dead "
    "after this long: its jobs go back to the queue then, not after their lease. "
    "0 turns this off.",
)
@click.option(
    "--weighted",
    is_flag=True,
    help="Weighted channel order instead of strict priority, so low channels can't starve.",
)
@click.option("--beat", is_flag=True, help="Also run the cron scheduler in this process.")
@click.option(
    "--metrics-port", type=int, default=None, help="Serve Prometheus metrics on 127.0.0.1:PORT."
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.01, max=60),
    callback=finite_float,
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest idle block before looking at the channels again. taskpipe puts wake "
    "a worker at once; jobs put by legacy Thoonk clients (which write no wake-up "
    "marker) are seen within this interval.",
)
def worker(
    app_path: str,
    queues: str | None,
    concurrency: int | None,
    prefetch: int | None,
    pool: str,
    burst: bool,
    max_jobs: int | None,
    loglevel: str,
    name: str | None,
    lease: str | None,
    grace: str,
    dead_after: str,
    weighted: bool,
    beat: bool,
    metrics_port: int | None,
    poll_interval: float,
    log_tracebacks: bool = False,
) -> None:
    """Run a worker: claim jobs from the channels in strict order and run them."""
    from taskpipe.worker import Worker

    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = load_app(app_path)
    channels = (
        [c.strip() for c in queues.split(",") if c.strip()] if queues else channels_from_env()
    )
    for typo in unknown_channels(app, channels or []):
        logging.getLogger("taskpipe.worker").warning(
            "channel %r is used by no task of this app and does not exist yet (a typo?); "
            "consuming it anyway. The app's channels: %s",
            typo,
            ", ".join(sorted({app.default_channel, *(t.channel for t in app.tasks.values())})),
        )
    w = Worker(
        app,
        channels,
        concurrency=concurrency,
        prefetch=prefetch,
        pool=cast("PoolKind", pool),
        burst=burst,
        max_jobs=max_jobs,
        name=name,
        lease=lease,
        grace=grace,
        weighted=weighted,
        beat=beat,
        app_path=app_path,
        dead_after=dead_after,
        max_block=poll_interval,
    )
    if log_tracebacks:
        w.writer.log_tracebacks = True
    if metrics_port is not None:
        from taskpipe.contrib.metrics import serve_metrics

        serve_metrics(app, metrics_port, worker=w)
    sys.exit(w.run())
