"""What the DAMON sampler asks DAMON for, as data: no I/O (``kmigratedd/damon/sysfs.py`` writes it).

The shapes follow DAMON's own objects (include/linux/damon.h, and damo's ``_damon.py``):
a :class:`Context` of ``vaddr`` operations with its :class:`MonitoringAttrs`, one
:class:`Target` per process and the :class:`Scheme` list; a :class:`Region` is one
tried region read back.  :func:`hot_regions_context` builds the context the sampler
uses: one ``stat`` scheme per target whose access pattern selects hot regions and
whose single ``target`` filter (``matching`` false: drop what matches) keeps that
target's regions only.  The tried regions of a scheme carry no target index (6.12
reports the regions of every target of a context in one list), so this filter is
what attributes a region to its pid.  With a :class:`ColdPattern` (demotion on), a
second ``stat`` scheme per target selects its cold regions: no access for at least
``min_age`` aggregation intervals.  The hot schemes keep indexes 0..n-1 and the cold
ones follow (:func:`cold_scheme_index`).

:func:`paddr_cold_context` builds the context the ``damon-paddr`` demoter uses: ``paddr``
operations over one fast node's physical ranges (the target's regions) and one
``migrate_cold`` scheme to the node's demotion target, with a size :class:`Quota` and a
``young`` filter that leaves out every page whose accessed bit is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

# Largest values an access pattern takes: sz is an unsigned long, nr_accesses and age
# unsigned ints (struct damos_access_pattern).  Every max in sysfs starts at 0, which
# matches nothing.
ULONG_MAX = (1 << 64) - 1
UINT_MAX = (1 << 32) - 1
# Largest weight a cold candidate carries (a region's age, in aggregation intervals).
COLD_WEIGHT_MAX = (1 << 31) - 1


@dataclass(frozen=True, slots=True)
class Intervals:
    """Monitoring intervals in microseconds (``monitoring_attrs/intervals``)."""

    sample_us: int
    aggr_us: int
    update_us: int

    def slowed(self, factor: int) -> Intervals:
        """Sampling and aggregation ``factor`` times longer (the update interval as is)."""
        return replace(self, sample_us=self.sample_us * factor, aggr_us=self.aggr_us * factor)


@dataclass(frozen=True, slots=True)
class MonitoringAttrs:
    """A context's ``monitoring_attrs``: its intervals, and how many regions DAMON keeps
    per target at least and at most."""

    intervals: Intervals
    min_regions: int
    max_regions: int


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive [min, max] of an access pattern."""

    min: int
    max: int


@dataclass(frozen=True, slots=True)
class AccessPattern:
    """A DAMOS ``access_pattern``: a scheme applies to the regions whose size (bytes),
    access count (per aggregation) and age (aggregations) fall in these ranges."""

    sz: Range
    nr_accesses: Range
    age: Range


@dataclass(frozen=True, slots=True)
class TargetFilter:
    """A DAMOS filter of type ``target``: regions of target ``target_idx`` match."""

    target_idx: int
    matching: bool


@dataclass(frozen=True, slots=True)
class YoungFilter:
    """A DAMOS filter of type ``young``: pages whose accessed bit is set match (the
    paddr operations check it through the rmap and clear it)."""

    matching: bool


@dataclass(frozen=True, slots=True)
class Quota:
    """A scheme's size quota: the action applies to at most ``bytes`` per
    ``reset_interval_ms`` (``bytes`` 0 with no time quota: no limit).  Under the quota
    DAMOS takes the regions by score, from these weights (in permil)."""

    bytes: int
    reset_interval_ms: int
    sz_permil: int = 0
    nr_accesses_permil: int = 1000
    age_permil: int = 1000


@dataclass(frozen=True, slots=True)
class Scheme:
    action: str
    access_pattern: AccessPattern
    filters: tuple[TargetFilter | YoungFilter, ...]
    # Destination node of migrate_hot/migrate_cold (schemes/<s>/target_nid, 6.11+).
    target_nid: int | None = None
    quota: Quota | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A vaddr target is a pid; a paddr target has none and gets its regions set
    (physical [start, end) ranges)."""

    pid: int | None = None
    regions: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Context:
    operations: str
    attrs: MonitoringAttrs
    targets: tuple[Target, ...] = ()
    schemes: tuple[Scheme, ...] = ()


@dataclass(frozen=True, slots=True, order=True)
class Region:
    """One DAMON tried region: [start, end) with its access count and age."""

    start: int
    end: int
    nr_accesses: int
    age: int


@dataclass(frozen=True, slots=True)
class ColdPattern:
    """What a cold region is: no access for ``min_age`` aggregation intervals or more,
    and at least ``min_sz`` bytes."""

    min_age: int
    min_sz: int


def aggregations(duration_us: int, aggr_us: int) -> int:
    """The aggregation intervals of ``aggr_us`` that cover ``duration_us`` (rounded up,
    at least 1, at most :data:`UINT_MAX`)."""
    return max(1, min(UINT_MAX, -(-duration_us // max(1, aggr_us))))


def hot_scheme(target_idx: int, hot_min_accesses: int) -> Scheme:
    """A ``stat`` scheme selecting the regions of target ``target_idx`` accessed at
    least ``hot_min_accesses`` times per aggregation, of any size and age."""
    pattern = AccessPattern(sz=Range(0, ULONG_MAX), nr_accesses=Range(hot_min_accesses, UINT_MAX),
                            age=Range(0, UINT_MAX))
    # matching false: filter out the regions that do NOT belong to target_idx.
    return Scheme("stat", pattern, (TargetFilter(target_idx, matching=False),))


def cold_scheme(target_idx: int, cold: ColdPattern) -> Scheme:
    """A ``stat`` scheme selecting the regions of target ``target_idx`` that saw no
    access for at least ``cold.min_age`` aggregation intervals and have at least
    ``cold.min_sz`` bytes."""
    pattern = AccessPattern(sz=Range(cold.min_sz, ULONG_MAX), nr_accesses=Range(0, 0),
                            age=Range(cold.min_age, UINT_MAX))
    return Scheme("stat", pattern, (TargetFilter(target_idx, matching=False),))


def cold_scheme_index(nr_targets: int, target_idx: int) -> int:
    """The index of target ``target_idx``'s cold scheme in a context of ``nr_targets``."""
    return nr_targets + target_idx


