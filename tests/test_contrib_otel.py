"""The OpenTelemetry middleware: a span per publish and per run, the run parented on and linked
to the publish span through the job's envelope (SDK in-memory exporter)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from taskpipe import TaskFailed, TaskPipe
from taskpipe.contrib.otel import OpenTelemetryMiddleware
from taskpipe.testing import run_until_idle

Traced = tuple[TaskPipe, InMemorySpanExporter, TracerProvider]


@pytest.fixture
def traced(app: TaskPipe) -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app.use(OpenTelemetryMiddleware(tracer_provider=provider))
    yield app, exporter, provider
    provider.shutdown()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_publish_and_run_spans_are_linked(traced: Traced) -> None:
    app, exporter, provider = traced

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    with provider.get_tracer("test").start_as_current_span("request") as request:
        r = add.delay(2, 3)
    run_until_idle(app)
    assert r.get(timeout=5) == 5
    spans = _by_name(exporter)
    assert set(spans) == {"request", "publish add", "run add"}
    publish, run = spans["publish add"], spans["run add"]
    assert publish.kind == SpanKind.PRODUCER and run.kind == SpanKind.CONSUMER
    # one trace: request -> publish -> run, and the run also links to the publish span
    trace_id = request.get_span_context().trace_id
    assert publish.context.trace_id == run.context.trace_id == trace_id
    assert publish.parent.span_id == request.get_span_context().span_id
    assert run.parent.span_id == publish.context.span_id
    assert [link.context.span_id for link in run.links] == [publish.context.span_id]
    assert publish.attributes["taskpipe.job_id"] == r.id == run.attributes["taskpipe.job_id"]
    assert run.attributes["taskpipe.outcome"] == "success"
    assert run.status.status_code == StatusCode.OK


def test_failed_runs_record_the_error(traced: Traced) -> None:
    app, exporter, _ = traced

    @app.task(name="boom", retries=1, retry_backoff=0)
    def boom() -> None:
        raise KeyError("missing")

    r = boom.delay()
    run_until_idle(app)
    with pytest.raises(TaskFailed):
        r.get(timeout=5)
    runs = [s for s in exporter.get_finished_spans() if s.name == "run boom"]
    assert [(s.attributes or {})["taskpipe.outcome"] for s in runs] == ["retry", "failure"]
    assert [(s.attributes or {})["taskpipe.attempt"] for s in runs] == [1, 2]
    publish = _by_name(exporter)["publish boom"]
    for span in runs:
        assert span.status.status_code == StatusCode.ERROR
        assert [e.name for e in span.events] == ["exception"]
        assert span.parent is not None and span.parent.span_id == publish.context.span_id


def test_a_job_published_without_the_middleware_gets_a_root_run_span(traced: Traced) -> None:
    app, exporter, _ = traced

    @app.task(name="plain")
    def plain() -> int:
        return 1

    app.middleware.remove(next(iter(app.middleware)))
    r = plain.delay()
    app.use(OpenTelemetryMiddleware(tracer_provider=traced[2]))
    run_until_idle(app)
    assert r.get(timeout=5) == 1
    (run,) = exporter.get_finished_spans()
    assert run.name == "run plain" and run.parent is None and not run.links


OTEL_APP = '''
import json, os
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from taskpipe import TaskPipe
from taskpipe.contrib.otel import OpenTelemetryMiddleware


class FileExporter(SpanExporter):
    """One JSON line per span, in a file per process."""

    def export(self, spans):
        path = os.path.join(os.environ["TP_SPANS_DIR"], f"{os.getpid()}.jsonl")
        with open(path, "a") as f:
            for s in spans:
                f.write(json.dumps({
                    "name": s.name, "trace": s.context.trace_id, "span": s.context.span_id,
                    "parent": s.parent.span_id if s.parent else None,
                    "links": [link.context.span_id for link in s.links],
                    "job": (s.attributes or {}).get("taskpipe.job_id"), "pid": os.getpid()}) + "\\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
app = TaskPipe(broker=os.environ["TP_TEST_BROKER"], prefix=os.environ["TP_TEST_PREFIX"])
app.use(OpenTelemetryMiddleware(tracer_provider=provider))


@app.task(name="traced")
def traced(x):
    return x + 1
'''


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_spans_link_across_real_worker_processes(
    tmp_path: Any, redis_server: Any, prefix: str, monkeypatch: pytest.MonkeyPatch, pool: str
) -> None:
    import json
    import os
    import uuid

    from worker_proc import WorkerProcess

    from taskpipe.loading import load_app

    module = f"tpotel_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(OTEL_APP)
    spans_dir = tmp_path / "spans"
    spans_dir.mkdir()
    extra = {
        "TP_TEST_BROKER": redis_server.url,
        "TP_TEST_PREFIX": prefix,
        "TP_SPANS_DIR": str(spans_dir),
    }
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    monkeypatch.syspath_prepend(str(tmp_path))
    app: TaskPipe = load_app(f"{module}:app")
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.pop("TASKPIPE_APP", None)
    worker = WorkerProcess(
        ["worker", "-A", f"{module}:app", "--pool", pool, "-c", "2"], env, tmp_path / "worker.log"
    )
    try:
        results = [app.send("traced", (i,)) for i in range(3)]
        assert [r.get(timeout=60) for r in results] == [1, 2, 3]
        assert worker.stop() == 0
    finally:
        worker.kill()
        app.close()
    spans = [
        json.loads(line) for path in spans_dir.iterdir() for line in path.read_text().splitlines()
    ]
    publishes = {s["job"]: s for s in spans if s["name"] == "publish traced"}
    runs = {s["job"]: s for s in spans if s["name"] == "run traced"}
    assert set(publishes) == set(runs) == {r.id for r in results}
    for job_id, run in runs.items():
        publish = publishes[job_id]
        assert publish["pid"] == os.getpid() and run["pid"] != os.getpid()
        assert run["trace"] == publish["trace"] and run["parent"] == publish["span"]
        assert run["links"] == [publish["span"]]
