"""taskpipe behind Redis Sentinel (``redis+sentinel://``), with a real failover mid-run.

A module fixture starts a master, one replica (``replicaof``) and one sentinel (quorum 1) on
free loopback ports, each with its own config file in a temp dir (sentinel rewrites its file;
the servers need one for ``CONFIG REWRITE`` when sentinel reconfigures them). The failover test
publishes jobs continuously while ``SENTINEL FAILOVER`` promotes the replica, and checks that an
in-process worker follows the new master and that every job acknowledged before and after the
failover is finished; jobs acknowledged by the old master during the switch may be lost
(asynchronous replication): they are counted and printed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from polling import wait_for
from redis_server import RedisServer, free_port
from worker_helpers import burst

from taskpipe import TaskPipe
from taskpipe.connection import Connection, parse_url
from taskpipe.errors import BrokerUnavailable, BrokerURLError
from taskpipe.worker.worker import Worker


def _sentinel_command() -> list[str] | None:
    """``redis-sentinel``, or ``redis-server --sentinel`` (the same binary) when only it exists."""
    if shutil.which("redis-sentinel"):
        return ["redis-sentinel"]
    if shutil.which("redis-server"):
        return ["redis-server"]
    return None


pytestmark = pytest.mark.skipif(
    _sentinel_command() is None and not os.environ.get("CI"),
    reason="redis-server / redis-sentinel not installed (required in CI)",
)

MASTER = "mymaster"


def _wait(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    return wait_for(check, timeout, what, interval=0.05, ignore=(redis.exceptions.RedisError,))


class SentinelSetup:
    """A master, a replica and a sentinel on 127.0.0.1, each with a config file in ``dir``."""

    def __init__(self, password: str | None = None, sentinel_password: str | None = None) -> None:
        self.password = password  # requirepass of the master and replica
        self.sentinel_password = sentinel_password  # requirepass of the sentinel itself
        self.dir = tempfile.mkdtemp(prefix="taskpipe-sentinel-")
        self.ports = {"a": free_port(), "b": free_port()}
        self.sentinel_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{MASTER}"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5, password=self.password)

    def _conf(self, name: str, lines: list[str]) -> str:
        path = os.path.join(self.dir, f"{name}.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def _server(self, name: str, extra: list[str]) -> None:
        port = self.ports[name]
        conf = self._conf(
            name,
            [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {self.dir}",
                f"dbfilename {name}.rdb",
                'save ""',
                "appendonly no",
                "protected-mode no",
                "repl-diskless-sync-delay 0",  # a replica syncs at once (the default waits 5 s)
                *extra,
                *(
                    [f'requirepass "{self.password}"', f'masterauth "{self.password}"']
                    if self.password
                    else []
                ),
            ],
        )
        self.procs.append(
            subprocess.Popen(
                ["redis-server", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        _wait(lambda: self.client(port).ping(), f"redis-server {name} on {port}")

    def start(self) -> SentinelSetup:
        self._server("a", [])
        self._server("b", [f"replicaof 127.0.0.1 {self.ports['a']}"])
        _wait(
            lambda: self.client(self.ports["b"]).info("replication")["master_link_status"] == "up",
            "the replica to sync",
        )
        conf = self._conf(
            "sentinel",
            [
                f"port {self.sentinel_port}",
                "bind 127.0.0.1",
                f"dir {self.dir}",
                "protected-mode no",
                f"sentinel monitor {MASTER} 127.0.0.1 {self.ports['a']} 1",
                f"sentinel down-after-milliseconds {MASTER} 1000",
                f"sentinel failover-timeout {MASTER} 3000",
                *([f'sentinel auth-pass {MASTER} "{self.password}"'] if self.password else []),
                *([f'requirepass "{self.sentinel_password}"'] if self.sentinel_password else []),
            ],
        )
        cmd = _sentinel_command()
        assert cmd is not None
        args = [*cmd, conf] + (["--sentinel"] if cmd == ["redis-server"] else [])
        self.procs.append(
            subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        _wait(lambda: self.sentinel.ping(), "the sentinel to start")
        # Sentinel's timers (its own test suite shortens them the same way): INFO of each
        # instance every 0.5 s instead of 10 s, and hello messages every 1 s instead of 2 s; a
        # master seen reporting that role while sentinel holds it for a replica (the old master
        # after a failover) is demoted 4 publish periods after it reported it: 4 s, not 8 s
        try:
            self.sentinel.execute_command(
                "SENTINEL", "DEBUG", "info-period", 500, "publish-period", 1000
            )
        except redis.exceptions.ResponseError:
            pass  # Redis < 7.0 has no SENTINEL DEBUG: the default timers (a slower failover)
        self.wait_replica_known()
        return self

    @property
    def sentinel(self) -> Any:  # redis.Redis (execute_command is untyped)
        return redis.Redis(
            port=self.sentinel_port,
            socket_timeout=5,
            decode_responses=True,
            password=self.sentinel_password,
        )

    def master_port(self) -> int:
        return int(self.sentinel.sentinel_get_master_addr_by_name(MASTER)[1])

    def replica_port(self) -> int:
        return next(p for p in self.ports.values() if p != self.master_port())

    def wait_replica_known(self) -> None:
        """Until sentinel sees a healthy replica (else SENTINEL FAILOVER says NOGOODSLAVE)."""

        def healthy() -> bool:
            replicas = self.sentinel.execute_command("SENTINEL", "REPLICAS", MASTER)
            for r in replicas:
                info = dict(zip(r[::2], r[1::2])) if isinstance(r, list) else r
                if info.get("flags") == "slave" and info.get("master-link-status") == "ok":
                    return True
            return False

        _wait(healthy, "sentinel to see a healthy replica")

    def failover(self, on_switch: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """``SENTINEL FAILOVER``; returns (old, new) master ports once the switch is complete:
        sentinel names the new master, it is a master, and the old one is its replica.
        ``on_switch(old, new)`` runs once the new master is named, before the old one is
        demoted (sentinel does that at its next check of it, seconds later)."""
        old = self.master_port()
        new = next(p for p in self.ports.values() if p != old)
        _wait(
            lambda: self.sentinel.execute_command("SENTINEL", "FAILOVER", MASTER),
            "SENTINEL FAILOVER to be accepted",
        )
        _wait(lambda: self.master_port() == new, "sentinel to name the new master")
        _wait(lambda: self.client(new).info("replication")["role"] == "master", "promotion")
        if on_switch is not None:
            on_switch(old, new)
        _wait(lambda: self.client(old).info("replication")["role"] == "slave", "old master demoted")
        return old, new

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def sentinel_setup() -> Iterator[SentinelSetup]:
    s = SentinelSetup().start()
    yield s
    s.stop()


def test_jobs_and_results_through_sentinel(sentinel_setup: SentinelSetup, prefix: str) -> None:
    with TaskPipe(broker=sentinel_setup.url, prefix=prefix) as app:

        @app.task(name="mul")
        def mul(x: int, y: int) -> int:
            return x * y

        worker = Worker(app, ["default"], concurrency=2, max_block=0.5)
        runner = threading.Thread(target=worker.run)
        runner.start()
        try:
            assert [mul.delay(i, 2).get(timeout=30) for i in range(5)] == [0, 2, 4, 6, 8]
            with pytest.MonkeyPatch.context() as mp:  # waits on redis.asyncio's sentinel client
                mp.setattr(asyncio, "to_thread", None)  # (no fallback to a thread)

                async def read() -> int:
                    try:
                        return await mul.delay(3, 3).aget(timeout=30)
                    finally:
                        await app.aclose()

                assert asyncio.run(read()) == 9
        finally:
            worker.stop()
            runner.join(30)
        direct = sentinel_setup.client(sentinel_setup.master_port())
        assert (
            int(direct.get(app.channel().keys.finishes) or 0) == 6
        )  # on the master sentinel names


def test_password_protected_master_and_sentinel(prefix: str) -> None:
    """``redis+sentinel://:pw@host:port/master?sentinel_password=spw``: the master's password in
    the URL's user part, the sentinels' own in the query; the +switch-master follower logs in
    to the sentinel too. Without the sentinel password the broker is unavailable, with a clear
    error."""
    setup = SentinelSetup(password="m p/w", sentinel_password="s&pw").start()
    try:
        base = f"redis+sentinel://:m%20p%2Fw@127.0.0.1:{setup.sentinel_port}/{MASTER}"
        with TaskPipe(broker=base + "?sentinel_password=s%26pw", prefix=prefix) as app:

            @app.task(name="add1")
            def add1(x: int) -> int:
                return x + 1

            results = add1.map(range(3))
            burst(app, ["default"])
            assert [r.get(timeout=10) for r in results] == [1, 2, 3]
            _wait(
                lambda: any(c.get("cmd") == "subscribe" for c in setup.sentinel.client_list()),
                "the switch follower to subscribe (logged in to the sentinel)",
            )
        with TaskPipe(broker=base, prefix=prefix, publish_retry="0.3s") as bad:  # fail fast
            with pytest.raises(BrokerUnavailable):
                bad.send("add1", [1])
            # the app's publish_retry is the only retrying: each sentinel query is one try
            # (redis-py's default, 3 retries backing off, made this raise after ~7 s)
            sentinels = bad.connection.client.connection_pool.sentinel_manager.sentinels
            assert sentinels and all(s.get_retry().get_retries() == 0 for s in sentinels)
    finally:
        setup.stop()


def test_no_master_is_one_line_naming_the_service_and_the_sentinels(prefix: str) -> None:
    """A sentinel that monitors no such master, and one that does not answer: the error is one
    line naming the service and what each sentinel said (redis-py's appended the repr of each
    unreachable sentinel's client), without the password."""
    cmd = _sentinel_command()
    assert cmd is not None
    port, down = free_port(), free_port()
    folder = tempfile.mkdtemp(prefix="taskpipe-sentinel-")
    conf = os.path.join(folder, "sentinel.conf")
    with open(conf, "w") as f:
        f.write(f"port {port}\nbind 127.0.0.1\ndir {folder}\nprotected-mode no\n")
    args = [*cmd, conf] + (["--sentinel"] if cmd == ["redis-server"] else [])
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: redis.Redis(port=port).ping(), "the sentinel to start")
        url = f"redis+sentinel://:s3cret-pw@127.0.0.1:{port},127.0.0.1:{down}/{MASTER}"
        with TaskPipe(broker=url, prefix=prefix, publish_retry=0) as app:
            with pytest.raises(BrokerUnavailable) as info:
                app.send("add1", [1])
        message = str(info.value)
        assert "\n" not in message and "s3cret" not in message and "redis.client" not in message
        assert (
            f"Redis Sentinel has no master for service '{MASTER}': "
            f"127.0.0.1:{port} does not monitor it; 127.0.0.1:{down} unreachable (" in message
        )
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def test_sentinel_url_options() -> None:
    info = parse_url(
        "redis+sentinel://u:p%40ss@h1:26379,h2:26380/mymaster/2"
        "?sentinel_password=x&sentinel_username=y"
    )
    assert info["password"] == "p@ss" and info["username"] == "u" and info["db"] == 2
    assert info["sentinel_auth"] == {"password": "x", "username": "y"}
    assert parse_url("redis+sentinel://h:1/m")["sentinel_auth"] == {}
    with pytest.raises(BrokerURLError, match="unknown option"):
        parse_url("redis+sentinel://h:1/m?sentinel_pasword=x")
    with pytest.raises(BrokerURLError, match="unknown option"):
        parse_url("redis+cluster://h:1?foo=1")


