"""FastAPI / Starlette integration: lifespan, the app dependency, the mounted dashboard and
native ``await result``; examples/fastapi_app end to end under a real uvicorn server with a
real worker process and real Redis."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi import FastAPI
from integration_helpers import ROOT, http, processes, wait_http
from redis_server import RedisServer, free_port

from taskpipe import TaskPipe
from taskpipe.contrib.fastapi import TaskPipeDep, dashboard_app, lifespan
from taskpipe.errors import BrokerUnavailable
from taskpipe.testing import run_until_idle


def test_lifespan_dependency_and_dashboard() -> None:
    httpx = pytest.importorskip("httpx")
    tasks = TaskPipe(broker=f"memory://{uuid.uuid4().hex}")

    @tasks.task
    def add(a: int, b: int) -> int:
        return a + b

    api = FastAPI(lifespan=lifespan(tasks))
    api.mount("/ops", dashboard_app(tasks, token="tok"))

    @api.get("/publish")
    def publish(tp: TaskPipeDep) -> dict[str, str]:
        assert tp is tasks
        return {"id": add.delay(1, 2).id}

    @api.get("/get/{job_id}")
    async def get(job_id: str, tp: TaskPipeDep) -> dict[str, int]:
        return {"value": await tp.AsyncResult(job_id).aget(timeout=5)}

    async def main() -> None:
        async with api.router.lifespan_context(api) as state:
            assert state is not None and state["taskpipe"] is tasks
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                job = (await client.get("/publish")).json()["id"]
                await asyncio.to_thread(run_until_idle, tasks)
                assert (await client.get(f"/get/{job}")).json() == {"value": 3}
                assert (await client.get("/ops")).status_code in (307, 308)
                assert b"static/app.js" in (await client.get("/ops/")).content
                assert (await client.get("/ops/api/overview")).status_code == 401
                ok = await client.get("/ops/api/overview?token=tok")
                assert ok.status_code == 200 and ok.json()["channels"]

    asyncio.run(main())


def test_startup_fails_on_an_unreachable_broker() -> None:
    tasks = TaskPipe(broker=f"redis://127.0.0.1:{free_port()}/0")
    api = FastAPI(lifespan=lifespan(tasks))

    async def start() -> None:
        async with api.router.lifespan_context(api):
            pass

    with pytest.raises(BrokerUnavailable):
        asyncio.run(start())


def test_example_end_to_end(redis_server: RedisServer) -> None:
    port = free_port()
    env = {"TASKPIPE_BROKER_URL": redis_server.url, "TASKPIPE_PREFIX": f"fa{uuid.uuid4().hex[:8]}:"}
    base = f"http://127.0.0.1:{port}"
    with processes(env, ROOT / "examples" / "fastapi_app") as procs:
        procs.start(
            "web", ["-m", "uvicorn", "main:api", "--port", str(port), "--log-level", "warning"]
        )
        wait_http(base + "/taskpipe/healthz", procs)
        status, body, _ = http("POST", base + "/add", {"a": 20, "b": 22})
        assert status == 202, body
        job = body["id"]
        assert http("GET", f"{base}/result/{job}")[1] == {"state": "pending"}  # no worker yet
        assert http("GET", f"{base}/result/nope")[0] == 404
        # many requests awaiting at once on the server's one event loop, then the worker starts
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            waits = [pool.submit(http, "GET", f"{base}/sum/{i}/{i}") for i in range(8)]
            first = pool.submit(http, "GET", f"{base}/result/{job}?wait=60")
            procs.start("worker", ["-m", "taskpipe", "worker", "-A", "main:tasks", "-c", "4"])
            assert first.result(90)[1] == {"state": "finished", "value": 42}
            assert [w.result(90)[1] for w in waits] == [{"sum": 2 * i} for i in range(8)]
        assert http("GET", f"{base}/shout/hey")[1] == {"text": "HEY"}  # an async def task
        status, overview, _ = http("GET", base + "/taskpipe/api/overview")
        assert status == 200 and overview["workers"] == 1, overview
