"""The counters of a node worker, each declared once where its event happens, and the one
frozen snapshot status and metrics read.

- :class:`MoveStats`: what the move pipeline did (kmigratedd/pipeline.py counts it):
  batches, pages tried, per-page outcomes, pages moved by source and destination node,
  whole-call failures, and the histograms of batch sizes and move durations, observed
  when a batch settles (nothing is buffered for a scrape);
- :class:`PolicyStats`: what the worker's policy held back or dropped, and when it last
  went round (kmigratedd/worker.py counts it);
- :class:`WorkerSnapshot`: both, copied, with the worker's gauges and the pages the
  kernel demoted for the node (kswapd, a DAMON paddr scheme), which the demoter counts.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

BATCH_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536)
DURATION_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0)


@dataclass
class Histogram:
    """Counts per bucket (an observation goes to the first bucket whose upper bound it
    does not exceed; the last counts those above every bound) and their sum: memory fixed
    by the buckets, whatever is observed."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total)

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class MoveStats:
    """What the move pipeline did with the pages it was handed."""

    batches: int = 0
    parallel_batches: int = 0
    pages_attempted: int = 0
    promoted: Counter[tuple[int, int]] = field(default_factory=Counter)  # (src, dst) -> pages
    outcomes: Counter[str] = field(default_factory=Counter)  # moved, EBUSY, ENOMEM...
    # Demotions of the sampler's cold pages, moved by the pipeline too.
    demoted: Counter[tuple[int, int]] = field(default_factory=Counter)
    demote_outcomes: Counter[str] = field(default_factory=Counter)
    whole_call_errors: Counter[str] = field(default_factory=Counter)
    dry_run_pages: int = 0
    move_seconds: float = 0.0
    batch_pages: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    move_durations: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))

    @property
    def promoted_pages(self) -> int:
        return sum(self.promoted.values())

    @property
    def demoted_pages(self) -> int:
        return sum(self.demoted.values())

    def batch(self, pages: int, seconds: float | None, threads: int) -> None:
        """Count one batch (``seconds`` None: its call failed as a whole)."""
        self.batches += 1
        self.pages_attempted += pages
        self.batch_pages.observe(pages)
        if seconds is not None:
            self.move_seconds += seconds
            self.move_durations.observe(seconds)
        if threads > 1:
            self.parallel_batches += 1


# Demotion candidates not demoted, by reason: promoted_recently (within the ping-pong
# window), rate_limited, busy, gone, not_needed (room was made without them).
DEMOTE_REFUSALS = ("promoted_recently", "rate_limited", "busy", "gone", "not_needed")


@dataclass
class PolicyStats:
    """What a worker's policy held back or dropped, and its rounds."""

    rounds: int = 0
    rate_limited_seconds: float = 0.0   # waited for tokens
    rate_limited_batches: int = 0       # batches deferred or trimmed by the rate limit
    headroom_blocked_seconds: float = 0.0
    pressure_held_seconds: float = 0.0  # memory pressure held promotion and demotion back
    enomem_backoff_seconds: float = 0.0
    pingpong_held: int = 0
    busy_retried: int = 0
    busy_dropped: int = 0
    pids_gone: int = 0
    demote_refused: Counter[str] = field(default_factory=Counter)
    room_starved_seconds: float = 0.0   # room needed and no cold page to demote
    heartbeat: float = 0.0              # time.time() of the last round


@dataclass(frozen=True)
class WorkerSnapshot:
    """A worker's state as status and metrics read it: its pipeline's and its policy's
    counters, its gauges, and the pages the kernel demoted from its node."""

    node: int
    moves: MoveStats
    policy: PolicyStats
    inbox_pages: int
    inbox_dropped: int
    headroom_blocked: bool
    headroom_floor_bytes: int   # the free memory promotion stops at (the kernel's with kswapd)
    batch_pages_now: int        # pages per move_pages call now (workers.max_batch_ms)
    room_needed_bytes: int
    demote_inbox_pages: int
    demote_to: int | None
    demote_regrets: int
    protect_s: float
    promoted_then_cold: int
    pingpong_window_s: float
    pingpong_widenings: int
    pingpongs: int
    # Pages the kernel demoted from this node for the demoter (kswapd, a paddr scheme).
    kernel_demoted: dict[tuple[int, int], int] = field(default_factory=dict)
    # The slow nodes whose pages promote to this one.
    sources: tuple[int, ...] = ()

    @property
    def promoted(self) -> dict[tuple[int, int], int]:
        return dict(self.moves.promoted)

    @property
    def promoted_pages(self) -> int:
        return self.moves.promoted_pages

    @property
    def demoted(self) -> dict[tuple[int, int], int]:
        """Pages demoted from the node: the sampler's cold pages the pipeline moved, and
        those the kernel demoted for the demoter."""
        return dict(Counter(self.moves.demoted) + Counter(self.kernel_demoted))

    @property
    def demoted_pages(self) -> int:
        return sum(self.demoted.values())

    @property
    def errors(self) -> dict[str, int]:
        """Per-page outcomes other than moved, and whole calls that failed (``call:``)."""
        return ({k: v for k, v in sorted(self.moves.outcomes.items()) if k != "moved"}
                | {f"call:{k}": v for k, v in self.moves.whole_call_errors.items()})
