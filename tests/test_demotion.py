"""Kernel-side demotion against fake sysfs trees: the DAMON paddr demoter's writes, its
quota following the room needed, its stats counted, its stop; the kswapd method's
demotion_enabled saved and restored; which method the daemon picks."""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kmigratedd import config, demotion, sysctl
from kmigratedd.daemon import Daemon
from kmigratedd.demotion import KswapdDemotion, PaddrDemoter, node_memory_ranges
from kmigratedd.errors import ConfigError, KmigratedError, SamplerUnavailableError
from kmigratedd.kernelfs import KernelFs
from kmigratedd.samplers import damon_model as model
from kmigratedd.samplers.damon_sysfs import DamonSysfs

K = "/sys/kernel/mm/damon/admin/kdamonds"
C = f"{K}/0/contexts/0"
S = f"{C}/schemes/0"
PS = 4096
BLOCK = 128 << 20
MiB = 1 << 20
DEMOTION_ENABLED = "/sys/kernel/mm/numa/demotion_enabled"


def put(root: Path, kpath: str, text: str) -> None:
    p = root / kpath.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


class FakeFs(KernelFs):
    """Records every write; "on"/"off" change the state file; ``fail`` maps
    (path, value) to an errno."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, record_writes=True)
        self.fail: dict[tuple[str, str], int] = {}

    def write(self, kpath: str, value: str) -> None:
        err = self.fail.get((kpath, value))
        if err:
            raise OSError(err, "fake")
        super().write(kpath, value)
        if kpath.endswith("/state") and value in ("on", "off"):
            self.path(kpath).write_text(value + "\n")


def make_tree(root: Path, *, release: str = "6.12.117+deb12-amd64", nr_kdamonds: str = "0",
              blocks: tuple[int, ...] = (0, 1, 2, 3, 8, 9), offline: tuple[int, ...] = (3,)
              ) -> FakeFs:
    put(root, "/proc/sys/kernel/osrelease", release + "\n")
    put(root, f"{K}/nr_kdamonds", nr_kdamonds + "\n")
    put(root, f"{K}/0/state", "off\n")
    put(root, f"{C}/avail_operations", "vaddr fvaddr paddr\n")
    put(root, "/sys/devices/system/memory/block_size_bytes", f"{BLOCK:x}\n")
    for b in blocks:
        (root / f"sys/devices/system/node/node0/memory{b}").mkdir(parents=True)
        put(root, f"/sys/devices/system/memory/memory{b}/online",
                "0\n" if b in offline else "1\n")
    (root / "sys/devices/system/node/node1/memory16").mkdir(parents=True)
    put(root, DEMOTION_ENABLED, "false\n")
    return FakeFs(root)


def set_stats(root: Path, sz_applied: int, nr_applied: int = 1) -> None:
    for name, v in (("nr_tried", 3), ("sz_tried", 4 * sz_applied), ("nr_applied", nr_applied),
                    ("sz_applied", sz_applied), ("qt_exceeds", 0)):
        put(root, f"{S}/stats/{name}", f"{v}\n")


def demoter(fs: KernelFs, room: dict[int, int], counted: list[tuple[int, int, int]] | None = None,
            **demotion_kw: Any) -> PaddrDemoter:
    cfg = config.DemotionConfig(**demotion_kw)
    out = counted if counted is not None else []
    return PaddrDemoter(fs, {0: 1}, cfg, config.DamonConfig(), page_size=PS,
                        room_for=lambda n: room.get(n, 0),
                        count=lambda *a: out.append(a),
                        executor=ThreadPoolExecutor(1))


def test_node_memory_ranges_merge_online_blocks(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    assert node_memory_ranges(fs, 0) == [(0, 3 * BLOCK), (8 * BLOCK, 10 * BLOCK)]
    assert node_memory_ranges(fs, 1) == [(16 * BLOCK, 17 * BLOCK)]


def test_open_writes_a_paddr_context_whose_scheme_matches_nothing(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    d = demoter(fs, {})
    d.open()
    nothing = [(f"{S}/access_pattern/sz/min", "0"),
               (f"{S}/access_pattern/sz/max", str(model.ULONG_MAX)),
               (f"{S}/access_pattern/nr_accesses/min", "1"),
               (f"{S}/access_pattern/nr_accesses/max", "0"),
               (f"{S}/access_pattern/age/min", "0"),
               (f"{S}/access_pattern/age/max", str(model.UINT_MAX))]
    assert fs.writes == [
        (f"{K}/nr_kdamonds", "1"),
        (f"{K}/0/contexts/nr_contexts", "1"),
        (f"{C}/operations", "paddr"),
        (f"{C}/monitoring_attrs/intervals/sample_us", "5000"),
        (f"{C}/monitoring_attrs/intervals/aggr_us", "100000"),
        (f"{C}/monitoring_attrs/intervals/update_us", "1000000"),
        (f"{C}/monitoring_attrs/nr_regions/min", "10"),
        (f"{C}/monitoring_attrs/nr_regions/max", "1000"),
        (f"{C}/targets/nr_targets", "1"),
        (f"{C}/targets/0/regions/nr_regions", "2"),
        (f"{C}/targets/0/regions/0/start", "0"),
        (f"{C}/targets/0/regions/0/end", str(3 * BLOCK)),
        (f"{C}/targets/0/regions/1/start", str(8 * BLOCK)),
        (f"{C}/targets/0/regions/1/end", str(10 * BLOCK)),
        (f"{C}/schemes/nr_schemes", "1"),
        (f"{S}/action", "migrate_cold"),
        (f"{S}/target_nid", "1"),
        *nothing,
        (f"{S}/quotas/ms", "0"),
        (f"{S}/quotas/bytes", "0"),
        (f"{S}/quotas/reset_interval_ms", "1000"),
        (f"{S}/quotas/weights/sz_permil", "0"),
        (f"{S}/quotas/weights/nr_accesses_permil", "1000"),
        (f"{S}/quotas/weights/age_permil", "1000"),
        (f"{S}/filters/nr_filters", "1"),
        (f"{S}/filters/0/type", "young"),
        (f"{S}/filters/0/matching", "Y"),
        (f"{K}/0/state", "on"),
    ]


def test_the_cold_scheme_model() -> None:
    s = model.migrate_cold_scheme(1, 50, model.Quota(MiB, 1000))
    assert s.action == "migrate_cold" and s.target_nid == 1
    assert s.access_pattern.nr_accesses == model.Range(0, 0)
    assert s.access_pattern.age == model.Range(50, model.UINT_MAX)
    assert s.filters == (model.YoungFilter(matching=True),)


def test_quota_follows_the_room_needed(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    set_stats(tmp_path, 0)
    room = {0: 0}
    d = demoter(fs, room)
    d.open()
    fs.writes.clear()

    def round_writes() -> list[tuple[str, str]]:
        fs.writes.clear()
        d.round()
        return [w for w in fs.writes if w != (f"{K}/0/state", "update_schemes_stats")]

    assert round_writes() == []  # no room needed, the scheme already matches nothing
    room[0] = 10 * MiB + 123  # whole pages only
    # cold_age_ms 5000 over 100 ms aggregations: 50 intervals with no access.
    assert round_writes() == [
        (f"{S}/quotas/bytes", str(10 * MiB)),
        (f"{S}/access_pattern/sz/min", "0"),
        (f"{S}/access_pattern/sz/max", str(model.ULONG_MAX)),
        (f"{S}/access_pattern/nr_accesses/min", "0"),
        (f"{S}/access_pattern/nr_accesses/max", "0"),
        (f"{S}/access_pattern/age/min", "50"),
        (f"{S}/access_pattern/age/max", str(model.UINT_MAX)),
        (f"{K}/0/state", "commit")]
    assert round_writes() == []  # same room: nothing to commit
    room[0] = 1 << 30  # more than the rate limit allows in one interval
    assert round_writes() == [(f"{S}/quotas/bytes", str(256_000_000 - 256_000_000 % PS)),
                              (f"{K}/0/state", "commit")]
    room[0] = 0
    assert round_writes() == [
        (f"{S}/access_pattern/sz/min", "0"),
        (f"{S}/access_pattern/sz/max", str(model.ULONG_MAX)),
        (f"{S}/access_pattern/nr_accesses/min", "1"),
        (f"{S}/access_pattern/nr_accesses/max", "0"),
        (f"{S}/access_pattern/age/min", "0"),
        (f"{S}/access_pattern/age/max", str(model.UINT_MAX)),
        (f"{K}/0/state", "commit")]
    assert d.stats()["nodes"]["0"]["active"] is False  # type: ignore[index]


def test_what_was_demoted_since_the_last_round_is_taken_off_the_room(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    set_stats(tmp_path, 0)
    d = demoter(fs, {0: 64 * MiB})
    d.open()
    d.round()
    assert d.nodes[0].quota_bytes == 64 * MiB
    set_stats(tmp_path, 16 * MiB)  # the worker's free figure does not show these yet
    assert d.round() == [(0, 1, 16 * MiB // PS)]
    assert d.nodes[0].quota_bytes == 48 * MiB


def test_unlimited_rate_takes_the_whole_room(tmp_path: Path) -> None:
    d = demoter(make_tree(tmp_path), {}, rate_limit_mb_per_s=0)
    assert d.quota_for(5 << 30) == 5 << 30
    assert d.quota_for(PS - 1) == 0


def test_applied_bytes_are_counted_as_demoted_pages(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    set_stats(tmp_path, 0)
    d = demoter(fs, {0: 64 * MiB})
    d.open()
    assert d.round() == []
    set_stats(tmp_path, 10 * PS + 100)
    assert d.round() == [(0, 1, 10)]
    set_stats(tmp_path, 12 * PS)
    assert d.round() == [(0, 1, 2)]  # the 100 bytes carried over make no page
    set_stats(tmp_path, 3 * PS)  # a new scheme (the kdamond restarted) counts from 0
    assert d.round() == [(0, 1, 3)]
    st = d.stats()["nodes"]["0"]  # type: ignore[index]
    assert st["demoted_pages"] == 15 and st["demoted_bytes"] == 15 * PS
    assert st["regions_applied"] == 1 and st["tried_bytes"] == 12 * PS


def test_run_counts_on_the_loop(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    set_stats(tmp_path, 4 * PS)
    counted: list[tuple[int, int, int]] = []
    d = demoter(fs, {0: MiB}, counted)
    d.interval_ms = 10

    async def go() -> None:
        await d.start()
        task = asyncio.create_task(d.run())
        await asyncio.sleep(0.1)
        task.cancel()
        await d.stop()

    asyncio.run(go())
    assert counted == [(0, 1, 4)]


def test_a_kdamond_that_stopped_is_started_again(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    set_stats(tmp_path, 0)
    d = demoter(fs, {0: MiB})
    d.open()
    d.round()
    put(tmp_path, f"{K}/0/state", "off\n")
    fs.writes.clear()
    d.round()
    assert (f"{K}/0/state", "on") in fs.writes and d.restarts == 1
    assert fs.writes[-1] == (f"{K}/0/state", "commit")
    assert (f"{K}/0/state", "update_schemes_stats") not in fs.writes


def test_errors_at_run_time_are_counted(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    d = demoter(fs, {0: MiB})
    d.open()
    fs.fail[(f"{K}/0/state", "commit")] = errno.EINVAL
    assert d.round() == [] and d.errors == 1


def test_stop_turns_off_and_restores_nr_kdamonds(tmp_path: Path) -> None:
    fs = make_tree(tmp_path, nr_kdamonds="2")
    d = demoter(fs, {})
    d.open()
    fs.writes.clear()
    d.close()
    assert fs.writes == [(f"{K}/0/state", "off"), (f"{K}/nr_kdamonds", "2")]
    fs.writes.clear()
    d.close()  # idempotent
    assert d.round() == [] and fs.writes == []  # closed: a late round leaves DAMON alone


def test_a_kernel_without_migrate_cold_is_refused_cleanly(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    fs.fail[(f"{S}/action", "migrate_cold")] = errno.EINVAL
    d = demoter(fs, {})
    with pytest.raises(SamplerUnavailableError, match="no migrate_cold action"):
        d.open()
    assert fs.writes[-1] == (f"{K}/nr_kdamonds", "0")


def test_busy_damon_is_refused_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DamonSysfs, "busy_wait_s", 0.05)  # an EBUSY that lasts
    fs = make_tree(tmp_path)
    fs.fail[(f"{K}/nr_kdamonds", "1")] = errno.EBUSY
    with pytest.raises(SamplerUnavailableError, match="EBUSY"):
        demoter(fs, {}).open()


@pytest.mark.parametrize("release,why", [
    ("6.10.0", "DAMON on Linux 6.10 has no migrate_cold action (Linux >= 6.11)"),
    ("6.11.0", None), ("6.12.117+deb12-amd64", None)])
def test_paddr_probe(tmp_path: Path, release: str, why: str | None) -> None:
    assert demotion.paddr_unavailable(make_tree(tmp_path, release=release)) == why


def test_paddr_probe_without_damon(tmp_path: Path) -> None:
    assert "no DAMON sysfs" in (demotion.paddr_unavailable(KernelFs(tmp_path)) or "")


# --- kswapd -----------------------------------------------------------------


def test_kswapd_sets_demotion_enabled_and_restores_it(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    state = tmp_path / "state" / "sysctl-state.json"
    k = KswapdDemotion(fs, demotion.state_path(state))
    asyncio.run(k.start())
    assert fs.writes == [(DEMOTION_ENABLED, "1")]
    saved = json.loads((tmp_path / "state" / "demotion-sysctl-state.json").read_text())
    assert saved == {DEMOTION_ENABLED: "0"}
    asyncio.run(k.stop())
    assert fs.writes[-1] == (DEMOTION_ENABLED, "0")
    assert not (tmp_path / "state" / "demotion-sysctl-state.json").exists()


def test_a_killed_kswapd_demotion_is_recovered(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    state = demotion.state_path(tmp_path / "state" / "sysctl-state.json")
    asyncio.run(KswapdDemotion(fs, state).start())
    put(tmp_path, DEMOTION_ENABLED, "true\n")  # killed: never restored
    r = sysctl.recover(fs, state)
    assert r.restored == {"kernel/mm/numa/demotion_enabled": "0"}
    assert fs.writes[-1] == (DEMOTION_ENABLED, "0")


def test_demotion_enabled_values() -> None:
    s = sysctl.DEMOTION_ENABLED
    assert (s.check("true"), s.check("false"), s.check("1")) == ("1", "0", "1")
    with pytest.raises(ValueError):
        s.check("2")
    with pytest.raises(ValueError):
        sysctl.NUMA_BALANCING.check("true")


# --- which method -------------------------------------------------------------


def method_of(fs: KernelFs, sampler: str, method: str) -> str:
    cfg = config.Config(demotion=config.DemotionConfig(method=method))  # type: ignore[arg-type]
    return Daemon(config=cfg, config_path=None, fs=fs)._demotion_method(cfg, sampler)


@pytest.mark.parametrize("sampler,method,want", [
    ("damon", "auto", "sampler"), ("damon", "damon", "sampler"), ("damon", "off", "off"),
    ("damon", "kswapd", "kswapd"),
    ("hint-faults", "auto", "kswapd"), ("pebs", "auto", "kswapd"),
    ("hint-faults", "damon", "off"), ("hint-faults", "kswapd", "kswapd"),
    ("hint-faults", "damon-paddr", "damon-paddr"), ("hint-faults", "off", "off")])
def test_the_method_for_each_sampler(tmp_path: Path, sampler: str, method: str,
                                     want: str) -> None:
    assert method_of(make_tree(tmp_path), sampler, method) == want


def test_auto_falls_back_to_damon_paddr_then_off(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    (tmp_path / DEMOTION_ENABLED.lstrip("/")).unlink()
    assert method_of(fs, "hint-faults", "auto") == "damon-paddr"
    fs = make_tree(tmp_path / "old", release="6.8.0")
    (tmp_path / "old" / DEMOTION_ENABLED.lstrip("/")).unlink()
    assert method_of(fs, "hint-faults", "auto") == "off"


@pytest.mark.parametrize("sampler,method,setup,msg", [
    ("damon", "damon-paddr", None, "the damon sampler runs DAMON already"),
    ("hint-faults", "damon-paddr", "old", "demotion.method damon-paddr: DAMON on Linux 6.8"),
    ("hint-faults", "kswapd", "no-tiering", "demotion.method kswapd: the kernel has no "),
])
def test_a_method_that_cannot_run_is_an_error(tmp_path: Path, sampler: str, method: str,
                                              setup: str | None, msg: str) -> None:
    fs = make_tree(tmp_path, release="6.8.0" if setup == "old" else "6.12.1")
    if setup == "no-tiering":
        (tmp_path / DEMOTION_ENABLED.lstrip("/")).unlink()
    with pytest.raises(KmigratedError, match=msg):
        method_of(fs, sampler, method)


def fake_worker(node: int, log: list[tuple[int, int, bool]]) -> object:
    """A worker as the daemon configures it: what it was given is appended to ``log``
    (min_free_bytes, resume_free_bytes, whether the node's watermarks replace them)."""
    from types import SimpleNamespace

    w = SimpleNamespace(node=node, levels=None)
    w.configure = lambda c: log.append((c.min_free_bytes, c.resume_free_bytes, False))
    w.refresh_free = lambda: log.append((log[-1][0], log[-1][1], w.levels is not None))
    return w


def test_kswapd_puts_the_nodes_watermarks_in_place_of_the_headroom(tmp_path: Path) -> None:
    from kmigratedd.capacity import NodeLevels

    d, cfg = daemon_for(make_tree(tmp_path), tmp_path, "kswapd")
    d.demotion_method = "kswapd"
    log: list[tuple[int, int, bool]] = []
    w = fake_worker(0, log)
    d._configure_worker(w, cfg)  # type: ignore[arg-type]
    assert isinstance(w.levels, NodeLevels) and log[-1] == (
        cfg.workers.min_free_bytes, cfg.workers.resume_free_bytes, True)
    # Demotion making room: promotion resumes one batch above min_free_bytes.
    for method in ("damon-paddr", "sampler"):
        d.demotion_method = method
        d._configure_worker(w, cfg)  # type: ignore[arg-type]
        assert w.levels is None
        assert log[-1] == (cfg.workers.min_free_bytes,
                           cfg.workers.min_free_bytes + cfg.workers.batch_pages * 4096, False)
    d.demotion_method = "off"
    assert d._workers_config(cfg) is cfg.workers


@pytest.mark.parametrize("text,ok", [("damon-paddr", True), ("kswapd", True), ("sampler", True),
                                     ("off", True), ('"off"', True), ("memory.reclaim", False),
                                     ("on", False)])
def test_config_method_values(tmp_path: Path, text: str, ok: bool) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"demotion:\n  method: {text}\n")
    load: Callable[[], config.Config] = lambda: config.load(str(path))
    if ok:  # a bare `off` is YAML's false, and means off
        assert load().demotion.method == text.strip('"')
        return
    with pytest.raises(ConfigError) as info:
        load()
    got = "True" if text == "on" else f"'{text}'"  # a bare `on` is YAML's true
    assert str(info.value) == (f"{path}: demotion.method: must be one of auto, off, sampler, "
                               f"damon, damon-paddr, kswapd, got {got}")


