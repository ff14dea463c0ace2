# ruff: noqa: F811 - the fixtures come from test_dashboard (imported by name)
"""The dashboard's job history (issue 14) in a real headless Chromium against a real Redis: a
failed job's page with its whole record, requeue from the page, editing a waiting job's
arguments, bulk requeue, filtering by task and error text, the log view keeping its scroll
position, the live-updates pause toggle and the offline banner; and the JSON routes' errors."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from browser_helpers import click, css, shot, text_of, wait
from test_dashboard import ACT, app, board, call  # noqa: F401 - the app and board fixtures

from taskpipe import TaskPipe, Worker
from taskpipe.contrib.dashboard import DashboardServer
from taskpipe.serialization import decode_envelope


def run_burst(app: TaskPipe, channel: str = "default") -> None:
    Worker(app, [channel], concurrency=2, burst=True, heartbeat_interval=60).run()


def _failing(app: TaskPipe) -> Any:
    @app.task(name="pay.charge", retries=2, retry_backoff=0)
    def charge(order: int, card: str = "visa") -> None:
        raise ValueError(f"card declined for order {order}")

    return charge


def test_failed_job_page_shows_the_record_and_requeue_runs_it_again(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    charge = _failing(app)
    r = charge.delay(42, card="amex")
    run_burst(app)
    browser.get(board.url + f"#/job/default/{r.id}")
    assert text_of(browser, "#job-state") == "failed"
    assert text_of(browser, '[data-field="task"]') == "pay.charge"
    assert text_of(browser, '[data-field="attempts"]') == "3"  # the real count of runs
    assert text_of(browser, '[data-field="worker"]') == r.record().worker
    for field in ("published", "claimed", "finished", "run time"):
        assert text_of(browser, f'[data-field="{field}"]'), field
    payload = json.loads(text_of(browser, "#job-payload"))
    assert payload["args"] == [42] and payload["kwargs"] == {"card": "amex"}
    assert text_of(browser, "#job-error") == "ValueError: card declined for order 42"
    assert "Traceback (most recent call last)" in text_of(browser, "#job-traceback")
    shot(browser, "history-job-failed")
    click(browser, "#requeue-btn")
    wait(browser, lambda d: css(d, "#job-state").text == "available")
    assert app.AsyncResult(r.id).state == "available"
    assert text_of(browser, '[data-field="requeued"]').startswith("1 time(s)")
    shot(browser, "history-job-requeued")


def test_edit_a_waiting_jobs_arguments_from_its_page(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    r = app.send("pay.charge", (1,), {"card": "visa"}, delay="1h")
    browser.get(board.url + f"#/job/default/{r.id}")
    assert text_of(browser, "#job-state") == "delayed"
    click(browser, "#edit-btn")
    args_in = wait(browser, lambda d: css(d, "#edit-args"))
    assert json.loads(args_in.get_attribute("value")) == [1]
    args_in.clear()
    args_in.send_keys("[7, 8]")
    kwargs_in = css(browser, "#edit-kwargs")
    kwargs_in.clear()
    kwargs_in.send_keys('{"card": "amex"}')
    shot(browser, "history-job-edit")
    click(browser, "#edit-save")
    wait(browser, lambda d: '"amex"' in css(d, "#job-payload").text)
    env = decode_envelope(app.channel().get_item(r.id) or b"")
    assert env.args == (7, 8) and env.kwargs == {"card": "amex"} and env.task == "pay.charge"
    # malformed JSON: a clear error, nothing changed
    click(browser, "#edit-btn")
    args_in = wait(browser, lambda d: css(d, "#edit-args"))
    args_in.clear()
    args_in.send_keys("[7,")
    click(browser, "#edit-save")
    wait(browser, lambda d: "not valid JSON" in css(d, "#toast").text)
    assert decode_envelope(app.channel().get_item(r.id) or b"").args == (7, 8)


def test_history_filters_by_task_and_error_and_bulk_requeue(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    charge = _failing(app)

    @app.task(name="mail.send")
    def send(to: str) -> None:
        raise ConnectionError(f"smtp refused {to}")

    @app.task(name="ok.task")
    def ok() -> int:
        return 1

    charges = [charge.apply_async((i,), retries=0) for i in range(3)]
    mails = [send.delay(f"user{i}@example.com") for i in range(2)]
    oks = [ok.delay() for _ in range(2)]
    run_burst(app)
    browser.get(board.url + "#/history/default")
    wait(browser, lambda d: len(d.find_elements("css selector", "#hist-rows tr[data-job]")) == 7)
    assert text_of(browser, 'tr[data-task="pay.charge"] td[data-col="failed"]') == "3"
    assert text_of(browser, 'tr[data-task="ok.task"] td[data-col="succeeded"]') == "2"
    assert text_of(browser, 'tr[data-task="pay.charge"] td[data-col="aborted"]') == "0"
    assert "aborted" in [
        o.get_attribute("value")
        for o in css(browser, "#hist-state").find_elements("css selector", "option")
    ]
    # filter by task
    css(browser, "#hist-task").send_keys("mail.send")
    click(browser, "#hist-go")
    wait(
        browser,
        lambda d: (
            {
                e.get_attribute("data-job")
                for e in d.find_elements("css selector", "#hist-rows tr[data-job]")
            }
            == {m.id for m in mails}
        ),
    )
    assert "'user0@example.com'" in text_of(browser, f'tr[data-job="{mails[0].id}"]')
    # filter by error text
    browser.get(board.url + "#/history/default?error=" + urllib.parse.quote("order 1"))
    wait(
        browser,
        lambda d: (
            [
                e.get_attribute("data-job")
                for e in d.find_elements("css selector", "#hist-rows tr[data-job]")
            ]
            == [charges[1].id]
        ),
    )
    shot(browser, "history-filtered")
    # bulk requeue of one task's failures, after a count preview and a confirmation
    browser.get(board.url + "#/history/default?task=pay.charge")
    wait(browser, lambda d: len(d.find_elements("css selector", "#hist-rows tr[data-job]")) == 3)
    browser.execute_script(
        "window.__asked = []; window.confirm = (m) => { window.__asked.push(m); return true; }"
    )
    click(browser, "#bulk-requeue")
    wait(browser, lambda d: "requeued 3 job(s)" in css(d, "#toast").text)
    assert "Requeue 3 failed" in browser.execute_script("return window.__asked[0]")
    assert all(app.AsyncResult(c.id).state == "available" for c in charges)
    assert all(app.AsyncResult(m.id).state == "failed" for m in mails)
    assert all(app.AsyncResult(o.id).state == "finished" for o in oks)


def test_log_view_keeps_its_scroll_position(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    r = app.send("long.job", (), delay="1h")
    ch = app.channel()
    ch.log(r.id, [f"line {i}" for i in range(300)])
    browser.get(board.url + f"#/job/default/{r.id}")
    wait(browser, lambda d: "line 299" in css(d, "#job-logs").text)
    browser.execute_script("document.getElementById('job-logs').scrollTop = 200")
    top = browser.execute_script("return document.getElementById('job-logs').scrollTop")
    assert top > 0
    ch.log(r.id, ["line 300"])  # the page refreshes with the new line
    refresh = "window.taskpipeDashboard.tick(false)"  # the poll, now (not a second later)
    browser.execute_script(refresh)
    wait(browser, lambda d: "line 300" in css(d, "#job-logs").text)
    assert browser.execute_script("return document.getElementById('job-logs').scrollTop") == top
    # at the bottom: it follows the tail
    browser.execute_script(
        "const p = document.getElementById('job-logs'); p.scrollTop = p.scrollHeight"
    )
    ch.log(r.id, ["line 301"])
    browser.execute_script(refresh)
    wait(browser, lambda d: "line 301" in css(d, "#job-logs").text)
    assert browser.execute_script(
        "const p = document.getElementById('job-logs'); return p.scrollTop + p.clientHeight >= p.scrollHeight - 4"
    )


def test_pause_live_updates_and_offline_banner(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    app.send("report", channel="emails")
    browser.get(board.url)
    wait(
        browser, lambda d: css(d, 'tr[data-channel="emails"] td[data-col="available"]').text == "1"
    )
    click(browser, "#live")
    wait(browser, lambda d: css(d, "#live").text == "paused")
    app.send("report", channel="emails")
    browser.execute_script("window.taskpipeDashboard.tick(false)")  # a poll while paused: nothing
    assert css(browser, 'tr[data-channel="emails"] td[data-col="available"]').text == "1"
    click(browser, "#live")
    wait(
        browser, lambda d: css(d, 'tr[data-channel="emails"] td[data-col="available"]').text == "2"
    )
    assert not browser.find_elements("css selector", "#offline-banner:not([hidden])")


def test_offline_banner_when_the_broker_is_down(browser: Any) -> None:
    import socket

    from taskpipe.contrib.dashboard import Dashboard

    with socket.socket() as s:  # a port nothing listens on: the broker is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = TaskPipe(broker=f"redis://127.0.0.1:{port}/0", publish_retry=0)
    server = Dashboard(down, sampler_interval=60).serve("127.0.0.1", 0)
    try:
        browser.get(server.url)
        wait(browser, lambda d: css(d, "#offline-banner").is_displayed())
        assert "Offline" in css(browser, "#offline-banner").text
        assert css(browser, "#live").text == "offline"
        shot(browser, "offline-banner")
    finally:
        server.close()
        down.close()


def test_history_routes_answer_clear_errors(app: TaskPipe, board: DashboardServer) -> None:
    @app.task(name="t.ok")
    def ok() -> int:
        return 1

    done = ok.delay()
    run_burst(app)
    base = board.url + "api/channels/default/"
    status, _, out = call(base + f"jobs/{done.id}/requeue", "POST", ACT)
    assert status == 409 and "succeeded" in out["error"]
    assert call(base + "jobs/nope/requeue", "POST", ACT)[0] == 404
    waiting = app.send("t.ok", (), delay="1h")
    assert call(base + f"jobs/{waiting.id}/edit?args=%5B1", "POST", ACT)[0] == 400
    assert call(base + f"jobs/{waiting.id}/edit", "POST", ACT)[0] == 400
    assert call(base + f"jobs/{done.id}/edit?args=%5B1%5D", "POST", ACT)[0] == 409
    assert call(base + "history?state=bogus")[0] == 400
    for bad in ("abc", "1e3", ""):  # 'abc' and '1e3' answered 503 (a bare ValueError)
        status, _, out = call(base + f"history?limit={bad}")
        assert (status == 400 and "limit" in out["error"]) if bad else status == 200, (bad, out)
    assert call(base + "history?since=nan")[0] == 400
    status, _, hist = call(base + "history?task=t.ok")
    assert status == 200 and [j["id"] for j in hist["jobs"]] == [done.id]
    assert hist["tasks"]["t.ok"]["succeeded"] == 1
    assert call(base + "requeue?state=failed")[2]["count"] == 0


def test_history_routes_find_requeue_and_clean_aborted_jobs(
    app: TaskPipe, board: DashboardServer
) -> None:
    """An aborted job is in the history (by state, in the breakdown); requeued only when the
    call names its outcome; cleaned by name."""
    held = app.send("t.held")
    assert [c.id for c in app.channel().claim(1, worker="w")] == [held.id]
    held.abort(by="ops")
    base = board.url + "api/channels/default/"
    status, _, hist = call(base + "history?state=aborted")
    assert status == 200 and [j["id"] for j in hist["jobs"]] == [held.id]
    assert hist["jobs"][0]["outcome"] == "aborted" and hist["jobs"][0]["task"] == "t.held"
    assert hist["tasks"]["t.held"]["aborted"] == 1
    assert call(base + "requeue")[2]["count"] == 0  # not in the default bulk requeue
    assert call(base + "requeue?state=aborted")[2]["count"] == 1
    status, _, out = call(base + f"jobs/{held.id}/requeue", "POST", ACT)
    assert status == 409 and "aborted" in out["error"]
    status, _, out = call(base + f"jobs/{held.id}/requeue?state=aborted", "POST", ACT)
    assert status == 200 and out["was"] == "aborted" and held.state == "available"
    again = app.send("t.held")
    assert {c.id for c in app.channel().claim(2, worker="w")} == {held.id, again.id}
    again.abort()
    assert call(base + "clean?state=aborted&older_than=0")[2]["count"] >= 1
    status, _, out = call(base + "clean?state=aborted&older_than=0", "POST", ACT)
    assert status == 200 and out["removed"] == 1 and again.record() is None


def test_overview_oldest_waiting_chart_axes_and_worker_running_vs_prefetched(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    import threading

    gate = threading.Event()

    @app.task(name="hold")
    def hold() -> None:
        gate.wait(20)

    app.send("report", channel="emails")
    status, _, ov = call(board.url + "api/overview")
    emails = next(c for c in ov["channels"] if c["channel"] == "emails")
    assert emails["oldest_waiting_ms"] is not None
    browser.get(board.url)
    wait(
        browser,
        lambda d: (
            css(d, 'tr[data-channel="emails"] td[data-col="oldest_waiting"]').text not in ("", "-")
        ),
    )
    wait(browser, lambda d: len(d.find_elements("css selector", "#chart-times span")) == 3)
    assert all(":" in e.text for e in browser.find_elements("css selector", "#chart-times span"))
    assert browser.find_elements("css selector", ".y-axis span")[0].text.endswith("/s")
    shot(browser, "overview-axes")
    for _ in range(4):
        hold.delay()
    w = Worker(app, ["default"], concurrency=1, prefetch=2, heartbeat_interval=0.2)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        browser.get(board.url + "#/workers")
        wait(
            browser,
            lambda d: (
                css(d, f'tr[data-worker="{w.name}"] td[data-col="running"]').text == "1"
                and css(d, f'tr[data-worker="{w.name}"] td[data-col="prefetched"]').text == "2"
            ),
        )
        shot(browser, "workers-running-prefetched")
    finally:
        gate.set()
        w.stop()
        t.join(20)


def test_bulk_clean_and_empty_from_the_history_tab(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    @app.task(name="t.ok")
    def ok() -> int:
        return 1

    @app.task(name="t.bad")
    def bad() -> None:
        raise ValueError("no")

    done = [ok.delay() for _ in range(3)]
    failed = bad.delay()
    run_burst(app)
    waiting = [app.send("t.ok", (), delay="1h") for _ in range(2)]
    base = board.url + "api/channels/default/"
    assert call(base + "empty")[2]["count"] == 2
    assert call(base + "clean?state=finished&older_than=0")[2]["count"] == 4
    assert call(base + "clean?state=bogus")[0] == 400
    browser.get(board.url + "#/history/default")
    wait(browser, lambda d: len(d.find_elements("css selector", "#hist-rows tr[data-job]")) == 4)
    browser.execute_script(
        "window.__asked = []; window.confirm = (m) => { window.__asked.push(m); return true; }"
    )
    css(browser, "#clean-age").send_keys("all")
    click(browser, "#clean-btn")
    wait(browser, lambda d: "removed 3 job(s), kept 1" in css(d, "#toast").text)
    assert all(app.AsyncResult(r.id).state == "unknown" for r in done)
    assert app.AsyncResult(failed.id).state == "failed"
    click(browser, "#empty-btn")
    wait(browser, lambda d: "retracted 2 job(s)" in css(d, "#toast").text)
    asked = browser.execute_script("return window.__asked")
    assert "Clean up to 4 finished" in asked[0] and "Retract all 2 waiting" in asked[1]
    assert all(app.AsyncResult(w.id).state == "unknown" for w in waiting)


def test_every_list_shows_task_and_args(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    charge = _failing(app)
    failed = charge.apply_async((5,), {"card": "amex"}, retries=0)
    run_burst(app)
    waiting = app.send("pay.charge", (6,), delay="1h")
    status, _, page = call(board.url + "api/channels/default/jobs?state=finished")
    row = page["rows"][0]
    assert (row["task"], row["args"], row["attempts"]) == ("pay.charge", "5, card='amex'", 1)
    browser.get(board.url + "#/channel/default?state=failed")
    assert text_of(browser, f'tr[data-job="{failed.id}"] td[data-col="args"]') == "5, card='amex'"
    assert "pay.charge" in text_of(browser, f'tr[data-job="{failed.id}"]')
    browser.get(board.url + "#/channel/default?state=delayed")
    assert text_of(browser, f'tr[data-job="{waiting.id}"] td[data-col="args"]') == "6"


def test_a_job_the_reaper_stalled_shows_its_record_on_its_page(
    browser: Any, app: TaskPipe, board: DashboardServer
) -> None:
    from polling import wait_for

    app.max_cancels = 1

    @app.task(name="t.lost")
    def lost(x: int) -> int:
        return x

    r = lost.delay(3)
    ch = app.channel("default")
    w = Worker(app, ["default"], concurrency=1, heartbeat_interval=60)
    for host in ("host-a", "host-b"):  # two real lease expiries: requeued, then stalled
        assert len(ch.claim(1, lease_ms=30, worker=host)) == 1

        def reaped() -> bool:
            w._reap()
            return ch.info(r.id).state != "claimed"

        wait_for(reaped, what="the expired lease reaped")
    assert r.state == "stalled" and r.record().worker == "host-b"
    browser.get(board.url + f"#/job/default/{r.id}")
    assert text_of(browser, "#job-state") == "stalled"
    assert text_of(browser, '[data-field="task"]') == "t.lost"
    assert text_of(browser, '[data-field="worker"]') == "host-b"
    for field in ("published", "claimed"):
        assert text_of(browser, f'[data-field="{field}"]'), field
    shot(browser, "history-job-reaper-stalled")
