"""Workflows (issue 15 item 1): depends_on with its ``waiting`` state, chain, group, chord,
``|``, ``.si()``, ``starmap``, failure propagation and ``allow_failure``, and bad input.

Every test runs on real Redis and on ``memory://`` (the ``app`` fixture), with an in-process
worker; ``test_workflows_crash.py`` runs a chord over real worker processes with a SIGKILL.
"""

from __future__ import annotations

from typing import Any

import pytest
from worker_helpers import burst

from taskpipe import (
    ConfigError,
    DependencyCycle,
    EmptyChord,
    GroupResult,
    SerializationError,
    TaskFailed,
    TaskPipe,
    UnknownParent,
    chain,
    chord,
    group,
)


@pytest.fixture
def tasks(app: TaskPipe) -> dict[str, Any]:
    @app.task(name="add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    @app.task(name="total")
    def total(xs: list[int], extra: int = 0) -> int:
        return sum(x or 0 for x in xs) + extra

    @app.task(name="boom")
    def boom(*args: Any) -> None:
        raise ValueError(f"boom {args}")

    @app.task(name="tag")
    def tag(*args: Any) -> list[Any]:
        return list(args)

    return {"add": add, "total": total, "boom": boom, "tag": tag}


def test_ten_step_chain_passes_each_result_on(app: TaskPipe, tasks: dict[str, Any]) -> None:
    add = tasks["add"]
    result = chain(add.s(0, 1), *(add.s(1) for _ in range(9))).apply_async()
    assert result.state == "waiting"  # every later step waits in Redis until its parent finishes
    assert app.channel().counts()["waiting"] == 9
    burst(app)
    assert result.get(timeout=10) == 10
    assert app.channel().counts()["waiting"] == 0


def test_pipe_operator_and_immutable_signatures(app: TaskPipe, tasks: dict[str, Any]) -> None:
    add, tag = tasks["add"], tasks["tag"]
    mutable = (add.s(2, 3) | tag.s("x")).apply_async()
    immutable = (add.s(2, 3) | tag.si("y")).apply_async()
    burst(app)
    assert mutable.get(timeout=10) == [5, "x"]
    assert immutable.get(timeout=10) == ["y"]


def test_group_result(app: TaskPipe, tasks: dict[str, Any]) -> None:
    add = tasks["add"]
    res = group(add.s(i, i) for i in range(20)).apply_async()
    assert isinstance(res, GroupResult) and len(res) == 20
    assert res.completed_count() == 0 and not res.ready()
    burst(app)
    assert res.get(timeout=10) == [2 * i for i in range(20)]
    assert res.completed_count() == 20 and res.ready() and res.successful()
    assert [r.id for r in res.results] == res.ids


def test_group_with_a_failure(app: TaskPipe, tasks: dict[str, Any]) -> None:
    res = group(tasks["add"].s(1), tasks["boom"].s(2)).apply_async()
    burst(app)
    assert res.completed_count() == 1 and res.failed()
    with pytest.raises(TaskFailed, match="boom"):
        res.get(timeout=10)
    values = res.get(timeout=10, propagate=False)
    assert values[0] == 1 and isinstance(values[1], TaskFailed)


def test_chord_callback_gets_every_result_once(app: TaskPipe, tasks: dict[str, Any]) -> None:
    add, total = tasks["add"], tasks["total"]
    result = chord(group(add.s(i) for i in range(50)), total.s(extra=1000)).apply_async()
    assert result.state == "waiting"
    burst(app)
    assert result.get(timeout=10) == sum(range(50)) + 1000
    counts = app.channel().counts()
    assert counts["finished_total"] == 51 and counts["waiting"] == 0


def test_group_pipe_callback_is_a_chord(app: TaskPipe, tasks: dict[str, Any]) -> None:
    add, tag = tasks["add"], tasks["tag"]
    result = (group(add.s(1), add.s(2)) | tag.s()).apply_async()
    burst(app)
    assert result.get(timeout=10) == [[1, 2]]


def test_chord_after_members_already_finished(app: TaskPipe, tasks: dict[str, Any]) -> None:
    """A callback published after some parents finished counts only the unfinished ones."""
    add, total = tasks["add"], tasks["total"]
    first = add.delay(5)
    burst(app)
    second = add.delay(6)
    cb = total.apply_async(depends_on=[first, second], pass_results="all")
    assert cb.state == "waiting" and app.channel().waiting_parents(cb.id) == 1
    burst(app)
    assert cb.get(timeout=10) == 11
    done = total.apply_async(depends_on=[first, second], pass_results="all")
    assert done.state == "available"  # every parent finished already: queued at once
    burst(app)
    assert done.get(timeout=10) == 11


def test_diamond_of_depends_on(app: TaskPipe, tasks: dict[str, Any]) -> None:
    add, tag = tasks["add"], tasks["tag"]
    top = add.delay(1)
    left = add.apply_async((10,), depends_on=[top], pass_results="one")
    right = add.apply_async((100,), depends_on=top, pass_results="one")
    bottom = tag.apply_async(depends_on=[left, right], pass_results="all")
    assert [r.state for r in (top, left, right, bottom)] == [
        "available",
        "waiting",
        "waiting",
        "waiting",
    ]
    burst(app)
    assert bottom.get(timeout=10) == [[11, 101]]


def test_depends_on_an_iterator_is_read_once(app: TaskPipe, tasks: dict[str, Any]) -> None:
    """A generator of parents is consumed once: the job still waits for every parent (it
    used to be read twice, the second time empty, and the job was queued at once)."""
    add = tasks["add"]
    parents = [add.delay(i) for i in range(3)]
    child = add.apply_async((0,), depends_on=(p for p in parents))
    assert child.state == "waiting"
    burst(app)
    assert child.get(timeout=10) == 0 and all(p.ready() for p in parents)


def test_depends_on_across_channels(app: TaskPipe, tasks: dict[str, Any]) -> None:
    parent = tasks["add"].apply_async((1, 2), channel="other")
    child = tasks["add"].apply_async((3,), depends_on=[parent], pass_results="one")
    burst(app, ["default", "other"])
    assert child.get(timeout=10) == 6


def test_failing_parent_fails_the_rest_of_the_chain(app: TaskPipe, tasks: dict[str, Any]) -> None:
    add, boom = tasks["add"], tasks["boom"]
    result = (add.s(1, 1) | boom.s() | add.s(5) | add.s(6)).apply_async()
    burst(app)
    with pytest.raises(TaskFailed) as info:
        result.get(timeout=10)
    assert info.value.exc_type == "DependencyFailed"
    assert "failed: ValueError: boom (2,)" in info.value.exc_message
    assert app.channel().counts()["failed_total"] == 3  # boom and both later steps


def test_allow_failure_runs_the_dependant(app: TaskPipe, tasks: dict[str, Any]) -> None:
    bad = tasks["boom"].delay(1)
    good = tasks["add"].delay(2)
    plain = tasks["tag"].apply_async(("ran",), depends_on=[bad, good], allow_failure=True)
    passed = tasks["tag"].apply_async(
        depends_on=[bad, good], pass_results="all", allow_failure=True
    )
    failing = tasks["tag"].apply_async(depends_on=[bad, good])
    burst(app)
    assert plain.get(timeout=10) == ["ran"]
    assert passed.get(timeout=10) == [[None, 2]]
    with pytest.raises(TaskFailed, match="DependencyFailed"):
        failing.get(timeout=10)


def test_chord_with_a_failed_member(app: TaskPipe, tasks: dict[str, Any]) -> None:
    result = chord([tasks["add"].s(1), tasks["boom"].s(2)], tasks["total"].s()).apply_async()
    burst(app)
    with pytest.raises(TaskFailed, match="boom"):
        result.get(timeout=10)


def test_starmap_and_map(app: TaskPipe, tasks: dict[str, Any]) -> None:
    add = tasks["add"]
    star = add.starmap([(1, 2), [3, 4]])
    mapped = add.map([5, (6, 7)])
    burst(app)
    assert [r.get(timeout=10) for r in star] == [3, 7]
    assert [r.get(timeout=10) for r in mapped] == [5, 13]
    # an item that is not a list of arguments: a bare TypeError ('int' object is not
    # iterable), and a str was spread into characters
    for bad in ([1, 2], ["ab"], [{"a": 1}]):
        with pytest.raises(SerializationError, match="must be a list or tuple"):
            add.starmap(bad)
    assert app.channel().counts()["available"] == 0


def test_canvas_apply_async_takes_kwargs_for_the_first_step(
    app: TaskPipe, tasks: dict[str, Any]
) -> None:
    # Celery's apply_async(args, kwargs, **options): kwargs= was taken for a publishing option
    # and sent twice (a bare TypeError "got multiple values for keyword argument 'kwargs'")
    add, total = tasks["add"], tasks["total"]
    chained = chain(add.s(1), add.s(10)).apply_async(kwargs={"b": 5})  # add(1, b=5) -> +10
    grouped = group(add.s(1), add.s(2)).apply_async(kwargs={"b": 100})
    chorded = chord([add.s(1), add.s(2)], total.s(extra=1)).apply_async(kwargs={"b": 3})
    delayed = chain(add.s(), add.s(10)).delay(2, b=3)
    burst(app)
    assert chained.get(timeout=10) == 16
    assert grouped.get(timeout=10) == [101, 102]
    assert chorded.get(timeout=10) == 4 + 5 + 1
    assert delayed.get(timeout=10) == 15


def test_dependants_of_jobs_finished_in_one_batch(app: TaskPipe, tasks: dict[str, Any]) -> None:
    """Parents finished together in a batched finish still release their dependants."""
    add = tasks["add"]
    parents = add.map(range(40))
    kids = [add.apply_async((1,), depends_on=[p], pass_results="one") for p in parents]
    burst(app, concurrency=8)
    assert [k.get(timeout=10) for k in kids] == [i + 1 for i in range(40)]


# bad input: typed errors, nothing written -------------------------------------------------------
def _snapshot(app: TaskPipe) -> dict[str, int]:
    counts = app.channel().counts()
    return {k: counts[k] for k in ("available", "waiting", "published_total")}


def test_unknown_parent_writes_nothing(app: TaskPipe, tasks: dict[str, Any]) -> None:
    real = tasks["add"].delay(1)
    before = _snapshot(app)
    with pytest.raises(UnknownParent, match="no-such-job"):
        tasks["add"].apply_async((1,), depends_on=[real, "no-such-job"], id="kid")
    assert _snapshot(app) == before
    assert app.AsyncResult("kid").state == "unknown"
    assert app.channel().dependants(real.id) == []


def test_self_dependency_is_a_cycle(app: TaskPipe, tasks: dict[str, Any]) -> None:
    tasks["add"].delay(1)
    before = _snapshot(app)
    with pytest.raises(DependencyCycle):
        tasks["add"].apply_async((1,), id="me", depends_on=["me"])
    assert _snapshot(app) == before


def test_empty_chord_and_bad_options(app: TaskPipe, tasks: dict[str, Any]) -> None:
    before = _snapshot(app)
    with pytest.raises(EmptyChord):
        chord([], tasks["total"].s()).apply_async()
    with pytest.raises(EmptyChord):
        (group() | tasks["total"].s()).apply_async()
    with pytest.raises(ConfigError, match="depends_on"):
        tasks["add"].apply_async((1,), allow_failure=True)
    with pytest.raises(ConfigError, match="depends_on"):
        tasks["add"].apply_async((1,), depends_on=[], pass_results="one")
    with pytest.raises(ConfigError, match="pass_results"):
        tasks["add"].apply_async((1,), depends_on=["x"], pass_results="some")
    with pytest.raises(ConfigError, match="delay"):
        tasks["add"].apply_async((1,), depends_on=["x"], delay=5)
    with pytest.raises(ConfigError):
        chain(tasks["add"].s(1), 42)
    for build in (chain, group):  # one argument that is not a list of steps: a bare TypeError
        with pytest.raises(ConfigError, match="signature"):
            build(42)
    with pytest.raises(ConfigError, match="signature"):
        chord(42, tasks["total"].s())
    assert _snapshot(app) == before


def test_existing_id_is_not_published_twice(app: TaskPipe, tasks: dict[str, Any]) -> None:
    parent = tasks["add"].delay(1)
    first = tasks["add"].apply_async((1,), depends_on=[parent], id="kid", pass_results="one")
    again = tasks["add"].apply_async((1,), depends_on=[parent], id="kid", pass_results="one")
    assert first == again
    assert app.channel().waiting_parents("kid") == 1
    assert len(app.channel().dependants(parent.id)) == 1
    burst(app)
    assert first.get(timeout=10) == 2


def test_waiting_jobs_are_listed_and_finished_outcomes_named(
    app: TaskPipe, tasks: dict[str, Any]
) -> None:
    from taskpipe.inspection import Inspector

    parent = tasks["add"].delay(1)
    kids = [tasks["add"].apply_async((i,), depends_on=[parent]) for i in range(3)]
    insp = Inspector(app)
    page = insp.list_jobs(app.channel().name, "waiting", limit=10)
    assert page.total == 3
    assert sorted(r.id for r in page.rows) == sorted(k.id for k in kids)
    assert {(r.state, r.task, r.parents_left) for r in page.rows} == {("waiting", "add", 1)}
    assert insp.channel_counts(app.channel().name)["waiting"] == 3
    burst(app)
    assert insp.list_jobs(app.channel().name, "waiting").total == 0


def test_a_parent_with_too_many_dependants(
    app: TaskPipe, tasks: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import taskpipe.thoonk.workflow as wf
    from taskpipe import WorkflowError

    monkeypatch.setattr(wf, "MAX_DEPENDANTS", 2)
    parent = tasks["add"].delay(1)
    kids = [tasks["add"].apply_async((i,), depends_on=[parent]) for i in range(2)]
    before = _snapshot(app)
    with pytest.raises(WorkflowError, match="dependants already"):
        tasks["add"].apply_async((9,), depends_on=[parent])
    assert _snapshot(app) == before
    burst(app)
    assert [k.get(timeout=10) for k in kids] == [0, 1]


def test_retracting_a_waiting_job(app: TaskPipe, tasks: dict[str, Any]) -> None:
    parent = tasks["add"].delay(1)
    kid = tasks["add"].apply_async((2,), depends_on=[parent])
    kid.retract()
    assert kid.state == "unknown" and app.channel().counts()["waiting"] == 0
    burst(app)
    assert parent.get(timeout=10) == 1
    assert kid.state == "unknown" and app.channel().counts()["available"] == 0
