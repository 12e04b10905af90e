"""Python facade of the native shim: the only module that imports ``kmigratedd._native``.

It checks arguments before the call, turns a whole-call failure (-errno) into
:class:`~kmigratedd.errors.MovePagesError` (an ``OSError`` with ``errno`` set),
and hands per-page statuses back as data — an ``array('i')`` of node ids or
``-errno`` values — never as exceptions (see move_pages(2)).

Buffers are ``array.array`` objects (typecode ``'Q'`` for addresses, ``'i'`` for
nodes and statuses) or anything else exposing a contiguous buffer of the right
item size, so a batch crosses into C without a per-page Python loop.
"""

from __future__ import annotations

import errno as _errno
import os
from array import array
from dataclasses import dataclass
from typing import Any, Final

from .errors import MovePagesError, NativeUnavailableError, ShimArgumentError

try:
    from . import _native  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise NativeUnavailableError(
        f"kmigratedd's native extension is not built ({exc}); install with 'pip install .'"
    ) from exc

ffi: Final = _native.ffi
lib: Final = _native.lib

# move_pages(2) flags, from <numaif.h>.
MPOL_MF_MOVE: Final = 1 << 1
MPOL_MF_MOVE_ALL: Final = 1 << 2
_VALID_FLAGS: Final = MPOL_MF_MOVE | MPOL_MF_MOVE_ALL

# The kernel's MAX_NUMNODES is at most 1 << 10 (CONFIG_NODES_SHIFT <= 10).
MAX_NODES: Final = 1024

PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")

_ZERO_I32: Final = array("i", [0])


@dataclass(frozen=True, slots=True)
class MoveResult:
    """Outcome of one move_pages(2) call.

    ``status[i]`` is the node page i is on after the call, or ``-errno``.
    ``not_migrated`` is the kernel's positive return value (pages it skipped);
    0 when every page was handled.
    """

    status: array[int]
    not_migrated: int


@dataclass(frozen=True, slots=True)
class StatusCounts:
    """A status array reduced to counts: pages per node and pages per errno."""

    by_node: dict[int, int]
    by_errno: dict[int, int]
    unknown: int  # pages whose status did not fit the tally (never in practice)

    def errno_names(self) -> dict[str, int]:
        """``by_errno`` keyed by symbolic name (``ENOMEM``, ``EBUSY``...)."""
        return {_errno.errorcode.get(e, f"E{e}"): n for e, n in self.by_errno.items()}


def _buffer(obj: Any, itemsize: int, what: str) -> tuple[Any, int]:
    try:
        view = memoryview(obj)
    except TypeError:
        code = "Q" if itemsize == 8 else "i"
        raise ShimArgumentError(f"{what}: needs a buffer (array('{code}')), "
                                f"got {type(obj).__name__}") from None
    if view.itemsize != itemsize or not view.c_contiguous or view.ndim != 1:
        raise ShimArgumentError(f"{what}: needs a flat buffer of {itemsize}-byte items")
    return ffi.from_buffer("uint64_t[]" if itemsize == 8 else "int32_t[]", obj), len(view)


def _bytes_buffer(obj: Any, n: int, what: str, writable: bool = True) -> Any:
    try:
        view = memoryview(obj)
    except TypeError:
        raise ShimArgumentError(f"{what}: needs a bytearray") from None
    if view.itemsize != 1 or len(view) < n or (writable and view.readonly):
        raise ShimArgumentError(f"{what}: needs a {'writable ' if writable else ''}buffer of "
                                f"at least {n} bytes")
    return ffi.from_buffer("uint8_t[]", obj, require_writable=writable)


def _check_pid(pid: int) -> None:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0 or pid > 0x7FFFFFFF:
        raise ShimArgumentError(f"pid: must be an int >= 0 (0 = this process), got {pid!r}")


def _raise_for(rc: int, pid: int, count: int) -> None:
    code = -rc
    raise MovePagesError(code, f"move_pages(pid={pid}, {count} pages): {os.strerror(code)}")


