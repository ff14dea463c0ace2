"""A job channel's result wait and state read on a ``redis.asyncio`` client (no thread per wait).

The task layer (``taskpipe/aio.py``) owns the asyncio clients (one per running event loop) and
passes one in; the commands, the scripts and the pub/sub subscription are sent from here. The
wait is the blocking ``JobChannel.get_result`` in asyncio form: read the stored result, subscribe
to ``job.finish:<f>``, read again (it may have landed in between), then wait for the message,
reading the job's state (``job_state.lua``) whenever a second passes without one. ``ping``
checks that the broker answers on such a client (the FastAPI integration's start-up check).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import redis

from taskpipe.states import JobState
from taskpipe.thoonk.scripts import raise_as_broker_error

if TYPE_CHECKING:
    from taskpipe.thoonk.job_reads import JobReads

__all__ = ["state_and_reason", "wait_result", "ping"]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


async def _state_reason(client: Any, ch: JobReads, id: str) -> tuple[JobState, str]:
    script = ch.scripts["job_state"]
    keys = ch.state_keys(id)
    try:
        reply = await client.evalsha(script.sha, len(keys), *keys, id)
    except redis.exceptions.NoScriptError:
        await client.script_load(script.source)
        reply = await client.evalsha(script.sha, len(keys), *keys, id)
    return JobState(_text(reply[0])), _text(reply[3])


async def state_and_reason(client: Any, ch: JobReads, id: str) -> tuple[JobState, str]:
    """The job's state and stall reason, read atomically with ``job_state.lua`` on ``client``
    (a ``redis.asyncio`` client). Broker failures raise ``BrokerUnavailable``."""
    try:
        return await _state_reason(client, ch, id)
    except redis.exceptions.RedisError as exc:
        raise_as_broker_error("job_state", exc)


async def wait_result(client: Any, ch: JobReads, id: str, wait: float) -> bytes | None:
    """The job's raw stored result, waiting up to ``wait`` seconds on ``client`` (a
    ``redis.asyncio`` client). None on timeout, when the job finished without a stored result,
    or when it is stalled or unknown (no result will come)."""
    key = ch.keys.result(id)
    try:
        value: bytes | None = await client.get(key)
        if value is not None or wait <= 0:
            return value
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(ch.keys.ch_finish)
            value = await client.get(key)  # it may have landed before we subscribed
            deadline = time.monotonic() + wait
            prefix = id.encode() + b"\0"
            while value is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                msg = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=min(remaining, 1.0)
                )
                data = msg.get("data") if msg else None
                if isinstance(data, bytes) and data.startswith(prefix):
                    return data[len(prefix) :]
                if msg is None:
                    state, _ = await _state_reason(client, ch, id)
                    if state == JobState.FINISHED:
                        late: bytes | None = await client.get(key)
                        return late
                    if state in (JobState.STALLED, JobState.UNKNOWN):  # no result will come
                        return None
            return value
        finally:
            await pubsub.aclose()
    except redis.exceptions.RedisError as exc:
        raise_as_broker_error("get_result", exc)


async def ping(client: Any) -> None:
    """``PING`` on ``client`` (a ``redis.asyncio`` client); raises what the client raises."""
    await client.ping()
