"""Claiming across channels in strict order, and waiting for work without busy polling.

One Redis (or Sentinel, or memory://): ONE ``job_claim`` script call walks every channel in
order. Redis Cluster: one call per run of consecutive channels that share a slot, in order,
until the batch is full. Waiting blocks on the channels' wake-up lists (``ListWaiter``); on one
Redis the claim is sent behind the ``BLPOP`` and runs the moment it returns (``wait_then_claim``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskpipe.connection import key_slot
from taskpipe.list_waiter import ListWaiter
from taskpipe.thoonk.job import Claim, JobChannel
from taskpipe.thoonk.job_reads import _s

if TYPE_CHECKING:
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["claim_from", "wait_then_claim", "wait_and_claim", "HELD_BACK", "PRECISE_WAIT"]

#: ``next_due`` returned by ``claim_from`` when the claim stopped at a job that may only run in a
#: free slot (cancel count > 0 at a prefetch position): work is waiting for a slot, not for Redis.
HELD_BACK = -2
#: waits shorter than this for a known time (a due job, a rate-limit slot) are slept here, not
#: in a BLPOP (whose timeout Redis rounds up to its server tick)
PRECISE_WAIT = 0.2


def claim_from(
    thoonk: Thoonk,
    channels: Sequence[JobChannel],
    count: int,
    lease_ms: int,
    worker: str,
    promote_limit: int = 100,
    run_now: int | None = None,
) -> tuple[list[Claim], int | None, int]:
    """Claim up to ``count`` jobs from ``channels`` in strict order, in one script call.

    ``run_now`` (default: all): how many of them go to free slots at once; the others are
    prefetched. A job with a cancel count above 0 is never prefetched: the claim stops before
    it and ``next_due`` is ``HELD_BACK`` (see ``job_claim.lua``).
    Returns ``(claims, next_due_ms or None or HELD_BACK, server_now_ms)``. On a Redis Cluster, channels in
    different slots cannot share a script call: see ``_claim_by_slot``.
    """
    if thoonk.connection.is_cluster and len(channels) > 1:
        runs = _slot_runs(channels)
        if len(runs) > 1:
            run_now = count if run_now is None else max(0, run_now)
            return _claim_by_slot(thoonk, runs, count, lease_ms, worker, promote_limit, run_now)
    keys, args = _claim_call(channels, count, lease_ms, worker, promote_limit, run_now)
    return _claimed(channels, thoonk.scripts["job_claim"](thoonk.client, keys, args))


def wait_then_claim(
    thoonk: Thoonk,
    waiter: ListWaiter,
    channels: Sequence[JobChannel],
    timeout: float,
    count: int,
    lease_ms: int,
    worker: str,
    promote_limit: int = 100,
    run_now: int | None = None,
) -> tuple[list[Claim], int | None, int] | None:
    """Block on the wake-up lists up to ``timeout`` seconds, then claim as ``claim_from`` does,
    both in one pipeline: Redis runs the claim the moment the ``BLPOP`` returns (a wake-up or
    the timeout), so a job published to an idle worker is claimed without another round trip.

    For one Redis or Sentinel (``waiter.pipelines``; all channels in one script call).
    Returns ``claim_from``'s triple, or None when the claim was refused (script not loaded,
    a failover's read-only replica): the caller then claims as usual, which reloads the script
    or meets the failover. A worker killed while blocked never claims: Redis drops a closed
    connection's queued commands. Killed after the claim, its jobs' leases expire as always.
    """
    keys, args = _claim_call(channels, count, lease_ms, worker, promote_limit, run_now)
    sha = thoonk.scripts["job_claim"].sha
    _, (reply,) = waiter.wait_then(timeout, ("EVALSHA", sha, len(keys), *keys, *args))
    if isinstance(reply, Exception):
        return None
    return _claimed(channels, reply)


def _claim_call(
    channels: Sequence[JobChannel],
    count: int,
    lease_ms: int,
    worker: str,
    promote_limit: int,
    run_now: int | None,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one ``job_claim`` call over ``channels`` (``run_now`` None: all)."""
    keys: list[str] = []
    for ch in channels:
        keys += ch.claim_keys
    run_now = count if run_now is None else max(0, run_now)
    return keys, [count, int(lease_ms), worker, promote_limit, run_now]


