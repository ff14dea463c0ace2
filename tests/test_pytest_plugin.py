"""The pytest plugin's fixtures, run in a pytester session as a user's test suite would."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def _use_plugin(pytester: pytest.Pytester) -> None:
    """The plugin loads through its ``pytest11`` entry point once taskpipe is installed; in a
    checkout whose install predates the entry point, load it the explicit way."""
    from importlib.metadata import entry_points

    if not any(ep.value == "taskpipe.pytest_plugin" for ep in entry_points(group="pytest11")):
        pytester.makeconftest('pytest_plugins = ["taskpipe.pytest_plugin"]\n')


USER_TESTS = """
from taskpipe import TaskPipe


def test_worker_runs_jobs(taskpipe_app, taskpipe_worker):
    @taskpipe_app.task
    def add(a: int, b: int) -> int:
        return a + b

    assert add.delay(2, 3).get(timeout=20) == 5
    assert taskpipe_worker.app is taskpipe_app


def test_eager_and_clock(taskpipe_app, taskpipe_eager):
    @taskpipe_app.task
    def add(a: int, b: int) -> int:
        return a + b

    assert taskpipe_app.eager
    r = add.apply_async((1, 2), delay="10m")
    assert r.state == "delayed"
    taskpipe_eager.advance("10m")
    assert r.get() == 3


def test_each_test_gets_a_fresh_app(taskpipe_app):
    assert not taskpipe_app.tasks and not taskpipe_app.eager
"""

USER_APP = """
from taskpipe import TaskPipe

app = TaskPipe("mine", broker="memory://user-app")


@app.task
def hello(name: str) -> str:
    return "hello " + name
"""


def test_fixtures_in_a_user_suite(pytester: pytest.Pytester) -> None:
    _use_plugin(pytester)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:randomly", "-q")
    result.assert_outcomes(passed=3)


def test_the_app_named_in_the_ini_file(pytester: pytest.Pytester) -> None:
    _use_plugin(pytester)
    pytester.makepyfile(
        userapp=USER_APP,
        test_named="""
def test_named(taskpipe_app, taskpipe_worker):
    assert taskpipe_app.name == "mine"
    from userapp import hello
    assert hello.delay("you").get(timeout=20) == "hello you"
""",
    )
    pytester.makeini("[pytest]\ntaskpipe_app = userapp:app\n")
    pytester.syspathinsert()
    result = pytester.runpytest_inprocess("-p", "no:randomly", "-q")
    result.assert_outcomes(passed=1)
