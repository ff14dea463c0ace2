"""Loads the Lua scripts (one file per atomic operation) and runs them with EVALSHA.

Scripts are read lazily from ``taskpipe/thoonk/lua/<name>.lua``. A line ``--@include other.lua``
is replaced by that file's text (shared helpers, never pasted twice). A ``NOSCRIPT`` reply (Redis
restarted, failed over, or ``SCRIPT FLUSH``) is answered by loading the script and trying again,
so callers never see it. The registry is owned by whoever creates it (a ``Thoonk`` object).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any, NoReturn

import redis
from redis.cluster import ClusterPipeline

from taskpipe.errors import BrokerUnavailable

__all__ = ["Script", "ScriptRegistry", "as_broker_error", "broker_errors"]

_INCLUDE = re.compile(r"^--@include\s+(\S+)\s*$", re.MULTILINE)


def _read(name: str) -> str:
    return (
        resources.files("taskpipe.thoonk")
        .joinpath("lua")
        .joinpath(name)
        .read_text(encoding="utf-8")
    )


def _expand(name: str, depth: int = 0) -> str:
    if depth > 4:
        raise RuntimeError(f"Lua include nesting too deep at {name}")
    return _INCLUDE.sub(lambda m: _expand(m.group(1), depth + 1), _read(name))


_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
)


def as_broker_error(what: str, exc: redis.exceptions.RedisError) -> Exception:
    """``BrokerUnavailable`` for a connection failure or Redis refusing writes (out of memory,
    read-only replica, still loading, persistence or replica errors); else ``exc`` itself."""
    if isinstance(exc, _UNAVAILABLE):
        return BrokerUnavailable(f"{what}: broker unavailable: {exc}")
    if isinstance(exc, redis.exceptions.NoScriptError):
        # a pipeline's EVALSHA reached a server that lost the script after we loaded it (on a
        # cluster: a replica promoted meanwhile; SCRIPT LOAD is not replicated): transient, a
        # retry loads it again (publishing retries check what landed first)
        return BrokerUnavailable(f"{what}: broker unavailable (script not loaded): {exc}")
    # redis-py turns an "OOM ..." reply into OutOfMemoryError and drops the "OOM" prefix
    # NOREPLICAS: min-replicas-to-write not met (e.g. a master cut off by a failover)
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or str(exc).startswith(
        ("OOM", "MISCONF", "NOREPLICAS")
    ):
        return BrokerUnavailable(
            f"{what}: broker refused the write (out of memory, persistence or replica error): {exc}"
        )
    return exc


def raise_as_broker_error(what: str, exc: redis.exceptions.RedisError) -> NoReturn:
    """Raise ``as_broker_error(what, exc)`` (from ``exc``), or ``exc`` itself if it is not one."""
    mapped = as_broker_error(what, exc)
    if mapped is exc:
        raise exc
    raise mapped from exc


@contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """Raise ``as_broker_error`` of any Redis error in the block (for pipelines)."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise_as_broker_error(what, exc)


def load_script(client: Any, source: str) -> None:
    """``SCRIPT LOAD`` on ``client``'s server; on a Redis Cluster on every node, replicas
    included (redis-py's default is the primaries it knows): ``SCRIPT LOAD`` is not replicated,
    so a replica promoted by a failover would answer the next ``EVALSHA`` with ``NOSCRIPT``
    (and a pipeline cannot load and retry one call)."""
    all_nodes = getattr(client, "ALL_NODES", None)
    if all_nodes is not None and hasattr(client, "get_nodes"):
        client.execute_command("SCRIPT LOAD", source, target_nodes=all_nodes)
    else:
        client.script_load(source)


class Script:
    """One Lua operation: its text, its SHA1, and a NOSCRIPT-safe ``__call__``."""

    def __init__(self, name: str, lane: Any = None) -> None:
        self.name = name
        self.lane = lane
        self.source = _expand(name + ".lua")
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()

    def __call__(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script on ``client``; load it first if the server does not know it.

        Connection failures and Redis refusing writes (out of memory, read-only replica,
        still loading) raise ``BrokerUnavailable``; the script's effects are all or nothing.
        """
        if self.lane is not None and client is self.lane.client:
            client = self.lane  # the lean path for the connection's shared client
        try:
            try:
                return client.evalsha(self.sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                load_script(client, self.source)
                return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.RedisError as exc:  # inline, not broker_errors: the hot path
            raise_as_broker_error(self.name, exc)

    def queue(self, pipe: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Add a call to a pipeline (the caller loads scripts first with ``ScriptRegistry.load_all``)."""
        # execute_command, not pipe.evalsha: redis-py's ClusterPipeline blocks the evalsha method
        # but routes a queued EVALSHA by its keys' slot like any keyed command
        on_cluster = isinstance(pipe, ClusterPipeline)  # (a flag: pipe stays Any for mypy)
        if on_cluster:
            # on a cluster, the script's text: a replica promoted since the scripts were loaded
            # (SCRIPT LOAD is not replicated) would refuse EVALSHA, and a pipeline cannot load
            # and retry one call; a batch's text costs little beside its jobs
            pipe.execute_command("EVAL", self.source, len(keys), *keys, *args)
            return
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


class ScriptRegistry:
    """The scripts of one Thoonk instance, created on first use."""

    def __init__(self, lane: Any = None) -> None:
        """``lane``: a ``CommandLane`` that calls on its client go through (optional)."""
        self.lane = lane
        self._scripts: dict[str, Script] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Script:
        script = self._scripts.get(name)
        if script is None:
            with self._lock:
                script = self._scripts.get(name)
                if script is None:
                    script = Script(name, self.lane)
                    self._scripts[name] = script
        return script

    def ensure_loaded(self, client: Any, *names: str) -> None:
        """Load the named scripts on the server (before pipelining EVALSHA calls)."""
        for name in names:
            load_script(client, self[name].source)
