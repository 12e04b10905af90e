"""Guest half of benchmarks/soak.py: an hour of exchange churn, the daemon sampled every
minute.

Node 0 is held by cold processes down to about 120 MiB free.  Every ``--rotate-s`` a new
workload starts with a 256 MiB hot set (Zipf-distributed accesses) on node 1 and the one
before it stops, and node 0 is topped up to 120 MiB free again: each cycle is an exchange
on a full fast tier (kmigratedd on its embedded default config promotes, kswapd demotes
the cold processes' pages).  The oldest top-up process is stopped once three are held,
so that the slow node does not fill up with demoted pages.  Every minute: the daemon's
RSS, its open file descriptors, its threads, its CPU seconds, and the pages it promoted.
Every workload's data is verified before it stops.  Writes one JSON file (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import gcommon as g  # noqa: F401  (sys.path: the guest test helpers)
from daemonproc import DaemonProcess, proc_cpu_seconds
from workload import Workload, fill_node


def sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_kib": int(fields["VmRSS"].split()[0]),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"]),
            "cpu_s": round(proc_cpu_seconds(pid), 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=int, default=60)
    ap.add_argument("--rotate-s", type=float, default=180)
    a = ap.parse_args()
    filler = fill_node(0, 120)
    topups: list[Workload] = []
    rows = []
    cycles, ok = 0, True
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"soak-{os.getpid()}"
    tmp.mkdir(mode=0o700)
    w = Workload(256, 0, node=1, flush_ms=10, zipf=0.99)
    try:
        d = DaemonProcess(f"metrics:\n  port: 0\ncontrol:\n  socket_path: {tmp}/c.sock\n"
                          f"sampler:\n  hint_faults:\n    state_file: {tmp}/s/state.json\n",
                          tmp, echo=lambda line: None)
        d.wait_running()
        t0 = last_rot = time.monotonic()
        for minute in range(a.minutes + 1):
            while time.monotonic() < t0 + 60 * minute:
                time.sleep(1)
                if time.monotonic() - last_rot >= a.rotate_s:
                    ok = w.verify() and ok
                    w.stop()
                    top = fill_node(0, 120)
                    if top is not None:
                        topups.append(top)
                    if len(topups) > 3:
                        old = topups.pop(0)
                        ok = old.verify() and ok
                        old.stop()
                    w = Workload(256, 0, node=1, flush_ms=10, zipf=0.99)
                    cycles += 1
                    last_rot = time.monotonic()
            row = {"minute": minute, **sample(d.proc.pid), "cycles": cycles,
                   "promoted": d.metric_sum("kmigratedd_promoted_pages_total")}
            rows.append(row)
            print(f"  minute {minute:3d}: RSS {row['rss_kib'] / 1024:6.1f} MiB, "
                  f"{row['fds']} fds, {row['threads']} threads, CPU {row['cpu_s']:.0f} s, "
                  f"promoted {row['promoted']:.0f} pages, {cycles} exchanges", flush=True)
        assert d.stop() == 0
        ok = w.verify() and ok
    finally:
        w.stop()
        for f in (*topups, filler):
            if f is not None:
                ok = f.verify() and ok
                f.stop()
    Path(a.out).write_text(json.dumps({"guest": g.guest_info(), "rows": rows,
                                       "verify": ok, "rotate_s": a.rotate_s}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