def query_nodes(pid: int, addresses: Any, status: Any = None) -> array[int]:
    """Current node of each page (move_pages with nodes=NULL).

    Returns the status array: node id, or -errno (-EFAULT, -ENOENT...) per page.
    Pass ``status`` (an ``array('i')`` as long as ``addresses``) to reuse a buffer.
    """
    _check_pid(pid)
    c_addrs, count = _buffer(addresses, 8, "addresses")
    if status is None:
        status = _ZERO_I32 * count
    c_status, scount = _buffer(status, 4, "status")
    if scount != count:
        raise ShimArgumentError(f"status: has {scount} entries for {count} addresses")
    rc = lib.km_move_pages(pid, count, c_addrs, ffi.NULL, c_status, 0)
    if rc < 0:
        _raise_for(rc, pid, count)
    out: array[int] = status
    return out


def move(pid: int, addresses: Any, nodes: Any, flags: int = MPOL_MF_MOVE,
         status: Any = None) -> MoveResult:
    """Move pages of process ``pid`` (0 = this process) to ``nodes``.

    ``nodes`` is one int (every page to that node) or a buffer of 4-byte ints,
    one per address.  Sort a batch by target node, then address: the kernel
    migrates runs of consecutive pages with the same target together.
    Raises MovePagesError for whole-call failures (ESRCH: no such process,
    EPERM/EACCES: not allowed, ENODEV: target node not online, EINVAL).
    """
    _check_pid(pid)
    if not isinstance(flags, int) or flags & ~_VALID_FLAGS:
        raise ShimArgumentError(f"flags: only MPOL_MF_MOVE and MPOL_MF_MOVE_ALL, got {flags!r}")
    c_addrs, count = _buffer(addresses, 8, "addresses")
    if isinstance(nodes, int) and not isinstance(nodes, bool):
        if not 0 <= nodes < MAX_NODES:
            raise ShimArgumentError(f"nodes: node id {nodes} out of range 0..{MAX_NODES - 1}")
        node_buf = _ZERO_I32 * count
        c_nodes, ncount = ffi.from_buffer("int32_t[]", node_buf), count
        lib.km_fill_i32(c_nodes, count, nodes)
    else:
        c_nodes, ncount = _buffer(nodes, 4, "nodes")
        if ncount != count:
            raise ShimArgumentError(f"nodes: has {ncount} entries for {count} addresses")
    if status is None:
        status = _ZERO_I32 * count
    c_status, scount = _buffer(status, 4, "status")
    if scount != count:
        raise ShimArgumentError(f"status: has {scount} entries for {count} addresses")
    rc = lib.km_move_pages(pid, count, c_addrs, c_nodes, c_status, flags)
    if rc < 0:
        _raise_for(rc, pid, count)
    return MoveResult(status=status, not_migrated=int(rc))


@dataclass
class BatchedMove:
    """Outcome of :func:`move_batched`: the statuses of the pages the completed calls
    covered (``len(result.status)``), each call's duration, and the whole-call
    failure that stopped the run, if any."""

    result: MoveResult
    call_seconds: list[float]
    error: MovePagesError | None


