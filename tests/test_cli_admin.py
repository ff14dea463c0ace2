"""The maintenance CLI (``taskpipe status``, ``jobs ...``, ``pause``/``resume``, ``tasks``,
``publish``) run for real against a real Redis holding jobs in every state: CliRunner on the
``cli`` group, and real ``python -m taskpipe`` subprocesses (with real SIGINT for ``--follow``)."""

from __future__ import annotations

import importlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import taskpipe.cli.admin  # noqa: F401  (registers the commands)
from taskpipe.cli import cli
from taskpipe.errors import FeedDoesNotExist
from taskpipe.inspection import LIST_STATES, Inspector
from taskpipe.inspection.follow import _Overlap
from taskpipe.serialization import encode_envelope
from taskpipe.thoonk.job import FinishRequest, PutRequest
from taskpipe.worker import Worker

APP_SOURCE = """
import os, threading
from taskpipe import TaskPipe, current_job

app = TaskPipe(broker=os.environ["CLITEST_BROKER"], prefix=os.environ["CLITEST_PREFIX"])
gate = threading.Event()

@app.task(name="t.add")
def add(a, b):
    current_job().log(f"adding {a}+{b}")
    return a + b

@app.task(name="t.fail")
def fail(msg):
    raise ValueError(msg)

@app.task(name="t.gated")
def gated(n):
    ctx = current_job()
    ctx.log("started")
    gate.wait(60)
    for i in range(n):
        ctx.log(f"line {i}")
        ctx.progress(i + 1, n)
    return n

@app.task(name="t.report", channel="reports", retries=2, result_ttl="1h")
def report(x):
    return x
"""

HOUR_MS = 3_600_000


@pytest.fixture
def env(
    redis_server: Any, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A fresh app module (unique name) on the test's prefix, importable by -A and subprocesses."""
    modname = f"cliapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{modname}.py").write_text(APP_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CLITEST_BROKER", redis_server.url)
    monkeypatch.setenv("CLITEST_PREFIX", prefix)
    monkeypatch.delenv("TASKPIPE_APP", raising=False)
    mod = importlib.import_module(modname)
    proc_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]),
        "TASKPIPE_BROKER_URL": redis_server.url,
        "TASKPIPE_PREFIX": prefix,
    }
    procs: list[subprocess.Popen[str]] = []  # started by cli_proc; reaped and closed here
    yield {
        "mod": mod,
        "app": mod.app,
        "modname": modname,
        "url": redis_server.url,
        "prefix": prefix,
        "proc_env": proc_env,
        "path": f"{modname}:app",
        "procs": procs,
    }
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes its pipes
    mod.gate.set()
    mod.app.close()
    sys.modules.pop(modname, None)


