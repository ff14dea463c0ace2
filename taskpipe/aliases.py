"""Celery's publishing option names, accepted where the meaning is the same.

``apply_async(countdown=5, queue='emails', task_id='x', max_retries=3, ignore_result=True,
link=sig, link_error=sig)`` means ``delay=5, channel='emails', id='x', retries=3,
result_ttl=0, on_finish=sig, on_failure=sig``; ``headers=`` has the same name and meaning
(a ``str -> str`` map the worker's middleware reads as ``job.headers``). The other Celery options raise a
``ConfigError`` that names taskpipe's equivalent (or says there is none), instead of a bare
"unknown option".
"""

from __future__ import annotations

from typing import Any

from taskpipe.errors import ConfigError

__all__ = ["CELERY_ALIASES", "CELERY_HINTS", "translate_options"]

#: Celery option -> the taskpipe option with the same meaning
CELERY_ALIASES: dict[str, str] = {
    "countdown": "delay",
    "queue": "channel",
    "task_id": "id",
    "max_retries": "retries",
    "link": "on_finish",
    "link_error": "on_failure",
}

#: Celery options without a same-named meaning here -> what to use instead
CELERY_HINTS: dict[str, str] = {
    "soft_time_limit": "timeout= (the soft time limit)",
    "time_limit": "hard_timeout= (the process pool kills the child)",
    "routing_key": "channel= (a channel is the queue; there is no routing)",
    "exchange": "channel= (a channel is the queue; there is no exchange)",
    "serializer": "TaskPipe(serializer=...) (one serializer per app)",
    "compression": "nothing (payloads are msgpack; keep them small or pass references)",
    "retry": "TaskPipe(publish_retry=...) (how long a publish rides out a broker outage)",
    "retry_policy": "TaskPipe(publish_retry=...)",
    "shadow": "@app.task(name=...)",
    "chord": "taskpipe.chord(group, callback)",
    "group_id": "taskpipe.group(...), which returns a GroupResult",
    "parent_id": "depends_on=[parent]",
    "root_id": "depends_on=[parent]",
    "add_to_parent": "depends_on=[parent]",
    "reply_to": "AsyncResult.get() (results are stored per job)",
    "result_extended": "AsyncResult.info() (the job's state and bookkeeping)",
    "mandatory": "nothing (a publish is acknowledged by Redis)",
    "immediate": "nothing (a publish is acknowledged by Redis)",
    "delivery_mode": "nothing (durability is the broker's persistence setting)",
    "producer": "nothing (the app owns its connection)",
    "connection": "TaskPipe(connection=...)",
    "router": "channel=",
}


def translate_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with Celery's names replaced by taskpipe's (the same dict if none is used).

    Raises ``ConfigError`` when an alias and its taskpipe name are both given, or for a Celery
    option taskpipe has no same-meaning name for (naming the equivalent)."""
    if not options or not any(
        k in CELERY_ALIASES or k in CELERY_HINTS or k == "ignore_result" for k in options
    ):
        return options
    out = dict(options)
    for celery, ours in CELERY_ALIASES.items():
        if celery in out:
            value = out.pop(celery)
            if out.get(ours) is not None:
                raise ConfigError(f"both {celery}= (Celery's name) and {ours}= given: use {ours}=")
            out[ours] = value
    if "ignore_result" in out:
        ignore = out.pop("ignore_result")
        if ignore:
            if out.get("result_ttl") is not None:
                raise ConfigError("both ignore_result=True and result_ttl= given: use result_ttl=0")
            out["result_ttl"] = 0
    for celery, hint in CELERY_HINTS.items():
        if celery in out:
            raise ConfigError(f"{celery}= is a Celery option taskpipe does not take; use {hint}")
    return out
