"""JSON objects read strictly: a duplicate key is an error (``json.loads`` keeps the last
one silently, so ``{"method": "pause", "method": "status"}`` would read as status)."""

from __future__ import annotations

import json
from typing import Any

from .errors import brief


class DuplicateKey(ValueError):
    pass


def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(f"duplicate key {brief(key, 40)}")
        out[key] = value
    return out


def loads(data: str | bytes) -> Any:
    """``json.loads`` that raises :class:`DuplicateKey` (a ValueError) for a duplicate key."""
    return json.loads(data, object_pairs_hook=object_pairs)
