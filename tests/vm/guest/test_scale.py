"""kmigratedd among many processes (Debian 6.12, 2-node guest): OTHERS small processes
(forked children of one helper, OTHER_MIB each, all on node 1) are in scope first; then
a workload with a HOT_MIB hot set and a COLD_MIB cold set on node 1 starts LAST, and
kmigratedd runs with no arguments (the embedded default config: sampler auto, which
is hint-faults here), or, with KMIGRATEDD_SCALE_SAMPLER set, with a config naming that
sampler (idle on the idle-tracking kernel).

The same run first times the workload alone (no others), then among the others.
Bounds: >= 90% of the hot set on node 0 within BOUND_S in both; the daemon's RSS below
RSS_BOUND_MIB.  Printed (``SCALE`` lines): time to 90% with and without the others and
their ratio (goal <= 2), the daemon's CPU and peak RSS, the kdamond threads' CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemonproc import DaemonProcess
from workload import Workload, fill_node

KERNEL = os.environ.get("KMIGRATEDD_VM_KERNEL", "")
SAMPLER = os.environ.get("KMIGRATEDD_SCALE_SAMPLER") or None
OTHERS = int(os.environ.get("KMIGRATEDD_SCALE_OTHERS", "500"))
BOUND_S = float(os.environ.get("KMIGRATEDD_E2E_BOUND_S", "240"))
OTHER_MIB = 2
HOT_MIB, COLD_MIB = 64, 64
# The daemon's state is bounded (one small entry per process in scope, MAX_TARGETS DAMON
# targets); its RSS is mostly the interpreter, uvloop, cffi and prometheus_client.
RSS_BOUND_MIB = 160

pytestmark = pytest.mark.skipif(
    KERNEL != "debian-6.12" and not (KERNEL == "idle" and SAMPLER == "idle"),
    reason="DAMON and NUMA balancing tiering (6.12), or idle on the idle kernel")

# Forks N children that each touch MIB of anonymous memory bound to NODE, say READY
# once every child has, and pause; SIGTERM ends them all.
HELPER = r"""
import ctypes, mmap, os, signal, sys
n, size, node = int(sys.argv[1]), int(float(sys.argv[2]) * 2**20), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
mask = ctypes.c_ulong(1 << node)
if libc.syscall(238, 2, ctypes.byref(mask), 64) != 0:  # set_mempolicy(MPOL_BIND)
    raise OSError(ctypes.get_errno(), "set_mempolicy")
r, w = os.pipe()
kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os.close(r)
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


class Others:
    """OTHERS small processes on node 1 (children of one helper)."""

    def __init__(self, n: int, mib: float, node: int = 1) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HELPER, str(n), str(mib), str(node)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "READY", f"helper: {line!r}, exit {self.proc.poll()}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def kdamond_cpu_s() -> float:
    """utime + stime of the kdamond threads now, in seconds."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if not (d / "comm").read_text().startswith("kdamond"):
                continue
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
    return total / os.sysconf("SC_CLK_TCK")


def config_text() -> str | None:
    if SAMPLER is None:
        return None
    return f"sampler:\n  name: {SAMPLER}\n"


def run(tmp: Path, label: str) -> dict:
    """Start the workload, then the daemon; time its hot set to 90% on node 0."""
    with Workload(HOT_MIB, COLD_MIB, node=1, flush_ms=10) as w:
        assert w.fraction_on(w.hot, 1) == 1.0
        time.sleep(2)
        n_procs = sum(1 for d in os.listdir("/proc") if d.isdigit())
        d = DaemonProcess(config_text(), tmp)
        try:
            d.wait_running()
            t0 = time.monotonic()
            cpu0, kd0 = d.cpu_seconds(), kdamond_cpu_s()
            t90, rss_max, frac = None, 0, 0.0
            while time.monotonic() - t0 < BOUND_S:
                time.sleep(1)
                assert w.alive(), "the workload stopped"
                assert d.proc.poll() is None, "the daemon died"
                rss_max = max(rss_max, d.rss_kib())
                frac = w.fraction_on(w.hot, 0)
                if frac >= 0.9:
                    t90 = time.monotonic() - t0
                    break
            wall = time.monotonic() - t0
            cpu, kd = d.cpu_seconds() - cpu0, kdamond_cpu_s() - kd0
        finally:
            rc = d.stop()
    res = dict(label=label, sampler=SAMPLER or "default", procs_listed=n_procs, t90_s=t90,
               hot_on_fast=round(frac, 3), daemon_cpu_s=round(cpu, 2),
               daemon_cpu_pct=round(100 * cpu / wall, 1), kdamond_cpu_s=round(kd, 2),
               rss_max_mib=round(rss_max / 1024, 1), wall_s=round(wall, 1), rc=rc)
    print("SCALE", res, flush=True)
    return res


def test_workload_started_last_among_many_is_promoted(tmp_path: Path) -> None:
    filler = fill_node(0, 700) if SAMPLER == "hint-faults" else None
    try:
        alone = run(tmp_path, "alone")
        others = Others(OTHERS, OTHER_MIB)
        try:
            among = run(tmp_path, f"among {OTHERS}")
        finally:
            others.stop()
    finally:
        if filler:
            filler.stop()
    ratio = (among["t90_s"] / alone["t90_s"]
             if among["t90_s"] and alone["t90_s"] else None)
    print(f"SCALE time to 90%: alone {alone['t90_s']} s, among {OTHERS} others "
          f"{among['t90_s']} s, ratio {ratio and round(ratio, 2)} (goal <= 2)", flush=True)
    for r in (alone, among):
        assert r["rc"] == 0, r
        assert r["t90_s"] is not None, r
        assert r["rss_max_mib"] < RSS_BOUND_MIB, r