def daemon_for(fs: KernelFs, tmp_path: Path, method: str) -> tuple[Daemon, config.Config]:
    from kmigratedd.topology import Node, Topology

    cfg = config.Config(
        sampler=config.SamplerConfig(hint_faults=config.HintFaultsConfig(
            state_file=str(tmp_path / "state" / "sysctl-state.json"))),
        demotion=config.DemotionConfig(method=method))  # type: ignore[arg-type]
    nodes = {n: Node(n, frozenset(), 1 << 30, 0, {0: 10, 1: 20} if n == 0 else {0: 20, 1: 10},
                     (), None, None) for n in (0, 1)}
    d = Daemon(config=cfg, config_path=None, fs=fs)
    d.topology = Topology(nodes=nodes, tiers=(), tier_source="kernel", targets={1: 0},
                          block_size_bytes=BLOCK, page_size=PS)
    d.demotion_method = "damon-paddr"
    return d, cfg


def test_auto_falls_back_to_kswapd_when_the_paddr_demoter_cannot_start(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    fs.fail[(f"{S}/action", "migrate_cold")] = errno.EINVAL
    d, cfg = daemon_for(fs, tmp_path, "auto")

    async def go() -> None:
        await d._start_demoter(cfg)
        assert d.demotion_method == "kswapd" and isinstance(d.demoter, KswapdDemotion)
        assert fs.writes[-1] == (DEMOTION_ENABLED, "1")
        await d.demoter.stop()

    asyncio.run(go())
    assert fs.writes[-1] == (DEMOTION_ENABLED, "0")
    assert (f"{K}/nr_kdamonds", "0") in fs.writes  # DAMON left as found


def test_a_paddr_demoter_named_in_the_config_that_cannot_start_is_an_error(
        tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    fs.fail[(f"{S}/action", "migrate_cold")] = errno.EINVAL
    d, cfg = daemon_for(fs, tmp_path, "damon-paddr")
    with pytest.raises(KmigratedError, match="demotion.method damon-paddr: the kernel's DAMON "
                                             "has no migrate_cold action"):
        asyncio.run(d._start_demoter(cfg))


def test_kswapd_counts_what_reclaim_demoted_from_the_fast_node(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    vmstat = "/sys/devices/system/node/node0/vmstat"
    put(tmp_path, vmstat, "nr_free_pages 5\npgdemote_kswapd 100\npgdemote_direct 7\n")
    k = KswapdDemotion(fs, demotion.state_path(tmp_path / "state" / "s.json"), {0: 1})
    asyncio.run(k.start())
    assert k.poll() == []
    put(tmp_path, vmstat, "nr_free_pages 5\npgdemote_kswapd 150\npgdemote_direct 9\n")
    assert k.poll() == [(0, 1, 52)]
    assert k.stats()["nodes"] == {"0": {"to": 1, "demoted_pages": 52, "target_short": False}}
    asyncio.run(k.stop())


def test_kdamonds_left_on_by_a_killed_run_are_turned_off(tmp_path: Path) -> None:
    """The demoter names the kdamonds it turned on; after a crash the next start turns off
    those still on with the recorded pid, and leaves another tool's alone."""
    from kmigratedd import demotion

    fs = make_tree(tmp_path)
    owner = tmp_path / "state" / "kdamonds-sysctl-state.json"
    owner.parent.mkdir()
    k0, k1 = DamonSysfs(fs, 0), DamonSysfs(fs, 1)
    for k, pid in ((k0, 4242), (k1, 5151)):
        p = fs.path(k.kdamond)
        p.mkdir(parents=True, exist_ok=True)
        (p / "state").write_text("on\n")
        (p / "pid").write_text(f"{pid}\n")
    owner.write_text(json.dumps({"0": 4242, "1": 999}))   # kdamond 1 is someone else's now
    assert demotion.recover_kdamonds(fs, owner) == [0]
    assert fs.path(k0.state).read_text().strip() == "off"
    assert fs.path(k1.state).read_text().strip() == "on"
    assert not owner.exists()
    assert demotion.recover_kdamonds(fs, owner) == []       # nothing recorded: nothing done


def test_kswapd_keeps_the_headroom_while_the_demotion_target_is_short(tmp_path: Path) -> None:
    """With kswapd demoting, promotion may take the fast node below its headroom (down to
    its watermarks) only while the node it demotes to has workers.min_free_bytes free: else
    kswapd's demotions would fail and its reclaim would drop page cache on the fast node
    instead."""
    fs = make_tree(tmp_path)
    meminfo = "/sys/devices/system/node/node1/meminfo"
    d, cfg = daemon_for(fs, tmp_path, "kswapd")
    d.demotion_method = "kswapd"
    floor = cfg.workers.min_free_bytes
    log: list[tuple[int, int, bool]] = []
    w = fake_worker(0, log)
    d.workers = {0: w}  # type: ignore[dict-item]
    d._configure_worker(w, cfg)  # type: ignore[arg-type]
    put(tmp_path, meminfo, f"Node 1 MemFree: {(floor >> 10) + 4096} kB\n")
    k = KswapdDemotion(fs, demotion.state_path(tmp_path / "state" / "s.json"), {0: 1},
                       target_floor_bytes=floor, on_short=d._headroom_changed)
    d.demoter = k
    asyncio.run(k.start())
    assert k.short == set() and w.levels is not None and len(log) == 2
    put(tmp_path, meminfo, f"Node 1 MemFree: {(floor >> 10) - 4} kB\n")
    k.check_targets()
    assert k.short == {0} and w.levels is None
    assert log[-1] == (floor, cfg.workers.resume_free_bytes, False)
    assert k.stats()["nodes"]["0"]["target_short"] is True
    from kmigratedd.ctl import format_status
    text = format_status({"version": "0", "pid": 1, "uptime_s": 1, "state": "running",
                          "paused": False, "dry_run": False, "sampler": "hint-faults",
                          "demotion": k.stats(), "nodes": {}, "rate_interval_s": 10})
    assert ("demotion: kswapd; node 0 -> 1: 0 pages demoted by reclaim (node 1 short of free "
            "memory: promotion keeps the headroom)") in text
    n = len(log)
    k.check_targets()  # still short: nothing more to do
    assert len(log) == n
    put(tmp_path, meminfo, f"Node 1 MemFree: {floor >> 10} kB\n")
    k.check_targets()
    assert k.short == set() and w.levels is not None and log[-1][2] is True
    asyncio.run(k.stop())
