"""``kmigratedctl``: inspect what kmigratedd sees.

``kmigratedctl topology`` prints the nodes, memory tiers and promotion targets
the daemon would use with a given config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import config as config_mod
from .errors import ConfigError, KmigratedError
from .kernelfs import KernelFs
from .topology import discover


def _topology_json(topo: object) -> dict[str, object]:
    from .topology import Topology

    assert isinstance(topo, Topology)
    return {
        "tier_source": topo.tier_source,
        "tiers": [{"rank": t.rank, "kernel_id": t.kernel_id, "nodes": list(t.nodes)}
                  for t in topo.tiers],
        "promotion_targets": {str(k): v for k, v in topo.targets.items()},
        "nodes": {str(n.id): {
            "cpus": sorted(n.cpus), "mem_total_bytes": n.mem_total_bytes,
            "mem_free_bytes": n.mem_free_bytes,
            "distances": {str(k): v for k, v in n.distances.items()},
            "hmat_read_latency_ns": n.hmat.read_latency_ns if n.hmat else None,
            "hmat_read_bandwidth_mb_per_s": n.hmat.read_bandwidth_mb_per_s if n.hmat else None,
        } for n in topo.nodes.values()},
        "memory_block_size_bytes": topo.block_size_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kmigratedctl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("topology", help="nodes, tiers and promotion targets")
    t.add_argument("-c", "--config", metavar="FILE", help="config with tier/target overrides")
    t.add_argument("--json", action="store_true", help="print JSON")
    t.add_argument("--root", metavar="DIR", default="/", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
        topo = discover(KernelFs(Path(args.root)), tiers=cfg.topology.tiers,
                        promotion_targets=cfg.topology.promotion_targets)
    except ConfigError as exc:
        print(f"kmigratedctl: {exc}", file=sys.stderr)
        return 2
    except KmigratedError as exc:
        print(f"kmigratedctl: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_topology_json(topo), indent=2))
    else:
        print(topo.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
