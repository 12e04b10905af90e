"""The idle-page sampler against a fake kernel tree (the host kernel has no page_idle).

KernelFs(tmp_path) holds the cxl2 topology (node 0: CPUs + DRAM, PFNs 0..2097151;
node 1: CPU-less, slower tier, PFNs 2097152..3145727) plus regular files standing
in for /proc/PID/{maps,pagemap,stat}, /proc/kpageflags, /proc/self/status and
/sys/kernel/mm/page_idle/bitmap: the native pread/pwrite helpers work on regular
files.  A test "accesses" pages between rounds by clearing their bits in the fake
bitmap, as the kernel does.

The kernel ignores the 0 bits of a bitmap write; a regular file does not (the
native idle_mark writes whole words, and the zero words between PFNs of one
512-word window), so the ``kern`` fixture replaces ``shim.idle_mark`` with a
read-modify-write that sets bits only, as the kernel does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import shutil
import struct
from pathlib import Path

import pytest

from kmigratedd import config, shim
from kmigratedd.kernelfs import KernelFs
from kmigratedd.queues import CandidateQueues, merge
from kmigratedd.samplers import idle as idle_mod
from kmigratedd.samplers import offers as offers_mod
from kmigratedd.samplers.base import SamplerContext
from kmigratedd.samplers.idle import (BITMAP, KPF_COMPOUND_HEAD, KPF_HUGE, KPF_THP, IdleSampler,
                                      parse_maps, scannable)
from kmigratedd.scope import Scope
from kmigratedd.topology import discover

DATA = Path(__file__).resolve().parent / "data"
PAGE = 4096
NODE1 = 8 << 18  # first PFN of node 1 (memory block 8, 1 GiB blocks)
MAX_PFN = 12 << 18
PRESENT = 1 << 63
CPU = 2


class FakeKernel:
    """A fake /proc and /sys under ``root`` for the idle sampler."""

    def __init__(self, root: Path, topology: str = "cxl2", cap_eff: int = (1 << 41) - 1) -> None:
        self.root = root
        shutil.copytree(DATA / topology / "sys", root / "sys", symlinks=True)
        self.bitmap = root / BITMAP.lstrip("/")
        self.bitmap.parent.mkdir(parents=True)
        with open(self.bitmap, "wb") as f:
            f.truncate(MAX_PFN // 8)
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/self/status").write_text(f"Name:\tpytest\nCapEff:\t{cap_eff:016x}\n")
        with open(root / "proc/kpageflags", "wb") as f:
            f.truncate(MAX_PFN * 8)
        self.procs: dict[int, FakeProc] = {}

    def process(self, pid: int, cpu: int = CPU, start_time: int = 1000) -> FakeProc:
        p = FakeProc(self.root / "proc" / str(pid), pid, cpu, start_time)
        self.procs[pid] = p
        return p

    # bitmap: bit set = idle
    def idle_bits(self, pfns: list[int]) -> list[int]:
        with open(self.bitmap, "rb") as f:
            out = []
            for p in pfns:
                f.seek(p // 64 * 8)
                (w,) = struct.unpack("<Q", f.read(8))
                out.append(w >> (p % 64) & 1)
            return out

    def access(self, pfns: list[int]) -> None:
        with open(self.bitmap, "r+b") as f:
            for p in pfns:
                f.seek(p // 64 * 8)
                (w,) = struct.unpack("<Q", f.read(8))
                f.seek(p // 64 * 8)
                f.write(struct.pack("<Q", w & ~(1 << (p % 64))))

    def kpageflags(self, pfn: int, flags: int) -> None:
        with open(self.root / "proc/kpageflags", "r+b") as f:
            f.seek(pfn * 8)
            f.write(struct.pack("<Q", flags))


class FakeProc:
    def __init__(self, d: Path, pid: int, cpu: int, start_time: int) -> None:
        self.dir = d
        self.pid = pid
        d.mkdir(parents=True, exist_ok=True)
        self.maps: list[str] = []
        self.set_stat(cpu, start_time)
        (d / "maps").write_text("")
        (d / "pagemap").write_bytes(b"")

    def set_stat(self, cpu: int, start_time: int) -> None:
        # fields after "comm": state ppid pgrp session tty tpgid flags ... (flags = 0: no kthread)
        rest = ["S"] + ["0"] * 48
        rest[19] = str(start_time)  # field 22
        rest[36] = str(cpu)  # field 39
        (self.dir / "stat").write_text(f"{self.pid} (fake worker) " + " ".join(rest) + "\n")

    def map(self, start: int, npages: int, pfns: list[int] | None = None, perms: str = "rw-p",
            name: str = "") -> range:
        """Add a mapping; ``pfns`` (0 = not present) fill its pagemap entries."""
        end = start + npages * PAGE
        self.maps.append(f"{start:x}-{end:x} {perms} 00000000 00:00 0  {name}".rstrip())
        (self.dir / "maps").write_text("\n".join(self.maps) + "\n")
        with open(self.dir / "pagemap", "r+b") as f:  # sparse: absent pages read as 0
            if f.seek(0, os.SEEK_END) < end // PAGE * 8:
                f.truncate(end // PAGE * 8)
        if pfns:
            self.set_pfns(start, pfns)
        return range(start, end, PAGE)

    def unmap_all(self) -> None:
        self.maps = []
        (self.dir / "maps").write_text("")

    def set_pfns(self, start: int, pfns: list[int]) -> None:
        with open(self.dir / "pagemap", "r+b") as f:
            f.seek(start // PAGE * 8)
            f.write(b"".join(struct.pack("<Q", PRESENT | p if p else 0) for p in pfns))

    def exit(self) -> None:
        shutil.rmtree(self.dir)


def make_ctx(root: Path, pids: tuple[int, ...], *, interval_ms: int = 1000,
             history: int = 4, hot: int = 2, budget: int = 1 << 20,
             fs: KernelFs | None = None) -> SamplerContext:
    cfg = config.Config()
    idle_cfg = dataclasses.replace(cfg.sampler.idle, history_rounds=history, hot_rounds=hot,
                                   scan_budget_pages_per_s=budget)
    cfg = dataclasses.replace(
        cfg, sampler=dataclasses.replace(cfg.sampler, interval_ms=interval_ms, idle=idle_cfg),
        scope=dataclasses.replace(cfg.scope, pids=pids))
    fs = fs or KernelFs(root)
    return SamplerContext(cfg, fs, discover(fs), CandidateQueues(range(4), 1 << 16),
                          Scope(cfg.scope, fs, self_pid=1))


def drain(ctx: SamplerContext) -> dict[tuple[int, int], tuple[int, int]]:
    """(pid, addr) -> (node, weight summed)."""
    batches = ctx.queues.drain(1 << 20)
    out: dict[tuple[int, int], tuple[int, int]] = {}
    if not batches:
        return out
    b = merge(batches)
    for pid, addr, node, count in zip(b.pids, b.addrs, b.nodes, b.counts):
        out[(pid, addr)] = (node, out.get((pid, addr), (0, 0))[1] + count)
    return out


def round_(s: IdleSampler, budget: int | None = None) -> int:
    return s.push(s.scan_round(budget))


def or_idle_mark(fd: int, pfns: object) -> int:
    """page_idle/bitmap write semantics on a regular file: set the bits, ignore the 0s."""
    words: dict[int, int] = {}
    for p in pfns:  # type: ignore[attr-defined]
        if p:
            words[p // 64] = words.get(p // 64, 0) | 1 << (p % 64)
    for w, bits in words.items():
        old = os.pread(fd, 8, w * 8).ljust(8, b"\0")
        os.pwrite(fd, struct.pack("<Q", struct.unpack("<Q", old)[0] | bits), w * 8)
    return len(words)


@pytest.fixture
def kern(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    monkeypatch.setattr(shim, "idle_mark", or_idle_mark)
    return FakeKernel(tmp_path)


# --- probe -------------------------------------------------------------------


def test_probe_ok(kern: FakeKernel) -> None:
    assert IdleSampler.probe(make_ctx(kern.root, ())) is None


def test_probe_without_page_idle(kern: FakeKernel) -> None:
    kern.bitmap.unlink()
    msg = IdleSampler.probe(make_ctx(kern.root, ()))
    assert msg is not None and "CONFIG_IDLE_PAGE_TRACKING" in msg and "\n" not in msg


def test_probe_without_cap_sys_admin(tmp_path: Path) -> None:
    kern = FakeKernel(tmp_path, cap_eff=((1 << 41) - 1) & ~(1 << 21))
    msg = IdleSampler.probe(make_ctx(kern.root, ()))
    assert msg is not None and "CAP_SYS_ADMIN" in msg and "PFN" in msg


def test_probe_one_tier(tmp_path: Path) -> None:
    kern = FakeKernel(tmp_path, topology="single")
    msg = IdleSampler.probe(make_ctx(kern.root, ()))
    assert msg is not None and "slower memory tier" in msg


# --- maps --------------------------------------------------------------------


@pytest.mark.parametrize("line,want", [
    ("7f0000000000-7f0000100000 rw-p 00000000 00:00 0", True),
    ("55d000000000-55d000021000 rw-p 00000000 00:00 0  [heap]", True),
    ("7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0  [stack]", True),
    ("7f0000000000-7f0000100000 rw-p 00000000 00:00 0  [anon:jvm]", True),
    ("7f0000000000-7f0000100000 rw-p 00001000 08:01 1234  /usr/lib/x.so", True),
    ("7f0000000000-7f0000100000 rw-p 00000000 00:05 4  /dev/zero", True),
    ("7f0000000000-7f1000000000 ---p 00000000 00:00 0", False),  # PROT_NONE reservation
    ("7f0000000000-7f0000100000 r-xp 00000000 08:01 1234  /usr/lib/x.so", False),
    ("7f0000000000-7f0000100000 rw-s 00000000 00:01 99  /dev/shm/x", False),
    ("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]", False),
    ("7ffd00000000-7ffd00002000 r--p 00000000 00:00 0  [vvar]", False),
    ("7ffd00000000-7ffd00002000 rw-p 00000000 00:00 0  [vdso]", False),
    ("7f0000000000-7f0000100000 rw-p 00000000 00:05 7  /dev/dri/card0", False),
    ("7f0000000000-7f0000200000 rw-p 00000000 00:0f 1  /anon_hugepage (deleted)", False),
])
def test_which_mappings_are_scanned(line: str, want: bool) -> None:
    (m,) = parse_maps(line + "\n")
    assert scannable(m) is want


def test_parse_maps_skips_garbage() -> None:
    maps = parse_maps("garbage\nzz-yy rw-p 0 0:0 0\n1000-2000 rw-p 00000000 00:00 0\n")
    assert [(m.start, m.end) for m in maps] == [(0x1000, 0x2000)]


# --- hotness -----------------------------------------------------------------


def test_hot_pages_become_candidates_after_hot_rounds(kern: FakeKernel) -> None:
    p = kern.process(100)
    pfns = [NODE1 + 4096 + i for i in range(256)]
    addrs = p.map(0x10000000, 256, pfns)
    ctx = make_ctx(kern.root, (100,))
    s = IdleSampler(ctx)
    s.open()
    try:
        # round 1: first observation of every page — nothing counts, everything is marked
        assert round_(s) == 0
        assert kern.idle_bits(pfns) == [1] * 256
        hot = pfns[:128]
        kern.access(hot)
        assert round_(s) == 0  # one accessed round < hot_rounds = 2
        assert s.stats()["pages_accessed"] == 128
        kern.access(hot)
        round_(s)
        got = drain(ctx)
        assert set(got) == {(100, a) for a in addrs[:128]}
        assert {v for v in got.values()} == {(1, 2)}  # node 1, weight = 2 accessed rounds
        q = ctx.queues.queue(CPU)  # pushed at the CPU the task last ran on
        assert q.stats().pushed == 128
        assert kern.idle_bits(pfns) == [1] * 256  # re-marked for the next round
        st = s.stats()
        assert st["rounds"] == 3 and st["pages_scanned"] == 3 * 256
        assert st["pages_tested"] == 3 * 256 and st["candidates_offered"] == 128
        # re-marked: all at first (never marked), then only the pages found accessed
        assert st["pages_marked"] == 256 + 128 + 128
        assert st["errors"] == st["pid_gone"] == st["permission_denied"] == 0
    finally:
        s.close()


def test_history_ages_out(kern: FakeKernel) -> None:
    p = kern.process(100)
    pfns = [NODE1 + 64 * 10 + i for i in range(64)]
    p.map(0x10000000, 64, pfns)
    ctx = make_ctx(kern.root, (100,), history=4, hot=2)
    s = IdleSampler(ctx)
    s.open()
    hot_per_round = []
    try:
        round_(s)
        for accessed in (1, 1, 0, 0, 0, 1, 0, 1):
            if accessed:
                kern.access(pfns[:8])
            round_(s)
            hot_per_round.append(len(drain(ctx)))
    finally:
        s.close()
    # hot = accessed in >= 2 of the last 4 observations
    assert hot_per_round == [0, 8, 8, 8, 0, 0, 0, 8]


def test_weights_count_accessed_rounds(kern: FakeKernel) -> None:
    p = kern.process(100)
    pfns = [NODE1 + 640 + i for i in range(64)]
    addrs = p.map(0x10000000, 64, pfns)
    ctx = make_ctx(kern.root, (100,), history=4, hot=1)
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)
        for _ in range(4):
            kern.access(pfns[:1])
            round_(s)
        drain(ctx)
        kern.access(pfns[:1])
        round_(s)
        assert drain(ctx) == {(100, addrs[0]): (1, 4)}
    finally:
        s.close()


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
def test_pfn_order_does_not_change_the_result(kern: FakeKernel, order: str) -> None:
    """Batches whose PFNs are out of order are tested in PFN order and put back."""
    import random

    p = kern.process(100)
    pfns = [NODE1 + (1 << 16) + i for i in range(8192)]
    if order == "descending":
        pfns.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(pfns)
    addrs = p.map(0x10000000, 8192, pfns)
    hot = set(random.Random(8).sample(range(8192), 1000))
    ctx = make_ctx(kern.root, (100,), hot=2)
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)
        for _ in range(2):
            kern.access([pfns[i] for i in hot])
            round_(s)
        assert drain(ctx) == {(100, addrs[i]): (1, 2) for i in hot}
        assert kern.idle_bits(pfns[::7]) == [1] * len(pfns[::7])
        assert s.stats()["batches_sorted"] == (0 if order == "ascending" else 3)  # one a round
    finally:
        s.close()


def test_a_whole_hot_chunk(kern: FakeKernel) -> None:
    p = kern.process(100)
    pfns = [NODE1 + (1 << 16) + i for i in range(4096)]
    addrs = p.map(0x10000000, 4096, pfns)  # one 16 MiB chunk
    ctx = make_ctx(kern.root, (100,), hot=1)
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)
        for _ in range(3):
            kern.access(pfns)
            round_(s)
        assert drain(ctx) == {(100, a): (1, 1 + 2 + 3) for a in addrs}  # weights summed
    finally:
        s.close()


def test_fast_node_pages_are_neither_marked_nor_offered(kern: FakeKernel) -> None:
    p = kern.process(100)
    fast = [64 * 100 + i for i in range(64)]  # node 0
    slow = [NODE1 + 64 * 100 + i for i in range(64)]
    p.map(0x10000000, 64, fast)
    slow_addrs = p.map(0x20000000, 64, slow)
    ctx = make_ctx(kern.root, (100,))
    s = IdleSampler(ctx)
    s.open()
    try:
        for _ in range(4):
            round_(s)
            kern.access(fast + slow)
        assert kern.idle_bits(fast) == [0] * 64  # never marked
        assert set(drain(ctx)) == {(100, a) for a in slow_addrs}
        assert s.stats()["pages_tested"] == 4 * 64
    finally:
        s.close()


def test_memory_all_on_the_fast_tier_is_read_every_8th_pass(kern: FakeKernel) -> None:
    """Chunks with no slow-tier page are read again only every FAST_RECHECK_PASSES passes
    (staggered by chunk); when pages land on the slow tier there, they are found then."""
    p = kern.process(100)
    chunk = 4096 * PAGE
    fast = [64 * 300 + i for i in range(64)]  # node 0
    addrs = [p.map(0x10000000 + k * chunk, 64, fast) for k in range(8)]
    ctx = make_ctx(kern.root, (100,), hot=1)
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)  # every chunk read once
        assert s.stats()["pages_scanned"] == 8 * 64
        for _ in range(idle_mod.FAST_RECHECK_PASSES):
            round_(s)
        # over 8 passes each chunk was read once more and skipped 7 times
        st = s.stats()
        assert st["pages_scanned"] == 2 * 8 * 64 and st["pages_skipped_fast"] == 7 * 8 * 64
        # pages of chunk 3 are now on the slow node (demoted, say): found within 8 passes
        slow = [NODE1 + 64 * 300 + i for i in range(64)]
        p.set_pfns(addrs[3][0], slow)
        for _ in range(idle_mod.FAST_RECHECK_PASSES + 2):
            round_(s)
            kern.access(slow)
        assert set(drain(ctx)) == {(100, a) for a in addrs[3]}
        assert kern.idle_bits(fast) == [0] * 64  # the fast pages were never marked
    finally:
        s.close()


def test_not_present_and_swapped_pages_are_skipped(kern: FakeKernel) -> None:
    p = kern.process(100)
    pfns = [NODE1 + 64 * 200 + i if i % 2 else 0 for i in range(64)]
    addrs = p.map(0x10000000, 64, pfns)
    with open(p.dir / "pagemap", "r+b") as f:  # page 0: swapped (present | swap bits)
        f.seek(0x10000000 // PAGE * 8)
        f.write(struct.pack("<Q", (1 << 63) | (1 << 62) | 12345))
    ctx = make_ctx(kern.root, (100,), hot=1)
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)
        kern.access([x for x in pfns if x])
        round_(s)
        assert set(drain(ctx)) == {(100, a) for i, a in enumerate(addrs) if i % 2}
    finally:
        s.close()


def test_moved_page_starts_over(kern: FakeKernel) -> None:
    """A page with a new PFN was never marked: its first test must not count."""
    p = kern.process(100)
    pfns = [NODE1 + 64 * 300 + i for i in range(64)]
    p.map(0x10000000, 64, pfns)
    ctx = make_ctx(kern.root, (100,), hot=1)
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)
        round_(s)
        assert drain(ctx) == {}
        moved = [NODE1 + 64 * 400 + i for i in range(64)]  # bits 0: "accessed" if counted
        p.set_pfns(0x10000000, moved)
        round_(s)
        assert drain(ctx) == {}
        assert s.stats()["pages_accessed"] == 0
    finally:
        s.close()


# --- THP ---------------------------------------------------------------------


def thp_process(kern: FakeKernel, head: int, flags: int) -> tuple[FakeProc, list[int]]:
    p = kern.process(100)
    start = 0x40000000  # 2 MiB aligned
    pfns = [head + i for i in range(512)]
    p.map(start, 512, pfns, name="")
    kern.kpageflags(head, flags)
    return p, pfns


def test_thp_is_one_page_tested_through_its_head(kern: FakeKernel) -> None:
    head = NODE1 + 512 * 20
    _, pfns = thp_process(kern, head, KPF_THP | KPF_COMPOUND_HEAD)
    ctx = make_ctx(kern.root, (100,))
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)
        assert kern.idle_bits(pfns)[:2] == [1, 0]  # only the head is marked
        for _ in range(2):
            kern.access([head])
            round_(s)
        assert drain(ctx) == {(100, 0x40000000): (1, 2)}
        st = s.stats()
        assert st["pages_tested"] == 3 and st["pages_accessed"] == 2
        assert st["huge_pages"] == 3 and st["candidates_offered"] == 1
        assert st["pages_scanned"] == 3 * 512
    finally:
        s.close()


def test_contiguous_small_pages_are_not_a_thp(kern: FakeKernel) -> None:
    head = NODE1 + 512 * 30
    _, pfns = thp_process(kern, head, 0)  # kpageflags: not a compound page
    ctx = make_ctx(kern.root, (100,))
    s = IdleSampler(ctx)
    s.open()
    try:
        for _ in range(3):
            round_(s)
            kern.access(pfns[:100])
        assert len(drain(ctx)) == 100
        assert s.stats()["huge_pages"] == 0
    finally:
        s.close()


def test_hugetlb_slot_is_skipped(kern: FakeKernel) -> None:
    head = NODE1 + 512 * 40
    _, pfns = thp_process(kern, head, KPF_HUGE | KPF_COMPOUND_HEAD)
    ctx = make_ctx(kern.root, (100,), hot=1)
    s = IdleSampler(ctx)
    s.open()
    try:
        for _ in range(3):
            round_(s)
            kern.access(pfns)
        assert drain(ctx) == {}
        st = s.stats()
        assert st["hugetlb_skipped"] >= 1 and st["pages_tested"] == 0
        # a chunk holding nothing to track is then read only every FAST_RECHECK_PASSES
        assert st["pages_skipped_fast"] > 0
    finally:
        s.close()


def test_thp_by_pfn_pattern_without_kpageflags(kern: FakeKernel) -> None:
    head = NODE1 + 512 * 50
    thp_process(kern, head, 0)
    (kern.root / "proc/kpageflags").unlink()
    ctx = make_ctx(kern.root, (100,))
    s = IdleSampler(ctx)
    s.open()
    try:
        for _ in range(3):
            round_(s)
            kern.access([head])
        assert set(drain(ctx)) == {(100, 0x40000000)}
    finally:
        s.close()


# --- budget and sparse mappings ---------------------------------------------


def test_budget_bounds_a_round_and_the_next_continues(kern: FakeKernel) -> None:
    p = kern.process(100)
    q = kern.process(101)
    bases = [NODE1 + (k + 1 << 16) for k in range(3)]
    p.map(0x10000000, 4096, [bases[0] + i for i in range(4096)])
    p.map(0x20000000, 4096, [bases[1] + i for i in range(4096)])
    q.map(0x10000000, 4096, [bases[2] + i for i in range(4096)])
    total = 3 * 4096
    ctx = make_ctx(kern.root, (100, 101))
    s = IdleSampler(ctx)
    s.open()
    try:
        scanned = []
        for _ in range(6):
            before = s.stats()["pages_scanned"]
            round_(s, budget=5000)
            scanned.append(s.stats()["pages_scanned"] - before)
        assert all(n <= 5000 for n in scanned)
        assert sum(scanned) >= 2 * total  # it keeps going where it stopped
        st = s.stats()
        assert st["budget_exhausted"] == 6 and st["passes"] >= 3
        # every page got tested (marked) despite the budget
        assert kern.idle_bits([b + i for b in bases for i in range(0, 4096, 97)]) == [1] * 3 * 43
        # budget above everything: one full pass per round, no page twice
        before = s.stats()["pages_scanned"]
        round_(s, budget=10 * total)
        assert s.stats()["pages_scanned"] - before == total
    finally:
        s.close()


def test_budget_per_second_times_interval_with_carry_over(kern: FakeKernel) -> None:
    p = kern.process(100)
    p.map(0x10000000, 2048, [NODE1 + (1 << 17) + i for i in range(2048)])
    # 1024 pages/s * 100 ms = 102 pages per round: below one 2 MiB step, so credit carries over
    ctx = make_ctx(kern.root, (100,), interval_ms=100, budget=1024)
    s = IdleSampler(ctx)
    s.open()
    try:
        for _ in range(40):
            round_(s)
        st = s.stats()
        assert 0 < st["pages_scanned"] <= 40 * 103
        assert st["budget_exhausted"] > 0
    finally:
        s.close()


def test_huge_sparse_mappings_are_bounded_by_the_budget(kern: FakeKernel) -> None:
    p = kern.process(100)
    GiB = 1 << 30
    # a 64 GiB PROT_NONE reservation: never read
    p.map(64 * GiB, 64 * GiB // PAGE, perms="---p")
    # an 8 GiB read-write mapping with three pages present, far apart
    sparse = 256 * GiB
    p.map(sparse, 8 * GiB // PAGE)
    present = [NODE1 + 64 * 500, NODE1 + 64 * 501, NODE1 + 64 * 502]
    for k, pfn in enumerate(present):
        p.set_pfns(sparse + k * 3 * GiB, [pfn])
    ctx = make_ctx(kern.root, (100,), hot=1)
    s = IdleSampler(ctx)
    s.open()
    budget = 1 << 18
    try:
        for _ in range(3 * (8 * GiB // PAGE) // budget + 1):
            before = s.stats()["pages_scanned"]
            round_(s, budget=budget)
            assert s.stats()["pages_scanned"] - before <= budget
            kern.access(present)
        st = s.stats()
        assert st["pages_scanned"] <= 3 * 8 * GiB // PAGE + budget
        assert st["passes"] >= 2 and st["budget_exhausted"] > 0
        assert st["state_bytes"] <= 3 * 2 * s.chunk_pages  # three chunks hold a page
        assert {a for _, a in drain(ctx)} == {sparse + k * 3 * GiB for k in range(3)}
    finally:
        s.close()


# --- bad input: counted, never raised ---------------------------------------


def test_pid_gone_before_and_during_a_scan(kern: FakeKernel, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    a = kern.process(100)
    b = kern.process(101)
    a.map(0x10000000, 64, [NODE1 + 64 * 600 + i for i in range(64)])
    b.map(0x10000000, 64, [NODE1 + 64 * 601 + i for i in range(64)])
    ctx = make_ctx(kern.root, (100, 101))
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)
        assert s.stats()["tracked_pids"] == 2
        real = s.walk.read_pagemap

        def read_pagemap(fd: int, addr: int, entries: object) -> int:
            if os.readlink(f"/proc/self/fd/{fd}").endswith("/proc/101/pagemap"):
                # 101 exits after its maps were read: its pagemap now reads nothing
                with open(b.dir / "pagemap", "r+b") as f:
                    f.truncate(0)
            return real(fd, addr, entries)  # type: ignore[arg-type]

        monkeypatch.setattr(s.walk, "read_pagemap", read_pagemap)
        round_(s)
        st = s.stats()
        assert st["pid_gone"] == 1 and st["errors"] == 0 and st["tracked_pids"] == 1
        # gone before the scan (no /proc/PID any more): out of scope, state dropped
        a.exit()
        b.exit()
        round_(s)
        st = s.stats()
        assert st["tracked_pids"] == 0 and st["errors"] == 0 and st["pid_gone"] == 2
    finally:
        s.close()


def test_pid_gone_between_scan_and_push(kern: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    a = kern.process(100)
    pfns = [NODE1 + 64 * 700 + i for i in range(64)]
    a.map(0x10000000, 64, pfns)
    ctx = make_ctx(kern.root, (100,), hot=1)
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)
        kern.access(pfns)
        monkeypatch.setattr(offers_mod, "last_cpu", lambda fs, pid: None)
        assert round_(s) == 0
        assert s.stats()["pid_gone"] == 1 and s.stats()["tracked_pids"] == 0
    finally:
        s.close()


class DenyingFs(KernelFs):
    """Like the real kernel for a daemon without CAP_SYS_PTRACE: other users' maps are
    EACCES to read, their pagemap EPERM to open."""

    deny: set[str] = set()
    deny_open: set[str] = set()

    def read(self, kpath: str) -> str:
        if kpath in self.deny:
            raise PermissionError(errno.EACCES, "Permission denied", kpath)
        return super().read(kpath)

    def open(self, kpath: str, flags: int) -> int:
        if kpath in self.deny_open:
            raise PermissionError(errno.EPERM, "Operation not permitted", kpath)
        return super().open(kpath, flags)


def test_permission_denied_is_counted_and_skipped(kern: FakeKernel) -> None:
    a = kern.process(100)
    b = kern.process(101)
    c = kern.process(102)
    pa = [NODE1 + 64 * 800 + i for i in range(64)]
    a.map(0x10000000, 64, pa)
    b.map(0x10000000, 64, [NODE1 + 64 * 801 + i for i in range(64)])
    c.map(0x10000000, 64, [NODE1 + 64 * 802 + i for i in range(64)])
    fs = DenyingFs(kern.root)
    fs.deny = {"/proc/101/maps"}
    fs.deny_open = {"/proc/102/pagemap"}
    ctx = make_ctx(kern.root, (100, 101, 102), fs=fs, hot=1)
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)
        kern.access(pa)
        round_(s)
        st = s.stats()
        assert st["permission_denied"] == 4 and st["errors"] == 0
        assert {pid for pid, _ in drain(ctx)} == {100}
    finally:
        s.close()


def test_unreadable_bitmap_region_is_an_error_not_an_exception(kern: FakeKernel) -> None:
    p = kern.process(100)
    p.map(0x10000000, 64, [NODE1 + 64 * 900 + i for i in range(64)])
    ctx = make_ctx(kern.root, (100,))
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)
        with open(kern.bitmap, "r+b") as f:
            f.truncate(NODE1 // 8)  # "PFN past the end of memory"
        round_(s)
        assert s.stats()["errors"] == 1
    finally:
        s.close()


# --- state bounds ------------------------------------------------------------


def test_state_is_dropped_for_vanished_mappings_pids_and_reused_pids(kern: FakeKernel) -> None:
    p = kern.process(100)
    p.map(0x10000000, 64, [NODE1 + 64 * 1000 + i for i in range(64)])
    p.map(0x80000000, 64, [NODE1 + 64 * 1001 + i for i in range(64)])
    ctx = make_ctx(kern.root, (100,), hot=1)
    s = IdleSampler(ctx)
    s.open()
    try:
        round_(s)
        assert s.stats()["state_bytes"] == 2 * 2 * s.chunk_pages
        p.unmap_all()
        p.map(0x10000000, 64)  # remapped: nothing present
        p.set_pfns(0x10000000, [0] * 64)
        round_(s)
        assert s.stats()["state_bytes"] == 0
        p.map(0x80000000, 64, [NODE1 + 64 * 1001 + i for i in range(64)])
        round_(s)
        kern.access([NODE1 + 64 * 1001])
        p.set_stat(CPU, start_time=2000)  # the pid now names another process
        round_(s)
        assert drain(ctx) == {}  # its first observation: nothing counts
    finally:
        s.close()


# --- lifecycle ---------------------------------------------------------------


def test_start_stop_idempotent_and_rounds_run(kern: FakeKernel) -> None:
    p = kern.process(100)
    pfns = [NODE1 + 64 * 1100 + i for i in range(64)]
    p.map(0x10000000, 64, pfns)
    ctx = make_ctx(kern.root, (100,), interval_ms=10, hot=1)
    s = IdleSampler(ctx)

    async def run() -> None:
        await s.start()
        await asyncio.sleep(0.3)
        await s.stop()
        await s.stop()

    asyncio.run(run())
    st = s.stats()
    assert st["rounds"] >= 3 and st["errors"] == 0
    for key in ("rounds", "pages_scanned", "pages_accessed", "candidates_offered", "pid_gone",
                "permission_denied", "budget_exhausted", "errors"):
        assert key in st
    assert s._bitmap_fd is None


# --- cold pages of the fast tier (demotion) ---------------------------------

FAST = 64 * 4000  # a PFN range on node 0, the fast node


class Clock:
    """monotonic() for the sampler, moved by the test."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Room:
    """ctx.room_needed(): the bytes the test sets."""

    def __init__(self, nbytes: int = 0) -> None:
        self.bytes = nbytes

    def __call__(self) -> int:
        return self.bytes


