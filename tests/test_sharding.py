"""Sharded channels (``TaskPipe(shards={...})``) on one Redis and on ``memory://``.

The shard names and their slot windows, bad input, how publishing picks a shard (round robin,
``shard_key``, custom id), the shard-count record, workers claiming every shard with a rotating
start, and the operators' view (inspector, CLI, metrics) of a sharded channel as one channel.
The Redis Cluster test (6 shards over 3 masters with replicas, a SIGKILL and a failover) is in
``tests/test_cluster_shards.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

import taskpipe.cli.admin  # noqa: F401  (registers the commands)
from taskpipe import ShardCountChanged, TaskPipe
from taskpipe.cli import cli
from taskpipe.connection import key_slot
from taskpipe.errors import ConfigError
from taskpipe.inspection import Inspector
from taskpipe.sharding import shard_index
from taskpipe.testing import run_until_idle
from taskpipe.thoonk.shards import MAX_SHARDS, SLOTS, parse_shard, shard_names
from taskpipe.worker.worker import Worker


@pytest.fixture
def sharded(broker_url: str, prefix: str) -> Iterator[TaskPipe]:
    a = TaskPipe(broker=broker_url, prefix=prefix, shards={"emails": 3})
    yield a
    a.close()


def _register(app: TaskPipe, seen: list[Any]) -> Any:
    @app.task(name="t.note", channel="emails")
    def note(key: str, n: int) -> int:
        seen.append((key, n))
        return n

    return note


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3, 6, 8, MAX_SHARDS])
def test_shard_names_spread_over_the_slot_range(count: int) -> None:
    names = shard_names("emails", count)
    assert len(set(names)) == count
    for i, name in enumerate(names):
        # the whole name is the hash tag, in the i-th of `count` equal slot windows
        assert name.startswith("{") and name.endswith("}")
        assert i * SLOTS // count <= key_slot(name) < (i + 1) * SLOTS // count
        assert (
            key_slot("feed.ids:" + name) == key_slot("feed.result:" + name + ":x") == key_slot(name)
        )
        assert parse_shard(name) == ("emails", i)
    assert shard_names("emails", count) == names  # deterministic: every process agrees
    assert shard_names("emails", 1) == ["emails"]  # one shard: the plain Thoonk channel
    assert parse_shard("emails") is None and parse_shard("{emails}") is None


def test_bad_shard_settings_are_refused() -> None:
    for bad in (0, -1, MAX_SHARDS + 1, True, "2", 1.5, None):
        with pytest.raises(ConfigError, match="shards for channel"):
            TaskPipe(broker="memory://", shards={"emails": bad})  # type: ignore[dict-item]
    for name in ("{emails}", "mail:{eu}", "a}b", ""):
        with pytest.raises(ConfigError):
            TaskPipe(broker="memory://", shards={name: 4})
    with pytest.raises(ConfigError, match="mapping"):
        TaskPipe(broker="memory://", shards=[("emails", 2)])  # type: ignore[arg-type]
    TaskPipe(broker="memory://", shards={"{emails}": 1}).close()  # one shard: nothing to tag
    with TaskPipe(broker="memory://", shards={"emails": 2}) as app:
        with pytest.raises(ConfigError, match="shard_key"):
            app.send("t.x", channel="emails", shard_key=7)

        @app.task(channel="emails", raw=True)
        def raw(item: bytes) -> bytes:
            return item

        with pytest.raises(ConfigError, match="raw"):
            app.send("t.x", channel="emails")


# --- publishing ------------------------------------------------------------------------------


def test_round_robin_spreads_and_a_worker_runs_every_shard(sharded: TaskPipe) -> None:
    seen: list[Any] = []
    note = _register(sharded, seen)
    results = [note.delay("k", i) for i in range(30)]
    shards = sharded.sharding.names("emails")
    per_shard = {name: sum(r.channel == name for r in results) for name in shards}
    assert per_shard == {name: 10 for name in shards}  # exact round robin
    results += note.map([("m", i) for i in range(9)])  # Task.map spreads too
    assert {r.channel for r in results[30:]} == set(shards)
    stats = run_until_idle(sharded, ["emails"])
    assert stats["finished"] == 39
    assert sorted(n for k, n in seen if k == "k") == list(range(30))
    assert [r.get(timeout=5) for r in results[:30]] == list(range(30))


def test_shard_key_keeps_one_keys_order(sharded: TaskPipe) -> None:
    seen: list[Any] = []
    note = _register(sharded, seen)
    keys = [f"user{i}" for i in range(6)]
    for n in range(15):
        for key in keys:
            r = note.apply_async((key, n), shard_key=key)
            assert r.channel == sharded.sharding.names("emails")[shard_index(key, 3)]
    assert len({shard_index(k, 3) for k in keys}) > 1  # the keys do spread over shards
    run_until_idle(sharded, ["emails"], concurrency=1)
    for key in keys:  # one worker slot: every key's jobs ran in publish order
        assert [n for k, n in seen if k == key] == list(range(15))


def test_custom_id_always_maps_to_one_shard(sharded: TaskPipe) -> None:
    seen: list[Any] = []
    note = _register(sharded, seen)
    first = note.apply_async(("a", 1), id="order-42")
    again = note.apply_async(("a", 2), id="order-42")  # idempotent: the first job stands
    assert (
        first.channel
        == again.channel
        == sharded.sharding.names("emails")[shard_index("order-42", 3)]
    )
    assert sharded.AsyncResult("order-42", "emails").channel == first.channel
    other = sharded.send("t.note", ("b", 3), id="order-43", channel="emails", delay=0.01)
    assert other.channel == sharded.AsyncResult("order-43", "emails").channel
    run_until_idle(sharded, ["emails"])
    assert sorted(seen) == [("a", 1), ("b", 3)]
    assert sharded.AsyncResult("order-42", "emails").get(timeout=5) == 1


# --- the shard-count record ------------------------------------------------------------------


def test_changing_the_shard_count_of_a_channel_with_jobs_is_refused(
    broker_url: str, prefix: str
) -> None:
    if broker_url.startswith("memory"):
        pytest.skip("two apps must share one broker: real Redis only")
    with TaskPipe(broker=broker_url, prefix=prefix, shards={"emails": 3}) as three:
        three.send("t.x", channel="emails")
        assert three.thoonk.client.hget(three.thoonk.keys.shard_counts(), "emails") == b"3"
        with TaskPipe(broker=broker_url, prefix=prefix, shards={"emails": 2}) as other:
            with pytest.raises(ShardCountChanged, match="3 shard"):
                other.send("t.x", channel="emails")
            with pytest.raises(ShardCountChanged):
                Worker(other, ["emails"])
        with TaskPipe(broker=broker_url, prefix=prefix) as unsharded:
            # publishing to a one-shard channel costs no extra round trip (no check); its
            # workers check, so nobody consumes the plain channel while the shards hold jobs
            with pytest.raises(ShardCountChanged, match="3 shard"):
                Worker(unsharded, ["emails"])
        run_until_idle(three, ["emails"])  # drained (the job stalls: no such task) ...
        inspector = Inspector(three)
        for shard in inspector.shards("emails"):
            for job_id in three.thoonk.job_channel(shard).stalled_ids():
                three.thoonk.job_channel(shard).retract(job_id)
    with TaskPipe(broker=broker_url, prefix=prefix, shards={"emails": 2}) as two:
        two.send("t.x", channel="emails")  # ... so another count is accepted and recorded
        assert two.thoonk.client.hget(two.thoonk.keys.shard_counts(), "emails") == b"2"
    with TaskPipe(broker=broker_url, prefix=prefix) as plain:
        plain.send("t.x", channel="legacy")  # jobs in the plain (one-shard) layout
        with TaskPipe(broker=broker_url, prefix=prefix, shards={"legacy": 4}) as four:
            with pytest.raises(ShardCountChanged, match="1 shard"):
                Worker(four, ["legacy"])
            with pytest.raises(ShardCountChanged, match="1 shard"):
                four.send("t.x", channel="legacy")


# --- claiming --------------------------------------------------------------------------------


def test_worker_claims_every_shard_with_a_rotating_start(sharded: TaskPipe) -> None:
    worker = Worker(sharded, ["high", "emails", "low"])
    names = [ch.name for ch in worker.channels]
    shards = sharded.sharding.names("emails")
    assert names == ["high", *shards, "low"]
    starts = []
    for _ in range(6):
        order = [ch.name for ch in worker._ordered_channels()]
        assert order[0] == "high" and order[-1] == "low"  # -Q order between channels
        assert sorted(order[1:4]) == sorted(shards)
        i = shards.index(order[1])
        assert order[1:4] == shards[i:] + shards[:i]  # the shards in turn, from a rotating start
        starts.append(order[1])
    assert set(starts) == set(shards)  # every shard gets to go first: none starves
    # the wait blocks on every shard's wake-up list at once (no polling shard after shard)
    assert {ch.keys.wake for ch in worker.channels} >= {
        sharded.thoonk.keys.job(s).wake for s in shards
    }


def test_pause_delay_and_priority_on_a_sharded_channel(sharded: TaskPipe) -> None:
    seen: list[Any] = []
    note = _register(sharded, seen)
    inspector = Inspector(sharded)
    for i in range(6):
        note.delay("p", i)
    inspector.pause("emails")
    assert all(sharded.channel(s).paused for s in sharded.sharding.names("emails"))
    assert run_until_idle(sharded, ["emails"]).get("finished", 0) == 0
    inspector.resume("emails")
    later = note.apply_async(("d", 0), delay=0.2)
    urgent = note.apply_async(("u", 0), priority=True)
    assert inspector.channel_counts("emails")["delayed"] == 1
    run_until_idle(sharded, ["emails"])  # waits for a delayed job due soon
    assert later.get(timeout=5) == 0 and urgent.get(timeout=5) == 0
    assert len(seen) == 8


# --- the operators' view ---------------------------------------------------------------------


def test_inspector_cli_and_metrics_show_one_channel_with_shards(
    sharded: TaskPipe, broker_url: str
) -> None:
    seen: list[Any] = []
    note = _register(sharded, seen)
    results = [note.delay("v", i) for i in range(7)]
    inspector = Inspector(sharded)
    shards = sharded.sharding.names("emails")
    assert "emails" in inspector.channels() and not set(shards) & set(inspector.channels())
    assert inspector.shards("emails") == shards
    row = next(r for r in inspector.overview() if r["channel"] == "emails")
    assert row["available"] == 7 and row["published_total"] == 7
    assert [s["channel"] for s in row["shards"]] == shards
    assert sum(s["available"] for s in row["shards"]) == 7
    with pytest.raises(ConfigError, match="sharded over 3"):
        inspector.channel("emails")
    listed, cursor = [], None  # one listing walks every shard
    while True:
        page = inspector.list_jobs("emails", "available", cursor, limit=2)
        assert page.total == 7
        listed += [r.id for r in page.rows]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(listed) == sorted(r.id for r in results)
    detail = inspector.job_detail("emails", results[4].id)  # found in its shard
    assert detail.channel == results[4].channel and detail.state == "available"
    assert inspector.find_job(results[4].id) == [results[4].channel]
    if broker_url.startswith("redis"):  # the CLI is another client: real Redis only
        args = ["--broker", broker_url, "--prefix", sharded.prefix]
        out = CliRunner().invoke(cli, ["status", *args, "--json"])
        assert out.exit_code == 0, out.output
        data = json.loads(out.output)
        (emails,) = [c for c in data["channels"] if c["channel"] == "emails"]
        assert emails["available"] == 7 and len(emails["shards"]) == 3
        table = CliRunner().invoke(cli, ["status", *args])
        assert all(s in table.output for s in ["emails", *shards])
        listing = CliRunner().invoke(cli, ["jobs", "list", *args, "-c", "emails", "--json"])
        assert listing.exit_code == 0, listing.output
        shown = CliRunner().invoke(cli, ["jobs", "show", results[2].id, *args, "-c", "emails"])
        assert shown.exit_code == 0 and results[2].id in shown.output
    pytest.importorskip("prometheus_client")
    from taskpipe.contrib.metrics import build_registry, render

    registry, _ = build_registry(sharded)
    text = render(registry)[0].decode()
    assert 'taskpipe_queue_depth{channel="emails",state="available"} 7.0' in text
    for shard in shards:
        assert f'taskpipe_shard_depth{{channel="emails",shard="{shard}",state="available"}}' in text


def test_dashboard_api_shows_one_channel_and_acts_on_its_shards(sharded: TaskPipe) -> None:
    from taskpipe.contrib.dashboard.api import DashboardAPI

    seen: list[Any] = []
    note = _register(sharded, seen)
    results = [note.delay("d", i) for i in range(5)]
    api = DashboardAPI(sharded)
    status, data = api.handle("GET", ["overview"], {})
    assert status == 200
    (row,) = [c for c in data["channels"] if c["channel"] == "emails"]
    assert row["available"] == 5 and len(row["shards"]) == 3
    status, page = api.handle("GET", ["channels", "emails", "jobs"], {"limit": "10"})
    assert status == 200 and sorted(r["id"] for r in page["rows"]) == sorted(r.id for r in results)
    assert page["counts"]["available"] == 5
    status, detail = api.handle("GET", ["channels", "emails", "jobs", results[1].id], {})
    assert status == 200 and detail["channel"] == results[1].channel
    status, done = api.handle("POST", ["channels", "emails", "jobs", results[1].id, "retract"], {})
    assert status == 200 and done["state"] == "unknown"
    status, _ = api.handle("POST", ["channels", "emails", "pause"], {})
    assert status == 200 and all(
        sharded.channel(s).paused for s in sharded.sharding.names("emails")
    )


def test_an_idle_worker_wakes_on_a_publish_to_any_shard(sharded: TaskPipe) -> None:
    from taskpipe.testing import running_worker

    seen: list[Any] = []
    note = _register(sharded, seen)
    with pytest.raises(ConfigError, match="sharded"):
        sharded.channel("emails")  # the logical name is not one channel
    with running_worker(sharded, ["emails"], concurrency=1):
        for key in ("k1", "k2", "k3", "g", "b", "a"):  # keys spread over every shard
            assert note.apply_async((key, 1), shard_key=key).get(timeout=30) == 1
    assert {shard_index(k, 3) for k in ("k1", "k2", "k3")} == {0, 1, 2}


def test_worker_cli_does_not_take_a_sharded_name_for_a_typo(sharded: TaskPipe) -> None:
    from taskpipe.cli.worker_cmd import unknown_channels

    assert unknown_channels(sharded, ["emails", "emials"]) == ["emials"]


def test_clean_a_sharded_channel(sharded: TaskPipe) -> None:
    seen: list[Any] = []
    note = _register(sharded, seen)
    for i in range(7):
        note.delay("c", i)
    run_until_idle(sharded, ["emails"])
    inspector = Inspector(sharded)
    assert inspector.count_cleanable("emails", "finished", 0, now_ms=2**62) == 7
    report = inspector.clean("emails", "finished", 0, now_ms=2**62)  # every shard, one report
    assert report.removed == 7 and inspector.channel_counts("emails")["finished"] == 0


def test_events_follow_every_shard_of_a_sharded_channel(sharded: TaskPipe) -> None:
    # app.listen(["emails"]) (and so `taskpipe events -A app -Q emails`) refused the logical
    # name with "channel 'emails' is sharded", though a worker's -Q takes it
    from polling import wait_for

    seen: list[Any] = []
    note = _register(sharded, seen)
    done: list[str] = []
    sharded.on("complete", lambda job: done.append(job.channel))
    sharded.listen(["emails"])
    try:
        for key in ("k1", "k2", "k3"):  # one job on each shard
            note.apply_async((key, 1), shard_key=key)
        run_until_idle(sharded, ["emails"])
        wait_for(lambda: len(done) == 3, 10, "a complete event from every shard")
        assert sorted(done) == sorted(sharded.sharding.names("emails"))
    finally:
        sharded.events.stop()
