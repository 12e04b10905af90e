"""DAMON sampler: the kernel's Data Access MONitor finds hot regions, we offer their pages.

DAMON runs in a kernel thread (``kdamond``) and, with ``vaddr`` operations, watches the
address space of each target process at a bounded cost: it keeps between
``min_regions`` and ``max_regions`` regions per process, checks one random page per
region every sampling interval (the PTE accessed bit) and counts, per aggregation
interval, how many samples found the region accessed (``nr_accesses``).  This sampler
only *reads* that result; DAMOS ``migrate_hot`` is paddr-only on 6.12 and we do not use
any DAMOS action: the node workers move pages.

Layout written under /sys/kernel/mm/damon/admin/kdamonds (Documentation/admin-guide/
mm/damon/usage.rst), all through :class:`~kmigratedd.kernelfs.KernelFs`:

- one kdamond, one context (6.12 refuses ``nr_contexts`` > 1 with EINVAL), ``vaddr``,
  ``monitoring_attrs`` from ``sampler.damon`` (intervals in us in sysfs);
- one target per process in scope (``pid_target``; the regions are left empty so vaddr
  fits them to the three big mapped areas itself);
- **one ``stat`` scheme per target**, whose access pattern selects hot regions
  (``nr_accesses >= hot_min_accesses``; every max in sysfs starts at 0, which matches
  nothing, so each is set to the largest value) and whose single ``target`` filter with
  ``matching`` N drops the regions of every other target.  The tried regions the kernel
  reports (``schemes/<s>/tried_regions/<r>/{start,end,nr_accesses,age}``) carry no
  target index on 6.12 — regions of all targets of a context come in one list — so
  this filter is what attributes a region to its pid.  Measured in the tiered VM: with
  one unfiltered scheme, regions of both processes came back mixed; with the filter,
  each scheme held exactly its own process's hot set.

Every ``sampler.interval_ms`` a round, run in a worker thread because the kernel
blocks the ``update_schemes_tried_regions`` write until the kdamond has applied the
schemes once (one aggregation interval plus up to 100 ms of polling; 100-260 ms in
the VM):

1. re-read the scope; when the set of live pids changed, rewrite targets and schemes
   and write ``commit`` (applied while DAMON runs).  Writing ``commit`` or ``on`` with a
   pid that has exited fails: ``on`` with EINVAL, ``commit`` silently — the write
   succeeds and the kdamond stops (measured on 6.12).  The state is read every round
   and a kdamond that stopped (all targets exited, or such a commit) is restarted with
   the live pids; a vanished pid is counted in ``pid_gone``, never raised;
2. ``update_schemes_tried_regions``, read the hot regions of each target;
3. keep the parts that were also hot in the previous round (:data:`CONFIRM_ROUNDS`;
   DAMON's adaptive regions briefly span a hot region's cold neighbour), ignoring the
   first round after the kdamond starts watching a process (:data:`WARMUP_ROUNDS`)
   and, after a commit moved a process to another target index, the rounds until
   vaddr has re-fitted its regions;
4. hottest regions first (``nr_accesses``, then ``age``), expand them into page
   addresses up to :data:`MAX_PAGES_PER_ROUND`, ask the kernel where those pages are
   now (``move_pages`` query form, read-only, in batches of :data:`QUERY_BATCH`), keep
   those on a slow node (the keys of ``topology.targets``) and push them into the
   queue of the CPU the process last ran on, weighted by the region's ``nr_accesses``.

**Quiet mode.**  After ``sampler.damon.quiet_after_rounds`` rounds in a row that found
nothing to promote (say, the hot set already sits on the fast tier), the sampling and
aggregation intervals are multiplied by ``quiet_slowdown`` (the aggregation interval
at most to :data:`QUIET_MAX_AGGR_MS`) and committed: the kdamond's CPU, most of the
idle cost, falls by about that factor (tests/vm/guest/test_sampler_damon.py prints it:
5.5% → 0.49% of a CPU in the TCG guest with the default 10).  DAMON still sees the
same hot regions, with as many samples per aggregation; the first round that finds
pages to promote, or a change of the processes watched, commits the configured
intervals again.

``stop()`` turns the kdamond off and writes ``nr_kdamonds`` back to the value found at
start.  Writing ``nr_kdamonds`` rebuilds every kdamond directory, so a kdamond that is
``on`` belongs to someone else and makes the probe fail instead.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any

from .. import shim
from ..errors import SamplerUnavailableError
from ..kernelfs import KernelFs
from ..procfs import last_cpu
from .base import SamplerContext

log = logging.getLogger("kmigratedd.sampler")

ADMIN = "/sys/kernel/mm/damon/admin"
KDAMONDS = f"{ADMIN}/kdamonds"
NR_KDAMONDS = f"{KDAMONDS}/nr_kdamonds"
KDAMOND = f"{KDAMONDS}/0"
STATE = f"{KDAMOND}/state"
CONTEXT = f"{KDAMOND}/contexts/0"
OSRELEASE = "/proc/sys/kernel/osrelease"
# DAMON's own users that start a kdamond exclusively (damon_start(..., true)): while one
# runs, turning a sysfs kdamond on fails with EBUSY.
DAMON_MODULES = ("damon_reclaim", "damon_lru_sort")

# schemes/<s>/tried_regions and the "target" DAMOS filter (damon_target_idx).
MIN_KERNEL = (6, 3)
# Largest values the access pattern takes: sz is an unsigned long, nr_accesses and age
# unsigned ints (struct damos_access_pattern).
ULONG_MAX = (1 << 64) - 1
UINT_MAX = (1 << 32) - 1

# Pages expanded from hot regions per round, across all processes (hottest regions
# first; the rest is counted in pages_over_budget).  256 MiB of 4 KiB pages.
MAX_PAGES_PER_ROUND = 1 << 16
# A page is offered when its region was hot in this many consecutive rounds (see
# DamonSampler._confirm).
CONFIRM_ROUNDS = 2
# Rounds whose regions are ignored after the kdamond starts watching a process: its
# first regions are a few coarse slices of the whole address space (min_regions of the
# three big mapped areas) that DAMON splits and merges into shape over the next
# aggregations.  Measured in the VM: the first two snapshots after "on" still held a
# region over the cold set's tail, the gap and the hot set's head.
WARMUP_ROUNDS = 1
# Pages per move_pages(2) query call.
QUERY_BATCH = 1 << 14
# Hot regions of at least this many pages are probed (1 page in PROBE_STRIDE) before
# they are queried page by page; see DamonSampler._on_fast_tier.
PROBE_MIN_PAGES = 256
PROBE_STRIDE = 32
# vaddr operations' update interval floor (see _write_context).
UPDATE_US = 1_000_000
# Quiet mode never makes the aggregation interval longer than this (a round waits for
# one aggregation in the kernel; stop() waits for a round).
QUIET_MAX_AGGR_MS = 10_000
# Processes watched at most: each costs DAMON a target and a scheme, and each scheme
# is checked against every region of every target each aggregation interval.
MAX_TARGETS = 64

QueryNodes = Callable[[int, Any], Any]


@dataclass(frozen=True, slots=True, order=True)
class Region:
    """One DAMON tried region: [start, end) with its access count and age."""

    start: int
    end: int
    nr_accesses: int
    age: int


@dataclass(slots=True)
class Offer:
    """Candidates of one process for one round, as flat arrays."""

    pid: int
    cpu: int
    addrs: array[int]  # 'Q'
    nodes: array[int]  # 'i'
    weights: array[int]  # 'I'


def aligned(r: Region, page_size: int) -> Region:
    """``r`` widened to whole pages."""
    return Region(r.start - r.start % page_size, -(-r.end // page_size) * page_size,
                  r.nr_accesses, r.age)


def intersect(regions: list[Region], ranges: Sequence[tuple[int, int]]) -> list[Region]:
    """The parts of ``regions`` inside ``ranges`` (both sorted, neither overlapping
    itself), keeping each region's counts."""
    out: list[Region] = []
    j = 0
    for r in regions:
        while j < len(ranges) and ranges[j][1] <= r.start:
            j += 1
        k = j
        while k < len(ranges) and ranges[k][0] < r.end:
            lo, hi = max(r.start, ranges[k][0]), min(r.end, ranges[k][1])
            if lo < hi:
                out.append(Region(lo, hi, r.nr_accesses, r.age))
            k += 1
    return out


