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
        raise ShimArgumentError(f"{what}: needs a buffer (array('{'Q' if itemsize == 8 else 'i'}')), "
                                f"got {type(obj).__name__}") from None
    if view.itemsize != itemsize or not view.c_contiguous or view.ndim != 1:
        raise ShimArgumentError(f"{what}: needs a flat buffer of {itemsize}-byte items")
    return ffi.from_buffer("uint64_t[]" if itemsize == 8 else "int32_t[]", obj), len(view)


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
    return status


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
