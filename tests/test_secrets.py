"""A password given in a broker URL never shows: every CLI command (and ``--json``), the
dashboard's start-up line, the worker's log, ``BrokerURLError`` messages and ``repr(app)`` are
run against a real redis-server that requires the password, and all their output is grepped."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from redis_server import RedisServer

from taskpipe import TaskPipe
from taskpipe.cli.main import _register, cli
from taskpipe.connection import parse_url, redact_url
from taskpipe.errors import BrokerURLError

SECRET = "S3cretPw7x"


@pytest.fixture(scope="module")
def locked() -> Iterator[RedisServer]:
    """A redis-server that requires SECRET (set after start: start() pings without AUTH)."""
    server = RedisServer().start()
    server.client().config_set("requirepass", SECRET)
    yield server
    server.cleanup()


def urls(server: RedisServer) -> list[str]:
    return [
        f"redis://:{SECRET}@127.0.0.1:{server.port}/0",
        f"redis://default:{SECRET}@127.0.0.1:{server.port}/0",
        f"redis://127.0.0.1:{server.port}/0?password={SECRET}",
    ]


def test_redact_url_forms() -> None:
    assert redact_url(f"redis://:{SECRET}@h:1/0") == "redis://:***@h:1/0"
    assert redact_url(f"redis://u:{SECRET}@h/0") == "redis://u:***@h/0"
    assert redact_url(f"redis://h/0?db=1&password={SECRET}") == "redis://h/0?db=1&password=***"
    assert redact_url(f"redis+sentinel://:{SECRET}@a:1,b:2/m?sentinel_password={SECRET}x") == (
        "redis+sentinel://:***@a:1,b:2/m?sentinel_password=***"
    )
    assert redact_url(f"redis://:p@ss/{SECRET}@h/0") == "redis://:***@h/0"  # unescaped "/" and "@"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redact_url("memory://x") == "memory://x"
    assert redact_url(None) == "None"


@pytest.mark.parametrize(
    "bad",
    [
        f"redis://:{SECRET}@h:abc/0",
        f"redis://h/x?password={SECRET}",
        f"redis://:{SECRET}@h/db",
        f"redis+cluster://:{SECRET}@h:1/2",
        f"redis+cluster://:{SECRET}@h:1?password={SECRET}",
        f"redis+sentinel://:{SECRET}@h:1",
        f"rediz://:{SECRET}@h/0",
        f"redis://:p@ss/{SECRET}@h/x0",
        f"redis+sentinel://:{SECRET}@h:x/m?sentinel_password={SECRET}",
    ],
)
def test_broker_url_errors_hide_the_password(bad: str) -> None:
    with pytest.raises(BrokerURLError) as info:
        parse_url(bad)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    with pytest.raises(BrokerURLError) as info:
        TaskPipe(broker=bad)
    assert SECRET not in str(info.value)


def test_repr_hides_the_password(locked: RedisServer) -> None:
    for url in urls(locked):
        app = TaskPipe(broker=url)
        try:
            assert SECRET not in repr(app) and "***" in repr(app)
        finally:
            app.close()


@pytest.fixture
def app_module(tmp_path: Path, locked: RedisServer) -> Path:
    (tmp_path / "secretapp.py").write_text(
        textwrap.dedent("""
        import os
        from taskpipe import TaskPipe
        app = TaskPipe(broker=os.environ["SECRET_BROKER"], prefix=os.environ["SECRET_PREFIX"])

        @app.cron("*/5 * * * *")
        @app.task
        def add(a=1, b=2):
            return a + b
    """)
    )
    return tmp_path


def test_every_command_hides_the_password(
    locked: RedisServer, app_module: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    _register()
    caplog.set_level(logging.DEBUG)
    sys.path.insert(0, str(app_module))
    try:
        for url in urls(locked):
            env = {
                "SECRET_BROKER": url,
                "SECRET_PREFIX": prefix,
                "TASKPIPE_BROKER_URL": url,
                "TASKPIPE_PREFIX": prefix,
            }
            runs = [
                ["status"],
                ["status", "--json"],
                ["publish", "add", "--args", "[1, 2]"],
                ["publish", "add", "--json", "--args", "[1, 2]"],
                ["jobs", "list"],
                ["jobs", "list", "--json"],
                ["jobs", "show", "nope"],
                ["pause", "default"],
                ["resume", "default"],
                ["tasks", "-A", "secretapp:app"],
                ["cron", "list", "-A", "secretapp:app"],
                ["worker", "-A", "secretapp:app", "--burst", "-l", "debug"],
                ["status", "--broker", f"redis://:{SECRET}@127.0.0.1:1/0"],  # unreachable
                ["status", "--broker", f"redis://:{SECRET}x@127.0.0.1:{locked.port}/0"],  # wrong
                ["doctor", "--broker", url],
                ["doctor", "--json", "--broker", url],
                ["jobs", "logs", "nope"],
                ["jobs", "retry", "nope"],
                ["jobs", "retract", "nope"],
                ["jobs", "cancel", "nope"],
                ["jobs", "stall", "nope"],
                ["jobs", "clean", "-s", "finished", "--older-than", "1d", "--dry-run"],
                ["status", "--broker", f"redis://:{SECRET}@127.0.0.1:x/0"],  # malformed
            ]
            for args in runs:
                result = CliRunner().invoke(cli, args, env=env)
                if "--broker" not in args and args[-1] != "nope":  # (doctor: 1 = unsafe settings)
                    assert result.exit_code == 0, (args, result.output)
                out = result.output + (repr(result.exception) if result.exception else "")
                assert SECRET not in out, (args, out)
                if result.exc_info is not None:
                    import traceback

                    assert SECRET not in "".join(traceback.format_exception(*result.exc_info))
    finally:
        sys.path.remove(str(app_module))
    assert SECRET not in caplog.text


def test_processes_hide_the_password(locked: RedisServer, app_module: Path, prefix: str) -> None:
    """The dashboard's start-up line, a worker's and a scheduler's whole log, as real processes."""
    url = f"redis://127.0.0.1:{locked.port}/0?password={SECRET}"
    env = {
        **os.environ,
        "SECRET_BROKER": url,
        "SECRET_PREFIX": prefix,
        "PYTHONPATH": os.pathsep.join([str(app_module), *sys.path]),
    }
    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskpipe",
            "worker",
            "-A",
            "secretapp:app",
            "--burst",
            "-l",
            "debug",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    assert "consuming" in worker.stderr + worker.stdout
    assert SECRET not in worker.stdout + worker.stderr
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "taskpipe", "scheduler", "-A", "secretapp:app", "-l", "debug"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert scheduler.stdout is not None
        first = scheduler.stdout.readline()  # its start-up line: it runs
        assert first
    finally:
        scheduler.terminate()
        rest = scheduler.communicate(timeout=30)[0]
    assert SECRET not in first + rest
    board = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskpipe",
            "dashboard",
            "--broker",
            url,
            "--prefix",
            prefix,
            "--port",
            "0",
            "-l",
            "DEBUG",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert board.stdout is not None
        line = board.stdout.readline()
        assert "taskpipe dashboard on" in line and "***" in line
    finally:
        board.terminate()
        out, err = board.communicate(timeout=30)
    assert SECRET not in line + out + err