def demote_ctx(root: Path, pids: tuple[int, ...], room: Room, *, cold_age_ms: int = 5000,
               batch_pages: int = 1, **kw: object) -> SamplerContext:
    ctx = make_ctx(root, pids, **kw)  # type: ignore[arg-type]
    cfg = dataclasses.replace(
        ctx.config, workers=dataclasses.replace(ctx.config.workers, batch_pages=batch_pages),
        demotion=dataclasses.replace(ctx.config.demotion, cold_age_ms=cold_age_ms))
    return dataclasses.replace(ctx, config=cfg, room_needed=room,
                               demote_queues=CandidateQueues(range(4), 1 << 16))


def cold_round(s: IdleSampler, budget: int | None = None) -> dict[tuple[int, int], tuple[int, int]]:
    """One round; its hot pages pushed, and its demotion candidates as
    (pid, addr) -> (node, age in ticks)."""
    s.push(s.scan_round(budget))
    return {(o.pid, a): (n, w) for o in s.cold_offers
            for a, n, w in zip(o.addrs, o.nodes, o.weights)}


COLD_S = 5.0  # demotion.cold_age_ms of demote_ctx
TICK_S = COLD_S / idle_mod.COLD_TICKS


def test_the_daemon_demotes_with_the_idle_sampler() -> None:
    from kmigratedd.demotion import DEMOTING_SAMPLERS

    assert "idle" in DEMOTING_SAMPLERS


