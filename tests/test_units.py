from __future__ import annotations

import pytest

from kmigratedd.units import UnitError, in_unit, parse_bytes, parse_duration


@pytest.mark.parametrize("text,expected", [
    (4096, 4096), ("4096B", 4096), ("200MiB", 200 << 20), ("1.5 GiB", 3 << 29),
    ("2KiB", 2048), ("1TiB", 1 << 40), ("10MB", 10_000_000), ("1kB", 1000), ("3GB", 3 * 10**9),
])
def test_sizes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["200", "200 mb", "1.5B", "-1MiB", "MiB", "", True, 1.5, None])
def test_bad_sizes(text):
    with pytest.raises(UnitError):
        parse_bytes(text)


@pytest.mark.parametrize("text,seconds", [
    ("100ms", 0.1), ("2s", 2.0), ("1.5m", 90.0), ("1h", 3600.0), ("250us", 250e-6),
    ("10 ms", 0.01), ("5ns", 5e-9),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["100", "1 day", "ms", "-1s", 5, None])
def test_bad_durations(text):
    with pytest.raises(UnitError):
        parse_duration(text)


@pytest.mark.parametrize("value,unit,expected", [
    (100, "ms", 100.0), ("2s", "ms", 2000.0), ("100ms", "s", 0.1), ("1MiB", "bytes", 1 << 20),
    (256, "mb_per_s", 256.0), ("1GB/s", "mb_per_s", 1000.0), ("100MiB/s", "mb_per_s", 104.8576),
])
def test_in_unit(value, unit, expected):
    assert in_unit(value, unit) == pytest.approx(expected)


@pytest.mark.parametrize("value,unit", [(True, "ms"), ([1], "ms"), ("10MiB", "ms"),
                                        ("1s", "bytes"), ("fast", "mb_per_s")])
def test_in_unit_refuses(value, unit):
    with pytest.raises(UnitError):
        in_unit(value, unit)
