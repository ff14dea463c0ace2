"""Types that mean something (issue 19 item 5): one validator for counted limits, the job
states and outcome kinds, ``DurationLike`` and ``WorkerSettings``.

Task layer, on ``memory://``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any, get_args

import pytest
from worker_helpers import burst

from taskpipe import ConfigError, DurationError, JobState, TaskPipe, Worker, WorkerSettings
from taskpipe.inspection import LIST_STATES, Inspector
from taskpipe.limits import check_count, count_problem
from taskpipe.results import STATES
from taskpipe.states import (
    CHANNEL_STATES,
    DONE_STATES,
    LISTABLE_STATES,
    QUEUED_STATES,
    OutcomeKind,
    ResultOutcome,
    WorkerEvent,
)
from taskpipe.worker.runner import option_problem
from taskpipe.worker.settings import WorkerOptions

pytestmark = pytest.mark.task_layer

BAD_COUNTS = (-1, "3", 1.5, True, False, None)


@pytest.fixture
def mem() -> Iterator[TaskPipe]:
    app = TaskPipe("types", broker="memory://")
    yield app
    app.close()


# one validator for retries / max_cancels -------------------------------------------------------
def test_check_count() -> None:
    assert check_count("retries", 0) == 0 and check_count("retries", 7) == 7
    for bad in BAD_COUNTS:
        assert count_problem(bad) is not None
        with pytest.raises(ConfigError, match=r"retries must be a non-negative int, got "):
            check_count("retries", bad)


@pytest.mark.parametrize("key", ["retries", "max_cancels"])
@pytest.mark.parametrize("bad", [-1, "3", 1.5, True, False])
def test_app_and_task_refuse_the_same_values(key: str, bad: object) -> None:
    options: dict[str, Any] = {key: bad}
    with pytest.raises(ConfigError, match=f"{key} must be a non-negative int"):
        TaskPipe(broker="memory://", **options)
    app = TaskPipe(broker="memory://")
    with pytest.raises(ConfigError, match=f"{key} must be a non-negative int"):
        app.task(name="t.bad", **options)(lambda: None)
    assert app.tasks == {}
    app.close()


@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize("bad", [-1, "3", True])
def test_calls_refuse_the_same_values(bad: object, eager: bool) -> None:
    app = TaskPipe(broker="memory://", eager=eager)

    @app.task(name="t.noop")
    def noop() -> None: ...

    with pytest.raises(ConfigError, match="retries must be a non-negative int"):
        noop.apply_async(retries=bad)
    if not eager:
        assert app.channel().counts()["published_total"] == 0
    app.close()


def test_good_counts_are_kept() -> None:
    app = TaskPipe(broker="memory://", retries=2, max_cancels=0)
    assert (app.retries, app.max_cancels) == (2, 0)
    task = app.task(retries=0, max_cancels=5)(lambda: None)
    assert (task.options.retries, task.options.max_cancels) == (0, 5)
    app.close()


def test_worker_refuses_a_bool_count_from_any_producer() -> None:
    assert option_problem({"retries": 2, "max_cancels": 0}) is None
    assert option_problem({"retries": True}) == "retries=True: not an int >= 0 (got bool)"
    assert option_problem({"max_cancels": -2}) == "max_cancels=-2: not an int >= 0"


# JobState and the outcome kinds ----------------------------------------------------------------
def test_job_state_is_its_wire_string() -> None:
    assert [s.value for s in JobState] == [
        "delayed",
        "waiting",
        "available",
        "claimed",
        "stalled",
        "finished",
        "failed",
        "aborted",
        "expired",
        "timeout",
        "retracted",
        "unknown",
    ]
    wire: str = "finished"  # (a str typed as str: mypy rejects comparing two literals)
    assert JobState.FINISHED == wire and isinstance(JobState.FINISHED, str)
    assert JobState("stalled") is JobState.STALLED
    assert f"{JobState.CLAIMED}" == str(JobState.CLAIMED) == "claimed"
    assert json.dumps({"state": JobState.FAILED}) == '{"state": "failed"}'
    assert {"delayed": 1}[JobState.DELAYED] == 1  # hashes as its string
    assert STATES == tuple(JobState)
    # failed, timeout, aborted and expired are read from a finished job's stored result,
    # retracted from a record (task layer)
    assert set(CHANNEL_STATES) == set(JobState) - {
        JobState.FAILED,
        JobState.TIMEOUT,
        JobState.ABORTED,
        JobState.EXPIRED,
        JobState.RETRACTED,
    }
    assert set(LISTABLE_STATES) == set(QUEUED_STATES) | set(DONE_STATES)
    assert LIST_STATES == LISTABLE_STATES


def test_a_job_reports_each_state_as_a_job_state(mem: TaskPipe) -> None:
    @mem.task(name="t.ok")
    def ok() -> int:
        return 1

    @mem.task(name="t.bad")
    def bad() -> None:
        raise ValueError("no")

    seen: list[JobState] = []
    later = ok.apply_async(delay="1h")
    good, failing = ok.delay(), bad.delay()
    seen += [later.state, good.state, later.info().state]
    assert seen == [JobState.DELAYED, JobState.AVAILABLE, JobState.DELAYED]
    claim = mem.channel().claim(1)[0]
    assert mem.channel().info(claim.id).state is JobState.CLAIMED
    mem.channel().stall(claim.id, token=claim.token, reason="parked")
    assert mem.channel().info(claim.id).state is JobState.STALLED
    mem.channel().retry(claim.id)
    burst(mem)
    assert good.state is JobState.FINISHED and good.ready() and good.successful()
    assert failing.state is JobState.FAILED and failing.ready() and failing.failed()
    assert mem.AsyncResult("no-such-job").state is JobState.UNKNOWN
    assert all(type(s) is JobState for s in seen)


def test_inspection_rows_and_outcomes_are_typed(mem: TaskPipe) -> None:
    @mem.task(name="t.ok")
    def ok() -> int:
        return 1

    @mem.task(name="t.bad")
    def bad() -> None:
        raise ValueError("no")

    ok.delay(), bad.delay()
    burst(mem)
    insp = Inspector(mem)
    finished = insp.list_jobs("default", "finished").rows
    failed = insp.list_jobs("default", JobState.FAILED).rows
    assert {r.state for r in finished} == {JobState.FINISHED}
    assert [r.state for r in failed] == [JobState.FAILED]
    assert sorted(r.outcome for r in finished) == ["failed", "ok"]
    assert all(r.outcome in get_args(ResultOutcome) for r in finished)
    assert insp.job_detail("default", failed[0].id).state is JobState.FAILED
    with pytest.raises(ConfigError, match="unknown state 'done'"):
        insp.list_jobs("default", "done")
    with pytest.raises(ConfigError, match="unknown state 'unknown'"):
        insp.list_jobs("default", JobState.UNKNOWN)


def test_worker_outcome_kinds_and_events() -> None:
    kinds = set(get_args(OutcomeKind))
    assert kinds == {
        "success",
        "failure",
        "retry",
        "stall",
        "cancel",
        "release",
        "aborted",
        "expired",
    }
    events = set(get_args(WorkerEvent))
    assert {"finished", "failed", "retried", "stalled", "cancelled", "lease_lost"} <= events


# WorkerSettings --------------------------------------------------------------------------------
def test_worker_settings_and_keywords_are_the_same(mem: TaskPipe) -> None:
    by_settings = Worker(
        mem,
        ["a"],
        settings=WorkerSettings(concurrency=3, lease="40s", grace=5, prefetch=0, name="w1"),
    )
    by_keywords = Worker(mem, ["a"], concurrency=3, lease="40s", grace=5, prefetch=0, name="w1")
    for w in (by_settings, by_keywords):
        assert (w.concurrency, w.lease_s, w.grace, w.prefetch, w.name) == (3, 40.0, 5.0, 0, "w1")
    assert by_settings.settings == by_keywords.settings
    # keywords win over settings=
    both = Worker(mem, settings=WorkerSettings(concurrency=3, burst=True), concurrency=5)
    assert (both.concurrency, both.burst) == (5, True)
    assert both.settings == WorkerSettings(concurrency=5, burst=True)
    # the defaults are derived as before
    plain = Worker(mem)
    assert plain.settings == WorkerSettings()
    assert plain.lease_s == mem.lease and plain.prefetch == 2 * plain.concurrency
    assert plain.channel_names == [mem.default_channel]


def test_worker_settings_fields_match_the_keywords() -> None:
    fields = {f.name for f in dataclasses.fields(WorkerSettings)}
    assert fields == set(WorkerOptions.__annotations__)
    with pytest.raises(dataclasses.FrozenInstanceError):
        WorkerSettings().concurrency = 2  # type: ignore[misc]


def test_worker_refuses_an_unknown_keyword_by_name(mem: TaskPipe) -> None:
    options: dict[str, Any] = {"concurency": 4}
    with pytest.raises(TypeError, match="unexpected keyword argument.*concurency"):
        Worker(mem, **options)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"concurrency": -1}, ConfigError, "concurrency"),
        ({"concurrency": True}, ConfigError, "concurrency"),
        ({"prefetch": -1}, ConfigError, "prefetch"),
        ({"prefetch": 1.5}, ConfigError, "prefetch"),
        ({"pool": "fork"}, ConfigError, "unknown pool 'fork'"),
        ({"lease": "soon"}, DurationError, "invalid duration 'soon'"),
        # the app refuses a lease under 50ms; a worker's own lease must too (with lease 0 every
        # claim expired at once: the reaper requeued running jobs until they stalled worker_lost)
        ({"lease": 0}, ConfigError, "lease must be at least 50ms"),
        ({"lease": "10ms"}, ConfigError, "lease must be at least 50ms"),
        ({"grace": -1}, DurationError, "negative"),
        ({"dead_after": "1m1m"}, DurationError, "1m1m"),
        # these ran and failed later with raw errors: max_block NaN a ResponseError from BLPOP
        # ('taskpipe worker --poll-interval nan' printed its traceback), inf an OverflowError,
        # '1s' a TypeError; max_jobs=1.5 a ResponseError; batch='x' / name=5 a TypeError;
        # weights an unchecked ValueError from random.choices
        ({"max_block": float("nan")}, ConfigError, "max_block"),
        ({"max_block": float("inf")}, ConfigError, "max_block"),
        ({"max_block": 0}, ConfigError, "max_block"),
        ({"max_block": -1}, ConfigError, "max_block"),
        ({"max_block": "1s"}, ConfigError, "max_block"),
        ({"heartbeat_interval": float("nan")}, ConfigError, "heartbeat_interval"),
        ({"heartbeat_interval": 0}, ConfigError, "heartbeat_interval"),
        ({"max_jobs": 1.5}, ConfigError, "max_jobs"),
        ({"max_jobs": 0}, ConfigError, "max_jobs"),
        ({"batch": "x"}, ConfigError, "batch"),
        ({"name": 5}, ConfigError, "name"),
        ({"name": "a\0b"}, ConfigError, "name"),
        ({"weights": [float("nan")]}, ConfigError, "weights"),
        ({"weights": [-1, 2]}, ConfigError, "weights"),
        ({"weights": [0, 0]}, ConfigError, "weights"),
    ],
)
def test_bad_settings_are_refused_when_made(
    mem: TaskPipe, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        WorkerSettings(**options)
    with pytest.raises(error, match=match):
        Worker(mem, **options)


def test_a_worker_runs_with_settings(mem: TaskPipe) -> None:
    @mem.task(name="t.double")
    def double(x: int) -> int:
        return 2 * x

    results = [double.delay(i) for i in range(5)]
    worker = Worker(mem, settings=WorkerSettings(burst=True, concurrency=2, heartbeat_interval=60))
    assert worker.run() == 0
    assert [r.get(timeout=5) for r in results] == [0, 2, 4, 6, 8]
