"""Middleware: time every run, tag every publish, report failures (Sentry-style) and keep going
when a hook itself breaks. Runs on the embedded broker (memory://) unless TASKPIPE_BROKER_URL is set:

    python examples/middleware.py
"""

import os
import time
from typing import Any

from taskpipe import Middleware, TaskFailed, TaskPipe
from taskpipe.contrib.errors_reporting import ErrorReporter
from taskpipe.middleware import Message, RunningJob
from taskpipe.testing import run_until_idle

app = TaskPipe(
    "middleware",
    broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"),
    prefix="middleware-example:",
)


class Timing(Middleware):
    """Adds a header at publish time and times each run."""

    def before_publish(self, message: Message) -> None:
        message.headers["published_at"] = f"{time.time():.3f}"

    def before_run(self, job: RunningJob) -> None:
        job.state["t0"] = time.perf_counter()

    def after_run(self, job: RunningJob, outcome: Any) -> None:
        job.state["took"] = time.perf_counter() - job.state["t0"]  # e.g. for a metrics system
        seen = "yes" if "published_at" in job.headers else "no"
        print(
            f"{job.name}({', '.join(map(repr, job.args))}) -> {outcome.kind} (header seen: {seen})"
        )


class Broken(Middleware):
    def before_run(self, job: RunningJob) -> None:
        raise RuntimeError("this hook is broken")  # logged; the job runs anyway


reported: list[tuple[BaseException, str]] = []  # stands in for sentry_sdk.capture_exception
app.use(Timing())
app.use(Broken())
app.use(ErrorReporter(lambda exc, **scope: reported.append((exc, scope["tags"]["taskpipe.task"]))))


@app.task(name="divide")
def divide(a: float, b: float) -> float:
    return a / b


def main() -> None:
    ok, bad = divide.delay(1, 4), divide.delay(1, 0)
    run_until_idle(app)
    print("1/4 =", ok.get(timeout=5))
    try:
        bad.get(timeout=5)
    except TaskFailed as failed:
        print("1/0 failed:", failed.exc_type)
    for error, task in reported:
        print(f"reported to the error tracker: {type(error).__name__} in task {task}")
    app.close()


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.CRITICAL)  # hide the broken hook's traceback here
    main()
