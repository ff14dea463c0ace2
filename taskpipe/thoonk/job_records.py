"""Job records on a Thoonk job channel (docs/history.md): requeue an ended job from its record,
edit a waiting job's payload, note the error of a run that will be retried, retract waiting jobs.

``JobRecords`` holds these calls; ``JobChannel`` inherits it, so they are ``JobChannel`` methods
(and map broker errors like its own: see ``maps_broker_errors``). The record itself is written
by ``job_finish`` / ``job_stall`` / ``job_retract`` (``lua/_record.lua``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from taskpipe.errors import JobNotFound, ThoonkError, WrongJobState
from taskpipe.thoonk.job_reads import RECORD_FIELDS, _s, record_fields
from taskpipe.thoonk.script_keys import contract

if TYPE_CHECKING:
    from taskpipe.thoonk.flow import PutFlow
    from taskpipe.thoonk.job_reads import JobInfo
    from taskpipe.thoonk.keys import JobKeys
    from taskpipe.thoonk.scripts import ScriptRegistry
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["JobRecords", "RECORD_ITEM_MAX", "record_section"]

#: a record keeps the payload up to this size (else its size only: such a job cannot be requeued)
RECORD_ITEM_MAX = 64 * 1024


def record_section(
    keys: JobKeys, keep_ms: int, jobs: Iterable[tuple[str, str, str, str, int | None]]
) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV tails that make a script keep records (``lua/_record.lua``), for
    ``jobs``: ``(id, outcome, label, error code, run time ms or None)`` each; ``keep_ms`` is how
    long the failed indexes remember an entry."""
    tail_keys = [keys.failed_index, keys.label_stats]
    tail_args: list[Any] = [RECORD_ITEM_MAX, keep_ms]
    for id, outcome, label, code, runtime_ms in jobs:
        tail_keys += [keys.record(id), keys.label_index(label)]
        tail_args += [outcome, label, code, "" if runtime_ms is None else int(runtime_ms)]
    tail_args.append("\0record")
    return tail_keys, tail_args


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


