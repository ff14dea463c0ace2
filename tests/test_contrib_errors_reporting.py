"""The Sentry-style error reporter: failures reach a ``capture_exception``-like callable."""

from __future__ import annotations

from typing import Any

import pytest

from taskpipe import TaskFailed, TaskPipe
from taskpipe.contrib.errors_reporting import ErrorReporter
from taskpipe.errors import ConfigError
from taskpipe.testing import run_until_idle


class FakeCapture:
    """Records calls the way ``sentry_sdk.capture_exception(error, **scope_kwargs)`` takes them."""

    def __init__(self) -> None:
        self.calls: list[tuple[BaseException, dict[str, Any]]] = []

    def __call__(self, error: BaseException, **scope: Any) -> str:
        self.calls.append((error, scope))
        return "event-id"


def test_final_failures_are_reported_with_context(app: TaskPipe) -> None:
    capture = FakeCapture()
    app.use(ErrorReporter(capture))

    @app.task(name="charge", retries=1, retry_backoff=0)
    def charge(amount: int) -> int:
        if amount < 0:
            raise ValueError(f"bad amount {amount}")
        return amount

    good, bad = charge.delay(5), charge.delay(-1)
    run_until_idle(app)
    assert good.get(timeout=5) == 5
    with pytest.raises(TaskFailed):
        bad.get(timeout=5)
    assert len(capture.calls) == 1  # the retry is not reported, the final failure once
    error, scope = capture.calls[0]
    assert isinstance(error, ValueError) and str(error) == "bad amount -1"
    assert error.__traceback__ is not None  # the real exception, traceback included
    assert scope["tags"] == {
        "taskpipe.task": "charge",
        "taskpipe.channel": "default",
        "taskpipe.final": "yes",
    }
    assert scope["extras"]["job_id"] == bad.id and scope["extras"]["attempt"] == 2


def test_retries_and_plain_capture(app: TaskPipe) -> None:
    plain: list[BaseException] = []
    app.use(ErrorReporter(plain.append, retries=True, with_context=False))

    @app.task(name="flaky", retries=2, retry_backoff=0)
    def flaky() -> None:
        raise RuntimeError("down")

    r = flaky.delay()
    run_until_idle(app)
    with pytest.raises(TaskFailed):
        r.get(timeout=5)
    assert [str(e) for e in plain] == ["down"] * 3  # two retries and the final failure


def test_a_broken_reporter_changes_nothing(app: TaskPipe) -> None:
    def broken(error: BaseException, **_: Any) -> None:
        raise ConnectionError("reporting service down")

    app.use(ErrorReporter(broken))

    @app.task(name="fails")
    def fails() -> None:
        raise ValueError("the real error")

    r = fails.delay()
    run_until_idle(app)
    with pytest.raises(TaskFailed, match="the real error"):
        r.get(timeout=5)
    with pytest.raises(ConfigError):
        ErrorReporter("sentry")  # type: ignore[arg-type]
