"""Guest: idle page tracking (/sys/kernel/mm/page_idle/bitmap) and DAMON sysfs, raw.

Only the `idle` kernel (tests/vm/build_kernel.sh) has CONFIG_IDLE_PAGE_TRACKING; Debian's 6.12
has DAMON but no page_idle, Debian's 6.1 has neither (asserted in test_topology_raw.py).

Note on TLBs: writing the bitmap clears the PTE young bits without flushing the TLB, so on real
CPUs (and in qemu) an access through a still-cached translation is not seen.  The access test
therefore forces a TLB flush for the buffer (mprotect round trip) after marking it idle, to test
the interface rather than the TLB size.

Note on LRU batches: page_idle only handles pages on the LRU; just-faulted pages sit in per-CPU
LRU add batches first and are silently skipped (they read as not idle).  move_pages(MPOL_MF_MOVE)
drains those batches on all CPUs, so the test drains them that way before marking.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time
from pathlib import Path

import numaraw as nr
import pytest
from numaraw import PAGE_SIZE, Buffer, place_on_node

BITMAP = Path("/sys/kernel/mm/page_idle/bitmap")
DAMON = Path("/sys/kernel/mm/damon/admin")
MiB = 1 << 20

needs_idle = pytest.mark.skipif(
    not BITMAP.exists(), reason="kernel without CONFIG_IDLE_PAGE_TRACKING"
)


def pfns_of(addrs: list[int]) -> list[int]:
    out = []
    with open("/proc/self/pagemap", "rb", buffering=0) as f:
        for a in addrs:
            f.seek(a // PAGE_SIZE * 8)
            (e,) = struct.unpack("<Q", f.read(8))
            assert e >> 63 & 1, f"page {a:#x} not present"
            pfn = e & ((1 << 55) - 1)
            assert pfn, "PFN hidden (needs CAP_SYS_ADMIN)"
            out.append(pfn)
    return out


def set_idle(pfns: list[int]) -> None:
    words: dict[int, int] = {}
    for p in pfns:
        words[p // 64] = words.get(p // 64, 0) | 1 << (p % 64)
    fd = os.open(BITMAP, os.O_WRONLY)
    try:
        for w, bits in sorted(words.items()):
            assert os.pwrite(fd, struct.pack("<Q", bits), w * 8) == 8
    finally:
        os.close(fd)


def idle_bits(pfns: list[int]) -> list[bool]:
    fd = os.open(BITMAP, os.O_RDONLY)
    try:
        cache: dict[int, int] = {}
        out = []
        for p in pfns:
            w = p // 64
            if w not in cache:
                data = os.pread(fd, 8, w * 8)
                assert len(data) == 8
                (cache[w],) = struct.unpack("<Q", data)
            out.append(bool(cache[w] >> (p % 64) & 1))
        return out
    finally:
        os.close(fd)


def flush_tlb(b: Buffer) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(b.addr, b.size, nr.PROT_READ) == 0
    assert libc.mprotect(b.addr, b.size, nr.PROT_READ | nr.PROT_WRITE) == 0


def test_page_idle_presence_matches_kernel(kernel: str) -> None:
    assert BITMAP.exists() == (kernel == "idle")


@needs_idle
def test_bitmap_alignment_rules() -> None:
    fd = os.open(BITMAP, os.O_RDONLY)
    try:
        assert len(os.pread(fd, 64, 0)) == 64
        with pytest.raises(OSError) as ei:
            os.pread(fd, 8, 4)  # offset not a multiple of 8
        assert ei.value.errno == 22
    finally:
        os.close(fd)


@needs_idle
@pytest.mark.parametrize("node", [0, 1])
def test_mark_idle_then_access(node: int) -> None:
    with Buffer(4 * MiB, hugepage=False) as b:
        place_on_node(b, node, seed=5)
        nr.drain_lru()  # the newest pages sit in per-CPU LRU batches, invisible to page_idle
        addrs = b.pages()
        pfns = pfns_of(addrs)
        set_idle(pfns)
        assert all(idle_bits(pfns)), "freshly marked pages must read idle"
        flush_tlb(b)
        q = len(addrs) // 4
        mv = b.view()
        for a in addrs[:q]:  # write the first quarter
            mv[a - b.addr] = 1
        s = 0
        for a in addrs[q : 2 * q]:  # read the second quarter
            s += mv[a - b.addr]
        time.sleep(0.05)
        bits = idle_bits(pfns)
        assert not any(bits[:q]), f"{sum(bits[:q])} written pages still idle"
        assert not any(bits[q : 2 * q]), f"{sum(bits[q : 2 * q])} read pages still idle"
        assert all(bits[2 * q :]), (
            f"{len(bits) - 2 * q - sum(bits[2 * q :])} untouched pages lost idle"
        )
        # the pages did not move
        assert set(nr.query_nodes(addrs)) == {node}


def damon_file(path: Path, value: str | None = None) -> str:
    """Read (or write ``value`` to) a kdamond's state or pid: they answer EBUSY for the
    moments the kdamond holds DAMON's sysfs lock (mutex_trylock), so retry."""
    for attempt in range(200):
        try:
            if value is None:
                return path.read_text().strip()
            path.write_text(value)
            return value
        except OSError as exc:
            if exc.errno != errno.EBUSY or attempt == 199:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")


@pytest.mark.skipif(not DAMON.exists(), reason="kernel without DAMON sysfs")
def test_damon_vaddr_starts_and_stops() -> None:
    k = DAMON / "kdamonds"
    (k / "nr_kdamonds").write_text("1\n")
    try:
        (k / "0/contexts/nr_contexts").write_text("1\n")
        ctx = k / "0/contexts/0"
        assert "vaddr" in (ctx / "avail_operations").read_text().split()
        (ctx / "operations").write_text("vaddr\n")
        (ctx / "targets/nr_targets").write_text("1\n")
        (ctx / "targets/0/pid_target").write_text(f"{os.getpid()}\n")
        damon_file(k / "0/state", "on\n")
        time.sleep(0.3)
        assert damon_file(k / "0/state") == "on"
        assert int(damon_file(k / "0/pid")) > 0
        damon_file(k / "0/state", "off\n")
        assert damon_file(k / "0/state") == "off"
    finally:
        damon_file(k / "nr_kdamonds", "0\n")
