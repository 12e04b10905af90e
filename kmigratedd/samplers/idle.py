"""Idle page tracking sampler: which slow-tier pages of the processes in scope were touched
(and, while promotion needs room, which fast-tier pages were not).

Every round (``sampler.interval_ms``) the sampler walks the processes in scope
and, for each one, the mappings of ``/proc/PID/maps`` it can promote from,
within a scan budget; for each piece of a mapping it

1. reads ``/proc/PID/pagemap`` for the range in one ``pread``;
2. keeps the pages that are present on a slower-tier node (PFN → memory block →
   node: ``topology.block_node_table()``), the head only of a transparent huge
   page, and appends their PFNs to a batch (``shim.idle_track``) — pages on the
   fast tier only in rounds that age them for demotion (below);
3. tests the batch (up to :data:`BATCH_PAGES` pages) against
   ``/sys/kernel/mm/page_idle/bitmap`` (``shim.idle_test_batch``: was the idle
   bit set last round cleared by an access?), in **PFN order** if it is not
   nearly so already; the pages found accessed are marked idle again
   (``shim.idle_mark``) for the next round — those found idle still are, and
   marking them again would only repeat the rmap walk the test just did;
4. folds the result into an aging history per page and collects the hot pages
   (``shim.idle_age``), which it offers to the candidate queues; in rounds that
   age the fast tier, folds the fast-tier pages' results into their idle ages
   (``shim.idle_cold``) and collects the cold ones.

Every per-page step is one C call over the whole piece or batch
(native/kmidle.c); Python handles mappings, budget, state and failures.

A page is **hot** when it was accessed in at least ``sampler.idle.hot_rounds`` of
its last ``sampler.idle.history_rounds`` observations.  Hot pages are pushed into
the queue of the CPU the task last ran on (``procfs.last_cpu``), with the node
they are on and weight = the number of accessed rounds in the history.  The
sampler never migrates anything.

Kernel behaviour it is built around (mm/page_idle.c, Linux 6.12; shown in the
tiered VM by tests/vm/guest/test_sampler_idle.py):

- **Only LRU folios take the idle bit, and only through their head page.**
  ``page_idle_get_folio()`` returns nothing for a tail page or a folio that is
  not on an LRU list, so such a PFN reads back 0 ("accessed") and marking it is
  ignored.  Hence:

  * **Transparent huge pages** must be tested through their head PFN only, or
    their 511 tail pages read "accessed" every round.  A THP is found as a
    2 MiB-aligned virtual slot whose first PFN is 512-aligned and whose last PFN
    is the first + 511 (both already in the pagemap words we read), confirmed by
    one 8-byte read of ``/proc/kpageflags`` at the head (KPF_THP and
    KPF_COMPOUND_HEAD; KPF_HUGE means hugetlbfs, whose pages are never on an
    LRU: the slot is skipped).  We chose this over ``/proc/PID/smaps``
    (``AnonHugePages``): smaps walks every page table of the process on every
    read and only says *how much* of a mapping is huge, not *where*; the PFN
    pattern plus one kpageflags word per 2 MiB is exact and costs nothing per
    base page.  A THP is then one page: tested once, counted once in
    ``pages_accessed``, offered once at its head address.  Without kpageflags
    (a kernel without it) the PFN pattern alone decides.
    Other large folios (mTHP orders below PMD size, large page-cache folios of
    private file mappings) are *not* recognised: their tail pages look accessed.
    mTHP is off by default (``/sys/kernel/mm/transparent_hugepage/hugepages-*``).
  * **Brand-new pages are not tracked until the per-CPU LRU batch is drained**
    (``folio_batch`` of ``lru_add``): until then marking them does nothing and
    they read "accessed".  Every page's first observation is therefore never
    counted: a test only counts when the page was marked at its previous
    observation with the same PFN (we keep a 7-bit hash of the PFN per page
    as a tag), and a page needs ``hot_rounds`` counted accesses to be hot.  So
    the first rounds may miss brand-new pages; the first candidates appear after
    ``hot_rounds + 1`` passes.  A page that moved (new PFN) starts over the same
    way instead of reading "accessed" because the new page was never marked.
- **Marking a page idle clears the PTE young bit without flushing the TLB**
  (``ptep_clear_young_notify``): an access through a translation still cached in
  a TLB does not set the young bit again and is missed.  One observation is
  therefore weak evidence both ways; the history over several rounds (hot =
  accessed in ``hot_rounds`` of ``history_rounds``) absorbs the misses, which
  are rare on a busy CPU whose TLB turns over between rounds.  (Under qemu's TCG
  the software TLB hides nearly every access unless the workload flushes it;
  the VM tests run their workload with ``flush_ms=10``.)
- **Reading the bitmap costs an rmap walk per idle folio**, and
  ``shim.idle_test`` reads windows of 512 bitmap words starting at the first PFN
  it needs: given PFNs in virtual-address order that *descend* (common once
  memory has been reused), every step re-reads an overlapping window and
  re-walks every idle page in it (benchmarks/results/samplers.md has the
  figures).  So a batch whose PFNs descend more than 16 times (memory
  that has been reused or migrated) is sorted by PFN before it is tested and
  marked (a radix sort of PFN << 24 | position in C, judged on every 16th PFN),
  and the results are put back in address order; a batch in (nearly)
  ascending PFN order, as fresh memory is, is tested as it is
  (``batches_sorted`` counts the others).

Budget: ``sampler.idle.scan_budget_pages_per_s`` bounds the pagemap entries read
(virtual pages, present or not) per second; each round may read
``budget * interval`` of them (unused credit below one chunk carries over), and
the next round continues where this one stopped (pid, address).  With a budget
below what is in scope, a "round" of a page's history is one *pass* over it.
A huge sparse mapping (say 64 GiB reserved with few pages present) therefore
costs budget, never unbounded reads; PROT_NONE mappings are skipped outright.

Nothing on the slow tier: a 16 MiB chunk of a process in which the last read found
no page on a slower-tier node is read again only every :data:`FAST_RECHECK_PASSES`
passes (staggered by chunk), so a process whose memory all sits on the fast tier
(nothing to promote) costs an eighth of its pagemap reads per round.  A page that
lands on the slow tier in such a chunk (demoted, or allocated there) is therefore
seen within 8 passes, plus the ``hot_rounds`` a page needs to be hot; a new chunk is
read at once.

Which mappings: private writable ones, anonymous or file-backed (``[heap]``,
``[stack]``, ``[anon:...]`` and ``/dev/zero`` included).  Skipped: shared
mappings (move_pages(2) with MPOL_MF_MOVE does not move pages mapped by other
processes), mappings without read and write access (PROT_NONE reservations,
code), special mappings (``[vsyscall]``, ``[vdso]``, ``[vvar]``...), device
mappings (``/dev/*``) and hugetlbfs.

**Cold pages (demotion).**  When the daemon gives the context demotion queues
(``ctx.demote_queues``), a round that starts while promotion needs room on the fast
tier (``ctx.room_needed()`` > 0, bytes, called in the executor thread) also tracks
the pages present on a fast node, within the same scan budget: they join the batch,
are tested and marked like the slow-tier pages, and a chunk with nothing on the slow
tier is read every pass.  Testing the fast tier can cost more than the interval (the
kernel walks the rmap of every idle page it tests), so such a round also stops once
it has scanned for ``sampler.interval_ms`` and the next one continues where it
stopped, as with the budget: hot and cold candidates go out every interval or so.

A fast-tier page's state is the time since which it is known idle; a page idle for
``demotion.cold_age_ms`` is cold, and the oldest of the round's cold pages go to the
demotion queues within the round's cold budget (kmigratedd/samplers/idle_cold.py says
how ages are kept), with the node known from the PFN: the router checks it again.
While no room is needed, fast-tier pages are neither tested nor marked: the sampler
costs what it costs without demotion, and their ages are kept (the idle bit says
whether a page was touched since its mark, however long ago), so when room is needed
again a page that stayed idle is cold at its first test.

Parts: kmigratedd/samplers/idle_walk.py (which pages a round reads: cursor, budget,
mappings, per-process state), idle_batch.py (the batch tested and marked together, the
slow-tier histories and hot pages), idle_cold.py (the fast-tier ages and cold pages);
this module ties them into rounds.

Memory: two bytes per tracked slow-tier page (history + PFN tag), kept in
16 MiB-aligned chunks of the address space that hold at least one tracked page,
and two bytes per aged fast-tier page (idle-since tick + PFN tag) in chunks of
their own; the state of a pid that leaves the scope or exits, and of chunks no
longer mapped or holding no tracked page at the end of a pass, is dropped.  A pid
reused by a new process (another start time) starts afresh.  Scratch buffers for one
batch (PFNs, tags, nodes, results, sort space: about 40 bytes a page, 2.7 MiB with 4 KiB
pages) are allocated once and reused round after round.

Counters (``stats()``): ``rounds``; ``passes`` (a pid scanned to its end);
``pages_scanned`` (pagemap entries read: what the budget bounds);
``pages_skipped_fast`` (pages of chunks with nothing on the slow tier, not read this
pass);
``pages_tested`` (slow-tier pages whose idle bit was read, a THP once);
``batches_sorted`` (batches tested in PFN order);
``pages_accessed`` (tests that counted as an access); ``pages_marked``;
``huge_pages`` (THP heads tested); ``hugetlb_skipped`` (2 MiB slots);
``candidates_offered``; ``budget_exhausted`` (rounds cut by the budget);
with demotion on, ``fast_aging_rounds`` (rounds that aged the fast tier),
``rounds_cut_by_time`` (of those, rounds stopped after ``sampler.interval_ms``),
``fast_pages_aged`` and ``fast_pages_accessed`` (their tests, and those found
accessed), ``cold_pages_found``, ``demotion_candidates_offered`` and
``cold_pages_over_budget`` (cold pages left out by the round's cold budget);
``pid_gone``, ``permission_denied``, ``errors``; and ``tracked_pids`` and
``state_bytes``, the memory the history holds.

Failures are counted, never raised: a pid that exits during a scan
(``pid_gone``), a process the daemon may not read (``permission_denied``: ptrace
read access is checked when /proc/PID/maps or pagemap is opened; a daemon
without CAP_SYS_PTRACE cannot read other users' processes), anything else
(``errors``).  Needs root: the bitmap is mode 0600, and pagemap shows PFNs only
to CAP_SYS_ADMIN.  Do not run another idle-page user (DAMON, a second
kmigratedd) at the same time: they share the per-page idle flags.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..procfs import has_capability
from ..ranking import Ranking, Watchlist
from .base import Offer, SamplerBase, SamplerContext
from .idle_batch import BATCH_PAGES, HotPages, IdleBatch
from .idle_cold import COLD_TICKS, MAX_IDLE_TICKS, ColdPages
from .idle_walk import (CHUNK_PAGES, FAST_RECHECK_PASSES, Geometry, Mapping, PageWalk, Proc,
                        Stopping, parse_maps, scannable)
from .offers import OfferBuilder, cold_budget

log = logging.getLogger("kmigratedd.sampler")

BITMAP = "/sys/kernel/mm/page_idle/bitmap"
KPAGEFLAGS = "/proc/kpageflags"
CAP_SYS_ADMIN = 21

# include/uapi/linux/kernel-page-flags.h (native/kmidle.c tests them; kept here for the docs
# and the tests' fake /proc/kpageflags)
KPF_COMPOUND_HEAD = 1 << 15
KPF_HUGE = 1 << 17
KPF_THP = 1 << 22

# Cold pages a round offers at most (256 MiB of 4 KiB pages).
MAX_COLD_PAGES_PER_ROUND = 1 << 16
# Processes a round scans at most: with more in scope, the SCAN_PIDS - SCAN_WINDOW with
# the most memory on slow nodes, first, and SCAN_WINDOW rotating over the others that
# hold slow pages (kmigratedd/ranking.py): each costs a read of its maps and of its
# pagemap per round, and one without slow pages has nothing to promote (its numa_maps,
# read by the ranking in turn, shows when it has).
SCAN_PIDS = 64
SCAN_WINDOW = 16

__all__ = ["BATCH_PAGES", "BITMAP", "CHUNK_PAGES", "COLD_TICKS", "FAST_RECHECK_PASSES",
           "KPF_COMPOUND_HEAD", "KPF_HUGE", "KPF_THP", "MAX_COLD_PAGES_PER_ROUND",
           "MAX_IDLE_TICKS", "SCAN_PIDS", "SCAN_WINDOW", "IdleRound", "IdleSampler",
           "Mapping", "parse_maps", "scannable"]


@dataclass
class IdleRound:
    """One round's candidates: hot pages to promote, cold pages to demote."""

    hot: list[Offer] = field(default_factory=list)
    cold: list[Offer] = field(default_factory=list)


