"""Flask integration: the extension (settings, app context per task, factory pattern), the
dashboard blueprint, and examples/flask_app end to end (a real worker process, the Flask
server, HTTP requests, real Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

flask = pytest.importorskip("flask")

from integration_helpers import ROOT, http, processes, wait_http  # noqa: E402
from redis_server import RedisServer, free_port  # noqa: E402

from taskpipe.contrib.flask import FlaskTaskPipe  # noqa: E402
from taskpipe.testing import run_until_idle  # noqa: E402


@pytest.fixture
def ext() -> Iterator[FlaskTaskPipe]:
    tasks = FlaskTaskPipe()

    @tasks.task
    def where() -> dict[str, Any]:
        return {"app": flask.current_app.name, "flag": flask.current_app.config["FLAG"]}

    app = flask.Flask("unit")
    app.config["FLAG"] = "set-in-config"
    app.config["TASKPIPE"] = {"broker": f"memory://{uuid.uuid4().hex}", "result_ttl": "5m"}
    tasks.init_app(app)
    yield tasks
    tasks.close()


def test_init_app_reads_config_and_keeps_tasks(ext: FlaskTaskPipe) -> None:
    assert ext.broker_url.startswith("memory://") and ext.result_ttl == 300
    assert ext.flask_app is not None and ext.flask_app.extensions["taskpipe"] is ext
    (name,) = ext.tasks
    assert name.endswith(".where") and ext.tasks[name].app is ext


def test_tasks_run_in_the_app_context(ext: FlaskTaskPipe) -> None:
    task = next(iter(ext.tasks.values()))
    r = task.delay()
    assert not flask.has_app_context()
    run_until_idle(ext)
    assert r.get(timeout=5) == {"app": "unit", "flag": "set-in-config"}


def test_bad_setting_is_a_config_error() -> None:
    from taskpipe import ConfigError

    app = flask.Flask("bad")
    app.config["TASKPIPE"] = {"brokr": "memory://"}
    with pytest.raises(ConfigError, match="brokr"):
        FlaskTaskPipe(app)


def test_dashboard_blueprint(ext: FlaskTaskPipe) -> None:
    ext.flask_app.register_blueprint(  # type: ignore[union-attr]
        ext.dashboard_blueprint(token="tok"),
        url_prefix="/ops",
    )
    client = ext.flask_app.test_client()  # type: ignore[union-attr]
    assert client.get("/ops").status_code == 308
    page = client.get("/ops/")
    assert page.status_code == 200 and b"static/app.js" in page.data
    assert client.get("/ops/static/app.js").status_code == 200
    assert client.get("/ops/api/overview").status_code == 401
    ok = client.get("/ops/api/overview", headers={"Authorization": "Bearer tok"})
    assert ok.status_code == 200 and "channels" in ok.get_json()
    assert (
        client.post(
            "/ops/api/channels/default/pause", headers={"Authorization": "Bearer tok"}
        ).status_code
        == 403
    )


def test_example_end_to_end(redis_server: RedisServer) -> None:
    port = free_port()
    env = {"TASKPIPE_BROKER_URL": redis_server.url, "TASKPIPE_PREFIX": f"fl{uuid.uuid4().hex[:8]}:"}
    base = f"http://127.0.0.1:{port}"
    with processes(env, ROOT / "examples" / "flask_app") as procs:
        procs.start("worker", ["-m", "taskpipe", "worker", "-A", "app:tasks", "-c", "2"])
        procs.start("web", ["-m", "flask", "--app", "app", "run", "--port", str(port)])
        wait_http(base + "/taskpipe/healthz", procs)
        status, body, _ = http("POST", base + "/add", {"a": 2, "b": 40})
        assert status == 202, body
        status, body, _ = http("GET", f"{base}/result/{body['id']}?wait=30")
        assert status == 200, body
        assert body == {
            "state": "finished",
            "value": {"sum": 42, "app": "flask_example", "greeting": "hello from the Flask config"},
        }
        _, failed, _ = http("POST", base + "/divide", {"a": 1, "b": 0})
        _, body, _ = http("GET", f"{base}/result/{failed['id']}?wait=30")
        assert body == {"state": "failed", "error": "ZeroDivisionError: division by zero"}
        status, overview, _ = http("GET", base + "/taskpipe/api/overview")
        assert status == 200
        default = next(c for c in overview["channels"] if c["channel"] == "default")
        assert default["available"] == 0 and overview["workers"] == 1, overview
