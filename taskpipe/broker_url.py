"""Broker URLs: check one and return its parts (``parse_url``), and show one without its
secrets (``redact_url``).

The schemes and their forms are listed in ``taskpipe.connection``; ``Connection`` builds its
clients from what ``parse_url`` returns. Every error is a ``BrokerURLError`` naming the problem,
with the URL's secrets redacted.
"""

from __future__ import annotations

import inspect
import re
from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import redis

from taskpipe.errors import BrokerURLError

__all__ = ["parse_url", "redact_url", "DEFAULT_URL", "SUPPORTED_SCHEMES"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
SUPPORTED_SCHEMES = ("redis", "rediss", "unix", "memory", "redis+sentinel", "redis+cluster")


# a query option whose value is a secret: password=, sentinel_password=, any *password / *token
_SECRET_OPTION = re.compile(
    r"([?&;](?:[^=&;#]*password|[^=&;#]*token|[^=&;#]*secret)=)[^&;#]*", re.IGNORECASE
)


def redact_url(url: Any) -> str:
    """A broker URL fit to show: the password of its userinfo and the values of its
    ``password=`` / ``sentinel_password=`` (any ``*password``, ``*token``, ``*secret``) query
    options replaced by ``***``. Never raises, whatever the input (a malformed URL is redacted
    from ``://`` to its last ``@`` before the path). Used wherever taskpipe shows a URL:
    errors, ``repr(app)``, the CLI, the dashboard, logs."""
    text = url if isinstance(url, str) else str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    # userinfo: everything up to the last "@" before the query/fragment (a password may hold
    # "/", "@" or ":" unescaped, which would fool urlsplit)
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    at = head.rfind("@")
    if at >= 0:
        user, colon, _password = head[:at].partition(":")
        userinfo = f"{user}:***" if colon or not user else "***"
        if colon and not user:
            userinfo = ":***"
        rest = userinfo + rest[at:]
    rest = _SECRET_OPTION.sub(r"\1***", rest)
    return f"{scheme}{sep}{rest}"


def parse_url(url: str) -> dict[str, Any]:
    """Check a broker URL and return its parts; raise ``BrokerURLError`` naming the problem.
    Error messages show the URL with its secrets redacted (``redact_url``)."""
    try:
        return _parse_url(url)
    except BrokerURLError as exc:
        if isinstance(url, str) and url != redact_url(url):
            exc.args = tuple(_redact_text(a, url) if isinstance(a, str) else a for a in exc.args)
        raise


def _secrets_of(url: str) -> list[str]:
    """The secret strings in a URL (and the pieces of them a parser may have split off)."""
    rest = url.partition("://")[2] or url
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    found = []
    if "@" in head:
        found.append(head[: head.rfind("@")].partition(":")[2] or head[: head.rfind("@")])
    found += [m.group(0).partition("=")[2] for m in _SECRET_OPTION.finditer(rest)]
    pieces = [
        p for s in found for sep in (r"/", r"[/@:?#&]") for p in re.split(sep, s) if len(p) >= 3
    ]
    return sorted({s for s in found + pieces if s}, key=len, reverse=True)


def _redact_text(text: str, url: str) -> str:
    """``text`` with ``url`` (and any secret of it) redacted."""
    text = text.replace(url, redact_url(url))
    for secret in _secrets_of(url):
        text = text.replace(secret, "***")
    return text


def _parse_url(url: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url.strip():
        raise BrokerURLError(f"broker URL must be a non-empty string, got {url!r}")
    if "://" not in url:
        raise BrokerURLError(
            f"broker URL {url!r} has no scheme; expected one of "
            + ", ".join(s + "://" for s in SUPPORTED_SCHEMES)
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise BrokerURLError(
            f"unsupported broker URL scheme {scheme!r} in {url!r}; expected one of "
            + ", ".join(s + "://" for s in SUPPORTED_SCHEMES)
        )
    info: dict[str, Any] = {"scheme": scheme, "url": url}
    if scheme == "memory":
        info["name"] = (parts.netloc + parts.path).strip("/") or "default"
        return info
    query = parse_qs(parts.query)
    if scheme in ("redis+sentinel", "redis+cluster"):
        db = _parse_multi_host(url, parts, scheme, query, info)
    elif scheme == "unix":
        if not parts.path:
            raise BrokerURLError(f"unix broker URL {url!r} needs a socket path")
        db = query.get("db", ["0"])[0]
    else:
        try:
            hostname, port_number = parts.hostname, parts.port
        except ValueError as exc:
            raise BrokerURLError(f"bad port in broker URL {url!r}: {exc}") from None
        if not hostname:
            raise BrokerURLError(f"broker URL {url!r} has no host")
        info["host"], info["port"] = hostname, port_number or 6379
        db = parts.path.strip("/") or query.get("db", ["0"])[0]
    if not str(db).isdigit():
        raise BrokerURLError(f"database in broker URL {url!r} must be a number, got {db!r}")
    info["db"] = int(db)
    if parts.query and scheme in ("redis", "rediss", "unix"):
        _check_options(url)
    return info


def _check_options(url: str) -> None:
    """redis-py parses a URL's options lazily: a bad value raised its ``ValueError`` and an
    unknown name a ``TypeError`` at the first command. Refuse both here, naming the option."""
    try:
        kwargs = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise BrokerURLError(f"bad option in broker URL {url!r}: {exc}") from None
    known = set(redis.connection.URL_QUERY_ARGUMENT_PARSERS)
    for klass in kwargs.pop("connection_class", redis.Connection).__mro__:
        if "__init__" in vars(klass):
            known.update(inspect.signature(vars(klass)["__init__"]).parameters)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise BrokerURLError(
            f"unknown option(s) {', '.join(map(repr, unknown))} in broker URL "
            f"{url!r} (rediss:// takes the ssl_* options)"
        )


def _parse_multi_host(
    url: str, parts: SplitResult, scheme: str, query: dict[str, list[str]], info: dict[str, Any]
) -> str:
    """The hosts, credentials and options of a ``redis+sentinel://`` or ``redis+cluster://`` URL
    (into ``info``); returns the database as written."""
    hosts = []
    for hostport in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = hostport.strip().rpartition(":")
        if not host or not port.isdigit():
            raise BrokerURLError(f"bad host:port {hostport!r} in broker URL {url!r}")
        hosts.append((host.strip("[]"), int(port)))
    info["hosts"] = hosts
    info["password"] = unquote(parts.password) if parts.password else None
    info["username"] = unquote(parts.username) if parts.username else None
    path = [p for p in parts.path.split("/") if p]
    allowed = {"sentinel_password", "sentinel_username"} if scheme == "redis+sentinel" else set()
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise BrokerURLError(
            f"unknown option(s) {', '.join(unknown)} in broker URL {url!r}"
            + (f"; expected {', '.join(sorted(allowed))}" if allowed else "")
        )
    if scheme == "redis+cluster":
        if path and path != ["0"]:
            raise BrokerURLError(f"Redis Cluster has only database 0, got {url!r}")
        return "0"
    if not path:
        raise BrokerURLError(
            f"sentinel broker URL {url!r} needs a master name: "
            "redis+sentinel://host:port/mymaster[/db]"
        )
    info["master"] = path[0]
    # AUTH for the sentinels themselves (sentinel requirepass / ACL), apart from the master's
    info["sentinel_auth"] = {
        k.removeprefix("sentinel_"): v[-1] for k, v in query.items() if k in allowed
    }
    return path[1] if len(path) > 1 else "0"
