"""``WorkerSettings``: every setting of a ``Worker`` in one checked, immutable value.

``Worker(app, settings=WorkerSettings(concurrency=4, lease="30s"))`` and the older
``Worker(app, concurrency=4, lease="30s")`` are the same thing: keyword arguments are the
settings' fields (typed by ``WorkerOptions``) and override ``settings=`` when both are given.
A name that is not a setting raises ``TypeError`` naming it, as a misspelt argument always did.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from taskpipe.durations import DurationLike, parse_duration
from taskpipe.errors import ConfigError
from taskpipe.limits import check_lease

__all__ = ["WorkerSettings", "WorkerOptions", "PoolKind"]

#: how a worker runs its jobs: threads, an asyncio loop, or child processes
PoolKind = Literal["thread", "async", "process"]


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker consumes its channels. ``None`` means "derive it" (documented per field).

    Checked when made: a bad value raises ``ConfigError`` (a bad duration ``DurationError``)
    naming it, before any worker exists.
    """

    #: jobs run at once (``None`` or 0: CPU count x 4 for threads, x 1 for processes)
    concurrency: int | None = None
    pool: PoolKind = "thread"
    #: stop once the channels are empty
    burst: bool = False
    #: stop after this many jobs
    max_jobs: int | None = None
    #: the worker's name in the registry (default ``host.pid.random``)
    name: str | None = None
    #: the lease of a claim (default: the app's ``lease``)
    lease: DurationLike | None = None
    #: how long running jobs may finish after a stop signal
    grace: DurationLike = "30s"
    #: how often the reaper runs (default: 0.5 s with ``dead_after``, else up to 5 s)
    reaper_interval: DurationLike | None = None
    #: claim from the channels by weight instead of strict order
    weighted: bool = False
    weights: Sequence[float] | None = None
    #: also run the cron scheduler
    beat: bool = False
    #: ``module:attribute`` of the app (the process pool's children load it)
    app_path: str | None = None
    #: most jobs claimed or finished per script call (clamped to 1..1000)
    batch: int = 100
    #: longest block on the wake-up lists, in seconds
    max_block: float = 1.0
    #: how often the worker registry entry is refreshed, in seconds
    heartbeat_interval: float = 2.0
    #: copy the task's ``logging`` records into its job log
    capture_logs: bool = True
    #: jobs claimed ahead of free slots (default: two more rounds of concurrency)
    prefetch: int | None = None
    #: a job still running in a thread when the grace ends is sent back not before this delay
    fence: DurationLike = "2s"
    #: a worker whose every connection closed is dead after this long (``None`` / 0: off)
    dead_after: DurationLike | None = "1s"

    def __post_init__(self) -> None:
        if self.concurrency is not None and (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or self.concurrency < 0
        ):
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency!r}")
        if self.pool not in ("thread", "async", "process"):
            raise ConfigError(f"unknown pool {self.pool!r}; expected thread, async or process")
        if self.prefetch is not None and (
            isinstance(self.prefetch, bool)
            or not isinstance(self.prefetch, int)
            or self.prefetch < 0
        ):
            raise ConfigError(f"prefetch must be an int >= 0, got {self.prefetch!r}")
        self._check_numbers()
        if self.name is not None and (not isinstance(self.name, str) or "\0" in self.name):
            raise ConfigError(f"name must be a str without NUL, got {self.name!r}")
        for key in ("lease", "grace", "reaper_interval", "fence", "dead_after"):
            value = getattr(self, key)
            if value is not None:
                parse_duration(value)  # DurationError naming the value
        if self.lease is not None:
            check_lease(parse_duration(self.lease))  # as TaskPipe(lease=): at least 50ms

    def _check_numbers(self) -> None:
        """``max_block``, ``heartbeat_interval``: finite seconds > 0; ``max_jobs``: an int >= 1;
        ``batch``: an int; ``weights``: finite numbers >= 0, not all 0."""
        for key in ("max_block", "heartbeat_interval"):
            value = getattr(self, key)
            if not _number(value) or not 0 < value < math.inf:
                raise ConfigError(f"{key} must be a finite number of seconds > 0, got {value!r}")
        if self.max_jobs is not None and (not _int(self.max_jobs) or self.max_jobs < 1):
            raise ConfigError(f"max_jobs must be an int >= 1, got {self.max_jobs!r}")
        if not _int(self.batch):
            raise ConfigError(f"batch must be an int, got {self.batch!r}")
        if self.weights is not None:
            weights = list(self.weights)
            if not all(_number(w) and 0 <= w < math.inf for w in weights) or not any(weights):
                raise ConfigError(
                    f"weights must be finite numbers >= 0, not all 0, got {self.weights!r}"
                )

    @classmethod
    def merge(cls, settings: WorkerSettings | None, options: Mapping[str, Any]) -> WorkerSettings:
        """``settings`` (default: all defaults) with ``options`` (keyword arguments) on top;
        ``TypeError`` naming any option that is not a setting."""
        unknown = sorted(set(options) - FIELDS)
        if unknown:
            raise TypeError(
                f"Worker() got unexpected keyword argument(s): {', '.join(unknown)} "
                f"(settings: {', '.join(sorted(FIELDS))})"
            )
        base = cls() if settings is None else settings
        return dataclasses.replace(base, **options) if options else base


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: the names of every worker setting
FIELDS = frozenset(f.name for f in dataclasses.fields(WorkerSettings))


class WorkerOptions(TypedDict, total=False):
    """The keyword arguments ``Worker(app, ...)`` takes: ``WorkerSettings``' fields."""

    concurrency: int | None
    pool: PoolKind
    burst: bool
    max_jobs: int | None
    name: str | None
    lease: DurationLike | None
    grace: DurationLike
    reaper_interval: DurationLike | None
    weighted: bool
    weights: Sequence[float] | None
    beat: bool
    app_path: str | None
    batch: int
    max_block: float
    heartbeat_interval: float
    capture_logs: bool
    prefetch: int | None
    fence: DurationLike
    dead_after: DurationLike | None