_PUT_ERRORS = (
    BrokerUnavailable,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
)


def _switch_probe(
    app: TaskPipe, sentinel_setup: SentinelSetup, min_replicas: int, roles: list[str]
) -> Callable[[int, int], None]:
    """What the failover runs once sentinel switched: the old master still takes writes here;
    ours must already go to the new one (Connection follows +switch-master instead of waiting
    for the demotion). Appends the old master's role then to ``roles``."""

    def probe_lands_on_new_master(old: int, new: int) -> None:
        if min_replicas:
            return  # the new master refuses writes until it has a replica again
        ch = app.channel()

        def landed() -> bool:
            try:
                app.send("work", [-2], id="switch-probe")  # idempotent: same id each try
            except _PUT_ERRORS:
                return False
            direct = sentinel_setup.client(new)
            return bool(
                direct.hexists(ch.keys.items, "switch-probe")
                or direct.zscore(ch.keys.finished, "switch-probe") is not None
            )

        _wait(landed, "a put to land on the new master")
        roles.append(sentinel_setup.client(old).info("replication")["role"])

    return probe_lands_on_new_master


def _check_early_pubsub_follows(app: TaskPipe, early_pubsub: Any, new_client: Any) -> None:
    """A pub/sub connection made before the failover resubscribes on the new master and gets
    a job.finish published there."""
    ch_finish = app.channel().keys.ch_finish

    def early_pubsub_follows() -> bool:
        while early_pubsub.get_message(timeout=0.05) is not None:
            pass  # drain; a read on the killed connection reconnects and resubscribes
        return int(new_client.pubsub_numsub(ch_finish)[0][1]) >= 1

    _wait(early_pubsub_follows, "the early pub/sub connection to resubscribe on the new master")
    assert app.send("work", [10**6], id="probe").get(timeout=30) == 10**6

    def probe_message() -> bool:
        msg = early_pubsub.get_message(timeout=0.2)
        return bool(msg and msg["data"].startswith(b"probe\0"))

    _wait(probe_message, "the probe's job.finish on the pub/sub made before the failover")


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("min_replicas", [0, 1], ids=["async", "min-replicas-to-write"])
def test_worker_follows_a_failover(
    sentinel_setup: SentinelSetup, prefix: str, min_replicas: int
) -> None:
    """``async``: plain asynchronous replication. ``min-replicas-to-write``: the masters refuse
    writes (NOREPLICAS) without a replica acking within 1 s, so the old master stops taking
    writes soon after the switch, and the new one until the old one has resynced under it."""
    for port in sentinel_setup.ports.values():
        sentinel_setup.client(port).config_set("min-replicas-to-write", min_replicas)
        sentinel_setup.client(port).config_set("min-replicas-max-lag", 1)
    sentinel_setup.wait_replica_known()
    app = TaskPipe(broker=sentinel_setup.url, prefix=prefix, lease="2s")
    executed: Counter[int] = Counter()
    lock = threading.Lock()

    @app.task(name="work")
    def work(i: int) -> int:
        time.sleep(0.002)
        with lock:
            executed[i] += 1
        return i

    phase = ["before"]
    acked: dict[int, str] = {}  # job number -> phase in which its put was acknowledged
    put_errors = Counter[str]()
    stop_producing = threading.Event()

    def produce() -> None:
        i = 0
        while not stop_producing.is_set():
            try:
                app.send("work", [i], id=f"job-{i}")
            except _PUT_ERRORS as exc:
                put_errors[type(exc).__name__] += 1
                time.sleep(0.02)
                continue  # the same id again: a put is idempotent
            acked[i] = phase[0]
            i += 1
            time.sleep(0.003)

    worker = Worker(
        app, ["default"], concurrency=4, max_block=0.5, lease="2s", reaper_interval="0.5s"
    )
    runner = threading.Thread(target=worker.run, name="worker")
    producer = threading.Thread(target=produce, name="producer")
    # an idle worker, blocked in BLPOP when its master is demoted ("UNBLOCKED" reply, then killed)
    idle = Worker(app, ["idle"], concurrency=1, max_block=5.0)
    idle_runner = threading.Thread(target=idle.run, name="idle-worker")
    idle_runner.start()
    runner.start()
    producer.start()
    # a pub/sub connection made before the failover must follow the new master
    early_pubsub = app.connection.new_client().pubsub(ignore_subscribe_messages=True)
    early_pubsub.subscribe(app.channel().keys.ch_finish)
    try:
        _wait(lambda: len(acked) >= 150 and len(executed) >= 50, "jobs before the failover")
        old_client = sentinel_setup.client(sentinel_setup.master_port())
        _wait(
            lambda: any(
                "b" in c.get("flags", "") and c.get("cmd") == "blpop"
                for c in old_client.client_list()
            ),
            "the idle worker to block",
        )
        phase[0] = "during"
        old_client.set(prefix + "replication-mark", 1)  # WAIT counts this client's writes:
        assert old_client.wait(1, 10_000) == 1  # every put acked "before" is on the replica
        switch_probe: list[str] = []
        old, new = sentinel_setup.failover(
            _switch_probe(app, sentinel_setup, min_replicas, switch_probe)
        )
        assert switch_probe == ([] if min_replicas else ["master"])
        phase[0] = "after"
        first_after = len(acked)
        _wait(lambda: len(acked) >= first_after + 150, "jobs after the failover", timeout=60)
        stop_producing.set()
        producer.join(30)
        new_client = sentinel_setup.client(new)

        def done(ids: list[int]) -> bool:
            with lock:
                return all(executed[i] > 0 for i in ids)

        before = [i for i, p in acked.items() if p == "before"]
        after = [i for i, p in acked.items() if p == "after"]
        during = [i for i, p in acked.items() if p == "during"]
        try:
            _wait(lambda: done(before + after), "every job acked before/after to run", timeout=60)
        except RuntimeError:
            missing = [i for i in before + after if executed[i] == 0]
            states = {i: app.AsyncResult(f"job-{i}").info() for i in missing[:5]}
            raise AssertionError(
                f"{len(missing)} jobs never ran, e.g. {states}; worker alive: {runner.is_alive()}"
            ) from None
        _wait(
            lambda: all(app.AsyncResult(f"job-{i}").state == "finished" for i in before + after),
            "their outcomes to be written",
            timeout=30,
        )
        # the workers' blocking clients and the pub/sub clients follow the new master
        _wait(
            lambda: any(c.get("cmd") == "blpop" for c in new_client.client_list()),
            "a worker to block on the new master",
        )
        assert not any(c.get("cmd") == "blpop" for c in sentinel_setup.client(old).client_list())
        assert app.send("work", [-1], channel="idle").get(timeout=30) == -1
        _check_early_pubsub_follows(app, early_pubsub, new_client)
        # acked by the old master but not on the new one: the write never reached the replica
        # before the switch (it may still have run, on the old master, before its demotion)
        lost = [i for i in during if app.AsyncResult(f"job-{i}").info().state == "unknown"]
        never_ran = [i for i in lost if executed[i] == 0]
        doubled = sum(1 for n in executed.values() if n > 1)
        print(
            f"\nsentinel failover ({'min-replicas-to-write 1' if min_replicas else 'async'}): "
            f"acked before={len(before)} during={len(during)} "
            f"after={len(after)}; lost records={len(lost)} (of which never ran: "
            f"{len(never_ran)}); ran twice={doubled}; put errors={dict(put_errors)}"
        )
        assert runner.is_alive() and idle_runner.is_alive()  # the same workers went on
        if min_replicas:  # publishing was refused (BrokerUnavailable), not silently lost
            assert put_errors["BrokerUnavailable"] > 0
        assert len(lost) <= len(during)
    finally:
        stop_producing.set()
        worker.stop()
        idle.stop()
        try:  # end the idle worker's 5 s BLPOP now: it sees the stop when it wakes
            app.connection.client.lpush(app.channel("idle").keys.wake, "1")
        except _PUT_ERRORS:
            pass  # (the test failed mid-failover) it stops within max_block anyway
        runner.join(30)
        idle_runner.join(30)
        producer.join(30)
        early_pubsub.close()
        app.close()
        for port in sentinel_setup.ports.values():
            sentinel_setup.client(port).config_set("min-replicas-to-write", 0)
    assert not runner.is_alive() and not idle_runner.is_alive()


