"""Shared fixtures: a real redis-server on a free loopback port, and memory:// twins.

Every test gets a unique key prefix, so tests never see each other's keys and nothing is flushed.
The ``broker_url`` / ``conn`` / ``app`` fixtures are parametrized over real Redis and ``memory://``
so the same conformance tests run on both (a test module may define its own ``app``).

Under pytest-xdist (``-n 4``) each xdist worker is its own process with its own session, so
``redis_server`` starts one redis-server per xdist worker; the per-test prefixes keep tests apart.

A module marked ``pytestmark = pytest.mark.task_layer`` tests the task layer, not Redis
semantics: its ``broker_url`` runs on ``memory://`` only, except the tests marked
``redis_smoke``, which also run on real Redis (the Thoonk conformance suites stay on both).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from browser_helpers import (  # noqa: F401 - the shared headless Chromium: fixture and hook
    _chromium_session,
    browser,
    group_browser_tests,
    pytest_runtest_teardown,
)
from redis_server import RedisServer

from taskpipe import TaskPipe
from taskpipe.connection import Connection


@pytest.hookimpl(tryfirst=True)  # before the fixture params are applied
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``task_layer`` modules: ``broker_url`` is ``memory://`` unless the test is ``redis_smoke``."""
    node = metafunc.definition
    if (
        "broker_url" in metafunc.fixturenames
        and node.get_closest_marker("task_layer")
        and not node.get_closest_marker("redis_smoke")
    ):
        # a parametrize mark (not metafunc.parametrize) so the fixture's own params step aside
        node.add_marker(pytest.mark.parametrize("broker_url", ["memory"], indirect=True))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The browser tests side by side (they share one Chromium: ``browser_helpers``); and
    under xdist, every worker starts with its share of the ``slow`` tests.

    ``--dist worksteal`` hands each of the n workers a contiguous share of the collection and
    idle workers then steal from the end of the others' queues. The slow tests (10-40 s each)
    are put at the head of each share, one in n per worker, so they start at once instead of
    queueing behind each other at the end of one worker's share. Deterministic, so every worker
    collects the same order; without xdist only the browser tests move.
    """
    group_browser_tests(items)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return
    n = int(workerinput.get("workercount", 1))
    slow = [item for item in items if item.get_closest_marker("slow")]
    if n < 2 or not slow:
        return
    rest = iter([item for item in items if not item.get_closest_marker("slow")])
    ordered: list[pytest.Item] = []
    remaining = len(items)
    for w in range(n):
        share = remaining // (n - w)  # what worksteal sends worker w first
        remaining -= share
        head = slow[w::n]
        ordered += head + [item for _, item in zip(range(share - len(head)), rest)]
    ordered += list(rest)
    assert len(ordered) == len(items)
    items[:] = ordered


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture(params=["redis", "memory"])
def broker_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> str:
    if request.param == "redis":
        return redis_server.url
    return f"memory://{uuid.uuid4().hex[:8]}"


@pytest.fixture
def conn(broker_url: str) -> Iterator[Connection]:
    c = Connection(broker_url)
    yield c
    c.close()


@pytest.fixture
def app(broker_url: str, prefix: str) -> Iterator[TaskPipe]:
    a = TaskPipe(broker=broker_url, prefix=prefix)
    yield a
    a.close()


@pytest.fixture
def real_conn(redis_server: RedisServer) -> Iterator[Connection]:
    c = Connection(redis_server.url)
    yield c
    c.close()


@pytest.fixture
def harness(
    tmp_path: Path, redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Real ``taskpipe worker`` processes on the real Redis (``test_worker_process.Harness``);
    a module may define its own ``harness``."""
    from test_worker_process import Harness

    h = Harness(tmp_path, redis_server.url, prefix, monkeypatch)
    yield h
    h.close()
