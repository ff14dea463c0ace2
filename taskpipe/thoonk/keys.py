"""Every Redis key and pub/sub channel name taskpipe uses, built in this one module.

The Thoonk v1 names (``feeds``, ``feed.<x>:<f>``, ``job.finish:<f>``...) are kept exactly so the
original thoonk.py / thoonk.js clients can share the data. taskpipe's own extensions follow the
same ``feed.<x>:<f>`` pattern (legacy clients ignore them); see ``docs/contract.md``.

A ``prefix`` (default empty, which is what legacy clients expect) namespaces everything so two
apps, or two tests, can share one Redis. A channel name that carries a hash tag (``{emails}``)
keeps every per-channel key in one Redis Cluster slot without changing the key patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Keyspace",
    "FeedKeys",
    "JobKeys",
    "SCHEMA_VERSION",
    "EVENT_STEMS",
    "JOB_EVENT_STEMS",
    "NOTICE_CHANNELS",
    "has_hash_tag",
    "cluster_name",
]

SCHEMA_VERSION = "1"

#: Pub/sub channels of per-object events: event -> the stem before the object name ``<f>``
#: (Thoonk v1 names; the payloads are in ``docs/contract.md``).
EVENT_STEMS: dict[str, str] = {
    "publish": "feed.publish:",
    "edit": "feed.edit:",
    "retract": "feed.retract:",
    "position": "feed.position:",
    "finish": "job.finish:",
}
#: taskpipe's own per-channel event stream (log, progress and outcome events of jobs; legacy
#: clients ignore it): event -> stem, like ``EVENT_STEMS``
JOB_EVENT_STEMS: dict[str, str] = {"jobevent": "feed.jobevent:"}
_ALL_STEMS: dict[str, str] = {**EVENT_STEMS, **JOB_EVENT_STEMS}
#: Pub/sub channels of registry notices (``<f>\0<instance>``): event -> channel name.
NOTICE_CHANNELS: dict[str, str] = {"create": "newfeed", "delete": "delfeed", "config": "conffeed"}

_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def has_hash_tag(text: str) -> bool:
    """True if ``text`` carries a Redis Cluster hash tag, read the way Redis reads it: the first
    ``{`` and the first ``}`` after it, with at least one character between (``{}`` is no tag)."""
    start = text.find("{")
    return start >= 0 and text.find("}", start + 1) > start + 1


def cluster_name(name: str) -> str:
    """A channel name whose keys all land in one Redis Cluster slot: ``emails`` -> ``{emails}``.

    Every per-channel key is ``<prefix>feed.<x>:<name>[:<id>]`` and the fixed parts hold no
    brace, so the name's tag decides the slot. A name that already has a tag is kept as is.
    """
    return name if has_hash_tag(name) else "{" + name + "}"


@dataclass(frozen=True)
class FeedKeys:
    """Keys shared by every Thoonk object type (feed, sorted feed, queue, job)."""

    name: str
    config: str
    ids: str
    items: str
    publishes: str
    idincr: str
    wake: str  # LIST  wake-up markers for blocked queue consumers (taskpipe extension)
    # pub/sub channels
    ch_publish: str
    ch_edit: str
    ch_retract: str
    ch_position: str
    ch_finish: str


@dataclass(frozen=True)
class JobKeys:
    """Keys of one job channel: the Thoonk v1 job keys plus taskpipe's extensions."""

    name: str
    config: str
    ids: str  # LIST  available ids (LPUSH normal, RPUSH priority, pop right)
    items: str  # HASH  id -> payload (source of truth that a job exists)
    publishes: str  # counter
    finishes: str  # counter
    published: str  # ZSET  id -> publish ms
    claimed: str  # ZSET  id -> claim ms
    stalled: str  # SET   parked ids
    cancelled: str  # HASH  id -> times sent back to the queue
    # taskpipe extensions
    delayed: str  # ZSET  id -> due ms (server time)
    urgent: str  # SET   delayed ids that go to the head (priority) when due
    leases: str  # ZSET  id -> lease deadline ms (server time)
    tokens: str  # HASH  id -> fencing token of the current claim
    workers: str  # HASH  id -> name of the worker holding the claim
    fence: str  # counter: source of fencing tokens
    attempts: str  # HASH  id -> failed runs (task raised), apart from cancels
    reasons: str  # HASH  id -> why a job was stalled
    stalled_at: str  # ZSET  id -> stall ms (server time), for age-based cleaning
    progress: str  # HASH  id -> progress "current/total"
    finished: str  # ZSET  id -> finish ms (index of finished jobs, trimmed by age)
    failures: str  # counter: jobs finished as failed
    wake: str  # LIST  wake-up markers for blocked workers
    waiting: str  # HASH  id -> parents not yet finished (a dependant in state 'waiting')
    dependents: str  # HASH  parent id -> n dependants; "<parent id>\0<k>" -> "<channel>\0<id>"
    ch_finish: str  # pub/sub: job.finish:<f>  id\0result
    ch_events: str  # pub/sub: feed.jobevent:<f>  (taskpipe: progress/log/state events)
    result_prefix: str  # STRING per job: <result_prefix><id>, with TTL
    log_prefix: str  # LIST per job: <log_prefix><id>, capped, with TTL
    query_prefix: str  # STRING per job: <query_prefix><id>, the job's item kept with its
    # result (thoonk.py ``get_result`` returns both), same TTL as the result
    # flow control (taskpipe extensions, docs/flow-control.md)
    prio: str  # ZSET  available ids with a numeric priority, score prio*2^48 + seq
    flow: str  # HASH  id -> the job's flow spec (priority score, rate and cap groups)
    rate: str  # HASH  rate bucket -> theoretical arrival time ms (GCRA state)
    slots: str  # HASH  id -> concurrency group of a claimed, capped job
    unique_prefix: str  # STRING per dedup key: <unique_prefix><key> -> id of the job holding it
    # workflows (docs/workflows.md)
    aborted_prefix: str  # STRING per job: "<who>\0<ms>" of a job aborted while it ran (7 d TTL)
    # job records (docs/history.md): kept when a job ends, with the TTL of its result
    record_prefix: str = ""  # HASH per job: <record_prefix><id> (outcome, label, item, ...)
    failed_index: str = ""  # ZSET  id -> finish ms of failed and timed-out jobs
    label_stats: str = ""  # HASH  "<label>\0<outcome>" -> jobs finished so (lifetime)
    label_index_prefix: str = ""  # ZSET per label (task name): id -> finish ms

    def unique(self, key: str) -> str:
        """The key holding which job owns one deduplication key (``unique=`` / ``debounce=``)."""
        return self.unique_prefix + key

    def record(self, job_id: str) -> str:
        """The key holding one ended job's record."""
        return self.record_prefix + job_id

    def label_index(self, label: str) -> str:
        """The index of the records of one label (task name): id -> finish ms."""
        return self.label_index_prefix + label

    def result(self, job_id: str) -> str:
        """The key holding one job's stored result."""
        return self.result_prefix + job_id

    def log(self, job_id: str) -> str:
        """The key holding one job's log lines."""
        return self.log_prefix + job_id

    def query(self, job_id: str) -> str:
        """The key holding one finished job's item beside its stored result."""
        return self.query_prefix + job_id

    def aborted(self, job_id: str) -> str:
        """The key recording who aborted one job, and when."""
        return self.aborted_prefix + job_id


