"""The dashboard as a WSGI app (taskpipe.contrib.dashboard.mount.wsgi_app) under a real
``wsgiref`` server, mounted below a prefix; the ASGI twin is covered through FastAPI."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from integration_helpers import http

from taskpipe import TaskPipe
from taskpipe.contrib.dashboard import Dashboard
from taskpipe.contrib.dashboard.mount import wsgi_app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def served() -> Iterator[tuple[str, TaskPipe]]:
    app = TaskPipe(broker=f"memory://{uuid.uuid4().hex}")
    inner = wsgi_app(Dashboard(app, basic=("ops", "pw")))

    def host(environ: dict[str, Any], start_response: Any) -> Any:  # mounted at /ops
        path = environ.get("PATH_INFO", "")
        if path == "/ops" or path.startswith("/ops/"):
            environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/ops", path[4:]
            return inner(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"host app"]

    server = make_server("127.0.0.1", 0, host, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        server.server_close()
        app.close()


def test_wsgi_mount(served: tuple[str, TaskPipe]) -> None:
    import base64

    base, app = served
    app.channel("emails").put(b"x")
    auth = {"Authorization": "Basic " + base64.b64encode(b"ops:pw").decode()}
    status, _, resp = http("GET", base + "/ops", headers=auth)
    assert status == 200 and resp.geturl().endswith("/ops/")  # redirected below the prefix
    assert http("GET", base + "/ops/")[0] == 401  # basic auth protects even the page shell
    status, body, resp = http("GET", base + "/ops/static/app.js")
    assert status == 200 and resp.headers["X-Frame-Options"] == "DENY"
    status, overview, _ = http("GET", base + "/ops/api/overview", headers=auth)
    emails = next(c for c in overview["channels"] if c["channel"] == "emails")
    assert status == 200 and emails["available"] == 1
    assert http("POST", base + "/ops/api/channels/emails/pause", headers=auth)[0] == 403
    status, _, _ = http(
        "POST", base + "/ops/api/channels/emails/pause", headers={**auth, "X-Taskpipe": "1"}
    )
    assert status == 200 and app.channel("emails").paused
    assert http("GET", base + "/elsewhere")[1] == "host app"
