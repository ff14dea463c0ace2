"""Outcome isolation: a job whose outcome cannot be written ends once, as failed with the reason,
and the rest of its batch is written normally (issue 17, item 1).

Each case runs the poison job with innocent neighbours in one burst worker, on real Redis and
``memory://``, and checks: the poison job ran at most once and its result is a ``TaskFailed``
naming the real reason; every neighbour ran exactly once and succeeded; nothing is left claimed.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from worker_helpers import burst

from taskpipe import TaskFailed, TaskPipe
from taskpipe.errors import BrokerUnavailable
from taskpipe.serialization import encode_envelope
from taskpipe.thoonk.job import JobChannel
from taskpipe.worker.outcomes import OutcomeWriter
from taskpipe.worker.runner import Outcome

pytestmark = pytest.mark.timeout(60)


class Ledger:
    """Counts executions per tag (in-process worker, so a plain locked Counter does)."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.lock = threading.Lock()

    def mark(self, tag: str) -> None:
        with self.lock:
            self.runs[tag] += 1


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def tasks(app: TaskPipe, ledger: Ledger) -> Iterator[dict[str, Any]]:
    @app.task(name="big")
    def big(n: int) -> str:
        ledger.mark("big")
        return "x" * n

    @app.task(name="pad")
    def pad(value: str, extra: str) -> int:
        ledger.mark("pad")
        return len(value) + len(extra)

    @app.task(name="record")
    def record(tag: str) -> str:
        ledger.mark(tag)
        return tag

    @app.task(name="opaque")
    def opaque() -> object:
        ledger.mark("opaque")
        return threading.Lock()  # no serializer can store this

    yield {"big": big, "pad": pad, "record": record, "opaque": opaque}


def _neighbours(tasks: dict[str, Any], n: int = 6, first: int = 0) -> list[Any]:
    return [tasks["record"].delay(f"n{i}") for i in range(first, first + n)]


def _check_neighbours(results: list[Any], ledger: Ledger) -> None:
    assert [r.get(timeout=10) for r in results] == [f"n{i}" for i in range(len(results))]
    assert all(ledger.runs[f"n{i}"] == 1 for i in range(len(results))), ledger.runs


def _failure(result: Any) -> TaskFailed:
    with pytest.raises(TaskFailed) as info:
        result.get(timeout=10)
    return info.value


def _nothing_claimed(app: TaskPipe, *channels: str) -> None:
    for name in channels or (app.default_channel,):
        counts = app.channel(name).counts()
        assert counts.get("claimed", 0) == 0 and counts.get("stalled", 0) == 0, counts


def test_follow_up_over_max_payload_fails_the_parent_once(
    app: TaskPipe, tasks: dict[str, Any], ledger: Ledger
) -> None:
    before = _neighbours(tasks, 3)
    parent = tasks["big"].apply_async((300_000,), on_finish=tasks["pad"].s("y" * 300_000))
    after = _neighbours(tasks, 3, first=3)
    stats = burst(app, concurrency=8)
    exc = _failure(parent)
    assert exc.exc_type == "PayloadTooLarge"
    assert "on_finish" in str(exc) and "over the limit" in str(exc)
    assert ledger.runs["big"] == 1 and ledger.runs["pad"] == 0
    _check_neighbours(before + after, ledger)
    assert stats.get("lease_lost", 0) == 0 and stats["outcome_errors"] == 1, stats
    _nothing_claimed(app)


def test_unserializable_result_fails_the_job_once(
    app: TaskPipe, tasks: dict[str, Any], ledger: Ledger
) -> None:
    neighbours = _neighbours(tasks)
    job = tasks["opaque"].delay()
    burst(app, concurrency=8)
    exc = _failure(job)
    assert exc.exc_type == "SerializationError"
    assert ledger.runs["opaque"] == 1
    _check_neighbours(neighbours, ledger)
    _nothing_claimed(app)


