"""Announces written outcomes on the channels' job event stream (``taskpipe.events``).

An ``OutcomeWriter`` listener: each outcome the writer applied (finished, failed, retried,
stalled, expired) becomes one ``feed.jobevent:<f>`` message, ``<kind>\\0<id>\\0<json>``; the messages
of a batch are published in one script call (``job_announce.lua``) after the batch is written (the
finisher thread calls ``flush``), so an event never runs ahead of the state it reports.
An aborted job is announced by the abort itself (``job_abort.lua``), not here.
Best effort: an announcement that fails is logged and dropped; the jobs are not affected.

Nobody following, nothing published: whether a channel's stream has subscribers (a direct one,
or any pattern subscription) is asked at most once per ``RECHECK`` seconds per channel, and
events are dropped while it has none, so a listener that starts misses at most that long of
outcome events (on a Redis Cluster, where subscriptions are per node, events are always sent).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.events import OutcomeEvent
    from taskpipe.states import WorkerEvent
    from taskpipe.worker.runner import Outcome

__all__ = ["Announcer"]

log = logging.getLogger("taskpipe.worker")

#: writer counter -> event kind (``failed`` by a soft time limit is ``timeout``; ``aborted`` is
#: announced by ``job_abort.lua``)
_KINDS: dict[WorkerEvent, OutcomeEvent] = {
    "finished": "complete",
    "failed": "fail",
    "timeout": "timeout",
    "retried": "retry",
    "stalled": "stall",
    "expired": "expired",
}


def event_of(event: WorkerEvent, outcome: Outcome) -> tuple[OutcomeEvent, bytes] | None:
    """The (kind, JSON data) announced for one applied outcome, or None (not announced)."""
    kind = _KINDS.get(event)
    if kind is None:
        return None
    data: dict[str, Any] = {
        "task": outcome.task.name
        if outcome.task is not None
        else (outcome.envelope.task if outcome.envelope is not None else None),
        "attempt": outcome.claim.attempts + 1,
    }
    if outcome.duration is not None:
        data["duration"] = round(outcome.duration, 6)
    if kind == "fail" and outcome.exc_type == "JobTimeout":
        kind = "timeout"
    if kind != "complete":
        if outcome.exc_type:
            data["error"] = f"{outcome.exc_type}: {outcome.exc_message}"[:2000]
        elif outcome.reason:
            data["error"] = outcome.reason[:2000]
    if kind == "retry":
        data["delay"] = round(outcome.delay, 3)
    return kind, json.dumps(data, default=str).encode()


#: seconds between two checks of whether a channel's event stream has subscribers
RECHECK = 1.0
#: seconds between two warnings about announcements that failed
WARN_EVERY = 30


class Announcer:
    """Collects the events of applied outcomes (as a writer listener) and publishes them."""

    def __init__(self, app: TaskPipe) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._pending: dict[str, list[tuple[str, str, bytes]]] = defaultdict(list)
        self._followed: dict[str, tuple[float, bool]] = {}  # channel -> (checked at, followed)
        self._last_warning = -float(WARN_EVERY)

    def followed(self, channel: str) -> bool:
        """Whether someone may follow the channel's events (asked at most every ``RECHECK`` s)."""
        if self.app.connection.is_cluster:
            return True
        now = time.monotonic()
        checked = self._followed.get(channel)
        if checked is not None and now - checked[0] < RECHECK:
            return checked[1]
        try:
            followed = self.app.channel(channel).event_followers() > 0
        except Exception:  # noqa: BLE001 - the broker is away: a publish would fail too
            followed = False
        self._followed[channel] = (now, followed)
        return followed

    def __call__(self, channel: str, event: WorkerEvent, outcome: Outcome | None, n: int) -> None:
        if outcome is None or not getattr(self.app, "job_events", True):
            return
        checked = self._followed.get(channel)
        if checked is not None and not checked[1] and time.monotonic() - checked[0] < RECHECK:
            return  # nobody follows (checked a moment ago): build nothing
        found = event_of(event, outcome)
        if found is not None:
            with self._lock:
                self._pending[channel].append((found[0], outcome.claim.id, found[1]))

    def flush(self) -> None:
        """Publish what was collected (one script call per channel); errors are logged."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(list)
        for channel, events in pending.items():
            if not self.followed(channel):
                continue
            try:
                self.app.channel(channel).announce(events)
            except Exception as exc:  # noqa: BLE001 - events are best effort, jobs are not
                now = time.monotonic()
                if now - self._last_warning >= WARN_EVERY:  # not one line per batch in an outage
                    self._last_warning = now
                    log.warning(
                        "could not announce %d job event(s) of %s: %s (logged at most every %d s)",
                        len(events),
                        channel,
                        exc,
                        WARN_EVERY,
                    )
