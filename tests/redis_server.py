"""A redis-server the tests start and control: free loopback port, temp dir, restart, kill."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1, started by the tests."""

    def __init__(
        self, port: int | None = None, *, appendonly: bool = False, extra: list[str] | None = None
    ) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="taskpipe-redis-")
        self.appendonly = appendonly
        self.extra = list(extra or [])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        args = [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--protected-mode",
            "no",
            # a replica of this server syncs at once (the default waits 5 s for more replicas)
            "--repl-diskless-sync-delay",
            "0",
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                # one try per loop: redis-py's own retries back off up to 1 s per try
                if redis.Redis(
                    port=self.port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
                ).ping():
                    return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis(port=self.port, **kw)

    def stop(self, sig: str = "term") -> None:
        if self.proc is None:
            return
        if sig == "kill":
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self, *, empty: bool = False) -> None:
        self.stop()
        if empty:
            for name in os.listdir(self.dir):
                path = os.path.join(self.dir, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        self.start()

    def cleanup(self) -> None:
        self.stop("kill")
        shutil.rmtree(self.dir, ignore_errors=True)
