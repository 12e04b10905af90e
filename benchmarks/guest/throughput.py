"""Guest half of benchmarks/throughput.py (run it from the host: it boots the VM).

Inside the tiered guest (node 0 = DRAM + CPUs, node 1 = CPU-less slow node):

1. move_pages(2) node 1 -> node 0 through kmigratedd's shim: 4 KiB pages by batch
   size, 2 MiB THP by batch size (one address per huge page), with 1 and 2 copy
   threads (kmigratedd.pipeline.ShimMover splits a batch into contiguous slices moved
   by concurrent threads); memcpy of the same bytes node 1 -> node 0 with 1 and 2
   threads as the ceiling.  Repetitions interleave the configurations so host load
   drifts hit all of them alike.  The pages moved belong to a forked, idle,
   single-threaded process (tests/vm/guest/workload.py), as a workload's pages do for the daemon.
2. pipeline vs raw: N candidates pushed straight into CandidateQueues and drained
   by the Router and one real NodeWorker (ShimMover, rate limit 0, headroom 0) until every page
   is on node 0, against batched shim.move (512 per call) of N fresh pages.
3. daemon idle: kmigratedd (each sampler this kernel offers) watching a workload
   whose pages are all on node 0 already; CPU over a window that starts 15 s after
   the daemon is up (the damon sampler is quiet by then).

Writes one JSON file (--out); the host renders tables and plots from it.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import os
import tempfile
import threading
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gcommon as g
from gcommon import HPAGE, MiB, PAGE, Buffer, say

from kmigratedd import config, shim
from kmigratedd.procfs import online_cpus
from kmigratedd.queues import CandidateQueues
from kmigratedd.topology import discover
from kmigratedd.inbox import Inbox
from kmigratedd.pipeline import MovePipeline, ShimMover
from kmigratedd.router import Router
from kmigratedd.stats import MoveStats
from kmigratedd.worker import NodeWorker, inbox_limit

SRC, DST = 1, 0


# --- 1. move_pages through the shim ------------------------------------------------


def owner(n_pages: int, *, thp: bool = False) -> Any:
    """Another process holding ``n_pages`` on SRC (tests/vm/guest/workload.py, idle:
    no access loop), as a workload's pages are for the daemon.  Its ``cold`` array
    holds the page addresses.  (Moving the benchmark's own pages would charge the
    pipeline for the executor threads of this process: every migration flushes the
    TLB of each CPU the mm is active on, which a single-threaded raw loop never
    pays.)"""
    from workload import Workload  # tests/vm/guest

    return Workload(0, n_pages * PAGE / MiB, node=SRC, thp=thp, idle=True)


def move_once(mover: ShimMover, kind: str, batch: int, threads: int, size: int) -> dict[str, Any]:
    thp = kind == "2M"
    step = HPAGE if thp else PAGE
    with owner(size // PAGE, thp=thp) as o:
        pid = o.pid
        addrs = o.cold[::step // PAGE]
        before = g.nodes_of(pid, addrs)
        if before.get(SRC, 0) != len(addrs):
            raise RuntimeError(f"buffer not on node {SRC}: {before}")
        huge_before = g.anon_huge_bytes(o.cold[0], str(pid)) if thp else 0
        if thp and huge_before != size:
            raise RuntimeError(f"only {huge_before // MiB} of {size // MiB} MiB are THP-backed")
        chunks = [addrs[i:i + batch] for i in range(0, len(addrs), batch)]
        not_migrated = 0
        t0 = time.perf_counter()
        for c in chunks:
            not_migrated += mover.move(pid, c, DST, shim.MPOL_MF_MOVE, threads).not_migrated
        dt = time.perf_counter() - t0
        after = g.nodes_of(pid, addrs)
        huge_after = g.anon_huge_bytes(o.cold[0], str(pid)) if thp else 0
    moved = after.get(DST, 0)
    if moved != len(addrs) or not_migrated:
        raise RuntimeError(f"{kind} batch {batch} x{threads}: {moved}/{len(addrs)} moved, "
                           f"statuses after {after}, not_migrated {not_migrated}")
    if thp and huge_after != size:
        raise RuntimeError(f"THP split by the move: {huge_after // MiB} MiB still huge")
    return {"seconds": dt, "bytes": size, "pages": len(addrs), "calls": len(chunks)}


def memcpy_once(size: int, threads: int) -> dict[str, Any]:
    with Buffer(size, SRC, fill=0x11) as a, Buffer(size, DST, fill=0x22) as b:
        parts = [(size * i // threads, size * (i + 1) // threads) for i in range(threads)]

        def copy(lo: int, hi: int) -> None:
            ctypes.memmove(b.addr + lo, a.addr + lo, hi - lo)  # ctypes drops the GIL

        ts = [threading.Thread(target=copy, args=p) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
    return {"seconds": dt, "bytes": size, "pages": size // PAGE, "calls": threads}


def effective_threads(kind: str, batch: int, threads: int) -> int:
    """ShimMover splits only batches of at least 2 pages per thread (pipeline.py)."""
    return threads if batch >= 2 * threads else 1


def bench_moves(a: argparse.Namespace) -> list[dict[str, Any]]:
    copy_pool = ThreadPoolExecutor(max(a.threads), thread_name_prefix="bench-copy")
    mover = ShimMover(copy_pool)
    # Warm the copy-thread pool so its creation is not timed.
    with Buffer(64 * PAGE, SRC) as w:
        mover.move(0, w.pages(), DST, shim.MPOL_MF_MOVE, 2)
    configs: list[tuple[str, int, int, int]] = []
    for batch in a.batches_4k:
        size = (a.small_mib if batch < 16 else a.size_4k_mib) * MiB
        for th in a.threads:
            if effective_threads("4K", batch, th) == th:  # else identical to 1 thread
                configs.append(("4K", batch, th, size))
    for batch in a.batches_2m:
        for th in a.threads:
            if effective_threads("2M", batch, th) == th:
                configs.append(("2M", batch, th, a.size_2m_mib * MiB))
    for th in a.threads:
        configs.append(("memcpy", 0, th, a.size_4k_mib * MiB))
    samples: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    total = len(configs) * a.reps
    done = 0
    t_start = time.monotonic()
    for rep in range(a.reps):
        for kind, batch, th, size in configs:
            if kind == "memcpy":
                r = memcpy_once(size, th)
            else:
                r = move_once(mover, kind, batch, th, size)
            samples.setdefault((kind, batch, th), []).append(r)
            done += 1
            gbs = r["bytes"] / r["seconds"] / 1e9
            say(f"  [{done:3d}/{total}] rep {rep + 1}/{a.reps} {kind:6} batch {batch:5d} "
                f"threads {th}: {r['bytes'] / MiB:4.0f} MiB in {r['seconds']:7.3f} s = "
                f"{gbs:6.3f} GB/s  ({time.monotonic() - t_start:5.0f} s)")
    copy_pool.shutdown()
    rows = []
    for (kind, batch, th), rs in samples.items():
        gbs = [r["bytes"] / r["seconds"] / 1e9 for r in rs]
        pps = [r["pages"] / r["seconds"] for r in rs]
        rows.append({"kind": kind, "batch": batch, "threads": th,
                     "effective_threads": th if kind == "memcpy" else
                     effective_threads(kind, batch, th),
                     "mib": rs[0]["bytes"] / MiB, "pages": rs[0]["pages"],
                     "calls": rs[0]["calls"], "gb_per_s": g.spread(gbs),
                     "pages_per_s": g.spread(pps)})
    return rows


# --- 2. pipeline (queues + router + NodeWorker) vs raw shim ----------------------------


def raw_once(n_pages: int, batch: int) -> float:
    with owner(n_pages) as o:
        addrs = o.cold
        chunks = [addrs[i:i + batch] for i in range(0, n_pages, batch)]
        t0 = time.perf_counter()
        for c in chunks:
            shim.move(o.pid, c, DST, shim.MPOL_MF_MOVE)
        dt = time.perf_counter() - t0
        if g.count_on(o.pid, addrs, DST) != n_pages:
            raise RuntimeError("raw: not every page moved")
    return n_pages / dt


class TimedMover(ShimMover):
    """ShimMover that also sums the time spent in its move calls (on the executor
    thread) and notes when the last one ended."""

    def __init__(self) -> None:
        super().__init__()
        self.call_seconds = 0.0
        self.last_end = 0.0

    def _timed(self, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.last_end = time.perf_counter()
            self.call_seconds += self.last_end - t0

    def move(self, pid: int, addrs: array[int], node: int, flags: int,
             threads: int) -> shim.MoveResult:
        return self._timed(super().move, pid, addrs, node, flags, threads)

    def move_batched(self, pid: int, addrs: array[int], node: int, flags: int,
                     batch: int) -> shim.BatchedMove:
        return self._timed(super().move_batched, pid, addrs, node, flags, batch)


def pipeline_once(n_pages: int, timeout: float) -> tuple[float, dict[str, Any]]:
    topo = discover(g.FS)
    cfg = dataclasses.replace(config.WorkersConfig(), rate_limit_mb_per_s=0, min_free_bytes=0,
                              resume_free_bytes=0)
    with owner(n_pages) as o:
        pid, addrs = o.pid, o.cold
        cpus = online_cpus(g.FS)
        queues = CandidateQueues(cpus, max(1 << 16, 2 * n_pages))
        # Spread the candidates over the CPUs' queues, as a sampler would.
        per = (n_pages + len(cpus) - 1) // len(cpus)
        for i, cpu in enumerate(cpus):
            part = addrs[i * per:(i + 1) * per]
            queues.push(cpu, array("i", [pid]) * len(part), part, array("i", [SRC]) * len(part))
        mover = TimedMover()
        # The stages and thread pools as the daemon builds them.
        offload = ThreadPoolExecutor(2, thread_name_prefix="bench-io")
        move_thread = ThreadPoolExecutor(1, thread_name_prefix="bench-move")
        inbox = Inbox(inbox_limit(cfg))
        worker = NodeWorker(DST, topology=topo, inbox=inbox, cfg=cfg, fs=g.FS,
                            pipeline=MovePipeline(DST, mover, MoveStats(), move_thread,
                                                  page_size=topo.page_size))
        router = Router(queues, {DST: inbox}, topo, mover, cfg, executor=offload)

        async def drive() -> float:
            t0 = time.perf_counter()
            tasks = [asyncio.create_task(worker.run()), asyncio.create_task(router.run())]
            deadline = t0 + timeout
            idle_since = None
            # Polled coarsely (every poll wakes the loop the worker runs on); the
            # time taken is up to the end of the last move_pages call.
            while worker.moves.promoted_pages < n_pages and time.perf_counter() < deadline:
                await asyncio.sleep(0.02)
                # Everything drained and nothing waiting: the rest was dropped.
                if len(queues) == 0 and inbox.pages == 0:
                    idle_since = idle_since or time.perf_counter()
                    if time.perf_counter() - idle_since > 2.0:
                        break
                else:
                    idle_since = None
            dt = time.perf_counter() - t0
            if worker.moves.promoted_pages >= n_pages:
                dt = mover.last_end - t0
            worker.stop()
            router.stop()
            await asyncio.gather(*tasks)
            return dt

        dt = asyncio.run(drive())
        offload.shutdown()
        move_thread.shutdown()
        on_dst = g.count_on(pid, addrs, DST)
        s = worker.moves
        info = {"pages": n_pages, "promoted": s.promoted_pages, "on_node0": on_dst,
                "inbox_dropped": inbox.dropped, "batches": s.batches,
                "rounds": worker.stats.rounds,
                "move_seconds": s.move_seconds, "call_seconds": mover.call_seconds,
                "seconds": dt, "outcomes": dict(s.outcomes),
                "complete": on_dst == n_pages}
    return n_pages / dt, info


def bench_pipeline(a: argparse.Namespace) -> dict[str, Any]:
    n = a.pipeline_mib * MiB // PAGE
    raw, pipe, infos = [], [], []
    for rep in range(a.pipeline_reps):
        # alternate which goes first: a TCG guest speeds up over its first seconds
        if rep % 2:
            p, info = pipeline_once(n, timeout=120)
            r = raw_once(n, 512)
        else:
            r = raw_once(n, 512)
            p, info = pipeline_once(n, timeout=120)
        infos.append(info)
        if not info["complete"]:
            say(f"  pipeline rep {rep + 1}: INCOMPLETE — {info}")
            continue
        raw.append(r)
        pipe.append(p)
        say(f"  pipeline rep {rep + 1}/{a.pipeline_reps}: raw shim.move x512 {r:8.0f} pages/s, "
            f"queues + router + NodeWorker {p:8.0f} pages/s, ratio {p / r:.3f} "
            f"(worker: {info['batches']} batches, {info['call_seconds']:.2f} s in move_pages "
            f"calls, {info['move_seconds']:.2f} s awaiting them, of {info['seconds']:.2f} s; "
            f"raw: {n / r:.2f} s)")
    out: dict[str, Any] = {"pages": n, "worker": infos}
    if pipe:
        out.update(raw_pages_per_s=g.spread(raw), pipeline_pages_per_s=g.spread(pipe),
                   ratio=g.spread([p / r for p, r in zip(pipe, raw)]))
    # A backlog larger than the worker's inbox bound (max(16 x batch, 8192) pages):
    # what happens to candidates of one pid that arrive faster than they are moved.
    if a.backlog_mib:
        nb = a.backlog_mib * MiB // PAGE
        _, info = pipeline_once(nb, timeout=120)
        say(f"  backlog of {nb} candidates of one pid: {info['promoted']} promoted, "
            f"{info['inbox_dropped']} dropped as inbox_full, {info['on_node0']} on node 0")
        out["backlog"] = info
    return out


# --- 3. daemon idle ----------------------------------------------------------------


def available_samplers() -> list[tuple[str, str | None]]:
    """(name, None if it can run here else why not) for the samplers we measure."""
    from samplerctx import make_context  # tests/vm/guest

    from kmigratedd.samplers import FACTORIES

    ctx = make_context(state_file="/tmp/probe-state.json")
    out = []
    for name in ("idle", "damon", "hint-faults"):
        f = FACTORIES.get(name)
        out.append((name, "not registered in kmigratedd.samplers.FACTORIES" if f is None
                    else f.probe(ctx)))
    return out


def kdamond_pids() -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/comm").read_text().startswith("kdamond"):
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def daemon_config(sampler: str, tmp: Path) -> str:
    return f"""
