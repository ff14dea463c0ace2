"""Events (issue 16 item 6): ``task.on`` / ``app.on`` fed from the job event stream, and
``taskpipe events`` following it from another process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from polling import wait_for

from taskpipe import TaskFailed, TaskPipe, current_job
from taskpipe.errors import ConfigError
from taskpipe.events import Emitter, JobEvent, parse_event
from taskpipe.testing import running_worker


@pytest.fixture
def listening(app: TaskPipe) -> Iterator[TaskPipe]:
    yield app
    app.events.stop()


def test_task_and_app_events_follow_the_jobs(listening: TaskPipe) -> None:
    app = listening
    got: list[tuple[Any, ...]] = []

    @app.task(channel="ev", retries=1, retry_backoff=0)
    def work(x: int) -> int:
        job = current_job()
        assert job is not None
        job.log(f"working on {x}")
        job.progress(1, 2)
        if x < 0 and job.attempts == 0:
            raise KeyError("again")
        if x == 13:
            raise ValueError("unlucky")
        return x

    @app.task(channel="ev", timeout="0.2s")
    def sleepy() -> None:
        import time

        for _ in range(200):
            time.sleep(0.05)

    work.on("complete", lambda job: got.append(("complete", job.task, job.id)))
    work.on("fail", lambda err, job: got.append(("fail", err.exc_type, err.exc_message, job.id)))
    work.on("retry", lambda err, job: got.append(("retry", err.exc_type, job.id)))
    work.on("log", lambda job, line: got.append(("log", job.id, line.split(" ", 1)[1])))
    work.on("progress", lambda job, cur, total: got.append(("progress", job.id, cur, total)))
    sleepy.on("timeout", lambda job: got.append(("timeout", job.task, job.id)))
    sleepy.on("complete", lambda job: got.append(("never",)))
    every: list[str] = []
    app.on("complete", lambda job: every.append(job.task))
    drained: list[str] = []
    app.on("drain", drained.append)
    app.listen(["ev"])
    with running_worker(app, ["ev"], concurrency=1):
        ok = work.delay(1)
        assert ok.get(timeout=10) == 1
        again = work.delay(-1)
        assert again.get(timeout=10) == -1
        bad = work.delay(13)
        with pytest.raises(TaskFailed):
            bad.get(timeout=10)
        slow = sleepy.delay()
        with pytest.raises(TaskFailed, match="JobTimeout"):
            slow.get(timeout=10)
        wait_for(lambda: any(g[0] == "timeout" for g in got), 10, "the timeout event")
        wait_for(lambda: drained, 10, "a drain event")
    mine = [g for g in got if g[0] != "log" and g[0] != "progress"]
    assert mine == [
        ("complete", work.name, ok.id),
        ("retry", "KeyError", again.id),
        ("complete", work.name, again.id),
        ("retry", "ValueError", bad.id),  # retries=1: one retry, then the failure
        ("fail", "ValueError", "unlucky", bad.id),
        ("timeout", sleepy.name, slow.id),
    ]
    assert ("log", ok.id, "working on 1") in got and ("progress", ok.id, 1.0, 2.0) in got
    assert [g for g in got if g[0] == "log" and g[1] == again.id] == [
        ("log", again.id, "working on -1")
    ] * 2  # one per run
    assert every == [work.name, work.name]
    assert drained and set(drained) == {"ev"}  # (drained between two of the calls, too)


def test_empty_and_drain_fire_once_per_burst_and_channels_are_filtered(listening: TaskPipe) -> None:
    app = listening
    seen: list[tuple[str, str]] = []
    gate = threading.Event()

    @app.task(channel="burst")
    def hold() -> None:
        gate.wait(10)

    @app.task(channel="other")
    def elsewhere() -> None:
        return None

    app.on("empty", lambda ch: seen.append(("empty", ch)))
    app.on("drain", lambda ch: seen.append(("drain", ch)))
    others: list[str] = []
    app.on("complete", lambda job: others.append(job.channel))
    app.listen(["burst"])
    with running_worker(app, ["burst", "other"], concurrency=2):
        elsewhere.delay().get(timeout=10)
        results = [hold.delay() for _ in range(4)]
        gate.set()
        for r in results:
            r.get(timeout=10)
        wait_for(lambda: ("drain", "burst") in seen, 10, "drain of burst")
    assert seen.count(("drain", "burst")) == 1
    assert seen.count(("empty", "burst")) == 1
    assert set(others) == {"burst"}  # the other channel is not followed


def test_outcome_events_can_be_turned_off(listening: TaskPipe) -> None:
    app = listening
    app.job_events = False
    got: list[str] = []

    @app.task(channel="quiet")
    def speak() -> None:
        job = current_job()
        assert job is not None
        job.log("still logged")

    app.on("log", lambda job, line: got.append("log"))
    app.on("complete", lambda job: got.append("complete"))
    app.listen(["quiet"])
    with running_worker(app, ["quiet"]):
        speak.delay().get(timeout=10)
        wait_for(lambda: got, 10, "the log event")
        speak.delay().get(timeout=10)
        wait_for(lambda: len(got) == 2, 10, "the second log event")
    assert got == ["log", "log"]


def test_a_log_line_of_a_finished_job_is_named_by_its_record_at_once(listening: TaskPipe) -> None:
    """A log line seen after its job ended (the envelope is gone): with outcome events off no
    outcome event will name the task, so it waited ``ORPHAN_WAIT`` (2 s) and went out on the
    app only. The job's record names the task: the line goes out at once, on the task too."""
    from taskpipe.testing import run_until_idle

    app = listening
    app.job_events = False

    @app.task(channel="quiet")
    def speak() -> None:
        return None

    r = speak.delay()
    run_until_idle(app, ["quiet"])
    r.get(timeout=10)
    assert app.channel("quiet").get_item(r.id) is None  # ended: only its record is left
    got: list[tuple[str, Any, Any]] = []
    speak.on("log", lambda job, line: got.append(("task", job.task, line)))
    app.on("log", lambda job, line: got.append(("app", job.task, line)))
    app.events.dispatch(JobEvent("log", "quiet", r.id, data="late line"))
    assert got == [("task", speak.name, "late line"), ("app", speak.name, "late line")]


