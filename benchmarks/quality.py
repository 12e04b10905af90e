#!/usr/bin/env python3
"""Promotion quality and what the application gets: kmigratedd vs the kernel's tiering vs
DAMON, side by side in one guest boot per case, each contender run several times.

    python3 benchmarks/quality.py                          # every case, 5 runs each (hours)
    python3 benchmarks/quality.py --cases full256,zipf --repeat 5
    python3 benchmarks/quality.py --cases startup --repeat 5
    python3 benchmarks/quality.py --render                 # re-render from raw JSON

Cases (the workload is tests/vm/workload: a hot and a cold set on the CPU-less node 1,
TLB-flush helper every 10 ms so accessed-bit samplers work under TCG; it reports its
accesses every second and asks move_pages(nodes=NULL) where its pages are):

* ``dense``, ``sparse``: a 128 MiB hot set (every page, or 1 page in 16) swept in a loop
  and 128 MiB cold, node 0 filled to 700 MiB free (``*:empty`` contenders: as booted);
* ``full128``, ``full256``: a full fast tier, node 0 of 4.5 GiB held by a fresh cold
  process down to 120 MiB free before each contender, so the hot set fits only if
  something makes room;
* ``zipf``: Zipf 0.99 accesses over a 512 MiB region, its hot pages spread by a fixed
  random permutation as hashed keys are, rotated half way through; node 0 full as above;
  ``zipf-empty``: the same with node 0 as booted;
* ``startup``: node 0 as booted, a 64 MiB dense hot set already running for 10 s when the
  mechanism starts.

Every contender of a case runs for the same time (``--run-s``), the contenders
interleaved, ``--repeat`` times.  The figures of each run (benchmarks/guest/quality.py):
t50/t90 of the hot set on node 0; the application's unhindered rate (the 75th percentile
of its accesses per second in the run), its rate against it, its stalls (seconds below
10% of it; total and longest) and its system time; the share of its accesses the fast
tier served, the best share possible with as many of its pages on the fast tier
(oracle) and the latency modelled from the guest's HMAT figures; the mechanism's CPU and
its CPU per GiB placed.  Writes benchmarks/results/quality.md, quality-<kernel>-<case>.png
and raw/quality-<kernel>-<case>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import md_table  # noqa: E402

FULL_MEM = ["4608M", "2048M"]
FULL = ["--full-free-mib", "120"]
# case -> (guest arguments, contenders, guest node memory or None, what it is)
CASES: dict[str, tuple[list[str], str, list[str] | None, str]] = {
    "dense": (["--hot-mib", "128", "--cold-mib", "128", "--run-s", "60"],
              "kmigratedd:auto,kmigratedd:damon,nb2:filled,nb2:empty,damon:migrate_hot,"
              "damon:migrate_hot-tuned", None,
              "128 MiB hot set swept in a loop + 128 MiB cold; node 0 filled to 700 MiB free "
              "(`*:empty`: node 0 as booted)"),
    "sparse": (["--hot-mib", "128", "--cold-mib", "128", "--sparse", "16", "--run-s", "60"],
               "kmigratedd:auto,kmigratedd:damon,nb2:filled,nb2:empty,damon:migrate_hot,"
               "damon:migrate_hot-tuned", None,
               "1 page in 16 of a 128 MiB region hot (2,048 pages) + 128 MiB cold; node 0 "
               "filled to 700 MiB free (`*:empty`: as booted)"),
    "full128": (["--hot-mib", "128", "--cold-mib", "128", "--run-s", "90", *FULL],
                "kmigratedd:auto,nb2:demote,damon:migrate_hot+cold", FULL_MEM,
                "a full fast tier: node 0 of 4.5 GiB held by a cold process down to 120 MiB "
                "free; 128 MiB hot + 128 MiB cold on node 1"),
    "full256": (["--hot-mib", "256", "--cold-mib", "128", "--run-s", "90", *FULL],
                "kmigratedd:auto,nb2:demote,damon:migrate_hot+cold", FULL_MEM,
                "a full fast tier as in full128, with a 256 MiB hot set"),
    "zipf": (["--hot-mib", "512", "--cold-mib", "0", "--zipf", "0.99", "--rotate",
              "--run-s", "90", *FULL],
             "kmigratedd:auto,nb2:demote,damon:migrate_hot+cold", FULL_MEM,
             "Zipf 0.99 over 512 MiB, hot pages spread by a fixed permutation, rotated at "
             "45 s; a full fast tier as in full128"),
    "zipf-empty": (["--hot-mib", "512", "--cold-mib", "0", "--zipf", "0.99", "--rotate",
                    "--run-s", "90", "--fill-free-mib", "0"],
                   "kmigratedd:auto,nb2:empty,damon:migrate_hot", FULL_MEM,
                   "Zipf 0.99 over 512 MiB as in zipf, node 0 (4.5 GiB) as booted"),
    "startup": (["--hot-mib", "64", "--cold-mib", "64", "--run-s", "30", "--lead-s", "10",
                 "--fill-free-mib", "0"],
                "kmigratedd:auto,nb2:empty", None,
                "a 64 MiB dense hot set + 64 MiB cold running for 10 s before the mechanism "
                "starts; node 0 as booted"),
}
IDLE_CONTENDERS = {"dense": "kmigratedd:auto,kmigratedd:idle,nb2:filled",
                   "full128": "kmigratedd:auto,kmigratedd:idle,nb2:demote"}


def raw_name(kernel: str, case: str) -> str:
    return f"quality-{kernel}-{case}.json"


def idle_kernel_ready() -> bool:
    r = subprocess.run(["bash", str(common.REPO / "tests/vm/build_kernel.sh"), "--print"],
                       capture_output=True, text=True)
    return r.returncode == 0


# --- summaries -----------------------------------------------------------------------


def spread(values: list[float | None], fmt: str = "{:.1f}") -> str:
    """'median (min-max)' of the values measured, 'n/r' where some run had none."""
    got = [v for v in values if v is not None]
    if not got:
        return "—"
    med = fmt.format(statistics.median(got))
    text = med if len(got) == 1 or min(got) == max(got) else (
        f"{med} ({fmt.format(min(got))}–{fmt.format(max(got))})")
    missing = len(values) - len(got)
    return text + (f", {missing} not reached" if missing else "")


def mech_cpu(r: dict[str, Any]) -> float | None:
    """CPU the mechanism spent: the daemon (and its kdamonds), DAMON's kdamonds, or the
    workload's extra system time where the kernel promotes in the faulting task."""
    c = r["contender"]
    if c.startswith("nb2"):
        return max(0.0, r["workload_extra_stime_s"])
    m = r.get("mechanism_cpu_s")
    if m is None:
        return None
    return m + (r.get("extra", {}).get("kdamond_cpu_s") or 0.0)


