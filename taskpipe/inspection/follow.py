"""Following one job live: its log backlog, then log and progress events until it ends.

Events come from the ``feed.jobevent:<f>`` channel (``log\0<id>\0<line>`` from job_log.lua,
``progress\0<id>\0<progress>`` from job_progress.lua) and ``job.finish:<f>`` (``<id>\0<result>``).
Endings that publish nothing (a stall, a retract, a finish without a stored result) are caught
by reading the job's state every ``poll`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from taskpipe.errors import JobNotFound
from taskpipe.inspection.views import JobEvent, _s, outcome_of, safe_text
from taskpipe.states import JobState

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.thoonk.job import JobChannel
    from taskpipe.thoonk.job_watch import JobWatch

__all__ = ["follow"]

_TERMINAL = (JobState.FINISHED, JobState.STALLED, JobState.UNKNOWN)


class _Overlap:
    """Drops live log lines that the backlog already showed (lines published between the
    subscription and the backlog read arrive on both paths, first, and in order)."""

    def __init__(self, backlog: list[str]) -> None:
        self.backlog = backlog
        self.buf: list[str] = []
        self.done = not backlog

    def feed(self, line: str) -> list[str]:
        """Lines to show now for one live line (none while it may still be a repeat)."""
        if self.done:
            return [line]
        self.buf.append(line)
        b, m = self.backlog, len(self.buf)
        if any(b[j : j + m] == self.buf for j in range(len(b) - m)):
            return []  # could still be the start of the overlap: wait for more
        return self.flush()

    def flush(self) -> list[str]:
        """Decide the overlap now and return the buffered lines that were not repeats."""
        if self.done:
            return []
        self.done = True
        b, buf = self.backlog, self.buf
        k = max(
            (m for m in range(len(buf) + 1) if m <= len(b) and b[len(b) - m :] == buf[:m]),
            default=0,
        )
        return buf[k:]


def follow(
    app: TaskPipe,
    ch: JobChannel,
    job_id: str,
    timeout: float | None = None,
    backlog: int = 1000,
    poll: float = 1.0,
) -> Iterator[JobEvent]:
    """Yield a job's log lines (the last ``backlog`` first), then its live log and progress
    events, until it ends (one ``end`` event: finished, failed, stalled or unknown) or
    ``timeout`` seconds pass (one ``timeout`` event carrying the state it is still in)."""
    if ch.info(job_id).state == "unknown":
        raise JobNotFound(f"no job {job_id!r} in channel {ch.name!r}")
    with ch.watch(("events", "finish"), shared=False) as watch:  # subscribed before the backlog
        lines = [_s(x) for x in ch.logs(job_id, -backlog, -1)] if backlog > 0 else []
        for line in lines:
            yield JobEvent("log", job_id, safe_text(line))
        yield from _live(ch, job_id, watch, _Overlap(lines), timeout, poll)


def _live(
    ch: JobChannel,
    job_id: str,
    watch: JobWatch,
    overlap: _Overlap,
    timeout: float | None,
    poll: float,
) -> Iterator[JobEvent]:
    deadline = None if timeout is None else time.monotonic() + timeout
    next_check, end = 0.0, ""
    while not end:
        now = time.monotonic()
        if now >= next_check:
            next_check = now + poll
            state = ch.info(job_id).state
            if state in _TERMINAL:
                end = _final(ch, job_id, state)
                break
        if deadline is not None and now >= deadline:
            yield from _flushed(job_id, overlap)
            yield JobEvent("timeout", job_id, ch.info(job_id).state)
            return
        event = watch.next(0.25)
        if event is None:
            yield from _flushed(job_id, overlap)
            continue
        for ev in _parse(job_id, event, overlap):
            if ev.kind == "end":
                end = ev.data
                break
            yield ev
    # events published before the ending may still be in flight: drain them
    while (event := watch.next(0.1)) is not None:
        yield from (ev for ev in _parse(job_id, event, overlap) if ev.kind != "end")
    yield from _flushed(job_id, overlap)
    yield JobEvent("end", job_id, end)


def _flushed(job_id: str, overlap: _Overlap) -> Iterator[JobEvent]:
    return (JobEvent("log", job_id, line) for line in overlap.flush())


def _parse(job_id: str, event: tuple[str, bytes], overlap: _Overlap) -> list[JobEvent]:
    channel, data = event
    if channel == "finish":
        fid, _, result = data.partition(b"\0")
        if _s(fid) != job_id:
            return []
        return [JobEvent("end", job_id, _ended_as(result))]
    kind, _, rest = data.partition(b"\0")
    eid, _, payload = rest.partition(b"\0")
    if _s(eid) != job_id or kind not in (b"log", b"progress"):  # outcome events: the end is read
        return []
    if kind == b"log":
        return [JobEvent("log", job_id, safe_text(line)) for line in overlap.feed(_s(payload))]
    return [JobEvent(_s(kind), job_id, safe_text(_s(payload)))]


#: the state a finished job's stored outcome means (``outcome_of``); a success, a raw result or
#: no stored result is "finished"
_ENDED_AS = {
    "failed": JobState.FAILED,
    "timeout": JobState.TIMEOUT,
    "aborted": JobState.ABORTED,
    "job_expired": JobState.EXPIRED,
}


def _ended_as(result: bytes | None) -> str:
    """How a job whose Thoonk state is finished ended: finished, failed, timeout, aborted or
    expired (the states ``AsyncResult.state`` gives)."""
    return _ENDED_AS.get(outcome_of(result)[0], JobState.FINISHED).value


def _final(ch: JobChannel, job_id: str, state: str) -> str:
    return _ended_as(ch.stored_result(job_id)) if state == "finished" else str(state)
