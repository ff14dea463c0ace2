"""Connections from a broker URL.

Supported schemes:

- ``redis://[user:password@]host[:port][/db]`` and ``rediss://`` (TLS)
- ``unix:///path/to/redis.sock[?db=N]`` (``password=`` in the query for AUTH)
- ``redis+sentinel://[:password@]host:port[,host:port...]/master-name[/db]``: the master that
  the sentinels name (followed across failovers)
- ``redis+cluster://[:password@]host:port[,host:port...]``: Redis Cluster (channel names get a
  hash tag so every key of a channel lives in one slot)
- ``memory://[name]``: an embedded in-process Redis (fakeredis with Lua). It runs the very
  same Lua scripts; every client made by one ``Connection`` shares one in-memory server.

A ``Connection`` is owned by its app (or ``Thoonk`` object); nothing here is global.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis

from taskpipe.errors import BrokerURLError

__all__ = ["Connection", "parse_url", "DEFAULT_URL"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
SUPPORTED_SCHEMES = ("redis", "rediss", "unix", "memory", "redis+sentinel", "redis+cluster")


def parse_url(url: str) -> dict[str, Any]:
    """Check a broker URL and return its parts; raise ``BrokerURLError`` naming the problem."""
    if not isinstance(url, str) or not url.strip():
        raise BrokerURLError(f"broker URL must be a non-empty string, got {url!r}")
    if "://" not in url:
        raise BrokerURLError(f"broker URL {url!r} has no scheme; expected one of "
                             + ", ".join(s + "://" for s in SUPPORTED_SCHEMES))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise BrokerURLError(f"unsupported broker URL scheme {scheme!r} in {url!r}; expected one of "
                             + ", ".join(s + "://" for s in SUPPORTED_SCHEMES))
    info: dict[str, Any] = {"scheme": scheme, "url": url}
    if scheme == "memory":
        info["name"] = (parts.netloc + parts.path).strip("/") or "default"
        return info
    query = parse_qs(parts.query)
    if scheme in ("redis+sentinel", "redis+cluster"):
        hosts = []
        for hostport in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = hostport.strip().rpartition(":")
            if not host or not port.isdigit():
                raise BrokerURLError(f"bad host:port {hostport!r} in broker URL {url!r}")
            hosts.append((host.strip("[]"), int(port)))
        info["hosts"] = hosts
        info["password"] = parts.password or None
        info["username"] = parts.username or None
        path = [p for p in parts.path.split("/") if p]
        if scheme == "redis+sentinel":
            if not path:
                raise BrokerURLError(f"sentinel broker URL {url!r} needs a master name: "
                                     "redis+sentinel://host:port/mymaster[/db]")
            info["master"] = path[0]
            db = path[1] if len(path) > 1 else "0"
        else:
            db = "0"
            if path and path != ["0"]:
                raise BrokerURLError(f"Redis Cluster has only database 0, got {url!r}")
        if not str(db).isdigit():
            raise BrokerURLError(f"database in broker URL {url!r} must be a number, got {db!r}")
        info["db"] = int(db)
        return info
    if scheme == "unix":
        if not parts.path:
            raise BrokerURLError(f"unix broker URL {url!r} needs a socket path")
        db = query.get("db", ["0"])[0]
    else:
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise BrokerURLError(f"bad port in broker URL {url!r}: {exc}") from None
        if not host:
            raise BrokerURLError(f"broker URL {url!r} has no host")
        info["host"], info["port"] = host, port or 6379
        db = parts.path.strip("/") or query.get("db", ["0"])[0]
    if not str(db).isdigit():
        raise BrokerURLError(f"database in broker URL {url!r} must be a number, got {db!r}")
    info["db"] = int(db)
    return info


class Connection:
    """Makes Redis clients for one broker URL.

    ``client`` is the shared, thread-safe client for ordinary commands. ``new_client()`` makes
    a separate client for blocking calls and pub/sub so they never hold up other work.
    """

    def __init__(self, url: str | None = None, *, client: Any = None,
                 socket_timeout: float | None = None) -> None:
        self._lock = threading.Lock()
        self._fake_server: Any = None
        self._socket_timeout = socket_timeout
        if client is not None:
            self.url = url or "client://"
            self.scheme = "client"
            self.client: Any = client
            return
        self.url = url or DEFAULT_URL
        self.info = parse_url(self.url)
        self.scheme = self.info["scheme"]
        self.client = self.new_client()

    @property
    def is_cluster(self) -> bool:
        """True for ``redis+cluster://`` (keys of one channel must share a hash tag)."""
        return self.scheme == "redis+cluster" or (
            self.scheme == "client" and type(self.client).__name__ == "RedisCluster")

    @property
    def is_memory(self) -> bool:
        """True for the embedded ``memory://`` broker."""
        return self.scheme == "memory" or (
            self.scheme == "client" and type(self.client).__module__.startswith("fakeredis"))

    def new_client(self) -> Any:
        """A new client on the same broker (its own connection pool)."""
        if self.scheme == "client":
            if self.is_memory:
                return self.client  # fakeredis clients share state; no sockets to separate
            pool = self.client.connection_pool
            return redis.Redis(connection_pool=pool.__class__(
                connection_class=pool.connection_class, **pool.connection_kwargs))
        if self.scheme == "memory":
            import fakeredis

            with self._lock:
                if self._fake_server is None:
                    self._fake_server = fakeredis.FakeServer(version=(7,))
            return fakeredis.FakeRedis(server=self._fake_server)
        if self.scheme == "redis+sentinel":
            from redis.sentinel import Sentinel

            auth = {"password": self.info["password"], "username": self.info["username"]}
            sentinel = Sentinel(self.info["hosts"], socket_timeout=self._socket_timeout or 5,
                                sentinel_kwargs={"socket_timeout": 5})
            return sentinel.master_for(self.info["master"], db=self.info["db"],
                                       socket_timeout=self._socket_timeout,
                                       socket_connect_timeout=5, **auth)
        if self.scheme == "redis+cluster":
            from redis.cluster import ClusterNode, RedisCluster

            return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.info["hosts"]],
                                password=self.info["password"], username=self.info["username"],
                                socket_timeout=self._socket_timeout, socket_connect_timeout=5)
        return redis.Redis.from_url(self.url, socket_timeout=self._socket_timeout,
                                    socket_connect_timeout=5, health_check_interval=30)

    def close(self) -> None:
        """Close the shared client's connections."""
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