def move_batched(pid: int, addresses: Any, node: int, flags: int = MPOL_MF_MOVE,
                 batch: int = 512) -> BatchedMove:
    """move_pages to ``node`` in calls of ``batch`` pages, back to back in C with the
    GIL released throughout.  A whole-call failure stops the run and is returned,
    not raised: the calls before it did move their pages."""
    _check_pid(pid)
    if not isinstance(flags, int) or flags & ~_VALID_FLAGS:
        raise ShimArgumentError(f"flags: only MPOL_MF_MOVE and MPOL_MF_MOVE_ALL, got {flags!r}")
    if not isinstance(node, int) or isinstance(node, bool) or not 0 <= node < MAX_NODES:
        raise ShimArgumentError(f"node: node id {node!r} out of range 0..{MAX_NODES - 1}")
    if not isinstance(batch, int) or batch < 1:
        raise ShimArgumentError(f"batch: must be an int >= 1, got {batch!r}")
    c_addrs, count = _buffer(addresses, 8, "addresses")
    status = _ZERO_I32 * count
    calls = max(1, -(-count // batch))
    ns = ffi.new("uint64_t[]", calls)
    done = ffi.new("size_t *")
    rc = lib.km_move_pages_batched(pid, count, c_addrs, node, ffi.from_buffer("int32_t[]", status),
                                   flags, batch, ns, done)
    n_done = int(done[0])
    made = -(-n_done // batch) + (rc < 0)  # completed calls, and the one that failed
    seconds = [ns[k] / 1e9 for k in range(made)]
    error = None
    if rc < 0:
        error = MovePagesError(-rc, f"move_pages(pid={pid}, {min(batch, count - n_done)} pages): "
                                    f"{os.strerror(-rc)}")
        del status[n_done:]
    return BatchedMove(MoveResult(status=status, not_migrated=max(0, int(rc))), seconds, error)


def count_statuses(status: Any) -> StatusCounts:
    """Reduce a status array to counts per node and per errno, in C."""
    c_status, count = _buffer(status, 4, "status")
    keys = ffi.new("int32_t[]", _TALLY_SLOTS)
    counts = ffi.new("uint64_t[]", _TALLY_SLOTS)
    overflow = ffi.new("uint64_t *")
    used = lib.km_status_tally(c_status, count, keys, counts, _TALLY_SLOTS, overflow)
    by_node: dict[int, int] = {}
    by_errno: dict[int, int] = {}
    for i in range(used):
        key, n = int(keys[i]), int(counts[i])
        if key >= 0:
            by_node[key] = n
        else:
            by_errno[-key] = n
    return StatusCounts(by_node=by_node, by_errno=by_errno, unknown=int(overflow[0]))


# Distinct status values kept by count_statuses; more is not a real batch.
_TALLY_SLOTS: Final = 256


# --- candidate queues (native/kmqueue.c) ------------------------------------


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


# --- perf ring buffers (native/kmperf.c) -------------------------------------

# PERF_SAMPLE_* bits, from <linux/perf_event.h>.
PERF_SAMPLE_IP: Final = 1 << 0
PERF_SAMPLE_TID: Final = 1 << 1
PERF_SAMPLE_TIME: Final = 1 << 2
PERF_SAMPLE_ADDR: Final = 1 << 3
PERF_SAMPLE_ID: Final = 1 << 6
PERF_SAMPLE_CPU: Final = 1 << 7
PERF_SAMPLE_PERIOD: Final = 1 << 8
PERF_SAMPLE_STREAM_ID: Final = 1 << 9
PERF_SAMPLE_WEIGHT: Final = 1 << 14
PERF_SAMPLE_DATA_SRC: Final = 1 << 15
PERF_SAMPLE_IDENTIFIER: Final = 1 << 16
PERF_SAMPLE_TRANSACTION: Final = 1 << 17
PERF_SAMPLE_PHYS_ADDR: Final = 1 << 19
PERF_SAMPLE_CGROUP: Final = 1 << 21
PERF_SAMPLE_DATA_PAGE_SIZE: Final = 1 << 22
PERF_SAMPLE_CODE_PAGE_SIZE: Final = 1 << 23
PERF_SAMPLE_WEIGHT_STRUCT: Final = 1 << 24
PERF_SAMPLE_SUPPORTED: Final = int(lib.km_perf_supported_sample_type())

_SAMPLE_FIELDS: Final = (("pid", "i"), ("tid", "i"), ("cpu", "i"), ("time", "Q"), ("addr", "Q"),
                         ("phys_addr", "Q"), ("weight", "Q"), ("data_src", "Q"), ("ip", "Q"))


@dataclass(frozen=True, slots=True)
class PerfStats:
    samples: int = 0
    lost: int = 0
    lost_records: int = 0
    throttled: int = 0
    unthrottled: int = 0
    unknown: int = 0
    truncated: int = 0
    bytes: int = 0


class SampleBuffer:
    """Reusable flat arrays that km_perf_drain fills (one column per sample field)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.columns: dict[str, array[int]] = {
            name: array(code, bytes(capacity * (4 if code == "i" else 8)))
            for name, code in _SAMPLE_FIELDS}
        self._c = ffi.new("struct km_samples *")
        self._c.cap = capacity
        for name, code in _SAMPLE_FIELDS:
            ctype = "int32_t[]" if code == "i" else "uint64_t[]"
            setattr(self._c, name, ffi.from_buffer(ctype, self.columns[name]))
        self._keep = [getattr(self._c, name) for name, _ in _SAMPLE_FIELDS]

    @property
    def n(self) -> int:
        return int(self._c.n)

    def clear(self) -> None:
        self._c.n = 0

    def column(self, name: str) -> memoryview:
        """The first ``n`` values of a column, without copying."""
        return memoryview(self.columns[name])[: self.n]


def samples_filter(out: SampleBuffer, pids: array[int], allow: bool) -> int:
    """Keep samples whose pid is in (allow) or not in (deny) the sorted ``pids``, and a
    non-zero address; returns the number removed."""
    c_pids = ffi.from_buffer("int32_t[]", pids) if len(pids) else ffi.NULL
    return int(lib.km_samples_filter(out._c, c_pids, len(pids), int(allow)))


def samples_by_node(out: SampleBuffer, block_shift: int, block_node: array[int],
                    node_ok: bytes, nodes_out: array[int]) -> int:
    """Keep samples whose physical address lies on a node with ``node_ok[node]``;
    their nodes go to ``nodes_out``.  Returns the samples removed."""
    if len(nodes_out) < out.n:
        raise ShimArgumentError(f"nodes_out: has {len(nodes_out)} entries for {out.n} samples")
    table = ffi.from_buffer("int32_t[]", block_node) if len(block_node) else ffi.NULL
    rc = lib.km_samples_by_node(out._c, block_shift, table, len(block_node),
                                ffi.from_buffer("uint8_t[]", node_ok), len(node_ok),
                                ffi.from_buffer("int32_t[]", nodes_out))
    if rc < 0:
        raise ShimArgumentError("samples_by_node: the buffer has no phys_addr column")
    return int(rc)


def perf_open(type_: int, config: int, sample_type: int, *, cpu: int, pid: int = -1,
              sample_period: int = 1, config1: int = 0, precise_ip: int = 0,
              exclude_kernel: bool = False, wakeup_bytes: int = 0) -> int:
    """perf_event_open(2) for one CPU; returns the fd, raises OSError(errno)."""
    if sample_type & ~PERF_SAMPLE_SUPPORTED:
        raise ShimArgumentError(f"sample_type: bits {sample_type & ~PERF_SAMPLE_SUPPORTED:#x} "
                                "are not decoded")
    fd = lib.km_perf_open(type_, config, config1, sample_period, sample_type, precise_ip,
                          int(exclude_kernel), pid, cpu, wakeup_bytes)
    if fd < 0:
        raise OSError(-fd, f"perf_event_open(type={type_}, config={config:#x}, cpu={cpu}): "
                           f"{os.strerror(-fd)}")
    return int(fd)


def perf_drain(ring: Any, sample_type: int, out: SampleBuffer, stats: Any) -> int:
    """Decode records from a perf ring (an mmap or any writable buffer) into ``out``.

    ``stats`` is a ``ffi.new('struct km_perf_stats *')`` accumulated across calls
    (see :func:`new_perf_stats` / :func:`read_perf_stats`).  Returns samples added.
    """
    c_ring = ffi.from_buffer(ring, require_writable=True)
    rc = lib.km_perf_drain(c_ring, len(c_ring), sample_type, out._c, stats)
    if rc < 0:
        raise ShimArgumentError(f"perf ring: {os.strerror(-rc)} (sample_type {sample_type:#x}, "
                                f"{len(c_ring)} bytes)")
    return int(rc)


def new_perf_stats() -> Any:
    return ffi.new("struct km_perf_stats *")


def read_perf_stats(stats: Any) -> PerfStats:
    return PerfStats(*(int(getattr(stats, f)) for f in PerfStats.__slots__))


# --- pagemap and page_idle (native/kmidle.c) --------------------------------


def pread_words(fd: int, first: int, out: Any) -> int:
    """pread 8-byte words at word index ``first`` into ``out``; returns words read."""
    c_out, n = _buffer(out, 8, "out")
    rc = lib.km_pread_words(fd, first, n, c_out)
    if rc < 0:
        raise OSError(-rc, f"pread at word {first}: {os.strerror(-rc)}")
    return int(rc)


def pagemap_pfns(entries: Any, pfns: Any) -> int:
    """PFN of each present page (0 when absent, swapped or hidden); returns present count."""
    c_e, n = _buffer(entries, 8, "entries")
    c_p, m = _buffer(pfns, 8, "pfns")
    if m != n:
        raise ShimArgumentError(f"pfns: has {m} entries for {n} pagemap entries")
    return int(lib.km_pagemap_pfns(c_e, n, c_p))


def idle_mark(fd: int, pfns: Any) -> int:
    """Set the idle bit of every non-zero PFN; returns bitmap words written."""
    c_p, n = _buffer(pfns, 8, "pfns")
    rc = lib.km_idle_mark(fd, c_p, n)
    if rc < 0:
        raise OSError(-rc, f"page_idle/bitmap write: {os.strerror(-rc)}")
    return int(rc)


def idle_test(fd: int, pfns: Any, idle: Any) -> int:
    """idle[i] = 1 if still idle, 0 if accessed, 2 if no PFN; returns accessed count."""
    c_p, n = _buffer(pfns, 8, "pfns")
    rc = lib.km_idle_test(fd, c_p, n, _bytes_buffer(idle, n, "idle"))
    if rc < 0:
        raise OSError(-rc, f"page_idle/bitmap read: {os.strerror(-rc)}")
    return int(rc)


def idle_track(entries: Any, first_vpn: int, pfn_block_shift: int, block_node: array[int],
               slow: bytes, huge_pages: int, kpageflags_fd: int | None, tracked: Any,
               tags: Any, nodes: Any, counts: array[int]) -> int:
    """Pagemap entries → the PFNs the idle sampler tracks (see native/kmidle.h).

    ``tracked`` (8-byte), ``tags`` (bytes) and ``nodes`` (4-byte) get one entry
    per pagemap entry; ``counts`` is ``array('Q')`` of [THP heads, hugetlbfs
    slots] added to.  Returns the number of tracked pages.
    """
    c_e, n = _buffer(entries, 8, "entries")
    c_t, m = _buffer(tracked, 8, "tracked")
    c_n, k = _buffer(nodes, 4, "nodes")
    if m < n or k < n:
        raise ShimArgumentError(f"tracked/nodes: need {n} entries, have {m}/{k}")
    if counts.typecode != "Q" or len(counts) < 2:
        raise ShimArgumentError("counts: needs array('Q') of 2")
    table = ffi.from_buffer("int32_t[]", block_node) if len(block_node) else ffi.NULL
    return int(lib.km_idle_track(c_e, n, first_vpn, pfn_block_shift, table, len(block_node),
                                 slow, len(slow), huge_pages,
                                 -1 if kpageflags_fd is None else kpageflags_fd, c_t,
                                 _bytes_buffer(tags, n, "tags"), c_n,
                                 ffi.from_buffer("uint64_t[]", counts)))


def idle_test_batch(fd: int, pfns: Any, idle: Any, again: Any, scratch: Any) -> tuple[int, bool]:
    """Test a batch of PFNs against page_idle/bitmap, in PFN order if it is far from it.

    ``idle[i]`` as :func:`idle_test`; ``again`` gets the PFNs found accessed (0
    elsewhere), ready for :func:`idle_mark`; ``scratch`` holds ``2 * len(pfns)``
    words.  Returns (pages found accessed, whether the batch was sorted).
    """
    c_p, n = _buffer(pfns, 8, "pfns")
    c_a, m = _buffer(again, 8, "again")
    c_s, k = _buffer(scratch, 8, "scratch")
    if m < n or k < 2 * n:
        raise ShimArgumentError(f"again/scratch: need {n}/{2 * n} words, have {m}/{k}")
    sorted_ = ffi.new("int *")
    rc = lib.km_idle_test_batch(fd, c_p, n, _bytes_buffer(idle, n, "idle"), c_a, c_s, sorted_)
    if rc < 0:
        raise OSError(-rc, f"page_idle/bitmap read: {os.strerror(-rc)}")
    return int(rc), bool(sorted_[0])


def idle_age(idle: Any, tags: Any, nodes: Any, hist: Any, chunk_tags: Any, history_rounds: int,
             hot_rounds: int, addr: int, hot_addrs: Any, hot_nodes: Any, hot_weights: Any,
             counts: array[int], page_size: int = PAGE_SIZE, mask: bytes | None = None) -> int:
    """Fold a segment's test results into its aging history (see native/kmidle.h).

    ``idle``, ``tags``, ``hist`` and ``chunk_tags`` are byte buffers, ``nodes``
    4-byte, of one entry per page; the hot pages go to ``hot_addrs`` (8-byte),
    ``hot_nodes`` (4-byte) and ``hot_weights`` (4-byte unsigned); ``counts`` is
    ``array('Q')`` of [tracked pages, accesses counted] added to.  With ``mask``
    (one byte per node), only the pages on a node whose byte is non-zero are
    tracked.  Returns the number of hot pages, whose addresses are ``addr`` +
    their index * ``page_size``.
    """
    if not 1 <= history_rounds <= 8 or hot_rounds < 0:
        raise ShimArgumentError(f"history_rounds {history_rounds} / hot_rounds {hot_rounds}")
    c_n, n = _buffer(nodes, 4, "nodes")
    c_ha, a = _buffer(hot_addrs, 8, "hot_addrs")
    c_hn, b = _buffer(hot_nodes, 4, "hot_nodes")
    c_hw, c = _buffer(hot_weights, 4, "hot_weights")
    if min(a, b, c) < n:
        raise ShimArgumentError(f"hot_*: need room for {n} pages")
    if counts.typecode != "Q" or len(counts) < 2:
        raise ShimArgumentError("counts: needs array('Q') of 2")
    return int(lib.km_idle_age(_bytes_buffer(idle, n, "idle", writable=False),
                               _bytes_buffer(tags, n, "tags", writable=False), c_n, n,
                               ffi.NULL if mask is None else mask,
                               0 if mask is None else len(mask),
                               _bytes_buffer(hist, n, "hist"),
                               _bytes_buffer(chunk_tags, n, "chunk_tags"), history_rounds,
                               hot_rounds, addr, page_size, c_ha, c_hn,
                               ffi.cast("uint32_t *", c_hw), ffi.from_buffer("uint64_t[]", counts)))


def idle_cold(idle: Any, tags: Any, nodes: Any, fast: bytes, since: Any, chunk_tags: Any,
              test_tick: int, mark_tick: int, cold_ticks: int, max_age: int, addr: int,
              cold_addrs: Any,
              cold_nodes: Any, cold_ages: Any, age_counts: array[int], counts: array[int],
              page_size: int = PAGE_SIZE) -> int:
    """Fold a segment's test results into the idle ages of its fast-tier pages (see
    native/kmidle.h).

    ``idle``, ``tags``, ``since`` and ``chunk_tags`` are byte buffers, ``nodes``
    4-byte, of one entry per page; ``fast`` has one byte per node (non-zero: aged).
    Ages are in ticks modulo 256: ``test_tick`` (before the test) ages the pages found
    idle, ``mark_tick`` (after the marking) starts the others; a page idle for
    ``cold_ticks`` or more goes to ``cold_addrs`` (8-byte), ``cold_nodes`` (4-byte)
    and ``cold_ages`` (4-byte unsigned), and ``age_counts`` (``array('Q')`` of 256)
    counts it by age.  ``counts`` is ``array('Q')`` of [pages aged, accesses found]
    added to.  Returns the number of cold pages.
    """
    if not 0 <= cold_ticks <= max_age <= 255:
        raise ShimArgumentError(f"cold_ticks {cold_ticks} / max_age {max_age}: need "
                                "0 <= cold_ticks <= max_age <= 255")
    c_n, n = _buffer(nodes, 4, "nodes")
    c_ca, a = _buffer(cold_addrs, 8, "cold_addrs")
    c_cn, b = _buffer(cold_nodes, 4, "cold_nodes")
    c_cg, c = _buffer(cold_ages, 4, "cold_ages")
    if min(a, b, c) < n:
        raise ShimArgumentError(f"cold_*: need room for {n} pages")
    if age_counts.typecode != "Q" or len(age_counts) < 256:
        raise ShimArgumentError("age_counts: needs array('Q') of 256")
    if counts.typecode != "Q" or len(counts) < 2:
        raise ShimArgumentError("counts: needs array('Q') of 2")
    return int(lib.km_idle_cold(_bytes_buffer(idle, n, "idle", writable=False),
                                _bytes_buffer(tags, n, "tags", writable=False), c_n, n,
                                fast, len(fast), _bytes_buffer(since, n, "since"),
                                _bytes_buffer(chunk_tags, n, "chunk_tags"), test_tick & 255,
                                mark_tick & 255, cold_ticks, max_age, addr, page_size, c_ca,
                                c_cn, ffi.cast("uint32_t *", c_cg),
                                ffi.from_buffer("uint64_t[]", age_counts),
                                ffi.from_buffer("uint64_t[]", counts)))


def idle_pick(addrs: array[int], nodes: array[int], weights: array[int], min_weight: int,
              quota: array[int]) -> int:
    """Keep, in order, the entries of weight > ``min_weight`` and the first ``quota[0]``
    of weight == ``min_weight`` (``quota``, ``array('Q')`` of 1, is decremented by
    those kept); the arrays (``'Q'``, ``'i'``, ``'I'``) are truncated to what is kept.
    Returns the number kept."""
    n = len(addrs)
    if len(nodes) != n or len(weights) != n:
        raise ShimArgumentError("idle_pick: addrs, nodes and weights differ in length")
    if weights.typecode != "I" or quota.typecode != "Q" or len(quota) < 1:
        raise ShimArgumentError("idle_pick: weights needs array('I'), quota array('Q') of 1")
    c_a, _ = _buffer(addrs, 8, "addrs")
    c_n, _ = _buffer(nodes, 4, "nodes")
    c_w, c_q = ffi.from_buffer(weights), ffi.from_buffer("uint64_t[]", quota)
    try:
        k = int(lib.km_idle_pick(c_a, c_n, ffi.cast("uint32_t *", c_w), n, min_weight, c_q))
    finally:
        for c in (c_a, c_n, c_w, c_q):  # an array exporting its buffer cannot be resized
            ffi.release(c)
    del addrs[k:], nodes[k:], weights[k:]
    return k


# --- candidate batches (native/kmcand.c) ------------------------------------


def cand_prepare(pids: array[int], addrs: array[int], counts: array[int], min_count: int) -> int:
    """Sort by (pid, addr), fold duplicates, drop folded counts below ``min_count``.

    Works in place on ``array('i')``, ``array('Q')`` and ``array('I')`` and truncates
    them; returns how many (folded) candidates the threshold dropped.
    """
    n = len(pids)
    if len(addrs) != n or len(counts) != n:
        raise ShimArgumentError("cand_prepare: pids, addrs and counts differ in length")
    if not n:
        return 0
    below = ffi.new("uint64_t *")
    rc = lib.km_cand_prepare(n, ffi.from_buffer("int32_t[]", pids),
                             ffi.from_buffer("uint64_t[]", addrs),
                             ffi.from_buffer("uint32_t[]", counts), min_count, below)
    if rc < 0:
        raise MemoryError("cand_prepare")
    del pids[rc:], addrs[rc:], counts[rc:]
    return int(below[0])


def cand_targets(status: Any, target_of_node: array[int], tgt: array[int]) -> int:
    """Promotion target of each queried page (-1 on the fast tier, -2 gone)."""
    c_status, n = _buffer(status, 4, "status")
    c_tgt, m = _buffer(tgt, 4, "tgt")
    if m < n:
        raise ShimArgumentError(f"tgt: has {m} entries for {n} statuses")
    table = ffi.from_buffer("int32_t[]", target_of_node) if len(target_of_node) else ffi.NULL
    return int(lib.km_cand_targets(n, c_status, table, len(target_of_node), c_tgt))


def select_u64(values: Any, key: Any, want: int) -> array[int]:
    """The values whose key equals ``want``, in order."""
    c_in, n = _buffer(values, 8, "values")
    c_key, m = _buffer(key, 4, "key")
    if m < n:
        raise ShimArgumentError(f"key: has {m} entries for {n} values")
    out = array("Q", bytes(8 * n))
    k = lib.km_select_u64(n, c_in, c_key, want, ffi.from_buffer("uint64_t[]", out))
    del out[k:]
    return out


def runs(values: Any) -> array[int]:
    """Start index of each run of equal values in a sorted ``array('i')``."""
    c_v, n = _buffer(values, 4, "values")
    starts = array("I", bytes(4 * n))
    k = lib.km_runs_i32(n, c_v, ffi.from_buffer("uint32_t[]", starts))
    del starts[k:]
    return starts


def keys_for(addrs: Any, status: Any, tgt: Any, dst: int) -> array[int]:
    """Inbox keys ``addr | source node`` of the pages whose target is ``dst``."""
    c_a, n = _buffer(addrs, 8, "addrs")
    c_s, ns = _buffer(status, 4, "status")
    c_t, nt = _buffer(tgt, 4, "tgt")
    if ns < n or nt < n:
        raise ShimArgumentError(f"keys_for: {n} addrs, {ns} statuses, {nt} targets")
    out = array("Q", bytes(8 * n))
    k = lib.km_keys_for(n, c_a, c_s, c_t, dst, ffi.from_buffer("uint64_t[]", out))
    del out[k:]
    return out


def sort_unique(values: array[int]) -> None:
    """Sort an ``array('Q')`` in place and drop repeated values."""
    c_v, n = _buffer(values, 8, "values")
    k = lib.km_sort_unique_u64(n, c_v)
    ffi.release(c_v)  # the array may not shrink while cffi holds its buffer
    if k < 0:
        raise MemoryError("sort_unique")
    del values[k:]


def remove_sorted(values: array[int], remove: Any) -> None:
    """Drop from the sorted ``array('Q')`` every value in the sorted ``remove``."""
    c_v, n = _buffer(values, 8, "values")
    c_r, m = _buffer(remove, 8, "remove")
    k = lib.km_remove_sorted_u64(n, c_v, m, c_r)
    ffi.release(c_v)
    del values[k:]


def split_keys(keys: Any, addr_mask: int) -> tuple[array[int], array[int]]:
    """(keys & addr_mask as ``array('Q')``, the low bits as ``array('i')``)."""
    c_k, n = _buffer(keys, 8, "keys")
    addrs = array("Q", bytes(8 * n))
    low = array("i", bytes(4 * n))
    lib.km_split_keys(n, c_k, addr_mask & 0xFFFFFFFFFFFFFFFF,
                      ffi.from_buffer("uint64_t[]", addrs), ffi.from_buffer("int32_t[]", low))
    return addrs, low
