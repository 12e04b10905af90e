"""The bounds every config section declares its keys with."""

from __future__ import annotations

from typing import Any

# MAX_NUMNODES is 1 << CONFIG_NODES_SHIFT, and NODES_SHIFT is at most 10 (x86, arm64).
MAX_NODE_ID = (1 << 10) - 1
# PID_MAX_LIMIT on 64-bit kernels (include/linux/threads.h).
MAX_PID = 4 * 1024 * 1024
# sizeof(sun_path) is 108 (unix(7)), NUL included.
MAX_SOCKET_PATH_BYTES = 107


def spec(unit: str | None = None, lo: float | None = None, hi: float | None = None
         ) -> dict[str, Any]:
    """A key's metadata: its unit (kmigratedd/units.py) and bounds."""
    return {"unit": unit, "lo": lo, "hi": hi}
