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

A fast-tier page's state is the time since which it is known idle, in ticks of
``demotion.cold_age_ms`` / :data:`COLD_TICKS`, one byte modulo 256: set when the page
is found accessed (and marked again) or first seen as its PFN, kept while it is found
idle.  The ticks are read before the test and after
the marking, so a page's age never exceeds the time since the mark it is still idle
from, whatever the pass period; an age is held at :data:`MAX_IDLE_TICKS` while the
page is seen, and a page not seen for 256 ticks or more (no room needed meanwhile)
may look younger than it is, never older.  A page idle for at least
:data:`COLD_TICKS` + 1 ticks (``cold_age_ms`` rounded up, as the mark may have
happened late in its tick) is cold; a page seen accessed within ``cold_age_ms`` never
is.  The oldest of the round's cold pages go to the demotion queues (weight: the age
in ticks; of equal age, those found first), at most twice the pages of room needed
(at least ``workers.batch_pages``, at most :data:`MAX_COLD_PAGES_PER_ROUND`; a THP
counts as one), with the node known from the PFN: the router checks it again.  A
round holds at most twice its cold budget (plus a piece) while it scans: beyond
that, it keeps the oldest.  While no room is needed, fast-tier pages are neither
tested nor marked: the sampler costs what it costs without demotion, and their ages
are kept (the idle bit says whether a page was touched since its mark, however long
ago), so when room is needed again a page that stayed idle is cold at its first
test.  A page first seen while room is needed is cold at its first test
``cold_age_ms`` or more after that one.

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

import errno
import logging
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import shim
from ..procfs import has_capability, last_cpu, start_time
from ..ranking import Ranking, Watchlist
from .base import Offer, SamplerBase, SamplerContext

log = logging.getLogger("kmigratedd.sampler")

BITMAP = "/sys/kernel/mm/page_idle/bitmap"
KPAGEFLAGS = "/proc/kpageflags"
HPAGE_PMD_SIZE = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"
CAP_SYS_ADMIN = 21

# include/uapi/linux/kernel-page-flags.h (native/kmidle.c tests them; kept here for the docs
# and the tests' fake /proc/kpageflags)
KPF_COMPOUND_HEAD = 1 << 15
KPF_HUGE = 1 << 17
KPF_THP = 1 << 22

# State and pagemap reads go by chunks of the address space (16 MiB of 4 KiB pages).
CHUNK_PAGES = 4096
# PFNs tested and marked together (sorted once, in C, if out of order): 256 MiB of
# tracked 4 KiB pages.  Bounds the round's scratch memory (about 40 bytes a page).
BATCH_PAGES = 1 << 16

# A chunk whose pages were all off the slow tier at its last read is read again only
# every this many passes (staggered by chunk): a process whose memory all sits on the
# fast tier costs 1/8 of its pagemap per round (see the module docstring).
FAST_RECHECK_PASSES = 8

# A fast-tier page's idle age is counted in ticks of demotion.cold_age_ms / COLD_TICKS;
# it is cold at COLD_TICKS + 1 ticks (see "Cold pages" in the module docstring).
COLD_TICKS = 16
# Ages are held here while a page is seen (one byte modulo 256 must not wrap).
MAX_IDLE_TICKS = 128
# Cold pages a round offers at most (256 MiB of 4 KiB pages).
MAX_COLD_PAGES_PER_ROUND = 1 << 16
# Processes a round scans at most: with more in scope, the SCAN_PIDS - SCAN_WINDOW with
# the most memory on slow nodes, first, and SCAN_WINDOW rotating over the others that
# hold slow pages (kmigratedd/ranking.py): each costs a read of its maps and of its
# pagemap per round, and one without slow pages has nothing to promote (its numa_maps,
# read by the ranking in turn, shows when it has).
SCAN_PIDS = 64
SCAN_WINDOW = 16

