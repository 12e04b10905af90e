"""The DAMON paddr demoter (kmigratedd/demotion/paddr.py) against a fake sysfs tree: its
writes, its quota following the room needed, what it demoted counted, its stop."""

from __future__ import annotations

import asyncio
import errno
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kmigratedd import config, demotion
from kmigratedd.damon import model
from kmigratedd.damon.sysfs import DamonSysfs
from kmigratedd.demotion import PaddrDemoter
from kmigratedd.errors import SamplerUnavailableError
from kmigratedd.kernelfs import KernelFs
from sysfsfake import BLOCK, C, K, MiB, PS, S, make_tree, put, set_stats

# Node 0's memory in the fake tree: blocks 0-2 and 8-9 (block 3 is offline).
RANGES = {0: [(0, 3 * BLOCK), (8 * BLOCK, 10 * BLOCK)]}


def demoter(fs: KernelFs, room: dict[int, int], **demotion_kw: Any) -> PaddrDemoter:
    cfg = config.DemotionConfig(**demotion_kw)
    return PaddrDemoter(fs, RANGES, {0: 1}, cfg, config.DamonConfig(), page_size=PS,
                        room_for=lambda n: room.get(n, 0), executor=ThreadPoolExecutor(1))


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
    d = demoter(fs, {0: MiB})
    d.interval_ms = 10

    async def go() -> None:
        await d.start()
        task = asyncio.create_task(d.run())
        await asyncio.sleep(0.1)
        task.cancel()
        await d.stop()

    asyncio.run(go())
    assert d.demoted(0) == {(0, 1): 4} and d.demoted(1) == {}


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
