"""A Flask application that publishes taskpipe tasks (``taskpipe.contrib.flask``).

Run it (Redis on 127.0.0.1:6379, or set TASKPIPE_BROKER_URL):

    cd examples/flask_app
    taskpipe worker -A app:tasks            # the worker: tasks run inside the Flask app context
    flask --app app run --port 5000         # the web app

    curl -X POST localhost:5000/add -H 'Content-Type: application/json' -d '{"a": 2, "b": 3}'
    curl localhost:5000/result/<id>?wait=10
    open http://localhost:5000/taskpipe/    # the dashboard, mounted as a blueprint
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, current_app, jsonify, request

from taskpipe import ResultTimeout, TaskFailed
from taskpipe.contrib.flask import FlaskTaskPipe

tasks = FlaskTaskPipe()  # tasks are declared before the Flask app exists (app factory)


@tasks.task
def add(a: int, b: int) -> dict[str, Any]:
    """Runs in a worker, inside the Flask app context: ``current_app`` is the web app."""
    return {"sum": a + b, "app": current_app.name, "greeting": current_app.config["GREETING"]}


@tasks.task
def divide(a: int, b: int) -> float:
    return a / b


def create_app() -> Flask:
    app = Flask("flask_example")
    app.config["GREETING"] = "hello from the Flask config"
    app.config["TASKPIPE"] = {
        "broker": os.environ.get("TASKPIPE_BROKER_URL", "redis://127.0.0.1:6379/0"),
        "prefix": os.environ.get("TASKPIPE_PREFIX", ""),
    }
    tasks.init_app(app)
    app.register_blueprint(tasks.dashboard_blueprint(), url_prefix="/taskpipe")

    @app.post("/add")
    def publish_add() -> Any:
        body = request.get_json(force=True)
        return jsonify(id=add.delay(int(body["a"]), int(body["b"])).id), 202

    @app.post("/divide")
    def publish_divide() -> Any:
        body = request.get_json(force=True)
        return jsonify(id=divide.delay(int(body["a"]), int(body["b"])).id), 202

    @app.get("/result/<job_id>")
    def result(job_id: str) -> Any:
        handle = tasks.AsyncResult(job_id)
        try:
            value = handle.get(timeout=float(request.args.get("wait", "0")))
        except ResultTimeout:
            return jsonify(state=handle.state), 202
        except TaskFailed as exc:
            return jsonify(state="failed", error=f"{exc.exc_type}: {exc.exc_message}"), 200
        return jsonify(state="finished", value=value)

    return app


app = create_app()
