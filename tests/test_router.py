"""The router: drains the queues, folds, locates each page once, routes it to its
target's inbox (with a scripted fake mover and a fake clock)."""

from __future__ import annotations

import dataclasses
import shutil

from workerfake import (  # noqa: F401
    PAGE,
    Clock,
    FakeMover,
    MiB,
    Stage,
    fs,
    make,
    make_exchange,
    offer,
    pages,
    run,
    set_free,
    steps,
    worker,
)

from kmigratedd import config
from kmigratedd.kernelfs import KernelFs
from kmigratedd.queues import CandidateQueues
from kmigratedd.router import Router
from kmigratedd.topology import discover


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
