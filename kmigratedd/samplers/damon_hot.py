"""Which of DAMON's hot regions become page candidates, and how.

A region DAMON reports hot is offered only if

- it is *dense*: its ``nr_accesses`` against the most it can count (aggregation /
  sampling interval) estimates the share of its pages that are hot (DAMON samples one
  random page of a region per sampling interval), and that share is at least
  ``sampler.damon.min_density`` — a region where 1 page in 16 is hot is not offered
  whole (``pages_sparse``);
- it is *confirmed*: its parts were hot in the last :data:`CONFIRM_ROUNDS` rounds too
  (DAMON's adaptive regions briefly span a hot region's cold neighbour:
  ``pages_unconfirmed``);
- a sparse *probe* of its pages finds some on a slow node (``pages_skipped_on_fast``):
  a hot set already on the fast tier is not offered again.

Then the hottest regions first (``nr_accesses``, then ``age``) are expanded into page
addresses, weighted by ``nr_accesses``, up to :data:`MAX_PAGES_PER_ROUND`
(``pages_over_budget``).
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

import errno
import math
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any, TypeAlias

from .. import shim
from ..config import DamonConfig
from ..damon import model
from ..damon.model import Region

# Pages expanded from hot regions per round, across all processes (hottest regions
# first; the rest is counted in pages_over_budget).  256 MiB of 4 KiB pages.
MAX_PAGES_PER_ROUND = 1 << 16
# A page is offered when its region was hot in this many consecutive rounds.
CONFIRM_ROUNDS = 2
# A hot region's probe asks the node of 1 page in PROBE_STRIDE, and of at least
# PROBE_MIN_SAMPLES pages (all of a region that has fewer); see HotRegions.on_fast_tier.
PROBE_STRIDE = 32
PROBE_MIN_SAMPLES = 8

QueryNodes = Callable[[int, Any], Any]
PerPid: TypeAlias = "dict[int, tuple[array[int], array[int] | None, array[int]]]"


@dataclass(eq=False)
class HotRegions:
    """The hot-region filter of the DAMON sampler (see the module docstring)."""

    cfg: DamonConfig
    _: KW_ONLY
    page_size: int
    slow: frozenset[int]
    counters: dict[str, int]
    query_nodes: QueryNodes
    confirm_rounds: int
    max_pages_per_round: int
    gone: Callable[[int], None]
    count_error: Callable[[str, BaseException], None]
    # pid -> hot ranges of its last confirm_rounds - 1 rounds.
    history: dict[int, deque[list[tuple[int, int]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.confirm_rounds = max(1, self.confirm_rounds)

    def failed(self, pid: int, what: str, exc: OSError) -> None:
        """A call about ``pid`` failed: the process is gone (ESRCH, ENOENT), or an error."""
        if exc.errno in (errno.ESRCH, errno.ENOENT):
            self.gone(pid)
        else:
            self.count_error(what, exc)

    def dense(self, hot: list[Region]) -> list[Region]:
        """The hot regions whose access count says at least ``min_density`` of their pages
        are hot; the pages of the others are counted in ``pages_sparse``."""
        most = max(1, self.cfg.aggregate_interval_ms // self.cfg.sample_interval_ms)
        need = max(self.cfg.hot_min_accesses, math.ceil(self.cfg.min_density * most))
        dense = [r for r in hot if r.nr_accesses >= need]
        if len(dense) != len(hot):
            self.counters["pages_sparse"] += sum(
                r.end - r.start for r in hot if r.nr_accesses < need) // self.page_size
        return dense

    def confirm(self, pid: int, hot: list[Region]) -> list[Region]:
        """The parts of this round's hot regions that were also hot in the previous
        ``confirm_rounds - 1`` rounds.

        DAMON's region boundaries are adaptive: when a hot region's count dips, it can
        merge with its cold neighbour, and for an aggregation or two the merged region
        reports accesses over both — one snapshot then offers a whole cold neighbour.
        (A region's age would be DAMON's own persistence signal, but when the counts of
        hot regions fluctuate, as under TCG, it resets every aggregation.)"""
        history = self.history.setdefault(pid, deque(maxlen=self.confirm_rounds - 1))
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

    def keep(self, pids: tuple[int, ...]) -> None:
        """Forget the history of processes no longer watched."""
        self.history = {p: h for p, h in self.history.items() if p in pids}

    def expand(self, chosen: list[tuple[Region, int]]) -> PerPid:
        """Pages of the chosen (page-aligned) regions within budget, but for those whose
        probe finds nothing on a slow node."""
        ps = self.page_size
        budget = self.max_pages_per_round
        per_pid: PerPid = {}
        failed: set[int] = set()
        for region, pid in chosen:
            if pid in failed:
                continue
            start = region.start
            pages = (region.end - start) // ps
            on_fast = self.on_fast_tier(pid, start, pages)
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
            addrs, _, weights = per_pid.setdefault(pid, (array("Q"), None, array("I")))
            addrs.extend(array("Q", range(start, start + take * ps, ps)))
            weights.extend(array("I", [min(region.nr_accesses, model.UINT_MAX)]) * take)
        return per_pid

    def on_fast_tier(self, pid: int, start: int, pages: int) -> bool | None:
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
            self.failed(pid, f"move_pages query of pid {pid}", exc)
            return None
        self.counters["pages_probed"] += len(sample)
        counts = shim.count_statuses(status)
        return not any(counts.by_node.get(node, 0) for node in self.slow)