def test_fast_tier_pages_are_aged_only_while_room_is_needed(kern: FakeKernel) -> None:
    p = kern.process(100)
    fast = [FAST + i for i in range(64)]
    addrs = p.map(0x10000000, 64, fast)
    slow = [NODE1 + 64 * 4000 + i for i in range(64)]
    p.map(0x20000000, 64, slow)
    room, clock = Room(0), Clock()
    ctx = demote_ctx(kern.root, (100,), room)
    s = IdleSampler(ctx, clock=clock)
    s.open()
    try:
        for _ in range(3):
            assert cold_round(s) == {}
            clock.t += COLD_S
        st = s.stats()
        assert kern.idle_bits(fast) == [0] * 64  # neither tested nor marked
        assert st["fast_pages_aged"] == 0 and st["fast_aging_rounds"] == 0
        assert st["pages_tested"] == 3 * 64  # the slow tier as without demotion
        room.bytes = 1 << 20
        assert cold_round(s) == {}  # first seen: marked, age 0
        assert kern.idle_bits(fast) == [1] * 64
        clock.t += COLD_S + TICK_S
        got = cold_round(s)
        assert set(got) == {(100, a) for a in addrs}
        assert {n for n, _ in got.values()} == {0}  # the fast node, from the PFN
        st = s.stats()
        assert st["fast_aging_rounds"] == 2 and st["fast_pages_aged"] == 2 * 64
        assert st["cold_pages_found"] == 64 and st["pages_tested"] == 5 * 64
        assert drain(ctx) == {}  # nothing hot
        room.bytes = 0
        assert cold_round(s) == {}
        assert s.stats()["fast_pages_aged"] == 2 * 64
    finally:
        s.close()


