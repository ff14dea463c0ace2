"""Connections from a broker URL.

Supported schemes:

- ``redis://[user:password@]host[:port][/db]`` and ``rediss://`` (TLS)
- ``unix:///path/to/redis.sock[?db=N]`` (``password=`` in the query for AUTH)
- ``redis+sentinel://[:password@]host:port[,host:port...]/master-name[/db]``: the master that
  the sentinels name (followed across failovers); ``?sentinel_password=...`` (and
  ``sentinel_username=``) when the sentinels themselves require AUTH
- ``redis+cluster://[:password@]host:port[,host:port...]``: Redis Cluster (channel names get a
  hash tag so every key of a channel lives in one slot)
- ``memory://[name]``: an embedded in-process Redis (fakeredis with Lua). It runs the very
  same Lua scripts; every client made by one ``Connection`` shares one in-memory server.

A ``Connection`` is owned by its app (or ``Thoonk`` object); nothing here is global. The URL
is checked by ``taskpipe.broker_url.parse_url`` (re-exported here with ``redact_url``).
"""

from __future__ import annotations

import os
import ssl
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot as _crc_key_slot
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from taskpipe.broker_url import DEFAULT_URL, parse_url, redact_url
from taskpipe.errors import BrokerUnavailable, BrokerURLError

if TYPE_CHECKING:
    from taskpipe.list_waiter import ListWaiter

__all__ = [
    "Connection",
    "CommandLane",
    "parse_url",
    "key_slot",
    "redact_url",
    "DEFAULT_URL",
]


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of a key (CRC16 of its hash tag, or of the whole key)."""
    return int(_crc_key_slot(key.encode("utf-8") if isinstance(key, str) else key))


class TLSConnection(redis.SSLConnection):
    """redis-py's TLS connection, with the handshake bounded by the connect timeout.

    redis-py runs the handshake under the socket (command) timeout, 30 s by default, and
    retries it: a ``rediss://`` URL pointing at a plain Redis port (which waits for a newline
    that never comes) took a minute to fail. Here the handshake gets ``socket_connect_timeout``,
    and a failed handshake raises ``BrokerUnavailable`` at once, saying so: it is a setting to
    fix, not an outage to wait out, so nothing retries it.
    """

    def _wrap_socket_with_ssl(self, sock: Any) -> Any:
        limit = self.socket_connect_timeout or self.socket_timeout
        sock.settimeout(limit)
        try:
            wrapped = super()._wrap_socket_with_ssl(sock)  # type: ignore[no-untyped-call]
        except (TimeoutError, ssl.SSLError) as exc:
            sock.close()
            why = (
                f"no TLS answer within {limit} s"
                if isinstance(exc, TimeoutError)
                else f"{exc.reason or exc}"
            )
            raise BrokerUnavailable(
                f"TLS handshake with {self.host}:{self.port} failed ({why}): is it a TLS port? "
                "rediss:// needs Redis's tls-port; a plain port takes redis://"
            ) from None
        wrapped.settimeout(self.socket_timeout)
        return wrapped


def _address(client: Any) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


class _Sentinel(Sentinel):
    """redis-py's ``Sentinel`` with a one-line error when no master is found: the service and
    what each sentinel tried said (redis-py's names the service alone, or appends the repr of
    each unreachable sentinel's client). Still a ``MasterNotFoundError`` (a ``ConnectionError``:
    a failover in progress has no master for a moment, so callers retry it)."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        notes = []
        for number, sentinel in enumerate(self.sentinels):
            try:
                masters: dict[str, Any] = sentinel.sentinel_masters()  # type: ignore[assignment]
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                notes.append(f"{_address(sentinel)} unreachable ({exc})")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                # as redis-py does: the sentinel that answered is asked first next time
                self.sentinels[0], self.sentinels[number] = sentinel, self.sentinels[0]
                return state["ip"], state["port"]
            notes.append(
                f"{_address(sentinel)} " + ("reports it down" if state else "does not monitor it")
            )
        raise MasterNotFoundError(
            f"Redis Sentinel has no master for service {service_name!r}: {'; '.join(notes)}"
        )


