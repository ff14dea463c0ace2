"""The worker: claims jobs, runs them in a pool, keeps their leases, writes their outcomes."""

from taskpipe.worker.settings import WorkerSettings
from taskpipe.worker.worker import Worker

__all__ = ["Worker", "WorkerSettings"]
