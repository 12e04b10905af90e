"""Demotion the kernel does, for samplers that do not see the fast tier.

The hint-faults sampler (and pebs/ibs) see no access to a top-tier page: in tiering
mode the kernel's NUMA scanner skips them, so these samplers cannot tell a cold page of
the fast node from a hot one.  On a full fast tier the daemon then has the kernel
demote, by one of two methods (``demotion.method``):

``damon-paddr`` (:class:`PaddrDemoter`, Linux 6.11+)
    One DAMON kdamond per fast node with ``paddr`` operations over the node's physical
    memory (its memory blocks, merged into ranges) and one ``migrate_cold`` scheme:
    regions with no access for ``demotion.cold_age_ms`` go to the node's demotion
    target, less every page whose accessed bit is set (a ``young`` filter).  The
    scheme's size quota follows the room the workers need, at most
    ``demotion.rate_limit_mb_per_s``; with no room needed the scheme matches nothing
    and the kdamond goes on monitoring, so the regions keep their age.  File pages
    are migrated like anonymous ones: never written back, never dropped.
``kswapd`` (:class:`KswapdDemotion`)
    Sets /sys/kernel/mm/numa/demotion_enabled=1 (saved and restored through a
    :class:`~kmigratedd.sysctl.SysctlGuard` state file of its own) and lets promotion
    take the fast node below the workers' headroom: the allocations wake kswapd, whose
    reclaim demotes instead of evicting.  Reactive and small: kswapd stops at the
    node's watermarks, and its reclaim also reclaims file pages (clean page cache
    dropped, dirty pages written back) where it finds them, as reclaim does.  The
    node's pgdemote_* counters tell what it demoted.

``memory.reclaim`` is not a method: before Linux 6.17 (per-node
/sys/devices/system/node/nodeN/reclaim) it cannot be held to one node, so it reclaims
from every node of the cgroup, swaps anonymous pages when swap exists and drops clean
page cache.

All sysfs I/O goes through :class:`~kmigratedd.kernelfs.KernelFs` (DAMON through
:class:`~kmigratedd.samplers.damon_sysfs.DamonSysfs`); the demoter's rounds run in an
executor the daemon hands in, and what they demoted is counted on the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import sysctl
from .config import DamonConfig, DemotionConfig
from .errors import SamplerUnavailableError
from .kernelfs import KernelFs
from .samplers import damon_model as model
from .samplers.damon_sysfs import (ADMIN, MIGRATE_KERNEL, NR_KDAMONDS, DamonSysfs, damon_in_use,
                                   kernel_release)
from .sysctl import SysctlGuard
from .topology import read_node_meminfo

log = logging.getLogger("kmigratedd.demotion")

MEMORY = "/sys/devices/system/memory"
BLOCK_SIZE = f"{MEMORY}/block_size_bytes"
# The demoter's round, and the reset interval of its scheme's quota.
INTERVAL_MS = 1000


def node_memory_ranges(fs: KernelFs, node: int) -> list[tuple[int, int]]:
    """Physical [start, end) ranges of node ``node``: its online memory blocks
    (``nodeN/memoryM`` × ``block_size_bytes``, hex), touching blocks merged."""
    size = fs.read_int(BLOCK_SIZE, 16)
    blocks = []
    for name in fs.listdir(f"/sys/devices/system/node/node{node}", r"memory\d+"):
        online = fs.read_optional(f"{MEMORY}/{name}/online")
        if online is not None and online.strip() == "0":
            continue
        index = int(name.removeprefix("memory"))
        blocks.append((index * size, (index + 1) * size))
    return model.merged(blocks)


def state_path(sysctl_state_file: str | Path) -> Path:
    """The state file of the demotion sysctls: beside the hint-faults sampler's, so
    each guard owns one file and restores only its own values."""
    p = Path(sysctl_state_file)
    return p.with_name(f"demotion-{p.name}")


def owner_path(sysctl_state_file: str | Path) -> Path:
    """The file naming the kdamonds the paddr demoter turned on (index and pid), beside the
    sysctl state files: a daemon killed before it could turn them off leaves it, and the
    next start turns those kdamonds off (:func:`recover_kdamonds`)."""
    p = Path(sysctl_state_file)
    return p.with_name(f"kdamonds-{p.name}")


def recover_kdamonds(fs: KernelFs, path: str | Path) -> list[int]:
    """Turn off the kdamonds a previous run left on (those still on with the pid it
    recorded), then forget the file; returns their indexes."""
    p = Path(path)
    try:
        owned = json.loads(p.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("demotion: ignoring %s: %s", p, exc)
        owned = {}
    stopped = []
    for idx, pid in (owned.items() if isinstance(owned, dict) else ()):
        k = DamonSysfs(fs, int(idx))
        try:
            on, now = k.is_on(), k.pid()
        except OSError as exc:
            log.warning("demotion: could not read kdamond %s left by a previous run: %s",
                        idx, exc)
            continue
        if on and now == str(pid):
            try:
                k.command("off")
                stopped.append(int(idx))
                log.warning("demotion: turned off kdamond %s (pid %s), left on by a previous "
                            "run", idx, pid)
            except OSError as exc:
                log.warning("demotion: could not turn off kdamond %s left on by a previous "
                            "run: %s", idx, exc)
    try:
        p.unlink()
    except OSError:
        pass
    return stopped


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


def kswapd_unavailable(fs: KernelFs) -> str | None:
    """Why the kswapd method cannot run here, or None."""
    if not fs.exists(sysctl.DEMOTION_ENABLED.kpath):
        return (f"the kernel has no {sysctl.DEMOTION_ENABLED.kpath} (memory tiering, "
                "CONFIG_NUMA, Linux >= 5.15)")
    if not os.access(fs.path(sysctl.DEMOTION_ENABLED.kpath), os.W_OK):
        return (f"{sysctl.DEMOTION_ENABLED.kpath} is not writable here (root, and under "
                "systemd ReadWritePaths= with ProtectKernelTunables=)")
    return None


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

    def __init__(self, fs: KernelFs, targets: Mapping[int, int], cfg: DemotionConfig,
                 damon: DamonConfig, *, page_size: int, room_for: Callable[[int], int],
                 count: Callable[[int, int, int], None], executor: Executor,
                 interval_ms: int = INTERVAL_MS, owner_file: str | Path | None = None) -> None:
        """``targets``: fast node → the slower node it demotes to.  ``room_for(node)``
        (called in the executor) gives the bytes the node's worker needs;
        ``count(src, dst, pages)`` (called on the loop) counts what was demoted."""
        self.fs = fs
        self.cfg = cfg
        self.owner_file = Path(owner_file) if owner_file is not None else None
        self.page_size = page_size
        self.room_for = room_for
        self.count = count
        self.executor = executor
        self.interval_ms = interval_ms
        self.attrs = model.MonitoringAttrs(
            model.Intervals(damon.sample_interval_ms * 1000, damon.aggregate_interval_ms * 1000,
                            max(INTERVAL_MS, damon.aggregate_interval_ms) * 1000),
            damon.min_regions, damon.max_regions)
        self.configure(cfg)
        self.nodes = [NodeDemotion(node, dst, DamonSysfs(fs, i), [])
                      for i, (node, dst) in enumerate(sorted(targets.items()))]
        self.errors = 0
        self.restarts = 0
        self._found_nr_kdamonds: int | None = None

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
        kdamonds = DamonSysfs(self.fs)
        self._found_nr_kdamonds = kdamonds.nr_kdamonds()
        try:
            kdamonds.set_nr_kdamonds(len(self.nodes))
        except OSError as exc:
            self._found_nr_kdamonds = None
            raise SamplerUnavailableError(self._why(NR_KDAMONDS, exc)) from None
        try:
            for n in self.nodes:
                n.ranges = node_memory_ranges(self.fs, n.node)
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
            self._record_owned()
        except SamplerUnavailableError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise SamplerUnavailableError(self._why("setting up DAMON paddr", exc)) from None

    def _record_owned(self) -> None:
        """Name the kdamonds turned on (index and pid) in the owner file, so that a next
        start after a crash turns them off."""
        if self.owner_file is None:
            return
        owned = {}
        for n in self.nodes:
            pid = n.sysfs.pid() or ""
            if pid.isdigit():
                owned[str(n.sysfs.index)] = int(pid)
        try:
            self.owner_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.owner_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(owned))
            os.replace(tmp, self.owner_file)
        except OSError as exc:
            self._error(f"writing {self.owner_file}", exc)

    def _why(self, what: str, exc: OSError) -> str:
        if exc.errno == errno.EBUSY:
            return damon_in_use(self.fs) or f"{what}: DAMON is in use by another tool (EBUSY)"
        return f"{what}: {exc.strerror or exc}"

    def close(self) -> None:
        """Turn the kdamonds off and restore nr_kdamonds (idempotent)."""
        if self._found_nr_kdamonds is None:
            return
        for n in self.nodes:
            if not n.sysfs.is_on():
                continue
            try:
                n.sysfs.command("off")
            except OSError as exc:
                if exc.errno != errno.EPERM:  # EPERM: it stopped by itself meanwhile
                    self._error(f"turning kdamond {n.sysfs.index} off", exc)
        try:
            DamonSysfs(self.fs).set_nr_kdamonds(self._found_nr_kdamonds)
        except OSError as exc:
            self._error(f"restoring {NR_KDAMONDS} to {self._found_nr_kdamonds}", exc)
        self._found_nr_kdamonds = None
        for n in self.nodes:
            n.active = False
        if self.owner_file is not None:
            try:
                self.owner_file.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._error(f"removing {self.owner_file}", exc)

    def _error(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        log.warning("demotion: %s: %s", what, exc)

    # --- running ----------------------------------------------------------------

    async def run(self) -> None:
        """Every interval: one round in the executor, then count what it demoted."""
        loop = asyncio.get_running_loop()
        while True:
            for src, dst, pages in await loop.run_in_executor(self.executor, self.round):
                self.count(src, dst, pages)
            await asyncio.sleep(self.interval_ms / 1000)

    def round(self) -> list[tuple[int, int, int]]:
        """Read what each scheme demoted since the last round, then set its quota from
        the room its node needs: (src, dst, pages) per node that demoted some."""
        if self._found_nr_kdamonds is None:  # closed: leave DAMON alone
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


def node_demoted_pages(fs: KernelFs, node: int) -> int:
    """Pages reclaim demoted from ``node`` so far: the pgdemote_* counters of its vmstat
    (kswapd, direct, khugepaged; 0 where the kernel has none)."""
    total = 0
    for line in (fs.read_optional(f"/sys/devices/system/node/node{node}/vmstat") or
                 "").splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("pgdemote_") and value.strip().isdigit():
            total += int(value)
    return total


class KswapdDemotion:
    """demotion_enabled=1 for as long as the daemon runs; kswapd does the demoting.  What
    reclaim demotes from each fast node meanwhile (its vmstat pgdemote_* counters) is
    counted as demoted, whatever woke it."""

    method = "kswapd"

    def __init__(self, fs: KernelFs, state_file: str | Path,
                 targets: Mapping[int, int] | None = None,
                 count: Callable[[int, int, int], None] | None = None,
                 interval_ms: int = INTERVAL_MS, target_floor_bytes: int = 0,
                 on_short: Callable[[int], None] | None = None) -> None:
        """A fast node is ``short`` while its demotion target has less than
        ``target_floor_bytes`` free (kswapd's demotions there would fail, and its reclaim
        drop page cache on the fast node instead); ``on_short(node)`` is called on the loop
        when that changes."""
        self.fs = fs
        self.guard = SysctlGuard(fs, state_file, {sysctl.DEMOTION_ENABLED.kpath: "1"})
        self.targets = dict(targets or {})
        self.count = count
        self.target_floor_bytes = target_floor_bytes
        self.on_short = on_short
        self.short: set[int] = set()
        self.interval_ms = interval_ms
        self._seen: dict[int, int] = {}
        self.demoted: dict[int, int] = dict.fromkeys(self.targets, 0)

    async def start(self) -> None:
        self._seen = {n: node_demoted_pages(self.fs, n) for n in self.targets}
        self.guard.apply()
        self.check_targets()
        log.info("demotion: kswapd demotes (demotion_enabled=1); promotion may take the fast "
                 "tier below the workers' headroom")

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
                self.demoted[node] += pages
                out.append((node, dst, pages))
        return out

    def check_targets(self) -> None:
        """Update ``short`` from the demotion targets' free memory."""
        for node, dst in self.targets.items():
            free = read_node_meminfo(self.fs, dst, "MemFree").get("MemFree", 0)
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
            for src, dst, pages in self.poll():
                if self.count is not None:
                    self.count(src, dst, pages)
            self.check_targets()

    def stats(self) -> dict[str, object]:
        return {"method": self.method,
                "sysctl_originals_unknown": len(self.guard.unknown),
                "nodes": {str(n): {"to": d, "demoted_pages": self.demoted[n],
                                   "target_short": n in self.short}
                          for n, d in self.targets.items()}}
