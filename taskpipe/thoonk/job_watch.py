"""Waiting for a job channel's pub/sub events: ``JobChannel.watch(...)`` returns a ``JobWatch``.

A ``JobWatch`` is a context manager holding one pub/sub subscription to some of the channel's
event channels: ``finish`` (``job.finish:<f>``, ``id\\0result``), ``retract``
(``feed.retract:<f>``, ``id``) and ``events`` (``feed.jobevent:<f>``, taskpipe's
``kind\\0id\\0payload`` progress and log events). ``next(timeout)`` returns one ``(event, data)``
or None. The task layer (``AsyncResult.get``) and the operators' layer (``taskpipe jobs
follow``) wait through it, so no pub/sub command is sent above the Thoonk layer.

``shared=True`` borrows the channel's kept pub/sub connection (``JobReads._borrow_pubsub``),
which is returned on exit, kept only if the block ended normally or with one of ``keep_on``
(an answer the caller gave, so the connection is still in step). ``shared=False`` opens a
connection of its own and waits until the server confirmed every subscription.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from taskpipe.connection import close_quietly
from taskpipe.thoonk.scripts import broker_errors

if TYPE_CHECKING:
    from taskpipe.thoonk.job_reads import JobReads

__all__ = ["JobWatch", "WATCH_EVENTS"]

#: the events a watch can subscribe to
WATCH_EVENTS = ("finish", "retract", "events")


class JobWatch:
    """One subscription to some of a job channel's event channels (see the module docstring)."""

    def __init__(
        self,
        channel: JobReads,
        events: Sequence[str],
        *,
        shared: bool = True,
        keep_on: tuple[type[BaseException], ...] = (),
        confirm_timeout: float = 10.0,
    ) -> None:
        unknown = set(events) - set(WATCH_EVENTS)
        if unknown or not events:
            raise ValueError(f"watch events must be some of {WATCH_EVENTS}, got {list(events)}")
        self.channel = channel
        k = channel.keys
        names = {
            "finish": k.ch_finish,
            "events": k.ch_events,
            "retract": channel.thoonk.keys.feed(k.name).ch_retract,
        }
        self._names = {names[e].encode("utf-8"): e for e in events}
        self.shared = shared
        self.keep_on = keep_on
        self.confirm_timeout = confirm_timeout
        self._pubsub: Any = None
        self._borrowed = False

    def __enter__(self) -> JobWatch:
        with broker_errors("watch"):
            if self.shared:
                self._pubsub, self._borrowed = self.channel._borrow_pubsub()
            else:
                self._pubsub = self.channel.thoonk.connection.new_client().pubsub()
            try:
                self._pubsub.subscribe(*self._names)
                if not self.shared:
                    self._confirm()
            except BaseException:
                self._release(keep=False)
                raise
        return self

    def _confirm(self) -> None:
        confirmed, wait_until = 0, time.monotonic() + self.confirm_timeout
        while confirmed < len(self._names) and time.monotonic() < wait_until:
            msg = self._pubsub.get_message(timeout=0.5)
            confirmed += bool(msg and msg.get("type") == "subscribe")

    def next(self, timeout: float) -> tuple[str, bytes] | None:
        """The next event as ``(event, data)``, waiting up to ``timeout`` seconds; None if none
        came (or only a subscription notice did)."""
        with broker_errors("watch"):
            msg = self._pubsub.get_message(timeout=max(0.0, timeout))
        if not msg or msg.get("type") != "message" or not isinstance(msg.get("data"), bytes):
            return None
        channel = msg.get("channel")
        event = self._names.get(channel if isinstance(channel, bytes) else str(channel).encode())
        return None if event is None else (event, msg["data"])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release(keep=exc is None or isinstance(exc, self.keep_on))

    def _release(self, keep: bool) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is None:
            return
        if self.shared:
            self.channel._return_pubsub(pubsub, self._borrowed, keep)
        else:
            close_quietly(pubsub)
