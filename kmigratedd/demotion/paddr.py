"""``damon-paddr``: DAMON demotes the fast nodes' cold pages as room is needed (Linux 6.11+).

One DAMON kdamond per fast node with ``paddr`` operations over the node's physical
memory (its memory blocks, merged into ranges) and one ``migrate_cold`` scheme: regions
with no access for ``demotion.cold_age_ms`` go to the node's demotion target, less every
page whose accessed bit is set (a ``young`` filter).  The scheme's size quota follows the
room the workers need, at most ``demotion.rate_limit_mb_per_s``; with no room needed the
scheme matches nothing and the kdamond goes on monitoring, so the regions keep their
age.  File pages are migrated like anonymous ones: never written back, never dropped.

The kdamonds it turns on are named in an owner file, so a start after a crash turns
them off (:func:`recover_kdamonds`).  All sysfs I/O goes through
:class:`~kmigratedd.damon.sysfs.DamonSysfs`; the rounds run in an executor the daemon
hands in, and what they demoted is counted on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import DamonConfig, DemotionConfig
from ..damon import model
from ..damon.kdamond import KdamondSession
from ..damon.sysfs import (ADMIN, MIGRATE_KERNEL, NR_KDAMONDS, DamonSysfs, damon_in_use,
                           kernel_release)
from ..errors import SamplerUnavailableError
from ..kernelfs import KernelFs

log = logging.getLogger("kmigratedd.demotion")

# The demoter's round, and the reset interval of its scheme's quota.
INTERVAL_MS = 1000


def owner_path(sysctl_state_file: str | Path) -> Path:
    """The file naming the kdamonds the paddr demoter turned on (index and pid), beside the
    sysctl state files: a daemon killed before it could turn them off leaves it, and the
    next start turns those kdamonds off (:func:`~kmigratedd.damon.kdamond.recover`)."""
    p = Path(sysctl_state_file)
    return p.with_name(f"kdamonds-{p.name}")


def paddr_unavailable(fs: KernelFs) -> str | None:
    """Why the damon-paddr method cannot run here, or None."""
    if not fs.exists(NR_KDAMONDS):
        return "the kernel has no DAMON sysfs interface (CONFIG_DAMON_SYSFS, CONFIG_DAMON_PADDR)"
    release = kernel_release(fs)
    if release is not None and release < MIGRATE_KERNEL:
        return (f"DAMON on Linux {release[0]}.{release[1]} has no migrate_cold action "
                "(Linux >= 6.11)")
    if not os.access(fs.path(NR_KDAMONDS), os.W_OK):
        return f"writing {ADMIN} needs root"
    return damon_in_use(fs)


@dataclass
class NodeDemotion:
    """One fast node's kdamond and what its scheme did."""

    node: int
    target: int
    sysfs: DamonSysfs
    ranges: list[tuple[int, int]]
    active: bool = False  # the scheme has the cold pattern (else it matches nothing)
    quota_bytes: int = 0  # the quota last committed
    sz_applied: int = 0  # the scheme's stats/sz_applied as last read
    carry: int = 0  # bytes applied not yet counted as whole pages
    stats: dict[str, int] = field(default_factory=dict)
    demoted_pages: int = 0
    commits: int = 0


