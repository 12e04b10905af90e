"""Guest benchmark (not a test): raw move_pages(2) throughput slow node -> fast node by batch size,
THP moves, and a plain memcpy between the nodes for comparison.

    python3 tests/vm/vmrun.py --topology 2node -- python3 tests/vm/guest/bench_move_pages_raw.py

Numbers from a TCG guest measure the emulator, not hardware: compare them with each other only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numaraw as nr
from numaraw import PAGE_SIZE, Buffer, move_pages, place_on_node, query_nodes

MiB = 1 << 20


def bench_4k(batch: int, size: int, src: int, dst: int) -> dict[str, float]:
    with Buffer(size, hugepage=False) as b:
        place_on_node(b, src)
        pages = b.pages()
        t = time.perf_counter()
        calls = 0
        for i in range(0, len(pages), batch):
            chunk = pages[i : i + batch]
            ret, err, _ = move_pages(0, chunk, [dst] * len(chunk))
            calls += 1
            if ret != 0:
                raise OSError(err, f"move_pages ret={ret}")
        dt = time.perf_counter() - t
        assert set(query_nodes(pages)) == {dst}
    return {
        "mib": size / MiB,
        "seconds": dt,
        "MiB/s": size / MiB / dt,
        "us/page": dt / len(pages) * 1e6,
        "calls": calls,
    }


def bench_thp(size: int, batch: int, src: int, dst: int) -> dict[str, float]:
    with Buffer(size, align=nr.HPAGE_SIZE, hugepage=True) as b:
        place_on_node(b, src)
        if nr.smaps_anon_huge(b.addr) != size:
            raise RuntimeError("buffer not fully THP-backed")
        heads = b.pages(nr.HPAGE_SIZE)
        t = time.perf_counter()
        for i in range(0, len(heads), batch):
            chunk = heads[i : i + batch]
            ret, err, st = move_pages(0, chunk, [dst] * len(chunk))
            if ret != 0 or set(st) != {dst}:
                raise OSError(err, f"move_pages ret={ret} st={set(st)}")
        dt = time.perf_counter() - t
        assert nr.smaps_anon_huge(b.addr) == size
    return {
        "mib": size / MiB,
        "seconds": dt,
        "MiB/s": size / MiB / dt,
        "us/page": dt / (size // PAGE_SIZE) * 1e6,
        "calls": (len(heads) + batch - 1) // batch,
    }


def bench_memcpy(size: int, src: int, dst: int, reps: int = 3) -> dict[str, float]:
    with Buffer(size, hugepage=False) as a, Buffer(size, hugepage=False) as b:
        place_on_node(a, src, seed=1)
        place_on_node(b, dst)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            ctypes.memmove(b.addr, a.addr, size)
            best = min(best, time.perf_counter() - t)
    return {
        "mib": size / MiB,
        "seconds": best,
        "MiB/s": size / MiB / best,
        "us/page": best / (size // PAGE_SIZE) * 1e6,
        "calls": 1,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--src", type=int, default=1)
    ap.add_argument("--dst", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    size = a.size_mib * MiB
    rows: list[tuple[str, dict[str, float]]] = []
    for batch in (1, 64, 512, 4096):
        # batch=1 costs one syscall per page: keep it smaller
        rows.append(
            (
                f"move_pages 4K, batch {batch}",
                bench_4k(batch, size // 8 if batch == 1 else size, a.src, a.dst),
            )
        )
    rows.append(("move_pages 2M THP, 1 per call", bench_thp(size, 1, a.src, a.dst)))
    rows.append(("move_pages 2M THP, 32 per call", bench_thp(size, 32, a.src, a.dst)))
    rows.append((f"memcpy node{a.src} -> node{a.dst}", bench_memcpy(size, a.src, a.dst)))
    rows.append((f"memcpy node{a.dst} -> node{a.dst}", bench_memcpy(size, a.dst, a.dst)))
    print(
        f"\nmove_pages throughput node{a.src} -> node{a.dst} ({os.uname().release}, "
        f"accel {os.environ.get('KMIGRATEDD_VM_ACCEL', '?')})"
    )
    print(f"| {'what':34} | {'MiB':>5} | {'MiB/s':>8} | {'us/4K page':>10} | {'calls':>6} |")
    print(f"|{'-' * 36}|{'-' * 7}|{'-' * 10}|{'-' * 12}|{'-' * 8}|")
    for name, r in rows:
        cells = f"{r['mib']:5.0f} | {r['MiB/s']:8.1f} | {r['us/page']:10.2f} | {int(r['calls']):6d}"
        print(f"| {name:34} | {cells} |")
    if a.json:
        Path(a.json).write_text(json.dumps({n: r for n, r in rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
