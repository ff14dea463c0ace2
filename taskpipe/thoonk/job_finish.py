"""Finishing claimed jobs on a Thoonk job channel: ``job_finish`` stores each result, publishes
job.finish, keeps the job's record (docs/history.md) and releases workflow dependants, for a
batch of jobs in one atomic call.

``FinishOps`` holds the calls; ``JobChannel`` inherits it, so they are ``JobChannel`` methods
(and map broker errors like its own: see ``maps_broker_errors``). The script's KEYS are in
``script_keys.py`` (``job_finish``, ``FINISH_FOLLOWUP_ROLES``); its ARGV layout is built here
only (``_finish_parts`` and ``_record_section``, read by ``lua/job_finish.lua`` and
``lua/_record.lua``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from taskpipe.thoonk.job_reads import _b, _check_id
from taskpipe.thoonk.job_records import record_section
from taskpipe.thoonk.script_keys import FINISH_FOLLOWUP_ROLES

if TYPE_CHECKING:
    from taskpipe.thoonk.keys import JobKeys
    from taskpipe.thoonk.scripts import ScriptRegistry

__all__ = ["FinishOps", "FinishRequest", "FINISHED_INDEX_MS"]

FINISHED_INDEX_MS = 7 * 24 * 3600 * 1000  # how long the finished-id index remembers a job


class _Channel(Protocol):
    """What a follow-up's target channel offers ``_finish_parts`` (a ``JobChannel``)."""

    keys: JobKeys


@dataclass(frozen=True)
class FinishRequest:
    """One job to finish with ``finish_many``."""

    id: str
    token: str = ""
    result: bytes | None = None  # None: plain acknowledgement; bytes (even b""): a result
    result_ttl_ms: int = 0
    failed: bool = False
    keep_query: bool = False  # keep the item beside a stored result (feed.query:<f>:<id>)
    #: job record (docs/history.md): '' keeps none; 'succeeded', 'failed' or 'timeout' keeps one with
    #: the job's payload, counts, worker and times, for ``result_ttl_ms``
    outcome: str = ""
    label: str = ""  # what the record is indexed by (the task name)
    code: str = ""  # an error code kept in the record
    runtime_ms: int | None = None


class FinishOps:
    """The finish calls of ``JobChannel`` (a mixin: ``JobChannel.__init__`` sets the state)."""

    #: ``maps_broker_errors`` on ``JobChannel`` maps these methods' errors too, as its own
    _broker_errors_mapped_by_subclass: ClassVar[bool] = True

    # set by JobChannel.__init__
    keys: JobKeys
    client: Any
    scripts: ScriptRegistry
    _finish_keys: list[str]

    if TYPE_CHECKING:  # provided by JobChannel and WorkflowOps

        def _raise_for(self, code: int, id: str, expected: str, token: str = "") -> None: ...

        def workflow_section(self, id: str | None) -> tuple[list[str], list[Any]]: ...

        def workflow_sections(self, ids: Sequence[str]) -> list[tuple[list[str], list[Any]]]: ...

    def finish(
        self,
        id: str,
        result: bytes | str | None = None,
        result_ttl_ms: int = 0,
        token: str = "",
        failed: bool = False,
    ) -> None:
        """Finish a claimed job; store ``result`` for ``result_ttl_ms`` and publish job.finish
        (``result=None`` is a plain acknowledgement; any bytes, ``b""`` too, are a result)."""
        req = FinishRequest(
            id, token, _b(result) if result is not None else None, int(result_ttl_ms), failed
        )
        code = self.finish_many([req])[0]
        self._raise_for(code, id, "claimed", token)

    def finish_many(
        self,
        requests: Sequence[FinishRequest],
        followup: tuple[_Channel, str, bytes] | None = None,
    ) -> list[int]:
        """Finish several claimed jobs in one script call; returns a code per job.

        Codes: 1 finished, 0 not claimed, -1 lease lost. ``followup`` = ``(channel, id, item)``
        publishes one more job in the same atomic step (only with one request). A job that
        other jobs wait for (``depends_on``) is finished on its own, with its dependants
        released in the same step (``taskpipe.thoonk.workflow``).
        """
        if not requests:
            return []
        if followup is not None and len(requests) != 1:
            raise ValueError("a follow-up job can only ride on a single finish")
        if len(requests) > 1000:
            raise ValueError("finish_many takes at most 1000 jobs per call")
        keys, args = self._finish_parts(requests, followup)
        codes = [
            int(c) for c in self._finish_call(requests, keys, args, self.workflow_section(None))
        ]
        if len(requests) == 1:
            for _ in range(100):  # -2: it has dependants (or more than were read): pass them
                if codes[0] != -2:
                    break
                section = self.workflow_section(requests[0].id)
                codes = [int(c) for c in self._finish_call(requests, keys, args, section)]
            return codes
        todo = [i for i in range(len(requests)) if codes[i] == -2]
        if todo:  # in a batch: finished one by one, their dependants read in one round trip
            sections = self.workflow_sections([requests[i].id for i in todo])
            for i, section in zip(todo, sections):
                one_keys, one_args = self._finish_parts([requests[i]], None)
                code = int(self._finish_call([requests[i]], one_keys, one_args, section)[0])
                codes[i] = code if code != -2 else self.finish_many([requests[i]])[0]
        return codes

    def _finish_parts(
        self, requests: Sequence[FinishRequest], followup: tuple[_Channel, str, bytes] | None
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of one ``job_finish`` call, before its workflow section."""
        keys = [
            *self._finish_keys,
            *(self.keys.result(r.id) for r in requests),
            *(self.keys.query(r.id) for r in requests if r.keep_query and r.result is not None),
        ]
        args: list[Any] = [self.keys.ch_finish, FINISHED_INDEX_MS, len(requests)]
        for r in requests:
            args += [
                r.id,
                r.token,
                b"" if r.result is None else _b(r.result),
                max(0, int(r.result_ttl_ms)),  # an integer string: job_finish passes it on as PX
                "1" if r.failed else "0",
                "0" if r.result is None else "2" if r.keep_query else "1",
            ]
        if followup is not None:
            target, fid, fitem = followup
            fitem = _b(fitem)
            t = target.keys
            keys += [*(getattr(t, role) for role in FINISH_FOLLOWUP_ROLES), t.result(fid)]
            args += [_check_id(fid), fitem]
        return keys, args

    def _finish_call(
        self,
        requests: Sequence[FinishRequest],
        keys: list[str],
        args: list[Any],
        section: tuple[list[str], list[Any]],
    ) -> list[Any]:
        """One ``job_finish`` call: its main part, then the workflow section, then (when a
        request carries an outcome to record) the record section."""
        wf_keys, wf_args = section
        keys, args = [*keys, *wf_keys], [*args, *wf_args]
        if any(r.outcome for r in requests):
            self._record_section(requests, keys, args)
        return list(self.scripts["job_finish"](self.client, keys, args))

    def _record_section(
        self, requests: Sequence[FinishRequest], keys: list[str], args: list[Any]
    ) -> None:
        """Append the record section of ``job_finish`` (see ``lua/_record.lua``)."""
        tail_keys, tail_args = record_section(
            self.keys,
            FINISHED_INDEX_MS,
            ((r.id, r.outcome, r.label, r.code, r.runtime_ms) for r in requests),
        )
        keys += tail_keys
        args += tail_args
