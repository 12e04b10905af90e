"""Writes the fake sysfs trees under tests/data/<name>/sys (checked in).

Run ``python tests/data/make_sysfs_trees.py`` after changing a topology below;
the files mimic what Linux 6.12 shows (drivers/base/node.c, mm/memory-tiers.c,
drivers/acpi/numa/hmat.c), including the node*/memoryN symlinks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLOCK = 1 << 30  # memory block size (x86 uses 128 MiB to 2 GiB)

# name: (nodes, tiers, hmat)
# nodes: id -> (cpulist, mem MiB, free MiB, first block, distance row)
TREES = {
    "single": (
        {0: ("0-3", 8192, 6000, 0, [10])},
        {4: "0"},
        {},
    ),
    "cxl2": (
        {0: ("0-3", 8192, 6000, 0, [10, 20]),
         1: ("", 4096, 4000, 8, [20, 10])},
        {4: "0", 22: "1"},
        {0: (100, 100, 20000, 20000), 1: (300, 320, 5000, 4000)},
    ),
    "twosocket": (
        {0: ("0-3", 8192, 6000, 0, [10, 21, 14, 24]),
         1: ("4-7", 8192, 6000, 8, [21, 10, 24, 14]),
         2: ("", 4096, 4000, 16, [14, 24, 10, 26]),
         3: ("", 4096, 4000, 20, [24, 14, 26, 10])},
        {4: "0-1", 22: "2-3"},
        {0: (100, 100, 20000, 20000), 1: (100, 100, 20000, 20000),
         2: (280, 300, 6000, 5000), 3: (280, 300, 6000, 5000)},
    ),
    "onetier": (
        {0: ("0-1", 2048, 1500, 0, [10, 20]),
         1: ("", 2048, 2000, 2, [20, 10])},
        {4: "0-1"},
        {},
    ),
}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make(name: str) -> None:
    nodes, tiers, hmat = TREES[name]
    root = HERE / name
    shutil.rmtree(root, ignore_errors=True)
    sysn = root / "sys/devices/system/node"
    ids = sorted(nodes)
    ranges = ",".join(str(i) for i in ids) if len(ids) < 3 else f"{ids[0]}-{ids[-1]}"
    for f in ("online", "possible", "has_memory", "has_normal_memory"):
        write(sysn / f, ranges + "\n")
    cpu_nodes = [i for i in ids if nodes[i][0]]
    write(sysn / "has_cpu", ",".join(map(str, cpu_nodes)) + "\n")
    mem = root / "sys/devices/system/memory"
    write(mem / "block_size_bytes", f"{BLOCK:x}\n")
    for nid in ids:
        cpus, total, free, first, row = nodes[nid]
        nd = sysn / f"node{nid}"
        write(nd / "cpulist", cpus + "\n")
        write(nd / "distance", " ".join(map(str, row)) + "\n")
        write(nd / "meminfo", "".join(
            f"Node {nid} {k}: {v:>15} kB\n" for k, v in
            (("MemTotal", total * 1024), ("MemFree", free * 1024),
             ("MemUsed", (total - free) * 1024), ("Active", 1000), ("Inactive", 2000))
        ) + f"Node {nid} HugePages_Total:     0\n")
        for b in range(first, first + total * (1 << 20) // BLOCK):
            write(mem / f"memory{b}" / "state", "online\n")
            os.symlink(f"../../memory/memory{b}", nd / f"memory{b}")
        if nid in hmat:
            rl, wl, rb, wb = hmat[nid]
            for access in ("access0", "access1"):
                ini = nd / access / "initiators"
                for k, v in (("read_latency", rl), ("write_latency", wl),
                             ("read_bandwidth", rb), ("write_bandwidth", wb)):
                    write(ini / k, f"{v}\n")
                # initiator: the nearest node with CPUs
                near = min(cpu_nodes, key=lambda c: (row[ids.index(c)], c))
                os.symlink(f"../../../node{near}", ini / f"node{near}")
    tiering = root / "sys/devices/virtual/memory_tiering"
    for tid, nodelist in tiers.items():
        write(tiering / f"memory_tier{tid}" / "nodelist", nodelist + "\n")


if __name__ == "__main__":
    for tree in TREES:
        make(tree)
        print("wrote", HERE / tree)
