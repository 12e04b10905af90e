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

from common import REPO, ensure_venv, host_info, md_table, write_result

ensure_venv()

sys.path.insert(0, str(REPO / "tests" / "vm" / "guest"))

from daemonproc import DaemonProcess, proc_cpu_seconds  # noqa: E402
from kmigratedd import procfs, shim  # noqa: E402
from kmigratedd.config import ScopeConfig  # noqa: E402
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
            m.write(b"\1" * size)
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


def user_pids() -> list[int]:
    fs = KernelFs()
    return [p for p in fs.proc_pids() if procfs.is_kernel_thread(fs, p) is False]


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
                c0, t0 = proc_cpu_seconds(dp.proc.pid), time.monotonic()
                rss = 0
                while time.monotonic() - t0 < measure_s:
                    time.sleep(1)
                    rss = max(rss, dp.rss_kib())
                cpu = proc_cpu_seconds(dp.proc.pid) - c0
                wall = time.monotonic() - t0
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

Not measured here: the daemon against 1, 4 and 16 GiB mapped in the guest.  On paper,
from the figures above: the ranking's cost per round does not change with it (the page
budget), but a 16 GiB process is re-measured every 256 rounds; damon's does not
(regions); idle's grows with the pages scanned up to its budget.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter measures (10 s each)")
    ap.add_argument("--warmup-s", type=float, default=15)
    ap.add_argument("--measure-s", type=float, default=60)
    ap.add_argument("--guest-log", type=Path, help="output of tests/vm/test_vm_scale.py -s")
    args = ap.parse_args()
    if args.quick:
        args.warmup_s, args.measure_s = 5, 10
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
    out += ["## Cost model", "", COST_MODEL, ""]
    write_result("scale.md", "\n".join(out) + "\n")


if __name__ == "__main__":
    main()
