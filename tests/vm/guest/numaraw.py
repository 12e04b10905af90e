"""Raw NUMA helpers for the guest tests: ctypes syscalls, sysfs readers.  No project imports.

`move_pages()` is deliberately one small function: when kmigratedd.shim exists, swap its body
for the shim's batched call and every guest test uses it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Self

SYS_MBIND = 237
SYS_SET_MEMPOLICY = 238
SYS_GET_MEMPOLICY = 239
SYS_MOVE_PAGES = 279

MPOL_DEFAULT = 0
MPOL_PREFERRED = 1
MPOL_BIND = 2
MPOL_MF_MOVE = 1 << 1
MPOL_MF_MOVE_ALL = 1 << 2

PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_FAILED = ctypes.c_void_p(-1).value
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
HPAGE_SIZE = 2 * 1024 * 1024

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def kernel_version() -> tuple[int, int]:
    """(major, minor) of the running kernel, from uname's release ('6.12.117+deb12-amd64')."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    assert m, os.uname().release
    return int(m.group(1)), int(m.group(2))


def _check(ret: int, what: str) -> int:
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


# ------------------------------------------------------------------------------ move_pages
def move_pages(
    pid: int,
    addrs: Sequence[int],
    nodes: Sequence[int] | None,
    flags: int = MPOL_MF_MOVE,
    status_fill: int = -(2**31),
) -> tuple[int, int, list[int]]:
    """move_pages(2) on one batch.  nodes=None queries.  Returns (ret, errno, statuses).

    The status array is pre-filled with `status_fill` so entries the kernel did not write
    (it stops at the first chunk that fails with e.g. ENOMEM) stay recognisable.
    """
    n = len(addrs)
    pages = (ctypes.c_void_p * n)(*addrs)
    status = (ctypes.c_int * n)(*([status_fill] * n))
    nodes_arr = (ctypes.c_int * n)(*nodes) if nodes is not None else None
    ctypes.set_errno(0)
    ret = _libc.syscall(
        ctypes.c_long(SYS_MOVE_PAGES),
        ctypes.c_long(pid),
        ctypes.c_ulong(n),
        pages,
        nodes_arr,
        status,
        ctypes.c_int(flags),
    )
    err = ctypes.get_errno() if ret == -1 else 0
    return int(ret), err, list(status)


def query_nodes(addrs: Sequence[int], batch: int = 4096) -> list[int]:
    out: list[int] = []
    for i in range(0, len(addrs), batch):
        ret, err, st = move_pages(0, addrs[i : i + batch], None, 0)
        if ret != 0:
            raise OSError(err, f"move_pages query: {os.strerror(err)}")
        out += st
    return out


# ------------------------------------------------------------------------------- policies
def _nodemask(nodes: Sequence[int]) -> tuple[ctypes.Array[ctypes.c_ulong], int]:
    mask = 0
    for n in nodes:
        mask |= 1 << n
    arr = (ctypes.c_ulong * 1)(mask)
    return arr, 64


def mbind(addr: int, length: int, mode: int, nodes: Sequence[int] = (), flags: int = 0) -> None:
    mask, maxnode = _nodemask(nodes)
    ret = _libc.syscall(
        ctypes.c_long(SYS_MBIND),
        ctypes.c_void_p(addr),
        ctypes.c_ulong(length),
        ctypes.c_int(mode),
        mask if nodes else None,
        ctypes.c_ulong(maxnode if nodes else 0),
        ctypes.c_uint(flags),
    )
    _check(int(ret), "mbind")


# ---------------------------------------------------------------------------------- memory
class Buffer:
    """Anonymous private mapping at a known address (optionally aligned)."""

    def __init__(self, size: int, align: int = PAGE_SIZE, hugepage: bool | None = None) -> None:
        self.size = size
        self._raw_len = size + align
        raw = _libc.mmap(
            None, self._raw_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0
        )
        if raw in (None, MAP_FAILED):
            raise OSError(ctypes.get_errno(), "mmap failed")
        self._raw = int(raw)
        self.addr = (self._raw + align - 1) // align * align
        if hugepage is not None:
            _check(
                _libc.madvise(self.addr, size, MADV_HUGEPAGE if hugepage else MADV_NOHUGEPAGE),
                "madvise",
            )

    def view(self) -> memoryview:
        return memoryview((ctypes.c_char * self.size).from_address(self.addr)).cast("B")

    def pages(self, step: int = PAGE_SIZE) -> list[int]:
        return list(range(self.addr, self.addr + self.size, step))

    def fill(self, data: bytes) -> None:
        assert len(data) == self.size
        ctypes.memmove(self.addr, data, self.size)

    def touch(self) -> None:
        """Write one byte per page (faults every page in)."""
        ctypes.memset(self.addr, 0x5A, self.size)

    def close(self) -> None:
        if self._raw:
            _libc.munmap(self._raw, self._raw_len)
            self._raw = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------- sysfs
