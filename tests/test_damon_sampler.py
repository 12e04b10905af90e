"""DAMON sampler against a fake DAMON sysfs tree: the exact writes, the probe messages,
and tried regions turned into page candidates (the real kernel: tests/vm); the data
model and the sysfs backend on their own."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import re
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kmigratedd import config
from kmigratedd.errors import MovePagesError, SamplerUnavailableError
from kmigratedd.kernelfs import KernelFs
from kmigratedd.queues import CandidateQueues, merge
from kmigratedd.damon import model as damon_model
from kmigratedd.samplers import damon, damon_hot
from kmigratedd.samplers.base import SamplerContext
from kmigratedd.samplers.damon import DamonSampler
from kmigratedd.damon.sysfs import DamonSysfs
from kmigratedd.scope import Scope
from kmigratedd.topology import Topology

K = "/sys/kernel/mm/damon/admin/kdamonds"
C = f"{K}/0/contexts/0"
STATE = f"{K}/0/state"
PS = 4096
PID, PID2 = 4242, 4343
EFAULT = -errno.EFAULT


def stat_line(pid: int, cpu: int) -> str:
    # Fields after "(comm) ": [0] state ... [6] flags ... [36] processor.
    rest = ["0"] * 50
    rest[0], rest[6], rest[36] = "S", "4194560", str(cpu)
    return f"{pid} (work load) " + " ".join(rest) + "\n"


class FakeDamonFs(KernelFs):
    """Records every write (KernelFs(record_writes=True)) and plays the kdamond state
    machine measured on 6.12: "on" with a dead pid → EINVAL, "off" when off → EPERM,
    commands when off → EINVAL, a "commit" naming an exited pid stops the kdamond."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, record_writes=True)
        self.fail: dict[tuple[str, str], int] = {}  # (path, value) -> errno
        # path, or (path, value) for a write -> how many reads or writes fail with EBUSY
        # first, as DAMON's sysfs lock does while a kdamond or another writer holds it.
        self.busy: dict[str | tuple[str, str], int] = {}
        self.commit_stops = False
        self.commit_stops_late = False  # state reads "on" until the next command
        self._stopping = False

    def _set_state(self, value: str) -> None:
        self.path(STATE).write_text(value + "\n")

    def _lock(self, key: str | tuple[str, str]) -> None:
        if self.busy.get(key, 0) > 0:
            self.busy[key] -= 1
            raise OSError(errno.EBUSY, f"{key}: busy")

    def read(self, kpath: str) -> str:
        self._lock(kpath)
        return super().read(kpath)

    def write(self, kpath: str, value: str) -> None:
        self._lock(kpath)
        self._lock((kpath, value))
        super().write(kpath, value)
        err = self.fail.get((kpath, value))
        if err:
            raise OSError(err, f"{kpath}: {value}")
        if kpath != STATE:
            return
        if self._stopping:
            self._stopping = False
            self._set_state("off")
        on = self.read(STATE).strip() == "on"
        if value == "on":
            self._set_state("on")
        elif value == "off":
            if not on:
                raise OSError(errno.EPERM, "off")
            self._set_state("off")
        elif not on:
            raise OSError(errno.EINVAL, value)
        elif value == "commit" and self.commit_stops:
            self._set_state("off")
        elif value == "commit" and self.commit_stops_late:
            self._stopping = True


def put(root: Path, kpath: str, text: str) -> None:
    p = root / kpath.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def make_tree(root: Path, *, nr_kdamonds: str = "0", osrelease: str = "6.12.117+deb12-amd64",
              pids: dict[int, int] | None = None) -> None:
    put(root, f"{K}/nr_kdamonds", nr_kdamonds + "\n")
    put(root, STATE, "off\n")
    put(root, f"{K}/0/pid", "-1\n")
    put(root, f"{C}/avail_operations", "vaddr\nfvaddr\npaddr\n")
    put(root, "/proc/sys/kernel/osrelease", osrelease + "\n")
    for pid, cpu in (pids if pids is not None else {PID: 2}).items():
        put(root, f"/proc/{pid}/stat", stat_line(pid, cpu))


