"""``on_failure`` (callable and durable signature), Celery's option names, and ``forget()``
(issue 15 items 2 and 5), on real Redis and ``memory://``."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from polling import wait_for
from worker_helpers import burst

from taskpipe import ConfigError, ResultExpired, TaskFailed, TaskPipe
from taskpipe.serialization import decode_envelope


@pytest.fixture
def tasks(app: TaskPipe) -> dict[str, Any]:
    seen: list[Any] = []

    @app.task(name="add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    @app.task(name="boom")
    def boom(x: Any) -> None:
        raise ValueError(f"boom {x}")

    @app.task(name="note")
    def note(*args: Any) -> list[Any]:
        seen.append(args)
        return list(args)

    return {"add": add, "boom": boom, "note": note, "seen": seen}


def test_on_failure_callable_gets_the_error_only_on_failure(
    app: TaskPipe, tasks: dict[str, Any]
) -> None:
    got: list[tuple[Any, Any]] = []
    done = threading.Event()

    def on_failure(error: Any, result: Any) -> None:
        got.append((error, result))
        done.set()

    ok = tasks["add"].apply_async((1, 2), on_failure=on_failure)
    bad = tasks["boom"].apply_async((7,), on_failure=on_failure)
    burst(app)
    assert done.wait(10)
    wait_for(lambda: app.finish_watcher.pending() == 0, what="the watcher to settle")
    assert len(got) == 1
    error, result = got[0]
    assert isinstance(error, TaskFailed) and error.exc_type == "ValueError" and result == bad
    assert ok.get(timeout=5) == 3


def test_on_finish_and_on_failure_callables_together(app: TaskPipe, tasks: dict[str, Any]) -> None:
    calls: list[str] = []
    bad = tasks["boom"].apply_async(
        (1,),
        on_finish=lambda v, r: calls.append("finish"),
        on_failure=lambda v, r: calls.append("failure"),
    )
    burst(app)
    wait_for(lambda: len(calls) == 2, what="both callbacks")
    assert calls == ["finish", "failure"] and bad.failed()


def test_on_failure_signature_is_published_with_the_failure(
    app: TaskPipe, tasks: dict[str, Any]
) -> None:
    bad = tasks["boom"].apply_async((3,), on_failure=tasks["note"].s("extra"))
    good = tasks["add"].apply_async((3,), on_failure=tasks["note"].s("never"))
    burst(app)
    assert good.get(timeout=5) == 3
    follow = app.AsyncResult(f"{bad.id}.on_failure")
    info, extra = follow.get(timeout=10)
    assert extra == "extra"
    assert info == {
        "id": bad.id,
        "channel": bad.channel,
        "task": "boom",
        "exc_type": "ValueError",
        "exc_message": "boom 3",
    }
    assert app.AsyncResult(f"{good.id}.on_failure").state == "unknown"


def test_link_and_link_error_are_aliases(app: TaskPipe, tasks: dict[str, Any]) -> None:
    ok = tasks["add"].apply_async((2, 2), link=tasks["note"].s())
    bad = tasks["boom"].apply_async((1,), link_error=tasks["note"].s())
    burst(app)
    assert app.AsyncResult(f"{ok.id}.on_finish").get(timeout=10) == [4]
    assert app.AsyncResult(f"{bad.id}.on_failure").get(timeout=10)[0]["exc_type"] == "ValueError"


def _options(app: TaskPipe, result: Any) -> dict[str, Any]:
    item = app.channel(result.channel).get_item(result.id)
    assert item is not None
    return decode_envelope(item).options


def test_celery_aliases(app: TaskPipe, tasks: dict[str, Any]) -> None:
    add = tasks["add"]
    delayed = add.apply_async((1,), countdown=60)
    assert delayed.state == "delayed"
    routed = add.apply_async((1,), queue="emails", task_id="celery-id", max_retries=4)
    assert (routed.channel, routed.id) == (app.channel("emails").name, "celery-id")
    assert _options(app, routed)["retries"] == 4
    ignored = add.apply_async((5,), ignore_result=True)
    kept = add.apply_async((5,), ignore_result=False)
    burst(app, ["default", "emails"])
    assert kept.get(timeout=5) == 5
    assert ignored.info().state == "finished"
    with pytest.raises(ResultExpired):
        ignored.get(timeout=5)
    assert routed.get(timeout=5) == 1


def test_celery_aliases_through_signatures_and_publish_many(
    app: TaskPipe, tasks: dict[str, Any]
) -> None:
    sig = tasks["add"].s(1).set(queue="other", task_id="from-sig")
    [res] = app.publish_many([sig])
    assert (res.channel, res.id) == (app.channel("other").name, "from-sig")
    burst(app, ["other"])
    assert res.get(timeout=5) == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"countdown": 1, "delay": 2}, "use delay="),
        ({"queue": "a", "channel": "b"}, "use channel="),
        ({"ignore_result": True, "result_ttl": "1h"}, "result_ttl=0"),
        ({"soft_time_limit": 5}, "timeout="),
        ({"time_limit": 5}, "hard_timeout="),
        ({"routing_key": "x"}, "channel="),
        ({"serializer": "json"}, "TaskPipe\\(serializer"),
        ({"shadow": "x"}, "name="),
        ({"bogus_option": 1}, "unknown publishing option"),
    ],
)
def test_other_celery_options_name_the_equivalent(
    app: TaskPipe, tasks: dict[str, Any], options: dict[str, Any], match: str
) -> None:
    before = app.channel().counts()["published_total"]
    with pytest.raises(ConfigError, match=match):
        tasks["add"].apply_async((1,), **options)
    assert app.channel().counts()["published_total"] == before


def test_forget_drops_only_the_result(app: TaskPipe, tasks: dict[str, Any]) -> None:
    done = tasks["add"].delay(1, 1)
    pending = tasks["add"].delay(2, 2)
    pending.forget()  # nothing stored yet: the job itself is untouched
    assert pending.state == "available"
    burst(app)
    assert done.get(timeout=5) == 2
    done.forget()
    assert done.info().state == "finished"
    with pytest.raises(ResultExpired):
        app.AsyncResult(done.id).get(timeout=5)
    assert pending.get(timeout=5) == 4


def test_eager_mode_on_failure_and_forget() -> None:
    app = TaskPipe(eager=True)
    calls: list[Any] = []

    @app.task(name="boom")
    def boom() -> None:
        raise ValueError("x")

    @app.task(name="note")
    def note(info: Any) -> Any:
        calls.append(info)
        return info

    boom.apply_async(on_failure=lambda err, res: calls.append(type(err).__name__))
    bad = boom.apply_async(link_error=note.s())
    assert calls[0] == "TaskFailed" and calls[1]["exc_type"] == "ValueError"
    bad.forget()
    with pytest.raises(ResultExpired):
        bad.get()
    assert note.apply_async(("after",), depends_on=[bad]).get() == "after"  # forgotten: no value
    with pytest.raises(TaskFailed, match="not stored"):
        note.apply_async(depends_on=[bad], pass_results="one").get()
    other = boom.apply_async()
    with pytest.raises(TaskFailed, match="DependencyFailed"):
        note.apply_async(("x",), depends_on=[other]).get()


def test_eager_mode_runs_chains_and_chords() -> None:
    from taskpipe import UnknownParent, WorkflowError, chain, chord, group

    app = TaskPipe(eager=True)

    @app.task(name="add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    @app.task(name="total")
    def total(xs: list[int]) -> int:
        return sum(xs)

    assert chain(add.s(1, 2), add.s(10), add.si(5, 5)).apply_async().get() == 10
    assert (add.s(1) | add.s(2)).apply_async().get() == 3
    assert chord(group(add.s(i) for i in range(5)), total.s()).apply_async().get() == 10
    assert group(add.s(i, i) for i in range(3)).apply_async().get() == [0, 2, 4]
    later = add.apply_async((1,), delay="1m")
    with pytest.raises(WorkflowError, match="test clock"):
        add.apply_async(depends_on=[later], pass_results="one")
    with pytest.raises(UnknownParent):
        add.apply_async((1,), depends_on=["nope"])


def test_depends_on_with_deduplication_is_refused_with_nothing_written(
    app: TaskPipe, tasks: dict[str, Any]
) -> None:
    """Deduplication is decided at publish, a dependant runs when its parents finish: ``unique``
    / ``unique_for`` / ``debounce`` with ``depends_on`` are refused, typed, nothing published."""
    parent = tasks["add"].delay(1, 2)
    ch = app.channel(app.default_channel)
    before = ch.counts()
    for dedup in ({"unique": True}, {"unique_for": "1m"}, {"debounce": "1s"}):
        with pytest.raises(ConfigError, match="depends_on cannot be combined with unique"):
            tasks["add"].apply_async((1,), depends_on=[parent], **dedup)
    assert ch.counts() == before


def test_released_dependants_honour_flow_control(app: TaskPipe, tasks: dict[str, Any]) -> None:
    """A dependant's concurrency cap, rate limit and numeric priority apply once its parent's
    finish releases it (its flow spec is written when it is published to wait), as for a job
    published with them; and to one whose parent had finished already (queued at once)."""

    @app.task(name="capped", concurrency=1)
    def capped() -> None:
        return None

    @app.task(name="rated", rate_limit="1/m")
    def rated() -> None:
        return None

    parent = tasks["add"].delay(1, 2)
    ch = app.channel(app.default_channel)
    [claim] = ch.claim(10)
    assert claim.id == parent.id
    caps = [capped.apply_async(depends_on=[parent]) for _ in range(2)]
    rates = [rated.apply_async(depends_on=[parent]) for _ in range(2)]
    nine = tasks["add"].apply_async((9,), depends_on=[parent], priority=9)
    zero = tasks["add"].apply_async((0,), depends_on=[parent], priority=0)
    assert {r.state for r in (*caps, *rates, nine, zero)} == {"waiting"}
    ch.finish(parent.id, token=claim.token)  # releases all six to the queue
    # the cap and the rate let one each through; the numbered jobs come in priority order
    got = ch.claim(10)
    assert [c.id for c in got] == [caps[0].id, rates[0].id, zero.id, nine.id]
    assert ch.claim(10) == []  # the second capped and the second rated job are held
    assert ch.counts()["available"] == 2
    ch.finish(caps[0].id, token=got[0].token)  # frees the cap's slot
    assert [c.id for c in ch.claim(10)] == [caps[1].id]
    # a parent that finished already: queued at once, still numbered
    done = tasks["add"].apply_async((5,), depends_on=[parent], priority=5)
    first = tasks["add"].apply_async((1,), depends_on=[parent], priority=1)
    assert [c.id for c in ch.claim(10)] == [first.id, done.id]
