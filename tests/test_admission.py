"""Admission between a worker's inbox and its pipeline: ping-pong hold-off, headroom,
rate limit (through a worker, with a scripted fake mover and a fake clock)."""

from __future__ import annotations

import shutil

from workerfake import (  # noqa: F401
    PAGE,
    Clock,
    FakeMover,
    MiB,
    fs,
    make,
    offer,
    pages,
    run,
    set_free,
    steps,
    worker,
)


def test_rate_limit(fs):
    mover, clock = FakeMover(), Clock()
    # 1 MB/s with a 512-page (2 MiB) burst.
    w, q = make(fs, mover, clock, rate_limit_mb_per_s=1.0, batch_pages=512)
    addrs = pages(4096)
    mover.place(5, addrs, 1)
    offer(q, 5, addrs)
    run(steps(w, clock, 20, dt=0.1))          # 2 s of simulated time
    moved = w.moves.promoted_pages * PAGE
    assert 2 * MiB <= moved <= 2 * MiB + 2.1e6   # burst + 2 s at 1 MB/s
    assert w.stats.rate_limited_batches > 0


def test_headroom_stops_and_resumes_with_hysteresis(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, min_free_bytes=100 * MiB, resume_free_bytes=200 * MiB,
                free_refresh_ms=10)
    addrs = pages(100)
    mover.place(5, addrs, 1)
    set_free(fs, 0, 50 * MiB)
    offer(q, 5, addrs)
    run(steps(w, clock, 4, dt=1))
    assert w.moves.promoted_pages == 0 and w.stats.headroom_blocked_seconds > 0
    set_free(fs, 0, 150 * MiB)                   # above min, below resume: still blocked
    run(steps(w, clock, 4, dt=1))
    assert w.moves.promoted_pages == 0 and w.headroom.blocked
    set_free(fs, 0, 100 * MiB + 40 * PAGE + 250 * MiB)   # resumes
    run(steps(w, clock, 4, dt=1))
    assert w.moves.promoted_pages == 100 and not w.headroom.blocked


def test_headroom_trims_a_batch_to_what_fits(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, min_free_bytes=1 * MiB, resume_free_bytes=1 * MiB,
                free_refresh_ms=100000)
    mover.place(5, pages(100), 1)
    set_free(fs, 0, 1 * MiB + 30 * PAGE)
    offer(q, 5, pages(100))
    run(steps(w, clock, 6, dt=1))
    assert w.moves.promoted_pages == 30       # the cached free figure shrinks as we move
    # Promotion took the node to its floor without crossing it: that is blocked too (the
    # gauge and the status say so) until the free memory is back above resume_free_bytes.
    assert w.headroom.blocked and w.snapshot().headroom_blocked


def test_with_kswapd_promotion_stops_between_the_nodes_min_and_low_watermarks(fs, data_dir):
    """With kswapd making room, the node's watermarks replace the headroom: promotion takes
    the node below its low watermarks (which wakes kswapd) but stops half way to its min
    watermarks, where move_pages' own allocations would reclaim with its batch's pages
    unmapped; it goes on once kswapd has the node back above the low watermarks."""
    from kmigratedd.capacity import NodeLevels

    fs.path("/proc").mkdir(exist_ok=True)
    shutil.copy(data_dir / "zones" / "zoneinfo", fs.path("/proc/zoneinfo"))

    def buddy(normal: int) -> None:   # DMA32 at its min watermark plus reserve: out of reach
        fs.path("/proc/buddyinfo").write_text(
            f"Node 0, zone DMA 1920\nNode 0, zone DMA32 {10310 + 1463}\n"
            f"Node 0, zone Normal {normal}\n")

    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, min_free_bytes=256 * MiB, resume_free_bytes=512 * MiB,
                free_refresh_ms=100000)
    w.w.capacity.levels = NodeLevels(fs, 0, PAGE, clock=clock)
    buddy(6400 + 100)                 # Normal 100 pages above its low watermark
    mover.place(5, pages(10000), 1)
    offer(q, 5, pages(10000))
    run(steps(w, clock, 8, dt=1))
    # DMA32 is out of reach, Normal (min 5120 pages, low 6400) gives 1380 pages before its
    # min watermark and 100 before its low one: promotion stops half way, 740 pages in.
    assert w.moves.promoted_pages == 740 and w.headroom.blocked
    assert w.snapshot().headroom_floor_bytes == (1920 + 11773 + 6500 - 740) * PAGE
    buddy(6000)           # kswapd not done yet: 440 pages above the floor, less than a batch
    w.refresh_free()
    run(steps(w, clock, 4, dt=1))
    assert w.moves.promoted_pages == 740 and w.headroom.blocked
    buddy(8960)           # kswapd balanced the node (Normal's promo watermark)
    w.refresh_free()
    run(steps(w, clock, 4, dt=1))
    assert w.moves.promoted_pages == 740 + (8960 - 5120 + 8960 - 6400) // 2
    assert w.headroom.blocked


