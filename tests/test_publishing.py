"""taskpipe.publishing: the app's publishing, the Publisher protocol and the one option planner.

Runs on ``memory://`` (task layer); the envelope a worker reads is decoded from the channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from taskpipe import ConfigError, TaskPipe
from taskpipe.errors import PayloadTooLarge
from taskpipe.publishing import (
    ENVELOPE_OPTIONS,
    PUT_OPTIONS,
    SEND_OPTIONS,
    Publisher,
    Publishing,
    plan_send,
)
from taskpipe.serialization import decode_envelope
from taskpipe.task import Signature, Task, TaskOptions

pytestmark = pytest.mark.task_layer


@pytest.fixture
def mem() -> Iterator[TaskPipe]:
    app = TaskPipe("pub", broker="memory://")
    yield app
    app.close()


def _envelope(app: TaskPipe, channel: str, job_id: str) -> Any:
    """The envelope a worker would read for that job."""
    item = app.channel(channel).get_item(job_id)
    assert item is not None
    return decode_envelope(item)


def test_app_delegates_to_its_publishing(mem: TaskPipe) -> None:
    assert isinstance(mem.publishing, Publishing)
    publisher: Publisher = mem  # the app is a Publisher (mypy checks this line)
    assert publisher.default_channel == "default"

    @mem.task(name="t.add")
    def add(a: int, b: int) -> int:
        return a + b

    result = add.delay(2, 3)
    env = _envelope(mem, "default", result.id)
    assert (env.task, env.args, env.kwargs) == ("t.add", (2, 3), {})
    # the positional-call encoder is cached by the publisher, not written onto the Task
    assert not hasattr(add, "_encoder")
    first = mem.publishing.encoder_for(add)
    assert mem.publishing.encoder_for(add) is first


def test_encoder_cache_follows_the_payload_limit(mem: TaskPipe) -> None:
    @mem.task(name="t.echo")
    def echo(x: str) -> str:
        return x

    echo.delay("x" * 100)
    mem.max_payload = 64  # a changed limit must not be served by the cached encoder
    with pytest.raises(PayloadTooLarge, match="limit of 64 bytes"):
        echo.delay("x" * 100)
    mem.max_payload = 1 << 20
    echo.delay("x" * 100_000)


def test_options_become_envelope_fields_and_put_parameters(mem: TaskPipe) -> None:
    @mem.task(name="t.opt", channel="low")
    def opt() -> None:
        return None

    after = Signature("t.after", (1,), {}, {"channel": "x"})
    result = opt.apply_async(
        retries=2,
        timeout="1m",
        hard_timeout=90,
        retry_backoff="2s",
        result_ttl="1h",
        on_finish=after,
        id="job-1",
        channel="high",
        priority=True,
    )
    assert (result.id, result.channel) == ("job-1", "high")
    env = _envelope(mem, "high", "job-1")
    assert env.options == {
        "retries": 2,
        "timeout": 60.0,
        "hard_timeout": 90.0,
        "retry_backoff": 2.0,
        "result_ttl": 3600.0,
        "on_finish": after.to_dict(),
    }


def test_plan_send_checks_every_option() -> None:
    assert SEND_OPTIONS == frozenset(ENVELOPE_OPTIONS) | PUT_OPTIONS
    plan = plan_send({})
    assert (plan.envelope, plan.callback, plan.job_id, plan.delay_ms, plan.priority) == (
        {},
        None,
        None,
        0,
        None,
    )
    assert plan_send({"delay": "2s"}).delay_ms == 2000
    now = 1_000_000.0
    eta = datetime.fromtimestamp(now + 5, tz=timezone.utc)
    assert plan_send({"eta": eta}, now=now).delay_ms == 5000
    # issue 16: an int is a numbered priority (0 first .. 9 last), never coerced to bool
    assert plan_send({"priority": 1}).priority == 1
    assert plan_send({"priority": True}).priority is True
    with pytest.raises(ConfigError, match="priority"):
        plan_send({"priority": 10})
    cb = plan_send({"on_finish": print})
    assert cb.callback is print and cb.envelope == {}
    with pytest.raises(ConfigError, match="unknown publishing option.*bogus"):
        plan_send({"bogus": 1})
    with pytest.raises(ConfigError, match="retries"):
        plan_send({"retries": -1})
    with pytest.raises(ConfigError, match="job id"):
        plan_send({"id": ""})
    with pytest.raises(ConfigError, match="job id"):
        plan_send({"id": "a\0b"})
    with pytest.raises(ConfigError, match="on_finish"):
        plan_send({"on_finish": 3})


class FakePublisher:
    """A Publisher that is not a TaskPipe: records what Task/Signature ask of it."""

    default_channel = "fake"

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = []

    def send(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        _task: Any = None,
        **options: Any,
    ) -> Any:
        self.sent.append((name, tuple(args), dict(kwargs or {}), options))
        return name

    def publish_many(self, signatures: Iterable[Signature], batch: int = 500) -> Any:
        return [self.send(s.task, s.args, s.kwargs, **s.options) for s in signatures]

    def publish_calls(self, task: Task[Any], calls: Iterable[Any], batch: int = 500) -> Any:
        return [self.send(task.name, c if isinstance(c, tuple) else (c,)) for c in calls]

    def AsyncResult(self, id: str, channel: str | None = None) -> Any:  # noqa: N802
        return (id, channel)


def test_task_and_signature_need_only_the_protocol() -> None:
    pub = FakePublisher()
    publisher: Publisher = pub

    def ident(x: Any) -> Any:
        return x

    task: Task[Any] = Task(publisher, ident, "f.t", TaskOptions())
    assert task.channel == "fake"
    task.delay(1)
    task.apply_async((2,), priority=True)
    task.map([3, (4,)])
    task.map([5], channel="c")
    task.s(6).delay(7)
    assert task.AsyncResult("j") == ("j", "fake")
    assert [(n, a, o) for n, a, _, o in pub.sent] == [
        ("f.t", (1,), {}),
        ("f.t", (2,), {"priority": True}),
        ("f.t", (3,), {}),
        ("f.t", (4,), {}),
        ("f.t", (5,), {"channel": "c"}),
        ("f.t", (6, 7), {}),
    ]
