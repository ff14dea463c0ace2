"""Interop with the ORIGINAL thoonk.py 1.0.1 client (Python 2.7, redis-py 2.4), run as a real
subprocess against the test Redis: the wire fixes of issue 13 as a legacy producer, worker and
listener see them. ``scripts/install-thoonk-py2.sh`` installs the client into ``.thoonk-py2/``;
without a Python 2.7 and that client these tests are skipped (the hand-written v1 client of
``test_thoonk_wire_fixes.py`` covers the same ground).

thoonk.py knows no key prefix, so these tests use ``prefix=""`` and a fresh channel name each.
"""

from __future__ import annotations

import glob
import os
import queue as stdlib_queue
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from redis_server import RedisServer
from worker_helpers import burst

from taskpipe import TaskPipe
from taskpipe.thoonk import Thoonk

ROOT = Path(__file__).resolve().parent.parent
WATCHDOG = 20.0


def _find_python2() -> tuple[str, dict[str, str]] | None:
    site = os.environ.get("TASKPIPE_THOONK_PY2_PATH") or str(ROOT / ".thoonk-py2")
    env = {**os.environ, "PYTHONPATH": site}
    env.pop("PYTHONHOME", None)
    candidates = [
        os.environ.get("TASKPIPE_PYTHON2", ""),
        shutil.which("python2.7") or "",
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/2.7*/bin/python2.7"))),
    ]
    for py in filter(None, candidates):
        try:
            ok = (
                subprocess.run(
                    [py, "-c", "import thoonk, redis"],
                    env=env,
                    cwd="/",
                    capture_output=True,
                    timeout=30,
                ).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if ok:
            return py, env
    return None


PY2 = _find_python2()
pytestmark = pytest.mark.skipif(
    PY2 is None,
    reason="no Python 2.7 with the original thoonk.py (run scripts/install-thoonk-py2.sh)",
)

PRELUDE = textwrap.dedent("""
    import sys, thoonk
    host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    t = thoonk.Thoonk(host, port, 0)
    def say(*parts):
        sys.stdout.write(" ".join(repr(p) for p in parts) + "\\n")
        sys.stdout.flush()
    def finish_listener():
        ps = t.redis.pubsub()
        ps.subscribe('job.finish:' + name)
        wait_subscribed('job.finish:' + name)
        return ps
    def wait_subscribed(channel):
        import time
        for _ in range(2000):
            if t.redis.execute_command('PUBSUB', 'NUMSUB', channel)[1]:
                return
            time.sleep(0.01)
    def first_finish(ps):
        for msg in ps.listen():
            if msg['type'] == 'message':
                return msg['data']
""")


class Original:
    """One thoonk.py 1.0.1 script running in a Python 2.7 subprocess."""

    def __init__(self, server: RedisServer, name: str, body: str) -> None:
        assert PY2 is not None
        url = urlparse(server.url)
        py, env = PY2
        self.proc = subprocess.Popen(
            [
                py,
                "-c",
                PRELUDE + textwrap.dedent(body),
                url.hostname or "127.0.0.1",
                str(url.port),
                name,
            ],
            env=env,
            cwd="/",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def line(self) -> str:
        """The script's next printed line (a repr); the watchdog kills a script that hangs."""
        assert self.proc.stdout is not None
        timer = _Watchdog(self.proc)
        try:
            text = self.proc.stdout.readline()
        finally:
            timer.cancel()
        assert text, (
            f"the thoonk.py script ended: {self.proc.stderr.read() if self.proc.stderr else ''}"
        )
        return text.rstrip("\n")

    def done(self) -> None:
        try:
            _, err = self.proc.communicate(timeout=WATCHDOG)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert self.proc.returncode == 0, err


class _Watchdog:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self._timer = threading.Timer(WATCHDOG, proc.kill)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()


@pytest.fixture
def name() -> str:
    return f"orig-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def app(redis_server: RedisServer) -> Iterator[TaskPipe]:  # thoonk.py knows no prefix
    a = TaskPipe(broker=redis_server.url, prefix="")
    yield a
    a.close()


def test_original_producer_gets_the_empty_result_of_a_raw_task(
    app: TaskPipe, redis_server: RedisServer, name: str
) -> None:
    @app.task(raw=True, channel=name)
    def handle(item: bytes) -> bytes:
        assert item == b"resize cat.png"
        return b""

    original = Original(
        redis_server,
        name,
        """
        j = t.job(name)
        ps = finish_listener()
        say(j.put('resize cat.png'))
        say(first_finish(ps))
    """,
    )
    jid = eval(original.line())  # noqa: S307 - the repr of a str printed by our own script
    assert burst(app, [name]) == {"finished": 1}
    assert original.line() == repr(jid + "\0")  # before issue 13: nothing, the producer waited
    original.done()


def test_original_producer_never_sees_an_error_blob(
    app: TaskPipe, redis_server: RedisServer, name: str
) -> None:
    @app.task(raw=True, channel=name)
    def handle(item: bytes) -> bytes:
        raise ValueError("cannot resize")

    original = Original(
        redis_server,
        name,
        """
        j = t.job(name)
        ps = finish_listener()
        say(j.put('resize cat.png'))
        say(first_finish(ps))
    """,
    )
    jid = eval(original.line())  # noqa: S307
    assert burst(app, [name]) == {"stalled": 1}
    assert app.channel(name).info(jid).reason == "failed: ValueError: cannot resize"
    app.connection.client.publish("job.finish:" + name, b"marker")
    assert original.line() == repr("marker")  # the first (and only) message it got
    original.done()


def test_original_worker_fires_on_finish(redis_server: RedisServer, name: str) -> None:
    thoonk = Thoonk(redis_server.url)
    try:
        publisher = thoonk.job(name)
        finished: stdlib_queue.Queue[tuple[str, bytes | None]] = stdlib_queue.Queue()
        a = publisher.publish(b"first", on_finish=lambda r: finished.put(("a", r)))
        b = publisher.publish(b"second", on_finish=lambda r: finished.put(("b", r)))
        original = Original(
            redis_server,
            name,
            """
            j = t.job(name)
            for result in ('', 'the results'):
                id, item, cancelled = j.get(timeout=20)
                say((id, item, cancelled))
                j.finish(id, result)
        """,
        )
        assert original.line() == repr((a, "first", 0))
        assert original.line() == repr((b, "second", 0))
        original.done()
        assert sorted([finished.get(timeout=WATCHDOG), finished.get(timeout=WATCHDOG)]) == [
            ("a", b""),
            ("b", b"the results"),
        ]
        # a legacy finish keeps nothing: get_result has no result to return (the job is gone)
        assert publisher.info(a).state == "unknown"
    finally:
        thoonk.close()


def test_original_listener_reads_taskpipe_events(redis_server: RedisServer, name: str) -> None:
    thoonk = Thoonk(redis_server.url)
    try:
        feed = thoonk.feed(name)
        deck = thoonk.sorted_feed(name + "-deck")
        job = thoonk.job_channel(name + "-jobs")
        original = Original(
            redis_server,
            name,
            """
            import threading
            seen = []
            done = threading.Event()
            def handler(event):
                def record(*args):
                    seen.append((event,) + args)
                    if len(seen) == 7:
                        done.set()
                return record
            listening = thoonk.Thoonk(host, port, 0, listen=True)
            for event in ('publish', 'edit', 'retract', 'position', 'finish'):
                listening.register_handler(event, handler(event))
            wait_subscribed('job.finish:' + name + '-jobs')  # its last SUBSCRIBE was processed
            say('ready')
            done.wait(20)
            for event in seen:
                say(event)
            say(t.feed(name).get_ids())
        """,
        )
        assert original.line() == repr("ready")
        feed.publish(b"a", id="a")
        feed.publish(b"b", id="b")
        feed.publish(b"a edited", id="a")  # an edit: the original sees feed.edit, a moves last
        feed.retract("b")
        deck.append(b"card")  # a publish and a position event
        jid = job.put(b"x")
        claim = job.claim(1)[0]
        job.finish(jid, b"", token=claim.token)
        events = [eval(original.line()) for _ in range(7)]  # noqa: S307
        # its feed list comes in arbitrary order; only the ids and payloads matter
        assert sorted(events) == sorted(
            [
                ("publish", name, "a", "a"),
                ("publish", name, "b", "b"),
                ("edit", name, "a edited", "a"),
                ("retract", name, "b"),
                ("publish", name + "-deck", "card", "1"),
                ("position", name + "-deck", "1", ":end"),
                ("finish", name + "-jobs", jid, ""),
            ]
        )
        assert original.line() == repr(["a"])
        original.done()
    finally:
        thoonk.close()


def test_original_worker_beside_numbered_priorities(
    app: TaskPipe, redis_server: RedisServer, name: str
) -> None:
    """thoonk.py claims taskpipe's normal and True-priority jobs as ever; numbered jobs
    (``priority=0..9``, in ``feed.prio``) are left to taskpipe, which claims them in order."""

    @app.task(name="flow.job", channel=name)
    def job(x: str) -> str:
        return x

    low = job.apply_async(("low",), priority=9).id
    high = job.apply_async(("high",), priority=0).id
    normal = job.delay("normal").id
    head = job.apply_async(("head",), priority=True).id
    original = Original(
        redis_server,
        name,
        """
        j = t.job(name)
        for _ in range(2):
            id, item, cancelled = j.get(timeout=20)
            say(id)
            j.finish(id, 'ok')
        try:
            j.get(timeout=1)
            say('got one')
        except thoonk.exceptions.Empty:
            say('empty')
    """,
    )
    assert original.line() == repr(head)
    assert original.line() == repr(normal)
    assert original.line() == repr("empty")  # the numbered jobs wait for taskpipe
    original.done()
    assert [c.id for c in app.channel(name).claim(10)] == [high, low]
