#!/usr/bin/env python3
"""Build deploy/grafana/kmigratedd.json, the kmigratedd Grafana dashboard.

    python3 deploy/grafana/build_dashboard.py           # rewrite kmigratedd.json
    python3 deploy/grafana/build_dashboard.py --check   # exit 1 if it is stale

The JSON is what operators import (Dashboards → New → Import, or a provisioning
directory); this script is where it is edited.  Each panel below is a title, a
unit and its PromQL, nothing else: layout, data source, legend and tooltip
settings are filled in the same way for every panel, so the two dozen panels cannot
drift apart the way hand-edited JSON does.  No dependency beyond the standard
library (tests/test_deploy.py checks that the JSON is up to date).

Conventions of the queries:
- every selector carries ``instance=~"$instance"`` and, where the series have a
  node, ``node=~"$node"`` (a worker's node is the fast node it promotes to);
- every rate() uses ``[$__rate_interval]``;
- every query returns series for a daemon that is promoting; where a series
  only exists after something unusual happened (a whole-call move_pages
  error), the query falls back to an explicit 0 for each worker, labelled
  reason="none" (see ``call_errors``): a real zero, not a placeholder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().with_name("kmigratedd.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
I = 'instance=~"$instance"'                     # noqa: E741 - reads like the label
IN = 'instance=~"$instance", node=~"$node"'
RI = "[$__rate_interval]"


def rate(metric: str, sel: str = I, by: str = "instance, node") -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}{RI}))"


def quantiles(metric: str, by: str = "instance, node") -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{IN}}}{RI})))",
             f"{{{{instance}}}} node {{{{node}}}} p{int(q * 100)}") for q in (0.5, 0.9, 0.99)]


def pair_rate(metric: str) -> str:
    # A pair is shown when either end is one of the selected nodes.
    by = "instance, src_node, dst_node"
    src = rate(metric, I + ', src_node=~"$node"', by)
    dst = rate(metric, I + ', dst_node=~"$node"', by)
    return f"{src}\nor\n{dst}"


VMSTAT_RX = 'counter=~"pgpromote.*|pgdemote.*"'

# Whole-call move_pages errors exist only once one happened; for a worker with
# none, the query yields a real 0 (that worker's batch rate times 0) labelled
# reason="none", so the panel shows "no errors" instead of "no data".
call_errors = (rate("kmigratedd_move_call_errors_total", IN, "instance, node, reason")
               + "\nor on (instance, node)\nlabel_replace(0 * "
               + rate("kmigratedd_batches_total", IN) + ', "reason", "none", "", "")')

# Failed share of the per-page outcomes; a worker whose pages all moved has no
# non-"moved" series, so it gets an explicit 0 numerator (on its own labels).
outcomes_all = rate("kmigratedd_page_outcomes_total", IN)
outcomes_failed = rate("kmigratedd_page_outcomes_total", IN + ', reason!="moved"')
failed = f"(\n  {outcomes_failed}\n  or 0 * {outcomes_all}\n)\n/ {outcomes_all}"

lost = rate("kmigratedd_perf_samples_lost_total", I, "instance, sampler")
samples = rate("kmigratedd_sampler_samples_total", I, "instance, sampler")

# (row title, [panel]); panel = (kind, title, unit, description, [(expr, legend)]),
# kind: timeseries, stat, or info (a stat showing the legend of an always-1 series).
ROWS: list[tuple[str, list[tuple[str, str, str, str, list[tuple[str, str]]]]]] = [
    ("Overview", [
        ("info", "Version", "none", "kmigratedd_build_info: the version each instance runs.",
         [(f"kmigratedd_build_info{{{I}}}", "{{instance}} {{version}}")]),
        ("info", "Sampler", "none", "The hotness sampler in use (sampler.name, or what auto "
         "picked).", [(f"kmigratedd_sampler_active{{{I}}}", "{{instance}} {{sampler}}")]),
        ("stat", "Scrape up", "none", "1 when Prometheus scraped the instance last time.",
         [(f"up{{{I}}}", "{{instance}}")]),
        ("stat", "Paused / dry run", "none", "1 while promotion is paused (kmigratedctl "
         "pause) or in dry-run mode (nothing is moved).",
         [(f"kmigratedd_paused{{{I}}}", "{{instance}} paused"),
          (f"kmigratedd_dry_run{{{I}}}", "{{instance}} dry run")]),
    ]),
    ("Promotion", [
        ("timeseries", "Promotion rate per node pair", "pages/s",
         "Pages kmigratedd promoted per second, by source → destination node.",
         [(pair_rate("kmigratedd_promoted_pages_total"),
           "{{instance}} {{src_node}} → {{dst_node}}")]),
        ("timeseries", "Promotion throughput per node pair", "Bps",
         "Bytes kmigratedd promoted per second, by source → destination node "
         "(workers.rate_limit_mb_per_s caps it per target node).",
         [(pair_rate("kmigratedd_promoted_bytes_total"),
           "{{instance}} {{src_node}} → {{dst_node}}")]),
        ("timeseries", "kmigratedd vs the kernel: promotions and demotions", "pages/s",
         "Our promotions beside the kernel's own counters from /proc/vmstat: pgpromote_* "
         "(NUMA-balancing promotion in the faulting task), pgdemote_* (reclaim demoting to "
         "a slower tier) and pgmigrate_success (every migration, ours included).",
         [(rate("kmigratedd_promoted_pages_total", I, "instance"), "{{instance}} kmigratedd"),
          (rate("kmigratedd_kernel_vmstat_total", f"{I}, {VMSTAT_RX}", "instance, counter"),
           "{{instance}} kernel {{counter}}"),
          (rate("kmigratedd_kernel_vmstat_total", f'{I}, counter="pgmigrate_success"',
                "instance, counter"), "{{instance}} kernel {{counter}}")]),
        ("timeseries", "Kernel promotions and demotions per node", "pages/s",
         "pgpromote_* and pgdemote_* of each node's vmstat "
         "(/sys/devices/system/node/node*/vmstat).",
         [(rate("kmigratedd_kernel_node_vmstat_total", f"{IN}, {VMSTAT_RX}",
                "instance, node, counter"), "{{instance}} node {{node}} {{counter}}")]),
    ]),
    ("Exchange (full fast tier)", [
        ("timeseries", "Promoted vs demoted to make room", "Bps",
         "Bytes promoted beside the cold bytes demoted to make room for them (demotion.*), "
         "by source → destination node.",
         [(pair_rate("kmigratedd_promoted_bytes_total"),
           "{{instance}} promoted {{src_node}} → {{dst_node}}"),
          (pair_rate("kmigratedd_demoted_bytes_total"),
           "{{instance}} demoted {{src_node}} → {{dst_node}}")]),
        ("timeseries", "Room needed on the fast node", "bytes",
         "Hot bytes waiting plus the headroom, less free memory: what demotion must free "
         "before the waiting pages fit.",
         [(f"kmigratedd_room_needed_bytes{{{IN}}}", "{{instance}} node {{node}}")]),
        ("timeseries", "Hot threshold and exchange refusals", "short",
         "Folded samples a candidate needs (workers.min_samples, raised by the adaptive "
         "threshold while the fast tier has less room than the candidates want), and the "
         "candidates it held back per second.",
         [(f"kmigratedd_hot_threshold{{{I}}}", "{{instance}} threshold"),
          (rate("kmigratedd_worker_dropped_pages_total",
                I + ', reason="below_adaptive_threshold"', "instance"),
           "{{instance}} held back (pages/s)")]),
        ("timeseries", "Precision guard", "percentunit",
         "Share of the pages promoted that the sampler then saw cold (no access for "
         "demotion.cold_age_ms), and of the pages demoted that were wanted back within "
         "workers.pingpong_window_ms. A sampler that promotes cold memory shows here "
         "(hint-faults cannot see the fast tier: only the second applies to it).",
         [(f"{rate('kmigratedd_promoted_then_cold_pages_total', IN)} / on (instance) "
           f"group_left clamp_min({rate('kmigratedd_promoted_pages_total', I, 'instance')}, "
           "1e-9)", "{{instance}} node {{node}} promoted, then cold"),
          (f"{rate('kmigratedd_demotion_regrets_total', IN)} / on (instance) "
           f"group_left clamp_min({rate('kmigratedd_demoted_pages_total', I, 'instance')}, "
           "1e-9)", "{{instance}} node {{node}} demoted, then wanted back")]),
        ("timeseries", "Exchange regrets and protection", "short",
         "Demoted pages wanted back within workers.pingpong_window_ms (per second), and how "
         "long a promoted page is kept from demotion: the window, doubled while more than "
         "one demoted page in ten comes back (a hot set larger than the fast tier). "
         "Promoted pages the kernel demoted back within the ping-pong window (bounces per "
         "second), and that window: doubled, with the holdoff, while more than one "
         "promoted page in ten bounces.",
         [(rate("kmigratedd_demotion_regrets_total", IN), "{{instance}} node {{node}} regrets/s"),
          (f"kmigratedd_promoted_protect_seconds{{{IN}}}",
           "{{instance}} node {{node}} protection (s)"),
          (rate("kmigratedd_pingpong_bounces_total", IN), "{{instance}} node {{node}} bounces/s"),
          (f"kmigratedd_pingpong_window_seconds{{{IN}}}",
           "{{instance}} node {{node}} ping-pong window (s)")]),
        ("timeseries", "Demotion refusals and outcomes", "pages/s",
         "Cold pages not demoted: promoted_recently (within workers.pingpong_window_ms), "
         "rate_limited, busy, gone, not_needed; and the per-page outcomes of demotions.",
         [(rate("kmigratedd_demotion_refused_pages_total", IN, "instance, node, reason"),
           "{{instance}} node {{node}} refused {{reason}}"),
          (rate("kmigratedd_demotion_outcomes_total", IN, "instance, node, reason"),
           "{{instance}} node {{node}} {{reason}}")]),
    ]),
    ("Outcomes", [
        ("timeseries", "Page outcomes by reason", "pages/s",
         "Per-page move_pages(2) results: moved, not_moved (landed elsewhere), or the errno "
         "(EBUSY retried once, EFAULT/ENOENT gone, EACCES shared, ENOMEM target full).",
         [(rate("kmigratedd_page_outcomes_total", IN, "instance, node, reason"),
           "{{instance}} node {{node}} {{reason}}")]),
        ("timeseries", "Failed share of page outcomes", "percentunit",
         "Outcomes other than moved / all outcomes (the KmigratedHighFailureRatio alert "
         "fires above 50% over 15 minutes).",
         [(failed, "{{instance}} node {{node}}")]),
        ("timeseries", "move_pages calls and whole-call errors", "ops",
         "Batches issued (single thread or split across copy threads) and move_pages calls "
         "that failed as a whole (ESRCH: the process exited; reason none: no error).",
         [(rate("kmigratedd_batches_total", IN, "instance, node, mode"),
           "{{instance}} node {{node}} batches {{mode}}"),
          (call_errors, "{{instance}} node {{node}} error {{reason}}")]),
        ("timeseries", "Candidates dropped before a move", "pages/s",
         "By the router (node empty): below the hotness threshold (workers.min_samples), "
         "already on the fast tier, or gone; by a worker: its inbox was full.",
         [(rate("kmigratedd_worker_dropped_pages_total", IN, "instance, node, reason"),
           "{{instance}} node {{node}} {{reason}}")]),
        ("timeseries", "Busy retries and ping-pong hold-offs", "pages/s",
         "EBUSY pages retried once or dropped; pages held off because they came back to a "
         "slow node within workers.pingpong_window_ms; pages a dry run would have moved.",
         [(rate("kmigratedd_busy_retries_total", IN, "instance, node, result"),
           "{{instance}} node {{node}} busy {{result}}"),
          (rate("kmigratedd_pingpong_pages_total", IN), "{{instance}} node {{node}} ping-pong"),
          (rate("kmigratedd_dry_run_pages_total", IN), "{{instance}} node {{node}} dry run")]),
        ("timeseries", "Time the workers were held back", "percentunit",
         "Share of time each worker waited for the rate limit, was blocked by the target's "
         "free-memory headroom, or backed off after ENOMEM.",
         [(rate("kmigratedd_rate_limited_seconds_total", IN),
           "{{instance}} node {{node}} rate limit"),
          (rate("kmigratedd_headroom_blocked_seconds_total", IN),
           "{{instance}} node {{node}} headroom"),
          (rate("kmigratedd_enomem_backoff_seconds_total", IN),
           "{{instance}} node {{node}} ENOMEM back-off")]),
    ]),
    ("Batches and latency", [
        ("timeseries", "Batch size", "none",
         "Pages per move_pages batch: quantiles of kmigratedd_batch_pages, and the mean.",
         quantiles("kmigratedd_batch_pages") + [
             (f"{rate('kmigratedd_batch_pages_sum', IN)}\n/ "
              f"{rate('kmigratedd_batch_pages_count', IN)}", "{{instance}} node {{node}} mean")]),
        ("timeseries", "move_pages latency per batch", "s",
         "Wall time of one batch, all copy threads included "
         "(kmigratedd_move_pages_duration_seconds).",
         quantiles("kmigratedd_move_pages_duration_seconds")),
    ]),
    ("Queues", [
        ("timeseries", "Candidate queue depth", "none",
         "Candidates waiting in the per-CPU queues: all CPUs together, the fullest queue, "
         "and what one queue holds at most (queues.capacity_per_cpu).",
         [(f"sum by (instance) (kmigratedd_queue_depth{{{I}}})", "{{instance}} total"),
          (f"max by (instance) (kmigratedd_queue_depth{{{I}}})", "{{instance}} fullest CPU"),
          (f"kmigratedd_queue_capacity{{{I}}}", "{{instance}} capacity per CPU")]),
        ("timeseries", "Candidate flow and drops", "cps",
         "Candidates handed to the workers, folded into an existing candidate, and dropped "
         "because a per-CPU queue was full (oldest first).",
         [(rate("kmigratedd_queue_candidates_drained_total", I, "instance"),
           "{{instance}} drained"),
          (rate("kmigratedd_queue_candidates_coalesced_total", I, "instance"),
           "{{instance}} coalesced"),
          (rate("kmigratedd_queue_candidates_dropped_total", I, "instance"),
           "{{instance}} dropped")]),
        ("timeseries", "Worker inbox", "none",
         "Pages routed to a worker and waiting for a batch.",
         [(f"kmigratedd_worker_inbox_pages{{{IN}}}", "{{instance}} node {{node}}")]),
    ]),
    ("Sampler", [
        ("timeseries", "Sampler rate", "cps",
         "Raw samples (or page observations) decoded, candidates offered to the queues, and "
         "samples the kernel reported lost (PERF_RECORD_LOST).",
         [(samples, "{{instance}} {{sampler}} samples"),
          (rate("kmigratedd_sampler_candidates_total", I, "instance, sampler"),
           "{{instance}} {{sampler}} candidates"),
          (lost, "{{instance}} {{sampler}} lost")]),
        ("timeseries", "Sample loss", "percentunit",
         "Lost / (decoded + lost) samples (the KmigratedSampleLoss alert fires above 10%). "
         "Raise the sampler's ring_pages if it is not 0.",
         [(f"{lost}\n/ ({samples} + {lost})", "{{instance}} {{sampler}}")]),
        ("timeseries", "Other sampler events", "cps",
         "Sampler-specific counters: throttling, truncated or unknown records, samples "
         "filtered out of scope, pages the kernel promoted itself, errors...",
         [(rate("kmigratedd_sampler_events_total", I, "instance, sampler, event"),
           "{{instance}} {{sampler}} {{event}}")]),
    ]),
    ("Memory tiers", [
        ("timeseries", "Free memory per node", "bytes",
         "MemFree of each node (node*/meminfo), labelled with its tier (0 = fastest).",
         [(f"kmigratedd_node_memory_free_bytes{{{IN}}}",
           "{{instance}} node {{node}} (tier {{tier}})")]),
        ("timeseries", "Free memory per tier", "bytes",
         "Free and total memory of each tier.",
         [(f"sum by (instance, tier) (kmigratedd_node_memory_free_bytes{{{IN}}})",
           "{{instance}} tier {{tier}} free"),
          (f"sum by (instance, tier) (kmigratedd_node_memory_total_bytes{{{IN}}})",
           "{{instance}} tier {{tier}} total")]),
        ("timeseries", "Fast tier out of headroom", "none",
         "1 while a target node's free memory is below workers.min_free_bytes (until it is "
         "back above resume_free_bytes): promotion to it is paused.",
         [(f"kmigratedd_headroom_blocked{{{IN}}}", "{{instance}} node {{node}}")]),
    ]),
    ("Health", [
        ("timeseries", "Worker heartbeat age", "s",
         "Seconds since each worker's last round.  Under systemd the watchdog restarts the "
         "daemon when a worker stalls for WatchdogSec (30 s); KmigratedWorkerStalled fires "
         "after 60 s.",
         [(f"time() - kmigratedd_worker_heartbeat_timestamp_seconds{{{IN}}}",
           "{{instance}} node {{node}}")]),
    ]),
]


def panel(pid: int, kind: str, title: str, unit: str, desc: str,
          targets: list[tuple[str, str]], pos: dict[str, int]) -> dict[str, Any]:
    p: dict[str, Any] = {
        "id": pid, "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": pos,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"datasource": DS, "refId": chr(ord("A") + i), "expr": expr,
                     "legendFormat": legend, "range": True}
                    for i, (expr, legend) in enumerate(targets)],
    }
    if kind in ("stat", "info"):
        # "info": the value is always 1 and the legend (version, sampler) is the news.
        p["type"] = "stat"
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                          "values": False},
                        "textMode": "name" if kind == "info" else "value_and_name",
                        "colorMode": "none", "graphMode": "none"}
    else:
        p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1,
                                                  "fillOpacity": 10, "showPoints": "never",
                                                  "spanNulls": False}
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom",
                                   "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    return p


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": query, "definition": query,
            "refresh": 2, "multi": True, "includeAll": True, "sort": 3,
            "current": {}, "options": [], "hide": 0}


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    for row_title, row_panels in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        stats = all(p[0] in ("stat", "info") for p in row_panels)
        width, height = (24 // len(row_panels), 4) if stats else (12, 8)
        x = 0
        for kind, title, unit, desc, targets in row_panels:
            if x + width > 24:
                x, y = 0, y + height
            panels.append(panel(pid, kind, title, unit, desc, targets,
                                {"h": height, "w": width, "x": x, "y": y}))
            pid += 1
            x += width
        y += height
    return {
        "uid": "kmigratedd",
        "title": "kmigratedd",
        "description": "Hot-page promotion to the fast memory tier (kmigratedd): rates per "
                       "node pair, outcomes, batches, queues, sampler, free memory per tier, "
                       "the kernel's own promotion/demotion counters.",
        "tags": ["kmigratedd", "numa", "memory-tiering"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "options": [], "refresh": 1,
             "hide": 0, "includeAll": False, "multi": False, "regex": ""},
            variable("instance", "Instance", "label_values(kmigratedd_build_info, instance)"),
            variable("node", "NUMA node",
                     'label_values(kmigratedd_node_memory_total_bytes{instance=~"$instance"}, '
                     "node)"),
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if kmigratedd.json is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python3 {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
