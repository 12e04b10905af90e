"""The idle sampler's walk: which pages a round reads, within its budget, from where the
last round stopped.

Each round walks the processes in scope (:class:`~kmigratedd.ranking.Watchlist`) from
the cursor (pid, address) the last round stopped at, and for each one the mappings of
``/proc/PID/maps`` it can promote from (:func:`scannable`), piece by piece: a piece is
the part of a mapping within one chunk of the address space (:data:`CHUNK_PAGES`, at
least a huge page), read from ``/proc/PID/pagemap`` in one ``pread`` and handed to the
sampler (``piece(proc, key, off, n, addr, entries)``), which tracks its pages.

Budget: a round reads at most its credit of pagemap entries (virtual pages, present or
not); a piece larger than what is left is cut at a huge-page boundary (a THP is never
split between rounds) and the next round continues there.  A round that ages the fast
tier also stops once it has read something and its deadline passed.

A chunk in which the last read found nothing to track is read again only every
:data:`FAST_RECHECK_PASSES` passes (staggered by chunk), but in rounds that age the
fast tier, which read every chunk.  At the end of a pass over a process, chunks not
seen (unmapped) or holding no tracked page drop their state.

Failures go to the sampler's ``Failures`` (gone, denied, error): a process that exits
during its scan reads a short pagemap (:class:`PidGone`).
"""

from __future__ import annotations

import errno
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .. import shim
from ..kernelfs import KernelFs
from ..procfs import start_time

HPAGE_PMD_SIZE = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"

# State and pagemap reads go by chunks of the address space (16 MiB of 4 KiB pages).
CHUNK_PAGES = 4096
# A chunk whose pages were all off the slow tier at its last read is read again only
# every this many passes (staggered by chunk): a process whose memory all sits on the
# fast tier costs 1/8 of its pagemap per round.
FAST_RECHECK_PASSES = 8

# Special mappings whose name is in brackets but that hold ordinary anonymous memory.
_ANON_NAMES = ("[heap]", "[stack]")
_ANON_PREFIXES = ("[anon:", "[stack:")


