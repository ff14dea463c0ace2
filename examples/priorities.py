"""Priorities: strict channel order (-Q high,default) and priority jobs at the head of a channel.

python examples/priorities.py
"""

import os

from taskpipe import TaskPipe
from taskpipe.testing import run_until_idle

app = TaskPipe(
    "priorities", broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"), prefix="priorities:"
)
order: list[str] = []


@app.task
def work(label: str) -> str:
    order.append(label)
    return label


@app.task(channel="high")
def urgent(label: str) -> str:
    order.append(label)
    return label


def main() -> None:
    work.delay("default-1")
    work.delay("default-2")
    work.apply_async(["default-priority"], priority=True)  # jumps to the head of "default"
    urgent.delay("high-1")  # "high" is served first
    run_until_idle(app, ["high", "default"])  # one worker, channels in strict order
    print("ran in order:", ", ".join(order))
    app.close()


if __name__ == "__main__":
    main()
