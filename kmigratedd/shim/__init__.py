"""Python facade of the native shim: the only module that imports ``kmigratedd._native``.

It checks arguments before the call, turns a whole-call failure (-errno) into
:class:`~kmigratedd.errors.MovePagesError` (an ``OSError`` with ``errno`` set),
and hands per-page statuses back as data — an ``array('i')`` of node ids or
``-errno`` values — never as exceptions (see move_pages(2)).

Buffers are ``array.array`` objects (typecode ``'Q'`` for addresses, ``'i'`` for
nodes and statuses) or anything else exposing a contiguous buffer of the right
item size, so a batch crosses into C without a per-page Python loop.

Modules: _core.py (the extension and the argument checks), move.py (move_pages(2)),
queue.py (candidate queues), perf.py (perf ring buffers), idle.py (pagemap and
page_idle), cand.py (candidate batches); everything is re-exported here, and callers
use ``shim.<name>``.
"""

from __future__ import annotations

from ._core import MAX_NODES, MPOL_MF_MOVE, MPOL_MF_MOVE_ALL, PAGE_SIZE, ffi, lib
from .move import (
    BatchedMove,
    MoveResult,
    StatusCounts,
    count_statuses,
    move,
    move_batched,
    query_nodes,
)
from .queue import CandidateBatch, NativeQueue, QueueStats
from .perf import (
    PERF_SAMPLE_ADDR,
    PERF_SAMPLE_CGROUP,
    PERF_SAMPLE_CODE_PAGE_SIZE,
    PERF_SAMPLE_CPU,
    PERF_SAMPLE_DATA_PAGE_SIZE,
    PERF_SAMPLE_DATA_SRC,
    PERF_SAMPLE_ID,
    PERF_SAMPLE_IDENTIFIER,
    PERF_SAMPLE_IP,
    PERF_SAMPLE_PERIOD,
    PERF_SAMPLE_PHYS_ADDR,
    PERF_SAMPLE_STREAM_ID,
    PERF_SAMPLE_SUPPORTED,
    PERF_SAMPLE_TID,
    PERF_SAMPLE_TIME,
    PERF_SAMPLE_TRANSACTION,
    PERF_SAMPLE_WEIGHT,
    PERF_SAMPLE_WEIGHT_STRUCT,
    PerfStats,
    SampleBuffer,
    new_perf_stats,
    perf_drain,
    perf_open,
    read_perf_stats,
    samples_by_node,
    samples_filter,
)
from .idle import (
    idle_age,
    idle_cold,
    idle_mark,
    idle_pick,
    idle_test,
    idle_test_batch,
    idle_track,
    pagemap_pfns,
    pagemap_pfns_on,
    pread_words,
)
from .cand import (
    cand_prepare,
    cand_targets,
    keys_for,
    remove_sorted,
    runs,
    select_u64,
    sort_unique,
    split_keys,
)

__all__ = [
    "BatchedMove",
    "CandidateBatch",
    "MAX_NODES",
    "MPOL_MF_MOVE",
    "MPOL_MF_MOVE_ALL",
    "MoveResult",
    "NativeQueue",
    "PAGE_SIZE",
    "PERF_SAMPLE_ADDR",
    "PERF_SAMPLE_CGROUP",
    "PERF_SAMPLE_CODE_PAGE_SIZE",
    "PERF_SAMPLE_CPU",
    "PERF_SAMPLE_DATA_PAGE_SIZE",
    "PERF_SAMPLE_DATA_SRC",
    "PERF_SAMPLE_ID",
    "PERF_SAMPLE_IDENTIFIER",
    "PERF_SAMPLE_IP",
    "PERF_SAMPLE_PERIOD",
    "PERF_SAMPLE_PHYS_ADDR",
    "PERF_SAMPLE_STREAM_ID",
    "PERF_SAMPLE_SUPPORTED",
    "PERF_SAMPLE_TID",
    "PERF_SAMPLE_TIME",
    "PERF_SAMPLE_TRANSACTION",
    "PERF_SAMPLE_WEIGHT",
    "PERF_SAMPLE_WEIGHT_STRUCT",
    "PerfStats",
    "QueueStats",
    "SampleBuffer",
    "StatusCounts",
    "cand_prepare",
    "cand_targets",
    "count_statuses",
    "ffi",
    "idle_age",
    "idle_cold",
    "idle_mark",
    "idle_pick",
    "idle_test",
    "idle_test_batch",
    "idle_track",
    "keys_for",
    "lib",
    "move",
    "move_batched",
    "new_perf_stats",
    "pagemap_pfns",
    "pagemap_pfns_on",
    "perf_drain",
    "perf_open",
    "pread_words",
    "query_nodes",
    "read_perf_stats",
    "remove_sorted",
    "runs",
    "samples_by_node",
    "samples_filter",
    "select_u64",
    "sort_unique",
    "split_keys",
]