# Special mappings whose name is in brackets but that hold ordinary anonymous memory.
_ANON_NAMES = ("[heap]", "[stack]")
_ANON_PREFIXES = ("[anon:", "[stack:")


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    name: str


def parse_maps(text: str) -> list[Mapping]:
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        try:
            out.append(Mapping(int(lo, 16), int(hi, 16), parts[1],
                               parts[5].strip() if len(parts) > 5 else ""))
        except ValueError:
            continue
    return out


def scannable(m: Mapping) -> bool:
    """Private writable mappings of ordinary memory (see the module docstring)."""
    p = m.perms
    if len(p) < 4 or p[3] != "p" or p[0] != "r" or p[1] != "w":
        return False
    name = m.name
    if name.startswith("["):
        return name in _ANON_NAMES or name.startswith(_ANON_PREFIXES)
    if name.startswith("/dev/") and not name.startswith("/dev/zero"):
        return False
    return "anon_hugepage" not in name


@dataclass
class _Chunk:
    """Per-page state of one chunk of the address space."""

    hist: bytearray  # bit i: accessed at the observation i passes ago
    tag: bytearray  # 0: not marked last time; else 0x80 | a 7-bit hash of the PFN marked


@dataclass
class _ColdChunk:
    """Per-page idle ages of the fast-tier pages of one chunk of the address space."""

    since: bytearray  # the tick (mod 256) since which the page is known idle
    tag: bytearray  # as _Chunk.tag


@dataclass
class _Proc:
    pid: int
    start_time: int
    chunks: dict[int, _Chunk] = field(default_factory=dict)
    cold: dict[int, _ColdChunk] = field(default_factory=dict)
    visited: set[int] = field(default_factory=set)  # chunks seen since the pass began
    # ... holding a tracked page: on the slow tier, or on any tier in a round that ages
    # the fast tier
    slow_seen: set[int] = field(default_factory=set)
    fast: set[int] = field(default_factory=set)  # chunks without one at their last read
    passes: int = 0


@dataclass
class IdleRound:
    """One round's candidates: hot pages to promote, cold pages to demote."""

    hot: list[Offer] = field(default_factory=list)
    cold: list[Offer] = field(default_factory=list)


@dataclass
class _Segment:
    """A piece of a mapping whose pages sit in the batch at [pos, pos + n)."""

    proc: _Proc
    key: int  # chunk number (address >> chunk shift)
    off: int  # first page within the chunk
    n: int
    addr: int
    pos: int


class _PidGone(Exception):
    pass


class _Stopping(Exception):
    pass