def _on_connect(conn: Any) -> None:
    """redis-py's handshake (AUTH, HELLO, SELECT, CLIENT SETINFO), with a database number the
    server does not have (``redis://host/99`` beyond its ``databases``) turned into a
    ``BrokerURLError`` on the first command instead of a raw ``ResponseError``."""
    try:
        conn.on_connect()
    except redis.exceptions.ResponseError as exc:
        if "DB index is out of range" not in str(exc):
            raise
        conn.disconnect()
        raise BrokerURLError(
            f"database {conn.db} in the broker URL does not exist on the Redis server at "
            f"{conn.host if hasattr(conn, 'host') else 'its socket'} (it has fewer 'databases'; "
            "the default is 16: 0-15)"
        ) from None


_driver_info: dict[str, Any] | None = None


def _shared_driver_info() -> dict[str, Any]:
    """``driver_info=`` for the clients made here: one redis-py ``DriverInfo`` (CLIENT SETINFO's
    lib-name and lib-ver) per process. redis-py 7.1+ makes one per connection object of a URL's
    pool, reading its version with ``importlib.metadata`` (~1 ms of CPU) each time."""
    global _driver_info
    if _driver_info is None:
        try:
            from redis.driver_info import DriverInfo
        except ImportError:  # redis-py < 7.1 reads its version once, at import
            _driver_info = {}
        else:
            _driver_info = {"driver_info": DriverInfo()}
    return _driver_info


def close_quietly(closable: Any) -> None:
    """Close a client, pub/sub or waiter if there is one; closing is best effort."""
    if closable is None:
        return
    try:
        closable.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass


