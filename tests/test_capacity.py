"""The floor the kernel's watermarks put under promotion when kswapd makes the room
(kmigratedd/capacity.py), on the zones of the tiered guest's 4.5 GiB node 0 as its
/proc/zoneinfo showed them (tests/data/zones/zoneinfo)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kmigratedd import capacity, procfs
from kmigratedd.kernelfs import KernelFs

PAGE = 4096
MiB = 1 << 20


def tree(tmp_path: Path, data_dir: Path, free: dict[tuple[int, str], int]) -> KernelFs:
    """A /proc with the guest's zoneinfo and a buddyinfo holding ``free`` pages per zone
    (as order-0 blocks, which is all buddyinfo's sum needs)."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True, exist_ok=True)
    shutil.copy(data_dir / "zones" / "zoneinfo", root / "proc" / "zoneinfo")
    write_free(root, free)
    return KernelFs(root)


def write_free(root: Path, free: dict[tuple[int, str], int]) -> None:
    lines = [f"Node {n}, zone {z:>8} {pages:6d} 0 0 0 0 0 0 0 0 0 0"
             for (n, z), pages in sorted(free.items())]
    (root / "proc" / "buddyinfo").write_text("\n".join(lines) + "\n")


def test_zoneinfo_parsed_per_zone(tmp_path: Path, data_dir: Path) -> None:
    fs = tree(tmp_path, data_dir, {})
    zones = [z for z in procfs.zone_marks(fs) if z.node == 0]
    assert [z.name for z in zones] == ["DMA", "DMA32", "Normal", "Movable", "Device"]
    dma32 = zones[1]
    assert (dma32.min, dma32.low, dma32.high, dma32.managed) == (10310, 12887, 15464, 756395)
    assert dma32.protection == (0, 0, 1463, 1463, 1463)
    assert capacity.movable_index(zones) == 3


def test_buddyinfo_sums_every_order(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "buddyinfo").write_text(
        "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1"
        "      1      3 \nNode 0, zone   Normal      5      2      1 \nNot a zone line\n")
    got = procfs.zone_free_pages(KernelFs(tmp_path))
    assert got == {(0, "DMA"): 256 + 512 + 3 * 1024, (0, "Normal"): 5 + 4 + 4}


# (DMA, DMA32, Normal) free pages of node 0 -> pages a movable allocation may take before
# reclaiming itself, and before waking kswapd.  DMA keeps all its pages from it (its
# reserve, 4,409 pages, is more than it has); DMA32 keeps 1,463 pages beyond each
# watermark (min 10,310, low 12,887); Normal's min is 5,120 and its low 6,400.
@pytest.mark.parametrize("free,to_direct,to_wake", [
    # A roomy node: every zone above its low watermark plus reserve.
    ((1920, 300000, 200000), (300000 - 11773) + (200000 - 5120),
     (300000 - 14350) + (200000 - 6400)),
    # Normal already below its min watermark: only DMA32 gives.
    ((1920, 300000, 4000), 300000 - 11773, 300000 - 14350),
    # DMA32 between its min and low watermarks (plus reserve), Normal 100 pages above low.
    ((1920, 13000, 6500), (13000 - 11773) + 1380, 100),
    # Every zone at its min watermark: nothing.
    ((1920, 11773, 5120), 0, 0),
])
def test_reclaim_levels(tmp_path: Path, data_dir: Path, free: tuple[int, int, int],
                        to_direct: int, to_wake: int) -> None:
    fs = tree(tmp_path, data_dir, {(0, z): f for z, f in zip(("DMA", "DMA32", "Normal"), free)})
    lv = capacity.NodeLevels(fs, 0, PAGE).read()
    assert lv is not None
    assert (lv.free, lv.to_direct, lv.to_wake) == (sum(free) * PAGE, to_direct * PAGE,
                                                   to_wake * PAGE)
    # The floor: half way between waking kswapd and reclaiming in the allocating task.
    assert lv.floor == sum(free) * PAGE - (to_direct + to_wake) * PAGE // 2
    assert lv.free - lv.to_direct <= lv.floor <= lv.free - lv.to_wake


def test_no_zoneinfo_no_levels(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    assert capacity.NodeLevels(KernelFs(tmp_path), 0, PAGE).read() is None


def test_watermarks_cached_free_pages_read_each_time(tmp_path: Path, data_dir: Path) -> None:
    now = [0.0]
    fs = tree(tmp_path, data_dir, {(0, "Normal"): 200000, (0, "DMA32"): 300000})
    levels = capacity.NodeLevels(fs, 0, PAGE, clock=lambda: now[0])
    first = levels.read()
    write_free(tmp_path / "root", {(0, "Normal"): 100000, (0, "DMA32"): 300000})
    (tmp_path / "root" / "proc" / "zoneinfo").write_text("")   # watermarks are cached
    second = levels.read()
    assert first is not None and second is not None
    assert second.free == first.free - 100000 * PAGE
    assert second.to_direct == first.to_direct - 100000 * PAGE
    now[0] += capacity.MARKS_REFRESH_S
    assert levels.read() is None   # re-read after MARKS_REFRESH_S: now there are none


def test_a_node_kswapd_gave_up_is_seen_in_zoneinfo(tmp_path: Path, data_dir: Path) -> None:
    fs = tree(tmp_path, data_dir, {(0, "Normal"): 6000, (0, "DMA32"): 11773})
    levels = capacity.NodeLevels(fs, 0, PAGE)
    lv = levels.read()
    assert lv is not None and not lv.unreclaimable
    zi = tmp_path / "root" / "proc" / "zoneinfo"
    zi.write_text(zi.read_text().replace("node_unreclaimable:  0", "node_unreclaimable:  1"))
    assert levels.read().unreclaimable is False  # type: ignore[union-attr]  # cached marks
    lv = levels.read(fresh=True)
    assert lv is not None and lv.unreclaimable
