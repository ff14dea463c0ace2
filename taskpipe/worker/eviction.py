"""Eviction watch: outcomes lost because Redis evicts keys (any ``maxmemory-policy`` but
``noeviction``) must be visible in the worker's log, not only at start-up.

``EvictionWatch.check_policy`` reads the policy once (warning if it evicts);
``EvictionWatch.finish_missed`` is told by the outcome writer each time a finish found its job
no longer claimed: under an evicting policy that most likely means Redis evicted the channel's
keys and the outcome is lost, which is logged as a WARNING (at most every ``every`` seconds,
with the count since the last one and the server's ``evicted_keys``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from taskpipe.thoonk.broker_check import evicted_keys, eviction_policy

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["EvictionWatch"]

log = logging.getLogger("taskpipe.worker")


class EvictionWatch:
    """What the worker knows about the broker's eviction policy, and the warnings it logs."""

    def __init__(self, app: TaskPipe, every: float = 30.0) -> None:
        self.app = app
        self.every = every
        self.policy: str | None = None  # None: not read (yet, or CONFIG is disabled)
        self.checked = False
        self._missed = 0
        self._last_log = -1e9
        self._lock = threading.Lock()

    @property
    def evicting(self) -> bool:
        """True if the broker is known to run an evicting ``maxmemory-policy``."""
        return self.policy is not None and self.policy != "noeviction"

    def check_policy(self, broker_errors: tuple[type[BaseException], ...]) -> None:
        """Read ``maxmemory-policy`` once and warn if Redis may evict keys. A server where
        ``CONFIG`` is disabled or renamed (managed Redis) is tolerated: only a debug line. A
        broker error leaves it unchecked (checked again after the next successful claim)."""
        try:
            policy = eviction_policy(self.app.connection.client)
        except broker_errors:
            return
        except Exception as exc:  # noqa: BLE001 - CONFIG renamed, or not supported
            self.checked = True
            log.debug("cannot read maxmemory-policy (%s); eviction policy not checked", exc)
            return
        self.checked = True
        if policy is None:  # CONFIG disabled (managed Redis)
            log.debug("the broker does not say its maxmemory-policy; eviction policy not checked")
        self.policy = policy
        self.app.check_eviction_policy()  # the warning producers give too, once per app

    def finish_missed(self, channel: str, job_id: str) -> bool:
        """A finish found its job no longer claimed. Under an evicting policy, count it and log
        a WARNING (rate-limited); returns True if it was put down to eviction."""
        if not self.evicting:
            return False
        with self._lock:
            self._missed += 1
            now = time.monotonic()
            if now - self._last_log < self.every:
                return True
            missed, self._missed, self._last_log = self._missed, 0, now
        evicted = "unknown"
        try:
            evicted = evicted_keys(self.app.connection.client)
        except Exception:  # noqa: BLE001 - only for the message
            pass
        log.warning(
            "%d outcome write(s) found the job no longer claimed (latest: %s/%s) under "
            "maxmemory-policy %r (evicted_keys=%s): Redis most likely evicted the "
            "channel's keys and these outcomes are lost. Set maxmemory-policy "
            "noeviction.",
            missed,
            channel,
            job_id,
            self.policy,
            evicted,
        )
        return True
