"""Thoonk feeds: items ordered by publish time, optionally capped at ``max_length``.

Wire layout (Thoonk v1): ``feed.ids:<f>`` is a ZSET (score = publish time in ms from the Redis
server clock), ``feed.items:<f>`` a HASH id -> item, ``feed.publishes:<f>`` a counter. Events go
out on ``feed.publish:<f>`` / ``feed.edit:<f>`` (``id\\0item``) and ``feed.retract:<f>`` (``id``),
published by the same Lua script that writes the data.

Decisions (see ``lua/feed_publish.lua``):

- An edit moves the item to the end (a new score), as the thoonk.py document says and both
  original clients do.
- ``max_length`` <= 0, unset or non-numeric means unbounded; the id just written is never
  evicted; evictions are announced on ``feed.retract:<f>``.
- Scores carry a microsecond fraction and are strictly increasing, so ``get_ids()`` is in
  publish order even for items published within one millisecond.

This module also holds the small helpers the other Thoonk object modules share.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any

from taskpipe.broker_retry import maps_broker_errors
from taskpipe.errors import FeedDoesNotExist, ItemNotFound, SerializationError
from taskpipe.thoonk.script_keys import contract

if TYPE_CHECKING:
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["Feed", "MAX_EVICTIONS"]

#: Most ids one publish evicts; a later publish continues the trim.
MAX_EVICTIONS = 1000


def to_str(value: Any) -> str:
    """Decode a Redis reply (bytes) to ``str``; other values go through ``str()``."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def encode_item(item: bytes | str) -> bytes:
    """An item as bytes (``str`` is UTF-8 encoded); anything else is a ``SerializationError``."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    raise SerializationError(f"a Thoonk item must be bytes or str, got {type(item).__name__}")


def check_id(item_id: Any) -> str:
    """Validate an item id given by a caller and return it as ``str``.

    Ids are non-empty strings (ints are accepted and converted) without NUL bytes: a NUL would
    break the ``id\\0payload`` framing of the events.
    """
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise TypeError(f"an item id must be a str, got {type(item_id).__name__}")
    text = str(item_id)
    if not text or "\0" in text:
        raise ValueError(f"an item id must be a non-empty string without NUL bytes, got {text!r}")
    return text


def parse_max_length(value: Any) -> int | None:
    """The ``max_length`` config rule: a positive number (floored) or ``None`` for unbounded."""
    if value is None:
        return None
    try:
        number = float(to_str(value))
    except ValueError:
        return None
    if math.isnan(number) or math.isinf(number) or number < 1:
        return None
    return int(number)


@maps_broker_errors  # no redis-py exception type leaves a public method
class Feed:
    """A Thoonk feed: ``publish`` (new or edit), ``retract``, ordered reads, optional cap.

    Open one with ``Thoonk.feed(name)``, which creates the object when needed.
    """

    TYPE = "feed"

    def __init__(self, thoonk: Thoonk, name: str) -> None:
        self.thoonk = thoonk
        self.name = name
        self.keys = thoonk.keys.feed(name)

    def __repr__(self) -> str:
        return f"<Feed {self.name!r}>"

    # writes ---------------------------------------------------------------------------------
    def publish(self, item: bytes | str, id: str | None = None) -> str:
        """Publish ``item`` and return its id.

        Without ``id`` a new id (``uuid4().hex``) is made. With the id of an existing item this
        is an edit: the item is replaced and moves to the end, and the event goes out on
        ``feed.edit:<f>`` instead of ``feed.publish:<f>``. When the feed has a ``max_length``,
        the oldest items are evicted (each announced on ``feed.retract:<f>``), never this one.
        """
        data = encode_item(item)
        item_id = uuid.uuid4().hex if id is None else check_id(id)
        k = self.keys
        reply = self.thoonk.scripts["feed_publish"](
            self.thoonk.client,
            contract("feed_publish").build(k),
            [item_id, data, k.ch_publish, k.ch_edit, k.ch_retract, self.TYPE, MAX_EVICTIONS],
        )
        if int(reply[0]) == 0:
            raise FeedDoesNotExist(f"feed {self.name!r} does not exist (deleted, or another type)")
        return item_id

    def retract(self, id: str) -> None:
        """Remove an item; raise ``ItemNotFound`` if the feed has no such id."""
        item_id = check_id(id)
        reply = self.thoonk.scripts["feed_retract"](
            self.thoonk.client,
            contract("feed_retract").build(self.keys),
            [item_id, self.keys.ch_retract],
        )
        if int(reply[0]) != 1:
            raise ItemNotFound(item_id)

    # reads ----------------------------------------------------------------------------------
    def get_ids(self) -> list[str]:
        """Every id, oldest first."""
        return [to_str(i) for i in self.thoonk.client.zrange(self.keys.ids, 0, -1)]

    def get_item(self, id: str) -> bytes | None:
        """The item with that id, or ``None`` if there is none."""
        value = self.thoonk.client.hget(self.keys.items, check_id(id))
        return bytes(value) if value is not None else None

    def get_all(self) -> dict[str, bytes]:
        """Every item keyed by id, in feed order, oldest first (one consistent snapshot)."""
        pipe = self.thoonk.client.pipeline(transaction=True)
        pipe.zrange(self.keys.ids, 0, -1)
        pipe.hgetall(self.keys.items)
        ids, items = pipe.execute()
        return {to_str(i): bytes(items[i]) for i in ids if i in items}

    def has(self, id: str) -> bool:
        """True if the feed holds an item with that id."""
        return self.thoonk.client.zscore(self.keys.ids, check_id(id)) is not None

    def __len__(self) -> int:
        return int(self.thoonk.client.zcard(self.keys.ids))

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and bool(id) and "\0" not in id and self.has(id)

    @property
    def max_length(self) -> int | None:
        """The cap from ``feed.config:<f>`` (``max_length``), or ``None`` when unbounded.

        Setting it writes the config (and publishes ``conffeed``); ``None`` or 0 removes the cap.
        Lowering the cap takes effect on the next publish, which evicts the oldest items.
        """
        return parse_max_length(self.thoonk.client.hget(self.keys.config, "max_length"))

    @max_length.setter
    def max_length(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"max_length must be an int or None, got {type(value).__name__}")
        self.thoonk.set_config(self.name, max_length=None if not value or value < 1 else value)
