"""Native asyncio result waits: ``await result`` on ``redis.asyncio``, no thread per call.

The app keeps one ``redis.asyncio`` client per running event loop (made on first use, dropped
with the loop); the commands are sent by the Thoonk layer (``taskpipe/thoonk/job_async.py``).
A wait reads the stored result, subscribes to the channel's ``job.finish``,
reads again (it may have landed in between) and then waits for the message, exactly like the
blocking ``get()``. Brokers that ``redis.asyncio`` cannot reach the same way (an app built on a
ready-made ``client=``, Cluster URLs) fall back to the blocking wait in a thread. Sentinel
URLs get an asyncio client on the master that the sentinels name.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import redis.asyncio

from taskpipe.states import JobState
from taskpipe.thoonk.job_async import state_and_reason
from taskpipe.thoonk.job_async import wait_result as _wait_result

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.results import AsyncResult

__all__ = ["async_client", "wait_result", "job_state"]

_FOREVER = 365 * 24 * 3600.0


def async_client(app: TaskPipe) -> Any:
    """The app's ``redis.asyncio`` client for the running loop, or None where there is none."""
    conn = app.connection
    loop = asyncio.get_running_loop()
    clients = app._async_clients
    client = clients.get(loop)
    if client is not None:
        return client
    if conn.scheme in ("redis", "rediss", "unix"):
        client = redis.asyncio.Redis.from_url(conn.url, socket_connect_timeout=5, socket_timeout=30)
    elif conn.scheme == "redis+sentinel":
        from redis.asyncio.sentinel import Sentinel

        info = conn.info
        sentinel = Sentinel(
            info["hosts"],
            socket_timeout=5,  # type: ignore[no-untyped-call]
            sentinel_kwargs={"socket_timeout": 5, **info["sentinel_auth"]},
        )
        client = sentinel.master_for(
            info["master"],
            db=info["db"],
            password=info["password"],
            username=info["username"],
            socket_timeout=30,
            socket_connect_timeout=5,
        )
        client.taskpipe_sentinels = list(sentinel.sentinels)  # closed by app.aclose()
    elif conn.scheme == "memory":
        import fakeredis

        conn.new_client()  # makes the embedded server if nothing did yet
        client = fakeredis.FakeAsyncRedis(server=conn._fake_server)
    else:
        return None
    clients[loop] = client
    return client


async def job_state(result: AsyncResult[Any]) -> tuple[JobState, str]:
    """The job's state and stall reason, read with the ``job_state`` script on the asyncio
    client (on a thread where the app has no asyncio client)."""
    client = async_client(result.app)
    if client is None:
        info = await asyncio.to_thread(result.info)
        return info.state, info.reason
    return await state_and_reason(client, result._ch, result.id)


async def wait_result(result: AsyncResult[Any], timeout: float | None) -> bytes | None:
    """The job's raw result, waiting up to ``timeout`` seconds (None: as long as it takes).

    Returns None on timeout or when the job finished without a stored result.
    """
    client = async_client(result.app)
    wait = _FOREVER if timeout is None else float(timeout)
    if client is None:
        return await asyncio.to_thread(result._ch.get_result, result.id, wait)
    return await _wait_result(client, result._ch, result.id, wait)
