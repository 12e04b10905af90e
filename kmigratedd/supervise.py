"""Periodic tasks that do not die of an exception: :func:`supervised` logs it once with
its cause, counts it, and runs the task again after a back-off that doubles up to
:data:`MAX_BACKOFF_S` (and starts over once the task has run that long).  The watchdog
(kmigratedd/daemon.py) stops petting systemd while a task keeps failing
(:data:`FAILING_STREAK` failures in a row), so that systemd restarts the daemon."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("kmigratedd")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
FAILING_STREAK = 3


class Failures:
    """Failures by task: the total (a counter) and the current streak."""

    def __init__(self) -> None:
        self.total: dict[str, int] = {}
        self.streak: dict[str, int] = {}

    def failing(self) -> list[str]:
        return sorted(t for t, n in self.streak.items() if n >= FAILING_STREAK)


async def supervised(body: Callable[[], Awaitable[None]], name: str, failures: Failures,
                     *, first_backoff_s: float = FIRST_BACKOFF_S,
                     max_backoff_s: float = MAX_BACKOFF_S) -> None:
    """Run ``body()`` until it returns; an exception is logged (once per kind of
    failure), counted in ``failures`` and retried after the back-off."""
    backoff = first_backoff_s
    seen: set[tuple[type, str]] = set()
    while True:
        started = time.monotonic()
        try:
            await body()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.total[name] = failures.total.get(name, 0) + 1
            if time.monotonic() - started >= max_backoff_s:
                backoff = first_backoff_s
                failures.streak[name] = 0
            failures.streak[name] = failures.streak.get(name, 0) + 1
            kind = (type(exc), str(exc)[:200])
            if kind not in seen and len(seen) < 16:
                seen.add(kind)
                log.error("%s failed: %s: %s; retrying every %.0f s at most, counted in "
                          "kmigratedd_task_failures_total", name, type(exc).__name__, exc,
                          max_backoff_s)
                log.debug("%s failed", name, exc_info=exc)
            await asyncio.sleep(backoff)
            backoff = min(max_backoff_s, backoff * 2)
