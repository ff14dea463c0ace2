"""Tests for taskpipe.durations: the one duration grammar (pure, no Redis)."""

from __future__ import annotations

import math
import random
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from taskpipe.durations import (
    eta_to_delay,
    format_duration,
    parse_duration,
    parse_optional_duration,
    to_ms,
)
from taskpipe.errors import ConfigError, DurationError

# ---------------------------------------------------------------- parse_duration: accepted


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (5, 5.0),
        (1.5, 1.5),
        (0.0, 0.0),
        (0.001, 0.001),
        (86400 * 365, 31536000.0),
        (10**12, 1e12),
    ],
)
def test_numbers_are_seconds(value: float, expected: float) -> None:
    result = parse_duration(value)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(0), 0.0),
        (timedelta(seconds=30), 30.0),
        (timedelta(minutes=1.5), 90.0),
        (timedelta(milliseconds=10), 0.01),
        (timedelta(days=2, hours=3), 183600.0),
        (timedelta(weeks=1), 604800.0),
    ],
)
def test_timedeltas(value: timedelta, expected: float) -> None:
    assert parse_duration(value) == pytest.approx(expected)
    assert type(parse_duration(value)) is float


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # every unit
        ("10ms", 0.01),
        ("30s", 30.0),
        ("45m", 2700.0),
        ("2h", 7200.0),
        ("6d", 518400.0),
        ("1w", 604800.0),
        # plain numeric strings are seconds
        ("15", 15.0),
        ("1.5", 1.5),
        ("0", 0.0),
        (".5", 0.5),
        ("1.", 1.0),
        ("007", 7.0),
        # decimals with units
        ("1.5h", 5400.0),
        ("0.5s", 0.5),
        ("2.5ms", 0.0025),
        # zero with a unit
        ("0s", 0.0),
        ("0ms", 0.0),
        # compounds
        ("1h30m", 5400.0),
        ("1d12h", 129600.0),
        ("1m30s", 90.0),
        ("1s500ms", 1.5),
        ("1w2d3h4m5s6ms", 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5 + 0.006),
        ("2h0m", 7200.0),
        # whitespace tolerance
        (" 30s ", 30.0),
        ("30 s", 30.0),
        ("1h 30m", 5400.0),
        (" 1 h 30 m ", 5400.0),
        ("\t1m\n", 60.0),
        ("  15  ", 15.0),
        # case-insensitive units
        ("30S", 30.0),
        ("2H", 7200.0),
        ("10MS", 0.01),
        ("10Ms", 0.01),
        ("45M", 2700.0),
        ("6D", 518400.0),
        ("1W", 604800.0),
        ("1H30M", 5400.0),
    ],
)
def test_strings(text: str, expected: float) -> None:
    result = parse_duration(text)
    assert result == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert type(result) is float


def test_m_is_minutes_and_ms_is_milliseconds() -> None:
    assert parse_duration("1m") == 60.0
    assert parse_duration("1ms") == 0.001
    assert parse_duration("1m1ms") == pytest.approx(60.001)


# ---------------------------------------------------------------- parse_duration: rejected


@pytest.mark.parametrize(
    "value",
    [
        "10x",
        "",
        "   ",
        "-5s",
        "-5",
        " -1h",
        "+5s",
        "abc",
        "s",
        "ms",
        "h30m",
        "1h30",  # trailing number without unit
        "30m1h",  # units out of order
        "1m1m",  # repeated unit
        "1s1m",
        "500ms1s",
        "1e3",
        "1e3s",
        "nan",
        "inf",
        "NaN s",
        "1,5s",
        "1_000",
        "5 sec",
        "5 seconds",
        "2 hours",
        "1h-30m",
        "1h,30m",
        "1..5s",
        "1.5.2s",
        "１０s",  # full-width digits
        "١٥",  # Arabic-Indic digits
        "1y",
        "1mo",
        "9" * 400 + "w",  # overflows to inf
    ],
)
def test_rejected_strings(value: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(value)
    assert repr(value)[:60] in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -0.001,
        float("nan"),
        float("inf"),
        float("-inf"),
        True,
        False,
        None,
        [],
        {},
        (5,),
        b"10s",
        Decimal("1"),
        timedelta(seconds=-1),
        timedelta(microseconds=-1),
        10**400,
        -(10**400),
        object(),
        datetime(2024, 1, 1),
    ],
)
def test_rejected_values(value: object) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(value)
    assert repr(value) in str(info.value)


def test_duration_error_is_a_value_error_and_config_error() -> None:
    with pytest.raises(ValueError):
        parse_duration("nope")
    with pytest.raises(ConfigError):
        parse_duration("nope")