class IdleSampler(SamplerBase[IdleRound]):
    """Scans page_idle bits of slow-tier pages (and of fast-tier pages while promotion
    needs room); see the module docstring.  ``clock`` (monotonic seconds) is injectable
    for tests."""

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
        self.history_rounds = cfg.history_rounds
        self.hot_rounds = cfg.hot_rounds
        self.budget_pages_per_s = cfg.scan_budget_pages_per_s
        self.page_size = ps = ctx.topology.page_size
        self.page_shift = ps.bit_length() - 1
        block_shift, self._block_table = ctx.topology.block_node_table()
        self._pfn_block_shift = block_shift - self.page_shift
        self._slow_mask = ctx.topology.slow_node_mask()
        fast = set(ctx.topology.fast_nodes)
        self._fast_mask = bytes(1 if n in fast else 0 for n in range(len(self._slow_mask)))
        # The nodes whose pages a round tracks: the slow tier's, and in a round that ages
        # the fast tier, the fast tier's too.
        self._both_mask = bytes(a | b for a, b in zip(self._slow_mask, self._fast_mask))
        self._track_mask = self._slow_mask
        self._clock = clock
        self.tick_s = ctx.config.demotion.cold_age_ms / 1000 / COLD_TICKS
        self.max_cold_pages_per_round = max_cold_pages_per_round
        self.min_cold_pages = ctx.config.workers.batch_pages
        hpage = ctx.fs.read_optional(HPAGE_PMD_SIZE)
        hpage_bytes = int(hpage) if hpage and hpage.strip().isdigit() else 2 << 20
        self.huge_pages = max(1, hpage_bytes // ps)
        self.chunk_pages = max(CHUNK_PAGES, self.huge_pages)
        self._chunk_shift = (self.chunk_pages * ps).bit_length() - 1
        self._entries = array("Q", bytes(8 * self.chunk_pages))
        # The batch (a round's tracked pages, tested together) and its scratch, reused
        # round after round: PFNs, tags and nodes written by shim.idle_track.
        cap = BATCH_PAGES + self.chunk_pages
        self._pfns = memoryview(array("Q", bytes(8 * cap)))
        self._tags = memoryview(bytearray(cap))
        self._nodes = memoryview(array("i", bytes(4 * cap)))
        self._idle = memoryview(bytearray(cap))
        self._again = memoryview(array("Q", bytes(8 * cap)))
        self._scratch = array("Q", bytes(16 * cap))
        self._hot_addrs = array("Q", bytes(8 * self.chunk_pages))
        self._hot_nodes = array("i", bytes(4 * self.chunk_pages))
        self._hot_weights = array("I", bytes(4 * self.chunk_pages))
        self._cold_addrs = array("Q", bytes(8 * self.chunk_pages))
        self._cold_nodes = array("i", bytes(4 * self.chunk_pages))
        self._cold_ages = array("I", bytes(4 * self.chunk_pages))
        self._fast_aged = array("Q", [0, 0])  # fast-tier pages aged, accesses found
        self._batch_len = 0
        self._huge = array("Q", [0, 0])  # THP heads, hugetlbfs slots
        self._aged = array("Q", [0, 0])  # pages tested, accesses counted
        self._procs: dict[int, _Proc] = {}
        self.ranking = Ranking(ctx.scope, ctx.fs, ctx.topology.targets, page_size=ps,
                               per_round=ctx.config.scope.rank_processes_per_round)
        self.watchlist = Watchlist(self.ranking, SCAN_PIDS, SCAN_WINDOW, fill=False,
                                   slow_only=True)
        self._cursor: tuple[int, int] = (0, 0)
        self._credit = 0
        # A round that ages the fast tier stops scanning at this clock() time (None: no
        # limit), once it has scanned something: see "Cold pages" in the module docstring.
        self._deadline: float | None = None
        self._round_credit = 0
        self._bitmap_fd: int | None = None
        self._kpageflags_fd: int | None = None
        self._warned: set[int] = set()
        self._tracked_pids = 0
        self._state_bytes = 0
        # round scratch
        self._segments: list[_Segment] = []
        self._offers: dict[int, list[tuple[array[int], array[int], array[int]]]] = {}
        self._aging_fast = False  # this round ages the fast tier
        self._cold_budget = 0
        # pid -> the round's cold pages (addresses, nodes, ages), within the cold budget
        self._cold: dict[int, tuple[array[int], array[int], array[int]]] = {}
        self._cold_held = 0
        self._age_counts = array("Q", bytes(8 * 256))  # the round's cold pages by age
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
        out = {"pages_tested": self._aged[0], "pages_accessed": self._aged[1],
               "huge_pages": self._huge[0], "hugetlb_skipped": self._huge[1],
               "tracked_pids": self._tracked_pids, "state_bytes": self._state_bytes}
        if self.demoting:
            out["fast_pages_aged"], out["fast_pages_accessed"] = self._fast_aged
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
        if budget_pages is None:
            per_round = int(self.budget_pages_per_s * self.interval_s)
            self._credit = min(self._credit + per_round, max(per_round, self.chunk_pages))
        else:
            self._credit = budget_pages
        self._round_credit = self._credit
        self.counters["rounds"] += 1
        self._batch_len = 0
        self._segments = []
        self._offers = {}
        self.cold_offers = []
        self._begin_cold()
        self._deadline = self._clock() + self.interval_s if self._aging_fast else None
        try:
            self._round()
        except _Stopping:
            return []
        finally:
            self._flush()
        cpus: dict[int, int | None] = {}
        offers = self._collect(cpus)
        self.cold_offers = self._collect_cold(cpus)
        self._tracked_pids = len(self._procs)
        self._state_bytes = sum(len(p.chunks) + len(p.cold)
                                for p in self._procs.values()) * 2 * self.chunk_pages
        return offers

    def _round(self) -> None:
        pids = self.watchlist.choose()  # pid order, or ranked (see SCAN_PIDS)
        keep = set(pids)
        for pid in [p for p in self._procs if p not in keep]:
            if self.ctx.fs.exists(f"/proc/{pid}"):
                del self._procs[pid]  # left the scope
            else:
                self._gone(pid)  # exited since the last round
        if not pids:
            return
        cur_pid, cur_addr = self._cursor
        if cur_pid in keep:
            first = pids.index(cur_pid)
        elif len(self.ranking) > SCAN_PIDS:  # ranked: from the top
            first = 0
        else:
            first = next((i for i, p in enumerate(pids) if p >= cur_pid), 0)
        order = pids[first:] + pids[:first]
        resume = cur_addr if order[0] == cur_pid else 0
        work: list[tuple[int, int, int | None]] = [(order[0], resume, None)]
        work += [(p, 0, None) for p in order[1:]]
        if resume:
            work.append((order[0], 0, resume))
        self._cursor = (order[0], resume)  # a full cycle starts here again next round
        for pid, lo, hi in work:
            stop_at = self._scan_pid(pid, lo, hi)
            if stop_at is not None:
                self._cursor = (pid, stop_at)
                self.counters["budget_exhausted"] += 1
                return

    def _scan_pid(self, pid: int, lo: int, hi: int | None) -> int | None:
        """Scan [lo, hi) of pid's mappings; returns where the budget stopped it, or None."""
        fs = self.ctx.fs
        try:
            started = start_time(fs, pid)
            if started is None:
                raise _PidGone
            proc = self._procs.get(pid)
            if proc is None or proc.start_time != started:
                proc = self._procs[pid] = _Proc(pid, started)
            maps = parse_maps(fs.read(f"/proc/{pid}/maps"))
            fd = fs.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        except (FileNotFoundError, ProcessLookupError, _PidGone):
            self._gone(pid)
            return None
        except PermissionError:
            self._denied(pid)
            return None
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                self._gone(pid)
            else:
                self._error(pid, exc)
            return None
        try:
            if lo == 0:
                proc.visited = set()
            for m in maps:
                if m.end <= lo or (hi is not None and m.start >= hi) or not scannable(m):
                    continue
                stop_at = self._scan_range(proc, fd, max(m.start, lo),
                                           m.end if hi is None else min(m.end, hi))
                if stop_at is not None:
                    return stop_at
            if hi is None:
                self._end_pass(proc)
            return None
        except _PidGone:
            self._gone(pid)
            return None
        except PermissionError:
            self._denied(pid)
            return None
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                self._gone(pid)
            else:
                self._error(pid, exc)
            return None
        finally:
            os.close(fd)

    def _scan_range(self, proc: _Proc, fd: int, start: int, end: int) -> int | None:
        chunk_bytes = 1 << self._chunk_shift
        ps, shift = self.page_size, self.page_shift
        huge_bytes = self.huge_pages * ps
        addr = start
        while addr < end:
            if self.stopping:
                raise _Stopping
            if (self._deadline is not None and self._credit < self._round_credit
                    and self._clock() >= self._deadline):
                self.counters["rounds_cut_by_time"] += 1
                return addr
            piece_end = min(end, (addr // chunk_bytes + 1) * chunk_bytes)
            n = (piece_end - addr) >> shift
            key = addr >> self._chunk_shift
            if (key in proc.fast and (proc.passes + key) % FAST_RECHECK_PASSES
                    and not self._aging_fast):
                proc.visited.add(key)  # mapped still; not read this pass
                self.counters["pages_skipped_fast"] += n
                addr = piece_end
                continue
            if n > self._credit:
                # Stop at a huge-page boundary so a THP is never split between rounds.
                cut = (addr + self._credit * ps) // huge_bytes * huge_bytes
                if cut <= addr:
                    return addr
                piece_end, n = cut, (cut - addr) >> shift
            self._credit -= n
            self._scan_piece(proc, fd, addr, n)
            addr = piece_end
        return None

    def _read_pagemap(self, fd: int, addr: int, entries: memoryview) -> int:
        return shim.pread_words(fd, addr >> self.page_shift, entries)

    def _scan_piece(self, proc: _Proc, fd: int, addr: int, n: int) -> None:
        """Pagemap → PFNs → slow-tier pages → THP heads, into the batch (shim.idle_track)."""
        entries = memoryview(self._entries)[:n]  # scratch, reused piece after piece
        got = self._read_pagemap(fd, addr, entries)
        self.counters["pages_scanned"] += n
        if got < n:
            # pagemap reads nothing once the mm is gone (the process exited).
            raise _PidGone
        key = addr >> self._chunk_shift
        off = (addr - (key << self._chunk_shift)) >> self.page_shift
        proc.visited.add(key)
        pos = self._batch_len
        end = pos + n
        if not shim.idle_track(entries, addr >> self.page_shift, self._pfn_block_shift,
                               self._block_table, self._track_mask, self.huge_pages,
                               self._kpageflags_fd, self._pfns[pos:end], self._tags[pos:end],
                               self._nodes[pos:end], self._huge):
            self._forget(proc, key, off, n)
            return
        proc.slow_seen.add(key)
        self._batch_len = end
        self._segments.append(_Segment(proc, key, off, n, addr, pos))
        if end >= BATCH_PAGES:
            self._flush()

    def _forget(self, proc: _Proc, key: int, off: int, n: int) -> None:
        """A piece with no tracked page: its slow-tier history goes, and in a round that
        ages the fast tier, its fast-tier ages too."""
        chunk = proc.chunks.get(key)
        if chunk is not None:
            chunk.hist[off:off + n] = bytes(n)
            chunk.tag[off:off + n] = bytes(n)
        cold = proc.cold.get(key) if self._aging_fast else None
        if cold is not None:
            cold.since[off:off + n] = bytes(n)
            cold.tag[off:off + n] = bytes(n)

    def _end_pass(self, proc: _Proc) -> None:
        """Drop chunks not seen in this pass (unmapped) or holding no tracked page."""
        size = self.chunk_pages
        for key in [k for k, c in proc.chunks.items()
                    if k not in proc.visited or c.tag.count(0) == size]:
            del proc.chunks[key]
        for key in [k for k, c in proc.cold.items()
                    if k not in proc.visited or c.tag.count(0) == size]:
            del proc.cold[key]
        proc.fast = proc.visited - proc.slow_seen
        proc.visited, proc.slow_seen = set(), set()
        proc.passes += 1
        self.counters["passes"] += 1

    # --- test, mark, age --------------------------------------------------------

    def _flush(self) -> None:
        """Test the batch, mark the pages found accessed idle again, age every segment."""
        if not self._segments:
            return
        n, segments = self._batch_len, self._segments
        self._batch_len, self._segments = 0, []
        fd = self._bitmap_fd
        assert fd is not None
        test_tick = int(self._clock() / self.tick_s)
        try:
            # Only the pages found accessed are marked again: those found idle still
            # are (PG_idle set, every PTE old), and marking them would repeat the rmap
            # walk the test just did, at the kernel's expense.
            accessed, was_sorted = shim.idle_test_batch(fd, self._pfns[:n], self._idle,
                                                        self._again, self._scratch)
            self.counters["batches_sorted"] += was_sorted
            if accessed:
                shim.idle_mark(fd, self._again[:n])
                self.counters["pages_marked"] += accessed
        except OSError as exc:
            self.counters["errors"] += 1
            log.warning("idle sampler: %s: %d pages not tested this round", exc, n)
            return
        mark_tick = int(self._clock() / self.tick_s)
        for seg in segments:
            self._age(seg)
            if self._aging_fast:
                self._age_cold(seg, test_tick, mark_tick)

    def _age(self, seg: _Segment) -> None:
        proc = seg.proc
        chunk = proc.chunks.get(seg.key)
        fresh = chunk is None
        if chunk is None:
            chunk = _Chunk(bytearray(self.chunk_pages), bytearray(self.chunk_pages))
        tracked = self._aged[0]
        lo, hi = seg.off, seg.off + seg.n
        p, q = seg.pos, seg.pos + seg.n
        nhot = shim.idle_age(self._idle[p:q], self._tags[p:q], self._nodes[p:q],
                             memoryview(chunk.hist)[lo:hi], memoryview(chunk.tag)[lo:hi],
                             self.history_rounds, self.hot_rounds, seg.addr, self._hot_addrs,
                             self._hot_nodes, self._hot_weights, self._aged,
                             page_size=self.page_size,
                             mask=self._slow_mask if self._aging_fast else None)
        if fresh and self._aged[0] != tracked:  # a chunk is kept once it tracks a page
            proc.chunks[seg.key] = chunk
        if nhot:
            self._offers.setdefault(proc.pid, []).append(
                (self._hot_addrs[:nhot], self._hot_nodes[:nhot], self._hot_weights[:nhot]))

    def _collect(self, cpus: dict[int, int | None]) -> list[Offer]:
        out = []
        offers, self._offers = self._offers, {}
        for pid, parts in offers.items():
            cpu = self._cpu(pid, cpus)
            if cpu is None:
                self._gone(pid)
                continue
            addrs, nodes, weights = array("Q"), array("i"), array("I")
            for a, n, w in parts:
                addrs.extend(a)
                nodes.extend(n)
                weights.extend(w)
            out.append(Offer(pid, cpu, addrs, nodes, weights))
        return out

    def _cpu(self, pid: int, cpus: dict[int, int | None]) -> int | None:
        """The CPU pid last ran on (its queue), looked up once a round; None: it exited."""
        if pid not in cpus:
            cpus[pid] = last_cpu(self.ctx.fs, pid)
        return cpus[pid]

    # --- cold pages (demotion) ----------------------------------------------------

    def _room_needed(self) -> int:
        """``ctx.room_needed()`` (bytes), 0 if it fails (counted)."""
        try:
            return max(0, int(self.ctx.room_needed()))
        except Exception as exc:  # the round's hot pages still go out
            self.counters["errors"] += 1
            log.warning("idle sampler: room_needed: %s", exc)
            return 0

    def _begin_cold(self) -> None:
        """Does this round age the fast tier?  Only with demotion on and room needed; its
        cold budget is twice the pages of room needed (the router keeps only those on a
        fast node), at least a worker batch, at most ``max_cold_pages_per_round``."""
        room = self._room_needed() if self.demoting else 0
        if room > 0 and not self._aging_fast:
            log.info("idle sampler: promotion needs %d MiB of room: fast-tier pages are aged",
                     room >> 20)
        elif room <= 0 and self._aging_fast:
            log.info("idle sampler: no room needed: fast-tier pages are not tested")
        self._aging_fast = room > 0
        self._track_mask = self._both_mask if room > 0 else self._slow_mask
        self._cold_budget = (min(self.max_cold_pages_per_round,
                                 max(self.min_cold_pages, room // self.page_size * 2))
                             if room > 0 else 0)
        self._cold = {}
        self._cold_held = 0
        self._age_counts = array("Q", bytes(8 * 256))
        if room > 0:
            self.counters["fast_aging_rounds"] += 1

    def _age_cold(self, seg: _Segment, test_tick: int, mark_tick: int) -> None:
        """Fold a segment's results into its fast-tier pages' ages; keep the cold ones."""
        proc = seg.proc
        chunk = proc.cold.get(seg.key)
        fresh = chunk is None
        if chunk is None:
            chunk = _ColdChunk(bytearray(self.chunk_pages), bytearray(self.chunk_pages))
        aged = self._fast_aged[0]
        lo, hi = seg.off, seg.off + seg.n
        p, q = seg.pos, seg.pos + seg.n
        ncold = shim.idle_cold(self._idle[p:q], self._tags[p:q], self._nodes[p:q],
                               self._fast_mask, memoryview(chunk.since)[lo:hi],
                               memoryview(chunk.tag)[lo:hi], test_tick, mark_tick,
                               COLD_TICKS + 1, MAX_IDLE_TICKS, seg.addr, self._cold_addrs,
                               self._cold_nodes, self._cold_ages, self._age_counts,
                               self._fast_aged, page_size=self.page_size)
        if fresh and self._fast_aged[0] != aged:
            proc.cold[seg.key] = chunk
        if not ncold:
            return
        self.counters["cold_pages_found"] += ncold
        addrs, nodes, ages = self._cold.setdefault(proc.pid, (array("Q"), array("i"), array("I")))
        addrs.extend(self._cold_addrs[:ncold])
        nodes.extend(self._cold_nodes[:ncold])
        ages.extend(self._cold_ages[:ncold])
        self._cold_held += ncold
        if self._cold_held > 2 * self._cold_budget:
            self._keep_oldest()

    def _keep_oldest(self) -> None:
        """Keep the round's ``_cold_budget`` oldest cold pages (of equal age, those found
        first); the rest is counted in ``cold_pages_over_budget``."""
        budget, counts = self._cold_budget, self._age_counts
        if self._cold_held <= budget:
            return
        kept, age = 0, len(counts) - 1
        while kept + counts[age] < budget:  # the youngest age kept, and how many of it
            kept += counts[age]
            age -= 1
        quota = array("Q", [budget - kept])
        held = 0
        for pid in list(self._cold):
            addrs, nodes, ages = self._cold[pid]
            self.counters["cold_pages_over_budget"] += len(addrs)
            n = shim.idle_pick(addrs, nodes, ages, age, quota)
            self.counters["cold_pages_over_budget"] -= n
            held += n
            if not n:
                del self._cold[pid]
        for younger in range(age):
            counts[younger] = 0
        counts[age] = budget - kept - quota[0]  # of the youngest age kept, those taken
        self._cold_held = held

    def _collect_cold(self, cpus: dict[int, int | None]) -> list[Offer]:
        """The round's cold pages, oldest first within the budget, one offer per pid."""
        self._keep_oldest()
        out = []
        cold, self._cold = self._cold, {}
        for pid, (addrs, nodes, ages) in cold.items():
            cpu = self._cpu(pid, cpus)
            if cpu is None:
                self._gone(pid)
                continue
            out.append(Offer(pid, cpu, addrs, nodes, ages))
        return out

    # --- failures ---------------------------------------------------------------

    def _gone(self, pid: int) -> None:
        self.counters["pid_gone"] += 1
        self._procs.pop(pid, None)
        self._offers.pop(pid, None)
        self._cold.pop(pid, None)

    def _denied(self, pid: int) -> None:
        self.counters["permission_denied"] += 1
        self._procs.pop(pid, None)
        if pid not in self._warned:
            self._warned.add(pid)
            log.warning("idle sampler: may not read pid %d's memory map (ptrace read access; "
                        "CAP_SYS_PTRACE for other users' processes): skipped", pid)

    def _error(self, pid: int, exc: OSError) -> None:
        self.counters["errors"] += 1
        log.debug("idle sampler: pid %d: %s", pid, exc)

