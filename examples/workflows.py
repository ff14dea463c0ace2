"""Workflows: a chain, a group, a chord, depends_on with allow_failure, on_failure, and abort.

python examples/workflows.py
"""

import os
import threading
import time

from taskpipe import TaskFailed, TaskPipe, Worker, chain, chord, current_job, group

app = TaskPipe(
    "workflows", broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"), prefix="workflows:"
)


@app.task
def add(a: int, b: int = 0) -> int:
    return a + b


@app.task
def total(values: list) -> int:
    return sum(v or 0 for v in values)


@app.task
def fail(*args: object) -> None:
    raise ValueError("no luck")


@app.task
def report(info: dict) -> str:
    return f"{info['task']} failed with {info['exc_type']}"


@app.task
def long_loop() -> str:
    job = current_job()
    assert job is not None
    for _ in range(1000):
        job.check_abort()  # raises JobAborted once the job is aborted
        time.sleep(0.01)
    return "finished"


def main() -> None:
    worker = Worker(app, concurrency=4)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    pipeline = chain(add.s(1, 2), add.s(10) | add.s(100)).apply_async()  # chain() and | mix
    print("chain (1 + 2) + 10 + 100 =", pipeline.get(timeout=10))

    squares = group(add.s(i, i) for i in range(5)).apply_async()
    print("group:", squares.get(timeout=10), "completed:", squares.completed_count())

    summed = chord(group(add.s(i) for i in range(10)), total.s()).apply_async()
    print("chord total of 0..9 =", summed.get(timeout=10))

    bad = fail.delay()
    anyway = total.apply_async(depends_on=[bad], pass_results="all", allow_failure=True)
    strict = total.apply_async(depends_on=[bad], pass_results="all")
    print("allow_failure ran with:", anyway.get(timeout=10))
    try:
        strict.get(timeout=10)
    except TaskFailed as exc:
        print("dependant of a failed parent:", exc.exc_type)

    failing = fail.apply_async(on_failure=report.s())
    failing.get(timeout=10, propagate=False)
    print("on_failure task:", app.AsyncResult(failing.id + ".on_failure").get(timeout=10))

    running = long_loop.delay()
    while running.state != "claimed":
        time.sleep(0.01)
    running.abort(by="example")
    print("aborted job state:", running.state)

    worker.stop()
    thread.join(10)
    app.close()


if __name__ == "__main__":
    main()
