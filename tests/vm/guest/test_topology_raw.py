"""Guest: the NUMA / HMAT / memory-tier topology the VM was booted with (plain sysfs reads).

Expectations per kernel (measured, not assumed):
  debian-6.12 / idle: HMAT-derived abstract distances put node 0 in memory_tier4, node 1 (3x
      latency, 1/4 bandwidth) in memory_tier54 and, on 3node, node 2 (6x latency, 1/8 bandwidth) in
      memory_tier221.
  debian-6.1: the HMAT attributes are exported the same way, but 6.1 does not turn them into
      abstract distances (that came with 6.7's memory-tier/HMAT integration): every node with
      memory sits in ONE tier, memory_tier4 (nodelist 0-1 on 2node).  A daemon that reads tiers
      on 6.1 therefore sees no slow tier and has to fall back to CPU-less nodes / HMAT / SLIT.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from numaraw import (
    hmat_attr,
    memory_tiers,
    node_cpus,
    node_distance,
    node_meminfo,
    node_tier,
    online_nodes,
)


def all_nodes(topology: str) -> list[int]:
    return {"2node": [0, 1], "3node": [0, 1, 2]}[topology]


def test_running_in_vm(topology: str, kernel: str) -> None:
    assert os.environ["KMIGRATEDD_IN_VM"] == "1"
    assert topology in ("2node", "3node")
    assert kernel in ("debian-6.12", "debian-6.1", "idle")


def test_nodes_online(topology: str) -> None:
    assert online_nodes() == all_nodes(topology)


def test_only_node0_has_cpus(topology: str, slow_nodes: list[int]) -> None:
    assert node_cpus(0) == list(range(os.cpu_count() or 0))
    for n in slow_nodes:
        assert node_cpus(n) == [], f"node{n} must be CPU-less"
    has_cpu = Path("/sys/devices/system/node/has_cpu").read_text().strip()
    assert has_cpu == "0"


def test_node_memory_sizes(topology: str) -> None:
    want = [int(x) for x in os.environ["KMIGRATEDD_VM_NODE_MEM_MIB"].split(",")]
    for n, mib in enumerate(want):
        total = node_meminfo(n)["MemTotal"] >> 20
        # the kernel reserves some of node 0 (and the memmap of each node)
        assert 0.85 * mib <= total <= mib, f"node{n}: MemTotal {total} MiB, configured {mib} MiB"


def test_distances(topology: str, slow_nodes: list[int]) -> None:
    nodes = all_nodes(topology)
    for n in nodes:
        d = node_distance(n)
        assert len(d) == len(nodes)
        assert d[n] == 10
    # every slow node's nearest other node is the fast node 0
    for n in slow_nodes:
        d = node_distance(n)
        others = {m: d[m] for m in nodes if m != n}
        assert min(others, key=lambda m: others[m]) == 0, f"node{n} distances {d}"


def test_hmat_attributes(topology: str, slow_nodes: list[int]) -> None:
    lat0 = hmat_attr(0, "read_latency")
    bw0 = hmat_attr(0, "read_bandwidth")
    assert lat0 and bw0, "node0 has no access0/initiators attributes (HMAT missing?)"
    last_lat = lat0
    for n in slow_nodes:
        init = Path(f"/sys/devices/system/node/node{n}/access0/initiators")
        assert (init / "node0").exists(), (
            f"node{n}'s initiator must be node0: {sorted(os.listdir(init))}"
        )
        lat = hmat_attr(n, "read_latency")
        bw = hmat_attr(n, "read_bandwidth")
        assert lat is not None and bw is not None
        assert lat > last_lat, f"node{n} read_latency {lat} not above {last_lat}"
        assert bw < bw0
        assert hmat_attr(n, "write_latency") == lat
        last_lat = lat
    if topology == "2node":
        # as configured by vmrun.py: 3x the latency, 1/4 the bandwidth
        assert hmat_attr(1, "read_latency") == 3 * lat0
        bw1 = hmat_attr(1, "read_bandwidth")
        assert bw1 is not None and bw1 * 4 == bw0


def test_memory_tiers(topology: str, kernel: str, slow_nodes: list[int]) -> None:
    tiers = memory_tiers()
    assert tiers, "no /sys/devices/virtual/memory_tiering/memory_tier*"
    if kernel == "debian-6.1":
        # 6.1: one tier for all memory nodes, HMAT notwithstanding
        assert tiers == {4: all_nodes(topology)}, tiers
        return
    t0 = node_tier(0)
    assert t0 == 4, tiers
    prev = t0
    for n in slow_nodes:
        t = node_tier(n)
        assert t is not None and t > prev, (
            f"node{n} tier {t} not below (larger id than) {prev}: {tiers}"
        )
        prev = t
    if topology == "2node":
        assert tiers == {4: [0], 54: [1]}


def test_numa_balancing_disabled_by_init() -> None:
    assert Path("/proc/sys/kernel/numa_balancing").read_text().strip() == "0"


def test_demotion_disabled_by_default() -> None:
    p = Path("/sys/kernel/mm/numa/demotion_enabled")
    assert p.read_text().strip() == "false"


def test_kernel_features(kernel: str) -> None:
    idle = Path("/sys/kernel/mm/page_idle/bitmap").exists()
    damon = Path("/sys/kernel/mm/damon/admin").exists()
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    assert "[never]" not in thp
    if kernel == "idle":
        assert idle and damon
    elif kernel == "debian-6.12":
        assert not idle and damon, "Debian 6.12: DAMON yes, CONFIG_IDLE_PAGE_TRACKING no"
    elif kernel == "debian-6.1":
        assert not idle and not damon, "Debian 6.1: neither page_idle nor DAMON"
    else:  # pragma: no cover
        pytest.fail(f"unknown kernel {kernel}")
