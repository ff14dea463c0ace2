"""Thoonk queues: FIFO items with a priority lane, taken off atomically.

Wire layout (Thoonk v1): ``feed.ids:<f>`` is a LIST (``put`` LPUSHes, ``put(priority=True)``
RPUSHes, consumers pop from the right, so priority items come next, LIFO among themselves),
``feed.items:<f>`` a HASH id -> item, ``feed.publishes:<f>`` a counter. Queues publish no
pub/sub events. A legacy consumer doing ``BRPOP feed.ids:<f>`` + ``HGET``/``HDEL`` reads what
``put`` writes, and ``get`` reads what a legacy producer writes.

Fixes over the original clients: ``get`` pops the id and deletes its item in one Lua script (a
crash cannot strand the item), and ids whose item is missing are dropped. Lua cannot block, so
a waiting ``get`` blocks with ``BLPOP`` on a wake-up list ``feed.wake:<f>`` (a taskpipe
extension that ``put`` pushes a marker onto; legacy clients ignore it), in chunks of at most one
second, and runs the script again: no busy polling, and a lost marker costs at most one chunk.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import redis

from taskpipe.broker_retry import maps_broker_errors
from taskpipe.connection import close_quietly
from taskpipe.durations import DurationLike, parse_duration
from taskpipe.errors import Empty, FeedDoesNotExist
from taskpipe.thoonk.feed import encode_item, to_str
from taskpipe.thoonk.script_keys import contract

if TYPE_CHECKING:
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["Queue"]

#: Most ids without an item one ``queue_get`` call drops before returning.
MAX_SKIPS = 100
#: Longest single BLPOP on the wake-up list, in seconds.
WAKE_CHUNK = 1.0
#: TTL of the wake-up list, refreshed by every put.
WAKE_TTL = 300


@maps_broker_errors  # no redis-py exception type leaves a public method
class Queue:
    """A Thoonk queue: ``put(item, priority=False)`` and ``get(timeout=0)``.

    Open one with ``Thoonk.queue(name)``, which creates the object when needed. A ``Queue`` is
    safe to share between threads; ``close()`` releases its blocking connection.
    """

    TYPE = "queue"
    #: ``put(item, priority=queue.HIGH)``: served next (thoonk.py's constants)
    HIGH = True
    #: ``put(item, priority=queue.NORMAL)``: waits behind the others (the default)
    NORMAL = False

    def __init__(self, thoonk: Thoonk, name: str) -> None:
        self.thoonk = thoonk
        self.name = name
        self.keys = thoonk.keys.feed(name)
        self.wake_key = thoonk.keys.feed(name).wake
        self._blocking: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Queue {self.name!r}>"

    def put(self, item: bytes | str, priority: bool = False) -> str:
        """Add an item and return its new id (``uuid4().hex``).

        A normal item waits behind the others; a ``priority`` item is served next.
        """
        data = encode_item(item)
        item_id = uuid.uuid4().hex
        k = self.keys
        reply = self.thoonk.scripts["queue_put"](
            self.thoonk.client,
            contract("queue_put").build(k),
            [item_id, data, "1" if priority else "0", self.TYPE, WAKE_TTL],
        )
        if int(reply[0]) != 1:
            raise FeedDoesNotExist(f"queue {self.name!r} does not exist (deleted, or another type)")
        return item_id

    def get(self, timeout: DurationLike | None = 0) -> bytes:
        """Take the next item off the queue and return it.

        ``timeout`` is how long to wait for one, in seconds: ``0`` (the default, as in Thoonk)
        waits forever, ``None`` does not wait. Raise ``Empty`` (a ``queue.Empty``, as thoonk.py
        raises) when no item came in time.
        """
        got = self.get_with_id(timeout)
        if got is None:
            raise Empty(f"no item in queue {self.name!r} within {timeout} s")
        return got[1]

    def get_with_id(self, timeout: DurationLike | None = 0) -> tuple[str, bytes] | None:
        """Like ``get`` but return ``(id, item)``, or ``None`` when no item came in time."""
        if timeout is not None:  # seconds or a duration; DurationError (a ValueError) if bad
            timeout = parse_duration(timeout)
        deadline = None if not timeout else time.monotonic() + timeout
        while True:
            got = self._take()
            if got is not None:
                return got
            if timeout is None:
                return None
            if deadline is None:
                chunk = WAKE_CHUNK
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                chunk = min(remaining, WAKE_CHUNK)
            # a marker wakes us at once; otherwise the chunk ends and we look again
            try:
                self._waiter().wait(max(chunk, 0.01))
            except redis.exceptions.TimeoutError:
                pass  # a socket timeout shorter than the chunk: just look again

    def _take(self) -> tuple[str, bytes] | None:
        script = self.thoonk.scripts["queue_get"]
        keys = contract("queue_get").build(self.keys)
        for _ in range(1000):
            reply = script(self.thoonk.client, keys, [MAX_SKIPS])
            status = int(reply[0])
            if status == 1:
                return to_str(reply[1]), bytes(reply[2])
            if status == 0:
                return None
        return None

    def _waiter(self) -> Any:
        """Blocks on the wake-up list; survives a failover (``ListWaiter``)."""
        if self._blocking is None:
            with self._lock:
                if self._blocking is None:
                    self._blocking = self.thoonk.connection.list_waiter([self.wake_key])
        return self._blocking

    def get_ids(self) -> list[str]:
        """Pending ids in list order (left to right): the last one is served next."""
        return [to_str(i) for i in self.thoonk.client.lrange(self.keys.ids, 0, -1)]

    def __len__(self) -> int:
        return int(self.thoonk.client.llen(self.keys.ids))

    def close(self) -> None:
        """Release the connection used for blocking waits (made again if ``get`` waits later)."""
        with self._lock:
            client, self._blocking = self._blocking, None
        if client is not self.thoonk.client:
            close_quietly(client)