NODE_DIR = Path("/sys/devices/system/node")
TIER_DIR = Path("/sys/devices/virtual/memory_tiering")


def parse_list(s: str) -> list[int]:
    out: list[int] = []
    for part in s.strip().split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            out += range(int(a), int(b) + 1)
        else:
            out.append(int(part))
    return out


def online_nodes() -> list[int]:
    return parse_list((NODE_DIR / "online").read_text())


def node_cpus(node: int) -> list[int]:
    return parse_list((NODE_DIR / f"node{node}" / "cpulist").read_text())


def node_distance(node: int) -> list[int]:
    return [int(x) for x in (NODE_DIR / f"node{node}" / "distance").read_text().split()]


def node_meminfo(node: int) -> dict[str, int]:
    """Values in bytes (kB fields converted), e.g. MemFree, MemTotal, AnonHugePages."""
    out: dict[str, int] = {}
    for line in (NODE_DIR / f"node{node}" / "meminfo").read_text().splitlines():
        m = re.match(r"Node \d+ (\w+):\s+(\d+)( kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    return out


def meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        m = re.match(r"(\w+):\s+(\d+)( kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    return out


def memory_tiers() -> dict[int, list[int]]:
    """tier id -> nodes (a larger id is a slower tier)."""
    tiers: dict[int, list[int]] = {}
    for d in glob.glob(str(TIER_DIR / "memory_tier*")):
        m = re.search(r"memory_tier(\d+)$", d)
        nl = Path(d) / "nodelist"
        if m and nl.exists():
            tiers[int(m.group(1))] = parse_list(nl.read_text())
    return tiers


def node_tier(node: int) -> int | None:
    for tier, nodes in memory_tiers().items():
        if node in nodes:
            return tier
    return None


def hmat_attr(node: int, name: str) -> int | None:
    p = NODE_DIR / f"node{node}" / "access0" / "initiators" / name
    return int(p.read_text()) if p.exists() else None


def zone_watermarks(node: int) -> dict[str, int]:
    """Sum over the node's zones of min/low/high watermarks, in bytes."""
    wm = {"min": 0, "low": 0, "high": 0}
    cur = None
    for line in Path("/proc/zoneinfo").read_text().splitlines():
        m = re.match(r"Node (\d+), zone\s+(\w+)", line)
        if m:
            cur = int(m.group(1))
            continue
        m = re.match(r"\s+(min|low|high)\s+(\d+)$", line)
        if m and cur == node:
            wm[m.group(1)] += int(m.group(2)) * PAGE_SIZE
    return wm


def smaps_anon_huge(addr: int) -> int:
    """AnonHugePages (bytes) of the VMA containing addr, from /proc/self/smaps."""
    in_vma = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            in_vma = int(m.group(1), 16) <= addr < int(m.group(2), 16)
            continue
        if in_vma and line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    return 0


def in_vm() -> bool:
    return os.environ.get("KMIGRATEDD_IN_VM") == "1"


def vm_kernel() -> str:
    return os.environ.get("KMIGRATEDD_VM_KERNEL", "")


def vm_topology() -> str:
    return os.environ.get("KMIGRATEDD_VM_TOPOLOGY", "")


# ------------------------------------------------------------------------------- test data
def fill_pattern(buf: Buffer, seed: int) -> None:
    """Fill buf with pseudo-random data in which every 4K page is unique (seed, page index)."""
    import random
    import struct

    block = random.Random(seed).randbytes(1 << 20)
    for off in range(0, buf.size, len(block)):
        n = min(len(block), buf.size - off)
        ctypes.memmove(buf.addr + off, block, n)
    mv = buf.view()
    for i, off in enumerate(range(0, buf.size, PAGE_SIZE)):
        struct.pack_into("<QQ", mv, off, seed, i)


def digest(buf: Buffer) -> str:
    import hashlib

    return hashlib.sha1(buf.view()).hexdigest()


def place_on_node(buf: Buffer, node: int, seed: int | None = None) -> None:
    """Fault buf in on `node` (MPOL_BIND while touching), then drop the policy again."""
    mbind(buf.addr, buf.size, MPOL_BIND, [node])
    if seed is None:
        buf.touch()
    else:
        fill_pattern(buf, seed)
    mbind(buf.addr, buf.size, MPOL_DEFAULT)


def drain_lru() -> None:
    """Flush the per-CPU LRU add batches on all CPUs (freshly faulted pages are not on the LRU
    until then, and page_idle ignores non-LRU pages).  move_pages(MPOL_MF_MOVE) starts with
    lru_cache_disable(), which drains every CPU: move one page to the node it is already on."""
    with Buffer(PAGE_SIZE, hugepage=False) as b:
        b.touch()
        node = query_nodes([b.addr])[0]
        move_pages(0, [b.addr], [node])
