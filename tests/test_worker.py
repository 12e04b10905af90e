"""The node worker: its rounds, policy on the pages of its inbox, reactions to what the
kernel did, the exchange on a full fast tier (with a scripted fake mover and a fake
clock; the stages shared with the other stage tests are in workerfake.py)."""

from __future__ import annotations

import asyncio
import errno
import time
from array import array

from workerfake import (  # noqa: F401
    PAGE,
    Clock,
    FakeMover,
    MiB,
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

from kmigratedd.worker import NodeWorker


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


def test_each_pair_a_worker_moves_between_has_a_series_from_the_start(fs):
    """Promotion and demotion counters exist at 0 from the start, for each source to the
    node and from the node to its target: rate() then sees the first moves (a series that
    appears with its final count has a single sample in the window, and no rate)."""
    from kmigratedd import families

    mover, clock = FakeMover(), Clock()
    w, q, cq = make_exchange(fs, mover, clock)
    fams = families.collect({0: w.snapshot()}, PAGE)
    got = {name: [(tuple(s.labels.values()), s.value) for s in fam.samples]
           for name, fam in fams.items()}
    assert got["kmigratedd_promoted_pages"] == [(("1", "0"), 0)]
    assert got["kmigratedd_promoted_bytes"] == [(("1", "0"), 0)]
    assert got["kmigratedd_demoted_pages"] == [(("0", "1"), 0)]
