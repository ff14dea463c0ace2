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
import time
import weakref
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot as _crc_key_slot
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from taskpipe.broker_url import DEFAULT_URL, parse_url, redact_url
from taskpipe.errors import BrokerUnavailable, BrokerURLError

__all__ = [
    "Connection",
    "CommandLane",
    "ListWaiter",
    "parse_url",
    "key_slot",
    "redact_url",
    "DEFAULT_URL",
]

WAITER_IDLE_EXIT = 5.0  # seconds a cluster wake-up thread lingers with nobody waiting


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
