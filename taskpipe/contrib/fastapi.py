"""FastAPI / Starlette (ASGI) integration: ``pip install 'taskpipe[fastapi]'``.

    from fastapi import FastAPI
    from taskpipe import TaskPipe
    from taskpipe.contrib.fastapi import TaskPipeDep, dashboard_app, lifespan

    tasks = TaskPipe(broker="redis://127.0.0.1:6379/0")
    api = FastAPI(lifespan=lifespan(tasks))          # checks the broker at startup, closes at exit
    api.mount("/taskpipe", dashboard_app(tasks))      # the dashboard as a sub-application

    @api.get("/result/{job_id}")
    async def result(job_id: str, tp: TaskPipeDep) -> dict:
        return {"value": await tp.AsyncResult(job_id).aget(timeout=10)}  # redis.asyncio, no thread

Plain Starlette apps use the same ``lifespan``, ``get_taskpipe(request)`` and ``dashboard_app``
(with ``Mount``); this module imports FastAPI for ``TaskPipeDep``, so install the extra.
See ``docs/fastapi.md``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from taskpipe.aio import async_client
from taskpipe.app import TaskPipe
from taskpipe.contrib.dashboard import Dashboard
from taskpipe.contrib.dashboard.mount import asgi_app
from taskpipe.errors import BrokerUnavailable, ConfigError
from taskpipe.thoonk.job_async import ping as broker_ping

__all__ = ["lifespan", "get_taskpipe", "TaskPipeDep", "dashboard_app"]

STATE_KEY = "taskpipe"


def lifespan(
    app: TaskPipe,
    *,
    check_broker: bool = True,
    inner: Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]] | None = None,
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan for ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)``.

    At startup it pings the broker over ``redis.asyncio`` (``check_broker``: a wrong URL fails
    the startup, not the first request) and puts the app in the lifespan state (what
    ``get_taskpipe`` reads); at shutdown it closes the app's connections. ``inner`` is your own
    lifespan, run inside this one (its state is merged).
    """

    @asynccontextmanager
    async def run(asgi: Any) -> AsyncIterator[dict[str, Any]]:
        if check_broker:
            await _ping(app)
        if hasattr(asgi, "state"):
            asgi.state.taskpipe = app  # for get_taskpipe on servers without lifespan state
        try:
            if inner is None:
                yield {STATE_KEY: app}
            else:
                async with inner(asgi) as state:
                    yield {**(state or {}), STATE_KEY: app}
        finally:
            await app.aclose()
            app.close()

    return run


async def _ping(app: TaskPipe) -> None:
    client = async_client(app)
    if client is None:
        return
    try:
        await broker_ping(client)
    except Exception as exc:  # any connection failure means the same thing here
        raise BrokerUnavailable(
            f"taskpipe broker {app.broker_url} is not reachable: {exc}"
        ) from exc


def _loop() -> Any:
    import asyncio

    return asyncio.get_running_loop()


def get_taskpipe(conn: HTTPConnection) -> TaskPipe:
    """The FastAPI dependency (or a Starlette helper) that gives the app set up by ``lifespan``."""
    app = getattr(conn.state, STATE_KEY, None) if hasattr(conn, "state") else None
    if app is None:
        app = getattr(conn.app.state, STATE_KEY, None)
    if not isinstance(app, TaskPipe):
        raise ConfigError("no taskpipe app: pass lifespan=taskpipe.contrib.fastapi.lifespan(app)")
    return app


#: ``tp: TaskPipeDep`` in a FastAPI endpoint's parameters gives the app
TaskPipeDep = Annotated[TaskPipe, Depends(get_taskpipe)]


def dashboard_app(
    app: TaskPipe, *, token: str | None = None, basic: tuple[str, str] | None = None
) -> Callable[..., Any]:
    """The dashboard as an ASGI app: ``api.mount("/taskpipe", dashboard_app(tasks))``.

    Guard it with your own middleware or ``token``/``basic`` (see ``docs/fastapi.md``)."""
    return asgi_app(Dashboard(app, token=token, basic=basic))
