"""Candidate queues (native/kmqueue.c)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

from ..errors import ShimArgumentError
from ._core import (_ZERO_I32, PAGE_SIZE, _buffer, ffi, lib)


@dataclass(frozen=True, slots=True)
class QueueStats:
    pushed: int
    coalesced: int
    dropped: int
    drained: int


@dataclass(frozen=True, slots=True)
class CandidateBatch:
    """Candidates taken from a queue, oldest first, as parallel flat arrays."""

    pids: array[int]  # 'i'
    addrs: array[int]  # 'Q', page-aligned
    nodes: array[int]  # 'i', node the page was seen on, -1 unknown
    counts: array[int]  # 'I', samples (weights) folded into the candidate
    first_ns: array[int]  # 'Q'
    last_ns: array[int]  # 'Q'

    def __len__(self) -> int:
        return len(self.pids)


class NativeQueue:
    """A bounded, coalescing candidate queue in C (one per CPU; see queues.py)."""

    def __init__(self, capacity: int, page_size: int = PAGE_SIZE) -> None:
        if not 1 <= capacity <= 1 << 26:
            raise ShimArgumentError(f"capacity: 1 .. {1 << 26} entries, got {capacity}")
        if page_size <= 0 or page_size & (page_size - 1):
            raise ShimArgumentError(f"page_size: a power of two, got {page_size}")
        q = lib.km_queue_new(capacity, page_size.bit_length() - 1)
        if q == ffi.NULL:
            raise MemoryError(f"candidate queue of {capacity} entries")
        self._q = ffi.gc(q, lib.km_queue_free)
        self.capacity = capacity
        self._stats = ffi.new("struct km_queue_stats *")

    def __len__(self) -> int:
        return int(lib.km_queue_len(self._q))

    def push(self, pids: Any, addrs: Any, nodes: Any = None, times: Any = None,
             weights: Any = None) -> int:
        """Offer samples (flat buffers of equal length); returns entries added."""
        c_pids, n = _buffer(pids, 4, "pids")
        c_addrs, n2 = _buffer(addrs, 8, "addrs")
        args = [c_pids, c_addrs]
        if n2 != n:
            raise ShimArgumentError(f"addrs: has {n2} entries for {n} pids")
        for buf, size, what, ctype in ((nodes, 4, "nodes", "int32_t[]"),
                                       (times, 8, "times", "uint64_t[]"),
                                       (weights, 4, "weights", "uint32_t[]")):
            if buf is None:
                args.append(ffi.NULL)
                continue
            c_buf, m = _buffer(buf, size, what)
            if m != n:
                raise ShimArgumentError(f"{what}: has {m} entries for {n} pids")
            args.append(ffi.cast(ctype.replace("[]", " *"), c_buf))
        return int(lib.km_queue_push(self._q, n, *args))

    def drain(self, max_entries: int) -> CandidateBatch:
        """Take up to ``max_entries`` oldest candidates out of the queue."""
        n = min(max_entries, len(self))
        out = CandidateBatch(_ZERO_I32 * n, array("Q", bytes(8 * n)), _ZERO_I32 * n,
                             array("I", bytes(4 * n)), array("Q", bytes(8 * n)),
                             array("Q", bytes(8 * n)))
        if n:
            got = lib.km_queue_drain(
                self._q, n, ffi.from_buffer("int32_t[]", out.pids),
                ffi.from_buffer("uint64_t[]", out.addrs), ffi.from_buffer("int32_t[]", out.nodes),
                ffi.from_buffer("uint32_t[]", out.counts),
                ffi.from_buffer("uint64_t[]", out.first_ns),
                ffi.from_buffer("uint64_t[]", out.last_ns))
            assert got == n
        return out

    def stats(self) -> QueueStats:
        lib.km_queue_get_stats(self._q, self._stats)
        s = self._stats
        return QueueStats(int(s.pushed), int(s.coalesced), int(s.dropped), int(s.drained))
