"""Django integration, run as a user runs it: examples/django_project migrated, served by
``runserver`` and worked by ``manage.py taskpipe worker`` (real processes, real HTTP, real
Redis), on SQLite and on the PostgreSQL at 127.0.0.1:5432 (a database of its own per run).

Covers: settings-driven app and autodiscovery of ``tasks.py``; ``delay_on_commit`` publishing
only after the commit and never after a rollback; database connections closed around each task;
the management command; the dashboard served by Django for staff and linked from the admin.
"""

from __future__ import annotations

import os
import re
import urllib.request
import uuid
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

pytest.importorskip("django")

from integration_helpers import ROOT, http, processes, wait_http
from polling import wait_for
from redis_server import RedisServer, free_port

PROJECT = ROOT / "examples" / "django_project"
PG = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
TASKS_OUTPUT = "--- manage.py taskpipe tasks ---"
# migrate, createsuperuser and ``taskpipe tasks`` as manage.py runs them (the same
# execute_from_command_line), one after the other in one process: one Django start, not three
SETUP = f"""
import contextlib, io
from django.core.management import execute_from_command_line as manage
manage(["manage.py", "migrate", "--noinput"])
manage(["manage.py", "createsuperuser", "--noinput"])
out = io.StringIO()
with contextlib.redirect_stdout(out):
    manage(["manage.py", "taskpipe", "tasks"])
print({TASKS_OUTPUT!r})
print(out.getvalue())
"""
# the example's settings, with Django's fast password hasher for tests (the default PBKDF2 costs
# ~0.5 s of CPU per hash: createsuperuser and the admin login each hash the password once)
TEST_SETTINGS = """
from proj.settings import *  # noqa: F403
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {"EXAMPLE_DB": "sqlite", "EXAMPLE_DB_NAME": str(tmp_path / "shop.sqlite3")}
        return
    psycopg = pytest.importorskip("psycopg")
    name = f"tp_django_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG, autocommit=True)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):  # CI machines run PostgreSQL: there, missing it is a failure
            raise
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield {
                "EXAMPLE_DB": "postgresql",
                "EXAMPLE_DB_NAME": name,
                "EXAMPLE_DB_APP": f"web-{name}",
            }
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_sessions(db: str, app_name: str) -> int:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (db, app_name),
        ).fetchone()
    return int(row[0]) if row else 0


def test_example_project(
    database: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "example_test_settings.py").write_text(TEST_SETTINGS)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **database,
        "TASKPIPE_BROKER_URL": redis_server.url,
        "TASKPIPE_PREFIX": f"dj{uuid.uuid4().hex[:8]}:",
        "DJANGO_SETTINGS_MODULE": "example_test_settings",
        "DJANGO_SUPERUSER_PASSWORD": "s3cret-pass",
        "DJANGO_SUPERUSER_USERNAME": "admin",
        "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
    }
    worker_app = f"worker-{uuid.uuid4().hex[:8]}"
    with processes(env, PROJECT, path=[tmp_path]) as procs:
        tasks = procs.run(["-c", SETUP]).split(TASKS_OUTPUT, 1)[1]
        assert "shop.tasks.fulfil" in tasks  # autodiscovered
        procs.start("web", ["manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"])
        wait_http(base + "/orders/1", procs)

        status, first, _ = http("POST", base + "/orders", {"item": "book", "quantity": 2})
        assert status == 202, first
        # inside the transaction the job did not exist; after the commit it was published
        assert first["state_inside_transaction"] == "unknown"
        assert first["state_after_commit"] == "available"
        status, rolled, _ = http("POST", base + "/orders", {"item": "x", "quantity": 1, "fail": 1})
        assert status == 409 and rolled["state_inside_transaction"] == "unknown", rolled

        procs.start(
            "worker",
            ["manage.py", "taskpipe", "worker", "-c", "1"],
            env={"EXAMPLE_DB_APP": worker_app},
        )
        _, done, _ = http("GET", f"{base}/jobs/{first['job']}?wait=60")
        assert done["state"] == "finished", done
        assert done["value"]["item"] == "book" and done["value"]["db"] == database["EXAMPLE_DB"]
        assert http("GET", f"{base}/orders/{first['order']}")[1] == {
            "item": "book",
            "status": "fulfilled",
            "fulfilled_by": "taskpipe",
        }
        _, second, _ = http("POST", base + "/orders", {"item": "pen", "quantity": 1})
        _, done2, _ = http("GET", f"{base}/jobs/{second['job']}?wait=60")
        assert done2["state"] == "finished", done2
        # the rolled-back order's job was never published
        assert http("GET", f"{base}/jobs/{rolled['job']}")[:2] == (404, {"state": "unknown"})
        # (SQLite hands the rolled-back primary key to the next order: check the item)
        assert http("GET", f"{base}/orders/{rolled['order']}")[1].get("item") != "x"
        if database["EXAMPLE_DB"] == "postgresql":
            # one database session per task, closed when the task ends (as after a request)
            assert done["value"]["session"] != done2["value"]["session"]
            wait_for(
                lambda: _pg_sessions(database["EXAMPLE_DB_NAME"], worker_app) == 0,
                what="the worker's database sessions to close",
            )

        # the dashboard: staff only, linked from the admin index
        status, _, resp = http("GET", base + "/taskpipe/api/overview")
        assert "/admin/login/" in resp.geturl()  # anonymous: sent to the login page
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        _, page, _ = http("GET", base + "/admin/login/", opener=opener)
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert found is not None, "no CSRF token on the login page"
        token = found.group(1)
        status, _, resp = http(
            "POST",
            base + "/admin/login/?next=/admin/",
            opener=opener,
            form={
                "username": "admin",
                "password": "s3cret-pass",
                "csrfmiddlewaretoken": token,
                "next": "/admin/",
            },
        )
        assert resp.geturl().endswith("/admin/"), resp.geturl()
        _, index, _ = http("GET", base + "/admin/", opener=opener)
        assert 'href="/admin/taskpipe/dashboard/"' in index
        status, shell, resp = http("GET", base + "/admin/taskpipe/dashboard/", opener=opener)
        assert status == 200 and resp.geturl().endswith(f"{port}/taskpipe/")
        assert "static/app.js" in shell
        status, overview, _ = http("GET", base + "/taskpipe/api/overview", opener=opener)
        assert status == 200 and overview["workers"] == 1, overview
        status, _, _ = http("POST", base + "/taskpipe/api/channels/default/pause", opener=opener)
        assert status == 403  # actions need the X-Taskpipe header
