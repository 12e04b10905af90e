"""pagemap and page_idle (native/kmidle.c)."""

from __future__ import annotations

import os
from array import array
from typing import Any

from ..errors import ShimArgumentError
from ._core import (PAGE_SIZE, _buffer, _bytes_buffer,
                    ffi, lib)


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
    _check_counts(counts, 2, "counts")
    table = ffi.from_buffer("int32_t[]", block_node) if len(block_node) else ffi.NULL
    return int(lib.km_idle_track(c_e, n, first_vpn, pfn_block_shift, table, len(block_node),
                                 slow, len(slow), huge_pages,
                                 -1 if kpageflags_fd is None else kpageflags_fd, c_t,
                                 _bytes_buffer(tags, n, "tags"), c_n,
                                 ffi.from_buffer("uint64_t[]", counts)))


def pagemap_pfns_on(entries: Any, first_vpn: int, pfn_block_shift: int,
                    block_node: array[int], mask: bytes, pfns: Any) -> int:
    """PFN of each present page on a node in ``mask`` (``mask[node]`` = 1; the node from
    the PFN's memory block, ``block_node``), 0 elsewhere; returns how many.  Huge pages
    are not told apart: each base page counts."""
    n = len(memoryview(entries))
    return idle_track(entries, first_vpn, pfn_block_shift, block_node, mask, 1, None, pfns,
                      bytearray(n), array("i", bytes(4 * n)), array("Q", [0, 0]))


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
    c_ha, c_hn, c_hw = _found(hot_addrs, hot_nodes, hot_weights, n, "hot")
    _check_counts(counts, 2, "counts")
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
    c_ca, c_cn, c_cg = _found(cold_addrs, cold_nodes, cold_ages, n, "cold")
    _check_counts(age_counts, 256, "age_counts")
    _check_counts(counts, 2, "counts")
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


def _found(addrs: Any, nodes: Any, weights: Any, n: int, what: str) -> tuple[Any, Any, Any]:
    """The output buffers of found pages (addresses, nodes, weights), room for ``n``."""
    c_a, a = _buffer(addrs, 8, f"{what}_addrs")
    c_n, b = _buffer(nodes, 4, f"{what}_nodes")
    c_w, c = _buffer(weights, 4, f"{what}_weights")
    if min(a, b, c) < n:
        raise ShimArgumentError(f"{what}_*: need room for {n} pages")
    return c_a, c_n, c_w


def _check_counts(counts: array[int], n: int, what: str) -> None:
    if counts.typecode != "Q" or len(counts) < n:
        raise ShimArgumentError(f"{what}: needs array('Q') of {n}")