def mark_present(root: Path, pid: int, start: int, end: int) -> None:
    """/proc/PID/pagemap (a sparse file) says the pages of [start, end) are present."""
    path = root / f"proc/{pid}/pagemap"
    if not path.parent.is_dir():
        return
    with open(path, "r+b" if path.exists() else "wb") as f:
        for a in range(start - start % PS, end, PS):
            f.seek(a // PS * 8)
            f.write(((1 << 63) | (a // PS & ((1 << 55) - 1))).to_bytes(8, "little"))


def put_regions(root: Path, scheme: int, regions: list[tuple[int, int, int, int]]) -> None:
    """The scheme's tried regions; every page in them present for every pid of the tree."""
    pids = [int(d.name) for d in (root / "proc").iterdir() if d.name.isdigit()] \
        if (root / "proc").is_dir() else []
    for start, end, _, _ in regions:
        for pid in pids:
            mark_present(root, pid, start, end)
    for i, (start, end, nr_accesses, age) in enumerate(regions):
        d = f"{C}/schemes/{scheme}/tried_regions/{i}"
        for name, value in (("start", start), ("end", end), ("nr_accesses", nr_accesses),
                            ("age", age)):
            put(root, f"{d}/{name}", f"{value}\n")
    put(root, f"{C}/schemes/{scheme}/tried_regions/total_bytes", "0\n")


def make_ctx(fs: KernelFs, pids: tuple[int, ...] = (PID,), targets: dict[int, int] | None = None,
             interval_ms: int = 1000, min_density: float = 0.0) -> SamplerContext:
    """min_density 0 (the tests of how regions become pages use small access counts);
    the density tests set it."""
    cfg = config.Config()
    damon = dataclasses.replace(cfg.sampler.damon, min_density=min_density)
    # The sampler's owner file goes beside the state file: inside the fake root.
    state = config.HintFaultsConfig(state_file=str(Path(fs.root) / "state/sysctl-state.json"))
    cfg = config.Config(
        scope=config.ScopeConfig(pids=pids),
        sampler=config.SamplerConfig(interval_ms=interval_ms, damon=damon, hint_faults=state))
    topo = Topology(nodes={}, tiers=(), tier_source="kernel",
                    targets={1: 0} if targets is None else targets,
                    block_size_bytes=1 << 27, page_size=PS)
    return SamplerContext(cfg, fs, topo, CandidateQueues([0, 1, 2, 3], 4096),
                          Scope(cfg.scope, fs, self_pid=1))


class FakeQuery:
    """move_pages query form: the node of each page from a table (-EFAULT if unknown)."""

    def __init__(self, nodes: dict[int, int] | None = None, raise_errno: int = 0) -> None:
        self.nodes = nodes or {}
        self.raise_errno = raise_errno
        self.calls: list[tuple[int, list[int]]] = []

    def __call__(self, pid: int, addrs: Any) -> array[int]:
        self.calls.append((pid, list(addrs)))
        if self.raise_errno:
            raise MovePagesError(self.raise_errno, "move_pages")
        return array("i", [self.nodes.get(a, EFAULT) for a in addrs])


def scheme_writes(idx: int, hot_min: int = 1) -> list[tuple[str, str]]:
    s = f"{C}/schemes/{idx}"
    return [
        (f"{s}/action", "stat"),
        (f"{s}/access_pattern/sz/min", "0"),
        (f"{s}/access_pattern/sz/max", "18446744073709551615"),
        (f"{s}/access_pattern/nr_accesses/min", str(hot_min)),
        (f"{s}/access_pattern/nr_accesses/max", "4294967295"),
        (f"{s}/access_pattern/age/min", "0"),
        (f"{s}/access_pattern/age/max", "4294967295"),
        (f"{s}/filters/nr_filters", "1"),
        (f"{s}/filters/0/type", "target"),
        (f"{s}/filters/0/damon_target_idx", str(idx)),
        (f"{s}/filters/0/matching", "N"),
    ]


def target_writes(pids: list[int]) -> list[tuple[str, str]]:
    out = [(f"{C}/targets/nr_targets", str(len(pids)))]
    out += [(f"{C}/targets/{i}/pid_target", str(p)) for i, p in enumerate(pids)]
    out.append((f"{C}/schemes/nr_schemes", str(len(pids))))
    for i in range(len(pids)):
        out += scheme_writes(i)
    return out


def same_writes(got: list[tuple[str, str]], want: list[tuple[str, str]]) -> None:
    """The same sysfs writes, compared where order does not matter: every file ends with
    the same value; the kdamond state commands come in the same order, each seeing the
    same values written before it (a command acts on them); and a directory's ``nr_*``
    file is written before anything inside the numbered directories it creates."""
    def end_state(ws: list[tuple[str, str]]) -> dict[str, str]:
        return {p: v for p, v in ws if p != STATE}

    def commands(ws: list[tuple[str, str]]) -> list[tuple[str, dict[str, str]]]:
        out, before = [], {}
        for p, v in ws:
            if p == STATE:
                out.append((v, dict(before)))
            else:
                before[p] = v
        return out

    assert end_state(got) == end_state(want)
    assert commands(got) == commands(want)
    created: set[str] = set()
    for p, _ in got:
        parent, name = p.rsplit("/", 1)
        if name.startswith("nr_"):
            created.add(parent)
        m = re.match(r"(.*)/\d+/", p)
        if m and any(q.startswith(m.group(1) + "/nr_") for q, _ in got):
            assert m.group(1) in created, f"{p} written before {m.group(1)}/nr_*"


# --- probe ----------------------------------------------------------------------


def test_probe_ok(tmp_path: Path) -> None:
    make_tree(tmp_path)
    assert DamonSampler.probe(make_ctx(FakeDamonFs(tmp_path))) is None


def test_probe_without_damon_sysfs(tmp_path: Path) -> None:
    put(tmp_path, "/proc/sys/kernel/osrelease", "6.12.0\n")
    assert DamonSampler.probe(make_ctx(FakeDamonFs(tmp_path))) == (
        "the kernel has no DAMON sysfs interface (CONFIG_DAMON_SYSFS, CONFIG_DAMON_VADDR)")


def test_probe_on_a_kernel_without_tried_regions(tmp_path: Path) -> None:
    make_tree(tmp_path, osrelease="6.1.0-40-amd64")
    assert DamonSampler.probe(make_ctx(FakeDamonFs(tmp_path))) == (
        "DAMON on Linux 6.1 cannot report hot regions per process (schemes tried_regions "
        "and target filters need Linux >= 6.3)")


def test_probe_without_a_slower_tier(tmp_path: Path) -> None:
    make_tree(tmp_path)
    assert DamonSampler.probe(make_ctx(FakeDamonFs(tmp_path), targets={})) == (
        "no slower memory tier to sample (one tier)")


def test_probe_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert DamonSampler.probe(make_ctx(FakeDamonFs(tmp_path))) == (
        "writing /sys/kernel/mm/damon/admin needs root")


def test_probe_when_another_tool_runs_damon(tmp_path: Path) -> None:
    make_tree(tmp_path, nr_kdamonds="2")
    put(tmp_path, f"{K}/1/state", "on\n")
    put(tmp_path, f"{K}/1/pid", "777\n")
    assert DamonSampler.probe(make_ctx(FakeDamonFs(tmp_path))) == (
        "DAMON is already in use by another tool (kdamond 1 is on, pid 777); stop it first "
        f"(echo off > {K}/1/state)")


def test_probe_when_damon_reclaim_runs(tmp_path: Path) -> None:
    make_tree(tmp_path)
    put(tmp_path, "/sys/module/damon_lru_sort/parameters/kdamond_pid", "-1\n")
    put(tmp_path, "/sys/module/damon_reclaim/parameters/kdamond_pid", "55\n")
    assert DamonSampler.probe(make_ctx(FakeDamonFs(tmp_path))) == (
        "DAMON is in use by damon_reclaim (kdamond pid 55); disable it first "
        "(echo N > /sys/module/damon_reclaim/parameters/enabled)")


# --- lifecycle: the exact writes ----------------------------------------------------


START_WRITES = [
    (f"{K}/nr_kdamonds", "1"),
    (f"{K}/0/contexts/nr_contexts", "1"),
    (f"{C}/operations", "vaddr"),
    (f"{C}/monitoring_attrs/intervals/sample_us", "5000"),
    (f"{C}/monitoring_attrs/intervals/aggr_us", "100000"),
    (f"{C}/monitoring_attrs/intervals/update_us", "1000000"),
    (f"{C}/monitoring_attrs/nr_regions/min", "10"),
    (f"{C}/monitoring_attrs/nr_regions/max", "1000"),
    (f"{C}/targets/nr_targets", "1"),
    (f"{C}/targets/0/pid_target", str(PID)),
    (f"{C}/schemes/nr_schemes", "1"),
    *scheme_writes(0),
    (STATE, "on"),
]


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def test_start_and_stop_write_exactly_this(tmp_path: Path) -> None:
    make_tree(tmp_path)
    fs = KernelFs(tmp_path, record_writes=True)  # plain recorder: nothing changes on disk
    s = DamonSampler(make_ctx(fs))

    async def go() -> list[tuple[str, str]]:
        await s.start()
        started = list(fs.writes)
        await s.stop()
        await s.stop()  # idempotent
        return started

    same_writes(run(go), START_WRITES)
    same_writes(fs.writes, START_WRITES + [(STATE, "off"), (f"{K}/nr_kdamonds", "0")])


def test_stop_restores_nr_kdamonds_as_found(tmp_path: Path) -> None:
    make_tree(tmp_path, nr_kdamonds="2")
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(make_ctx(fs))

    async def go() -> None:
        await s.start()
        await s.stop()

    run(go)
    assert fs.writes[0] == (f"{K}/nr_kdamonds", "1")
    assert fs.writes[-2:] == [(STATE, "off"), (f"{K}/nr_kdamonds", "2")]
    assert fs.read(STATE).strip() == "off"


def test_start_with_nothing_in_scope_leaves_damon_off(tmp_path: Path) -> None:
    make_tree(tmp_path, pids={})
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(make_ctx(fs))

    async def go() -> None:
        await s.start()
        await s.stop()

    run(go)
    assert (STATE, "on") not in fs.writes and (STATE, "off") not in fs.writes
    assert fs.writes[-1] == (f"{K}/nr_kdamonds", "0")


@pytest.fixture
def short_busy_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """An EBUSY that lasts: give up on it after 50 ms, not seconds."""
    monkeypatch.setattr(DamonSysfs, "busy_wait_s", 0.05)


def test_start_fails_cleanly_when_damon_is_busy(tmp_path: Path, short_busy_wait: None) -> None:
    make_tree(tmp_path)
    fs = FakeDamonFs(tmp_path)
    fs.fail[(f"{K}/nr_kdamonds", "1")] = errno.EBUSY
    s = DamonSampler(make_ctx(fs))
    with pytest.raises(SamplerUnavailableError, match="in use by another tool"):
        run(s.start)
    run(s.stop)
    assert set(fs.writes) == {(f"{K}/nr_kdamonds", "1")}  # retried, then given up


def test_start_undoes_itself_when_on_fails(tmp_path: Path, short_busy_wait: None) -> None:
    make_tree(tmp_path)
    fs = FakeDamonFs(tmp_path)
    fs.fail[(STATE, "on")] = errno.EBUSY  # e.g. damon_reclaim started meanwhile
    with pytest.raises(SamplerUnavailableError, match="EBUSY"):
        run(DamonSampler(make_ctx(fs)).start)
    assert fs.writes[-1] == (f"{K}/nr_kdamonds", "0")


# --- rounds -------------------------------------------------------------------------

A = 0x7F00_0000_0000  # 8 pages, 5 accesses
B = 0x7F00_0010_0000  # 4 pages, 12 accesses (hotter: goes first)
CC = 0x7F00_0020_0000  # 2 pages, 0 accesses (not hot)


def page_range(start: int, n: int) -> list[int]:
    return [start + i * PS for i in range(n)]


def regions_tree(tmp_path: Path) -> FakeDamonFs:
    make_tree(tmp_path)
    put_regions(tmp_path, 0, [(A, A + 8 * PS, 5, 2), (B + 100, B + 4 * PS - 100, 12, 0),
                              (CC, CC + 2 * PS, 0, 7)])
    return FakeDamonFs(tmp_path)


A_NODES = [1, 0, EFAULT, 1, 1, -errno.ENOENT, 0, 1]


@pytest.mark.parametrize("min_density,offered", [(0.0, 12), (0.25, 12), (0.5, 4), (0.65, 0)])
def test_a_region_is_offered_only_when_its_access_count_says_most_pages_are_hot(
        tmp_path: Path, min_density: float, offered: int) -> None:
    """20 samples per aggregation (100 ms / 5 ms): A counts 5 (a quarter of its pages hot,
    as DAMON estimates), B 12 (three fifths)."""
    fs = regions_tree(tmp_path)
    ctx = make_ctx(fs, min_density=min_density)
    nodes = dict.fromkeys(page_range(A, 8), 1) | dict.fromkeys(page_range(B, 4), 1)
    s = DamonSampler(ctx, query_nodes=FakeQuery(nodes), confirm_rounds=1, warmup_rounds=0)
    assert s.run_round() == offered
    assert s.stats()["pages_sparse"] == 12 - offered


def test_round_turns_hot_regions_into_page_candidates(tmp_path: Path) -> None:
    fs = regions_tree(tmp_path)
    ctx = make_ctx(fs)
    nodes = dict(zip(page_range(A, 8), A_NODES)) | dict.fromkeys(page_range(B, 4), 1)
    query = FakeQuery(nodes)
    s = DamonSampler(ctx, query_nodes=query, confirm_rounds=1, warmup_rounds=0)
    offered = s.run_round()

    # First round: targets written and the kdamond turned on, then one update.
    same_writes(fs.writes, target_writes([PID]) + [(STATE, "on"),
                                                   (STATE, "update_schemes_tried_regions")])
    # Hottest region first (B, its unaligned ends widened to whole pages), then A, each
    # probed (regions this small: every page); the cold region C is never expanded.
    assert query.calls == [(PID, page_range(B, 4)), (PID, page_range(A, 8))]
    # Both have pages on the slow node: every page of both is offered, the node left
    # to the router (-1).
    assert offered == 12
    # Everything lands in the queue of the CPU the task last ran on (2).
    assert [len(ctx.queues.queue(c)) for c in range(4)] == [0, 0, offered, 0]
    got = merge(ctx.queues.drain(100))
    rows = sorted(zip(got.pids, got.addrs, got.nodes, got.counts))
    want = sorted([(PID, a, -1, 12) for a in page_range(B, 4)] +
                  [(PID, a, -1, 5) for a in page_range(A, 8)])
    assert rows == want
    assert s.stats() == {
        "rounds": 1, "regions_seen": 3, "hot_regions": 2, "candidates_offered": offered,
        "pages_unconfirmed": 0, "pages_sparse": 0, "pages_over_budget": 0, "pages_probed": 12,
        "pages_skipped_on_fast": 0, "pid_gone": 0, "errors": 0,
        "kdamond_starts": 1, "kdamond_stops": 0, "commits": 0, "quiet_entered": 0,
        "quiet_left": 0, "targets": 1, "kdamond_on": 1, "quiet": 0,
        "sysfs_busy": 0}

    # Second round, same scope: no target writes, only the update.
    del fs.writes[:]
    s.run_round()
    assert fs.writes == [(STATE, "update_schemes_tried_regions")]


def test_page_budget_takes_the_hottest_pages_first(tmp_path: Path) -> None:
    fs = regions_tree(tmp_path)
    query = FakeQuery(dict.fromkeys(page_range(A, 8) + page_range(B, 4), 1))
    s = DamonSampler(make_ctx(fs), query_nodes=query, max_pages_per_round=6,
                     confirm_rounds=1, warmup_rounds=0)
    assert s.run_round() == 6
    got = merge(s.ctx.queues.drain(100))
    assert sorted(got.addrs) == page_range(A, 2) + page_range(B, 4)
    assert s.stats()["pages_over_budget"] == 6
    assert s.stats()["hot_regions"] == 2


@pytest.mark.parametrize("pages,stride", [(4, 1), (8, 1), (64, 8), (200, 25), (256, 32),
                                          (4096, 32)])
def test_the_probe_asks_1_page_in_32_and_at_least_8(tmp_path: Path, pages: int,
                                                     stride: int) -> None:
    make_tree(tmp_path)
    put_regions(tmp_path, 0, [(A, A + pages * PS, 9, 0)])
    fs = FakeDamonFs(tmp_path)
    query = FakeQuery()  # nothing on a slow node
    s = DamonSampler(make_ctx(fs), query_nodes=query, confirm_rounds=1, warmup_rounds=0)
    for _ in range(stride + 1):
        assert s.run_round() == 0
    # One page further every round (the round count modulo the stride), back to the
    # start after ``stride`` rounds: every page is looked at.
    for rnd, (_, addrs) in enumerate(query.calls, start=1):
        first = A + rnd % stride * PS
        assert addrs == list(range(first, A + pages * PS, stride * PS))
    assert {a for _, addrs in query.calls for a in addrs} == set(page_range(A, pages))


def test_nothing_on_a_slow_node_offers_nothing(tmp_path: Path) -> None:
    fs = regions_tree(tmp_path)
    ctx = make_ctx(fs)
    s = DamonSampler(ctx, query_nodes=FakeQuery(dict.fromkeys(page_range(A, 8), 0)),
                     confirm_rounds=1, warmup_rounds=0)
    assert s.run_round() == 0
    assert len(ctx.queues) == 0
    assert s.stats()["pages_skipped_on_fast"] == 12


def interval_writes(factor: int) -> list[tuple[str, str]]:
    return [(f"{C}/monitoring_attrs/intervals/sample_us", str(5000 * factor)),
            (f"{C}/monitoring_attrs/intervals/aggr_us", str(100_000 * factor))]


def test_quiet_mode_slows_damon_down_until_there_is_something_to_promote(
        tmp_path: Path) -> None:
    """quiet_after_rounds (10) rounds with nothing on a slow node: intervals x10 and a
    commit; the first round with pages to promote commits the configured ones."""
    fs = regions_tree(tmp_path)
    ctx = make_ctx(fs)
    query = FakeQuery(dict.fromkeys(page_range(A, 8), 0))  # all on the fast node
    s = DamonSampler(ctx, query_nodes=query, confirm_rounds=1, warmup_rounds=0)
    for _ in range(9):
        s.run_round()
    assert s.stats()["quiet"] == 0
    del fs.writes[:]
    s.run_round()
    same_writes(fs.writes, [(STATE, "update_schemes_tried_regions")] + interval_writes(10)
                + [(STATE, "commit")])
    st = s.stats()
    assert (st["quiet"], st["quiet_entered"], st["commits"]) == (1, 1, 0)
    del fs.writes[:]
    s.run_round()  # still nothing: no more writes
    assert fs.writes == [(STATE, "update_schemes_tried_regions")]
    query.nodes[A] = 1  # a hot page is on the slow node now: its region is offered
    del fs.writes[:]
    assert s.run_round() == 8
    same_writes(fs.writes, [(STATE, "update_schemes_tried_regions")] + interval_writes(1)
                + [(STATE, "commit")])
    st = s.stats()
    assert (st["quiet"], st["quiet_left"], st["commits"]) == (0, 1, 0)


def test_quiet_mode_ends_when_the_watched_processes_change(tmp_path: Path) -> None:
    make_tree(tmp_path, pids={PID: 1, PID2: 3})
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(make_ctx(fs, pids=(PID, PID2)), query_nodes=FakeQuery())
    for _ in range(10):
        s.run_round()
    assert s.stats()["quiet"] == 1
    (tmp_path / f"proc/{PID}/stat").unlink()
    del fs.writes[:]
    s.run_round()
    # the configured intervals go with the new targets in one commit
    assert fs.writes[:3] == interval_writes(1) + target_writes([PID2])[:1]
    assert fs.writes.count((STATE, "commit")) == 1
    assert s.stats()["quiet"] == 0


@pytest.mark.parametrize("after,slowdown", [(0, 10), (10, 1)])
def test_quiet_mode_can_be_turned_off(tmp_path: Path, after: int, slowdown: int) -> None:
    fs = regions_tree(tmp_path)
    ctx = make_ctx(fs)
    damon = dataclasses.replace(ctx.config.sampler.damon, quiet_after_rounds=after,
                                quiet_slowdown=slowdown)
    ctx = dataclasses.replace(ctx, config=dataclasses.replace(
        ctx.config, sampler=dataclasses.replace(ctx.config.sampler, damon=damon)))
    s = DamonSampler(ctx, query_nodes=FakeQuery(), confirm_rounds=1, warmup_rounds=0)
    for _ in range(30):
        s.run_round()
    assert s.stats()["quiet_entered"] == 0 and (STATE, "commit") not in fs.writes


def test_regions_are_attributed_by_scheme(tmp_path: Path) -> None:
    """Scheme i filters to target i, so scheme i's tried regions are pid i's pages."""
    make_tree(tmp_path, pids={PID: 1, PID2: 3})
    put_regions(tmp_path, 0, [(A, A + 2 * PS, 3, 0)])
    put_regions(tmp_path, 1, [(A, A + 2 * PS, 9, 0)])  # same addresses, other process
    fs = FakeDamonFs(tmp_path)
    ctx = make_ctx(fs, pids=(PID, PID2))
    query = FakeQuery(dict.fromkeys(page_range(A, 2), 1))
    s = DamonSampler(ctx, query_nodes=query, confirm_rounds=1, warmup_rounds=0)
    assert s.run_round() == 4
    assert fs.writes[:-2] == target_writes([PID, PID2])
    assert query.calls == [(PID2, page_range(A, 2)), (PID, page_range(A, 2))]
    assert len(ctx.queues.queue(1)) == 2 and len(ctx.queues.queue(3)) == 2
    got = merge(ctx.queues.drain(100))
    assert sorted(zip(got.pids, got.counts)) == [(PID, 3), (PID, 3), (PID2, 9), (PID2, 9)]


def test_intersect() -> None:
    R = damon_model.Region
    regions = [R(0, 10, 5, 1), R(10, 20, 7, 2), R(30, 40, 1, 0)]
    assert damon_model.intersect(regions, []) == []
    assert damon_model.intersect(regions, [(0, 100)]) == regions
    assert damon_model.intersect(regions, [(5, 12), (15, 16), (18, 35)]) == [
        R(5, 10, 5, 1), R(10, 12, 7, 2), R(15, 16, 7, 2), R(18, 20, 7, 2), R(30, 35, 1, 0)]
    assert damon_model.aligned(R(4097, 8193, 3, 4), 4096) == R(4096, 12288, 3, 4)


def test_the_model_and_the_sysfs_backend(tmp_path: Path) -> None:
    """The model is data (one target and one filtered hot scheme per pid); the backend
    writes exactly what it holds, in damo's order, and reads tried regions back."""
    attrs = damon_model.MonitoringAttrs(damon_model.Intervals(5000, 100_000, 1_000_000),
                                        10, 1000)
    ctx = damon_model.hot_regions_context(attrs, [PID, PID2], 1)
    assert [t.pid for t in ctx.targets] == [PID, PID2]
    assert [s.filters for s in ctx.schemes] == [
        (damon_model.TargetFilter(0, matching=False),),
        (damon_model.TargetFilter(1, matching=False),)]
    assert attrs.intervals.slowed(10) == damon_model.Intervals(50_000, 1_000_000, 1_000_000)
    make_tree(tmp_path)
    put_regions(tmp_path, 1, [(A, A + PS, 3, 1), (B, B + 2 * PS, 7, 0)])
    fs = KernelFs(tmp_path, record_writes=True)
    DamonSysfs(fs).write_targets(ctx)
    same_writes(fs.writes, target_writes([PID, PID2]))
    errors: list[str] = []
    assert DamonSysfs(fs).tried_regions(1, lambda what, exc: errors.append(what)) == [
        damon_model.Region(A, A + PS, 3, 1), damon_model.Region(B, B + 2 * PS, 7, 0)]
    assert DamonSysfs(fs).tried_regions(0, lambda what, exc: errors.append(what)) == []
    assert errors == []


def test_the_first_round_after_start_warms_up(tmp_path: Path) -> None:
    fs = regions_tree(tmp_path)
    query = FakeQuery(dict.fromkeys(page_range(A, 8) + page_range(B, 4), 1))
    s = DamonSampler(make_ctx(fs), query_nodes=query, confirm_rounds=1)
    assert s.run_round() == 0 and query.calls == []
    assert s.stats()["regions_seen"] == 3
    assert s.run_round() == 12


def test_pages_are_offered_once_hot_in_two_rounds(tmp_path: Path) -> None:
    """A page is offered when its region was hot in this round and the one before:
    a snapshot in which a hot region briefly spans its cold neighbour offers nothing
    of that neighbour."""
    make_tree(tmp_path)
    fs = FakeDamonFs(tmp_path)
    ctx = make_ctx(fs)
    query = FakeQuery(dict.fromkeys(page_range(A, 16), 1))
    s = DamonSampler(ctx, query_nodes=query, warmup_rounds=0)
    put_regions(tmp_path, 0, [(A, A + 4 * PS, 9, 0)])
    assert s.run_round() == 0  # nothing confirmed yet
    assert s.stats()["pages_unconfirmed"] == 4
    # Merged with its cold neighbour for one snapshot: only the old hot part is offered.
    put_regions(tmp_path, 0, [(A, A + 16 * PS, 4, 0)])
    assert s.run_round() == 4
    assert query.calls[-1] == (PID, page_range(A, 4))
    assert s.stats()["pages_unconfirmed"] == 4 + 12
    # Split again: the neighbour was "hot" last round, but is not now.
    put_regions(tmp_path, 0, [(A, A + 4 * PS, 9, 0), (A + 4 * PS, A + 16 * PS, 0, 0)])
    assert s.run_round() == 4
    assert query.calls[-1] == (PID, page_range(A, 4))
    got = merge(ctx.queues.drain(100))
    assert sorted(set(got.addrs)) == page_range(A, 4)


def test_a_pid_moved_to_another_target_index_waits_for_damon_to_refit(tmp_path: Path) -> None:
    """DAMON commits targets by index and keeps the old regions of an index: after PID
    exits, PID2 takes index 0 and would get PID's regions until vaddr re-fits them."""
    make_tree(tmp_path, pids={PID: 1, PID2: 3})
    fs = FakeDamonFs(tmp_path)
    ctx = make_ctx(fs, pids=(PID, PID2))
    query = FakeQuery(dict.fromkeys(page_range(A, 2), 1))
    s = DamonSampler(ctx, query_nodes=query, confirm_rounds=1, warmup_rounds=0)
    put_regions(tmp_path, 0, [(A, A + 2 * PS, 3, 0)])
    s.run_round()
    assert [c[0] for c in query.calls] == [PID]
    (tmp_path / f"proc/{PID}/stat").unlink()
    # update_us 1 s, interval 1 s: the commit round and the next are ignored.
    assert s.targets.settle_rounds == 2
    s.run_round()
    s.run_round()
    assert [c[0] for c in query.calls] == [PID]
    s.run_round()
    assert [c[0] for c in query.calls] == [PID, PID2]


def test_a_pid_that_exits_is_counted_and_dropped_from_the_targets(tmp_path: Path) -> None:
    make_tree(tmp_path, pids={PID: 1, PID2: 3})
    put_regions(tmp_path, 0, [(A, A + 2 * PS, 3, 0)])
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(make_ctx(fs, pids=(PID, PID2)),
                     query_nodes=FakeQuery(dict.fromkeys(page_range(A, 2), 1)))
    s.run_round()
    (tmp_path / f"proc/{PID}/stat").unlink()  # PID exits
    del fs.writes[:]
    s.run_round()
    # Rewritten without it and committed while DAMON runs.
    same_writes(fs.writes, target_writes([PID2]) + [(STATE, "commit"),
                                                    (STATE, "update_schemes_tried_regions")])
    st = s.stats()
    assert (st["pid_gone"], st["commits"], st["targets"], st["errors"]) == (1, 1, 1, 0)
    s.run_round()
    assert s.stats()["pid_gone"] == 1  # counted once


def test_query_of_an_exited_pid_is_counted_not_raised(tmp_path: Path) -> None:
    fs = regions_tree(tmp_path)
    ctx = make_ctx(fs)
    s = DamonSampler(ctx, query_nodes=FakeQuery(raise_errno=errno.ESRCH), confirm_rounds=1,
                     warmup_rounds=0)
    assert s.run_round() == 0
    assert s.stats()["pid_gone"] == 1 and s.stats()["errors"] == 0
    fs.path(STATE).write_text("off\n")
    s2 = DamonSampler(ctx, query_nodes=FakeQuery(raise_errno=errno.EPERM), confirm_rounds=1,
                      warmup_rounds=0)
    assert s2.run_round() == 0
    assert s2.stats()["errors"] == 1 and s2.stats()["pid_gone"] == 0


def test_a_commit_that_stops_the_kdamond_restarts_it(tmp_path: Path) -> None:
    make_tree(tmp_path, pids={PID: 1, PID2: 3})
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(make_ctx(fs, pids=(PID, PID2)), query_nodes=FakeQuery())
    s.run_round()
    (tmp_path / f"proc/{PID}/stat").unlink()
    fs.commit_stops = True  # as 6.12 does when a committed pid has exited meanwhile
    del fs.writes[:]
    s.run_round()
    same_writes(fs.writes, target_writes([PID2]) + [(STATE, "commit")] + target_writes([PID2])
                + [(STATE, "on"), (STATE, "update_schemes_tried_regions")])
    st = s.stats()
    assert (st["kdamond_stops"], st["kdamond_starts"], st["kdamond_on"]) == (1, 2, 1)


def test_damon_sysfs_lock_held_for_a_while_is_waited_for(tmp_path: Path) -> None:
    """The state and nr_* files answer EBUSY while anyone holds DAMON's sysfs lock (the
    kdamond takes it every sampling interval, and through a tried-regions update).  A
    commit, a state read and the update itself wait for it: no commit is lost, nothing
    counts as an error, and the waits are counted."""
    make_tree(tmp_path, pids={PID: 1, PID2: 3})
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(make_ctx(fs, pids=(PID, PID2)), query_nodes=FakeQuery())
    fs.busy[f"{K}/nr_kdamonds"] = 2
    s.open()
    try:
        s.run_round()
        (tmp_path / f"proc/{PID}/stat").unlink()
        fs.busy[STATE] = 3  # the round's state read waits
        fs.busy[(STATE, "commit")] = 2
        fs.busy[f"{C}/targets/nr_targets"] = 1
        del fs.writes[:]
        s.run_round()
        same_writes(fs.writes, target_writes([PID2]) + [(STATE, "commit"),
                                                        (STATE, "update_schemes_tried_regions")])
        st = s.stats()
        assert (st["commits"], st["targets"], st["errors"]) == (1, 1, 0)
        assert st["sysfs_busy"] == 2 + 3 + 2 + 1
        assert not any(fs.busy.values())
    finally:
        s.close()


def test_a_commit_that_stops_the_kdamond_a_bit_later(tmp_path: Path) -> None:
    make_tree(tmp_path, pids={PID: 1, PID2: 3})
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(make_ctx(fs, pids=(PID, PID2)), query_nodes=FakeQuery())
    s.run_round()
    (tmp_path / f"proc/{PID}/stat").unlink()
    fs.commit_stops_late = True
    del fs.writes[:]
    s.run_round()  # the update finds it stopped: not an error
    same_writes(fs.writes, target_writes([PID2]) + [(STATE, "commit"),
                                                    (STATE, "update_schemes_tried_regions")])
    assert s.stats()["errors"] == 0
    del fs.writes[:]
    s.run_round()  # restarted
    same_writes(fs.writes, target_writes([PID2]) + [(STATE, "on"),
                                                    (STATE, "update_schemes_tried_regions")])
    st = s.stats()
    assert (st["kdamond_stops"], st["kdamond_starts"], st["errors"]) == (1, 2, 0)


def test_a_kdamond_that_stopped_by_itself_is_restarted(tmp_path: Path) -> None:
    fs = regions_tree(tmp_path)
    s = DamonSampler(make_ctx(fs), query_nodes=FakeQuery())
    s.run_round()
    fs.path(STATE).write_text("off\n")  # e.g. every target had exited
    del fs.writes[:]
    s.run_round()
    same_writes(fs.writes, target_writes([PID]) + [(STATE, "on"),
                                                   (STATE, "update_schemes_tried_regions")])
    assert s.stats()["kdamond_stops"] == 1


def test_on_with_an_exited_pid_retries_with_the_live_ones(tmp_path: Path) -> None:
    make_tree(tmp_path, pids={PID: 1, PID2: 3})
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(make_ctx(fs, pids=(PID, PID2)), query_nodes=FakeQuery())

    def exits_then_on(kpath: str, value: str, orig: Any = fs.write) -> None:
        if (kpath, value) == (STATE, "on") and (tmp_path / f"proc/{PID}/stat").exists():
            (tmp_path / f"proc/{PID}/stat").unlink()
            fs.writes.append((kpath, value))
            raise OSError(errno.EINVAL, "on")
        orig(kpath, value)

    fs.write = exits_then_on  # type: ignore[method-assign]
    s.run_round()
    assert fs.writes[:-1] == (target_writes([PID, PID2]) + [(STATE, "on")]
                              + target_writes([PID2]) + [(STATE, "on")])
    assert s.stats()["kdamond_starts"] == 1 and s.stats()["targets"] == 1


def test_failures_at_run_time_are_counted_not_raised(tmp_path: Path,
                                                     short_busy_wait: None) -> None:
    fs = regions_tree(tmp_path)
    fs.fail[(STATE, "update_schemes_tried_regions")] = errno.EBUSY
    s = DamonSampler(make_ctx(fs), query_nodes=FakeQuery())
    assert s.run_round() == 0
    assert s.stats()["errors"] == 1
    put(tmp_path, f"{C}/schemes/0/tried_regions/0/nr_accesses", "garbage\n")
    del fs.fail[(STATE, "update_schemes_tried_regions")]
    s.run_round()
    assert s.stats()["errors"] == 2


def test_scope_emptied_turns_damon_off(tmp_path: Path) -> None:
    fs = regions_tree(tmp_path)
    s = DamonSampler(make_ctx(fs), query_nodes=FakeQuery())
    s.run_round()
    (tmp_path / f"proc/{PID}/stat").unlink()
    del fs.writes[:]
    s.run_round()
    assert fs.writes == [(STATE, "off")]
    assert s.stats()["kdamond_on"] == 0 and s.stats()["pid_gone"] == 1


def test_the_loop_runs_rounds_until_stopped(tmp_path: Path) -> None:
    fs = regions_tree(tmp_path)
    ctx = make_ctx(fs, interval_ms=10)
    s = DamonSampler(ctx, query_nodes=FakeQuery(dict.fromkeys(page_range(B, 4), 1)))

    async def go() -> None:
        await s.start()
        for _ in range(500):
            await asyncio.sleep(0.01)
            if s.stats()["candidates_offered"] >= 8:
                break
        await s.stop()

    run(go)
    # Round 1 warms up, round 2 is the first hot snapshot, round 3 confirms it.
    assert s.stats()["rounds"] >= 4
    assert s.stats()["candidates_offered"] >= 8
    assert len(ctx.queues) == 4
    assert fs.writes[-2:] == [(STATE, "off"), (f"{K}/nr_kdamonds", "0")]
    assert fs.read(STATE).strip() == "off"


def test_stop_releases_a_round_stuck_in_the_kernel(tmp_path: Path) -> None:
    """A round blocked in a sysfs write or a query past the stop timeout: stop() turns
    the kdamond off under it (which releases the kernel's wait), and the round then turns
    nothing back on."""
    import threading

    fs = regions_tree(tmp_path)
    released = threading.Event()
    entered = threading.Event()
    write = fs.write

    def write_and_release(kpath: str, value: str) -> None:
        write(kpath, value)
        if (kpath, value) == (STATE, "off"):
            released.set()

    fs.write = write_and_release  # type: ignore[method-assign]

    def stuck_query(pid: int, addrs: Any) -> array[int]:
        entered.set()
        released.wait(10)
        (tmp_path / f"proc/{PID}/stat").unlink(missing_ok=True)  # and the pid exited
        return array("i", [1]) * len(addrs)

    s = DamonSampler(make_ctx(fs, interval_ms=10), query_nodes=stuck_query, confirm_rounds=1,
                     warmup_rounds=0)
    s.stop_timeout_s = 0.2

    async def go() -> None:
        await s.start()
        assert await asyncio.to_thread(entered.wait, 10)
        await s.stop()

    run(go)
    assert released.is_set()
    off = fs.writes.index((STATE, "off"))
    assert (STATE, "on") not in fs.writes[off:] and (STATE, "commit") not in fs.writes[off:]
    assert fs.writes[-1] == (f"{K}/nr_kdamonds", "0")


def test_a_stop_cut_short_by_its_caller_still_turns_the_kdamond_off(tmp_path: Path) -> None:
    """The engine waits for a sampler's stop (the start-up sweep's end, the shutdown) for
    less than the sampler's own stop protocol may take: cancelled while a round is stuck,
    stop() still turns the kdamond off and restores nr_kdamonds."""
    import threading

    fs = regions_tree(tmp_path)
    entered, released = threading.Event(), threading.Event()

    def stuck_query(pid: int, addrs: Any) -> array[int]:
        entered.set()
        released.wait(10)
        return array("i", [1]) * len(addrs)

    s = DamonSampler(make_ctx(fs, interval_ms=10), query_nodes=stuck_query, confirm_rounds=1,
                     warmup_rounds=0)

    async def go() -> None:
        await s.start()
        assert await asyncio.to_thread(entered.wait, 10)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(s.stop(), 0.2)  # s.stop_timeout_s is 10 s and more

    try:
        run(go)
    finally:
        released.set()
    assert (STATE, "off") in fs.writes
    assert fs.writes[-1] == (f"{K}/nr_kdamonds", "0")


def test_a_large_hot_region_on_the_fast_tier_is_probed_not_offered(tmp_path: Path) -> None:
    """A 512-page hot region already on node 0 costs a probe of 16 pages a round; one
    page demoted back to node 1 is found within PROBE_STRIDE rounds, and then the
    region is offered."""
    make_tree(tmp_path)
    put_regions(tmp_path, 0, [(A, A + 512 * PS, 9, 3)])
    fs = FakeDamonFs(tmp_path)
    ctx = make_ctx(fs)
    nodes = dict.fromkeys(page_range(A, 512), 0)
    query = FakeQuery(nodes)
    s = DamonSampler(ctx, query_nodes=query, confirm_rounds=1, warmup_rounds=0)
    assert s.run_round() == 0
    assert [len(c[1]) for c in query.calls] == [512 // damon_hot.PROBE_STRIDE]
    st = s.stats()
    assert st["pages_probed"] == 16 and st["pages_skipped_on_fast"] == 512
    nodes[A + 77 * PS] = 1  # demoted back
    offered = []
    for _ in range(damon_hot.PROBE_STRIDE):
        offered.append(s.run_round())
    assert sorted(offered) == [0] * (damon_hot.PROBE_STRIDE - 1) + [512]  # found once its
    got = merge(ctx.queues.drain(1000))                                # turn came
    assert sorted(got.addrs) == page_range(A, 512) and set(got.nodes) == {-1}


# --- cold regions: demotion candidates --------------------------------------------------

# cold_age_ms 5000 / aggr 100 ms: a cold region has no access for 50 aggregations.
COLD_AGE = 50


def cold_scheme_writes(idx: int, target_idx: int, min_age: int = COLD_AGE) -> list[tuple[str, str]]:
    s = f"{C}/schemes/{idx}"
    return [
        (f"{s}/action", "stat"),
        (f"{s}/access_pattern/sz/min", str(PS)),
        (f"{s}/access_pattern/sz/max", "18446744073709551615"),
        (f"{s}/access_pattern/nr_accesses/min", "0"),
        (f"{s}/access_pattern/nr_accesses/max", "0"),
        (f"{s}/access_pattern/age/min", str(min_age)),
        (f"{s}/access_pattern/age/max", "4294967295"),
        (f"{s}/filters/nr_filters", "1"),
        (f"{s}/filters/0/type", "target"),
        (f"{s}/filters/0/damon_target_idx", str(target_idx)),
        (f"{s}/filters/0/matching", "N"),
    ]


def cold_target_writes(pids: list[int], min_age: int = COLD_AGE) -> list[tuple[str, str]]:
    """Targets, their hot schemes 0..n-1, then their cold schemes n..2n-1."""
    n = len(pids)
    out = [(f"{C}/targets/nr_targets", str(n))]
    out += [(f"{C}/targets/{i}/pid_target", str(p)) for i, p in enumerate(pids)]
    out.append((f"{C}/schemes/nr_schemes", str(2 * n)))
    for i in range(n):
        out += scheme_writes(i)
    for i in range(n):
        out += cold_scheme_writes(n + i, i, min_age)
    return out


class Room:
    """ctx.room_needed: the bytes promotion needs, set by the test."""

    def __init__(self, pages: int = 0) -> None:
        self.bytes = pages * PS
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.bytes


def demote_ctx(fs: KernelFs, room: Room, pids: tuple[int, ...] = (PID,), batch_pages: int = 1,
               cold_age_ms: int = 5000, interval_ms: int = 1000) -> SamplerContext:
    """A context with demotion on: real demotion queues, made on this (the loop's) thread."""
    ctx = make_ctx(fs, pids=pids, interval_ms=interval_ms)
    cfg = dataclasses.replace(
        ctx.config,
        workers=dataclasses.replace(ctx.config.workers, batch_pages=batch_pages),
        demotion=dataclasses.replace(ctx.config.demotion, cold_age_ms=cold_age_ms))
    return dataclasses.replace(ctx, config=cfg, demote_queues=CandidateQueues([0, 1, 2, 3], 4096),
                               room_needed=room)


def cold_rows(ctx: SamplerContext) -> list[tuple[int, int, int, int]]:
    """(pid, addr, node, weight) of the demotion candidates, in queue order."""
    assert ctx.demote_queues is not None
    batches = ctx.demote_queues.drain(1 << 16)
    if not batches:
        return []
    got = merge(batches)
    return list(zip(got.pids, got.addrs, got.nodes, got.counts))


D1 = 0x7F00_0100_0000  # cold, age 60, 4 pages
D2 = 0x7F00_0200_0000  # cold, age 200, 3 pages (oldest)
D3 = 0x7F00_0300_0000  # cold, age 80, 5 pages


def cold_tree(tmp_path: Path) -> FakeDamonFs:
    make_tree(tmp_path)
    put_regions(tmp_path, 1, [(D1, D1 + 4 * PS, 0, 60), (D2, D2 + 3 * PS, 0, 200),
                              (D3, D3 + 5 * PS, 0, 80)])
    return FakeDamonFs(tmp_path)


def test_the_model_with_cold_schemes(tmp_path: Path) -> None:
    """Demotion on: the hot schemes keep indexes 0..n-1, the cold ones follow (scheme
    n + i keeps target i), and the backend writes them as it writes the hot ones."""
    attrs = damon_model.MonitoringAttrs(damon_model.Intervals(5000, 100_000, 1_000_000),
                                        10, 1000)
    cold = damon_model.ColdPattern(damon_model.aggregations(5_000_000, 100_000), PS)
    assert cold.min_age == COLD_AGE
    assert damon_model.aggregations(5_000_001, 100_000) == COLD_AGE + 1  # rounded up
    assert damon_model.aggregations(1000, 100_000) == 1
    ctx = damon_model.hot_regions_context(attrs, [PID, PID2], 1, cold)
    assert ctx.schemes[:2] == damon_model.hot_regions_context(attrs, [PID, PID2], 1).schemes
    assert [s.filters[0].target_idx for s in ctx.schemes] == [0, 1, 0, 1]
    assert damon_model.cold_scheme_index(2, 1) == 3
    assert ctx.schemes[3].access_pattern == damon_model.AccessPattern(
        sz=damon_model.Range(PS, damon_model.ULONG_MAX), nr_accesses=damon_model.Range(0, 0),
        age=damon_model.Range(COLD_AGE, damon_model.UINT_MAX))
    make_tree(tmp_path)
    put_regions(tmp_path, 3, [(D1, D1 + PS, 0, 70), (D2, D2 + 2 * PS, 0, 90)])
    fs = KernelFs(tmp_path, record_writes=True)
    sysfs = DamonSysfs(fs)
    sysfs.write_targets(ctx)
    same_writes(fs.writes, cold_target_writes([PID, PID2]))
    assert sysfs.tried_regions(3, lambda what, exc: None) == [
        damon_model.Region(D1, D1 + PS, 0, 70), damon_model.Region(D2, D2 + 2 * PS, 0, 90)]
    assert (sysfs.nr_tried_regions(3), sysfs.nr_tried_regions(2)) == (2, 0)


def test_inner_subtract_merged() -> None:
    R = damon_model.Region
    assert damon_model.inner(R(4097, 3 * 4096 + 5, 0, 9), 4096) == R(8192, 12288, 0, 9)
    assert damon_model.inner(R(4097, 8191, 0, 9), 4096) is None
    regions = [R(0, 10, 0, 1), R(10, 20, 0, 2), R(30, 40, 0, 3)]
    assert damon_model.subtract(regions, []) == regions
    assert damon_model.subtract(regions, [(0, 100)]) == []
    assert damon_model.subtract(regions, [(2, 4), (6, 12), (15, 16), (18, 35)]) == [
        R(0, 2, 0, 1), R(4, 6, 0, 1), R(12, 15, 0, 2), R(16, 18, 0, 2), R(35, 40, 0, 3)]
    assert damon_model.merged([(5, 8), (0, 2), (2, 3), (7, 10)]) == [(0, 3), (5, 10)]


def test_demotion_on_writes_the_cold_schemes(tmp_path: Path) -> None:
    make_tree(tmp_path, pids={PID: 1, PID2: 3})
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(demote_ctx(fs, Room(), pids=(PID, PID2)), query_nodes=FakeQuery())
    s.run_round()
    same_writes(fs.writes, cold_target_writes([PID, PID2])
                + [(STATE, "on"), (STATE, "update_schemes_tried_regions")])
    # A pid that exits: targets and both kinds of schemes rewritten, and committed.
    (tmp_path / f"proc/{PID}/stat").unlink()
    del fs.writes[:]
    s.run_round()
    same_writes(fs.writes, cold_target_writes([PID2])
                + [(STATE, "commit"), (STATE, "update_schemes_tried_regions")])


def test_the_cold_age_counts_configured_aggregation_intervals(tmp_path: Path) -> None:
    make_tree(tmp_path)
    fs = FakeDamonFs(tmp_path)
    s = DamonSampler(demote_ctx(fs, Room(), cold_age_ms=1050), query_nodes=FakeQuery())
    s.run_round()
    same_writes(fs.writes, cold_target_writes([PID], min_age=11)
                + [(STATE, "on"), (STATE, "update_schemes_tried_regions")])


def test_cold_regions_become_demotion_candidates_oldest_first(tmp_path: Path) -> None:
    """Room for 4 pages: a budget of 8 pages, the oldest regions first (D2, then D3),
    each page weighted by its region's age, node unknown, in the queue of the CPU the
    process last ran on; D1 is over budget."""
    fs = cold_tree(tmp_path)
    room = Room(4)
    ctx = demote_ctx(fs, room)
    s = DamonSampler(ctx, query_nodes=FakeQuery(), confirm_rounds=1, warmup_rounds=0)
    assert s.run_round() == 0  # nothing to promote
    assert ctx.demote_queues is not None
    assert [len(ctx.demote_queues.queue(c)) for c in range(4)] == [0, 0, 8, 0]
    assert len(ctx.queues) == 0
    assert cold_rows(ctx) == ([(PID, a, -1, 200) for a in page_range(D2, 3)]
                              + [(PID, a, -1, 80) for a in page_range(D3, 5)])
    st = s.stats()
    assert (st["cold_regions"], st["demotion_candidates_offered"],
            st["cold_pages_over_budget"]) == (3, 8, 4)
    assert "cold_pages_offered" not in st  # one counter of cold pages offered: the base's


@pytest.mark.parametrize("room_pages,batch,cap,offered", [
    (0.5, 1, 1 << 16, 1),     # less than a page of room: at least a batch (1 page)
    (0.5, 5, 1 << 16, 5),     # ... of 5 pages
    (100, 1, 1 << 16, 12),    # room for more than there is: every cold page
    (100, 1, 7, 7),           # the per-round cap
])
def test_the_cold_page_budget(tmp_path: Path, room_pages: float, batch: int, cap: int,
                              offered: int) -> None:
    fs = cold_tree(tmp_path)
    room = Room()
    room.bytes = int(room_pages * PS)
    ctx = demote_ctx(fs, room, batch_pages=batch)
    s = DamonSampler(ctx, query_nodes=FakeQuery(), confirm_rounds=1, warmup_rounds=0,
                     max_cold_pages_per_round=cap)
    s.run_round()
    rows = cold_rows(ctx)
    assert len(rows) == offered
    assert rows[0] == (PID, D2, -1, 200)  # oldest first
    assert s.stats()["cold_pages_over_budget"] == 12 - offered


def test_no_room_needed_offers_nothing_but_counts_cold_regions(tmp_path: Path) -> None:
    fs = cold_tree(tmp_path)
    room = Room(0)
    ctx = demote_ctx(fs, room)
    s = DamonSampler(ctx, query_nodes=FakeQuery(), confirm_rounds=1, warmup_rounds=0)
    for _ in range(3):
        s.run_round()
    assert room.calls == 3
    assert cold_rows(ctx) == []
    st = s.stats()
    assert (st["cold_regions"], st["demotion_candidates_offered"],
            st["cold_pages_over_budget"]) == (9, 0, 0)
    room.bytes = PS  # room for a page needed now: two offered the next round
    s.run_round()
    assert len(cold_rows(ctx)) == 2
    assert s.stats()["demotion_candidates_offered"] == 2


def test_a_region_hot_in_the_same_round_is_not_offered_as_cold(tmp_path: Path) -> None:
    """DAMON's adaptive regions: the cold scheme may report pages the hot scheme reports
    too, or reported the round before (what the confirmation remembers).  Only whole
    pages of a cold region are offered."""
    make_tree(tmp_path)
    # Hot A..A+8 pages (scheme 0); cold A+4..A+12 and half a page more (scheme 1).
    put_regions(tmp_path, 0, [(A, A + 8 * PS, 5, 2)])
    put_regions(tmp_path, 1, [(A + 4 * PS, A + 12 * PS + PS // 2, 0, 90)])
    fs = FakeDamonFs(tmp_path)
    ctx = demote_ctx(fs, Room(100))
    query = FakeQuery(dict.fromkeys(page_range(A, 8), 1))
    s = DamonSampler(ctx, query_nodes=query, confirm_rounds=2, warmup_rounds=0)
    s.run_round()
    assert [a for _, a, _, _ in cold_rows(ctx)] == page_range(A + 8 * PS, 4)
    # Not hot this round, but the round before: still not offered.
    put_regions(tmp_path, 0, [])
    for p in (tmp_path / C.lstrip("/") / "schemes/0/tried_regions").glob("[0-9]*"):
        for f in p.iterdir():
            f.unlink()
        p.rmdir()
    s.run_round()
    assert [a for _, a, _, _ in cold_rows(ctx)] == page_range(A + 8 * PS, 4)
    s.run_round()  # cold for two rounds now: every page
    assert [a for _, a, _, _ in cold_rows(ctx)] == page_range(A + 4 * PS, 8)


def test_cold_regions_wait_for_the_warm_up(tmp_path: Path) -> None:
    fs = cold_tree(tmp_path)
    ctx = demote_ctx(fs, Room(100))
    s = DamonSampler(ctx, query_nodes=FakeQuery(), confirm_rounds=1)  # 1 warm-up round
    s.run_round()
    assert cold_rows(ctx) == [] and s.stats()["cold_regions"] == 3
    s.run_round()
    assert len(cold_rows(ctx)) == 12


def test_the_age_is_the_weight_up_to_2_to_the_31(tmp_path: Path) -> None:
    make_tree(tmp_path)
    put_regions(tmp_path, 1, [(D1, D1 + PS, 0, damon_model.UINT_MAX)])
    fs = FakeDamonFs(tmp_path)
    ctx = demote_ctx(fs, Room(1))
    DamonSampler(ctx, query_nodes=FakeQuery(), confirm_rounds=1, warmup_rounds=0).run_round()
    assert cold_rows(ctx) == [(PID, D1, -1, (1 << 31) - 1)]


def test_cold_regions_of_several_processes(tmp_path: Path) -> None:
    """Scheme n + i is target i's: cold pages go to the queue of that pid's CPU, the
    oldest region first across processes."""
    make_tree(tmp_path, pids={PID: 1, PID2: 3})
    put_regions(tmp_path, 2, [(D1, D1 + 2 * PS, 0, 60)])
    put_regions(tmp_path, 3, [(D1, D1 + 2 * PS, 0, 90)])  # same addresses, other process
    fs = FakeDamonFs(tmp_path)
    ctx = demote_ctx(fs, Room(1), pids=(PID, PID2))
    s = DamonSampler(ctx, query_nodes=FakeQuery(), confirm_rounds=1, warmup_rounds=0)
    s.run_round()  # budget: 2 pages, PID2's (older)
    assert ctx.demote_queues is not None
    assert [len(ctx.demote_queues.queue(c)) for c in range(4)] == [0, 0, 0, 2]
    assert cold_rows(ctx) == [(PID2, a, -1, 90) for a in page_range(D1, 2)]
    assert s.stats()["cold_pages_over_budget"] == 2


def test_quiet_mode_waits_while_cold_pages_are_offered(tmp_path: Path) -> None:
    """Nothing to promote, but room needed and cold pages to offer: no quiet mode.  Once
    no room is needed, quiet after quiet_after_rounds; room needed again leaves it."""
    fs = cold_tree(tmp_path)
    room = Room(4)
    ctx = demote_ctx(fs, room)
    s = DamonSampler(ctx, query_nodes=FakeQuery(), confirm_rounds=1, warmup_rounds=0)
    for _ in range(25):
        s.run_round()
    st = s.stats()
    assert (st["quiet"], st["quiet_entered"]) == (0, 0)
    assert st["demotion_candidates_offered"] == 25 * 8
    assert (STATE, "commit") not in fs.writes
    room.bytes = 0
    for _ in range(10):
        s.run_round()
    assert s.stats()["quiet"] == 1
    room.bytes = PS
    del fs.writes[:]
    s.run_round()
    same_writes(fs.writes, [(STATE, "update_schemes_tried_regions")] + interval_writes(1)
                + [(STATE, "commit")])
    st = s.stats()
    assert (st["quiet"], st["quiet_left"]) == (0, 1)


def test_room_needed_keeps_damon_at_its_configured_pace(tmp_path: Path) -> None:
    """While promotion needs room, the sampler stays out of quiet mode even before cold
    regions show up: slowed intervals would rescale region ages and delay them."""
    make_tree(tmp_path)
    fs = FakeDamonFs(tmp_path)
    room = Room(100)
    s = DamonSampler(demote_ctx(fs, room), query_nodes=FakeQuery(), confirm_rounds=1,
                     warmup_rounds=0)
    for _ in range(10):
        s.run_round()
    assert s.stats()["quiet"] == 0
    room.bytes = 0
    for _ in range(10):
        s.run_round()
    assert s.stats()["quiet"] == 1


def test_a_failing_room_needed_is_counted_and_offers_no_cold_pages(tmp_path: Path) -> None:
    fs = regions_tree(tmp_path)
    put_regions(tmp_path, 1, [(D1, D1 + 4 * PS, 0, 60)])

    def broken() -> int:
        raise RuntimeError("no room figure")

    ctx = dataclasses.replace(demote_ctx(fs, Room()), room_needed=broken)
    s = DamonSampler(ctx, query_nodes=FakeQuery(dict.fromkeys(page_range(B, 4), 1)),
                     confirm_rounds=1, warmup_rounds=0)
    assert s.run_round() == 4  # the hot pages still go out
    assert cold_rows(ctx) == []
    assert s.stats()["errors"] == 1


def test_the_loop_delivers_cold_pages_to_the_demotion_queues(tmp_path: Path) -> None:
    fs = cold_tree(tmp_path)
    ctx = demote_ctx(fs, Room(100), interval_ms=10)
    s = DamonSampler(ctx, query_nodes=FakeQuery())

    async def go() -> None:
        await s.start()
        for _ in range(500):
            await asyncio.sleep(0.01)
            if s.stats()["demotion_candidates_offered"] >= 12:
                break
        await s.stop()

    run(go)
    assert s.stats()["demotion_candidates_offered"] >= 12
    assert ctx.demote_queues is not None and len(ctx.demote_queues) == 12
    assert len(ctx.queues) == 0


def test_only_present_pages_of_a_cold_region_are_offered(tmp_path: Path) -> None:
    """DAMON's cold regions span pages never touched: pagemap says which are present, and
    only those are offered (and count against the budget)."""
    fs = cold_tree(tmp_path)
    pagemap = tmp_path / f"proc/{PID}/pagemap"
    with open(pagemap, "r+b") as f:  # D2's second page and all of D3 absent
        for a in [D2 + PS, *page_range(D3, 5)]:
            f.seek(a // PS * 8)
            f.write(bytes(8))
    ctx = demote_ctx(fs, Room(2))
    s = DamonSampler(ctx, query_nodes=FakeQuery(), confirm_rounds=1, warmup_rounds=0)
    s.run_round()
    assert cold_rows(ctx) == ([(PID, a, -1, 200) for a in (D2, D2 + 2 * PS)]
                              + [(PID, a, -1, 60) for a in page_range(D1, 2)])