def hot_regions_context(attrs: MonitoringAttrs, pids: Sequence[int], hot_min_accesses: int,
                        cold: ColdPattern | None = None) -> Context:
    """A vaddr context watching ``pids``: scheme i reports target i's hot regions and,
    with ``cold``, scheme ``len(pids) + i`` its cold regions."""
    n = len(pids)
    schemes = tuple(hot_scheme(i, hot_min_accesses) for i in range(n))
    if cold is not None:
        schemes += tuple(cold_scheme(i, cold) for i in range(n))
    return Context("vaddr", attrs, tuple(Target(p) for p in pids), schemes)


# An access pattern no region has (nr_accesses 1..0): a scheme with it applies to nothing,
# while the kdamond goes on monitoring and the scheme's stats carry on.
NOTHING = AccessPattern(sz=Range(0, ULONG_MAX), nr_accesses=Range(1, 0), age=Range(0, UINT_MAX))


def migrate_cold_scheme(target_nid: int, min_age: int, quota: Quota) -> Scheme:
    """A ``migrate_cold`` scheme moving to node ``target_nid`` the pages of regions that
    saw no access for at least ``min_age`` aggregation intervals, at most ``quota``,
    leaving out every page whose accessed bit is set (young filter, matching)."""
    pattern = AccessPattern(sz=Range(0, ULONG_MAX), nr_accesses=Range(0, 0),
                            age=Range(min_age, UINT_MAX))
    return Scheme("migrate_cold", pattern, (YoungFilter(matching=True),),
                  target_nid=target_nid, quota=quota)


def paddr_cold_context(attrs: MonitoringAttrs, ranges: Sequence[tuple[int, int]],
                       target_nid: int, min_age: int, quota: Quota) -> Context:
    """A paddr context over the physical ``ranges`` of one node whose single scheme
    demotes its cold pages to ``target_nid`` (:func:`migrate_cold_scheme`)."""
    return Context("paddr", attrs, (Target(None, tuple(ranges)),),
                   (migrate_cold_scheme(target_nid, min_age, quota),))


def aligned(r: Region, page_size: int) -> Region:
    """``r`` widened to whole pages."""
    return Region(r.start - r.start % page_size, -(-r.end // page_size) * page_size,
                  r.nr_accesses, r.age)


def inner(r: Region, page_size: int) -> Region | None:
    """The whole pages inside ``r``, or None when it holds none."""
    start = -(-r.start // page_size) * page_size
    end = r.end - r.end % page_size
    return Region(start, end, r.nr_accesses, r.age) if start < end else None


def subtract(regions: list[Region], ranges: Sequence[tuple[int, int]]) -> list[Region]:
    """The parts of ``regions`` outside ``ranges`` (both sorted, neither overlapping
    itself), keeping each region's counts."""
    out: list[Region] = []
    j = 0
    for r in regions:
        while j < len(ranges) and ranges[j][1] <= r.start:
            j += 1
        lo = r.start
        k = j
        while k < len(ranges) and ranges[k][0] < r.end:
            if ranges[k][0] > lo:
                out.append(Region(lo, ranges[k][0], r.nr_accesses, r.age))
            lo = max(lo, ranges[k][1])
            k += 1
        if lo < r.end:
            out.append(Region(lo, r.end, r.nr_accesses, r.age))
    return out


def merged(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` sorted, with overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def intersect(regions: list[Region], ranges: Sequence[tuple[int, int]]) -> list[Region]:
    """The parts of ``regions`` inside ``ranges`` (both sorted, neither overlapping
    itself), keeping each region's counts."""
    out: list[Region] = []
    j = 0
    for r in regions:
        while j < len(ranges) and ranges[j][1] <= r.start:
            j += 1
        k = j
        while k < len(ranges) and ranges[k][0] < r.end:
            lo, hi = max(r.start, ranges[k][0]), min(r.end, ranges[k][1])
            if lo < hi:
                out.append(Region(lo, hi, r.nr_accesses, r.age))
            k += 1
    return out
