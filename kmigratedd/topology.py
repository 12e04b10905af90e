"""NUMA topology and memory tiers, read from sysfs.

Sources (all under the :class:`~kmigratedd.kernelfs.KernelFs` root):

- ``/sys/devices/system/node/{online,node*/cpulist,node*/meminfo,node*/distance}``;
- ``/sys/devices/virtual/memory_tiering/memory_tier*/nodelist``: the kernel's memory
  tiers (mm/memory-tiers.c). The tier id is the abstract distance divided by
  ``MEMTIER_CHUNK_SIZE``, so a larger id is a slower tier (DRAM is ``memory_tier4``);
- ``/sys/devices/system/node/node*/access{0,1}/initiators/*``: HMAT latency (ns) and
  bandwidth (MB/s), when firmware provides an HMAT;
- ``/sys/devices/system/memory/block_size_bytes`` (hex) and the ``node*/memoryN``
  links of the online blocks: memory block N holds PFNs [N * block_pages,
  (N + 1) * block_pages).

The promotion target of a node in a slower tier is the nearest node (by SLIT
distance, then lowest id) of the fastest tier that has memory. Config may
override both the tiers (kernels that put every node in one tier, such as
Debian's 6.1 without HMAT-driven tiers) and individual targets.
"""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import TopologyError
from .kernelfs import KernelFs, line_with, parse_cpulist

NODE_DIR = "/sys/devices/system/node"
TIER_DIR = "/sys/devices/virtual/memory_tiering"
MEMORY_DIR = "/sys/devices/system/memory"

_MEMINFO_RX = re.compile(r"Node\s+\d+\s+(\S+?):\s+(\d+)(\s+kB)?")


@dataclass(frozen=True, slots=True)
class HmatAccess:
    """HMAT performance of a node as seen from its nearest initiators (access class)."""

    read_latency_ns: int | None
    write_latency_ns: int | None
    read_bandwidth_mb_per_s: int | None
    write_bandwidth_mb_per_s: int | None
    initiators: frozenset[int]


@dataclass(frozen=True, slots=True)
class Node:
    id: int
    cpus: frozenset[int]
    mem_total_bytes: int
    mem_free_bytes: int
    distances: Mapping[int, int]
    memory_blocks: tuple[int, ...]
    hmat: HmatAccess | None  # access0: any initiator
    hmat_cpu: HmatAccess | None  # access1: CPU initiators only

    @property
    def cpuless(self) -> bool:
        return not self.cpus

    @property
    def has_memory(self) -> bool:
        return self.mem_total_bytes > 0


@dataclass(frozen=True, slots=True)
class Tier:
    """One memory tier. ``rank`` 0 is the fastest; ``kernel_id`` is N of memory_tierN."""

    rank: int
    kernel_id: int | None
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class Topology:
    nodes: Mapping[int, Node]
    tiers: tuple[Tier, ...]
    tier_source: str  # "kernel" (memory_tier*) or "config" (topology.tiers)
    targets: Mapping[int, int]  # slow node -> promotion target
    block_size_bytes: int
    page_size: int

    def tier_of(self, node: int) -> Tier | None:
        for tier in self.tiers:
            if node in tier.nodes:
                return tier
        return None

    @property
    def fast_nodes(self) -> tuple[int, ...]:
        """Nodes that are the promotion target of at least one slower node."""
        return tuple(sorted(set(self.targets.values())))

    @property
    def slow_nodes(self) -> tuple[int, ...]:
        return tuple(sorted(self.targets))

    def sources(self, node: int) -> tuple[int, ...]:
        """The slower nodes whose pages promote to ``node``."""
        return tuple(sorted(s for s, d in self.targets.items() if d == node))

    def demotion_target(self, node: int) -> int | None:
        """Where cold pages of the fast ``node`` go: the nearest of the slower nodes that
        promote to it (by distance, then id); None if none does."""
        below = self.sources(node)
        if not below:
            return None
        dist = self.nodes[node].distances
        return min(below, key=lambda s: (dist.get(s, 255), s))

    def block_node_table(self) -> tuple[int, array[int]]:
        """(block_shift, node of each memory block or -1): PFN/phys → node in C."""
        shift = self.block_size_bytes.bit_length() - 1
        last = max((b for n in self.nodes.values() for b in n.memory_blocks), default=-1)
        table = array("i", [-1]) * (last + 1)
        for n in self.nodes.values():
            for b in n.memory_blocks:
                table[b] = n.id
        return shift, table

    def physical_ranges(self, node: int) -> list[tuple[int, int]]:
        """Physical [start, end) ranges of ``node``'s online memory blocks, touching blocks
        merged."""
        size = self.block_size_bytes
        out: list[tuple[int, int]] = []
        for b in sorted(self.nodes[node].memory_blocks):
            start, end = b * size, (b + 1) * size
            if out and out[-1][1] == start:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        return out

    def slow_node_mask(self) -> bytes:
        """mask[node] = 1 for every node that has a promotion target."""
        size = max(self.nodes, default=0) + 1
        return bytes(1 if n in self.targets else 0 for n in range(size))

    def describe(self) -> str:
        """Multi-line human summary (for logs and --check-config)."""
        lines = []
        for tier in self.tiers:
            kid = f"memory_tier{tier.kernel_id}" if tier.kernel_id is not None else "config"
            lines.append(f"tier {tier.rank} ({kid}): nodes {','.join(map(str, tier.nodes))}")
        for n in self.nodes.values():
            ntier = self.tier_of(n.id)
            role = f"-> promotes to node {self.targets[n.id]}" if n.id in self.targets else ""
            hmat = ""
            if n.hmat and n.hmat.read_latency_ns is not None:
                hmat = f" hmat {n.hmat.read_latency_ns}ns/{n.hmat.read_bandwidth_mb_per_s}MB/s"
            lines.append(
                f"node {n.id}: tier {ntier.rank if ntier else '-'} "
                f"cpus {len(n.cpus)} mem {n.mem_total_bytes >> 20} MiB "
                f"free {n.mem_free_bytes >> 20} MiB{hmat} {role}".rstrip()
            )
        return "\n".join(lines)


