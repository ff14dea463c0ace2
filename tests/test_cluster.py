"""taskpipe on a real 3-master Redis Cluster (``redis+cluster://``).

A session fixture starts three ``redis-server --cluster-enabled yes`` processes on free loopback
ports, joins them as ``redis-cli --cluster create`` would (``RedisCluster._create``) and waits
for ``cluster_state:ok``. The tests check that every key of a channel lands in one slot (hash tag
added by the app), that the registry is updated in its own idempotent step, that scripts survive
``NOSCRIPT`` on every node, the job-channel essentials, claims and blocking waits across slots,
and a worker end to end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from polling import wait_for

from taskpipe import TaskPipe
from taskpipe.connection import Connection, key_slot
from taskpipe.errors import ConfigError, FeedDoesNotExist, FeedExists, TaskFailed, WrongJobState
from taskpipe.thoonk.job import PutRequest, claim_from, wait_and_claim
from taskpipe.thoonk.keys import cluster_name, has_hash_tag
from taskpipe.thoonk.thoonk import Thoonk
from taskpipe.worker.worker import Worker

LONG = 60_000


def _missing_tools() -> bool:
    return shutil.which("redis-server") is None or shutil.which("redis-cli") is None


pytestmark = pytest.mark.skipif(
    _missing_tools() and not os.environ.get("CI"),
    reason="redis-server / redis-cli not installed (required in CI)",
)


def _cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each on 127.0.0.1 (the cluster and shard
    tests' one cluster helper), started and stopped by the tests."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.dir = tempfile.mkdtemp(prefix="taskpipe-cluster-")
        self.replicas_each = replicas
        self.ports: list[int] = []
        while len(self.ports) < masters * (1 + replicas):
            port = _cluster_port()
            if port not in self.ports:
                self.ports.append(port)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node(self, port: int) -> Any:  # redis.Redis (execute_command is untyped)
        return redis.Redis(port=port, socket_timeout=5)

    def start(self) -> RedisCluster:
        for port in self.ports:
            self.procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        os.path.join(self.dir, f"nodes-{port}.conf"),
                        # with replicas: a failover test wants failure detection in seconds
                        *(("--cluster-node-timeout", "5000") if self.replicas_each else ()),
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        self.dir,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--protected-mode",
                        "no",
                        # a replica syncs at once (the default waits 5 s for more replicas)
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            self._wait(lambda p=port: bool(self.node(p).ping()), f"node {port} to start")
        self._create()
        for port in self.ports:
            self._wait(
                lambda p=port: (
                    b"cluster_state:ok" in self.node(p).execute_command("CLUSTER", "INFO")
                ),
                f"node {port}: cluster_state:ok",
            )
        if self.replicas_each:
            for port in self.replicas():
                self._wait(
                    lambda p=port: (
                        self.node(p).info("replication").get("master_link_status") == "up"
                    ),
                    f"replica {port} in sync",
                )
        return self

    def _create(self) -> None:
        """Join the nodes as ``redis-cli --cluster create`` does (slots in equal ranges, one
        config epoch per node, MEET, then each replica REPLICATEs a master), with two
        differences that save seconds: every node MEETs every other (no waiting for gossip to
        spread who is who), and the waits poll every 50 ms where redis-cli sleeps 1 s."""
        n_masters = len(self.ports) // (1 + self.replicas_each)
        masters, replicas = self.ports[:n_masters], self.ports[n_masters:]
        for i, port in enumerate(masters):
            lo, hi = i * 16384 // n_masters, (i + 1) * 16384 // n_masters
            self.node(port).execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi))
        for epoch, port in enumerate(self.ports, 1):  # distinct epochs: no collision to resolve
            self.node(port).execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for port in self.ports:
            for other in self.ports:
                if other != port:
                    self.node(port).execute_command("CLUSTER", "MEET", "127.0.0.1", other)
        ids = {p: self.node(p).execute_command("CLUSTER", "MYID").decode() for p in self.ports}

        def met(port: int) -> bool:  # knows every node, by id, no handshake left
            text = self.node(port).execute_command("CLUSTER", "NODES")
            nodes = [line.split() for line in text.decode().splitlines() if line]
            return {x[0] for x in nodes} == set(ids.values()) and not any(
                "handshake" in x[2] or "noaddr" in x[2] for x in nodes
            )

        for port in self.ports:
            self._wait(lambda p=port: met(p), f"node {port} to meet the others")
        for j, port in enumerate(replicas):
            self.node(port).execute_command("CLUSTER", "REPLICATE", ids[masters[j % n_masters]])

    @staticmethod
    def _wait(check: Any, what: str, timeout: float = 60) -> None:
        wait_for(check, timeout, what, interval=0.05, ignore=(redis.exceptions.RedisError,))

    def masters(self) -> list[int]:
        """The ports of the nodes that are masters now."""
        return [p for p in self.ports if self.node(p).info("replication")["role"] == "master"]

    def replicas(self) -> list[int]:
        """The ports of the nodes that are replicas now."""
        return [p for p in self.ports if p not in self.masters()]

    def replica_of(self, master: int) -> int:
        """The port of a replica of the master at ``master``."""
        for port in self.replicas():
            if int(self.node(port).info("replication")["master_port"]) == master:
                return port
        raise LookupError(master)

    def owner(self, slot: int) -> int:
        """The port of the master that serves ``slot``."""
        for start, end, master, *_ in self.node(self.ports[0]).execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise LookupError(slot)

    def keyslot(self, key: str) -> int:
        """The slot Redis itself computes (``CLUSTER KEYSLOT``)."""
        return int(self.node(self.ports[0]).execute_command("CLUSTER", "KEYSLOT", key))

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[RedisCluster]:
    c = RedisCluster().start()
    yield c
    c.stop()


@pytest.fixture
def app(cluster: RedisCluster, prefix: str) -> Iterator[TaskPipe]:
    a = TaskPipe(broker=cluster.url, prefix=prefix, lease="30s")
    yield a
    a.close()


@pytest.fixture(scope="session")
def three_names(cluster: RedisCluster) -> list[str]:
    """Three channel names whose hash tags map to slots on three different masters."""
    names: list[str] = []
    owners: set[int] = set()
    for i in range(200):
        name = f"q{i}"
        owner = cluster.owner(cluster.keyslot("{" + name + "}"))
        if owner not in owners:
            owners.add(owner)
            names.append(name)
        if len(names) == 3:
            return names
    raise RuntimeError("could not find names on three masters")


# --- names and slots -------------------------------------------------------------------------


def test_hash_tag_rules() -> None:
    assert cluster_name("emails") == "{emails}"
    assert cluster_name("{emails}") == "{emails}"
    assert cluster_name("mail:{eu}:high") == "mail:{eu}:high"
    assert cluster_name("a{}b") == "{a{}b}"  # "{}" is no tag for Redis: the whole name gets one
    assert not has_hash_tag("x{") and not has_hash_tag("{}") and has_hash_tag("{x}")


def test_every_key_of_a_channel_in_one_slot(app: TaskPipe, cluster: RedisCluster) -> None:
    ch = app.channel("emails")
    assert ch.name == "{emails}"
    assert app.channel("{emails}") is ch and app.channel("emails") is ch
    keys = [*app.thoonk.keys.job_object_keys(ch.name), ch.keys.result("j1"), ch.keys.log("j1")]
    slots = {cluster.keyslot(k) for k in keys}  # Redis' own CLUSTER KEYSLOT, not ours
    assert slots == {cluster.keyslot("{emails}")}
    assert key_slot(ch.keys.ids) == slots.pop()
    # the Thoonk v1 key patterns are unchanged: only the name carries the tag
    assert ch.keys.ids == app.prefix + "feed.ids:{emails}"
    tagged = app.channel("mail:{eu}:high")
    assert tagged.name == "mail:{eu}:high"
    assert cluster.keyslot(tagged.keys.items) == cluster.keyslot(tagged.keys.result("x"))


def test_prefix_with_a_broken_hash_tag_is_refused(cluster: RedisCluster) -> None:
    with TaskPipe(broker=cluster.url, prefix="app{") as bad:
        with pytest.raises(ConfigError):
            bad.channel("emails")
    with TaskPipe(broker=cluster.url, prefix=f"{{{uuid.uuid4().hex[:6]}}}:") as one_slot:
        ch = one_slot.channel("emails")  # a prefix with a whole tag puts everything in one slot
        assert ch.name == "{emails}"
        ch.put(b"x")
        assert ch.claim()[0].item == b"x"


# --- registry: its own idempotent step --------------------------------------------------------


def _events(conn: Connection, channels: list[str]) -> tuple[Any, list[tuple[str, bytes]]]:
    pubsub = conn.new_client().pubsub()
    pubsub.subscribe(*channels)
    confirmed = 0
    deadline = time.monotonic() + 10
    while confirmed < len(channels) and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
        confirmed += bool(msg and msg["type"] == "subscribe")
    assert confirmed == len(channels)
    got: list[tuple[str, bytes]] = []
    return pubsub, got


def _drain(pubsub: Any, got: list[tuple[str, bytes]], want: int) -> None:
    deadline = time.monotonic() + 10
    while len(got) < want and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
        if msg and msg["type"] == "message":
            got.append((msg["channel"].decode(), msg["data"]))


def test_registry_create_config_delete(cluster: RedisCluster, prefix: str) -> None:
    th = Thoonk(cluster.url, prefix=prefix)
    k = th.keys
    pubsub, got = _events(th.connection, [k.ch_newfeed, k.ch_conffeed, k.ch_delfeed])
    try:
        th.create("{reg}", "job", {"max_length": 5})
        with pytest.raises(FeedExists):
            th.create("{reg}", "job")
        assert th.exists("{reg}") and "{reg}" in th.names()
        assert th.get_config("{reg}")["max_length"] == "5"
        th.set_config("{reg}", paused="1")
        assert th.get_config("{reg}")["paused"] == "1"
        th.set_config("{reg}", paused=None)
        assert "paused" not in th.get_config("{reg}")
        with pytest.raises(FeedDoesNotExist):
            th.set_config("{nothing}", paused="1")
        job = th.job("{reg}")
        job.put(b"x")
        th.delete("{reg}")
        assert not th.exists("{reg}") and th.get_type("{reg}") is None
        assert th.client.exists(job.keys.items, job.keys.ids, job.keys.config) == 0
        with pytest.raises(FeedDoesNotExist):
            th.delete("{reg}")
        _drain(pubsub, got, 5)
        tag = b"{reg}\0" + th.instance.encode()
        # events published on different masters (feeds' slot vs the channel's slot) travel over
        # the cluster bus and may arrive in another order; each one arrives exactly once
        assert sorted(got) == sorted(
            [
                (k.ch_newfeed, tag),
                (k.ch_conffeed, tag),
                (k.ch_conffeed, tag),
                (k.ch_conffeed, tag),
                (k.ch_delfeed, tag),
            ]
        )
    finally:
        pubsub.close()
        th.close()


def test_registry_repairs_a_half_done_create_or_delete(cluster: RedisCluster, prefix: str) -> None:
    th = Thoonk(cluster.url, prefix=prefix)
    try:
        # a creator that crashed after step 1 (config written, name not registered)
        th.client.hset(th.keys.feed("{half}").config, mapping={"type": "job", "schema": "1"})
        assert not th.exists("{half}")
        th.job("{half}")  # open completes the registration
        assert th.exists("{half}")
        # a deleter that crashed after step 1 (unregistered, keys still there): delete again
        job = th.job("{half}")
        job.put(b"x")
        th.client.srem(th.keys.feeds, "{half}")
        th.delete("{half}")  # no FeedDoesNotExist: it finishes the job
        assert th.client.exists(job.keys.items, job.keys.config) == 0
    finally:
        th.close()


# --- scripts ----------------------------------------------------------------------------------


def test_noscript_is_handled_on_every_node(
    app: TaskPipe, cluster: RedisCluster, three_names: list[str]
) -> None:
    channels = [app.channel(n) for n in three_names]
    for ch in channels:
        ch.put(b"warm")
    for port in cluster.ports:
        cluster.node(port).script_flush()
    for ch in channels:  # EVALSHA hits NOSCRIPT on each owner; SCRIPT LOAD reaches every master
        ch.put(b"again")
        ch.put_many([PutRequest(b"p1"), PutRequest(b"p2")])  # pipelined EVALSHA per slot
    sha = app.thoonk.scripts["job_put_fresh"].sha  # what put() and put_many() of fresh ids run
    for port in cluster.ports:
        assert cluster.node(port).script_exists(sha) == [True]
    assert [ch.counts()["available"] for ch in channels] == [4, 4, 4]


# --- job-channel essentials -------------------------------------------------------------------


def test_job_essentials(app: TaskPipe) -> None:
    ch = app.channel("essentials")
    a = ch.put(b"a")
    b = ch.put(b"b", priority=True)
    c = ch.put(b"c", delay_ms=200)
    claims = ch.claim(count=5, lease_ms=LONG, worker="w")
    assert [x.id for x in claims] == [b, a]  # priority first; the delayed one is not due
    ch.finish(b, b"result-b", result_ttl_ms=LONG, token=claims[0].token)
    assert ch.get_result(b) == b"result-b"
    assert ch.cancel(a, token=claims[1].token) == 1
    again = ch.claim(lease_ms=LONG)[0]
    assert (again.id, again.cancel_count) == (a, 1)
    ch.stall(a, reason="bad", token=again.token)
    assert ch.stalled_ids() == [a] and ch.stall_reason(a) == "bad"
    with pytest.raises(WrongJobState):
        ch.finish(a, b"x")
    ch.retry(a)
    d = ch.put(b"d")
    ch.retract(d)
    assert ch.info(d).state == "unknown"
    deadline = time.monotonic() + 10
    got: list[str] = []
    while len(got) < 2 and time.monotonic() < deadline:  # a (retried) and c (once due)
        got += [x.id for x in ch.claim(count=5, lease_ms=LONG)]
        time.sleep(0.02)
    assert sorted(got) == sorted([a, c])
    assert ch.info(a).state == "claimed"


def test_reap_requeues_an_expired_lease(app: TaskPipe) -> None:
    ch = app.channel("reap")
    job_id = ch.put(b"x")
    ch.claim(lease_ms=50)
    deadline = time.monotonic() + 10
    requeued: list[str] = []
    while not requeued and time.monotonic() < deadline:
        requeued, _ = ch.reap()
        time.sleep(0.02)
    assert requeued == [job_id]
    assert ch.claim(lease_ms=LONG)[0].cancel_count == 1


def test_get_result_wakes_on_the_finish_message(app: TaskPipe, cluster: RedisCluster) -> None:
    ch = app.channel("results")
    job_id = ch.put(b"x")
    claim = ch.claim(lease_ms=LONG)[0]

    def subscribers() -> int:
        return sum(
            int(cluster.node(p).pubsub_numsub(ch.keys.ch_finish)[0][1]) for p in cluster.ports
        )

    def finish_once_subscribed() -> None:
        deadline = time.monotonic() + 30
        while subscribers() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        ch.finish(job_id, b"done", result_ttl_ms=0, token=claim.token)  # published, not stored

    t = threading.Thread(target=finish_once_subscribed)
    t.start()
    # TTL 0: nothing is stored, so only the job.finish message (cluster pub/sub, relayed over
    # the cluster bus from the channel's master to the subscriber's) can carry the result
    assert ch.get_result(job_id, timeout=30) == b"done"
    t.join()


# --- across slots -----------------------------------------------------------------------------


def test_claim_from_keeps_strict_order_across_slots(
    app: TaskPipe, cluster: RedisCluster, three_names: list[str]
) -> None:
    chans = [app.channel(n) for n in three_names]
    assert len({cluster.owner(cluster.keyslot(c.keys.ids)) for c in chans}) == 3
    for ch in chans:
        ch.put_many([PutRequest(f"{ch.name}-{i}".encode()) for i in range(3)])
    claims, _, _ = claim_from(app.thoonk, chans, 4, LONG, "w")
    assert [c.channel for c in claims] == [chans[0].name] * 3 + [chans[1].name]
    chans[1].pause()
    claims, _, _ = claim_from(app.thoonk, chans, 10, LONG, "w")
    assert [c.channel for c in claims] == [chans[2].name] * 3  # paused channel skipped
    chans[1].resume()
    chans[2].put(b"late", delay_ms=LONG)
    claims, next_due, now = claim_from(app.thoonk, chans, 10, LONG, "w")
    assert [c.channel for c in claims] == [chans[1].name] * 2
    assert next_due is not None and LONG - 5000 < next_due - now <= LONG


def test_a_put_into_any_slot_wakes_a_blocked_waiter(app: TaskPipe, three_names: list[str]) -> None:
    chans = [app.channel(n) for n in three_names]
    for target in chans:
        waiter = app.connection.list_waiter([c.keys.wake for c in chans])
        assert len(waiter.groups) == 3
        try:
            result: list[bool] = []
            t = threading.Thread(target=lambda w=waiter, r=result: r.append(w.wait(60)))
            t.start()
            time.sleep(0.1)
            target.put(b"wake")
            t.join(60)
            assert result == [True]  # woken by the marker, not by the 60 s timeout
        finally:
            waiter.close()


def test_wait_and_claim_blocks_then_claims_from_any_slot(
    app: TaskPipe, three_names: list[str]
) -> None:
    chans = [app.channel(n) for n in three_names]
    out: list[Any] = []
    t = threading.Thread(
        target=lambda: out.append(wait_and_claim(app.thoonk, chans, 5, LONG, "w", timeout=60))
    )
    t.start()
    time.sleep(0.2)
    job_id = chans[2].put(b"third")
    t.join(60)
    assert [(c.channel, c.id) for c in out[0]] == [(chans[2].name, job_id)]


# --- a worker end to end ----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_worker_end_to_end(app: TaskPipe, three_names: list[str]) -> None:
    order: list[tuple[str, int]] = []

    @app.task(name="record")
    def record(channel: str, i: int) -> int:
        order.append((channel, i))
        return i * 10

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="boom")
    def boom() -> None:
        raise ValueError("kaput")

    for name in reversed(three_names):  # published last-channel first: order comes from -Q
        for i in range(5):
            record.apply_async((name, i), channel=name)
    Worker(app, three_names, concurrency=1, burst=True, max_block=0.2).run()
    assert order == [(n, i) for n in three_names for i in range(5)]
    for name in three_names:
        assert app.channel(name).counts()["finished"] == 5

    worker = Worker(app, [*three_names, app.default_channel], concurrency=4)
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        results = [add.apply_async((i, 1), channel=name) for i, name in enumerate(three_names * 3)]
        assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(9)]
        assert {r.channel for r in results} == {"{" + n + "}" for n in three_names}
        assert add.delay(2, 3).get(timeout=30) == 5
        failing = boom.apply_async(channel=three_names[1])
        with pytest.raises(TaskFailed):
            failing.get(timeout=30)
    finally:
        worker.stop()
        runner.join(30)
    assert not runner.is_alive()


def test_doctor_checks_every_primary_and_the_cluster_state(cluster: RedisCluster) -> None:
    from taskpipe.thoonk.broker_check import diagnose

    conn = Connection(cluster.url)
    try:
        findings = diagnose(conn)
    finally:
        conn.close()
    assert [f.level for f in findings if f.check == "cluster"] == ["ok"]
    nodes = {f.node for f in findings if f.check == "version"}
    assert len(nodes) == 3 and all(":" in n for n in nodes)  # one per primary
    # the test cluster runs without persistence: every primary says so
    assert {f.node for f in findings if f.check == "persistence" and f.level == "unsafe"} == nodes


@pytest.mark.timeout(60)
def test_job_events_reach_a_listener(app: TaskPipe, three_names: list[str]) -> None:
    """Outcome and log events are published on a cluster too (job_announce.lua, no keys: a
    PUBLISH reaches every node) and followed by ``app.listen()``."""
    from taskpipe import current_job
    from taskpipe.testing import running_worker

    got: list[tuple[str, str]] = []

    @app.task(name="noted")
    def noted(x: int) -> int:
        ctx = current_job()
        assert ctx is not None
        ctx.log(f"x={x}")
        return x

    noted.on("complete", lambda job: got.append(("complete", job.channel)))
    app.on("log", lambda job, line: got.append(("log", job.channel)))
    app.listen()
    try:
        with running_worker(app, three_names, concurrency=2):
            for name in three_names:
                assert noted.apply_async((1,), channel=name).get(timeout=20) == 1
            wait_for(lambda: sum(k == "complete" for k, _ in got) == 3, 20, "3 complete events")
    finally:
        app.events.stop()
    channels = {app.channel(n).name for n in three_names}
    assert {c for k, c in got if k == "complete"} == channels


def test_flow_control_on_a_cluster(app: TaskPipe, cluster: RedisCluster) -> None:
    """Numbered priorities, a dedup key and a rate limit: every flow key of a channel (the dedup
    key included) lands in the channel's slot, so the put and claim scripts run there."""

    @app.task(name="flow.c", channel="emails", rate_limit="1/h")
    def limited(x: int) -> int:
        return x

    @app.task(name="flow.p", channel="emails")
    def plain(x: int) -> int:
        return x

    low = plain.apply_async((1,), priority=8).id
    high = plain.apply_async((2,), priority=1).id
    first = plain.apply_async((3,), unique=True)
    again = plain.apply_async((3,), unique=True)
    assert again.deduplicated and again.id == first.id
    ch = app.channel("emails")
    assert cluster.keyslot(ch.keys.unique("flow.p:x")) == cluster.keyslot(ch.keys.ids)
    rated = [limited.delay(i).id for i in range(2)]
    assert [c.id for c in ch.claim(10)] == [first.id, rated[0], high, low]
    assert ch.counts()["available"] == 1  # the second rated job waits for its slot
