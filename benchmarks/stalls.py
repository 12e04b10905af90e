#!/usr/bin/env python3
"""Where the application waits while a full fast tier's exchange runs.

    python3 benchmarks/stalls.py                       # tpp, default, batch512, nice0; 3 runs
    python3 benchmarks/stalls.py --contenders tpp,default --repeat 5
    python3 benchmarks/stalls.py --render

In the tiered guest (node 0 of 4.5 GiB held by a cold process down to 160 MiB free, a
256 MiB hot set on node 1 swept in a loop) each contender runs for 45 s, interleaved:
the kernel's tiering (``tpp``: numa_balancing=2 + demotion_enabled=1), kmigratedd's
embedded default, and the default with one choice undone (``batch512``:
workers.max_batch_ms 0, every move_pages call 512 pages; ``nice0``: daemon.nice 0).
The figures (benchmarks/guest/stalls.py): the workload's main thread's time running,
waiting for a CPU and blocked (schedstat), where it was blocked (its wait channel every
100 ms), its stalls (seconds below 10% of its 75th-percentile rate), the daemon's and
kswapd's CPU, the daemon's move_pages calls, and direct reclaim.  Writes
benchmarks/results/stalls.md and raw/stalls.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import md_table  # noqa: E402

RAW = "stalls.json"


def spread(values: list[float | None], fmt: str = "{:.1f}") -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "—"
    med = fmt.format(statistics.median(got))
    return med if min(got) == max(got) else f"{med} ({fmt.format(min(got))}–{fmt.format(max(got))})"


def table(runs: list[dict[str, Any]]) -> str:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["contender"], []).append(r)
    headers = ["contender", "runs", "longest stall s, each run", "stall s", "t90 s",
               "fast-tier share", "main thread running %", "waiting for a CPU %", "blocked %",
               "blocked in (wait channel, share of blocked samples)", "daemon CPU s",
               "kswapd CPU s", "move_pages ms per call", "µs per page", "direct reclaim"]
    rows = []
    for c, rs in by.items():
        chans: dict[str, int] = {}
        for r in rs:
            for k, v in r["blocked_samples"].items():
                chans[k] = chans.get(k, 0) + v
        total = sum(chans.values())
        where = ", ".join(f"{k.split(':', 1)[1] or '?'} {100 * v / total:.0f}%"
                          for k, v in sorted(chans.items(), key=lambda kv: -kv[1])[:2])
        rows.append([f"`{c}`", str(len(rs)), ", ".join(str(r["longest_stall_s"]) for r in rs),
                     spread([r["stall_s"] for r in rs], "{:.0f}"),
                     spread([r["t90_s"] for r in rs], "{:.0f}"),
                     spread([r["share"] for r in rs], "{:.3f}"),
                     spread([r["main_thread_pct"]["running"] for r in rs]),
                     spread([r["main_thread_pct"]["waiting_for_cpu"] for r in rs]),
                     spread([r["main_thread_pct"]["blocked"] for r in rs]),
                     where or "—",
                     spread([r["daemon_cpu_s"] if c != "tpp" else None for r in rs]),
                     spread([r["kswapd_cpu_s"] for r in rs]),
                     spread([r.get("move_ms_per_call") for r in rs]),
                     spread([r.get("move_us_per_page") for r in rs], "{:.0f}"),
                     spread([r["vmstat"].get("allocstall_movable", 0)
                             + r["vmstat"].get("allocstall_normal", 0) for r in rs], "{:.0f}")])
    return md_table(headers, rows, [False, True, False] + [True] * 6 + [False] + [True] * 5)


def render(data: dict[str, Any]) -> str:
    p = data["params"]
    return "\n".join([
        "# Where the application waits during an exchange", "",
        f"Command: `{data.get('command', 'python3 benchmarks/stalls.py')}`, run "
        f"{data['guest'].get('date', '?')}: {p['repeat']} run(s) of {p['run_s']:g} s per "
        f"contender, interleaved; node 0 of 4.5 GiB filled to {p['free_mib']:g} MiB free, a "
        f"{p['hot_mib']:g} MiB hot set and {p['cold_mib']:g} MiB cold on node 1.", "",
        common.machine_line(data["guest"], data), "",
        f"> {common.TCG_CAVEAT}", "",
        "Contenders: `tpp` the kernel's tiering (numa_balancing=2 + demotion_enabled=1); "
        "`default` kmigratedd's embedded default; `batch512` the default with "
        "workers.max_batch_ms 0 (every move_pages call 512 pages); `nice0` the default with "
        "daemon.nice 0. *longest stall*: the longest run of seconds in which the workload "
        "made fewer than 10% of its unhindered accesses (75th percentile of its seconds). "
        "*running / waiting for a CPU / blocked*: its main thread's time "
        "(/proc/PID/task/TID/schedstat), blocked being the rest; *blocked in*: the wait "
        "channel of the samples (every 100 ms) that found it blocked. *µs per page*: "
        "the daemon's time in move_pages over the pages it promoted. *direct reclaim*: "
        "allocstall events of the run.", "",
        table(data["runs"]), ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contenders", default="tpp,default,batch512,nice0")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--timeout", type=float, default=4 * 3600)
    a = ap.parse_args()
    common.ensure_venv()
    raw = common.RAW / RAW
    if not a.render:
        res = common.run_guest("stalls.py", ["--out", str(raw), "--contenders", a.contenders,
                                             "--repeat", str(a.repeat)],
                               timeout=a.timeout, title="stalls", mem=["4608M", "2048M"])
        d = json.loads(raw.read_text())
        d["host_load_after"] = res.host_load_after  # type: ignore[attr-defined]
        d["command"] = (f"python3 benchmarks/stalls.py --contenders {a.contenders} "
                        f"--repeat {a.repeat}")
        raw.write_text(json.dumps(d, indent=1) + "\n")
    data = json.loads(raw.read_text())
    common.write_result("stalls.md", render(data))
    print(table(data["runs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
