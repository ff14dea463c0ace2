"""The KEYS contract of every Lua script: which keys it takes, in which order, in one table.

Each script's header (``taskpipe/thoonk/lua/<name>.lua``) lists its ``KEYS[n]``; the matching
``ScriptKeys`` below lists the same keys by *role*: the attribute of ``JobKeys`` / ``FeedKeys``
(``claimed``, ``stalled_at``...) or of ``Keyspace`` (``feeds``, ``presence``...) that names the
key. Callers build KEYS with ``CONTRACT.build(keys_object, **given)`` instead of writing the
order again; ``tests/test_script_keys.py`` parses every header and checks it against this
table, and checks that every ``KEYS[n]`` a script body uses is declared.

To give a script another key: add a ``KEYS[n] <key>`` line to its header and the role at the
same place in its ``roles`` (or at the end of ``optional`` for a key only some calls pass).
Keys that depend on the call (one per job, one per channel) are the ``tail``: described here,
appended by the caller after the fixed and optional keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "ScriptKeys",
    "CONTRACTS",
    "FINISH_FOLLOWUP_ROLES",
    "WORKFLOW_RELEASE_ROLES",
    "WORKFLOW_PARENT_ROLES",
    "contract",
]


@dataclass(frozen=True)
class ScriptKeys:
    """The KEYS of one Lua script, by role, in the order of its header.

    ``roles``: the keys every call passes, ``KEYS[1]`` first. ``optional``: keys that follow,
    passed only by some calls, always as a prefix of this tuple (``KEYS[len(roles)+1]`` first).
    ``tail``: what follows them when the count depends on the call ("" = nothing).
    ``per_channel``: ``roles`` repeat once per channel (``job_claim``).
    """

    script: str
    roles: tuple[str, ...]
    optional: tuple[str, ...] = ()
    tail: str = ""
    per_channel: bool = False

    def build(self, source: Any = None, /, *tail: str, **given: str) -> list[str]:
        """KEYS for one call: each role from ``given`` if there, else ``source.<role>`` (called
        with no argument when it is a method, e.g. ``Keyspace.presence``); then the optional
        roles that are in ``given``, in order; then ``tail``."""
        unknown = given.keys() - self.roles - set(self.optional)
        if unknown:
            raise TypeError(f"{self.script}: no key role {sorted(unknown)}")
        if tail and not self.tail:
            raise TypeError(f"{self.script}: takes no keys after its fixed ones")
        out = [given[r] if r in given else _resolve(source, r) for r in self.roles]
        for role in self.optional:
            if role not in given:
                break
            out.append(given[role])
        out += tail
        return out

    @property
    def count(self) -> int:
        """Number of fixed keys (per channel for ``per_channel``)."""
        return len(self.roles)


def _resolve(source: Any, role: str) -> str:
    value = getattr(source, role)
    return value() if callable(value) else str(value)


_OWNER = ("claimed", "leases", "tokens", "workers")  # the claim records, in _owner.lua's order

_ALL = (
    # Thoonk objects ----------------------------------------------------------------------------
    ScriptKeys("create", ("feeds", "config")),
    ScriptKeys("config_create", ("config",)),
    ScriptKeys("config_update", ("feeds", "config")),
    ScriptKeys("config_update_cluster", ("config",)),
    ScriptKeys("registry_add", ("feeds",)),
    ScriptKeys("registry_remove", ("feeds",)),
    ScriptKeys("delete", ("feeds",), tail="every key of the object"),
    ScriptKeys("feed_publish", ("config", "ids", "items", "publishes")),
    ScriptKeys("feed_retract", ("ids", "items")),
    ScriptKeys("sorted_feed_insert", ("config", "ids", "items", "idincr", "publishes")),
    ScriptKeys("sorted_feed_edit", ("items", "publishes")),
    ScriptKeys("sorted_feed_move", ("ids", "items")),
    ScriptKeys("sorted_feed_retract", ("ids", "items")),
    ScriptKeys("queue_put", ("config", "ids", "items", "publishes", "wake")),
    ScriptKeys("queue_get", ("ids", "items")),
    # job channels ------------------------------------------------------------------------------
    ScriptKeys(
        "job_put",
        ("ids", "items", "published", "publishes", "delayed", "urgent", "wake", "finished"),
        tail="feed.result:<f>:<id> per job",
    ),
    ScriptKeys("job_put_fresh", ("ids", "items", "published", "publishes", "wake")),
    ScriptKeys(
        "job_claim",
        (
            "ids",
            "items",
            "claimed",
            "leases",
            "delayed",
            "urgent",
            "cancelled",
            "config",
            "tokens",
            "workers",
            "fence",
            "attempts",
            "prio",
            "flow",
            "rate",
            "slots",  # flow control: _flow.lua
            "published",
        ),  # read only: the claimed jobs' wait times
        per_channel=True,
    ),
    ScriptKeys(
        "job_put_flow",
        (
            "ids",
            "items",
            "published",
            "publishes",
            "delayed",
            "urgent",
            "wake",
            "finished",
            "result",
            "prio",
            "flow",
        ),
        optional=("unique",),
    ),
    ScriptKeys(
        "job_finish",
        (
            *_OWNER,
            "items",
            "cancelled",
            "attempts",
            "published",
            "finishes",
            "finished",
            "failures",
            "progress",
            "reasons",
        ),
        tail="feed.result per job, feed.query per kept query, then the follow-up put's "
        "keys (FINISH_FOLLOWUP_ROLES, then its feed.result), then the workflow "
        "section (feed.dependents, WORKFLOW_RELEASE_ROLES per dependant), then the "
        "job-record section (lua/_record.lua: failed_index, label_stats, then record "
        "and label_index per job)",
    ),
    ScriptKeys(
        "job_abort",
        (
            *_OWNER,
            "items",
            "cancelled",
            "attempts",
            "published",
            "finishes",
            "finished",
            "failures",
            "progress",
            "reasons",
            "aborted",
            "result",
        ),
        tail="the workflow section (feed.dependents, WORKFLOW_RELEASE_ROLES per dependant), "
        "then the optional job-record section (lua/_record.lua: failed_index, label_stats, "
        "record, label_index)",
    ),
    ScriptKeys(
        "job_put_waiting",
        ("items", "waiting", "ids", "published", "publishes", "wake", "flow"),
        tail="per parent: its channel's WORKFLOW_PARENT_ROLES (feed.result of the parent)",
    ),
    ScriptKeys("job_cancel", (*_OWNER, "cancelled", "ids", "wake"), optional=("delayed",)),
    ScriptKeys("job_release", (*_OWNER, "ids", "wake")),
    ScriptKeys(
        "job_stall",
        (*_OWNER, "stalled", "reasons", "published", "stalled_at"),
        optional=("record",),
    ),
    ScriptKeys(
        "job_retry",
        (
            "stalled",
            "reasons",
            "ids",
            "published",
            "wake",
            "cancelled",
            "attempts",
            "items",
            "stalled_at",
        ),
    ),
    ScriptKeys("job_defer", (*_OWNER, "attempts", "delayed", "ids", "wake", "items")),
    ScriptKeys(
        "job_retract",
        (
            "items",
            "ids",
            *_OWNER,
            "stalled",
            "reasons",
            "cancelled",
            "attempts",
            "published",
            "delayed",
            "urgent",
            "progress",
            "finished",
            "result",
            "log",
            "stalled_at",
        ),
        optional=("prio", "flow", "waiting", "record", "failed_index"),
    ),
    ScriptKeys(
        "job_clean_finished",
        ("finished", "items"),
        tail="feed.result:<f>:<id> and feed.log:<f>:<id> per id",
    ),
    ScriptKeys(
        "job_requeue",
        (
            "items",
            "ids",
            "published",
            "publishes",
            "wake",
            "finished",
            "result",
            "record",
            "failed_index",
            "attempts",
            "cancelled",
            "prio",
            "flow",
        ),
        tail="feed.labelidx:<f>:<label> of the record's label",
    ),
    ScriptKeys("job_edit", ("items", "claimed")),
    ScriptKeys("job_extend", ("claimed", "leases", "tokens")),
    ScriptKeys(
        "job_reap",
        (*_OWNER, "cancelled", "ids", "wake", "items"),
        optional=("presence",),
    ),
    ScriptKeys(
        "job_reap_stall",
        (*_OWNER, "cancelled", "stalled", "reasons", "published", "stalled_at"),
        tail="feed.record:<f>:<id> per job",
    ),
    ScriptKeys("job_promote", ("delayed", "urgent", "items", "ids", "wake")),
    ScriptKeys("job_progress", ("claimed", "tokens", "progress")),
    ScriptKeys("job_log", ("log",)),
    ScriptKeys("job_announce", ()),
    ScriptKeys(
        "job_state",
        (
            "items",
            "claimed",
            "stalled",
            "delayed",
            "finished",
            "result",
            "cancelled",
            "attempts",
            "reasons",
            "workers",
            "progress",
            "leases",
            "published",
        ),
        optional=("waiting",),
    ),
    # workers and cron --------------------------------------------------------------------------
    ScriptKeys("worker_beat", ("workers_registry",)),
    ScriptKeys("worker_live", ("workers_registry",)),
    ScriptKeys("presence_join", ("presence",)),
    ScriptKeys("cron_claim_fire", ("cursor_hash",)),
)

#: Every script's contract by script name (read-only).
CONTRACTS = MappingProxyType({c.script: c for c in _ALL})

#: The keys of the follow-up job that ``job_finish`` can put on another channel, in order,
#: after which comes that job's ``feed.result`` key.
FINISH_FOLLOWUP_ROLES = ("ids", "items", "published", "publishes", "wake", "finished")

#: The keys of one dependant's channel in the workflow section of ``job_finish`` / ``job_abort``
#: (``_workflow.lua``), after that section's ``feed.dependents`` of the finishing job's channel.
WORKFLOW_RELEASE_ROLES = ("waiting", "items", "ids", "wake")

#: The keys of one parent's channel that ``job_put_waiting`` takes (its ``feed.result`` of the
#: parent is the ``result`` role).
WORKFLOW_PARENT_ROLES = ("items", "finished", "result", "dependents")


def contract(script: str) -> ScriptKeys:
    """The contract of one script (``KeyError`` for an unknown name)."""
    return CONTRACTS[script]