def test_error_messages_explain() -> None:
    with pytest.raises(DurationError, match="negative"):
        parse_duration(-3)
    with pytest.raises(DurationError, match="negative"):
        parse_duration("-3s")
    with pytest.raises(DurationError, match="largest to smallest"):
        parse_duration("30m1h")
    with pytest.raises(DurationError, match="NaN"):
        parse_duration(float("nan"))
    with pytest.raises(DurationError, match="finite"):
        parse_duration(float("inf"))
    with pytest.raises(DurationError, match="bool"):
        parse_duration(True)
    with pytest.raises(DurationError, match="required"):
        parse_duration(None)
    with pytest.raises(DurationError, match="empty"):
        parse_duration("")
    with pytest.raises(DurationError, match="'10ms'"):
        parse_duration("10x")  # the hint shows the accepted forms


# ---------------------------------------------------------------- parse_optional_duration


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, 0.0), ("0s", 0.0), ("5s", 5.0), (2.5, 2.5), (timedelta(hours=1), 3600.0)],
)
def test_parse_optional_duration(value: object, expected: float | None) -> None:
    assert parse_optional_duration(value) == expected


@pytest.mark.parametrize("value", ["", "x", -1, True, float("nan")])
def test_parse_optional_duration_still_rejects(value: object) -> None:
    with pytest.raises(DurationError):
        parse_optional_duration(value)


# ---------------------------------------------------------------- to_ms


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1, 1000),
        (2.5, 2500),
        ("1.5s", 1500),
        ("10ms", 10),
        ("1h30m", 5_400_000),
        (timedelta(minutes=1), 60_000),
        (timedelta(microseconds=1500), 2),
        (0.0004, 0),  # rounds down below half a millisecond
        (0.0005, 1),  # half rounds up
        (0.0015, 2),
        (0.0025, 3),  # half up, not banker's rounding
        ("2.5ms", 3),
        (0.1 + 0.2, 300),
    ],
)
def test_to_ms(value: object, expected: int) -> None:
    result = to_ms(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize("value", ["10x", -1, None, True, float("inf"), 1e308])
def test_to_ms_rejects(value: object) -> None:
    with pytest.raises(DurationError):
        to_ms(value)


# ---------------------------------------------------------------- format_duration


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (90, "1m30s"),
        (0.01, "10ms"),
        (0, "0s"),
        (0.0, "0s"),
        (0.0004, "0s"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (86400, "1d"),
        (604800, "1w"),
        (691200, "1w1d"),
        (93784.5, "1d2h3m4s500ms"),
        (1.5, "1s500ms"),
        (59.9996, "1m"),  # rounds to the millisecond first
        (3601, "1h1s"),
        (3 * 604800 + 1, "3w1s"),
        ("1h30m", "1h30m"),
        ("90m", "1h30m"),
        (timedelta(hours=2), "2h"),
        (timedelta(milliseconds=1), "1ms"),
    ],
)
def test_format_duration(value: object, expected: str) -> None:
    assert format_duration(value) == expected


@pytest.mark.parametrize("value", [-1, "x", None, float("nan"), True])
def test_format_duration_rejects(value: object) -> None:
    with pytest.raises(DurationError):
        format_duration(value)


def test_format_then_parse_round_trips_at_ms_resolution() -> None:
    rng = random.Random(20240601)
    samples = [0, 1, 999, 1000, 59_999, 60_000, 3_600_000, 86_400_000, 604_800_000]
    samples += [rng.randrange(0, 10**12) for _ in range(2000)]
    samples += [rng.randrange(0, 10**4) for _ in range(500)]
    for ms in samples:
        text = format_duration(ms / 1000)
        assert to_ms(text) == ms, (ms, text)
        assert format_duration(text) == text
        # the output is always a compound in canonical order, lower case, no spaces
        assert text == text.strip().lower()
        assert " " not in text


