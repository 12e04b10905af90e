"""Topology against checked-in fake sysfs trees (tests/data/*/sys) and the live host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmigratedd.errors import TopologyError
from kmigratedd.kernelfs import KernelFs, parse_cpulist
from kmigratedd.topology import discover, read_node_meminfo

GiB = 1 << 30


def tree(data_dir: Path, name: str) -> KernelFs:
    return KernelFs(data_dir / name)


@pytest.mark.parametrize("text,expected", [
    ("", set()), ("0", {0}), ("0-3", {0, 1, 2, 3}), ("0-1,4,6-7\n", {0, 1, 4, 6, 7}),
])
def test_parse_cpulist(text, expected):
    assert parse_cpulist(text) == expected


def test_single_node(data_dir):
    t = discover(tree(data_dir, "single"), page_size=4096)
    assert list(t.nodes) == [0]
    n = t.nodes[0]
    assert n.cpus == {0, 1, 2, 3} and not n.cpuless
    assert n.mem_total_bytes == 8 * GiB and n.mem_free_bytes == 6000 << 20
    assert n.distances == {0: 10}
    assert [(x.rank, x.kernel_id, x.nodes) for x in t.tiers] == [(0, 4, (0,))]
    assert t.targets == {} and t.fast_nodes == () and n.hmat is None


def test_dram_plus_cxl_with_hmat(data_dir):
    t = discover(tree(data_dir, "cxl2"), page_size=4096)
    assert t.nodes[1].cpuless and not t.nodes[0].cpuless
    assert [(x.kernel_id, x.nodes) for x in t.tiers] == [(4, (0,)), (22, (1,))]
    assert t.tier_of(1).rank == 1 and t.tier_source == "kernel"
    assert t.targets == {1: 0} and t.fast_nodes == (0,) and t.slow_nodes == (1,)
    h0, h1 = t.nodes[0].hmat, t.nodes[1].hmat
    assert (h0.read_latency_ns, h0.read_bandwidth_mb_per_s) == (100, 20000)
    assert (h1.read_latency_ns, h1.write_latency_ns) == (300, 320)
    assert (h1.read_bandwidth_mb_per_s, h1.write_bandwidth_mb_per_s) == (5000, 4000)
    assert h1.initiators == {0}
    assert t.nodes[1].distances == {0: 20, 1: 10}


def pfn_to_node(t, pfn: int) -> int | None:
    """The node of a PFN by the memory-block table the C helpers use."""
    shift, table = t.block_node_table()
    block = (pfn * t.page_size) >> shift
    node = table[block] if block < len(table) else -1
    return None if node < 0 else node


def test_pfn_to_node(data_dir):
    t = discover(tree(data_dir, "cxl2"), page_size=4096)
    block_pages = GiB // 4096
    assert t.block_size_bytes == GiB
    assert pfn_to_node(t, 0) == 0
    assert pfn_to_node(t, 8 * block_pages - 1) == 0
    assert pfn_to_node(t, 8 * block_pages) == 1
    assert pfn_to_node(t, 12 * block_pages - 1) == 1
    assert pfn_to_node(t, 12 * block_pages) is None  # past the last block


def test_two_sockets_each_with_cxl(data_dir):
    t = discover(tree(data_dir, "twosocket"), page_size=4096)
    assert len(t.nodes) == 4 and len(t.tiers) == 2
    assert t.tiers[0].nodes == (0, 1) and t.tiers[1].nodes == (2, 3)
    assert t.targets == {2: 0, 3: 1}  # each CXL node promotes to its own socket's DRAM
    assert t.fast_nodes == (0, 1)
    assert t.nodes[2].cpuless and t.nodes[3].cpuless
    assert pfn_to_node(t, 20 * GiB // 4096) == 3


def test_one_tier_needs_an_override(data_dir):
    fs = tree(data_dir, "onetier")
    t = discover(fs, page_size=4096)
    assert len(t.tiers) == 1 and t.targets == {}
    t = discover(fs, tiers=[[0], [1]], page_size=4096)
    assert t.tier_source == "config"
    assert [(x.rank, x.kernel_id, x.nodes) for x in t.tiers] == [(0, None, (0,)), (1, None, (1,))]
    assert t.targets == {1: 0}


def test_explicit_target_override(data_dir):
    t = discover(tree(data_dir, "twosocket"), promotion_targets={3: 0}, page_size=4096)
    assert t.targets == {2: 0, 3: 0}
    t = discover(tree(data_dir, "onetier"), promotion_targets={1: 0}, page_size=4096)
    assert t.targets == {1: 0}


@pytest.mark.parametrize("kwargs,message", [
    ({"tiers": [[0], [5]]}, "node 5 is not online"),
    ({"tiers": [[0], [1, 0]]}, "listed in two tiers"),
    ({"tiers": [[0]]}, "node(s) 1 are in no tier"),
    ({"promotion_targets": {1: 9}}, "node 9 is not online"),
    ({"promotion_targets": {1: 1}}, "cannot promote to itself"),
    ({"promotion_targets": {0: 1, 1: 0}}, "which itself promotes"),
])
def test_bad_overrides(data_dir, kwargs, message):
    with pytest.raises(TopologyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        discover(tree(data_dir, "onetier"), page_size=4096, **kwargs)


def test_node_meminfo_in_bytes(data_dir):
    info = read_node_meminfo(tree(data_dir, "cxl2"), 1)
    assert info["MemTotal"] == 4 * GiB and info["MemUsed"] == 96 << 20
    assert info["HugePages_Total"] == 0  # counts are not scaled
    # only the keys asked for (found by search), with the same values
    some = read_node_meminfo(tree(data_dir, "cxl2"), 1, "MemUsed", "HugePages_Total", "Nope")
    assert some == {"MemUsed": info["MemUsed"], "HugePages_Total": 0}


def test_describe_mentions_targets(data_dir):
    text = discover(tree(data_dir, "twosocket"), page_size=4096).describe()
    assert "node 2: tier 1" in text and "promotes to node 0" in text
    assert "node 3: tier 1" in text and "promotes to node 1" in text


def test_live_host_tree():
    fs = KernelFs()
    t = discover(fs)
    online = parse_cpulist(fs.read("/sys/devices/system/node/online"))
    assert set(t.nodes) == online
    cpus = set().union(*(n.cpus for n in t.nodes.values()))
    assert cpus == parse_cpulist(fs.read("/sys/devices/system/cpu/online"))
    total = sum(n.mem_total_bytes for n in t.nodes.values())
    with open("/proc/meminfo") as f:
        mem_total = int(f.readline().split()[1]) * 1024
    # Node totals can be below /proc/meminfo's: this host's hypervisor adds memory
    # (virtio-mem/balloon) that node*/meminfo does not count.
    assert 0 < total <= mem_total
    for n in t.nodes.values():
        assert n.distances.get(n.id) == 10
    # Every tier node is online and every online node is in exactly one tier.
    assert sorted(x for tier in t.tiers for x in tier.nodes) == sorted(online)
    # The PFN of a page of ours maps to the node move_pages reports for it.
    if os.geteuid() == 0 and t.block_size_bytes:
        import ctypes
        import mmap

        from kmigratedd import shim
        from array import array

        m = mmap.mmap(-1, 4096)
        m[0] = 1
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(addr // 4096 * 8)
            entry = int.from_bytes(f.read(8), "little")
        pfn = entry & ((1 << 55) - 1)
        if entry >> 63 and pfn:
            assert pfn_to_node(t, pfn) == shim.query_nodes(0, array("Q", [addr]))[0]


def test_physical_ranges_of_the_online_memory_blocks(data_dir, tmp_path):
    """A node's physical memory: its memory blocks merged where they touch, an offline one
    (hot-removed memory) left out."""
    import shutil

    shutil.copytree(data_dir / "cxl2", tmp_path / "root", symlinks=True)
    online = tmp_path / "root/sys/devices/system/memory/memory3/online"
    online.write_text("0\n")
    t = discover(KernelFs(tmp_path / "root"), page_size=4096)
    assert 3 not in t.nodes[0].memory_blocks
    assert t.physical_ranges(0) == [(0, 3 * GiB), (4 * GiB, 8 * GiB)]
    assert t.physical_ranges(1) == [(8 * GiB, 12 * GiB)]