sampler:
  name: {sampler}
  hint_faults:
    state_file: {tmp}/sysctl-state.json
metrics:
  port: 0
control:
  socket_path: {tmp}/control.sock
"""


def idle_once(name: str, flush_ms: int, a: argparse.Namespace) -> dict[str, Any]:
    from daemonproc import DaemonProcess
    from workload import Workload

    with tempfile.TemporaryDirectory() as td, \
            Workload(a.idle_hot_mib, a.idle_cold_mib, node=DST, flush_ms=flush_ms) as w:
        tmp = Path(td)
        d = DaemonProcess(daemon_config(name, tmp), tmp)
        try:
            d.wait_running()
            time.sleep(a.idle_settle_s)
            kd = kdamond_pids()
            kd0 = sum(sum(g.proc_cpu(p)) for p in kd)
            f0 = g.vmstat("pgfault")["pgfault"]
            c0, t0 = d.cpu_seconds(), time.monotonic()
            time.sleep(a.idle_s)
            c1, t1 = d.cpu_seconds(), time.monotonic()
            f1 = g.vmstat("pgfault")["pgfault"]
            kd1 = sum(sum(g.proc_cpu(p)) for p in kd)
            promoted = d.metric_sum("kmigratedd_promoted_pages_total")
            quiet = d.metric_sum("kmigratedd_sampler_events_total", event="quiet_entered")
            rss = d.rss_kib()
            on_dst = w.fraction_on(w.hot, DST)
        finally:
            rc = d.stop()
    dt = t1 - t0
    row = {"sampler": name, "kernel": os.uname().release, "flush_ms": flush_ms, "seconds": dt,
           "cpu_seconds": c1 - c0,
           "cpu_percent_of_one": 100 * (c1 - c0) / dt,
           "kdamond_cpu_percent": 100 * (kd1 - kd0) / dt if kd else None,
           "faults_per_s": (f1 - f0) / dt, "rss_kib": rss, "promoted": promoted,
           "hot_on_node0": on_dst, "rc": rc, "quiet_entered": quiet}
    say(f"  daemon idle ({name}, workload flush_ms={flush_ms}, {row['faults_per_s']:,.0f} "
        f"page faults/s): {row['cpu_percent_of_one']:.2f}% of one CPU over {dt:.0f} s"
        + (f", kdamond {row['kdamond_cpu_percent']:.2f}%" if kd else "")
        + f", RSS {rss / 1024:.0f} MiB, promoted {promoted:.0f}")
    return row


def bench_idle(a: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    wanted = set(filter(None, a.idle_samplers.split(",")))
    for name, why in available_samplers():
        if wanted and name not in wanted:
            continue
        if why:
            say(f"  daemon idle: sampler {name} skipped: {why}")
            rows.append({"sampler": name, "skipped": why})
            continue
        # A steady workload makes no page faults (flush_ms=0).  The hint-fault sampler
        # records every page fault of the system (software perf event, period 1), so it
        # is also measured with the TLB-flush helper's ~6,400 minor faults/s.
        for flush in (0, 10) if name == "hint-faults" else (0,):
            rows.append(idle_once(name, flush, a))
    return rows


def main() -> int:
    g.require_vm("benchmarks/guest/throughput.py")
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batches-4k", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 16, 64, 256, 512, 1024, 4096])
    ap.add_argument("--batches-2m", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 8, 64])
    ap.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--size-4k-mib", type=int, default=32)
    ap.add_argument("--small-mib", type=int, default=8, help="buffer for 4K batches < 16")
    ap.add_argument("--size-2m-mib", type=int, default=128)
    ap.add_argument("--pipeline-mib", type=int, default=64,
                    help="64 MiB = 16384 pages, more than one pid's inbox holds (the rest "
                         "waits in the queues)")
    ap.add_argument("--backlog-mib", type=int, default=64)
    ap.add_argument("--pipeline-reps", type=int, default=8)
    ap.add_argument("--idle-s", type=float, default=30)
    # The damon sampler goes quiet after sampler.damon.quiet_after_rounds (10) rounds
    # with nothing to promote: measure the steady state after that.
    ap.add_argument("--idle-settle-s", type=float, default=15)
    ap.add_argument("--idle-hot-mib", type=float, default=64)
    ap.add_argument("--idle-cold-mib", type=float, default=64)
    ap.add_argument("--idle-samplers", default="",
                    help="comma list: measure only these samplers idle (default: all)")
    ap.add_argument("--skip", default="", help="comma list of: moves,pipeline,idle")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    out: dict[str, Any] = {"guest": g.guest_info(), "params": vars(a)}
    say(f"guest: {out['guest']}")
    if "moves" not in skip:
        say("== move_pages node 1 -> node 0 through kmigratedd.shim, and memcpy ==")
        out["moves"] = bench_moves(a)
        g.dump(a.out, out)
    if "pipeline" not in skip:
        say("== pipeline (CandidateQueues + Router + NodeWorker) vs raw batched shim.move ==")
        out["pipeline"] = bench_pipeline(a)
        g.dump(a.out, out)
    if "idle" not in skip:
        say("== kmigratedd idle: every page already on node 0 ==")
        out["idle"] = bench_idle(a)
    g.dump(a.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