def test_aborted_and_expired_jobs_are_announced(listening: TaskPipe) -> None:
    """An aborted job is announced by the abort (``job_abort.lua``), an expired one by the worker
    that found it past its deadline; both reach ``task.on``, ``app.on`` and carry the error."""
    from datetime import datetime, timedelta, timezone

    app = listening
    started = threading.Event()
    got: list[tuple[Any, ...]] = []

    @app.task(channel="ends")
    def spin() -> None:
        job = current_job()
        assert job is not None
        started.set()
        for _ in range(3000):
            job.check_abort()
            threading.Event().wait(0.01)

    @app.task(channel="ends")
    def late() -> None:
        got.append(("ran",))

    spin.on("aborted", lambda job: got.append(("aborted", job.id, job.task, job.error)))
    late.on("expired", lambda job: got.append(("expired", job.id, job.task, job.error)))
    every: list[str] = []
    app.on("aborted", lambda job: every.append(job.kind))
    app.on("expired", lambda job: every.append(job.kind))
    app.listen(["ends"])
    gone = late.apply_async(expires=datetime.now(timezone.utc) - timedelta(seconds=1))
    with running_worker(app, ["ends"], concurrency=1) as worker:
        wait_for(lambda: any(g[0] == "expired" for g in got), 10, "the expired event")
        running = spin.delay()
        assert started.wait(10)
        running.abort(by="the test")
        wait_for(lambda: any(g[0] == "aborted" for g in got), 10, "the aborted event")
        wait_for(lambda: worker.writer.stats.get("aborted") == 1, 10, "the task to stop")
    assert [g[:3] for g in got] == [
        ("expired", gone.id, late.name),
        ("aborted", running.id, spin.name),
    ]  # each announced once: the worker's own "aborted" count announces nothing
    expired_error, aborted_error = got[0][3], got[1][3]
    assert isinstance(expired_error, TaskFailed) and expired_error.exc_type == "JobExpired"
    assert isinstance(aborted_error, TaskFailed) and aborted_error.exc_type == "JobAborted"
    assert aborted_error.exc_message.startswith("aborted by the test at ")
    assert every == ["expired", "aborted"]


