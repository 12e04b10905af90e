"""``kswapd``: the kernel's reclaim demotes, promotion only wakes it.

Sets /sys/kernel/mm/numa/demotion_enabled=1 (saved and restored through a
:class:`~kmigratedd.sysctl.SysctlGuard` state file of its own) and lets promotion take
the fast node below its low watermarks, where the allocations wake kswapd, whose reclaim
demotes instead of evicting (the worker stops half way to the min watermarks:
kmigratedd/capacity.py).  Reactive and small: kswapd stops at the node's watermarks,
and its reclaim also reclaims file pages (clean page cache dropped, dirty pages written
back) where it finds them, as reclaim does.  The node's pgdemote_* counters tell what it
demoted.  While the node it demotes to is short of free memory, promotion keeps the
configured headroom (:attr:`KswapdDemotion.short`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

from .. import sysctl
from ..capacity import node_free_bytes
from ..kernelfs import KernelFs
from ..procfs import node_vmstat
from ..sysctl import SysctlGuard

log = logging.getLogger("kmigratedd.demotion")

INTERVAL_MS = 1000


def state_path(sysctl_state_file: str | Path) -> Path:
    """The state file of the demotion sysctls: beside the hint-faults sampler's, so
    each guard owns one file and restores only its own values."""
    p = Path(sysctl_state_file)
    return p.with_name(f"demotion-{p.name}")


def kswapd_unavailable(fs: KernelFs) -> str | None:
    """Why the kswapd method cannot run here, or None."""
    if not fs.exists(sysctl.DEMOTION_ENABLED.kpath):
        return (f"the kernel has no {sysctl.DEMOTION_ENABLED.kpath} (memory tiering, "
                "CONFIG_NUMA, Linux >= 5.15)")
    if not os.access(fs.path(sysctl.DEMOTION_ENABLED.kpath), os.W_OK):
        return (f"{sysctl.DEMOTION_ENABLED.kpath} is not writable here (root, and under "
                "systemd ReadWritePaths= with ProtectKernelTunables=)")
    return None


def node_demoted_pages(fs: KernelFs, node: int) -> int:
    """Pages reclaim demoted from ``node`` so far: the pgdemote_* counters of its vmstat
    (kswapd, direct, khugepaged; 0 where the kernel has none)."""
    return sum(node_vmstat(fs, node, ("pgdemote_",)).values())


class KswapdDemotion:
    """demotion_enabled=1 for as long as the daemon runs; kswapd does the demoting.  What
    reclaim demotes from each fast node meanwhile (its vmstat pgdemote_* counters) is
    counted as demoted, whatever woke it."""

    method = "kswapd"

    def __init__(self, fs: KernelFs, state_file: str | Path,
                 targets: Mapping[int, int] | None = None, *, interval_ms: int = INTERVAL_MS,
                 target_floor_bytes: int = 0,
                 on_short: Callable[[int], None] | None = None) -> None:
        """A fast node is ``short`` while its demotion target has less than
        ``target_floor_bytes`` free (kswapd's demotions there would fail, and its reclaim
        drop page cache on the fast node instead); ``on_short(node)`` is called on the loop
        when that changes."""
        self.fs = fs
        self.guard = SysctlGuard(fs, state_file, {sysctl.DEMOTION_ENABLED.kpath: "1"})
        self.targets = dict(targets or {})
        self.target_floor_bytes = target_floor_bytes
        self.on_short = on_short
        self.short: set[int] = set()
        self.interval_ms = interval_ms
        self._seen: dict[int, int] = {}
        self.counts: Counter[tuple[int, int]] = Counter()  # (fast node, target) -> pages

    def demoted(self, node: int) -> dict[tuple[int, int], int]:
        """Pages reclaim demoted from ``node`` while we ran, by (node, target)."""
        return {k: v for k, v in self.counts.items() if k[0] == node}

    def kernel_floor(self, node: int) -> bool:
        """Whether promotion to ``node`` goes down to its watermarks (not while its target
        is short)."""
        return node not in self.short

    async def start(self) -> None:
        self._seen = {n: node_demoted_pages(self.fs, n) for n in self.targets}
        self.guard.apply()
        self.check_targets()
        log.info("demotion: kswapd demotes (demotion_enabled=1); promotion takes the fast "
                 "tier below its low watermarks, where the allocations wake kswapd")

    async def stop(self) -> None:
        self.guard.restore()

    def poll(self) -> list[tuple[int, int, int]]:
        """(src, dst, pages) reclaim demoted from each fast node since the last poll."""
        out = []
        for node, dst in self.targets.items():
            now = node_demoted_pages(self.fs, node)
            pages = max(0, now - self._seen.get(node, now))
            self._seen[node] = now
            if pages:
                self.counts[(node, dst)] += pages
                out.append((node, dst, pages))
        return out

    def check_targets(self) -> None:
        """Update ``short`` from the demotion targets' free memory."""
        for node, dst in self.targets.items():
            free = node_free_bytes(self.fs, dst)
            short = free < self.target_floor_bytes
            if short == (node in self.short):
                continue
            if short:
                self.short.add(node)
                log.warning("demotion: node %d has %d MiB free, less than workers.min_free_bytes:"
                            " promotion to node %d keeps its headroom (kswapd could not demote "
                            "there)", dst, free >> 20, node)
            else:
                self.short.discard(node)
                log.info("demotion: node %d has room again: promotion to node %d may wake "
                         "kswapd", dst, node)
            if self.on_short is not None:
                self.on_short(node)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_ms / 1000)
            self.poll()
            self.check_targets()

    def stats(self) -> dict[str, object]:
        return {"method": self.method,
                "sysctl_originals_unknown": len(self.guard.unknown),
                "nodes": {str(n): {"to": d, "demoted_pages": self.counts[(n, d)],
                                   "target_short": n in self.short}
                          for n, d in self.targets.items()}}
