"""Job states and outcome kinds: the one place they are defined.

``JobState`` is a ``str`` enum: each member *is* its wire string (``JobState.FINISHED ==
"finished"``, ``json.dumps`` writes ``"finished"``, ``f"{state}"`` prints ``finished``), so code
and tools that compare with plain strings keep working. A new state is added here, to the groups
below that it belongs to, and to the Lua ``job_state`` script that reports it.

The ``Literal`` aliases name the small closed sets of strings the worker and the operators'
views use for outcomes.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

__all__ = [
    "JobState",
    "CHANNEL_STATES",
    "QUEUED_STATES",
    "LISTABLE_STATES",
    "DONE_STATES",
    "FAILED_STATES",
    "ERROR_STATES",
    "OUTCOME_STATES",
    "OutcomeKind",
    "ResultOutcome",
    "WorkerEvent",
]


class JobState(str, Enum):
    """Where a job is. Values are the wire strings (``JobChannel.info``, ``AsyncResult.state``,
    ``taskpipe jobs list --state``, the dashboard's API, the metrics' ``state`` label)."""

    #: published with a delay or an eta, not due yet
    DELAYED = "delayed"
    #: waits for parent jobs (``depends_on``, a chain's next step, a chord's callback)
    WAITING = "waiting"
    #: queued: the next worker to claim on its channel may take it
    AVAILABLE = "available"
    #: a worker holds it (under a lease)
    CLAIMED = "claimed"
    #: parked with a reason; never dispatched until an operator retries it
    STALLED = "stalled"
    #: done; its result (or its failure) is kept for ``result_ttl``
    FINISHED = "finished"
    #: done with an error: the task layer's reading of a finished job whose result is a failure
    FAILED = "failed"
    #: done: aborted while it ran (``AsyncResult.abort``); a failure of type ``JobAborted``
    ABORTED = "aborted"
    #: done: not started by its ``expires`` deadline, so not run; a failure of type ``JobExpired``
    EXPIRED = "expired"
    #: done with an error because it ran past its time limit (``JobTimeout``), retries used up
    TIMEOUT = "timeout"
    #: retracted before it ended; what is left is its record (docs/history.md)
    RETRACTED = "retracted"
    #: no such job (never published, retracted, or finished and forgotten)
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


#: the states the Thoonk layer reports for a job (``JobChannel.info``); ``FAILED``, ``TIMEOUT``,
#: ``ABORTED`` and ``EXPIRED`` are read from the stored result by the task layer, ``RETRACTED``
#: from a record
CHANNEL_STATES = (
    JobState.DELAYED,
    JobState.WAITING,
    JobState.AVAILABLE,
    JobState.CLAIMED,
    JobState.STALLED,
    JobState.FINISHED,
    JobState.UNKNOWN,
)
#: the states of a job still on its channel (its depth: metrics, ``taskpipe status``)
QUEUED_STATES = (
    JobState.AVAILABLE,
    JobState.DELAYED,
    JobState.WAITING,
    JobState.CLAIMED,
    JobState.STALLED,
)
#: the states ``taskpipe jobs list`` and the dashboard list jobs by
LISTABLE_STATES = (
    *QUEUED_STATES,
    JobState.FINISHED,
    JobState.FAILED,
    JobState.TIMEOUT,
    JobState.ABORTED,
    JobState.EXPIRED,
)
#: the states a job's result will not change from (``ready()``): timed-out, aborted and expired
#: jobs are finished jobs whose stored failure says so
DONE_STATES = (
    JobState.FINISHED,
    JobState.FAILED,
    JobState.TIMEOUT,
    JobState.ABORTED,
    JobState.EXPIRED,
)
#: the states of a job that finished with an error (``failed()``)
FAILED_STATES = (JobState.FAILED, JobState.TIMEOUT, JobState.ABORTED, JobState.EXPIRED)
#: the same (the name the history code uses)
ERROR_STATES = FAILED_STATES
#: the ``exc_type`` of the stored failure of a job that ended timed out / aborted / expired ->
#: its state
OUTCOME_STATES = {
    "JobTimeout": JobState.TIMEOUT,
    "JobAborted": JobState.ABORTED,
    "JobExpired": JobState.EXPIRED,
}

#: what the worker does with a claimed job after running it (``worker.runner.Outcome.kind``):
#: finish it, finish it as failed, run it again later, park it, send it back (cancel count + 1),
#: or give it back unstarted (count unchanged)
OutcomeKind = Literal[
    "success", "failure", "retry", "stall", "cancel", "release", "aborted", "expired"
]

#: a stored result as the operators' views read it (``taskpipe.inspection.views.outcome_of``):
#: a value, a failure, a Thoonk-native (raw) result, or none left (expired / ``result_ttl=0``)
ResultOutcome = Literal["ok", "failed", "timeout", "raw", "expired", "aborted", "job_expired"]

#: the counters a worker's outcome writer moves (``OutcomeWriter.stats`` and its listeners, the
#: metrics' ``outcome`` label)
WorkerEvent = Literal[
    "finished",
    "failed",
    "timeout",
    "retried",
    "stalled",
    "cancelled",
    "released",
    "evicted",
    "lease_lost",
    "lease_expired",
    "lease_expired_stalled",
    "outcome_errors",
    "aborted",
    "expired",
]
