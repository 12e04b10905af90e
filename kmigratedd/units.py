"""Human units, parsed in one place: sizes ("200MiB") and durations ("100ms").

Config keys carry their unit in their name (``interval_ms``, ``headroom_bytes``,
``rate_limit_mb_per_s``); a bare number is in that unit, and a string with an
explicit unit is converted to it.
"""

from __future__ import annotations

import math
import re
from typing import Final

from .errors import brief

_SIZE_UNITS: Final = {
    "B": 1,
    "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
    "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
}
_DURATION_UNITS: Final = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_NUMBER_UNIT: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-zµ]+)\s*")


class UnitError(ValueError):
    """A value with a missing or unknown unit; the message says what is accepted."""


def parse_bytes(value: object) -> int:
    """Bytes from an int or a string such as ``"200MiB"``, ``"1.5 GiB"``, ``"4096B"``."""
    if isinstance(value, bool):
        raise UnitError(f"expected a size, got {brief(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _NUMBER_UNIT.fullmatch(value)
        if m and m.group(2) in _SIZE_UNITS:
            number = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
            if not math.isfinite(number):  # float("9" * 400) is inf
                raise UnitError(f"size {brief(value)} is too large")
            if number != math.floor(number):
                raise UnitError(f"size {brief(value)} is not a whole number of bytes")
            return int(number)
    raise UnitError(f"bad size {brief(value)}: use a number of bytes or a number with one of "
                    f"{', '.join(_SIZE_UNITS)} (e.g. '200MiB')")


def parse_duration(value: object) -> float:
    """Seconds from a string such as ``"100ms"``, ``"2s"``, ``"1.5m"``."""
    if isinstance(value, str):
        m = _NUMBER_UNIT.fullmatch(value)
        if m and m.group(2) in _DURATION_UNITS:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise UnitError(f"bad duration {brief(value)}: use a number with one of "
                    f"{', '.join(_DURATION_UNITS)} (e.g. '100ms')")


def in_unit(value: object, unit: str) -> float:
    """A config value in ``unit`` (``ms``, ``s``, ``bytes``, ``mb_per_s``...).

    A bare number is already in that unit (an int stays an int: exact, however large);
    a string must carry its own unit.  The result may be inf or nan: the caller checks
    the range.
    """
    if isinstance(value, bool):
        raise UnitError(f"expected a number in {unit}, got {brief(value)}")
    if isinstance(value, int | float):
        return value
    if not isinstance(value, str):
        raise UnitError(f"expected a number in {unit}, got {brief(value)}")
    if unit in ("ms", "s", "us"):
        scale = {"ms": 1e3, "s": 1.0, "us": 1e6}[unit]
        return parse_duration(value) * scale
    if unit == "bytes":
        return parse_bytes(value)
    if unit == "mb_per_s" and isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(MB/s|MiB/s|GB/s|GiB/s)\s*", value)
        if m:
            factor = {"MB/s": 1.0, "MiB/s": 1.048576, "GB/s": 1000.0, "GiB/s": 1073.741824}
            return float(m.group(1)) * factor[m.group(2)]
        raise UnitError(f"bad rate {brief(value)}: use a number in MB/s or e.g. '200MB/s', "
                        "'1GiB/s'")
    raise UnitError(f"expected a number in {unit}, got {brief(value)}")
