"""Memory pressure holds promotion back (Debian 6.12, 2-node guest): the workload's cgroup
stalls on memory, and kmigratedd waits until it no longer does.

A cgroup /app holds the workload (in /app/work: a 64 MiB hot set on node 1, node 0 filled
below the kernel's own promotion threshold, so every promotion is kmigratedd's) and, in
/app/hog with memory.high far below what it touches, a process that allocates and frees
in a loop: the kernel throttles it at every allocation (mem_cgroup_handle_over_high), a
memory stall that PSI counts in /app's memory.pressure.  kmigratedd watches /app
(scope.cgroups) with the default workers.pressure_hold_percent: while the hog runs,
promotion is held (kmigratedd_pressure_held, the status) and the hot set stays on node 1;
once it is gone, the hot set is promoted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemonproc import DaemonProcess
from workload import Workload, fill_node

KERNEL = os.environ.get("KMIGRATEDD_VM_KERNEL", "")
CG = Path("/sys/fs/cgroup")
HOLD_S = 20
BOUND_S = 120

pytestmark = pytest.mark.skipif(KERNEL != "debian-6.12", reason="the Debian 6.12 guest")

HOG = """
import mmap
while True:
    m = mmap.mmap(-1, 64 << 20)
    for off in range(0, 64 << 20, 4096):
        m[off] = 1
    m.close()
"""


def enter(cgroup: Path) -> None:
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))


def test_memory_pressure_in_the_workloads_cgroup_holds_promotion(tmp_path: Path) -> None:
    if "memory" not in (CG / "cgroup.controllers").read_text().split():
        pytest.skip("no memory controller in the guest's cgroup v2")
    (CG / "cgroup.subtree_control").write_text("+memory")
    app = CG / "app"
    work_cg, hog_cg = app / "work", app / "hog"
    app.mkdir(exist_ok=True)
    # cgroup v2 keeps processes in leaves only once a cgroup hands controllers down:
    # /app/work holds the workload, /app/hog the hog, and /app (the scope) both.
    (app / "cgroup.subtree_control").write_text("+memory")
    work_cg.mkdir(exist_ok=True)
    hog_cg.mkdir(exist_ok=True)
    (hog_cg / "memory.high").write_text(str(16 << 20))
    filler = fill_node(0, 700)
    hog = None
    try:
        # The workload in /app/work (started from a child that moved itself there first).
        with Workload(64, 0, node=1, flush_ms=10, preexec=lambda: enter(work_cg)) as w:
            hog = subprocess.Popen([sys.executable, "-c", HOG],
                                   preexec_fn=lambda: enter(hog_cg))
            time.sleep(5)
            cfg = (f"sampler:\n  hint_faults:\n    state_file: {tmp_path}/state.json\n"
                   f"scope:\n  cgroups: [/app]\n"
                   f"metrics:\n  port: 0\ncontrol:\n  socket_path: {tmp_path}/c.sock\n")
            d = DaemonProcess(cfg, tmp_path)
            try:
                d.wait_running()
                held_seen = False
                t0 = time.monotonic()
                while time.monotonic() - t0 < HOLD_S:
                    time.sleep(2)
                    held_seen = held_seen or d.metric_sum("kmigratedd_pressure_held") == 1
                on_node0 = w.fraction_on(w.hot, 0)
                promoted = d.metric_sum("kmigratedd_promoted_pages_total")
                held_s = d.metric_sum("kmigratedd_pressure_held_seconds_total")
                ratio = d.metric_sum("kmigratedd_memory_pressure_ratio", source="/app")
                st = d.status()
                print(f"RESULT while the hog ran: held {held_seen}, /app pressure "
                      f"{100 * ratio:.0f}%, held {held_s:.1f} s, promoted {promoted:.0f}, hot "
                      f"set on node 0 {100 * on_node0:.1f}%; status pressure {st['pressure']}")
                assert held_seen and st["pressure"]["sources"]["/app"]["watch"] == "some"
                assert held_s > 5 and on_node0 < 0.1, "promotion went on under pressure"
                hog.kill()
                hog.wait()
                t1 = time.monotonic()
                while time.monotonic() - t1 < BOUND_S and w.fraction_on(w.hot, 0) < 0.9:
                    time.sleep(1)
                t90 = time.monotonic() - t1
                on_node0 = w.fraction_on(w.hot, 0)
                print(f"RESULT after the hog exited: 90% of the hot set on node 0 after "
                      f"{t90:.1f} s ({100 * on_node0:.1f}%), pressure held "
                      f"{d.metric_sum('kmigratedd_pressure_held'):.0f}")
                assert on_node0 >= 0.9
            finally:
                assert d.stop() == 0
            assert w.verify()
    finally:
        if hog is not None and hog.poll() is None:
            hog.kill()
        if filler is not None:
            filler.stop()
