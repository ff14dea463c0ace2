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

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from redis_server import RedisServer  # noqa: E402

from taskpipe import TaskPipe  # noqa: E402
from taskpipe.connection import Connection  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before the fixture params are applied
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``task_layer`` modules: ``broker_url`` is ``memory://`` unless the test is ``redis_smoke``."""
    node = metafunc.definition
    if ("broker_url" in metafunc.fixturenames and node.get_closest_marker("task_layer")
            and not node.get_closest_marker("redis_smoke")):
        # a parametrize mark (not metafunc.parametrize) so the fixture's own params step aside
        node.add_marker(pytest.mark.parametrize("broker_url", ["memory"], indirect=True))


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
