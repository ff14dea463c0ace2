"""A tiny web app that enqueues a task and shows its result (standard library only, no Flask).

It shows the pattern any web framework uses with taskpipe: the request handler publishes a job
with ``.delay()`` and answers at once with a link; another page reads the job's state and result
through ``AsyncResult`` (never waiting long inside a request). A worker runs the jobs.

Run it against a Redis server (two terminals):

    export TASKPIPE_BROKER_URL=redis://127.0.0.1:6379/0
    PYTHONPATH=contrib/flask_example taskpipe worker -A app:app
    python contrib/flask_example/app.py --port 5000          # then open http://127.0.0.1:5000/

or in one process, on the embedded broker:

    python contrib/flask_example/app.py --with-worker

With Flask the handlers would be the same three functions (``index``, ``submit``, ``show``)
behind ``@flask_app.get('/')`` and friends.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from taskpipe import TaskPipe, Worker

app = TaskPipe("webdemo", broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"),
               prefix=os.environ.get("TASKPIPE_PREFIX", "webdemo:"))


@app.task(name="webdemo.slow_add")
def slow_add(a: int, b: int) -> int:
    """Add two numbers, slowly enough to see the job waiting."""
    time.sleep(0.2)
    return a + b


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>taskpipe web demo</title>{head}
</head><body style="font-family: sans-serif; max-width: 40rem; margin: 2rem auto">
<h1>taskpipe web demo</h1>{body}</body></html>"""


def index() -> tuple[int, str, str]:
    """The form."""
    body = ('<form method="post" action="/jobs"><input name="a" value="2" size="4"> + '
            '<input name="b" value="3" size="4"> <button type="submit">Add in the background'
            '</button></form>')
    return 200, "text/html", PAGE.format(head="", body=body)


def submit(form: dict[str, list[str]]) -> tuple[int, str, str]:
    """Publish the job and answer at once (the caller redirects to its page)."""
    try:
        a, b = int(form["a"][0]), int(form["b"][0])
    except (KeyError, ValueError, IndexError):
        return 400, "text/plain", "a and b must be integers"
    result = slow_add.delay(a, b)
    return 303, "/jobs/" + result.id, ""


def show(job_id: str, as_json: bool) -> tuple[int, str, str]:
    """A job's state and, once finished, its result (the page refreshes itself until then)."""
    result = app.AsyncResult(job_id, slow_add.channel)
    state = result.state
    if state == "unknown":
        return 404, "text/plain", f"no job {job_id}"
    value = result.result if result.ready() else None
    if as_json:
        data = {"id": job_id, "state": state,
                "result": value if state == "finished" else None,
                "error": str(value) if state == "failed" else None}
        return 200, "application/json", json.dumps(data)
    ready = state in ("finished", "failed")
    head = "" if ready else '<meta http-equiv="refresh" content="1">'
    body = (f"<p>Job <code>{html.escape(job_id)}</code> is <b id='state'>{html.escape(state)}</b>.</p>"
            + (f"<p>Result: <b id='result'>{html.escape(repr(value))}</b></p>" if ready else
               "<p>This page refreshes every second.</p>")
            + '<p><a href="/">Another one</a></p>')
    return 200, "text/html", PAGE.format(head=head, body=body)


class Handler(BaseHTTPRequestHandler):
    """Routes ``GET /``, ``POST /jobs``, ``GET /jobs/<id>`` and ``GET /jobs/<id>.json``."""

    def _answer(self, status: int, ctype: str, body: str) -> None:
        self.send_response(status)
        if status in (301, 302, 303):
            self.send_header("Location", ctype)
            ctype, body = "text/plain", ""
        data = body.encode()
        self.send_header("Content-Type", ctype + "; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = urlsplit(self.path).path
        if path == "/":
            self._answer(*index())
        elif path.startswith("/jobs/"):
            job_id = path[len("/jobs/"):]
            as_json = job_id.endswith(".json")
            self._answer(*show(job_id[:-5] if as_json else job_id, as_json))
        else:
            self._answer(404, "text/plain", "not found")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(min(length, 65536)).decode("utf-8", "replace"))
        if urlsplit(self.path).path == "/jobs":
            self._answer(*submit(form))
        else:
            self._answer(404, "text/plain", "not found")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def make_server(host: str = "127.0.0.1", port: int = 5000) -> ThreadingHTTPServer:
    """The web server (not started)."""
    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    """Serve the demo; ``--with-worker`` also runs a worker thread in this process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--with-worker", action="store_true")
    args = parser.parse_args(argv)
    if args.with_worker:
        worker = Worker(app, [slow_add.channel], concurrency=4)
        threading.Thread(target=worker.run, daemon=True).start()
    server = make_server(args.host, args.port)
    print(f"web demo on http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
