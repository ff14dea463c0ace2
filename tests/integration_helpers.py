"""Helpers for the framework integration tests: example processes (a worker, a web server)
started with their output in files, and plain HTTP requests with urllib."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from polling import wait_for

ROOT = Path(__file__).resolve().parent.parent


class Procs:
    """Processes of one test: ``start(name, argv)``; all stopped (SIGTERM, then SIGKILL) at
    the end, and their output shown when the test failed. They import from the repository,
    ``cwd`` and ``path``."""

    def __init__(self, env: Mapping[str, str], cwd: Path, path: Sequence[Path] = ()) -> None:
        self.env = {**os.environ, **env}
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), str(cwd), *map(str, path), os.environ.get("PYTHONPATH")])
        )
        self.env.pop("TASKPIPE_APP", None)
        self.cwd = cwd
        self.dir = tempfile.mkdtemp(prefix="taskpipe-it-")
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = Path(self.dir) / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *argv],
                cwd=self.cwd,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = (proc, log)
        return proc

    def run(self, argv: Sequence[str], timeout: float = 120) -> str:
        """Run a command to the end (it must succeed); returns its output."""
        done = subprocess.run(
            [sys.executable, *argv],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def output(self) -> str:
        return "\n".join(
            f"--- {name} (exit {proc.poll()}) ---\n" + log.read_text(errors="replace")[-4000:]
            for name, (proc, log) in self.procs.items()
        )

    def stop(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextmanager
def processes(env: Mapping[str, str], cwd: Path, path: Sequence[Path] = ()) -> Iterator[Procs]:
    procs = Procs(env, cwd, path)
    try:
        yield procs
    except BaseException:
        procs.stop()
        print(procs.output())
        raise
    procs.stop()


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    opener: urllib.request.OpenerDirector | None = None,
    form: Mapping[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """One request; returns (status, decoded JSON or text, the response). Never raises for a
    status. ``form`` sends a urlencoded body; ``opener`` keeps cookies between requests."""
    if form is not None:
        data: bytes | None = urllib.parse.urlencode(form).encode()
        ctype = "application/x-www-form-urlencoded"
    else:
        data = json.dumps(body).encode() if body is not None else None
        ctype = "application/json"
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": ctype, **(headers or {})}
    )
    try:
        with (opener or urllib.request.build_opener()).open(req, timeout=30) as resp:
            status, raw, head = resp.status, resp.read(), resp
    except urllib.error.HTTPError as exc:
        status, raw, head = exc.code, exc.read(), exc
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text), head
    except ValueError:
        return status, text, head


def wait_http(url: str, procs: Procs, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers (any status), failing early if a process died."""

    def up() -> bool:
        for name, (proc, _) in procs.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited early:\n{procs.output()}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    wait_for(up, timeout=timeout, what=f"{url} to answer")