def _claimed(channels: Sequence[JobChannel], r: Any) -> tuple[list[Claim], int | None, int]:
    """``job_claim``'s reply as ``(claims, next_due or None or HELD_BACK, now)``."""
    now, nxt = int(r[0]), int(r[1])
    claims = []
    for c in r[2:]:
        id_, token, item = c[1], c[4], c[2]
        claims.append(
            Claim(
                channels[int(c[0]) - 1].name,
                id_.decode("utf-8", "replace") if type(id_) is bytes else _s(id_),
                item if type(item) is bytes else bytes(item),
                int(c[3]),
                token.decode("utf-8", "replace") if type(token) is bytes else _s(token),
                int(c[5]),
                now,
                int(c[6]) if len(c) > 6 else 0,
            )
        )
    return claims, (nxt if nxt >= 0 or nxt == HELD_BACK else None), now


def _slot_runs(channels: Sequence[JobChannel]) -> list[list[JobChannel]]:
    """Split the ordered channel list into runs of consecutive channels sharing one cluster slot.

    Only *consecutive* channels are merged: merging ``a`` and ``c`` of ``[a, b, c]`` would look
    at ``c`` before ``b`` and break strict order.
    """
    runs: list[list[JobChannel]] = []
    last = -1
    for ch in channels:
        slot = key_slot(ch.keys.ids)
        if runs and slot == last:
            runs[-1].append(ch)
        else:
            runs.append([ch])
            last = slot
    return runs


def _claim_by_slot(
    thoonk: Thoonk,
    runs: list[list[JobChannel]],
    count: int,
    lease_ms: int,
    worker: str,
    promote_limit: int,
    run_now: int,
) -> tuple[list[Claim], int | None, int]:
    """Redis Cluster: one claim script call per slot run, in order, until ``count`` jobs are held.

    Each call is atomic and strict within its run; across runs, order is strict as of the moment
    each run was looked at (a job put into an earlier slot after its call is claimed next time).
    Every node has its own clock, so the returned ``(next_due, now)`` pair comes from the one
    node whose next due job is nearest (callers only use the difference).
    """
    claims: list[Claim] = []
    best: tuple[int, int, int] | None = None  # (due - now, due, now)
    now = 0
    for run in runs:
        got, nxt, now = claim_from(
            thoonk, run, count - len(claims), lease_ms, worker, promote_limit, run_now - len(claims)
        )
        claims += got
        if nxt == HELD_BACK:  # strict order: nothing from later slots past a held-back job
            return claims, HELD_BACK, now
        if nxt is not None and (best is None or nxt - now < best[0]):
            best = (nxt - now, nxt, now)
        if len(claims) >= count:
            break
    return (claims, best[1], best[2]) if best is not None else (claims, None, now)


def wait_and_claim(
    thoonk: Thoonk,
    channels: Sequence[JobChannel],
    count: int,
    lease_ms: int,
    worker: str,
    timeout: float | None,
    block_client: Any = None,
    max_block: float = 1.0,
) -> list[Claim]:
    """Claim jobs, blocking up to ``timeout`` seconds (0 = forever, None = no wait) while empty.

    Blocks on the channels' wake-up lists (one ``BLPOP`` with the claim behind it, see
    ``wait_then_claim``; per slot on a Redis Cluster, see ``taskpipe.list_waiter.ListWaiter``),
    never busy-polls. A wake-up marker that was lost costs
    at most ``max_block`` seconds; a delayed job is claimed when due.
    """
    deadline = None if not timeout else time.monotonic() + timeout
    waiter = None
    woken: tuple[list[Claim], int | None, int] | None = None  # claimed as the wait ended
    try:
        while True:
            if woken is not None:
                (claims, next_due, now), woken = woken, None
            else:
                claims, next_due, now = claim_from(thoonk, channels, count, lease_ms, worker)
            if claims or timeout is None:
                return claims
            wait = max_block
            if next_due is not None:
                wait = min(wait, max(0.001, (next_due - now) / 1000.0))
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                wait = min(wait, remaining)
            if next_due is not None and wait < PRECISE_WAIT:
                # Redis rounds a BLPOP timeout up to its server tick (100 ms at hz 10): a due
                # job or a rate-limit slot this close is waited for here
                time.sleep(wait)
                continue
            if waiter is None:
                waiter = thoonk.connection.list_waiter(
                    [ch.keys.wake for ch in channels], client=block_client, max_block=max_block
                )
            if waiter.pipelines:
                woken = wait_then_claim(thoonk, waiter, channels, wait, count, lease_ms, worker)
            else:
                waiter.wait(wait)
    finally:
        if waiter is not None:
            waiter.close()