def test_an_abort_is_announced_unless_the_aborting_app_turned_events_off(
    listening: TaskPipe,
) -> None:
    """The abort publishes its event itself, with the job's task, whatever worker holds the
    job (here none: the jobs are claimed by hand); ``job_events = False`` leaves it out."""
    app = listening

    @app.task(channel="byhand")
    def held() -> None:
        return None

    seen: list[tuple[str, str | None, str]] = []
    app.on("aborted", lambda job: seen.append((job.id, job.task, job.data["by"])))
    app.listen(["byhand"])
    quiet, loud = held.delay(), held.delay()
    assert len(app.channel("byhand").claim(2)) == 2
    app.job_events = False
    quiet.abort(by="silent")
    app.job_events = True
    loud.abort(by="loud")  # published after the quiet one's would have been: seen after it
    wait_for(lambda: seen, 10, "the aborted event")
    assert seen == [(loud.id, held.name, "loud")]
    assert quiet.state == loud.state == "aborted"


def test_an_aborted_event_carries_the_attempt_it_ended(listening: TaskPipe) -> None:
    """Like the other outcome events, ``aborted`` says which run it ended (1 for the first),
    counted by ``job_abort.lua`` in the step that ends the job: the same as the record's."""
    app = listening

    @app.task(channel="runs")
    def held() -> None:
        return None

    seen: list[tuple[str, Any]] = []
    app.on("aborted", lambda job: seen.append((job.id, job.data.get("attempt"))))
    app.listen(["runs"])
    first, second = held.delay(), held.delay()
    ch = app.channel("runs")
    claims = {c.id: c.token for c in ch.claim(2)}
    ch.defer(second.id, claims[second.id], 0)  # its first run will be retried: attempt 2 next
    assert [c.id for c in ch.claim(1)] == [second.id]
    first.abort(by="ops")
    second.abort(by="ops")
    wait_for(lambda: len(seen) == 2, 10, "the aborted events")
    assert seen == [(first.id, 1), (second.id, 2)]
    assert [r.record().attempts for r in (first, second)] == [1, 2]


def test_emitter_rules(caplog: pytest.LogCaptureFixture) -> None:
    em = Emitter(("complete",))
    with pytest.raises(ConfigError, match="unknown event"):
        em.on("finished", print)
    with pytest.raises(ConfigError, match="callable"):
        em.on("complete", "print")  # type: ignore[arg-type]
    calls: list[int] = []

    def bad(*_: Any) -> None:
        raise RuntimeError("callback bug")

    em.on("complete", bad)
    em.on("complete", lambda *a: calls.append(len(a)))
    with caplog.at_level(logging.ERROR, logger="taskpipe.events"):
        assert em.emit("complete", 1, 2) == 1
    assert calls == [2] and "callback bug" in caplog.text
    em.off("complete", bad)
    assert em.emit("complete") == 1


def test_parse_event_rejects_malformed_messages() -> None:
    ev = parse_event("ch", "complete", b'id1\0{"task": "t", "attempt": 1}')
    assert ev == JobEvent("complete", "ch", "id1", "t", {"task": "t", "attempt": 1})
    fail = parse_event("ch", "fail", b'id2\0{"task": "t", "error": "KeyError: boom: x"}')
    assert fail is not None and fail.error is not None
    assert (fail.error.exc_type, fail.error.exc_message) == ("KeyError", "boom: x")
    assert parse_event("ch", "log", b"id3\0a line").data == "a line"  # type: ignore[union-attr]
    aborted = parse_event("ch", "aborted", b'id4\0{"task": "t", "error": "JobAborted: by x"}')
    assert aborted is not None and aborted.task == "t" and aborted.error is not None
    assert aborted.error.exc_type == "JobAborted"
    for kind, rest in (
        ("complete", b"id\0not json"),
        ("complete", b"id\0[1]"),
        ("complete", None),
        ("nonsense", b"id\0{}"),
    ):
        assert parse_event("ch", kind, rest) is None


