"""DAMON sampler: the kernel's Data Access MONitor finds hot (and cold) regions, we offer
their pages.

DAMON runs in a kernel thread (``kdamond``) and, with ``vaddr`` operations, watches the
address space of each target process at a bounded cost: it keeps between
``min_regions`` and ``max_regions`` regions per process, checks one random page per
region every sampling interval (the PTE accessed bit) and counts, per aggregation
interval, how many samples found the region accessed (``nr_accesses``).  This sampler
only *reads* that result; DAMOS ``migrate_hot`` is paddr-only on 6.12 and we use no
DAMOS action: the node workers move pages.

Three parts, as damo has them: kmigratedd/damon/model.py says what DAMON is asked for
(one vaddr context, one target per process in scope, one hot-region ``stat`` scheme per
target that keeps that target's regions only and, with demotion on, one cold-region
``stat`` scheme per target after them), kmigratedd/damon/sysfs.py writes it to
/sys/kernel/mm/damon/admin and reads the tried regions back (its kdamond a
:class:`~kmigratedd.damon.kdamond.KdamondSession`), and this module decides:
which processes, when to commit or restart, quiet mode, which regions count as hot
or cold, and how they become page candidates.

Every ``sampler.interval_ms`` a round, in the sampler's executor (the
``update_schemes_tried_regions`` write blocks for about one aggregation interval):

1. re-read the scope and choose the targets: every process in scope while they fit in
   :data:`MAX_TARGETS`, else those with the most memory on slow nodes and a window
   rotating over the others (kmigratedd/ranking.py); when they changed, rewrite the
   targets (only their pids while their number stays: the schemes depend on it alone)
   and ``commit`` (applied while DAMON runs).  The state is read every round and a
   kdamond that stopped (all targets exited, or a commit named a pid that had exited)
   is restarted with the live pids; a vanished pid is counted in ``pid_gone``, never
   raised;
2. ``update_schemes_tried_regions``, read the hot regions of each target;
3. keep the parts that were also hot in the previous round (:data:`CONFIRM_ROUNDS`;
   DAMON's adaptive regions briefly span a hot region's cold neighbour), ignoring the
   first round after the kdamond starts watching a process (:data:`WARMUP_ROUNDS`)
   and, after a commit moved a process to another target index, the rounds until
   vaddr has re-fitted its regions;
4. hottest regions first (``nr_accesses``, then ``age``), skip a region whose sparse
   probe finds none of its pages on a slow node (:meth:`DamonSampler._on_fast_tier`),
   expand the others into page addresses up to :data:`MAX_PAGES_PER_ROUND`, and push
   them (node unknown: the router asks where each candidate is before routing it)
   into the queue of the CPU the process last ran on, weighted by ``nr_accesses``;
5. with demotion on, the cold regions (below).

**Cold regions (demotion).**  When the daemon gives the context demotion queues
(``ctx.demote_queues``), scheme ``n + i`` reports the regions of target i that saw no
access for ``demotion.cold_age_ms`` (counted in configured aggregation intervals, so
in quiet mode a region must stay cold longer).  The same
``update_schemes_tried_regions`` fills them.  While promotion needs room on the fast
tier (``ctx.room_needed()`` > 0, called in the executor thread) their whole pages,
but for those in a region hot this round or in the rounds :meth:`DamonSampler._confirm`
remembers, are offered oldest region first (weight: the region's age in aggregation
intervals) up to twice the pages of room needed (at least ``workers.batch_pages``, at
most :data:`MAX_COLD_PAGES_PER_ROUND`) to the demotion queues, node unknown: the
router keeps the pages on a fast node.  While no room is needed, the cold regions are
only counted.

**Quiet mode.**  After ``sampler.damon.quiet_after_rounds`` rounds in a row that found
nothing to promote (say, the hot set already sits on the fast tier) and no cold pages
to demote while room was needed, the sampling and aggregation intervals are multiplied
by ``quiet_slowdown`` (the aggregation interval at most to :data:`QUIET_MAX_AGGR_MS`)
and committed: the kdamond's CPU, most of the idle cost, falls by about that factor
(tests/vm/guest/test_sampler_damon.py prints it).  DAMON still sees the same hot
regions, with as many samples per aggregation; the first round that finds pages to
promote (or to demote while room is needed), or a process new to the targets (but for
one taking its turn in the rotating window of kmigratedd/ranking.py), commits the
configured intervals again.

``stop()`` turns the kdamond off and writes ``nr_kdamonds`` back to the value found at
start.  Writing ``nr_kdamonds`` rebuilds every kdamond directory, so a kdamond that is
``on`` belongs to someone else and makes the probe fail instead.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import shim
from ..errors import SamplerUnavailableError
from ..procfs import last_cpu
from ..ranking import Ranking, Watchlist
from ..damon import model
from ..damon.kdamond import KdamondSession
from ..damon.model import Region
from ..damon.sysfs import ADMIN, MIN_KERNEL, NR_KDAMONDS, damon_in_use, kernel_release
from .base import Offer, SamplerBase, SamplerContext

log = logging.getLogger("kmigratedd.sampler")

# Pages expanded from hot regions per round, across all processes (hottest regions
# first; the rest is counted in pages_over_budget).  256 MiB of 4 KiB pages.
MAX_PAGES_PER_ROUND = 1 << 16
# A page is offered when its region was hot in this many consecutive rounds (see
# DamonSampler._confirm).
CONFIRM_ROUNDS = 2
# Rounds whose regions are ignored after the kdamond starts watching a process: its
# first regions are a few coarse slices of the whole address space (min_regions of the
# three big mapped areas) that DAMON splits and merges into shape over the next
# aggregations.
WARMUP_ROUNDS = 1
# A hot region's probe asks the node of 1 page in PROBE_STRIDE, and of at least
# PROBE_MIN_SAMPLES pages (all of a region that has fewer); see DamonSampler._on_fast_tier.
PROBE_STRIDE = 32
PROBE_MIN_SAMPLES = 8
# vaddr operations' update interval floor: how often vaddr re-fits its regions to the
# process's mappings (the kernel's default is 60 s), so new mappings and new targets
# (which a commit leaves without regions until then) are watched within a second.
UPDATE_US = 1_000_000
# Pages expanded from cold regions per round, across all processes (oldest regions
# first; the rest is counted in cold_pages_over_budget), whatever room is needed.
MAX_COLD_PAGES_PER_ROUND = 1 << 16
# Pagemap entries read at once when looking for the present pages of a cold region.
COLD_PAGEMAP_CHUNK = 1 << 14
# Quiet mode never makes the aggregation interval longer than this (a round waits for
# one aggregation in the kernel; stop() waits for a round).
QUIET_MAX_AGGR_MS = 10_000
# Processes watched at most: each costs DAMON a target and a scheme (two with demotion
# on), and each scheme is checked against every region of every target each
# aggregation interval.  With more processes in scope, MAX_TARGETS - TARGET_WINDOW
# of them are those with the most memory on slow nodes and TARGET_WINDOW rotate over
# the others (kmigratedd/ranking.py).
MAX_TARGETS = 64
TARGET_WINDOW = 16

QueryNodes = Callable[[int, Any], Any]


@dataclass(slots=True)
class DamonRound:
    """What a round offers: hot pages to promote, cold pages to demote."""

    hot: list[Offer] = field(default_factory=list)
    cold: list[Offer] = field(default_factory=list)


class DamonSampler(SamplerBase[DamonRound]):
    """Hot pages of the processes in scope, from DAMON vaddr monitoring (and, with
    demotion on, their cold pages).

    ``stats()``: ``rounds``; ``regions_seen`` (tried regions DAMON reported: its hot
    regions); ``hot_regions`` (confirmed hot region parts expanded into pages, within
    the page budget); ``pages_unconfirmed`` (pages of hot regions not hot the round
    before); ``pages_probed`` (pages whose node a region's probe asked);
    ``pages_skipped_on_fast`` (pages of hot regions whose probe found nothing on a
    slow node); ``candidates_offered``; ``pages_over_budget`` (pages of hot regions
    left out by :data:`MAX_PAGES_PER_ROUND`); ``pid_gone`` (watched processes that
    exited); ``errors`` (sysfs or query failures, logged); ``kdamond_starts``,
    ``kdamond_stops`` (stopped by itself: every target exited, or a commit named an
    exited pid), ``commits`` (of new targets); ``quiet_entered`` and ``quiet_left``
    (quiet mode, see the module docstring); gauges ``targets``, ``kdamond_on`` and
    ``quiet``.  With demotion on (``ctx.demote_queues`` set) also ``cold_regions`` (tried
    regions DAMON reported as cold), ``demotion_candidates_offered`` (cold pages
    offered) and ``cold_pages_over_budget`` (pages of cold regions left out by the
    round's cold page budget).

    ``query_nodes`` (pid, addrs) -> status array is injectable for tests; the real one is
    :func:`kmigratedd.shim.query_nodes`.
    """

    name = "damon"

    def __init__(self, ctx: SamplerContext, *, query_nodes: QueryNodes = shim.query_nodes,
                 max_pages_per_round: int = MAX_PAGES_PER_ROUND,
                 max_targets: int = MAX_TARGETS, confirm_rounds: int = CONFIRM_ROUNDS,
                 warmup_rounds: int = WARMUP_ROUNDS,
                 max_cold_pages_per_round: int = MAX_COLD_PAGES_PER_ROUND) -> None:
        demote = ctx.demote_queues is not None
        super().__init__(ctx, (
            "rounds", "regions_seen", "hot_regions", "candidates_offered",
            "pages_unconfirmed", "pages_sparse", "pages_over_budget", "pages_probed",
            "pages_skipped_on_fast", "pid_gone",
            "kdamond_starts", "kdamond_stops", "commits", "quiet_entered", "quiet_left",
            *(("cold_regions", "demotion_candidates_offered", "cold_pages_over_budget")
              if demote else ())))
        self.fs = ctx.fs
        self.session = KdamondSession(ctx.fs, 1, on_error=self._count_error)
        self.sysfs = self.session.kdamonds[0]
        self.cfg = cfg = ctx.config.sampler.damon
        self.query_nodes = query_nodes
        self.max_pages_per_round = max_pages_per_round
        self.max_targets = max_targets
        self.confirm_rounds = max(1, confirm_rounds)
        self.warmup_rounds = max(0, warmup_rounds)
        self.page_size = ctx.topology.page_size
        self.slow = frozenset(ctx.topology.targets)
        self.update_us = max(cfg.aggregate_interval_ms * 1000, UPDATE_US)
        self.attrs = model.MonitoringAttrs(
            model.Intervals(cfg.sample_interval_ms * 1000, cfg.aggregate_interval_ms * 1000,
                            self.update_us), cfg.min_regions, cfg.max_regions)
        # Cold regions, with demotion on: the age is counted in configured aggregation
        # intervals (quiet mode's longer ones only make it more conservative).
        self.cold: model.ColdPattern | None = None
        if demote:
            self.cold = model.ColdPattern(
                model.aggregations(ctx.config.demotion.cold_age_ms * 1000,
                                   self.attrs.intervals.aggr_us), self.page_size)
        self.max_cold_pages_per_round = max_cold_pages_per_round
        self.min_cold_pages = ctx.config.workers.batch_pages
        # PFN -> node from the memory blocks: a cold page is offered only while it sits on
        # a fast node (a hint for the budget; the router checks each page again).
        block_shift, self._block_table = ctx.topology.block_node_table()
        self._pfn_block_shift = max(0, block_shift - (self.page_size.bit_length() - 1))
        size = max(ctx.topology.nodes, default=0) + 1
        fast = set(ctx.topology.fast_nodes)
        self._fast_mask = bytes(1 if n in fast else 0 for n in range(size))
        # Rounds after a commit until vaddr has fitted the regions of a target that is
        # new or moved to another index, and they have taken shape.
        self.settle_rounds = (1 - (-self.update_us // (ctx.config.sampler.interval_ms * 1000))
                              + self.warmup_rounds)
        # Which processes: see _scope_pids.  A window of rotating targets stays long
        # enough for its regions to settle and be confirmed, and a round more.
        self.ranking = Ranking(ctx.scope, ctx.fs, self.slow, page_size=self.page_size,
                               per_round=ctx.config.scope.rank_processes_per_round)
        self.watchlist = Watchlist(self.ranking, max_targets, min(TARGET_WINDOW, max_targets),
                                   dwell=self.settle_rounds + self.confirm_rounds + 1)
        self._targets: tuple[int, ...] = ()  # pids as written; scheme i watches target i
        self._running = False
        self._gone_counted: set[int] = set()
        # pid -> hot ranges of its last confirm_rounds - 1 rounds.
        self._history: dict[int, deque[list[tuple[int, int]]]] = {}
        # pid -> rounds whose regions are still ignored: warm-up after the kdamond
        # started, or after a commit added the pid or moved it to another index.
        self._settling: dict[int, int] = {}
        self._warned_over_limit = False
        self._quiet = False
        self._rounds_without_offers = 0

    # --- probe ----------------------------------------------------------------

    @staticmethod
    def probe(ctx: SamplerContext) -> str | None:
        fs = ctx.fs
        if not fs.exists(NR_KDAMONDS):
            return ("the kernel has no DAMON sysfs interface "
                    "(CONFIG_DAMON_SYSFS, CONFIG_DAMON_VADDR)")
        release = kernel_release(fs)
        if release is not None and release < MIN_KERNEL:
            return (f"DAMON on Linux {release[0]}.{release[1]} cannot report hot regions per "
                    "process (schemes tried_regions and target filters need Linux >= 6.3)")
        if not ctx.topology.targets:
            return "no slower memory tier to sample (one tier)"
        if not os.access(fs.path(NR_KDAMONDS), os.W_OK):
            return f"writing {ADMIN} needs root"
        return damon_in_use(fs)

    # --- lifecycle ------------------------------------------------------------

    def open(self) -> None:
        self.session.claim()
        try:
            self.sysfs.write_context(model.Context("vaddr", self.attrs))
            pids = self._scope_pids()
            if pids:
                self._write_targets(pids)
                self._turn_on()
        except SamplerUnavailableError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise SamplerUnavailableError(self.session.why("setting up DAMON", exc)) from None

    def interrupt(self) -> None:
        """A round blocked in the tried-regions write: turning the kdamond off releases it."""
        self._turn_off()

    def close(self) -> None:
        """Turn the kdamond off and restore nr_kdamonds (idempotent)."""
        if self.session.claimed:
            self._turn_off()
        self.session.release()
        self._targets = ()

    def extra_stats(self) -> dict[str, int]:
        return {"targets": len(self._targets), "kdamond_on": int(self._running),
                "quiet": int(self._quiet), "sysfs_busy": self.sysfs.busy_retries}

    def deliver(self, result: DamonRound) -> None:
        self.push(result.hot)
        self.push_cold(result.cold)

    # --- one round ------------------------------------------------------------

    def run_round(self) -> int:
        """One synchronous round (collect, then push); returns the (promotion) candidates
        offered."""
        result = self.collect()
        self.push_cold(result.cold)
        return self.push(result.hot)

    def collect(self) -> DamonRound:
        """Refresh targets, read DAMON's hot (and cold) regions, turn them into page
        candidates."""
        self.counters["rounds"] += 1
        if self.stopping:
            return DamonRound()
        self._sync_targets(self._scope_pids())
        if self.stopping or not self._running or not self._targets:
            return DamonRound()
        try:
            self.sysfs.command("update_schemes_tried_regions")
        except OSError as exc:
            if exc.errno == errno.EINVAL and not self.sysfs.is_on():
                # It stopped since the state was read (the next round restarts it).
                log.info("damon sampler: the kdamond stopped during the round")
            else:
                self._count_error("update_schemes_tried_regions", exc)
            return DamonRound()
        room = self._room_needed() if self.cold is not None else 0
        chosen: list[tuple[Region, int]] = []
        cold: list[tuple[Region, int]] = []
        n = len(self._targets)
        for idx, pid in enumerate(self._targets):
            regions = self.sysfs.tried_regions(idx, self._count_error)
            self.counters["regions_seen"] += len(regions)
            cold_regions = self._cold_regions(model.cold_scheme_index(n, idx), room)
            if self._settling.get(pid, 0) > 0:
                # Warming up, or its schemes may still report the regions of the pid
                # that held this target index before a commit.
                self._settling[pid] -= 1
                self._history.pop(pid, None)
                continue
            hot = sorted(model.aligned(r, self.page_size) for r in regions
                         if r.nr_accesses >= self.cfg.hot_min_accesses and r.end > r.start)
            if cold_regions:
                cold.extend((r, pid) for r in self._not_hot(pid, cold_regions, hot))
            chosen.extend((r, pid) for r in self._confirm(pid, self._dense(hot)))
        self._history = {p: h for p, h in self._history.items() if p in self._targets}
        chosen.sort(key=lambda rp: (-rp[0].nr_accesses, -rp[0].age, rp[1], rp[0].start))
        cpus: dict[int, int | None] = {}
        offers = self._expand(chosen, cpus)
        cold.sort(key=lambda rp: (-rp[0].age, rp[1], rp[0].start))
        cold_offers = self._expand_cold(cold, room, cpus)
        # Room needed keeps DAMON at its configured pace: in quiet mode the kernel rescales
        # region ages to the slowed aggregation, and cold regions would show up late.
        self._pace(bool(offers) or bool(cold_offers) or room > 0)
        return DamonRound(offers, cold_offers)

    def _dense(self, hot: list[Region]) -> list[Region]:
        """The hot regions whose access count says at least ``min_density`` of their pages
        are hot.  DAMON samples one random page of a region per sampling interval, so
        nr_accesses / (aggregation / sampling interval) estimates the share of the region's
        pages that were accessed: a region where 1 page in 16 is hot counts about 1 in 16,
        and offering all of its pages would promote 15 cold ones for each hot one.  The
        pages of the others are counted in ``pages_sparse``."""
        most = max(1, self.cfg.aggregate_interval_ms // self.cfg.sample_interval_ms)
        need = max(self.cfg.hot_min_accesses, math.ceil(self.cfg.min_density * most))
        dense = [r for r in hot if r.nr_accesses >= need]
        if len(dense) != len(hot):
            self.counters["pages_sparse"] += sum(
                r.end - r.start for r in hot if r.nr_accesses < need) // self.page_size
        return dense

    def _confirm(self, pid: int, hot: list[Region]) -> list[Region]:
        """The parts of this round's hot regions that were also hot in the previous
        ``confirm_rounds - 1`` rounds.

        DAMON's region boundaries are adaptive: when a hot region's count dips, it can
        merge with its cold neighbour, and for an aggregation or two the merged region
        reports accesses over both — one snapshot then offers a whole cold neighbour.
        (A region's age would be DAMON's own persistence signal, but when the counts of
        hot regions fluctuate, as under TCG, it resets every aggregation.)"""
        history = self._history.setdefault(pid, deque(maxlen=self.confirm_rounds - 1))
        confirmed = hot
        if len(history) < self.confirm_rounds - 1:
            confirmed = []
        for ranges in history:
            confirmed = model.intersect(confirmed, ranges)
        pages = sum(r.end - r.start for r in hot) // self.page_size
        kept = sum(r.end - r.start for r in confirmed) // self.page_size
        self.counters["pages_unconfirmed"] += pages - kept
        if self.confirm_rounds > 1:
            history.append([(r.start, r.end) for r in hot])
        return confirmed

    def _expand(self, chosen: list[tuple[Region, int]],
                cpus: dict[int, int | None]) -> list[Offer]:
        """Pages of the chosen (page-aligned) regions within budget, but for those whose
        probe finds nothing on a slow node."""
        ps = self.page_size
        budget = self.max_pages_per_round
        per_pid: dict[int, tuple[array[int], array[int]]] = {}
        failed: set[int] = set()
        for region, pid in chosen:
            if pid in failed:
                continue
            start = region.start
            pages = (region.end - start) // ps
            on_fast = self._on_fast_tier(pid, start, pages)
            if on_fast is None:
                failed.add(pid)
                per_pid.pop(pid, None)
                continue
            if on_fast:
                self.counters["pages_skipped_on_fast"] += pages
                continue
            take = min(pages, budget)
            self.counters["pages_over_budget"] += pages - take
            if take <= 0:
                continue
            budget -= take
            self.counters["hot_regions"] += 1
            addrs, weights = per_pid.setdefault(pid, (array("Q"), array("I")))
            addrs.extend(array("Q", range(start, start + take * ps, ps)))
            weights.extend(array("I", [min(region.nr_accesses, model.UINT_MAX)]) * take)
        return self._offers(per_pid, cpus)

    def _offers(self, per_pid: dict[int, tuple[array[int], array[int]]],
                cpus: dict[int, int | None]) -> list[Offer]:
        """One offer per pid, into the queue of the CPU it last ran on (looked up once
        a round: ``cpus``), the node left to the router; a pid that exited offers
        nothing."""
        offers = []
        for pid, (addrs, weights) in per_pid.items():
            if pid not in cpus:
                cpus[pid] = last_cpu(self.fs, pid)
            cpu = cpus[pid]
            if cpu is None:
                self._pid_gone(pid)
                continue
            offers.append(Offer(pid, cpu, addrs, array("i", [-1]) * len(addrs), weights))
        return offers

    # --- cold regions (demotion) ----------------------------------------------------

    def _room_needed(self) -> int:
        """``ctx.room_needed()`` (bytes), 0 if it fails (counted)."""
        try:
            return max(0, int(self.ctx.room_needed()))
        except Exception as exc:  # the round's hot pages still go out
            self._count_error("room_needed", exc)
            return 0

    def _cold_regions(self, scheme: int, room: int) -> list[Region]:
        """The tried regions of a cold scheme, all counted in ``cold_regions``; read only
        while promotion needs room (else [])."""
        if self.cold is None:
            return []
        if room <= 0:
            self.counters["cold_regions"] += self.sysfs.nr_tried_regions(scheme)
            return []
        regions = self.sysfs.tried_regions(scheme, self._count_error)
        self.counters["cold_regions"] += len(regions)
        return regions

    def _not_hot(self, pid: int, regions: list[Region], hot: list[Region]) -> list[Region]:
        """The whole pages of cold ``regions`` that are in no region hot this round (nor
        in the rounds the confirmation remembers): DAMON's adaptive regions can put a
        page in a cold region of one scheme and a hot one of another."""
        ranges = [(r.start, r.end) for r in hot]
        for past in self._history.get(pid, ()):
            ranges.extend(past)
        whole = sorted(p for p in (model.inner(r, self.page_size) for r in regions)
                       if p is not None and p.nr_accesses == 0)
        return model.subtract(whole, model.merged(ranges))

    def _cold_budget(self, room: int) -> int:
        """Cold pages a round offers: twice the pages of room needed (the router keeps
        only those on a fast node), at least a worker batch, at most
        ``max_cold_pages_per_round``."""
        return min(self.max_cold_pages_per_round,
                   max(self.min_cold_pages, room // self.page_size * 2))

    def _expand_cold(self, cold: list[tuple[Region, int]], room: int,
                     cpus: dict[int, int | None]) -> list[Offer]:
        """The present pages on a fast node of the cold (whole-page) regions, oldest first,
        within the round's cold budget, weighted by the region's age; nothing while no room
        is needed.  A cold region often spans pages never touched (DAMON's regions cover
        the mapped ranges, populated or not) or already on a slower node:
        /proc/PID/pagemap gives each present page's PFN, whose memory block gives its
        node, so the budget goes to pages that can be demoted."""
        if room <= 0 or not cold:
            return []
        ps = self.page_size
        budget = self._cold_budget(room)
        per_pid: dict[int, tuple[array[int], array[int]]] = {}
        maps: dict[int, int | None] = {}
        try:
            for region, pid in cold:
                if budget <= 0:
                    self.counters["cold_pages_over_budget"] += (region.end - region.start) // ps
                    continue
                fd = maps.get(pid, -1)
                if fd == -1:
                    fd = maps[pid] = self._open_pagemap(pid)
                if fd is None:
                    continue
                present = self._present_pages(fd, region.start, region.end, budget)
                budget -= len(present)
                addrs, weights = per_pid.setdefault(pid, (array("Q"), array("I")))
                addrs.extend(present)
                weights.extend(array("I", [min(region.age, model.COLD_WEIGHT_MAX)])
                               * len(present))
        finally:
            for fd in maps.values():
                if fd is not None:
                    os.close(fd)
        return self._offers(per_pid, cpus)

    def _open_pagemap(self, pid: int) -> int | None:
        try:
            return self.fs.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self._pid_gone(pid)
            else:
                self._count_error(f"/proc/{pid}/pagemap", exc)
            return None

    def _present_pages(self, fd: int, start: int, end: int, budget: int) -> array[int]:
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
                got = shim.pread_words(fd, addr // ps, entries)
            except OSError as exc:
                self._count_error("pagemap read", exc)
                break
            pfns = array("Q", bytes(8 * got))
            if len(self._block_table) and any(self._fast_mask):
                # The PFN of each present page on a fast node, 0 elsewhere (in C).
                shim.idle_track(entries[:got], addr // ps, self._pfn_block_shift,
                                self._block_table, self._fast_mask, 1, None, pfns,
                                bytearray(got), array("i", bytes(4 * got)), array("Q", [0, 0]))
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

    def _on_fast_tier(self, pid: int, start: int, pages: int) -> bool | None:
        """Does a probe of the region find none of its pages on a slow node?  Then it is
        skipped this round: a hot set that already sits on the fast tier (what it is once
        promoted) is not offered again, and costs a query of 1/PROBE_STRIDE of its pages
        per round.  The probe asks 1 page in ``stride`` (PROBE_STRIDE, less in a region
        of fewer than PROBE_STRIDE * PROBE_MIN_SAMPLES pages), starting one page further
        every round, so every page is looked at within ``stride`` rounds (a page demoted
        back is found by then).  None: the pid cannot be queried (counted)."""
        ps = self.page_size
        stride = max(1, min(PROBE_STRIDE, pages // PROBE_MIN_SAMPLES))
        off = self.counters["rounds"] % stride
        sample = array("Q", range(start + off * ps, start + pages * ps, stride * ps))
        try:
            status = self.query_nodes(pid, sample)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                self._pid_gone(pid)
            else:
                self._count_error(f"move_pages query of pid {pid}", exc)
            return None
        self.counters["pages_probed"] += len(sample)
        counts = shim.count_statuses(status)
        return not any(counts.by_node.get(node, 0) for node in self.slow)

    # --- quiet mode -------------------------------------------------------------

    def _quiet_factor(self) -> int:
        aggr = self.cfg.aggregate_interval_ms
        return max(1, min(self.cfg.quiet_slowdown, QUIET_MAX_AGGR_MS // aggr))

    def _pace(self, offered: bool) -> None:
        """Enter quiet mode after enough rounds without offers (hot pages to promote, or
        cold pages to demote while promotion needs room); leave it on an offer."""
        if offered:
            self._rounds_without_offers = 0
            if self._quiet:
                self._set_quiet(False)
            return
        self._rounds_without_offers += 1
        after = self.cfg.quiet_after_rounds
        if (not self._quiet and after and self._rounds_without_offers >= after
                and self._quiet_factor() > 1):
            self._set_quiet(True)

    def _set_quiet(self, quiet: bool) -> None:
        if self.stopping or not self._running:
            return
        try:
            self.sysfs.write_intervals(self.attrs.intervals.slowed(
                self._quiet_factor() if quiet else 1))
            self.sysfs.command("commit")
        except OSError as exc:
            self._count_error("committing the monitoring intervals", exc)
            return
        self._quiet = quiet
        self.counters["quiet_entered" if quiet else "quiet_left"] += 1
        log.info("damon sampler: %s", f"quiet after {self._rounds_without_offers} rounds with "
                 f"nothing to promote or demote: intervals x{self._quiet_factor()}" if quiet
                 else "pages to promote or demote: intervals back to the configured ones")

    def _wake(self) -> None:
        """Before a commit or start for new targets: back to the configured intervals
        (written, not committed: the caller's commit or "on" applies them)."""
        self._rounds_without_offers = 0
        if self._quiet:
            self.sysfs.write_intervals(self.attrs.intervals)
            self._quiet = False

    # --- targets --------------------------------------------------------------

    def _scope_pids(self) -> list[int]:
        """Every process in scope while they fit in ``max_targets`` targets; else those
        with the most memory on slow nodes and a window rotating over the others
        (:class:`~kmigratedd.ranking.Watchlist`)."""
        pids = self.watchlist.choose()
        n = len(self.ranking)
        if n > self.max_targets and not self._warned_over_limit:
            w = self.watchlist
            log.info("damon sampler: %d processes in scope: watching the %d with the most "
                     "memory on slow nodes and %d more in turn (each one within %d rounds)",
                     n, w.limit - w.window, w.window, w.period_rounds(n))
            self._warned_over_limit = True
        return pids

    def _write_targets(self, pids: Sequence[int]) -> None:
        """Targets and one hot-region scheme per target (scheme i keeps target i only),
        with demotion on then one cold-region scheme per target (scheme n + i)."""
        self.sysfs.write_targets(model.hot_regions_context(
            self.attrs, pids, self.cfg.hot_min_accesses, self.cold))
        self._targets = tuple(pids)

    def _sync_targets(self, pids: list[int]) -> None:
        running = self.sysfs.is_on()
        if self._running and not running:
            self.counters["kdamond_stops"] += 1
            log.info("kdamond stopped on its own (its targets exited, or a commit named a "
                     "pid that had exited); restarting it with the live pids")
        self._running = running
        live = set(pids)
        want = self._placed(pids, live)
        for pid in self._targets:
            if pid not in live and not self.fs.exists(f"/proc/{pid}/stat"):
                self._pid_gone(pid)
        self._gone_counted &= live
        if running and tuple(want) == self._targets:
            return
        if not want:
            self._turn_off()
            self._targets = ()
            return
        before = self._targets
        try:
            # Quiet mode ends for a process new to the targets, but for one that only
            # takes its turn in the rotating window (kmigratedd/ranking.py): the window
            # moves every few rounds and would keep DAMON at its configured pace.
            new = set(want) - set(before)
            if (not running or len(self.ranking) <= self.max_targets
                    or not new.isdisjoint(self.watchlist.top)):
                self._wake()
            if running and len(want) == len(before):
                # The schemes depend on the number of targets only: the pids suffice.
                self._write_pids(want, before)
            else:
                self._write_targets(want)
            if running and not self.stopping:
                self.sysfs.command("commit")
                self.counters["commits"] += 1
                # DAMON commits targets by index and keeps a target's regions when the
                # committed one has none: a pid now at an index another pid held sees
                # that pid's regions until vaddr re-fits them (update_us); a new index
                # has no regions until then.
                self._settling = {p: n for p, n in self._settling.items() if p in live}
                for i, pid in enumerate(want):
                    if i >= len(before) or before[i] != pid:
                        self._settling[pid] = self.settle_rounds
                if not self.sysfs.is_on():
                    # The commit named a pid that exited meanwhile: the kdamond stopped.
                    self.counters["kdamond_stops"] += 1
                    self._running = False
                    self._restart()
            else:
                self._turn_on()
        except OSError as exc:
            self._count_error("updating DAMON targets", exc)

    def _placed(self, pids: list[int], live: set[int]) -> list[int]:
        """The targets for ``pids``: DAMON commits targets by index and keeps an index's
        regions, so a survivor keeps its index, a new pid takes the index of one that
        left (else goes last), and the last targets fill the indexes left empty."""
        watched = set(self._targets) & live
        new = iter([p for p in pids if p not in watched])
        slots: list[int | None] = [p if p in live else next(new, None) for p in self._targets]
        slots.extend(new)
        while None in slots:
            last = slots.pop()
            if last is not None:
                slots[slots.index(None)] = last
        return [p for p in slots if p is not None]

    def _write_pids(self, want: Sequence[int], before: Sequence[int]) -> None:
        """Only the pids of the targets that changed (as many targets as before)."""
        for i, (old, new) in enumerate(zip(before, want)):
            if old != new:
                self.sysfs.write(f"{self.sysfs.context}/targets/{i}/pid_target", str(new))
        self._targets = tuple(want)

    def _restart(self) -> None:
        pids = self._scope_pids()
        if pids:
            self._wake()
            self._write_targets(pids)
            self._turn_on()
        else:
            self._targets = ()

    def _turn_on(self) -> None:
        """Write "on".  A pid that exited since the scope was read makes it fail with
        EINVAL: re-read the scope and retry (a few times, pids may keep exiting)."""
        for attempt in range(3):
            if self.stopping:
                return
            try:
                self.sysfs.command("on")
                break
            except OSError as exc:
                if exc.errno != errno.EINVAL or attempt == 2:
                    raise
            pids = [p for p in self._scope_pids() if p in self._targets]
            if not pids:
                self._targets = ()
                return
            self._write_targets(pids)
        self._running = True
        self._settling = dict.fromkeys(self._targets, self.warmup_rounds)
        self.counters["kdamond_starts"] += 1

    def _turn_off(self) -> None:
        self.session.off(self.sysfs, known_on=self._running)
        self._running = False

    def _pid_gone(self, pid: int) -> None:
        if pid in self._gone_counted:
            return
        self._gone_counted.add(pid)
        self.counters["pid_gone"] += 1
        log.info("damon sampler: pid %d exited", pid)

    def _count_error(self, what: str, exc: BaseException) -> None:
        self.counters["errors"] += 1
        log.warning("damon sampler: %s: %s", what, exc)
