"""perf ring buffers (native/kmperf.c)."""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ShimArgumentError
from ._core import (ffi, lib)


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
