"""Guest half of benchmarks/quality.py (run it from the host: it boots the VM).

One workload, several promotion mechanisms ("contenders"), one after the other in
the same guest.  For each contender a fresh workload puts a hot set and a cold set
on node 1 (tests/vm/workload: the hot pages are read and rewritten in a loop; the
cold pages were written once), its baseline pass rate is taken, then the mechanism
is switched on and, every --interval-s, the node of every hot and cold page is
queried (move_pages query form).  The run ends --tail-s after 90% of the hot set
reached node 0, or at --bound-s.

Contenders (those this kernel offers; --contenders picks):
  kmigratedd:<sampler>  the daemon (console script, config file: defaults except the
                        sampler, a private state file / control socket, metrics port 0);
                        kmigratedd:auto is the embedded default (sampler auto)
  nb2:filled            the kernel's NUMA balancing tiering mode (numa_balancing=2),
  nb2:empty             default knobs, with node 0 filled to --fill-free-mib free or empty
  damon:migrate_hot     DAMOS migrate_hot through the DAMON sysfs interface, paddr
                        operations on node 1's physical ranges, target_nid 0, the same
                        monitoring attributes and hot threshold as kmigratedd's damon sampler
                        (5 ms sampling, 100 ms aggregation, 10-1000 regions, nr_accesses >= 1)
  damon:migrate_hot-tuned  stricter: nr_accesses >= half the samples per aggregation
                        (10 of 20) and a "young" page filter (only pages accessed since the
                        last check move)

"filled" contenders run with node 0 at --fill-free-mib free (below the kernel's
max(1 GiB, 1/16 node) free-space threshold, where numa_balancing=2 applies its hot
threshold and rate limit instead of promoting every faulting page); "empty" with
node 0 as booted.  Each result records which regime it ran in.

Figures: time to 50% / 90% of the hot set on node 0; pages promoted; fraction of
them that were cold; mechanism CPU seconds (daemon utime+stime; kdamond thread; for
everything, the workload's extra system time, where hint faults and NUMA balancing's
scanning and promotion are charged); vmstat deltas; workload passes/s before and
during.  Writes one JSON file (--out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import gcommon as g
from gcommon import MiB, read, say, write

FAST, SLOW = 0, 1
NB = "/proc/sys/kernel/numa_balancing"
NB_KNOBS = ("numa_balancing_promote_rate_limit_MBps", "numa_balancing_hot_threshold_ms",
            "numa_balancing_scan_delay_ms", "numa_balancing_scan_period_min_ms",
            "numa_balancing_scan_period_max_ms", "numa_balancing_scan_size_mb")
VMSTAT = ("pgmigrate_success", "pgmigrate_fail", "pgpromote_success", "pgpromote_candidate",
          "numa_hint_faults", "numa_hint_faults_local", "numa_pte_updates", "numa_pages_migrated",
          "pgdemote_kswapd", "pgdemote_direct", "thp_migration_success")
DAMON = "/sys/kernel/mm/damon/admin"
DEMOTION_ENABLED = "/sys/kernel/mm/numa/demotion_enabled"
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
# damon:migrate_hot+cold: a node-0 region is cold after this long with no access (the
# default demotion.cold_age_ms of kmigratedd).
COLD_AGE_S = 5.0
# A second with fewer accesses than this share of the application's unhindered rate (the
# 75th percentile of its seconds in the run) is a stall.
STALL_SHARE = 0.1


def kernel_promote_threshold_mib() -> float:
    """Free memory above which numa_balancing=2 promotes without limits:
    pgdat_free_space_enough() = max(1 GiB, present/16) above the high watermark."""
    present = 0
    high = 0
    node = None
    for line in Path("/proc/zoneinfo").read_text().splitlines():
        if line.startswith("Node "):
            node = int(line.split()[1].rstrip(","))
        elif node == FAST:
            s = line.split()
            if s[:1] == ["present"]:
                present += int(s[1])
            elif s[:1] == ["high"]:
                high += int(s[1])
    return (max(1 << 30, present * g.PAGE // 16) + high * g.PAGE) / MiB


# --- mechanisms ----------------------------------------------------------------------


class Mechanism:
    name = ""
    regime_note = ""

    def start(self) -> None: ...
    def cpu_seconds(self) -> float | None: return None
    def probe(self) -> list[float] | None: return None
    def extra(self) -> dict[str, Any]: return {}
    def stop(self) -> None: ...


class Kmigratedd(Mechanism):
    """``kmigratedd:SAMPLER`` or ``kmigratedd:SAMPLER/DEMOTION`` (demotion.method)."""

    def __init__(self, spec: str, tmp: Path) -> None:
        self.sampler, _, self.demotion = spec.partition("/")
        self.name = f"kmigratedd:{spec}"
        self.tmp = tmp
        self.d: Any = None
        self.kd: list[int] = []
        self.kd0 = 0.0
        self.kd_last = 0.0
        self.startup_s = 0.0

    def start(self) -> None:
        from daemonproc import DaemonProcess

        cfg = f"""