class IdleSampler(SamplerBase[IdleRound]):
    """Scans page_idle bits of slow-tier pages (and of fast-tier pages while promotion
    needs room); see the module docstring.  The walk (idle_walk.PageWalk), the batch and
    the slow-tier histories (idle_batch) and the fast-tier ages (idle_cold) are its
    parts; ``clock`` (monotonic seconds) is injectable for tests."""

    name = "idle"

    def __init__(self, ctx: SamplerContext, *, clock: Callable[[], float] = time.monotonic,
                 max_cold_pages_per_round: int = MAX_COLD_PAGES_PER_ROUND) -> None:
        self.demoting = ctx.demote_queues is not None
        super().__init__(ctx, ("rounds", "passes", "pages_scanned", "pages_skipped_fast",
                               "pages_marked", "batches_sorted", "candidates_offered",
                               "pid_gone", "permission_denied", "budget_exhausted",
                               *(("fast_aging_rounds", "rounds_cut_by_time",
                                  "cold_pages_found", "demotion_candidates_offered",
                                  "cold_pages_over_budget") if self.demoting else ())))
        cfg = ctx.config.sampler.idle
        topo = ctx.topology
        self.history_rounds = cfg.history_rounds
        self.hot_rounds = cfg.hot_rounds
        self.budget_pages_per_s = cfg.scan_budget_pages_per_s
        self.page_size = topo.page_size
        self.geometry = geo = Geometry.read(ctx.fs, topo.page_size)
        self.chunk_pages = geo.chunk_pages
        slow = topo.slow_node_mask()
        fast = set(topo.fast_nodes)
        fast_mask = bytes(1 if n in fast else 0 for n in range(len(slow)))
        # The nodes whose pages a round tracks: the slow tier's, and in a round that ages
        # the fast tier, the fast tier's too.
        self._slow_mask = slow
        self._both_mask = bytes(a | b for a, b in zip(slow, fast_mask))
        self._clock = clock
        self.max_cold_pages_per_round = max_cold_pages_per_round
        self.min_cold_pages = ctx.config.workers.batch_pages
        self.batch = IdleBatch(geo, self.counters, topo.block_node_table())
        self.hot = HotPages(geo, cfg.history_rounds, cfg.hot_rounds, slow)
        self.cold = ColdPages(geo, self.counters, fast_mask, ctx.config.demotion.cold_age_ms)
        self.walk = PageWalk(ctx.fs, geo, self.counters, self, self._piece, clock=clock,
                             stopping=lambda: self.stopping)
        self.ranking = Ranking(ctx.scope, ctx.fs, topo.targets, page_size=topo.page_size,
                               per_round=ctx.config.scope.rank_processes_per_round)
        self.watchlist = Watchlist(self.ranking, SCAN_PIDS, SCAN_WINDOW, fill=False,
                                   slow_only=True)
        self._bitmap_fd: int | None = None
        self._kpageflags_fd: int | None = None
        self._warned: set[int] = set()
        self._tracked_pids = 0
        self._state_bytes = 0
        self._aging_fast = False  # this round ages the fast tier
        self._track_mask = slow
        self.cold_offers: list[Offer] = []  # the last scan_round's demotion candidates

    # --- probe and lifecycle ----------------------------------------------------

    @staticmethod
    def probe(ctx: SamplerContext) -> str | None:
        if not ctx.fs.exists(BITMAP):
            return ("the kernel has no idle page tracking (CONFIG_IDLE_PAGE_TRACKING): "
                    f"{BITMAP} is missing")
        if not os.access(ctx.fs.path(BITMAP), os.R_OK | os.W_OK):
            return f"reading and writing {BITMAP} needs root"
        if not has_capability(ctx.fs, CAP_SYS_ADMIN):
            return ("/proc/PID/pagemap hides PFNs without CAP_SYS_ADMIN: run kmigratedd as root "
                    "or grant it CAP_SYS_ADMIN")
        if not ctx.topology.targets:
            return "no slower memory tier to sample (one tier)"
        return None

    def open(self) -> None:
        """Open the bitmap (and kpageflags if there is one); start() does this."""
        log.info("idle sampler: every %d ms, up to %d pages/s, hot = accessed in %d of %d "
                 "rounds, slow nodes %s", round(self.interval_s * 1000),
                 self.budget_pages_per_s, self.hot_rounds, self.history_rounds,
                 sorted(self.ctx.topology.targets))
        if self._bitmap_fd is None:
            self._bitmap_fd = self.ctx.fs.open(BITMAP, os.O_RDWR)
        if self._kpageflags_fd is None:
            try:
                self._kpageflags_fd = self.ctx.fs.open(KPAGEFLAGS, os.O_RDONLY)
            except OSError as exc:
                log.info("idle sampler: %s unreadable (%s): huge pages are recognised by their "
                         "PFN pattern alone", KPAGEFLAGS, exc.strerror)

    def close(self) -> None:
        for attr in ("_bitmap_fd", "_kpageflags_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)

    def extra_stats(self) -> dict[str, int]:
        out = {"pages_tested": self.hot.aged[0], "pages_accessed": self.hot.aged[1],
               "huge_pages": self.batch.huge[0], "hugetlb_skipped": self.batch.huge[1],
               "tracked_pids": self._tracked_pids, "state_bytes": self._state_bytes}
        if self.demoting:
            out["fast_pages_aged"], out["fast_pages_accessed"] = self.cold.aged
        return out

    def collect(self) -> IdleRound:
        hot = self.scan_round()
        return IdleRound(hot, self.cold_offers)

    def deliver(self, result: IdleRound) -> None:
        self.push(result.hot)
        self.push_cold(result.cold)

    # --- one round --------------------------------------------------------------

    def scan_round(self, budget_pages: int | None = None) -> list[Offer]:
        """Scan up to ``budget_pages`` pages (default: the per-second budget times the
        interval, plus carried-over credit), test and re-mark them, and return the hot
        pages to offer; the cold pages to offer for demotion are left in
        ``cold_offers``.  Never raises for a process's sake; runs off the event loop."""
        if self._bitmap_fd is None:
            raise RuntimeError("IdleSampler.open() first")
        self.counters["rounds"] += 1
        self.cold_offers = []
        self._begin_cold()
        self.walk.begin(int(self.budget_pages_per_s * self.interval_s), budget_pages,
                        every_chunk=self._aging_fast,
                        deadline=self._clock() + self.interval_s if self._aging_fast else None)
        try:
            self.walk.run(self.watchlist.choose(), len(self.ranking) > SCAN_PIDS)
        except Stopping:
            return []
        finally:
            self._flush()
        build = OfferBuilder(self.ctx.fs, self.gone)
        offers = build.offers(self.hot.take())
        self.cold_offers = build.offers(self.cold.take())
        self._tracked_pids = len(self.walk.procs)
        self._state_bytes = self.walk.state_bytes()
        return offers

    def _piece(self, proc: Proc, key: int, off: int, n: int, addr: int,
               entries: memoryview) -> bool:
        """Pagemap entries → tracked pages, into the batch; tests it once full."""
        if not self.batch.add(proc, key, off, n, addr, entries, self._track_mask,
                              self._kpageflags_fd):
            return False
        if self.batch.full:
            self._flush()
        return True

    def _flush(self) -> None:
        """Test the batch, mark the pages found accessed idle again, age every segment."""
        if not self.batch.segments:
            return
        assert self._bitmap_fd is not None
        test_tick = self.cold.tick(self._clock())
        segments = self.batch.test(self._bitmap_fd)
        mark_tick = self.cold.tick(self._clock())
        for seg in segments:
            self.hot.age(self.batch, seg, mixed=self._aging_fast)
            if self._aging_fast:
                self.cold.age(self.batch, seg, test_tick, mark_tick)

    def _begin_cold(self) -> None:
        """Does this round age the fast tier?  Only with demotion on and room needed
        (``ctx.room_needed()``, bytes, called in the executor thread; 0 if it fails)."""
        room = 0
        if self.demoting:
            try:
                room = max(0, int(self.ctx.room_needed()))
            except Exception as exc:  # the round's hot pages still go out
                self.counters["errors"] += 1
                log.warning("idle sampler: room_needed: %s", exc)
        if room > 0 and not self._aging_fast:
            log.info("idle sampler: promotion needs %d MiB of room: fast-tier pages are aged",
                     room >> 20)
        elif room <= 0 and self._aging_fast:
            log.info("idle sampler: no room needed: fast-tier pages are not tested")
        self._aging_fast = room > 0
        self._track_mask = self._both_mask if room > 0 else self._slow_mask
        self.cold.begin(cold_budget(room, self.page_size, self.min_cold_pages,
                                    self.max_cold_pages_per_round))
        if room > 0:
            self.counters["fast_aging_rounds"] += 1

    # --- failures (idle_walk.Failures) --------------------------------------------

    def gone(self, pid: int) -> None:
        self.counters["pid_gone"] += 1
        self.walk.procs.pop(pid, None)
        self.hot.found.pop(pid, None)
        self.cold.found.pop(pid, None)

    def denied(self, pid: int) -> None:
        self.counters["permission_denied"] += 1
        self.walk.procs.pop(pid, None)
        if pid not in self._warned:
            self._warned.add(pid)
            log.warning("idle sampler: may not read pid %d's memory map (ptrace read access; "
                        "CAP_SYS_PTRACE for other users' processes): skipped", pid)

    def error(self, pid: int, exc: OSError) -> None:
        self.counters["errors"] += 1
        log.debug("idle sampler: pid %d: %s", pid, exc)