def kernel_release(fs: KernelFs) -> tuple[int, int] | None:
    text = fs.read_optional(OSRELEASE)
    m = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def damon_in_use(fs: KernelFs) -> str | None:
    """Who else is running DAMON, or None."""
    for name in fs.listdir(KDAMONDS, r"\d+"):
        if (fs.read_optional(f"{KDAMONDS}/{name}/state") or "").strip() == "on":
            pid = (fs.read_optional(f"{KDAMONDS}/{name}/pid") or "?").strip()
            return (f"DAMON is already in use by another tool (kdamond {name} is on, pid {pid}); "
                    f"stop it first (echo off > {KDAMONDS}/{name}/state)")
    for mod in DAMON_MODULES:
        pid_text = fs.read_optional(f"/sys/module/{mod}/parameters/kdamond_pid")
        if pid_text is not None and pid_text.strip().lstrip("-").isdigit() \
                and int(pid_text) > 0:
            return (f"DAMON is in use by {mod} (kdamond pid {pid_text.strip()}); disable it "
                    f"first (echo N > /sys/module/{mod}/parameters/enabled)")
    return None


class DamonSampler:
    """Hot pages of the processes in scope, from DAMON vaddr monitoring.

    ``stats()``: ``rounds``; ``regions_seen`` (tried regions DAMON reported: its hot
    regions); ``hot_regions`` (confirmed hot region parts expanded into pages, within
    the page budget); ``pages_unconfirmed`` (pages of hot regions not hot the round
    before); ``pages_queried`` (pages whose node was asked); ``pages_not_on_slow_node``
    (on a fast node, not present or unmapped: dropped); ``candidates_offered``;
    ``pages_over_budget`` (pages of hot regions left out by :data:`MAX_PAGES_PER_ROUND`);
    ``pid_gone`` (watched processes that exited); ``errors`` (sysfs or query failures,
    logged); ``kdamond_starts``, ``kdamond_stops`` (stopped by itself: every target
    exited, or a commit named an exited pid), ``commits`` (of new targets);
    ``quiet_entered`` and ``quiet_left`` (quiet mode, see the module docstring); gauges
    ``targets``, ``kdamond_on`` and ``quiet``.

    ``query_nodes`` (pid, addrs) -> status array is injectable for tests; the real one is
    :func:`kmigratedd.shim.query_nodes`.
    """

    name = "damon"

    def __init__(self, ctx: SamplerContext, *, query_nodes: QueryNodes = shim.query_nodes,
                 max_pages_per_round: int = MAX_PAGES_PER_ROUND,
                 max_targets: int = MAX_TARGETS, confirm_rounds: int = CONFIRM_ROUNDS,
                 warmup_rounds: int = WARMUP_ROUNDS) -> None:
        self.ctx = ctx
        self.fs = ctx.fs
        self.cfg = ctx.config.sampler.damon
        self.query_nodes = query_nodes
        self.max_pages_per_round = max_pages_per_round
        self.max_targets = max_targets
        self.confirm_rounds = max(1, confirm_rounds)
        self.warmup_rounds = max(0, warmup_rounds)
        self.page_size = ctx.topology.page_size or shim.PAGE_SIZE
        self.slow = frozenset(ctx.topology.targets)
        self.interval_s = ctx.config.sampler.interval_ms / 1000
        self.stop_timeout_s = 10 + 2 * self.interval_s
        self.update_us = max(self.cfg.aggregate_interval_ms * 1000, UPDATE_US)
        # Rounds after a commit until vaddr has fitted the regions of a target that is
        # new or moved to another index, and they have taken shape.
        self.settle_rounds = (1 - (-self.update_us // (ctx.config.sampler.interval_ms * 1000))
                              + self.warmup_rounds)
        self._found_nr_kdamonds: int | None = None
        self._targets: tuple[int, ...] = ()  # pids as written; scheme i watches target i
        self._running = False
        self._gone_counted: set[int] = set()
        # pid -> hot ranges of its last confirm_rounds - 1 rounds.
        self._history: dict[int, deque[list[tuple[int, int]]]] = {}
        # pid -> rounds whose regions are still ignored: warm-up after the kdamond
        # started, or after a commit added the pid or moved it to another index.
        self._settling: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._warned_over_limit = False
        self._closing = False
        self.c = dict.fromkeys(
            ("rounds", "regions_seen", "hot_regions", "candidates_offered", "pages_queried",
             "pages_not_on_slow_node", "pages_unconfirmed", "pages_over_budget",
             "pages_probed", "pages_skipped_on_fast", "pid_gone", "errors", "kdamond_starts",
             "kdamond_stops", "commits", "quiet_entered", "quiet_left"), 0)
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

    async def start(self) -> None:
        fs = self.fs
        self._closing = False
        self._found_nr_kdamonds = fs.read_int(NR_KDAMONDS)
        try:
            fs.write(NR_KDAMONDS, "1")
        except OSError as exc:
            self._found_nr_kdamonds = None
            raise SamplerUnavailableError(self._why(NR_KDAMONDS, exc)) from None
        try:
            self._write_context()
            pids = self._scope_pids()
            if pids:
                self._write_targets(pids)
                self._turn_on()
        except SamplerUnavailableError:
            self._release()
            raise
        except OSError as exc:
            self._release()
            raise SamplerUnavailableError(self._why("setting up DAMON", exc)) from None
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name=f"sampler-{self.name}")

    def _why(self, what: str, exc: OSError) -> str:
        if exc.errno == errno.EBUSY:
            return damon_in_use(self.fs) or f"{what}: DAMON is in use by another tool (EBUSY)"
        return f"{what}: {exc.strerror or exc}"

    async def stop(self) -> None:
        self._closing = True  # a round still running turns nothing on any more
        if self._task is not None:
            assert self._stopping is not None
            self._stopping.set()
            # A round may sit in the blocking tried-regions write (one aggregation
            # interval, much longer on a starved machine): let it finish; if it does
            # not, turning the kdamond off releases that write.
            timeout = self.stop_timeout_s
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning("damon sampler round still running after %.0f s; turning the "
                            "kdamond off under it", timeout)
                await asyncio.to_thread(self._turn_off)
                try:
                    await asyncio.wait_for(self._task, 10)
                except (TimeoutError, asyncio.CancelledError):
                    pass
            except Exception:  # the loop logs its own failures
                pass
            self._task = None
        self._release()

    def _release(self) -> None:
        """Turn the kdamond off and restore nr_kdamonds (idempotent)."""
        if self._found_nr_kdamonds is None:
            return
        self._turn_off()
        try:
            self.fs.write(NR_KDAMONDS, str(self._found_nr_kdamonds))
        except OSError as exc:
            self.c["errors"] += 1
            log.warning("restoring %s to %d failed: %s", NR_KDAMONDS, self._found_nr_kdamonds,
                        exc)
        self._found_nr_kdamonds = None
        self._targets = ()

    async def _loop(self) -> None:
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            began = loop.time()
            try:
                offers = await asyncio.to_thread(self.collect)
                self.push(offers)
            except Exception:  # a sampler never dies of one bad round
                self.c["errors"] += 1
                log.exception("damon sampler round failed")
            wait = max(0.0, self.interval_s - (loop.time() - began))
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
            except TimeoutError:
                pass

    def stats(self) -> dict[str, int]:
        return {**self.c, "targets": len(self._targets), "kdamond_on": int(self._running),
                "quiet": int(self._quiet)}

    # --- one round ------------------------------------------------------------

    def run_round(self) -> int:
        """One synchronous round (collect, then push); returns candidates offered."""
        return self.push(self.collect())

    def collect(self) -> list[Offer]:
        """Refresh targets, read DAMON's hot regions, turn them into page candidates.

        Runs in a worker thread: it blocks on sysfs and move_pages, never touches the
        queues (``push`` does, on the event loop)."""
        self.c["rounds"] += 1
        if self._closing:
            return []
        self._sync_targets(self._scope_pids())
        if self._closing or not self._running or not self._targets:
            return []
        try:
            self.fs.write(STATE, "update_schemes_tried_regions")
        except OSError as exc:
            if exc.errno == errno.EINVAL and \
                    (self.fs.read_optional(STATE) or "").strip() != "on":
                # It stopped since the state was read (the next round restarts it).
                log.info("damon sampler: the kdamond stopped during the round")
            else:
                self._count_error("update_schemes_tried_regions", exc)
            return []
        chosen: list[tuple[Region, int]] = []
        for idx, pid in enumerate(self._targets):
            regions = self._tried_regions(idx)
            self.c["regions_seen"] += len(regions)
            if self._settling.get(pid, 0) > 0:
                # Warming up, or its scheme may still report the regions of the pid
                # that held this target index before a commit.
                self._settling[pid] -= 1
                self._history.pop(pid, None)
                continue
            hot = sorted(aligned(r, self.page_size) for r in regions
                         if r.nr_accesses >= self.cfg.hot_min_accesses and r.end > r.start)
            chosen.extend((r, pid) for r in self._confirm(pid, hot))
        self._history = {p: h for p, h in self._history.items() if p in self._targets}
        chosen.sort(key=lambda rp: (-rp[0].nr_accesses, -rp[0].age, rp[1], rp[0].start))
        offers = self._expand(chosen)
        self._pace(bool(offers))
        return offers

    # --- quiet mode -------------------------------------------------------------

    def _quiet_factor(self) -> int:
        aggr = self.cfg.aggregate_interval_ms
        return max(1, min(self.cfg.quiet_slowdown, QUIET_MAX_AGGR_MS // aggr))

    def _pace(self, offered: bool) -> None:
        """Enter quiet mode after enough rounds without offers; leave it on an offer."""
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
        if self._closing or not self._running:
            return
        try:
            self._write_intervals(self._quiet_factor() if quiet else 1)
            self.fs.write(STATE, "commit")
        except OSError as exc:
            self._count_error("committing the monitoring intervals", exc)
            return
        self._quiet = quiet
        self.c["quiet_entered" if quiet else "quiet_left"] += 1
        log.info("damon sampler: %s", f"quiet after {self._rounds_without_offers} rounds with "
                 f"nothing to promote: intervals x{self._quiet_factor()}" if quiet else
                 "pages to promote: intervals back to the configured ones")

    def _wake(self) -> None:
        """Before a commit or start for new targets: back to the configured intervals
        (written, not committed: the caller's commit or "on" applies them)."""
        self._rounds_without_offers = 0
        if self._quiet:
            self._write_intervals(1)
            self._quiet = False

    def _confirm(self, pid: int, hot: list[Region]) -> list[Region]:
        """The parts of this round's hot regions that were also hot in the previous
        ``confirm_rounds - 1`` rounds.

        DAMON's region boundaries are adaptive: when a hot region's count dips, it can
        merge with its cold neighbour, and for an aggregation or two the merged region
        reports accesses over both — one snapshot then offers a whole cold neighbour.
        Measured in the tiered VM: 28% of the candidates were cold pages over 11 rounds
        without this, under 1% with two rounds.  (A region's age would be DAMON's own
        persistence signal, but under TCG the counts of hot regions fluctuate enough to
        reset it every aggregation.)"""
        history = self._history.setdefault(pid, deque(maxlen=self.confirm_rounds - 1))
        confirmed = hot
        if len(history) < self.confirm_rounds - 1:
            confirmed = []
        for ranges in history:
            confirmed = intersect(confirmed, ranges)
        pages = sum(r.end - r.start for r in hot) // self.page_size
        kept = sum(r.end - r.start for r in confirmed) // self.page_size
        self.c["pages_unconfirmed"] += pages - kept
        if self.confirm_rounds > 1:
            history.append([(r.start, r.end) for r in hot])
        return confirmed

    def push(self, offers: Sequence[Offer]) -> int:
        now = time.monotonic_ns()
        offered = 0
        for o in offers:
            n = len(o.addrs)
            self.ctx.queues.push(o.cpu, array("i", [o.pid]) * n, o.addrs, o.nodes,
                                 array("Q", [now]) * n, o.weights)
            offered += n
        self.c["candidates_offered"] += offered
        return offered

    def _expand(self, chosen: list[tuple[Region, int]]) -> list[Offer]:
        """Pages of the chosen (page-aligned) regions within budget, queried and kept
        if on a slow node."""
        ps = self.page_size
        budget = self.max_pages_per_round
        per_pid: dict[int, tuple[array[int], array[int]]] = {}
        for region, pid in chosen:
            start = region.start
            pages = (region.end - start) // ps
            if pages >= PROBE_MIN_PAGES and self._on_fast_tier(pid, start, pages):
                self.c["pages_skipped_on_fast"] += pages
                continue
            take = min(pages, budget)
            self.c["pages_over_budget"] += pages - take
            if take <= 0:
                continue
            budget -= take
            self.c["hot_regions"] += 1
            addrs, weights = per_pid.setdefault(pid, (array("Q"), array("I")))
            addrs.extend(array("Q", range(start, start + take * ps, ps)))
            weights.extend(array("I", [min(region.nr_accesses, UINT_MAX)]) * take)
        offers = []
        for pid, (addrs, weights) in per_pid.items():
            offer = self._offer(pid, addrs, weights)
            if offer is not None:
                offers.append(offer)
        return offers

    def _on_fast_tier(self, pid: int, start: int, pages: int) -> bool:
        """Does a probe of 1 page in PROBE_STRIDE find no page of this hot region on a
        slow node?  Then the region is skipped this round, not queried page by page: a
        hot set that already sits on the fast tier (what it is once promoted) costs a
        query of 1/PROBE_STRIDE of its pages per round, not of all of them.  The probe
        starts one page further every round, so every page is looked at within
        PROBE_STRIDE rounds (a page demoted back is found by then)."""
        ps = self.page_size
        off = self.c["rounds"] % PROBE_STRIDE
        sample = array("Q", range(start + off * ps, start + pages * ps, PROBE_STRIDE * ps))
        try:
            status = self.query_nodes(pid, sample)
        except OSError:
            return False  # the full query (_offer) counts it
        self.c["pages_probed"] += len(sample)
        counts = shim.count_statuses(status)
        return not any(counts.by_node.get(node, 0) for node in self.slow)

    def _offer(self, pid: int, addrs: array[int], weights: array[int]) -> Offer | None:
        cpu = last_cpu(self.fs, pid)
        if cpu is None:
            self._pid_gone(pid)
            return None
        kept_addrs, kept_nodes, kept_weights = array("Q"), array("i"), array("I")
        for i in range(0, len(addrs), QUERY_BATCH):
            batch = addrs[i:i + QUERY_BATCH]
            try:
                status = self.query_nodes(pid, batch)
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    self._pid_gone(pid)
                else:
                    self._count_error(f"move_pages query of pid {pid}", exc)
                return None
            n = len(batch)
            self.c["pages_queried"] += n
            counts = shim.count_statuses(status)
            on_slow = sum(counts.by_node.get(node, 0) for node in self.slow)
            self.c["pages_not_on_slow_node"] += n - on_slow
            if on_slow == n:
                kept_addrs.extend(batch)
                kept_nodes.extend(status)
                kept_weights.extend(weights[i:i + n])
            elif on_slow:
                # C-level selection (map/compress), no Python loop per page.
                mask = bytes(map(self.slow.__contains__, status))
                kept_addrs.extend(compress(batch, mask))
                kept_nodes.extend(compress(status, mask))
                kept_weights.extend(compress(weights[i:i + n], mask))
        if not kept_addrs:
            return None
        return Offer(pid, cpu, kept_addrs, kept_nodes, kept_weights)

    def _tried_regions(self, scheme: int) -> list[Region]:
        base = f"{CONTEXT}/schemes/{scheme}/tried_regions"
        out = []
        for name in self.fs.listdir(base, r"\d+"):
            d = f"{base}/{name}"
            try:
                out.append(Region(self.fs.read_int(f"{d}/start"), self.fs.read_int(f"{d}/end"),
                                  self.fs.read_int(f"{d}/nr_accesses"),
                                  self.fs.read_int(f"{d}/age")))
            except (OSError, ValueError) as exc:
                self._count_error(f"reading {d}", exc)
        return out

    # --- targets --------------------------------------------------------------

    def _scope_pids(self) -> list[int]:
        pids = list(self.ctx.scope.pids())
        if len(pids) > self.max_targets:
            if not self._warned_over_limit:
                log.warning("damon sampler: %d processes in scope, watching the first %d "
                            "(narrow scope.pids/cgroups/commands)", len(pids), self.max_targets)
                self._warned_over_limit = True
            pids = pids[:self.max_targets]
        return pids

    def _sync_targets(self, pids: list[int]) -> None:
        state = (self.fs.read_optional(STATE) or "").strip()
        running = state == "on"
        if self._running and not running:
            self.c["kdamond_stops"] += 1
            log.info("kdamond stopped on its own (its targets exited, or a commit named a "
                     "pid that had exited); restarting it with the live pids")
        self._running = running
        live = set(pids)
        # Survivors keep their order (DAMON commits targets by index), new pids go last.
        want = [p for p in self._targets if p in live]
        want += [p for p in pids if p not in set(want)]
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
            self._wake()
            self._write_targets(want)
            if running and not self._closing:
                self.fs.write(STATE, "commit")
                self.c["commits"] += 1
                # DAMON commits targets by index and keeps a target's regions when the
                # committed one has none: a pid now at an index another pid held sees
                # that pid's regions until vaddr re-fits them (update_us); a new index
                # has no regions until then.
                self._settling = {p: n for p, n in self._settling.items() if p in live}
                for i, pid in enumerate(want):
                    if i >= len(before) or before[i] != pid:
                        self._settling[pid] = self.settle_rounds
                if (self.fs.read_optional(STATE) or "").strip() != "on":
                    # The commit named a pid that exited meanwhile: the kdamond stopped.
                    self.c["kdamond_stops"] += 1
                    self._running = False
                    self._restart()
            else:
                self._turn_on()
        except OSError as exc:
            self._count_error("updating DAMON targets", exc)

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
            if self._closing:
                return
            try:
                self.fs.write(STATE, "on")
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
        self.c["kdamond_starts"] += 1

    def _turn_off(self) -> None:
        if not self._running and (self.fs.read_optional(STATE) or "").strip() != "on":
            return
        try:
            self.fs.write(STATE, "off")
        except OSError as exc:
            # EPERM: it had stopped by itself meanwhile.
            if exc.errno != errno.EPERM:
                self._count_error("turning the kdamond off", exc)
        self._running = False

    def _pid_gone(self, pid: int) -> None:
        if pid in self._gone_counted:
            return
        self._gone_counted.add(pid)
        self.c["pid_gone"] += 1
        log.info("damon sampler: pid %d exited", pid)

    def _count_error(self, what: str, exc: BaseException) -> None:
        self.c["errors"] += 1
        log.warning("damon sampler: %s: %s", what, exc)

    # --- sysfs layout -----------------------------------------------------------

    def _write_context(self) -> None:
        fs, cfg = self.fs, self.cfg
        fs.write(f"{KDAMOND}/contexts/nr_contexts", "1")
        avail = fs.read_optional(f"{CONTEXT}/avail_operations")
        if avail is not None and "vaddr" not in avail.split():
            raise SamplerUnavailableError("the kernel's DAMON has no vaddr operations "
                                          "(CONFIG_DAMON_VADDR)")
        fs.write(f"{CONTEXT}/operations", "vaddr")
        attrs = f"{CONTEXT}/monitoring_attrs"
        self._write_intervals(1)
        # How often vaddr re-fits its regions to the process's mappings (the kernel's
        # default is 60 s): every second, so new mappings and new targets (which a
        # commit leaves without regions until then) are watched within a second.
        fs.write(f"{attrs}/intervals/update_us", str(self.update_us))
        fs.write(f"{attrs}/nr_regions/min", str(cfg.min_regions))
        fs.write(f"{attrs}/nr_regions/max", str(cfg.max_regions))
        most = cfg.aggregate_interval_ms // cfg.sample_interval_ms
        if cfg.hot_min_accesses > most:
            log.warning("sampler.damon.hot_min_accesses = %d, but DAMON counts at most %d "
                        "accesses per aggregation interval (aggregate/sample): no region "
                        "will be hot", cfg.hot_min_accesses, most)

    def _write_intervals(self, factor: int) -> None:
        intervals = f"{CONTEXT}/monitoring_attrs/intervals"
        self.fs.write(f"{intervals}/sample_us", str(self.cfg.sample_interval_ms * 1000 * factor))
        self.fs.write(f"{intervals}/aggr_us", str(self.cfg.aggregate_interval_ms * 1000 * factor))

    def _write_targets(self, pids: Sequence[int]) -> None:
        """Targets and one hot-region scheme per target (scheme i keeps target i only)."""
        fs = self.fs
        fs.write(f"{CONTEXT}/targets/nr_targets", str(len(pids)))
        for i, pid in enumerate(pids):
            fs.write(f"{CONTEXT}/targets/{i}/pid_target", str(pid))
        fs.write(f"{CONTEXT}/schemes/nr_schemes", str(len(pids)))
        for i in range(len(pids)):
            s = f"{CONTEXT}/schemes/{i}"
            fs.write(f"{s}/action", "stat")
            for key, lo, hi in (("sz", 0, ULONG_MAX),
                                ("nr_accesses", self.cfg.hot_min_accesses, UINT_MAX),
                                ("age", 0, UINT_MAX)):
                fs.write(f"{s}/access_pattern/{key}/min", str(lo))
                fs.write(f"{s}/access_pattern/{key}/max", str(hi))
            fs.write(f"{s}/filters/nr_filters", "1")
            fs.write(f"{s}/filters/0/type", "target")
            fs.write(f"{s}/filters/0/damon_target_idx", str(i))
            # matching N: filter out the regions that do NOT belong to target i.
            fs.write(f"{s}/filters/0/matching", "N")
        self._targets = tuple(pids)
