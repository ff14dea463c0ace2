"""Quickstart: define tasks, publish them, run a worker, read the results.

Runs on the embedded broker (memory://) unless TASKPIPE_BROKER_URL is set:

    python examples/quickstart.py
    TASKPIPE_BROKER_URL=redis://127.0.0.1:6379/0 python examples/quickstart.py
"""

import logging
import os
import threading

from taskpipe import TaskFailed, TaskPipe, Worker, current_job

app = TaskPipe(
    "quickstart", broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"), prefix="quickstart:"
)


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(retries=2, retry_backoff="50ms")
def resize(image: str, sizes: list[int]) -> dict[str, int]:
    job = current_job()
    assert job is not None
    for done, size in enumerate(sizes, 1):
        job.log(f"resized {image} to {size}px", size=size)
        job.progress(done, len(sizes))
    logging.getLogger("resize").warning("done with %s", image)  # captured into the job log too
    return {"image_count": len(sizes)}


@app.task
def divide(a: float, b: float) -> float:
    return a / b


def main() -> None:
    worker = Worker(app, ["default"], concurrency=4)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    total = add.delay(2, 3)
    thumbs = resize.delay("cat.png", [64, 128, 256])
    broken = divide.delay(1, 0)

    print("add(2, 3) =", total.get(timeout=10))
    print("resize ->", thumbs.get(timeout=10), "| log:", thumbs.logs())
    try:
        broken.get(timeout=10)
    except TaskFailed as exc:  # carries the remote type, message and traceback
        print("divide(1, 0) failed:", type(exc).__name__, "-", str(exc).splitlines()[0])
    print("states:", total.state, thumbs.state, broken.state)

    worker.stop()
    thread.join(10)
    app.close()


if __name__ == "__main__":
    main()