sampler:
  name: {self.sampler}
  hint_faults:
    state_file: {self.tmp}/sysctl-state.json
demotion:
  method: {self.demotion or "auto"}
metrics:
  port: 0
control:
  socket_path: {self.tmp}/control.sock
"""
        t = time.monotonic()
        self.d = DaemonProcess(cfg, self.tmp)
        self.d.wait_running()
        self.startup_s = time.monotonic() - t
        # The damon sampler, and the damon-paddr demoter of the other samplers, run a
        # kdamond: its CPU is the mechanism's too.  One the demoter starts later is
        # picked up in cpu_seconds().
        self.kd = kdamond_pids()
        self.kd0 = sum(sum(g.proc_cpu(p)) for p in self.kd)

    def _kdamonds(self) -> None:
        for p in kdamond_pids():
            if p not in self.kd:
                self.kd.append(p)

    def cpu_seconds(self) -> float | None:
        c = self.d.cpu_seconds()
        self._kdamonds()
        if self.kd:
            now = sum(sum(g.proc_cpu(p)) for p in self.kd)
            if now == now:  # not nan: the threads still exist
                self.kd_last = now - self.kd0
        return c

    def status(self) -> dict[str, Any]:
        """The daemon's status over its control socket."""
        from kmigratedd.ctl import call

        result: dict[str, Any] = call(str(self.tmp / "control.sock"), "status", 10)
        return result

    def probe(self) -> list[float] | None:
        """The daemon's view each interval: [promoted, demoted, inbox pages, room needed
        MiB, headroom blocked, free MiB of node 0 as the daemon reads it]."""
        from daemonproc import metric_total

        try:
            mt = self.d.metrics()
        except Exception:  # noqa: BLE001 - a missed probe is only a gap
            return None
        return [metric_total(mt, "kmigratedd_promoted_pages_total"),
                metric_total(mt, "kmigratedd_demoted_pages_total"),
                metric_total(mt, "kmigratedd_worker_inbox_pages"),
                round(metric_total(mt, "kmigratedd_room_needed_bytes") / MiB, 1),
                metric_total(mt, "kmigratedd_headroom_blocked"),
                round(metric_total(mt, "kmigratedd_node_memory_free_bytes",
                                   node=str(FAST)) / MiB, 1)]

    def extra(self) -> dict[str, Any]:
        from daemonproc import metric_total

        m = {}
        try:
            mt = self.d.metrics()
            dropped: dict[str, float] = {}
            for (n, ls), v in mt.items():
                if n == "kmigratedd_worker_dropped_pages_total" and v:
                    r = dict(ls).get("reason", "?")
                    dropped[r] = dropped.get(r, 0) + v
            m = {"daemon_promoted": metric_total(mt, "kmigratedd_promoted_pages_total"),
                 "daemon_batches": metric_total(mt, "kmigratedd_batches_total"),
                 "daemon_demoted": metric_total(mt, "kmigratedd_demoted_pages_total"),
                 "daemon_dropped": dropped, "rss_kib": self.d.rss_kib()}
        except Exception as exc:  # noqa: BLE001 - report, do not fail the run
            m = {"metrics_error": str(exc)}
        try:
            m["demotion"] = self.status().get("demotion")
        except Exception as exc:  # noqa: BLE001 - report, do not fail the run
            m["status_error"] = str(exc)
        sel = [ln.split("] ", 1)[-1] for ln in self.d.lines
               if "sampler" in ln and ("auto" in ln or "started" in ln)]
        warn = [ln.split("] ", 1)[-1] for ln in self.d.lines if "WARNING" in ln][:5]
        return {**m, "startup_s": self.startup_s, "kdamond_cpu_s": self.kd_last if self.kd
                else None, "log_sampler": sel, "log_warnings": warn}

    def stop(self) -> None:
        if self.d is not None:
            self.rc = self.d.stop()


