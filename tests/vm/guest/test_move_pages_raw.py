"""Guest: raw move_pages(2) between the slow and the fast node (ctypes syscall, no project code).

Kernel behaviour these tests pin down (measured on Debian 6.12.117 and 6.1 in the TCG guest):
  * a batch whose pages all fit: returns 0, every status = target node;
  * a THP is moved whole when move_pages gets its head address; passing every 4K address of the
    THP moves it once, the head reports the node and the other 511 addresses report -EBUSY
    (the folio is already isolated) — pass one address per folio;
  * the target node running out of memory is NOT reported as per-page -ENOMEM statuses: the
    syscall returns -1 with errno ENOMEM, the statuses of the failing chunk are left unwritten
    (whatever the caller put there) and some of its pages may have moved anyway.  A caller must
    pre-fill the status array with a sentinel and re-query (nodes=NULL) after an ENOMEM.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections import Counter
from pathlib import Path

import numaraw as nr
import pytest
from numaraw import PAGE_SIZE, Buffer, digest, move_pages, place_on_node, query_nodes

MiB = 1 << 20
SENTINEL = -(2**31)
FAST = 0


def move_in_batches(addrs: list[int], node: int, batch: int) -> list[tuple[int, int, list[int]]]:
    out = []
    for i in range(0, len(addrs), batch):
        chunk = addrs[i : i + batch]
        out.append(move_pages(0, chunk, [node] * len(chunk)))
    return out


def kernel_log_problems() -> list[str]:
    try:
        log = subprocess.run(
            ["dmesg"], check=False, capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    bad = ("BUG:", "Oops", "WARNING:", "general protection", "Kernel panic")
    return [ln for ln in log.splitlines() if any(b in ln for b in bad)]


@pytest.fixture(autouse=True)
def _no_kernel_splat() -> object:
    before = len(kernel_log_problems())
    yield
    after = kernel_log_problems()
    assert len(after) == before, f"kernel log: {after[before:]}"


def test_query_reports_the_node(slow_nodes: list[int]) -> None:
    for node in [FAST, *slow_nodes]:
        with Buffer(4 * MiB, hugepage=False) as b:
            place_on_node(b, node)
            assert set(query_nodes(b.pages())) == {node}


@pytest.mark.parametrize("size_mib", [64])
def test_move_4k_pages_slow_to_fast(slow_nodes: list[int], size_mib: int) -> None:
    for slow in slow_nodes:
        with Buffer(size_mib * MiB, hugepage=False) as b:
            place_on_node(b, slow, seed=slow)
            before = digest(b)
            pages = b.pages()
            assert set(query_nodes(pages)) == {slow}
            for ret, err, st in move_in_batches(pages, FAST, 512):
                assert (ret, err) == (0, 0)
                assert set(st) == {FAST}
            assert Counter(query_nodes(pages)) == {FAST: len(pages)}
            assert digest(b) == before
            assert nr.smaps_anon_huge(b.addr) == 0


def test_thp_moves_as_huge_pages(slow_nodes: list[int]) -> None:
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    assert "[never]" not in thp, thp
    size = 16 * MiB
    with Buffer(size, align=nr.HPAGE_SIZE, hugepage=True) as b:
        place_on_node(b, slow_nodes[0], seed=7)
        before = digest(b)
        assert nr.smaps_anon_huge(b.addr) == size, "buffer not backed by THPs on the slow node"
        huge_before = nr.meminfo()["AnonHugePages"]
        heads = b.pages(nr.HPAGE_SIZE)
        ret, err, st = move_pages(0, heads, [FAST] * len(heads))
        assert (ret, err, st) == (0, 0, [FAST] * len(heads))
        assert set(query_nodes(b.pages())) == {FAST}
        # This mapping's own AnonHugePages (smaps): unchanged, so no THP was split.  The
        # system-wide figure is not compared: other processes' THPs come and go meanwhile
        # (CI saw it grow by 6 MiB during the move).
        assert nr.smaps_anon_huge(b.addr) == size, "THPs were split by the move"
        assert huge_before >= size
        assert nr.node_meminfo(FAST)["AnonHugePages"] >= size
        assert digest(b) == before


def test_thp_tail_addresses_report_ebusy(slow_nodes: list[int]) -> None:
    size = 4 * MiB
    with Buffer(size, align=nr.HPAGE_SIZE, hugepage=True) as b:
        place_on_node(b, FAST, seed=3)
        assert nr.smaps_anon_huge(b.addr) == size
        pages = b.pages()
        ret, err, st = move_pages(0, pages, [slow_nodes[0]] * len(pages))
        assert (ret, err) == (0, 0)
        per_thp = nr.HPAGE_SIZE // PAGE_SIZE
        for h in range(0, len(pages), per_thp):
            assert st[h] == slow_nodes[0]
            assert set(st[h + 1 : h + per_thp]) <= {slow_nodes[0], -errno.EBUSY}
        assert set(query_nodes(pages)) == {slow_nodes[0]}
        assert nr.smaps_anon_huge(b.addr) == size


def test_error_statuses(slow_nodes: list[int]) -> None:
    # mapped but never touched: no page.  6.12 says -ENOENT (folio_walk finds no folio); 6.1
    # looks the page up with follow_page(FOLL_DUMP), which fails a hole in an anonymous VMA
    # with -EFAULT, the status of an unmapped address.
    untouched = -errno.ENOENT if nr.kernel_version() >= (6, 12) else -errno.EFAULT
    with Buffer(1 * MiB, hugepage=False) as b:
        st = query_nodes(b.pages())
        assert set(st) == {untouched}
        ret, err, st = move_pages(0, b.pages(), [FAST] * (b.size // PAGE_SIZE))
        assert (ret, err) == (0, 0) and set(st) == {untouched}
        b.touch()
        # node that does not exist / is not online
        ret, err, _ = move_pages(0, b.pages()[:1], [7])
        assert (ret, err) == (-1, errno.ENODEV)
        # pid that does not exist
        ret, err, _ = move_pages(2**22 + 12345, b.pages()[:1], [FAST])
        assert (ret, err) == (-1, errno.ESRCH)
    # unmapped now
    st = query_nodes(b.pages()[:4])
    assert set(st) == {-errno.EFAULT}


def test_enomem_when_fast_node_is_full(slow_nodes: list[int]) -> None:
    slow = slow_nodes[0]
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    src = Buffer(128 * MiB, hugepage=False)
    place_on_node(src, slow, seed=11)
    before = digest(src)
    pages = src.pages()
    free0 = nr.node_meminfo(FAST)["MemFree"]
    wm = nr.zone_watermarks(FAST)
    headroom = 16 * MiB
    fill = free0 - wm["high"] - headroom
    assert fill > 0
    # The kernel frees a little (page cache, per-CPU lists) while we fill: top up
    # until node 0 is within the headroom (CI once saw 2.4 MB too much after one fill).
    fillers = [Buffer(fill, hugepage=False)]
    try:
        place_on_node(fillers[0], FAST)
        for _ in range(5):
            extra = nr.node_meminfo(FAST)["MemFree"] - wm["high"] - headroom
            if extra <= headroom // 2:
                break
            fillers.append(Buffer(extra // PAGE_SIZE * PAGE_SIZE, hugepage=False))
            place_on_node(fillers[-1], FAST)
        assert nr.node_meminfo(FAST)["MemFree"] < wm["high"] + 2 * headroom

        moved_ok = failed_calls = consecutive_fail = 0
        status_all: list[int] = []
        for i in range(0, len(pages), 512):
            chunk = pages[i : i + 512]
            ret, err, st = move_pages(0, chunk, [FAST] * len(chunk), status_fill=SENTINEL)
            status_all += st
            if ret == 0:
                assert set(st) == {FAST}
                moved_ok += len(chunk)
                consecutive_fail = 0
                continue
            failed_calls += 1
            consecutive_fail += 1
            if ret == -1:
                # 6.12/6.1: the syscall fails, the failing chunk's statuses stay unwritten
                assert err == errno.ENOMEM, os.strerror(err)
                assert set(st) <= {FAST, SENTINEL}
            else:
                # per-page reporting (positive count of pages not migrated)
                assert set(st) <= {FAST, -errno.ENOMEM}
            if consecutive_fail >= 4:
                status_all += [SENTINEL] * (len(pages) - len(status_all))
                break
        assert moved_ok > 0, "nothing fit on node 0 at all"
        assert failed_calls > 0, "everything fit: node 0 was not full"
        where = query_nodes(pages)
        assert set(where) <= {FAST, slow}
        for s, w in zip(status_all, where):
            if s == FAST:
                assert w == FAST
            elif s == -errno.ENOMEM:
                assert w == slow
        silently_moved = sum(1 for s, w in zip(status_all, where) if s == SENTINEL and w == FAST)
        print(
            f"\nENOMEM: {moved_ok} pages reported moved, {silently_moved} moved without a status, "
            f"{where.count(slow)} stayed on node {slow}; {failed_calls} failing calls"
        )
        assert digest(src) == before
    finally:
        for f in fillers:
            f.close()
    # with node 0 free again, the rest moves
    rest = [a for a, w in zip(pages, query_nodes(pages)) if w != FAST]
    for ret, err, st in move_in_batches(rest, FAST, 512):
        assert (ret, err) == (0, 0) and set(st) == {FAST}
    assert set(query_nodes(pages)) == {FAST}
    assert digest(src) == before
    src.close()
