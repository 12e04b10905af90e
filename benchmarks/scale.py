"""How kmigratedd's cost grows with the processes in scope and the memory they map.

Run on the host: ``$(bash tests/setup.sh --print-venv)/bin/python benchmarks/scale.py``
(``--quick`` for shorter measures; ``--guest-log FILE`` adds the ``SCALE`` lines a run of
tests/vm/test_vm_scale.py printed).  Prints each table and writes
benchmarks/results/scale.md with an ASCII plot (no matplotlib in the test venv).

Natively, on this machine's real /proc:

1. **The idle daemon against processes in scope**: ``kmigratedd --root FAKE`` where
   FAKE/sys is the two-tier tree tests/data/cxl2 (node 1 a CPU-less lower tier) with a
   page_idle bitmap that is a regular file, and FAKE/proc is the real /proc.  N small
   processes (forked children of one helper, 1 MiB touched each) are started first; the
   daemon's CPU (utime + stime) is measured over ``--measure-s`` after ``--warmup-s``, as
   a share of one CPU, with its RSS.  Goal: <= 0.5% of one CPU with 1,000 in scope.
2. **Ranking a round** (kmigratedd/ranking.py, in this process, same N processes):
   listing the scope, measuring ``rank_processes_per_round`` numa_maps and choosing, per
   round; and tracemalloc's peak.
3. **numa_maps and statm against memory mapped**: one process with 16 MiB to 4 GiB
   touched; the time to read each (the ranking's per-process cost).
4. **The perf samplers' scope filter per sample** (hint-faults, pebs, ibs are
   system-wide; with a scope they keep the samples of the pids in it):
   ``shim.samples_filter`` over 65,536 samples against an allow list of 10 to 10,000
   pids, in ns per sample.
6. **The idle daemon against memory mapped** (``--mapped 1,2,4`` runs only this, GiB,
   and replaces its section of scale.md): one process in scope holding 1 to 4 GiB
   touched, with a fake /sys that puts this machine's memory on a slow node 0 (see
   ``slow_node0_root``); the daemon's CPU and RSS as in 1, the pages it scanned and
   tested, and that process's numa_maps read and ranking round.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from array import array
from pathlib import Path

from common import REPO, RESULTS, ensure_venv, host_info, md_table, write_result

ensure_venv()

sys.path.insert(0, str(REPO / "tests" / "vm" / "guest"))

from daemonproc import DaemonProcess, proc_cpu_seconds  # noqa: E402
from kmigratedd import procfs, shim  # noqa: E402
from kmigratedd.config import IdleConfig, ScopeConfig  # noqa: E402
from kmigratedd.kernelfs import KernelFs  # noqa: E402
from kmigratedd.ranking import RANK_PAGES_PER_ROUND, Ranking, Watchlist  # noqa: E402
from kmigratedd.samplers.idle import BITMAP, SCAN_PIDS, SCAN_WINDOW  # noqa: E402
from kmigratedd.scope import Scope  # noqa: E402

MiB = 1 << 20

# Forks N children that each touch SIZE bytes of anonymous memory and pause; READY once
# all have; SIGTERM ends them all.
HELPER = r"""
import mmap, os, signal, sys
n, size = int(sys.argv[1]), int(sys.argv[2])
r, w = os.pipe()
kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if size:
            m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
            # touched 16 MiB at a time: the helper holds SIZE, not twice SIZE
            block = b"\1" * min(size, 1 << 24)
            while m.tell() < size:
                m.write(block[:size - m.tell()])
        os.write(w, b"x")
        os.close(w)
        while True:
            signal.pause()
    kids.append(pid)
os.close(w)
got = 0
while got < n:
    got += len(os.read(r, n - got))
def stop(*_):
    for k in kids:
        os.kill(k, signal.SIGKILL)
    for k in kids:
        os.waitpid(k, 0)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print("READY", flush=True)
while True:
    signal.pause()
