"""A small web dashboard for taskpipe: ``taskpipe dashboard -A module:app --port 8000``.

Standard library only (``http.server``) with plain JavaScript pages that poll a JSON API every
second. Pages: channel overview with throughput over time, jobs by state (paged, search by id),
job detail, workers, cron entries. Actions: retry a stalled job, retract a job, pause/resume a
channel. See ``docs/operations.md``.

    from taskpipe.contrib.dashboard import Dashboard

    server = Dashboard(app, token="s3cret").serve("127.0.0.1", 8000)
    print(server.url)
    ...
    server.close()
"""

from taskpipe.contrib.dashboard.api import DashboardAPI
from taskpipe.contrib.dashboard.server import Dashboard, DashboardServer, parse_basic

__all__ = ["Dashboard", "DashboardServer", "DashboardAPI", "parse_basic"]
