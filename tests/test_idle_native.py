"""The idle sampler's native per-page steps (native/kmidle.c) against Python models.

The bitmap and /proc/kpageflags are regular files here: km_idle_test reads them
with pread exactly as it reads the kernel's.  Each property compares the C result
with a plain-Python statement of what native/kmidle.h promises.
"""

from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmigratedd import shim
from kmigratedd.errors import ShimArgumentError
from kmigratedd.samplers.idle import KPF_COMPOUND_HEAD, KPF_HUGE, KPF_THP

MAX_PFN = 1 << 16  # the fake bitmap's size in pages
PRESENT = 1 << 63
SWAP = 1 << 62


def write_bitmap(path: Path, idle: set[int]) -> int:
    words = [0] * (MAX_PFN // 64)
    for p in idle:
        words[p // 64] |= 1 << (p % 64)
    path.write_bytes(struct.pack(f"<{len(words)}Q", *words))
    return os.open(path, os.O_RDONLY)


def descents(pfns: list[int]) -> int:
    sample = [p for p in pfns[::16] if p]
    return sum(a > b for a, b in zip(sample, sample[1:]))


@settings(max_examples=60, deadline=None)
@given(pfns=st.lists(st.one_of(st.just(0), st.integers(1, MAX_PFN - 1)), max_size=3000),
       idle_bits=st.sets(st.integers(1, MAX_PFN - 1), max_size=4000),
       descending=st.booleans())
def test_test_batch_matches_a_plain_test(tmp_path_factory: pytest.TempPathFactory,
                                         pfns: list[int], idle_bits: set[int],
                                         descending: bool) -> None:
    if descending:
        pfns = sorted(pfns, reverse=True)
    idle_bits |= set(pfns[::3]) - {0}
    fd = write_bitmap(tmp_path_factory.mktemp("bm") / "bitmap", idle_bits)
    try:
        n = len(pfns)
        idle, again = bytearray(n), array("Q", bytes(8 * n))
        accessed, was_sorted = shim.idle_test_batch(fd, array("Q", pfns), idle, again,
                                                    array("Q", bytes(16 * n)))
    finally:
        os.close(fd)
    want = [2 if not p else (1 if p in idle_bits else 0) for p in pfns]
    assert list(idle) == want
    assert accessed == want.count(0)
    assert was_sorted == (descents(pfns) > 16)
    marked = [p for p in again if p]
    assert sorted(marked) == sorted(p for p, i in zip(pfns, want) if i == 0)
    if was_sorted:
        assert marked == sorted(marked)  # marked in PFN order too


def test_test_batch_reports_a_bitmap_error(tmp_path: Path) -> None:
    fd = write_bitmap(tmp_path / "bitmap", set())
    try:
        with pytest.raises(OSError):  # a PFN past the end of the bitmap: ENXIO
            shim.idle_test_batch(fd, array("Q", [MAX_PFN * 4]), bytearray(1), array("Q", [0]),
                                 array("Q", [0, 0]))
        with pytest.raises(ShimArgumentError, match="scratch"):
            shim.idle_test_batch(fd, array("Q", [1, 2]), bytearray(2), array("Q", [0, 0]),
                                 array("Q", [0]))
    finally:
        os.close(fd)


def pfn_tag(p: int) -> int:
    f = (p ^ p >> 8 ^ p >> 16 ^ p >> 24 ^ p >> 32) & 0xFF
    return ((f ^ f >> 7) & 0x7F) | 0x80


BLOCK_SHIFT = 12  # PFNs per memory block: 4096
BLOCKS = array("i", [0, 0, 1, 1, 2, 2, -1, 1])  # block -> node
SLOW = bytes([0, 1, 1])  # nodes 1 and 2 are slow
HP = 8  # a small "huge page" keeps the examples small


def model_track(entries: list[int], vpn: int, flags: dict[int, int] | None
                ) -> tuple[list[int], list[int], list[int], list[int]]:
    pfns = [e & ((1 << 55) - 1) if e & PRESENT and not e & SWAP else 0 for e in entries]
    nodes = [BLOCKS[p >> BLOCK_SHIFT] if p and p >> BLOCK_SHIFT < len(BLOCKS) else -1
             for p in pfns]
    tracked = [p if 0 <= nd < len(SLOW) and SLOW[nd] else 0 for p, nd in zip(pfns, nodes)]
    counts = [0, 0]
    for i in range((-vpn) % HP, len(entries) - HP + 1, HP):
        head = tracked[i]
        if not head or head % HP or tracked[i + HP - 1] != head + HP - 1:
            continue
        if flags is not None:
            f = flags.get(head, 0)
            if f & KPF_HUGE:
                tracked[i:i + HP] = [0] * HP
                counts[1] += 1
                continue
            if not (f & KPF_THP and f & KPF_COMPOUND_HEAD):
                continue
        tracked[i + 1:i + HP] = [0] * (HP - 1)
        counts[0] += 1
    return tracked, [pfn_tag(p) if p else 0 for p in tracked], nodes, counts


@st.composite
def pagemaps(draw: st.DrawFn) -> tuple[list[int], int, dict[int, int]]:
    """Runs of absent, swapped, contiguous ("huge") and scattered present pages."""
    entries: list[int] = []
    flags: dict[int, int] = {}
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["absent", "swapped", "run", "scattered"]))
        n = draw(st.integers(1, 3 * HP))
        if kind == "absent":
            entries += [0] * n
        elif kind == "swapped":
            entries += [PRESENT | SWAP | 5] * n
        elif kind == "run":
            first = draw(st.integers(1, (len(BLOCKS) << BLOCK_SHIFT) // HP - 4)) * HP
            first += draw(st.sampled_from([0, 0, 1]))  # mostly aligned
            entries += [PRESENT | (first + k) for k in range(n)]
            flags[first] = draw(st.sampled_from([0, KPF_THP | KPF_COMPOUND_HEAD, KPF_HUGE]))
        else:
            entries += [PRESENT | p for p in draw(st.lists(
                st.integers(1, (len(BLOCKS) + 2) << BLOCK_SHIFT), min_size=n, max_size=n))]
    return entries, draw(st.integers(0, 64)), flags


@settings(max_examples=150, deadline=None)
@given(pm=pagemaps(), with_flags=st.booleans())
def test_track_matches_the_model(tmp_path_factory: pytest.TempPathFactory,
                                 pm: tuple[list[int], int, dict[int, int]],
                                 with_flags: bool) -> None:
    entries, vpn, flags = pm
    n = len(entries)
    fd = None
    if with_flags:
        path = tmp_path_factory.mktemp("kpf") / "kpageflags"
        with open(path, "wb") as f:
            f.truncate((len(BLOCKS) << BLOCK_SHIFT) * 8)
            for pfn, fl in flags.items():
                f.seek(pfn * 8)
                f.write(struct.pack("<Q", fl))
        fd = os.open(path, os.O_RDONLY)
    try:
        tracked, tags, nodes = array("Q", bytes(8 * n)), bytearray(n), array("i", bytes(4 * n))
        counts = array("Q", [0, 0])
        got = shim.idle_track(array("Q", entries), vpn, BLOCK_SHIFT, BLOCKS, SLOW, HP, fd,
                              tracked, tags, nodes, counts)
    finally:
        if fd is not None:
            os.close(fd)
    m_tracked, m_tags, m_nodes, m_counts = model_track(entries, vpn, flags if with_flags else None)
    assert list(tracked) == m_tracked
    assert list(tags) == m_tags
    assert list(nodes) == m_nodes
    assert list(counts) == m_counts
    assert got == sum(1 for p in m_tracked if p)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), history=st.integers(1, 8),
       mask=st.one_of(st.none(), st.binary(min_size=0, max_size=4)))