def run(env: dict[str, Any], *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(
        cli,
        list(args),
        catch_exceptions=False,
        env={"TASKPIPE_BROKER_URL": env["url"], "TASKPIPE_PREFIX": env["prefix"]},
    )
    assert result.exit_code == code, (args, result.output)
    return result


def run_json(env: dict[str, Any], *args: str) -> Any:
    return json.loads(run(env, *args, "--json").stdout)


def cli_proc(env: dict[str, Any], *args: str, **kw: Any) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskpipe", *args],
        env=env["proc_env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )
    env["procs"].append(proc)
    return proc


@pytest.fixture
def jobs(env: dict[str, Any]) -> dict[str, str]:
    """Jobs in every state on channel 'default' (and one on 'reports'); returns their ids."""
    mod, app = env["mod"], env["app"]
    ch = app.channel("default")
    ok, bad = mod.add.delay(1, 2), mod.fail.delay("kaput")
    Worker(app, ["default"], concurrency=2, burst=True).run()
    assert ok.get(timeout=10) == 3 and bad.failed()
    claimed, stalled = mod.add.delay(10, 10), mod.add.delay(20, 20)
    assert ch.get_claim(timeout=None, worker="w-test").id == claimed.id  # oldest first
    assert ch.get_claim(timeout=None, worker="w-test").id == stalled.id
    ch.stall(stalled.id, reason="bad_payload: operator test \x1b[31m")
    avail = [mod.add.delay(i, i).id for i in range(3)]
    raw = ch.put(b"\xff\x00raw-bytes")
    delayed = mod.add.apply_async((5, 5), delay="1h", kwargs={})
    report = mod.report.delay({"k": b"\x00bin"})
    return {
        "ok": ok.id,
        "failed": bad.id,
        "claimed": claimed.id,
        "stalled": stalled.id,
        "a0": avail[0],
        "a1": avail[1],
        "a2": avail[2],
        "raw": raw,
        "delayed": delayed.id,
        "report": report.id,
    }


# status -----------------------------------------------------------------------------------------
def test_status_counts_every_state(env: dict[str, Any], jobs: dict[str, str]) -> None:
    data = run_json(env, "status")
    by = {c["channel"]: c for c in data["channels"]}
    assert set(by) == {"default", "reports"}
    d = by["default"]
    assert (d["available"], d["delayed"], d["claimed"], d["stalled"], d["finished"]) == (
        4,
        1,
        1,
        1,
        2,
    )
    assert d["failed_total"] == 1 and d["paused"] is False
    assert by["reports"]["available"] == 1
    table = run(env, "status").stdout
    assert "CHANNEL" in table and "default" in table and "reports" in table
    assert "0 live worker(s)" in table


@pytest.mark.timeout(60)
def test_status_shows_live_worker_and_its_job(env: dict[str, Any]) -> None:
    mod = env["mod"]
    res = mod.gated.delay(2)
    w = Worker(env["app"], ["default"], concurrency=1, heartbeat_interval=0.1, name="w-live")
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            workers = run_json(env, "status")["workers"]
            if workers and workers[0]["jobs"]:
                break
            assert time.monotonic() < deadline, workers
            time.sleep(0.1)
        assert workers[0]["name"] == "w-live" and workers[0]["jobs"] == [f"default/{res.id}"]
        assert "w-live" in run(env, "status").stdout
    finally:
        mod.gate.set()
        w.stop()
        t.join(20)
    assert res.get(timeout=10) == 2


# listing ----------------------------------------------------------------------------------------
def test_list_each_state(env: dict[str, Any], jobs: dict[str, str]) -> None:
    def ids(state: str, channel: str = "default") -> list[str]:
        page = run_json(env, "jobs", "list", "-c", channel, "--state", state)
        return [r["id"] for r in page["rows"]]

    assert ids("available") == [
        jobs["a0"],
        jobs["a1"],
        jobs["a2"],
        jobs["raw"],
    ]  # next to run first
    assert ids("delayed") == [jobs["delayed"]]
    assert ids("claimed") == [jobs["claimed"]]
    assert ids("stalled") == [jobs["stalled"]]
    assert set(ids("finished")) == {jobs["ok"], jobs["failed"]}
    assert ids("failed") == [jobs["failed"]]
    assert ids("available", "reports") == [jobs["report"]]
    rows = {r["id"]: r for r in run_json(env, "jobs", "list", "-s", "finished")["rows"]}
    assert rows[jobs["ok"]]["outcome"] == "ok"
    assert rows[jobs["failed"]]["outcome"] == "failed"
    assert rows[jobs["failed"]]["error"] == "ValueError: kaput"
    claimed = run_json(env, "jobs", "list", "-s", "claimed")["rows"][0]
    assert claimed["worker"] == "w-test" and claimed["task"] == "t.add"
    assert claimed["lease_deadline_ms"] > claimed["when_ms"]
    stalled = run_json(env, "jobs", "list", "-s", "stalled")["rows"][0]
    assert stalled["reason"] == "bad_payload: operator test \\x1b[31m"  # escaped, terminal-safe
    text = run(env, "jobs", "list").stdout
    assert "(not an envelope)" in text and "t.add" in text
    assert "\x1b" not in run(env, "jobs", "list", "-s", "stalled").stdout


@pytest.mark.parametrize("state", [s.value for s in LIST_STATES])
def test_list_prints_a_table_for_every_state(
    env: dict[str, Any], jobs: dict[str, str], state: str
) -> None:
    # the table had headers for the first six states only: `jobs list -s waiting` (and aborted,
    # expired) died with a KeyError traceback once those states were added
    out = run(env, "jobs", "list", "-s", state)
    assert "Traceback" not in out.output and f"{state} job(s) in 'default'" in out.output
    rows = run_json(env, "jobs", "list", "-s", state)["rows"]
    first_line = out.stdout.splitlines()[0]
    assert first_line.startswith("ID ") if rows else first_line == f"no {state} jobs in 'default'"


def test_list_pages_cover_everything_once(env: dict[str, Any]) -> None:
    ch = env["app"].channel("default")
    item = encode_envelope("t.add", (1, 2), {}, {})
    ids = [f"job{i:04d}" for i in range(450)]
    ch.put_many([PutRequest(item, i) for i in ids])
    for _ in range(150):  # stall 150: big enough for a hashtable-encoded set (real SSCAN cursors)
        c = ch.get_claim(timeout=None)
        assert c is not None
        ch.stall(c.id, reason="x")
    for state, expected in (("available", ids[150:]), ("stalled", ids[:150])):
        seen: list[str] = []
        cursor: str | None = None
        while True:
            args = ["jobs", "list", "-s", state, "--limit", "37"] + (
                ["--cursor", cursor] if cursor else []
            )
            page = run_json(env, *args)
            assert len(page["rows"]) <= 37
            seen += [r["id"] for r in page["rows"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
    assert run(env, "jobs", "list", "--cursor", "nope", code=1).output.count("bad cursor") == 1


# show -------------------------------------------------------------------------------------------
def test_show_every_state(env: dict[str, Any], jobs: dict[str, str]) -> None:
    ok = run_json(env, "jobs", "show", jobs["ok"])  # channel found without --channel
    assert ok["state"] == "finished" and ok["result"] == {"ok": True, "value": 3}
    assert (
        ok["logs"] == [line for line in ok["logs"] if "adding 1+2" in line] and ok["log_total"] == 1
    )
    assert ok["timestamps"]["finished_ms"] and 0 < ok["result_ttl_ms"] <= 24 * HOUR_MS
    failed = run_json(env, "jobs", "show", jobs["failed"], "-c", "default")
    assert failed["state"] == "failed" and failed["result"]["exc_type"] == "ValueError"
    assert (
        failed["result"]["exc_message"] == "kaput"
        and "raise ValueError" in failed["result"]["traceback"]
    )
    text = run(env, "jobs", "show", jobs["failed"]).stdout
    assert "ValueError: kaput" in text and "traceback:" in text
    claimed = run_json(env, "jobs", "show", jobs["claimed"])
    assert claimed["state"] == "claimed" and claimed["worker"] == "w-test"
    assert claimed["payload"]["args"] == [10, 10] and claimed["task"] == "t.add"
    assert claimed["timestamps"]["claimed_ms"] and claimed["timestamps"]["lease_deadline_ms"]
    stalled = run_json(env, "jobs", "show", jobs["stalled"])
    assert stalled["state"] == "stalled" and stalled["reason"].startswith(
        "bad_payload: operator test"
    )
    delayed = run_json(env, "jobs", "show", jobs["delayed"])
    assert delayed["state"] == "delayed"
    assert delayed["timestamps"]["due_ms"] - delayed["server_time_ms"] > HOUR_MS - 60_000
    raw = run_json(env, "jobs", "show", jobs["raw"])
    assert raw["payload"] is None and "not a taskpipe job envelope" in raw["payload_error"]
    assert raw["raw_payload"] == {
        "size": 11,
        "truncated": False,
        "text": None,
        "base64": "/wByYXctYnl0ZXM=",
    }
    report = run_json(env, "jobs", "show", jobs["report"])
    assert report["channel"] == "reports" and report["payload"]["args"] == [
        {"k": {"$bytes": "AGJpbg=="}}
    ]
    assert "base64" in run(env, "jobs", "show", jobs["raw"]).stdout


def test_unknown_ids_and_channels_fail_cleanly(env: dict[str, Any], jobs: dict[str, str]) -> None:
    before = run_json(env, "status")["channels"]
    for args in (
        ("jobs", "show", "nope"),
        ("jobs", "retry", "nope"),
        ("jobs", "cancel", "nope"),
        ("jobs", "retract", "nope"),
        ("jobs", "logs", "nope"),
        ("jobs", "show", jobs["ok"], "-c", "reports"),
    ):
        assert "no job 'nope'" in run(env, *args, code=1).output or "reports" in args
    assert "no job channel named 'ghost'" in run(env, "jobs", "list", "-c", "ghost", code=1).output
    assert "ghost" not in {c["channel"] for c in run_json(env, "status")["channels"]}  # not created
    assert run_json(env, "status")["channels"] == before


# actions ----------------------------------------------------------------------------------------
def test_wrong_state_actions_change_nothing(env: dict[str, Any], jobs: dict[str, str]) -> None:
    before = run_json(env, "status")["channels"]
    cases = [
        ("retry", "a0", "is available, expected stalled"),
        ("cancel", "stalled", "is stalled, expected claimed"),
        ("stall", "delayed", "is delayed, expected claimed"),
        ("retry", "ok", "is finished, expected stalled"),
    ]
    for action, key, message in cases:
        assert message in run(env, "jobs", action, jobs[key], code=1).output
    assert run_json(env, "status")["channels"] == before


def test_cancel_stall_retry_retract(env: dict[str, Any], jobs: dict[str, str]) -> None:
    out = run_json(env, "jobs", "cancel", jobs["claimed"])
    assert out == {
        "ok": True,
        "action": "cancel",
        "id": jobs["claimed"],
        "channel": "default",
        "state": "available",
    }
    assert run_json(env, "jobs", "show", jobs["claimed"])["cancels"] == 1
    ch = env["app"].channel("default")
    assert ch.get_claim(timeout=None).id == jobs["a0"]
    assert "is now stalled" in run(env, "jobs", "stall", jobs["a0"], "--reason", "by hand").stdout
    assert ch.stall_reason(jobs["a0"]) == "by hand"
    assert run_json(env, "jobs", "retry", jobs["a0"])["state"] == "available"
    assert run_json(env, "jobs", "retry", jobs["stalled"], "--keep-counts")["state"] == "available"
    for key in ("a1", "ok", "delayed"):
        assert run_json(env, "jobs", "retract", jobs[key])["state"] == "unknown"
        assert ch.info(jobs[key]).state == "unknown"
    assert env["app"].AsyncResult(jobs["ok"]).logs() == []  # log went with it


def test_pause_and_resume(env: dict[str, Any], jobs: dict[str, str]) -> None:
    assert "no job channel named 'ghost'" in run(env, "pause", "default", "ghost", code=1).output
    assert not env["app"].channel("default").paused  # nothing changed
    assert run_json(env, "pause", "default", "reports") == {
        "ok": True,
        "paused": True,
        "channels": ["default", "reports"],
    }
    assert all(c["paused"] for c in run_json(env, "status")["channels"])
    assert "yes" in run(env, "status").stdout
    run(env, "resume", "reports")
    assert env["app"].channel("default").paused and not env["app"].channel("reports").paused


# clean ------------------------------------------------------------------------------------------
def _finish(env: dict[str, Any], n: int, tag: str) -> list[str]:
    ch = env["app"].channel("default")
    ids = [f"{tag}{i}" for i in range(n)]
    ch.put_many([PutRequest(b"x", i) for i in ids])
    claims: list[Any] = []
    while len(claims) < n:
        claims += ch.claim(count=min(500, n - len(claims)))
    for start in range(0, n, 500):
        ch.finish_many(
            [FinishRequest(c.id, c.token, b"r", HOUR_MS) for c in claims[start : start + 500]]
        )
    for i in ids:
        ch.log(i, ["a line"])
    return ids


def test_clean_finished_by_age(env: dict[str, Any]) -> None:
    app, client = env["app"], env["app"].connection.client
    ch = app.channel("default")
    old, recent = _finish(env, 2, "old"), _finish(env, 2, "new")
    now = Inspector(app).server_time_ms()
    client.zadd(ch.keys.finished, {i: now - 8 * 24 * HOUR_MS for i in old})
    # a live job with a stale index entry (published again between a finish and the clean)
    live = ch.put(b"again", id="live1")
    ch.log(live, ["live line"])
    client.zadd(ch.keys.finished, {live: now - 8 * 24 * HOUR_MS})
    dry = run_json(env, "jobs", "clean", "--state", "finished", "--older-than", "7d", "--dry-run")
    assert dry["removed"] == 3 and client.zcard(ch.keys.finished) == 5
    rep = run_json(env, "jobs", "clean", "--state", "finished", "--older-than", "7d")
    assert (rep["examined"], rep["removed"], rep["skipped"]) == (3, 2, 1)
    assert sorted(rep["ids"]) == sorted(old)
    for i in old:
        assert client.exists(ch.keys.result(i), ch.keys.log(i)) == 0
        assert ch.info(i).state == "unknown"
    assert ch.info(live).state == "available" and ch.logs(live) == [b"live line"]
    assert [ch.info(i).state for i in recent] == ["finished", "finished"]
    assert client.zcard(ch.keys.finished) == 2
    assert (
        "removed 0 finished job(s)"
        in run(env, "jobs", "clean", "-s", "finished", "--older-than", "7d").stdout
    )


def test_clean_large_run_in_batches(env: dict[str, Any]) -> None:
    ch = env["app"].channel("default")
    ids = _finish(env, 1200, "bulk")
    out = run(env, "jobs", "clean", "-s", "finished", "--older-than", "0", "--batch", "100")
    assert "removed 1200 finished job(s)" in out.stdout
    assert "cleaning finished jobs" in out.stderr  # the progress bar
    assert env["app"].connection.client.zcard(ch.keys.finished) == 0
    assert all(ch.info(i).state == "unknown" for i in ids[::97])


def test_clean_stalled(env: dict[str, Any], jobs: dict[str, str]) -> None:
    ch = env["app"].channel("default")
    rep = run_json(env, "jobs", "clean", "-s", "stalled", "--older-than", "7d")
    assert rep["removed"] == 0 and ch.info(jobs["stalled"]).state == "stalled"
    c = ch.get_claim(timeout=None)
    ch.stall(c.id, reason="second")
    rep = run_json(env, "jobs", "clean", "-s", "stalled", "--older-than", "0")
    assert rep["removed"] == 2 and sorted(rep["ids"]) == sorted([jobs["stalled"], c.id])
    assert ch.info(jobs["stalled"]).state == "unknown" and ch.stall_reason(jobs["stalled"]) == ""
    assert ch.counts()["available"] == 3 and ch.counts()["claimed"] == 1


def test_guarded_retract_skips_jobs_that_left_stalled(
    env: dict[str, Any], jobs: dict[str, str]
) -> None:
    ch = env["app"].channel("default")
    ch.retry(jobs["stalled"])  # an operator retried it after the scan saw it
    assert ch.retract_stalled_before([jobs["stalled"], jobs["a0"]], 2**62) == []
    assert (
        ch.info(jobs["stalled"]).state == "available" and ch.info(jobs["a0"]).state == "available"
    )


# logs -------------------------------------------------------------------------------------------
def test_logs_plain(env: dict[str, Any], jobs: dict[str, str]) -> None:
    ch = env["app"].channel("default")
    ch.log(jobs["claimed"], [f"l{i}" for i in range(5)] + ["evil \x1b]0;title\x07"])
    lines = run(env, "jobs", "logs", jobs["claimed"]).stdout.splitlines()
    assert lines == ["l0", "l1", "l2", "l3", "l4", "evil \\x1b]0;title\\x07"]
    assert run_json(env, "jobs", "logs", jobs["claimed"], "--tail", "2")["lines"][0] == "l4"


def _reader(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


@pytest.mark.timeout(90)
def test_follow_subprocess_until_the_job_finishes(env: dict[str, Any]) -> None:
    mod = env["mod"]
    res = mod.gated.delay(3)
    w = Worker(env["app"], ["default"], concurrency=1)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not any(line.endswith("started") for line in res.logs()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc = cli_proc(env, "jobs", "logs", res.id, "--follow", "--timeout", "60s")
        q = _reader(proc)
        first = q.get(timeout=30)
        assert first is not None and first.endswith("started")  # the backlog
        mod.gate.set()  # now the live lines
        out = []
        while (line := q.get(timeout=30)) is not None:
            out.append(line)
        assert proc.wait(30) == 0
        assert [x.split(" ", 1)[1] for x in out if not x.startswith("[")] == [
            "line 0",
            "line 1",
            "line 2",
        ]
        assert [x for x in out if x.startswith("[progress]")] == [
            "[progress] 1/3",
            "[progress] 2/3",
            "[progress] 3/3",
        ]
        assert proc.stderr is not None and "finished" in proc.stderr.read()
    finally:
        mod.gate.set()
        w.stop()
        t.join(20)


@pytest.mark.timeout(60)
def test_follow_ends_on_stall_times_out_and_stops_on_sigint(
    env: dict[str, Any], jobs: dict[str, str]
) -> None:
    events = run(env, "jobs", "logs", jobs["stalled"], "--follow", "--json").stdout.splitlines()
    assert json.loads(events[-1]) == {"event": "end", "id": jobs["stalled"], "data": "stalled"}
    assert (
        "still available"
        in run(env, "jobs", "logs", jobs["a0"], "-f", "--timeout", "0.5s", code=124).output
    )
    client = env["app"].connection.client
    events_channel = env["app"].channel("default").keys.ch_events
    proc = cli_proc(env, "jobs", "logs", jobs["a1"], "--follow")
    deadline = time.monotonic() + 30
    while client.pubsub_numsub(events_channel)[0][1] == 0:  # subscribed: now interrupt it
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130


def test_overlap_drops_lines_seen_twice() -> None:
    ov = _Overlap(["a", "b", "c"])
    assert ov.feed("b") == [] and ov.feed("c") == [] and ov.feed("d") == ["d"]
    assert ov.feed("e") == ["e"]
    ov = _Overlap(["a", "b"])
    assert ov.feed("x") == ["x"]
    ov = _Overlap(["a", "b", "c"])
    assert ov.feed("a") == [] and ov.flush() == ["a"]  # "a" is not a suffix of the backlog: new
    assert _Overlap([]).feed("z") == ["z"]


# tasks and publish ------------------------------------------------------------------------------
def test_tasks_lists_registered_tasks(env: dict[str, Any]) -> None:
    data = {t["name"]: t for t in run_json(env, "tasks", "-A", env["path"])}
    assert set(data) == {"t.add", "t.fail", "t.gated", "t.report"}
    assert data["t.report"]["channel"] == "reports"
    assert data["t.report"]["set"] == {"channel": "reports", "retries": 2, "result_ttl": "1h"}
    assert "retries=2" in run(env, "tasks", "-A", env["path"]).stdout
    assert "Missing option" in run(env, "tasks", code=2).output
    assert (
        "not both" in run(env, "status", "-A", env["path"], "--broker", env["url"], code=2).output
    )


def test_publish_from_a_shell(env: dict[str, Any]) -> None:
    proc = cli_proc(env, "publish", "t.add", "--args", "[2, 3]", "--kwargs", "{}")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    job_id = out.strip()
    detail = run_json(env, "jobs", "show", job_id)
    assert detail["state"] == "available" and detail["payload"]["args"] == [2, 3]
    prio = run_json(
        env,
        "publish",
        "t.add",
        "--args",
        "[0, 0]",
        "--priority",
        "--id",
        "p1",
        "--result-ttl",
        "5m",
    )
    assert prio == {"id": "p1", "channel": "default", "task": "t.add"}
    assert run_json(env, "jobs", "list")["rows"][0]["id"] == "p1"  # head of the queue
    assert run_json(env, "jobs", "show", "p1")["payload"]["options"] == {"result_ttl": 300.0}
    assert run_json(env, "publish", "t.add", "--id", "p1")["id"] == "p1"  # not doubled
    assert env["app"].channel("default").counts()["available"] == 2
    run(env, "publish", "t.report", "--args", '["x"]', "-A", env["path"], "--delay", "10m")
    assert env["app"].channel("reports").counts()["delayed"] == 1  # task's channel from -A
    run(env, "publish", "other.task", "-c", "reports", "--eta", "2999-01-01T00:00:00+00:00")
    assert env["app"].channel("reports").counts()["delayed"] == 2
    assert "not valid JSON" in run(env, "publish", "t.add", "--args", "[1,", code=2).output
    assert "JSON array" in run(env, "publish", "t.add", "--args", '{"a": 1}', code=2).output
    assert "invalid duration" in run(env, "publish", "t.add", "--delay", "soon", code=1).output
    assert env["app"].channel("default").counts()["available"] == 2  # no stray job


# the CLI reads in pages -------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_commands_never_read_unbounded(
    env: dict[str, Any], jobs: dict[str, str], redis_server: Any
) -> None:
    ch = env["app"].channel("default")
    item = encode_envelope("t.add", (1, 2), {}, {})
    ch.put_many([PutRequest(item) for _ in range(3000)])
    seen: list[list[str]] = []
    marker = f"stop-{uuid.uuid4().hex}"
    started = threading.Event()

    def watch() -> None:
        with redis_server.client().monitor() as m:
            started.set()
            for cmd in m.listen():
                if marker in cmd["command"]:
                    return
                seen.append(cmd["command"].split())

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    started.wait(10)
    for args in (
        ("status",),
        ("jobs", "list", "--limit", "25"),
        ("jobs", "list", "-s", "stalled"),
        ("jobs", "list", "-s", "finished"),
        ("jobs", "list", "-s", "failed"),
        ("jobs", "show", jobs["claimed"]),
        ("jobs", "logs", jobs["ok"]),
        ("jobs", "clean", "-s", "finished", "--older-than", "0", "--dry-run"),
    ):
        run(env, *args, "--json")
    redis_server.client().echo(marker)
    t.join(20)
    mine = [c for c in seen if any(env["prefix"] in a for a in c)]
    assert len(mine) > 20
    names = {c[0].strip('"').upper() for c in mine}
    assert not names & {"KEYS", "SMEMBERS", "HKEYS", "HVALS", "SCAN"}, names
    for c in mine:
        name, params = c[0].strip('"').upper(), [a.strip('"') for a in c[1:]]
        if name in ("LRANGE", "ZRANGE", "ZREVRANGE"):
            lo, hi = int(params[1]), int(params[2])
            assert (lo >= 0) == (hi >= 0) and hi - lo < 1000, c
        if name == "HGETALL":
            assert "taskpipe.worker:" in params[0], c
        if name == "ZRANGEBYSCORE" and "taskpipe.workers" not in params[0]:
            assert "LIMIT" in [a.upper() for a in params], c


# the read layer on both brokers -----------------------------------------------------------------
def test_inspector_api_on_real_redis_and_memory(broker_url: str, prefix: str) -> None:
    from taskpipe import TaskPipe

    app = TaskPipe(broker=broker_url, prefix=prefix)
    try:
        ch = app.channel("default")
        item = encode_envelope("t.x", (1,), {"k": "v"}, {})
        ids = [ch.put(item) for _ in range(4)]
        c = ch.get_claim(timeout=None, worker="w1")
        assert c is not None and c.id == ids[0]
        ch.stall(c.id, reason="why")
        ch.log(ids[1], ["hello"])
        insp = Inspector(app)
        assert insp.channels() == ["default"]
        assert insp.channel_counts("default")["available"] == 3
        page = insp.list_jobs("default", "available", limit=2)
        assert [r.id for r in page.rows] == ids[1:3] and page.next_cursor == "2" and page.total == 3
        assert [r.id for r in insp.list_jobs("default", "available", page.next_cursor).rows] == [
            ids[3]
        ]
        assert insp.list_jobs("default", "stalled").rows[0].reason == "why"
        detail = insp.job_detail("default", ids[1])
        assert detail.payload == {
            "task": "t.x",
            "args": [1],
            "kwargs": {"k": "v"},
            "options": {},
            "serializer": "msgpack",
        }
        assert detail.logs == ["hello"] and insp.find_job(ids[1]) == ["default"]
        events = list(insp.follow("default", c.id, timeout=5))
        assert events[-1].kind == "end" and events[-1].data == "stalled"
        report = insp.clean("default", "stalled", 0)
        assert report.removed == 1 and ch.info(c.id).state == "unknown"
        with pytest.raises(FeedDoesNotExist, match="no job channel named 'nope'"):
            insp.list_jobs("nope", "available")
        assert not app.thoonk.exists("nope")
    finally:
        app.close()


def test_follow_names_how_an_ended_job_ended() -> None:
    # a timed-out, aborted or expired job was followed to "-- job <id> finished" (only a plain
    # failure was told apart), from the live finish message and from the state read alike
    from datetime import datetime, timezone

    from taskpipe import TaskPipe
    from taskpipe.inspection.follow import _parse, follow
    from taskpipe.serialization import encode_failure

    with TaskPipe(broker="memory://", prefix="follow-end:") as app:

        @app.task(name="f.busy", timeout="50ms")
        def busy() -> None:
            while True:
                pass

        @app.task(name="f.ok")
        def ok() -> int:
            return 1

        timed_out = busy.delay()
        expired = ok.apply_async(expires=datetime(2000, 1, 1, tzinfo=timezone.utc))
        done = ok.delay()
        Worker(app, ["default"], burst=True, concurrency=1, heartbeat_interval=60).run()
        aborted = ok.delay()
        ch = app.channel()
        assert ch.get(timeout=5) is not None  # claimed, as by a worker
        aborted.abort(by="test")
        ids = {"timeout": timed_out.id, "expired": expired.id, "aborted": aborted.id}
        ids["finished"] = done.id
        ends = {
            name: [ev.data for ev in follow(app, ch, job_id, backlog=0) if ev.kind == "end"]
            for name, job_id in ids.items()
        }
        assert ends == {k: [k] for k in ends}
        for exc_type, state in (("JobTimeout", "timeout"), ("JobAborted", "aborted")):
            message = b"j\0" + encode_failure(exc_type, "x", "", serializer=app.serializer)
            assert [ev.data for ev in _parse("j", ("finish", message), _Overlap([]))] == [state]
