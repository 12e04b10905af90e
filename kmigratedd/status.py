"""What ``kmigratedctl status`` shows, and the one-line state systemd gets: built from the
daemon's engine, its workers' snapshots (their fields from kmigratedd/families.py) and
the promotion rates the daemon keeps."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from . import __version__, families
from .capacity import node_free_bytes
from .topology import read_node_meminfo

if TYPE_CHECKING:
    from .daemon import Daemon


def state(d: Daemon) -> str:
    if d.engine is None or not d.engine.workers:
        return "idle"
    if d.paused:
        return "paused"
    return "dry-run" if d.config.workers.dry_run else "promoting"


IDLE_REASON = ("one memory tier: no node has a slower node to promote from, so nothing is "
               "promoted (kmigratedd --probe shows what this machine offers; topology.tiers "
               "sets the tiers where the kernel's are wrong)")


def idle_reason(d: Daemon) -> str | None:
    """Why the daemon promotes nothing, when it is idle."""
    if d.engine is not None and d.engine.workers:
        return None
    if d.topology is not None and not d.topology.targets:
        return IDLE_REASON
    return "no worker runs (starting, or stopped)"


def line(d: Daemon) -> str:
    """The daemon's state in a line (sd_notify STATUS=)."""
    e = d.engine
    if e is None or not e.workers:
        return "idle: nothing to promote"
    name = e.sampler.name if e.sampler else "-"
    return f"{state(d)}; sampler {name}; {e.promoted_pages()} pages promoted"


def build(d: Daemon) -> dict[str, Any]:
    """The status (JSON-ready)."""
    topo = d.topology
    assert topo is not None
    e = d.engine
    nodes = {}
    for nid, node in topo.nodes.items():
        tier = topo.tier_of(nid)
        entry: dict[str, Any] = {
            "tier": tier.rank if tier else None,
            "kernel_tier": tier.kernel_id if tier else None,
            "cpus": len(node.cpus),
            "mem_total_bytes": read_node_meminfo(d.fs, nid, "MemTotal").get("MemTotal", 0),
            "mem_free_bytes": node_free_bytes(d.fs, nid),
            "promotes_to": topo.targets.get(nid),
        }
        w = e.workers.get(nid) if e is not None else None
        if w is not None:
            pps, bps = d.rates.get(nid, (0.0, 0.0))
            entry["worker"] = {**families.status(w.snapshot()),
                               "promoted_pages_per_s": round(pps, 1),
                               "promoted_mb_per_s": round(bps / 1e6, 3)}
        nodes[str(nid)] = entry
    q = d.queues
    qs = q.stats() if q is not None else None
    return {
        "version": __version__, "pid": os.getpid(),
        "uptime_s": round(time.time() - d.started_at, 1),
        "state": state(d), "idle_reason": idle_reason(d), "paused": d.paused,
        "dry_run": d.config.workers.dry_run,
        "sampler": e.sampler.name if e and e.sampler else None,
        "sampler_stats": e.sampler.stats() if e and e.sampler else {},
        "sweep": ({"sampler": e.sweep.name, **e.sweep.stats()}
                  if e is not None and e.sweep is not None else None),
        "demotion": (e.demoter.stats() if e is not None and e.demoter is not None
                     else {"method": e.method if e is not None else "off"}),
        "pressure": e.pressure.stats() if e is not None and e.pressure is not None else None,
        "rate_interval_s": d.config.topology.refresh_interval_ms / 1000,
        "hot_threshold": e.router.threshold.value if e and e.router is not None else None,
        "queues": {"depth": qs.depth, "capacity_per_cpu": q.capacity_per_cpu,
                   "dropped": qs.dropped, "coalesced": qs.coalesced, "drained": qs.drained}
        if q is not None and qs is not None else None,
        "nodes": nodes,
        "config_file": d.config_path,
    }
