"""The idle sampler's batch, and the slow-tier pages' history it ages.

:class:`IdleBatch` gathers a round's tracked pages piece by piece (``shim.idle_track``:
pagemap entries → present pages on the nodes tracked → THP heads, with PFN, tag and
node), up to :data:`BATCH_PAGES`, then tests them against
``/sys/kernel/mm/page_idle/bitmap`` in one C call (``shim.idle_test_batch``: sorted by
PFN first when their order descends often) and marks the pages found accessed idle
again (``shim.idle_mark``).  Only those: the pages found idle still are (PG_idle set,
every PTE old), and marking them would repeat the rmap walk the test just did, at the
kernel's expense.

:class:`HotPages` folds each tested segment into the history of its slow-tier pages
(``shim.idle_age``: bit i, accessed at the observation i passes ago; a test counts only
when the page was marked at its previous observation with the same PFN) and keeps the
hot ones, accessed in ``hot_rounds`` of the last ``history_rounds`` observations, with
weight = the accessed rounds in the history.
"""

from __future__ import annotations

import logging
from array import array
from typing import TypeAlias

from .. import shim
from .idle_walk import chunk_of, Geometry, Proc, Segment

log = logging.getLogger("kmigratedd.sampler")

# PFNs tested and marked together (sorted once, in C, if out of order): 256 MiB of
# tracked 4 KiB pages.  Bounds the round's scratch memory (about 40 bytes a page).
BATCH_PAGES = 1 << 16

PerPid: TypeAlias = "dict[int, list[tuple[array[int], array[int], array[int]]]]"


class IdleBatch:
    """A round's tracked pages and their scratch, allocated once and reused round after
    round: PFNs, tags and nodes (written by shim.idle_track), test results, the PFNs to
    mark again and the sort space."""

    def __init__(self, geometry: Geometry, counters: dict[str, int],
                 block_table: tuple[int, array[int]]) -> None:
        self.geo = geometry
        self.counters = counters
        block_shift, self.block_table = block_table
        self.pfn_block_shift = block_shift - geometry.page_shift
        cap = BATCH_PAGES + geometry.chunk_pages
        self.pfns = memoryview(array("Q", bytes(8 * cap)))
        self.tags = memoryview(bytearray(cap))
        self.nodes = memoryview(array("i", bytes(4 * cap)))
        self.idle = memoryview(bytearray(cap))
        self._again = memoryview(array("Q", bytes(8 * cap)))
        self._scratch = array("Q", bytes(16 * cap))
        self.huge = array("Q", [0, 0])  # THP heads, hugetlbfs slots
        self.length = 0
        self.segments: list[Segment] = []

    def add(self, proc: Proc, key: int, off: int, n: int, addr: int, entries: memoryview,
            mask: bytes, kpageflags_fd: int | None) -> bool:
        """Track the piece's present pages on the nodes in ``mask``; False if it has none."""
        pos = self.length
        end = pos + n
        geo = self.geo
        if not shim.idle_track(entries, addr >> geo.page_shift, self.pfn_block_shift,
                               self.block_table, mask, geo.huge_pages, kpageflags_fd,
                               self.pfns[pos:end], self.tags[pos:end], self.nodes[pos:end],
                               self.huge):
            return False
        self.length = end
        self.segments.append(Segment(proc, key, off, n, addr, pos))
        return True

    @property
    def full(self) -> bool:
        return self.length >= BATCH_PAGES

    def test(self, bitmap_fd: int) -> list[Segment]:
        """Test the batch and mark the pages found accessed idle again; returns its
        segments (none if the bitmap failed, counted) and empties the batch."""
        n, segments = self.length, self.segments
        self.length, self.segments = 0, []
        if not segments:
            return []
        try:
            accessed, was_sorted = shim.idle_test_batch(bitmap_fd, self.pfns[:n], self.idle,
                                                        self._again, self._scratch)
            self.counters["batches_sorted"] += was_sorted
            if accessed:
                shim.idle_mark(bitmap_fd, self._again[:n])
                self.counters["pages_marked"] += accessed
        except OSError as exc:
            self.counters["errors"] += 1
            log.warning("idle sampler: %s: %d pages not tested this round", exc, n)
            return []
        return segments

    def results(self, seg: Segment) -> tuple[memoryview, memoryview, memoryview]:
        """The segment's test results, tags and nodes."""
        p, q = seg.pos, seg.pos + seg.n
        return self.idle[p:q], self.tags[p:q], self.nodes[p:q]


class HotPages:
    """Slow-tier pages' histories and the round's hot pages, per pid."""

    def __init__(self, geometry: Geometry, history_rounds: int, hot_rounds: int,
                 slow_mask: bytes) -> None:
        self.geo = geometry
        self.history_rounds = history_rounds
        self.hot_rounds = hot_rounds
        self.slow_mask = slow_mask
        self.aged = array("Q", [0, 0])  # pages tested, accesses counted
        size = geometry.chunk_pages
        self._addrs = array("Q", bytes(8 * size))
        self._nodes = array("i", bytes(4 * size))
        self._weights = array("I", bytes(4 * size))
        self.found: PerPid = {}

    def age(self, batch: IdleBatch, seg: Segment, *, mixed: bool) -> None:
        """Fold a segment's results into its pages' histories; ``mixed``: the batch also
        holds fast-tier pages, which this leaves alone."""
        proc = seg.proc
        chunk, fresh = chunk_of(proc.chunks, seg.key, self.geo.chunk_pages)
        tracked = self.aged[0]
        lo, hi = seg.off, seg.off + seg.n
        idle, tags, nodes = batch.results(seg)
        nhot = shim.idle_age(idle, tags, nodes, memoryview(chunk.state)[lo:hi],
                             memoryview(chunk.tag)[lo:hi], self.history_rounds,
                             self.hot_rounds, seg.addr, self._addrs, self._nodes,
                             self._weights, self.aged, page_size=self.geo.page_size,
                             mask=self.slow_mask if mixed else None)
        if fresh and self.aged[0] != tracked:  # a chunk is kept once it tracks a page
            proc.chunks[seg.key] = chunk
        if nhot:
            self.found.setdefault(proc.pid, []).append(
                (self._addrs[:nhot], self._nodes[:nhot], self._weights[:nhot]))

    def take(self) -> dict[int, tuple[array[int], array[int], array[int]]]:
        """The round's hot pages, per pid (addresses, nodes, weights)."""
        found, self.found = self.found, {}
        out = {}
        for pid, parts in found.items():
            addrs, nodes, weights = array("Q"), array("i"), array("I")
            for a, n, w in parts:
                addrs.extend(a)
                nodes.extend(n)
                weights.extend(w)
            out[pid] = (addrs, nodes, weights)
        return out
