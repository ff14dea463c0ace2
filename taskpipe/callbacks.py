"""Runs ``on_finish=`` callables in the publishing process when their jobs finish (Thoonk onFinish).

One background thread per app listens on the ``job.finish:<f>`` channels that have pending
callbacks. A message lost while the connection was down is covered by a check of every pending
job once a second, so a callback still runs, late, rather than never.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import redis

from taskpipe.errors import ConfigError, TaskFailed, TaskpipeError
from taskpipe.thoonk.finish_watch import FinishSubscription

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.results import AsyncResult

__all__ = ["FinishWatcher", "callbacks_of", "failure_info"]

log = logging.getLogger("taskpipe.callbacks")


def callbacks_of(options: Mapping[str, Any], env_opts: dict[str, Any]) -> Callable[..., Any] | None:
    """Read a call's ``on_finish`` / ``on_failure``: a task signature goes into the envelope
    (``env_opts``, run durably by the worker that finishes the job); callables are combined
    into the one callback the app's ``FinishWatcher`` runs here (``on_finish`` on any outcome,
    ``on_failure`` only with the ``TaskFailed``). Raises ``ConfigError`` for anything else."""
    from taskpipe.task import Signature

    local: dict[str, Callable[..., Any]] = {}
    for key in ("on_finish", "on_failure"):
        value = options.get(key)
        if isinstance(value, Signature):
            env_opts[key] = value.to_dict()
        elif value is not None:
            if not callable(value):
                raise ConfigError(f"{key} must be a callable or a task signature")
            local[key] = value
    if not local:
        return None
    if set(local) == {"on_finish"}:
        return local["on_finish"]

    def callback(value: Any, result: AsyncResult) -> None:
        if "on_finish" in local:
            local["on_finish"](value, result)
        if isinstance(value, TaskFailed):
            local["on_failure"](value, result)

    return callback


def failure_info(
    job_id: str, channel: str, task: str, exc_type: str, exc_message: str
) -> dict[str, str]:
    """What a durable ``on_failure`` signature receives as its first argument."""
    return {
        "id": job_id,
        "channel": channel,
        "task": task,
        "exc_type": exc_type,
        "exc_message": exc_message,
    }


class FinishWatcher:
    """Calls ``callback(result_or_error, async_result)`` once each watched job finishes."""

    def __init__(self, app: TaskPipe) -> None:
        self.app = app
        self._pending: dict[tuple[str, str], tuple[AsyncResult, list[Callable[..., Any]]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None
        self._confirmed: set[str] = set()  # channels whose finish subscription is confirmed
        self._subscribed = threading.Condition(self._lock)

    def add(self, result: AsyncResult, callback: Callable[..., Any]) -> None:
        """Watch ``result``; call ``callback`` with its value (or ``TaskFailed``) when it finishes."""
        with self._lock:
            entry = self._pending.setdefault((result.channel, result.id), (result, []))
            entry[1].append(callback)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="taskpipe-on-finish", daemon=True
                )
                self._thread.start()
        self._changed.set()
        channel = self.app.channel(result.channel).name  # the real name (hash-tagged on Cluster)
        with self._subscribed:  # so a job published after add() returns can't be missed
            self._subscribed.wait_for(
                lambda: channel in self._confirmed or self._stop.is_set(), timeout=5.0
            )

    def pending(self) -> int:
        """How many jobs still wait for their callbacks."""
        with self._lock:
            return len(self._pending)

    def stop(self) -> None:
        """Stop the thread (pending callbacks are not run)."""
        self._stop.set()
        self._changed.set()

    def _fire_if_done(self, key: tuple[str, str], published: bytes | None = None) -> None:
        with self._lock:
            entry = self._pending.get(key)
        if entry is None:
            return
        result, callbacks = entry
        if published is not None:
            # the job.finish message carries the result: use it, so a job stored with
            # result_ttl=0 (or expired before we read it) still hands its value to the callback
            result._accept(published)
        if not result.ready():
            return
        with self._lock:
            if self._pending.pop(key, None) is None:
                return
        try:
            value = result.get(timeout=0, propagate=False)
        except TaskpipeError as exc:  # result expired or stored with ttl 0
            value = exc
        for cb in callbacks:
            try:
                cb(value, result)
            except Exception:  # a user callback must not kill the watcher
                log.exception("on_finish callback for job %s raised", result.id)

    def _run(self) -> None:
        sub = FinishSubscription(self.app.thoonk)
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self._round(sub)
                    failures = 0
                except (TaskpipeError, redis.exceptions.RedisError, OSError) as exc:
                    # the broker is away (restart, LOADING, failover): keep watching; the
                    # check of every pending job on the next round covers what was missed
                    if not failures:
                        log.warning("finish watcher: broker unavailable (%s); retrying", exc)
                    failures += 1
                    self._lost(sub)
                    self.app.broker_retry.pause(failures, None)
        finally:
            sub.close()

    def _lost(self, sub: FinishSubscription) -> None:
        sub.reset()
        with self._subscribed:
            self._confirmed.clear()

    def _round(self, sub: FinishSubscription) -> None:
        """Subscribe to what is pending, fire what finished, read messages for up to ~1 s."""
        with self._lock:
            keys = list(self._pending)
        if not keys and self._changed.wait(1.0) is False:
            return
        self._changed.clear()
        sub.add({self.app.channel(ch).name for ch, _ in keys})
        for key in keys:  # jobs that finished before we subscribed, or while we were away
            self._fire_if_done(key)
        deadline_msgs = 200
        while deadline_msgs > 0 and not self._stop.is_set():
            deadline_msgs -= 1
            try:
                notice = sub.next(timeout=1.0)
            except Exception:  # noqa: BLE001 - reconnect on the next round
                log.warning("finish watcher lost its connection; resubscribing")
                self._lost(sub)
                break
            if notice is None:
                break
            if notice.kind == "subscribed":
                with self._subscribed:
                    self._confirmed.add(notice.channel)
                    self._subscribed.notify_all()
                continue
            self._fire_if_done((notice.channel, notice.job_id), notice.result)
