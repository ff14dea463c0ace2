"""The one check of counted limits: ``retries`` and ``max_cancels``.

Used wherever such a count comes in: ``TaskPipe(retries=, max_cancels=)``, ``@app.task(...)``,
``apply_async(retries=)`` (and eager mode), and the worker's check of a job's envelope options.
A count is an ``int`` >= 0; ``True`` / ``False`` are refused (``bool`` is an ``int`` subclass in
Python, but ``retries=True`` is a mistake, not "one retry").
"""

from __future__ import annotations

from taskpipe.errors import ConfigError

__all__ = ["COUNT_OPTIONS", "count_problem", "check_count"]

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
