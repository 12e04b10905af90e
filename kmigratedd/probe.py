"""``kmigratedd --probe``: what this kernel and machine offer, without changing anything.

The memory tiers and nodes, each sampler (available, or why not), each demotion method,
the sysctls the daemon would change and their current values, and what ``auto`` would
pick.  It reads sysfs and procfs and opens (then closes) the perf events a sampler's
probe tries; it writes nothing, starts no kdamond and needs no root (a probe that does
is reported as unavailable, saying so).  On a host with one memory tier it says why
nothing would be promoted, and exits 0.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from . import demotion, samplers, sysctl
from .config import Config
from .errors import KmigratedError
from .kernelfs import KernelFs
from .samplers.base import SamplerContext
from .topology import Topology, read_node_meminfo

# The sysctls the daemon may set, by what sets them, and the value it writes.
CHANGES = {
    "hint-faults": ((sysctl.NUMA_BALANCING, "2 (3 where normal NUMA balancing is on)"),
                    (sysctl.PROMOTE_RATE_LIMIT, "0")),
    "kswapd": ((sysctl.DEMOTION_ENABLED, "1"),),
}


def _current(fs: KernelFs, s: sysctl.Sysctl) -> str | None:
    try:
        return fs.read(s.kpath).strip()
    except OSError:
        return None


def gather(cfg: Config, fs: KernelFs, topo: Topology) -> dict[str, Any]:
    """The probe's findings, JSON-ready."""
    ctx = SamplerContext(config=cfg, fs=fs, topology=topo, queues=cast(Any, None),
                         scope=cast(Any, None))
    found: dict[str, Any] = {"tiers": [], "nodes": {}, "samplers": {}, "demotion": {},
                             "sysctls": [], "auto": {}}
    for tier in topo.tiers:
        found["tiers"].append({"rank": tier.rank, "kernel_tier": tier.kernel_id,
                               "nodes": list(tier.nodes)})
    for nid, node in sorted(topo.nodes.items()):
        of = topo.tier_of(nid)
        found["nodes"][str(nid)] = {
            "tier": of.rank if of else None, "cpus": len(node.cpus),
            "mem_total_bytes": read_node_meminfo(fs, nid, "MemTotal").get("MemTotal", 0),
            "promotes_to": topo.targets.get(nid)}
    quiet = logging.getLogger("kmigratedd")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the probes' own log lines: the report says it all
    try:
        for name, factory in samplers.FACTORIES.items():
            try:
                why = factory.probe(ctx)
            except (OSError, KmigratedError) as exc:
                why = str(exc)
            found["samplers"][name] = {"available": why is None, "why_not": why,
                                       "what": factory.description}
        for name, dfactory in demotion.FACTORIES.items():
            why = dfactory.unavailable(fs)
            found["demotion"][name] = {"available": why is None, "why_not": why}
        pick = next((n for n in samplers.AUTO_ORDER
                     if found["samplers"].get(n, {}).get("available")), None)
        method = None
        if pick is not None:
            try:
                method = demotion.choose("auto", pick, fs)
            except KmigratedError as exc:
                method = f"none ({exc})"
    finally:
        quiet.setLevel(level)
    if not topo.targets:
        found["auto"] = {"sampler": None, "demotion": None,
                         "why": "one memory tier: no node has a slower node to promote from; "
                                "nothing would be promoted (topology.tiers sets the tiers "
                                "where the kernel's are wrong)"}
    else:
        found["auto"] = {"sampler": pick, "demotion": method,
                         "why": samplers.AUTO_REASON if pick else "no sampler can run here"}
        changes = list(CHANGES.get(pick or "", ())) + list(CHANGES.get(method or "", ()))
        for s, value in changes:
            found["sysctls"].append({"name": s.name, "now": _current(fs, s), "sets": value,
                                     "by": pick if s in dict(CHANGES.get(pick or "", ()))
                                     else method})
    return found


def render(found: dict[str, Any]) -> str:
    """The findings as text."""
    out = ["memory tiers (fastest first):"]
    for t in found["tiers"]:
        out.append(f"  tier {t['rank']}: nodes {', '.join(map(str, t['nodes']))}")
    for nid, n in found["nodes"].items():
        to = f", promotes to node {n['promotes_to']}" if n["promotes_to"] is not None else ""
        out.append(f"  node {nid}: tier {n['tier']}, {n['cpus']} cpus, "
                   f"{n['mem_total_bytes'] >> 20} MiB{to}")
    out.append("samplers:")
    for name, s in found["samplers"].items():
        state = "available" if s["available"] else f"not available: {s['why_not']}"
        out.append(f"  {name:12} {state}")
    out.append("demotion methods (besides the sampler's own cold pages, with damon and idle):")
    for name, d in found["demotion"].items():
        state = "available" if d["available"] else f"not available: {d['why_not']}"
        out.append(f"  {name:12} {state}")
    a = found["auto"]
    if a["sampler"] is None:
        out.append(f"auto: {a['why']}")
    else:
        out.append(f"auto: sampler {a['sampler']}, demotion {a['demotion']} ({a['why']})")
    if found["sysctls"]:
        out.append("sysctls it would set (saved and restored on exit or at the next start):")
        for s in found["sysctls"]:
            out.append(f"  {s['name']}: {s['now']} -> {s['sets']} (by {s['by']})")
    return "\n".join(out) + "\n"


def run(cfg: Config, fs: KernelFs, topo: Topology, as_json: bool) -> str:
    found = gather(cfg, fs, topo)
    return json.dumps(found, indent=2) + "\n" if as_json else render(found)
