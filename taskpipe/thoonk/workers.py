"""Workers as the broker sees them: the registry (who is there, for display) and presence (who
is alive, for the reaper's fast path). Thoonk layer: it knows names and bytes, not tasks.

**Registry.** ``taskpipe.workers`` is a ZSET of name -> heartbeat deadline and
``taskpipe.worker:<name>`` a HASH of free-form fields with a TTL; both are refreshed by a beat.
Deadlines come from the Redis server clock (``TIME`` inside ``worker_beat.lua`` /
``worker_live.lua``), never a local clock, so a worker whose clock is off neither hides the
others nor looks dead itself. They are for display, never job safety.

**Presence.** A worker holds one connection subscribed to ``taskpipe.alive:<name>`` and joins
``taskpipe.presence`` (ZSET name -> 0). When its process dies (SIGKILL, OOM kill, crash, exit
without cleanup) the kernel closes its sockets, Redis drops the subscription at once, and
``PUBSUB NUMSUB`` of that channel turns 0. The reaper (``job_reap.lua``, run by every worker)
checks it inside the script: a joined worker seen without a subscriber for ``grace`` ms has its
claims returned to the queue (cancel count +1, fenced: its tokens are dropped) as an expired
lease would be, during the 5 s after its grace (then it leaves the set; leftovers: lease). Why a subscription rather than ``CLIENT LIST``: ``CLIENT`` cannot run inside a
script (the check and the requeue would not be one atomic step), costs O(all clients) per call,
and is often disabled on managed Redis; ``PUBSUB NUMSUB`` is O(1), allowed in scripts and
available on every Redis the project supports and on ``memory://``.

The grace covers a subscription that is re-made while the worker lives: the holder checks
``PUBSUB NUMSUB`` of its own channel through the ordinary client (which follows a Sentinel
failover) at every keeper tick and subscribes again at once if it is gone (a Redis restart, a
failover, a dropped socket). A process that is frozen (SIGSTOP, a long GC pause) or a host that
vanished without closing its sockets still holds the subscription: those are reaped by lease.

Redis Cluster: subscriptions are per node and ``PUBSUB NUMSUB`` counts one node, so presence
is off there (``Presence.enabled`` is False) and claims are reaped by lease only.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import redis

from taskpipe.connection import close_quietly
from taskpipe.thoonk.script_keys import contract
from taskpipe.thoonk.scripts import broker_errors

if TYPE_CHECKING:
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["WorkerRegistry", "Presence", "PRESENCE_TTL_MS"]

PRESENCE_TTL_MS = 24 * 3600 * 1000  # presence entries of workers gone this long are dropped


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class WorkerRegistry:
    """The worker registry of one keyspace (display only: who runs, where, doing what)."""

    def __init__(self, thoonk: Thoonk) -> None:
        self.thoonk = thoonk
        self.keys = thoonk.keys

    def beat(self, name: str, fields: dict[str, str], ttl_ms: int) -> int:
        """Refresh one worker's entry for ``ttl_ms``; returns the server time in ms.

        The store adds two fields in server seconds: ``heartbeat`` (this beat) and ``started``
        (the first beat of this entry; kept by later beats)."""
        now_ms = int(
            self.thoonk.scripts["worker_beat"](
                self.thoonk.client, contract("worker_beat").build(self.keys), [name, ttl_ms]
            )
        )
        key = self.keys.worker_info(name)
        fields = {k: v for k, v in fields.items() if k not in ("heartbeat", "started")}
        with broker_errors("worker registry beat"):
            pipe = self.thoonk.client.pipeline(transaction=False)
            pipe.hset(key, mapping={**fields, "heartbeat": str(now_ms // 1000)})
            pipe.hsetnx(key, "started", str(now_ms // 1000))
            pipe.pexpire(key, ttl_ms)
            pipe.execute()
        return now_ms

    def remove(self, name: str) -> None:
        """Drop a worker's entry (on clean shutdown); best effort, the entry expires anyway."""
        try:
            pipe = self.thoonk.client.pipeline(transaction=False)
            pipe.delete(self.keys.worker_info(name))
            pipe.zrem(self.keys.workers_registry(), name)
            pipe.execute()
        except Exception:  # noqa: BLE001 - best effort; the entry expires anyway
            pass

    def live(self) -> list[dict[str, str]]:
        """The fields of every live worker (entries past their deadline are skipped)."""
        client = self.thoonk.client
        _now, names = self.thoonk.scripts["worker_live"](
            client, contract("worker_live").build(self.keys), []
        )
        out = []
        with broker_errors("worker registry"):
            for name in names:
                raw = client.hgetall(self.keys.worker_info(_s(name)))
                if raw:
                    out.append({_s(k): _s(v) for k, v in raw.items()})
        return out


