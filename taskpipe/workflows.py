"""Workflows: ``depends_on``, chains, groups and chords, durable in Redis.

Every step is an ordinary job. A job that must wait for others is published in the state
``waiting`` with the list of its parents (``taskpipe.thoonk.workflow``); the Lua script that
finishes a parent decrements the dependant's counter, and the finish that brings it to zero
queues the dependant in the same atomic step. No process holds workflow state in memory, so a
worker that dies mid-member delays a chord's callback (until the member's lease is reaped and
the member runs again) but never loses or doubles it.

- ``chain(a.s(1), b.s(), c.s())`` (or ``a.s(1) | b.s() | c.s()``): each step waits for the one
  before and receives its result as its first argument (``.si()`` steps receive nothing); a
  failure fails every later step with ``DependencyFailed``, so the chain's result (the last
  step's) reports it.
- ``group(a.s(i) for i in range(10))``: the members published in one pipelined batch; a
  ``GroupResult``.
- ``chord(group, callback)`` (or ``group | callback``): the callback waits for every member and
  receives the list of their results.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskpipe.connection import key_slot
from taskpipe.errors import ConfigError, DependencyCycle, EmptyChord, UnknownParent, WorkflowError
from taskpipe.task import Signature
from taskpipe.thoonk.workflow import MAX_DEPENDANTS, MAX_PARENTS

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.publishing import Publisher
    from taskpipe.results import AsyncResult
    from taskpipe.thoonk.job import JobChannel, PutRequest

__all__ = [
    "chain",
    "group",
    "chord",
    "GroupResult",
    "dependency_options",
    "publish_waiting",
    "PASS_MODES",
]

#: ``pass_results`` values: the single parent's value, or the list of every parent's value
PASS_MODES = ("one", "all")


def _parent_refs(app: TaskPipe, depends_on: Any) -> list[tuple[str, str]]:
    """``(channel, id)`` of each parent named by ``depends_on`` (results, group results,
    ``(channel, id)`` pairs or ids on the default channel), in order, without repeats."""
    from taskpipe.results import AsyncResult

    if isinstance(depends_on, (AsyncResult, GroupResult, str, tuple)):
        depends_on = [depends_on]
    try:
        items = list(depends_on)
    except TypeError:
        raise ConfigError(
            f"depends_on must be a list of results or job ids, got {depends_on!r}"
        ) from None
    refs: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, GroupResult):
            refs += [(r.channel, r.id) for r in item.results]
        elif isinstance(item, AsyncResult):
            refs.append((item.channel, item.id))
        elif isinstance(item, str) and item:
            refs.append((app.channel().name, item))
        elif (
            isinstance(item, tuple)
            and len(item) == 2
            and all(isinstance(x, str) and x for x in item)
        ):
            refs.append((app.channel(item[0]).name, item[1]))
        else:
            raise ConfigError(
                f"depends_on: {item!r} is not an AsyncResult, a job id or a (channel, id) pair"
            )
    seen: set[tuple[str, str]] = set()
    unique = [r for r in refs if not (r in seen or seen.add(r))]  # type: ignore[func-returns-value]
    if not unique:
        raise ConfigError("depends_on is empty: give at least one parent (or leave it out)")
    if len(unique) > MAX_PARENTS:
        raise ConfigError(f"depends_on: at most {MAX_PARENTS} parents, got {len(unique)}")
    return unique


def dependency_options(app: TaskPipe, options: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope options of a call's ``depends_on`` / ``allow_failure`` / ``pass_results``
    (empty when it has no ``depends_on``); raises ``ConfigError`` for a bad value."""
    depends_on = options.get("depends_on")
    if depends_on is None:
        for key in ("allow_failure", "pass_results"):
            if options.get(key) is not None:
                raise ConfigError(f"{key} is only meaningful with depends_on=")
        return {}
    if options.get("delay") is not None or options.get("eta") is not None:
        raise ConfigError(
            "depends_on cannot be combined with delay/eta/countdown: a dependant "
            "runs as soon as its parents finish"
        )
    mode = options.get("pass_results")
    if mode is not None and mode not in PASS_MODES:
        raise ConfigError(f"pass_results must be one of {PASS_MODES} or None, got {mode!r}")
    parents = _parent_refs(app, depends_on)
    if mode == "one" and len(parents) != 1:
        raise ConfigError("pass_results='one' needs exactly one parent; use 'all' for a list")
    out: dict[str, Any] = {"parents": [list(p) for p in parents]}
    if mode is not None:
        out["pass"] = mode
    if options.get("allow_failure"):
        out["allow_failure"] = True
    return out


