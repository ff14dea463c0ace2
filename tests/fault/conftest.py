"""Fixtures of the fault tests: a second redis-server for the execution ledger, redis-servers a
test owns (to restart, freeze, fill or misconfigure), and the ``Fault`` harness.

Every test has a watchdog (pytest-timeout; the fault modules set their own limits) and ends with
``Fault.check_invariants()``. Measured figures are printed (run with ``-s`` to see them) and,
when ``TP_FAULT_FIGURES`` names a file, appended to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fault.harness import Fault, RedisServer


@pytest.fixture(scope="session")
def ledger_server() -> Iterator[RedisServer]:
    """A second redis-server: the execution ledger survives every fault done to the broker."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def own_redis() -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers this test owns: ``own_redis(appendonly=True, extra=[...])``."""
    servers: list[RedisServer] = []

    def start(**kw: Any) -> RedisServer:
        server = RedisServer(**kw).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc is not None:
            try:
                os.kill(server.proc.pid, 18)  # SIGCONT: a test may have left it frozen
            except ProcessLookupError:
                pass
        server.cleanup()


@pytest.fixture
def make_fault(
    tmp_path: Path, ledger_server: RedisServer, prefix: str
) -> Iterator[Callable[..., Fault]]:
    """Build the harness on a broker URL (each call gets its own temp dir and module)."""
    made: list[Fault] = []

    def make(broker_url: str, **env: str) -> Fault:
        d = tmp_path / f"h{len(made)}"
        d.mkdir()
        f = Fault(d, broker_url, ledger_server.url, prefix, **env)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


@pytest.fixture
def fault(make_fault: Callable[..., Fault], redis_server: RedisServer) -> Fault:
    """The harness on the session's redis-server (for tests that do not harm the broker)."""
    return make_fault(redis_server.url)


@pytest.fixture
def figure() -> Callable[[str, str], None]:
    """Print a measured figure (and append it to ``$TP_FAULT_FIGURES`` if set)."""

    def report(label: str, text: str) -> None:
        line = f"[fault] {label}: {text}"
        print("\n" + line)
        path = os.environ.get("TP_FAULT_FIGURES")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    return report
