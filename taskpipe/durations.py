"""The one duration grammar of taskpipe, used for delays, TTLs, timeouts and backoff.

A duration is one of:

* an ``int`` or ``float`` number of seconds (finite, ``>= 0``; ``bool`` is refused);
* a :class:`datetime.timedelta` (``>= 0``);
* a string: a plain number of seconds (``'15'``, ``'1.5'``), or one or more
  ``<number><unit>`` parts with units ``ms``, ``s``, ``m``, ``h``, ``d``, ``w``
  (``'10ms'``, ``'30s'``, ``'1h30m'``, ``'1h 30m'``). Units are case-insensitive,
  whitespace around and between parts is ignored, and in a compound the units must go from
  largest to smallest, each at most once (``'30m1h'`` and ``'1m1m'`` are refused).

Anything else raises :class:`~taskpipe.errors.DurationError`, whose message names the value.
All functions here are pure: the current time is always an argument.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

from .errors import DurationError

__all__ = [
    "DurationLike",
    "expires_at",
    "parse_duration",
    "parse_optional_duration",
    "to_ms",
    "ttl_ms",
    "MAX_TTL_MS",
    "format_duration",
    "eta_to_delay",
]

#: What callers may pass wherever taskpipe takes a duration.
DurationLike = int | float | str | timedelta

# Unit -> (seconds, rank). Rank enforces largest-to-smallest order in compounds.
_UNITS: dict[str, tuple[float, int]] = {
    "w": (604800.0, 6),
    "d": (86400.0, 5),
    "h": (3600.0, 4),
    "m": (60.0, 3),
    "s": (1.0, 2),
    "ms": (0.001, 1),
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_RE = re.compile(_NUMBER, re.ASCII)
# "ms" must come before "m" and "s" in the alternation.
_PART_RE = re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h|d|w)", re.ASCII)
_HINT = (
    "expected seconds as a number (e.g. 15 or '1.5'), a timedelta, or a string with "
    "units ms/s/m/h/d/w (e.g. '10ms', '30s', '2h', '1h30m')"
)


def _error(value: object, reason: str) -> DurationError:
    return DurationError(f"invalid duration {value!r}: {reason}")


def _check_seconds(value: object, seconds: float) -> float:
    if math.isnan(seconds):
        raise _error(value, "NaN is not a duration")
    if seconds < 0:
        raise _error(value, "durations must not be negative")
    if math.isinf(seconds):
        raise _error(value, "durations must be finite")
    return seconds


def _parse_string(value: str) -> float:
    text = value.strip().lower()
    if not text:
        raise _error(value, f"empty string; {_HINT}")
    if text.startswith("-"):
        raise _error(value, "durations must not be negative")
    if _PLAIN_RE.fullmatch(text):
        return _check_seconds(value, float(text))
    total = 0.0
    pos = 0
    last_rank = 7
    while pos < len(text):
        match = _PART_RE.match(text, pos)
        if match is None:
            raise _error(value, _HINT)
        number, unit = match.groups()
        factor, rank = _UNITS[unit]
        if rank >= last_rank:
            raise _error(
                value,
                "in a compound duration units must go from largest to smallest, "
                "each at most once (e.g. '1h30m')",
            )
        last_rank = rank
        total += float(number) * factor
        pos = match.end()
    return _check_seconds(value, total)


def parse_duration(value: object) -> float:
    """Return ``value`` as a number of seconds (a finite ``float >= 0``).

    Accepts ``int``/``float`` seconds, a :class:`~datetime.timedelta`, or a string such as
    ``'15'``, ``'1.5'``, ``'10ms'``, ``'30s'``, ``'45m'``, ``'2h'``, ``'6d'``, ``'1w'`` or
    ``'1h30m'``. Raises :class:`~taskpipe.errors.DurationError` for anything else, including
    ``None``, ``bool``, negative, NaN and infinite values.
    """
    if isinstance(value, bool):
        raise _error(value, "a bool is not a duration")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise _error(value, "durations must be finite") from None
        return _check_seconds(value, seconds)
    if isinstance(value, timedelta):
        return _check_seconds(value, value.total_seconds())
    if isinstance(value, str):
        return _parse_string(value)
    if value is None:
        raise _error(value, f"a duration is required here; {_HINT}")
    raise _error(value, f"unsupported type {type(value).__name__}; {_HINT}")


def parse_optional_duration(value: object) -> float | None:
    """Like :func:`parse_duration`, but ``None`` passes through as ``None`` ("not set")."""
    if value is None:
        return None
    return parse_duration(value)


def to_ms(value: object) -> int:
    """Return the duration ``value`` in whole milliseconds, rounded half up.

    >>> to_ms('1.5s'), to_ms(0.0004), to_ms(0.0005)
    (1500, 0, 1)
    """
    seconds = parse_duration(value)
    ms = seconds * 1000.0
    if math.isinf(ms):
        raise _error(value, "duration too large")
    return int(math.floor(ms + 0.5))


def format_duration(seconds: object) -> str:
    """Format a duration in the grammar of :func:`parse_duration`, at millisecond resolution.

    >>> format_duration(90), format_duration(0.01), format_duration(0), format_duration(691200)
    ('1m30s', '10ms', '0s', '1w1d')

    The output parses back to the same number of milliseconds.
    """
    remaining = to_ms(seconds)
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, unit_ms in (
        ("w", 604_800_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ):
        count, remaining = divmod(remaining, unit_ms)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _timestamp(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DurationError(
            f"invalid {what} {value!r}: expected a datetime or a unix timestamp (seconds)"
        )
    try:
        ts = float(value)
    except OverflowError:
        raise DurationError(f"invalid {what} {value!r}: must be finite") from None
    if not math.isfinite(ts):
        raise DurationError(f"invalid {what} {value!r}: must be finite")
    return ts


def eta_to_delay(eta: datetime | float, now: float) -> float:
    """Return how many seconds from ``now`` until ``eta``, never less than ``0.0``.

    ``eta`` is an aware :class:`~datetime.datetime`, a naive one (taken as UTC), or a unix
    timestamp; ``now`` is a unix timestamp (the caller supplies the clock). An ``eta`` in the
    past gives ``0.0`` (run now). Invalid inputs raise :class:`~taskpipe.errors.DurationError`.
    """
    if isinstance(eta, datetime):
        aware = eta if eta.utcoffset() is not None else eta.replace(tzinfo=timezone.utc)
        when = aware.timestamp()
    else:
        when = _timestamp(eta, "eta")
    return max(0.0, when - _timestamp(now, "now"))


def expires_at(expires: object, now: float) -> float:
    """The unix time at which a job published at ``now`` with ``expires=`` expires.

    ``expires`` is a duration from ``now`` (``'10m'``, seconds, a timedelta) or a datetime (an
    aware one, or a naive one taken as UTC). Invalid inputs raise
    :class:`~taskpipe.errors.DurationError`.
    """
    if isinstance(expires, datetime):
        aware = expires if expires.utcoffset() is not None else expires.replace(tzinfo=timezone.utc)
        return aware.timestamp()
    return _timestamp(now, "now") + parse_duration(expires)


#: the longest TTL stored for a result or record (100 years; Redis refuses expiries that
#: overflow its clock, and a script would fail half-way through a batch)
MAX_TTL_MS = 100 * 365 * 86_400_000


def ttl_ms(value: object) -> int:
    """A result or record TTL in ms: ``value`` parsed as a duration, capped at ``MAX_TTL_MS``."""
    return int(min(parse_duration(value) * 1000, MAX_TTL_MS))