def publish_waiting(channel: JobChannel, req: PutRequest, parents: Sequence[Sequence[str]]) -> bool:
    """Publish ``req`` to wait for ``parents`` (one atomic script); True if it was created,
    False if a job with its id exists. Raises ``UnknownParent`` / ``DependencyCycle``, having
    written nothing."""
    assert req.id is not None
    refs = [(str(c), str(i)) for c, i in parents]
    if (channel.name, req.id) in refs:
        raise DependencyCycle(f"job {req.id!r} cannot depend on itself")
    if channel.thoonk.connection.is_cluster:  # one script touches both channels' keys
        slot = key_slot(channel.keys.ids)
        for ch, pid in refs:
            if key_slot(channel.thoonk.keys.job(ch).ids) != slot:
                raise WorkflowError(
                    f"depends_on: on a Redis Cluster a job and its parents must be "
                    f"on channels in one hash slot; {ch!r} (parent {pid!r}) and "
                    f"{channel.name!r} are not (give them one hash tag, e.g. "
                    "'{jobs}.a' and '{jobs}.b'); nothing was published"
                )
    code, detail = channel.put_waiting(req.id, req.item, refs, req.flow)
    if code == -1:
        ch, pid = refs[detail - 1]
        raise UnknownParent(
            f"depends_on: no job {pid!r} in channel {ch!r} (never published, "
            "retracted, or finished so long ago that it is forgotten); nothing "
            "was published"
        )
    if code == -3:
        ch, pid = refs[detail - 1]
        raise WorkflowError(
            f"depends_on: job {ch}/{pid} has {MAX_DEPENDANTS} dependants already "
            "(the most one parent may have); nothing was published"
        )
    return code == 1


class GroupResult:
    """The results of a group's members: ``get(timeout=)``, ``completed_count()``, ``results``."""

    def __init__(self, app: Publisher, results: Sequence[AsyncResult]) -> None:
        self.app = app
        #: the members' ``AsyncResult`` objects, in the group's order
        self.results: list[AsyncResult] = list(results)

    def __repr__(self) -> str:
        return f"<GroupResult of {len(self.results)} jobs>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    @property
    def ids(self) -> list[str]:
        """The members' job ids."""
        return [r.id for r in self.results]

    def completed_count(self) -> int:
        """How many members finished successfully."""
        return sum(1 for r in self.results if r.successful())

    def ready(self) -> bool:
        """True once every member finished (successfully or not)."""
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        """True if every member finished successfully."""
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        """True if any member finished with an error."""
        return any(r.failed() for r in self.results)

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Every member's value, in order, waiting at most ``timeout`` seconds in all.

        Raises the first member's ``TaskFailed`` (unless ``propagate=False``: failures are
        returned in their places), ``ResultTimeout`` when the time is up.
        """
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        values = []
        for r in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(r.get(timeout=left, propagate=propagate))
        return values

    def join(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Celery's name for ``get``."""
        return self.get(timeout=timeout, propagate=propagate)

    def forget(self) -> None:
        """Drop every member's stored result."""
        for r in self.results:
            r.forget()


def _app_of(steps: Iterable[Any]) -> Publisher:
    for step in steps:
        app = step.app if isinstance(step, Signature) else _app_of(_members(step))
        if app is not None:
            return app
    raise ConfigError(
        "a workflow needs a signature bound to an app (task.s(...), not Signature(...) by hand)"
    )


def _members(step: Any) -> list[Any]:
    if isinstance(step, group):
        return list(step.tasks)
    if isinstance(step, chord):
        return [*step.header.tasks, step.body]
    if isinstance(step, chain):
        return list(step.tasks)
    return [step]


def _check_step(step: Any) -> None:
    if not isinstance(step, (Signature, group, chord, chain)):
        raise ConfigError(
            f"a workflow step must be a task signature (task.s(...)), a group, "
            f"a chord or a chain, got {step!r}"
        )


def _send(
    sig: Signature,
    after: list[AsyncResult] | None,
    from_group: bool,
    args: tuple[Any, ...] = (),
    options: dict[str, Any] | None = None,
) -> AsyncResult:
    app = sig.app
    if app is None:
        raise ConfigError(f"signature {sig!r} is not bound to an app")
    opts = {**sig.options, **(options or {})}
    if after is not None:
        opts["depends_on"] = after
        if not sig.immutable:
            opts["pass_results"] = "all" if from_group else "one"
    return app.send(sig.task, args=(*sig.args, *args), kwargs=dict(sig.kwargs), **opts)


def _run(
    step: Any,
    after: list[AsyncResult] | None,
    from_group: bool,
    args: tuple[Any, ...] = (),
    options: dict[str, Any] | None = None,
) -> tuple[list[AsyncResult], bool, Any]:
    """Publish one step after ``after``; returns (its results, whether it is a group, handle)."""
    if isinstance(step, Signature):
        result = _send(step, after, from_group, args, options)
        return [result], False, result
    if isinstance(step, group):
        gres = step._publish(after, from_group, args, options)
        return list(gres.results), True, gres
    if isinstance(step, chord):
        return _run(chain(step.header, step.body), after, from_group, args, options)
    prev, prev_group, handle = after, from_group, None
    for i, sub in enumerate(step.tasks):
        prev, prev_group, handle = _run(
            sub, prev, prev_group, args if i == 0 else (), options if i == 0 else None
        )
    return prev or [], prev_group, handle


