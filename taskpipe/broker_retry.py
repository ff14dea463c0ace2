"""One retry policy for transient broker errors, shared by every client path.

A broker restart, failover or load looks to a client like one of a few errors for a few
seconds: the connection is refused or reset, a call times out, Redis answers ``LOADING`` while
it reads its data set back, ``READONLY`` (a demoted master), ``TRYAGAIN`` / ``CLUSTERDOWN``
(a cluster re-sharding or electing), ``MASTERDOWN`` (a replica that lost its master).
``is_transient`` says which errors are those; ``BrokerRetry`` runs a call again, with capped
exponential backoff and jitter (redis-py's ``ExponentialWithJitterBackoff``), until it succeeds
or its time budget (or the caller's own deadline) runs out, then raises ``BrokerUnavailable``.

Anything else (a refused password, out of memory, a wrong key type) is not retried:
``as_taskpipe_error`` turns it into a ``TaskpipeError`` at once, so no redis-py exception type
reaches a caller of a public API.

Who uses it: ``TaskPipe.send`` / ``publish_many`` / ``publish_calls`` (``publish_retry``,
default 5 s), ``AsyncResult.get`` (its own timeout), ``current_job().log()`` / ``.progress()``
(buffer instead of waiting, see ``taskpipe.context``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff

from taskpipe.errors import BrokerError, BrokerUnavailable, TaskpipeError

__all__ = [
    "BrokerRetry",
    "is_transient",
    "as_taskpipe_error",
    "maps_broker_errors",
    "DEFAULT_PUBLISH_RETRY",
]

T = TypeVar("T")
C = TypeVar("C", bound=type)

DEFAULT_PUBLISH_RETRY = 5.0  # seconds a publish keeps trying through a broker outage

# replies (by their first word) that a restarting, loading or failing-over broker gives
_TRANSIENT_REPLIES = ("LOADING", "READONLY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "UNBLOCKED")
_TRANSIENT_TYPES = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ClusterDownError,
    ConnectionResetError,
    ConnectionRefusedError,
    BrokenPipeError,
    TimeoutError,
)
# ConnectionError subclasses that a retry does not cure
_PERMANENT_TYPES = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)


def is_transient(exc: BaseException) -> bool:
    """True for an error a broker restart, load or failover causes (worth a retry).

    A ``BrokerUnavailable`` counts when the error it was raised from is transient.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 4:
        if isinstance(current, _PERMANENT_TYPES) or (
            isinstance(current, TaskpipeError) and not isinstance(current, BrokerUnavailable)
        ):
            return False  # ResultTimeout is a TimeoutError too, but not the broker's
        if isinstance(current, _TRANSIENT_TYPES):
            return True
        if isinstance(current, redis.exceptions.ResponseError) and str(current).startswith(
            _TRANSIENT_REPLIES
        ):
            return True
        if not isinstance(current, BrokerUnavailable):
            return False
        current, seen = current.__cause__, seen + 1
    return False


def as_taskpipe_error(what: str, exc: BaseException) -> TaskpipeError:
    """The ``TaskpipeError`` to raise for a broker error: ``exc`` itself if it already is one,
    ``BrokerUnavailable`` for a transient error (or a refused write: OOM, MISCONF,
    NOREPLICAS), ``BrokerError`` for any other redis-py error."""
    if isinstance(exc, TaskpipeError):
        return exc
    text = str(exc)
    if is_transient(exc):
        return BrokerUnavailable(f"{what}: broker unavailable: {text}")
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or text.startswith(
        ("OOM", "MISCONF", "NOREPLICAS")
    ):
        return BrokerUnavailable(
            f"{what}: broker refused the write "
            f"(out of memory, persistence or replica error): {text}"
        )
    return BrokerError(f"{what}: broker error: {type(exc).__name__}: {text}")


class BrokerRetry:
    """Retries a call through transient broker errors for at most ``budget`` seconds.

    ``budget`` 0 means one try. The waits between tries grow from ``base`` to ``cap`` seconds
    (full jitter), so a crowd of clients does not reconnect in lock step.
    """

    def __init__(
        self, budget: float = DEFAULT_PUBLISH_RETRY, *, base: float = 0.05, cap: float = 1.0
    ) -> None:
        self.budget = max(0.0, float(budget))
        self._backoff = ExponentialWithJitterBackoff(cap=cap, base=base)

    def __repr__(self) -> str:
        return f"<BrokerRetry budget={self.budget:g}s>"

    def delay_of(self, failures: int, deadline: float | None) -> float | None:
        """How long to wait before try ``failures + 1``; None if that would pass ``deadline``
        (a ``time.monotonic()`` value; None = no deadline)."""
        delay = float(self._backoff.compute(failures))
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            delay = min(delay, left)
        return delay

    def pause(self, failures: int, deadline: float | None) -> bool:
        """Sleep before try ``failures + 1``; False (no sleep) if that would pass ``deadline``."""
        delay = self.delay_of(failures, deadline)
        if delay is None:
            return False
        time.sleep(delay)
        return True

    def call(self, what: str, fn: Callable[[int], T], *, deadline: float | None = None) -> T:
        """``fn(attempt)`` (attempt 0, 1, ...) until it returns, retrying transient errors
        until ``budget`` seconds (or ``deadline``, whichever is sooner) have passed.

        Raises ``BrokerUnavailable`` when time is up, and ``as_taskpipe_error`` of any error
        that is not transient at once.
        """
        start = time.monotonic()
        end = start + self.budget
        if deadline is not None:
            end = min(end, deadline)
        attempt = 0
        while True:
            try:
                return fn(attempt)
            except (redis.exceptions.RedisError, OSError, BrokerUnavailable) as exc:
                if not is_transient(exc):
                    mapped = as_taskpipe_error(what, exc)
                    if mapped is exc:
                        raise
                    raise mapped from exc
                attempt += 1
                if not self.pause(attempt, end):
                    raise BrokerUnavailable(
                        f"{what}: broker unavailable for {time.monotonic() - start:.1f} s "
                        f"({attempt} tries): {exc}"
                    ) from exc


def _mapped(what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.RedisError as exc:
            raise as_taskpipe_error(what, exc) from exc

    return call


def maps_broker_errors(cls: C) -> C:
    """Class decorator: every public method (and property) of ``cls`` raises
    ``as_taskpipe_error`` of a redis-py error instead of the error itself (no retry: the
    Thoonk objects are one call each; retrying is the caller's policy).

    A direct base class that sets ``_broker_errors_mapped_by_subclass`` (a mixin holding part of
    ``cls``'s methods, e.g. ``JobReads``) has its public methods mapped too, as ``cls``'s own."""
    members = dict(vars(cls))
    for base in cls.__bases__:
        if vars(base).get("_broker_errors_mapped_by_subclass"):
            for name, value in vars(base).items():
                members.setdefault(name, value)
    for name, value in list(members.items()):
        if name.startswith("_"):
            continue
        what = f"{cls.__name__}.{name}"
        if isinstance(value, property):
            setattr(
                cls,
                name,
                property(
                    _mapped(what, value.fget) if value.fget else None,
                    _mapped(what, value.fset) if value.fset else None,
                    value.fdel,
                    value.__doc__,
                ),
            )
        elif callable(value) and not isinstance(value, (staticmethod, classmethod, type)):
            setattr(cls, name, _mapped(what, value))
    return cls
