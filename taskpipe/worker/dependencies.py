"""Hands a dependant its parents' results before it runs (``depends_on``, chains, chords).

A dependant is queued by the finish of its last parent (``taskpipe.thoonk.workflow``); here,
when a worker has claimed it, its parents' stored results are read (one MGET per channel). A
failed parent fails the dependant with ``DependencyFailed`` without running it (a chain's later
steps all report the first failure), unless the call said ``allow_failure=True``. With
``pass_results`` the parents' values are put in front of the call's arguments: the single
parent's value (``'one'``, a chain), or the list of every parent's value (``'all'``, a chord).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from taskpipe.errors import SerializationError
from taskpipe.serialization import ResultRecord, decode_result

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.worker.runner import Prepared

__all__ = ["with_parents", "DEPENDENCY_FAILED"]

#: the ``exc_type`` of a dependant failed because a parent failed
DEPENDENCY_FAILED = "DependencyFailed"


def _parents_of(options: dict[str, Any]) -> list[tuple[str, str]] | None:
    parents = options.get("parents")
    if not isinstance(parents, (list, tuple)) or not parents:
        return None
    out = []
    for p in parents:
        if not (
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p)
        ):
            return None
        out.append((p[0], p[1]))
    return out


def _records(app: TaskPipe, parents: list[tuple[str, str]]) -> list[ResultRecord | None]:
    by_channel: dict[str, list[int]] = {}
    for i, (channel, _) in enumerate(parents):
        by_channel.setdefault(channel, []).append(i)
    records: list[ResultRecord | None] = [None] * len(parents)
    for channel, idx in by_channel.items():
        raws = app.channel(channel).stored_results([parents[i][1] for i in idx])
        for i, raw in zip(idx, raws):
            if raw is None:
                continue
            try:
                records[i] = decode_result(raw)
            except SerializationError:  # a raw (Thoonk-native) result: the bytes are the value
                records[i] = ResultRecord(ok=True, value=raw)
    return records


def with_parents(app: TaskPipe, prepared: Prepared) -> Prepared:
    """``prepared`` with its parents' values in front of its arguments, or with an early
    failure outcome (a parent failed, or a value to pass is not stored). Unchanged for a job
    without parents."""
    from taskpipe.worker.runner import Outcome

    env = prepared.envelope
    if env is None or prepared.early is not None or "parents" not in env.options:
        return prepared
    claim = prepared.claim

    def fail(message: str) -> Prepared:
        prepared.early = Outcome(
            "failure",
            claim,
            exc_type=DEPENDENCY_FAILED,
            exc_message=message,
            envelope=env,
            task=prepared.task,
        )
        return prepared

    parents = _parents_of(env.options)
    if parents is None:
        return fail(f"job {claim.id} has a malformed parents option and was not run")
    mode = env.options.get("pass")
    allow = bool(env.options.get("allow_failure"))
    records = _records(app, parents)
    values: list[Any] = []
    for (channel, pid), record in zip(parents, records):
        if record is None:
            if mode is not None and not allow:
                return fail(
                    f"the result of parent job {channel}/{pid} is not stored (expired, "
                    "or result_ttl=0), so it cannot be passed on; not run"
                )
            values.append(None)
        elif not record.ok:
            if not allow:
                if record.exc_type == DEPENDENCY_FAILED:  # keep the first failure's story
                    return fail(record.exc_message or "")
                return fail(
                    f"parent job {channel}/{pid} failed: {record.exc_type}: {record.exc_message}"
                )
            values.append(None)
        else:
            values.append(record.value)
    if mode == "one":
        prepared.envelope = replace(env, args=(values[0], *env.args))
    elif mode == "all":
        prepared.envelope = replace(env, args=(values, *env.args))
    return prepared
