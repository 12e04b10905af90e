"""DAMON's sysfs interface: writes a :mod:`~kmigratedd.samplers.damon_model` context to
/sys/kernel/mm/damon/admin and reads the tried regions back, all through
:class:`~kmigratedd.kernelfs.KernelFs` (Documentation/admin-guide/mm/damon/usage.rst).

One kdamond (``kdamonds/0``) with one context (6.12 refuses ``nr_contexts`` > 1 with
EINVAL).  The kdamond's ``state`` file takes the commands ``on``, ``off``, ``commit``
(apply the written parameters while it runs) and ``update_schemes_tried_regions``,
which blocks until the kdamond has applied the schemes once (one aggregation interval
plus up to 100 ms of polling).  Kernel behaviour the caller builds on, as of 6.12:
``on`` with a pid that has exited fails with EINVAL; ``commit`` with one succeeds and
the kdamond stops; ``off`` on a kdamond that is off fails with EPERM, the other
commands with EINVAL.  Writing ``nr_kdamonds`` rebuilds every kdamond directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import SamplerUnavailableError
from ..kernelfs import KernelFs
from .damon_model import Context, Intervals, Region

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


class DamonSysfs:
    """Kdamond 0 and its one context, through ``fs``."""

    def __init__(self, fs: KernelFs) -> None:
        self.fs = fs

    def nr_kdamonds(self) -> int:
        return self.fs.read_int(NR_KDAMONDS)

    def set_nr_kdamonds(self, n: int) -> None:
        self.fs.write(NR_KDAMONDS, str(n))

    def is_on(self) -> bool:
        return (self.fs.read_optional(STATE) or "").strip() == "on"

    def command(self, cmd: str) -> None:
        """Write ``cmd`` (on, off, commit, update_schemes_tried_regions) to the state file."""
        self.fs.write(STATE, cmd)

    def write_context(self, ctx: Context) -> None:
        """The context's operations and monitoring attributes (not its targets)."""
        fs = self.fs
        fs.write(f"{KDAMOND}/contexts/nr_contexts", "1")
        avail = fs.read_optional(f"{CONTEXT}/avail_operations")
        if avail is not None and ctx.operations not in avail.split():
            raise SamplerUnavailableError(f"the kernel's DAMON has no {ctx.operations} "
                                          "operations (CONFIG_DAMON_VADDR)")
        fs.write(f"{CONTEXT}/operations", ctx.operations)
        attrs = f"{CONTEXT}/monitoring_attrs"
        self.write_intervals(ctx.attrs.intervals)
        fs.write(f"{attrs}/intervals/update_us", str(ctx.attrs.intervals.update_us))
        fs.write(f"{attrs}/nr_regions/min", str(ctx.attrs.min_regions))
        fs.write(f"{attrs}/nr_regions/max", str(ctx.attrs.max_regions))

    def write_intervals(self, intervals: Intervals) -> None:
        """The sampling and aggregation intervals (applied by the next commit or on)."""
        d = f"{CONTEXT}/monitoring_attrs/intervals"
        self.fs.write(f"{d}/sample_us", str(intervals.sample_us))
        self.fs.write(f"{d}/aggr_us", str(intervals.aggr_us))

    def write_targets(self, ctx: Context) -> None:
        """The context's targets, then its schemes."""
        fs = self.fs
        fs.write(f"{CONTEXT}/targets/nr_targets", str(len(ctx.targets)))
        for i, target in enumerate(ctx.targets):
            fs.write(f"{CONTEXT}/targets/{i}/pid_target", str(target.pid))
        fs.write(f"{CONTEXT}/schemes/nr_schemes", str(len(ctx.schemes)))
        for i, scheme in enumerate(ctx.schemes):
            s = f"{CONTEXT}/schemes/{i}"
            fs.write(f"{s}/action", scheme.action)
            pattern = scheme.access_pattern
            for key, rng in (("sz", pattern.sz), ("nr_accesses", pattern.nr_accesses),
                             ("age", pattern.age)):
                fs.write(f"{s}/access_pattern/{key}/min", str(rng.min))
                fs.write(f"{s}/access_pattern/{key}/max", str(rng.max))
            fs.write(f"{s}/filters/nr_filters", str(len(scheme.filters)))
            for j, f in enumerate(scheme.filters):
                fs.write(f"{s}/filters/{j}/type", "target")
                fs.write(f"{s}/filters/{j}/damon_target_idx", str(f.target_idx))
                fs.write(f"{s}/filters/{j}/matching", "Y" if f.matching else "N")

    def nr_tried_regions(self, scheme: int) -> int:
        """How many regions scheme ``scheme`` was tried on at the last
        ``update_schemes_tried_regions`` (their directories, none of them read)."""
        return len(self.fs.listdir(f"{CONTEXT}/schemes/{scheme}/tried_regions", r"\d+"))

    def tried_regions(self, scheme: int,
                      on_error: Callable[[str, Exception], None]) -> list[Region]:
        """The regions scheme ``scheme`` was tried on at the last
        ``update_schemes_tried_regions``; a region that cannot be read goes to
        ``on_error`` (what, exception) and is left out."""
        base = f"{CONTEXT}/schemes/{scheme}/tried_regions"
        out = []
        for name in self.fs.listdir(base, r"\d+"):
            d = f"{base}/{name}"
            try:
                out.append(Region(self.fs.read_int(f"{d}/start"), self.fs.read_int(f"{d}/end"),
                                  self.fs.read_int(f"{d}/nr_accesses"),
                                  self.fs.read_int(f"{d}/age")))
            except (OSError, ValueError) as exc:
                on_error(f"reading {d}", exc)
        return out
