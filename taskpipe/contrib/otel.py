"""OpenTelemetry tracing middleware: a span per publish and per run, linked across processes.

    from taskpipe.contrib.otel import OpenTelemetryMiddleware
    app.use(OpenTelemetryMiddleware())          # pip install 'taskpipe[otel]'

- ``before_publish`` starts a ``PRODUCER`` span ``publish <task>`` (a child of the caller's
  current span, if any) and injects its context into the job's headers (the envelope's
  ``headers`` option, W3C ``traceparent`` / ``tracestate`` with the default propagator);
  ``after_publish`` ends it with the job id and channel.
- ``before_run`` extracts that context on the worker and starts a ``CONSUMER`` span
  ``run <task>`` whose parent is the publish span and which also carries a link to it, so
  the run shows inside the publisher's trace and backends that draw links show the hop.
  ``after_run`` ends it: status OK on success, ERROR (with the exception recorded) on a
  failure, a retry or a timeout; the outcome is the ``taskpipe.outcome`` attribute.

``tracer_provider`` defaults to the global one; ``propagator`` to the global text-map
propagator. A job published without the middleware (or by a legacy client) gets a run span
with no parent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from taskpipe.middleware import Message, Middleware, RunningJob

if TYPE_CHECKING:
    from taskpipe.results import AsyncResult

__all__ = ["OpenTelemetryMiddleware"]

_SPAN = "otel.span"
_ERROR = "otel.error"


class OpenTelemetryMiddleware(Middleware):
    """Traces publishes and runs (see the module docstring)."""

    def __init__(self, tracer_provider: Any = None, propagator: Any = None) -> None:
        self.tracer = trace.get_tracer("taskpipe", tracer_provider=tracer_provider)
        self.propagator = propagator or propagate.get_global_textmap()

    def before_publish(self, message: Message) -> None:
        """Start the publish span and put its context in the job's headers."""
        span = self.tracer.start_span(
            f"publish {message.task}",
            kind=SpanKind.PRODUCER,
            attributes={"taskpipe.task": message.task, "messaging.system": "taskpipe"},
        )
        message.state[_SPAN] = span
        self.propagator.inject(message.headers, context=trace.set_span_in_context(span))

    def after_publish(self, message: Message, result: AsyncResult[Any]) -> None:
        """End the publish span with the job's id and channel."""
        span = message.state.pop(_SPAN, None)
        if span is not None:
            span.set_attribute("taskpipe.job_id", result.id)
            span.set_attribute("messaging.destination.name", result.channel)
            span.end()

    def before_run(self, job: RunningJob) -> None:
        """Start the run span, parented on (and linked to) the publish span."""
        parent = self.propagator.extract(job.headers) if job.headers else otel_context.Context()
        publish = trace.get_current_span(parent).get_span_context()
        links = [Link(publish)] if publish.is_valid else []
        span = self.tracer.start_span(
            f"run {job.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "taskpipe.task": job.name,
                "taskpipe.job_id": job.id,
                "messaging.destination.name": job.channel,
                "taskpipe.attempt": job.attempt,
                "messaging.system": "taskpipe",
            },
        )
        job.state[_SPAN] = span

    def on_timeout(self, job: RunningJob, exc: BaseException) -> None:
        """Record the timeout on the run span."""
        self._record(job, exc)

    def on_retry(self, job: RunningJob, exc: BaseException, delay: float) -> None:
        """Record the error of a run that will be retried."""
        self._record(job, exc)
        span = job.state.get(_SPAN)
        if span is not None:
            span.set_attribute("taskpipe.retry_delay", delay)

    def on_failure(self, job: RunningJob, exc: BaseException) -> None:
        """Record the error of a job that failed for good."""
        self._record(job, exc)

    def _record(self, job: RunningJob, exc: BaseException) -> None:
        span = job.state.get(_SPAN)
        if span is not None and not job.state.get(_ERROR):
            job.state[_ERROR] = True
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))

    def after_run(self, job: RunningJob, outcome: Any) -> None:
        """End the run span."""
        span = job.state.pop(_SPAN, None)
        if span is None:
            return
        span.set_attribute("taskpipe.outcome", str(outcome.kind))
        if outcome.kind == "success":
            span.set_status(Status(StatusCode.OK))
        span.end()
