"""The kswapd method (kmigratedd/demotion/kswapd.py): demotion_enabled saved and restored,
what reclaim demoted counted, and the configured headroom kept while the demotion target
is short of free memory."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kmigratedd import config, demotion, sysctl
from kmigratedd.demotion import KswapdDemotion
from sysfsfake import DEMOTION_ENABLED, make_tree, put
from test_demotion import engine_for, fake_worker

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


def test_kswapd_counts_what_reclaim_demoted_from_the_fast_node(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    vmstat = "/sys/devices/system/node/node0/vmstat"
    put(tmp_path, vmstat, "nr_free_pages 5\npgdemote_kswapd 100\npgdemote_direct 7\n")
    k = KswapdDemotion(fs, demotion.state_path(tmp_path / "state" / "s.json"), {0: 1})
    asyncio.run(k.start())
    assert k.poll() == []
    put(tmp_path, vmstat, "nr_free_pages 5\npgdemote_kswapd 150\npgdemote_direct 9\n")
    assert k.poll() == [(0, 1, 52)]
    assert k.demoted(0) == {(0, 1): 52} and k.demoted(1) == {}
    assert k.stats()["nodes"] == {"0": {"to": 1, "demoted_pages": 52, "target_short": False}}
    asyncio.run(k.stop())


def test_kswapd_keeps_the_headroom_while_the_demotion_target_is_short(tmp_path: Path) -> None:
    """With kswapd demoting, promotion may take the fast node below its headroom (down to
    its watermarks) only while the node it demotes to has workers.min_free_bytes free: else
    kswapd's demotions would fail and its reclaim would drop page cache on the fast node
    instead."""
    fs = make_tree(tmp_path)
    meminfo = "/sys/devices/system/node/node1/meminfo"
    e, cfg = engine_for(fs, tmp_path, "kswapd")
    e.method = "kswapd"
    floor = cfg.workers.min_free_bytes
    log: list[tuple[int, int, bool]] = []
    w = fake_worker(0, log)
    e.workers = {0: w}  # type: ignore[dict-item]
    e.configure_worker(w, cfg)  # type: ignore[arg-type]
    put(tmp_path, meminfo, f"Node 1 MemFree: {(floor >> 10) + 4096} kB\n")
    k = KswapdDemotion(fs, demotion.state_path(tmp_path / "state" / "s.json"), {0: 1},
                       target_floor_bytes=floor, on_short=e.headroom_changed)
    e.demoter = k
    asyncio.run(k.start())
    assert k.short == set() and w.capacity.levels is not None and len(log) == 2
    put(tmp_path, meminfo, f"Node 1 MemFree: {(floor >> 10) - 4} kB\n")
    k.check_targets()
    assert k.short == {0} and w.capacity.levels is None
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
    assert k.short == set() and w.capacity.levels is not None and log[-1][2] is True
    asyncio.run(k.stop())
