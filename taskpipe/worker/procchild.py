"""The process pool's child side: a fresh interpreter that imports the app, then runs the claims
its parent (``taskpipe.worker.procpool``) sends over a socket pair and sends the outcomes back.

See ``procpool`` for the protocol and the rules; this module holds what runs in the child.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import pickle
import select
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection as Pipe
from typing import TYPE_CHECKING, Any

from taskpipe.thoonk.job import Claim
from taskpipe.worker.runner import Outcome, prepare, run_prepared

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["CHILD_CODE", "DEPTH", "claim_fields"]

#: Jobs a child may hold at once (running + waiting in the child) while its jobs are short.
DEPTH = 16
_FLUSH = 0.002  # seconds a child may keep finished outcomes before sending them
_SLIM_FIELDS = (
    "kind",
    "value",
    "exc_type",
    "exc_message",
    "traceback",
    "delay",
    "reason",
    "duration",
)


# --- the child process ------------------------------------------------------------------------------
def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child exits at the pipe's EOF instead
        pass


def claim_fields(claim: Claim) -> tuple[Any, ...]:
    """A claim as the tuple its child receives (``Claim(*fields)``): pickling the dataclass
    itself costs several times more (its class and field names go with every instance)."""
    return (
        claim.channel,
        claim.id,
        claim.item,
        claim.cancel_count,
        claim.token,
        claim.attempts,
        claim.claimed_ms,
        claim.published_ms,
    )


def _slim(outcome: Outcome) -> tuple[Any, ...]:
    data = (
        outcome.kind,
        outcome.value,
        outcome.exc_type,
        outcome.exc_message,
        outcome.traceback,
        outcome.delay,
        outcome.reason,
        outcome.duration,
    )  # the fields ``_SLIM_FIELDS`` names, in that order
    if data[1] is None or type(data[1]) in (int, float, str, bytes, bool):
        return data
    try:
        pickle.dumps(data[1])
    except Exception as exc:  # noqa: BLE001 - any unpicklable value becomes a failure
        return (
            "failure",
            None,
            "SerializationError",
            f"the result of the task cannot leave the child process: {exc}",
            "",
            0.0,
            "",
            outcome.duration,
        )
    return data


def _child_main(fd: int) -> None:
    """Entry point of a pool child: load the app, then run the claims it is sent until EOF.

    Messages in: a list of claims (``claim_fields`` tuples; run them in order), ``"stop"`` (give back the claims not
    started), ``None`` (exit). Messages out: ``("done", [slim outcome, ...], started)`` where
    ``started`` is the ``time.monotonic()`` at which it started its next job (None when it has
    none), and ``("returned", n)``: the last ``n`` claims it was sent were not started."""
    # Ctrl-C (SIGINT to the process group) and a SIGTERM sent to the whole group (systemd's
    # default KillMode) are for the worker: it drains, then stops its children itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    conn = Pipe(fd)
    try:
        path, app_path, level = conn.recv()
        sys.path[:] = path
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from taskpipe.context import JobLogHandler
        from taskpipe.loading import load_app

        app = load_app(app_path)
        logging.getLogger().addHandler(JobLogHandler())
    except BaseException as exc:  # noqa: BLE001 - report why, then exit
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    _child_loop(app, conn)


class _Outbox:
    """A child's finished outcomes not yet sent, and the job it runs now (shared with its
    flusher thread, which sends outcomes that would otherwise wait behind a long job)."""

    def __init__(self, conn: Pipe) -> None:
        self.conn = conn
        self.lock = threading.Lock()  # taken directly on the hot path (no Python-level wrapper)
        self.cond = threading.Condition(self.lock)
        self.finished: list[tuple[Any, ...]] = []
        self.running_since: float | None = None  # monotonic start of the job running now
        self.started = 0  # jobs started so far
        self.last_sent = time.monotonic()

    def send(self, message: Any) -> None:
        """(cond held) Send a message to the worker."""
        self.conn.send(message)

    def flush(self, started: float | None) -> None:
        """(cond held) Send the finished outcomes, with when the job now running started."""
        if self.finished:
            self.conn.send(("done", self.finished, started))
            self.finished = []
            self.last_sent = time.monotonic()

    def flusher(self) -> None:
        """Thread: outcomes still unsent ``_FLUSH`` seconds into a job are sent without it."""
        while True:
            with self.cond:
                while not self.finished:
                    self.cond.wait()
                seen = self.started
            time.sleep(_FLUSH)
            with self.cond:
                if self.finished and self.started == seen and self.running_since is not None:
                    self.flush(self.running_since)


def _child_loop(app: TaskPipe, conn: Pipe) -> None:
    pending: collections.deque[Claim] = collections.deque()
    channels: dict[str, Any] = {}
    monotonic = time.monotonic
    out = _Outbox(conn)
    threading.Thread(target=out.flusher, name="taskpipe-child-flusher", daemon=True).start()
    poller: Any = None
    if hasattr(select, "poll"):  # one poll object: ``Connection.poll`` builds a selector per call
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)

    def waiting() -> bool:
        """Whether a message from the worker is waiting (or the pipe closed)."""
        return bool(poller.poll(0)) if poller is not None else conn.poll(0)

    while True:
        # messages are read before each job starts: a "stop" is answered before any more start
        while not pending or waiting():
            if not pending:
                with out.cond:
                    out.flush(None)
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            if message is None:
                return
            if message == "stop":
                with out.cond:
                    out.flush(None)
                    out.send(("returned", len(pending)))
                pending.clear()
            else:
                pending.extend(Claim(*fields) for fields in message)
        claim = pending.popleft()
        channel = channels.get(claim.channel)
        if channel is None:
            channel = channels[claim.channel] = app.channel(claim.channel)
        with out.lock:
            out.running_since = monotonic()
            out.started += 1
        slim = _slim(run_prepared(app, prepare(app, claim), channel))
        with out.lock:  # ``out.cond``'s lock
            out.running_since = None
            out.finished.append(slim)
            now = monotonic()
            if not pending or now - out.last_sent >= _FLUSH or len(out.finished) >= DEPTH:
                out.flush(now if pending else None)  # the next job starts now
            elif len(out.finished) == 1:
                out.cond.notify()  # the flusher watches that these do not wait behind a long job


#: What a pool child runs (``python -c CHILD_CODE FD``).
CHILD_CODE = (
    "import sys; from taskpipe.worker.procchild import _child_main; _child_main(int(sys.argv[1]))"
)