def test_taskpipe_events_prints_the_stream_live(redis_server: Any, prefix: str) -> None:
    app = TaskPipe(broker=redis_server.url, prefix=prefix)

    @app.task(channel="cli")
    def job(x: int) -> int:
        ctx = current_job()
        assert ctx is not None
        ctx.log(f"x={x}")
        if x < 0:
            raise ValueError("negative")
        return x

    env = {**os.environ, "TASKPIPE_BROKER_URL": redis_server.url, "TASKPIPE_PREFIX": prefix}
    env.pop("TASKPIPE_APP", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskpipe",
            "events",
            "-Q",
            "cli",
            "--json",
            "-e",
            "log,complete,fail",
            "--count",
            "4",
            "--timeout",
            "60s",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "following job events of cli" in proc.stderr.readline()
        with running_worker(app, ["cli"], concurrency=1):
            assert job.delay(1).get(timeout=10) == 1
            with pytest.raises(TaskFailed):
                job.delay(-1).get(timeout=10)
            out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        app.close()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    by_id: dict[str, list[str]] = {}
    for e in events:  # in order per job (two jobs' events may interleave)
        assert e["task"] == job.name and e["channel"] == "cli"
        by_id.setdefault(e["id"], []).append(e["event"])
    assert sorted(by_id.values()) == [["log", "complete"], ["log", "fail"]]
    done = next(e for e in events if e["event"] == "complete")
    assert done["data"]["attempt"] == 1 and "duration" in done["data"]
    fail = next(e for e in events if e["event"] == "fail")
    assert fail["data"]["error"] == "ValueError: negative"
    assert len(events) == 4


def test_taskpipe_events_rejects_unknown_kinds(redis_server: Any, prefix: str) -> None:
    from taskpipe.cli import main

    assert main(["events", "--broker", redis_server.url, "-e", "finished", "--count", "1"]) == 2


def test_outcomes_are_announced_only_while_someone_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskpipe.worker import announce

    monkeypatch.setattr(announce, "RECHECK", 0.0)
    app = TaskPipe(broker="memory://announce-followers")  # its own server: no other subscriber
    try:
        announcer = announce.Announcer(app)
        assert not announcer.followed("default")
        pubsub = app.connection.new_client().pubsub()
        pubsub.subscribe(app.channel("default").keys.ch_events)
        assert announcer.followed("default")
        pubsub.close()
        assert not announcer.followed("other")
        listener = app.thoonk.listener().start()  # a pattern subscription counts too
        assert announcer.followed("other")
        listener.stop()
    finally:
        app.close()


def test_taskpipe_events_text_lines() -> None:
    from taskpipe.cli.events_cmd import _text

    line = _text(
        JobEvent(
            "complete",
            "mail",
            "j1",
            "send email",
            {"task": "send email", "attempt": 1, "duration": 0.5},
        )
    )
    assert line.split(" ", 1)[1].split() == [
        "complete",
        "mail/j1",
        "send",
        "email",
        "attempt=1",
        "duration=0.5",
    ]
    log = _text(JobEvent("log", "mail", "j2", None, "2026-12-03T10:00:00 hello"))
    assert log.endswith(" log      mail/j2 - 2026-12-03T10:00:00 hello")


def test_announcing_through_an_outage_is_quiet(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from taskpipe.errors import BrokerUnavailable
    from taskpipe.worker import announce

    app = TaskPipe(broker="memory://announce-outage")
    try:
        announcer = announce.Announcer(app)
        channel = app.channel("default")

        def down(*_: Any) -> Any:
            raise BrokerUnavailable("connection refused")

        monkeypatch.setattr(type(channel), "event_followers", down)
        assert not announcer.followed("default")  # cannot ask: nothing is published
        monkeypatch.setattr(announcer, "followed", lambda _name: True)
        monkeypatch.setattr(type(channel), "announce", down)
        with caplog.at_level(logging.WARNING, logger="taskpipe.worker"):
            for _ in range(5):
                announcer._pending["default"].append(("complete", "j", b"{}"))
                announcer.flush()
        assert len([r for r in caplog.records if "could not announce" in r.message]) == 1
    finally:
        app.close()
