"""Types that mean something (issue 19 item 5): one validator for counted limits, the job
states and outcome kinds, ``DurationLike`` and ``WorkerSettings``.

Task layer, on ``memory://``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from taskpipe import ConfigError, TaskPipe
from taskpipe.limits import check_count, count_problem
from taskpipe.worker.runner import option_problem

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