class NumaBalancing(Mechanism):
    """numa_balancing=2; ``nb2:demote`` also sets demotion_enabled=1 (the kernel's TPP
    setup: kswapd demotes cold LRU pages of node 0 when promotion finds it short)."""

    def __init__(self, regime: str) -> None:
        self.name = f"nb2:{regime}"
        self.knobs: dict[str, str] = {}
        self.demote = regime == "demote"
        self.demotion_was = ""

    def start(self) -> None:
        self.knobs = {k: read(f"/proc/sys/kernel/{k}") for k in NB_KNOBS
                      if Path(f"/proc/sys/kernel/{k}").exists()}
        if self.demote:
            self.demotion_was = read(DEMOTION_ENABLED)
            write(DEMOTION_ENABLED, "1")
            self.knobs["demotion_enabled"] = "1"
        write(NB, "2")

    def extra(self) -> dict[str, Any]:
        return {"knobs": self.knobs}

    def stop(self) -> None:
        write(NB, "0")
        if self.demote and self.demotion_was:
            write(DEMOTION_ENABLED, "true" if self.demotion_was.startswith(("1", "t", "y", "Y"))
                  else "false")


class DamonMigrateHot(Mechanism):
    """DAMOS migrate_hot on node 1's physical memory (paddr), as `damo` would set it up."""

    def __init__(self, tuned: bool = False, cold: bool = False) -> None:
        from kmigratedd import config

        self.cfg = config.Config().sampler.damon
        # tuned: stricter, as DAMON's tiering recipe suggests — a region must be seen
        # accessed in at least half of the samples of an aggregation interval, and only
        # pages whose accessed bit is set when the scheme applies are moved (a "young"
        # filter).  (A minimum region age of 10 aggregations matched nothing under TCG:
        # nr_accesses fluctuates enough to keep resetting DAMON's region age.)
        self.tuned = tuned
        self.min_age = 0
        self.min_accesses = (max(self.cfg.hot_min_accesses,
                                 self.cfg.aggregate_interval_ms // self.cfg.sample_interval_ms // 2)
                             if tuned else self.cfg.hot_min_accesses)
        self.name = "damon:migrate_hot-tuned" if tuned else "damon:migrate_hot"
        # cold: a second kdamond runs DAMOS migrate_cold on node 0's physical memory to
        # node 1 (regions not accessed for COLD_AGE_S, young pages excluded), as DAMON's
        # tiering recipe pairs the two.
        self.cold = cold
        if cold:
            self.name = "damon:migrate_hot+cold"
        self.k = f"{DAMON}/kdamonds/0"
        self.pids: list[int] = []
        self.pid = 0
        self.cpu0 = 0.0
        self.cpu_last = 0.0
        self.stats: dict[str, int] = {}
        self.regions: list[tuple[int, int]] = []

    def node_ranges(self, node: int) -> list[tuple[int, int]]:
        from kmigratedd.topology import discover

        topo = discover(g.FS)
        bs = topo.block_size_bytes
        out: list[tuple[int, int]] = []
        for b in sorted(topo.nodes[node].memory_blocks):
            s, e = b * bs, (b + 1) * bs
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
        return out

    def start(self) -> None:
        if int(read(f"{DAMON}/kdamonds/nr_kdamonds")) and read(f"{self.k}/state") == "on":
            raise RuntimeError("a kdamond is already on")
        write(f"{DAMON}/kdamonds/nr_kdamonds", "2" if self.cold else "1")
        self._kdamond(0, SLOW, "migrate_hot", FAST)
        if self.cold:
            self._kdamond(1, FAST, "migrate_cold", SLOW)
        for i in range(2 if self.cold else 1):
            write(f"{DAMON}/kdamonds/{i}/state", "on")
            self.pids.append(int(read(f"{DAMON}/kdamonds/{i}/pid")))
        self.pid = self.pids[0]
        self.cpu0 = sum(sum(g.proc_cpu(p)) for p in self.pids)

    def _kdamond(self, idx: int, node: int, action: str, target: int) -> None:
        k = f"{DAMON}/kdamonds/{idx}"
        write(f"{k}/contexts/nr_contexts", "1")
        c = f"{k}/contexts/0"
        write(f"{c}/operations", "paddr")
        a = f"{c}/monitoring_attrs"
        write(f"{a}/intervals/sample_us", str(self.cfg.sample_interval_ms * 1000))
        write(f"{a}/intervals/aggr_us", str(self.cfg.aggregate_interval_ms * 1000))
        write(f"{a}/nr_regions/min", str(self.cfg.min_regions))
        write(f"{a}/nr_regions/max", str(self.cfg.max_regions))
        write(f"{c}/targets/nr_targets", "1")
        t = f"{c}/targets/0"
        regions = self.node_ranges(node)
        if node == SLOW:
            self.regions = regions
        write(f"{t}/regions/nr_regions", str(len(regions)))
        for i, (s, e) in enumerate(regions):
            write(f"{t}/regions/{i}/start", str(s))
            write(f"{t}/regions/{i}/end", str(e))
        write(f"{c}/schemes/nr_schemes", "1")
        s = f"{c}/schemes/0"
        write(f"{s}/action", action)
        write(f"{s}/target_nid", str(target))
        # Every max starts at 0 in sysfs, which matches nothing: open them all.
        ap = f"{s}/access_pattern"
        write(f"{ap}/sz/min", "0")
        write(f"{ap}/sz/max", str(U64_MAX))
        if action == "migrate_cold":
            aggr = self.cfg.aggregate_interval_ms
            write(f"{ap}/nr_accesses/min", "0")
            write(f"{ap}/nr_accesses/max", "0")
            write(f"{ap}/age/min", str(int(COLD_AGE_S * 1000 // aggr)))
            write(f"{ap}/age/max", str(U32_MAX))
            write(f"{s}/filters/nr_filters", "1")
            write(f"{s}/filters/0/type", "young")
            write(f"{s}/filters/0/matching", "Y")   # young pages stay
            return
        write(f"{ap}/nr_accesses/min", str(self.min_accesses))
        write(f"{ap}/nr_accesses/max", str(U32_MAX))
        write(f"{ap}/age/min", str(self.min_age))
        write(f"{ap}/age/max", str(U32_MAX))
        if self.tuned:
            write(f"{s}/filters/nr_filters", "1")
            write(f"{s}/filters/0/type", "young")
            # 6.12: a filter excludes what it matches (matching=Y) or what it does not
            # (matching=N); N keeps only young pages.
            write(f"{s}/filters/0/matching", "N")

    def cpu_seconds(self) -> float | None:
        now = sum(sum(g.proc_cpu(p)) for p in self.pids)
        if now == now:
            self.cpu_last = now - self.cpu0
        return self.cpu_last

    def extra(self) -> dict[str, Any]:
        cold: dict[str, int] = {}
        try:
            for i in range(len(self.pids)):
                k = f"{DAMON}/kdamonds/{i}"
                write(f"{k}/state", "update_schemes_stats")
                st = f"{k}/contexts/0/schemes/0/stats"
                got = {f: int(read(f"{st}/{f}")) for f in
                       ("nr_tried", "sz_tried", "nr_applied", "sz_applied", "qt_exceeds")}
                if i == 0:
                    self.stats = got
                else:
                    cold = got
        except OSError as exc:
            self.stats = {"error": str(exc)}  # type: ignore[dict-item]
        return {"kdamond_pid": self.pid, "scheme_stats": self.stats, "cold_scheme_stats": cold,
                "monitored_ranges": [[hex(s), hex(e)] for s, e in self.regions],
                "attrs": {"sample_us": self.cfg.sample_interval_ms * 1000,
                          "aggr_us": self.cfg.aggregate_interval_ms * 1000,
                          "nr_regions": [self.cfg.min_regions, self.cfg.max_regions],
                          "nr_accesses_min": self.min_accesses,
                          "age_min_aggr": self.min_age, "young_filter": self.tuned}}

    def stop(self) -> None:
        try:
            for i in range(max(1, len(self.pids))):
                k = f"{DAMON}/kdamonds/{i}"
                if read(f"{k}/state") == "on":
                    write(f"{k}/state", "off")
                for _ in range(100):
                    if read(f"{k}/state") == "off":
                        break
                    time.sleep(0.1)
            write(f"{DAMON}/kdamonds/nr_kdamonds", "0")
        except OSError as exc:
            say(f"  warning: stopping DAMON: {exc}")


def kdamond_pids() -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/comm").read_text().startswith("kdamond"):
                    out.append(int(d))
            except OSError:
                pass
    return out


# --- availability ----------------------------------------------------------------------


def available(contenders: list[str]) -> list[tuple[str, str | None]]:
    from samplerctx import make_context

    from kmigratedd.samplers import FACTORIES

    ctx = make_context(state_file="/tmp/probe-state.json")
    out: list[tuple[str, str | None]] = []
    for c in contenders:
        why: str | None = None
        if c == "kmigratedd:auto":
            why = None  # the embedded default: whatever auto picks here
        elif c.startswith("kmigratedd:"):
            f = FACTORIES.get(c.split(":", 1)[1].partition("/")[0])
            why = ("sampler not registered in kmigratedd.samplers.FACTORIES" if f is None
                   else f.probe(ctx))
        elif c.startswith("nb2:"):
            if not Path(f"/proc/sys/kernel/{NB_KNOBS[0]}").exists():
                why = "no numa_balancing tiering mode in this kernel"
            elif c == "nb2:demote" and not Path(DEMOTION_ENABLED).exists():
                why = f"no {DEMOTION_ENABLED}"
        elif c.startswith("damon:migrate_hot"):
            if not Path(f"{DAMON}/kdamonds/nr_kdamonds").exists():
                why = "no DAMON sysfs interface"
            else:
                why = None
        else:
            why = "unknown contender"
        out.append((c, why))
    return out


# --- one run ---------------------------------------------------------------------------


def run_one(mech: Mechanism, a: argparse.Namespace, regime: dict[str, Any],
            filler: Any = None) -> dict[str, Any]:
    """One contender on a fresh workload; ``filler``: the cold process holding node 0 (the
    full fast tier case), whose pages found on node 1 at the end were demoted.

    The workload reports its accesses every second (tests/vm/workload, --report-ms):
    those are the application's figures (:func:`app_figures`).  With ``--run-s`` every
    contender runs that long, so their stalls are counted over the same time; without,
    a run ends ``--tail-s`` after t90 or at ``--bound-s``."""
    from workload import Workload

    zipf = a.zipf > 0
    say(f"-- {mech.name}: workload {a.hot_mib:g} MiB "
        + (f"Zipf {a.zipf:g}" if zipf else f"hot (1 page in {a.sparse} hot)")
        + f" + {a.cold_mib:g} MiB cold on node {SLOW}; node 0 free {g.free_mib(FAST):.0f} MiB")
    with Workload(a.hot_mib, a.cold_mib, node=SLOW, sparse=a.sparse, flush_ms=a.flush_ms,
                  zipf=a.zipf, report_ms=1000, fast_node=FAST) as w:
        n_hot, n_cold = len(w.hot), len(w.cold)
        if g.count_on(w.pid, w.hot, SLOW) != n_hot or g.count_on(w.pid, w.cold, SLOW) != n_cold:
            raise RuntimeError("the workload is not entirely on node 1")
        time.sleep(2)
        tb = time.monotonic_ns()
        cpu_b0 = g.proc_cpu(w.pid)
        time.sleep(max(a.baseline_s, a.lead_s))
        cpu_b1 = g.proc_cpu(w.pid)
        base_rate = w.pass_rate(tb)
        base_wall = (time.monotonic_ns() - tb) / 1e9
        base_stime_rate = (cpu_b1[1] - cpu_b0[1]) / base_wall
        base_utime_rate = (cpu_b1[0] - cpu_b0[0]) / base_wall
        node0_free_at_start = g.free_mib(FAST)
        vm0 = g.vmstat(*VMSTAT)
        kswapd = kswapd_pid(FAST)
        kswapd0 = sum(g.proc_cpu(kswapd)) if kswapd else float("nan")
        mech.start()
        t_on = time.monotonic()
        t_on_ns = time.monotonic_ns()
        cpu_w0 = g.proc_cpu(w.pid)
        mcpu0 = mech.cpu_seconds()
        series: list[list[float]] = []
        probes: list[list[float]] = []
        t50 = t90 = None
        rotated_at = None
        stop_at = t_on + (a.run_s if a.run_s else a.bound_s)
        try:
            while True:
                now = time.monotonic()
                t = now - t_on
                if zipf:  # the workload asks where its region's pages are every second
                    hot = w.stats[-1].pages_on_fast / n_hot if w.stats else 0.0
                else:
                    hot = g.count_on(w.pid, w.hot, FAST) / n_hot
                cold = g.count_on(w.pid, w.cold, FAST) / n_cold if n_cold else 0.0
                mig = g.vmstat("pgmigrate_success")["pgmigrate_success"] - vm0["pgmigrate_success"]
                series.append([round(t, 2), hot, cold, mig, round(g.free_mib(FAST), 1)])
                # Prometheus scrapes every 15 s or more; a scrape costs the daemon's loop
                # a few hundred ms under TCG, so the benchmark probes only now and then.
                probe = mech.probe() if (len(series) - 1) % a.probe_every == 0 else None
                if probe is not None:
                    probes.append([round(t, 2), *probe])
                if t50 is None and hot >= 0.5:
                    t50 = t
                if t90 is None and hot >= 0.9:
                    t90 = t
                    if not a.run_s:
                        stop_at = min(stop_at, now + a.tail_s)
                if a.rotate and rotated_at is None and t >= a.run_s / 2:
                    w.rotate()
                    rotated_at = t
                    say(f"   t={t:6.1f}s  rotated the hot pages")
                if len(series) % 5 == 1 or t90 == t or probe is not None:
                    last = w.stats[-1] if w.stats else None
                    share = (last.fast_accesses / last.accesses if last and last.accesses
                             else 0.0)
                    say(f"   t={t:6.1f}s  hot on node 0 {100 * hot:5.1f}%  cold on node 0 "
                        f"{100 * cold:5.1f}%  migrated {mig:7d} pages  node 0 free "
                        f"{series[-1][4]:.0f} MiB  accesses/s {last.accesses if last else 0}"
                        f" (fast {share:.2f})" + (f"  daemon {probe}" if probe else ""))
                if now >= stop_at or not w.alive():
                    break
                time.sleep(max(0.0, a.interval_s - (time.monotonic() - now)))
            wall = time.monotonic() - t_on
            cpu_w1 = g.proc_cpu(w.pid)
            mcpu1 = mech.cpu_seconds()
            kswapd1 = sum(g.proc_cpu(kswapd)) if kswapd else float("nan")
            run_rate = w.pass_rate(t_on_ns)
            vm1 = g.vmstat(*VMSTAT)
            extra = mech.extra()
        finally:
            mech.stop()
        intervals = w.intervals(t_on_ns + 500_000_000)
        hot_on = g.count_on(w.pid, w.hot, FAST)
        cold_on = g.count_on(w.pid, w.cold, FAST)
        ok = w.verify()
        alive = w.alive()
    filler_info = None
    if filler is not None:
        filler_info = {"pages": len(filler.cold),
                       "demoted_pages": g.count_on(filler.pid, filler.cold, SLOW),
                       "verify_ok": filler.verify()}
        ok = ok and filler_info["verify_ok"]
    promoted = hot_on + cold_on
    mcpu = (mcpu1 - mcpu0) if mcpu1 is not None and mcpu0 is not None else None
    extra_stime = (cpu_w1[1] - cpu_w0[1]) - base_stime_rate * wall
    res = {
        "contender": mech.name, "regime": regime, "node0_free_at_start_mib": node0_free_at_start,
        "hot_pages": n_hot, "cold_pages": n_cold, "t50_s": None if zipf else t50,
        "t90_s": None if zipf else t90, "wall_s": wall,
        "hot_on_node0": hot_on, "cold_on_node0": cold_on, "promoted_pages": promoted,
        "cold_fraction_of_promoted": None if zipf else (cold_on / promoted if promoted
                                                        else None),
        "cold_fraction_of_cold_set": cold_on / n_cold if n_cold else None,
        "mechanism_cpu_s": mcpu,
        "kswapd_cpu_s": kswapd1 - kswapd0,
        "workload_extra_stime_s": extra_stime,
        "workload_stime_s": cpu_w1[1] - cpu_w0[1], "workload_utime_s": cpu_w1[0] - cpu_w0[0],
        "workload_base_stime_per_s": base_stime_rate, "workload_base_utime_per_s": base_utime_rate,
        "vmstat_delta": {k: vm1[k] - vm0[k] for k in VMSTAT},
        "passes_per_s_before": base_rate, "passes_per_s_during": run_rate,
        "verify_ok": ok, "workload_alive": alive, "series": series, "extra": extra,
        "probes": probes, "filler": filler_info, "rotated_at_s": rotated_at,
        # One row per second: [t, accesses, fast accesses, region pages on the fast node,
        # oracle accesses, main thread utime ticks, stime ticks, rotations].
        "intervals": [[round((iv.t_ns - t_on_ns) / 1e9, 2), iv.accesses, iv.fast_accesses,
                       iv.pages_on_fast, iv.oracle_accesses, iv.utime_ticks, iv.stime_ticks,
                       iv.rotations] for iv in intervals],
    }
    res["app"] = app_figures(res, a)
    app = res["app"]
    say(f"   => {mech.name}: t50 {fmt(t50)} s, t90 {fmt(t90)} s, hot {hot_on}/{n_hot}, cold "
        f"{cold_on}/{n_cold} on node 0, mechanism CPU {fmt(mcpu, '{:.2f}')} s (kswapd "
        f"{res['kswapd_cpu_s']:.2f} s), workload extra sys {extra_stime:.2f} s; app: "
        f"{app['accesses_per_s_p75']:,.0f} accesses/s unhindered, stalls {app['stall_s']} s "
        f"(longest {app['longest_stall_s']} s), fast-tier share {fmt(app['share'], '{:.3f}')}"
        f" (oracle {fmt(app['oracle_share'], '{:.3f}')}, after the rotation "
        f"{fmt(app['share_after_rotation'], '{:.3f}')}), verify {'OK' if ok else 'BAD'}")
    return res


def app_figures(r: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """The application's figures over the run, from its per-second reports.

    Its unhindered rate is the 75th percentile of its accesses per second over the run; a
    stall is a second below STALL_SHARE of it.  The fast-tier share is the share of all
    its accesses that pages on node 0 served (of those after the hot pages rotated, for
    --rotate), the oracle share what the same number of pages on node 0 would have
    served had they been each second's most accessed ones, and the modelled latency the
    HMAT read latencies of node 0 and node 1 weighted by the share.  CPU per GiB placed:
    the mechanism's CPU (the daemon's and its kdamond's, or for the kernel's tiering the
    workload's extra system time) over the GiB of the workload on node 0 at the end."""
    iv = r["intervals"]
    acc = [row[1] for row in iv]
    p75 = sorted(acc)[int(0.75 * (len(acc) - 1))] if acc else 0
    stalls = [x < STALL_SHARE * p75 for x in acc]
    longest = run_ = 0
    for st in stalls:
        run_ = run_ + 1 if st else 0
        longest = max(longest, run_)
    total = sum(acc)
    fast = sum(row[2] for row in iv)
    oracle = sum(row[4] for row in iv)
    after = [row for row in iv if r.get("rotated_at_s") is not None
             and row[0] > r["rotated_at_s"]]
    after_total = sum(row[1] for row in after)
    lat = hmat_latencies()
    share = fast / total if total else None
    placed_gib = r["promoted_pages"] * g.PAGE / (1 << 30)
    if r["contender"].startswith("nb2"):
        cpu = max(0.0, r["workload_extra_stime_s"])
    else:
        cpu = (r["mechanism_cpu_s"] or 0.0) + (r["extra"].get("kdamond_cpu_s") or 0.0)
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "accesses_per_s_p75": p75,
        "rate_ratio_median": (statistics.median(x / p75 for x in acc) if p75 else None),
        "stall_s": sum(stalls), "longest_stall_s": longest,
        "main_thread_stime_s": ((iv[-1][6] - iv[0][6]) / ticks) if len(iv) > 1 else 0.0,
        "share": share,
        "share_after_rotation": (sum(row[2] for row in after) / after_total
                                 if after_total else None),
        "oracle_share": oracle / total if total else None,
        "latency_ns": (share * lat[FAST] + (1 - share) * lat[SLOW]
                       if share is not None and lat else None),
        "hmat_latency_ns": lat,
        "cpu_s_per_gib_placed": cpu / placed_gib if placed_gib > 0 else None,
    }


def hmat_latencies() -> dict[int, float]:
    """Read latency (ns) of node 0 and node 1 from node 0's CPUs, as HMAT gives them."""
    from kmigratedd.topology import discover

    topo = discover(g.FS)
    out = {}
    for n in (FAST, SLOW):
        h = topo.nodes[n].hmat if n in topo.nodes else None
        if h is not None and h.read_latency_ns:
            out[n] = float(h.read_latency_ns)
    return out if len(out) == 2 else {}


def kswapd_pid(node: int) -> int:
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/comm").read_text().strip() == f"kswapd{node}":
                    return int(d)
            except OSError:
                pass
    return 0


def mechanism(c: str, tmp: Path) -> Mechanism:
    if c.startswith("kmigratedd:"):
        return Kmigratedd(c.split(":", 1)[1], tmp)
    if c.startswith("nb2:"):
        return NumaBalancing(c.split(":", 1)[1])
    return DamonMigrateHot(tuned=c.endswith("-tuned"), cold=c.endswith("+cold"))


def run_full(c: str, a: argparse.Namespace, thr: float, out: dict[str, Any]
             ) -> list[dict[str, Any]]:
    """One contender on a full fast tier: a fresh cold process fills node 0 to
    --full-free-mib free first, and is gone after."""
    from workload import fill_node

    say(f"filling node 0 to {a.full_free_mib:.0f} MiB free with a cold process")
    filler = fill_node(FAST, a.full_free_mib)
    try:
        free = g.free_mib(FAST)
        regime = {"node0": "full", "node0_free_mib": free, "threshold_mib": thr,
                  "kernel_would_promote_unlimited": free > thr}
        with tempfile.TemporaryDirectory() as td:
            try:
                return [run_one(mechanism(c, Path(td)), a, regime, filler)]
            except Exception as exc:  # noqa: BLE001 - record and go on
                say(f"   !! {c} failed: {exc!r}")
                out["skipped"][f"{c} ({len(out['runs'])})"] = f"failed: {exc!r}"
                return []
    finally:
        if filler is not None:
            filler.stop()


def fmt(v: float | None, f: str = "{:.1f}") -> str:
    return "-" if v is None else f.format(v)


def main() -> int:
    g.require_vm("benchmarks/guest/quality.py")
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--case", default="dense")
    ap.add_argument("--hot-mib", type=float, default=128)
    ap.add_argument("--cold-mib", type=float, default=128)
    ap.add_argument("--sparse", type=int, default=1)
    ap.add_argument("--zipf", type=float, default=0.0,
                    help="Zipf-distributed accesses of this exponent over the hot region, "
                         "its pages spread by a fixed permutation (0: sweeps of the hot set)")
    ap.add_argument("--rotate", action="store_true",
                    help="rotate the hot pages half way through --run-s (with --zipf)")
    ap.add_argument("--flush-ms", type=int, default=10)
    ap.add_argument("--run-s", type=float, default=0,
                    help="every contender runs this long (0: until --tail-s after t90)")
    ap.add_argument("--bound-s", type=float, default=120)
    ap.add_argument("--tail-s", type=float, default=10)
    ap.add_argument("--interval-s", type=float, default=1)
    ap.add_argument("--probe-every", type=int, default=5,
                    help="read the daemon's metrics every this many intervals")
    ap.add_argument("--baseline-s", type=float, default=5)
    ap.add_argument("--lead-s", type=float, default=0,
                    help="the workload runs at least this long before the mechanism starts")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every contender this many times, interleaved")
    ap.add_argument("--fill-free-mib", type=float, default=700,
                    help="node 0 filled to this many MiB free for every contender but the "
                         "*:empty ones (0: node 0 as booted for all)")
    ap.add_argument("--full-free-mib", type=float, default=0,
                    help="the full fast tier case: before each contender a fresh cold "
                         "process fills node 0 to this many MiB free (0: off)")
    ap.add_argument("--contenders", default="kmigratedd:auto,kmigratedd:hint-faults,"
                    "kmigratedd:damon,kmigratedd:idle,nb2:filled,damon:migrate_hot,"
                    "damon:migrate_hot-tuned,nb2:empty")
    a = ap.parse_args()
    from workload import fill_node

    out: dict[str, Any] = {"guest": g.guest_info(), "params": vars(a), "runs": [],
                           "skipped": {}}
    thr = kernel_promote_threshold_mib()
    out["kernel_promote_threshold_mib"] = thr
    out["hmat_latency_ns"] = {str(k): v for k, v in hmat_latencies().items()}
    say(f"guest: {out['guest']}")
    say(f"kernel free-space threshold on node 0 (numa_balancing=2 promotes without limits "
        f"above it): {thr:.0f} MiB free")
    wanted = [c.strip() for c in a.contenders.split(",") if c.strip()]
    todo = []
    for c, why in available(wanted):
        if why:
            say(f"skip {c}: {why}")
            out["skipped"][c] = why
        else:
            todo.append(c)
    try:
        for rep in range(a.repeat):
            say(f"== repetition {rep + 1} of {a.repeat}")
            if a.full_free_mib > 0:
                for c in todo:
                    for r in run_full(c, a, thr, out):
                        r["rep"] = rep
                        out["runs"].append(r)
                    g.dump(a.out, out)
            else:
                run_groups(todo, a, thr, out, rep, fill_node)
    finally:
        write(NB, "0")
    g.dump(a.out, out)
    return 0


def run_groups(todo: list[str], a: argparse.Namespace, thr: float, out: dict[str, Any],
               rep: int, fill_node: Any) -> None:
    """One repetition of the contenders: those on a filled node 0 (one filler for them
    all), then the ``*:empty`` ones with node 0 as booted (all of them with
    --fill-free-mib 0)."""
    fill = a.fill_free_mib > 0
    filled = [c for c in todo if fill and not c.endswith(":empty")]
    empty = [c for c in todo if c not in filled]
    filler = None
    try:
        for group, full in ((filled, True), (empty, False)):
            if not group:
                continue
            if full:
                say(f"filling node 0 to {a.fill_free_mib:.0f} MiB free")
                filler = fill_node(FAST, a.fill_free_mib)
            elif filler is not None:
                filler.stop()
                filler = None
            for c in group:
                free = g.free_mib(FAST)
                regime = {"node0": "filled" if full else "empty", "node0_free_mib": free,
                          "threshold_mib": thr, "kernel_would_promote_unlimited": free > thr}
                with tempfile.TemporaryDirectory() as td:
                    mech = mechanism(c, Path(td))
                    try:
                        r = run_one(mech, a, regime)
                        r["rep"] = rep
                        out["runs"].append(r)
                    except Exception as exc:  # noqa: BLE001 - record and go on
                        say(f"   !! {c} failed: {exc!r}")
                        out["skipped"][f"{c} (repetition {rep + 1})"] = f"failed: {exc!r}"
                g.dump(a.out, out)
    finally:
        if filler is not None:
            filler.stop()


if __name__ == "__main__":
    raise SystemExit(main())