def test_age_matches_the_model(data: st.DataObject, history: int, mask: bytes | None) -> None:
    hot_rounds = data.draw(st.integers(0, history))
    n = data.draw(st.integers(0, 200))
    page = st.lists(st.integers(0, 255), min_size=n, max_size=n)
    idle = data.draw(st.lists(st.sampled_from([0, 1, 2]), min_size=n, max_size=n))
    tags = [t if t == 0 else t | 0x80 for t in data.draw(page)]
    # half the old tags equal the new ones (the page was marked as the same PFN)
    old_tags = [t if k % 2 else o for k, (t, o) in enumerate(zip(tags, data.draw(page)))]
    hist = data.draw(page)
    nodes = data.draw(st.lists(st.integers(-1, 3), min_size=n, max_size=n))
    addr = data.draw(st.integers(0, 1 << 40)) * shim.PAGE_SIZE

    window = (1 << history) - 1
    tracked = [bool(t) and (mask is None or 0 <= nd < len(mask) and bool(mask[nd]))
               for t, nd in zip(tags, nodes)]
    m_hist, m_hot, m_counts = [], [], [0, 0]
    for i in range(n):
        if not tracked[i]:
            m_hist.append(0)
            continue
        access = int(idle[i] == 0 and old_tags[i] == tags[i])
        h = (hist[i] << 1 & window) | access
        m_hist.append(h)
        m_counts[0] += 1
        m_counts[1] += access
        if bin(h).count("1") >= hot_rounds:
            m_hot.append((addr + i * shim.PAGE_SIZE, nodes[i], bin(h).count("1")))

    c_hist, c_tags = bytearray(hist), bytearray(old_tags)
    out_a, out_n = array("Q", bytes(8 * n)), array("i", bytes(4 * n))
    out_w = array("I", bytes(4 * n))
    counts = array("Q", [0, 0])
    nhot = shim.idle_age(bytes(idle), bytes(tags), array("i", nodes), c_hist, c_tags, history,
                         hot_rounds, addr, out_a, out_n, out_w, counts, mask=mask)
    assert list(c_hist) == m_hist
    assert list(c_tags) == [t if k else 0 for t, k in zip(tags, tracked)]
    assert list(counts) == m_counts
    assert list(zip(out_a[:nhot], out_n[:nhot], out_w[:nhot])) == m_hot


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_cold_matches_the_model(data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 200))
    page = st.lists(st.integers(0, 255), min_size=n, max_size=n)
    idle = data.draw(st.lists(st.sampled_from([0, 1, 2]), min_size=n, max_size=n))
    tags = [t if t == 0 else t | 0x80 for t in data.draw(page)]
    old_tags = [t if k % 2 else o for k, (t, o) in enumerate(zip(tags, data.draw(page)))]
    since = data.draw(page)
    nodes = data.draw(st.lists(st.integers(-1, 3), min_size=n, max_size=n))
    fast = data.draw(st.binary(min_size=0, max_size=4))
    max_age = data.draw(st.integers(0, 255))
    cold_ticks = data.draw(st.integers(0, max_age))
    test_tick = data.draw(st.integers(0, 1 << 20))
    mark_tick = test_tick + data.draw(st.integers(0, 3))
    addr = data.draw(st.integers(0, 1 << 40)) * shim.PAGE_SIZE

    m_since, m_tags, m_cold, m_counts = [], [], [], [0, 0]
    m_ages = [0] * 256
    for i in range(n):
        nd = nodes[i]
        if not tags[i] or not (0 <= nd < len(fast) and fast[nd]):
            m_since.append(0)
            m_tags.append(0)
            continue
        m_counts[0] += 1
        m_tags.append(tags[i])
        if old_tags[i] != tags[i] or idle[i] == 0:
            m_counts[1] += old_tags[i] == tags[i]
            m_since.append(mark_tick % 256)
            continue
        age = (test_tick - since[i]) % 256
        if age > max_age:
            age = max_age
        m_since.append((test_tick - age) % 256)
        if age >= cold_ticks:
            m_cold.append((addr + i * shim.PAGE_SIZE, nd, age))
            m_ages[age] += 1

    c_since, c_tags = bytearray(since), bytearray(old_tags)
    out_a, out_n = array("Q", bytes(8 * n)), array("i", bytes(4 * n))
    out_w = array("I", bytes(4 * n))
    ages, counts = array("Q", bytes(8 * 256)), array("Q", [0, 0])
    ncold = shim.idle_cold(bytes(idle), bytes(tags), array("i", nodes), fast, c_since, c_tags,
                           test_tick, mark_tick, cold_ticks, max_age, addr, out_a, out_n, out_w,
                           ages, counts)
    assert list(c_since) == m_since
    assert list(c_tags) == m_tags
    assert list(counts) == m_counts
    assert list(ages) == m_ages
    assert list(zip(out_a[:ncold], out_n[:ncold], out_w[:ncold])) == m_cold