def test_only_pages_idle_for_the_cold_age_are_offered(kern: FakeKernel) -> None:
    p = kern.process(100)
    fast = [FAST + i for i in range(64)]
    addrs = p.map(0x10000000, 64, fast)
    room, clock = Room(1 << 30), Clock()
    s = IdleSampler(demote_ctx(kern.root, (100,), room), clock=clock)
    s.open()
    try:
        cold_round(s)  # marked at t0
        clock.t += COLD_S - 0.01
        kern.access(fast[:16])  # touched just before the cold age: a new mark
        assert cold_round(s) == {}
        clock.t += TICK_S + 0.02  # t0 + cold age + a tick: the other 48 are cold
        assert set(cold_round(s)) == {(100, a) for a in addrs[16:]}
        clock.t += COLD_S - 2 * TICK_S  # the 16: idle since their mark, not yet cold_age
        assert set(cold_round(s)) == {(100, a) for a in addrs[16:]}
        clock.t += 2 * TICK_S
        assert set(cold_round(s)) == {(100, a) for a in addrs}
    finally:
        s.close()


def test_accessed_pages_are_never_offered(kern: FakeKernel) -> None:
    p = kern.process(100)
    fast = [FAST + i for i in range(256)]
    addrs = p.map(0x10000000, 256, fast)
    hot = fast[::4]
    room, clock = Room(1 << 30), Clock()
    s = IdleSampler(demote_ctx(kern.root, (100,), room), clock=clock)
    s.open()
    offered: set[tuple[int, int]] = set()
    try:
        for _ in range(40):
            kern.access(hot)
            offered |= set(cold_round(s))
            clock.t += 1.0
        assert offered == {(100, a) for i, a in enumerate(addrs) if i % 4}
        st = s.stats()
        assert st["fast_pages_accessed"] == 39 * 64  # every test of a hot page but the first
    finally:
        s.close()