@dataclass(frozen=True)
class Geometry:
    """Page, huge page and chunk sizes (chunk: the unit of state and of pagemap reads)."""

    page_size: int
    huge_pages: int  # base pages per PMD-sized huge page

    @classmethod
    def read(cls, fs: KernelFs, page_size: int) -> Geometry:
        hpage = fs.read_optional(HPAGE_PMD_SIZE)
        hpage_bytes = int(hpage) if hpage and hpage.strip().isdigit() else 2 << 20
        return cls(page_size, max(1, hpage_bytes // page_size))

    @property
    def page_shift(self) -> int:
        return self.page_size.bit_length() - 1

    @property
    def chunk_pages(self) -> int:
        return max(CHUNK_PAGES, self.huge_pages)

    @property
    def chunk_shift(self) -> int:
        return (self.chunk_pages * self.page_size).bit_length() - 1


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    name: str


def parse_maps(text: str) -> list[Mapping]:
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        try:
            out.append(Mapping(int(lo, 16), int(hi, 16), parts[1],
                               parts[5].strip() if len(parts) > 5 else ""))
        except ValueError:
            continue
    return out


def scannable(m: Mapping) -> bool:
    """Private writable mappings of ordinary memory (see kmigratedd/samplers/idle.py)."""
    p = m.perms
    if len(p) < 4 or p[3] != "p" or p[0] != "r" or p[1] != "w":
        return False
    name = m.name
    if name.startswith("["):
        return name in _ANON_NAMES or name.startswith(_ANON_PREFIXES)
    if name.startswith("/dev/") and not name.startswith("/dev/zero"):
        return False
    return "anon_hugepage" not in name


@dataclass
class Chunk:
    """Per-page state of one chunk of the address space: slow-tier history
    (kmigratedd/samplers/idle_hot.py) or fast-tier idle ages (idle_cold.py)."""

    state: bytearray  # history bits, or the tick since which the page is known idle
    tag: bytearray  # 0: not marked last time; else 0x80 | a 7-bit hash of the PFN marked

    @classmethod
    def empty(cls, pages: int) -> Chunk:
        return cls(bytearray(pages), bytearray(pages))

    def clear(self, off: int, n: int) -> None:
        self.state[off:off + n] = bytes(n)
        self.tag[off:off + n] = bytes(n)


@dataclass
class Proc:
    pid: int
    start_time: int
    chunks: dict[int, Chunk] = field(default_factory=dict)  # slow-tier histories
    cold: dict[int, Chunk] = field(default_factory=dict)  # fast-tier idle ages
    visited: set[int] = field(default_factory=set)  # chunks seen since the pass began
    # ... holding a tracked page: on the slow tier, or on any tier in a round that ages
    # the fast tier
    slow_seen: set[int] = field(default_factory=set)
    fast: set[int] = field(default_factory=set)  # chunks without one at their last read
    passes: int = 0


def chunk_of(state: dict[int, Chunk], key: int, pages: int) -> tuple[Chunk, bool]:
    """The chunk ``key`` of ``state``, or a new empty one (True) the caller keeps in
    ``state`` once it tracks a page."""
    chunk = state.get(key)
    if chunk is None:
        return Chunk.empty(pages), True
    return chunk, False


@dataclass
class Segment:
    """A piece of a mapping whose pages sit in the batch at [pos, pos + n)."""

    proc: Proc
    key: int  # chunk number (address >> chunk shift)
    off: int  # first page within the chunk
    n: int
    addr: int
    pos: int


class PidGone(Exception):
    pass


class Stopping(Exception):
    pass


class Failures(Protocol):
    def gone(self, pid: int) -> None: ...
    def denied(self, pid: int) -> None: ...
    def error(self, pid: int, exc: OSError) -> None: ...


# piece(proc, key, off, n, addr, entries) -> whether it holds a tracked page
PieceFn = Callable[[Proc, int, int, int, int, memoryview], bool]


class PageWalk:
    """The cursor, the budget and the per-process state of the walk (see the module
    docstring)."""

    def __init__(self, fs: KernelFs, geometry: Geometry, counters: dict[str, int],
                 failures: Failures, piece: PieceFn, *, clock: Callable[[], float],
                 stopping: Callable[[], bool]) -> None:
        self.fs = fs
        self.geo = geometry
        self.counters = counters
        self.failures = failures
        self.piece = piece
        self.clock = clock
        self.stopping = stopping
        self.procs: dict[int, Proc] = {}
        self.cursor: tuple[int, int] = (0, 0)
        self.credit = 0
        self.round_credit = 0
        # A round that ages the fast tier reads every chunk and stops at this clock()
        # time (None: no limit) once it has read something.
        self.every_chunk = False
        self.deadline: float | None = None
        self._entries = array("Q", bytes(8 * geometry.chunk_pages))

    def begin(self, per_round: int, budget_pages: int | None, *, every_chunk: bool,
              deadline: float | None) -> None:
        """A round's credit: ``budget_pages``, or ``per_round`` plus the unused credit
        below one chunk carried over."""
        if budget_pages is None:
            self.credit = min(self.credit + per_round, max(per_round, self.geo.chunk_pages))
        else:
            self.credit = budget_pages
        self.round_credit = self.credit
        self.every_chunk = every_chunk
        self.deadline = deadline

    def run(self, pids: list[int], ranked: bool) -> None:
        """Walk ``pids`` (in this order; ``ranked``: a new round starts from the top, not
        from the cursor's pid) until the credit or the deadline stops it."""
        keep = set(pids)
        for pid in [p for p in self.procs if p not in keep]:
            if self.fs.exists(f"/proc/{pid}"):
                del self.procs[pid]  # left the scope
            else:
                self.failures.gone(pid)  # exited since the last round
        if not pids:
            return
        cur_pid, cur_addr = self.cursor
        if cur_pid in keep:
            first = pids.index(cur_pid)
        elif ranked:
            first = 0
        else:
            first = next((i for i, p in enumerate(pids) if p >= cur_pid), 0)
        order = pids[first:] + pids[:first]
        resume = cur_addr if order[0] == cur_pid else 0
        work: list[tuple[int, int, int | None]] = [(order[0], resume, None)]
        work += [(p, 0, None) for p in order[1:]]
        if resume:
            work.append((order[0], 0, resume))
        self.cursor = (order[0], resume)  # a full cycle starts here again next round
        for pid, lo, hi in work:
            stop_at = self._scan_pid(pid, lo, hi)
            if stop_at is not None:
                self.cursor = (pid, stop_at)
                self.counters["budget_exhausted"] += 1
                return

    def read_pagemap(self, fd: int, addr: int, entries: memoryview) -> int:
        return shim.pread_words(fd, addr >> self.geo.page_shift, entries)

    def _scan_pid(self, pid: int, lo: int, hi: int | None) -> int | None:
        """Scan [lo, hi) of pid's mappings; returns where the budget stopped it, or None."""
        fs = self.fs
        try:
            started = start_time(fs, pid)
            if started is None:
                raise PidGone
            proc = self.procs.get(pid)
            if proc is None or proc.start_time != started:
                proc = self.procs[pid] = Proc(pid, started)
            maps = parse_maps(fs.read(f"/proc/{pid}/maps"))
            fd = fs.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        except (OSError, PidGone) as exc:
            self._failed(pid, exc)
            return None
        try:
            if lo == 0:
                proc.visited = set()
            for m in maps:
                if m.end <= lo or (hi is not None and m.start >= hi) or not scannable(m):
                    continue
                stop_at = self._scan_range(proc, fd, max(m.start, lo),
                                           m.end if hi is None else min(m.end, hi))
                if stop_at is not None:
                    return stop_at
            if hi is None:
                self._end_pass(proc)
            return None
        except (OSError, PidGone) as exc:
            self._failed(pid, exc)
            return None
        finally:
            os.close(fd)

    def _failed(self, pid: int, exc: OSError | PidGone) -> None:
        """A process that exited is gone, one we may not read denied, the rest errors."""
        fail = self.failures
        if isinstance(exc, PermissionError):
            fail.denied(pid)
        elif isinstance(exc, PidGone | FileNotFoundError | ProcessLookupError) or (
                exc.errno == errno.ESRCH):
            fail.gone(pid)
        else:
            fail.error(pid, exc)

    def _scan_range(self, proc: Proc, fd: int, start: int, end: int) -> int | None:
        geo = self.geo
        chunk_bytes = 1 << geo.chunk_shift
        ps, shift = geo.page_size, geo.page_shift
        huge_bytes = geo.huge_pages * ps
        addr = start
        while addr < end:
            if self.stopping():
                raise Stopping
            if (self.deadline is not None and self.credit < self.round_credit
                    and self.clock() >= self.deadline):
                self.counters["rounds_cut_by_time"] += 1
                return addr
            piece_end = min(end, (addr // chunk_bytes + 1) * chunk_bytes)
            n = (piece_end - addr) >> shift
            key = addr >> geo.chunk_shift
            if (key in proc.fast and (proc.passes + key) % FAST_RECHECK_PASSES
                    and not self.every_chunk):
                proc.visited.add(key)  # mapped still; not read this pass
                self.counters["pages_skipped_fast"] += n
                addr = piece_end
                continue
            if n > self.credit:
                # Stop at a huge-page boundary so a THP is never split between rounds.
                cut = (addr + self.credit * ps) // huge_bytes * huge_bytes
                if cut <= addr:
                    return addr
                piece_end, n = cut, (cut - addr) >> shift
            self.credit -= n
            self._scan_piece(proc, fd, addr, n)
            addr = piece_end
        return None

    def _scan_piece(self, proc: Proc, fd: int, addr: int, n: int) -> None:
        entries = memoryview(self._entries)[:n]  # scratch, reused piece after piece
        got = self.read_pagemap(fd, addr, entries)
        self.counters["pages_scanned"] += n
        if got < n:
            # pagemap reads nothing once the mm is gone (the process exited).
            raise PidGone
        key = addr >> self.geo.chunk_shift
        off = (addr - (key << self.geo.chunk_shift)) >> self.geo.page_shift
        proc.visited.add(key)
        if self.piece(proc, key, off, n, addr, entries):
            proc.slow_seen.add(key)
            return
        # Nothing tracked in the piece: its slow-tier history goes, and in a round that
        # ages the fast tier, its fast-tier ages too.
        chunk = proc.chunks.get(key)
        if chunk is not None:
            chunk.clear(off, n)
        cold = proc.cold.get(key) if self.every_chunk else None
        if cold is not None:
            cold.clear(off, n)

    def _end_pass(self, proc: Proc) -> None:
        """Drop chunks not seen in this pass (unmapped) or holding no tracked page."""
        size = self.geo.chunk_pages
        for state in (proc.chunks, proc.cold):
            for key in [k for k, c in state.items()
                        if k not in proc.visited or c.tag.count(0) == size]:
                del state[key]
        proc.fast = proc.visited - proc.slow_seen
        proc.visited, proc.slow_seen = set(), set()
        proc.passes += 1
        self.counters["passes"] += 1

    def state_bytes(self) -> int:
        return sum(len(p.chunks) + len(p.cold)
                   for p in self.procs.values()) * 2 * self.geo.chunk_pages
