#!/usr/bin/env python3
"""Migration throughput of kmigratedd's move path, its pipeline, and its idle cost.

    python3 benchmarks/throughput.py            # ~6-10 min: boots the tiered VM
    python3 benchmarks/throughput.py --quick    # fewer repetitions
    python3 benchmarks/throughput.py --render   # tables/plots from the last raw JSON

In the tiered guest (qemu TCG; node 1 CPU-less, a lower memory tier by HMAT) the
guest half (benchmarks/guest/throughput.py) measures:

* move_pages(2) node 1 -> node 0 through ``kmigratedd.shim.move`` — 4 KiB pages in
  batches of 1..4096 and 2 MiB THP in batches of 1, 8, 64 huge pages, with 1 and 2
  copy threads (``kmigratedd.pipeline.ShimMover``: N threads each call move_pages on a
  slice; the kernel copies in the calling thread) — the shape of the tables in
  seeds 000/001 — beside memcpy of the same bytes node 1 -> node 0 (the ceiling);
  medians of --reps repetitions with their min-max;
* the daemon's pipeline (CandidateQueues + the Router + one NodeWorker with the real ShimMover,
  no rate limit, no headroom) against raw batched shim.move (512 per call) over
  the same number of pages: the ratio is what queueing, sorting, the position query
  and accounting cost (target >= 0.9);
* kmigratedd idling (every page already on node 0) with each sampler the kernel
  offers, over --idle-s seconds;

and on the host: kmigratedd idling with one memory tier (nothing to promote).

Writes benchmarks/results/throughput.md, throughput.png and raw/throughput.json.
Runs with the venv tests/setup.sh installs this checkout's wheel into (it re-executes
itself there); matplotlib is installed into it for the plot on first use.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import md_table, med_range  # noqa: E402

RAW_NAME = "throughput.json"


def daemon_window(seconds: float, settle: float, sampler: str | None = None,
                  two_tier: bool = False) -> dict[str, Any]:
    """Run kmigratedd as a user would (a config file; ``sampler`` by name, or auto) and
    measure, ``settle`` s after it is up, its CPU, RSS and the host's page faults over
    ``seconds``.  ``two_tier``: on :func:`two_tier_root` (``--root``)."""
    sys.path.insert(0, str(common.REPO / "tests" / "vm" / "guest"))
    from daemonproc import DaemonProcess

    from kmigratedd.kernelfs import KernelFs
    from kmigratedd.procfs import vmstat

    def pgfault() -> int:
        return vmstat(KernelFs(), "pgfault").get("pgfault", 0)

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        args = ("--root", str(two_tier_root(tmp / "root"))) if two_tier else ()
        cfg = ("sampler:\n" + (f"  name: {sampler}\n" if sampler else "")
               + f"  hint_faults:\n    state_file: {tmp}/state.json\n"
               f"metrics:\n  port: 0\ncontrol:\n  socket_path: {tmp}/control.sock\n")
        d = DaemonProcess(cfg, tmp, *args)
        try:
            d.wait_for("running (pid", 60)
            time.sleep(settle)
            c0, t0, f0 = d.cpu_seconds(), time.monotonic(), pgfault()
            time.sleep(seconds)
            c1, t1, f1 = d.cpu_seconds(), time.monotonic(), pgfault()
            rss = d.rss_kib()
            promoted = d.metric_sum("kmigratedd_promoted_pages_total")
            note = next((ln for ln in d.lines if "nothing to promote" in ln), "")
        finally:
            rc = d.stop()
    dt = t1 - t0
    return {"seconds": dt, "cpu_seconds": c1 - c0, "cpu_percent_of_one": 100 * (c1 - c0) / dt,
            "faults_per_s": (f1 - f0) / dt, "rss_kib": rss, "promoted": promoted, "rc": rc,
            "note": note.split("] ", 1)[-1]}


def host_idle(seconds: float) -> dict[str, Any]:
    """kmigratedd on this host (one NUMA node: nothing to promote), CPU over ``seconds``."""
    print(f"== kmigratedd idle on the host ({seconds:.0f} s) ==", flush=True)
    row = daemon_window(seconds, 3)
    print(f"  host idle: {row['cpu_percent_of_one']:.3f}% of one CPU, "
          f"RSS {row['rss_kib'] / 1024:.0f} MiB", flush=True)
    return row


def two_tier_root(dest: Path) -> Path:
    """A root for ``kmigratedd --root``: the node, memory and tier sysfs of the checked-in
    DRAM + CXL tree (tests/data/cxl2: node 1 promotes to node 0), the rest real
    (/proc, /sys/kernel, the CPUs).  Every page of this one-node host is on node 0,
    the fast node of that topology, so the daemon has nothing to promote."""
    import shutil

    cxl2 = common.REPO / "tests" / "data" / "cxl2" / "sys" / "devices"
    (dest / "sys" / "devices" / "system").mkdir(parents=True)
    for sub in ("system/node", "system/memory", "virtual/memory_tiering"):
        shutil.copytree(cxl2 / sub, dest / "sys" / "devices" / sub, symlinks=True)
    (dest / "sys" / "devices" / "system" / "cpu").symlink_to("/sys/devices/system/cpu")
    (dest / "sys" / "kernel").symlink_to("/sys/kernel")
    (dest / "proc").symlink_to("/proc")
    return dest


# A process that takes ~5,000 minor page faults a second (64 fresh pages at a time), as
# the VM rows' TLB-flush helper does: the hint-fault sampler sees every fault system-wide.
FAULTER = """
import mmap, time
t = time.monotonic()
while True:
    m = mmap.mmap(-1, 64 * 4096)
    for i in range(0, 64 * 4096, 4096):
        m[i] = 1
    m.close()
    t += 64 / 5000
    time.sleep(max(0.0, t - time.monotonic()))