def read_node_meminfo(fs: KernelFs, node: int, *keys: str) -> dict[str, int]:
    """``node*/meminfo`` as a dict (only ``keys`` if given); kB values converted to
    bytes, counts as is."""
    out: dict[str, int] = {}
    text = fs.read_optional(f"{NODE_DIR}/node{node}/meminfo") or ""
    lines = text.splitlines()
    if keys:  # the lines of the keys asked for, found by search
        lines = [ln for k in keys if (ln := line_with(text, f" {k}:")) is not None]
    for line in lines:
        m = _MEMINFO_RX.match(line.strip())
        if m:
            value = int(m.group(2))
            out[m.group(1)] = value * 1024 if m.group(3) else value
    return out


def _read_hmat(fs: KernelFs, node: int, access: str) -> HmatAccess | None:
    base = f"{NODE_DIR}/node{node}/{access}/initiators"
    if not fs.exists(base):
        return None

    def num(name: str) -> int | None:
        text = fs.read_optional(f"{base}/{name}")
        return int(text) if text and text.strip() else None

    initiators = frozenset(int(n[4:]) for n in fs.listdir(base, r"node\d+"))
    return HmatAccess(num("read_latency"), num("write_latency"), num("read_bandwidth"),
                      num("write_bandwidth"), initiators)


def _read_nodes(fs: KernelFs) -> dict[int, Node]:
    online_text = fs.read_optional(f"{NODE_DIR}/online")
    if online_text is None:
        # Kernels without CONFIG_NUMA have no node directory: one node 0.
        ids = sorted(int(n[4:]) for n in fs.listdir(NODE_DIR, r"node\d+")) or [0]
    else:
        ids = sorted(parse_cpulist(online_text))
    if not ids:
        raise TopologyError(f"{fs.path(NODE_DIR)}/online lists no node")
    nodes: dict[int, Node] = {}
    for nid in ids:
        base = f"{NODE_DIR}/node{nid}"
        cpus = parse_cpulist(fs.read_optional(f"{base}/cpulist") or "")
        meminfo = read_node_meminfo(fs, nid)
        row = (fs.read_optional(f"{base}/distance") or "").split()
        # The distance row lists every online node in id order (drivers/base/node.c).
        distances = {other: int(d) for other, d in zip(ids, row)} if len(row) == len(ids) else {}
        blocks = tuple(int(n[6:]) for n in fs.listdir(base, r"memory\d+")
                       if (fs.read_optional(f"{MEMORY_DIR}/{n}/online") or "1").strip() != "0")
        nodes[nid] = Node(
            id=nid, cpus=cpus, mem_total_bytes=meminfo.get("MemTotal", 0),
            mem_free_bytes=meminfo.get("MemFree", 0), distances=distances,
            memory_blocks=blocks, hmat=_read_hmat(fs, nid, "access0"),
            hmat_cpu=_read_hmat(fs, nid, "access1"),
        )
    return nodes


