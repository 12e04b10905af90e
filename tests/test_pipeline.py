"""A worker's move pipeline: jobs on the move thread, statuses counted by outcome,
bursts, parallel copy, batch size (with a scripted fake mover)."""

from __future__ import annotations

import dataclasses
import errno
import sys
import time
from array import array
from concurrent.futures import ThreadPoolExecutor

import pytest
from workerfake import (  # noqa: F401
    PAGE,
    BatchedFakeMover,
    Clock,
    FailingMover,
    FakeMover,
    SlowMover,
    fs,
    make,
    offer,
    pages,
    run,
    steps,
    worker,
)

from kmigratedd import shim
from kmigratedd.pipeline import ShimMover


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


def test_batches_are_cut_to_what_moves_within_max_batch_ms(fs):
    """The kernel unmaps a whole batch before it copies it, so a task touching one of its
    pages waits for the batch: calls are cut to the pages that move within
    workers.max_batch_ms at the pace they have been moving (never below 64 pages)."""
    from kmigratedd.pipeline import MIN_BATCH_PAGES

    class Slow(FakeMover):
        per_page_s = 0.0

        def move(self, pid, addrs, node, flags, threads):
            time.sleep(self.per_page_s * len(addrs))
            return super().move(pid, addrs, node, flags, threads)

    mover, clock = Slow(), Clock()
    w, q = make(fs, mover, clock, batch_pages=512, max_batch_ms=10)
    assert w.pipeline.batch_pages() == 512             # nothing measured yet
    mover.per_page_s = 0.0001                          # 100 µs a page: 100 fit in 10 ms
    mover.place(5, pages(4000), 1)
    offer(q, 5, pages(4000))
    run(steps(w, clock, 12, dt=1))
    assert w.moves.promoted_pages == 4000
    assert 70 <= w.pipeline.batch_pages() <= 130, w.pipeline.seconds_per_page
    assert 70 <= max(n for _, n, _, _ in mover.calls[-3:]) <= 130
    assert w.snapshot().batch_pages_now == w.pipeline.batch_pages()
    w.pipeline.seconds_per_page = 1.0                  # very slow: not below the floor
    assert w.pipeline.batch_pages() == MIN_BATCH_PAGES
    w.pipeline.cfg = dataclasses.replace(w.pipeline.cfg, max_batch_ms=0)
    assert w.pipeline.batch_pages() == 512             # 0: always batch_pages


def test_settled_batches_leave_memory_flat_without_metrics(fs):
    """With metrics.enabled false nothing ever reads the batch sizes and move durations:
    100,000 settled batches through a worker's pipeline (and its policy, which remembers
    what it promoted) must not grow what the daemon holds.  Counted in the interpreter's
    allocated blocks (sys.getallocatedblocks, which costs nothing per allocation, unlike
    tracemalloc): one buffered entry per batch would be 100,000 blocks more."""
    import gc

    from kmigratedd import config as config_mod

    cfg = config_mod.parse("metrics:\n  enabled: false\n", "test")
    assert not cfg.metrics.enabled
    mover, clock = FakeMover(), Clock()
    # No ping-pong window: the same four pages bounce between the nodes batch after batch.
    w, _ = make(fs, mover, clock, batch_pages=4, max_batch_ms=0, pingpong_window_ms=0)
    batch = pages(4)

    async def settle(n: int) -> None:
        for _ in range(n):
            mover.place(5, batch, 1)                       # back on the slow node
            mover.calls.clear()                            # the fake's own log
            clock.t += 0.001
            w.inbox.accept(5, array("Q", batch), clock())
            await w.step()                                 # a worker round, as the daemon's

    async def scenario() -> tuple[int, int]:
        await settle(5_000)                                # tables at their working size
        gc.collect()
        before = sys.getallocatedblocks()
        await settle(100_000)
        gc.collect()
        return sys.getallocatedblocks() - before, w.moves.promoted_pages

    grown, promoted = run(scenario())
    assert promoted == 4 * 105_000
    assert w.snapshot().moves.batch_pages.count == 105_000
    assert grown < 2_000, f"{grown} blocks more after 100,000 batches"
