"""Serializers (msgpack by default, JSON as an option), the job envelope and the result record.

Both serializers round-trip the same set of types, with the exact type preserved: ``None``,
``bool``, ``int`` (any size), ``float`` (incl. NaN/inf), ``str``, ``bytes``, ``list``,
``dict`` (any hashable supported keys), ``tuple``, ``set``, ``frozenset``, ``datetime``
(naive or aware; tzinfo kept as a fixed UTC offset), ``date``, ``time``, ``timedelta``,
``uuid.UUID`` and ``decimal.Decimal``. ``bytearray``/``memoryview`` are written as bytes.
Subclasses (``IntEnum``, ``OrderedDict``, ``numpy.float64``...) and every other type raise
:class:`~taskpipe.errors.SerializationError` naming the type and where it was found. Pickle is
never used. See ``docs/serialization.md`` for the wire formats.
"""

from __future__ import annotations

import base64
import json
import math
import reprlib
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import msgpack

from .errors import ConfigError, PayloadTooLarge, SerializationError

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "ENVELOPE_MAGIC",
    "RESULT_MAGIC",
    "FORMAT_VERSION",
    "SERIALIZER_IDS",
    "Serializer",
    "MsgpackSerializer",
    "JsonSerializer",
    "get_serializer",
    "Envelope",
    "encode_envelope",
    "args_encoder",
    "decode_envelope",
    "ResultRecord",
    "encode_result",
    "encode_failure",
    "decode_result",
]

#: Default limit, in bytes, for an encoded job envelope or result (header included).
DEFAULT_MAX_PAYLOAD = 512 * 1024
#: First two bytes of every job envelope.
ENVELOPE_MAGIC = b"TP"
#: First two bytes of every result record.
RESULT_MAGIC = b"TR"
#: The envelope/result format version this module writes and reads.
FORMAT_VERSION = 1
#: Serializer name -> the id byte written in the header.
SERIALIZER_IDS: dict[str, int] = {"msgpack": 1, "json": 2}
#: The first four bytes of a msgpack job envelope of this version (``decode_envelope``'s fast path).
_MSGPACK_ENVELOPE_HEAD = ENVELOPE_MAGIC + bytes((FORMAT_VERSION, SERIALIZER_IDS["msgpack"]))

_JSON_MAX_DEPTH = 200  # JSON refuses deeper nesting (msgpack's own limit is 1024)
_MSGPACK_MAX_DEPTH = 1024
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # msgpack's native int range
_FAILURE_TEXT_LIMIT = 32 * 1024  # chars kept of a failure's message and of its traceback
_TAG = "__tp__"
_CONTAINERS = frozenset({list, tuple, set, frozenset, dict})
_COLLECTIONS: dict[str, Callable[[Any], Any]] = {"tuple": tuple, "set": set, "frozenset": frozenset}
_TIMEDELTA = struct.Struct(">iii")  # days, seconds, microseconds
# msgpack extension type codes (application range 0..127); never renumber. "tuple", "set"
# and "frozenset" are empty markers written as the first item of an array: [marker, *items].
_EXT_CODES = {
    "datetime": 1,
    "date": 2,
    "time": 3,
    "timedelta": 4,
    "uuid": 5,
    "decimal": 6,
    "tuple": 7,
    "set": 8,
    "frozenset": 9,
    "int": 10,
}
_EXT_TAGS = {code: tag for tag, code in _EXT_CODES.items()}
_MARKS = {tag: msgpack.ExtType(_EXT_CODES[tag], b"") for tag in _COLLECTIONS}
_MARKERS = {_EXT_CODES[tag]: make for tag, make in _COLLECTIONS.items()}  # decoded marker


def _iso(obj: Any) -> str:
    if obj.tzinfo is not None and obj.utcoffset() is None:
        raise TypeError(f"{type(obj).__name__} tzinfo without a fixed UTC offset")
    return str(obj.isoformat())


# Types written as text in both formats: type -> (tag, to text, from text).
_TEXT_CODECS: dict[type, tuple[str, Callable[[Any], str], Callable[[str], Any]]] = {
    datetime: ("datetime", _iso, datetime.fromisoformat),
    date: ("date", date.isoformat, date.fromisoformat),
    time: ("time", _iso, time.fromisoformat),
    uuid.UUID: ("uuid", str, uuid.UUID),
    Decimal: ("decimal", str, Decimal),
}
_FROM_TEXT = {tag: parse for tag, _, parse in _TEXT_CODECS.values()}
_LEAVES = frozenset(
    {type(None), bool, int, float, str, bytes, bytearray, memoryview, timedelta, *_TEXT_CODECS}
)


