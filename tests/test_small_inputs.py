"""Small input fixes (issue 17, item 6): a database the server does not have, ``id=""``,
out-of-range cron steps, a ``-Q`` typo, and the dashboard's cap on big job bodies."""

from __future__ import annotations

import json
import logging
import re
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer

from taskpipe import TaskPipe
from taskpipe.cli.main import main
from taskpipe.contrib.dashboard import Dashboard
from taskpipe.contrib.dashboard.api import MAX_FIELD_BYTES
from taskpipe.errors import BrokerURLError, ConfigError, CronError
from taskpipe.scheduler import CronEntry


def test_empty_job_id_is_a_config_error(app: TaskPipe) -> None:
    @app.task(name="noop")
    def noop() -> None:
        return None

    with pytest.raises(ConfigError, match="non-empty"):
        noop.apply_async(id="")
    assert app.thoonk.client.hlen(app.channel().keys.items) == 0  # nothing was published
    assert noop.apply_async(id="mine").id == "mine"


@pytest.mark.parametrize("bad", [None, "", 5, b"abc", "a\0b"])
def test_a_result_handle_with_a_bad_id_is_a_config_error(app: TaskPipe, bad: object) -> None:
    with pytest.raises(ConfigError, match="non-empty str"):
        app.AsyncResult(bad)  # type: ignore[arg-type]
    assert app.AsyncResult("fine").id == "fine"


@pytest.mark.parametrize(
    "expr",
    [
        "*/61 * * * *",
        "*/60 * * * *",
        "0 */24 * * *",
        "* * */32 * *",
        "* * * */13 *",
        "* * * * */8",
        "*/0 * * * *",
        "0/61 * * * *",
        "*/61 * * * * *",
        "1,*/90 * * * *",
    ],
)
def test_out_of_range_cron_steps_are_refused(expr: str) -> None:
    with pytest.raises(CronError, match="step"):
        CronEntry.validate(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "*/59 * * * *",
        "0 */23 * * *",
        "*/5 1-10/2 * * 1-5",
        "@hourly",
        "*/30 * * * * *",
        "0 0 */30 * *",
    ],
)
def test_in_range_cron_steps_are_kept(expr: str) -> None:
    CronEntry.validate(expr)


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))


def _app_module(where: Path, name: str, url: str, prefix: str) -> str:
    (where / f"{name}.py").write_text(
        textwrap.dedent(f"""
        from taskpipe import TaskPipe
        app = TaskPipe(broker={url!r}, prefix={prefix!r})

        @app.task(name="hi", channel="high")
        def hi():
            return 1
    """)
    )
    return f"{name}:app"


