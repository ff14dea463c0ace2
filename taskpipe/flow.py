"""Flow-control publishing options: numeric priorities, rate limits, concurrency caps and
deduplication, checked and turned into the Thoonk layer's ``PutFlow`` (docs/flow-control.md).

Priorities: ``priority=0`` .. ``9``, **0 runs first** (Celery's Redis convention; BullMQ's
"lower runs first"). ``True`` keeps Thoonk's head-of-queue meaning; ``None``/``False`` is a
normal job. Jobs without a number (normal, ``True``, legacy clients') are claimed before
numbered ones; numbered jobs run by number, then in publish order.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from taskpipe.durations import parse_duration, to_ms
from taskpipe.errors import ConfigError
from taskpipe.thoonk.flow import PutFlow

__all__ = [
    "parse_rate_limit",
    "check_priority",
    "check_task_flow",
    "build_flow",
    "FLOW_SEND_OPTIONS",
    "UNIQUE_DEFAULT_MS",
    "DEDUP_MAX_MS",
]

#: publishing options handled here (beside ``priority``)
FLOW_SEND_OPTIONS = frozenset({"unique", "unique_for", "unique_key", "debounce"})
#: how long ``unique=True`` can hold its key at most (a job pending longer stops blocking)
UNIQUE_DEFAULT_MS = 7 * 24 * 3600 * 1000
#: the longest ``unique_for`` / ``debounce`` window (100 years; far past it Redis refuses the
#: key's expiry, which surfaced as a broker error at the first publish)
DEDUP_MAX_MS = 100 * 365 * 24 * 3600 * 1000

_UNITS = {
    "s": 1000.0,
    "sec": 1000.0,
    "m": 60_000.0,
    "min": 60_000.0,
    "h": 3_600_000.0,
    "d": 86_400_000.0,
}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)?\s*([a-z]+)\s*$")


def parse_rate_limit(value: object) -> tuple[float, int, str]:
    """``"100/s"``, ``"10/m"``, ``"1000/h"``, ``"5/10s"`` -> ``(interval_ms, burst, text)``.

    The limit spaces jobs evenly (one per ``interval_ms``, GCRA) and lets up to ``burst`` =
    max(1, n // 10) start at once after a quiet spell, so over any window of length W at most
    ``burst + W / interval`` jobs start. Raises ``ConfigError`` for anything else.
    """
    m = _RATE.match(value) if isinstance(value, str) else None
    if m is None or m.group(3) not in _UNITS or int(m.group(1)) <= 0:
        raise ConfigError(f"rate_limit must look like '100/s', '10/m' or '1000/h', got {value!r}")
    n = int(m.group(1))
    per = float(m.group(2)) if m.group(2) else 1.0
    if per <= 0:
        raise ConfigError(f"rate_limit period must be positive, got {value!r}")
    period_ms = per * _UNITS[m.group(3)]
    return period_ms / n, max(1, n // 10), m.group(0).strip()


def check_priority(value: object) -> bool | int | None:
    """``None``/``False``: normal; ``True``: Thoonk head-of-queue; an int 0..9: numbered.
    Anything else raises ``ConfigError`` (never coerced)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and 0 <= value <= 9:
        return value
    raise ConfigError(
        f"priority must be True/False or an int from 0 (first) to 9 (last), got {value!r}"
    )


def _positive_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


def check_task_flow(options: Any) -> None:
    """Check a task's flow options (``TaskOptions``) when it is registered."""
    check_priority(options.priority)
    if options.rate_limit is not None:
        parse_rate_limit(options.rate_limit)
    _positive_int("concurrency", options.concurrency)
    if options.concurrency_key is not None:
        if not callable(options.concurrency_key):
            raise ConfigError("concurrency_key must be a callable of the task's arguments")
        if options.concurrency is None:
            raise ConfigError("concurrency_key needs concurrency= (the cap per key)")
    _dedup(options.unique, options.unique_for, options.debounce)


def _dedup(unique: object, unique_for: object, debounce: object) -> tuple[str, int]:
    chosen = [
        n
        for n, v in (("unique", unique), ("unique_for", unique_for), ("debounce", debounce))
        if v not in (None, False)
    ]
    if len(chosen) > 1:
        raise ConfigError(f"choose one of unique, unique_for, debounce, not {' and '.join(chosen)}")
    if unique not in (None, False, True):
        raise ConfigError(f"unique must be True or False, got {unique!r}")
    if unique:
        return "unique", UNIQUE_DEFAULT_MS
    for mode, value in (("window", unique_for), ("debounce", debounce)):
        if value is not None:
            ms = to_ms(parse_duration(value))
            name = "unique_for" if mode == "window" else "debounce"
            if ms <= 0:
                raise ConfigError(f"{name} must be a positive duration, got {value!r}")
            if ms > DEDUP_MAX_MS:
                raise ConfigError(f"{name} must be at most 100 years, got {value!r}")
            return mode, ms
    return "", 0


def _args_key(task: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    text = json.dumps(
        [task, list(args), dict(sorted(kwargs.items()))],
        default=repr,
        sort_keys=True,
        separators=(",", ":"),
    )
    return task + ":" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _group_key(value: object) -> str:
    key = str(value)
    if "\0" in key:
        raise ConfigError("a concurrency key must not contain NUL")
    return key


def build_flow(
    task_name: str,
    topts: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
) -> tuple[bool, PutFlow | None]:
    """``(thoonk_priority, flow)`` for one publish: ``flow`` is None when no flow option is in
    play (the plain, fastest put path). ``topts`` are the task's options, ``options`` the call's."""
    prio = (
        check_priority(options["priority"])
        if options.get("priority") is not None
        else check_priority(topts.priority)
    )
    numbered = prio if type(prio) is int else None
    head = prio is True
    rate = parse_rate_limit(topts.rate_limit) if topts.rate_limit is not None else None
    cap = topts.concurrency
    mode, ms = _dedup(
        *(options.get(k, getattr(topts, k)) for k in ("unique", "unique_for", "debounce"))
    )
    if numbered is None and rate is None and cap is None and not mode:
        return head, None
    cap_group = ""
    if cap is not None:
        keyfn: Callable[..., Any] | None = topts.concurrency_key
        cap_group = "t:" + task_name
        if keyfn is not None:
            try:
                cap_group = "k:" + task_name + ":" + _group_key(keyfn(*args, **kwargs))
            except ConfigError:
                raise
            except Exception as exc:  # the user's key function: reported as a ConfigError
                raise ConfigError(f"concurrency_key of {task_name!r} failed: {exc!r}") from exc
    dedup_key = ""
    if mode:
        user_key = options.get("unique_key", getattr(topts, "unique_key", None))
        if user_key is not None:
            dedup_key = task_name + ":" + _group_key(user_key)
        elif mode == "debounce":  # the latest call wins, whatever its arguments
            dedup_key = task_name
        else:
            dedup_key = _args_key(task_name, args, kwargs)
    return head, PutFlow(
        priority=numbered,
        rate_group=("t:" + task_name) if rate else "",
        rate_interval_ms=rate[0] if rate else 0.0,
        rate_burst=rate[1] if rate else 1,
        cap_group=cap_group,
        cap=cap or 0,
        dedup=mode,
        dedup_key=dedup_key,
        dedup_ms=ms,
    )
