"""Cleaning stalled jobs by the age of their stall (feed.stalledat), on real Redis and memory://."""

from __future__ import annotations

from taskpipe.app import TaskPipe
from taskpipe.connection import Connection
from taskpipe.inspection import Inspector


def test_clean_stalled_by_age_keeps_recent_and_retried(conn: Connection, prefix: str) -> None:
    app = TaskPipe(connection=conn, prefix=prefix)
    ch = app.channel("default")
    ids = [ch.put(f"job{i}".encode()) for i in range(3)]
    for _ in ids:
        claim = ch.get_claim(timeout=None)
        assert claim is not None
        ch.stall(claim.id, reason="bad", token=claim.token)
    stalled_at = {i: ch.client.zscore(ch.keys.stalled_at, i) for i in ids}
    assert all(v is not None for v in stalled_at.values())
    oldest = min(stalled_at.values())
    insp = Inspector(app)
    # "now" one hour after the stalls, older_than 2h: nothing is old enough
    report = insp.clean("default", "stalled", 7200, now_ms=int(oldest) + 3600_000)
    assert report.removed == 0 and len(ch.stalled_ids()) == 3
    ch.retry(ids[0])  # retried jobs lose their stall time and are never cleaned
    assert ch.client.zscore(ch.keys.stalled_at, ids[0]) is None
    report = insp.clean("default", "stalled", 60, now_ms=int(oldest) + 3600_000)
    assert report.removed == 2 and sorted(report.ids) == sorted(ids[1:])
    assert ch.info(ids[0]).state == "available"
    assert [ch.info(i).state for i in ids[1:]] == ["unknown", "unknown"]
    assert ch.client.zcard(ch.keys.stalled_at) == 0
