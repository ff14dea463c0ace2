"""One pub/sub subscription to the ``job.finish:<f>`` channels of many job channels.

Used by the task layer's ``on_finish=`` watcher (``taskpipe/callbacks.py``), which runs callables
in the publishing process when jobs finish: it adds channels as jobs are watched, and reads
``FinishNotice`` s. A notice of kind ``subscribed`` says the server confirmed the subscription of
one channel (a finish published after it cannot be missed); ``finish`` carries a job id and the
published result (``None`` if the finish carried none). ``reset()`` drops the connection and
every subscription (after a broker outage); the caller then adds its channels again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskpipe.connection import close_quietly
from taskpipe.thoonk.scripts import broker_errors

if TYPE_CHECKING:
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["FinishSubscription", "FinishNotice"]


@dataclass(frozen=True)
class FinishNotice:
    """``kind`` "subscribed" (``channel`` confirmed) or "finish" (``job_id`` finished in
    ``channel``; ``result`` as published, None if there was none)."""

    kind: str
    channel: str
    job_id: str = ""
    result: bytes | None = None


class FinishSubscription:
    """A subscription to ``job.finish:<f>`` of a growing set of channels (one thread uses it)."""

    def __init__(self, thoonk: Thoonk) -> None:
        self.thoonk = thoonk
        self._client: Any = None
        self._pubsub: Any = None
        self.channels: set[str] = set()

    def add(self, channels: set[str]) -> None:
        """Subscribe to the finish channel of each of ``channels`` not subscribed yet."""
        new = channels - self.channels
        if not new:
            return
        with broker_errors("finish subscription"):
            if self._pubsub is None:
                if self._client is None:
                    self._client = self.thoonk.connection.new_client()
                self._pubsub = self._client.pubsub()
            self._pubsub.subscribe(*(self.thoonk.keys.ch_event("finish", c) for c in new))
        self.channels |= new

    def next(self, timeout: float) -> FinishNotice | None:
        """The next notice, waiting up to ``timeout`` seconds; None if nothing came."""
        if self._pubsub is None:
            return None
        with broker_errors("finish subscription"):
            msg = self._pubsub.get_message(timeout=timeout)
        if msg is None or msg.get("type") not in ("subscribe", "message"):
            return None
        channel = self.thoonk.keys.object_of("finish", msg["channel"])
        if channel is None:
            return None
        if msg["type"] == "subscribe":
            return FinishNotice("subscribed", channel)
        job_id, sep, published = msg["data"].partition(b"\0")
        return FinishNotice(
            "finish", channel, job_id.decode("utf-8", "replace"), published if sep else None
        )

    def reset(self) -> None:
        """Drop the connection and every subscription (``channels`` becomes empty)."""
        close_quietly(self._pubsub)
        self._pubsub = None
        self.channels = set()

    def close(self) -> None:
        """Close the subscription (the client's pool closes with the app's connection)."""
        self.reset()