class Keyspace:
    """Builds key names under an optional prefix (namespace)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def k(self, name: str) -> str:
        """Prefix one key or channel name."""
        return self.prefix + name

    # global keys and channels -------------------------------------------------------------
    @property
    def feeds(self) -> str:
        """SET of every object name."""
        return self.k("feeds")

    @property
    def ch_newfeed(self) -> str:
        """Channel announcing a created object (``<f>\\0<instance>``)."""
        return self.k(NOTICE_CHANNELS["create"])

    @property
    def ch_delfeed(self) -> str:
        """Channel announcing a deleted object."""
        return self.k(NOTICE_CHANNELS["delete"])

    @property
    def ch_conffeed(self) -> str:
        """Channel announcing a config change."""
        return self.k(NOTICE_CHANNELS["config"])

    def ch_event(self, event: str, name: str) -> str:
        """The pub/sub channel of one object's ``event`` (a key of ``EVENT_STEMS``)."""
        return self.k(_ALL_STEMS[event] + name)

    def ch_event_pattern(self, event: str) -> str:
        """A ``PSUBSCRIBE`` pattern matching ``event``'s channel of every object under this prefix
        (glob characters in the prefix are escaped)."""
        return _GLOB_SPECIAL.sub(r"\\\1", self.prefix) + _ALL_STEMS[event] + "*"

    def object_of(self, event: str, channel: str | bytes) -> str | None:
        """The object name in ``event``'s channel ``channel`` (None if it is not one)."""
        text = channel.decode("utf-8", "replace") if isinstance(channel, bytes) else channel
        start = self.k(_ALL_STEMS[event])
        return text[len(start) :] if text.startswith(start) else None

    def workers_registry(self) -> str:
        """ZSET worker name -> heartbeat deadline ms."""
        return self.k("taskpipe.workers")

    def worker_info(self, worker: str) -> str:
        """HASH describing one live worker (expires when it stops heartbeating)."""
        return self.k("taskpipe.worker:" + worker)

    def presence(self) -> str:
        """ZSET worker name -> 0 while its alive channel has a subscriber, else ms it was first
        seen without one (the reaper's fast path; see ``thoonk/workers.py``)."""
        return self.k("taskpipe.presence")

    def ch_alive(self, worker: str) -> str:
        """Channel a worker stays subscribed to while its process lives (``""``: the prefix)."""
        return self.k("taskpipe.alive:" + worker)

    def cron_state(self, entry: str) -> str:
        """HASH of one cron entry's bookkeeping (last fire, next fire, last outcome)."""
        return self.k("taskpipe.cron:" + entry)

    def cron_entries(self) -> str:
        """SET of cron entry names known to schedulers."""
        return self.k("taskpipe.crons")

    def shard_counts(self) -> str:
        """HASH logical channel name -> shard count, for sharded channels only (a channel absent
        from it has one shard: the plain Thoonk layout; see ``thoonk/shards.py``)."""
        return self.k("taskpipe.shards")

    # per object ---------------------------------------------------------------------------
    def feed(self, name: str) -> FeedKeys:
        """Keys of a feed, sorted feed or queue."""
        k = self.k
        return FeedKeys(
            name=name,
            config=k("feed.config:" + name),
            ids=k("feed.ids:" + name),
            items=k("feed.items:" + name),
            publishes=k("feed.publishes:" + name),
            idincr=k("feed.idincr:" + name),
            wake=k("feed.wake:" + name),
            ch_publish=self.ch_event("publish", name),
            ch_edit=self.ch_event("edit", name),
            ch_retract=self.ch_event("retract", name),
            ch_position=self.ch_event("position", name),
            ch_finish=self.ch_event("finish", name),
        )

    def job(self, name: str) -> JobKeys:
        """Keys of a job channel."""
        k = self.k
        return JobKeys(
            name=name,
            config=k("feed.config:" + name),
            ids=k("feed.ids:" + name),
            items=k("feed.items:" + name),
            publishes=k("feed.publishes:" + name),
            finishes=k("feed.finishes:" + name),
            published=k("feed.published:" + name),
            claimed=k("feed.claimed:" + name),
            stalled=k("feed.stalled:" + name),
            cancelled=k("feed.cancelled:" + name),
            delayed=k("feed.delayed:" + name),
            urgent=k("feed.urgent:" + name),
            leases=k("feed.leases:" + name),
            tokens=k("feed.tokens:" + name),
            workers=k("feed.workers:" + name),
            fence=k("feed.fence:" + name),
            attempts=k("feed.attempts:" + name),
            reasons=k("feed.reasons:" + name),
            stalled_at=k("feed.stalledat:" + name),
            progress=k("feed.progress:" + name),
            finished=k("feed.finished:" + name),
            failures=k("feed.failures:" + name),
            wake=k("feed.wake:" + name),
            waiting=k("feed.waiting:" + name),
            dependents=k("feed.dependents:" + name),
            ch_finish=self.ch_event("finish", name),
            ch_events=self.ch_event("jobevent", name),
            result_prefix=k("feed.result:" + name + ":"),
            log_prefix=k("feed.log:" + name + ":"),
            query_prefix=k("feed.query:" + name + ":"),
            prio=k("feed.prio:" + name),
            flow=k("feed.flow:" + name),
            rate=k("feed.rate:" + name),
            slots=k("feed.slots:" + name),
            unique_prefix=k("feed.unique:" + name + ":"),
            aborted_prefix=k("feed.aborted:" + name + ":"),
            record_prefix=k("feed.record:" + name + ":"),
            failed_index=k("feed.failedidx:" + name),
            label_stats=k("feed.labelstats:" + name),
            label_index_prefix=k("feed.labelidx:" + name + ":"),
        )

    def job_object_keys(self, name: str) -> list[str]:
        """Every per-channel key of a job channel (for delete); per-job keys expire on their own."""
        j = self.job(name)
        return [
            j.config,
            j.ids,
            j.items,
            j.publishes,
            j.finishes,
            j.published,
            j.claimed,
            j.stalled,
            j.cancelled,
            j.delayed,
            j.urgent,
            j.leases,
            j.tokens,
            j.workers,
            j.fence,
            j.attempts,
            j.reasons,
            j.stalled_at,
            j.progress,
            j.finished,
            j.failures,
            j.wake,
            j.prio,
            j.flow,
            j.rate,
            j.slots,
            j.waiting,
            j.dependents,
            j.failed_index,
            j.label_stats,
        ]

    def feed_object_keys(self, name: str) -> list[str]:
        """Every key of a feed, sorted feed or queue (for delete)."""
        f = self.feed(name)
        return [f.config, f.ids, f.items, f.publishes, f.idincr, f.wake]
