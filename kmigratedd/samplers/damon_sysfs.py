"""DAMON's sysfs interface: writes a :mod:`~kmigratedd.samplers.damon_model` context to
/sys/kernel/mm/damon/admin and reads the tried regions back, all through
:class:`~kmigratedd.kernelfs.KernelFs` (Documentation/admin-guide/mm/damon/usage.rst).

A :class:`DamonSysfs` drives one kdamond (``kdamonds/<index>``, 0 for the DAMON
sampler) with one context (6.12 refuses ``nr_contexts`` > 1 with EINVAL).  The
kdamond's ``state`` file takes the commands ``on``, ``off``, ``commit`` (apply the
written parameters while it runs), ``update_schemes_tried_regions``, which blocks
until the kdamond has applied the schemes once (one aggregation interval plus up to
100 ms of polling), and ``update_schemes_stats``, which refreshes each scheme's
``stats/`` files (nr_tried, sz_tried, nr_applied, sz_applied, qt_exceeds).  Kernel
behaviour the caller builds on, as of 6.12: ``on`` with a pid that has exited fails
with EINVAL; ``commit`` with one succeeds and the kdamond stops; ``off`` on a kdamond
that is off fails with EPERM, the other commands with EINVAL.  Writing
``nr_kdamonds`` rebuilds every kdamond directory.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable

from ..errors import SamplerUnavailableError
from ..kernelfs import KernelFs
from .damon_model import AccessPattern, Context, Intervals, Region, Scheme, YoungFilter

ADMIN = "/sys/kernel/mm/damon/admin"
KDAMONDS = f"{ADMIN}/kdamonds"
NR_KDAMONDS = f"{KDAMONDS}/nr_kdamonds"
OSRELEASE = "/proc/sys/kernel/osrelease"
# DAMON's own users that start a kdamond exclusively (damon_start(..., true)): while one
# runs, turning a sysfs kdamond on fails with EBUSY.
DAMON_MODULES = ("damon_reclaim", "damon_lru_sort")
# schemes/<s>/tried_regions and the "target" DAMOS filter (damon_target_idx).
MIN_KERNEL = (6, 3)
# The migrate_cold action with schemes/<s>/target_nid (paddr operations only).
MIGRATE_KERNEL = (6, 11)
STATS = ("nr_tried", "sz_tried", "nr_applied", "sz_applied", "qt_exceeds")


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
    """Kdamond ``index`` and its one context, through ``fs``."""

    def __init__(self, fs: KernelFs, index: int = 0) -> None:
        self.fs = fs
        self.index = index
        self.kdamond = f"{KDAMONDS}/{index}"
        self.state = f"{self.kdamond}/state"
        self.context = f"{self.kdamond}/contexts/0"

    def nr_kdamonds(self) -> int:
        return self.fs.read_int(NR_KDAMONDS)

    def set_nr_kdamonds(self, n: int) -> None:
        self.fs.write(NR_KDAMONDS, str(n))

    def is_on(self) -> bool:
        return (self.fs.read_optional(self.state) or "").strip() == "on"

    def command(self, cmd: str) -> None:
        """Write ``cmd`` (on, off, commit, update_schemes_tried_regions,
        update_schemes_stats) to the state file."""
        self.fs.write(self.state, cmd)

    def write_context(self, ctx: Context) -> None:
        """The context's operations and monitoring attributes (not its targets)."""
        fs = self.fs
        fs.write(f"{self.kdamond}/contexts/nr_contexts", "1")
        avail = fs.read_optional(f"{self.context}/avail_operations")
        if avail is not None and ctx.operations not in avail.split():
            raise SamplerUnavailableError(f"the kernel's DAMON has no {ctx.operations} "
                                          f"operations (CONFIG_DAMON_{ctx.operations.upper()})")
        fs.write(f"{self.context}/operations", ctx.operations)
        attrs = f"{self.context}/monitoring_attrs"
        self.write_intervals(ctx.attrs.intervals)
        fs.write(f"{attrs}/intervals/update_us", str(ctx.attrs.intervals.update_us))
        fs.write(f"{attrs}/nr_regions/min", str(ctx.attrs.min_regions))
        fs.write(f"{attrs}/nr_regions/max", str(ctx.attrs.max_regions))

    def write_intervals(self, intervals: Intervals) -> None:
        """The sampling and aggregation intervals (applied by the next commit or on)."""
        d = f"{self.context}/monitoring_attrs/intervals"
        self.fs.write(f"{d}/sample_us", str(intervals.sample_us))
        self.fs.write(f"{d}/aggr_us", str(intervals.aggr_us))

    def write_targets(self, ctx: Context) -> None:
        """The context's targets, then its schemes."""
        fs = self.fs
        fs.write(f"{self.context}/targets/nr_targets", str(len(ctx.targets)))
        for i, target in enumerate(ctx.targets):
            t = f"{self.context}/targets/{i}"
            if target.pid is not None:
                fs.write(f"{t}/pid_target", str(target.pid))
            if target.regions:
                fs.write(f"{t}/regions/nr_regions", str(len(target.regions)))
                for j, (start, end) in enumerate(target.regions):
                    fs.write(f"{t}/regions/{j}/start", str(start))
                    fs.write(f"{t}/regions/{j}/end", str(end))
        fs.write(f"{self.context}/schemes/nr_schemes", str(len(ctx.schemes)))
        for i, scheme in enumerate(ctx.schemes):
            self.write_scheme(i, scheme)

    def write_scheme(self, i: int, scheme: Scheme) -> None:
        """Scheme ``i``'s action, target node, access pattern, quota and filters."""
        fs = self.fs
        s = f"{self.context}/schemes/{i}"
        try:
            fs.write(f"{s}/action", scheme.action)
        except OSError as exc:
            if exc.errno == errno.EINVAL and scheme.action != "stat":
                raise SamplerUnavailableError(f"the kernel's DAMON has no {scheme.action} "
                                              f"action ({s}/action)") from None
            raise
        if scheme.target_nid is not None:
            fs.write(f"{s}/target_nid", str(scheme.target_nid))
        self.write_access_pattern(i, scheme.access_pattern)
        if scheme.quota is not None:
            q = scheme.quota
            fs.write(f"{s}/quotas/ms", "0")
            fs.write(f"{s}/quotas/bytes", str(q.bytes))
            fs.write(f"{s}/quotas/reset_interval_ms", str(q.reset_interval_ms))
            fs.write(f"{s}/quotas/weights/sz_permil", str(q.sz_permil))
            fs.write(f"{s}/quotas/weights/nr_accesses_permil", str(q.nr_accesses_permil))
            fs.write(f"{s}/quotas/weights/age_permil", str(q.age_permil))
        fs.write(f"{s}/filters/nr_filters", str(len(scheme.filters)))
        for j, f in enumerate(scheme.filters):
            if isinstance(f, YoungFilter):
                fs.write(f"{s}/filters/{j}/type", "young")
            else:
                fs.write(f"{s}/filters/{j}/type", "target")
                fs.write(f"{s}/filters/{j}/damon_target_idx", str(f.target_idx))
            fs.write(f"{s}/filters/{j}/matching", "Y" if f.matching else "N")

    def write_access_pattern(self, i: int, pattern: AccessPattern) -> None:
        s = f"{self.context}/schemes/{i}"
        for key, rng in (("sz", pattern.sz), ("nr_accesses", pattern.nr_accesses),
                         ("age", pattern.age)):
            self.fs.write(f"{s}/access_pattern/{key}/min", str(rng.min))
            self.fs.write(f"{s}/access_pattern/{key}/max", str(rng.max))

    def write_quota_bytes(self, i: int, nbytes: int) -> None:
        """Scheme ``i``'s size quota (applied by the next commit)."""
        self.fs.write(f"{self.context}/schemes/{i}/quotas/bytes", str(nbytes))

    def scheme_stats(self, i: int) -> dict[str, int]:
        """Scheme ``i``'s counters as of the last ``update_schemes_stats`` (the ones the
        kernel has; a file it lacks is left out)."""
        out = {}
        for name in STATS:
            text = self.fs.read_optional(f"{self.context}/schemes/{i}/stats/{name}")
            if text is not None and text.strip().isdigit():
                out[name] = int(text)
        return out

    def nr_tried_regions(self, scheme: int) -> int:
        """How many regions scheme ``scheme`` was tried on at the last
        ``update_schemes_tried_regions`` (their directories, none of them read)."""
        return len(self.fs.listdir(f"{self.context}/schemes/{scheme}/tried_regions", r"\d+"))

    def tried_regions(self, scheme: int,
                      on_error: Callable[[str, Exception], None]) -> list[Region]:
        """The regions scheme ``scheme`` was tried on at the last
        ``update_schemes_tried_regions``; a region that cannot be read goes to
        ``on_error`` (what, exception) and is left out."""
        base = f"{self.context}/schemes/{scheme}/tried_regions"
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
