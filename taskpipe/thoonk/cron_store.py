"""Cron bookkeeping as the broker holds it: one hash per entry and the set of entry names.

Thoonk layer: this module knows key names and Redis commands, not cron expressions. The
scheduler (``taskpipe/scheduler.py``) gives the fields their meaning; the CLI (``taskpipe cron
list``) and the dashboard read them here.

``taskpipe.crons`` is a SET of entry names; ``taskpipe.cron:<entry>`` a HASH whose ``cursor``
field is advanced only by an atomic compare-and-set (``cron_claim_fire.lua``), so of several
schedulers racing to take the same fire exactly one wins. The other fields (``task``, ``expr``,
``tz``, ``misfire``, ``channel``, ``next_fire``, ``last_fire``, ``last_job``, ``last_sent_ms``,
``last_by``, ``last_error``) are free-form text for display. See ``docs/scheduling.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskpipe.thoonk.script_keys import contract
from taskpipe.thoonk.scripts import broker_errors

if TYPE_CHECKING:
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["CronStore", "MAX_EXTRA_FIELDS"]

#: how many field/value pairs ``advance`` may write with the cursor (the script's bound)
MAX_EXTRA_FIELDS = 32


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class CronStore:
    """The cron bookkeeping of one keyspace: entry names, per-entry hashes, the cursor CAS."""

    def __init__(self, thoonk: Thoonk) -> None:
        self.thoonk = thoonk
        self.keys = thoonk.keys

    def register(self, entries: Mapping[str, Mapping[str, str]]) -> None:
        """Record entries (name -> definition fields) in the name set and their hashes."""
        if not entries:
            return
        with broker_errors("cron register"):
            pipe = self.thoonk.client.pipeline(transaction=False)
            for name, fields in entries.items():
                pipe.sadd(self.keys.cron_entries(), name)
                if fields:
                    pipe.hset(self.keys.cron_state(name), mapping=dict(fields))
            pipe.execute()

    def cursors(self, names: Sequence[str]) -> list[str]:
        """The ``cursor`` field of each named entry, in order (``""`` where there is none)."""
        if not names:
            return []
        with broker_errors("cron cursors"):
            pipe = self.thoonk.client.pipeline(transaction=False)
            for name in names:
                pipe.hget(self.keys.cron_state(name), "cursor")
            raw = pipe.execute()
        return [_s(v) if v is not None else "" for v in raw]

    def cursor(self, name: str) -> str:
        """One entry's ``cursor`` field (``""`` if none)."""
        with broker_errors("cron cursor"):
            raw = self.thoonk.client.hget(self.keys.cron_state(name), "cursor")
        return _s(raw) if raw is not None else ""

    def advance(
        self, name: str, expected: str, new: str, fields: Mapping[str, str] | None = None
    ) -> bool:
        """Set the cursor of ``name`` to ``new`` only if it holds ``expected`` (``""``: absent),
        writing ``fields`` in the same atomic step. True if this call advanced it."""
        extra: list[str] = []
        for key, value in (fields or {}).items():
            extra += [key, value]
        if len(extra) > 2 * MAX_EXTRA_FIELDS:
            raise ValueError(f"at most {MAX_EXTRA_FIELDS} extra fields per cursor advance")
        script = self.thoonk.scripts["cron_claim_fire"]
        keys = contract("cron_claim_fire").build(cursor_hash=self.keys.cron_state(name))
        return int(script(self.thoonk.client, keys, ["cursor", expected, new, *extra])) == 1

    def state(self, name: str) -> dict[str, str]:
        """Every field of one entry's hash (empty if the entry was never scheduled)."""
        with broker_errors("cron state"):
            raw = self.thoonk.client.hgetall(self.keys.cron_state(name))
        return {_s(k): _s(v) for k, v in raw.items()}

    def states(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """``state`` of several entries in one round trip."""
        names = list(names)
        if not names:
            return {}
        with broker_errors("cron state"):
            pipe = self.thoonk.client.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(self.keys.cron_state(name))
            raw = pipe.execute()
        return {name: {_s(k): _s(v) for k, v in fields.items()} for name, fields in zip(names, raw)}

    def names(self) -> set[str]:
        """Names of every entry some scheduler registered."""
        with broker_errors("cron names"):
            return {_s(n) for n in self.thoonk.client.smembers(self.keys.cron_entries())}

    def note(self, name: str, fields: Mapping[str, str]) -> None:
        """Write display fields (e.g. ``last_error``) without touching the cursor."""
        with broker_errors("cron note"):
            self.thoonk.client.hset(self.keys.cron_state(name), mapping=dict(fields))
