"""Guest half of benchmarks/stalls.py: where the application waits while a full fast tier's
exchange runs (run it from the host: it boots the VM).

For each contender, interleaved, --repeat times: node 0 (4.5 GiB) filled by a fresh cold
process to --free-mib free, a workload with a --hot-mib hot set on node 1 sweeping it,
then the mechanism for --run-s seconds:

  tpp           the kernel's tiering: numa_balancing=2 + demotion_enabled=1
  default       kmigratedd with its embedded default config
  batch512      the default with workers.max_batch_ms 0 (every call workers.batch_pages)
  nice0         the default with daemon.nice 0
  batch512-nice0  both

What is measured of the workload's main thread: every second its accesses (the
workload's own count) and its time split from /proc/PID/task/TID/schedstat (running,
waiting for a CPU, the rest blocked); every --sample-ms its state, wait channel and
kernel stack.  Of the machine: every second the reclaim and migration counters of
/proc/vmstat, /proc/pressure/memory, the daemon's and kswapd0's CPU.  Of the daemon at
the end: its move_pages calls (count, time).  Writes --out (JSON) and prints one RESULT
line per run.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gcommon as g
from gcommon import read, say, write

VM = ("pgdemote_kswapd", "pgdemote_direct", "allocstall_normal", "allocstall_movable",
      "pgscan_kswapd", "pgscan_direct", "pgsteal_kswapd", "pgsteal_direct",
      "pgmigrate_success", "pgmigrate_fail", "numa_hint_faults", "numa_pte_updates",
      "pgpromote_success")
VARIANTS = {
    "default": "",
    "batch512": "workers:\n  max_batch_ms: 0\n",
    "nice0": "daemon:\n  nice: 0\n",
    "batch512-nice0": "workers:\n  max_batch_ms: 0\ndaemon:\n  nice: 0\n",
}
NB = "/proc/sys/kernel/numa_balancing"
DEMOTION = "/sys/kernel/mm/numa/demotion_enabled"


def thread_state(pid: int, tid: int) -> tuple[str, str] | None:
    """(state:wchan, the top of its kernel stack) of a thread, or None once gone."""
    base = f"/proc/{pid}/task/{tid}"
    try:
        wchan = Path(f"{base}/wchan").read_text().strip()
        stack = Path(f"{base}/stack").read_text().strip().splitlines()
        state = Path(f"{base}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    frames = [ln.split("] ", 1)[-1].split("+")[0] for ln in stack]
    return f"{state}:{wchan}", " < ".join(frames[:6])


class Sampler(threading.Thread):
    """The main thread's state every ``period_s``."""

    def __init__(self, pid: int, period_s: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, str, str]] = []
        self.stop_ev = threading.Event()

    def run(self) -> None:
        while not self.stop_ev.wait(self.period_s):
            st = thread_state(self.pid, self.pid)
            if st is not None:
                self.samples.append((time.monotonic(), *st))


def psi() -> dict[str, float]:
    out = {}
    for line in Path("/proc/pressure/memory").read_text().splitlines():
        kind, *kv = line.split()
        for item in kv:
            k, v = item.split("=")
            out[f"{kind}_{k}"] = float(v)
    return out


def schedstat(pid: int) -> tuple[int, int]:
    """(ns running, ns waiting for a CPU) of a thread so far."""
    f = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    return int(f[0]), int(f[1])


def run_one(contender: str, a: argparse.Namespace, rep: int) -> dict[str, Any]:
    from daemonproc import DaemonProcess, metric_total
    from quality import kswapd_pid
    from workload import Workload, fill_node

    say(f"== {contender} (run {rep + 1}): node 0 filled to {a.free_mib:g} MiB free")
    filler = fill_node(0, a.free_mib)
    d = None
    try:
        with tempfile.TemporaryDirectory() as td, \
                Workload(a.hot_mib, a.cold_mib, node=1, flush_ms=10, report_ms=1000,
                         zipf=a.zipf) as w:
            time.sleep(a.baseline_s)
            if contender == "tpp":
                was = (read(NB), read(DEMOTION))
                write(DEMOTION, "1")
                write(NB, "2")
            else:
                cfg = (f"sampler:\n  hint_faults:\n    state_file: {td}/state.json\n"
                       f"metrics:\n  port: 0\ncontrol:\n  socket_path: {td}/c.sock\n"
                       + VARIANTS[contender])
                d = DaemonProcess(cfg, Path(td), echo=lambda line: None)
                d.wait_running()
            t_on, t_on_ns = time.monotonic(), time.monotonic_ns()
            kswapd = kswapd_pid(0)
            smp = Sampler(w.pid, a.sample_ms / 1000)
            smp.start()
            seconds = []
            last_vm, last_s = g.vmstat(*VM), schedstat(w.pid)
            last_d = sum(g.proc_cpu(d.proc.pid)) if d else 0.0
            last_k = sum(g.proc_cpu(kswapd))
            s0 = last_s
            while time.monotonic() - t_on < a.run_s:
                time.sleep(1.0)
                vm, s = g.vmstat(*VM), schedstat(w.pid)
                dc = sum(g.proc_cpu(d.proc.pid)) if d else 0.0
                kc = sum(g.proc_cpu(kswapd))
                seconds.append({"t": round(time.monotonic() - t_on, 2),
                                "run_ms": (s[0] - last_s[0]) // 1_000_000,
                                "wait_ms": (s[1] - last_s[1]) // 1_000_000,
                                "vm": {k: vm[k] - last_vm[k] for k in VM if vm[k] - last_vm[k]},
                                "psi": psi(), "free0_mib": round(g.free_mib(0), 1),
                                "daemon_cpu_s": round(dc - last_d, 3),
                                "kswapd_cpu_s": round(kc - last_k, 3)})
                last_vm, last_s, last_d, last_k = vm, s, dc, kc
            wall = time.monotonic() - t_on
            smp.stop_ev.set()
            smp.join()
            moves = {}
            if d is not None:
                mt = d.metrics()
                moves = {"calls": metric_total(mt, "kmigratedd_move_pages_duration_seconds_count"),
                         "seconds": metric_total(mt, "kmigratedd_move_pages_duration_seconds_sum"),
                         "promoted": metric_total(mt, "kmigratedd_promoted_pages_total")}
                d.stop()
                d = None
            else:
                write(NB, was[0])
                write(DEMOTION, "true" if was[1].startswith(("1", "t", "y", "Y")) else "false")
            intervals = [s.__dict__ for s in w.intervals(t_on_ns + 500_000_000)]
    finally:
        if d is not None:
            d.stop()
        if filler is not None:
            filler.stop()
    return summarize(contender, rep, wall, s0, last_s, seconds, intervals, smp.samples, t_on,
                     moves)


