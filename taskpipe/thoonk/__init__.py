"""The Thoonk object layer: feeds, sorted feeds, queues and job channels, wire-compatible with
the original thoonk.py 1.0.x and thoonk.js 0.5.x clients (see ``docs/contract.md``).

This layer knows nothing about tasks: it moves opaque bytes between states, atomically.
"""

from taskpipe.thoonk.job import Claim, FinishRequest, JobChannel, JobInfo, PutRequest
from taskpipe.thoonk.job_api import Job, JobClaim
from taskpipe.thoonk.thoonk import Thoonk

__all__ = [
    "Thoonk",
    "JobChannel",
    "Job",
    "JobClaim",
    "Claim",
    "JobInfo",
    "PutRequest",
    "FinishRequest",
]