class JobRecords:
    """The record calls of ``JobChannel`` (a mixin: ``JobChannel.__init__`` sets the state)."""

    #: ``maps_broker_errors`` on ``JobChannel`` maps these methods' errors too, as its own
    _broker_errors_mapped_by_subclass: ClassVar[bool] = True

    # set by JobChannel.__init__
    thoonk: Thoonk
    name: str
    keys: JobKeys
    client: Any
    scripts: ScriptRegistry

    if TYPE_CHECKING:  # provided by JobReads and JobChannel

        def info(self, id: str) -> JobInfo: ...

        def retract_each(self, ids: Sequence[str], guard: Sequence[str | int]) -> list[str]: ...

    def requeue(
        self,
        id: str,
        outcomes: Sequence[str] = ("failed", "timeout"),
        prepare: Callable[[bytes], tuple[bytes | None, PutFlow | None]] | None = None,
    ) -> str:
        """Publish an ended job again from its record: same id, its payload as published,
        attempts and cancels reset, the record kept (``requeues`` + 1). Only a job whose
        recorded outcome is one of ``outcomes``; returns that outcome. ``prepare(payload)``
        returns the payload to publish instead (None: the record's) and the job's flow control
        (numeric priority, rate and concurrency groups; its dedup part is not used), which the
        job lost when it ended.

        Raises ``JobNotFound`` (no record: never ended here, or it expired), ``WrongJobState``
        (the job is not ended, or its outcome is not allowed; nothing changed) or
        ``ThoonkError`` (the record kept no payload: it was over ``RECORD_ITEM_MAX``).
        """
        k = self.keys
        for _ in range(5):
            new, flow = None, None
            if prepare is None:
                label = _s(self.client.hget(k.record(id), "l") or b"")
            else:  # read the payload too (up to RECORD_ITEM_MAX) for the caller to look at
                raw_label, item = self.client.hmget(k.record(id), "l", "i")
                label = _s(raw_label or b"")
                if item is not None:
                    new, flow = prepare(bytes(item))
            keys = contract("job_requeue").build(
                k,
                k.label_index(label),
                result=k.result(id),
                record=k.record(id),
            )
            args: list[Any] = [id, ",".join(outcomes), label, new or b""]
            if flow is not None:
                args += ["" if flow.priority is None else str(flow.priority), flow.spec_rest()]
            code, outcome = self.scripts["job_requeue"](self.client, keys, args)
            code, outcome = int(code), _s(outcome)
            if code == 1:
                return outcome
            if code == 0:
                raise JobNotFound(
                    f"no record of job {id!r} in channel {self.name!r} (it never "
                    "ended here, or its record expired)"
                )
            if code == -1:
                raise WrongJobState(id, "/".join(outcomes), self.info(id).state)
            if code == -2:
                raise WrongJobState(id, "/".join(outcomes), outcome)
            if code == -3:
                raise ThoonkError(
                    f"job {id!r} cannot be requeued: its payload was over "
                    f"{RECORD_ITEM_MAX} bytes and was not kept in its record"
                )
        raise ThoonkError(f"the record of job {id!r} kept changing; nothing was requeued")

    def note_error(self, id: str, text: str, ttl_ms: int) -> None:
        """Keep the error of a run that will be retried in the job's record (field ``e``), so
        a job waiting out its retry backoff shows why (the next finish rewrites the record)."""
        key = self.keys.record(id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, "e", text[:2000]).pexpire(key, max(1, int(ttl_ms)))
        pipe.execute()

    def edit(self, id: str, item: bytes | str) -> None:
        """Replace the payload of a job still waiting (available, delayed or stalled),
        atomically. ``WrongJobState`` if a worker holds it, ``JobNotFound`` if it is not
        waiting (finished, retracted, unknown); nothing changes then."""
        code = int(
            self.scripts["job_edit"](
                self.client, contract("job_edit").build(self.keys), [id, _b(item)]
            )
        )
        if code == 1:
            return
        if code == -1:
            raise WrongJobState(id, "available, delayed or stalled", "claimed")
        state = self.info(id).state
        if state == "unknown":
            raise JobNotFound(f"no job {id!r} in channel {self.name!r}")
        raise WrongJobState(id, "available, delayed or stalled", state)

    def retract_waiting(self, ids: Sequence[str]) -> list[str]:
        """Retract those of ``ids`` that are still waiting (available, delayed or stalled: not
        claimed), each atomically; returns the ids retracted. Claimed jobs run on."""
        return self.retract_each(ids, ["waiting", 0])

    # reading records (find_jobs, read_record) -------------------------------------------------
    def records_with_results(
        self, ids: Sequence[str]
    ) -> list[tuple[dict[str, bytes], bytes | None]]:
        """For each of ``ids``, in one round trip: its record (name -> value, ``record_fields``;
        empty when it has none) and its stored result (None when there is none)."""
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.keys.record(job_id), RECORD_FIELDS)
            pipe.get(self.keys.result(job_id))
        r = pipe.execute()
        return [(record_fields(r[2 * n]), r[2 * n + 1]) for n in range(len(ids))]

    def record_index(self, failures: bool, label: str | None = None) -> str:
        """The index to read records from: a label's failures, every failure, or every
        finished job (``feed.finished``)."""
        if failures:
            return self.keys.label_index(label) if label else self.keys.failed_index
        return self.keys.finished

    def record_index_page(
        self, index: str, until_ms: int | None, since_ms: int | None, start: int, count: int
    ) -> list[str]:
        """Ids of ``index`` (``record_index``) finished within the bounds, newest first."""
        return [
            _s(i)
            for i in self.client.zrevrangebyscore(
                index,
                "+inf" if until_ms is None else until_ms,
                "-inf" if since_ms is None else since_ms,
                start=start,
                num=count,
            )
        ]

    def drop_from_record_index(self, index: str, ids: Sequence[str]) -> None:
        """Remove ``ids`` (whose records expired) from a record index (never the finished one)."""
        if ids and index != self.keys.finished:
            self.client.zrem(index, *ids)

    def label_counts(self) -> dict[str, int]:
        """The lifetime counters ``"<label>\0<outcome>" -> jobs`` (``HSCAN``-paged)."""
        return {_s(f): int(c) for f, c in self.client.hscan_iter(self.keys.label_stats, count=500)}

    def scan_items(self, cursor: int = 0, count: int = 500) -> tuple[int, list[str]]:
        """One ``HSCAN`` step over the unfinished jobs: ``(next cursor, ids)``; cursor 0 = done."""
        nxt, found = self.client.hscan(self.keys.items, int(cursor), count=int(count))
        return int(nxt), [_s(i) for i in found]

    def has_record(self, id: str) -> bool:
        """True if the job has a record (it ended, was stalled, or was retracted before it ended)."""
        return bool(self.client.exists(self.keys.record(id)))

    def oldest_waiting_ms(self) -> int | None:
        """When the oldest available job (the next to run: the right end of ``ids``) was
        published (server ms), or None when none waits."""
        oldest = self.client.lindex(self.keys.ids, -1)
        score = self.client.zscore(self.keys.published, oldest) if oldest is not None else None
        return int(score) if score is not None else None

    def record_outcomes(self, ids: Sequence[str]) -> list[tuple[str | None, str, bytes | None]]:
        """For each of ``ids``: ``(record outcome or None, label, stored result or None)``."""
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.keys.record(job_id), "o", "l")  # outcome, label (lua/_record.lua)
            pipe.get(self.keys.result(job_id))
        r = pipe.execute()
        return [
            (
                _s(r[2 * n][0]) if r[2 * n][0] is not None else None,
                _s(r[2 * n][1] or b""),
                r[2 * n + 1],
            )
            for n in range(len(ids))
        ]

    def forget_records(self, jobs: Sequence[tuple[str, str]]) -> None:
        """Remove the records of cleaned jobs ``(id, label)`` and their failed-index and
        task-index entries, in one MULTI."""
        if not jobs:
            return
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(k.failed_index, *[i for i, _ in jobs])
        pipe.delete(*[k.record(i) for i, _ in jobs])
        for job_id, label in jobs:
            if label:
                pipe.zrem(k.label_index(label), job_id)
        pipe.execute()