def test_cold_checks_its_arguments() -> None:
    one = array("i", [0])
    with pytest.raises(ShimArgumentError, match="max_age"):
        shim.idle_cold(b"\1", b"\x81", one, b"\1", bytearray(1), bytearray(1), 0, 0, 200, 300,
                       0, array("Q", [0]), array("i", [0]), array("I", [0]),
                       array("Q", bytes(8 * 256)), array("Q", [0, 0]))
    with pytest.raises(ShimArgumentError, match="age_counts"):
        shim.idle_cold(b"\1", b"\x81", one, b"\1", bytearray(1), bytearray(1), 0, 0, 1, 2, 0,
                       array("Q", [0]), array("i", [0]), array("I", [0]), array("Q", [0]),
                       array("Q", [0, 0]))


@settings(max_examples=150, deadline=None)
@given(weights=st.lists(st.integers(0, 6)), min_weight=st.integers(0, 7),
       quota=st.integers(0, 20))
def test_pick_matches_the_model(weights: list[int], min_weight: int, quota: int) -> None:
    addrs = [0x1000 * (i + 1) for i in range(len(weights))]
    nodes = [i % 3 for i in range(len(weights))]
    left, want = quota, []
    for a, nd, w in zip(addrs, nodes, weights):
        if w < min_weight or (w == min_weight and not left):
            continue
        left -= w == min_weight
        want.append((a, nd, w))
    c_a, c_n, c_w = array("Q", addrs), array("i", nodes), array("I", weights)
    q = array("Q", [quota])
    assert shim.idle_pick(c_a, c_n, c_w, min_weight, q) == len(want)
    assert list(zip(c_a, c_n, c_w)) == want
    assert q[0] == left
