"""What the router and the node workers share: an asyncio loop of rounds that sleeps until
it is woken (new work, resume, reload, stop) or a timeout passes."""

from __future__ import annotations

import asyncio

# With nothing to do, a stage sleeps until it is woken, waking this often only to stamp
# its heartbeat (the systemd watchdog checks it).
IDLE_WAKE_S = 1.0


class LoopStage:
    def __init__(self) -> None:
        self._wake: asyncio.Event | None = None
        self._stopping = False

    def _event(self) -> asyncio.Event:
        """The event that wakes the loop (made on the loop, at the start of ``run``)."""
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def wake(self) -> None:
        """Look again now (on the event loop)."""
        if self._wake is not None:
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self.wake()

    async def _sleep(self, timeout: float = IDLE_WAKE_S) -> None:
        """Until woken, or ``timeout`` seconds."""
        wake = self._event()
        try:
            await asyncio.wait_for(wake.wait(), timeout)
        except TimeoutError:
            pass