class group:  # noqa: N801 - Celery's name
    """Signatures run in parallel: ``group(add.s(i, i) for i in range(10)).apply_async()``
    returns a ``GroupResult``. Without parents the members are published in one pipelined
    batch per channel."""

    def __init__(self, *tasks: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], (Signature, group, chord, chain)):
            tasks = tuple(tasks[0])
        for t in tasks:
            if not isinstance(t, Signature):
                raise ConfigError(f"a group's members must be task signatures, got {t!r}")
        self.tasks: list[Signature] = list(tasks)

    def __repr__(self) -> str:
        return f"group({', '.join(map(repr, self.tasks))})"

    def __or__(self, other: Any) -> chain | chord:
        if isinstance(other, Signature):
            return chord(self, other)
        return chain(self, other)

    def _publish(
        self,
        after: list[AsyncResult] | None,
        from_group: bool,
        args: tuple[Any, ...] = (),
        options: dict[str, Any] | None = None,
    ) -> GroupResult:
        if not self.tasks:
            raise (
                EmptyChord("a group after another step needs at least one member")
                if after is not None
                else ConfigError("an empty group publishes nothing")
            )
        app = _app_of(self.tasks)
        if after is None:
            sigs = [s.set(**(options or {})) if options else s for s in self.tasks]
            if args:
                sigs = [
                    Signature(s.task, (*s.args, *args), s.kwargs, s.options, s.app, s.immutable)
                    for s in sigs
                ]
            return GroupResult(app, app.publish_many(sigs))
        return GroupResult(app, [_send(s, after, from_group, args, options) for s in self.tasks])

    def apply_async(self, args: Iterable[Any] = (), **options: Any) -> GroupResult:
        """Publish every member (``args`` appended to each, ``options`` set on each)."""
        return self._publish(None, False, tuple(args), options)

    def delay(self, *args: Any) -> GroupResult:
        """Publish every member with ``args`` appended."""
        return self.apply_async(args)

    def __call__(self, *args: Any) -> GroupResult:
        return self.apply_async(args)


class chord:  # noqa: N801 - Celery's name
    """A group and a callback that runs exactly once, after every member finished, with the
    list of their results: ``chord(group(...), total.s())`` or ``chord(header)(callback)``.

    The callback waits in Redis (state ``waiting``); the script that finishes the last member
    queues it. With a failed member the callback fails with ``DependencyFailed`` (unless it was
    given ``.set(allow_failure=True)``: it then runs with ``None`` in that member's place).
    """

    def __init__(self, header: Any, body: Signature | None = None) -> None:
        self.header = header if isinstance(header, group) else group(header)
        self.body = body

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def __call__(self, body: Signature | None = None, **options: Any) -> AsyncResult:
        """``chord(header)(callback)``: publish it."""
        if body is not None:
            self.body = body
        return self.apply_async(**options)

    def apply_async(self, args: Iterable[Any] = (), **options: Any) -> AsyncResult:
        """Publish the members, then the callback (waiting for them); returns the callback's
        ``AsyncResult``. Raises ``EmptyChord`` for a chord without members (nothing published)."""
        if not isinstance(self.body, Signature):
            raise ConfigError("a chord needs a callback signature: chord(group, callback.s())")
        if not self.header.tasks:
            raise EmptyChord("a chord needs at least one member: its callback would never run")
        members, _, _ = _run(self.header, None, False, tuple(args), options)
        return _send(self.body, members, True)

    def delay(self, *args: Any) -> AsyncResult:
        """Publish it, ``args`` appended to each member."""
        return self.apply_async(args)


class chain:  # noqa: N801 - Celery's name
    """Steps run one after another, each getting the previous result as its first argument
    (``.si()`` steps get none): ``chain(a.s(1), b.s(), c.s())`` or ``a.s(1) | b.s() | c.s()``.

    Every step is published at once; all but the first wait in Redis (state ``waiting``).
    Returns the last step's result (a ``GroupResult`` if the last step is a group). A failed
    step fails every later step with ``DependencyFailed`` naming the first failure.
    """

    def __init__(self, *tasks: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], (Signature, group, chord, chain)):
            tasks = tuple(tasks[0])
        steps: list[Any] = []
        for t in tasks:
            _check_step(t)
            steps += t.tasks if isinstance(t, chain) else [t]
        self.tasks: list[Any] = steps

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.tasks))

    def __or__(self, other: Any) -> chain:
        return chain(*self.tasks, other)

    def apply_async(self, args: Iterable[Any] = (), **options: Any) -> Any:
        """Publish the chain (``args`` / ``options`` go to the first step); returns the last
        step's ``AsyncResult`` (or ``GroupResult``)."""
        if not self.tasks:
            raise ConfigError("an empty chain publishes nothing")
        for step in self.tasks:
            if isinstance(step, (group, chord)) and not (
                step.tasks if isinstance(step, group) else step.header.tasks
            ):
                raise EmptyChord("a group or chord in a chain needs at least one member")
        _, _, handle = _run(self, None, False, tuple(args), options)
        return handle

    def delay(self, *args: Any) -> Any:
        """Publish the chain with ``args`` appended to the first step's."""
        return self.apply_async(args)

    def __call__(self, *args: Any) -> Any:
        return self.apply_async(args)
