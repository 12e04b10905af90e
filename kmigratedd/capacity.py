"""How far promotion may fill a fast node: its free memory, the moves queued, the headroom,
the room needed (:class:`NodeCapacity`, one per worker), and the floor the kernel's
watermarks put under it when kswapd makes the room (:class:`NodeLevels`).

With ``demotion.method: kswapd`` promotion has to take the node below its low
watermarks, since that is what wakes kswapd, but never below its min watermarks.  There
every allocation on the node, our move_pages(2) among them
(``GFP_HIGHUSER_MOVABLE | __GFP_THISNODE`` in mm/migrate.c), reclaims in the allocating
task.  move_pages migrates up to 512 pages at a time (``migrate_pages_batch``): it
unmaps every page of the batch first, allocating each one's destination on the way,
and copies them after.  A destination allocation that reclaims keeps the pages already
unmapped out of reach, and a task touching one of them waits in
``migration_entry_wait`` until the whole batch has moved.  Reclaim that cannot find a
page to demote (pages just written are young) loops and throttles for seconds.

So the floor lies between the two levels (:class:`ReclaimLevels`), computed per zone
from /proc/zoneinfo (watermarks, lowmem reserve) and /proc/buddyinfo (free pages), as
``zone_watermark_ok()`` checks them for a movable allocation: a zone below its
watermark plus the reserve it keeps from such an allocation is not used at that
level.  kswapd, once woken, reclaims until the node is balanced again (its high or,
in NUMA balancing's tiering mode, promo watermark), and promotion goes on.  Where
kswapd has given the node up (its reclaim failed 16 times in a row, shown as
``node_unreclaimable`` in /proc/zoneinfo: pages just written are young and cannot be
demoted at once), nothing wakes it until some reclaim on the node succeeds, so
promotion then lets its own allocations reclaim, in batches kept short.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .kernelfs import KernelFs
from .policy import HeadroomGuard
from .procfs import ZoneMarks, zone_free_pages, zone_marks
from .topology import read_node_meminfo

log = logging.getLogger("kmigratedd.capacity")

# Watermarks change only with vm.min_free_kbytes, vm.watermark_scale_factor or memory
# hotplug: re-read this often.
MARKS_REFRESH_S = 30.0


@dataclass(frozen=True)
class ReclaimLevels:
    """A node's free memory and what movable allocations on it may take (bytes) before
    one wakes kswapd (``to_wake``: every zone at its low watermark plus reserve) and
    before one reclaims in the allocating task (``to_direct``: every zone at its min
    watermark plus reserve)."""

    free: int
    to_direct: int
    to_wake: int
    # kswapd gave the node up (zoneinfo's node_unreclaimable): nothing wakes it until some
    # reclaim on the node succeeds, so promotion lets its allocations reclaim.
    unreclaimable: bool = False

    @property
    def floor(self) -> int:
        """The free memory promotion stops at: half way from where it wakes kswapd to
        where it would reclaim itself.  Below the first, so kswapd is awake; the other half
        is left for the node's other allocations meanwhile."""
        return self.free - (self.to_direct + self.to_wake) // 2


def movable_index(zones: list[ZoneMarks]) -> int:
    """The index of ZONE_MOVABLE in a node's zones (the highest zone a movable
    allocation may use), which indexes each zone's lowmem reserve."""
    names = [z.name for z in zones]
    if "Movable" in names:
        return names.index("Movable")
    return max(0, len(names) - 1 - int("Device" in names))


def reclaim_levels(zones: list[ZoneMarks], free: dict[str, int], page_size: int
                   ) -> ReclaimLevels:
    """The levels of one node from its zones' watermarks and free pages (by zone name):
    each zone gives what it has above its watermark plus the reserve it keeps from a
    movable allocation (``zone_watermark_ok()``)."""
    idx = movable_index(zones)
    total = to_direct = to_wake = 0
    hopeless = any(z.node_unreclaimable for z in zones)
    for z in zones:
        if z.managed <= 0:
            continue
        f = free.get(z.name, 0)
        reserve = z.protection[idx] if idx < len(z.protection) else 0
        total += f
        to_direct += max(0, f - z.min - reserve)
        to_wake += max(0, f - z.low - reserve)
    return ReclaimLevels(total * page_size, to_direct * page_size, to_wake * page_size, hopeless)