def summarize(contender: str, rep: int, wall: float, s0: tuple[int, int], s1: tuple[int, int],
              seconds: list[dict[str, Any]], intervals: list[dict[str, Any]],
              samples: list[tuple[float, str, str]], t_on: float,
              moves: dict[str, float]) -> dict[str, Any]:
    acc = [iv["accesses"] for iv in intervals]
    p75 = sorted(acc)[int(0.75 * (len(acc) - 1))] if acc else 0
    stalls = [x < 0.1 * p75 for x in acc]
    longest = c = 0
    for s in stalls:
        c = c + 1 if s else 0
        longest = max(longest, c)
    share = [iv["fast_accesses"] / iv["accesses"] if iv["accesses"] else 0.0 for iv in intervals]
    run_ms, wait_ms = (s1[0] - s0[0]) / 1e6, (s1[1] - s0[1]) / 1e6
    blocked = collections.Counter(w for _, w, _ in samples if w.startswith("D"))
    stacks = collections.Counter(st for _, w, st in samples if w.startswith("D"))
    vm = collections.Counter()
    for row in seconds:
        vm.update(row["vm"])
    out = {
        "contender": contender, "rep": rep, "wall_s": round(wall, 1),
        "longest_stall_s": longest, "stall_s": sum(stalls), "accesses_per_s_p75": p75,
        "t90_s": next((i + 1 for i, s in enumerate(share) if s >= 0.9), None),
        "share": round(sum(iv["fast_accesses"] for iv in intervals) / max(1, sum(acc)), 3),
        "main_thread_pct": {"running": round(100 * run_ms / (1000 * wall), 1),
                            "waiting_for_cpu": round(100 * wait_ms / (1000 * wall), 1),
                            "blocked": round(100 * (1 - (run_ms + wait_ms) / (1000 * wall)), 1)},
        "blocked_samples": dict(blocked.most_common(5)), "samples": len(samples),
        "blocked_stacks": dict(stacks.most_common(3)),
        "vmstat": dict(vm), "psi_some_avg10_max": max((r["psi"]["some_avg10"] for r in seconds),
                                                      default=0.0),
        "daemon_cpu_s": round(sum(r["daemon_cpu_s"] for r in seconds), 1),
        "kswapd_cpu_s": round(sum(r["kswapd_cpu_s"] for r in seconds), 1),
        "move_pages": moves,
        "seconds": seconds, "intervals": intervals,
    }
    if moves.get("calls"):
        out["move_ms_per_call"] = round(1000 * moves["seconds"] / moves["calls"], 1)
        out["move_us_per_page"] = round(1e6 * moves["seconds"] / max(1, moves["promoted"]), 1)
    brief = {k: v for k, v in out.items() if k not in ("seconds", "intervals")}
    say(f"RESULT {json.dumps(brief)}")
    return out


def main() -> int:
    g.require_vm("benchmarks/guest/stalls.py")
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--contenders", default="tpp,default,batch512,nice0")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--free-mib", type=float, default=160)
    ap.add_argument("--hot-mib", type=float, default=256)
    ap.add_argument("--cold-mib", type=float, default=128)
    ap.add_argument("--zipf", type=float, default=0.0,
                    help="Zipf accesses of this exponent over the hot region (0: sweeps)")
    ap.add_argument("--run-s", type=float, default=45)
    ap.add_argument("--baseline-s", type=float, default=5)
    ap.add_argument("--sample-ms", type=float, default=100)
    a = ap.parse_args()
    contenders = [c for c in a.contenders.split(",") if c]
    unknown = [c for c in contenders if c != "tpp" and c not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}: tpp, {', '.join(VARIANTS)}")
    out: dict[str, Any] = {"guest": g.guest_info(), "params": vars(a), "runs": []}
    for rep in range(a.repeat):
        for c in contenders:
            out["runs"].append(run_one(c, a, rep))
            g.dump(a.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