def test_cold_pages_oldest_first_within_the_budget(kern: FakeKernel) -> None:
    """The budget is twice the pages of room needed (at least a worker batch): the oldest
    pages go, and the rest is counted."""
    p = kern.process(100)
    q = kern.process(101)
    old = p.map(0x10000000, 64, [FAST + i for i in range(64)])
    room, clock = Room(16 * PAGE), Clock()  # a budget of 32 pages
    s = IdleSampler(demote_ctx(kern.root, (100, 101), room, batch_pages=8), clock=clock)
    s.open()
    try:
        cold_round(s)
        clock.t += 3 * TICK_S
        middle = q.map(0x10000000, 64, [FAST + 64 + i for i in range(64)])
        cold_round(s)
        clock.t += 3 * TICK_S
        young = p.map(0x40000000, 64, [FAST + 128 + i for i in range(64)])
        cold_round(s)
        clock.t += COLD_S + TICK_S
        got = cold_round(s)  # ages: old 23, middle 20, young 17 ticks: old fills the budget
        assert set(got) == {(100, a) for a in old[:32]}
        assert {w for _, w in got.values()} == {23}
        assert s.stats()["cold_pages_over_budget"] == 64 * 3 - 32
        room.bytes = 64 * PAGE  # 128 pages: old, middle, none of young
        got = cold_round(s)
        assert set(got) == {(100, a) for a in old} | {(101, a) for a in middle}
        room.bytes = 1  # at least a worker batch: the 8 oldest
        assert set(cold_round(s)) == {(100, a) for a in old[:8]}
        room.bytes = 1 << 40  # at most max_cold_pages_per_round
    finally:
        s.close()
    s = IdleSampler(demote_ctx(kern.root, (100, 101), room), clock=clock,
                    max_cold_pages_per_round=100)
    s.open()
    try:
        cold_round(s)
        clock.t += COLD_S + TICK_S
        got = cold_round(s)
        # all of age 17: those found first (pid 100 first, in address order) go
        assert set(got) == {(100, a) for a in old} | {(100, a) for a in young[:36]}
        assert all(n == 0 for n, _ in got.values())
    finally:
        s.close()