def test_a_waiter_blocked_on_a_demoted_master_wakes_instead_of_failing() -> None:
    """A master turned into a replica answers blocked clients "UNBLOCKED ... (master ->
    replica?)" (Sentinel kills them right after; a manual REPLICAOF or FAILOVER does not):
    the wait ends as a wake-up, and the caller's next claim meets the failover."""
    a, b = RedisServer().start(), RedisServer().start()
    try:
        conn = Connection(a.url)
        waiter = conn.list_waiter(["wake"])
        out: list[Any] = []

        def wait() -> None:
            try:
                out.append(waiter.wait(60))
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                out.append(exc)

        t = threading.Thread(target=wait)
        t.start()
        _wait(
            lambda: any(c.get("cmd") == "blpop" for c in a.client().client_list()),
            "the waiter to block",
        )
        a.client().replicaof("127.0.0.1", b.port)
        t.join(60)
        assert out == [True]
        waiter.close()
        conn.close()
    finally:
        a.cleanup()
        b.cleanup()


def test_a_waiter_on_a_master_refusing_writes_raises_broker_unavailable() -> None:
    """BLPOP is a write: under ``min-replicas-to-write`` with no replica the server answers
    NOREPLICAS, which a worker must treat like an unreachable broker (back off), not crash on."""
    server = RedisServer(extra=["--min-replicas-to-write", "1"]).start()
    try:
        conn = Connection(server.url)
        with pytest.raises(BrokerUnavailable, match="NOREPLICAS"):
            conn.list_waiter(["wake"]).wait(0.1)
        conn.close()
    finally:
        server.cleanup()


def test_doctor_checks_the_master_and_the_sentinel_quorum(sentinel_setup: SentinelSetup) -> None:
    from taskpipe.connection import Connection
    from taskpipe.thoonk.broker_check import diagnose

    conn = Connection(sentinel_setup.url)
    try:
        findings = {f.check: f for f in diagnose(conn)}
    finally:
        conn.close()
    assert findings["sentinel"].level == "ok" and "quorum" in findings["sentinel"].message
    assert findings["version"].level == "ok" and "role" not in findings  # it found the master
    broken = Connection(sentinel_setup.url.replace(f"/{MASTER}", "/nosuchmaster"))
    try:
        from taskpipe.thoonk.broker_check import _check_sentinels

        verdict = _check_sentinels(broken)
    finally:
        broken.close()
    assert verdict[0].level == "unsafe" and "nosuchmaster" in verdict[0].message
