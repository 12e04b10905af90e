"""The damon sampler's cold regions (with demotion on): which pages of DAMON's cold
regions are offered for demotion while promotion needs room.

Scheme ``n + i`` reports the regions of target i that saw no access for
``demotion.cold_age_ms``.  While room is needed their whole pages, but for those in a
region hot this round or in the rounds the hot-region confirmation remembers, are
offered oldest region first (weight: the region's age in aggregation intervals) within
the round's cold budget (kmigratedd/samplers/offers.py); while no room is needed the cold
regions are only counted.  A cold region often spans pages never touched (DAMON's
regions cover the mapped ranges, populated or not) or already on a slower node:
/proc/PID/pagemap gives each present page's PFN, whose memory block gives its node, so
the budget goes to pages that can be demoted.
"""

from __future__ import annotations

import itertools
from array import array

from .. import shim
from ..damon import model
from ..damon.model import Region
from ..damon.sysfs import DamonSysfs
from ..kernelfs import KernelFs
from ..procfs import Pagemap
from ..topology import Topology
from .damon_hot import HotRegions, PerPid
from .offers import cold_budget

# Pages expanded from cold regions per round, across all processes (oldest regions
# first; the rest is counted in cold_pages_over_budget), whatever room is needed.
MAX_COLD_PAGES_PER_ROUND = 1 << 16
# Pagemap entries read at once when looking for the present pages of a cold region.
COLD_PAGEMAP_CHUNK = 1 << 14


class ColdRegions:
    """Reads the cold schemes' regions and expands them into pages (module docstring).
    The gone and count_error callbacks are ``hot``'s."""

    def __init__(self, fs: KernelFs, sysfs: DamonSysfs, topology: Topology,
                 hot: HotRegions, *, min_pages: int, max_pages: int) -> None:
        self.fs, self.sysfs, self.hot = fs, sysfs, hot
        self.counters, self.gone, self.count_error = hot.counters, hot.gone, hot.count_error
        self.page_size = topology.page_size
        self.min_pages, self.max_pages = min_pages, max_pages
        # PFN -> node from the memory blocks: a cold page is offered only while it sits on
        # a fast node (a hint for the budget; the router checks each page again).
        block_shift, self._block_table = topology.block_node_table()
        self._pfn_block_shift = max(0, block_shift - (self.page_size.bit_length() - 1))
        size = max(topology.nodes, default=0) + 1
        fast = set(topology.fast_nodes)
        self._fast_mask = bytes(1 if n in fast else 0 for n in range(size))

    def regions(self, scheme: int, room: int) -> list[Region]:
        """The tried regions of a cold scheme, all counted in ``cold_regions``; read only
        while promotion needs room (else [])."""
        if room <= 0:
            self.counters["cold_regions"] += self.sysfs.nr_tried_regions(scheme)
            return []
        regions = self.sysfs.tried_regions(scheme, self.count_error)
        self.counters["cold_regions"] += len(regions)
        return regions

    def not_hot(self, pid: int, regions: list[Region], hot: list[Region]) -> list[Region]:
        """The whole pages of cold ``regions`` that are in no region hot this round (nor
        in the rounds the confirmation remembers): DAMON's adaptive regions can put a
        page in a cold region of one scheme and a hot one of another."""
        ranges = [(r.start, r.end) for r in hot]
        for past in self.hot.history.get(pid, ()):
            ranges.extend(past)
        whole = sorted(p for p in (model.inner(r, self.page_size) for r in regions)
                       if p is not None and p.nr_accesses == 0)
        return model.subtract(whole, model.merged(ranges))

    def expand(self, cold: list[tuple[Region, int]], room: int) -> PerPid:
        """The present pages on a fast node of the cold (whole-page) regions, oldest first,
        within the round's cold budget, weighted by the region's age; nothing while no
        room is needed."""
        if room <= 0 or not cold:
            return {}
        ps = self.page_size
        budget = cold_budget(room, ps, self.min_pages, self.max_pages)
        per_pid: PerPid = {}
        maps: dict[int, Pagemap | None] = {}
        try:
            for region, pid in cold:
                if budget <= 0:
                    self.counters["cold_pages_over_budget"] += (region.end - region.start) // ps
                    continue
                if pid not in maps:
                    maps[pid] = self._open_pagemap(pid)
                pm = maps[pid]
                if pm is None:
                    continue
                present = self._present_pages(pm, region.start, region.end, budget)
                budget -= len(present)
                addrs, _, weights = per_pid.setdefault(pid, (array("Q"), None, array("I")))
                addrs.extend(present)
                weights.extend(array("I", [min(region.age, model.COLD_WEIGHT_MAX)])
                               * len(present))
        finally:
            for pm in maps.values():
                if pm is not None:
                    pm.close()
        return per_pid

    def _open_pagemap(self, pid: int) -> Pagemap | None:
        try:
            return Pagemap(self.fs, pid)
        except OSError as exc:
            self.hot.failed(pid, f"/proc/{pid}/pagemap", exc)
            return None

    def _present_pages(self, pm: Pagemap, start: int, end: int, budget: int) -> array[int]:
        """Addresses of the pages of [start, end) that are present (pagemap) on a fast node
        (their PFN's memory block), at most ``budget``; the region's pages past the budget
        are counted."""
        ps = self.page_size
        out = array("Q")
        addr = start
        while addr < end and len(out) < budget:
            n = min((end - addr) // ps, COLD_PAGEMAP_CHUNK)
            entries = array("Q", bytes(8 * n))
            try:
                got = pm.read(addr // ps, entries)
            except OSError as exc:
                self.count_error("pagemap read", exc)
                break
            pfns = array("Q", bytes(8 * got))
            if len(self._block_table) and any(self._fast_mask):
                shim.pagemap_pfns_on(entries[:got], addr // ps, self._pfn_block_shift,
                                     self._block_table, self._fast_mask, pfns)
            else:  # no memory-block map: every present page
                shim.pagemap_pfns(entries[:got], pfns)
            # itertools.compress runs in C: the addresses whose PFN is non-zero.
            out.extend(itertools.compress(range(addr, addr + got * ps, ps), pfns))
            addr += n * ps
            if got < n:
                break
        if len(out) > budget:
            self.counters["cold_pages_over_budget"] += len(out) - budget
            del out[budget:]
        self.counters["cold_pages_over_budget"] += max(0, (end - addr) // ps)
        return out