def test_the_cold_pages_held_in_a_round_stay_bounded(kern: FakeKernel,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Cold pages beyond twice the budget are cut as they are found, keeping the oldest."""
    p = kern.process(100)
    chunks = [p.map(0x10000000 + k * (4096 * PAGE), 1024, [FAST + k * 4096 + i
                                                           for i in range(1024)])
              for k in range(8)]
    room, clock = Room(100 * PAGE), Clock()  # 200 pages a round
    s = IdleSampler(demote_ctx(kern.root, (100,), room), clock=clock)
    s.open()
    held: list[int] = []
    real = s.cold.keep_oldest

    def keep_oldest() -> None:
        held.append(s.cold.held)
        real()

    monkeypatch.setattr(s.cold, "keep_oldest", keep_oldest)
    try:
        cold_round(s)
        clock.t += COLD_S
        p.set_pfns(chunks[5][0], [FAST + 5 * 4096 + i for i in range(1024)])
        kern.access([FAST + 5 * 4096 + i for i in range(1024)])  # chunk 5: touched
        clock.t += 3 * TICK_S
        got = cold_round(s)
        assert len(got) == 200 and all(w == 19 for _, w in got.values())
        assert max(held) <= 2 * 200 + 1024  # never more than twice the budget and a piece
        assert s.stats()["cold_pages_over_budget"] == 7 * 1024 - 200
    finally:
        s.close()


def test_ages_survive_rounds_without_room_needed(kern: FakeKernel) -> None:
    """While no room is needed the fast tier is not tested; a page idle all along is cold at
    its first test once room is needed again, a page touched meanwhile is not."""
    p = kern.process(100)
    fast = [FAST + i for i in range(64)]
    addrs = p.map(0x10000000, 64, fast)
    room, clock = Room(1 << 30), Clock()
    s = IdleSampler(demote_ctx(kern.root, (100,), room), clock=clock)
    s.open()
    try:
        cold_round(s)
        room.bytes = 0
        for _ in range(5):
            clock.t += 2.0
            cold_round(s)
        kern.access(fast[:8])
        room.bytes = 1 << 30
        assert set(cold_round(s)) == {(100, a) for a in addrs[8:]}
    finally:
        s.close()


def test_an_age_is_held_and_never_wraps_while_the_page_is_seen(kern: FakeKernel) -> None:
    p = kern.process(100)
    fast = [FAST + i for i in range(8)]
    p.map(0x10000000, 8, fast)
    room, clock = Room(1 << 30), Clock()
    s = IdleSampler(demote_ctx(kern.root, (100,), room), clock=clock)
    s.open()
    try:
        cold_round(s)
        ages = []
        for _ in range(12):
            clock.t += 40 * TICK_S
            ages.append({w for _, w in cold_round(s).values()})
        assert ages == [{40}, {80}, {120}] + [{idle_mod.MAX_IDLE_TICKS}] * 9
    finally:
        s.close()


def test_hot_pages_of_the_slow_tier_while_aging_the_fast_tier(kern: FakeKernel) -> None:
    """Aging the fast tier changes nothing for the slow tier; a page promoted starts over
    as a fast-tier page, and a page demoted leaves the fast tier's ages."""
    p = kern.process(100)
    slow = [NODE1 + 64 * 4100 + i for i in range(64)]
    addrs = p.map(0x10000000, 64, slow)
    fast = [FAST + i for i in range(64)]
    faddrs = p.map(0x20000000, 64, fast)
    room, clock = Room(1 << 30), Clock()
    ctx = demote_ctx(kern.root, (100,), room, hot=2)
    s = IdleSampler(ctx, clock=clock)
    s.open()
    try:
        cold_round(s)
        for _ in range(2):
            kern.access(slow + fast)
            clock.t += COLD_S
            assert cold_round(s) == {}
        assert drain(ctx) == {(100, a): (1, 2) for a in addrs}  # no fast page is hot
        # the slow pages go up (new PFNs on node 0), the fast ones down (node 1)
        p.set_pfns(addrs[0], [FAST + 1000 + i for i in range(64)])
        p.set_pfns(faddrs[0], [NODE1 + 64 * 4200 + i for i in range(64)])
        clock.t += 10 * COLD_S
        assert cold_round(s) == {}  # promoted pages: first seen, age 0
        clock.t += COLD_S + TICK_S
        assert set(cold_round(s)) == {(100, a) for a in addrs}
        assert s.stats()["pages_accessed"] == 2 * 64
    finally:
        s.close()


def test_cold_state_of_exited_and_unmapped_processes_is_dropped(kern: FakeKernel) -> None:
    a = kern.process(100)
    b = kern.process(101)
    a.map(0x10000000, 64, [FAST + i for i in range(64)])
    a.map(0x80000000, 64, [FAST + 64 + i for i in range(64)])
    b.map(0x10000000, 64, [FAST + 128 + i for i in range(64)])
    room, clock = Room(1 << 30), Clock()
    s = IdleSampler(demote_ctx(kern.root, (100, 101), room), clock=clock)
    s.open()
    try:
        cold_round(s)
        st = s.stats()
        assert st["tracked_pids"] == 2 and st["state_bytes"] == 3 * 2 * s.chunk_pages
        b.exit()
        a.unmap_all()
        a.map(0x10000000, 64, [FAST + i for i in range(64)])
        clock.t += COLD_S + TICK_S
        got = cold_round(s)
        assert {pid for pid, _ in got} == {100} and len(got) == 64
        st = s.stats()
        assert st["tracked_pids"] == 1 and st["state_bytes"] == 2 * s.chunk_pages
        assert st["pid_gone"] == 1
    finally:
        s.close()


def test_pid_gone_before_its_cold_pages_are_offered(kern: FakeKernel,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a = kern.process(100)
    a.map(0x10000000, 64, [FAST + i for i in range(64)])
    room, clock = Room(1 << 30), Clock()
    s = IdleSampler(demote_ctx(kern.root, (100,), room), clock=clock)
    s.open()
    try:
        cold_round(s)
        clock.t += COLD_S + TICK_S
        monkeypatch.setattr(offers_mod, "last_cpu", lambda fs, pid: None)
        assert cold_round(s) == {}
        assert s.stats()["pid_gone"] == 1 and s.stats()["tracked_pids"] == 0
    finally:
        s.close()


def test_room_needed_failing_is_counted_and_hot_pages_still_go(kern: FakeKernel) -> None:
    p = kern.process(100)
    slow = [NODE1 + 64 * 4300 + i for i in range(64)]
    p.map(0x10000000, 64, slow)

    def broken() -> int:
        raise RuntimeError("no workers yet")

    ctx = demote_ctx(kern.root, (100,), Room(), hot=1)
    ctx = dataclasses.replace(ctx, room_needed=broken)
    s = IdleSampler(ctx)
    s.open()
    try:
        cold_round(s)
        kern.access(slow)
        cold_round(s)
        assert len(drain(ctx)) == 64
        assert s.stats()["errors"] == 2 and s.stats()["fast_aging_rounds"] == 0
    finally:
        s.close()


def test_the_loop_delivers_cold_pages_to_the_demotion_queues(kern: FakeKernel) -> None:
    p = kern.process(100)
    addrs = p.map(0x10000000, 64, [FAST + i for i in range(64)])
    ctx = demote_ctx(kern.root, (100,), Room(1 << 30), cold_age_ms=100, interval_ms=10)
    s = IdleSampler(ctx)

    async def run() -> None:
        await s.start()
        for _ in range(300):
            await asyncio.sleep(0.01)
            if s.stats()["demotion_candidates_offered"] >= 64:
                break
        await s.stop()

    asyncio.run(run())
    assert ctx.demote_queues is not None
    got = merge(ctx.demote_queues.drain(1 << 16))
    assert set(got.addrs) == set(addrs) and set(got.pids) == {100}
    assert s.stats()["demotion_candidates_offered"] >= 64


class TickingClock(Clock):
    """A clock that moves ``step`` seconds at every reading."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_a_round_that_ages_the_fast_tier_stops_after_the_interval(kern: FakeKernel) -> None:
    """Testing the fast tier can take longer than the interval: such a round stops after
    the interval (once it has scanned something) and the next continues there."""
    p = kern.process(100)
    chunk = 4096 * PAGE
    for k in range(8):
        p.map(0x10000000 + k * chunk, 64, [FAST + 64 * k + i for i in range(64)])
    room = Room(0)
    clock = TickingClock(0.3)
    s = IdleSampler(demote_ctx(kern.root, (100,), room), clock=clock)
    s.open()
    try:
        cold_round(s)  # no room needed: no time limit
        st = s.stats()
        assert st["pages_scanned"] == 8 * 64 and st["rounds_cut_by_time"] == 0
        room.bytes = 1 << 30
        scanned = []
        for _ in range(6):
            before = s.stats()["pages_scanned"]
            cold_round(s)
            scanned.append(s.stats()["pages_scanned"] - before)
        st = s.stats()
        assert 0 < max(scanned) < 8 * 64 and st["rounds_cut_by_time"] >= 5
        assert st["fast_pages_aged"] == sum(scanned)  # every page read was aged
        assert st["passes"] >= 2
    finally:
        s.close()