def test_database_beyond_the_server_is_a_typed_error(
    redis_server: RedisServer, prefix: str, module_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    app = TaskPipe(broker=url, prefix=prefix)
    try:

        @app.task(name="noop")
        def noop() -> None:
            return None

        with pytest.raises(BrokerURLError, match="database 99"):
            noop.delay()
        with pytest.raises(BrokerURLError, match="database 99"):
            app.send("noop")  # the same again: the connection does not stay half-open
    finally:
        app.close()
    path = _app_module(module_dir, "db99app", url, prefix)
    assert _main("worker", "-A", path, "--burst") == 2
    err = capsys.readouterr().err
    assert "database 99" in err and "Traceback" not in err and len(err.splitlines()) <= 3


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("foo=bar", "unknown option.*'foo'"),  # was a TypeError at the first command
        ("socket_timeout=abc", "socket_timeout"),  # was redis-py's ValueError
        ("ssl_cert_reqs=required", "unknown option.*'ssl_cert_reqs'"),  # TLS option on redis://
        ("password=s3cretpw&sockettimeout=5", "unknown option.*'sockettimeout'"),
    ],
)
def test_bad_broker_url_options_are_a_typed_error(
    redis_server: RedisServer, query: str, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0?{query}"
    with pytest.raises(BrokerURLError, match=match) as caught:
        TaskPipe(broker=url)
    assert "s3cretpw" not in str(caught.value)
    assert _main("status", "--broker", url) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(match, err) and "s3cretpw" not in err


@pytest.mark.parametrize("path", [":app", "", ".tasks:app", "..x"])
def test_an_app_path_without_a_module_is_a_typed_error(
    path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # ":app" died with importlib's ValueError traceback ("Empty module name"), ".x" with a TypeError
    assert _main("worker", "-A", path, "--burst") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "module" in err and len(err.splitlines()) <= 3


def test_worker_refused_by_the_broker_is_one_error_line(
    module_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a worker whose broker refuses it (bad credentials) printed a two-part traceback (redis-py's
    # AuthenticationError, then BrokerError) where every other command prints "Error: ...".
    # (A broker that is down at start is waited for: the worker backs off until it is back.)
    locked = RedisServer().start()
    try:
        locked.client().config_set("requirepass", "right7x")
        url = f"redis://:nopass7x@127.0.0.1:{locked.port}/0"
        (module_dir / "authapp.py").write_text(
            textwrap.dedent(f"""
            from taskpipe import TaskPipe
            app = TaskPipe(broker={url!r}, publish_retry="0.2s")
        """)
        )
        assert _main("worker", "-A", "authapp:app", "--burst") == 1
    finally:
        locked.cleanup()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Error: " in err and "broker error" in err
    assert "nopass7x" not in err


def test_known_broker_url_options_still_work(redis_server: RedisServer) -> None:
    url = (
        f"redis://127.0.0.1:{redis_server.port}/0?socket_timeout=5&health_check_interval=10"
        "&client_name=probe&db=0&max_connections=20&protocol=2"
    )
    app = TaskPipe(broker=url)
    try:
        assert app.thoonk.client.ping()
    finally:
        app.close()


def test_worker_warns_about_a_channel_nobody_uses(
    redis_server: RedisServer, prefix: str, module_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _app_module(module_dir, "typoapp", redis_server.url, prefix)
    caplog.set_level(logging.WARNING, logger="taskpipe.worker")
    assert _main("worker", "-A", path, "--burst", "-Q", "high,hihg") == 0
    typos = [r.getMessage() for r in caplog.records if "a typo?" in r.getMessage()]
    assert len(typos) == 1 and "'hihg'" in typos[0] and "high" in typos[0]
    caplog.clear()
    # known to the app (a task's channel, the default) or existing in Redis: no warning
    assert _main("worker", "-A", path, "--burst", "-Q", "high,default,hihg") == 0
    assert not [r for r in caplog.records if "a typo?" in r.getMessage()]


def _main(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as exc:  # the worker command exits with its code
        return int(exc.code or 0)


def _get(url: str) -> tuple[int, Any, int]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read()
        return resp.status, json.loads(body), len(body)


def test_dashboard_caps_big_job_bodies(redis_server: RedisServer, prefix: str) -> None:
    app = TaskPipe(broker=redis_server.url, prefix=prefix, max_payload=8 * 1024 * 1024)
    server = Dashboard(app, sampler_interval=60).serve("127.0.0.1", 0)
    try:
        big = app.send("blob", ("x" * (2 * 1024 * 1024),))
        small = app.send("blob", ("y",))
        url = server.url + f"api/channels/default/jobs/{big.id}"
        status, detail, size = _get(url)
        assert status == 200 and size < 2 * MAX_FIELD_BYTES
        marker = detail["payload"]
        assert marker["truncated"] is True and marker["bytes"] > 2 * 1024 * 1024
        assert marker["preview"].startswith("{") and marker["full"].endswith(
            f"/jobs/{big.id}?full=1"
        )
        status, whole, size = _get(url + "?full=1")
        assert whole["payload"]["args"] == ["x" * (2 * 1024 * 1024)] and size > 2 * 1024 * 1024
        status, detail, _ = _get(server.url + f"api/channels/default/jobs/{small.id}")
        assert detail["payload"]["args"] == ["y"]  # small bodies are sent as they are
    finally:
        server.close()
        app.close()
