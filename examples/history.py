"""Job history: a failed job keeps its record, is found by task and error, and is requeued with
its original arguments once the cause is fixed; a waiting job's arguments are edited.

    python examples/history.py
"""

import os

from taskpipe import TaskPipe
from taskpipe.history import task_breakdown
from taskpipe.serialization import decode_envelope
from taskpipe.testing import run_until_idle

app = TaskPipe(
    "history", broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"), prefix="history:"
)
declined = {"4242": True}


class CardDeclined(Exception):
    def __init__(self, card: str) -> None:
        super().__init__(f"card {card} declined")
        self.code = "E_DECLINED"  # kept in the job's record


@app.task(retries=2, retry_backoff=0)
def charge(order: int, card: str) -> str:
    if declined.get(card):
        raise CardDeclined(card)
    return f"order {order} charged"


def main() -> None:
    bad = charge.delay(1, card="4242")
    charge.delay(2, card="1111")
    run_until_idle(app)

    rec = bad.record()
    print(
        f"state: {bad.state} | task {rec.task} | args {rec.args_display} | "
        f"attempts {rec.attempts} | code {rec.code}"
    )
    print("error:", rec.error)
    found = app.jobs(state="failed", task=charge.name, error="declined")
    print("found by task and error:", [j.id == bad.id for j in found])
    print("breakdown:", task_breakdown(app)[charge.name])

    declined["4242"] = False  # the cause is fixed: run it again, same id, same arguments
    bad.requeue()
    run_until_idle(app)
    print("after requeue:", bad.get(timeout=5), "| requeues:", bad.record().requeues)

    later = charge.apply_async((3,), {"card": "4242"}, delay="1h")
    later.edit(kwargs={"card": "5555"})
    edited = decode_envelope(app.channel().get_item(later.id) or b"")
    print("edited waiting job:", edited.args, edited.kwargs, "state:", later.state)


if __name__ == "__main__":
    main()
    app.close()
