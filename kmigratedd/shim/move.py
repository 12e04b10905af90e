"""move_pages(2): query and move pages, in one call or in batches, and tally the
statuses (native/kmshim.c)."""

from __future__ import annotations

import errno as _errno
import os
from array import array
from dataclasses import dataclass
from typing import Any, Final

from ..errors import MovePagesError, ShimArgumentError
from ._core import (_VALID_FLAGS, _ZERO_I32, MAX_NODES, MPOL_MF_MOVE, _buffer, _check_pid,
                    _raise_for, ffi, lib)


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
