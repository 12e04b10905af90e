"""Memory pressure, the kernel's pressure-stall information (PSI), as a signal to hold back.

Moving pages costs the applications something even when it goes well: kswapd reclaims,
pages are unmapped while they move, CPUs copy.  When tasks already stall on memory, a
mover that makes room should wait; the kernel's own tiering does not look at this.

The sources, read every :data:`POLL_S`:

- the system, /proc/pressure/memory, its ``full`` line: the share of time every
  non-idle task was stalled on memory.  Its ``some`` line counts kswapd's own reclaim
  (``balance_pgdat`` is a memory stall), which a full fast tier's exchange wakes on
  purpose, so it is exported but not held on;
- each cgroup of ``scope.cgroups``, its ``memory.pressure``, ``some`` line: the share of
  time at least one task of the workload stalled (kswapd and kmigratedd are not in it).

While any source's share over the last poll reaches ``workers.pressure_hold_percent``,
:class:`~kmigratedd.policy.PressureGuard` holds promotion and demotion; they go on once
every source is below half of it.  PSI is per system and per cgroup, not per node: the
hold applies to every fast node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from .kernelfs import KernelFs
from .policy import PressureGuard
from .procfs import pressure_totals

SYSTEM = "/proc/pressure/memory"
# cgroup v2 alone, or beside v1 (systemd's hybrid layout)
CGROUP_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
POLL_S = 0.5


def cgroup_root(fs: KernelFs) -> str:
    """Where cgroup v2 is mounted (its root holds cgroup.controllers)."""
    for root in CGROUP_ROOTS:
        if fs.exists(f"{root}/cgroup.controllers"):
            return root
    return CGROUP_ROOTS[0]


class PressureMonitor:
    """Reads the sources, keeps their shares and the hold (one per daemon)."""

    def __init__(self, fs: KernelFs, cgroups: Sequence[str], hold_percent: float,
                 on_release: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fs = fs
        self.guard = PressureGuard(hold_percent / 100)
        self.on_release = on_release
        self.clock = clock
        self.totals: dict[tuple[str, str], int] = {}  # (source, some|full) -> µs
        self.missing: set[str] = set()
        # source name -> (file, the line held on)
        self.sources: dict[str, tuple[str, str]] = {}
        self.configure(cgroups, hold_percent)

    def configure(self, cgroups: Sequence[str], hold_percent: float) -> None:
        """The sources and the threshold (at start and on reload)."""
        root = cgroup_root(self.fs)
        sources = {"system": (SYSTEM, "full")}
        for cg in cgroups:
            path = "/" + cg.strip("/")
            sources[path] = (f"{root}{path.rstrip('/')}/memory.pressure", "some")
        self.sources = sources
        self.totals = {k: v for k, v in self.totals.items() if k[0] in sources}
        self.guard.hold_ratio = hold_percent / 100

    @property
    def held(self) -> bool:
        return self.guard.held

    def poll(self) -> bool:
        """Read every source and update the hold; returns whether promotion is held."""
        watched: dict[str, int] = {}
        for name, (path, kind) in self.sources.items():
            got = pressure_totals(self.fs, path)
            if got is None:
                self.missing.add(name)
                continue
            self.missing.discard(name)
            for k, v in got.items():
                self.totals[(name, k)] = v
            if kind in got:
                watched[name] = got[kind]
        was = self.guard.held
        held = self.guard.update(self.clock(), watched)
        if was and not held:
            self.on_release()
        return held

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(POLL_S)

    def stats(self) -> dict[str, object]:
        """What status shows."""
        return {"held": self.guard.held, "hold_percent": round(self.guard.hold_ratio * 100, 1),
                "held_seconds": round(self.guard.held_seconds, 1), "holds": self.guard.holds,
                "sources": {name: {"watch": kind, "percent": round(
                    100 * self.guard.ratios.get(name, 0.0), 1), "missing": name in self.missing}
                            for name, (_, kind) in self.sources.items()}}
