"""Delays and ETAs: the job waits in Redis and becomes available when due by Redis server time.

python examples/delays.py
"""

import os
import threading
import time
from datetime import datetime, timedelta, timezone

from taskpipe import TaskPipe, Worker

app = TaskPipe(
    "delays", broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"), prefix="delays:"
)


@app.task
def stamp(label: str) -> float:
    return time.time()


def main() -> None:
    worker = Worker(app, concurrency=2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    start = time.time()
    later = stamp.apply_async(["half a second"], delay="500ms")
    eta = stamp.apply_async(["at an eta"], eta=datetime.now(timezone.utc) + timedelta(seconds=1))
    print("delayed job state:", later.state)
    print(f"'500ms' ran after {later.get(timeout=10) - start:.2f}s")
    print(f"eta +1s ran after {eta.get(timeout=10) - start:.2f}s")
    worker.stop()
    thread.join(10)
    app.close()


if __name__ == "__main__":
    main()