def _kernel_tiers(fs: KernelFs, nodes: Mapping[int, Node]) -> list[Tier]:
    tiers = []
    for name in fs.listdir(TIER_DIR, r"memory_tier\d+"):
        members = parse_cpulist(fs.read(f"{TIER_DIR}/{name}/nodelist"))
        members = frozenset(n for n in members if n in nodes)
        if members:
            tiers.append((int(name[len("memory_tier"):]), tuple(sorted(members))))
    tiers.sort()
    return [Tier(rank=i, kernel_id=kid, nodes=ns) for i, (kid, ns) in enumerate(tiers)]


def _config_tiers(tiers: Sequence[Sequence[int]], nodes: Mapping[int, Node]) -> list[Tier]:
    seen: set[int] = set()
    out = []
    for rank, members in enumerate(tiers):
        for n in members:
            if n not in nodes:
                raise TopologyError(f"topology.tiers: node {n} is not online "
                                    f"(online: {','.join(map(str, nodes))})")
            if n in seen:
                raise TopologyError(f"topology.tiers: node {n} is listed in two tiers")
            seen.add(n)
        out.append(Tier(rank=rank, kernel_id=None, nodes=tuple(sorted(members))))
    missing = sorted(set(nodes) - seen)
    if missing:
        raise TopologyError(f"topology.tiers: online node(s) {','.join(map(str, missing))} "
                            "are in no tier")
    return out


def _nearest(node: Node, candidates: Sequence[Node]) -> int:
    def key(c: Node) -> tuple[int, int]:
        # Without a SLIT row fall back to node id order.
        return (node.distances.get(c.id, 1 << 30), c.id)

    return min(candidates, key=key).id


def _targets(nodes: Mapping[int, Node], tiers: Sequence[Tier],
             overrides: Mapping[int, int]) -> dict[int, int]:
    targets: dict[int, int] = {}
    if len(tiers) >= 2:
        fastest = [nodes[n] for n in tiers[0].nodes if nodes[n].has_memory]
        if fastest:
            for tier in tiers[1:]:
                for nid in tier.nodes:
                    targets[nid] = _nearest(nodes[nid], fastest)
    for src, dst in overrides.items():
        for n in (src, dst):
            if n not in nodes:
                raise TopologyError(f"topology.promotion_targets: node {n} is not online "
                                    f"(online: {','.join(map(str, nodes))})")
        if src == dst:
            raise TopologyError(f"topology.promotion_targets: node {src} cannot promote to itself")
        targets[src] = dst
    for src, dst in targets.items():
        if dst in targets:
            raise TopologyError(f"topology.promotion_targets: node {src} promotes to node {dst}, "
                                f"which itself promotes to node {targets[dst]}")
    return dict(sorted(targets.items()))


def discover(fs: KernelFs | None = None, *, tiers: Sequence[Sequence[int]] = (),
             promotion_targets: Mapping[int, int] | None = None,
             page_size: int | None = None) -> Topology:
    """Read the topology below ``fs`` and work out promotion targets.

    ``tiers`` (fastest first) replaces the kernel's memory tiers when given;
    ``promotion_targets`` replaces the computed target of the nodes it names.
    """
    fs = fs or KernelFs()
    page_size = page_size or os.sysconf("SC_PAGE_SIZE")
    nodes = _read_nodes(fs)
    if tiers:
        tier_list, source = _config_tiers(tiers, nodes), "config"
    else:
        tier_list = _kernel_tiers(fs, nodes)
        if not tier_list:
            # No memory_tiering directory (pre-6.1 kernel or !NUMA): one tier.
            tier_list = [Tier(rank=0, kernel_id=None, nodes=tuple(nodes))]
        source = "kernel"
    targets = _targets(nodes, tier_list, promotion_targets or {})
    block_text = fs.read_optional(f"{MEMORY_DIR}/block_size_bytes")
    block_size = int(block_text.strip(), 16) if block_text else 128 << 20
    return Topology(nodes=nodes, tiers=tuple(tier_list), tier_source=source, targets=targets,
                    block_size_bytes=block_size, page_size=page_size)