class Connection:
    """Makes Redis clients for one broker URL.

    ``client`` is the shared, thread-safe client for ordinary commands. ``new_client()`` makes
    a separate client for blocking calls and pub/sub so they never hold up other work.
    ``socket_timeout`` (default 30 s) bounds every call, so a frozen Redis turns into a
    ``BrokerUnavailable`` instead of a hang; taskpipe's own blocking waits are at most ~1 s.
    """

    def __init__(
        self, url: str | None = None, *, client: Any = None, socket_timeout: float | None = 30.0
    ) -> None:
        self._lock = threading.Lock()
        self._fake_server: Any = None
        self._socket_timeout = socket_timeout
        self._closed = threading.Event()
        self._sentinel_pools: weakref.WeakSet[Any] = weakref.WeakSet()  # see _follow_switches
        self._switch_follower: threading.Thread | None = None
        #: the lean path for the hot script calls on ``client`` (one Redis only; see CommandLane)
        self.lane: CommandLane | None = None
        if client is not None:
            self.url = url or "client://"
            self.scheme = "client"
            self.client: Any = client
            return
        self.url = url or DEFAULT_URL
        self.info = parse_url(self.url)
        self.scheme = self.info["scheme"]
        self.client = self.new_client()
        if self.scheme in ("redis", "rediss", "unix"):
            self.lane = CommandLane(self.client)

    @property
    def is_cluster(self) -> bool:
        """True for ``redis+cluster://`` (keys of one channel must share a hash tag)."""
        return self.scheme == "redis+cluster" or (
            self.scheme == "client" and type(self.client).__name__ == "RedisCluster"
        )

    @property
    def is_memory(self) -> bool:
        """True for the embedded ``memory://`` broker."""
        return self.scheme == "memory" or (
            self.scheme == "client" and type(self.client).__module__.startswith("fakeredis")
        )

    def new_client(self) -> Any:
        """A new client on the same broker (its own connection pool)."""
        if self.scheme == "client":
            if self.is_memory:
                return self.client  # fakeredis clients share state; no sockets to separate
            pool = self.client.connection_pool
            return redis.Redis(
                connection_pool=pool.__class__(
                    connection_class=pool.connection_class, **pool.connection_kwargs
                )
            )
        if self.scheme == "memory":
            import fakeredis

            with self._lock:
                if self._fake_server is None:
                    self._fake_server = fakeredis.FakeServer(version=(7,))
            return fakeredis.FakeRedis(server=self._fake_server)
        if self.scheme == "redis+sentinel":
            auth = {"password": self.info["password"], "username": self.info["username"]}
            sentinel = _Sentinel(  # type: ignore[no-untyped-call]
                self.info["hosts"],
                socket_timeout=self._socket_timeout or 5,
                # one try per sentinel query: redis-py's default retries (3, backing off up
                # to seconds) would outlast the app's ``publish_retry``, which does the retrying
                sentinel_kwargs={
                    "socket_timeout": 5,
                    "retry": Retry(NoBackoff(), 0),
                    **self.info["sentinel_auth"],
                },
            )
            client = sentinel.master_for(  # type: ignore[no-untyped-call]
                self.info["master"],
                db=self.info["db"],
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=5,
                redis_connect_func=_on_connect,
                **auth,
                **_shared_driver_info(),
            )
            self._follow(client.connection_pool)
            return client
        if self.scheme == "redis+cluster":
            from redis.cluster import ClusterNode, RedisCluster

            return RedisCluster(
                startup_nodes=[
                    ClusterNode(h, p)  # type: ignore[no-untyped-call]
                    for h, p in self.info["hosts"]
                ],
                password=self.info["password"],
                username=self.info["username"],
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=5,
                **_shared_driver_info(),
            )
        tls = {"connection_class": TLSConnection} if self.scheme == "rediss" else {}
        return redis.Redis.from_url(
            self.url,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=5,
            health_check_interval=30,
            redis_connect_func=_on_connect,
            **tls,
            **_shared_driver_info(),
        )

    # Sentinel: follow a switch at once ------------------------------------------------------
    # redis-py's Sentinel pools ask the sentinels for the master only when they open a
    # connection. Pooled connections to the old master stay in use while it is alive: after a
    # SENTINEL FAILOVER (or a partition) the old master keeps taking writes until sentinel
    # demotes it (its next INFO check, ~10 s later), and everything written there in between
    # is discarded when it resyncs. So one daemon thread per Connection listens on the
    # sentinels' ``+switch-master`` channel and makes every pool it made ask again: idle
    # connections to the old master are dropped at once, busy ones when they are released.
    def _follow(self, pool: Any) -> None:
        with self._lock:
            self._sentinel_pools.add(pool)
            if self._switch_follower is None or not self._switch_follower.is_alive():
                self._switch_follower = threading.Thread(
                    target=self._follow_switches, name="taskpipe-sentinel-follow", daemon=True
                )
                self._switch_follower.start()

    def _refresh_masters(self) -> None:
        for pool in list(self._sentinel_pools):
            try:
                pool.get_master_address()  # disconnects idle connections when it changed
            except redis.exceptions.RedisError:
                pass  # no sentinel answers now: the pool asks again when it reconnects

    def _follow_switches(self) -> None:
        master = self.info["master"]
        while not self._closed.is_set():
            for host, port in self.info["hosts"]:
                pubsub: Any = None
                try:
                    pubsub = redis.Redis(
                        host=host,
                        port=port,
                        socket_timeout=5,  # type: ignore[no-untyped-call]
                        socket_connect_timeout=2,
                        **self.info["sentinel_auth"],
                    ).pubsub()
                    pubsub.subscribe("+switch-master")
                    self._refresh_masters()  # a switch missed while we were not subscribed
                    while not self._closed.is_set():
                        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        # payload: "<master name> <old ip> <old port> <new ip> <new port>"
                        if msg and bytes(msg["data"]).split(b" ", 1)[0] == master.encode():
                            self._refresh_masters()
                except redis.exceptions.RedisError:
                    pass  # try the next sentinel
                finally:
                    close_quietly(pubsub)
                if self._closed.is_set():
                    return
            self._closed.wait(1.0)

    def list_waiter(
        self,
        keys: Sequence[str],
        *,
        client: Any = None,
        max_block: float = 1.0,
        interruptible: bool = False,
    ) -> ListWaiter:
        """A ``ListWaiter`` over ``keys`` (blocks on ``client``, or on a client of its own)."""
        from taskpipe.list_waiter import ListWaiter

        return ListWaiter(
            self, keys, client=client, max_block=max_block, interruptible=interruptible
        )

    def close(self) -> None:
        """Close the shared client's connections (and stop following Sentinel switches)."""
        self._closed.set()
        close_quietly(self.lane)
        close_quietly(self.client)