"""


class Children:
    def __init__(self, n: int, size: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HELPER, str(n), str(size)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"helper: {line!r}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def fake_root(tmp: Path) -> Path:
    """cxl2's two-tier /sys, a page_idle bitmap file, the real /proc."""
    root = tmp / "root"
    shutil.copytree(REPO / "tests/data/cxl2/sys", root / "sys", symlinks=True)
    cpu = root / "sys/devices/system/cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    (cpu / "online").write_text(f"0-{(os.cpu_count() or 1) - 1}\n")
    bitmap = root / BITMAP.lstrip("/")
    bitmap.parent.mkdir(parents=True, exist_ok=True)
    with open(bitmap, "wb") as f:
        f.truncate(8 * MiB)  # one bit per PFN: 256 GiB of 4 KiB pages, sparse
    (root / "proc").symlink_to("/proc")
    return root


def slow_node0_root(tmp: Path) -> Path:
    """fake_root with this machine's memory on a slow node 0 and a fast node 1.

    cxl2's blocks (1 GiB each, node 0 fast from 0 to 8 GiB, node 1 slow from 8 to
    12 GiB) do not match this machine's physical memory: the pages of a process would
    count as fast, slow or on no node depending on where the kernel put them.  Here
    node 0 owns this machine's real memory blocks (its block size, the blocks of its
    node 0), node 1 owns 4 GiB of blocks past them (no real page), and the config's
    ``topology.tiers: [[1], [0]]`` makes node 0 the lower tier: every resident page
    of a process is on the slow tier, so the idle sampler tests every one."""
    root = fake_root(tmp)
    mem = root / "sys/devices/system/memory"
    nodes = root / "sys/devices/system/node"
    for d in mem.glob("memory*"):
        shutil.rmtree(d)
    for link in nodes.glob("node*/memory*"):
        link.unlink()
    real = Path("/sys/devices/system/memory/block_size_bytes").read_text()
    (mem / "block_size_bytes").write_text(real)
    block = int(real, 16)
    blocks = sorted(int(m.name[6:]) for m in Path("/sys/devices/system/node/node0")
                    .glob("memory*") if m.name[6:].isdigit())
    fast = range(blocks[-1] + 1, blocks[-1] + 1 + (4 << 30) // block)
    for node, ids in ((0, blocks), (1, fast)):
        for b in ids:
            (mem / f"memory{b}").mkdir()
            (mem / f"memory{b}/state").write_text("online\n")
            (nodes / f"node{node}/memory{b}").symlink_to(f"../../memory/memory{b}")
    # Every page idle, as the kernel would show the pages of a process that sleeps: the
    # sampler tests each and marks none.  Left at 0 ("accessed"), the marks would not
    # stick: the sampler writes whole bitmap words, whose 0 bits the kernel ignores and
    # a file does not, so every page would read accessed round after round and be
    # offered for promotion to a node 1 that has no memory.
    bitmap = root / BITMAP.lstrip("/")
    bitmap.write_bytes(b"\xff" * bitmap.stat().st_size)
    return root


def user_pids() -> list[int]:
    fs = KernelFs()
    return [p for p in fs.proc_pids() if procfs.is_kernel_thread(fs, p) is False]


def measure(dp: DaemonProcess, measure_s: float) -> tuple[float, float, int]:
    """The daemon's CPU seconds, the wall seconds and its peak RSS (KiB, sampled each
    second) over ``measure_s``."""
    c0, t0 = proc_cpu_seconds(dp.proc.pid), time.monotonic()
    rss = 0
    while time.monotonic() - t0 < measure_s:
        time.sleep(1)
        rss = max(rss, dp.rss_kib())
    return proc_cpu_seconds(dp.proc.pid) - c0, time.monotonic() - t0, rss


def idle_daemon_cost(n: int, warmup_s: float, measure_s: float,
                     exclude: list[int]) -> dict[str, float]:
    """The idle daemon's CPU with ``n`` small processes added; the processes in
    ``exclude`` (this machine's own) are left out of its scope."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        root = fake_root(tmp)
        kids = Children(n, MiB) if n else None
        try:
            # the daemon excludes itself: it is not running yet
            in_scope = len(set(user_pids()) - set(exclude))
            cfg = (f"sampler:\n  name: idle\nmetrics:\n  port: 0\n"
                   f"control:\n  socket_path: {tmp}/control.sock\n"
                   f"scope:\n  exclude_pids: [{', '.join(map(str, exclude))}]\n")
            lines: list[str] = []
            dp = DaemonProcess(cfg, tmp, "--root", str(root), echo=lines.append)
            try:
                dp.wait_for("running (pid", 60)
                time.sleep(warmup_s)
                cpu, wall, rss = measure(dp, measure_s)
            finally:
                dp.stop()
        finally:
            if kids:
                kids.stop()
    return {"added": n, "in_scope": in_scope, "cpu_pct": 100 * cpu / wall,
            "rss_mib": rss / 1024, "measure_s": wall}


def ranking_round_cost(n: int, exclude: list[int], rounds: int = 20) -> dict[str, float]:
    kids = Children(n, MiB)
    try:
        fs = KernelFs()
        r = Ranking(Scope(ScopeConfig(exclude_pids=tuple(exclude)), fs), fs, [1],
                    per_round=16)
        w = Watchlist(r, SCAN_PIDS, SCAN_WINDOW, fill=False, slow_only=True)
        # CPU time of this process (the machine is shared); tracemalloc on a second pass
        t0 = time.process_time()
        w.choose()
        first = time.process_time() - t0
        times = []
        for _ in range(rounds):
            t0 = time.process_time()
            w.choose()
            times.append(time.process_time() - t0)
        tracemalloc.start()
        for _ in range(5):
            w.choose()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {"added": n, "in_scope": len(r), "first_ms": first * 1000,
                "round_ms": statistics.mean(times) * 1000, "peak_kib": peak / 1024,
                "period_rounds": w.period_rounds(len(r))}
    finally:
        kids.stop()


def numa_maps_cost(size: int, reps: int = 5) -> dict[str, float]:
    kids = Children(1, size)
    try:
        fs = KernelFs()
        pid = next(p for p in fs.proc_pids() if _ppid(p) == kids.proc.pid)
        t_numa, t_statm = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            counts = procfs.numa_pages(fs, pid)
            t_numa.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            procfs.rss_pages(fs, pid)
            t_statm.append(time.perf_counter() - t0)
        assert counts and sum(counts.values()) * 4096 >= size * 0.9
        return {"mib": size / MiB, "numa_maps_ms": statistics.median(t_numa) * 1000,
                "statm_us": statistics.median(t_statm) * 1e6}
    finally:
        kids.stop()


def mapped_daemon_cost(size: int, warmup_s: float, measure_s: float) -> dict[str, float]:
    """The idle daemon with one process in scope holding ``size`` bytes touched, all of
    it on the slow tier (slow_node0_root); then, in this process, that process's
    numa_maps read and a ranking round that measures it."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        root = slow_node0_root(tmp)
        kids = Children(1, size)
        try:
            fs = KernelFs()
            pid = next(p for p in fs.proc_pids() if _ppid(p) == kids.proc.pid)
            cfg = (f"sampler:\n  name: idle\nmetrics:\n  port: 0\n"
                   f"control:\n  socket_path: {tmp}/control.sock\n"
                   f"topology:\n  tiers: [[1], [0]]\n"
                   f"scope:\n  pids: [{pid}]\n")
            lines: list[str] = []
            dp = DaemonProcess(cfg, tmp, "--root", str(root), echo=lines.append)
            try:
                dp.wait_for("running (pid", 60)
                dp.wait_for("metrics on http://", 30)
                time.sleep(warmup_s)

                def counters() -> tuple[float, float, float]:
                    return (dp.metric_sum("kmigratedd_sampler_samples_total", sampler="idle"),
                            dp.metric_sum("kmigratedd_sampler_events_total", sampler="idle",
                                          event="pages_tested"),
                            dp.metric_sum("kmigratedd_sampler_candidates_total",
                                          sampler="idle"))
                s0 = counters()
                cpu, wall, rss = measure(dp, measure_s)
                s1 = counters()
            finally:
                dp.stop()
            t_numa = []
            for _ in range(5):
                t0 = time.perf_counter()
                counts = procfs.numa_pages(fs, pid)
                t_numa.append(time.perf_counter() - t0)
            assert counts and sum(counts.values()) * 4096 >= size * 0.9
            # A ranking round that measures this process (node 0 slow, as in the daemon):
            # CPU time, as in ranking_round_cost.
            r = Ranking(Scope(ScopeConfig(pids=(pid,)), fs), fs, [0])
            t0 = time.process_time()
            r.refresh()
            r.measure()
            rank_ms = (time.process_time() - t0) * 1000
            slow = r.slow_pages(pid)
        finally:
            kids.stop()
    return {"gib": size / 2**30, "cpu_pct": 100 * cpu / wall, "rss_mib": rss / 1024,
            "scanned_per_s": (s1[0] - s0[0]) / wall, "tested_per_s": (s1[1] - s0[1]) / wall,
            "offered": s1[2] - s0[2],
            "numa_maps_ms": statistics.median(t_numa) * 1000, "rank_round_ms": rank_ms,
            "rank_slow_gib": slow * 4096 / 2**30, "measure_s": wall}


def _ppid(pid: int) -> int | None:
    fields = procfs.stat_fields(KernelFs(), pid)
    return int(fields[1]) if fields else None


def filter_cost(n_pids: int, samples: int = 65536, reps: int = 30) -> dict[str, float]:
    rng = random.Random(n_pids)
    allow = array("i", sorted(rng.sample(range(1, 4_000_000), n_pids)))
    pool = list(allow) + [rng.randrange(1, 4_000_000) for _ in range(n_pids)]
    buf = shim.SampleBuffer(samples)
    pids = array("i", (rng.choice(pool) for _ in range(samples)))
    addrs = array("Q", (0x7F0000000000 + 4096 * i for i in range(samples)))
    times = []
    for _ in range(reps):
        buf.columns["pid"][:samples] = pids
        buf.columns["addr"][:samples] = addrs
        buf._c.n = samples
        t0 = time.perf_counter()
        shim.samples_filter(buf, allow, allow=True)
        times.append(time.perf_counter() - t0)
    return {"pids": n_pids, "ns_per_sample": statistics.median(times) / samples * 1e9}


COST_MODEL = """\
Per round (``sampler.interval_ms``, 1 s by default), from the tables above:

- **Every sampler**: the /proc listing and the scope check, linear in the pids listed
  (a cached kernel-thread/user bit per pid, one small ranking entry per process in
  scope, dropped when the pid leaves the listing).  Section 2's round with 1,000
  processes includes it.
- **Ranking** (damon and idle, only with more processes in scope than they watch, 64):
  at most ``scope.rank_processes_per_round`` numa_maps reads and
  RANK_PAGES_PER_ROUND resident pages' worth of them on average (section 3 gives the
  cost per GiB), plus one statm read per process when it appears.  Constant per round;
  the time to look at every process again grows instead: N / 16 rounds for small
  processes, total resident memory / 64 MiB rounds for big ones.
- **damon**: 64 targets at most, their number fixed once the scope holds more, so the
  rotating window changes only pids (no rewrite of the schemes).  The kdamond's cost
  grows with the regions it keeps (targets x 10..1000), not with the memory mapped;
  section 5 shows its CPU with the guest's few user processes as targets ('alone') and
  with 64 ('among 500'), under TCG.
- **idle**: the pagemap of the processes scanned, bounded by
  ``sampler.idle.scan_budget_pages_per_s`` (benchmarks/results/idle_scan.md gives the
  CPU per GiB scanned); with more than 64 processes in scope it scans the 48 with the
  most slow memory and turns a window of 16 over the others that hold slow pages.
  A process with nothing on a slow node costs its numa_maps read in turn, no scan.
  With 64 processes or fewer every one is scanned every round (section 1's first row).
- **hint-faults, pebs, ibs**: system-wide events; the scope costs the per-sample
  filter of section 4 only when the scope is narrowed (an allow list), else a deny
  list of kmigratedd itself and ``scope.exclude_pids``.

Against memory mapped (section 6, natively; not in the guest):

- **idle**: linear in the resident pages of the processes scanned (a pagemap entry read
  and a test per page each pass), up to ``sampler.idle.scan_budget_pages_per_s``
  (2^20 pages: 4 GiB of 4 KiB pages a second).  Past it the CPU stays at the budget's
  and a pass takes longer (1 TiB: 256 s, so a page's history spans 256 s per round);
  its state is 2 bytes per 4 KiB of the 16 MiB chunks that hold a tracked page, THP
  or not (512 MiB for 1 TiB).  The kernel's rmap walk per idle page tested comes on
  top (the bitmap here is a file).
- **Ranking**: constant per round (the page budget); a process is re-measured every
  resident size / 64 MiB rounds (16 GiB: 256), its numa_maps read growing with its
  resident memory.
- **damon**: the kdamond checks one page per region per sample interval, with regions
  between ``sampler.damon.min_regions`` and ``max_regions`` (10..1000), every
  ``sample_interval_ms`` (5 ms): at most 200,000 checks a second per 1,000 regions,
  whatever the memory mapped (DAMON's region-based sampling); precision per region
  falls instead.
- **hint-faults**: the kernel's NUMA scanner (task_numa_work) unmaps
  ``numa_balancing_scan_size_mb`` (256 MB) of a process's address space per scan, and
  each page touched then takes a hint fault.  The scan period starts at
  ``numa_balancing_scan_period_min_ms`` (1 s) divided by the process's 256 MB windows
  of RSS, floored at 100 ms (at most 2,560 MB a second: MAX_SCAN_WINDOW), and backs
  off towards ``numa_balancing_scan_period_max_ms`` (60 s): the kernel's cost grows
  with the memory touched, up to that rate; the daemon's is per sample (section 4).
"""


def ascii_plot(points: list[tuple[float, float]], xlabel: str, ylabel: str,
               width: int = 50) -> str:
    top = max(y for _, y in points) or 1.0
    lines = [f"{ylabel} by {xlabel}"]
    for x, y in points:
        lines.append(f"{x:>8g} | {'#' * max(1, round(width * y / top))} {y:.3f}")
    return "\n".join(lines)


def guest_rows(path: Path) -> list[list[object]]:
    """One row per ``SCALE {...}`` line; a guest run starts at each 'alone' row."""
    import ast
    rows: list[list[object]] = []
    run = 0
    for line in path.read_text().splitlines():
        if line.startswith("SCALE {"):
            r = ast.literal_eval(line[len("SCALE "):])
            run += r["label"] == "alone"
            rows.append([run, r["label"], r["sampler"], r["procs_listed"],
                         r["t90_s"] and f"{r['t90_s']:.1f}", r["hot_on_fast"],
                         r["daemon_cpu_pct"],
                         f"{100 * r['kdamond_cpu_s'] / r['wall_s']:.1f}" if r["wall_s"] else "",
                         r["rss_max_mib"], r["wall_s"]])
    return rows


def mapped_section(sizes_gib: list[float], warmup_s: float, measure_s: float) -> list[str]:
    """Section 6: the idle daemon against one process's memory mapped, with its table,
    plot and the slopes the README's extrapolation uses."""
    print("6. idle daemon (node 0 slow, real /proc) against memory mapped", flush=True)
    rows, pts, res = [], [], []
    for gib in sizes_gib:
        r = mapped_daemon_cost(int(gib * 2**30), warmup_s, measure_s)
        print(f"  {gib:g} GiB: {r}", flush=True)
        res.append(r)
        rows.append([f"{gib:g}", f"{r['cpu_pct']:.1f}", f"{r['rss_mib']:.1f}",
                     f"{r['scanned_per_s'] / 1000:.0f}", f"{r['tested_per_s'] / 1000:.0f}",
                     f"{r['offered']:.0f}", f"{r['numa_maps_ms']:.1f}",
                     f"{r['rank_round_ms']:.1f}", f"{r['measure_s']:.0f}"])
        pts.append((gib, r["cpu_pct"]))
    t6 = md_table(["GiB touched", "daemon CPU % of one core", "RSS MiB",
                   "pagemap entries read /s (k)", "pages tested /s (k)",
                   "candidates offered", "numa_maps ms",
                   "ranking round CPU ms", "measured s"], rows)
    print(t6)
    budget = IdleConfig().scan_budget_pages_per_s
    budget_gib = budget * 4096 / 2**30
    out = ["## 6. The idle daemon against memory mapped (native)", "",
           "kmigratedd --root as in section 1, but node 0 owns this machine's memory blocks "
           "and is the lower tier (`topology.tiers: [[1], [0]]`, node 1 a fast node with "
           "no real page): every resident page of the process counts as slow, so the idle "
           "sampler reads its pagemap and tests every page each pass. Scope: one process "
           "(`scope.pids`) holding this much anonymous memory, touched (4 KiB pages: "
           "transparent huge pages are madvise-only here), then left alone. The page_idle "
           "bitmap is a file with every bit set: every page reads idle, as the kernel "
           "would show them, so each is tested and none marked or offered (the steady "
           "state of an idle process). The daemon's own work is measured (pagemap reads, "
           "the per-page C steps, its state), not the kernel's rmap walk per idle page "
           "that a real bitmap read adds (benchmarks/results/idle_scan.md). Pages read and "
           "tested, candidates: the sampler's counters over the window. numa_maps and the "
           "ranking round (a round that measures this "
           "process, node 0 slow; CPU of the benchmark's process) are the ranking's cost "
           "for it with more than 64 processes in scope. "
           f"Warm-up {warmup_s:g} s, then measured; default config "
           f"(sampler.idle.scan_budget_pages_per_s {budget}, {budget_gib:g} GiB of "
           "4 KiB pages a second). "
           f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
           f"`benchmarks/scale.py --mapped {','.join(f'{g:g}' for g in sizes_gib)}`.", "",
           t6, "", "```", ascii_plot(pts, "GiB touched", "daemon CPU % of one core"), "```", ""]
    if len(res) > 1:
        a, b = res[0], res[-1]
        dg = b["gib"] - a["gib"]
        cpu_slope = (b["cpu_pct"] - a["cpu_pct"]) / dg
        rss_slope = (b["rss_mib"] - a["rss_mib"]) / dg
        numa_slope = (b["numa_maps_ms"] - a["numa_maps_ms"]) / dg
        capped = min(budget_gib, b["gib"]) * cpu_slope + a["cpu_pct"] - a["gib"] * cpu_slope
        out += [f"Slopes from {a['gib']:g} to {b['gib']:g} GiB: {cpu_slope:.2f}% of one core, "
                f"{rss_slope:.2f} MiB of RSS and {numa_slope:.1f} ms of numa_maps per GiB "
                "resident. Extrapolated to 1 TiB on these slopes (linear in the pages "
                "read, as the rows are; 4 KiB pages, none accessed, this CPU): scanning "
                f"every page each second would take {cpu_slope * 1024 / 100:.0f} cores; "
                f"the budget caps the scan at {budget_gib:g} GiB a second, so about "
                f"{capped:.1f}% of one core with a pass over the process every "
                f"{1024 / budget_gib:.0f} s; RSS {rss_slope * 1024:.0f} MiB more (the "
                "history); one numa_maps read about "
                f"{numa_slope * 1024 / 1000:.0f} s.", ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="shorter measures (10 s each; not the --mapped sweep's)")
    ap.add_argument("--warmup-s", type=float,
                    help="before each daemon measure (15 s; --quick 5 s; --mapped 10 s)")
    ap.add_argument("--measure-s", type=float,
                    help="each daemon measure (60 s; --quick 10 s; --mapped 30 s)")
    ap.add_argument("--guest-log", type=Path, help="output of tests/vm/test_vm_scale.py -s")
    ap.add_argument("--mapped", metavar="GIB,...",
                    type=lambda v: [float(x) for x in v.split(",")],
                    help="only the memory-mapped sweep (section 6) for these sizes, e.g. "
                         "1,2,4: replaces that section of benchmarks/results/scale.md")
    args = ap.parse_args()
    if args.mapped:
        # one window per size is the whole measure: kept long enough to average rounds
        mapped(args.mapped, 10 if args.warmup_s is None else args.warmup_s,
               30 if args.measure_s is None else args.measure_s)
        return
    if args.warmup_s is None:
        args.warmup_s = 5 if args.quick else 15
    if args.measure_s is None:
        args.measure_s = 10 if args.quick else 60
    h = host_info()
    out = ["# How cost grows with the processes in scope and the memory mapped", "",
           f"Host: {h['cpu']}, {h['cores']} cores, {h['mem_gib']} GiB, Linux {h['kernel']}; "
           f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
           f"`benchmarks/scale.py{' --quick' if args.quick else ''}`. The host is shared "
           "with other work: CPU shares are of one core, measured with its load.", ""]

    print("1. idle daemon (fake two-tier /sys, real /proc) against processes in scope",
          flush=True)
    own = [p for p in user_pids() if p != os.getpid()]
    rows = []
    pts = []
    for n in (10, 100, 1000):
        r = idle_daemon_cost(n, args.warmup_s, args.measure_s, own + [os.getpid()])
        print(f"  +{n}: {r}", flush=True)
        rows.append([r["added"], r["in_scope"], f"{r['cpu_pct']:.2f}", f"{r['rss_mib']:.1f}",
                     f"{r['measure_s']:.0f}"])
        pts.append((r["in_scope"], r["cpu_pct"]))
    r = idle_daemon_cost(0, args.warmup_s, args.measure_s, [])
    print(f"  this machine's own processes: {r}", flush=True)
    rows.append(["0 (this machine's own)", r["in_scope"], f"{r['cpu_pct']:.2f}",
                 f"{r['rss_mib']:.1f}", f"{r['measure_s']:.0f}"])
    t1 = md_table(["processes added", "in scope", "daemon CPU % of one core", "RSS MiB",
                   "measured s"], rows)
    print(t1)
    out += ["## 1. The idle daemon against processes in scope (native)", "",
            "kmigratedd --root with tests/data/cxl2's two-tier /sys (a page_idle bitmap that "
            "is a file) and the real /proc; sampler idle, default config otherwise. The "
            "processes added hold 1 MiB of their own each (forked Python children: about "
            "22 MiB resident with the shared interpreter); the machine's own processes "
            "(this shell, pytest, other users' qemu guests...) are excluded "
            "(scope.exclude_pids) but in the last row, where the daemon watches them "
            "too. Goal: <= 0.5% of one core with 1,000 processes in scope.", "", t1, "", "```",
            ascii_plot(pts, "processes in scope", "daemon CPU % of one core"), "```", ""]

    print("2. ranking a round (real /proc)", flush=True)
    rows = []
    for n in (10, 100, 1000):
        r = ranking_round_cost(n, own)
        print(f"  +{n}: {r}", flush=True)
        rows.append([r["in_scope"], f"{r['first_ms']:.1f}", f"{r['round_ms']:.2f}",
                     f"{r['peak_kib']:.0f}", r["period_rounds"]])
    t2 = md_table(["in scope", "first round CPU ms", "round CPU ms (mean)", "tracemalloc peak KiB",
                   "window period, rounds (if all held slow pages)"], rows)
    print(t2)
    out += ["## 2. Ranking a round (kmigratedd/ranking.py)", "",
            "List the scope, read up to 16 numa_maps within the page budget, choose "
            "(idle's SCAN_PIDS 64: up to 48 from the top + a window of 16). The first "
            "round reads every stat and statm once. The machine's own processes are "
            "excluded as above.", "", t2, ""]

    print("3. numa_maps and statm against memory mapped", flush=True)
    rows = []
    numa = []
    for mib in (16, 256, 1024, 4096):
        r = numa_maps_cost(mib * MiB)
        print(f"  {mib} MiB: {r}", flush=True)
        rows.append([mib, f"{r['numa_maps_ms']:.2f}", f"{r['statm_us']:.1f}"])
        numa.append((mib, r["numa_maps_ms"]))
    ms_per_gib = (numa[-1][1] - numa[0][1]) / ((numa[-1][0] - numa[0][0]) / 1024)
    t3 = md_table(["MiB touched", "numa_maps ms", "statm us"], rows)
    print(t3)
    budget_ms = ms_per_gib * RANK_PAGES_PER_ROUND * 4096 / 2**30
    out += ["## 3. The ranking's per-process read against memory mapped", "",
            "One process with this much anonymous memory touched (4 KiB pages or THP as the "
            f"kernel chose). numa_maps costs about {ms_per_gib:.1f} ms per GiB resident "
            f"(slope 16 MiB to 4 GiB); 16 GiB would take about {16 * ms_per_gib:.0f} ms. "
            f"The ranking reads {RANK_PAGES_PER_ROUND * 4096 // MiB} MiB of resident pages "
            f"per round on average (RANK_PAGES_PER_ROUND), about {budget_ms:.1f} ms a round "
            "at this slope, whatever the size of the processes: a 16 GiB process is read "
            "alone and the rounds after it read nothing until the average is back.", "",
            t3, ""]

    print("4. scope filter per sample (perf samplers)", flush=True)
    rows = []
    for n in (10, 100, 1000, 10000):
        r = filter_cost(n)
        print(f"  {n}: {r}", flush=True)
        rows.append([n, f"{r['ns_per_sample']:.1f}"])
    t4 = md_table(["pids in scope (allow list)", "ns per sample"], rows)
    print(t4)
    out += ["## 4. The perf samplers' scope filter per sample", "",
            "shim.samples_filter over 65,536 samples (half of them from pids in scope), "
            "median of 30. With the default scope (every user process) no allow list is "
            "used: only kmigratedd itself and exclude_pids are denied.", "", t4, ""]

    if args.guest_log:
        rows5 = guest_rows(args.guest_log)
        t5 = md_table(["guest run", "processes", "sampler", "/proc pids", "t90 s",
                       "hot on node 0", "daemon CPU %", "kdamond CPU %", "RSS MiB", "wall s"],
                      rows5)
        print(t5)
        out += ["## 5. In the tiered guest (tests/vm/test_vm_scale.py)", "",
                "Debian 6.12 under qemu TCG (emulation speed: compare rows, not hardware). "
                "The workload (64 MiB hot, 64 MiB cold on node 1) starts last; 'among N': "
                "N processes of 2 MiB on node 1 started first. 'default' is kmigratedd with "
                "no arguments (sampler auto: damon); 'hint-faults' is "
                "KMIGRATEDD_SCALE_SAMPLER=hint-faults, node 0 filled to 700 MiB free first. "
                "Daemon and kdamond CPU (% of one vCPU) are over the run until 90% of the "
                "hot set is on node 0 (promotion included); with more than 64 processes in "
                "scope DAMON has 64 targets, whatever their number. "
                f"From `{args.guest_log}`, which names the commit of each guest run.", "",
                t5, ""]
    out += mapped_section([1, 2, 4], 10, 30)
    out += ["## Cost model", "", COST_MODEL, ""]
    write_result("scale.md", "\n".join(out) + "\n")


def mapped(sizes_gib: list[float], warmup_s: float, measure_s: float) -> None:
    """Run section 6 alone and put it into the existing scale.md in place of its
    previous version, before the cost model (rewritten from COST_MODEL)."""
    section = mapped_section(sizes_gib, warmup_s, measure_s)
    path = RESULTS / "scale.md"
    text = path.read_text() if path.exists() else "# How cost grows\n\n"
    head = text
    for mark in ("## 6. ", "## Cost model"):
        if mark in head:
            head = head[:head.index(mark)]
    out = [head.rstrip("\n"), "", *section, "## Cost model", "", COST_MODEL, ""]
    write_result("scale.md", "\n".join(out) + "\n")


if __name__ == "__main__":
    main()
