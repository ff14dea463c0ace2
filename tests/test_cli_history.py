# ruff: noqa: F811 - the env fixture comes from test_cli_admin (imported by name)
"""The job-history CLI (issue 14): ``jobs requeue`` (one, --all, by task), ``jobs edit``,
``jobs find`` filters, ``jobs tasks`` (per-task breakdown), ``jobs empty``, ``jobs clean`` by
outcome, and their clear errors (nothing changed). CliRunner against a real Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result
from test_cli_admin import env  # noqa: F401 - the app-module fixture

import taskpipe.cli.admin
import taskpipe.cli.history_cmd  # noqa: F401
from taskpipe import TaskPipe
from taskpipe.cli import cli
from taskpipe.serialization import decode_envelope
from taskpipe.worker import Worker


def run(env: dict[str, Any], *args: str, code: int = 0, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(
        cli,
        list(args),
        catch_exceptions=False,
        input=stdin,
        env={"TASKPIPE_BROKER_URL": env["url"], "TASKPIPE_PREFIX": env["prefix"]},
    )
    assert result.exit_code == code, (args, result.output)
    return result


def run_json(env: dict[str, Any], *args: str) -> Any:
    return json.loads(run(env, *args, "--json").stdout)


@pytest.fixture
def ended(env: dict[str, Any]) -> dict[str, Any]:
    mod, app = env["mod"], env["app"]
    oks = [mod.add.delay(i, 1) for i in range(3)]
    bads = [mod.fail.delay(f"kaput {i}") for i in range(4)]
    Worker(app, ["default"], concurrency=2, burst=True).run()
    assert all(b.failed() for b in bads)
    return {"oks": oks, "bads": bads}


def test_find_filters_and_breakdown(env: dict[str, Any], ended: dict[str, Any]) -> None:
    out = run_json(env, "jobs", "find", "-s", "failed")
    assert {j["id"] for j in out["jobs"]} == {b.id for b in ended["bads"]}
    row = next(j for j in out["jobs"] if j["id"] == ended["bads"][2].id)
    assert row["task"] == "t.fail" and row["args"] == ["kaput 2"] and row["attempts"] == 1
    assert row["error"] == "ValueError: kaput 2" and row["worker"]
    assert [j["id"] for j in run_json(env, "jobs", "find", "--error", "KAPUT 3")["jobs"]] == [
        ended["bads"][3].id
    ]
    assert {j["id"] for j in run_json(env, "jobs", "find", "--task", "t.add")["jobs"]} == {
        r.id for r in ended["oks"]
    }
    assert run_json(env, "jobs", "find", "--since", "1h")["jobs"]
    assert run_json(env, "jobs", "find", "--until", "1h")["jobs"] == []
    text = run(env, "jobs", "find", "--task", "t.fail").stdout
    assert "t.fail" in text and "'kaput 0'" in text and "ValueError: kaput 0" in text
    assert (
        "expected a duration ago" in run(env, "jobs", "find", "--since", "someday", code=2).output
    )
    for endless in ("nan", "inf", "-1e400"):  # was a traceback (ValueError / OverflowError)
        assert (
            "expected a duration ago" in run(env, "jobs", "find", "--since", endless, code=2).output
        )
    breakdown = run_json(env, "jobs", "tasks")["tasks"]
    assert breakdown == {
        "t.add": {"succeeded": 3, "failed": 0, "timeout": 0, "aborted": 0},
        "t.fail": {"succeeded": 0, "failed": 4, "timeout": 0, "aborted": 0},
    }
    text = run(env, "jobs", "tasks").stdout
    assert "TASK" in text and "SUCCEEDED" in text and "t.fail" in text


def test_requeue_one_and_all(env: dict[str, Any], ended: dict[str, Any]) -> None:
    app = env["app"]
    one = ended["bads"][0]
    out = run_json(env, "jobs", "requeue", one.id)
    assert out["was"] == "failed" and out["state"] == "available"
    # bulk: preview and a "no" changes nothing
    res = run(env, "jobs", "requeue", "--all", stdin="n\n")
    assert "3 job(s)" in res.output and "nothing requeued" in res.output
    assert all(app.AsyncResult(b.id).state == "failed" for b in ended["bads"][1:])
    res = run(env, "jobs", "requeue", "--all", "--task", "t.add", "--yes")
    assert "nothing requeued (0 matching" in res.output
    res = run(env, "jobs", "requeue", "--all", "--task", "t.fail", "--yes")
    assert "requeued 3 job(s)" in res.output
    assert all(app.AsyncResult(b.id).state == "available" for b in ended["bads"])


def test_requeue_and_edit_refuse_bad_input(env: dict[str, Any], ended: dict[str, Any]) -> None:
    app, mod = env["app"], env["mod"]
    ok = ended["oks"][0]
    res = run(env, "jobs", "requeue", ok.id, code=1)
    assert "is succeeded, expected failed/timeout" in res.output
    assert app.AsyncResult(ok.id).state == "finished"
    run(env, "jobs", "requeue", code=2)  # neither id nor --all
    run(env, "jobs", "requeue", "no-such-id", code=1)
    # edit: a waiting job
    waiting = mod.add.apply_async((1, 2), delay="1h")
    run(env, "jobs", "edit", waiting.id, "--args", "[5, 6]")
    env_item = decode_envelope(app.channel().get_item(waiting.id))
    assert env_item.args == (5, 6) and env_item.task == "t.add"
    # malformed --args: a clear error, nothing changed
    res = run(env, "jobs", "edit", waiting.id, "--args", "[5, ", code=2)
    assert "not valid JSON" in res.output
    res = run(env, "jobs", "edit", waiting.id, "--args", '{"a": 1}', code=2)
    assert "JSON array" in res.output
    run(env, "jobs", "edit", waiting.id, code=2)  # nothing to change
    assert decode_envelope(app.channel().get_item(waiting.id)).args == (5, 6)
    # a claimed job: refused
    claimed = mod.add.delay(7, 7)
    assert app.channel().get_claim(timeout=None, worker="w").id == claimed.id
    res = run(env, "jobs", "edit", claimed.id, "--args", "[1, 1]", code=1)
    assert "claimed" in res.output
    assert decode_envelope(app.channel().get_item(claimed.id)).args == (7, 7)
    # an ended job: refused
    res = run(env, "jobs", "edit", ok.id, "-c", "default", "--args", "[1]", code=1)
    assert "expected available, delayed or stalled" in res.output


def test_empty_and_clean_by_outcome(env: dict[str, Any], ended: dict[str, Any]) -> None:
    app, mod = env["app"], env["mod"]
    claimed = mod.add.delay(9, 9)
    assert app.channel().get_claim(timeout=None, worker="w").id == claimed.id
    waiting = [mod.add.delay(i, i) for i in range(3)] + [mod.add.apply_async((0, 0), delay="1h")]
    res = run(env, "jobs", "empty", "default", stdin="n\n")
    assert "4 job(s)" in res.output and all(
        app.AsyncResult(w.id).state != "unknown" for w in waiting
    )
    assert run_json(env, "jobs", "empty", "default", "--yes")["retracted"] == 4
    assert all(app.AsyncResult(w.id).state == "unknown" for w in waiting)
    assert app.AsyncResult(claimed.id).state == "claimed"
    res = run(env, "jobs", "clean", "-s", "finished", "--older-than", "0")
    assert "removed 3 finished" in res.stdout and "kept 4" in res.stdout
    assert all(app.AsyncResult(b.id).state == "failed" for b in ended["bads"])
    res = run(env, "jobs", "clean", "-s", "failed", "--older-than", "0")
    assert "removed 4 failed" in res.stdout


def test_status_watch_redraws(env: dict[str, Any], ended: dict[str, Any]) -> None:
    out = run(env, "status", "--watch", "0.2", "--iterations", "2").stdout
    assert out.count("CHANNEL") == 2 and "default" in out
    run(env, "status", "--watch", "0", code=2)
    for endless in ("nan", "inf"):  # were tracebacks from time.sleep
        run(env, "status", "--watch", endless, "--iterations", "2", code=2)


def test_list_show_and_find_a_timed_out_job(env: dict[str, Any]) -> None:
    app: TaskPipe = env["app"]

    @app.task(name="t.slow", timeout=0.05)
    def slow() -> None:
        import time as _time

        end = _time.monotonic() + 5
        while _time.monotonic() < end:  # busy: the soft time limit interrupts it
            pass

    r = slow.delay()
    Worker(app, ["default"], concurrency=1, burst=True).run()
    assert r.state == "timeout"
    out = run_json(env, "jobs", "list", "-s", "timeout")
    assert [row["id"] for row in out["rows"]] == [r.id] and out["rows"][0]["task"] == "t.slow"
    text = run(env, "jobs", "list", "-s", "timeout").stdout
    assert r.id in text and "JobTimeout" in text
    shown = run_json(env, "jobs", "show", r.id)
    assert shown["state"] == "timeout" and shown["task"] == "t.slow" and shown["attempts"] == 1
    assert [j["id"] for j in run_json(env, "jobs", "find", "-s", "timeout")["jobs"]] == [r.id]


def test_an_aborted_job_is_listed_shown_found_requeued_and_cleaned(env: dict[str, Any]) -> None:
    app: TaskPipe = env["app"]
    r = env["mod"].add.delay(2, 3)
    assert [c.id for c in app.channel().claim(1, worker="w-9")] == [r.id]
    r.abort(by="ops")
    row = run_json(env, "jobs", "list", "-s", "aborted")["rows"][0]
    assert row["id"] == r.id and row["task"] == "t.add" and row["attempts"] == 1  # its record
    shown = run_json(env, "jobs", "show", r.id)
    assert shown["state"] == "aborted" and shown["task"] == "t.add" and shown["worker"] == "w-9"
    assert [j["id"] for j in run_json(env, "jobs", "find", "-s", "aborted")["jobs"]] == [r.id]
    assert run_json(env, "jobs", "tasks")["tasks"]["t.add"]["aborted"] == 1
    assert "ABORTED" in run(env, "jobs", "tasks").stdout
    # requeued only when asked for by outcome (an abort is an operator's decision)
    res = run(env, "jobs", "requeue", r.id, code=1)
    assert "is aborted, expected failed/timeout" in res.output
    assert "nothing requeued (0 matching" in run(env, "jobs", "requeue", "--all", "--yes").output
    out = run_json(env, "jobs", "requeue", r.id, "-s", "aborted")
    assert out["was"] == "aborted" and out["state"] == "available"
    Worker(app, ["default"], concurrency=1, burst=True).run()
    assert r.get(timeout=5) == 5
    # clean: an aborted job stays with -s finished, goes with -s aborted
    again = env["mod"].add.delay(1, 1)
    assert [c.id for c in app.channel().claim(1, worker="w")] == [again.id]
    again.abort()
    res = run(env, "jobs", "clean", "-s", "finished", "--older-than", "0")
    assert "removed 1 finished" in res.stdout and "kept 1" in res.stdout
    res = run(env, "jobs", "clean", "-s", "aborted", "--older-than", "0")
    assert "removed 1 aborted" in res.stdout and again.record() is None
