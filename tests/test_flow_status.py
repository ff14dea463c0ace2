"""Flow control as operators see it: ``taskpipe status``, ``jobs list`` and the dashboard show a
channel's limits, the rate buckets waiting and the capped groups (docs/flow-control.md)."""

from __future__ import annotations

import json
from typing import Any

from browser_helpers import shot, text_of, wait
from click.testing import CliRunner
from test_dashboard import app, board  # noqa: F401 - fixtures

import taskpipe.cli.admin  # noqa: F401  (registers the commands)
from taskpipe import TaskPipe
from taskpipe.cli import cli
from taskpipe.contrib.dashboard import DashboardServer


def _limited(app: TaskPipe) -> tuple[list[str], str]:  # noqa: F811 - app is the fixture's value
    @app.task(name="api", channel="emails", rate_limit="1/h")
    def api(i: int) -> None:
        return None

    @app.task(name="sync", channel="emails", concurrency=1, concurrency_key=lambda user: user)
    def sync(user: str) -> None:
        return None

    ids = [api.delay(i).id for i in range(2)] + [sync.delay("ann").id, sync.delay("ann").id]
    app.set_limits("emails", rate_limit="600/m", concurrency=10)
    claimed = app.channel("emails").claim(10)
    # one api job (burst 1) and one ann job; api #2 and ann #2 wait in their places
    assert sorted(c.id for c in claimed) == sorted([ids[0], ids[2]])
    numbered = app.send("report", channel="emails", priority=4).id
    return ids, numbered


def _run(app: TaskPipe, *args: str) -> str:  # noqa: F811
    result = CliRunner().invoke(
        cli, [*args, "--broker", app.broker_url, "--prefix", app.prefix], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_status_and_jobs_list_show_flow_control(app: TaskPipe) -> None:  # noqa: F811
    ids, numbered = _limited(app)
    out = _run(app, "status")
    line = [ln for ln in out.splitlines() if ln.startswith("emails ") and "rate" in ln]
    assert line, out
    assert "rate 600/m" in line[0] and "cap 10" in line[0]
    assert "rate-limited: api" in line[0] and "capped running: sync:ann=1" in line[0]
    assert "numbered waiting 1" in line[0]
    data = json.loads(_run(app, "status", "--json"))
    emails = {c["channel"]: c for c in data["channels"]}["emails"]
    assert emails["flow"]["rate_limit"] == "600/m" and emails["flow"]["concurrency"] == 10
    assert emails["flow"]["running_by_group"] == {"k:sync:ann": 1}
    assert emails["available"] == 3
    listed = json.loads(_run(app, "jobs", "list", "-c", "emails", "--json"))
    # claim order: the list (api #2, ann #2) then the numbered job
    assert [r["id"] for r in listed["rows"]] == [ids[1], ids[3], numbered]
    assert listed["total"] == 3


def test_dashboard_shows_limits(
    browser: Any,
    app: TaskPipe,  # noqa: F811
    board: DashboardServer,  # noqa: F811
) -> None:
    _limited(app)
    browser.get(board.url)
    limits = 'tr[data-channel="emails"] td[data-col="status"] div[data-col="limits"]'
    wait(browser, lambda d: "rate 600/m" in text_of(d, limits))
    text = text_of(browser, limits)
    assert "cap 10" in text and "sync:ann=1" in text
    shot(browser, "overview-flow-limits")