def test_with_kswapd_given_up_promotion_lets_its_allocations_reclaim(fs, data_dir):
    """kswapd gives a node up after 16 reclaims in a row that failed (pages just written
    are young), and nothing wakes it again until some reclaim on the node succeeds: at the
    floor, the worker reads that (zoneinfo's node_unreclaimable) and lets promotion go
    below the min watermarks, whose reclaim is what brings kswapd back."""
    from kmigratedd.capacity import NodeLevels

    fs.path("/proc").mkdir(exist_ok=True)
    zoneinfo = fs.path("/proc/zoneinfo")
    shutil.copy(data_dir / "zones" / "zoneinfo", zoneinfo)
    fs.path("/proc/buddyinfo").write_text(
        f"Node 0, zone DMA 1920\nNode 0, zone DMA32 {10310 + 1463}\nNode 0, zone Normal 6500\n")
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, free_refresh_ms=100000)
    w.w.capacity.levels = NodeLevels(fs, 0, PAGE, clock=clock)
    mover.place(5, pages(2000), 1)
    offer(q, 5, pages(2000))
    run(steps(w, clock, 4, dt=1))
    assert w.moves.promoted_pages == 740 and w.headroom.blocked   # at the floor
    zoneinfo.write_text(zoneinfo.read_text().replace("node_unreclaimable:  0",
                                                     "node_unreclaimable:  1"))
    w.refresh_free()  # the next free_refresh_ms
    run(steps(w, clock, 6, dt=1))
    assert w.moves.promoted_pages == 2000 and w.capacity.hopeless
    assert w.snapshot().headroom_floor_bytes == 0


def test_pingpong_hold_off_in_the_worker(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, pingpong_window_ms=10_000, pingpong_holdoff_ms=60_000)
    mover.place(5, pages(8), 1)
    offer(q, 5, pages(8))
    run(steps(w, clock, 3, dt=1))
    assert w.moves.promoted_pages == 8
    mover.place(5, pages(8), 1)               # the kernel demoted them again
    offer(q, 5, pages(8))
    run(steps(w, clock, 3, dt=1))
    assert w.moves.promoted_pages == 8 and w.stats.pingpong_held == 8
    clock.t += 61
    offer(q, 5, pages(8))
    run(steps(w, clock, 3, dt=1))
    assert w.moves.promoted_pages == 16


def test_admission_alone_holds_back_what_the_headroom_and_the_rate_do_not_allow(fs):
    """The gate on its own: pages past the headroom and the rate limit go back to the
    inbox with the time to wait; a page promoted within the window is held."""
    import dataclasses
    from array import array

    from kmigratedd import config
    from kmigratedd.admission import Admission
    from kmigratedd.capacity import NodeCapacity
    from kmigratedd.inbox import Inbox
    from kmigratedd.policy import PingPongDamper
    from kmigratedd.stats import PolicyStats

    clock = Clock()
    cfg = dataclasses.replace(config.WorkersConfig(), min_free_bytes=1 * MiB,
                              resume_free_bytes=1 * MiB, rate_limit_mb_per_s=0,
                              batch_pages=16)
    damper, stats = PingPongDamper(60.0, 300.0), PolicyStats()
    gate = Admission(cfg, PAGE, damper, stats)
    capacity = NodeCapacity(fs, 0, PAGE, gate.headroom, lambda: 0, clock)
    capacity.configure(gate.headroom, cfg.free_refresh_ms, cfg.batch_pages * PAGE)
    inbox = Inbox(1000)
    keys = array("Q", pages(20))

    set_free(fs, 0, 1 * MiB + 12 * PAGE)                   # 12 pages above the floor
    capacity.refresh()
    passed, wait = gate.admit(inbox, capacity, 5, keys, 1.0, clock(), 0.05)
    assert len(passed) == 12 and wait == 0.0 and inbox.pages == 8

    set_free(fs, 0, 1 * MiB)                               # at the floor: all held
    capacity.refresh()
    passed, wait = gate.admit(inbox, capacity, 6, array("Q", pages(4, 100)), 1.0, clock(),
                              0.05)
    assert len(passed) == 0 and wait == 0.05 and inbox.pages == 12
    assert stats.headroom_blocked_seconds == 0.05

    damper.record_promoted(7, pages(2, 200), clock())      # promoted, back on a slow node
    set_free(fs, 0, 64 * MiB)
    capacity.refresh()
    passed, _ = gate.admit(inbox, capacity, 7, array("Q", pages(4, 200)), 1.0, clock(), 0.05)
    assert list(passed) == pages(2, 202) and stats.pingpong_held == 2

    gate.configure(dataclasses.replace(cfg, rate_limit_mb_per_s=16 * PAGE / 1e6))
    passed, wait = gate.admit(inbox, capacity, 8, array("Q", pages(40, 300)), 1.0, clock(),
                              0.05)
    assert len(passed) == 16 and wait == 0.0                # one burst (batch_pages)
    passed, wait = gate.admit(inbox, capacity, 8, array("Q", pages(4, 400)), 1.0, clock(),
                              0.05)
    assert len(passed) == 0 and 0 < wait <= cfg.max_wait_ms / 1000
    assert stats.rate_limited_batches >= 1
