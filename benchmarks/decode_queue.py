"""Candidates per second through perf ring decoding + per-CPU queueing, on one core.

    python benchmarks/decode_queue.py [--samples 2000000] [--distinct 65536]

A synthetic ring buffer (the hint-fault sample layout: TID, TIME, ADDR, CPU; 40
bytes per record) is refilled and drained repeatedly: ``shim.perf_drain`` decodes
it into flat arrays, the scope filter runs, and ``CandidateQueues.push`` folds the
samples into a bounded per-CPU queue, exactly as ``PerfRings.drain_cpu`` does.
``--distinct`` sets how many different pages the samples touch (coalescing vs
insertion). Target: >= 1 million candidates per second.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from array import array

from kmigratedd import shim
from kmigratedd.queues import CandidateQueues

PAGE = 4096
SAMPLE = 9
HINT = shim.PERF_SAMPLE_TID | shim.PERF_SAMPLE_TIME | shim.PERF_SAMPLE_ADDR | shim.PERF_SAMPLE_CPU


def make_ring(data_pages: int, distinct: int, seed: int) -> tuple[bytearray, int]:
    data = data_pages * PAGE
    buf = bytearray(PAGE + data)
    rec = struct.Struct("<IHHIIQQII")
    n = data // rec.size
    off = PAGE
    for i in range(n):
        page = (seed + i * 7919) % distinct
        rec.pack_into(buf, off, SAMPLE, 0, rec.size, 4242, 4242, 10**9 + i,
                      0x7F0000000000 + page * PAGE + 8, 0, 0)
        off += rec.size
    struct.pack_into("<QQQQ", buf, 1024, n * rec.size, 0, PAGE, data)
    return buf, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2_000_000)
    ap.add_argument("--distinct", type=int, default=65536, help="distinct pages sampled")
    ap.add_argument("--ring-pages", type=int, default=64)
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    # Several rings with different pages, so samples do not repeat between fills.
    rings = [make_ring(args.ring_pages, args.distinct, 1 + k * 104729) for k in range(16)]
    per_fill = rings[0][1]
    heads = [struct.unpack_from("<Q", r, 1024)[0] for r, _ in rings]
    queues = CandidateQueues([0], capacity_per_cpu=1 << 16)
    out = shim.SampleBuffer(per_fill)
    stats = shim.new_perf_stats()
    deny = array("i", [os.getpid()])
    done = 0
    t_decode = t_push = 0.0
    t0 = time.perf_counter()
    k = 0
    while done < args.samples:
        ring, head = rings[k % len(rings)][0], heads[k % len(rings)]
        k += 1
        struct.pack_into("<Q", ring, 1032, 0)  # data_tail back to 0: the ring is full again
        struct.pack_into("<Q", ring, 1024, head)
        a = time.perf_counter()
        out.clear()
        n = shim.perf_drain(ring, HINT, out, stats)
        shim.samples_filter(out, deny, allow=False)
        b = time.perf_counter()
        queues.push(0, out.column("pid"), out.column("addr"), None, out.column("time"))
        c = time.perf_counter()
        t_decode += b - a
        t_push += c - b
        done += n
        if len(queues) > (1 << 15):
            queues.drain(1 << 14)  # a worker takes candidates away meanwhile
    total = time.perf_counter() - t0
    s = queues.stats()
    rate = done / (t_decode + t_push)
    print(f"samples: {done:,} in rings of {per_fill:,} records ({args.distinct:,} distinct pages)")
    print(f"decode + filter: {done / t_decode / 1e6:8.2f} M samples/s")
    print(f"queue push:      {done / t_push / 1e6:8.2f} M samples/s "
          f"(coalesced {s.coalesced:,}, dropped {s.dropped:,})")
    print(f"decode + queue:  {rate / 1e6:8.2f} M candidates/s on one core "
          f"(wall incl. refills {done / total / 1e6:.2f} M/s)")
    print(f"target >= 1 M/s: {'met' if rate >= 1e6 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
