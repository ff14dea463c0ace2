"""The one check of counted limits: ``retries`` and ``max_cancels``; and of the lease's minimum.

Used wherever such a count comes in: ``TaskPipe(retries=, max_cancels=)``, ``@app.task(...)``,
``apply_async(retries=)`` (and eager mode), and the worker's check of a job's envelope options.
A count is an ``int`` >= 0; ``True`` / ``False`` are refused (``bool`` is an ``int`` subclass in
Python, but ``retries=True`` is a mistake, not "one retry").
"""

from __future__ import annotations

from taskpipe.errors import ConfigError

__all__ = ["COUNT_OPTIONS", "MIN_LEASE_S", "count_problem", "check_count", "check_lease"]

#: the shortest lease, in seconds: ``TaskPipe(lease=)`` and a worker's own ``lease`` alike (a
#: shorter one expires before the keeper can renew it, so running jobs would be requeued)
MIN_LEASE_S = 0.05

#: the options that are counts
COUNT_OPTIONS = ("retries", "max_cancels")


def count_problem(value: object) -> str | None:
    """Why ``value`` is not a count (an ``int`` >= 0, not a ``bool``), or None if it is one."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"not an int >= 0 (got {type(value).__name__})"
    if value < 0:
        return "not an int >= 0"
    return None


def check_count(name: str, value: object) -> int:
    """``value`` as a count; ``ConfigError`` naming ``name`` if it is not an int >= 0."""
    problem = count_problem(value)
    if problem is not None:
        raise ConfigError(f"{name} must be a non-negative int, got {value!r}")
    assert isinstance(value, int)
    return value


def check_lease(seconds: float) -> float:
    """``seconds`` (a parsed lease) if at least :data:`MIN_LEASE_S`, else ``ConfigError``."""
    if seconds < MIN_LEASE_S:
        raise ConfigError(f"lease must be at least 50ms, got {seconds:g}s")
    return seconds
