"""Thoonk sorted feeds: items in an order the caller controls.

Wire layout (Thoonk v1): ``feed.ids:<f>`` is a LIST (the order), ``feed.items:<f>`` a HASH
id -> item, ``feed.idincr:<f>`` the integer id counter, ``feed.publishes:<f>`` a counter.
Events: ``feed.publish:<f>`` (``id\\0item``), ``feed.position:<f>`` (``id\\0relpos``) and
``feed.retract:<f>`` (``id``), published by the Lua script that writes the data.

Relative positions (``relpos``): ``:X`` is just before item X, ``X:`` just after X, ``begin:``
first and ``:end`` last. Ids are integers (returned as ``str``), so a relpos names at most one
item and ``begin``/``end`` are never ids.

An edit is announced on ``feed.publish:<f>``, as thoonk.py 1.0 does (thoonk.js 0.5 used
``feed.edit``); a listener tells an edit from a new item by whether it already knows the id.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from taskpipe.broker_retry import maps_broker_errors
from taskpipe.errors import FeedDoesNotExist, InvalidPosition, ItemNotFound
from taskpipe.thoonk.feed import check_id, encode_item, to_str
from taskpipe.thoonk.script_keys import contract

if TYPE_CHECKING:
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["SortedFeed", "parse_relpos"]


def parse_relpos(relpos: str) -> tuple[str, str]:
    """Split a relpos into ``(where, pivot)``; ``where`` is begin, end, before or after.

    Raise ``InvalidPosition`` for anything outside the grammar ``:X``, ``X:``, ``begin:``,
    ``:end`` (an empty X, an X containing ``:`` or a NUL byte, or a bare ``:``).
    """
    if not isinstance(relpos, str):
        raise InvalidPosition(f"a relative position must be a str, got {type(relpos).__name__}")
    if relpos == "begin:":
        return "begin", ""
    if relpos == ":end":
        return "end", ""
    if relpos.startswith(":") and not relpos.endswith(":"):
        where, pivot = "before", relpos[1:]
    elif relpos.endswith(":") and not relpos.startswith(":"):
        where, pivot = "after", relpos[:-1]
    else:
        raise InvalidPosition(
            f"malformed relative position {relpos!r}; expected ':X', 'X:', 'begin:' or ':end'"
        )
    if not pivot or ":" in pivot or "\0" in pivot:
        raise InvalidPosition(f"malformed relative position {relpos!r}")
    return where, pivot


def _is_relpos(value: Any) -> bool:
    try:
        parse_relpos(value)
    except InvalidPosition:
        return False
    return True


@maps_broker_errors  # no redis-py exception type leaves a public method
class SortedFeed:
    """A Thoonk sorted feed: append, prepend, insert next to an item, move, edit, retract.

    Open one with ``Thoonk.sorted_feed(name)``, which creates the object when needed.
    """

    TYPE = "sorted_feed"

    def __init__(self, thoonk: Thoonk, name: str) -> None:
        self.thoonk = thoonk
        self.name = name
        self.keys = thoonk.keys.feed(name)

    def __repr__(self) -> str:
        return f"<SortedFeed {self.name!r}>"

    # inserts ----------------------------------------------------------------------------------
    def _insert(self, where: str, pivot: str, item: bytes | str) -> str:
        data = encode_item(item)
        k = self.keys
        reply = self.thoonk.scripts["sorted_feed_insert"](
            self.thoonk.client,
            contract("sorted_feed_insert").build(k),
            [where, pivot, data, k.ch_publish, k.ch_position, self.TYPE],
        )
        if int(reply[0]) == 1:
            return to_str(reply[1])
        if to_str(reply[1]) == "missing":
            raise ItemNotFound(pivot)
        raise FeedDoesNotExist(
            f"sorted feed {self.name!r} does not exist (deleted, or another type)"
        )

    def append(self, item: bytes | str) -> str:
        """Add an item at the end; return its id (position event ``:end``)."""
        return self._insert("end", "", item)

    publish = append

    def prepend(self, item: bytes | str) -> str:
        """Add an item at the beginning; return its id (position event ``begin:``)."""
        return self._insert("begin", "", item)

    def publish_before(self, before_id: str, item: bytes | str) -> str:
        """Add an item just before ``before_id``; ``ItemNotFound`` if that id is not in the feed."""
        return self._insert("before", check_id(before_id), item)

    def publish_after(self, after_id: str, item: bytes | str) -> str:
        """Add an item just after ``after_id``; ``ItemNotFound`` if that id is not in the feed."""
        return self._insert("after", check_id(after_id), item)

    # changes ----------------------------------------------------------------------------------
    def edit(self, id: str, item: bytes | str) -> None:
        """Replace the item of an existing id (same position); announced on ``feed.publish:<f>``.

        Raise ``ItemNotFound`` if the id is not in the feed.
        """
        item_id = check_id(id)
        data = encode_item(item)
        reply = self.thoonk.scripts["sorted_feed_edit"](
            self.thoonk.client,
            contract("sorted_feed_edit").build(self.keys),
            [item_id, data, self.keys.ch_publish],
        )
        if int(reply[0]) != 1:
            raise ItemNotFound(item_id)

    def move(self, relpos: str, id: str) -> None:
        """Move item ``id`` to ``relpos`` (``:X``, ``X:``, ``begin:`` or ``:end``), the argument
        order of the thoonk.py document: ``move(':42', 'item id')``.

        Raise ``InvalidPosition`` for a malformed relpos or one relative to the item itself, and
        ``ItemNotFound`` when the item or the item named in relpos is not in the feed. Nothing
        changes when it raises. The old taskpipe order ``move(id, relpos)`` still works (ids are
        integers, never a relpos) but is deprecated and warns.
        """
        if _is_relpos(id) and not _is_relpos(relpos):
            warnings.warn(
                "SortedFeed.move(id, relpos) is deprecated: use move(relpos, id), the "
                "thoonk.py order",
                DeprecationWarning,
                stacklevel=2,
            )
            relpos, id = id, relpos
        self._move(id, relpos)

    def _move(self, id: str, relpos: str) -> None:
        item_id = check_id(id)
        where, pivot = parse_relpos(relpos)
        if pivot == item_id:
            raise InvalidPosition(f"cannot move item {item_id!r} relative to itself")
        reply = self.thoonk.scripts["sorted_feed_move"](
            self.thoonk.client,
            contract("sorted_feed_move").build(self.keys),
            [item_id, where, pivot, relpos, self.keys.ch_position],
        )
        if int(reply[0]) == 1:
            return
        reason = to_str(reply[1])
        if reason == "self":
            raise InvalidPosition(f"cannot move item {item_id!r} relative to itself")
        raise ItemNotFound(pivot if reason == "missing_pivot" else item_id)

    def move_before(self, existing_id: str, id: str) -> None:
        """Move item ``id`` just before ``existing_id`` (thoonk.py order:
        ``move_before('existing id', 'item id')``)."""
        self._move(id, ":" + check_id(existing_id))

    def move_after(self, existing_id: str, id: str) -> None:
        """Move item ``id`` just after ``existing_id`` (thoonk.py order:
        ``move_after('existing id', 'item id')``)."""
        self._move(id, check_id(existing_id) + ":")

    def move_first(self, id: str) -> None:
        """Move an item to the beginning."""
        self._move(id, "begin:")

    def move_last(self, id: str) -> None:
        """Move an item to the end."""
        self._move(id, ":end")

    def retract(self, id: str) -> None:
        """Remove an item; raise ``ItemNotFound`` if the feed has no such id."""
        item_id = check_id(id)
        reply = self.thoonk.scripts["sorted_feed_retract"](
            self.thoonk.client,
            contract("sorted_feed_retract").build(self.keys),
            [item_id, self.keys.ch_retract],
        )
        if int(reply[0]) != 1:
            raise ItemNotFound(item_id)

    # reads ----------------------------------------------------------------------------------
    def get_ids(self) -> list[str]:
        """Every id, in feed order."""
        return [to_str(i) for i in self.thoonk.client.lrange(self.keys.ids, 0, -1)]

    def get_item(self, id: str) -> bytes | None:
        """The item with that id, or ``None`` if there is none."""
        value = self.thoonk.client.hget(self.keys.items, check_id(id))
        return bytes(value) if value is not None else None

    def get_all(self) -> dict[str, bytes]:
        """Every item keyed by id, in feed order (one consistent snapshot)."""
        pipe = self.thoonk.client.pipeline(transaction=True)
        pipe.lrange(self.keys.ids, 0, -1)
        pipe.hgetall(self.keys.items)
        ids, items = pipe.execute()
        return {to_str(i): bytes(items[i]) for i in ids if i in items}

    def has(self, id: str) -> bool:
        """True if the feed holds an item with that id."""
        return bool(self.thoonk.client.hexists(self.keys.items, check_id(id)))

    def __len__(self) -> int:
        return int(self.thoonk.client.llen(self.keys.ids))

    def __contains__(self, id: Any) -> bool:
        try:
            return self.has(id)
        except (TypeError, ValueError):
            return False
