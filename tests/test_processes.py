"""The per-process view: bounded per-pid counters, the snapshot from /proc, the cgroup sums."""

from __future__ import annotations

import os
from pathlib import Path

from kmigratedd.kernelfs import KernelFs
from kmigratedd.processes import PidMoves, by_cgroup, report, snapshot, waiting_by_pid


def test_pid_moves_count_and_stay_bounded():
    m = PidMoves(max_pids=8)
    m.add(1, 100, demote=False)
    m.add(1, 5, demote=True)
    m.add(2, 7, demote=False)
    assert m.top(2) == [(1, 100, 5), (2, 7, 0)]
    for pid in range(100, 200):
        m.add(pid, 1, demote=False)
    assert len(m.moves) <= 8
    assert m.top(1) == [(1, 100, 5)]  # the most moved survive a trim


def test_waiting_by_pid_sums_the_inboxes():
    assert waiting_by_pid([{1: [0] * 3, 2: [0]}, {1: [0] * 4}]) == {1: 7, 2: 1}


def test_snapshot_of_this_process():
    fs = KernelFs(Path("/"))
    me = os.getpid()
    moves = PidMoves()
    moves.add(me, 10, demote=False)
    views = snapshot(fs, [1, me], moves, {me: 3}, slow_nodes=[1], page_size=4096, limit=5)
    (mine,) = [v for v in views if v.pid == me]
    assert mine.waiting_pages == 3 and mine.promoted_pages == 10
    assert mine.pages_by_node.get(0, 0) > 0 and mine.slow_pages == 0
    assert mine.comm == Path(f"/proc/{me}/comm").read_text().strip()
    out = report(fs, [me], moves, {me: 3}, [1], 4096)
    assert out["processes"][0]["pid"] == me  # type: ignore[index]
    (cg,) = by_cgroup([mine])
    assert cg["processes"] == 1 and cg["waiting_pages"] == 3 and cg["cgroup"] == mine.cgroup


def test_snapshot_skips_gone_processes():
    fs = KernelFs(Path("/"))
    assert snapshot(fs, [2 ** 22 + 1], PidMoves(), {}, [1], 4096, 5) == []
