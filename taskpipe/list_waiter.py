"""Blocking waits on wake-up lists: ``ListWaiter`` (one ``BLPOP``, or one per slot group on a
Redis Cluster, interruptible on request). Made by ``Connection.list_waiter``."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from taskpipe.connection import close_quietly, key_slot
from taskpipe.errors import BrokerUnavailable

if TYPE_CHECKING:
    from taskpipe.connection import Connection

__all__ = ["ListWaiter", "WAITER_IDLE_EXIT"]

WAITER_IDLE_EXIT = 5.0  # seconds a cluster wake-up thread lingers with nobody waiting


def _blpop_refused(exc: redis.exceptions.ResponseError) -> bool:
    """A ``BLPOP`` answered with an error: True (treat as woken) or raise."""
    # a master demoted to replica (Sentinel failover) answers blocked clients with
    # "UNBLOCKED ... instance state changed": not an error of ours; the caller's
    # next claim meets the failover (ConnectionError) and follows the new master
    if str(exc).startswith("UNBLOCKED"):
        return True
    # BLPOP is a write: a server refusing writes (no good replica under
    # min-replicas-to-write, a read-only replica, a failed save) is unavailable
    if isinstance(exc, redis.exceptions.ReadOnlyError) or str(exc).startswith(
        ("NOREPLICAS", "READONLY", "MISCONF")
    ):
        raise BrokerUnavailable(f"blocking wait: broker refused it: {exc}") from exc
    raise exc


class ListWaiter:
    """Blocks until one of several lists (wake-up markers) gets an element, or a timeout passes.

    One Redis, Sentinel, or a cluster where every key shares one slot: ``wait`` is exactly one
    ``BLPOP`` over every key on the blocking client, as it always was.

    Redis Cluster with keys in several slots: one ``BLPOP`` may only name keys of one slot, so
    the keys are grouped by slot and each group is watched by a daemon thread that ``BLPOP``s it
    (``max_block`` at a time, on the shared blocking client: one connection per thread) while a
    ``wait`` is in progress, and wakes the waiter when it pops a marker. So a job put into any
    slot wakes the worker at once, as on one Redis. Chosen over "block on the first slot only"
    or rotating, which make every wake-up of the other slots cost a full block timeout.
    A thread's BLPOP may still be running after ``wait`` returned (or after ``close``); a marker
    it pops then is pushed back to its list for other waiters. Should a marker still be lost
    (a crash between the pop and the push), the job is found at the next claim, at most
    ``max_block`` (1 s by default) later: callers never block longer than that. Threads exit
    after ``WAITER_IDLE_EXIT`` seconds with nobody waiting (or on ``close``) and restart on
    demand. An ``interruptible`` waiter on ``memory://`` (a worker's) waits the same way, on one
    thread: ``interrupt`` then ends a wait by setting the event it waits on (a burst worker
    exits once its last outcome is written, a stop ends its wait, instead of either waiting out
    ``max_block``).
    """

    def __init__(
        self,
        connection: Connection,
        keys: Sequence[str],
        *,
        client: Any = None,
        max_block: float = 1.0,
        interruptible: bool = False,
    ) -> None:
        self.connection = connection
        self.keys = list(keys)
        self.max_block = max(0.01, max_block)
        # ``memory://``: wait on a thread so ``interrupt`` can end it (one caller at a time)
        self._memory_thread = interruptible and connection.is_memory
        self._client = client
        self._own_client = client is None
        groups: dict[int, list[str]] = {}
        if connection.is_cluster:
            for key in keys:
                groups.setdefault(key_slot(key), []).append(key)
        self.groups: list[list[str]] = list(groups.values()) if len(groups) > 1 else [list(keys)]
        self._lock = threading.Lock()
        self._threads: list[threading.Thread | None] = [None] * len(self.groups)
        self._wanted = threading.Event()  # a wait() is in progress
        self._woke = threading.Event()  # a thread popped a marker
        self._closed = threading.Event()
        # ``interrupt``: the CLIENT ID of each connection (learnt on its first ``wait_then``,
        # forgotten when it reconnects) and of the one blocked in a ``wait_then`` now
        self._ids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._blocked: int | None = None
        self._interrupted = False  # an interrupt the next (or current) wait_then has to see
        self._interruptible = True  # False once Redis refused CLIENT ID/UNBLOCK (ACL)

    @property
    def client(self) -> Any:
        """The client the BLPOPs run on (made on first use when none was given)."""
        if self._client is None:
            self._client = self.connection.new_client()
        return self._client

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if a marker was popped (a job may be available)."""
        timeout = max(timeout, 0.001)
        if not self._threaded:
            try:
                return self.client.blpop(self.groups[0], timeout=timeout) is not None
            except redis.exceptions.ResponseError as exc:
                return _blpop_refused(exc)
        with self._lock:
            if self._interrupted:  # interrupted while no wait was in progress: do not block
                self._interrupted = False
                self._woke.clear()
                return False
            client = self.client
            for i, thread in enumerate(self._threads):
                if thread is None:
                    thread = threading.Thread(
                        target=self._watch, args=(i, client), daemon=True, name=f"taskpipe-wake-{i}"
                    )
                    self._threads[i] = thread
                    thread.start()
            self._wanted.set()
        try:
            woke = self._woke.wait(timeout)
        finally:
            self._wanted.clear()
        with self._lock:
            self._woke.clear()  # the caller claims next: whatever woke us is seen by that claim
            if self._interrupted:  # ended by ``interrupt``: as if it timed out
                self._interrupted = woke = False
        return woke

    @property
    def _threaded(self) -> bool:
        """``wait`` waits on ``_woke``, set by wake-up threads (or ``interrupt``): a cluster's
        keys in several slots, and an ``interruptible`` waiter on ``memory://``, whose BLPOP
        ``CLIENT UNBLOCK`` cannot end without a race (the in-process server runs it on the
        waiting thread itself). One ``wait`` at a time there (a worker's claim loop)."""
        return len(self.groups) > 1 or self._memory_thread

    @property
    def pipelines(self) -> bool:
        """True if ``wait_then`` works here: one Redis or Sentinel (not a cluster, not memory://)."""
        return not self.connection.is_cluster and not self.connection.is_memory

    def wait_then(self, timeout: float, *commands: Sequence[Any]) -> tuple[bool, list[Any]]:
        """``wait``, with ``commands`` (argument tuples) sent in the same write behind the
        ``BLPOP``: Redis keeps a blocked client's next commands in its buffer and runs them the
        moment the ``BLPOP`` returns, so they cost no round trip of their own. Only where
        ``pipelines`` is True. Returns ``(woke, raw replies of the commands)``; a reply Redis
        refused is its ``ResponseError`` (the caller decides).

        Runs on one connection of the client's pool, without redis-py's pipeline machinery
        (its cost would sit between the wake-up and the caller seeing the replies).
        """
        pool = self.client.connection_pool
        conn = pool.get_connection()
        ask_id = self._interruptible and conn not in self._ids
        if self._interrupted:  # interrupted while no wait was in progress: do not block
            self._interrupted, timeout = False, 0.0
        try:
            blpop = ("BLPOP", *self.keys, max(timeout, 0.001))
            head = [("CLIENT", "ID")] if ask_id else []
            conn.send_packed_command(conn.pack_commands([*head, blpop, *commands]))
            if ask_id:
                self._learn_id(conn)
            self._blocked = blocked = self._ids.get(conn)
            if self._interrupted and blocked is not None:  # interrupted while sending
                self._interrupted = False
                self._unblock(blocked)
            replies: list[Any] = []
            for _ in range(1 + len(commands)):
                try:
                    replies.append(conn.read_response())
                except redis.exceptions.ResponseError as exc:  # the connection is in step
                    replies.append(exc)
        except BaseException:
            conn.disconnect()  # mid-exchange: never reuse a connection out of step
            raise
        finally:
            self._blocked = None
            pool.release(conn)
        popped = replies[0]
        if isinstance(popped, redis.exceptions.ResponseError):
            return _blpop_refused(popped), replies[1:]
        return popped is not None, replies[1:]

    def _learn_id(self, conn: Any) -> None:
        """Read the reply of the ``CLIENT ID`` sent ahead of a ``wait_then``'s ``BLPOP``."""
        try:
            self._ids[conn] = int(conn.read_response())
            conn.register_connect_callback(self._forget_id)  # a reconnect is a new client
        except redis.exceptions.ResponseError:  # refused (ACL): waits end at their timeout
            self._interruptible = False

    def _forget_id(self, conn: Any) -> None:
        self._ids.pop(conn, None)

    def interrupt(self) -> None:
        """End the ``wait_then`` in progress at once, as if it timed out (the commands behind
        its ``BLPOP`` still run), with ``CLIENT UNBLOCK`` from another connection; with none in
        progress, the next ``wait_then`` does not block. Where ``wait`` runs on wake-up threads (a
        cluster's keys in several slots, an ``interruptible`` one on ``memory://``) it ends that
        ``wait`` the same way (no
        Redis command: it sets the event the wait is on). Best effort: a plain ``wait`` on one
        Redis, or a Redis that refuses the command (ACL), ends at its timeout as it always did."""
        if self._threaded:
            with self._lock:  # ends a wait in progress, or the next one at once
                self._interrupted = True
                self._woke.set()
            return
        self._interrupted = True
        blocked = self._blocked
        if blocked is not None:
            self._interrupted = False
            self._unblock(blocked)

    def _unblock(self, client_id: int) -> None:
        if not self._interruptible:
            return
        try:
            self.client.execute_command("CLIENT", "UNBLOCK", client_id)
        except redis.exceptions.ResponseError:
            self._interruptible = False
        except redis.exceptions.RedisError:
            pass  # the broker is away: the wait fails on its own

    def _watch(self, index: int, client: Any) -> None:
        keys = self.groups[index]
        idle_since = time.monotonic()
        while not self._closed.is_set():
            if not self._wanted.wait(self.max_block):
                with self._lock:  # decide to exit under the lock wait() starts threads with
                    if (
                        not self._wanted.is_set()
                        and time.monotonic() - idle_since >= WAITER_IDLE_EXIT
                    ):
                        self._threads[index] = None
                        return
                continue
            idle_since = time.monotonic()
            try:
                popped = client.blpop(keys, timeout=self.max_block)
                if popped is not None:
                    if self._wanted.is_set() and not self._closed.is_set():
                        self._woke.set()
                    else:  # nobody waits on us any more: give the marker back to other workers
                        client.lpush(popped[0], popped[1])
            except Exception:  # noqa: BLE001 - broker down: the caller's claim reports it
                self._closed.wait(self.max_block)
        with self._lock:
            self._threads[index] = None
            last = not any(self._threads)
        if last:
            self._close_client()  # closed: the last thread out closes our own client

    def close(self) -> None:
        """Stop the wake-up threads (within ``max_block``); close the client if it is our own."""
        self._closed.set()
        with self._lock:
            idle = not any(self._threads)
        if idle:
            self._close_client()

    def _close_client(self) -> None:
        if self._own_client and not self.connection.is_memory:
            close_quietly(self._client)
