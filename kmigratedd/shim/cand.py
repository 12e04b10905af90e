"""Candidate batches (native/kmcand.c)."""

from __future__ import annotations

from array import array
from typing import Any

from ..errors import ShimArgumentError
from ._core import (_buffer, ffi, lib)


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
