"""The idle sampler's cold pages: fast-tier pages idle for ``demotion.cold_age_ms``,
offered for demotion while promotion needs room.

A fast-tier page's state is the time since which it is known idle, in ticks of
``demotion.cold_age_ms`` / :data:`COLD_TICKS`, one byte modulo 256: set when the page
is found accessed (and marked again) or first seen as its PFN, kept while it is found
idle (``shim.idle_cold``).  The ticks are read before the test and after the marking,
so a page's age never exceeds the time since the mark it is still idle from, whatever
the pass period; an age is held at :data:`MAX_IDLE_TICKS` while the page is seen, and a
page not seen for 256 ticks or more may look younger than it is, never older.  A page
idle for at least :data:`COLD_TICKS` + 1 ticks (``cold_age_ms`` rounded up, as the mark
may have happened late in its tick) is cold; a page seen accessed within
``cold_age_ms`` never is.

The oldest of the round's cold pages are offered (weight: the age in ticks; of equal
age, those found first), at most the round's cold budget
(kmigratedd/samplers/offers.py ``cold_budget``; a THP counts as one).  While it scans,
a round holds at most twice its budget (plus a piece): beyond that it keeps the oldest
(``shim.idle_pick``), counting the rest in ``cold_pages_over_budget``.
"""

from __future__ import annotations

import logging
from array import array

from .. import shim
from .idle_batch import IdleBatch
from .idle_walk import chunk_of, Geometry, Segment

log = logging.getLogger("kmigratedd.sampler")

# A fast-tier page's idle age is counted in ticks of demotion.cold_age_ms / COLD_TICKS;
# it is cold at COLD_TICKS + 1 ticks.
COLD_TICKS = 16
# Ages are held here while a page is seen (one byte modulo 256 must not wrap).
MAX_IDLE_TICKS = 128


class ColdPages:
    """The fast-tier pages' idle ages and the round's cold pages (see the module
    docstring).  ``budget`` is set by the sampler at the start of a round that ages the
    fast tier."""

    def __init__(self, geometry: Geometry, counters: dict[str, int], fast_mask: bytes,
                 cold_age_ms: int) -> None:
        self.geo = geometry
        self.counters = counters
        self.fast_mask = fast_mask
        self.tick_s = cold_age_ms / 1000 / COLD_TICKS
        self.aged = array("Q", [0, 0])  # fast-tier pages aged, accesses found
        size = geometry.chunk_pages
        self._addrs = array("Q", bytes(8 * size))
        self._nodes = array("i", bytes(4 * size))
        self._ages = array("I", bytes(4 * size))
        self.budget = 0
        # pid -> the round's cold pages (addresses, nodes, ages), within the cold budget
        self.found: dict[int, tuple[array[int], array[int], array[int]]] = {}
        self.held = 0
        self._age_counts = array("Q", bytes(8 * 256))  # the round's cold pages by age

    def begin(self, budget: int) -> None:
        self.budget = budget
        self.found = {}
        self.held = 0
        self._age_counts = array("Q", bytes(8 * 256))

    def tick(self, now: float) -> int:
        return int(now / self.tick_s)

    def age(self, batch: IdleBatch, seg: Segment, test_tick: int, mark_tick: int) -> None:
        """Fold a segment's results into its fast-tier pages' ages; keep the cold ones."""
        proc = seg.proc
        chunk, fresh = chunk_of(proc.cold, seg.key, self.geo.chunk_pages)
        aged = self.aged[0]
        lo, hi = seg.off, seg.off + seg.n
        idle, tags, nodes = batch.results(seg)
        ncold = shim.idle_cold(idle, tags, nodes, self.fast_mask,
                               memoryview(chunk.state)[lo:hi], memoryview(chunk.tag)[lo:hi],
                               test_tick, mark_tick, COLD_TICKS + 1, MAX_IDLE_TICKS,
                               seg.addr, self._addrs, self._nodes, self._ages,
                               self._age_counts, self.aged, page_size=self.geo.page_size)
        if fresh and self.aged[0] != aged:
            proc.cold[seg.key] = chunk
        if not ncold:
            return
        self.counters["cold_pages_found"] += ncold
        addrs, nodes_, ages = self.found.setdefault(proc.pid,
                                                    (array("Q"), array("i"), array("I")))
        addrs.extend(self._addrs[:ncold])
        nodes_.extend(self._nodes[:ncold])
        ages.extend(self._ages[:ncold])
        self.held += ncold
        if self.held > 2 * self.budget:
            self.keep_oldest()

    def keep_oldest(self) -> None:
        """Keep the round's ``budget`` oldest cold pages (of equal age, those found
        first); the rest is counted in ``cold_pages_over_budget``."""
        budget, counts = self.budget, self._age_counts
        if self.held <= budget:
            return
        kept, age = 0, len(counts) - 1
        while kept + counts[age] < budget:  # the youngest age kept, and how many of it
            kept += counts[age]
            age -= 1
        quota = array("Q", [budget - kept])
        held = 0
        for pid in list(self.found):
            addrs, nodes, ages = self.found[pid]
            self.counters["cold_pages_over_budget"] += len(addrs)
            n = shim.idle_pick(addrs, nodes, ages, age, quota)
            self.counters["cold_pages_over_budget"] -= n
            held += n
            if not n:
                del self.found[pid]
        for younger in range(age):
            counts[younger] = 0
        counts[age] = budget - kept - quota[0]  # of the youngest age kept, those taken
        self.held = held

    def take(self) -> dict[int, tuple[array[int], array[int], array[int]]]:
        """The round's cold pages, oldest first within the budget, per pid."""
        self.keep_oldest()
        found, self.found = self.found, {}
        return found
