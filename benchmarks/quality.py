#!/usr/bin/env python3
"""Promotion quality: kmigratedd vs numa_balancing=2 vs DAMON migrate_hot, side by side.

    python3 benchmarks/quality.py               # ~40-60 min: several VM boots
    python3 benchmarks/quality.py --cases full128,full256 --idle-kernel no
    python3 benchmarks/quality.py --cases dense --bound-s 60
    python3 benchmarks/quality.py --render      # re-render from raw JSON

For each case (``dense``: 128 MiB hot + 128 MiB cold; ``sparse``: the same with only
1 page in 16 of the hot region hot, the other 15 cold and interleaved) the tiered
guest runs the same workload (tests/vm/workload, hot and cold set on the CPU-less
node 1, TLB-flush helper every 10 ms so access-bit samplers work under TCG) once per
contender, in one boot:

* ``kmigratedd:<sampler>`` — the daemon with each sampler the kernel offers and
  kmigratedd registers (hint-faults, damon; idle on the idle kernel), defaults
  otherwise (rate limit 256 MB/s, batches of 512, 1 s sampling interval);
* ``nb2:filled`` / ``nb2:empty`` — the kernel's NUMA-balancing tiering mode with its
  default knobs, with node 0 filled to 700 MiB free (below the kernel's free-space
  threshold, the regime kmigratedd's hint-fault sampler needs) or as booted;
* ``damon:migrate_hot`` — DAMOS migrate_hot (paddr, node 1's physical memory,
  target_nid 0) with the attributes of kmigratedd's damon sampler, and
  ``damon:migrate_hot-tuned``, stricter: nr_accesses >= half the samples and a
  young-page filter.

The full fast tier cases (``full128``, ``full256``: a hot set of 128 or 256 MiB plus
128 MiB cold on node 1) boot a guest with a 4.5 GiB node 0, and before each contender a
fresh cold process fills node 0 to 120 MiB free: the hot set only fits if something
makes room.  Contenders there: ``kmigratedd:<sampler>`` with its default demotion,
``nb2:demote`` (numa_balancing=2 with demotion_enabled=1, the kernel's TPP setup) and
``damon:migrate_hot+cold`` (migrate_hot as above plus a second kdamond running DAMOS
migrate_cold on node 0's physical memory: regions idle for 5 s, young pages excluded).
Their figures add the cold process's pages demoted against the workload's promoted.

Every contender of the dense and sparse cases but ``nb2:empty`` runs with node 0
filled to 700 MiB free.  Figures:
time until 50% / 90% of the hot set is on node 0, cold pages promoted, mechanism CPU,
the workload's extra system time, vmstat deltas, workload passes/s (TCG caveat).
Writes benchmarks/results/quality.md, quality-<kernel>-<case>.png and
raw/quality-<kernel>-<case>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import fmt_opt, md_table  # noqa: E402

CASES = {"dense": 1, "sparse": 16}
# The full fast tier: node 0 of 4.5 GiB held by a cold process down to FULL_FREE_MIB free
# before each contender, and a hot set of this many MiB (plus 128 MiB cold) on node 1.
FULL_CASES = {"full128": 128, "full256": 256}
FULL_FREE_MIB = 120
FULL_MEM = ["4608M", "2048M"]
FULL_CONTENDERS = ("kmigratedd:auto,kmigratedd:hint-faults/damon-paddr,kmigratedd:damon,"
                   "kmigratedd:damon/kswapd,nb2:demote,damon:migrate_hot+cold")
FULL_IDLE_CONTENDERS = "kmigratedd:auto,kmigratedd:idle,nb2:demote"


def raw_name(kernel: str, case: str) -> str:
    return f"quality-{kernel}-{case}.json"


def idle_kernel_ready() -> bool:
    r = subprocess.run(["bash", str(common.REPO / "tests/vm/build_kernel.sh"), "--print"],
                       capture_output=True, text=True)
    return r.returncode == 0


def registered_samplers() -> set[str]:
    from kmigratedd.samplers import FACTORIES

    return set(FACTORIES)


def describe_regime(r: dict[str, Any]) -> str:
    reg = r["regime"]
    free = r["node0_free_at_start_mib"]
    s = f"node 0 {reg['node0']} ({free:.0f} MiB free)"
    above = free > reg["threshold_mib"]
    if r["contender"].startswith("nb2"):
        s += (": kernel promotes every faulting page" if above
              else ": kernel hot-threshold + rate-limit path")
    elif r["contender"] == "kmigratedd:hint-faults":
        s += (": the kernel would promote itself" if above
              else ": kernel promotes nothing (rate limit 0), faults go to kmigratedd")
    return s


def cpu_cell(r: dict[str, Any]) -> str:
    c = r["contender"]
    m = r.get("mechanism_cpu_s")
    ex = r.get("extra", {})
    if c.startswith("kmigratedd"):
        s = f"{m:.2f} daemon"
        if ex.get("kdamond_cpu_s") is not None:
            s += f" + {ex['kdamond_cpu_s']:.2f} kdamond"
        return s
    if c.startswith("damon"):
        return f"{m:.2f} kdamond"
    return "in the workload (next column)"


def table(runs: list[dict[str, Any]]) -> str:
    headers = ["contender", "regime", "t50 s", "t90 s", "hot on node 0", "pages promoted",
               "cold share of promoted", "cold set promoted", "mechanism CPU s",
               "workload extra sys s", "passes/s before → during", "verify"]
    rows = []
    for r in runs:
        cs = r.get("cold_fraction_of_promoted")
        rows.append([
            f"`{r['contender']}`", describe_regime(r), fmt_opt(r["t50_s"]),
            fmt_opt(r["t90_s"]), f"{100 * r['hot_on_node0'] / r['hot_pages']:.1f}%",
            f"{r['promoted_pages']:,}", "—" if cs is None else f"{100 * cs:.1f}%",
            f"{100 * (r['cold_fraction_of_cold_set'] or 0):.1f}%", cpu_cell(r),
            f"{r['workload_extra_stime_s']:+.2f}",
            f"{r['passes_per_s_before']:,.0f} → {r['passes_per_s_during']:,.0f}",
            "OK" if r["verify_ok"] else "BAD"])
    right = [False, False] + [True] * 9 + [False]
    return md_table(headers, rows, right)


def full_table(runs: list[dict[str, Any]]) -> str:
    headers = ["contender", "t50 s", "t90 s", "hot on node 0", "cold share of promoted",
               "workload cold set promoted", "promoted MiB", "cold process demoted MiB",
               "demoted / promoted", "mechanism CPU s", "verify"]
    rows = []
    for r in runs:
        cs = r.get("cold_fraction_of_promoted")
        f = r.get("filler") or {}
        prom = r["promoted_pages"] * 4096 / (1 << 20)
        dem = f.get("demoted_pages", 0) * 4096 / (1 << 20)
        rows.append([
            f"`{r['contender']}`", fmt_opt(r["t50_s"]), fmt_opt(r["t90_s"]),
            f"{100 * r['hot_on_node0'] / r['hot_pages']:.1f}%",
            "—" if cs is None else f"{100 * cs:.1f}%",
            f"{100 * (r['cold_fraction_of_cold_set'] or 0):.1f}%", f"{prom:,.0f}",
            f"{dem:,.0f}", f"{dem / prom:.2f}" if prom else "—", cpu_cell(r),
            "OK" if r["verify_ok"] else "BAD"])
    return md_table(headers, rows, [False] + [True] * 9 + [False])


def notes(data: dict[str, Any]) -> list[str]:
    out = []
    for r in data["runs"]:
        ex = r.get("extra", {})
        c = r["contender"]
        vm = r["vmstat_delta"]
        line = (f"- `{c}`: ran {r['wall_s']:.0f} s; vmstat: pgmigrate_success "
                f"+{vm['pgmigrate_success']:,}, pgpromote_success +{vm['pgpromote_success']:,} "
                f"(candidates +{vm['pgpromote_candidate']:,}), "
                f"numa_hint_faults +{vm['numa_hint_faults']:,}, numa_pte_updates "
                f"+{vm['numa_pte_updates']:,}")
        if vm.get("pgdemote_kswapd") or vm.get("pgdemote_direct"):
            line += (f", pgdemote_kswapd +{vm.get('pgdemote_kswapd', 0):,}, pgdemote_direct "
                     f"+{vm.get('pgdemote_direct', 0):,}")
        if c.startswith("kmigratedd"):
            if ex.get("daemon_demoted"):
                line += f"; daemon counted {ex['daemon_demoted']:,.0f} demoted"
            line += (f"; daemon start-up {ex.get('startup_s', 0):.1f} s (before t=0, not in "
                     f"t50/t90), daemon counted {ex.get('daemon_promoted', 0):,.0f} promoted "
                     f"in {ex.get('daemon_batches', 0):,.0f} batches, RSS "
                     f"{ex.get('rss_kib', 0) / 1024:.0f} MiB")
            if ex.get("daemon_dropped"):
                line += "; worker dropped " + ", ".join(
                    f"{v:,.0f} {k}" for k, v in ex["daemon_dropped"].items())
            if ex.get("log_warnings"):
                line += "; daemon warned: " + " / ".join(f"“{w}”" for w in ex["log_warnings"])
        elif c.startswith("nb2"):
            line += "; knobs " + ", ".join(f"{k.replace('numa_balancing_', '')}={v}"
                                           for k, v in ex.get("knobs", {}).items())
        elif c.startswith("damon"):
            st = ex.get("scheme_stats", {})
            at = ex.get("attrs", {})
            line += (f"; DAMOS stats: tried {st.get('sz_tried', 0) / (1 << 20):,.0f} MiB, "
                     f"applied {st.get('sz_applied', 0) / (1 << 20):,.0f} MiB; attrs {at}; "
                     f"monitored {ex.get('monitored_ranges')}")
            cold = ex.get("cold_scheme_stats") or {}
            if cold:
                line += (f"; migrate_cold on node 0: tried "
                         f"{cold.get('sz_tried', 0) / (1 << 20):,.0f} MiB, applied "
                         f"{cold.get('sz_applied', 0) / (1 << 20):,.0f} MiB")
        out.append(line)
    for c, why in data.get("skipped", {}).items():
        out.append(f"- `{c}`: not run — {why}")
    return out


def plot(data: dict[str, Any], path: Path, title: str) -> None:
    plt = common.ensure_matplotlib()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(data["runs"]):
        s = r["series"]
        if not s:
            continue
        col = colors[i % len(colors)]
        t = [p[0] for p in s]
        ax.plot(t, [100 * p[1] for p in s], "-", color=col, lw=2,
                label=f"{r['contender']} — hot set")
        ax.plot(t, [100 * p[2] for p in s], ":", color=col, lw=1.5,
                label=f"{r['contender']} — cold set")
    ax.set_xlabel("seconds since the mechanism was switched on")
    ax.set_ylabel("% of the set on node 0 (fast)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path.relative_to(common.REPO)}", flush=True)


def render(found: list[tuple[str, str, dict[str, Any]]]) -> str:
    out = ["# Promotion quality: kmigratedd vs numa_balancing=2 vs DAMON migrate_hot", "",
           "Command: `python3 benchmarks/quality.py` (raw data: "
           "`benchmarks/results/raw/quality-*.json`).", ""]
    if found:
        out += [common.machine_line(found[0][2]["guest"], found[0][2]), ""]
    out += [f"> {common.TCG_CAVEAT}", ">", f"> {common.PASS_RATE_CAVEAT}", "",
            "How to read: each contender ran alone on a fresh copy of the same workload (hot "
            "and cold set on the CPU-less node 1, hot pages read+written in a loop, cold "
            "pages written once, TLB-flush helper every 10 ms). t=0 is when the mechanism was "
            "switched on (for kmigratedd: when the daemon logged `running`). *t50/t90*: first "
            "1 s sample with 50% / 90% of the hot set on node 0. *cold share of promoted*: "
            "cold pages among all of the workload's pages found on node 0 at the end (all "
            "started on node 1). *mechanism CPU*: daemon utime+stime, kdamond thread time. "
            "*workload extra sys*: the workload's system time during the run minus its "
            "baseline rate — where hint faults, NUMA-balancing PTE scanning and the kernel's "
            "synchronous promotion are charged (noise about ±1 s; meaningless — strongly negative "
            "— when the mechanism itself keeps a vCPU busy and the workload gets less CPU). "
            "*regime*: node 0's free "
            "memory at the start against the kernel's free-space threshold "
            "(pgdat_free_space_enough: max(1 GiB, 1/16 node) above the high watermark): above "
            "it numa_balancing=2 promotes every faulting slow-tier page at once; below it the "
            "kernel applies its hot threshold and rate limit, and kmigratedd's hint-fault "
            "sampler (rate limit 0) gets the faults to itself.", ""]
    for kernel, case, data in found:
        p = data["params"]
        thr = data.get("kernel_promote_threshold_mib", 0)
        if case in FULL_CASES:
            f0 = next((r.get("filler") for r in data["runs"] if r.get("filler")), None) or {}
            out += [f"## {case}: a full fast tier, {p['hot_mib']:g} MiB hot + "
                    f"{p['cold_mib']:g} MiB cold on node 1, kernel {kernel}", "",
                    f"Run {data['guest'].get('date', '?')}, guest node memory "
                    f"{data['guest'].get('node_mem_mib', '?')} MiB, host load average right "
                    f"after: {' / '.join(f'{x:.1f}' for x in data.get('host_load_after', []))}.",
                    "",
                    f"Node 0 of 4.5 GiB: before each contender a fresh cold process fills it "
                    f"to {p['full_free_mib']:g} MiB free (about "
                    f"{f0.get('pages', 0) * 4096 / (1 << 20):,.0f} MiB of cold anonymous "
                    f"memory), less than the hot set. Bound {p['bound_s']:g} s per contender "
                    f"(stops {p['tail_s']:g} s after t90). *cold process demoted*: its pages "
                    "found on node 1 at the end; *demoted / promoted*: that against the "
                    "workload's pages on node 0 (1.0 = an exact exchange; the headroom "
                    "kmigratedd keeps free adds to it).", "",
                    full_table(data["runs"]), "", *notes(data), "",
                    f"![{case}](quality-{kernel}-{case}.png)", ""]
            continue
        out += [f"## {case}: {p['hot_mib']:g} MiB hot region"
                + (f" (1 page in {p['sparse']} hot: {data['runs'][0]['hot_pages'] if data['runs'] else '?'} hot pages)"
                   if p["sparse"] > 1 else "")
                + f" + {p['cold_mib']:g} MiB cold, kernel {kernel}", "",
                f"Bound {p['bound_s']:g} s per contender (stops {p['tail_s']:g} s after "
                f"t90); node 0 filled to {p['fill_free_mib']:g} MiB free except `nb2:empty`; "
                f"kernel free-space threshold {thr:.0f} MiB.", "",
                table(data["runs"]), "", *notes(data), "",
                f"![{case}](quality-{kernel}-{case}.png)", ""]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="dense,sparse,full128,full256",
                    help="comma list of dense,sparse,full128,full256")
    ap.add_argument("--kernel", default="debian-6.12")
    ap.add_argument("--idle-kernel", choices=("auto", "yes", "no"), default="auto",
                    help="also run kmigratedd's idle sampler on the idle kernel "
                         "(auto: when that kernel is built and the sampler registered)")
    ap.add_argument("--hot-mib", type=float, default=128)
    ap.add_argument("--cold-mib", type=float, default=128)
    ap.add_argument("--bound-s", type=float, default=120)
    ap.add_argument("--tail-s", type=float, default=10)
    ap.add_argument("--full-bound-s", type=float, default=180,
                    help="bound per contender in the full fast tier cases")
    ap.add_argument("--contenders", default="", help="guest --contenders (default: all)")
    ap.add_argument("--render", action="store_true", help="only re-render from raw JSON")
    ap.add_argument("--timeout", type=float, default=2400)
    a = ap.parse_args()
    common.ensure_venv()
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    runs: list[tuple[str, str]] = [(a.kernel, c) for c in cases]
    if not a.render:
        extra_kernel = None
        if a.idle_kernel != "no" and a.kernel != "idle":
            ready, reg = idle_kernel_ready(), "idle" in registered_samplers()
            if ready and reg:
                extra_kernel = "idle"
            elif a.idle_kernel == "yes":
                sys.exit(f"idle kernel built: {ready}; idle sampler registered: {reg}")
            else:
                print(f"note: not running the idle sampler (idle kernel built: {ready}; "
                      f"registered in kmigratedd.samplers: {reg})", flush=True)
        todo = list(runs)
        if extra_kernel:
            todo += [(extra_kernel, c) for c in cases]
        for kernel, case in todo:
            full = case in FULL_CASES
            args = ["--out", str(common.RAW / raw_name(kernel, case)), "--case", case,
                    "--hot-mib", str(FULL_CASES[case] if full else a.hot_mib),
                    "--cold-mib", str(a.cold_mib),
                    "--sparse", str(CASES.get(case, 1)),
                    "--bound-s", str(a.full_bound_s if full else a.bound_s),
                    "--tail-s", str(a.tail_s)]
            if full:
                args += ["--full-free-mib", str(FULL_FREE_MIB)]
            if kernel == "idle" and kernel != a.kernel:
                args += ["--contenders", FULL_IDLE_CONTENDERS if full else
                         "kmigratedd:auto,kmigratedd:idle,kmigratedd:hint-faults,nb2:filled"]
            elif a.contenders:
                args += ["--contenders", a.contenders]
            elif full:
                args += ["--contenders", FULL_CONTENDERS]
            res = common.run_guest("quality.py", args, kernel=kernel, timeout=a.timeout,
                                   title=f"quality, {case} case, kernel {kernel}",
                                   mem=FULL_MEM if full else None)
            f = common.RAW / raw_name(kernel, case)
            d = json.loads(f.read_text())
            d["host_load_after"] = res.host_load_after  # type: ignore[attr-defined]
            f.write_text(json.dumps(d, indent=1) + "\n")
    found = []
    for kernel in dict.fromkeys((a.kernel, "idle")):
        for case in (*CASES, *FULL_CASES):  # every case on disk, not only those just run
            f = common.RAW / raw_name(kernel, case)
            if f.exists():
                found.append((kernel, case, json.loads(f.read_text())))
    if not found:
        sys.exit("no raw results to render")
    for kernel, case, data in found:
        plot(data, common.RESULTS / f"quality-{kernel}-{case}.png",
             f"Hot set (solid) and cold set (dotted) on node 0 — {case} case, {kernel}, TCG")
    common.write_result("quality.md", render(found))
    for kernel, case, data in found:
        print(f"\n{case} ({kernel}):")
        print(full_table(data["runs"]) if case in FULL_CASES else table(data["runs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
