"""The ``Thoonk`` object: creates, configures, deletes and opens Thoonk objects on one Redis."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from taskpipe.broker_retry import maps_broker_errors
from taskpipe.connection import Connection
from taskpipe.errors import FeedDoesNotExist, FeedExists, WrongFeedType
from taskpipe.thoonk.keys import SCHEMA_VERSION, Keyspace
from taskpipe.thoonk.scripts import ScriptRegistry, broker_errors

if TYPE_CHECKING:
    from taskpipe.thoonk.feed import Feed
    from taskpipe.thoonk.job import JobChannel
    from taskpipe.thoonk.listener import Listener
    from taskpipe.thoonk.queue import Queue
    from taskpipe.thoonk.sorted_feed import SortedFeed

__all__ = ["Thoonk", "OBJECT_TYPES"]

OBJECT_TYPES = ("feed", "sorted_feed", "queue", "job")


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@maps_broker_errors  # no redis-py exception type leaves a public method
class Thoonk:
    """Entry point of the Thoonk layer.

    ``Thoonk("redis://127.0.0.1:6379/0")``, ``Thoonk("memory://")`` or ``Thoonk(redis_client)``.
    ``feed(name)``, ``sorted_feed(name)``, ``queue(name)`` and ``job(name)`` open an object,
    creating it when it does not exist (as thoonk.py does), and raise ``WrongFeedType`` if the name
    belongs to an object of another type.
    """

    def __init__(self, url_or_client: Any = None, *, prefix: str = "",
                 connection: Connection | None = None) -> None:
        if connection is not None:
            self.connection = connection
        elif url_or_client is None or isinstance(url_or_client, str):
            self.connection = Connection(url_or_client)
        else:
            self.connection = Connection(client=url_or_client)
        self.client: Any = self.connection.client
        self.keys = Keyspace(prefix)
        self.scripts = ScriptRegistry(self.connection.lane)
        self.instance = uuid.uuid4().hex

    # registry -------------------------------------------------------------------------------
    def create(self, name: str, type: str = "feed", config: dict[str, Any] | None = None) -> None:
        """Create an object; raise ``FeedExists`` if the name is taken."""
        if not self._create(name, type, config):
            raise FeedExists(f"a Thoonk object named {name!r} already exists")

    def _create(self, name: str, type: str, config: dict[str, Any] | None) -> bool:
        if type not in OBJECT_TYPES:
            raise WrongFeedType(f"unknown Thoonk object type {type!r}; expected one of {OBJECT_TYPES}")
        if not isinstance(name, str) or not name:
            raise ValueError("a Thoonk object name must be a non-empty string")
        fields: dict[str, Any] = {"type": type, "schema": SCHEMA_VERSION}
        fields.update({k: v for k, v in (config or {}).items() if k != "type"})
        args: list[Any] = [name, self.instance, self.keys.ch_newfeed, self.keys.ch_conffeed]
        for key, value in fields.items():
            args += [key, str(value)]
        if self.connection.is_cluster:
            return self._cluster_create(name, args)
        created = self.scripts["create"](self.client, [self.keys.feeds, self.keys.feed(name).config], args)
        return bool(created)

    # Redis Cluster: the global `feeds` SET and `feed.config:<f>` live in different slots and a
    # script may only touch one slot, so the registry is updated in its own idempotent step:
    # create = config first, then SADD feeds + newfeed/conffeed; delete = the reverse. The
    # config (its `type` field) is the record that an object exists; `feeds` is the index. A
    # crash between the steps leaves a config without registration, which the next open (or
    # create, or delete) completes. See docs/topologies.md.
    def _cluster_create(self, name: str, args: list[Any]) -> bool:
        created = self.scripts["config_create"](self.client, [self.keys.feed(name).config], args[4:])
        self._register(name)
        return bool(created)

    def _register(self, name: str) -> None:
        self.scripts["registry_add"](self.client, [self.keys.feeds],
                                     [name, self.instance, self.keys.ch_newfeed, self.keys.ch_conffeed])

    def exists(self, name: str) -> bool:
        """True if an object with that name is registered."""
        return bool(self.client.sismember(self.keys.feeds, name))

    def names(self) -> list[str]:
        """Names of every registered object."""
        return sorted(_s(n) for n in self.client.smembers(self.keys.feeds))

    def get_type(self, name: str) -> str | None:
        """The object's type, or None if it does not exist."""
        value = self.client.hget(self.keys.feed(name).config, "type")
        return _s(value) if value is not None else None

    def get_config(self, name: str) -> dict[str, str]:
        """The object's config fields as strings; ``FeedDoesNotExist`` if it does not exist."""
        if not self.exists(name):
            raise FeedDoesNotExist(f"no Thoonk object named {name!r}")
        raw = self.client.hgetall(self.keys.feed(name).config)
        return {_s(k): _s(v) for k, v in raw.items()}

    def set_config(self, name: str, **fields: Any) -> None:
        """Change config fields (``None`` deletes one); publishes ``conffeed``."""
        args: list[Any] = [name, self.instance, self.keys.ch_conffeed]
        for key, value in fields.items():
            args += [key, "" if value is None else str(value)]
        if self.connection.is_cluster:  # one slot: existence = the config has a type
            ok = self.scripts["config_set"](self.client, [self.keys.feed(name).config], args)
        else:
            ok = self.scripts["set_config"](self.client, [self.keys.feeds, self.keys.feed(name).config], args)
        if not ok:
            raise FeedDoesNotExist(f"no Thoonk object named {name!r}")

    def delete(self, name: str) -> None:
        """Delete an object and all its keys; publishes ``delfeed``."""
        type_ = self.get_type(name)
        keys = (self.keys.job_object_keys(name) if type_ == "job"
                else self.keys.feed_object_keys(name))
        if self.connection.is_cluster:  # unregister first, then DEL every key (one slot)
            removed = self.scripts["registry_remove"](self.client, [self.keys.feeds],
                                                      [name, self.instance, self.keys.ch_delfeed])
            ok = self.client.delete(*keys) > 0 or bool(removed)
        else:
            ok = self.scripts["delete"](self.client, [self.keys.feeds, *keys],
                                        [name, self.instance, self.keys.ch_delfeed])
        if not ok:
            raise FeedDoesNotExist(f"no Thoonk object named {name!r}")

    def _open(self, name: str, type: str, config: dict[str, Any] | None = None) -> None:
        with broker_errors(f"open {name!r}"):  # a broker that is down: BrokerUnavailable
            self._open_or_create(name, type, config)

    def _open_or_create(self, name: str, type: str, config: dict[str, Any] | None) -> None:
        actual = self.get_type(name)
        if actual is None:
            self._create(name, type, config)
            actual = self.get_type(name)
            if actual is None:
                # registered by a client that crashed before writing its config: repair it
                self.client.hsetnx(self.keys.feed(name).config, "type", type)
                self.client.hsetnx(self.keys.feed(name).config, "schema", SCHEMA_VERSION)
                actual = self.get_type(name) or type
        elif self.connection.is_cluster:
            self._register(name)  # idempotent: completes a create that crashed between its steps
        if actual != type:
            raise WrongFeedType(f"Thoonk object {name!r} is a {actual}, not a {type}")

    # object factories -----------------------------------------------------------------------
    def feed(self, name: str, config: dict[str, Any] | None = None) -> Feed:
        """Open (or create) a feed."""
        from taskpipe.thoonk.feed import Feed

        self._open(name, "feed", config)
        return Feed(self, name)

    def sorted_feed(self, name: str, config: dict[str, Any] | None = None) -> SortedFeed:
        """Open (or create) a sorted feed."""
        from taskpipe.thoonk.sorted_feed import SortedFeed

        self._open(name, "sorted_feed", config)
        return SortedFeed(self, name)

    def queue(self, name: str, config: dict[str, Any] | None = None) -> Queue:
        """Open (or create) a queue."""
        from taskpipe.thoonk.queue import Queue

        self._open(name, "queue", config)
        return Queue(self, name)

    def job(self, name: str, config: dict[str, Any] | None = None) -> JobChannel:
        """Open (or create) a job channel."""
        from taskpipe.thoonk.job import JobChannel

        self._open(name, "job", config)
        return JobChannel(self, name)

    def listener(self) -> Listener:
        """A new event listener (call ``start()``; see ``taskpipe.thoonk.listener``)."""
        from taskpipe.thoonk.listener import Listener

        return Listener(self)

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()