"""


def host_daemon_idle(seconds: float) -> list[dict[str, Any]]:
    """The whole daemon natively with the hint-faults sampler (system-wide page-fault
    events, sysctls, worker, metrics), on a fake two-tier topology: its idle cost on
    real hardware, on a quiet host and with FAULTER running.  (DAMON on this host
    belongs to another user, and its kernel has no idle page tracking: those samplers
    are measured in the VM only.)"""
    import subprocess

    rows = []
    for faulter in (False, True):
        print(f"== kmigratedd natively, hint-faults sampler, fake two-tier topology, "
              f"{'~5,000 faults/s' if faulter else 'quiet host'} ({seconds:.0f} s) ==",
              flush=True)
        gen = subprocess.Popen([sys.executable, "-c", FAULTER]) if faulter else None
        try:
            row = daemon_window(seconds, 15, "hint-faults", two_tier=True)
        finally:
            if gen is not None:
                gen.kill()
                gen.wait()
        print(f"  daemon natively (hint-faults): {row['cpu_percent_of_one']:.3f}% of one CPU, "
              f"{row['faults_per_s']:,.0f} page faults/s on the host, "
              f"RSS {row['rss_kib'] / 1024:.0f} MiB", flush=True)
        rows.append(row)
    return rows


def host_worker_idle(seconds: float) -> dict[str, Any]:
    """The router and one NodeWorker with empty queues on this host, natively (no VM): what
    their loops cost when there is nothing to promote.  The host has one node, so they get
    a topology that pretends node 1 (a copy of node 0) promotes to node 0; nothing is ever
    moved."""
    import asyncio
    import dataclasses
    import os
    import resource
    from concurrent.futures import ThreadPoolExecutor

    from kmigratedd import config
    from kmigratedd.inbox import Inbox
    from kmigratedd.kernelfs import KernelFs
    from kmigratedd.pipeline import MovePipeline, ShimMover
    from kmigratedd.queues import CandidateQueues
    from kmigratedd.router import Router
    from kmigratedd.topology import discover
    from kmigratedd.stats import MoveStats
    from kmigratedd.worker import NodeWorker, inbox_limit

    print(f"== an idle router and NodeWorker on the host, natively ({seconds:.0f} s) ==",
          flush=True)
    fs = KernelFs()
    topo = discover(fs)
    n0 = min(topo.nodes)
    topo = dataclasses.replace(topo, targets={n0 + 1: n0},
                               nodes={**topo.nodes, n0 + 1: topo.nodes[n0]})
    cfg = config.WorkersConfig()
    mover = ShimMover()

    async def run() -> tuple[float, float, int, Any]:
        queues = CandidateQueues(list(range(os.cpu_count() or 1)), 65536)
        inbox = Inbox(inbox_limit(cfg))
        w = NodeWorker(n0, topology=topo, inbox=inbox, cfg=cfg, fs=fs,
                       pipeline=MovePipeline(n0, mover, MoveStats(), ThreadPoolExecutor(1),
                                             page_size=topo.page_size))
        router = Router(queues, {n0: inbox}, topo, mover, cfg, executor=ThreadPoolExecutor(1))
        tasks = [asyncio.create_task(w.run()), asyncio.create_task(router.run())]
        await asyncio.sleep(1)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        k0 = w.stats.rounds + router.stats.rounds
        await asyncio.sleep(seconds)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        k1 = w.stats.rounds + router.stats.rounds
        w.stop()
        router.stop()
        await asyncio.gather(*tasks)
        return (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime), t1 - t0, k1 - k0, w

    import uvloop

    cpu, dt, rounds, w = uvloop.run(run())
    print(f"  idle router + NodeWorker: {rounds / dt:.1f} rounds/s, "
          f"{100 * cpu / dt:.3f}% of one CPU", flush=True)
    return {"seconds": dt, "cpu_seconds": cpu, "cpu_percent_of_one": 100 * cpu / dt,
            "rounds_per_s": rounds / dt, "poll_s": w.poll_s}


def _row(rows: list[dict[str, Any]], kind: str, batch: int, th: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["kind"] == kind and r["batch"] == batch
                 and r["threads"] == th), None)


def render(data: dict[str, Any]) -> str:
    guest = data["guest"]
    moves = data.get("moves", [])
    threads = sorted({r["threads"] for r in moves}) or [1, 2]
    out = ["# Migration throughput (node 1 -> node 0) and daemon overhead", "",
           "Command: `python3 benchmarks/throughput.py` (raw data: "
           "`benchmarks/results/raw/throughput.json`).", "",
           common.machine_line(guest, data), "", f"> {common.TCG_CAVEAT}", ""]
    if moves:
        memcpy = {th: _row(moves, "memcpy", 0, th) for th in threads}
        for kind, unit, title in (("4K", "4K pages/s", "4 KiB pages"),
                                  ("2M", "huge pages/s", "2 MiB THP (one address per huge page)")):
            batches = sorted({r["batch"] for r in moves if r["kind"] == kind})
            if not batches:
                continue
            sizes = sorted({r["mib"] for r in moves if r["kind"] == kind})
            out += [f"## move_pages through kmigratedd.shim: {title}", "",
                    f"Buffer {' / '.join(f'{s:.0f}' for s in sizes)} MiB per repetition; "
                    f"median of {moves[0]['gb_per_s']['n']} repetitions (min-max). "
                    "Threads = ShimMover copy threads (each calls move_pages on a contiguous "
                    "slice); '—' where the batch is too small to split "
                    "(ShimMover needs >= 2 pages per thread).", ""]
            headers = ["batch"]
            for th in threads:
                headers += [f"{th} thr GB/s", f"{th} thr {unit}"]
            if len(threads) > 1:
                headers.append(f"speed-up {threads[-1]}/{threads[0]}")
            headers.append("% of memcpy (1 thr)")
            rows = []
            for b in batches:
                cells: list[object] = [b]
                for th in threads:
                    r = _row(moves, kind, b, th)
                    cells += ([med_range(r["gb_per_s"]), med_range(r["pages_per_s"], "{:,.0f}")]
                              if r else ["—", "—"])
                r1, rn = _row(moves, kind, b, threads[0]), _row(moves, kind, b, threads[-1])
                if len(threads) > 1:
                    cells.append(f"{rn['gb_per_s']['median'] / r1['gb_per_s']['median']:.2f}x"
                                 if r1 and rn else "—")
                m1 = memcpy.get(threads[0])
                cells.append(f"{100 * r1['gb_per_s']['median'] / m1['gb_per_s']['median']:.1f}%"
                             if r1 and m1 else "—")
                rows.append(cells)
            out += [md_table(headers, rows), ""]
        mrows = [[f"memcpy node 1 -> node 0, {th} thread(s)", f"{r['mib']:.0f}",
                  med_range(r["gb_per_s"]), med_range(r["pages_per_s"], "{:,.0f}")]
                 for th, r in memcpy.items() if r]
        if mrows:
            out += ["## Ceiling: memcpy of the same bytes between the nodes", "",
                    md_table(["copy", "MiB", "GB/s", "4K pages/s"], mrows,
                             [False, True, True, True]), ""]
        out += ["## Parallel-copy speed-up (2 threads / 1 thread, medians)", ""]
        sp = speedups(moves)
        out += [md_table(["pages", "batch", "speed-up"], [[k, b, f"{s:.2f}x"] for k, b, s in sp],
                         [False, True, True]), ""]
    pipe = data.get("pipeline")
    if pipe and pipe.get("ratio"):
        ratio = pipe["ratio"]
        verdict = "meets" if ratio["median"] >= 0.9 else "misses"
        out += ["## Pipeline vs raw shim", "",
                f"{pipe['pages']:,} 4 KiB pages on node 1, pushed as candidates into "
                "CandidateQueues (spread over the CPUs' queues) and promoted by one NodeWorker "
                "(real ShimMover, rate limit 0, headroom 0, default batch 512: it drains, sorts "
                "and folds in C, queries each page's node, batches by pid, moves, tallies "
                "statuses), against batched `shim.move` of the same number of fresh pages, 512 "
                f"per call; {ratio['n']} repetitions, alternating which goes first. The pages "
                "belong to a forked idle process, as a workload's do. The worker hands up to 4 "
                "batches at a time to its move thread, which runs them back to back in one C "
                "call, and queues the next job behind the running one.", "",
                md_table(["path", "pages/s median (min-max)"],
                         [["raw shim.move, batches of 512",
                           med_range(pipe["raw_pages_per_s"], "{:,.0f}")],
                          ["CandidateQueues + NodeWorker",
                           med_range(pipe["pipeline_pages_per_s"], "{:,.0f}")],
                          ["**ratio pipeline / raw**", f"**{med_range(ratio)}**"]], [False, True]),
                "", f"The pipeline {verdict} the 0.9 target.", ""]
    if pipe and pipe.get("backlog"):
        b = pipe["backlog"]
        out += [f"**Backlog of {b['pages']:,} candidates of one pid** (more than the worker's "
                "inbox bound, max(16 x batch_pages, 8192) = 8,192 pages): "
                f"{b['promoted']:,} promoted, **{b['inbox_dropped']:,} dropped as "
                "`inbox_full`**, " + ("all" if b["complete"] else f"only {b['on_node0']:,}")
                + " on node 0 at the end: the worker drains only what its inbox can take, and "
                "the rest waits in the (bounded) queues.", ""]
    idle = data.get("idle")
    hidle = data.get("host_idle") or data.get("host_worker_idle")
    if idle or hidle:
        out += ["## Daemon overhead when there is nothing to promote", "",
                "kmigratedd with the named sampler (defaults otherwise) watching a workload "
                "whose pages are all on node 0 already; CPU = the daemon's utime+stime over "
                "the window, which starts 15 s after the daemon is up, as % of one CPU "
                "(target <= 0.5%). DAMON's kdamond kernel thread is listed separately; the "
                "damon sampler is in quiet mode by then (intervals x10 after 10 rounds with "
                "nothing to promote), and the idle sampler reads a chunk holding no slow-tier "
                "page every 8th pass only. The `idle` row comes from a second guest, on the "
                "kernel built with idle page tracking. The host rows run natively on this "
                "one-node machine.", ""]
        rows = []
        for r in idle or []:
            if r.get("skipped"):
                rows.append([f"VM, sampler {r['sampler']}", "—", "—", "—", "—",
                             f"not run: {r['skipped']}"])
                continue
            kd = r.get("kdamond_cpu_percent")
            load = ("no TLB-flush helper" if not r.get("flush_ms") else
                    f"TLB-flush helper every {r['flush_ms']} ms")
            kernel = " (idle kernel)" if r.get("kernel_name") == "idle" else ""
            rows.append([f"VM, sampler {r['sampler']}{kernel}", f"{r['seconds']:.0f}",
                         f"{r['faults_per_s']:,.0f}", f"{r['cpu_percent_of_one']:.2f}%",
                         f"{kd:.2f}%" if kd is not None else "—",
                         f"workload {load}; RSS {r['rss_kib'] / 1024:.0f} MiB"
                         + ("; quiet mode" if r.get("quiet_entered") else "")])
        if data.get("host_idle"):
            hidle = data["host_idle"]
            pct = (f"{hidle['cpu_percent_of_one']:.3f}%" if hidle["cpu_seconds"] > 0 else
                   f"< {100 * 0.01 / hidle['seconds']:.3f}% (0 clock ticks)")
            rows.append(["host, one memory tier", f"{hidle['seconds']:.0f}", "—", pct, "—",
                         f"RSS {hidle['rss_kib'] / 1024:.0f} MiB (no sampler, no worker)"])
        for didle in data.get("host_daemon_idle") or []:
            rows.append(["host natively, sampler hint-faults", f"{didle['seconds']:.0f}",
                         f"{didle['faults_per_s']:,.0f}", f"{didle['cpu_percent_of_one']:.3f}%",
                         "—", "the whole daemon on a fake two-tier topology "
                         "(tests/data/cxl2 sysfs; real /proc, perf events, sysctls); RSS "
                         f"{didle['rss_kib'] / 1024:.0f} MiB, promoted {didle['promoted']:.0f}"])
        widle = data.get("host_worker_idle")
        if widle:
            rows.append(["host, one idle NodeWorker (native)", f"{widle['seconds']:.0f}", "—",
                         f"{widle['cpu_percent_of_one']:.3f}%", "—",
                         f"the worker alone, empty queues: {widle['rounds_per_s']:.0f} "
                         "rounds/s (it sleeps until a sampler pushes; wakes once a second "
                         "for its heartbeat)"])
        out += [md_table(["where", "window s", "page faults/s", "daemon CPU", "kdamond CPU",
                          "note"], rows, [False, True, True, True, True, False]), "",
                "CPU while promoting is in `quality.md` (per contender).", ""]
    out += ["![throughput](throughput.png)", ""]
    return "\n".join(out)


def speedups(moves: list[dict[str, Any]]) -> list[tuple[str, int, float]]:
    out = []
    for kind in ("2M", "4K"):
        for b in sorted({r["batch"] for r in moves if r["kind"] == kind}):
            r1, r2 = _row(moves, kind, b, 1), _row(moves, kind, b, 2)
            if r1 and r2:
                out.append((kind, b, r2["gb_per_s"]["median"] / r1["gb_per_s"]["median"]))
    return out


def plot(data: dict[str, Any], path: Path) -> None:
    plt = common.ensure_matplotlib()
    moves = data.get("moves", [])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind, title in ((axes[0], "4K", "4 KiB pages"), (axes[1], "2M", "2 MiB THP")):
        for th, style in ((1, "o-"), (2, "s--")):
            rs = sorted((r for r in moves if r["kind"] == kind and r["threads"] == th),
                        key=lambda r: r["batch"])
            if not rs:
                continue
            x = [r["batch"] for r in rs]
            y = [r["gb_per_s"]["median"] for r in rs]
            lo = [r["gb_per_s"]["median"] - r["gb_per_s"]["min"] for r in rs]
            hi = [r["gb_per_s"]["max"] - r["gb_per_s"]["median"] for r in rs]
            ax.errorbar(x, y, yerr=[lo, hi], fmt=style, capsize=3,
                        label=f"shim.move, {th} copy thread{'s' if th > 1 else ''}")
        for th, color in ((1, "grey"), (2, "black")):
            m = _row(moves, "memcpy", 0, th)
            if m:
                ax.axhline(m["gb_per_s"]["median"], color=color, ls=":",
                           label=f"memcpy node1->node0, {th} thr")
        ax.set_xscale("log", base=2)
        if kind == "4K":
            ax.set_yscale("log")
        ax.set_xlabel("pages per move_pages call" if kind == "4K" else "huge pages per call")
        ax.set_ylabel("GB/s (TCG emulation: compare ratios only)")
        ax.set_title(f"move_pages node 1 -> node 0, {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"kmigratedd shim throughput — {data['guest'].get('kernel_release')}, "
                 f"{data['guest'].get('accel')} guest")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path.relative_to(common.REPO)}", flush=True)


def print_summary(data: dict[str, Any]) -> None:
    moves = data.get("moves", [])
    if moves:
        print("\nParallel-copy speed-up (2 threads / 1 thread):")
        for kind, b, s in speedups(moves):
            print(f"  {kind} batch {b:5d}: {s:.2f}x")
    if data.get("pipeline", {}).get("ratio"):
        r = data["pipeline"]["ratio"]
        print(f"\nPipeline / raw shim throughput: {r['median']:.3f} "
              f"(min {r['min']:.3f}, max {r['max']:.3f}; target >= 0.9)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="repetitions per configuration")
    ap.add_argument("--quick", action="store_true", help="3 repetitions, shorter idle windows")
    ap.add_argument("--kernel", default="debian-6.12")
    ap.add_argument("--idle-s", type=float, default=30, help="idle window (VM and host)")
    ap.add_argument("--skip", default="", help="comma list of: moves,pipeline,idle,host-idle")
    ap.add_argument("--host-only", action="store_true",
                    help="re-measure only the host parts, merge into the last raw JSON")
    ap.add_argument("--render", action="store_true",
                    help="only re-render from benchmarks/results/raw/throughput.json")
    ap.add_argument("--timeout", type=float, default=2400, help="guest timeout, s")
    a = ap.parse_args()
    common.ensure_venv()
    raw = common.RAW / RAW_NAME
    if a.host_only:
        data = common.load_raw(RAW_NAME)
        data["host_idle"] = host_idle(a.idle_s)
        data["host_daemon_idle"] = host_daemon_idle(a.idle_s)
        data["host_worker_idle"] = host_worker_idle(min(a.idle_s, 20))
        raw.write_text(__import__("json").dumps(data, indent=1) + "\n")
    elif not a.render:
        reps = 3 if a.quick else a.reps
        idle_s = min(a.idle_s, 15) if a.quick else a.idle_s
        skip = set(filter(None, a.skip.split(",")))
        guest_skip = ",".join(sorted(skip - {"host-idle"}))
        args = ["--out", str(raw), "--reps", str(reps), "--idle-s", str(idle_s)]
        if a.quick:
            args += ["--pipeline-reps", "2"]
        if guest_skip:
            args += ["--skip", guest_skip]
        prev = common.load_raw(RAW_NAME) if raw.exists() else {}
        res = common.run_guest("throughput.py", args, kernel=a.kernel, timeout=a.timeout,
                               title="throughput")
        data = common.load_raw(RAW_NAME)
        for section in ("moves", "pipeline", "idle", "host_idle", "host_daemon_idle",
                        "host_worker_idle"):
            if section not in data and section in prev:  # skipped: keep the last run's
                data[section] = prev[section]
        data["host_load_after"] = res.host_load_after  # type: ignore[attr-defined]
        if "idle" not in skip and a.kernel != "idle":
            # The idle sampler needs CONFIG_IDLE_PAGE_TRACKING: its idle cost comes from
            # the kernel built with it (tests/vm/build_kernel.sh), in a second guest.
            raw_idle = common.RAW / "throughput-idle-kernel.json"
            common.run_guest("throughput.py", ["--out", str(raw_idle), "--skip", "moves,pipeline",
                                               "--idle-s", str(idle_s), "--idle-samplers",
                                               "idle"], kernel="idle", timeout=a.timeout,
                             title="throughput (idle sampler, idle kernel)")
            extra = [{**r, "kernel_name": "idle"}
                     for r in common.load_raw(raw_idle.name).get("idle") or []]
            data["idle"] = [r for r in data.get("idle") or [] if not r.get("skipped")] + extra
        if "host-idle" not in skip:
            data["host_idle"] = host_idle(idle_s)
            data["host_daemon_idle"] = host_daemon_idle(idle_s)
            data["host_worker_idle"] = host_worker_idle(min(idle_s, 20))
        raw.write_text(__import__("json").dumps(data, indent=1) + "\n")
    data = common.load_raw(RAW_NAME)
    common.write_result("throughput.md", render(data))
    plot(data, common.RESULTS / "throughput.png")
    print_summary(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
