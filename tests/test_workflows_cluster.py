"""Workflows on a Redis Cluster (issue 15): a chain and a chord within one channel run (every
key one script touches is in one slot); a parent on a channel in another slot is refused with
a typed error before anything is written."""

from __future__ import annotations

from typing import Any

import pytest
from test_cluster import app, cluster, pytestmark  # noqa: F401 - the cluster fixtures and skip
from worker_helpers import burst

from taskpipe import TaskPipe, WorkflowError, chain, chord, group


def test_chain_and_chord_in_one_channel(app: TaskPipe) -> None:  # noqa: F811
    @app.task(name="add", channel="wf")
    def add(a: int, b: int = 0) -> int:
        return a + b

    @app.task(name="total", channel="wf")
    def total(xs: list[int]) -> int:
        return sum(xs)

    steps = chain(add.s(1, 1), add.s(2), add.s(3)).apply_async()
    summed = chord(group(add.s(i) for i in range(20)), total.s()).apply_async()
    assert steps.state == "waiting"
    burst(app, ["wf"])
    assert steps.get(timeout=10) == 7 and summed.get(timeout=10) == sum(range(20))


def test_parent_in_another_slot_is_refused(app: TaskPipe) -> None:  # noqa: F811
    @app.task(name="work", channel="one")
    def work(x: Any) -> Any:
        return x

    parent = work.delay(1)
    before = app.channel("two").counts()["published_total"]
    with pytest.raises(WorkflowError, match="one hash slot"):
        work.apply_async((2,), channel="two", depends_on=[parent])
    assert app.channel("two").counts()["published_total"] == before
    kid = work.apply_async((2,), channel="{one}", depends_on=[parent])  # the same slot: fine
    burst(app, ["one"])
    assert kid.get(timeout=10) == 2
