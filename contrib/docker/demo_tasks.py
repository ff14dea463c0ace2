"""A demo task module for the container image (replace it with your project's tasks).

The broker comes from ``TASKPIPE_BROKER_URL`` (set by docker-compose.yml).
"""

from taskpipe import TaskPipe

app = TaskPipe("demo")


@app.task
def add(a: int, b: int) -> int:
    """Add two numbers (try: ``taskpipe publish demo_tasks.add --args '[2, 3]'``)."""
    return a + b