@runtime_checkable
class Serializer(Protocol):
    """Turns a value into bytes and back. ``name`` is what ``get_serializer`` knows it by."""

    name: str

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``; raise :class:`SerializationError` if it cannot be encoded."""

    def loads(self, data: bytes) -> Any:
        """Decode ``data``; raise :class:`SerializationError` if it cannot be decoded."""


def _type_name(obj: object) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlevel = 3


def _short(obj: object) -> str:
    """A short, safe repr for messages (bounded depth and length; never raises)."""
    try:
        return _REPR.repr(obj)
    except Exception:  # noqa: BLE001 - a repr may raise anything; this must never raise
        return f"<{_type_name(obj)} object>"


def _find_problem(obj: Any, root: str, max_depth: int) -> str | None:
    """Describe the first thing under ``obj`` that cannot be serialized (or return None).

    Only run after an encoding failed, to name the culprit and where it is (``args[1]['x']``).
    Iterative, so it works at any depth.
    """
    stack: list[tuple[Any, str | None, int]] = [(obj, root, 0)]
    active: set[int] = set()
    while stack:
        obj, path, depth = stack.pop()
        if path is None:  # left the container whose id is obj
            active.discard(obj)
            continue
        t = type(obj)
        if t in _LEAVES:
            try:
                if t is str:
                    obj.encode("utf-8")
                elif t is datetime or t is time:
                    _iso(obj)
            except UnicodeEncodeError:
                return f"a str that is not valid UTF-8 (lone surrogate) at {path}"
            except TypeError:
                return f"a {t.__name__} whose tzinfo has no fixed UTC offset at {path}"
            continue
        if t not in _CONTAINERS:
            return f"an object of type {_type_name(obj)!r} at {path}"
        if depth >= max_depth:
            return f"containers nested deeper than {max_depth} levels at {path[:60]}..."
        if id(obj) in active:
            return f"a circular reference at {path}"
        active.add(id(obj))
        if t is dict:
            items = []
            for key, value in obj.items():
                sub = f"{path}[{_short(key)}]"
                items += [(key, f"{sub} (the key)"), (value, sub)]
        elif t is list or t is tuple:
            items = [(item, f"{path}[{i}]") for i, item in enumerate(obj)]
        else:
            items = [(item, f"{path}{{{_short(item)}}}") for item in obj]
        stack.append((id(obj), None, depth))
        stack.extend((item, sub, depth + 1) for item, sub in reversed(items))
    return None


def _encode_error(obj: Any, root: str, exc: BaseException, max_depth: int) -> SerializationError:
    problem = _find_problem(obj, root, max_depth)
    return SerializationError(f"cannot serialize {problem or f'{root}: {exc}'}")


_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)


class _Codec:
    """Shared error handling: subclasses implement ``_encode`` and ``_decode``."""

    name = ""
    max_depth = 0  # how deep containers may nest

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``; raise :class:`SerializationError` naming the value that cannot be."""
        try:
            return self._encode(obj)
        except _ENCODE_ERRORS as exc:
            raise _encode_error(obj, "value", exc, self.max_depth) from exc

    def loads(self, data: bytes) -> Any:
        """Decode ``data``; raise :class:`SerializationError` if it is malformed."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SerializationError(f"can only decode bytes, not {_type_name(data)}")
        try:
            return self._decode(bytes(data))
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"cannot decode {self.name} data: {exc}") from exc

    def _encode(self, obj: Any) -> bytes:
        raise NotImplementedError

    def _decode(self, data: bytes) -> Any:
        raise NotImplementedError


class MsgpackSerializer(_Codec):
    """The default serializer: msgpack, with extension types for the non-native types."""

    name = "msgpack"
    max_depth = _MSGPACK_MAX_DEPTH

    def _encode(self, obj: Any) -> bytes:
        data: bytes = msgpack.packb(
            obj, default=self._default, use_bin_type=True, strict_types=True
        )
        return data

    def _decode(self, data: bytes) -> Any:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            ext_hook=self._ext_hook,
            list_hook=self._list_hook,
        )

    def _default(self, obj: Any) -> Any:
        t = type(obj)
        codec = _TEXT_CODECS.get(t)
        if codec is not None:
            return msgpack.ExtType(_EXT_CODES[codec[0]], codec[1](obj).encode("ascii"))
        if t is timedelta:
            data = _TIMEDELTA.pack(obj.days, obj.seconds, obj.microseconds)
            return msgpack.ExtType(_EXT_CODES["timedelta"], data)
        if t is int:  # only reached for ints outside msgpack's 64-bit range
            data = obj.to_bytes(obj.bit_length() // 8 + 1, "big", signed=True)
            return msgpack.ExtType(_EXT_CODES["int"], data)
        if t is tuple or t is set or t is frozenset:  # packed in the same pass: no recursion
            return [_MARKS[t.__name__], *obj]
        raise TypeError(f"unsupported type {_type_name(obj)!r}")

    def _ext_hook(self, code: int, data: bytes) -> Any:
        tag = _EXT_TAGS.get(code, "")
        if tag in _FROM_TEXT:
            return _FROM_TEXT[tag](data.decode("ascii"))
        if tag == "timedelta":
            days, seconds, micros = _TIMEDELTA.unpack(data)
            return timedelta(days=days, seconds=seconds, microseconds=micros)
        if tag == "int":
            return int.from_bytes(data, "big", signed=True)
        if code in _MARKERS and not data:
            return _MARKERS[code]
        raise SerializationError(f"unknown msgpack extension type {code} ({len(data)} bytes)")

    def _list_hook(self, items: list[Any]) -> Any:
        # a decoded marker is the type object itself; no other value decodes to a type
        return items[0](items[1:]) if items and type(items[0]) is type else items


def _to_json(obj: Any, depth: int) -> Any:
    t = type(obj)
    if t is str or t is bool or obj is None:
        return obj
    if t is int:
        return obj if _INT_MIN <= obj <= _INT_MAX else {_TAG: "int", "v": hex(obj)}
    if t is float:
        return obj if math.isfinite(obj) else {_TAG: "float", "v": repr(obj)}
    if t is bytes or t is bytearray or t is memoryview:
        return {_TAG: "bytes", "v": base64.b64encode(obj).decode("ascii")}
    codec = _TEXT_CODECS.get(t)
    if codec is not None:
        return {_TAG: codec[0], "v": codec[1](obj)}
    if t is timedelta:
        return {_TAG: "timedelta", "v": [obj.days, obj.seconds, obj.microseconds]}
    if t not in _CONTAINERS:
        raise TypeError(f"unsupported type {_type_name(obj)!r}")
    if depth >= _JSON_MAX_DEPTH:
        raise ValueError(f"nested deeper than {_JSON_MAX_DEPTH} levels")
    depth += 1
    if t is list:
        return [_to_json(item, depth) for item in obj]
    if t is dict:
        if _TAG not in obj and all(type(key) is str for key in obj):
            return {key: _to_json(value, depth) for key, value in obj.items()}
        pairs = [[_to_json(k, depth), _to_json(v, depth)] for k, v in obj.items()]
        return {_TAG: "dict", "v": pairs}
    return {_TAG: t.__name__, "v": [_to_json(item, depth) for item in obj]}  # tuple/set/frozenset


_JSON_DECODERS: dict[str, Callable[[Any], Any]] = {
    **_FROM_TEXT,
    **_COLLECTIONS,
    "int": lambda v: int(v, 16),
    "float": {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.__getitem__,
    "bytes": lambda v: base64.b64decode(v, validate=True),
    "timedelta": lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "dict": lambda v: {key: value for key, value in v},
}


def _from_json_object(obj: dict[str, Any]) -> Any:
    if _TAG not in obj:
        return obj
    decoder = _JSON_DECODERS.get(obj[_TAG]) if type(obj[_TAG]) is str else None
    if decoder is None or len(obj) != 2 or "v" not in obj:
        raise SerializationError(f"malformed or unknown tagged JSON object {_short(obj)}")
    return decoder(obj["v"])


class JsonSerializer(_Codec):
    """JSON (UTF-8, strict: no NaN literals) with ``{"__tp__": tag, "v": ...}`` tagged objects."""

    name = "json"
    max_depth = _JSON_MAX_DEPTH

    def _encode(self, obj: Any) -> bytes:
        text = json.dumps(
            _to_json(obj, 0), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
        return text.encode("utf-8")

    def _decode(self, data: bytes) -> Any:
        return json.loads(data.decode("utf-8"), object_hook=_from_json_object)


_MSGPACK = MsgpackSerializer()
_SERIALIZERS: dict[str, Serializer] = {"msgpack": _MSGPACK, "json": JsonSerializer()}
_NAMES_BY_ID = {sid: name for name, sid in SERIALIZER_IDS.items()}


def get_serializer(name: str) -> Serializer:
    """Return the serializer called ``name`` (``'msgpack'`` or ``'json'``, any case).

    Raises :class:`~taskpipe.errors.ConfigError` for any other name.
    """
    found = _SERIALIZERS.get(name.strip().lower()) if isinstance(name, str) else None
    if found is None:
        raise ConfigError(f"unknown serializer {name!r}; expected 'msgpack' or 'json'")
    return found


def _resolve(serializer: Serializer | str) -> tuple[Serializer, int]:
    ser = get_serializer(serializer) if isinstance(serializer, str) else serializer
    sid = SERIALIZER_IDS.get(getattr(ser, "name", None))  # type: ignore[arg-type]
    if sid is None:
        raise ConfigError(f"serializer {ser!r} has no envelope id; use 'msgpack' or 'json'")
    return ser, sid


def _frame(magic: bytes, sid: int, body: bytes, max_size: int | None, what: str) -> bytes:
    if max_size is not None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
            raise ConfigError(f"max_size must be an int >= 0 or None, got {max_size!r}")
        size = 4 + len(body)
        if size > max_size:
            raise PayloadTooLarge(f"{what} is {size} bytes, over the limit of {max_size} bytes")
    return magic + bytes((FORMAT_VERSION, sid)) + body


def _open(
    data: bytes | bytearray | memoryview, magic: bytes, kind: str
) -> tuple[str, dict[Any, Any]]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"a {kind} must be bytes, got {_type_name(data)}")
    data = bytes(data)
    if data[:2] != magic:
        other = (b"TR", "result record") if magic == ENVELOPE_MAGIC else (b"TP", "job envelope")
        if data[:2] == other[0]:
            raise SerializationError(f"expected a {kind} but got a taskpipe {other[1]}")
        raise SerializationError(
            f"not a taskpipe {kind}: missing magic prefix {magic!r} (data starts {data[:8]!r});"
            " was it written by a legacy or non-taskpipe producer?"
        )
    if len(data) < 4:
        raise SerializationError(f"truncated {kind}: {len(data)} bytes, the header alone is 4")
    if data[2] != FORMAT_VERSION:
        raise SerializationError(
            f"unsupported {kind} version {data[2]} (this taskpipe reads version {FORMAT_VERSION})"
        )
    name = _NAMES_BY_ID.get(data[3])
    if name is None:
        raise SerializationError(f"{kind} has unknown serializer id {data[3]}")
    try:
        body = _SERIALIZERS[name].loads(data[4:])
    except SerializationError as exc:
        raise SerializationError(f"undecodable {kind} body ({name}): {exc}") from exc
    if type(body) is not dict:
        raise SerializationError(f"malformed {kind}: body is {_type_name(body)}, expected a map")
    return name, body


def _str_keyed(value: Any) -> bool:
    return type(value) is dict and (not value or all(type(key) is str for key in value))


def _nul_in_name(task: Any) -> str:
    """A task name with a NUL cannot be published: the per-task counters are kept as
    ``<task>\0<outcome>`` (``feed.labelstats``). Decoding does not check it (a job put by
    another client still runs)."""
    return "task name must not contain NUL" if type(task) is str and "\0" in task else ""


def _job_problems(task: Any, args: Any, kwargs: Any, options: Any) -> str:
    if (
        type(task) is str
        and task
        and (type(args) is list or type(args) is tuple)
        and _str_keyed(kwargs)
        and _str_keyed(options)
    ):
        return ""  # the common case, checked without building anything
    problems = []
    if type(task) is not str or not task:
        problems.append(f"task name must be a non-empty str, got {_short(task)}")
    if type(args) is not list and type(args) is not tuple:
        problems.append(f"args must be a list/tuple, got {_type_name(args)}")
    for label, value in (("kwargs", kwargs), ("options", options)):
        if not _str_keyed(value):
            problems.append(f"{label} must be a dict with str keys, got {_short(value)}")
    return "; ".join(problems)


@dataclass(frozen=True)
class Envelope:
    """A decoded job: format ``version``, ``task`` name, ``args``, ``kwargs``, ``options``
    and the name of the ``serializer`` its body was written with."""

    version: int
    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    serializer: str


def encode_envelope(
    task: str,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    *,
    serializer: Serializer | str = "msgpack",
    max_size: int | None = DEFAULT_MAX_PAYLOAD,
) -> bytes:
    """Encode a job as ``b"TP" + version + serializer id + body`` (see ``docs/serialization.md``).

    Raises :class:`SerializationError` if the task name, arguments or options cannot be encoded
    (naming the value, e.g. ``args[1]['when']``), and :class:`PayloadTooLarge` if the result
    is larger than ``max_size`` bytes (``None``: no limit).
    """
    ser, sid = _resolve(serializer)
    problems = _job_problems(task, args, kwargs, options) or _nul_in_name(task)
    if problems:
        raise SerializationError(f"invalid job for task {_short(task)}: {problems}")
    try:
        body = ser.dumps({"t": task, "a": list(args), "k": kwargs, "o": options})
    except _ENCODE_ERRORS as exc:
        depth = getattr(ser, "max_depth", _JSON_MAX_DEPTH)
        for root, part in (("args", args), ("kwargs", kwargs), ("options", options)):
            problem = _find_problem(part, root, depth)
            if problem is not None:
                raise SerializationError(f"task {task!r}: cannot serialize {problem}") from exc
        raise SerializationError(f"task {task!r}: {exc}") from exc
    return _frame(ENVELOPE_MAGIC, sid, body, max_size, f"job payload for task {task!r}")


def args_encoder(
    task: str,
    *,
    serializer: Serializer | str = "msgpack",
    max_size: int | None = DEFAULT_MAX_PAYLOAD,
) -> Callable[[tuple[Any, ...]], bytes]:
    """A function ``encode(args)`` that gives exactly ``encode_envelope(task, args, {}, {})``.

    For publishing many calls of one task with positional arguments only (``Task.map``): with
    msgpack the parts that do not change (the task name, empty kwargs and options) are encoded
    once and only the arguments per call; other serializers use ``encode_envelope`` each time.
    Raises what ``encode_envelope`` raises.
    """
    ser, sid = _resolve(serializer)
    if (
        not isinstance(ser, MsgpackSerializer)
        or _job_problems(task, (), {}, {})
        or _nul_in_name(task)
    ):
        return lambda args: encode_envelope(task, args, {}, {}, serializer=ser, max_size=max_size)
    _frame(ENVELOPE_MAGIC, sid, b"", max_size, "")  # checks max_size once
    # a 4-entry map in insertion order: "t" task, "a" args, "k" {}, "o" {} = head + args + tail
    whole = ser.dumps({"t": task, "a": [], "k": {}, "o": {}})
    tail = ser.dumps("k") + ser.dumps({}) + ser.dumps("o") + ser.dumps({})
    cut = len(whole) - len(tail) - len(ser.dumps([]))
    head = ENVELOPE_MAGIC + bytes((FORMAT_VERSION, sid)) + whole[:cut]
    limit = None if max_size is None else max_size - len(head) - len(tail)
    packb, default = msgpack.packb, ser._default

    def encode(args: tuple[Any, ...]) -> bytes:
        try:
            body: bytes = packb(list(args), default=default, use_bin_type=True, strict_types=True)
        except _ENCODE_ERRORS:
            return encode_envelope(task, args, {}, {}, serializer=ser, max_size=max_size)
        if limit is not None and len(body) > limit:
            return encode_envelope(task, args, {}, {}, serializer=ser, max_size=max_size)
        return head + body + tail

    return encode


def decode_envelope(data: bytes | bytearray | memoryview) -> Envelope:
    """Decode bytes written by :func:`encode_envelope`.

    Raises :class:`SerializationError` saying why: missing magic (e.g. raw bytes from a legacy
    producer), unknown version or serializer id, undecodable body, or wrong field types.
    """
    if type(data) is bytes and data[:4] == _MSGPACK_ENVELOPE_HEAD:
        # the common case (a msgpack envelope of this version, well formed) checked inline;
        # anything else takes the path below, which names what is wrong
        try:
            body = _MSGPACK._decode(data[4:])
            task, args, kwargs, options = body["t"], body["a"], body["k"], body["o"]
        except Exception:  # noqa: BLE001 - reported by the checked path below
            pass
        else:
            if (
                type(task) is str
                and task
                and (type(args) is list or type(args) is tuple)
                and (kwargs == {} or _str_keyed(kwargs))
                and (options == {} or _str_keyed(options))
            ):
                return Envelope(FORMAT_VERSION, task, tuple(args), kwargs, options, "msgpack")
    name, body = _open(data, ENVELOPE_MAGIC, "job envelope")
    missing = [key for key in ("t", "a", "k", "o") if key not in body]
    if missing:
        raise SerializationError(f"malformed job envelope: missing field(s) {missing}")
    task, args, kwargs, options = body["t"], body["a"], body["k"], body["o"]
    problems = _job_problems(task, args, kwargs, options)
    if problems:
        raise SerializationError(f"malformed job envelope: {problems}")
    return Envelope(FORMAT_VERSION, task, tuple(args), kwargs, options, name)


@dataclass(frozen=True)
class ResultRecord:
    """A decoded outcome: ``ok`` with its ``value``, or a failure's ``exc_type``,
    ``exc_message`` and ``traceback`` (all ``None`` for a success)."""

    ok: bool
    value: Any = None
    exc_type: str | None = None
    exc_message: str | None = None
    traceback: str | None = None


def encode_result(
    value: Any,
    *,
    serializer: Serializer | str = "msgpack",
    max_size: int | None = DEFAULT_MAX_PAYLOAD,
) -> bytes:
    """Encode a task's return value as a result record (``b"TR"`` header).

    Raises :class:`SerializationError` if ``value`` cannot be encoded and
    :class:`PayloadTooLarge` if the record is larger than ``max_size`` bytes.
    """
    ser, sid = _resolve(serializer)
    try:
        body = ser.dumps({"ok": True, "v": value})
    except _ENCODE_ERRORS as exc:
        depth = getattr(ser, "max_depth", _JSON_MAX_DEPTH)
        raise _encode_error(value, "result", exc, depth) from exc
    return _frame(RESULT_MAGIC, sid, body, max_size, "task result")


def _clean_text(text: object, limit: int, keep_tail: bool) -> str:
    value = text if isinstance(text, str) else str(text)
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(value) <= limit:
        return value
    cut = f"[... {len(value) - limit} chars truncated ...]"
    return cut + "\n" + value[-limit:] if keep_tail else value[:limit] + "\n" + cut


def encode_failure(
    exc_type: str, message: str, traceback: str, *, serializer: Serializer | str = "msgpack"
) -> bytes:
    """Encode a task failure as a result record. Never fails for size or content.

    Lone surrogates are backslash-escaped; the message keeps its first and the traceback its
    last 32 KiB characters, so a failure record always fits in :data:`DEFAULT_MAX_PAYLOAD`.
    """
    ser, sid = _resolve(serializer)
    body = ser.dumps(
        {
            "ok": False,
            "e": _clean_text(exc_type, 1024, keep_tail=False),
            "m": _clean_text(message, _FAILURE_TEXT_LIMIT, keep_tail=False),
            "tb": _clean_text(traceback, _FAILURE_TEXT_LIMIT, keep_tail=True),
        }
    )
    return _frame(RESULT_MAGIC, sid, body, None, "task failure")


def decode_result(data: bytes) -> ResultRecord:
    """Decode bytes written by :func:`encode_result` or :func:`encode_failure`.

    Raises :class:`SerializationError` for a missing magic, unknown version or serializer id,
    an undecodable body, or wrong field types.
    """
    _, body = _open(data, RESULT_MAGIC, "result record")
    ok = body.get("ok")
    if type(ok) is not bool:
        raise SerializationError(f"malformed result record: 'ok' must be a bool, got {_short(ok)}")
    if ok:
        if "v" not in body:
            raise SerializationError("malformed result record: success without a value")
        return ResultRecord(True, body["v"])
    fields = [body.get(key) for key in ("e", "m", "tb")]
    if not all(type(field) is str for field in fields):
        raise SerializationError("malformed result record: a failure needs str 'e', 'm', 'tb'")
    return ResultRecord(False, None, fields[0], fields[1], fields[2])
