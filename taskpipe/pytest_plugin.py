"""The taskpipe pytest plugin (registered through the ``pytest11`` entry point, so it loads
whenever taskpipe is installed). Fixtures:

``taskpipe_app``
    The app under test. By default a fresh ``TaskPipe`` on its own embedded ``memory://``
    broker; set ``taskpipe_app = "myproject.tasks:app"`` in the ini file (or pass
    ``--taskpipe-app``) to get your own app, or override the fixture in a ``conftest.py``.
``taskpipe_worker``
    A real ``Worker`` for ``taskpipe_app`` running in a thread during the test (every channel
    of the app's tasks), stopped gracefully afterwards.
``taskpipe_eager``
    ``taskpipe_app`` switched to eager mode for the test; yields the test clock
    (``taskpipe_eager.advance("10m")``).

See ``docs/testing.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest

from taskpipe.app import TaskPipe
from taskpipe.errors import ConfigError
from taskpipe.testing import eager, memory_app, running_worker
from taskpipe.worker import Worker

__all__ = ["taskpipe_app", "taskpipe_worker", "taskpipe_eager"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("taskpipe")
    group.addoption(
        "--taskpipe-app",
        default=None,
        help="module:attribute of the TaskPipe app the taskpipe_app fixture gives",
    )
    parser.addini(
        "taskpipe_app", "module:attribute of the app the taskpipe_app fixture gives", default=""
    )


def _load(path: str) -> TaskPipe:
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, TaskPipe):
        raise ConfigError(f"{path!r} is not a TaskPipe app")
    return obj


@pytest.fixture
def taskpipe_app(request: pytest.FixtureRequest) -> Iterator[TaskPipe]:
    """The app under test (see the module docstring)."""
    path = request.config.getoption("--taskpipe-app") or request.config.getini("taskpipe_app")
    if path:
        yield _load(str(path))
        return
    app = memory_app("test")
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def taskpipe_worker(taskpipe_app: TaskPipe) -> Iterator[Worker]:
    """A worker thread on ``taskpipe_app`` for the duration of the test."""
    with running_worker(taskpipe_app) as worker:
        yield worker


@pytest.fixture
def taskpipe_eager(taskpipe_app: TaskPipe) -> Iterator[Any]:
    """``taskpipe_app`` in eager mode; the value is its test clock."""
    with eager(taskpipe_app) as clock:
        yield clock