class PaddrDemoter:
    """DAMON paddr kdamonds that demote the fast nodes' cold pages as room is needed."""

    method = "damon-paddr"

    def __init__(self, fs: KernelFs, ranges: Mapping[int, list[tuple[int, int]]],
                 targets: Mapping[int, int], cfg: DemotionConfig, damon: DamonConfig, *,
                 page_size: int, room_for: Callable[[int], int], executor: Executor,
                 interval_ms: int = INTERVAL_MS, owner_file: str | Path | None = None) -> None:
        """``targets``: fast node → the slower node it demotes to; ``ranges``: each fast
        node's physical memory.  ``room_for(node)`` (called in the executor) gives the
        bytes the node's worker needs."""
        self.fs = fs
        self.cfg = cfg
        self.page_size = page_size
        self.room_for = room_for
        self.executor = executor
        self.interval_ms = interval_ms
        self.attrs = model.MonitoringAttrs(
            model.Intervals(damon.sample_interval_ms * 1000, damon.aggregate_interval_ms * 1000,
                            max(INTERVAL_MS, damon.aggregate_interval_ms) * 1000),
            damon.min_regions, damon.max_regions)
        self.configure(cfg)
        self.session = KdamondSession(fs, len(targets), owner_file=owner_file,
                                      on_error=self._error)
        self.nodes = [NodeDemotion(node, dst, self.session.kdamonds[i], list(ranges[node]))
                      for i, (node, dst) in enumerate(sorted(targets.items()))]
        self.counts: Counter[tuple[int, int]] = Counter()  # (fast node, target) -> pages
        self.errors = 0
        self.restarts = 0

    def demoted(self, node: int) -> dict[tuple[int, int], int]:
        """Pages the node's scheme demoted, by (node, target)."""
        return {k: v for k, v in self.counts.items() if k[0] == node}

    def kernel_floor(self, node: int) -> bool:
        return False

    def configure(self, cfg: DemotionConfig) -> None:
        """A (re)loaded demotion config: the rate limit holds from the next round, the
        cold age from the next time a scheme turns active."""
        self.cfg = cfg
        self.min_age = model.aggregations(cfg.cold_age_ms * 1000, self.attrs.intervals.aggr_us)

    # --- limits ---------------------------------------------------------------

    def quota_for(self, room: int) -> int:
        """Bytes the scheme may demote in one interval: the room needed, at most the
        rate limit's share, in whole pages."""
        limit = int(self.cfg.rate_limit_mb_per_s * 1e6 * self.interval_ms / 1000)
        quota = min(room, limit) if limit > 0 else room
        return max(0, quota - quota % self.page_size)

    def _scheme(self, n: NodeDemotion, quota: int) -> model.Scheme:
        scheme = model.migrate_cold_scheme(n.target, self.min_age,
                                           model.Quota(quota, self.interval_ms))
        return scheme if quota > 0 else replace(scheme, access_pattern=model.NOTHING)

    # --- lifecycle (in the executor) --------------------------------------------

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, self.open)

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, self.close)

    def open(self) -> None:
        """Write one kdamond per fast node, its scheme matching nothing yet, and turn
        them on; SamplerUnavailableError says why not (and leaves DAMON as found)."""
        with self.session.setting_up("setting up DAMON paddr", self.close):
            for n in self.nodes:
                if not n.ranges:
                    raise SamplerUnavailableError(f"node {n.node} has no memory block in "
                                                  "/sys/devices/system/node")
                ctx = model.Context("paddr", self.attrs, (model.Target(None, tuple(n.ranges)),),
                                    (self._scheme(n, 0),))
                n.sysfs.write_context(ctx)
                n.sysfs.write_targets(ctx)
                n.sysfs.command("on")
                log.info("demotion: kdamond %d (paddr) watches node %d (%d MiB in %d ranges); "
                         "cold pages go to node %d", n.sysfs.index, n.node,
                         sum(e - s for s, e in n.ranges) >> 20, len(n.ranges), n.target)
            self.session.record_owner()

    def close(self) -> None:
        """Turn the kdamonds off and restore nr_kdamonds (idempotent)."""
        self.session.release()
        for n in self.nodes:
            n.active = False

    def _error(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        log.warning("demotion: %s: %s", what, exc)

    # --- running ----------------------------------------------------------------

    async def run(self) -> None:
        """Every interval: one round in the executor, then count what it demoted."""
        loop = asyncio.get_running_loop()
        while True:
            for src, dst, pages in await loop.run_in_executor(self.executor, self.round):
                self.counts[(src, dst)] += pages
            await asyncio.sleep(self.interval_ms / 1000)

    def round(self) -> list[tuple[int, int, int]]:
        """Read what each scheme demoted since the last round, then set its quota from
        the room its node needs: (src, dst, pages) per node that demoted some."""
        if not self.session.claimed:  # closed: leave DAMON alone
            return []
        out = []
        for n in self.nodes:
            try:
                pages = self._read_stats(n) if n.sysfs.is_on() else 0
                # The worker's free figure may predate what the scheme demoted since the
                # last round (it refreshes every workers.free_refresh_ms): take that off the
                # room, so a stale figure does not demote it twice.
                self._steer(n, max(0, self.room_for(n.node) - pages * self.page_size))
            except OSError as exc:
                self._error(f"kdamond {n.sysfs.index} (node {n.node})", exc)
                continue
            if pages:
                out.append((n.node, n.target, pages))
        return out

    def _steer(self, n: NodeDemotion, room: int) -> None:
        if not n.sysfs.is_on():
            # It stopped (an error in the kdamond, or someone wrote off): start it again,
            # its scheme matching nothing until this round's commit.
            self.restarts += 1
            log.warning("demotion: kdamond %d stopped; starting it again", n.sysfs.index)
            n.sysfs.write_scheme(0, self._scheme(n, 0))
            n.sysfs.command("on")
            n.active, n.quota_bytes, n.sz_applied, n.carry = False, 0, 0, 0
        quota = self.quota_for(room)
        if quota == n.quota_bytes and (quota > 0) == n.active:
            return
        if quota > 0:
            n.sysfs.write_quota_bytes(0, quota)
            if not n.active:
                n.sysfs.write_access_pattern(0, self._scheme(n, quota).access_pattern)
        else:
            n.sysfs.write_access_pattern(0, model.NOTHING)
        n.sysfs.command("commit")
        n.commits += 1
        n.active, n.quota_bytes = quota > 0, quota

    def _read_stats(self, n: NodeDemotion) -> int:
        """Pages demoted since the last read (from stats/sz_applied)."""
        n.sysfs.command("update_schemes_stats")
        n.stats = n.sysfs.scheme_stats(0)
        applied = n.stats.get("sz_applied", n.sz_applied)
        if applied < n.sz_applied:  # a new scheme (kdamond restarted): counts from 0
            n.sz_applied = 0
        n.carry += applied - n.sz_applied
        n.sz_applied = applied
        pages, n.carry = divmod(n.carry, self.page_size)
        n.demoted_pages += pages
        return pages

    def stats(self) -> dict[str, object]:
        """What status shows."""
        return {"method": self.method, "errors": self.errors, "kdamond_restarts": self.restarts,
                "nodes": {str(n.node): {
                    "to": n.target, "kdamond": n.sysfs.index, "active": n.active,
                    "quota_bytes": n.quota_bytes, "demoted_pages": n.demoted_pages,
                    "demoted_bytes": n.demoted_pages * self.page_size,
                    "tried_bytes": n.stats.get("sz_tried", 0),
                    "regions_applied": n.stats.get("nr_applied", 0),
                    "quota_exceeded": n.stats.get("qt_exceeds", 0),
                    "sysfs_busy": n.sysfs.busy_retries} for n in self.nodes}}


