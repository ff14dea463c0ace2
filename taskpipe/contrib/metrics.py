"""Prometheus metrics for a taskpipe app and, optionally, the worker running in this process.

``serve_metrics(app, port, worker=w)`` starts an HTTP endpoint (``/metrics``, on 127.0.0.1 by
default) backed by a registry of its own (never ``prometheus_client``'s global one). Needs the
``metrics`` extra: ``pip install 'taskpipe[metrics]'``.

Read from Redis at scrape time (the same numbers from every process; use ``max by (channel)``
when several workers expose them):

- ``taskpipe_jobs_published_total{channel}``, ``taskpipe_jobs_finished_total{channel}``,
  ``taskpipe_jobs_failed_total{channel}``: the channel's lifetime counters;
- ``taskpipe_queue_depth{channel,state}``: jobs ``available``, ``delayed``, ``waiting``, ``claimed``, ``stalled``;
- ``taskpipe_channel_paused{channel}``: 1 while paused;
- ``taskpipe_workers``: live workers; ``taskpipe_channel_workers{channel}``: those consuming it;
- ``taskpipe_broker_up``: 0 when the last scrape could not read Redis.

Counted by this process's worker (only with ``worker=``):

- ``taskpipe_worker_jobs_total{channel,outcome}``: ``finished``, ``failed``, ``retried``,
  ``stalled``, ``cancelled``, ``lease_lost`` (outcome refused: the lease had expired);
- ``taskpipe_lease_expired_total{channel,action}``: expired leases this worker's reaper sent back
  (``requeued``) or stalled (``stalled``);
- ``taskpipe_task_duration_seconds{task}``: histogram of how long tasks ran;
- ``taskpipe_worker_running_jobs``, ``taskpipe_worker_concurrency``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from taskpipe.errors import ConfigError
from taskpipe.states import QUEUED_STATES, WorkerEvent

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from taskpipe.app import TaskPipe
    from taskpipe.thoonk.job import Claim
    from taskpipe.worker.runner import Outcome

__all__ = [
    "serve_metrics",
    "build_registry",
    "render",
    "TaskpipeCollector",
    "WorkerMetrics",
    "MetricsServer",
    "DURATION_BUCKETS",
    "WAIT_BUCKETS",
    "DEPTH_STATES",
]

log = logging.getLogger("taskpipe.metrics")

#: Buckets of ``taskpipe_task_duration_seconds`` (seconds).
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    float("inf"),
)
#: Buckets of ``taskpipe_job_wait_seconds`` (seconds, publish to claim).
WAIT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    float("inf"),
)
#: The states ``taskpipe_queue_depth`` reports.
DEPTH_STATES = QUEUED_STATES

_JOB_EVENTS: tuple[WorkerEvent, ...] = (
    "finished",
    "failed",
    "timeout",
    "retried",
    "stalled",
    "cancelled",
    "lease_lost",
    "aborted",
    "expired",
)
#: final outcomes counted per task by ``taskpipe_task_outcomes``
_TASK_OUTCOMES = {
    "finished": "succeeded",
    "failed": "failed",
    "timeout": "timeout",
    "aborted": "aborted",
    "expired": "expired",
}
_REAP_EVENTS: dict[WorkerEvent, str] = {
    "lease_expired": "requeued",
    "lease_expired_stalled": "stalled",
}


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "Prometheus metrics need the prometheus-client package: pip install 'taskpipe[metrics]'"
        ) from None


class TaskpipeCollector:
    """A Prometheus collector that reads channel counters and depths from Redis at scrape time."""

    def __init__(self, app: TaskPipe, worker: Any = None) -> None:
        self.app = app
        self.worker = worker

    def describe(self) -> list[Metric]:
        """Nothing up front, so registering never touches Redis."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (called by the registry on each scrape)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("taskpipe_broker_up", "1 if the last scrape could read Redis.")
        try:
            families = list(self._from_redis(CounterMetricFamily, GaugeMetricFamily))
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even with Redis down
            log.warning("metrics: cannot read the broker: %s", exc)
            families = []
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
        yield up
        yield from families
        if self.worker is not None:
            running = GaugeMetricFamily(
                "taskpipe_worker_running_jobs",
                "Jobs this worker is running now (prefetched ones not included).",
            )
            held = len(self.worker.running)
            running.add_metric([], getattr(self.worker, "executing_count", held))
            prefetched = GaugeMetricFamily(
                "taskpipe_worker_prefetched_jobs",
                "Jobs this worker claimed ahead, waiting to start.",
            )
            prefetched.add_metric([], getattr(self.worker, "prefetched_count", 0))
            yield prefetched
            conc = GaugeMetricFamily(
                "taskpipe_worker_concurrency", "How many jobs this worker runs at once."
            )
            conc.add_metric([], self.worker.concurrency)
            yield running
            yield conc

    def _from_redis(self, counter: Any, gauge: Any) -> Iterator[Metric]:
        from taskpipe.errors import FeedDoesNotExist, WrongFeedType
        from taskpipe.inspection import Inspector

        inspector = Inspector(self.app)
        names = set(inspector.channels())
        if self.worker is not None:
            names.update(self.worker.channel_names)
        published = counter(
            "taskpipe_jobs_published", "Jobs published to the channel.", labels=["channel"]
        )
        finished = counter(
            "taskpipe_jobs_finished", "Jobs finished (succeeded or failed).", labels=["channel"]
        )
        failed = counter("taskpipe_jobs_failed", "Jobs finished as failed.", labels=["channel"])
        depth = gauge(
            "taskpipe_queue_depth", "Jobs in the channel by state.", labels=["channel", "state"]
        )
        paused = gauge(
            "taskpipe_channel_paused", "1 while the channel is paused.", labels=["channel"]
        )
        shard_depth = gauge(
            "taskpipe_shard_depth",
            "Jobs by state in each shard of a sharded channel.",
            labels=["channel", "shard", "state"],
        )
        oldest = gauge(
            "taskpipe_oldest_waiting_seconds",
            "Age of the oldest available job (since it was published; 0 when none waits).",
            labels=["channel"],
        )
        for name in sorted(names):
            try:
                counts = inspector.channel_counts(name)
            except (FeedDoesNotExist, WrongFeedType):
                continue  # deleted meanwhile
            published.add_metric([name], counts["published_total"])
            finished.add_metric([name], counts["finished_total"])
            failed.add_metric([name], counts["failed_total"])
            for state in DEPTH_STATES:
                depth.add_metric([name, state], counts[state])
            paused.add_metric([name], 1 if counts["paused"] else 0)
            for shard in counts.get("shards", []):
                for state in DEPTH_STATES:
                    shard_depth.add_metric([name, shard["channel"], state], shard[state])
            oldest.add_metric([name], _oldest_waiting_s(inspector, name))
        live = inspector.workers()
        workers = gauge("taskpipe_workers", "Live workers (heartbeating).")
        workers.add_metric([], len(live))
        per_channel = gauge(
            "taskpipe_channel_workers", "Live workers consuming the channel.", labels=["channel"]
        )
        consumers: dict[str, int] = {name: 0 for name in names}
        for info in live:
            for name in str(info.get("channels", "")).split(","):
                if name:
                    consumers[name] = consumers.get(name, 0) + 1
        for name, n in sorted(consumers.items()):
            per_channel.add_metric([name], n)
        yield from (
            published,
            finished,
            failed,
            depth,
            paused,
            shard_depth,
            oldest,
            workers,
            per_channel,
        )


