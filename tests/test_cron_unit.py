"""Cron logic with ``now`` as an input: expressions, zones, DST, misfire policies, and the
scheduler's claim/confirm/takeover state machine on ``memory://`` with injected time (no sleeping).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from taskpipe import TaskPipe
from taskpipe.errors import ConfigError, CronError, SerializationError
from taskpipe.scheduler import (
    ALL_MISFIRES_CAP,
    CronEntry,
    Scheduler,
    _Cursor,
    due_fires,
    latest_fire,
    next_fire,
    plan_fires,
)

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")


def at(*parts: int, tz: timezone | ZoneInfo = UTC) -> datetime:
    year, month, day, hour, minute, second, micro = (*parts, 0, 0, 0, 0)[:7]
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)


def entry(expr: str = "* * * * * *", **options: object) -> CronEntry:
    return CronEntry.new("tasks.tick", expr, **options)


@pytest.fixture
def app() -> TaskPipe:
    return TaskPipe("cronunit", broker=f"memory://{uuid.uuid4().hex[:8]}", prefix="cu:")


# expressions and zones -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "expr",
    [
        "*/5 * * * *",
        "0 9 * * 1-5",
        "* * * * * *",
        "*/10 * * * * *",
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
        "  0   12 * * *  ",
    ],
)
def test_valid_expressions(expr: str) -> None:
    CronEntry.validate(expr, None)
    assert entry(expr).expr == entry(expr).expr.strip()


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "   ",
        "a b c",
        "* * * *",
        "* * * * * * *",
        "61 * * * *",
        "* 25 * * *",
        "0 0 30 2 *",
        "@reboot",
        "@sometimes",
        None,
        5,
    ],
)
def test_bad_expressions_raise_cron_error(expr: object) -> None:
    with pytest.raises(CronError):
        CronEntry.validate(expr, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../etc/passwd", 3])
def test_bad_time_zone_raises_cron_error(tz: object) -> None:
    with pytest.raises(CronError):
        CronEntry.validate("* * * * *", tz)


def test_decorator_validates_at_definition_time(app: TaskPipe) -> None:
    with pytest.raises(CronError):
        app.cron("*/5 * * *")
    with pytest.raises(CronError):
        app.cron("*/5 * * * *", tz="Nowhere/Land")
    with pytest.raises(CronError):

        @app.cron("* * * * *", misfire="sometimes")
        @app.task
        def bad_policy() -> None: ...

    with pytest.raises(CronError):

        @app.cron("* * * * *", colour="blue")
        @app.task
        def bad_option() -> None: ...

    with pytest.raises(SerializationError):

        @app.cron("* * * * *", args=[object()])
        @app.task
        def bad_args(x: object) -> None: ...

    assert app.crons == []


def test_decorator_goes_above_task(app: TaskPipe) -> None:
    with pytest.raises(ConfigError, match="above @app.task"):

        @app.task
        @app.cron("* * * * *")
        def wrong_order() -> None: ...


def test_decorator_and_add_cron_register_entries(app: TaskPipe) -> None:
    @app.cron(
        "*/5 * * * *",
        tz="Europe/Paris",
        channel="cron",
        args=(1,),
        kwargs={"k": 2},
        misfire="all",
        name="five",
    )
    @app.task
    def job(a: int, k: int = 0) -> int:
        return a + k

    extra = app.add_cron(job, "0 * * * * *", name="minutely", misfire="skip", grace="500ms")
    by_name = app.add_cron("some.other.task", "@daily")
    assert [e.name for e in app.crons] == ["five", "minutely", "some.other.task"]
    five = app.crons[0]
    assert (five.task, five.expr, five.tz, five.channel, five.args, five.kwargs, five.misfire) == (
        job.name,
        "*/5 * * * *",
        "Europe/Paris",
        "cron",
        (1,),
        {"k": 2},
        "all",
    )
    assert extra.misfire == "skip" and extra.grace == 0.5
    assert by_name.expr == "0 0 * * *" and by_name.misfire == "once"  # once is the default
    with pytest.raises(CronError, match="already exists"):
        app.add_cron(job, "* * * * *", name="five")


# fire times ------------------------------------------------------------------------------------
def test_six_fields_have_seconds_first() -> None:
    e = entry("30 * * * * *")
    assert next_fire(e, at(2024, 1, 1, 12, 0, 0)) == at(2024, 1, 1, 12, 0, 30)
    assert next_fire(e, at(2024, 1, 1, 12, 0, 30)) == at(2024, 1, 1, 12, 1, 30)
    every = entry("* * * * * *")
    assert next_fire(every, at(2024, 1, 1, 12, 0, 5, 500000)) == at(2024, 1, 1, 12, 0, 6)
    assert latest_fire(every, at(2024, 1, 1, 12, 0, 5)) == at(2024, 1, 1, 12, 0, 5)
    assert latest_fire(every, at(2024, 1, 1, 12, 0, 5, 999999)) == at(2024, 1, 1, 12, 0, 5)


def test_time_zone_shifts_with_dst() -> None:
    e = entry("0 9 * * *", tz="Europe/Paris")
    assert next_fire(e, at(2024, 1, 10)).astimezone(UTC) == at(2024, 1, 10, 8)
    assert next_fire(e, at(2024, 7, 10)).astimezone(UTC) == at(2024, 7, 10, 7)


def test_dst_fall_back_fixed_hour_fires_once_wildcard_hour_fires_twice() -> None:
    daily = entry("30 2 * * *", tz="Europe/Paris")
    first = next_fire(daily, at(2024, 10, 26, 12))
    second = next_fire(daily, first)
    assert first.astimezone(UTC) == at(2024, 10, 27, 0, 30)
    assert second.astimezone(UTC) == at(2024, 10, 28, 1, 30)  # not 01:30 UTC on the 27th
    assert latest_fire(daily, at(2024, 10, 27, 3, 0)).astimezone(UTC) == at(2024, 10, 27, 0, 30)
    half_hourly = entry("*/30 * * * *", tz="Europe/Paris")
    fires, t = [], at(2024, 10, 26, 23, 50)
    for _ in range(6):
        t = next_fire(half_hourly, t)
        fires.append(t.astimezone(UTC))
    assert fires == [at(2024, 10, 27, 0, 0) + timedelta(minutes=30 * i) for i in range(6)]


def test_dst_spring_forward_missing_time_still_fires() -> None:
    daily = entry("30 2 * * *", tz="Europe/Paris")
    fire = next_fire(daily, at(2024, 3, 30, 12))
    assert fire.astimezone(UTC).date() == datetime(2024, 3, 31).date()


def test_naive_now_is_refused() -> None:
    with pytest.raises(CronError):
        next_fire(entry(), datetime(2024, 1, 1))


def test_job_id_is_deterministic() -> None:
    e = entry(name="beat")
    fire = at(2024, 1, 1, 0, 0, 1)
    assert e.job_id(fire) == "cron:beat:1704067201" == e.job_id(fire.astimezone(PARIS))


# misfire policies ------------------------------------------------------------------------------
LAST = at(2024, 1, 1, 12, 0, 0)


def test_nothing_due_before_next_fire() -> None:
    plan = plan_fires(entry("*/10 * * * * *"), LAST, LAST + timedelta(seconds=9.9))
    assert plan.run == [] and plan.cursor is None


def test_first_run_starts_from_now() -> None:
    now = LAST + timedelta(seconds=3)
    plan = plan_fires(entry(), None, now)
    assert plan.run == [] and plan.cursor == now
    assert due_fires(entry(), None, now) == []


@pytest.mark.parametrize("policy", ["skip", "once", "all"])
def test_on_time_fire_runs_under_every_policy(policy: str) -> None:
    now = LAST + timedelta(seconds=1, milliseconds=30)
    assert due_fires(entry(misfire=policy), LAST, now) == [LAST + timedelta(seconds=1)]


def test_after_downtime_skip_runs_nothing_missed() -> None:
    e = entry("*/10 * * * * *", misfire="skip", grace="2s")
    now = LAST + timedelta(seconds=65)  # fires at +10..+60 missed; +60 is 5 s late
    plan = plan_fires(e, LAST, now)
    assert plan.run == [] and plan.cursor == LAST + timedelta(seconds=60)
    assert next_fire(e, plan.cursor) == LAST + timedelta(seconds=70)  # only future fires
    late_but_in_grace = plan_fires(e, LAST, LAST + timedelta(seconds=61))
    assert late_but_in_grace.run == [LAST + timedelta(seconds=60)]


def test_after_downtime_once_runs_latest_missed_fire_once() -> None:
    e = entry("*/10 * * * * *")  # misfire="once" is the default
    plan = plan_fires(e, LAST, LAST + timedelta(seconds=65))
    assert plan.run == [LAST + timedelta(seconds=60)]
    assert plan.cursor == LAST + timedelta(seconds=60)


def test_after_downtime_all_runs_every_missed_fire() -> None:
    e = entry("*/10 * * * * *", misfire="all")
    plan = plan_fires(e, LAST, LAST + timedelta(seconds=65))
    assert plan.run == [LAST + timedelta(seconds=s) for s in (10, 20, 30, 40, 50, 60)]


def test_all_is_capped_to_the_latest_fires() -> None:
    e = entry("* * * * * *", misfire="all")
    now = LAST + timedelta(hours=1)
    plan = plan_fires(e, LAST, now)
    assert len(plan.run) == ALL_MISFIRES_CAP
    assert plan.run[-1] == now and plan.run[0] == now - timedelta(seconds=ALL_MISFIRES_CAP - 1)
    assert plan.run == sorted(plan.run)


# the scheduler state machine, memory://, injected server time ----------------------------------
def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def test_cursor_round_trip() -> None:
    for cur in (_Cursor(5), _Cursor(10, 7, "host.1.abc", (8, 9, 10))):
        assert _Cursor.decode(cur.encode()) == cur


def _ids(app: TaskPipe) -> list[str]:
    return sorted(app.channel().get_ids())


def test_schedulers_share_fires_without_duplicates(app: TaskPipe) -> None:
    app.add_cron("tasks.tick", "* * * * * *", name="tick", misfire="all")
    a, b, c = Scheduler(app, name="a"), Scheduler(app, name="b"), Scheduler(app, name="c")
    t0 = LAST + timedelta(milliseconds=400)
    a.tick(ms(t0))  # initialises the cursor at t0: only later fires run
    for step in range(1, 11):
        now = ms(t0 + timedelta(seconds=step))
        for s in (b, a, c) if step % 2 else (c, b, a):
            s.tick(now)
            s.tick(now)  # a second pass at the same instant never fires again
    expected = [f"cron:tick:{int(LAST.timestamp()) + s}" for s in range(1, 11)]
    assert _ids(app) == expected
    assert app.channel().counts()["published_total"] == 10
    assert a.fired + b.fired + c.fired == 10


def test_downtime_policies_with_the_scheduler(app: TaskPipe) -> None:
    for policy in ("skip", "once", "all"):
        app.add_cron("tasks.tick", "*/10 * * * * *", name=policy, misfire=policy, channel=policy)
    s = Scheduler(app, name="s")
    s.tick(ms(LAST + timedelta(seconds=1)))
    s.tick(ms(LAST + timedelta(seconds=10, milliseconds=5)))  # on time: all three fire
    s.tick(ms(LAST + timedelta(seconds=10, milliseconds=5)))
    s.tick(ms(LAST + timedelta(seconds=75)))  # down for +20..+70
    s.tick(ms(LAST + timedelta(seconds=75)))
    base = int(LAST.timestamp())

    def fired(policy: str) -> list[int]:
        return sorted(int(i.rsplit(":", 1)[1]) - base for i in app.channel(policy).get_ids())

    assert fired("skip") == [10]
    assert fired("once") == [10, 70]
    assert fired("all") == [10, 20, 30, 40, 50, 60, 70]
    s.tick(ms(LAST + timedelta(seconds=80, milliseconds=5)))
    assert fired("skip") == [10, 80]


def test_dead_schedulers_pending_fire_is_taken_over(app: TaskPipe) -> None:
    app.add_cron("tasks.tick", "* * * * * *", name="tick")
    key = app.thoonk.keys.cron_state("tick")
    fire = LAST + timedelta(seconds=1)
    # a scheduler "dead" took the fire (cursor pending) at +1.005 s but never sent it
    pending = _Cursor(ms(fire), ms(fire) + 5, "dead.1.x", (ms(fire),)).encode()
    app.thoonk.client.hset(key, "cursor", pending)
    s = Scheduler(app, name="alive", takeover="1s")
    s.tick(ms(fire) + 500)
    assert _ids(app) == [] and s.fired == 0  # the owner may still be alive
    s.tick(ms(fire) + 1100)
    s.tick(ms(fire) + 1100)
    assert _ids(app) == [
        f"cron:tick:{int(fire.timestamp())}",
        f"cron:tick:{int(fire.timestamp()) + 1}",
    ]
    state = app.thoonk.client.hgetall(key)
    assert state[b"cursor"] == str(ms(fire) + 1000).encode()
    assert state[b"last_job"] == f"cron:tick:{int(fire.timestamp()) + 1}".encode()


def test_takeover_never_resends_a_job_that_exists_or_finished(app: TaskPipe) -> None:
    app.add_cron("tasks.tick", "* * * * * *", name="tick")
    key = app.thoonk.keys.cron_state("tick")
    fire = LAST + timedelta(seconds=1)
    job_id = f"cron:tick:{int(fire.timestamp())}"
    ch = app.channel()
    app.send("tasks.tick", id=job_id)  # the dead scheduler did send it ...
    claim = ch.claim(1)[0]
    ch.finish(claim.id, token=claim.token)  # ... and a worker already ran it
    app.thoonk.client.hset(
        key, "cursor", _Cursor(ms(fire), ms(fire), "dead.1.x", (ms(fire),)).encode()
    )
    s = Scheduler(app, name="alive", takeover="1s")
    s.tick(ms(fire) + 1500)
    assert s.fired == 0
    assert ch.counts()["published_total"] == 1
    assert app.thoonk.client.hget(key, "cursor") == str(ms(fire)).encode()


def test_zoneinfo_object_is_accepted() -> None:
    assert entry("0 9 * * *", tz=PARIS).tz == "Europe/Paris"


def test_entry_status_for_cron_list(app: TaskPipe) -> None:
    from taskpipe.cli.cron_cmd import entry_status

    app.add_cron("tasks.tick", "* * * * * *", name="tick")
    app.add_cron("tasks.tick", "0 9 * * *", name="morning", tz="Europe/Paris")
    s = Scheduler(app)
    s.tick(ms(LAST))
    s.tick(ms(LAST + timedelta(seconds=1, milliseconds=3)))
    rows = {r.name: r for r in entry_status(app, now=LAST + timedelta(seconds=1, milliseconds=5))}
    assert rows["tick"].last_fire == LAST + timedelta(seconds=1)
    assert rows["tick"].next_fire == LAST + timedelta(seconds=2)
    assert rows["tick"].last_job == f"cron:tick:{int(LAST.timestamp()) + 1}"
    assert rows["tick"].last_outcome == "available"
    assert rows["morning"].last_fire is None and rows["morning"].last_outcome == "never"
    assert rows["morning"].next_fire.isoformat() == "2024-01-02T09:00:00+01:00"
    assert rows["morning"].to_dict()["last_fire"] is None
