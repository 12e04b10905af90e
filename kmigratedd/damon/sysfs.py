"""DAMON's sysfs interface: writes a :mod:`~kmigratedd.damon.model` context to
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

The files that reach the kdamonds (a kdamond's ``state`` and ``pid``, the ``nr_*``
files) take one global lock with ``mutex_trylock`` and fail with EBUSY while anyone
holds it: a kdamond holds it for a moment every sampling interval, and for the whole
of an ``update_schemes_tried_regions``; another thread or tool may hold it too.  Every
read and write here retries an EBUSY for up to :attr:`DamonSysfs.busy_wait_s`, and
:func:`damon_in_use` reads the same way.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import SamplerUnavailableError
from ..kernelfs import KernelFs
from .model import AccessPattern, Context, Intervals, Region, Scheme, YoungFilter

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
# How long an EBUSY from DAMON's sysfs lock is retried: longer than a slowed-down
# aggregation interval, through which a tried-regions update holds the lock.
BUSY_WAIT_S = 3.0

T = TypeVar("T")


def retry_busy(op: Callable[[], T], wait_s: float = BUSY_WAIT_S,
               on_retry: Callable[[], None] | None = None) -> T:
    """``op()``, retried while it fails with EBUSY, for up to ``wait_s`` seconds (the
    last EBUSY is raised).  ``on_retry`` is called before each retry."""
    deadline = time.monotonic() + wait_s
    delay = 0.002
    while True:
        try:
            return op()
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
        if on_retry is not None:
            on_retry()
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def kernel_release(fs: KernelFs) -> tuple[int, int] | None:
    text = fs.read_optional(OSRELEASE)
    m = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def damon_in_use(fs: KernelFs) -> str | None:
    """Who else is running DAMON, or None."""
    for name in fs.listdir(KDAMONDS, r"\d+"):
        k = DamonSysfs(fs, int(name))
        try:
            on, pid = k.is_on(), k.pid() or "?"
        except OSError:  # busy past the wait, or gone with an nr_kdamonds write
            continue
        if on:
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

    busy_wait_s = BUSY_WAIT_S

    def __init__(self, fs: KernelFs, index: int = 0) -> None:
        self.fs = fs
        self.index = index
        self.kdamond = f"{KDAMONDS}/{index}"
        self.state = f"{self.kdamond}/state"
        self.context = f"{self.kdamond}/contexts/0"
        self.busy_retries = 0  # EBUSY answers retried (DAMON's sysfs lock was held)

    def _busy(self) -> None:
        self.busy_retries += 1

    def read_optional(self, kpath: str) -> str | None:
        """A DAMON file's text, or None if it does not exist (EBUSY retried)."""
        return retry_busy(lambda: self.fs.read_optional(kpath), self.busy_wait_s, self._busy)

    def read_int(self, kpath: str) -> int:
        return retry_busy(lambda: self.fs.read_int(kpath), self.busy_wait_s, self._busy)

    def write(self, kpath: str, value: str) -> None:
        """Write a DAMON file (EBUSY retried)."""
        retry_busy(lambda: self.fs.write(kpath, value), self.busy_wait_s, self._busy)

    def nr_kdamonds(self) -> int:
        return self.read_int(NR_KDAMONDS)

    def set_nr_kdamonds(self, n: int) -> None:
        self.write(NR_KDAMONDS, str(n))

    def is_on(self) -> bool:
        return (self.read_optional(self.state) or "").strip() == "on"

    def pid(self) -> str | None:
        """The kdamond's pid as the kernel shows it ("-1" while off), or None."""
        text = self.read_optional(f"{self.kdamond}/pid")
        return None if text is None else text.strip()

    def command(self, cmd: str) -> None:
        """Write ``cmd`` (on, off, commit, update_schemes_tried_regions,
        update_schemes_stats) to the state file."""
        self.write(self.state, cmd)

    def write_context(self, ctx: Context) -> None:
        """The context's operations and monitoring attributes (not its targets)."""
        self.write(f"{self.kdamond}/contexts/nr_contexts", "1")
        avail = self.read_optional(f"{self.context}/avail_operations")
        if avail is not None and ctx.operations not in avail.split():
            raise SamplerUnavailableError(f"the kernel's DAMON has no {ctx.operations} "
                                          f"operations (CONFIG_DAMON_{ctx.operations.upper()})")
        self.write(f"{self.context}/operations", ctx.operations)
        attrs = f"{self.context}/monitoring_attrs"
        self.write_intervals(ctx.attrs.intervals)
        self.write(f"{attrs}/intervals/update_us", str(ctx.attrs.intervals.update_us))
        self.write(f"{attrs}/nr_regions/min", str(ctx.attrs.min_regions))
        self.write(f"{attrs}/nr_regions/max", str(ctx.attrs.max_regions))

    def write_intervals(self, intervals: Intervals) -> None:
        """The sampling and aggregation intervals (applied by the next commit or on)."""
        d = f"{self.context}/monitoring_attrs/intervals"
        self.write(f"{d}/sample_us", str(intervals.sample_us))
        self.write(f"{d}/aggr_us", str(intervals.aggr_us))

    def write_targets(self, ctx: Context) -> None:
        """The context's targets, then its schemes."""
        self.write(f"{self.context}/targets/nr_targets", str(len(ctx.targets)))
        for i, target in enumerate(ctx.targets):
            t = f"{self.context}/targets/{i}"
            if target.pid is not None:
                self.write(f"{t}/pid_target", str(target.pid))
            if target.regions:
                self.write(f"{t}/regions/nr_regions", str(len(target.regions)))
                for j, (start, end) in enumerate(target.regions):
                    self.write(f"{t}/regions/{j}/start", str(start))
                    self.write(f"{t}/regions/{j}/end", str(end))
        self.write(f"{self.context}/schemes/nr_schemes", str(len(ctx.schemes)))
        for i, scheme in enumerate(ctx.schemes):
            self.write_scheme(i, scheme)

    def write_scheme(self, i: int, scheme: Scheme) -> None:
        """Scheme ``i``'s action, target node, access pattern, quota and filters."""
        s = f"{self.context}/schemes/{i}"
        try:
            self.write(f"{s}/action", scheme.action)
        except OSError as exc:
            if exc.errno == errno.EINVAL and scheme.action != "stat":
                raise SamplerUnavailableError(f"the kernel's DAMON has no {scheme.action} "
                                              f"action ({s}/action)") from None
            raise
        if scheme.target_nid is not None:
            self.write(f"{s}/target_nid", str(scheme.target_nid))
        self.write_access_pattern(i, scheme.access_pattern)
        if scheme.quota is not None:
            q = scheme.quota
            self.write(f"{s}/quotas/ms", "0")
            self.write(f"{s}/quotas/bytes", str(q.bytes))
            self.write(f"{s}/quotas/reset_interval_ms", str(q.reset_interval_ms))
            self.write(f"{s}/quotas/weights/sz_permil", str(q.sz_permil))
            self.write(f"{s}/quotas/weights/nr_accesses_permil", str(q.nr_accesses_permil))
            self.write(f"{s}/quotas/weights/age_permil", str(q.age_permil))
        self.write(f"{s}/filters/nr_filters", str(len(scheme.filters)))
        for j, f in enumerate(scheme.filters):
            if isinstance(f, YoungFilter):
                self.write(f"{s}/filters/{j}/type", "young")
            else:
                self.write(f"{s}/filters/{j}/type", "target")
                self.write(f"{s}/filters/{j}/damon_target_idx", str(f.target_idx))
            self.write(f"{s}/filters/{j}/matching", "Y" if f.matching else "N")

    def write_access_pattern(self, i: int, pattern: AccessPattern) -> None:
        s = f"{self.context}/schemes/{i}"
        for key, rng in (("sz", pattern.sz), ("nr_accesses", pattern.nr_accesses),
                         ("age", pattern.age)):
            self.write(f"{s}/access_pattern/{key}/min", str(rng.min))
            self.write(f"{s}/access_pattern/{key}/max", str(rng.max))

    def write_quota_bytes(self, i: int, nbytes: int) -> None:
        """Scheme ``i``'s size quota (applied by the next commit)."""
        self.write(f"{self.context}/schemes/{i}/quotas/bytes", str(nbytes))

    def scheme_stats(self, i: int) -> dict[str, int]:
        """Scheme ``i``'s counters as of the last ``update_schemes_stats`` (the ones the
        kernel has; a file it lacks is left out)."""
        out = {}
        for name in STATS:
            text = self.read_optional(f"{self.context}/schemes/{i}/stats/{name}")
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
                out.append(Region(self.read_int(f"{d}/start"), self.read_int(f"{d}/end"),
                                  self.read_int(f"{d}/nr_accesses"),
                                  self.read_int(f"{d}/age")))
            except (OSError, ValueError) as exc:
                on_error(f"reading {d}", exc)
        return out
