"""The ``Thoonk`` object: creates, configures, deletes and opens Thoonk objects on one Redis."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskpipe.broker_retry import maps_broker_errors
from taskpipe.connection import Connection
from taskpipe.errors import ConfigError, FeedDoesNotExist, FeedExists, WrongFeedType
from taskpipe.thoonk.keys import SCHEMA_VERSION, Keyspace
from taskpipe.thoonk.script_keys import contract
from taskpipe.thoonk.scripts import ScriptRegistry, broker_errors

if TYPE_CHECKING:
    from taskpipe.thoonk.feed import Feed
    from taskpipe.thoonk.job import JobChannel
    from taskpipe.thoonk.job_api import FinishCallbacks, Job
    from taskpipe.thoonk.listener import Listener
    from taskpipe.thoonk.queue import Queue
    from taskpipe.thoonk.sorted_feed import SortedFeed

__all__ = ["Thoonk", "OBJECT_TYPES", "NOTICES"]

OBJECT_TYPES = ("feed", "sorted_feed", "queue", "job")

#: thoonk.py handler names -> (listener event, how the listener's ``(feed, id, payload)`` becomes
#: the handler's arguments, as the thoonk.py document lists them)
NOTICES: dict[str, tuple[str, Callable[[str, str, bytes | None], tuple[Any, ...]]]] = {
    "create_notice": ("create", lambda f, i, p: (f,)),
    "delete_notice": ("delete", lambda f, i, p: (f,)),
    "config_notice": ("config", lambda f, i, p: (f,)),
    "publish_notice": ("publish", lambda f, i, p: (f, p, i)),
    "edit_notice": ("edit", lambda f, i, p: (f, p, i)),
    "retract_notice": ("retract", lambda f, i, p: (f, i)),
    "position_notice": (
        "position",
        lambda f, i, p: (f, i, p.decode("utf-8", "replace") if p is not None else None),
    ),
    "finish_notice": ("finish", lambda f, i, p: (f, i, p)),
}


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _config_dict(config: dict[str, Any] | str | bytes | None) -> dict[str, Any]:
    """A config given as a dict or as a JSON object string (thoonk.py's ``json_config``)."""
    if config is None:
        return {}
    if isinstance(config, (str, bytes)):
        try:
            config = json.loads(config)
        except ValueError as exc:
            raise ConfigError(f"a Thoonk config string must be a JSON object: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(
            f"a Thoonk config must be a dict or a JSON object, got {type(config).__name__}"
        )
    return config


@maps_broker_errors  # no redis-py exception type leaves a public method
class Thoonk:
    """Entry point of the Thoonk layer.

    As thoonk.py: ``Thoonk(host='localhost', port=6379, db=0, listen=False)``; ``listen=True``
    starts the listener thread so handlers (``register_handler``) fire. Also
    ``Thoonk("redis://127.0.0.1:6379/0")``, ``Thoonk("memory://")`` or ``Thoonk(redis_client)``.
    ``feed(name)``, ``sorted_feed(name)``, ``queue(name)`` and ``job(name)`` open an object,
    creating it when it does not exist (as thoonk.py does), and raise ``WrongFeedType`` if the name
    belongs to an object of another type.
    """

    def __init__(
        self,
        host: Any = None,
        port: int | None = None,
        db: int | None = None,
        listen: bool = False,
        *,
        prefix: str = "",
        connection: Connection | None = None,
    ) -> None:
        if connection is not None:
            self.connection = connection
        elif host is None and port is None and db is None:
            self.connection = Connection(None)
        elif isinstance(host, str) and "://" in host:
            if port is not None or db is not None:
                raise ConfigError("give either a URL or host/port/db, not both")
            self.connection = Connection(host)
        elif host is None or isinstance(host, str):
            name = host or "localhost"
            name = f"[{name}]" if ":" in name and not name.startswith("[") else name
            self.connection = Connection(f"redis://{name}:{int(port or 6379)}/{int(db or 0)}")
        else:
            self.connection = Connection(client=host)
        self.client: Any = self.connection.client
        self.keys = Keyspace(prefix)
        self.scripts = ScriptRegistry(self.connection.lane)
        self.instance = uuid.uuid4().hex
        self._listener: Listener | None = None
        self._listener_lock = threading.Lock()
        self._handlers: dict[tuple[str, Any], Callable[..., Any]] = {}
        self._finish_callbacks: FinishCallbacks | None = None  # Job.publish(on_finish=)
        if listen:
            try:
                self.start_listener()  # a broker that is down raises at once, as a call does
            except BaseException:
                if connection is None:  # ours: nobody else can close it
                    self.connection.close()
                raise

    # registry -------------------------------------------------------------------------------
    def create(self, name: str, type: str = "feed", config: dict[str, Any] | None = None) -> None:
        """Create an object; raise ``FeedExists`` if the name is taken."""
        if not self._create(name, type, config):
            raise FeedExists(f"a Thoonk object named {name!r} already exists")

    def _create(self, name: str, type: str, config: dict[str, Any] | None) -> bool:
        if type not in OBJECT_TYPES:
            raise WrongFeedType(
                f"unknown Thoonk object type {type!r}; expected one of {OBJECT_TYPES}"
            )
        if not isinstance(name, str) or not name:
            raise ValueError("a Thoonk object name must be a non-empty string")
        fields: dict[str, Any] = {"type": type, "schema": SCHEMA_VERSION}
        fields.update({k: v for k, v in (config or {}).items() if k != "type"})
        args: list[Any] = [name, self.instance, self.keys.ch_newfeed, self.keys.ch_conffeed]
        for key, value in fields.items():
            args += [key, str(value)]
        if self.connection.is_cluster:
            return self._cluster_create(name, args)
        created = self.scripts["create"](
            self.client, contract("create").build(self.keys.feed(name), feeds=self.keys.feeds), args
        )
        return bool(created)

    # Redis Cluster: the global `feeds` SET and `feed.config:<f>` live in different slots and a
    # script may only touch one slot, so the registry is updated in its own idempotent step:
    # create = config first, then SADD feeds + newfeed/conffeed; delete = the reverse. The
    # config (its `type` field) is the record that an object exists; `feeds` is the index. A
    # crash between the steps leaves a config without registration, which the next open (or
    # create, or delete) completes. See docs/topologies.md.
    def _cluster_create(self, name: str, args: list[Any]) -> bool:
        created = self.scripts["config_create"](
            self.client, contract("config_create").build(self.keys.feed(name)), args[4:]
        )
        self._register(name)
        return bool(created)

    def _register(self, name: str) -> None:
        self.scripts["registry_add"](
            self.client,
            contract("registry_add").build(self.keys),
            [name, self.instance, self.keys.ch_newfeed, self.keys.ch_conffeed],
        )

    def exists(self, name: str) -> bool:
        """True if an object with that name is registered."""
        return bool(self.client.sismember(self.keys.feeds, name))

    def server_ms(self) -> int:
        """The Redis server's clock in ms (``TIME``): the one clock every stored timestamp,
        deadline and cron decision is measured in (never a local clock)."""
        with broker_errors("server time"):
            seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def names(self) -> list[str]:
        """Names of every registered object."""
        return sorted(_s(n) for n in self.client.smembers(self.keys.feeds))

    def scan_names(self, type: str | None = None, count: int = 500) -> list[str]:
        """Names of every registered object (of ``type`` only, if given), sorted; read with
        ``SSCAN`` in steps of about ``count`` (never the whole set in one reply)."""
        names: set[str] = set()
        cursor = 0
        while True:
            cursor, batch = self.client.sscan(self.keys.feeds, cursor, count=count)
            found = [_s(n) for n in batch]
            if found and type is not None:
                pipe = self.client.pipeline(transaction=False)
                for name in found:
                    pipe.hget(self.keys.feed(name).config, "type")
                found = [
                    n for n, t in zip(found, pipe.execute()) if t is not None and _s(t) == type
                ]
            names.update(found)
            if int(cursor) == 0:
                return sorted(names)

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

    def set_config(
        self, name: str, config: dict[str, Any] | str | None = None, **fields: Any
    ) -> None:
        """Change config fields (``None`` deletes one); publishes ``conffeed``.

        As thoonk.py: ``set_config(name, {"max_length": 50})`` or with the config as a JSON
        string; or as keywords: ``set_config(name, max_length=50)``.
        """
        fields = {**_config_dict(config), **fields}
        fields.pop("type", None)  # an object's type is fixed at creation
        args: list[Any] = [name, self.instance, self.keys.ch_conffeed]
        for key, value in fields.items():
            args += [key, "" if value is None else str(value)]
        fk = self.keys.feed(name)
        if self.connection.is_cluster:  # one slot: existence = the config has a type
            ok = self.scripts["config_update_cluster"](
                self.client, contract("config_update_cluster").build(fk), args
            )
        else:
            ok = self.scripts["config_update"](
                self.client, contract("config_update").build(fk, feeds=self.keys.feeds), args
            )
        if not ok:
            raise FeedDoesNotExist(f"no Thoonk object named {name!r}")

    def delete(self, name: str) -> None:
        """Delete an object and all its keys; publishes ``delfeed``."""
        type_ = self.get_type(name)
        keys = (
            self.keys.job_object_keys(name) if type_ == "job" else self.keys.feed_object_keys(name)
        )
        if type_ == "job":  # the per-task indexes of job records (no TTL): named by label_stats
            jk = self.keys.job(name)
            labels = {
                (f.decode() if isinstance(f, bytes) else str(f)).partition("\0")[0]
                for f, _ in self.client.hscan_iter(jk.label_stats, count=500)
            }
            keys += [jk.label_index(label) for label in sorted(labels)]
        if self.connection.is_cluster:  # unregister first, then DEL every key (one slot)
            removed = self.scripts["registry_remove"](
                self.client,
                contract("registry_remove").build(self.keys),
                [name, self.instance, self.keys.ch_delfeed],
            )
            ok = self.client.delete(*keys) > 0 or bool(removed)
        else:
            ok = self.scripts["delete"](
                self.client,
                contract("delete").build(self.keys, *keys),
                [name, self.instance, self.keys.ch_delfeed],
            )
        if not ok:
            raise FeedDoesNotExist(f"no Thoonk object named {name!r}")

    # the thoonk.py names -------------------------------------------------------------------
    def create_feed(self, name: str, config: dict[str, Any] | str | None = None) -> None:
        """Create an object (a feed unless ``config`` has another ``type``); ``FeedExists`` if
        the name is taken. ``config`` is a dict or a JSON string."""
        fields = _config_dict(config)
        with broker_errors("create_feed"):
            self.create(name, str(fields.get("type") or "feed"), fields)

    def delete_feed(self, name: str) -> None:
        """Delete an object (``delete``)."""
        with broker_errors("delete_feed"):
            self.delete(name)

    def feed_exists(self, name: str) -> bool:
        """True if an object with that name exists (``exists``)."""
        with broker_errors("feed_exists"):
            return self.exists(name)

    def get_feed_names(self) -> set[str]:
        """The names of every object, as a set (thoonk.py returns the ``feeds`` SET)."""
        with broker_errors("get_feed_names"):
            return set(self.names())

    # handlers (thoonk.py) ----------------------------------------------------------------------
    def register_handler(self, name: str, handler: Callable[..., Any]) -> None:
        """Call ``handler`` for a notice, with the arguments the thoonk.py document lists:
        ``create_notice(feed)``, ``delete_notice(feed)``, ``publish_notice(feed, item, id)``,
        ``retract_notice(feed, id)``; and ``edit_notice(feed, item, id)``,
        ``position_notice(feed, id, relpos)``, ``finish_notice(feed, id, result)``,
        ``config_notice(feed)``. Handlers fire while the listener runs (``listen=True`` or
        ``start_listener()``), in its thread; items and results are bytes."""
        if name not in NOTICES:
            raise ValueError(f"unknown Thoonk notice {name!r}; expected one of {sorted(NOTICES)}")
        if not callable(handler):
            raise TypeError("handler must be callable")
        event, shape = NOTICES[name]

        def call(feed: str, id: str, payload: bytes | None) -> None:
            handler(*shape(feed, id, payload))

        with self._listener_lock:
            if (name, handler) in self._handlers:
                return
            self._handlers[(name, handler)] = call
        self.listener_object().on(event, call)

    def remove_handler(self, name: str, handler: Callable[..., Any]) -> None:
        """Stop calling ``handler`` for that notice (no error if it was not registered)."""
        with self._listener_lock:
            call = self._handlers.pop((name, handler), None)
        if call is not None and name in NOTICES:
            self.listener_object().off(NOTICES[name][0], call)

    def listener_object(self) -> Listener:
        """This object's own listener (made on first use, started by ``start_listener``), which
        runs the handlers and the ``on_finish`` callbacks of ``Job.publish``."""
        with self._listener_lock:
            if self._listener is None:
                from taskpipe.thoonk.listener import Listener

                self._listener = Listener(self)
            return self._listener

    def start_listener(self, timeout: float = 10.0) -> None:
        """Start listening (what ``listen=True`` does); returns once subscribed."""
        self.listener_object().start(timeout)

    def stop_listener(self) -> None:
        """Stop listening (handlers stay registered for the next ``start_listener``)."""
        if self._listener is not None:
            self._listener.stop()

    def _open(self, name: str, type: str, config: dict[str, Any] | str | None = None) -> None:
        fields = _config_dict(config)
        with broker_errors(f"open {name!r}"):  # a broker that is down: BrokerUnavailable
            self._open_or_create(name, type, fields)
            if {k for k in fields if k != "type"}:
                self.set_config(name, fields)  # as thoonk.py: a config given reconfigures it

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
    def feed(self, name: str, config: dict[str, Any] | str | None = None) -> Feed:
        """Open (or create) a feed."""
        from taskpipe.thoonk.feed import Feed

        self._open(name, "feed", config)
        return Feed(self, name)

    def sorted_feed(self, name: str, config: dict[str, Any] | str | None = None) -> SortedFeed:
        """Open (or create) a sorted feed."""
        from taskpipe.thoonk.sorted_feed import SortedFeed

        self._open(name, "sorted_feed", config)
        return SortedFeed(self, name)

    def queue(self, name: str, config: dict[str, Any] | str | None = None) -> Queue:
        """Open (or create) a queue."""
        from taskpipe.thoonk.queue import Queue

        self._open(name, "queue", config)
        return Queue(self, name)

    def job(self, name: str, config: dict[str, Any] | str | None = None) -> Job:
        """Open (or create) a job channel with the thoonk.py job API (``taskpipe.thoonk.job_api``)."""
        from taskpipe.thoonk.job_api import Job

        self._open(name, "job", config)
        return Job(self, name)

    def job_channel(self, name: str, config: dict[str, Any] | str | None = None) -> JobChannel:
        """Open (or create) a job channel with taskpipe's own job API (what the app and the
        worker use: ``get`` returns ``None`` on timeout, ``get_result`` the result bytes)."""
        from taskpipe.thoonk.job import JobChannel

        self._open(name, "job", config)
        return JobChannel(self, name)

    def listener(self) -> Listener:
        """A new event listener (call ``start()``; see ``taskpipe.thoonk.listener``)."""
        from taskpipe.thoonk.listener import Listener

        return Listener(self)

    def close(self) -> None:
        """Stop the listener and close the connection."""
        self.stop_listener()
        self.connection.close()
