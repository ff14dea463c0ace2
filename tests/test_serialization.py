"""Tests for taskpipe.serialization: serializers, the job envelope and result records (no Redis)."""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest

from taskpipe import serialization
from taskpipe.errors import ConfigError, PayloadTooLarge, SerializationError
from taskpipe.serialization import (
    DEFAULT_MAX_PAYLOAD,
    Envelope,
    JsonSerializer,
    MsgpackSerializer,
    ResultRecord,
    Serializer,
    decode_envelope,
    decode_result,
    encode_envelope,
    encode_failure,
    encode_result,
    get_serializer,
)

NAMES = ["msgpack", "json"]
TZ_PLUS = timezone(timedelta(hours=5, minutes=30))
TZ_MINUS = timezone(timedelta(hours=-8))
TZ_ODD = timezone(timedelta(hours=1, seconds=15, microseconds=7))
UID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def same(a: Any, b: Any) -> bool:
    """Deep equality that also requires identical types (tuple != list, etc.) and NaN == NaN."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if type(a) is Decimal:
        return str(a) == str(b)
    if type(a) in (datetime, time):
        return (
            a == b and a.utcoffset() == b.utcoffset() and (a.tzinfo is None) == (b.tzinfo is None)
        )
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        if len(a) != len(b) or list(a) != list(b):
            return False
        return all(same(k1, k2) and same(a[k1], b[k2]) for k1, k2 in zip(a, b, strict=True))
    if type(a) in (set, frozenset):
        others = list(b)
        return a == b and all(any(same(x, y) for y in others if y == x) for x in a)
    return bool(a == b)


VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    2**1000,
    -(2**1000) + 17,
    10**5000,  # beyond Python's int/str digit limit
    0.0,
    -0.0,
    1.5,
    1e308,
    5e-324,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "hello",
    "héllo wörld ✓ 🎉",
    "\x00\n\t",
    b"",
    b"\x00\xff\x80 bytes",
    [],
    [1, "a", None],
    {},
    {"a": 1, "b": [1, 2]},
    (),
    (1,),
    (1, "two", 3.0),
    ((1, 2), [3, (4, 5)]),
    [(1, 2), (3, 4)],
    {"t": (1, 2)},
    set(),
    {1, 2, 3},
    {"a", (1, 2)},
    frozenset(),
    frozenset({1, "x"}),
    {frozenset({1}), frozenset({2})},
    {1: "int key", 2: "two"},
    {(1, 2): "tuple key", (3,): [4]},
    {frozenset({1, 2}): "frozenset key"},
    {b"k": "bytes key"},
    {None: 1, True: 2, 3.5: 3},
    {"__tp__": "datetime", "v": "not really"},  # user data that looks like a tag
    {"x": {"__tp__": 1}},
    datetime(2024, 1, 2, 3, 4, 5, 6),
    datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc),
    datetime(2024, 2, 29, 23, 59, 59, tzinfo=TZ_PLUS),
    datetime(1999, 12, 31, tzinfo=TZ_MINUS),
    datetime(2024, 1, 1, tzinfo=TZ_ODD),
    datetime.min,
    datetime.max,
    date(2024, 2, 29),
    date.min,
    date.max,
    time(0, 0),
    time(1, 2, 3, 4),
    time(23, 59, 59, 999999, tzinfo=TZ_PLUS),
    time(12, 0, tzinfo=timezone.utc),
    timedelta(0),
    timedelta(days=-3, seconds=5, microseconds=7),
    timedelta(days=999999999, seconds=86399, microseconds=999999),
    timedelta.min,
    UID,
    uuid.UUID(int=0),
    Decimal("1.10"),
    Decimal("-0"),
    Decimal("1E+1000"),
    Decimal("NaN"),
    Decimal("-Infinity"),
    Decimal("3.14159265358979323846264338327950288419716939937510"),
    {"when": datetime(2024, 1, 1, tzinfo=timezone.utc), "ids": [UID, UID], "amt": Decimal("9.99")},
    [[[[[[[[[[1]]]]]]]]]],
]


@pytest.fixture(params=NAMES)
def ser(request: pytest.FixtureRequest) -> Serializer:
    return get_serializer(request.param)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", VALUES, ids=[f"v{i}" for i in range(len(VALUES))])
def test_round_trip_keeps_value_and_type(name: str, value: Any) -> None:
    s = get_serializer(name)
    data = s.dumps(value)
    assert type(data) is bytes
    out = s.loads(data)
    assert same(out, value), (value, out)


def test_aware_datetime_keeps_offset(ser: Serializer) -> None:
    value = datetime(2024, 5, 6, 7, 8, 9, tzinfo=TZ_PLUS)
    out = ser.loads(ser.dumps(value))
    assert out == value
    assert out.utcoffset() == timedelta(hours=5, minutes=30)
    assert out.hour == 7


def test_naive_datetime_stays_naive(ser: Serializer) -> None:
    out = ser.loads(ser.dumps(datetime(2024, 5, 6, 7, 8, 9)))
    assert out.tzinfo is None
    assert out == datetime(2024, 5, 6, 7, 8, 9)


def test_tzinfo_is_kept_as_a_fixed_offset(ser: Serializer) -> None:
    class Paris(tzinfo):  # a "named" zone with a real UTC offset
        def utcoffset(self, dt: datetime | None) -> timedelta:
            return timedelta(hours=2)

        def dst(self, dt: datetime | None) -> timedelta:
            return timedelta(hours=1)

        def tzname(self, dt: datetime | None) -> str:
            return "CEST"

    value = datetime(2024, 7, 1, 12, tzinfo=Paris())
    out = ser.loads(ser.dumps(value))
    assert out == value
    assert out.utcoffset() == timedelta(hours=2)
    assert out.tzinfo == timezone(timedelta(hours=2))


def test_zoneinfo_becomes_a_fixed_offset(ser: Serializer) -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no tz database")
    value = datetime(2024, 7, 1, 12, tzinfo=paris)
    out = ser.loads(ser.dumps(value))
    assert out == value
    assert out.tzinfo == timezone(timedelta(hours=2))
    assert out.isoformat() == "2024-07-01T12:00:00+02:00"


def test_tuples_come_back_as_tuples_at_any_depth(ser: Serializer) -> None:
    value = {"a": [(1, (2, [3, (4,)]))], (5, 6): ((),)}
    out = ser.loads(ser.dumps(value))
    assert type(out["a"][0]) is tuple
    assert type(out["a"][0][1]) is tuple
    assert type(out["a"][0][1][1]) is list
    assert type(out["a"][0][1][1][1]) is tuple
    assert out[(5, 6)] == ((),)


def test_sets_and_frozensets_keep_their_type(ser: Serializer) -> None:
    out = ser.loads(ser.dumps([{1, 2}, frozenset({3}), {frozenset({4})}]))
    assert [type(x) for x in out] == [set, frozenset, set]
    assert out == [{1, 2}, frozenset({3}), {frozenset({4})}]


def test_bytearray_and_memoryview_come_back_as_bytes(ser: Serializer) -> None:
    assert ser.loads(ser.dumps(bytearray(b"abc"))) == b"abc"
    assert type(ser.loads(ser.dumps(bytearray(b"abc")))) is bytes
    assert ser.loads(ser.dumps(memoryview(b"xyz"))) == b"xyz"
    assert type(ser.loads(ser.dumps(memoryview(b"xyz")))) is bytes


def test_deep_nesting_within_limit(ser: Serializer) -> None:
    value: Any = 1
    for _ in range(200):
        value = [value]
    out = ser.loads(ser.dumps(value))
    for _ in range(200):
        out = out[0]
    assert out == 1


def _random_value(rng: random.Random, depth: int = 0, hashable: bool = False) -> Any:
    leaves: list[Callable[[], Any]] = [
        lambda: None,
        lambda: rng.random() < 0.5,
        lambda: rng.randrange(-(2**70), 2**70),
        lambda: rng.randrange(-1000, 1000),
        lambda: rng.uniform(-1e9, 1e9),
        lambda: "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0xA0, 0xD7FF)]))
            for _ in range(rng.randrange(0, 12))
        ),
        lambda: rng.randbytes(rng.randrange(0, 12)),
        lambda: datetime(
            rng.randrange(1, 9999),
            rng.randrange(1, 13),
            rng.randrange(1, 29),
            rng.randrange(24),
            rng.randrange(60),
            rng.randrange(60),
            rng.randrange(10**6),
            tzinfo=rng.choice([None, timezone.utc, TZ_PLUS, TZ_MINUS]),
        ),
        lambda: date(rng.randrange(1, 9999), rng.randrange(1, 13), rng.randrange(1, 29)),
        lambda: time(rng.randrange(24), rng.randrange(60), rng.randrange(60), rng.randrange(10**6)),
        lambda: timedelta(microseconds=rng.randrange(-(10**15), 10**15)),
        lambda: uuid.UUID(int=rng.getrandbits(128)),
        lambda: Decimal(rng.randrange(-(10**20), 10**20)).scaleb(rng.randrange(-30, 30)),
    ]
    if depth >= 3 or rng.random() < 0.5:
        value = rng.choice(leaves)()
        if hashable and type(value) is float and math.isnan(value):
            return 0.0
        return value
    kind = rng.choice(
        ["tuple", "frozenset"] if hashable else ["list", "tuple", "dict", "set", "frozenset"]
    )
    size = rng.randrange(0, 5)
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(size)]
    if kind == "tuple":
        return tuple(_random_value(rng, depth + 1, hashable) for _ in range(size))
    if kind == "dict":
        return {
            _random_value(rng, depth + 1, True): _random_value(rng, depth + 1) for _ in range(size)
        }
    items = [_random_value(rng, depth + 1, True) for _ in range(size)]
    return set(items) if kind == "set" else frozenset(items)


@pytest.mark.parametrize("name", NAMES)
def test_random_values_round_trip(name: str) -> None:
    s = get_serializer(name)
    rng = random.Random(f"taskpipe-{name}")
    for _ in range(1500):
        value = _random_value(rng)
        out = s.loads(s.dumps(value))
        assert same(out, value), (value, out)


def test_both_serializers_agree() -> None:
    rng = random.Random(11)
    m, j = get_serializer("msgpack"), get_serializer("json")
    for _ in range(500):
        value = _random_value(rng)
        assert same(m.loads(m.dumps(value)), j.loads(j.dumps(value)))


# ---------------------------------------------------------------- wire stability (golden bytes)


@pytest.mark.parametrize(
    ("value", "msgpack_bytes", "json_bytes"),
    [
        ((1, 2), b"\x93\xc7\x00\x07\x01\x02", b'{"__tp__":"tuple","v":[1,2]}'),
        ({3}, b"\x92\xc7\x00\x08\x03", b'{"__tp__":"set","v":[3]}'),
        (frozenset({3}), b"\x92\xc7\x00\x09\x03", b'{"__tp__":"frozenset","v":[3]}'),
        (
            UID,
            b"\xc7\x24\x05" + str(UID).encode(),
            b'{"__tp__":"uuid","v":"' + str(UID).encode() + b'"}',
        ),
        (Decimal("1.5"), b"\xc7\x03\x061.5", b'{"__tp__":"decimal","v":"1.5"}'),
        ({"a": 1}, b"\x81\xa1a\x01", b'{"a":1}'),
        (date(2024, 1, 2), b"\xc7\x0a\x022024-01-02", b'{"__tp__":"date","v":"2024-01-02"}'),
        (b"\x01", b"\xc4\x01\x01", b'{"__tp__":"bytes","v":"AQ=="}'),
        (2**64, b"\xc7\x09\x0a\x01" + b"\x00" * 8, b'{"__tp__":"int","v":"0x10000000000000000"}'),
        (float("nan"), b"\xcb\x7f\xf8" + b"\x00" * 6, b'{"__tp__":"float","v":"nan"}'),
        (
            timedelta(days=1, seconds=2, microseconds=3),
            b"\xc7\x0c\x04\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03",
            b'{"__tp__":"timedelta","v":[1,2,3]}',
        ),
        ({1: 2}, b"\x81\x01\x02", b'{"__tp__":"dict","v":[[1,2]]}'),
        ("é", b"\xa2\xc3\xa9", '"é"'.encode()),
    ],
)
def test_golden_bytes(value: Any, msgpack_bytes: bytes, json_bytes: bytes) -> None:
    assert get_serializer("msgpack").dumps(value) == msgpack_bytes
    assert get_serializer("json").dumps(value) == json_bytes


def test_json_output_is_strict_json() -> None:
    data = get_serializer("json").dumps([float("nan"), float("inf"), 2**100])
    assert b"NaN" not in data and b"Infinity" not in data
    import json

    assert json.loads(data, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))


# ---------------------------------------------------------------- unsupported values


class Custom:
    pass


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


class MyFloat(float):
    pass


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    ("value", "type_name", "path"),
    [
        (Custom(), "test_serialization.Custom", "value"),
        ({"x": [1, Custom()]}, "test_serialization.Custom", "value['x'][1]"),
        ([0, {"deep": (1, 2, Point(1))}], "test_serialization.Point", "value[1]['deep'][2]"),
        (Color.RED, "test_serialization.Color", "value"),
        ([MyStr("s")], "test_serialization.MyStr", "value[0]"),
        ({"f": MyFloat(1.0)}, "test_serialization.MyFloat", "value['f']"),
        (OrderedDict(a=1), "collections.OrderedDict", "value"),
        (1 + 2j, "complex", "value"),
        ({"fn": len}, "builtin_function_or_method", "value['fn']"),
        ({Color.RED: 1}, "test_serialization.Color", "(the key)"),
        ({1, Custom()}, "test_serialization.Custom", "value{"),
        (Path("/tmp"), "pathlib.PosixPath", "value"),
    ],
)
def test_unsupported_types_are_named_with_their_path(
    ser: Serializer, value: Any, type_name: str, path: str
) -> None:
    with pytest.raises(SerializationError) as info:
        ser.dumps(value)
    message = str(info.value)
    assert type_name.split(".")[-1] in message
    assert path in message


def test_serialization_error_is_a_type_error(ser: Serializer) -> None:
    with pytest.raises(TypeError):
        ser.dumps(Custom())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (["ok", "\ud800"], "UTF-8"),
        ({"s": "bad \udcff"}, "value['s']"),
    ],
)
def test_lone_surrogates_are_rejected(ser: Serializer, value: Any, reason: str) -> None:
    with pytest.raises(SerializationError, match=reason.replace("[", r"\[")):
        ser.dumps(value)


def test_circular_reference(ser: Serializer) -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(SerializationError, match=r"circular reference at value\[1\]"):
        ser.dumps(loop)
    loop2: list[Any] = []
    loop2.append((loop2,))
    with pytest.raises(SerializationError, match="circular"):
        ser.dumps(loop2)


@pytest.mark.parametrize("kind", [list, tuple, "dict", frozenset])
@pytest.mark.parametrize(
    ("name", "ok_depth", "bad_depth"), [("json", 199, 201), ("msgpack", 1000, 1100)]
)
def test_nesting_limits(kind: Any, name: str, ok_depth: int, bad_depth: int) -> None:
    def nest(depth: int) -> Any:
        value: Any = 1
        for _ in range(depth):
            value = {"k": value} if kind == "dict" else kind([value])
        return value

    s = get_serializer(name)
    out = s.loads(s.dumps(nest(ok_depth)))
    for _ in range(ok_depth):  # unwrap without recursion (== would hit the recursion limit)
        assert type(out) is (dict if kind == "dict" else kind)
        out = out["k"] if kind == "dict" else next(iter(out))
    assert out == 1
    with pytest.raises(SerializationError, match="nested deeper than"):
        s.dumps(nest(bad_depth))


def test_nested_tuples_decode_without_recursion() -> None:
    # each level used to cost a nested unpack call (and C stack): decode must stay flat
    s = get_serializer("msgpack")
    value: Any = ()
    for _ in range(1000):
        value = (value,)
    out = s.loads(s.dumps(value))
    for _ in range(1000):
        assert type(out) is tuple and len(out) == 1
        out = out[0]
    assert out == ()


def test_hand_crafted_msgpack_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(SerializationError):
        get_serializer("msgpack").loads(b"\x91" * 5000 + b"\x01")
    with pytest.raises(SerializationError):
        get_serializer("json").loads(b"[" * 100_000 + b"]" * 100_000)


def test_tzinfo_without_fixed_offset(ser: Serializer) -> None:
    class Floating(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta | None:
            return None

        def dst(self, dt: datetime | None) -> timedelta | None:
            return None

        def tzname(self, dt: datetime | None) -> str | None:
            return None

    with pytest.raises(SerializationError, match="fixed UTC offset"):
        ser.dumps({"t": time(1, tzinfo=Floating())})


# ---------------------------------------------------------------- undecodable data


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("msgpack", b""),
        ("msgpack", b"\xc1"),  # never-used msgpack byte
        ("msgpack", b"\x92\x01"),  # truncated array
        ("msgpack", b"\x01\x02"),  # extra data
        ("msgpack", b"\xd4\x63\x00"),  # unknown ext type 99
        ("msgpack", b"\xa2\xff\xfe"),  # invalid UTF-8 str
        ("msgpack", b"\xc7\x03\x01bad"),  # datetime ext with junk
        ("msgpack", b"\x92\xc7\x00\x08\x90"),  # set containing a list (unhashable)
        ("msgpack", b"\xc7\x01\x07x"),  # tuple marker with data
        ("msgpack", b"\xc7\x02\x0a"),  # truncated bigint ext
        ("json", b""),
        ("json", b"{"),
        ("json", b"\xff\xfe"),
        ("json", b'{"__tp__":"nope","v":1}'),
        ("json", b'{"__tp__":"tuple","v":[],"x":1}'),
        ("json", b'{"__tp__":"tuple"}'),
        ("json", b'{"__tp__":5,"v":1}'),
        ("json", b'{"__tp__":"bytes","v":"!!!"}'),
        ("json", b'{"__tp__":"float","v":"1.5"}'),
        ("json", b'{"__tp__":"datetime","v":"yesterday"}'),
        ("json", b'{"__tp__":"decimal","v":"abc"}'),
        ("json", b'{"__tp__":"dict","v":[[[1],2]]}'),
        ("json", b'{"__tp__":"timedelta","v":"x"}'),
    ],
)
def test_undecodable_data(name: str, data: bytes) -> None:
    with pytest.raises(SerializationError):
        get_serializer(name).loads(data)


@pytest.mark.parametrize("data", ["text", 5, None, [1]])
def test_loads_needs_bytes(ser: Serializer, data: Any) -> None:
    with pytest.raises(SerializationError, match="bytes"):
        ser.loads(data)


def test_loads_accepts_bytearray_and_memoryview(ser: Serializer) -> None:
    data = ser.dumps({"a": (1, 2)})
    # the protocol says bytes (what Redis returns); the built-in serializers take any buffer
    assert ser.loads(bytearray(data)) == {"a": (1, 2)}  # type: ignore[arg-type]
    assert ser.loads(memoryview(data)) == {"a": (1, 2)}  # type: ignore[arg-type]


# ---------------------------------------------------------------- get_serializer


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("msgpack", MsgpackSerializer),
        ("json", JsonSerializer),
        ("JSON", JsonSerializer),
        (" MsgPack ", MsgpackSerializer),
    ],
)
def test_get_serializer(name: str, cls: type) -> None:
    s = get_serializer(name)
    assert type(s) is cls
    assert isinstance(s, Serializer)
    assert s.name == name.strip().lower()
    assert get_serializer(name) is s


@pytest.mark.parametrize("name", ["pickle", "yaml", "", "msgpack2", None, 1])
def test_get_serializer_unknown(name: Any) -> None:
    with pytest.raises(ConfigError, match="serializer"):
        get_serializer(name)


def test_never_pickle() -> None:
    source = Path(serialization.__file__).read_text()
    assert "import pickle" not in source and "from pickle" not in source
    assert "marshal" not in source


# ---------------------------------------------------------------- job envelope


@pytest.mark.parametrize(("name", "sid"), [("msgpack", 1), ("json", 2)])
def test_envelope_round_trip(name: str, sid: int) -> None:
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    data = encode_envelope(
        "app.tasks.add",
        (1, (2, 3), {"x": when}),
        {"k": Decimal("1.5")},
        {"retries": 3, "queue": "default"},
        serializer=name,
        max_size=None,
    )
    assert data[:2] == b"TP"
    assert data[2] == 1
    assert data[3] == sid
    env = decode_envelope(data)
    assert env == Envelope(
        1,
        "app.tasks.add",
        (1, (2, 3), {"x": when}),
        {"k": Decimal("1.5")},
        {"retries": 3, "queue": "default"},
        name,
    )
    assert type(env.args) is tuple
    assert type(env.args[1]) is tuple


def test_envelope_list_args_become_a_tuple() -> None:
    env = decode_envelope(encode_envelope("t", [1, [2]], {}, {}))
    assert env.args == (1, [2])
    assert type(env.args) is tuple
    assert type(env.args[1]) is list


def test_envelope_golden_bytes() -> None:
    assert (
        encode_envelope("t", (), {}, {}) == b"TP\x01\x01\x84\xa1t\xa1t\xa1a\x90\xa1k\x80\xa1o\x80"
    )
    assert encode_envelope("t", (1,), {}, {}, serializer="json") == (
        b'TP\x01\x02{"t":"t","a":[1],"k":{},"o":{}}'
    )


def test_envelope_is_frozen() -> None:
    env = decode_envelope(encode_envelope("t", (), {}, {}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.task = "other"  # type: ignore[misc]


def test_envelope_accepts_serializer_instances() -> None:
    data = encode_envelope("t", (1,), {}, {}, serializer=JsonSerializer())
    assert data[3] == 2
    assert decode_envelope(data).serializer == "json"


def test_envelope_random_round_trips() -> None:
    rng = random.Random(5)
    for i in range(400):
        name = NAMES[i % 2]
        args = tuple(_random_value(rng) for _ in range(rng.randrange(0, 4)))
        kwargs = {f"k{j}": _random_value(rng) for j in range(rng.randrange(0, 4))}
        options = {"n": i, "eta": rng.uniform(0, 1e9)}
        env = decode_envelope(
            encode_envelope(f"task.{i}", args, kwargs, options, serializer=name, max_size=None)
        )
        assert env.task == f"task.{i}"
        assert same(env.args, args)
        assert same(env.kwargs, kwargs)
        assert same(env.options, options)
        assert env.serializer == name
        assert env.version == 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("args", "kwargs", "options", "path"),
    [
        ((1, Custom()), {}, {}, "args[1]"),
        (({"when": Custom()},), {}, {}, "args[0]['when']"),
        ((), {"x": [Custom()]}, {}, "kwargs['x'][0]"),
        ((), {}, {"callback": len}, "options['callback']"),
    ],
)
def test_envelope_unserializable_arguments(
    name: str, args: Any, kwargs: Any, options: Any, path: str
) -> None:
    with pytest.raises(SerializationError) as info:
        encode_envelope("app.t", args, kwargs, options, serializer=name)
    assert not isinstance(info.value, PayloadTooLarge)
    assert path in str(info.value)
    assert "'app.t'" in str(info.value)


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "options", "reason"),
    [
        ("", (), {}, {}, "task name"),
        (5, (), {}, {}, "task name"),
        (None, (), {}, {}, "task name"),
        ("t", {"a": 1}, {}, {}, "args"),
        ("t", "ab", {}, {}, "args"),
        ("t", None, {}, {}, "args"),
        ("t", (), {1: "x"}, {}, "kwargs"),
        ("t", (), [("a", 1)], {}, "kwargs"),
        ("t", (), None, {}, "kwargs"),
        ("t", (), {}, {2: 3}, "options"),
        ("t", (), {}, None, "options"),
    ],
)
def test_envelope_invalid_job(task: Any, args: Any, kwargs: Any, options: Any, reason: str) -> None:
    with pytest.raises(SerializationError, match=reason):
        encode_envelope(task, args, kwargs, options)


@pytest.mark.parametrize("name", NAMES)
def test_envelope_payload_too_large(name: str) -> None:
    small = encode_envelope("t", ("x" * 100,), {}, {}, serializer=name, max_size=None)
    size = len(small)
    assert encode_envelope("t", ("x" * 100,), {}, {}, serializer=name, max_size=size) == small
    with pytest.raises(PayloadTooLarge) as info:
        encode_envelope("t", ("x" * 100,), {}, {}, serializer=name, max_size=size - 1)
    assert str(size) in str(info.value)
    assert str(size - 1) in str(info.value)
    assert isinstance(info.value, SerializationError)
    assert isinstance(info.value, ValueError)


def test_envelope_default_limit() -> None:
    assert DEFAULT_MAX_PAYLOAD == 512 * 1024
    encode_envelope("t", (b"x" * (DEFAULT_MAX_PAYLOAD - 100),), {}, {})
    with pytest.raises(PayloadTooLarge, match=str(DEFAULT_MAX_PAYLOAD)):
        encode_envelope("t", (b"x" * DEFAULT_MAX_PAYLOAD,), {}, {})
    big = encode_envelope("t", (b"x" * (2 * DEFAULT_MAX_PAYLOAD),), {}, {}, max_size=None)
    assert len(big) > 2 * DEFAULT_MAX_PAYLOAD


@pytest.mark.parametrize("max_size", [-1, 1.5, "10", True])
def test_envelope_bad_max_size(max_size: Any) -> None:
    with pytest.raises(ConfigError, match="max_size"):
        encode_envelope("t", (), {}, {}, max_size=max_size)


def test_envelope_unknown_serializer() -> None:
    with pytest.raises(ConfigError):
        encode_envelope("t", (), {}, {}, serializer="pickle")

    class Other:
        name = "cbor"

        def dumps(self, obj: Any) -> bytes:
            return b""

        def loads(self, data: bytes) -> Any:
            return None

    with pytest.raises(ConfigError, match="envelope id"):
        encode_envelope("t", (), {}, {}, serializer=Other())


def _body(name: str, body: Any) -> bytes:
    return get_serializer(name).dumps(body)


GOOD = {"t": "task", "a": [], "k": {}, "o": {}}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "missing magic"),
        (b"legacy thoonk job payload", "missing magic"),
        (b'{"task": "x"}', "legacy"),
        (b"\x93\x01\x02\x03", "missing magic"),
        (b"tp\x01\x01" + _body("msgpack", GOOD), "missing magic"),
        (b"TR\x01\x01" + _body("msgpack", {"ok": True, "v": 1}), "result record"),
        (b"TP", "truncated"),
        (b"TP\x01", "truncated"),
        (b"TP\x02\x01" + _body("msgpack", GOOD), "version 2"),
        (b"TP\x00\x01" + _body("msgpack", GOOD), "version 0"),
        (b"TP\x01\x03" + _body("msgpack", GOOD), "serializer id 3"),
        (b"TP\x01\x00" + _body("msgpack", GOOD), "serializer id 0"),
        (b"TP\x01\x01", "undecodable"),
        (b"TP\x01\x01\xc1", "undecodable"),
        (b"TP\x01\x02not json", "undecodable"),
        (b"TP\x01\x02" + _body("msgpack", GOOD), "undecodable"),  # wrong id for the body
        (b"TP\x01\x01" + _body("msgpack", [1, 2]), "expected a map"),
        (b"TP\x01\x01" + _body("msgpack", "str"), "expected a map"),
        (b"TP\x01\x01" + _body("msgpack", {"t": "x"}), "missing field"),
        (b"TP\x01\x01" + _body("msgpack", {**GOOD, "t": 5}), "task name"),
        (b"TP\x01\x01" + _body("msgpack", {**GOOD, "t": ""}), "task name"),
        (b"TP\x01\x01" + _body("msgpack", {**GOOD, "a": {"x": 1}}), "args"),
        (b"TP\x01\x01" + _body("msgpack", {**GOOD, "a": "abc"}), "args"),
        (b"TP\x01\x01" + _body("msgpack", {**GOOD, "k": [1]}), "kwargs"),
        (b"TP\x01\x01" + _body("msgpack", {**GOOD, "k": {1: 2}}), "kwargs"),
        (b"TP\x01\x01" + _body("msgpack", {**GOOD, "o": None}), "options"),
        (b"TP\x01\x02" + _body("json", {**GOOD, "o": [1]}), "options"),
    ],
)
def test_decode_envelope_errors(data: bytes, reason: str) -> None:
    with pytest.raises(SerializationError, match=reason):
        decode_envelope(data)


def test_decode_envelope_needs_bytes() -> None:
    with pytest.raises(SerializationError, match="bytes"):
        decode_envelope("TP\x01\x01")  # type: ignore[arg-type]
    data = encode_envelope("t", (1,), {}, {})
    assert decode_envelope(bytearray(data)).args == (1,)
    assert decode_envelope(memoryview(data)).args == (1,)


def test_decode_envelope_ignores_unknown_body_fields() -> None:
    data = b"TP\x01\x01" + _body("msgpack", {**GOOD, "future": 1})
    assert decode_envelope(data) == Envelope(1, "task", (), {}, {}, "msgpack")


def test_decode_envelope_accepts_hand_built_msgpack() -> None:
    body = msgpack.packb({"t": "x.y", "a": [1, "b"], "k": {"z": None}, "o": {}})
    env = decode_envelope(b"TP\x01\x01" + body)
    assert env == Envelope(1, "x.y", (1, "b"), {"z": None}, {}, "msgpack")


# ---------------------------------------------------------------- result records


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "value",
    [None, 0, "done", (1, 2), {"a": {1, 2}}, UID, 2**100, [datetime(2024, 1, 1, tzinfo=TZ_MINUS)]],
)
def test_result_round_trip(name: str, value: Any) -> None:
    data = encode_result(value, serializer=name, max_size=DEFAULT_MAX_PAYLOAD)
    assert data[:2] == b"TR"
    assert data[2] == 1
    assert data[3] == {"msgpack": 1, "json": 2}[name]
    record = decode_result(data)
    assert record.ok is True
    assert same(record.value, value)
    assert (record.exc_type, record.exc_message, record.traceback) == (None, None, None)


@pytest.mark.parametrize("name", NAMES)
def test_failure_round_trip(name: str) -> None:
    data = encode_failure(
        "ValueError", "bad input: 'x'", "Traceback (most recent call last):\n", serializer=name
    )
    assert data[:4] == b"TR\x01" + bytes([{"msgpack": 1, "json": 2}[name]])
    assert decode_result(data) == ResultRecord(
        False, None, "ValueError", "bad input: 'x'", "Traceback (most recent call last):\n"
    )


def test_result_is_frozen() -> None:
    record = decode_result(encode_result(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.ok = False  # type: ignore[misc]


@pytest.mark.parametrize("name", NAMES)
def test_result_unserializable(name: str) -> None:
    with pytest.raises(SerializationError) as info:
        encode_result({"rows": [Custom()]}, serializer=name)
    assert "result['rows'][0]" in str(info.value)
    assert "Custom" in str(info.value)
    assert not isinstance(info.value, PayloadTooLarge)


@pytest.mark.parametrize("name", NAMES)
def test_result_too_large(name: str) -> None:
    size = len(encode_result("y" * 1000, serializer=name, max_size=None))
    assert (
        decode_result(encode_result("y" * 1000, serializer=name, max_size=size)).value == "y" * 1000
    )
    with pytest.raises(PayloadTooLarge) as info:
        encode_result("y" * 1000, serializer=name, max_size=size - 1)
    assert str(size) in str(info.value) and str(size - 1) in str(info.value)
    with pytest.raises(PayloadTooLarge):
        encode_result(b"z" * (DEFAULT_MAX_PAYLOAD + 1), serializer=name)


@pytest.mark.parametrize("name", NAMES)
def test_failure_text_is_made_safe(name: str) -> None:
    record = decode_result(encode_failure("E\ud800", "msg \udcff", "tb", serializer=name))
    assert record.exc_type == "E\\ud800"
    assert record.exc_message == "msg \\udcff"
    assert record.traceback == "tb"


@pytest.mark.parametrize("name", NAMES)
def test_huge_failure_is_truncated_but_fits(name: str) -> None:
    message = "M" + "€" * 200_000 + "END-OF-MESSAGE"
    traceback = "START-OF-TB" + "🎉" * 200_000 + "\nValueError: the real cause"
    data = encode_failure("E" * 5000, message, traceback, serializer=name)
    assert len(data) <= DEFAULT_MAX_PAYLOAD
    record = decode_result(data)
    assert record.exc_message is not None and record.traceback is not None
    assert record.exc_message.startswith("M€€")
    assert "truncated" in record.exc_message
    assert "END-OF-MESSAGE" not in record.exc_message
    assert record.traceback.endswith("ValueError: the real cause")
    assert "START-OF-TB" not in record.traceback
    assert "truncated" in record.traceback


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "missing magic"),
        (b"garbage", "missing magic"),
        (encode_envelope("t", (), {}, {}), "job envelope"),
        (b"TR\x01", "truncated"),
        (b"TR\x07\x01" + _body("msgpack", {"ok": True, "v": 1}), "version 7"),
        (b"TR\x01\x09" + _body("msgpack", {"ok": True, "v": 1}), "serializer id 9"),
        (b"TR\x01\x01\xc1", "undecodable"),
        (b"TR\x01\x01" + _body("msgpack", [True, 1]), "expected a map"),
        (b"TR\x01\x01" + _body("msgpack", {"v": 1}), "'ok'"),
        (b"TR\x01\x01" + _body("msgpack", {"ok": 1, "v": 1}), "'ok'"),
        (b"TR\x01\x01" + _body("msgpack", {"ok": True}), "without a value"),
        (b"TR\x01\x01" + _body("msgpack", {"ok": False, "e": "E", "m": "m"}), "failure"),
        (b"TR\x01\x01" + _body("msgpack", {"ok": False, "e": 1, "m": "m", "tb": ""}), "failure"),
    ],
)
def test_decode_result_errors(data: bytes, reason: str) -> None:
    with pytest.raises(SerializationError, match=reason):
        decode_result(data)


def test_envelope_is_not_a_result_and_vice_versa() -> None:
    with pytest.raises(SerializationError, match="result record"):
        decode_envelope(encode_result(1))
    with pytest.raises(SerializationError, match="result record"):
        decode_envelope(encode_failure("E", "m", "tb"))
    with pytest.raises(SerializationError, match="job envelope"):
        decode_result(encode_envelope("t", (), {}, {}))
