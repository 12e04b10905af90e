"""The router, the node workers, their move pipelines and policy, driven with a scripted
fake mover and a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import shutil
import time
from array import array
from pathlib import Path

import pytest

from kmigratedd import config, shim
from concurrent.futures import ThreadPoolExecutor

from kmigratedd.errors import MovePagesError
from kmigratedd.inbox import Inbox
from kmigratedd.kernelfs import KernelFs
from kmigratedd.pipeline import MovePipeline, ShimMover
from kmigratedd.policy import HeadroomGuard, PingPongDamper, RetryOnce, TokenBucket
from kmigratedd.queues import CandidateQueues, QueueThreadError
from kmigratedd.router import Router
from kmigratedd.topology import Topology, discover
from kmigratedd.stats import MoveStats
from kmigratedd.worker import NodeWorker, inbox_limit

PAGE = 4096
BASE = 0x7F0000000000
MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeMover:
    """Pages live on nodes in a dict; scripted statuses override a move per page."""

    def __init__(self) -> None:
        self.where: dict[tuple[int, int], int] = {}
        self.script: dict[tuple[int, int], list[int]] = {}
        self.dead: set[int] = set()
        self.calls: list[tuple[int, int, int, int]] = []  # pid, pages, node, threads

    def place(self, pid: int, addrs, node: int) -> None:
        for a in addrs:
            self.where[(pid, a)] = node

    def query(self, pid: int, addrs: array) -> array:
        if pid in self.dead:
            raise MovePagesError(errno.ESRCH, "no such process")
        return array("i", [self.where.get((pid, a & ~0xFFF), -errno.ENOENT) for a in addrs])

    def move(self, pid, addrs, node, flags, threads):
        if pid in self.dead:
            raise MovePagesError(errno.ESRCH, "no such process")
        self.calls.append((pid, len(addrs), node, threads))
        out = array("i")
        for a in addrs:
            key = (pid, a & ~0xFFF)
            scripted = self.script.get(key)
            if scripted:
                out.append(scripted.pop(0))
                continue
            if key not in self.where:
                out.append(-errno.EFAULT)
                continue
            self.where[key] = node
            out.append(node)
        return shim.MoveResult(status=out, not_migrated=sum(1 for s in out if s != node))

    def on(self, pid: int, addrs, node: int) -> int:
        return sum(1 for a in addrs if self.where.get((pid, a)) == node)


@pytest.fixture
def fs(tmp_path: Path, data_dir: Path) -> KernelFs:
    shutil.copytree(data_dir / "cxl2", tmp_path / "root", symlinks=True)
    return KernelFs(tmp_path / "root")


def set_free(fs: KernelFs, node: int, free_bytes: int) -> None:
    p = fs.path(f"/sys/devices/system/node/node{node}/meminfo")
    lines = [ln for ln in p.read_text().splitlines() if "MemFree" not in ln]
    lines.insert(1, f"Node {node} MemFree: {free_bytes // 1024:>15} kB")
    p.write_text("\n".join(lines) + "\n")


def worker(node: int, fs: KernelFs, topo: Topology, mover, cfg, clock) -> NodeWorker:
    pipeline = MovePipeline(node, mover, MoveStats(), ThreadPoolExecutor(1),
                            page_size=topo.page_size)
    return NodeWorker(node, topology=topo, inbox=Inbox(inbox_limit(cfg)), pipeline=pipeline,
                      cfg=cfg, fs=fs, clock=clock)


class Stage:
    """A router and one worker for node 0, wired as the daemon wires them; ``step`` runs a
    router round, then a worker round."""

    def __init__(self, w: NodeWorker, router: Router) -> None:
        self.w, self.router = w, router

    def __getattr__(self, name: str):
        return getattr(self.w, name)

    @property
    def inbox_pages(self) -> int:
        return self.w.inbox.pages

    async def step(self) -> bool:
        await self.router.route_once()
        return await self.w.step()

    async def fill(self) -> int:
        return await self.router.route_once()

    async def promote_one(self, now: float) -> bool:
        """The worker's round, with the router taking candidates in while the kernel
        copies (in the daemon both run on the loop at once)."""
        done, _ = await asyncio.gather(self.w.promote_one(now), self.router.route_once())
        return done


def make(fs: KernelFs, mover: FakeMover, clock: Clock, **overrides) -> tuple[Stage,
                                                                            CandidateQueues]:
    base = dict(max_wait_ms=100, rate_limit_mb_per_s=0, min_free_bytes=0, resume_free_bytes=0,
                copy_threads=1, max_batch_ms=0)
    cfg = dataclasses.replace(config.WorkersConfig(), **{**base, **overrides})
    topo = discover(fs, page_size=PAGE)
    queues = CandidateQueues([0, 1], 1 << 16, page_size=PAGE)
    w = worker(0, fs, topo, mover, cfg, clock)
    router = Router(queues, {0: w.inbox}, topo, mover, cfg, clock=clock)
    return Stage(w, router), queues


def offer(queues: CandidateQueues, pid: int, addrs, cpu: int = 0, weight: int = 1) -> None:
    queues.push(cpu, array("i", [pid] * len(addrs)), array("Q", addrs),
                weights=array("I", [weight] * len(addrs)))


def pages(n: int, start: int = 0) -> list[int]:
    return [BASE + (start + i) * PAGE for i in range(n)]


def run(coro):
    return asyncio.run(coro)


async def steps(w: Stage, clock: Clock, n: int, dt: float = 0.0) -> None:
    for _ in range(n):
        await w.step()
        clock.t += dt


# --- pure policy tables --------------------------------------------------------


@pytest.mark.parametrize("rate,burst,events,expected", [
    (1000, 1000, [(0.0, 600), (0.0, 600), (0.5, 600), (10.0, 5000)], [600, 400, 500, 1000]),
    (0, 0, [(0.0, 10**9)], [10**9]),                      # 0 = unlimited
    (100, 50, [(0.0, 10), (0.0, 100), (0.2, 100)], [10, 40, 20]),
])
def test_token_bucket(rate, burst, events, expected):
    b = TokenBucket(rate, burst)
    assert [b.grant(want, t) for t, want in events] == expected


def test_token_bucket_wait_and_refund():
    b = TokenBucket(1000, 1000)
    assert b.grant(1000, 0.0) == 1000
    assert b.wait_for(500, 0.0) == pytest.approx(0.5)
    b.refund(300)
    assert b.grant(1000, 0.0) == 300


@pytest.mark.parametrize("frees,allowed", [
    ([1000, 500, 299, 350, 400, 399, 450, 500, 300], [1, 1, 0, 0, 0, 0, 0, 1, 1]),
    ([200, 600, 100], [0, 1, 0]),
])
def test_headroom_hysteresis(frees, allowed):
    g = HeadroomGuard(min_free_bytes=300, resume_free_bytes=500)
    assert [int(g.update(f)) for f in frees] == allowed


def test_headroom_allowance_never_crosses_the_floor():
    g = HeadroomGuard(300, 500)
    assert g.allowance(1000) == 700 and g.allowance(200) == 0 and g.allowance(400) == 0
    assert g.allowance(600) == 300
    # Promoting up to the floor (less than a page left above it) blocks too, until resume.
    assert g.allowance(303, unit=4) == 0 and g.blocked
    assert g.allowance(450, unit=4) == 0 and g.allowance(500, unit=4) == 200


def test_pingpong_damper():
    d = PingPongDamper(window_s=10, holdoff_s=100)
    d.record_promoted(7, [1, 2], now=0)
    assert d.filter(7, [1, 2, 3], now=5) == [3]          # 1 and 2 bounced back within 10 s
    assert d.pingpongs == 2
    assert d.filter(7, [1], now=50) == []                 # held off
    assert d.filter(7, [1], now=106) == [1]               # hold-off over
    d.record_promoted(7, [4], now=200)
    assert d.filter(7, [4], now=215) == [4]               # back after the window: no ping-pong
    d.record_promoted(8, [9], now=0)
    d.forget_pid(8)
    assert d.filter(8, [9], now=1) == [9]


def test_pingpong_damper_is_bounded():
    d = PingPongDamper(window_s=10, holdoff_s=100, max_entries=100)
    for i in range(10):
        d.record_promoted(1, range(i * 50, i * 50 + 50), now=0)
    assert d.size <= 100
    d.expire(now=11)
    assert d.size == 0 and not d.promoted


def test_pingpong_window_widens_while_promoted_pages_bounce():
    d = PingPongDamper(window_s=10, holdoff_s=100)
    d.adapt_window(promoted=1000, pingpongs=63, max_widen=16)    # under a batch's worth
    assert d.widen == 1
    d.adapt_window(promoted=1000, pingpongs=100, max_widen=16)   # 10%: not more
    assert d.widen == 1
    d.adapt_window(promoted=1000, pingpongs=101, max_widen=16)
    assert d.widen == 2 and d.window_now_s == 20
    d.adapt_window(promoted=0, pingpongs=500, max_widen=16)      # all held: still bouncing
    assert d.widen == 4
    for _ in range(5):
        d.adapt_window(promoted=10, pingpongs=500, max_widen=16)
    assert d.widen == 16
    # The widened window counts a page back after 150 s as a bounce, and holds it 1600 s.
    d.record_promoted(7, [1, 2], now=0)
    assert d.filter(7, [1], now=150) == [] and d.held[7][1] == 150 + 1600
    d.expire(now=150)
    assert 2 in d.promoted[7]                                    # kept for the wider window
    assert d.promoted_recently(7, [2], now=150) == {2}           # and not demoted within it
    d.record_demoted(7, [2], now=151)                            # unless by us: not a bounce
    assert 2 not in d.promoted[7] and d.filter(7, [2], now=152) == [] and d.pingpongs == 1
    d.adapt_window(promoted=100, pingpongs=1, max_widen=16)      # some bounce: no change
    assert d.widen == 16
    d.adapt_window(promoted=100, pingpongs=0, max_widen=16)      # none while promoting
    assert d.widen == 8
    d.adapt_window(promoted=0, pingpongs=0, max_widen=16)        # settled: kept
    assert d.widen == 8
    for _ in range(20):
        d.adapt_window(promoted=100, pingpongs=0, max_widen=16)
    assert d.widen == 1


def test_retry_once():
    r = RetryOnce(delay_s=1)
    assert r.failed(1, 10, now=0) is True
    assert r.due(0.5) == []
    assert r.due(1.0) == [(1, 10)]
    assert r.failed(1, 10, now=1.5) is False and r.dropped == 1   # second failure: dropped
    assert r.failed(1, 10, now=2) is True                         # a new episode


# --- workers with the fake mover ------------------------------------------------


def test_batching_and_max_wait(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, batch_pages=512)
    addrs = pages(1200)
    mover.place(5, addrs, 1)
    offer(q, 5, addrs[:600], cpu=0)
    offer(q, 5, addrs[600:], cpu=1)
    run(steps(w, clock, 6))
    assert [c[1] for c in mover.calls] == [512, 512]    # full batches go at once
    clock.t += 0.05
    run(steps(w, clock, 2))
    assert [c[1] for c in mover.calls] == [512, 512]    # the rest waits for max_wait
    clock.t += 0.06
    run(steps(w, clock, 2))
    assert [c[1] for c in mover.calls] == [512, 512, 176]
    assert mover.on(5, addrs, 0) == 1200
    assert w.moves.promoted == {(1, 0): 1200} and w.moves.outcomes["moved"] == 1200
    # The histogram of batch sizes: two in the 512 bucket, one in the 256 bucket.
    h = w.moves.batch_pages
    assert h.count == 3 and h.total == 1200
    assert h.counts[h.bounds.index(512)] == 2 and h.counts[h.bounds.index(256)] == 1


def test_candidates_on_the_fast_tier_or_gone_are_dropped(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock)
    mover.place(5, pages(10), 0)            # already fast
    mover.place(5, pages(10, 10), 1)
    offer(q, 5, pages(25))                  # 5 pages not mapped at all
    clock.t += 1
    run(steps(w, clock, 3, dt=1))
    assert w.router.stats.on_fast_tier == 10 and w.router.stats.gone_before_move == 5
    assert w.moves.promoted_pages == 10


def test_hotness_threshold_folds_across_cpus(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, min_samples=3)
    mover.place(5, pages(4), 1)
    offer(q, 5, pages(4), cpu=0, weight=2)   # 2 samples each...
    offer(q, 5, pages(2), cpu=1, weight=1)   # ...plus 1 for the first two pages
    run(steps(w, clock, 3, dt=1))
    assert w.moves.promoted_pages == 2 and w.router.stats.below_threshold == 2


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


def test_worker_expires_the_pingpong_table(fs):
    """Promoted pages are remembered only for the ping-pong window: the worker forgets
    older entries as its rounds go on, so the table does not grow without bound."""
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, pingpong_window_ms=2_000)
    for i in range(5):
        mover.place(5 + i, pages(100), 1)
        offer(q, 5 + i, pages(100))
        run(steps(w, clock, 2, dt=1))
    assert w.moves.promoted_pages == 500
    assert w.damper.size <= 200 and len(w.damper.promoted) <= 2
    clock.t += 10
    run(steps(w, clock, 2, dt=1))
    assert w.damper.size == 0 and not w.damper.promoted


def test_busy_retried_once_then_dropped(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, busy_retry_ms=500)
    mover.place(5, pages(4), 1)
    a0, a1 = pages(2)
    mover.script[(5, a0)] = [-errno.EBUSY]                 # busy once
    mover.script[(5, a1)] = [-errno.EBUSY, -errno.EBUSY]   # busy twice
    offer(q, 5, pages(4))
    run(steps(w, clock, 3, dt=0.2))
    assert w.moves.outcomes["moved"] == 2 and w.stats.busy_retried == 2
    run(steps(w, clock, 6, dt=0.2))
    assert w.moves.outcomes["moved"] == 3
    assert w.moves.outcomes["EBUSY"] == 3 and w.stats.busy_dropped == 1


def test_statuses_counted_by_outcome(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, enomem_backoff_ms=5000)
    addrs = pages(6)
    mover.place(5, addrs, 1)
    mover.script[(5, addrs[0])] = [-errno.EFAULT]
    mover.script[(5, addrs[1])] = [-errno.ENOENT]
    mover.script[(5, addrs[2])] = [-errno.EACCES]
    mover.script[(5, addrs[3])] = [-errno.ENOMEM]
    offer(q, 5, addrs)
    run(steps(w, clock, 3, dt=1))
    o = w.moves.outcomes
    assert (o["EFAULT"], o["ENOENT"], o["EACCES"], o["ENOMEM"], o["moved"]) == (1, 1, 1, 1, 2)
    assert w.stats.enomem_backoff_seconds == 5
    mover.place(5, pages(3, 100), 1)
    offer(q, 5, pages(3, 100))
    run(steps(w, clock, 3, dt=1))
    assert w.moves.outcomes["moved"] == 2                # backing off after ENOMEM
    clock.t += 5
    run(steps(w, clock, 3, dt=1))
    assert w.moves.outcomes["moved"] == 5


def test_vanished_pid_is_forgotten_and_the_worker_goes_on(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock)
    mover.place(5, pages(4), 1)
    mover.place(6, pages(4), 1)
    mover.dead.add(5)
    offer(q, 5, pages(4))
    offer(q, 6, pages(4))
    run(steps(w, clock, 3, dt=1))
    assert w.router.stats.pids_gone == 1 and w.router.stats.query_errors["ESRCH"] == 1
    assert w.moves.promoted_pages == 4


def test_pid_exiting_between_query_and_move(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock)
    mover.place(5, pages(4), 1)
    offer(q, 5, pages(4))
    run(w.fill())
    mover.dead.add(5)
    clock.t += 1
    run(steps(w, clock, 2))
    assert w.stats.pids_gone == 1 and w.inbox_pages == 0


def test_pause_and_resume(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock)
    mover.place(5, pages(4), 1)
    offer(q, 5, pages(4))
    w.w.paused = w.router.paused = True
    run(steps(w, clock, 3, dt=1))
    assert mover.calls == [] and len(q) == 4         # candidates wait (bounded) in the queues
    w.w.paused = w.router.paused = False
    run(steps(w, clock, 3, dt=1))
    assert w.moves.promoted_pages == 4


def test_dry_run_counts_without_moving(fs):
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, dry_run=True)
    mover.place(5, pages(10), 1)
    offer(q, 5, pages(10))
    run(steps(w, clock, 3, dt=1))
    assert mover.calls == [] and w.moves.dry_run_pages == 10
    assert mover.on(5, pages(10), 1) == 10


def test_the_router_routes_each_page_to_its_target(tmp_path, data_dir):
    root = tmp_path / "root"
    shutil.copytree(data_dir / "twosocket", root, symlinks=True)
    fs = KernelFs(root)
    topo = discover(fs, page_size=PAGE)
    q = CandidateQueues([0, 1], 1 << 12, page_size=PAGE)
    mover, clock = FakeMover(), Clock()
    cfg = dataclasses.replace(config.WorkersConfig(), rate_limit_mb_per_s=0, min_free_bytes=0,
                              resume_free_bytes=0, max_wait_ms=1)
    w0 = worker(0, fs, topo, mover, cfg, clock)
    w1 = worker(1, fs, topo, mover, cfg, clock)
    router = Router(q, {0: w0.inbox, 1: w1.inbox}, topo, mover, cfg, clock=clock)
    mover.place(5, pages(4), 2)        # node 2 promotes to node 0
    mover.place(5, pages(4, 4), 3)     # node 3 promotes to node 1
    offer(q, 5, pages(8))
    run(router.route_once())           # one drain, each page to its target's inbox
    assert w0.inbox.pages == 4 and w1.inbox.pages == 4
    assert router.stats.routed == {0: 4, 1: 4}
    clock.t += 1
    run(steps(Stage(w0, router), clock, 2, dt=1))
    run(steps(Stage(w1, router), clock, 2, dt=1))
    assert w0.moves.promoted == {(2, 0): 4} and w1.moves.promoted == {(3, 1): 4}


def test_copy_threads_decision(fs):
    mover, clock = FakeMover(), Clock()
    w, _ = make(fs, mover, clock, parallel_min_pages=1024)
    p = w.pipeline
    p.cfg = dataclasses.replace(p.cfg, copy_threads=4)
    assert p.threads_for(512) == 1 and p.threads_for(4096) == 4
    p.cfg = dataclasses.replace(p.cfg, copy_threads="auto")

    class Idle:
        def idle(self) -> int:
            return 1

    p.idle_cpus = Idle()  # type: ignore[assignment]
    assert p.threads_for(8192) == 1        # only one idle CPU: no parallel copy
    p.idle_cpus.idle = lambda: 3           # type: ignore[method-assign]
    assert p.threads_for(8192) == 3 and p.threads_for(1000) == 1


def test_shim_mover_parallel_slices_keep_order():
    import ctypes
    import mmap

    n = 256
    m = mmap.mmap(-1, n * PAGE)
    m.write(b"\1" * n * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    addrs = array("Q", range(base, base + n * PAGE, PAGE))
    addrs[5] = 4096  # an unmapped page keeps its place in the combined statuses
    pool = ThreadPoolExecutor(4)
    try:
        r = ShimMover(pool).move(0, addrs, 0, shim.MPOL_MF_MOVE, threads=4)
    finally:
        pool.shutdown()
    assert len(r.status) == n and r.status[5] in (-errno.EFAULT, -errno.ENOENT)
    assert [s for i, s in enumerate(r.status) if i != 5] == [0] * (n - 1)


def test_a_backlog_larger_than_the_inbox_is_not_lost(fs):
    """One hot process with more queued candidates than the inbox holds: the worker
    leaves the excess in the (bounded) queues instead of dropping it."""
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock, batch_pages=512)
    addrs = pages(16384)
    mover.place(5, addrs, 1)
    offer(q, 5, addrs[:8192], cpu=0)
    offer(q, 5, addrs[8192:], cpu=1)
    run(steps(w, clock, 100, dt=0.2))
    assert w.inbox.dropped == 0
    assert w.moves.promoted_pages == 16384 and mover.on(5, addrs, 0) == 16384


def test_inbox_overflow_drops_only_the_excess():
    inbox = Inbox(100)
    inbox.accept(5, array("Q", pages(80)), now=1.0)
    inbox.accept(6, array("Q", pages(50, 100)), now=2.0)
    assert inbox.pages == 100 and inbox.dropped == 30
    assert len(inbox.keys[5]) == 50 and len(inbox.keys[6]) == 50


def test_idle_stages_sleep_until_a_push_wakes_them(fs):
    """With nothing queued neither the router nor the worker polls: they sleep until a
    sampler pushes (on the loop), then promote at once; stop() ends the sleep too."""
    mover = FakeMover()
    w, q = make(fs, mover, time.monotonic, batch_pages=64, max_wait_ms=20)
    addrs = pages(64)
    mover.place(5, addrs, 1)

    async def scenario() -> tuple[int, int, float, float]:
        tasks = [asyncio.create_task(w.w.run()), asyncio.create_task(w.router.run())]
        await asyncio.sleep(0.5)
        # one round each, then asleep (no 20 ms polling)
        idle_rounds = (w.stats.rounds, w.router.stats.rounds)
        t0 = time.monotonic()
        offer(q, 5, addrs)
        while w.moves.promoted_pages < 64 and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.001)
        woke_after = time.monotonic() - t0
        t1 = time.monotonic()
        w.w.stop()
        w.router.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 2)
        return *idle_rounds, woke_after, time.monotonic() - t1

    worker_rounds, router_rounds, woke_after, stop_after = run(scenario())
    assert worker_rounds <= 2 and router_rounds <= 2
    assert w.moves.promoted_pages == 64 and mover.on(5, addrs, 0) == 64
    assert woke_after < 0.5 and stop_after < 0.5  # not the 1 s idle wake-up


def test_queues_refuse_a_push_from_another_thread():
    """The native queues have no lock: only the thread that created them may use them."""
    q = CandidateQueues([0], 1 << 10, page_size=PAGE)
    pool = ThreadPoolExecutor(1)
    try:
        with pytest.raises(QueueThreadError):
            pool.submit(offer, q, 5, pages(4)).result()
        with pytest.raises(QueueThreadError):
            pool.submit(q.drain, 10).result()
    finally:
        pool.shutdown()
    offer(q, 5, pages(4))
    assert len(q) == 4


class SlowMover(FakeMover):
    """The kernel copy takes a while: pages still show their old node meanwhile."""

    def move(self, pid, addrs, node, flags, threads):
        time.sleep(0.2)
        return super().move(pid, addrs, node, flags, threads)


def test_pages_drained_again_while_their_batch_moves_are_not_moved_twice(fs):
    mover, clock = SlowMover(), Clock()
    w, q = make(fs, mover, clock, batch_pages=64)
    a = pages(64)
    b = pages(64, 1000)
    mover.place(5, a + b, 1)

    async def scenario() -> None:
        offer(q, 5, a)
        await w.fill()
        assert w.inbox_pages == 64
        offer(q, 5, a + b)  # the sampler sees the same pages again, and new ones
        await w.promote_one(clock())  # moves a; meanwhile fills a (still on node 1) + b
        # a taken out once moved; b waits (in the inbox, or queued as the next job)
        waiting = list(w.inbox.keys.get(5, [])) + [k for j in w.pipeline.jobs for k in j.keys]
        assert sorted(waiting) == [x | 1 for x in b]
        await w.promote_one(clock())

    run(scenario())
    assert [c[1] for c in mover.calls] == [64, 64]
    assert w.moves.promoted_pages == 128 and w.moves.outcomes["moved"] == 128
    assert mover.on(5, a + b, 0) == 128 and w.inbox_pages == 0


class FailingMover(FakeMover):
    """The n-th move call fails as a whole (6.12 returns -1/ENOMEM when the
    target is full)."""

    def __init__(self, fail_call: int, err: int) -> None:
        super().__init__()
        self.fail_call, self.err, self.n = fail_call, err, 0

    def move(self, pid, addrs, node, flags, threads):
        self.n += 1
        if self.n == self.fail_call:
            raise MovePagesError(self.err, os.strerror(self.err))
        return super().move(pid, addrs, node, flags, threads)


def test_whole_call_failure_inside_a_burst(fs):
    """Three batches go to the executor as one job; the second call fails with
    ENOMEM: the first is accounted, the second counted as a whole-call error, the
    third goes back to the inbox, and the worker backs off before trying again."""
    mover, clock = FailingMover(2, errno.ENOMEM), Clock()
    w, q = make(fs, mover, clock, batch_pages=64, enomem_backoff_ms=500)
    addrs = pages(192)
    mover.place(5, addrs, 1)
    offer(q, 5, addrs)

    async def scenario() -> None:
        await w.fill()
        await w.promote_one(clock())

    run(scenario())
    assert [c[1] for c in mover.calls] == [64]  # the failing call is not recorded
    assert w.moves.promoted_pages == 64 and w.moves.whole_call_errors["ENOMEM"] == 1
    assert w.moves.batches == 2 and w.inbox_pages == 64
    assert w.stats.enomem_backoff_seconds == 0.5
    assert run(w.w.step()) is False  # backing off
    clock.t += 1
    run(steps(w, clock, 2))
    assert w.moves.promoted_pages == 128 and mover.on(5, addrs[128:], 0) == 64


class BatchedFakeMover(FakeMover):
    """Offers move_batched as ShimMover does; call ``fail_call`` fails as a whole."""

    def __init__(self, fail_call: int = 0, err: int = errno.ENOMEM) -> None:
        super().__init__()
        self.fail_call, self.err = fail_call, err
        self.batched_calls: list[int] = []

    def move_batched(self, pid, addrs, node, flags, batch):
        self.batched_calls.append(len(addrs))
        status, seconds = array("i"), []
        for k, i in enumerate(range(0, len(addrs), batch)):
            seconds.append(0.001)
            if k + 1 == self.fail_call:
                return shim.BatchedMove(shim.MoveResult(status, 0), seconds,
                                        MovePagesError(self.err, os.strerror(self.err)))
            status.extend(super().move(pid, addrs[i:i + batch], node, flags, 1).status)
        return shim.BatchedMove(shim.MoveResult(status, 0), seconds, None)


@pytest.mark.parametrize("fail_call", [0, 2])
def test_burst_goes_to_the_kernel_in_one_batched_call(fs, fail_call):
    mover, clock = BatchedFakeMover(fail_call), Clock()
    w, q = make(fs, mover, clock, batch_pages=64)
    addrs = pages(256)
    mover.place(5, addrs, 1)
    offer(q, 5, addrs)
    run(w.fill())
    run(w.promote_one(clock()))
    assert mover.batched_calls == [256]  # four batches, one job, one C call
    if not fail_call:
        h = w.moves.batch_pages
        assert w.moves.batches == 4 and h.count == 4 and h.counts[h.bounds.index(64)] == 4
        assert w.moves.promoted_pages == 256 and mover.on(5, addrs, 0) == 256
        assert w.moves.move_durations.count == 4
    else:
        assert w.moves.promoted_pages == 64 and w.moves.whole_call_errors["ENOMEM"] == 1
        assert w.inbox_pages == 128 and w.stats.enomem_backoff_seconds > 0


def test_two_jobs_queued_and_pages_drained_again_move_once(fs):
    """Five batches: a job of four and a job of one queue on the move thread; the
    sampler offers every page again while they run. Each page moves once."""
    mover, clock = SlowMover(), Clock()
    w, q = make(fs, mover, clock, batch_pages=64)
    addrs = pages(320)
    mover.place(5, addrs, 1)
    offer(q, 5, addrs)

    async def scenario() -> int:
        await w.fill()
        await w.fill()  # 256 + 64
        offer(q, 5, addrs)
        await w.promote_one(clock())
        queued = len(w.pipeline.jobs)
        for _ in range(6):
            await w.step()
        return queued

    assert run(scenario()) == 1  # the second job was still queued after the first
    assert sum(c[1] for c in mover.calls) == 320
    assert w.moves.promoted_pages == 320 and w.moves.outcomes["moved"] == 320
    assert mover.on(5, addrs, 0) == 320 and w.inbox_pages == 0 and not w.pipeline.jobs


# --- exchange: demotion makes room on a full fast tier -------------------------------------


def make_exchange(fs: KernelFs, mover: FakeMover, clock: Clock, adaptive: bool = False,
                  **overrides):
    """Node 0 (fast, nearly full) promotes from node 1 and demotes cold pages to it; with
    ``adaptive`` the router's hotness threshold follows the worker's capacity."""
    base = dict(max_wait_ms=100, rate_limit_mb_per_s=0, min_free_bytes=1 * MiB,
                resume_free_bytes=1 * MiB, copy_threads=1, batch_pages=64,
                free_refresh_ms=1_000_000)
    cfg = dataclasses.replace(config.WorkersConfig(), **{**base, **overrides})
    topo = discover(fs, page_size=PAGE)
    assert topo.demotion_target(0) == 1
    queues = CandidateQueues([0, 1], 1 << 16, page_size=PAGE)
    cold_queues = CandidateQueues([0, 1], 1 << 16, page_size=PAGE)
    pipeline = MovePipeline(0, mover, MoveStats(), ThreadPoolExecutor(1), page_size=PAGE)
    cold = Inbox(inbox_limit(cfg))
    w = NodeWorker(0, topology=topo, inbox=Inbox(inbox_limit(cfg)), pipeline=pipeline, cfg=cfg,
                   fs=fs, clock=clock, demote_inbox=cold, demote_to=1,
                   demotion=config.DemotionConfig(rate_limit_mb_per_s=0))
    router = Router(queues, {0: w.inbox}, topo, mover, cfg, clock=clock,
                    demote_queues=cold_queues, cold_inboxes={0: cold},
                    capacity=w.capacity_pages if adaptive else None)

    class ExchangeStage(Stage):
        async def step(self) -> bool:
            await self.router.route_once()
            await self.router.route_cold_once()
            return await self.w.step()

    return ExchangeStage(w, router), queues, cold_queues


def test_room_is_made_by_demoting_cold_pages_and_no_more(fs):
    mover, clock = FakeMover(), Clock()
    set_free(fs, 0, 512 * 1024)
    w, q, cq = make_exchange(fs, mover, clock)
    hot, cold = pages(100), pages(500, 10_000)
    mover.place(5, hot, 1)
    mover.place(7, cold, 0)
    offer(q, 5, hot)
    run(w.router.route_once())
    # Room: the 100 hot pages waiting plus the 1 MiB headroom, less 512 KiB free.
    need = 100 * PAGE + 1 * MiB - 512 * 1024
    assert w.room_needed(clock()) == need
    offer(cq, 7, cold)
    run(steps(w, clock, 8, dt=0.2))
    demoted = mover.on(7, cold, 1)
    assert w.moves.demoted == {(0, 1): demoted}
    assert demoted == -(-need // PAGE)             # exactly the room needed, no mass eviction
    assert w.moves.promoted == {(1, 0): 100} and mover.on(5, hot, 0) == 100
    assert w.room_needed(clock()) == 0
    snap = w.snapshot()
    assert snap.demoted_pages == demoted and snap.room_needed_bytes == 0
    assert snap.moves.demote_outcomes == {"moved": demoted}


def test_a_page_promoted_within_the_window_is_not_demoted_and_the_reverse(fs):
    mover, clock = FakeMover(), Clock()
    set_free(fs, 0, 2 * MiB)
    w, q, cq = make_exchange(fs, mover, clock, pingpong_window_ms=60_000)
    a = pages(50)
    mover.place(5, a, 1)
    offer(q, 5, a)
    run(steps(w, clock, 3, dt=0.2))
    assert mover.on(5, a, 0) == 50                # promoted; free is now 2 MiB - 200 KiB
    b, c = pages(400, 1000), pages(300, 5000)
    mover.place(6, b, 1)
    mover.place(7, c, 0)
    offer(q, 6, b)                                # room is needed for b
    offer(cq, 5, a)                               # a, promoted moments ago, offered as cold
    offer(cq, 7, c)
    run(steps(w, clock, 10, dt=0.2))
    assert mover.on(5, a, 0) == 50                # never demoted
    assert w.stats.demote_refused["promoted_recently"] == 50
    assert mover.on(6, b, 0) == 400 and mover.on(7, c, 1) > 0
    # The pages just demoted are held off if the sampler finds them hot again.
    down = [x for x in c if mover.where[(7, x)] == 1]
    before = w.moves.promoted_pages
    offer(q, 7, down)
    run(steps(w, clock, 4, dt=0.2))
    assert w.moves.promoted_pages == before and mover.on(7, down, 1) == len(down)
    assert w.stats.pingpong_held >= len(down)


def test_failures_in_the_middle_of_an_exchange_are_counted_and_nothing_is_lost(fs):
    mover, clock = FakeMover(), Clock()
    set_free(fs, 0, 512 * 1024)
    w, q, cq = make_exchange(fs, mover, clock, enomem_backoff_ms=500)
    hot = pages(100)
    mover.place(5, hot, 1)
    c1, c2 = pages(64, 10_000), pages(400, 20_000)
    mover.place(7, c1, 0)
    mover.place(8, c2, 0)
    mover.script[(8, c2[0])] = [-errno.EBUSY]
    mover.script[(8, c2[1])] = [-errno.ENOMEM]     # the slower node is full for a moment
    offer(q, 5, hot)
    offer(cq, 7, c1)
    run(w.router.route_once())
    run(w.router.route_cold_once())
    mover.dead.add(7)                               # the cold process exits mid-exchange
    offer(cq, 8, c2)
    run(steps(w, clock, 20, dt=0.2))
    refused = w.stats.demote_refused
    assert w.moves.whole_call_errors["ESRCH"] >= 1 and refused["gone"] >= 1
    assert w.moves.demote_outcomes["EBUSY"] == 1 and refused["busy"] == 1
    assert w.moves.demote_outcomes["ENOMEM"] == 1
    # The hot set still got its room, and every page is accounted for: on its node.
    assert mover.on(5, hot, 0) == 100
    moved = w.moves.demoted_pages
    assert moved == mover.on(8, c2, 1) and 0 < moved <= 228 + 2
    assert mover.on(8, c2, 0) + mover.on(8, c2, 1) == 400


# --- the adaptive threshold, and a hot set larger than the fast tier -----------------------


@pytest.mark.parametrize("hist,capacity,expected", [
    ({}, 0, 1),                                  # nothing seen: the floor
    ({0: 100, 3: 50}, 1000, 1),                  # everything fits: the floor
    ({0: 100, 3: 50}, 60, 8),                    # only the hottest bin (8..15) fits
    ({0: 100, 3: 50}, 0, 8),                     # nothing fits: the hottest bin still passes
    ({0: 100, 2: 30, 3: 50}, 90, 4),             # 50 + 30 <= 90: bin 2 (4..7) joins
    ({0: 100, 2: 30, 3: 50}, 79, 8),
])
def test_adaptive_threshold_table(hist, capacity, expected):
    from kmigratedd.policy import AdaptiveThreshold
    t = AdaptiveThreshold(floor=1)
    for b, n in hist.items():
        t.observe([1 << b] * n)
    assert t.update(capacity, 0.0) == expected


def test_adaptive_threshold_decays_back_to_the_floor():
    from kmigratedd.policy import AdaptiveThreshold
    t = AdaptiveThreshold(floor=2, half_life_s=5.0)
    t.observe([2] * 100 + [64] * 10)
    assert t.update(20, 0.0) == 64
    t.observe([64] * 10)
    assert t.update(1000, 1.0) == 2                # room again: back to the floor
    t.observe([2] * 100 + [64] * 10)
    assert t.update(20, 2.0) == 64
    assert t.update(20, 60.0) == 2                 # nothing new for a minute: decayed away
    assert t.raised_seconds == pytest.approx(1.0 + 58.0)
    off = AdaptiveThreshold(floor=3, enabled=False)
    off.observe([1000] * 10)
    assert off.update(0, 0.0) == 3


def test_the_router_holds_back_what_does_not_fit(fs):
    mover, clock = FakeMover(), Clock()
    set_free(fs, 0, 1 * MiB + 8 * PAGE)            # 8 pages above the headroom
    w, q, _ = make_exchange(fs, mover, clock, adaptive=True)
    lukewarm, hot = pages(200), pages(16, 1000)
    mover.place(5, lukewarm + hot, 1)
    for _ in range(3):                             # history: many lukewarm, a few hot
        offer(q, 5, lukewarm, weight=1)
        offer(q, 5, hot, weight=32)
        run(w.router.route_once())
        clock.t += 0.5
        w.inbox.clear()
    before = w.router.stats.below_adaptive
    offer(q, 5, lukewarm, weight=1)
    offer(q, 5, hot, weight=32)
    run(w.router.route_once())
    assert w.router.threshold.value == 32
    assert w.inbox.pages == 16                     # only the hot pages wait for room
    assert w.router.stats.below_adaptive - before == 200


class TieredWorld:
    """A process whose pages are accessed at fixed rates, a cold process filling the fast
    node, and a sampler that offers slow-tier pages with their access count as weight and,
    while room is needed, fast-tier pages idle for cold_age_s as demotion candidates."""

    def __init__(self, w, q, cq, mover, clock, rates, filler, cold_age_s=5.0):
        self.w, self.q, self.cq, self.mover, self.clock = w, q, cq, mover, clock
        self.rates = rates
        self.addrs = pages(len(rates))
        self.cold_age_s = cold_age_s
        self.last_access = {a: -1e9 for a in self.addrs}
        self.moves = {a: 0 for a in self.addrs}
        self.filler = pages(filler, 50_000)
        mover.place(5, self.addrs, 1)
        mover.place(7, self.filler, 0)
        self.rng = __import__("random").Random(7)

    def second(self) -> int:
        now = self.clock()
        hot = []
        weights = []
        for a, r in zip(self.addrs, self.rates):
            k = sum(1 for _ in range(int(r) + 1) if self.rng.random() < r / (int(r) + 1))
            if k:
                self.last_access[a] = now
                if self.mover.where[(5, a)] == 1:
                    hot.append(a)
                    weights.append(k)
        if hot:
            self.q.push(0, array("i", [5] * len(hot)), array("Q", hot),
                        weights=array("I", weights))
        room = self.w.room_needed(now)
        if room > 0:
            budget = 2 * -(-room // PAGE)
            idle = sorted((t, a) for a, t in self.last_access.items()
                          if self.mover.where[(5, a)] == 0 and now - t >= self.cold_age_s)
            filler = [a for a in self.filler if self.mover.where[(7, a)] == 0]
            offer(self.cq, 7, filler[:budget])
            mine = [a for _, a in idle][:max(0, budget - len(filler))]
            if mine:
                offer(self.cq, 5, mine)
        before = {a: self.mover.where[(5, a)] for a in self.addrs}
        run(steps(self.w, self.clock, 5, dt=0.2))
        moved = 0
        for a in self.addrs:
            if self.mover.where[(5, a)] != before[a]:
                self.moves[a] += 1
                moved += 1
        return moved


def test_a_hot_set_larger_than_the_fast_tier_settles(fs):
    """120 hot pages, 240 warm ones and 240 lukewarm ones want a fast node with room for
    240 (held by a cold process): the hot pages end up there and stay, the exchange slows
    to a trickle, no page bounces more than the ping-pong window allows, and the counters
    show it."""
    mover, clock = FakeMover(), Clock()
    set_free(fs, 0, 1 * MiB)                      # at the headroom: full
    # max_wait_ms=2: a worker blocked by the headroom sleeps 1 ms of real time, not 50.
    w, q, cq = make_exchange(fs, mover, clock, adaptive=True, pingpong_window_ms=60_000,
                             pingpong_holdoff_ms=300_000, max_wait_ms=2)
    rates = [8.0] * 120 + [0.3] * 240 + [0.02] * 240
    world = TieredWorld(w, q, cq, mover, clock, rates, filler=240)
    per_second = [world.second() for _ in range(400)]
    print("moves per 50 s:", [sum(per_second[i:i + 50]) for i in range(0, 400, 50)],
          "max moves of a page:", max(world.moves.values()), "demoted:", w.moves.demoted_pages,
          "promoted:", w.moves.promoted_pages, "refused:", dict(w.stats.demote_refused),
          "held:", w.stats.pingpong_held, "threshold raised s:",
          w.router.threshold.raised_seconds, "below:", w.router.stats.below_adaptive)
    hot = world.addrs[:120]
    assert mover.on(5, hot, 0) >= 0.95 * 120, "the hottest pages are on the fast node"
    # The second half moves at most a quarter of the first 100 s's rate: an occasional
    # exchange once a protection has faded, no steady churn.
    early, late = sum(per_second[:100]), sum(per_second[200:])
    assert early > 120 and late <= early / 2, (early, late)
    # Every page moved at most once per ping-pong window, and then some: bounded.
    windows = 400 / 60
    assert max(world.moves.values()) <= 2 * windows, max(world.moves.values())
    st = w.stats
    assert w.moves.demoted_pages > 0 and w.moves.promoted_pages > 120
    assert w.snapshot().demote_regrets > 0 and w.damper.protect_s > w.damper.window_s
    assert st.demote_refused["promoted_recently"] > 0 or st.pingpong_held > 0
    assert w.router.threshold.raised_seconds > 0 and w.router.stats.below_adaptive > 0
    # What went down to make room: the cold process's pages.
    assert mover.on(7, world.filler, 1) > 0


def kswapd_churn(fs, clock_start: float = 0.0, seconds: int = 900) -> tuple[list[int], NodeWorker]:
    """The kernel demotes (demotion.method kswapd): the fast node has room for 512 of a
    process's 2048 hot pages next to another hot process.  Each page promoted past those
    512 makes reclaim demote the one promoted longest ago (the LRU), and the sampler sees
    a demoted page on the slow node again 10 to 120 s later (the NUMA scanner's period).
    Returns the pages moved each second."""
    import random
    from collections import OrderedDict

    mover, clock = FakeMover(), Clock()
    clock.t = clock_start
    w, q = make(fs, mover, clock, pingpong_window_ms=60_000, pingpong_holdoff_ms=300_000,
                max_wait_ms=2)
    rng = random.Random(11)
    mine = pages(2048)
    mover.place(5, mine, 1)
    visible = dict.fromkeys(mine, clock_start)
    fast: OrderedDict[int, None] = OrderedDict()
    moved = []
    for _ in range(seconds):
        now = clock()
        seen = [a for a in mine if mover.where[(5, a)] == 1 and visible[a] <= now]
        if seen:
            offer(q, 5, seen)
        before = {a for a in mine if mover.where[(5, a)] == 0}
        run(steps(w, clock, 5, dt=0.2))
        up = [a for a in mine if mover.where[(5, a)] == 0 and a not in before]
        fast.update(dict.fromkeys(up))
        while len(fast) > 512:
            a, _ = fast.popitem(last=False)
            mover.place(5, [a], 1)
            visible[a] = clock() + rng.uniform(10, 120)
        moved.append(len(up))
    return moved, w.w


def test_bounces_widen_the_pingpong_window_until_kswapds_exchange_settles(fs, monkeypatch):
    """With kswapd demoting, a hot set larger than the fast tier bounces: what the worker
    promotes pushes what it promoted before back down.  Bounces seen within the window
    widen it (and the holdoff), so that the late ones count too and each bounced page stays
    put: after the first exchange, only an occasional one as holdoffs run out.  With the
    window kept as configured, the promotions go on at the pace the scanner finds the
    bounced pages again."""
    import kmigratedd.worker as worker_mod

    moved, w = kswapd_churn(fs)
    per_100 = [sum(moved[i:i + 100]) for i in range(0, len(moved), 100)]
    monkeypatch.setattr(worker_mod, "MAX_WIDEN", 1)
    fixed, wf = kswapd_churn(fs)
    fixed_100 = [sum(fixed[i:i + 100]) for i in range(0, len(fixed), 100)]
    print("promotions per 100 s, widening:", per_100, "window", w.damper.window_now_s,
          "bounces", w.damper.pingpongs, "| fixed window:", fixed_100, "bounces",
          wf.damper.pingpongs)
    assert per_100[0] >= 2048                          # the first exchange runs in full
    # Then an exchange now and then, as holdoffs run out, where a fixed window churns on
    # at the pace the scanner finds the pages again.
    late, late_fixed = sum(per_100[2:]), sum(fixed_100[2:])
    assert late_fixed >= 2 * 2048, fixed_100
    assert late <= late_fixed / 4, (per_100, fixed_100)
    assert w.damper.widen > 1 and w.damper.pingpongs > 0
    snap = w.snapshot()
    assert snap.pingpong_window_s == w.damper.window_s * w.damper.widen
    assert snap.pingpongs == w.damper.pingpongs


def test_batches_are_cut_to_what_moves_within_max_batch_ms(fs):
    """The kernel unmaps a whole batch before it copies it, so a task touching one of its
    pages waits for the batch: calls are cut to the pages that move within
    workers.max_batch_ms at the pace they have been moving (never below 16 pages)."""
    from kmigratedd.pipeline import MIN_BATCH_PAGES

    class Slow(FakeMover):
        per_page_s = 0.0

        def move(self, pid, addrs, node, flags, threads):
            time.sleep(self.per_page_s * len(addrs))
            return super().move(pid, addrs, node, flags, threads)

    mover, clock = Slow(), Clock()
    w, q = make(fs, mover, clock, batch_pages=512, max_batch_ms=10)
    assert w.pipeline.batch_pages() == 512             # nothing measured yet
    mover.per_page_s = 0.0002                          # 200 µs a page: 50 fit in 10 ms
    mover.place(5, pages(4000), 1)
    offer(q, 5, pages(4000))
    run(steps(w, clock, 12, dt=1))
    assert w.moves.promoted_pages == 4000
    assert 25 <= w.pipeline.batch_pages() <= 60, w.pipeline.seconds_per_page
    assert 25 <= max(n for _, n, _, _ in mover.calls[-3:]) <= 60
    assert w.snapshot().batch_pages_now == w.pipeline.batch_pages()
    w.pipeline.seconds_per_page = 1.0                  # very slow: not below the floor
    assert w.pipeline.batch_pages() == MIN_BATCH_PAGES
    w.pipeline.cfg = dataclasses.replace(w.pipeline.cfg, max_batch_ms=0)
    assert w.pipeline.batch_pages() == 512             # 0: always batch_pages
