"""Cost of the idle sampler's scan per GiB, against just reading pagemap and the bitmap.

Run from the host: ``$(bash tests/setup.sh --print-venv)/bin/python benchmarks/idle_scan.py`` boots the tiered VM
on the kernel with idle page tracking (built and cached by tests/vm/build_kernel.sh),
runs itself inside and writes benchmarks/results/idle_scan.md.

A workload (tests/vm/guest/workload.py, flush_ms=10) keeps ``--hot-mib`` hot and
``--cold-mib`` cold on node 1.  In the steady state (every page marked idle one
interval earlier) each repetition times, over the same ranges (the mappings the
sampler scans):

- ``sampler``: one ``IdleSampler.scan_round()`` — pagemap, PFNs, node filter, THP
  check, PFN sort, idle_test + idle_mark, unsort, aging history, candidates;
- ``raw read``: pread of pagemap for each range, ``pagemap_pfns``, the PFNs sorted,
  ``idle_test`` — just reading pagemap and the bitmap (its re-mark is not timed);
- ``raw read+mark``: the same plus ``idle_mark``: the least any scanner that keeps
  tracking must do per round.

Each repetition runs the three in a rotating order, each one interval after every
page was marked; the ratios are the median of the ratios within a repetition (the
emulator's speed drifts by more than the effect measured, over minutes).

Layouts: ``fresh`` (PFNs ascend with the address, as the workload's first touch
left them) and ``shuffled`` (the cold set moved to node 0 and back in a random
order, so PFN order is random in address order, as in memory that has aged).
Cost is the CPU time of the scanning process (user + system: the kernel's rmap
walks for the bitmap are system time), per GiB scanned; wall time is shown too
(in a 2-vCPU guest whose other vCPU runs the workload it is noisier).  Target:
sampler <= 2x raw read.  TCG numbers measure the emulator: compare the columns
with each other, not with hardware.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import statistics
import sys
import time
from array import array
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "vm" / "guest"))

from kmigratedd import shim  # noqa: E402
from kmigratedd.samplers.idle import BITMAP, IdleSampler, parse_maps, scannable  # noqa: E402
from samplerctx import make_context  # noqa: E402
from workload import Workload  # noqa: E402

GiB = 1 << 30
PAGE = shim.PAGE_SIZE


def ranges_of(pid: int) -> list[tuple[int, int]]:
    with open(f"/proc/{pid}/maps") as f:
        return [(m.start, m.end) for m in parse_maps(f.read()) if scannable(m)]


def raw_round(pid: int, ranges: list[tuple[int, int]], bitmap_fd: int, mark: bool) -> int:
    """Read pagemap and the bitmap for ``ranges``; returns pages read."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        pfns = array("Q")
        n_total = 0
        for lo, hi in ranges:
            n = (hi - lo) // PAGE
            entries = array("Q", bytes(8 * n))
            shim.pread_words(fd, lo // PAGE, entries)
            out = array("Q", bytes(8 * n))
            shim.pagemap_pfns(entries, out)
            pfns.extend(out)
            n_total += n
        ordered = array("Q", sorted(pfns))
        shim.idle_test(bitmap_fd, ordered, bytearray(len(ordered)))
        if mark:
            shim.idle_mark(bitmap_fd, ordered)
        return n_total
    finally:
        os.close(fd)


def mark_all(pid: int, ranges: list[tuple[int, int]], bitmap_fd: int) -> None:
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for lo, hi in ranges:
            e = array("Q", bytes(8 * ((hi - lo) // PAGE)))
            shim.pread_words(fd, lo // PAGE, e)
            p = array("Q", bytes(8 * len(e)))
            shim.pagemap_pfns(e, p)
            shim.idle_mark(bitmap_fd, array("Q", sorted(p)))
    finally:
        os.close(fd)


def shuffle_pfns(w: Workload) -> None:
    """Move the cold set to node 0 and back, page order shuffled: random PFN order."""
    addrs = list(w.cold)
    for node in (0, 1):
        random.Random(node).shuffle(addrs)
        for i in range(0, len(addrs), 4096):
            shim.move(w.pid, array("Q", addrs[i:i + 4096]), node)
    assert w.fraction_on(w.cold, 1) == 1.0


def pfn_order(pid: int, addrs: array[int]) -> str:
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        e = array("Q", bytes(8 * len(addrs)))
        shim.pread_words(fd, addrs[0] // PAGE, e)
    finally:
        os.close(fd)
    p = array("Q", bytes(8 * len(addrs)))
    shim.pagemap_pfns(e, p)
    up = sum(1 for a, b in zip(p, p[1:]) if b == a + 1)
    return f"{up / max(1, len(p) - 1):.0%} of neighbours ascending by 1"


class Clock:
    """Wall and CPU (this process: user + system, i.e. our syscalls too) seconds."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Clock:
        self._t, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append(time.perf_counter() - self._t)
        self.cpu.append(time.process_time() - self._c)


def measure(w: Workload, args: argparse.Namespace) -> dict[str, float]:
    ctx = make_context((w.pid,), interval_ms=int(args.interval * 1000))
    s = IdleSampler(ctx)
    s.open()
    bitmap = os.open(BITMAP, os.O_RDWR)
    clocks = {"sampler": Clock(), "raw": Clock(), "raw_mark": Clock()}
    pages = {"sampler": 0, "raw": 0}
    try:
        ranges = ranges_of(w.pid)
        for _ in range(2):  # warm up: everything marked, history started
            s.scan_round(1 << 40)
            time.sleep(args.interval)
        runs = {
            "sampler": lambda: s.push(s.scan_round(1 << 40)),
            "raw_mark": lambda: raw_round(w.pid, ranges, bitmap, mark=True),
            "raw": lambda: raw_round(w.pid, ranges, bitmap, mark=False),
        }
        names = list(runs)
        for rep in range(args.repeat):
            # Each run starts one interval after every page was marked (the steady
            # state); the order rotates so that drifts in the emulator hit all alike.
            for name in names[rep % 3:] + names[:rep % 3]:
                mark_all(w.pid, ranges, bitmap)  # untimed
                time.sleep(args.interval)
                before = s.stats()["pages_scanned"]
                with clocks[name]:
                    got = runs[name]()
                if name == "sampler":
                    pages["sampler"] = s.stats()["pages_scanned"] - before
                    ctx.queues.drain(1 << 24)
                else:
                    pages["raw"] = got
    finally:
        os.close(bitmap)
        s.close()
    gib = pages["sampler"] * PAGE / GiB
    # the same ranges (give or take the workload's TLB-flush mapping, 64 pages, that comes and goes)
    assert abs(pages["raw"] - pages["sampler"]) <= 1024, pages
    out = {"gib": gib}
    for name, c in clocks.items():
        out[name] = statistics.median(c.cpu) / gib
        out[name + "_wall"] = statistics.median(c.wall) / gib
    # ratios of runs of the same repetition (seconds apart), then their median
    for base in ("raw", "raw_mark"):
        out["ratio_" + base] = statistics.median(
            a / b for a, b in zip(clocks["sampler"].cpu, clocks[base].cpu))
    return out


def on_host() -> int:
    """Boot the idle-kernel guest, run this script inside, keep the table."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import common

    os.environ.setdefault("KMIGRATEDD_VM_TCG_THREAD", "multi")  # as the other benchmarks
    print("== idle scan cost: booting the tiered VM (kernel idle; qemu TCG) ==", flush=True)
    res = common.vmrun.run_in_vm([str(common.VENV_PY), str(Path(__file__).resolve()),
                                  *sys.argv[1:]], topology="2node", kernel="idle",
                                 timeout=2400, cwd=str(REPO), stream=sys.stdout)
    if res.returncode != 0:
        print(f"idle_scan: the guest run failed (exit {res.returncode}); console log "
              f"{res.log_path}", file=sys.stderr)
        return 1
    out = res.output
    table = out[out.index("\n$ "):].strip() if "\n$ " in out else out.strip()
    common.write_result("idle_scan.md", "# Idle sampler scan cost vs reading pagemap + "
                        "bitmap\n\nCommand: `$(bash tests/setup.sh --print-venv)/bin/python benchmarks/idle_scan.py`. "
                        + common.TCG_CAVEAT + "\n\n```\n" + table + "\n```\n")
    return 0


def main() -> int:
    if os.environ.get("KMIGRATEDD_IN_VM") != "1":
        return on_host()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hot-mib", type=float, default=64)
    ap.add_argument("--cold-mib", type=float, default=192)
    ap.add_argument("--repeat", type=int, default=9, help="measurements per cell (median)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between rounds")
    ap.add_argument("--layouts", default="fresh,shuffled")
    args = ap.parse_args()
    if not Path(BITMAP).exists():
        print(f"{BITMAP} missing: run on the idle kernel (--kernel idle)", file=sys.stderr)
        return 77
    cmd = "$(bash tests/setup.sh --print-venv)/bin/python benchmarks/idle_scan.py " + shlex.join(sys.argv[1:])
    rows = []
    for layout in args.layouts.split(","):
        with Workload(args.hot_mib, args.cold_mib, node=1, flush_ms=10) as w:
            if layout == "shuffled":
                shuffle_pfns(w)
            order = pfn_order(w.pid, w.cold)
            r = measure(w, args)
            assert w.verify()
        rows.append((layout, order, r))
        print(f"{layout}: cold set PFN order {order}; {r}", flush=True)
    print(f"\n$ {cmd}")
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, workload {args.hot_mib:g} MiB hot "
          f"+ {args.cold_mib:g} MiB cold on node 1, median of {args.repeat}, seconds per GiB "
          "scanned (CPU = this process's user + system time); ratios: median of the ratios within "
          "each repetition")
    print(f"{'':16}{'CPU s/GiB':^31}  {'ratio (CPU)':^18}  {'wall s/GiB':^30}")
    print(f"{'layout':9} {'GiB':>6} {'sampler':>9} {'raw read':>9} {'read+mark':>10}  "
          f"{'/read':>8} {'/read+mark':>10}  {'sampler':>9} {'raw read':>9} {'read+mark':>10}")
    worst = 0.0
    for layout, _, r in rows:
        ratio = r["ratio_raw"]
        worst = max(worst, ratio)
        print(f"{layout:9} {r['gib']:6.3f} {r['sampler']:9.3f} {r['raw']:9.3f} "
              f"{r['raw_mark']:10.3f}  {ratio:8.2f} {r['ratio_raw_mark']:10.2f}  "
              f"{r['sampler_wall']:9.3f} {r['raw_wall']:9.3f} {r['raw_mark_wall']:10.3f}")
    print(f"target sampler/raw read <= 2.0 (CPU): {'met' if worst <= 2.0 else 'NOT met'} "
          f"(worst {worst:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