def by_contender(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if "app" in r:
            out.setdefault(r["contender"], []).append(r)
    return out


def summary_table(runs: list[dict[str, Any]], zipf: bool) -> str:
    headers = ["contender", "runs", "t90 s", "longest stall s, each run", "stall s",
               "rate / unhindered", "fast-tier share", "after rotation", "oracle share",
               "modelled latency ns", "workload sys s", "mechanism CPU s", "kswapd CPU s",
               "CPU s per GiB placed", "cold share of promoted"]
    rows = []
    for c, rs in by_contender(runs).items():
        app = [r["app"] for r in rs]
        rows.append([
            f"`{c}`", str(len(rs)),
            "—" if zipf else spread([r["t90_s"] for r in rs]),
            ", ".join(str(x["longest_stall_s"]) for x in app),
            spread([x["stall_s"] for x in app], "{:.0f}"),
            spread([x["rate_ratio_median"] for x in app], "{:.2f}"),
            spread([x["share"] for x in app], "{:.3f}"),
            spread([x["share_after_rotation"] for x in app], "{:.3f}") if zipf else "—",
            spread([x["oracle_share"] for x in app], "{:.3f}"),
            spread([x["latency_ns"] for x in app], "{:.0f}"),
            spread([r["workload_stime_s"] for r in rs]),
            spread([mech_cpu(r) for r in rs]),
            spread([r.get("kswapd_cpu_s") for r in rs]),
            spread([x["cpu_s_per_gib_placed"] for x in app]),
            "—" if zipf else spread([100 * r["cold_fraction_of_promoted"]
                                     if r["cold_fraction_of_promoted"] is not None else None
                                     for r in rs], "{:.1f}%")])
    return md_table(headers, rows, [False, True, True, False] + [True] * 11)


def full_table(runs: list[dict[str, Any]]) -> str:
    """The exchange: what the cold process gave up for the workload."""
    headers = ["contender", "hot on node 0 at the end", "workload cold set promoted",
               "promoted MiB", "cold process demoted MiB", "demoted / promoted", "verify"]
    rows = []
    for c, rs in by_contender(runs).items():
        prom = [r["promoted_pages"] * 4096 / (1 << 20) for r in rs]
        dem = [(r.get("filler") or {}).get("demoted_pages", 0) * 4096 / (1 << 20) for r in rs]
        rows.append([f"`{c}`",
                     spread([100 * r["hot_on_node0"] / r["hot_pages"] for r in rs], "{:.1f}%"),
                     spread([100 * (r["cold_fraction_of_cold_set"] or 0) for r in rs],
                            "{:.1f}%"),
                     spread(prom, "{:,.0f}"), spread(dem, "{:,.0f}"),
                     spread([d / p if p else None for d, p in zip(dem, prom)], "{:.2f}"),
                     "all OK" if all(r["verify_ok"] for r in rs) else
                     f"{sum(not r['verify_ok'] for r in rs)} BAD"])
    return md_table(headers, rows, [False] + [True] * 5 + [False])


def notes(data: dict[str, Any]) -> list[str]:
    """One line per contender: what the daemon, the kernel or DAMON did in its runs."""
    out = []
    for c, rs in by_contender(data["runs"]).items():
        vm = [r["vmstat_delta"] for r in rs]
        def count(key: str) -> str:
            return spread([v.get(key, 0) for v in vm], "{:,.0f}")

        line = (f"- `{c}`: pgpromote_success {count('pgpromote_success')}, numa_hint_faults "
                f"{count('numa_hint_faults')}, pgdemote_kswapd {count('pgdemote_kswapd')}, "
                f"pgdemote_direct {count('pgdemote_direct')}")
        if c.startswith("kmigratedd"):
            ex = [r.get("extra", {}) for r in rs]
            line += (f"; daemon promoted "
                     f"{spread([e.get('daemon_promoted') for e in ex], '{:,.0f}')} and demoted "
                     f"{spread([e.get('daemon_demoted') for e in ex], '{:,.0f}')} pages, "
                     f"start-up {spread([e.get('startup_s') for e in ex])} s, RSS "
                     f"{spread([(e.get('rss_kib') or 0) / 1024 for e in ex], '{:.0f}')} MiB")
        out.append(line)
    for c, why in data.get("skipped", {}).items():
        out.append(f"- `{c}`: not run — {why}")
    return out


def plot(data: dict[str, Any], path: Path, title: str) -> None:
    """Per second, in each contender's first run: the share of the application's accesses
    the fast tier served, and its accesses against its unhindered rate."""
    plt = common.ensure_matplotlib()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (c, rs) in enumerate(by_contender(data["runs"]).items()):
        iv = rs[0]["intervals"]
        if not iv:
            continue
        col = colors[i % len(colors)]
        t = [row[0] for row in iv]
        top.plot(t, [100 * row[2] / row[1] if row[1] else 0 for row in iv], "-", color=col,
                 lw=1.8, label=c)
        p75 = rs[0]["app"]["accesses_per_s_p75"] or 1
        bottom.plot(t, [row[1] / p75 for row in iv], "-", color=col, lw=1.2, label=c)
    top.set_ylabel("% of accesses served by node 0")
    top.set_ylim(-2, 102)
    bottom.set_ylabel("accesses/s ÷ unhindered")
    bottom.axhline(0.1, color="grey", lw=0.8, ls=":")
    bottom.set_xlabel("seconds since the mechanism was switched on (first run of each)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    top.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path.relative_to(common.REPO)}", flush=True)


def render(found: list[tuple[str, str, dict[str, Any]]]) -> str:
    out = ["# Promotion quality and what the application gets", "",
           "Command: `python3 benchmarks/quality.py` (raw data: "
           "`benchmarks/results/raw/quality-*.json`; each section names the command, date "
           "and number of runs it comes from).", ""]
    if found:
        out += [common.machine_line(found[0][2]["guest"], found[0][2]), ""]
    out += [f"> {common.TCG_CAVEAT}", "",
            "How to read: every contender of a case ran for the same time on a fresh copy of "
            "the workload, the contenders interleaved, each several times; a cell is the "
            "median over the runs and, in brackets, the lowest and highest. t=0 is when the "
            "mechanism was switched on (for kmigratedd: when the daemon logged `running`). "
            "*t90*: the first 1 s sample with 90% of the hot set on node 0. *longest stall*: "
            "the longest run of seconds in which the application made fewer than 10% of its "
            "unhindered accesses (the 75th percentile of its seconds in that run); *stall s*: "
            "all such seconds. *rate / unhindered*: the median second's accesses against "
            "that. *fast-tier share*: the share of all the application's accesses in the run "
            "that pages on node 0 served (move_pages(nodes=NULL) every second); *after "
            "rotation*: of those after the hot pages moved; *oracle*: what the same number "
            "of its pages on node 0 would have served, had they been each second's most "
            "accessed ones. *modelled latency*: the guest's HMAT read latencies of node 0 "
            "and node 1 weighted by the share (under TCG the slow node is only advertised as "
            "slower: this is the figure that carries over to hardware). *workload sys*: the "
            "application's system time in the run (hint faults, and the kernel's promotion "
            "in the faulting task). *mechanism CPU*: the daemon's utime+stime and its "
            "kdamonds', DAMON's kdamonds', or the workload's extra system time for the "
            "kernel's tiering; *kswapd CPU*: kswapd0's, which demotes for `nb2:demote` and "
            "for kmigratedd's default. *per GiB placed*: mechanism CPU over the workload's "
            "memory on node 0 at the end.", ""]
    for kernel, case, data in found:
        p = data["params"]
        what = CASES.get(case, ([], "", None, case))[3]
        lat = data.get("hmat_latency_ns") or {}
        out += [f"## {case}, kernel {kernel}: {what}", "",
                f"`{data.get('command', '?')}`, run {data['guest'].get('date', '?')}: "
                f"{p.get('repeat', 1)} run(s) of "
                f"{p.get('run_s') or p.get('bound_s')} s per contender, guest node memory "
                f"{data['guest'].get('node_mem_mib', '?')} MiB, HMAT read latency node 0 "
                f"{lat.get('0', '?')} ns, node 1 {lat.get('1', '?')} ns; host load average "
                f"right after: "
                f"{' / '.join(f'{x:.1f}' for x in data.get('host_load_after', []))}."
                + (f" {data['host_note']}" if data.get("host_note") else ""), "",
                summary_table(data["runs"], bool(p.get("zipf"))), ""]
        if p.get("full_free_mib"):
            out += [full_table(data["runs"]), ""]
        out += [*notes(data), "", f"![{case}](quality-{kernel}-{case}.png)", ""]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help="comma list of " + ",".join(CASES))
    ap.add_argument("--kernel", default="debian-6.12")
    ap.add_argument("--idle-kernel", choices=("auto", "yes", "no"), default="no",
                    help="also run the dense and full128 cases on the idle-tracking kernel "
                         "(auto: when it is built)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--contenders", default="", help="guest --contenders (default: the case's)")
    ap.add_argument("--render", action="store_true", help="only re-render from raw JSON")
    ap.add_argument("--timeout", type=float, default=5 * 3600)
    a = ap.parse_args()
    common.ensure_venv()
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if not a.render:
        todo = [(a.kernel, c) for c in cases]
        if a.idle_kernel != "no" and a.kernel != "idle":
            if idle_kernel_ready():
                todo += [("idle", c) for c in cases if c in IDLE_CONTENDERS]
            elif a.idle_kernel == "yes":
                sys.exit("the idle kernel is not built: bash tests/vm/build_kernel.sh")
        for kernel, case in todo:
            args, contenders, mem, _ = CASES[case]
            if kernel == "idle":
                contenders = IDLE_CONTENDERS[case]
            args = ["--out", str(common.RAW / raw_name(kernel, case)), "--case", case, *args,
                    "--repeat", str(a.repeat),
                    "--contenders", a.contenders or contenders]
            res = common.run_guest("quality.py", args, kernel=kernel, timeout=a.timeout,
                                   title=f"quality, {case} case, kernel {kernel}", mem=mem)
            f = common.RAW / raw_name(kernel, case)
            d = json.loads(f.read_text())
            d["host_load_after"] = res.host_load_after  # type: ignore[attr-defined]
            tcg = os.environ.get("KMIGRATEDD_VM_TCG_THREAD", "multi")
            d["host_note"] = (f"TCG {tcg}-threaded (the guest's 2 vCPUs in "
                              f"{'one host thread' if tcg == 'single' else 'two host threads'})"
                              ".")
            d["command"] = (f"python3 benchmarks/quality.py --cases {case} --repeat {a.repeat}"
                            + (f" --kernel {kernel}" if kernel != "debian-6.12" else "")
                            + (f" --contenders {a.contenders}" if a.contenders else ""))
            f.write_text(json.dumps(d, indent=1) + "\n")
    found = []
    for kernel in dict.fromkeys((a.kernel, "idle")):
        for case in CASES:  # every case on disk, not only those just run
            f = common.RAW / raw_name(kernel, case)
            if f.exists():
                d = json.loads(f.read_text())
                if any("app" in r for r in d.get("runs", [])):
                    found.append((kernel, case, d))
    if not found:
        sys.exit("no raw results to render")
    for kernel, case, data in found:
        plot(data, common.RESULTS / f"quality-{kernel}-{case}.png",
             f"{case}, kernel {kernel}, TCG: share of the application's accesses on node 0 "
             "(top) and its rate (bottom)")
    common.write_result("quality.md", render(found))
    for kernel, case, data in found:
        print(f"\n{case} ({kernel}):")
        print(summary_table(data["runs"], bool(data["params"].get("zipf"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
