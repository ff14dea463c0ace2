"""The web dashboard: its JSON API and auth over real HTTP, and its pages in a real headless
Chromium (selenium), against a real redis-server. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from browser_helpers import cell, click, css, shot, text_of, wait
from redis_server import RedisServer

from taskpipe import TaskPipe, Worker
from taskpipe.contrib.dashboard import Dashboard, DashboardServer, parse_basic
from taskpipe.errors import ConfigError


# --- helpers ---------------------------------------------------------------------------------
def call(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    req = urllib.request.Request(
        url, method=method, headers=headers or {}, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            status, hdrs = resp.status, resp.headers
    except urllib.error.HTTPError as exc:
        body, status, hdrs = exc.read(), exc.code, exc.headers
    ctype = hdrs.get("Content-Type", "")
    return status, hdrs, json.loads(body) if ctype.startswith("application/json") else body


ACT = {"X-Taskpipe": "1"}


def stall_one(app: TaskPipe, task: str = "no.such.task", channel: str = "default") -> str:
    """Publish a job for a task nobody registered and let a real worker stall it."""
    job_id = app.send(task, (1,), channel=channel).id
    Worker(app, [channel], concurrency=1, burst=True, heartbeat_interval=60).run()
    assert app.channel(channel).info(job_id).state == "stalled"
    return job_id


@pytest.fixture
def app(redis_server: RedisServer, prefix: str) -> Iterator[TaskPipe]:
    a = TaskPipe(broker=redis_server.url, prefix=prefix)
    yield a
    a.close()


@pytest.fixture
def board(app: TaskPipe) -> Iterator[DashboardServer]:
    server = Dashboard(app, sampler_interval=0.2).serve("127.0.0.1", 0)
    yield server
    server.close()


# --- JSON API --------------------------------------------------------------------------------
def test_api_reads_channels_jobs_and_job_detail(app: TaskPipe, board: DashboardServer) -> None:
    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    r = add.apply_async((2, 3), channel="emails")
    add.apply_async((1, 1), channel="emails", delay=3600)
    status, _, ov = call(board.url + "api/overview")
    assert status == 200
    emails = next(c for c in ov["channels"] if c["channel"] == "emails")
    assert (emails["available"], emails["delayed"], emails["paused"]) == (1, 1, False)

    status, _, page = call(board.url + "api/channels/emails/jobs?state=available")
    assert status == 200 and [row["id"] for row in page["rows"]] == [r.id]
    assert page["rows"][0]["task"] == "add"
    status, _, detail = call(board.url + f"api/channels/emails/jobs/{r.id}")
    assert status == 200
    assert detail["payload"]["args"] == [2, 3] and detail["state"] == "available"
    status, _, found = call(board.url + f"api/find?id={r.id}")
    assert found["channels"] == ["emails"]

    assert call(board.url + "api/channels/emails/jobs?state=bogus")[0] == 400
    assert call(board.url + "api/channels/emails/jobs?limit=0")[0] == 400
    assert call(board.url + "api/channels/nope/jobs")[0] == 404
    assert call(board.url + "api/channels/emails/jobs/nope")[0] == 404
    assert call(board.url + "api/nothing")[0] == 404
    assert call(board.url + "static/../server.py")[0] == 404
    # the sampler records throughput history for the overview chart
    deadline = time.monotonic() + 10
    while not call(board.url + "api/overview")[2]["history"].get("emails"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_api_actions_retry_retract_pause(app: TaskPipe, board: DashboardServer) -> None:
    job_id = stall_one(app)
    url = board.url + f"api/channels/default/jobs/{job_id}"
    status, _, detail = call(url)
    assert detail["state"] == "stalled" and detail["reason"] == "unknown_task: no.such.task"
    # actions need the X-Taskpipe header (a cross-site form cannot send it)
    assert call(url + "/retry", "POST")[0] == 403
    assert app.channel().info(job_id).state == "stalled"
    status, _, out = call(url + "/retry", "POST", ACT)
    assert status == 200 and out["state"] == "available"
    assert app.channel().info(job_id).state == "available"
    assert call(url + "/retry", "POST", ACT)[0] == 409  # not stalled any more
    assert call(url + "/retract", "POST", ACT)[0] == 200
    assert app.channel().info(job_id).state == "unknown"
    assert call(url + "/retract", "POST", ACT)[0] == 404

    status, _, counts = call(board.url + "api/channels/default/pause", "POST", ACT)
    assert status == 200 and counts["paused"] is True and app.channel().paused
    call(board.url + "api/channels/default/resume", "POST", ACT)
    assert not app.channel().paused
    assert call(board.url + "api/channels/ghost/pause", "POST", ACT)[0] == 404
    assert call(board.url + "api/overview", "PUT", ACT)[0] == 405


def test_auth_token_and_basic(app: TaskPipe) -> None:
    with Dashboard(app, token="s3cret", basic=("ops", "pw")).serve("127.0.0.1", 0) as srv:
        api = srv.url + "api/overview"
        status, hdrs, _ = call(api)
        assert status == 401 and hdrs["WWW-Authenticate"].startswith("Basic")
        assert call(srv.url)[0] == 401  # basic auth: the page itself asks for credentials
        assert call(api, headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert call(api, headers={"X-Taskpipe-Token": "s3cret"})[0] == 200
        assert call(api + "?token=s3cret")[0] == 200
        assert call(api + "?token=wrong")[0] == 401
        assert call(api, headers={"Authorization": "Bearer s3cre"})[0] == 401
        good = base64.b64encode(b"ops:pw").decode()
        bad = base64.b64encode(b"ops:nope").decode()
        assert call(api, headers={"Authorization": f"Basic {good}"})[0] == 200
        assert call(api, headers={"Authorization": f"Basic {bad}"})[0] == 401
        assert call(api, headers={"Authorization": "Basic !!!"})[0] == 401
        # static assets hold no data; health is public
        status, hdrs, body = call(srv.url + "static/app.js")
        assert status == 200 and b"taskpipe" in body
        assert "default-src 'self'" in hdrs["Content-Security-Policy"]
        assert call(srv.url + "healthz")[0] == 200
    with Dashboard(app, token="s3cret").serve("127.0.0.1", 0) as srv:
        status, _, body = call(srv.url)  # token only: the data-free shell loads, then asks
        assert status == 200 and b"static/app.js" in body
        assert call(srv.url + "api/overview")[0] == 401
    with pytest.raises(ConfigError):
        parse_basic("nopassword")
    with pytest.raises(ConfigError):
        Dashboard(app, token="")


def test_loopback_without_auth_rejects_foreign_host_headers(board: DashboardServer) -> None:
    assert call(board.url + "api/overview", headers={"Host": "evil.example:80"})[0] == 421
    assert call(board.url + "api/overview", headers={"Host": f"localhost:{board.port}"})[0] == 200


def test_dashboard_metrics_page(app: TaskPipe, board: DashboardServer) -> None:
    pytest.importorskip("prometheus_client")
    app.send("x", channel="emails")
    status, hdrs, body = call(board.url + "metrics")
    assert status == 200
    assert b'taskpipe_queue_depth{channel="emails",state="available"} 1.0' in body


def test_cli_dashboard_with_broker_and_token(redis_server: RedisServer, prefix: str) -> None:
    app = TaskPipe(broker=redis_server.url, prefix=prefix)
    app.send("x", channel="emails")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskpipe",
            "dashboard",
            "--broker",
            redis_server.url,
            "--prefix",
            prefix,
            "--port",
            "0",
            "--token",
            "t0k",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        url = match.group(0)
        assert call(url + "api/overview")[0] == 401
        status, _, ov = call(url + "api/overview?token=t0k")
        assert status == 200 and [c["channel"] for c in ov["channels"]] == ["emails"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)  # waits, and closes its pipes
        code = proc.returncode
        app.close()
    assert code == 0
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskpipe",
            "dashboard",
            "-A",
            "x:app",
            "--broker",
            redis_server.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "not both" in bad.stderr


# --- the pages in a real browser (the shared Chromium: browser_helpers) -------------------
def test_overview_shows_published_jobs_live(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    app.send("report", channel="emails")
    browser.get(board.url)
    wait(browser, lambda d: cell(d, "emails", "available") == "1")
    assert cell(browser, "emails", "published_total") == "1"
    assert cell(browser, "emails", "status") == "active"
    browser.execute_script("window.__notReloaded = 42")
    app.send("report", channel="emails")  # shows up by polling, without a reload
    wait(browser, lambda d: cell(d, "emails", "available") == "2")
    assert browser.execute_script("return window.__notReloaded") == 42
    shot(browser, "overview")


def test_stalled_job_page_shows_reason_and_retry_makes_it_available(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    job_id = stall_one(app)
    browser.get(board.url + "#/channel/default?state=stalled")
    assert "unknown_task: no.such.task" in text_of(browser, f'tr[data-job="{job_id}"]')
    shot(browser, "channel-stalled")
    click(browser, f'tr[data-job="{job_id}"] a')
    assert text_of(browser, "#job-reason") == "unknown_task: no.such.task"
    assert text_of(browser, "#job-state") == "stalled"
    assert '"task": "no.such.task"' in text_of(browser, "#job-payload")
    shot(browser, "job-stalled")
    click(browser, "#retry-btn")
    wait(browser, lambda d: css(d, "#job-state").text == "available")
    assert app.channel().info(job_id).state == "available"
    assert not browser.find_elements("css selector", "#retry-btn")
    shot(browser, "job-retried")


def test_pause_shows_as_paused(browser: Any, app: TaskPipe, board: DashboardServer) -> None:
    app.send("report", channel="emails")
    browser.get(board.url + "#/channel/emails")
    wait(browser, lambda d: css(d, "#paused-badge").text == "active")
    browser.execute_script("window.confirm = () => true")  # pausing asks first (issue 14 item 8)
    click(browser, '#channel-actions button[data-action="pause"]')
    wait(browser, lambda d: css(d, "#paused-badge").text == "paused")
    assert app.channel("emails").paused
    shot(browser, "channel-paused")
    browser.get(board.url + "#/")
    wait(browser, lambda d: cell(d, "emails", "status") == "paused")
    shot(browser, "overview-paused")
    click(browser, 'tr[data-channel="emails"] button[data-action="resume"]')
    wait(browser, lambda d: cell(d, "emails", "status") == "active")
    assert not app.channel("emails").paused


def test_failed_job_shows_error_and_traceback_as_text(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    @app.task(name="boom")
    def boom() -> None:
        raise ValueError('<img src=x onerror="window.__xss=1">')

    job_id = boom.delay().id
    Worker(app, ["default"], concurrency=1, burst=True, heartbeat_interval=60).run()
    browser.get(board.url)  # search by id from the header
    wait(browser, lambda d: css(d, "#find-input")).send_keys(job_id)  # the header is static
    click(browser, "#find-form button")
    assert text_of(browser, "#job-error") == 'ValueError: <img src=x onerror="window.__xss=1">'
    assert "Traceback (most recent call last)" in text_of(browser, "#job-traceback")
    assert text_of(browser, "#job-state") == "failed"
    assert browser.find_elements("css selector", "#job img") == []
    assert browser.execute_script("return window.__xss") is None
    shot(browser, "job-failed")


def test_workers_and_cron_pages(browser: Any, app: TaskPipe, board: DashboardServer) -> None:
    from taskpipe.scheduler import Scheduler

    app.add_cron("reports.daily", "0 6 * * *", name="daily-report", tz="Europe/Paris")
    scheduler = Scheduler(app)
    scheduler.register()
    scheduler.tick()  # records the next fire time
    w = Worker(app, ["default", "emails"], concurrency=2, heartbeat_interval=0.2)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        browser.get(board.url + "#/workers")
        row = text_of(browser, f'tr[data-worker="{w.name}"]')
        assert "default" in row and "emails" in row
        shot(browser, "workers")
    finally:
        w.stop()
        t.join(20)
    browser.get(board.url + "#/crons")
    row = text_of(browser, 'tr[data-cron="daily-report"]')
    assert "reports.daily" in row and "0 6 * * * (Europe/Paris)" in row
    next_fire = text_of(browser, 'tr[data-cron="daily-report"] td:nth-child(5)')
    assert re.fullmatch(r"in \d+[smhd]", next_fire), next_fire
    shot(browser, "crons")


def test_token_auth_in_the_browser(browser: Any, app: TaskPipe) -> None:
    app.send("report", channel="emails")
    with Dashboard(app, token="s3cret").serve("127.0.0.1", 0) as srv:
        browser.get(srv.url)
        wait(browser, lambda d: css(d, "#auth-error"))
        assert css(browser, "#live").text == "offline"
        browser.get(srv.url + "?token=s3cret")
        wait(browser, lambda d: cell(d, "emails", "available") == "1")
        browser.get(srv.url + "#/channel/emails")  # the token is kept for the session
        wait(browser, lambda d: css(d, "#paused-badge").text == "active")


def test_abort_button_and_waiting_tab(browser: Any, app: TaskPipe, board: DashboardServer) -> None:
    """A claimed job has an Abort button (issue 15): it ends the job 'aborted'; a job waiting
    for a parent is listed under the 'waiting' tab."""
    running = app.send("report", channel="jobs")
    kid = app.send("report", channel="jobs", depends_on=[running])
    [claim] = app.channel("jobs").claim(1, lease_ms=60_000, worker="test")  # held, never run
    assert claim.id == running.id
    browser.get(board.url + "#/channel/jobs?state=waiting")
    assert "1" in text_of(browser, f'tr[data-job="{kid.id}"]')  # parents left
    shot(browser, "channel-waiting")
    browser.get(board.url + f"#/job/jobs/{running.id}")
    assert text_of(browser, "#job-state") == "claimed"
    browser.execute_script("window.confirm = () => true")
    click(browser, "#abort-btn")
    wait(browser, lambda d: css(d, "#job-state").text == "aborted")
    assert running.state == "aborted" and running.aborted_by()[0] == "dashboard"  # type: ignore[index]
    assert not browser.find_elements("css selector", "#abort-btn")
    assert kid.state == "available"  # released (and failed when run: its parent was aborted)
    assert text_of(browser, '[data-field="task"]') == "report"  # from its record
    assert text_of(browser, '[data-field="worker"]') == "test"
    shot(browser, "job-aborted")
    click(browser, "#requeue-btn")  # its page asks for this aborted job by name
    wait(browser, lambda d: css(d, "#job-state").text == "available")
    assert running.state == "available" and running.aborted_by() is None
    assert text_of(browser, '[data-field="requeued"]') == "1 time(s), last ended aborted"