class CommandLane:
    """A lean path for the hot calls (publish, claim, finish scripts) on one plain Redis.

    redis-py's ``execute_command`` takes a connection from its pool and gives it back around
    every call, under a lock, with observability hooks: about 50 us per call on a 2-vCPU VM,
    a quarter of a loopback round trip. A lane keeps its own stack of idle connections (made
    by the client's pool, with the same settings: timeouts, TLS, auth, health checks) and runs
    a command on one of them with the same checks and retry policy as the pool (a closed or
    out-of-step idle socket is replaced before use), so a call costs little more than its
    round trip. Thread-safe: a connection is used by one thread at a time
    (``list.pop``/``append`` are atomic). After ``fork`` the child drops the parent's
    connections and makes its own. Replies are the raw replies ``client.evalsha`` gives (the
    client must not decode responses; ``Connection`` never asks it to).

    Only for ``redis://``, ``rediss://`` and ``unix://``: Sentinel (its pool follows failovers),
    Cluster (routing) and ``memory://`` keep the ordinary client path.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._pool = client.connection_pool
        self._idle: list[Any] = []
        self._pid = os.getpid()
        # hiredis packs a command in C, as redis-py's hiredis packer does after its own checks
        self._pack: Any = None
        if self._pool.connection_kwargs.get("encoding", "utf-8") == "utf-8":
            try:
                import hiredis

                self._pack = hiredis.pack_command
            except ImportError:  # pragma: no cover - hiredis is a dependency
                pass

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        """``EVALSHA`` on a lane connection (raises what ``client.evalsha`` raises)."""
        return self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    def script_load(self, source: str) -> Any:
        """``SCRIPT LOAD`` through the ordinary client."""
        return self.client.script_load(source)

    def execute(self, *args: Any) -> Any:
        """Send one command and read its reply."""
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
            self._idle, self._pid = [], os.getpid()
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._pool.make_connection()
        try:  # as the pool does on checkout: a closed or out-of-step socket is replaced first
            conn.connect()
            if conn.can_read():
                raise redis.exceptions.ConnectionError("connection has unread data")
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            conn.disconnect()
            try:
                conn.connect()
            except BaseException:
                self._idle.append(conn)
                raise

        packed: bytes | None = None
        if self._pack is not None:
            try:
                packed = self._pack(args)
            except TypeError:  # a type hiredis does not take: redis-py's packer decides
                packed = None

        def call() -> Any:
            if packed is None:
                conn.send_command(*args)
            else:
                conn.send_packed_command([packed])
            return conn.read_response()

        try:
            reply = conn.retry.call_with_retry(call, lambda _: conn.disconnect())
        except redis.exceptions.ResponseError:
            self._idle.append(conn)  # an error reply: the connection is in step
            raise
        except BaseException:
            conn.disconnect()  # mid-command: never reuse a connection out of step
            self._idle.append(conn)
            raise
        self._idle.append(conn)
        return reply

    def close(self) -> None:
        """Disconnect the idle connections (a later call reconnects)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                conn.disconnect()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
