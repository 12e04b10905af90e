"""Pages per second of move_pages' query form (nodes=NULL): raw cffi call vs the facade.

    python benchmarks/shim_query.py [--seconds 0.5] [--repeat 7]

Raw: ``lib.km_move_pages`` with pre-built cffi pointers (the floor of a call
from Python). Facade: ``kmigratedd.shim.query_nodes`` with an ``array('Q')``,
including its argument checks and the status array it allocates. Target: the
facade within 10% of the raw call at 512 pages.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import statistics
import sys
import time
from array import array

from kmigratedd import shim

BATCHES = (1, 64, 512, 4096)


def rate(fn, pages: int, seconds: float) -> float:
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(16):
            fn()
        n += 16
        now = time.perf_counter()
        if now >= deadline:
            return n * pages / (now - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    ap.add_argument("--repeat", type=int, default=7, help="measurements per cell (median)")
    args = ap.parse_args()

    size = max(BATCHES) * shim.PAGE_SIZE
    buf = mmap.mmap(-1, size)
    buf.write(b"\1" * size)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    print(f"{'pages':>6} {'raw pages/s':>14} {'facade pages/s':>15} {'facade/raw':>10} "
          f"{'spread raw':>10} {'spread facade':>13}", flush=True)
    ratio_512 = 0.0
    for n in BATCHES:
        addrs = array("Q", range(base, base + n * shim.PAGE_SIZE, shim.PAGE_SIZE))
        status = array("i", bytes(4 * n))
        c_addrs = shim.ffi.from_buffer("uint64_t[]", addrs)
        c_status = shim.ffi.from_buffer("int32_t[]", status)
        null = shim.ffi.NULL
        lib = shim.lib

        def raw() -> None:
            lib.km_move_pages(0, n, c_addrs, null, c_status, 0)

        def facade() -> None:
            shim.query_nodes(0, addrs)

        raws, facades = [], []
        for _ in range(args.repeat):  # interleave so drift hits both alike
            raws.append(rate(raw, n, args.seconds))
            facades.append(rate(facade, n, args.seconds))
        r, f = statistics.median(raws), statistics.median(facades)
        spread = lambda xs: (max(xs) - min(xs)) / statistics.median(xs)  # noqa: E731
        print(f"{n:>6} {r:>14,.0f} {f:>15,.0f} {f / r:>10.3f} {spread(raws):>10.1%} "
              f"{spread(facades):>13.1%}", flush=True)
        if n == 512:
            ratio_512 = f / r
    verdict = "met" if ratio_512 >= 0.9 else "NOT met"
    print(f"target: facade >= 0.90 x raw at 512 pages: {ratio_512:.3f} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
