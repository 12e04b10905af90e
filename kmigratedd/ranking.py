"""Which processes in scope a scanning sampler watches: ranked by their memory on slow nodes.

Promotion needs the processes that hold pages on a slower tier.  A sampler that
watches processes one by one (``damon``: a DAMON target each; ``idle``: a pagemap
scan each) cannot watch thousands at once, so :class:`Ranking` measures each
process's pages on the slow nodes and :class:`Watchlist` picks the ones to watch:
the top of the ranking, plus a window that rotates over all the others.

**Measuring.**  The pages a process has on each node come from
/proc/PID/numa_maps (:func:`kmigratedd.procfs.numa_pages`), which the kernel writes
by walking the page tables of every mapping: its cost grows with the memory mapped.
So a round measures at most ``scope.rank_processes_per_round`` processes, and
:data:`RANK_PAGES_PER_ROUND` resident pages' worth of them on average (a bigger process
is measured alone, and the rounds after it measure none until the average is back).
A process new to the scope is measured first, largest resident set first (its RSS
from /proc/PID/statm, which reads counters and walks nothing, read once when it
appears); then the process measured longest ago.  With N processes in scope every
one is measured again within ``ceil(N / rank_processes_per_round)`` rounds while their
resident pages fit the page budget, else within about ``ceil(resident pages of all /
RANK_PAGES_PER_ROUND)`` rounds, so the ranking follows residency as pages are
promoted, demoted or allocated.

**Choosing** (:meth:`Watchlist.choose`).  While the scope holds no more processes
than the sampler may watch, it watches them all, in pid order, and nothing is
measured.  Otherwise it watches ``limit - window`` processes from the top of the
ranking (only processes with pages on a slow node) and ``window`` processes (with
``fill``, more while the top has free places) taken in pid order from all the others
(with ``slow_only``, from the others that hold pages on a slow node), the window
moving on every ``dwell`` rounds: every process in scope (with ``slow_only``, every
one measured with pages on a slow node) is watched within
``ceil((N - limit + window) / window) * dwell`` rounds.  A process at the top keeps
its place until one outside has more than :data:`DISPLACE_FACTOR` times its slow
pages plus :data:`DISPLACE_MIN_PAGES` (DAMON re-fits a target's regions after every
change of targets, so a set that flapped between processes of nearly equal size
would never settle).

**State.**  One small entry per process in scope and the pids of two queues; a pid
that leaves the listing (exited, or out of scope) is dropped at the next round.
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import procfs
from .kernelfs import KernelFs
from .scope import Scope

# Resident pages whose numa_maps a round reads, on average: 64 MiB of 4 KiB pages (the
# kernel looks at every resident page, shared ones included).  A bigger process is read
# alone in its round, and the rounds after it read nothing until the average is back
# within the budget.
RANK_PAGES_PER_ROUND = 1 << 14
# A process outside the top displaces the weakest one in it only with more than this
# many times its slow pages, plus DISPLACE_MIN_PAGES.
DISPLACE_FACTOR = 2
DISPLACE_MIN_PAGES = 256


@dataclass(slots=True)
class _Entry:
    rss: int = 0  # resident pages (statm), when new and at each measure
    slow: int = -1  # pages on slow nodes at the last measure; -1: not measured yet
    measured: int = -1  # the round of the last measure


class Ranking:
    """Pages on slow nodes of each process in scope, measured within a per-round budget.

    ``counters``: ``measured`` (numa_maps read), ``measure_failed`` (gone, or not
    readable), ``rounds``."""

    def __init__(self, scope: Scope, fs: KernelFs, slow_nodes: Iterable[int], *,
                 page_size: int = 4096, per_round: int = 16,
                 pages_per_round: int = RANK_PAGES_PER_ROUND) -> None:
        self.scope = scope
        self.fs = fs
        self.slow_nodes = tuple(sorted(slow_nodes))
        self.page_size = page_size
        self.per_round = max(1, per_round)
        self.pages_per_round = max(1, pages_per_round)
        self.counters = {"rounds": 0, "measured": 0, "measure_failed": 0}
        self._entries: dict[int, _Entry] = {}
        self._fresh: list[int] = []  # never measured, smallest RSS first (popped from the end)
        self._queue: deque[int] = deque()  # measured, least recently first
        self._round = 0
        self._debt = 0  # pages read beyond the budget, paid back by the next rounds

    def __len__(self) -> int:
        return len(self._entries)

    def slow_pages(self, pid: int) -> int:
        """Pages of ``pid`` on slow nodes at its last measure (-1: not measured)."""
        e = self._entries.get(pid)
        return -1 if e is None else e.slow

    def refresh(self) -> list[int]:
        """The processes in scope now, in pid order; forgets those gone from it."""
        pids = list(self.scope.pids())
        entries = self._entries
        if len(entries) > len(pids) or any(p not in entries for p in pids):
            live = set(pids)
            for pid in [p for p in entries if p not in live]:
                del entries[pid]
            new = [p for p in pids if p not in entries]
            for pid in new:
                entries[pid] = _Entry(rss=procfs.rss_pages(self.fs, pid) or 0)
            if new:
                self._fresh = sorted((p for p in (*self._fresh, *new) if p in entries),
                                     key=lambda p: entries[p].rss)
            if len(self._queue) > 2 * len(entries) + 64:
                self._queue = deque(p for p in self._queue if p in entries)
        return pids

    def measure(self) -> int:
        """Re-measure this round's share of processes (see the module docstring);
        returns how many were measured."""
        self._round += 1
        self.counters["rounds"] += 1
        if self._debt >= self.pages_per_round:
            self._debt -= self.pages_per_round
            return 0
        entries = self._entries
        done, pages = 0, self._debt
        requeue: list[int] = []
        while done < self.per_round:
            pid = self._next()
            if pid is None:
                break
            e = entries[pid]
            # The kernel looks at every resident page, shared ones too: statm's RSS.
            e.rss = procfs.rss_pages(self.fs, pid) or 0
            if done and pages + e.rss > self.pages_per_round:
                requeue.append(pid)
                break
            counts = procfs.numa_pages(self.fs, pid, self.page_size)
            done += 1
            e.measured = self._round
            if counts is None:
                self.counters["measure_failed"] += 1
                e.slow = 0
            else:
                self.counters["measured"] += 1
                e.slow = sum(counts.get(n, 0) for n in self.slow_nodes)
            pages += e.rss
            self._queue.append(pid)
        # A process left for the page budget is the first one of the next round.
        self._queue.extendleft(requeue)
        self._debt = max(0, pages - self.pages_per_round)
        return done

    def _next(self) -> int | None:
        entries = self._entries
        while self._fresh:
            pid = self._fresh.pop()
            e = entries.get(pid)
            if e is not None and e.measured < 0:
                return pid
        for _ in range(len(self._queue)):
            pid = self._queue.popleft()
            e = entries.get(pid)
            if e is None:
                continue
            if e.measured == self._round:
                self._queue.appendleft(pid)
                return None
            return pid
        return None

    def top(self, n: int) -> list[int]:
        """The ``n`` processes with the most pages on slow nodes (none without any),
        most first; ties in pid order."""
        return [-q for _, q in heapq.nlargest(
            n, ((e.slow, -p) for p, e in self._entries.items() if e.slow > 0))]


class Watchlist:
    """The processes a sampler watches this round: the top of a :class:`Ranking` and a
    rotating window over the rest (see the module docstring)."""

    def __init__(self, ranking: Ranking, limit: int, window: int, dwell: int = 1, *,
                 fill: bool = True, slow_only: bool = False) -> None:
        self.ranking = ranking
        self.fill = fill
        self.slow_only = slow_only
        self.limit = max(1, limit)
        self.window = max(1, min(window, self.limit))
        self.dwell = max(1, dwell)
        self._top: list[int] = []
        self._cursor = 0  # the window starts after this pid
        self._last: list[int] = []  # the window now (pid order from the cursor)
        self._calls = 0

    @property
    def top(self) -> tuple[int, ...]:
        """The processes chosen from the top of the ranking last round, most slow pages
        first (empty while every process in scope is watched)."""
        return tuple(self._top)

    def period_rounds(self, n: int) -> int:
        """Rounds within which each of ``n`` processes in scope is watched."""
        if n <= self.limit:
            return 1
        rest = n - (self.limit - self.window)
        return -(-rest // self.window) * self.dwell

    def choose(self) -> list[int]:
        """List the scope, measure this round's share and return the pids to watch: all
        of them in pid order while they fit, else the top (most slow pages first)
        followed by the window (pid order)."""
        pids = self.ranking.refresh()
        if len(pids) <= self.limit:
            self._top, self._last = [], []
            return pids
        r = self.ranking
        r.measure()
        slow = r.slow_pages
        top_n = self.limit - self.window
        kept = {p for p in self._top if slow(p) > 0}
        for pid in r.top(top_n):
            if pid in kept:
                continue
            if len(kept) < top_n:
                kept.add(pid)
                continue
            weakest = min(kept, key=lambda p: (slow(p), -p))
            if slow(pid) <= DISPLACE_FACTOR * slow(weakest) + DISPLACE_MIN_PAGES:
                break
            kept.discard(weakest)
            kept.add(pid)
        self._top = sorted(kept, key=lambda p: (-slow(p), p))
        size = self.limit - len(self._top) if self.fill else self.window
        if self.slow_only:
            # The window turns over the processes below the top that hold slow pages;
            # the others are looked at by the ranking's measures alone.
            pids = [p for p in pids if slow(p) > 0]
        return self._top + self._window(pids, kept, size)

    def _window(self, pids: Sequence[int], top: set[int], size: int) -> list[int]:
        """``size`` pids (at least ``window``: the top's free places too) in pid order
        after the previous window, wrapping; the same ones for ``dwell`` rounds."""
        self._calls += 1
        rest = [p for p in pids if p not in top]
        if self._last and (self._calls - 1) % self.dwell:
            alive = set(rest)
            out = [p for p in self._last if p in alive][:size]
            after = out[-1] if out else self._cursor
        else:
            if self._last:
                self._cursor = self._last[-1]
            out, after = [], self._cursor
        have = set(out)
        i = bisect_right(rest, after)
        for p in itertools.chain(rest[i:], rest[:i]):
            if len(out) >= size:
                break
            if p not in have:
                out.append(p)
        self._last = out
        return out
