"""The dashboard's HTTP server: standard library only (``ThreadingHTTPServer``), plain JS pages.

Security model:

- binds 127.0.0.1 unless told otherwise; with no auth configured on a loopback address, only
  ``Host: 127.0.0.1|localhost|[::1]:<port>`` is answered (blocks DNS rebinding);
- ``token``: ``Authorization: Bearer T``, ``X-Taskpipe-Token: T`` or ``?token=T``;
  ``basic``: HTTP basic auth ``(user, password)``; with both, either is accepted;
- actions are ``POST`` requests that must carry the ``X-Taskpipe: 1`` header (a cross-site form
  can't send it), so a logged-in browser can't be made to retry or retract by another site;
- static assets and the page shell hold no data and are served without auth (the shell only
  with token auth: with basic auth it is protected so the browser asks); every page is built with
  ``textContent`` (no HTML from job data) under a strict Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from taskpipe.contrib.dashboard.api import DashboardAPI
from taskpipe.errors import ConfigError

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["Dashboard", "DashboardServer", "parse_basic", "is_loopback"]

log = logging.getLogger("taskpipe.dashboard")

_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def parse_basic(value: str) -> tuple[str, str]:
    """``"user:password"`` -> ``(user, password)``; ``ConfigError`` if malformed."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError("basic auth must be given as USER:PASSWORD (both non-empty)")
    return user, password


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (where an unauthenticated dashboard is safe)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """The dashboard of one app: the API, auth settings and static pages.

    ``Dashboard(app, token="s3cret")`` then ``serve(host, port)``; ``basic=("user", "pass")``
    adds HTTP basic auth. ``sampler_interval`` is how often throughput is sampled (seconds).
    """

    def __init__(
        self,
        app: TaskPipe,
        *,
        token: str | None = None,
        basic: tuple[str, str] | None = None,
        sampler_interval: float = 1.0,
    ) -> None:
        if token is not None and not token:
            raise ConfigError("the dashboard token must not be empty")
        self.app = app
        self.token = token
        self.basic = basic
        self.api = DashboardAPI(app, sampler_interval)

    @property
    def auth_required(self) -> bool:
        """True if a token or basic credentials are configured."""
        return self.token is not None or self.basic is not None

    def check_auth(self, headers: Any, query: dict[str, str]) -> bool:
        """True if the request carries a valid credential (or none is configured)."""
        if not self.auth_required:
            return True
        authz = headers.get("Authorization", "") or ""
        scheme, _, value = authz.partition(" ")
        if self.token is not None:
            offered = [headers.get("X-Taskpipe-Token", "") or "", query.get("token", "")]
            if scheme.lower() == "bearer":
                offered.append(value.strip())
            expected = self.token.encode()
            if any(o and hmac.compare_digest(o.encode(), expected) for o in offered):
                return True
        if self.basic is not None and scheme.lower() == "basic":
            try:
                user, _, password = (
                    base64.b64decode(value.strip(), validate=True).decode().partition(":")
                )
            except (ValueError, UnicodeDecodeError):
                return False
            ok_user = hmac.compare_digest(user.encode(), self.basic[0].encode())
            ok_pass = hmac.compare_digest(password.encode(), self.basic[1].encode())
            return ok_user and ok_pass
        return False

    def static(self, name: str) -> bytes | None:
        """The bytes of a packaged static file, or None."""
        if name not in _STATIC:
            return None
        return (
            resources.files("taskpipe.contrib.dashboard")
            .joinpath("static")
            .joinpath(name)
            .read_bytes()
        )

    def serve(self, host: str = "127.0.0.1", port: int = 8000) -> DashboardServer:
        """Start serving on a daemon thread; ``port=0`` picks a free port."""
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"dashboard port must be an int in 0..65535, got {port!r}")
        handler = type("BoundHandler", (_Handler,), {"dashboard": self})
        try:
            httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve the dashboard on {host}:{port}: {exc}") from None
        httpd.daemon_threads = True
        server = DashboardServer(self, httpd)
        self.api.sampler.start()
        server.start()
        return server