def test_a_task_that_calls_sys_exit_fails_once(app: TaskPipe, ledger: Ledger) -> None:
    @app.task(name="quits")
    def quits() -> None:
        ledger.mark("quits")
        raise SystemExit(3)  # a script turned into a task still calls sys.exit()

    job = quits.delay()
    burst(app, concurrency=2)
    assert ledger.runs["quits"] == 1, ledger.runs
    assert _failure(job).exc_type == "SystemExit"
    _nothing_claimed(app)


def _put_raw(app: TaskPipe, job_id: str, options: dict[str, Any], task: str = "record") -> None:
    item = encode_envelope(task, ("poison",), {}, options, serializer=app.serializer)
    app.channel(app.default_channel).put(item, id=job_id)


@pytest.mark.parametrize(
    "options, named",
    [
        ({"result_ttl": "banana"}, "result_ttl='banana'"),
        ({"on_finish": "x"}, "on_finish='x'"),
        ({"on_finish": {"task": "pad", "args": "nope"}}, "on_finish args"),
        ({"retries": "abc"}, "retries='abc'"),
        ({"retries": -1}, "retries=-1"),
        ({"timeout": "zzz"}, "timeout='zzz'"),
        ({"max_cancels": 1.5}, "max_cancels=1.5"),
    ],
)
def test_raw_envelope_with_a_bad_option_fails_before_running(
    app: TaskPipe,
    tasks: dict[str, Any],
    ledger: Ledger,
    options: dict[str, Any],
    named: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = _neighbours(tasks, 3)
    _put_raw(app, "poison-1", options)
    after = _neighbours(tasks, 3, first=3)
    with caplog.at_level(logging.ERROR, logger="taskpipe.worker"):
        stats = burst(app, concurrency=8)
    exc = _failure(app.AsyncResult("poison-1"))
    assert exc.exc_type == "ConfigError" and named in str(exc), str(exc)
    assert any("poison-1" in r.getMessage() and named in r.getMessage() for r in caplog.records)
    assert ledger.runs["poison"] == 0  # validated on claim: it never ran
    _check_neighbours(before + after, ledger)
    assert stats.get("cancelled", 0) == 0 and stats.get("lease_lost", 0) == 0, stats
    _nothing_claimed(app)


def test_huge_result_ttl_is_capped_not_a_broken_batch(
    app: TaskPipe, tasks: dict[str, Any], ledger: Ledger
) -> None:
    neighbours = _neighbours(tasks)
    _put_raw(app, "forever", {"result_ttl": 1e300})
    burst(app, concurrency=8)
    assert app.AsyncResult("forever").get(timeout=10) == "poison"
    assert ledger.runs["poison"] == 1
    _check_neighbours(neighbours, ledger)
    _nothing_claimed(app)


def test_a_batched_finish_refused_is_written_job_by_job(
    app: TaskPipe, tasks: dict[str, Any], ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finish Redis refuses for one job (here injected: a script error whenever a batch holds
    the poison job's result) must not sink its batch: the batch is written one by one."""
    real = JobChannel.finish_many

    def refusing(self: JobChannel, requests: Any, followup: Any = None) -> list[int]:
        if any(b"poison" in r.result for r in requests):
            raise redis.exceptions.ResponseError("ERR injected: this write is refused")
        return real(self, requests, followup)

    monkeypatch.setattr(JobChannel, "finish_many", refusing)
    results = [tasks["record"].delay(t) for t in ("n0", "n1", "poison", "n2", "n3")]
    stats = burst(app, concurrency=8)
    exc = _failure(results[2])
    assert exc.exc_type == "ResponseError" and "injected" in str(exc)
    assert ledger.runs["poison"] == 1
    _check_neighbours([results[i] for i in (0, 1)], ledger)
    assert [results[i].get(timeout=10) for i in (3, 4)] == ["n2", "n3"]
    assert ledger.runs["n2"] == ledger.runs["n3"] == 1
    assert stats["outcome_errors"] == 1 and stats.get("lease_lost", 0) == 0, stats
    _nothing_claimed(app)


def test_a_write_retried_after_a_broker_error_applies_each_outcome_once(
    app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finisher retries a batch after a broker error: what was applied before the error
    (here a stall) is not applied again (which would be refused and miscounted as lease_lost)."""
    ch = app.channel(app.default_channel)
    for i in range(3):
        ch.put(encode_envelope("record", (f"n{i}",), {}, {}, serializer=app.serializer), id=f"j{i}")
    claims = ch.claim(3, 60_000, "w")
    outcomes = [
        Outcome("stall", claims[0], reason="by test"),
        Outcome("success", claims[1], value=1),
        Outcome("success", claims[2], value=2),
    ]
    writer = OutcomeWriter(app)
    real = JobChannel.finish_many
    blips = [BrokerUnavailable("blip")]

    def flaky(self: JobChannel, requests: Any, followup: Any = None) -> list[int]:
        if blips:
            raise blips.pop()
        return real(self, requests, followup)

    monkeypatch.setattr(JobChannel, "finish_many", flaky)
    with pytest.raises(BrokerUnavailable):
        writer.write(outcomes)
    writer.write(outcomes)
    assert dict(writer.stats) == {"stalled": 1, "finished": 2}
    assert ch.stalled_ids() == ["j0"] and app.AsyncResult("j2").get(timeout=5) == 2


def test_a_job_whose_failure_cannot_be_stored_either_is_stalled(
    app: TaskPipe, tasks: dict[str, Any], ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last resort: every finish of the poison job is refused (injected), so it is stalled with
    the reason; never left to its lease, never re-run; its neighbours finish."""
    results = [tasks["record"].delay(t) for t in ("n0", "poison", "n1")]
    poison_id = results[1].id
    real = JobChannel.finish_many

    def refusing(self: JobChannel, requests: Any, followup: Any = None) -> list[int]:
        if any(r.id == poison_id for r in requests):
            raise redis.exceptions.ResponseError("ERR injected: refused")
        return real(self, requests, followup)

    monkeypatch.setattr(JobChannel, "finish_many", refusing)
    stats = burst(app, concurrency=8)
    ch = app.channel(app.default_channel)
    assert ch.stalled_ids() == [poison_id]
    assert ch.stall_reason(poison_id).startswith("outcome_error: ResponseError: ERR injected")
    assert ledger.runs["poison"] == 1
    assert [results[i].get(timeout=10) for i in (0, 2)] == ["n0", "n1"]
    assert ledger.runs["n0"] == ledger.runs["n1"] == 1
    assert stats["stalled"] == 1 and stats["finished"] == 2 and stats.get("lease_lost", 0) == 0


def test_a_socket_fault_while_sending_a_job_back_is_retried_not_a_failure(
    app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raw ``OSError`` from the socket (redis-py leaves e.g. EBADF on a closed descriptor
    unwrapped) is a connection fault, not the outcome's: the write is retried and the job is
    sent back, never failed with "outcome could not be written" (seen in CI at shutdown)."""
    ch = app.channel(app.default_channel)
    ch.put(encode_envelope("record", ("n",), {}, {}, serializer=app.serializer), id="j0")
    claim = ch.claim(1, 60_000, "w")[0]
    writer = OutcomeWriter(app)
    real = JobChannel.cancel
    faults = [OSError(9, "Bad file descriptor")]

    def flaky(self: JobChannel, *args: Any, **kwargs: Any) -> Any:
        if faults:
            raise faults.pop()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(JobChannel, "cancel", flaky)
    outcome = [Outcome("cancel", claim, reason="still running at shutdown")]
    with pytest.raises(OSError):
        writer.write(outcome)
    writer.write(outcome)
    assert dict(writer.stats) == {"cancelled": 1}
    assert ch.get_ids() == ["j0"] and ch.get_failure_count("j0") == 1