def test_random_compounds_parse_to_their_sum() -> None:
    rng = random.Random(7)
    units = [("w", 604800.0), ("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001)]
    for _ in range(3000):
        chosen = [u for u in units if rng.random() < 0.5] or [rng.choice(units)]
        parts = []
        expected = 0.0
        for unit, factor in chosen:  # keeps descending order
            if rng.random() < 0.3:
                number = f"{rng.randrange(0, 1000)}.{rng.randrange(0, 100):02d}"
            else:
                number = str(rng.randrange(0, 1000))
            expected += float(number) * factor
            unit_text = unit.upper() if rng.random() < 0.3 else unit
            sep = rng.choice(["", " ", "  ", "\t"])
            parts.append(f"{number}{sep}{unit_text}")
        text = rng.choice(["", " "]).join(parts)
        text = rng.choice(["", " ", "\n"]) + text + rng.choice(["", " "])
        assert parse_duration(text) == pytest.approx(expected, rel=1e-12, abs=1e-9), text


def test_random_numbers_and_their_strings_agree() -> None:
    rng = random.Random(99)
    for _ in range(2000):
        value = rng.uniform(0, 1e7)
        text = f"{value:.6f}"
        assert parse_duration(value) == value
        assert parse_duration(text) == float(text)
        assert parse_duration(text + "s") == float(text)
        assert parse_duration(text + "ms") == pytest.approx(float(text) / 1000)
        assert parse_duration(timedelta(seconds=value)) == pytest.approx(value, abs=1e-6)
        with pytest.raises(DurationError):
            parse_duration(-value - 0.5)
        with pytest.raises(DurationError):
            parse_duration("-" + text)


# ---------------------------------------------------------------- eta_to_delay

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("eta", "expected"),
    [
        (NOW + 30, 30.0),
        (NOW, 0.0),
        (NOW - 30, 0.0),  # the past means "now"
        (int(NOW) + 5, 5.0),
        (0, 0.0),
        (datetime(2023, 11, 14, 22, 13, 50, tzinfo=timezone.utc), 30.0),
        (datetime(2023, 11, 14, 22, 13, 50), 30.0),  # naive = UTC
        (datetime(2023, 11, 14, 22, 13, 20, 500000), 0.5),
        (datetime(2023, 11, 15, 0, 13, 50, tzinfo=timezone(timedelta(hours=2))), 30.0),
        (datetime(2023, 11, 14, 17, 13, 50, tzinfo=timezone(timedelta(hours=-5))), 30.0),
        (datetime(2023, 11, 14, 22, 14, 20, tzinfo=timezone.utc), 60.0),
        (datetime(2020, 1, 1), 0.0),
        (datetime(2020, 1, 1, tzinfo=timezone.utc), 0.0),
    ],
)
def test_eta_to_delay(eta: datetime | float, expected: float) -> None:
    result = eta_to_delay(eta, NOW)
    assert result == pytest.approx(expected, abs=1e-6)
    assert type(result) is float
    assert result >= 0.0


def test_eta_to_delay_naive_is_not_local_time() -> None:
    aware = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.utc)
    naive = datetime(2030, 6, 1, 12, 0)
    assert eta_to_delay(naive, NOW) == eta_to_delay(aware, NOW)
    assert eta_to_delay(naive, NOW) == pytest.approx(aware.timestamp() - NOW)


def test_eta_to_delay_now_is_an_input() -> None:
    eta = datetime(2023, 11, 14, 22, 13, 50, tzinfo=timezone.utc)
    assert eta_to_delay(eta, NOW) == pytest.approx(30.0)
    assert eta_to_delay(eta, NOW + 10) == pytest.approx(20.0)
    assert eta_to_delay(eta, NOW + 100) == 0.0
    assert eta_to_delay(eta, int(NOW)) == pytest.approx(30.0)


def test_eta_to_delay_property_loop() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        now = rng.uniform(0, 4e9)
        offset = rng.uniform(-1e6, 1e6)
        hours = rng.randrange(-12, 15)
        aware = datetime.fromtimestamp(now + offset, tz=timezone(timedelta(hours=hours)))
        naive = datetime.fromtimestamp(now + offset, tz=timezone.utc).replace(tzinfo=None)
        expected = max(0.0, offset)
        assert eta_to_delay(now + offset, now) == pytest.approx(expected, abs=1e-5)
        assert eta_to_delay(aware, now) == pytest.approx(expected, abs=1e-5)
        assert eta_to_delay(naive, now) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "eta",
    [
        "2024-01-01",
        "30s",
        None,
        True,
        float("nan"),
        float("inf"),
        [],
        timedelta(seconds=5),
        10**400,
        date(2030, 1, 1),
    ],
)
def test_eta_to_delay_rejects_bad_eta(eta: object) -> None:
    with pytest.raises(DurationError) as info:
        eta_to_delay(eta, NOW)  # type: ignore[arg-type]
    assert "eta" in str(info.value)
    assert repr(eta)[:50] in str(info.value)


@pytest.mark.parametrize(
    "now", [None, True, float("nan"), float("inf"), "now", datetime(2024, 1, 1)]
)
def test_eta_to_delay_rejects_bad_now(now: object) -> None:
    with pytest.raises(DurationError) as info:
        eta_to_delay(NOW, now)  # type: ignore[arg-type]
    assert "now" in str(info.value)


def test_math_sanity_of_constants() -> None:
    assert math.isclose(parse_duration("1w"), 7 * parse_duration("1d"))
    assert math.isclose(parse_duration("1d"), 24 * parse_duration("1h"))
    assert math.isclose(parse_duration("1h"), 60 * parse_duration("1m"))
    assert math.isclose(parse_duration("1m"), 60 * parse_duration("1s"))
    assert math.isclose(parse_duration("1s"), 1000 * parse_duration("1ms"))