def _oldest_waiting_s(inspector: Any, name: str) -> float:
    """Seconds since the oldest available job of ``name`` was published (the next one to run
    is at the right end of ``feed.ids``), by the server clock; 0 when none waits."""
    times = [inspector.channel(s).oldest_waiting_ms() for s in inspector.shards(name)]
    published = min((t for t in times if t is not None), default=None)  # a sharded: every shard
    if published is None:
        return 0.0
    return max(0.0, (int(inspector.server_time_ms()) - float(published)) / 1000.0)


class WorkerMetrics:
    """Counters and the run-time histogram fed by a worker's outcome listener."""

    def __init__(self, registry: CollectorRegistry, worker: Any) -> None:
        from prometheus_client import Counter, Histogram

        self.worker = worker
        self.jobs = Counter(
            "taskpipe_worker_jobs",
            "Job outcomes this worker wrote.",
            ["channel", "outcome"],
            registry=registry,
        )
        self.expired = Counter(
            "taskpipe_lease_expired",
            "Expired leases this worker's reaper requeued or stalled.",
            ["channel", "action"],
            registry=registry,
        )
        self.task_outcomes = Counter(
            "taskpipe_task_outcomes",
            "Final job outcomes per task (succeeded, failed, timeout).",
            ["task", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "taskpipe_task_duration_seconds",
            "How long tasks ran.",
            ["task"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.wait = Histogram(
            "taskpipe_job_wait_seconds",
            "How long jobs waited from publish to claim (broker clock), per channel.",
            ["channel"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        # each labelled child, fetched once: ``labels()`` costs several times the ``inc`` or
        # ``observe`` it precedes, and these run for every job
        self._children: dict[tuple[Any, ...], Any] = {}
        for name in worker.channel_names:  # show zeros before the first job
            self.wait.labels(name)
            for event in _JOB_EVENTS:
                self.jobs.labels(name, event)
            for action in _REAP_EVENTS.values():
                self.expired.labels(name, action)
        self._attached = False

    def on_event(self, channel: str, event: str, outcome: Outcome | None, n: int) -> None:
        """The ``OutcomeWriter`` listener: count the event and time the task."""
        if event in _REAP_EVENTS:
            self.expired.labels(channel, _REAP_EVENTS[event]).inc(n)
            return
        self._child(self.jobs, channel, event).inc(n)
        if outcome is None:
            return
        name = (
            outcome.task.name
            if outcome.task is not None
            else (outcome.envelope.task if outcome.envelope is not None else "")
        )
        if event in _TASK_OUTCOMES:
            self._child(self.task_outcomes, name, _TASK_OUTCOMES[event]).inc(n)
        if outcome.duration is not None:
            self._child(self.duration, name).observe(outcome.duration)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept for the next job with the same labels."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_claims(self, claims: list[Claim]) -> None:
        """The worker's claim listener: each job's wait, publish to claim (both broker clock:
        no clock skew between hosts). A job with no publish time (``published_ms`` 0: put by an
        original Thoonk client) is not observed. The label is the claim's channel, as for
        ``taskpipe_worker_jobs`` (a sharded channel's shards each have their own)."""
        for claim in claims:
            if 0 < claim.published_ms <= claim.claimed_ms:
                wait_s = (claim.claimed_ms - claim.published_ms) / 1000.0
                self._child(self.wait, claim.channel).observe(wait_s)

    def attach(self) -> None:
        """Start listening to the worker's outcome writer (and its claims)."""
        listeners = getattr(self.worker.writer, "listeners", None)
        if listeners is None:
            raise ConfigError("this worker's outcome writer has no listeners hook")
        if not self._attached:
            listeners.append(self.on_event)
            claim_listeners = getattr(self.worker, "claim_listeners", None)
            if claim_listeners is not None:
                claim_listeners.append(self.on_claims)
            self._attached = True

    def detach(self) -> None:
        """Stop listening."""
        if self._attached:
            try:
                self.worker.writer.listeners.remove(self.on_event)
            except ValueError:
                pass
            try:
                getattr(self.worker, "claim_listeners", []).remove(self.on_claims)
            except ValueError:
                pass
            self._attached = False


def build_registry(
    app: TaskPipe, worker: Any = None
) -> tuple[CollectorRegistry, WorkerMetrics | None]:
    """A fresh registry with the app's collector (and the worker's metrics, attached)."""
    _require_prometheus()
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskpipeCollector(app, worker))
    wm = None
    if worker is not None:
        inner = CollectorRegistry(auto_describe=False)  # its counters, without _created series
        wm = WorkerMetrics(inner, worker)
        registry.register(_WithoutCreated(inner))
        wm.attach()
    return registry, wm


class _WithoutCreated:
    """Re-exports a registry's metric families without their ``*_created`` samples (a counter's
    creation time: noise for dashboards, and one more series per label set)."""

    def __init__(self, inner: CollectorRegistry) -> None:
        self.inner = inner

    def describe(self) -> list[Metric]:
        """Nothing up front (``auto_describe`` is off)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The inner families, ``_created`` samples left out."""
        from prometheus_client.metrics_core import Metric as MetricFamily

        for family in self.inner.collect():
            copy = MetricFamily(family.name, family.documentation, family.type, family.unit)
            copy.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield copy


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in the Prometheus text format: ``(body, content_type)``."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsServer:
    """A running metrics endpoint; ``close()`` stops it and detaches from the worker."""

    def __init__(
        self,
        registry: CollectorRegistry,
        server: Any,
        thread: threading.Thread,
        worker_metrics: WorkerMetrics | None,
    ) -> None:
        self.registry = registry
        self.worker_metrics = worker_metrics
        self._server = server
        self._thread = thread
        self.host: str = server.server_address[0]
        self.port: int = int(server.server_address[1])

    @property
    def url(self) -> str:
        """The metrics page's URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving."""
        if self.worker_metrics is not None:
            self.worker_metrics.detach()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(
    app: TaskPipe, port: int, worker: Any = None, host: str = "127.0.0.1"
) -> MetricsServer:
    """Serve Prometheus metrics for ``app`` (and ``worker``) on ``http://host:port/metrics``.

    ``port=0`` picks a free port (read it from the returned server's ``port``). The server runs
    on a daemon thread; ``ConfigError`` if prometheus-client is missing or the port is bad.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"metrics port must be an int in 0..65535, got {port!r}")
    registry, wm = build_registry(app, worker)
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        if wm is not None:
            wm.detach()
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from None
    handle = MetricsServer(registry, server, thread, wm)
    log.info("Prometheus metrics on %s", handle.url)
    return handle
