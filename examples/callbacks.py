"""on_finish: a callable runs in the publishing process; a task signature is enqueued atomically.

python examples/callbacks.py
"""

import os
import threading

from taskpipe import TaskPipe, Worker

app = TaskPipe(
    "callbacks", broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"), prefix="callbacks:"
)


@app.task
def fetch(url: str) -> int:
    return len(url)


@app.task
def store(size: int, where: str) -> str:
    return f"stored {size} bytes in {where}"


def main() -> None:
    worker = Worker(app, concurrency=2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    seen = threading.Event()

    def announce(value: object, result: object) -> None:
        print("on_finish callable got:", value)
        seen.set()

    fetch.apply_async(["https://example.org/"], on_finish=announce)
    seen.wait(10)

    # A signature is published by the same Lua step that finishes the job: the result is
    # prepended to its arguments, and its id is "<job id>.on_finish".
    first = fetch.apply_async(["https://example.org/a"], on_finish=store.s("bucket-1"))
    follow = app.AsyncResult(first.id + ".on_finish")
    first.get(timeout=10)
    print("follow-up task returned:", follow.get(timeout=10))
    worker.stop()
    thread.join(10)
    app.close()


if __name__ == "__main__":
    main()
