"""The KEYS contract of every Lua script (``taskpipe/thoonk/script_keys.py``) against its header.

Each script's header lists ``KEYS[n] <key name>``; the table lists the same keys by role. This
test renders each role with the placeholder channel ``<f>`` and job ``<id>`` (so ``stalled_at``
becomes ``feed.stalledat:<f>``, as the header spells it) and compares the two, in order. It also
checks that every ``KEYS[n]`` a script's body uses is declared, and every declared key is used.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest

from taskpipe.thoonk.keys import Keyspace
from taskpipe.thoonk.script_keys import CONTRACTS, FINISH_FOLLOWUP_ROLES, ScriptKeys, contract
from taskpipe.thoonk.scripts import _expand

LUA = resources.files("taskpipe.thoonk").joinpath("lua")
SCRIPTS = sorted(
    p.name[:-4] for p in LUA.iterdir() if p.name.endswith(".lua") and not p.name.startswith("_")
)
INCLUDES = sorted(
    p.name for p in LUA.iterdir() if p.name.startswith("_") and p.name.endswith(".lua")
)

#: roles that name no key of the keyspace: how the header spells them
SPECIAL = {"cursor_hash": "<cursor-hash>"}

_DECL = re.compile(r"KEYS\[(\d+)\]\s+(\S+)(\s+\(optional)?")
_VARIABLE = re.compile(r"KEYS\[(?!\d+\])[^\]]+\]")
_PER_CHANNEL = re.compile(r"\+(\d+) (\S+)")
_USED = re.compile(r"KEYS\[(\d+)\]")
_USED_PER_CHANNEL = re.compile(r"KEYS\[b \+ (\d+)\]")


def _split(name: str) -> tuple[str, str]:
    """(header, body) of a script file: the header is its leading comment block."""
    text = LUA.joinpath(name + ".lua").read_text(encoding="utf-8")
    lines = text.splitlines()
    n = 0
    while n < len(lines) and lines[n].startswith("--"):
        n += 1
    header = "\n".join(line for line in lines[:n] if not line.startswith("--@include"))
    body = "\n".join(re.sub(r"--.*$", "", line) for line in lines[n:])
    return header, body


def _spelling(role: str) -> str:
    """A role's key as a header writes it (channel ``<f>``, job ``<id>``, no prefix)."""
    if role in SPECIAL:
        return SPECIAL[role]
    space = Keyspace("")
    for source in (space.job("<f>"), space.feed("<f>"), space):
        value: Any = getattr(source, role, None)
        if value is None:
            continue
        if callable(value):
            try:
                return str(value("<id>"))
            except TypeError:
                return str(value())
        return str(value)
    raise AssertionError(f"role {role!r} names no key of JobKeys, FeedKeys or Keyspace")


def test_every_script_has_a_contract_and_every_contract_a_script() -> None:
    assert SCRIPTS, "no Lua scripts found"
    assert sorted(CONTRACTS) == SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_header_keys_match_the_contract(name: str) -> None:
    c = contract(name)
    header, _ = _split(name)
    if c.per_channel:
        assert not _DECL.findall(header), f"{name}: a per-channel script declares +n offsets only"
        decls = _PER_CHANNEL.findall(header)
        assert [int(n) for n, _ in decls] == list(range(1, len(decls) + 1))
        assert [key for _, key in decls] == [_spelling(r) for r in c.roles]
        return
    decls = _DECL.findall(header)
    numbers = [int(n) for n, _, _ in decls]
    assert numbers == list(range(1, len(numbers) + 1)), f"{name}: KEYS declared out of order"
    expected = [_spelling(r) for r in (*c.roles, *c.optional)]
    assert [key for _, key, _ in decls] == expected, f"{name}: header and contract differ"
    optional = [key for _, key, opt in decls if opt]
    assert optional == [_spelling(r) for r in c.optional], f"{name}: optional keys differ"
    assert bool(_VARIABLE.search(header)) == bool(c.tail), (
        f"{name}: a variable KEYS tail in the header iff the contract has one"
    )


@pytest.mark.parametrize("name", SCRIPTS)
def test_body_uses_exactly_the_declared_keys(name: str) -> None:
    c = contract(name)
    _, body = _split(name)
    if c.per_channel:
        assert not _USED.findall(body), f"{name}: channel keys are addressed as KEYS[b + n]"
        used = {int(n) for n in _USED_PER_CHANNEL.findall(body)}
        assert used == set(range(1, c.count + 1))
        return
    used = {int(n) for n in _USED.findall(body)}
    declared = set(range(1, c.count + len(c.optional) + 1))
    assert used <= declared, f"{name}: KEYS{sorted(used - declared)} used but not declared"
    assert declared <= used, f"{name}: KEYS{sorted(declared - used)} declared but never used"


@pytest.mark.parametrize("name", SCRIPTS)
def test_includes_resolve_and_helpers_take_no_keys(name: str) -> None:
    text = _expand(name + ".lua")
    assert "--@include" not in text
    for include in INCLUDES:  # helpers get their keys as arguments, never from KEYS
        assert not _USED.search(LUA.joinpath(include).read_text(encoding="utf-8")), include


def test_build_takes_roles_from_the_keys_object_given_keys_and_a_tail() -> None:
    space = Keyspace("p:")
    k = space.job("emails")
    assert contract("job_extend").build(k) == [k.claimed, k.leases, k.tokens]
    # optional keys only when given; given keys override the source
    assert contract("job_reap").build(k)[-2:] == [k.wake, k.items]
    assert contract("job_reap").build(k, presence=space.presence())[-1] == "p:taskpipe.presence"
    assert contract("job_state").build(k, result=k.result("x"))[5] == "p:feed.result:emails:x"
    assert contract("delete").build(space, "a", "b") == ["p:feeds", "a", "b"]
    assert contract("worker_live").build(space) == ["p:taskpipe.workers"]
    assert contract("job_claim").build(k)[11] == k.attempts


def test_build_refuses_unknown_roles_and_an_unexpected_tail() -> None:
    k = Keyspace("").job("q")
    with pytest.raises(TypeError, match="no key role"):
        contract("job_extend").build(k, stalled=k.stalled)
    with pytest.raises(TypeError, match="takes no keys after"):
        contract("job_extend").build(k, "extra")
    with pytest.raises(KeyError):
        contract("no_such_script")


def test_finish_follow_up_keys_match_the_job_finish_header() -> None:
    header, _ = _split("job_finish")
    spelled = re.findall(r"KEYS\[f(?:\+(\d+))?\] (\S+)", header)
    assert [int(n or 0) for n, _ in spelled] == list(range(len(FINISH_FOLLOWUP_ROLES) + 1))
    # the target channel is <t> in the header; then comes the follow-up job's result key
    expected = [_spelling(r).replace("<f>", "<t>") for r in FINISH_FOLLOWUP_ROLES]
    assert [key for _, key in spelled] == [*expected, "feed.result:<t>:<follow-up"]


def test_contracts_are_frozen() -> None:
    c = contract("job_put")
    assert isinstance(c, ScriptKeys)
    with pytest.raises(AttributeError):
        c.roles = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        CONTRACTS["x"] = c  # type: ignore[index]
