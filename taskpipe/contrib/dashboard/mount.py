"""The dashboard inside another web application: one framework-neutral request router, a WSGI
app (Flask, Django, any WSGI server) and an ASGI app (Starlette, FastAPI).

    from taskpipe.contrib.dashboard import Dashboard
    from taskpipe.contrib.dashboard.mount import asgi_app, wsgi_app

    fastapi_app.mount("/taskpipe", asgi_app(Dashboard(app, token="s3cret")))

Mounted, the dashboard answers the same pages and API as ``taskpipe dashboard`` (its pages use
relative URLs, so any prefix works; the prefix without its trailing slash redirects to it). The
loopback ``Host`` check of the standalone server does not apply: the host application decides
where it listens, and its own authentication (or the dashboard's ``token``/``basic``) guards
the pages. Action requests still need the ``X-Taskpipe: 1`` header.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from taskpipe.contrib.dashboard.server import _SECURITY_HEADERS, _STATIC, Dashboard
from taskpipe.errors import ConfigError

__all__ = ["Reply", "route", "wsgi_app", "asgi_app"]

_MAX_BODY = 1 << 20


@dataclass
class Reply:
    """A response: ``status``, ``body`` and ``headers`` (security headers included)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(
        cls, status: int, body: bytes, ctype: str, extra: Mapping[str, str] | None = None
    ) -> Reply:
        headers = {
            "Content-Type": ctype,
            "Cache-Control": "no-store",
            **_SECURITY_HEADERS,
            **(extra or {}),
        }
        return cls(status, body, headers)

    @classmethod
    def json(cls, status: int, data: Any, extra: Mapping[str, str] | None = None) -> Reply:
        body = json.dumps(data, default=str, separators=(",", ":")).encode()
        return cls.make(status, body, "application/json", extra)


def route(
    dashboard: Dashboard, method: str, path: str, headers: Any, query_string: str = ""
) -> Reply:
    """Answer one request for ``path`` (relative to the mount point, starting with ``/``);
    ``headers`` has a case-insensitive ``get``."""
    _start_sampler(dashboard)
    parts = [unquote(p) for p in path.split("/")[1:]] if path.startswith("/") else [""]
    query = dict(parse_qsl(query_string, keep_blank_values=True))
    method = method.upper()
    if method in ("GET", "HEAD") and len(parts) == 2 and parts[0] == "static":
        body = dashboard.static(parts[1])
        if body is None:
            return Reply.json(404, {"error": "no such file"})
        return Reply.make(200, body, _STATIC[parts[1]])
    if parts == ["healthz"]:
        return Reply.json(200, {"ok": True})
    if method in ("GET", "HEAD") and parts in ([""], ["index.html"]) and dashboard.basic is None:
        return Reply.make(200, dashboard.static("index.html") or b"", _STATIC["index.html"])
    if not dashboard.check_auth(headers, query):
        extra = (
            {"WWW-Authenticate": 'Basic realm="taskpipe", charset="UTF-8"'}
            if dashboard.basic is not None
            else {"WWW-Authenticate": 'Bearer realm="taskpipe"'}
        )
        return Reply.json(401, {"error": "authentication required (token or basic auth)"}, extra)
    if parts and parts[0] == "api":
        if method == "POST" and headers.get("X-Taskpipe") != "1":
            return Reply.json(403, {"error": "actions need the X-Taskpipe: 1 header"})
        status, data = dashboard.api.handle(method, parts[1:], query)
        return Reply.json(status, data)
    if method not in ("GET", "HEAD"):
        return Reply.json(405, {"error": f"method {method} not allowed"})
    if parts == ["metrics"]:
        try:
            from taskpipe.contrib.metrics import build_registry, render

            registry, _ = build_registry(dashboard.app)
            body, ctype = render(registry)
        except ConfigError as exc:
            return Reply.json(404, {"error": str(exc)})
        return Reply.make(200, body, ctype)
    if parts in ([""], ["index.html"]):
        return Reply.make(200, dashboard.static("index.html") or b"", _STATIC["index.html"])
    return Reply.json(404, {"error": "not found"})


def _start_sampler(dashboard: Dashboard) -> None:
    """Start sampling throughput on the first request (not at mount: a web app with many
    processes would otherwise sample Redis from each of them whether anyone looks or not)."""
    lock = dashboard.__dict__.setdefault("_mount_lock", threading.Lock())  # atomic setdefault
    with lock:
        dashboard.api.sampler.start()


class _Headers(dict[str, str]):
    """Case-insensitive ``get`` over request headers (what ``Dashboard.check_auth`` reads)."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


def _redirect(location: str) -> Reply:
    return Reply(308, b"", {"Location": location, "Content-Length": "0"})


def wsgi_app(
    dashboard: Dashboard,
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """The dashboard as a WSGI application (``PATH_INFO`` is the path below the mount point)."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        if path == "":
            reply = _redirect(environ.get("SCRIPT_NAME", "") + "/")
        else:
            headers = _Headers(
                {
                    k[5:].replace("_", "-").lower(): v
                    for k, v in environ.items()
                    if k.startswith("HTTP_")
                }
            )
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if 0 < length <= _MAX_BODY:
                environ["wsgi.input"].read(length)
            reply = route(
                dashboard,
                environ.get("REQUEST_METHOD", "GET"),
                path,
                headers,
                environ.get("QUERY_STRING", ""),
            )
        head = environ.get("REQUEST_METHOD") == "HEAD"
        start_response(
            f"{reply.status} {_reason(reply.status)}",
            [*reply.headers.items(), ("Content-Length", str(len(reply.body)))]
            if "Content-Length" not in reply.headers
            else list(reply.headers.items()),
        )
        return [b"" if head else reply.body]

    return application


def asgi_app(dashboard: Dashboard) -> Callable[..., Any]:
    """The dashboard as an ASGI application (mount it: ``app.mount("/taskpipe", asgi_app(d))``).

    The API reads Redis with the blocking client, so each request runs in a worker thread of
    the event loop's default executor (dashboard traffic, not the task hot path)."""

    async def application(
        scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "lifespan":  # mounted apps get none; standalone: accept and idle
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    dashboard.api.sampler.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        root = scope.get("root_path", "")
        path: str = scope.get("path", "")
        if root and path.startswith(root):  # Starlette keeps the full path and sets root_path
            path = path[len(root) :]
        more = True
        size = 0
        while more:  # drain the body (actions carry none that matters)
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False) and size <= _MAX_BODY
        if path == "":
            reply = _redirect(root + "/")
        else:
            headers = _Headers(
                {
                    k.decode("latin-1").lower(): v.decode("latin-1")
                    for k, v in scope.get("headers", [])
                }
            )
            query = scope.get("query_string", b"").decode("latin-1")
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(
                None, route, dashboard, scope["method"], path, headers, query
            )
        body = b"" if scope["method"] == "HEAD" else reply.body
        headers_out = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in reply.headers.items()
            if k.lower() != "content-length"
        ]
        headers_out.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers_out})
        await send({"type": "http.response.body", "body": body})

    return application


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
