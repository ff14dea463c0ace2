"""A FastAPI application that publishes taskpipe tasks and awaits their results natively.

Run it (Redis on 127.0.0.1:6379, or set TASKPIPE_BROKER_URL):

    cd examples/fastapi_app
    taskpipe worker -A main:tasks
    uvicorn main:api --port 8000

    curl -X POST localhost:8000/add -H 'Content-Type: application/json' -d '{"a": 2, "b": 3}'
    curl localhost:8000/result/<id>?wait=10       # awaits on redis.asyncio: no thread per wait
    curl localhost:8000/sum/2/3                   # publishes and awaits in one request
    open http://localhost:8000/taskpipe/          # the dashboard, mounted as a sub-application
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from taskpipe import ResultTimeout, ResultUnknown, TaskFailed, TaskPipe
from taskpipe.contrib.fastapi import TaskPipeDep, dashboard_app, lifespan

tasks = TaskPipe(
    "fastapi-example",
    broker=os.environ.get("TASKPIPE_BROKER_URL", "redis://127.0.0.1:6379/0"),
    prefix=os.environ.get("TASKPIPE_PREFIX", ""),
)


@tasks.task
def add(a: int, b: int) -> int:
    return a + b


@tasks.task
async def slow_echo(text: str) -> str:
    return text.upper()


api = FastAPI(lifespan=lifespan(tasks))
api.mount("/taskpipe", dashboard_app(tasks))


class AddIn(BaseModel):
    a: int
    b: int


@api.post("/add", status_code=202)
def publish(body: AddIn) -> dict[str, str]:
    return {"id": add.delay(body.a, body.b).id}


@api.get("/result/{job_id}")
async def result(job_id: str, tp: TaskPipeDep, wait: float = 0) -> dict[str, Any]:
    handle = tp.AsyncResult(job_id)
    try:
        value = await handle.aget(timeout=wait)
    except ResultTimeout:
        return {"state": "pending"}
    except ResultUnknown:
        raise HTTPException(404, f"no job {job_id}") from None
    except TaskFailed as exc:
        return {"state": "failed", "error": f"{exc.exc_type}: {exc.exc_message}"}
    return {"state": "finished", "value": value}


@api.get("/sum/{a}/{b}")
async def sum_now(a: int, b: int) -> dict[str, int]:
    return {"sum": await add.delay(a, b)}  # `await result` waits without blocking the loop


@api.get("/shout/{text}")
async def shout(text: str) -> dict[str, str]:
    return {"text": await slow_echo.delay(text).aget(timeout=30)}
