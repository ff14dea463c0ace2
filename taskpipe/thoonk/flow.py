"""Flow control on a job channel: publishing with a numeric priority, rate-limit and
concurrency groups or a deduplication key (``job_put_flow``); channel-wide limits; and a
read of the live limiter state for ``taskpipe status`` and the dashboard.

The claim side is in ``lua/_flow.lua`` (called by ``job_claim``). Nothing here knows tasks:
groups and keys are opaque strings made by the app layer (``taskpipe.flow``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskpipe.thoonk.job_reads import _s
from taskpipe.thoonk.script_keys import contract

if TYPE_CHECKING:
    from taskpipe.thoonk.job import JobChannel, PutRequest

__all__ = [
    "PutFlow",
    "PutOutcome",
    "put_flow_args",
    "put_flow",
    "set_channel_limits",
    "channel_limits",
    "flow_state",
    "limits_summary",
    "PUBLISHED",
    "EXISTS",
    "DEDUPLICATED",
    "DEBOUNCED",
    "STATE_SAMPLE",
]

PUBLISHED, EXISTS, DEDUPLICATED, DEBOUNCED = 1, 0, 2, 3
#: at most this many rate buckets and capped claims are read by ``flow_state``
STATE_SAMPLE = 1000


@dataclass(frozen=True)
class PutFlow:
    """The flow-control part of one publish (all optional)."""

    priority: int | None = None  # 0 (first) .. 9 (last); None: the Thoonk list
    rate_group: str = ""  # rate bucket shared by every job naming it
    rate_interval_ms: float = 0.0  # one job per interval ...
    rate_burst: int = 1  # ... with up to this many at once
    cap_group: str = ""  # concurrency group
    cap: int = 0  # at most this many claimed at once
    dedup: str = ""  # '' | 'unique' | 'window' | 'debounce'
    dedup_key: str = ""
    dedup_ms: int = 0

    def spec_rest(self) -> str:
        """The flow spec's fields after the priority score (see ``_flow.lua``)."""
        if not self.rate_group and not self.cap_group:
            return ""
        rate = (
            (self.rate_group, repr(float(self.rate_interval_ms)), str(self.rate_burst))
            if self.rate_group
            else ("", "", "")
        )
        cap = (self.cap_group, str(self.cap)) if self.cap_group else ("", "")
        return "\0".join((*rate, *cap))


@dataclass(frozen=True)
class PutOutcome:
    """What ``put_flow`` did: ``code`` (PUBLISHED, EXISTS, DEDUPLICATED, DEBOUNCED) and the id
    of the job that now stands for the publish (the holder's for a dedup or debounce)."""

    code: int
    id: str


def put_flow_args(channel: JobChannel, req: PutRequest) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one ``job_put_flow`` call."""
    flow = req.flow
    assert flow is not None and req.id is not None
    k = channel.keys
    given = {"unique": k.unique(flow.dedup_key)} if flow.dedup else {}
    keys = contract("job_put_flow").build(k, result=k.result(req.id), **given)
    args: list[Any] = [
        req.id,
        req.item,
        "1" if req.priority else "0",
        max(0, req.delay_ms),
        max(0, req.eta_ms),
        "" if flow.priority is None else str(flow.priority),
        flow.spec_rest(),
        flow.dedup,
        int(flow.dedup_ms),
    ]
    return keys, args


def put_flow(channel: JobChannel, req: PutRequest) -> PutOutcome:
    """Publish one request that carries ``req.flow``, atomically (``job_put_flow``)."""
    keys, args = put_flow_args(channel, req)
    code, job_id = channel.scripts["job_put_flow"](channel.client, keys, args)
    return PutOutcome(int(code), _s(job_id))


def set_channel_limits(
    channel: JobChannel, rate: tuple[float, int, str] | None, cap: int | None
) -> None:
    """Set (or with None clear) a channel's rate limit ``(interval_ms, burst, text)`` and
    concurrency cap, in its ``feed.config`` (read by every worker's claim)."""
    channel.thoonk.set_config(
        channel.name,
        **{
            "flow.rate": None if rate is None else f"{rate[0]!r}:{rate[1]}",
            "flow.ratelimit": None if rate is None else rate[2],
            "flow.cap": None if cap is None else str(cap),
        },
    )


def channel_limits(channel: JobChannel) -> dict[str, Any]:
    """The channel's own limits: ``{"rate_limit": "100/s" or None, "concurrency": int or None}``."""
    text, cap = channel.client.hmget(channel.keys.config, "flow.ratelimit", "flow.cap")
    return {"rate_limit": _s(text) if text else None, "concurrency": int(cap) if cap else None}


def flow_state(channel: JobChannel, now_ms: int) -> dict[str, Any]:
    """Live limiter state: channel limits, rate buckets still waiting for their next slot
    (``{group: ms until it opens}``), claimed jobs per concurrency group, numbered jobs waiting.

    Slot counts are read as the claim counts them (entries whose job is still claimed); past
    ``STATE_SAMPLE`` claimed capped jobs they are counted on a sample.
    """
    k = channel.keys
    pipe = channel.client.pipeline(transaction=False)
    # bounded reads (a status page never reads a structure whole): HRANDFIELD with a positive
    # count returns every field of a smaller hash, a sample of a bigger one
    pipe.hrandfield(k.rate, STATE_SAMPLE, withvalues=True)
    pipe.hrandfield(k.slots, STATE_SAMPLE, withvalues=True).zcard(k.prio)
    rate_flat, slot_flat, numbered = pipe.execute()
    rates = dict(zip((rate_flat or [])[::2], (rate_flat or [])[1::2]))
    slots = dict(zip((slot_flat or [])[::2], (slot_flat or [])[1::2]))
    limits = channel_limits(channel)
    waiting = {_s(g): max(0, int(float(t) - now_ms)) for g, t in rates.items() if float(t) > now_ms}
    groups: dict[str, int] = {}
    if slots:
        ids = list(slots)
        scores = channel.client.zmscore(k.claimed, ids)
        for job_id, score in zip(ids, scores):
            group = _s(slots[job_id])
            if score is not None and group:  # '' = a claimed flow job with no cap
                groups[group] = groups.get(group, 0) + 1
    return {
        **limits,
        "rate_waiting_ms": waiting,
        "running_by_group": groups,
        "numbered_waiting": int(numbered),
    }


def limits_summary(state: dict[str, Any]) -> str:
    """One line for ``taskpipe status`` and the dashboard from ``flow_state``: the channel's
    limits, the rate buckets waiting for a slot, the busiest concurrency groups ('' if none)."""
    parts = []
    if state.get("rate_limit"):
        parts.append(f"rate {state['rate_limit']}")
    if state.get("concurrency"):
        parts.append(f"cap {state['concurrency']}")
    waiting = state.get("rate_waiting_ms") or {}
    if waiting:
        shown = sorted(waiting.items(), key=lambda kv: -kv[1])[:3]
        parts.append(
            "rate-limited: "
            + ", ".join(
                f"{'channel' if g == '#channel' else g.split(':', 1)[-1]} {ms}ms" for g, ms in shown
            )
        )
    running = state.get("running_by_group") or {}
    if running:
        shown_r = sorted(running.items(), key=lambda kv: -kv[1])[:3]
        parts.append(
            "capped running: " + ", ".join(f"{g.split(':', 1)[-1]}={n}" for g, n in shown_r)
        )
    if state.get("numbered_waiting"):
        parts.append(f"numbered waiting {state['numbered_waiting']}")
    return " · ".join(parts)
