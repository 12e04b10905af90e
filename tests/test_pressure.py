"""Memory pressure as a reason to hold back (kmigratedd/pressure.py, policy.PressureGuard):
the shares of time stalled, the hold and its hysteresis, the sources (system full,
scoped cgroups' some), and a worker that waits while it holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmigratedd.kernelfs import KernelFs
from kmigratedd.policy import PressureGuard
from kmigratedd.pressure import PressureMonitor

S = 1_000_000  # microseconds


# (time s, total stalled µs) fed in turn -> held after each
@pytest.mark.parametrize("feeds,held", [
    # 10% of each second stalled: under a 20% threshold
    ([(0, 0), (1, S // 10), (2, 2 * S // 10)], [False, False, False]),
    # 30% in the second second: held; 15% (above half): still held; 5%: released
    ([(0, 0), (1, S // 10), (2, 4 * S // 10), (3, 55 * S // 100), (4, 60 * S // 100)],
     [False, False, True, True, False]),
    # a counter going back (the cgroup recreated) gives no share
    ([(0, 5 * S), (1, 0), (2, S // 100)], [False, False, False]),
])
def test_pressure_guard_holds_with_hysteresis(feeds, held):
    g = PressureGuard(0.2)
    got = [g.update(t, {"system": total}) for t, total in feeds]
    assert got == held
    assert g.holds == (1 if any(held) else 0)


def test_pressure_guard_off_and_held_seconds():
    off = PressureGuard(0.0)
    assert not off.update(0, {"a": 0}) and not off.update(1, {"a": S})
    g = PressureGuard(0.2)
    g.update(0, {"a": 0, "b": 0})
    assert g.update(1, {"a": 0, "b": S // 2})          # the worst source decides
    assert g.ratios == {"a": 0.0, "b": 0.5}
    assert g.update(3, {"a": 0, "b": S // 2 + S // 5})  # 10% over 2 s: above half of 20%
    assert g.held_seconds == 2.0
    assert not g.update(4, {"a": 0, "b": S // 2 + S // 5})


def psi(root: Path, path: str, some: int, full: int) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"some avg10=1.00 avg60=0.00 avg300=0.00 total={some}\n"
                 f"full avg10=0.00 avg60=0.00 avg300=0.00 total={full}\n")


def test_monitor_watches_system_full_and_each_scoped_cgroups_some(tmp_path: Path) -> None:
    now = [0.0]
    released: list[bool] = []
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/cgroup.controllers").write_text("cpu memory\n")
    psi(tmp_path, "/proc/pressure/memory", 0, 0)
    psi(tmp_path, "/sys/fs/cgroup/app/memory.pressure", 0, 0)
    mon = PressureMonitor(KernelFs(tmp_path), ["/app/", "/gone"], 20,
                          on_release=lambda: released.append(True), clock=lambda: now[0])
    assert mon.sources == {"system": ("/proc/pressure/memory", "full"),
                           "/app": ("/sys/fs/cgroup/app/memory.pressure", "some"),
                           "/gone": ("/sys/fs/cgroup/gone/memory.pressure", "some")}
    assert not mon.poll()
    # The system's some line (kswapd's own reclaim counts there) does not hold ...
    now[0] = 1.0
    psi(tmp_path, "/proc/pressure/memory", S // 2, S // 20)
    assert not mon.poll()
    # ... the workload's cgroup stalling does.
    now[0] = 2.0
    psi(tmp_path, "/sys/fs/cgroup/app/memory.pressure", S // 4, 0)
    assert mon.poll() and mon.held
    st = mon.stats()
    assert st["held"] and st["sources"]["/app"] == {"watch": "some", "percent": 25.0,
                                                    "missing": False}
    assert st["sources"]["/gone"]["missing"] and mon.totals[("system", "some")] == S // 2
    now[0] = 3.0
    assert not mon.poll() and released == [True]


def test_a_worker_waits_while_pressure_holds(tmp_path: Path, data_dir: Path) -> None:
    import shutil

    from test_worker import Clock, FakeMover, make, offer, pages, run, steps

    shutil.copytree(data_dir / "cxl2", tmp_path / "root", symlinks=True)
    fs = KernelFs(tmp_path / "root")
    mover, clock = FakeMover(), Clock()
    w, q = make(fs, mover, clock)

    class Held:
        held = True

    w.w.pressure = Held()  # type: ignore[assignment]
    mover.place(5, pages(64), 1)
    offer(q, 5, pages(64))
    run(steps(w, clock, 6, dt=1))
    assert w.moves.promoted_pages == 0 and w.stats.pressure_held_seconds > 0
    assert w.snapshot().policy.pressure_held_seconds == w.stats.pressure_held_seconds
    Held.held = False
    run(steps(w, clock, 4, dt=1))
    assert w.moves.promoted_pages == 64


def test_held_pressure_gives_the_paddr_demoter_no_room(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from kmigratedd import config
    from kmigratedd.engine import Engine
    from kmigratedd.queues import CandidateQueues
    from kmigratedd.topology import Topology

    topo = Topology(nodes={}, tiers=(), tier_source="kernel", targets={},
                    block_size_bytes=1 << 27, page_size=4096)
    e = Engine(config.Config(), KernelFs(tmp_path), topo, CandidateQueues([0], 64, 4096),
               spawn=lambda coro, name: None, pool=lambda *a, **k: None)  # type: ignore
    e.workers = {0: SimpleNamespace(last_room_needed=1 << 30)}  # type: ignore[dict-item]
    assert e.room_for(0) == 1 << 30
    e.pressure = SimpleNamespace(held=True)  # type: ignore[assignment]
    assert e.room_for(0) == 0
