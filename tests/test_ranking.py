"""Ranking and watch lists (kmigratedd/ranking.py) against a fake /proc of up to 10,000
processes: who is watched, that every process is looked at within the stated period,
that exited processes leave no state, and that the work and memory stay bounded."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

from kmigratedd.config import ScopeConfig
from kmigratedd.kernelfs import KernelFs
from kmigratedd.ranking import RANK_PAGES_PER_ROUND, Ranking, Watchlist
from kmigratedd.scope import Scope

STAT_TAIL = " ".join(["S"] + ["0"] * 49)


def fake_proc(root: Path, pid: int, slow: int, fast: int = 10) -> None:
    """A user process with ``slow`` pages on node 1 and ``fast`` on node 0."""
    d = root / f"proc/{pid}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(f"{pid} (p{pid}) {STAT_TAIL}\n")
    (d / "statm").write_text(f"{slow + fast + 100} {slow + fast} 0 1 0 {slow + fast} 0\n")
    (d / "numa_maps").write_text(
        "400000 default file=/bin/p mapped=5 N0=5 kernelpagesize_kB=4\n"
        f"7f0000000000 default anon={slow + fast} dirty={slow + fast} N0={fast} N1={slow} "
        "kernelpagesize_kB=4\n")


def build(root: Path, n: int, slow_of=lambda pid: 1024) -> list[int]:
    pids = list(range(100, 100 + n))
    for pid in pids:
        fake_proc(root, pid, slow_of(pid))
    return pids


def make(root: Path, per_round: int = 16, limit: int = 64, window: int = 16,
         dwell: int = 1, pages_per_round: int = 1 << 30) -> tuple[Ranking, Watchlist]:
    fs = KernelFs(root)
    r = Ranking(Scope(ScopeConfig(), fs, self_pid=1), fs, [1], per_round=per_round,
                pages_per_round=pages_per_round)
    return r, Watchlist(r, limit, window, dwell)


def test_few_processes_are_all_watched_in_pid_order_and_nothing_is_measured(tmp_path):
    pids = build(tmp_path, 20)
    r, w = make(tmp_path)
    assert w.choose() == pids
    assert r.counters["measured"] == 0 and len(r) == 20


def test_a_new_big_process_is_watched_at_once_among_many_equal_ones(tmp_path):
    """The issue's case: 300 small processes on the slow node, then a workload with
    more: watched from its first round, whatever its pid."""
    build(tmp_path, 300)
    r, w = make(tmp_path)
    first = w.choose()
    assert len(first) == 64
    fake_proc(tmp_path, 50, slow=16384)  # a low pid, new in the listing
    chosen = w.choose()
    assert chosen[0] == 50 and len(chosen) == 64
    # equal processes do not flap: the top stays the same round after round
    tops = {tuple(w.choose()[:48]) for _ in range(20)}
    assert len(tops) == 1 and next(iter(tops))[0] == 50


def test_displacement_needs_a_clear_margin(tmp_path):
    build(tmp_path, 100, slow_of=lambda pid: 1000)
    r, w = make(tmp_path, per_round=200)
    top = w.choose()[:48]
    outside = next(p for p in range(100, 200) if p not in top)
    fake_proc(tmp_path, outside, slow=1500)  # more, but not twice as much
    w.choose()
    assert w.choose()[:48] == sorted(top)
    fake_proc(tmp_path, outside, slow=5000)
    w.choose()
    assert w.choose()[0] == outside


def test_every_process_is_watched_and_measured_within_the_period(tmp_path):
    pids = build(tmp_path, 1000, slow_of=lambda pid: pid % 7)  # some with nothing slow
    r, w = make(tmp_path, per_round=16, limit=64, window=16, dwell=3)
    period = w.period_rounds(len(pids))
    assert period == -(-(1000 - 48) // 16) * 3
    seen: set[int] = set()
    for _ in range(period):
        seen.update(w.choose())
    assert seen == set(pids)
    # measured: new ones first, then least recently measured; every one within
    # ceil(N / per_round) rounds
    r2, w2 = make(tmp_path, per_round=16)
    for _ in range(-(-1000 // 16)):
        w2.choose()
    assert all(r2.slow_pages(p) >= 0 for p in pids)
    before = {p: r2._entries[p].measured for p in pids}
    for _ in range(-(-1000 // 16)):
        w2.choose()
    assert all(r2._entries[p].measured > before[p] for p in pids)


def test_exited_processes_leave_no_state(tmp_path):
    import shutil
    pids = build(tmp_path, 200)
    r, w = make(tmp_path, per_round=50)
    for _ in range(3):
        w.choose()
    for pid in pids[:150]:
        shutil.rmtree(tmp_path / f"proc/{pid}")
    chosen = w.choose()
    assert len(r) == 50 and set(chosen) <= set(pids[150:])
    assert set(r._entries) == set(pids[150:])
    assert len(r._queue) <= 2 * len(r) + 64 and len(r._fresh) <= len(r)
    assert set(w._top) <= set(pids[150:])


def test_a_page_budget_bounds_the_numa_maps_read_per_round(tmp_path):
    build(tmp_path, 100, slow_of=lambda pid: 4096)
    fs = KernelFs(tmp_path)
    r = Ranking(Scope(ScopeConfig(), fs, self_pid=1), fs, [1], per_round=100,
                pages_per_round=3 * 4106)
    r.refresh()
    assert r.measure() == 3
    r.pages_per_round = 1000  # a process bigger than the budget is still measured, alone,
    assert r.measure() == 1
    for _ in range(3):  # and the rounds after it pay its pages back (3106 pages over)
        assert r.measure() == 0
    assert r.measure() == 1


def test_ten_thousand_processes_in_bounded_time_and_memory(tmp_path):
    """10,000 processes in scope: listing, ranking and choosing stay within seconds and a
    few MiB (generous bounds: counts, not hardware timings)."""
    n = 10_000
    pids = build(tmp_path, n, slow_of=lambda pid: (pid * 7919) % 5000)
    fake_proc(tmp_path, 100 + n, slow=50_000)  # the one that matters
    r, w = make(tmp_path, per_round=16, pages_per_round=RANK_PAGES_PER_ROUND)
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        first = w.choose()  # reads every stat and statm once
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(20):
            chosen = w.choose()
        t_round = (time.perf_counter() - t0) / 20
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n10,000 processes: first round {t_first:.2f} s, then {t_round * 1000:.1f} ms a "
          f"round, tracemalloc peak {peak / 2**20:.1f} MiB")
    assert len(first) == 64 and first[0] == 100 + n  # largest RSS measured first
    assert len(chosen) == 64 and chosen[0] == 100 + n
    # 16 a round at most, and within the average page budget (one at least a round)
    assert 21 <= r.counters["measured"] <= 21 * 16
    assert len(r) == n + 1 and len(r._queue) <= 21 * 16
    assert t_first < 20 and t_round < 2
    assert peak < 32 * 2**20
    assert set(chosen) <= set(pids) | {100 + n}


def test_damon_targets_the_most_slow_memory_and_swaps_only_pids(tmp_path):
    """The damon sampler with 100 processes in scope: 64 targets, the biggest on the slow
    node among them from the first round; when the window moves, the same number of
    targets, so only the pids that changed are written, then committed."""
    from test_damon_sampler import STATE, C, FakeDamonFs, FakeQuery, make_ctx, make_tree

    from kmigratedd.samplers.damon import MAX_TARGETS, DamonSampler

    pids = list(range(1000, 1100))
    make_tree(tmp_path, pids=dict.fromkeys(pids, 1))
    for pid in pids:
        fake_proc(tmp_path, pid, slow=5000 if pid == 1077 else 100)
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(make_ctx(fs, pids=tuple(pids)), query_nodes=FakeQuery())
    s.run_round()
    assert len(s.targets.pids) == MAX_TARGETS and 1077 in s.targets.pids
    where = s.targets.pids.index(1077)
    first = set(s.targets.pids)
    for _ in range(s.targets.watchlist.dwell * 3):
        del fs.writes[:]
        before = s.targets.pids
        s.run_round()
        if s.targets.pids != before:
            paths = [p for p, _ in fs.writes if p != STATE]
            assert paths and all(p.startswith(f"{C}/targets/") and
                                 p.endswith("/pid_target") for p in paths), paths
            assert (STATE, "commit") in fs.writes
        assert s.targets.pids.index(1077) == where  # kept its index
    assert set(s.targets.pids) != first  # the window moved


def test_slow_only_watches_no_process_without_slow_pages(tmp_path):
    """idle's watch list: once measured, a process with nothing on a slow node is not
    scanned (its numa_maps, read in turn, shows when it gets some)."""
    build(tmp_path, 200, slow_of=lambda pid: 50 if pid % 20 == 0 else 0)
    fs = KernelFs(tmp_path)
    r = Ranking(Scope(ScopeConfig(), fs, self_pid=1), fs, [1], per_round=100)
    w = Watchlist(r, 8, 4, fill=False, slow_only=True)
    w.choose()
    w.choose()  # all 200 measured
    slow = {p for p in range(100, 300) if p % 20 == 0}
    seen: set[int] = set()
    for _ in range(5):
        chosen = w.choose()
        assert set(chosen) <= slow and len(chosen) == 8
        seen.update(chosen)
    assert seen == slow
    fake_proc(tmp_path, 101, slow=5000)  # demoted to the slow node: seen at its next measure
    for _ in range(3):
        chosen = w.choose()
    assert chosen[0] == 101


def test_damon_stays_quiet_while_the_window_turns(tmp_path):
    """Quiet mode is not ended by the rotating window's turns, only by a process new to
    the top of the ranking."""
    from test_damon_sampler import FakeDamonFs, FakeQuery, make_ctx, make_tree

    from kmigratedd.samplers.damon import DamonSampler

    pids = list(range(1000, 1100))
    make_tree(tmp_path, pids=dict.fromkeys(pids, 1))
    for pid in pids:
        fake_proc(tmp_path, pid, slow=100)
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(make_ctx(fs, pids=tuple(pids)), query_nodes=FakeQuery())
    targets = set()
    for _ in range(40):
        s.run_round()
        targets.add(s.targets.pids)
    st = s.stats()
    assert st["quiet"] == 1 and st["quiet_left"] == 0 and len(targets) > 3
    # a process new to the scope with much on the slow node: measured first, a target
    # from the top at once, and DAMON back to its configured pace
    fake_proc(tmp_path, 2000, slow=50_000)
    s.ctx.scope._pids = frozenset([*pids, 2000])
    s.run_round()
    assert 2000 in s.targets.watchlist.top and 2000 in s.targets.pids
    st = s.stats()
    assert (st["quiet"], st["kdamond_starts"], st["kdamond_stops"]) == (0, 1, 0)
