"""Cron: run a task on a schedule. A worker started with ``beat=True`` (``taskpipe worker --beat``)
also runs the scheduler; ``taskpipe scheduler -A examples.cron:app`` runs it on its own.

Runs a short demo (until three heartbeats have run, ~3 seconds) on the embedded broker
(memory://) unless TASKPIPE_BROKER_URL is set:

    python examples/cron.py
    TASKPIPE_BROKER_URL=redis://127.0.0.1:6379/0 python examples/cron.py
"""

import os
import threading

from taskpipe import TaskPipe, Worker, current_job
from taskpipe.cli.cron_cmd import entry_status

#: released by each heartbeat this process runs: the demo stops after three
beats = threading.Semaphore(0)

app = TaskPipe(
    "cron-demo", broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"), prefix="cron-demo:"
)


# six fields: seconds first. This one fires every second; misfire="all": a second missed
# (a scheduler late on a busy machine) still runs, so no second is skipped.
@app.cron("* * * * * *", name="heartbeat", kwargs={"source": "cron"}, misfire="all")
@app.task
def heartbeat(source: str) -> str:
    job = current_job()
    assert job is not None
    print(f"heartbeat from {source}: job {job.id}", flush=True)
    beats.release()
    return job.id


# five fields, in a time zone; misfire="skip": after downtime, missed fires are not run.
@app.cron("0 9 * * 1-5", tz="Europe/Paris", name="weekday-report", misfire="skip")
@app.task
def report() -> None:
    print("good morning, Paris")


def cleanup(days: int) -> None:
    print(f"cleaning up files older than {days} days")


app.add_cron(app.task(cleanup), "@daily", args=(30,))


def main() -> None:
    worker = Worker(app, concurrency=2, beat=True)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    for _ in range(3):  # three heartbeats, however long a busy machine takes to start
        if not beats.acquire(timeout=60):
            break
    worker.stop()
    thread.join(15)
    for row in entry_status(app):
        last = row.last_fire.isoformat() if row.last_fire else "-"
        print(
            f"{row.name:15} {row.expr:14} next {row.next_fire.isoformat()}  last {last}  "
            f"({row.last_outcome})"
        )
    app.close()


if __name__ == "__main__":
    main()
