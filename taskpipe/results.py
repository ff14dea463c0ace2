"""``AsyncResult``: the handle ``delay()`` returns, to read a job's state, progress, logs and result."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from taskpipe.errors import (
    ResultExpired,
    ResultTimeout,
    ResultUnknown,
    SerializationError,
    TaskFailed,
)
from taskpipe.serialization import ResultRecord, decode_result
from taskpipe.thoonk.job import JobInfo

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["AsyncResult", "STATES"]

if TYPE_CHECKING:
    from typing_extensions import TypeVar as DefaultTypeVar

    R = DefaultTypeVar("R", default=Any)  # a bare ``AsyncResult`` is ``AsyncResult[Any]``
else:
    R = TypeVar("R")

STATES = ("delayed", "available", "claimed", "stalled", "finished", "failed", "unknown")


class AsyncResult(Generic[R]):
    """A published job: ``state``, ``ready()``, ``successful()``, ``get(timeout=)``, progress, logs.

    ``AsyncResult[int]`` (what ``add.delay()`` returns for ``add(...) -> int``): ``get()`` is an
    ``int``. ``await result`` (or ``await result.aget(timeout=)``) waits on ``redis.asyncio``.
    """

    def __init__(self, app: TaskPipe, id: str, channel: str) -> None:
        self.app = app
        self.id = id
        self.channel = channel
        self._record: ResultRecord | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.channel}/{self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and (self.id, self.channel) == (other.id, other.channel)

    def __hash__(self) -> int:
        return hash((self.id, self.channel))

    @property
    def _ch(self) -> Any:
        return self.app.channel(self.channel)

    def info(self) -> JobInfo:
        """The job's raw Thoonk state and bookkeeping."""
        return self._ch.info(self.id)  # type: ignore[no-any-return]

    def _fetch(self, timeout: float | None = None) -> ResultRecord | None:
        if self._record is not None:
            return self._record
        raw = self._ch.get_result(self.id, timeout=timeout)
        if raw is None:
            return None
        self._accept(raw)
        return self._record

    def _accept(self, raw: bytes) -> None:
        """Take the job's result as published on ``job.finish`` (kept even when not stored)."""
        if self._record is not None:
            return
        try:
            self._record = decode_result(raw)
        except SerializationError:
            # a raw (Thoonk-native) result: bytes as the legacy clients published them
            self._record = ResultRecord(ok=True, value=raw, exc_type="", exc_message="", traceback="")

    @property
    def state(self) -> str:
        """One of delayed, available, claimed, stalled, finished, failed, unknown."""
        if self._record is not None:
            return "finished" if self._record.ok else "failed"
        state = self.info().state
        if state == "finished":
            record = self._fetch()
            if record is not None and not record.ok:
                return "failed"
        return str(state)

    def ready(self) -> bool:
        """True once the job finished (successfully or not)."""
        return self.state in ("finished", "failed")

    def successful(self) -> bool:
        """True if the job finished without error."""
        return self.state == "finished"

    def failed(self) -> bool:
        """True if the job finished with an error."""
        return self.state == "failed"

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the result (``timeout`` seconds; None = forever) and return it.

        Raises ``ResultTimeout`` (a ``TimeoutError``) on time, ``TaskFailed`` carrying the remote
        error when the task failed (unless ``propagate=False``, which returns the ``TaskFailed``),
        ``ResultExpired`` when the job finished but its result is gone, and ``ResultUnknown``
        when no such job exists.
        """
        wait = 365 * 24 * 3600.0 if timeout is None else float(timeout)
        record = self._fetch(timeout=wait if wait > 0 else None)
        if record is None:
            self._raise_missing(self.info().state, timeout)
        return self._outcome(record, propagate)

    def _raise_missing(self, state: str, timeout: float | None) -> NoReturn:
        if state == "finished":
            raise ResultExpired(f"job {self.id!r} finished but its result is not stored "
                                "(expired, or result_ttl=0)")
        if state == "unknown":
            raise ResultUnknown(f"no job {self.id!r} in channel {self.channel!r}")
        raise ResultTimeout(f"job {self.id!r} is still {state} after {timeout} s")

    def _outcome(self, record: ResultRecord, propagate: bool) -> R:
        if record.ok:
            return record.value  # type: ignore[no-any-return]
        error = TaskFailed(self.id, record.exc_type or "", record.exc_message or "",
                           record.traceback or "")
        if propagate:
            raise error
        return error  # type: ignore[return-value]  # propagate=False: the failure is the value

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> R:
        """``await result.aget(timeout=)``: ``get`` for async callers, on ``redis.asyncio``.

        Waits on the ``job.finish`` channel with the app's asyncio client of the running event
        loop (no thread per call); same errors as ``get``. Brokers redis.asyncio cannot reach
        (an app built on a ready-made ``client=``) fall back to a thread.
        """
        from taskpipe.aio import async_client, job_state, wait_result

        if self._record is None:
            found = await wait_result(self, timeout)
            if found is not None:
                self._accept(found)
        if self._record is None:  # timed out or no stored result: name why, as get() does
            client = async_client(self.app)
            state = await job_state(client, self) if client is not None else \
                await asyncio.to_thread(lambda: self.info().state)
            self._raise_missing(state, timeout)
        return self._outcome(self._record, propagate)

    def __await__(self) -> Generator[Any, None, R]:
        """``await result``: ``await result.aget()`` (waits as long as it takes)."""
        return self.aget().__await__()

    @property
    def result(self) -> Any:
        """The result if ready (None otherwise); a failure is returned as ``TaskFailed``."""
        if not self.ready():
            return None
        return self.get(timeout=0, propagate=False)

    @property
    def progress(self) -> tuple[float, float] | None:
        """``(current, total)`` as last reported by the task, or None."""
        text = self.info().progress
        if not text:
            return None
        current, _, total = text.partition("/")
        try:
            return float(current), float(total or 0)
        except ValueError:
            return None

    def logs(self) -> list[str]:
        """The job's log lines (captured logging records and ``current_job().log`` calls)."""
        return [line.decode("utf-8", "replace") for line in self._ch.logs(self.id)]

    def retract(self) -> None:
        """Remove the job from its channel, whatever its state."""
        self._ch.retract(self.id)

    def forget(self) -> None:
        """Alias of ``retract`` (Celery's name)."""
        self.retract()