class DashboardServer:
    """A running dashboard: ``url``, ``port``, ``close()``."""

    def __init__(self, dashboard: Dashboard, httpd: ThreadingHTTPServer) -> None:
        self.dashboard = dashboard
        self.httpd = httpd
        self.host: str = str(httpd.server_address[0])
        self.port: int = int(httpd.server_address[1])
        self.allowed_hosts = {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]")}
        setattr(httpd, "taskpipe_server", self)  # noqa: B010 - read back by the handler
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="taskpipe-dashboard",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """The dashboard's base URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Serve on the background thread."""
        self._thread.start()

    def wait(self) -> None:
        """Block until the server stops (used by the CLI)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def close(self) -> None:
        """Stop serving and sampling."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.dashboard.api.sampler.stop()
        self._thread.join(timeout=5)

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    """One request. ``dashboard`` is set on a subclass per server."""

    dashboard: Dashboard
    server_version = "taskpipe-dashboard"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(
        self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in {**_SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(data, default=str, separators=(",", ":")).encode()
        self._send(status, body, "application/json", extra)

    def _host_ok(self) -> bool:
        srv: DashboardServer | None = getattr(self.server, "taskpipe_server", None)
        if self.dashboard.auth_required or srv is None or not is_loopback(srv.host):
            return True
        return (self.headers.get("Host") or "") in srv.allowed_hosts

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        if not self._host_ok():
            self._json(421, {"error": "unexpected Host header (use 127.0.0.1 or localhost)"})
            return
        if method in ("GET", "HEAD") and len(parts) == 2 and parts[0] == "static":
            body = self.dashboard.static(parts[1])
            if body is None:
                self._json(404, {"error": "no such file"})
            else:
                self._send(200, body, _STATIC[parts[1]])
            return
        if parts == ["healthz"]:
            self._json(200, {"ok": True})
            return
        if (
            method in ("GET", "HEAD")
            and parts in ([""], ["index.html"])
            and self.dashboard.basic is None
        ):
            # the page shell holds no data: with token auth it loads and asks for the token;
            # with basic auth it is protected so the browser prompts for credentials
            self._send(200, self.dashboard.static("index.html") or b"", _STATIC["index.html"])
            return
        if not self.dashboard.check_auth(self.headers, query):
            extra = (
                {"WWW-Authenticate": 'Basic realm="taskpipe", charset="UTF-8"'}
                if self.dashboard.basic is not None
                else {"WWW-Authenticate": 'Bearer realm="taskpipe"'}
            )
            self._json(401, {"error": "authentication required (token or basic auth)"}, extra)
            return
        if parts and parts[0] == "api":
            if method == "POST" and self.headers.get("X-Taskpipe") != "1":
                self._json(403, {"error": "actions need the X-Taskpipe: 1 header"})
                return
            status, data = self.dashboard.api.handle(method, parts[1:], query)
            self._json(status, data)
            return
        if method not in ("GET", "HEAD"):
            self._json(405, {"error": f"method {method} not allowed"})
        elif parts == ["metrics"]:
            self._metrics()
        elif parts in ([""], ["index.html"]):
            body = self.dashboard.static("index.html") or b""
            self._send(200, body, _STATIC["index.html"])
        else:
            self._json(404, {"error": "not found"})

    def _metrics(self) -> None:
        try:
            from taskpipe.contrib.metrics import build_registry, render

            registry, _ = build_registry(self.dashboard.app)
            body, ctype = render(registry)
        except ConfigError as exc:
            self._json(404, {"error": str(exc)})
            return
        self._send(200, body, ctype)

    def _drain_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if 0 < length <= 1 << 20:
            self.rfile.read(length)
        elif length:
            self.close_connection = True  # can't trust what follows on this connection

    def do_GET(self) -> None:  # stdlib naming
        """Serve a page, a static file or a read API."""
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        """Like GET without the body."""
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        """Run an action."""
        self._drain_body()
        self._dispatch("POST")

    def do_PUT(self) -> None:
        """Not allowed."""
        self._drain_body()
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        """Not allowed."""
        self._dispatch("DELETE")
