"""The reaper's calls on a Thoonk job channel: claims whose lease expired, or whose worker died,
go back to the queue, or are stalled past ``max_cancels`` with their record (docs/history.md).

``ReapOps`` holds them; ``JobChannel`` inherits it, so they are ``JobChannel`` methods (and map
broker errors like its own: see ``maps_broker_errors``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from taskpipe.thoonk.job_reads import _s
from taskpipe.thoonk.script_keys import contract

if TYPE_CHECKING:
    from taskpipe.thoonk.keys import JobKeys
    from taskpipe.thoonk.scripts import ScriptRegistry

__all__ = ["Reaped", "ReapOps"]


@dataclass(frozen=True)
class Reaped:
    """What one reaper pass did: ids requeued and stalled (either cause), the workers found dead
    (their alive channel empty past the grace) and which of the ids were theirs."""

    requeued: list[str]
    stalled: list[str]
    dead_workers: list[str]
    dead_ids: list[str]


class ReapOps:
    """The reaper calls of ``JobChannel`` (a mixin: ``JobChannel.__init__`` sets the state)."""

    #: ``maps_broker_errors`` on ``JobChannel`` maps these methods' errors too, as its own
    _broker_errors_mapped_by_subclass: ClassVar[bool] = True

    # set by JobChannel.__init__
    keys: JobKeys
    client: Any
    scripts: ScriptRegistry

    def reap(
        self,
        max_cancels: int = 0,
        limit: int = 1000,
        *,
        presence: tuple[str, str, int] | None = None,
        record: tuple[int, Callable[[bytes], str]] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Requeue (or stall, past ``max_cancels``) claims whose lease expired, and with
        ``presence`` = ``(presence set key, alive channel prefix, grace ms)`` also the claims of
        joined workers whose alive channel has had no subscriber for the grace (their process
        died: see ``thoonk/workers.py``). Returns ``(requeued_ids, stalled_ids)``.
        ``record`` = ``(ttl_ms, label_of)``: a stalled job keeps its record that long (outcome
        ``stalled``, the worker that lost it, times; ``label_of(payload)`` names its task).
        """
        reaped = self.reap_detail(max_cancels, limit, presence=presence, record=record)
        return reaped.requeued, reaped.stalled

    def reap_detail(
        self,
        max_cancels: int = 0,
        limit: int = 1000,
        *,
        presence: tuple[str, str, int] | None = None,
        record: tuple[int, Callable[[bytes], str]] | None = None,
    ) -> Reaped:
        """``reap``, saying which workers were found dead and which of the ids were theirs.

        Two scripts: ``job_reap`` requeues and finds the jobs to stall (and their payloads,
        which name their tasks); ``job_reap_stall`` stalls those with their records, each in
        one atomic step. A reaper stopped between the two leaves them claimed, their leases
        expired, for the next pass: never stalled without a record."""
        args: list[Any] = [limit, max_cancels]
        if presence is not None:
            keys = contract("job_reap").build(self.keys, presence=presence[0])
            args += [presence[1], presence[2]]
        else:
            keys = contract("job_reap").build(self.keys)
        reply = self.scripts["job_reap"](self.client, keys, args)
        requeued, to_stall, dead_workers, dead_ids = ([_s(x) for x in part] for part in reply[:4])
        stalled = self._stall_reaped(to_stall, list(reply[4]), record) if to_stall else []
        ended = set(requeued) | set(stalled)
        return Reaped(requeued, stalled, dead_workers, [i for i in dead_ids if i in ended])

    def _stall_reaped(
        self,
        ids: list[str],
        detail: list[Any],
        record: tuple[int, Callable[[bytes], str]] | None,
    ) -> list[str]:
        """Stall the jobs ``job_reap`` found past ``max_cancels`` (``detail``: per id its token,
        why and payload), with their records when ``record`` asks for them."""
        ttl_ms = int(record[0]) if record is not None else 0
        args: list[Any] = [ttl_ms]
        for n, job_id in enumerate(ids):
            token, why, item = detail[3 * n], detail[3 * n + 1], detail[3 * n + 2]
            label = (
                record[1](item if isinstance(item, bytes) else _s(item).encode()) if record else ""
            )
            args += [job_id, token, why, label if ttl_ms > 0 else ""]
        keys = contract("job_reap_stall").build(self.keys, *[self.keys.record(i) for i in ids])
        return [_s(x) for x in self.scripts["job_reap_stall"](self.client, keys, args)]
