"""taskpipe.contrib.django in this process (Django configured once, SQLite in a temp file):
``delay_on_commit`` and its checks, connections reset around each task, settings errors.
The end-to-end project run is tests/test_contrib_django.py."""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

django = pytest.importorskip("django")

from taskpipe import ConfigError, SerializationError  # noqa: E402
from taskpipe.testing import run_until_idle  # noqa: E402

if TYPE_CHECKING:
    from taskpipe.contrib.django import DjangoTaskPipe


@pytest.fixture(scope="module")
def dj() -> Iterator[DjangoTaskPipe]:
    from django.conf import settings

    if not settings.configured:
        db = Path(tempfile.mkdtemp(prefix="taskpipe-dj-")) / "unit.sqlite3"
        settings.configure(
            INSTALLED_APPS=[
                "django.contrib.contenttypes",
                "django.contrib.auth",
                "taskpipe.contrib.django",
            ],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(db)}},
            TASKPIPE={
                "broker": f"memory://{uuid.uuid4().hex}",
                "name": "unit",
                "autodiscover": False,
                "result_ttl": "1h",
            },
            USE_TZ=True,
        )
        django.setup()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS note (id INTEGER PRIMARY KEY, text TEXT)")
    from taskpipe.contrib.django import get_app

    yield get_app()


def test_settings_make_the_app(dj: DjangoTaskPipe) -> None:
    from taskpipe.contrib.django import DjangoTaskPipe, app

    assert app is dj and isinstance(dj, DjangoTaskPipe)
    assert dj.name == "unit" and dj.result_ttl == 3600 and dj.broker_url.startswith("memory://")
    with pytest.raises(ConfigError, match="brokr"):
        DjangoTaskPipe(brokr="x")


def test_publish_on_commit_only(dj: DjangoTaskPipe) -> None:
    from django.db import transaction

    @dj.task(name="unit.add")
    def add(a: int, b: int) -> int:
        return a + b

    with transaction.atomic():
        pending = add.delay_on_commit(1, 2)
        later = add.apply_async((3, 4), on_commit=True)
        assert pending.state == "unknown" and later.state == "unknown"
        with pytest.raises(SerializationError):  # checked at the call, not at commit
            add.delay_on_commit(object(), 1)  # type: ignore[arg-type]
    assert pending.state == "available" and later.state == "available"
    try:
        with transaction.atomic():
            lost = add.delay_on_commit(5, 6)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    run_until_idle(dj)
    assert pending.get(timeout=5) == 3 and later.get(timeout=5) == 7
    assert lost.state == "unknown"
    outside = add.delay_on_commit(2, 2)  # autocommit: published at once
    assert outside.state == "available"
    run_until_idle(dj)
    assert outside.get(timeout=5) == 4


def test_connections_reset_around_each_task(dj: DjangoTaskPipe) -> None:
    from django.db import connection

    @dj.task(name="unit.break_connection")
    def break_connection() -> str:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO note (text) VALUES ('first')")
        connection.connection.close()  # the driver's connection dies under Django's feet
        return "broken"

    @dj.task(name="unit.count")
    def count() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM note")
            return int(cursor.fetchone()[0])

    first, second = break_connection.delay(), count.delay()
    run_until_idle(dj, concurrency=1)  # one thread: the second task inherits its connection
    assert first.get(timeout=5) == "broken"
    assert second.get(timeout=5) >= 1


def test_management_command(dj: DjangoTaskPipe, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from django.core.management import call_command

    @dj.task(name="unit.listed", channel="reports")
    def listed() -> None:
        pass

    call_command("taskpipe", "tasks")
    out = capsys.readouterr().out
    assert re.search(r"^unit\.listed\s+reports", out, re.M), out
    assert "TASKPIPE_APP" not in os.environ  # set for the command only
    with pytest.raises(SystemExit) as info:
        call_command("taskpipe", "worker", "--no-such-option")
    assert info.value.code != 0


def test_override_settings_rebuilds_the_app(dj: DjangoTaskPipe) -> None:
    from django.conf import settings
    from django.test import override_settings

    @dj.task(name="unit.triple")
    def triple(x: int) -> int:
        return 3 * x

    before = dj.broker_url
    with override_settings(TASKPIPE={**settings.TASKPIPE, "eager": True}):
        assert dj.eager and triple.delay(2).get() == 6  # ran inline, no worker
    assert not dj.eager and dj.broker_url == before and "unit.triple" in dj.tasks
