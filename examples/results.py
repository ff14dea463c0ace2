"""Results: TTLs, states, errors with remote tracebacks, expired vs unknown, handles by id.

python examples/results.py
"""

import os
import time

from taskpipe import ResultExpired, ResultTimeout, ResultUnknown, TaskFailed, TaskPipe
from taskpipe.testing import run_until_idle

app = TaskPipe(
    "results",
    broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"),
    prefix="results:",
    result_ttl="1h",
)


@app.task
def square(x: int) -> int:
    return x * x


@app.task
def fail(msg: str) -> None:
    raise ValueError(msg)


def main() -> None:
    kept = square.delay(7)
    short = square.apply_async([8], result_ttl="100ms")
    broken = fail.delay("bad input")
    try:
        kept.get(timeout=0.1)
    except ResultTimeout:
        print("no worker yet: get(timeout=0.1) raised ResultTimeout")
    run_until_idle(app)

    again = app.AsyncResult(kept.id, channel="default")  # e.g. in another process
    print("square(7) =", again.get(timeout=5), "state:", again.state)
    err = broken.get(timeout=5, propagate=False)
    assert isinstance(err, TaskFailed)
    print(
        "fail() ->",
        err.exc_type,
        err.exc_message,
        "| traceback lines:",
        len(err.remote_traceback.splitlines()),
    )
    time.sleep(0.3)
    try:
        app.AsyncResult(short.id).get(timeout=1)
    except ResultExpired:
        print("square(8): result expired after its 100ms TTL")
    try:
        app.AsyncResult("no-such-id").get(timeout=1)
    except ResultUnknown:
        print("no-such-id: unknown")
    app.close()


if __name__ == "__main__":
    main()
