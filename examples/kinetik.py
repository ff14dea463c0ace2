"""Kinetik's API on taskpipe: define() a task, create() jobs, follow their events and read the
automatic job log lines. Runs on the embedded broker (memory://) unless TASKPIPE_BROKER_URL is set:

    python examples/kinetik.py
"""

import os
import threading

from taskpipe import TaskPipe, current_job
from taskpipe.testing import running_worker

queue = TaskPipe(
    "kinetik", broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"), prefix="kinetik-example:"
)

# only when TASKPIPE_ENV=development (this script sets nothing, so it stays quiet)
queue.configure("development", lambda q: q.on("log", lambda job, line: print("debug:", line)))


def send_email(email: str, subject: str) -> str:
    job = current_job()
    assert job is not None
    job.progress(1, 2)
    if "@" not in email:
        raise ValueError(f"not an address: {email}")
    job.log("Email sent", receipt="r-42")
    job.progress(2, 2)
    return f"sent {subject!r} to {email}"


send = (
    queue.define("send email")
    .tag("notifications")
    .desc("Sends one transactional email.")
    .timeout("1m")
    .action(send_email)
)


def main() -> None:
    completed, finished = threading.Event(), threading.Event()
    seen = []
    send.on("progress", lambda job, current, total: seen.append(f"progress {current:g}/{total:g}"))

    def on_complete(job: object) -> None:
        seen.append("complete")
        completed.set()

    send.on("complete", on_complete)
    send.on("fail", lambda err, job: seen.append(f"fail: {err.exc_type}"))
    queue.on("fail", lambda err, job: finished.set())  # app-wide: every task's failures
    queue.listen(["notifications"])
    print(f"task {send.name!r} on tag {send.channel!r}: {send.description}")
    with running_worker(queue, ["notifications"], concurrency=1):
        ok = queue.create("send email", {"email": "ford@example.com", "subject": "Hello Universe"})
        print(ok.get(timeout=10))
        completed.wait(10)  # events arrive just after the result: keep the two jobs' apart
        bad = queue.create("send email", {"email": "nobody", "subject": "Hi"})
        bad.get(timeout=10, propagate=False)
        finished.wait(10)
    queue.events.stop()
    print("events:", ", ".join(seen))
    for line in ok.logs():
        print("log:", line.split(" ", 1)[1])  # without the timestamp
    print("failed job's last line:", bad.logs()[-1].split(" ", 1)[1])
    queue.close()


if __name__ == "__main__":
    main()
