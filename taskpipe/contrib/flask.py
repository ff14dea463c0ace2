"""Flask integration: ``pip install 'taskpipe[flask]'``.

    from flask import Flask
    from taskpipe.contrib.flask import FlaskTaskPipe

    tasks = FlaskTaskPipe()            # declare tasks at import time

    @tasks.task
    def send_welcome(user_id: int) -> None:
        current_app.logger.info(...)    # every run happens inside the Flask app context

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["TASKPIPE"] = {"broker": "redis://127.0.0.1:6379/0"}
        tasks.init_app(app)             # or FlaskTaskPipe(app) without a factory
        app.register_blueprint(tasks.dashboard_blueprint(), url_prefix="/taskpipe")
        return app

Settings (``app.config``): ``TASKPIPE`` is a dict of ``TaskPipe`` options (``broker``,
``prefix``, ``result_ttl``, ``eager`` ...); ``TASKPIPE_BROKER_URL`` alone also works. Run the
worker with ``taskpipe worker -A myproject:tasks`` (after ``init_app``, e.g. a module that
builds the Flask app), see ``docs/flask.md``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from flask import Blueprint, Flask, Response, request

from taskpipe.contrib._framework import FrameworkTaskPipe
from taskpipe.contrib.dashboard import Dashboard
from taskpipe.contrib.dashboard.mount import route

__all__ = ["FlaskTaskPipe"]


class FlaskTaskPipe(FrameworkTaskPipe):
    """A ``TaskPipe`` bound to a Flask app: configured from ``app.config``, each task run inside
    ``app.app_context()``, reachable as ``current_app.extensions["taskpipe"]``."""

    def __init__(
        self, flask_app: Flask | None = None, name: str | None = None, **options: Any
    ) -> None:
        super().__init__(name, **options)
        self.flask_app: Flask | None = None
        if flask_app is not None:
            self.init_app(flask_app)

    def init_app(self, flask_app: Flask) -> None:
        """Read the settings from ``flask_app.config`` and bind the tasks to this Flask app."""
        settings = dict(flask_app.config.get("TASKPIPE") or {})
        url = flask_app.config.get("TASKPIPE_BROKER_URL")
        if url:
            settings.setdefault("broker", url)
        if settings:
            self.reconfigure(**settings)
        self.flask_app = flask_app
        flask_app.extensions["taskpipe"] = self

    def task_context(self) -> AbstractContextManager[Any]:
        """The Flask app context (unless one is already pushed, e.g. a direct call in a view)."""
        from flask import has_app_context

        if self.flask_app is None or has_app_context():
            return nullcontext()
        return self.flask_app.app_context()

    def dashboard_blueprint(
        self,
        name: str = "taskpipe_dashboard",
        *,
        token: str | None = None,
        basic: tuple[str, str] | None = None,
    ) -> Blueprint:
        """The dashboard as a blueprint: ``register_blueprint(bp, url_prefix="/taskpipe")``.

        Guard it with your own auth (e.g. ``bp.before_request``) or ``token``/``basic``."""
        dashboard = Dashboard(self, token=token, basic=basic)
        bp = Blueprint(name, __name__)

        def serve(path: str = "") -> Response:
            if not path and not request.path.endswith("/"):
                return Response(status=308, headers={"Location": request.path + "/"})
            request.get_data()  # actions carry no body that matters; read and drop it
            reply = route(
                dashboard,
                request.method,
                "/" + path,
                request.headers,
                request.query_string.decode("latin-1"),
            )
            return Response(reply.body, status=reply.status, headers=reply.headers)

        methods = ["GET", "HEAD", "POST", "PUT", "DELETE"]
        bp.add_url_rule("/", "index", serve, methods=methods, strict_slashes=False)
        bp.add_url_rule("/<path:path>", "path", serve, methods=methods)
        return bp
