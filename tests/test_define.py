"""Kinetik's definition API (issue 16 item 7): ``define()``, ``create()``, ``configure()`` and
the automatic job log lines."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from taskpipe import TaskFailed, TaskPipe
from taskpipe.errors import ConfigError, DurationError
from taskpipe.lifecycle import LifecycleLog
from taskpipe.task import Task
from taskpipe.testing import run_until_idle

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"


def _lines(app: TaskPipe, channel: str, job_id: str) -> list[str]:
    return [line.decode() for line in app.channel(channel).logs(job_id)]


def test_define_builds_the_same_task_as_the_decorator(app: TaskPipe) -> None:
    def send(email: str, subject: str = "hi") -> str:
        return f"{email}:{subject}"

    task = (
        app.define("send email")
        .tag("notifications")
        .desc("Sends one email.")
        .timeout("1m")
        .retries(2)
        .option(retry_backoff="5s")
        .action(send)
    )
    assert isinstance(task, Task) and app.get_task("send email") is task
    assert task.name == "send email" and task.channel == "notifications"
    assert task.description == "Sends one email."
    other = TaskPipe(broker="memory://define-twin")
    try:
        twin = other.task(
            name="send email", channel="notifications", timeout="1m", retries=2, retry_backoff="5s"
        )(send)
        assert twin.options == task.options and type(twin) is type(task)
    finally:
        other.close()
    untagged = app.define("plain").action(lambda: 1)
    assert untagged.channel == app.default_channel


def test_define_rejects_bad_input(app: TaskPipe) -> None:
    with pytest.raises(ConfigError):
        app.define("")
    with pytest.raises(ConfigError):
        app.define("x").tag("")
    with pytest.raises(DurationError):
        app.define("x").timeout("soon")
    with pytest.raises(ConfigError):
        app.define("x").action("not a function")  # type: ignore[arg-type]
    app.define("taken").action(lambda: 1)
    with pytest.raises(ConfigError, match="already registered"):
        app.define("taken").action(lambda: 2)


def test_defined_tasks_get_automatic_log_lines(app: TaskPipe) -> None:
    def welcome(name: str) -> str:
        return f"hello {name}"

    def broken(name: str) -> None:
        raise ValueError(f"no {name}")

    def sleepy(name: str) -> None:
        for _ in range(200):
            time.sleep(0.05)

    app.define("welcome").tag("mail").action(welcome)
    app.define("broken").tag("mail").retries(1).option(retry_backoff=0).action(broken)
    app.define("sleepy").tag("mail").timeout("0.2s").action(sleepy)

    @app.task(channel="mail")
    def undefined() -> int:  # made with @app.task: no automatic lines
        return 1

    ok = app.create("welcome", {"name": "ford"})
    bad = app.create("broken", {"name": "arthur"})
    slow = app.create("sleepy", {"name": "zaphod"})
    quiet = undefined.delay()
    run_until_idle(app, ["mail"])
    assert ok.get(timeout=5) == "hello ford"
    for r in (bad, slow):
        with pytest.raises(TaskFailed):
            r.get(timeout=5)
    assert quiet.get(timeout=5) == 1 and _lines(app, "mail", quiet.id) == []

    def texts(job_id: str) -> list[str]:
        lines = _lines(app, "mail", job_id)
        assert all(re.match(STAMP + " taskpipe: ", line) for line in lines), lines
        return [line.split(" taskpipe: ", 1)[1] for line in lines]

    ok_lines = texts(ok.id)
    assert ok_lines[:2] == ["created (task welcome, channel mail)", "started (attempt 1)"]
    assert len(ok_lines) == 3 and re.fullmatch(r"completed in \d+\.\d{3}s", ok_lines[2])
    bad_lines = texts(bad.id)
    assert bad_lines[0] == "created (task broken, channel mail)"
    assert bad_lines[1:3] == ["started (attempt 1)", "attempt 1 raised ValueError: no arthur"]
    assert bad_lines[3].startswith("will retry in ")
    assert bad_lines[4:] == ["started (attempt 2)", "failed: ValueError: no arthur"]
    slow_lines = texts(slow.id)
    assert slow_lines[:2] == ["created (task sleepy, channel mail)", "started (attempt 1)"]
    assert slow_lines[2].startswith("timed out: task sleepy ran past its time limit")
    assert slow_lines[3].startswith("failed: JobTimeout")
    assert len(slow_lines) == 4


def test_lifecycle_log_for_every_task(app: TaskPipe) -> None:
    app.use(LifecycleLog())

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    r = add.delay(1, 2)
    run_until_idle(app)
    assert r.get(timeout=5) == 3
    lines = [line.decode().split(" taskpipe: ", 1)[1] for line in app.channel().logs(r.id)]
    assert lines[:2] == [f"created (task {add.name}, channel default)", "started (attempt 1)"]
    assert lines[2].startswith("completed in ")


def test_create_takes_data_and_a_delay(app: TaskPipe) -> None:
    got: list[dict[str, Any]] = []
    app.define("record").tag("k").action(lambda **data: got.append(data))
    now = app.create("record", {"a": 1})
    later = app.create("record", {"b": 2}, "1h")
    assert later.state == "delayed"
    run_until_idle(app, ["k"])
    assert now.get(timeout=5) is None and got == [{"a": 1}]
    with pytest.raises(ConfigError, match="dict"):
        app.create("record", [1, 2])  # type: ignore[arg-type]


def test_configure_runs_only_in_its_environment(
    app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    monkeypatch.setenv("TASKPIPE_ENV", "production")
    assert app.configure("production", lambda a: ran.append(f"prod {a is app}")) is app
    app.configure("development", lambda: ran.append("dev"))
    app.configure(lambda: ran.append("always"))

    only_in_production: Callable[[Callable[[TaskPipe], None]], Callable[[TaskPipe], None]] = (
        app.configure("production")
    )

    @only_in_production
    def setup(a: TaskPipe) -> None:
        ran.append("decorated")

    assert ran == ["prod True", "always", "decorated"]
    monkeypatch.delenv("TASKPIPE_ENV")
    app.configure("production", lambda: ran.append("not now"))
    assert ran[-1] == "decorated"
    with pytest.raises(ConfigError):
        app.configure(3, lambda: None)
