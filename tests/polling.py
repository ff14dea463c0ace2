"""``wait_for``: the one polling helper of the test suite (a watchdog, never a timing assertion)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["wait_for"]


def wait_for(
    pred: Callable[[], Any],
    timeout: float = 60.0,
    what: str = "condition",
    interval: float = 0.02,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll ``pred`` until it returns something truthy, and return that.

    An exception of a type in ``ignore`` (e.g. a server still starting) counts as "not yet".
    After ``timeout`` seconds: ``AssertionError`` naming ``what``. The default is generous on
    purpose: it only matters when something is wrong, and on a loaded 2-core machine a worker
    process with a process pool can take 20 s to start its first job.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
