"""The Thoonk side of workflows: jobs that wait for parent jobs, and their release.

A dependant (``depends_on``, a chain's next step, a chord's callback) is put by
``job_put_waiting.lua`` in the state ``waiting``: its item is stored, ``feed.waiting:<c>``
counts its unfinished parents, and each unfinished parent lists it in
``feed.dependents:<p>`` (``<parent id>`` -> how many, ``<parent id>\\0<k>`` ->
``<channel>\\0<id>``). ``job_finish.lua`` (through ``_workflow.lua``) decrements the counters
of a finishing job's dependants in the same atomic step, and queues the dependant whose counter
reaches zero: a dependant is released exactly once, whatever crashes around it.

``WorkflowOps`` holds these calls; ``JobChannel`` inherits it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskpipe.thoonk.script_keys import WORKFLOW_PARENT_ROLES, WORKFLOW_RELEASE_ROLES, contract

if TYPE_CHECKING:
    from taskpipe.thoonk.flow import PutFlow
    from taskpipe.thoonk.keys import JobKeys
    from taskpipe.thoonk.scripts import ScriptRegistry
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["WorkflowOps", "MAX_PARENTS", "MAX_DEPENDANTS"]

#: the most parents one job may wait for (one ``job_put_waiting`` call)
MAX_PARENTS = 1000
#: the most jobs that may wait for one parent (its finish releases them all in one script)
MAX_DEPENDANTS = 10_000


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class WorkflowOps:
    """Put a job that waits for parents; build the workflow section of a finish."""

    name: str
    keys: JobKeys
    client: Any
    scripts: ScriptRegistry
    thoonk: Thoonk

    def put_waiting(
        self,
        id: str,
        item: bytes,
        parents: Sequence[tuple[str, str]],
        flow: PutFlow | None = None,
    ) -> tuple[int, int]:
        """Publish job ``id`` to run once every ``(channel, parent id)`` has finished.
        ``flow``: its numeric priority, rate-limit and concurrency groups, honoured by the
        claim once it is released (its dedup fields are not read: refused with parents).

        Returns ``(code, unfinished)``: code 1 published (``unfinished`` parents left; 0 means
        it was queued at once), 0 an item with that id exists (nothing written), -1 parent
        number ``unfinished`` (1-based) is unknown, -3 it has ``MAX_DEPENDANTS`` already
        (nothing written).
        """
        if not 1 <= len(parents) <= MAX_PARENTS:
            raise ValueError(f"a job waits for 1 to {MAX_PARENTS} parents")
        tail: list[str] = []
        for channel, pid in parents:
            pk = self.thoonk.keys.job(channel)
            tail += [
                pk.result(pid) if role == "result" else getattr(pk, role)
                for role in WORKFLOW_PARENT_ROLES
            ]
        keys = contract("job_put_waiting").build(self.keys, *tail)
        args: list[Any] = [
            id,
            item,
            f"{self.name}\0{id}",
            len(parents),
            *(p for _, p in parents),
            MAX_DEPENDANTS,
            "" if flow is None or flow.priority is None else str(flow.priority),
            "" if flow is None else flow.spec_rest(),
        ]
        r = self.scripts["job_put_waiting"](self.client, keys, args)
        return int(r[0]), int(r[1]) if len(r) > 1 else 0

    def waiting_parents(self, id: str) -> int | None:
        """How many parents job ``id`` still waits for (None: it is not waiting)."""
        value = self.client.hget(self.keys.waiting, id)
        return None if value is None else int(value)

    def scan_waiting(self, cursor: int, count: int) -> tuple[int, dict[str, int]]:
        """One ``HSCAN`` step over the waiting jobs: ``(next cursor, {id: parents left})``."""
        nxt, batch = self.client.hscan(self.keys.waiting, cursor, count=count)
        return int(nxt), {_text(i): int(n) for i, n in batch.items()}

    def waiting_count(self) -> int:
        """How many jobs of this channel wait for parents."""
        return int(self.client.hlen(self.keys.waiting))

    def dependants(self, id: str) -> list[tuple[str, str]]:
        """``(channel, id)`` of the jobs that wait for job ``id`` to finish."""
        count = self.client.hget(self.keys.dependents, id)
        if not count:
            return []
        fields = [f"{id}\0{k}" for k in range(1, int(count) + 1)]
        out = []
        for entry in self.client.hmget(self.keys.dependents, fields):
            channel, _, did = _text(entry or b"").partition("\0")
            out.append((channel, did))
        return out

    def workflow_sections(self, ids: Sequence[str]) -> list[tuple[list[str], list[Any]]]:
        """``workflow_section`` of each of ``ids``, read in two pipelined round trips."""
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hget(self.keys.dependents, i)
        counts = [int(c or 0) for c in pipe.execute()]
        pipe = self.client.pipeline(transaction=False)
        for i, c in zip(ids, counts):
            if c:
                pipe.hmget(self.keys.dependents, [f"{i}\0{k}" for k in range(1, c + 1)])
        entries = iter(pipe.execute() if any(counts) else [])
        out = []
        for c in counts:
            deps = []
            for entry in next(entries) if c else []:
                channel, _, did = _text(entry or b"").partition("\0")
                deps.append((channel, did))
            out.append(self._section_of(deps))
        return out

    def workflow_section(self, id: str | None) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV tails ``job_finish`` takes for its workflow section: the dependants
        of job ``id`` (None: none passed, as for a batch)."""
        return self._section_of(self.dependants(id) if id is not None else [])

    def _section_of(self, deps: list[tuple[str, str]]) -> tuple[list[str], list[Any]]:
        keys = [self.keys.dependents]
        for channel, _ in deps:
            dk = self.thoonk.keys.job(channel)
            keys += [getattr(dk, role) for role in WORKFLOW_RELEASE_ROLES]
        return keys, [*(d for _, d in deps), len(deps)]

    def stored_results(self, ids: Sequence[str]) -> list[bytes | None]:
        """The stored result bytes of jobs ``ids`` (None where none is stored), in one MGET."""
        if not ids:
            return []
        return list(self.client.mget([self.keys.result(i) for i in ids]))