class Presence:
    """One worker's presence: a held subscription on its alive channel, and its entry in the
    presence set. ``hold()`` (at start and at every keeper tick) makes sure both are there;
    ``leave()`` on a clean stop. Thread-safe."""

    def __init__(self, thoonk: Thoonk, name: str) -> None:
        self.thoonk = thoonk
        self.name = name
        self.channel = thoonk.keys.ch_alive(name)
        #: False on Redis Cluster (subscriptions are per node): claims are reaped by lease only
        self.enabled = not thoonk.connection.is_cluster
        self._lock = threading.Lock()
        self._client: Any = None
        self._pubsub: Any = None

    def reap_args(self, grace_ms: int) -> tuple[str, str, int] | None:
        """The ``presence`` argument of ``JobChannel.reap`` (None where presence is off)."""
        if not self.enabled:
            return None
        return (self.thoonk.keys.presence(), self.thoonk.keys.ch_alive(""), grace_ms)

    def subscribers(self) -> int:
        """How many connections are subscribed to this worker's alive channel."""
        reply = self.thoonk.client.pubsub_numsub(self.channel)
        return int(reply[0][1]) if reply else 0

    def hold(self, rejoin: bool = False) -> bool:
        """Subscribe (again) if the subscription is gone, and join the presence set when it was
        re-made or ``rejoin``. Returns True if it subscribed. Raises redis-py errors (the
        caller's keeper retries)."""
        if not self.enabled:
            return False
        with self._lock:
            resubscribed = False
            if self._pubsub is not None:
                try:
                    self._pubsub.get_message(timeout=0)  # reads replies; notices a closed socket
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                    self._drop()
            if self._pubsub is None or self.subscribers() == 0:
                self._drop()
                if self._client is None:
                    self._client = self._named_client()
                pubsub = self._client.pubsub()
                try:
                    pubsub.subscribe(self.channel)
                    pubsub.get_message(timeout=1.0)  # the confirmation: Redis has it now
                except BaseException:
                    close_quietly(pubsub)
                    raise
                self._pubsub = pubsub
                resubscribed = True
            if resubscribed or rejoin:
                self.thoonk.scripts["presence_join"](
                    self.thoonk.client,
                    contract("presence_join").build(self.thoonk.keys),
                    [self.name, PRESENCE_TTL_MS],
                )
            return resubscribed

    def _named_client(self) -> Any:
        """A client of its own whose connections are named ``taskpipe-worker:<name>`` (``CLIENT
        SETNAME``, so ``CLIENT LIST`` shows whose they are; spaces and controls become ``_``)."""
        client = self.thoonk.connection.new_client()
        pool = getattr(client, "connection_pool", None)
        if pool is not None and not self.thoonk.connection.is_memory:
            safe = "".join(c if c.isprintable() and not c.isspace() else "_" for c in self.name)
            pool.connection_kwargs["client_name"] = f"taskpipe-worker:{safe}"
        return client

    def leave(self) -> None:
        """Leave the presence set and drop the subscription (clean stop); best effort."""
        with self._lock:
            try:
                if self.enabled:
                    self.thoonk.client.zrem(self.thoonk.keys.presence(), self.name)
            except Exception:  # noqa: BLE001 - best effort: a gone worker owns no claims
                pass
            self._drop()
            if self._client is not None and not self.thoonk.connection.is_memory:
                close_quietly(self._client)
            self._client = None

    def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.unsubscribe()
            except Exception:  # noqa: BLE001 - the socket may be gone already
                pass
            close_quietly(pubsub)