class NodeLevels:
    """The reclaim levels of one fast node, read on demand (watermarks cached)."""

    def __init__(self, fs: KernelFs, node: int, page_size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fs = fs
        self.node = node
        self.page_size = page_size
        self.clock = clock
        self._marks: tuple[float, list[ZoneMarks]] | None = None

    def read(self, fresh: bool = False) -> ReclaimLevels | None:
        """The node's levels now; None where the kernel does not show its zones.  The
        watermarks are read again every MARKS_REFRESH_S, or now with ``fresh`` (which
        also tells whether kswapd has given the node up)."""
        now = self.clock()
        if fresh or self._marks is None or now - self._marks[0] >= MARKS_REFRESH_S:
            self._marks = (now, [z for z in zone_marks(self.fs) if z.node == self.node])
        zones = self._marks[1]
        if not zones:
            return None
        free = {name: pages for (n, name), pages in zone_free_pages(self.fs).items()
                if n == self.node}
        return reclaim_levels(zones, free, self.page_size)


class NodeCapacity:
    """What one fast node can take, computed once per round of its worker: its free memory
    (read every ``workers.free_refresh_ms``, adjusted for what moved meanwhile), the moves
    queued, the headroom it keeps (the configured one, or with :attr:`levels` the one its
    watermarks give) and the room promotion needs."""

    def __init__(self, fs: KernelFs, node: int, page_size: int, headroom: HeadroomGuard,
                 in_flight: Callable[[], int], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        """``in_flight()``: pages queued to move onto the node, less those queued to move
        off it (the move pipeline's)."""
        self.fs = fs
        self.node = node
        self.page_size = page_size
        self.headroom = headroom
        self.in_flight = in_flight
        self.clock = clock
        self.refresh_s = 1.0
        self.batch_bytes = 0
        # With kswapd making room: the node's watermarks in place of the headroom.
        self.levels: NodeLevels | None = None
        self._free: tuple[float, int] | None = None
        self.room_needed = 0  # the last round's, readable from any thread
        self.hopeless = False  # kswapd gave the node up (see free_bytes)

    def configure(self, headroom: HeadroomGuard, refresh_ms: int, batch_bytes: int) -> None:
        self.headroom = headroom
        self.refresh_s = refresh_ms / 1000
        self.batch_bytes = batch_bytes
        self._free = None

    def refresh(self) -> None:
        """Read free memory (and the levels) again at the next round."""
        self._free = None

    def free_bytes(self, now: float) -> int:
        """The node's free memory, read every ``refresh_s`` (and adjusted for what moved
        meanwhile).  With :attr:`levels`, the headroom is set from the node's watermarks at
        each read: promotion stops half way between the level that wakes kswapd and the one
        where allocations reclaim themselves, and goes on once a batch fits above that
        again (kswapd reclaims up to the node's high or promo watermarks)."""
        if self._free is None or now - self._free[0] >= self.refresh_s:
            # At the floor, read whether kswapd has given the node up as well.
            lv = (self.levels.read(fresh=self.headroom.blocked) if self.levels is not None
                  else None)
            if lv is not None and lv.unreclaimable:
                # Only a reclaim that succeeds wakes kswapd again: promotion lets its own
                # allocations reclaim (each batch kept short by workers.max_batch_ms).
                if not self.hopeless:
                    log.warning("node %d: kswapd has given it up (node_unreclaimable): "
                                "promotion goes below its min watermarks until reclaim on "
                                "it succeeds", self.node)
                self.hopeless = True
                free = lv.free
                self.headroom.min_free_bytes = self.headroom.resume_free_bytes = 0
            elif lv is not None:
                if self.hopeless:
                    log.info("node %d: kswapd reclaims again: promotion stops above its "
                             "min watermarks", self.node)
                self.hopeless = False
                free = lv.free
                self.headroom.min_free_bytes = lv.floor
                self.headroom.resume_free_bytes = lv.floor + self.batch_bytes
            else:
                free = node_free_bytes(self.fs, self.node)
                if self.levels is not None:  # no zone in /proc/zoneinfo: no floor known
                    self.headroom.min_free_bytes = self.headroom.resume_free_bytes = 0
            self._free = (now, free)
        return self._free[1]

    def moved(self, delta_bytes: int) -> None:
        """Adjust the free figure by what just moved onto (negative) or off the node."""
        if self._free is not None:
            self._free = (self._free[0], self._free[1] + delta_bytes)

    def available(self, now: float) -> int:
        """Free memory less the moves queued onto the node."""
        return self.free_bytes(now) - self.in_flight() * self.page_size

    def need(self, waiting_bytes: int, now: float) -> int:
        """Bytes to free before ``waiting_bytes`` more fit above the headroom (the resume
        level while the guard blocks); kept in :attr:`room_needed`."""
        if waiting_bytes <= 0:
            self.room_needed = 0
            return 0
        floor = (self.headroom.resume_free_bytes if self.headroom.blocked
                 else self.headroom.min_free_bytes)
        self.room_needed = max(0, waiting_bytes + floor - self.available(now))
        return self.room_needed

    def pages_above_headroom(self, now: float) -> int:
        """Pages that fit now without crossing the headroom."""
        return max(0, self.available(now) - self.headroom.min_free_bytes) // self.page_size


def node_free_bytes(fs: KernelFs, node: int) -> int:
    """A node's MemFree (node*/meminfo)."""
    return read_node_meminfo(fs, node, "MemFree").get("MemFree", 0)
