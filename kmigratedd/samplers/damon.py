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
import logging
import os
from pathlib import Path
from dataclasses import dataclass, field

from .. import shim
from ..damon import model
from ..damon.kdamond import KdamondSession
from ..damon.model import Region
from ..damon.sysfs import ADMIN, MIN_KERNEL, NR_KDAMONDS, damon_in_use, kernel_release
from ..ranking import Ranking
from .base import Offer, SamplerBase, SamplerContext
from .damon_cold import MAX_COLD_PAGES_PER_ROUND, ColdRegions
from .damon_hot import CONFIRM_ROUNDS, MAX_PAGES_PER_ROUND, HotRegions, QueryNodes
from .damon_quiet import QuietPacer
from .damon_targets import MAX_TARGETS, DamonTargets
from .offers import OfferBuilder

log = logging.getLogger("kmigratedd.sampler")

# Rounds whose regions are ignored after the kdamond starts watching a process: its
# first regions are a few coarse slices of the whole address space (min_regions of the
# three big mapped areas) that DAMON splits and merges into shape over the next
# aggregations.
WARMUP_ROUNDS = 1
# vaddr operations' update interval floor: how often vaddr re-fits its regions to the
# process's mappings (the kernel's default is 60 s), so new mappings and new targets
# (which a commit leaves without regions until then) are watched within a second.
UPDATE_US = 1_000_000


@dataclass(slots=True)
class DamonRound:
    """What a round offers: hot pages to promote, cold pages to demote."""

    hot: list[Offer] = field(default_factory=list)
    cold: list[Offer] = field(default_factory=list)



def sampler_owner_path(sysctl_state_file: str | Path) -> Path:
    """The file naming the kdamond the damon sampler (or the start-up sweep) turned on,
    beside the sysctl state files (:func:`~kmigratedd.damon.kdamond.recover`)."""
    p = Path(sysctl_state_file)
    return p.with_name(f"kdamonds-sampler-{p.name}")

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
        # The owner file names the kdamond while it is on: a daemon killed before it could
        # turn it off leaves the file, and the next start turns that kdamond off.
        self.session = KdamondSession(
            ctx.fs, 1, on_error=self._count_error,
            owner_file=sampler_owner_path(ctx.config.sampler.hint_faults.state_file))
        self.sysfs = self.session.kdamonds[0]
        self.cfg = cfg = ctx.config.sampler.damon
        self.query_nodes = query_nodes
        self.page_size = ctx.topology.page_size
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
        self.hot = HotRegions(cfg, page_size=self.page_size, slow=frozenset(ctx.topology.targets),
                              counters=self.counters, query_nodes=query_nodes,
                              confirm_rounds=confirm_rounds,
                              max_pages_per_round=max_pages_per_round, gone=self._pid_gone,
                              count_error=self._count_error)
        self.cold_regions = ColdRegions(ctx.fs, self.sysfs, ctx.topology, self.hot,
                                        min_pages=ctx.config.workers.batch_pages,
                                        max_pages=max_cold_pages_per_round)
        self.quiet = QuietPacer(self.sysfs, self.attrs, cfg, self.counters,
                                live=lambda: not self.stopping and self.targets.running,
                                count_error=self._count_error)
        # Rounds after a commit until vaddr has fitted the regions of a target that is
        # new or moved to another index, and they have taken shape; a window of rotating
        # targets stays long enough for its regions to settle and be confirmed, and a
        # round more.
        settle = (1 - (-self.update_us // (ctx.config.sampler.interval_ms * 1000))
                  + max(0, warmup_rounds))
        ranking = Ranking(ctx.scope, ctx.fs, frozenset(ctx.topology.targets),
                          page_size=self.page_size,
                          per_round=ctx.config.scope.rank_processes_per_round)
        self.targets = DamonTargets(
            ctx.fs, self.session, model.Context("vaddr", self.attrs),
            hot_min_accesses=cfg.hot_min_accesses, cold=self.cold, ranking=ranking,
            max_targets=max_targets, settle_rounds=settle, warmup_rounds=max(0, warmup_rounds),
            dwell=settle + self.hot.confirm_rounds + 1, counters=self.counters,
            stopping=lambda: self.stopping, wake=self.quiet.wake)

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
        with self.session.setting_up("setting up DAMON", self.close):
            self.sysfs.write_context(model.Context("vaddr", self.attrs))
            pids = self.targets.choose()
            if pids:
                self.targets.write(pids)
                self.targets.turn_on()

    def interrupt(self) -> None:
        """A round blocked in the tried-regions write: turning the kdamond off releases it."""
        self.targets.turn_off()

    def close(self) -> None:
        """Turn the kdamond off and restore nr_kdamonds (idempotent)."""
        if self.session.claimed:
            self.targets.turn_off()
        self.session.release()
        self.targets.pids = ()

    def extra_stats(self) -> dict[str, int]:
        return {"targets": len(self.targets.pids), "kdamond_on": int(self.targets.running),
                "quiet": int(self.quiet.quiet), "sysfs_busy": self.sysfs.busy_retries}

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
        t = self.targets
        t.sync(t.choose())
        if self.stopping or not t.running or not t.pids:
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
        n = len(t.pids)
        for idx, pid in enumerate(t.pids):
            regions = self.sysfs.tried_regions(idx, self._count_error)
            self.counters["regions_seen"] += len(regions)
            cold_regions = (self.cold_regions.regions(model.cold_scheme_index(n, idx), room)
                            if self.cold is not None else [])
            if t.settling.get(pid, 0) > 0:
                # Warming up, or its schemes may still report the regions of the pid
                # that held this target index before a commit.
                t.settling[pid] -= 1
                self.hot.history.pop(pid, None)
                continue
            hot = sorted(model.aligned(r, self.page_size) for r in regions
                         if r.nr_accesses >= self.cfg.hot_min_accesses and r.end > r.start)
            if cold_regions:
                cold.extend((r, pid) for r in self.cold_regions.not_hot(pid, cold_regions, hot))
            chosen.extend((r, pid) for r in self.hot.confirm(pid, self.hot.dense(hot)))
        self.hot.keep(t.pids)
        chosen.sort(key=lambda rp: (-rp[0].nr_accesses, -rp[0].age, rp[1], rp[0].start))
        builder = OfferBuilder(self.fs, self._pid_gone)
        offers = builder.offers(self.hot.expand(chosen))
        cold.sort(key=lambda rp: (-rp[0].age, rp[1], rp[0].start))
        cold_offers = builder.offers(self.cold_regions.expand(cold, room))
        # Room needed keeps DAMON at its configured pace: in quiet mode the kernel rescales
        # region ages to the slowed aggregation, and cold regions would show up late.
        self.quiet.pace(bool(offers) or bool(cold_offers) or room > 0)
        return DamonRound(offers, cold_offers)

    def _room_needed(self) -> int:
        """``ctx.room_needed()`` (bytes), 0 if it fails (counted)."""
        try:
            return max(0, int(self.ctx.room_needed()))
        except Exception as exc:  # the round's hot pages still go out
            self._count_error("room_needed", exc)
            return 0

    def _pid_gone(self, pid: int) -> None:
        self.targets.gone(pid)

    def _count_error(self, what: str, exc: BaseException) -> None:
        self.counters["errors"] += 1
        log.warning("damon sampler: %s: %s", what, exc)
