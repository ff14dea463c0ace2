"""Flow control: numeric priorities, a per-user concurrency cap, a global rate limit and
deduplication (docs/flow-control.md).

    python examples/flow_control.py
"""

import os
import time

from taskpipe import TaskPipe
from taskpipe.testing import run_until_idle

app = TaskPipe("flow", broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"), prefix="flow:")
order: list[str] = []
running: dict[str, int] = {}
peak: dict[str, int] = {}


@app.task
def report(label: str) -> str:
    order.append(label)
    return label


@app.task(concurrency=2, concurrency_key=lambda user, n: user)
def sync_account(user: str, n: int) -> None:
    """At most 2 syncs of one user at a time, across every worker."""
    running[user] = running.get(user, 0) + 1
    peak[user] = max(peak.get(user, 0), running[user])
    time.sleep(0.1)
    running[user] -= 1


@app.task(rate_limit="20/s")  # one every 50 ms, shared by every worker
def call_api(i: int) -> float:
    return time.time()


@app.task(unique=True)
def rebuild_index(shard: int) -> int:
    return shard


def main() -> None:
    # priorities: 0 runs first, 9 last; jobs without a number come before numbered ones
    report.apply_async(["nightly"], priority=9)
    report.apply_async(["urgent"], priority=0)
    report.apply_async(["normal"], priority=5)
    run_until_idle(app)
    print("priorities ran in order:", ", ".join(order))

    for n in range(6):
        sync_account.delay("ann", n)
        sync_account.delay("bob", n)
    run_until_idle(app, concurrency=8)
    print("peak concurrent syncs per user:", peak)

    published = time.time()
    results = call_api.map(range(5))
    run_until_idle(app, concurrency=8)
    last = max(r.get(timeout=5) for r in results)
    # 20/s with a burst of 2: slots at 0, 0, 50, 100 and 150 ms
    print(
        "last of 5 rate-limited calls started >= 150 ms after publishing:", last - published >= 0.15
    )

    first = rebuild_index.delay(3)
    again = rebuild_index.delay(3)
    print(f"second publish deduplicated: {again.deduplicated}, same job: {again.id == first.id}")
    app.close()


if __name__ == "__main__":
    main()
