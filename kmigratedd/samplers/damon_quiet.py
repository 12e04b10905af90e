"""The DAMON sampler's quiet mode: after ``sampler.damon.quiet_after_rounds`` rounds in a
row that found nothing to promote (and no cold pages to demote while room was needed),
the sampling and aggregation intervals are multiplied by ``quiet_slowdown`` (the
aggregation interval at most to :data:`QUIET_MAX_AGGR_MS`) and committed: the kdamond's
CPU, most of the idle cost, falls by about that factor.  The first round that finds pages
to offer, or a process new to the targets, commits the configured intervals again."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

import logging
from collections.abc import Callable

from ..config import DamonConfig
from ..damon import model
from ..damon.sysfs import DamonSysfs

log = logging.getLogger("kmigratedd.sampler")

# Quiet mode never makes the aggregation interval longer than this (a round waits for
# one aggregation in the kernel; stop() waits for a round).
QUIET_MAX_AGGR_MS = 10_000


@dataclass(eq=False)
class QuietPacer:
    """When the kdamond runs at its configured pace, and when slowed down.  ``live()``:
    whether a commit may be written now (not stopping, kdamond on)."""

    sysfs: DamonSysfs
    attrs: model.MonitoringAttrs
    cfg: DamonConfig
    counters: dict[str, int]
    _: KW_ONLY
    live: Callable[[], bool]
    count_error: Callable[[str, BaseException], None]
    quiet: bool = False
    rounds_without_offers: int = 0

    def factor(self) -> int:
        aggr = self.cfg.aggregate_interval_ms
        return max(1, min(self.cfg.quiet_slowdown, QUIET_MAX_AGGR_MS // aggr))

    def pace(self, offered: bool) -> None:
        """Enter quiet mode after enough rounds without offers (hot pages to promote, or
        cold pages to demote while promotion needs room); leave it on an offer."""
        if offered:
            self.rounds_without_offers = 0
            if self.quiet:
                self.set(False)
            return
        self.rounds_without_offers += 1
        after = self.cfg.quiet_after_rounds
        if (not self.quiet and after and self.rounds_without_offers >= after
                and self.factor() > 1):
            self.set(True)

    def set(self, quiet: bool) -> None:
        if not self.live():
            return
        try:
            self.sysfs.write_intervals(self.attrs.intervals.slowed(self.factor() if quiet else 1))
            self.sysfs.command("commit")
        except OSError as exc:
            self.count_error("committing the monitoring intervals", exc)
            return
        self.quiet = quiet
        self.counters["quiet_entered" if quiet else "quiet_left"] += 1
        log.info("damon sampler: %s", f"quiet after {self.rounds_without_offers} rounds with "
                 f"nothing to promote or demote: intervals x{self.factor()}" if quiet
                 else "pages to promote or demote: intervals back to the configured ones")

    def wake(self) -> None:
        """Before a commit or start for new targets: back to the configured intervals
        (written, not committed: the caller's commit or "on" applies them)."""
        self.rounds_without_offers = 0
        if self.quiet:
            self.sysfs.write_intervals(self.attrs.intervals)
            self.quiet = False
