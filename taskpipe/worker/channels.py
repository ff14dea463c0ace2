"""The worker's channels: their claim order (``-Q`` order or weighted, sharded channels'
shards rotating) and opening them again while, and after, Redis is unreachable.

``ChannelsMixin`` holds these; ``Worker`` inherits it (they use the worker's own state).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING

from taskpipe.worker.keeper import BROKER_ERRORS as _BROKER_ERRORS

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.thoonk.job import JobChannel

__all__ = ["ChannelsMixin"]

log = logging.getLogger("taskpipe.worker")


class ChannelsMixin:
    """Channel order and broker-outage handling of the claim loop (see ``Worker``)."""

    # set by Worker.__init__
    app: TaskPipe
    channel_names: list[str]
    channels: list[JobChannel]
    weighted: bool
    weights: list[float]
    _groups: list[list[JobChannel]]
    _rotation: int
    _broker_failures: int
    _last_broker_log: float
    _stopping: threading.Event
    _broker_back: threading.Event

    def _set_channels(self, groups: list[list[JobChannel]]) -> None:
        self._groups = groups
        self.channels = [ch for group in groups for ch in group]

    def _ordered_channels(self) -> list[JobChannel]:
        """The channels of the next claim: in ``-Q`` order (or weighted), each sharded channel's
        shards starting at a rotating shard so that none starves."""
        if len(self.channels) == len(self._groups):  # no sharded channel
            groups = self._groups
        else:
            self._rotation += 1
            groups = [
                g[self._rotation % len(g) :] + g[: self._rotation % len(g)] for g in self._groups
            ]
        if not self.weighted:
            return [ch for group in groups for ch in group]
        weights = self.weights or [float(len(groups) - i) for i in range(len(groups))]
        order: list[JobChannel] = []
        pool = list(zip(groups, weights))
        while pool:
            pick = random.choices(range(len(pool)), [w for _, w in pool])[0]
            order.extend(pool.pop(pick)[0])
        return order

    def _open_channels(self) -> bool:
        """Open (create if needed) the channels; False (after a backoff) while Redis is down."""
        try:
            self._set_channels(self.app.sharding.expand(self.channel_names))
        except _BROKER_ERRORS as exc:
            self._broker_down(exc)
            return False
        return True

    def _reregister_channels(self) -> None:
        """After an outage, re-create the channels' registration (``feeds``, config) in case
        Redis came back empty (restarted without persistence), so tools still list them."""
        for name in [ch.name for ch in self.channels]:
            try:
                self.app.thoonk.job_channel(name)
            except Exception as exc:  # noqa: BLE001 - best effort; claiming works without it
                log.warning("could not re-register channel %s: %s", name, exc)

    def _broker_down(self, exc: BaseException) -> None:
        """Back off (capped at 5 s) while Redis is unreachable; log rarely, not once per try.
        The keeper cuts a backoff short when it reaches Redis again (``_broker_back``)."""
        self._broker_failures += 1
        now = time.monotonic()
        if self._broker_failures == 1 or now - self._last_broker_log >= 30:
            log.warning("broker unavailable (%s); retrying with backoff", exc)
            self._last_broker_log = now
        self._broker_back.clear()
        if not self._stopping.is_set():
            self._broker_back.wait(min(5.0, 0.1 * 2 ** min(self._broker_failures, 6)))
