"""Which demotion method a sampler gets (kmigratedd/demotion/__init__.py: choose), how the
engine sets the workers' headroom for it, and a paddr demoter that cannot start."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from kmigratedd import config, demotion
from kmigratedd.demotion import KswapdDemotion
from kmigratedd.engine import Engine
from kmigratedd.errors import ConfigError, KmigratedError
from kmigratedd.kernelfs import KernelFs
from kmigratedd.queues import CandidateQueues
from kmigratedd.topology import Node, Topology
from sysfsfake import BLOCK, DEMOTION_ENABLED, K, PS, S, make_tree


def method_of(fs: KernelFs, sampler: str, method: str) -> str:
    return demotion.choose(method, sampler, fs)


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


def fake_worker(node: int, log: list[tuple[int, int, bool]]) -> SimpleNamespace:
    """A worker as the engine configures it: what it was given is appended to ``log``
    (min_free_bytes, resume_free_bytes, whether the node's watermarks replace them)."""
    w = SimpleNamespace(node=node, capacity=SimpleNamespace(levels=None))
    w.configure = lambda c: log.append((c.min_free_bytes, c.resume_free_bytes, False))
    w.refresh_free = lambda: log.append((log[-1][0], log[-1][1],
                                         w.capacity.levels is not None))
    return w


def test_kswapd_puts_the_nodes_watermarks_in_place_of_the_headroom(tmp_path: Path) -> None:
    from kmigratedd.capacity import NodeLevels

    e, cfg = engine_for(make_tree(tmp_path), tmp_path, "kswapd")
    e.method = "kswapd"
    log: list[tuple[int, int, bool]] = []
    w = fake_worker(0, log)
    e.configure_worker(w, cfg)  # type: ignore[arg-type]
    assert isinstance(w.capacity.levels, NodeLevels) and log[-1] == (
        cfg.workers.min_free_bytes, cfg.workers.resume_free_bytes, True)
    # Demotion making room: promotion resumes one batch above min_free_bytes.
    for method in ("damon-paddr", "sampler"):
        e.method = method
        e.configure_worker(w, cfg)  # type: ignore[arg-type]
        assert w.capacity.levels is None
        assert log[-1] == (cfg.workers.min_free_bytes,
                           cfg.workers.min_free_bytes + cfg.workers.batch_pages * 4096, False)
    e.method = "off"
    assert e.workers_config(cfg) is cfg.workers


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


def engine_for(fs: KernelFs, tmp_path: Path, method: str) -> tuple[Engine, config.Config]:
    """An engine on a two-node topology (node 1 promotes to node 0), its demotion method
    chosen as damon-paddr; nothing started."""
    cfg = config.Config(
        sampler=config.SamplerConfig(hint_faults=config.HintFaultsConfig(
            state_file=str(tmp_path / "state" / "sysctl-state.json"))),
        demotion=config.DemotionConfig(method=method))  # type: ignore[arg-type]
    nodes = {n: Node(n, frozenset(), 1 << 30, 0, {0: 10, 1: 20} if n == 0 else {0: 20, 1: 10},
                     (0, 1, 2, 8, 9) if n == 0 else (16,), None, None) for n in (0, 1)}
    topo = Topology(nodes=nodes, tiers=(), tier_source="kernel", targets={1: 0},
                    block_size_bytes=BLOCK, page_size=PS)
    pools: list[ThreadPoolExecutor] = []

    def pool(n: int, name: str, **kw: object) -> ThreadPoolExecutor:
        pools.append(ThreadPoolExecutor(n))
        return pools[-1]

    e = Engine(cfg, fs, topo, CandidateQueues([0], 64, PS),
               spawn=lambda coro, name: asyncio.get_running_loop().create_task(coro),
               pool=pool)
    e.method = "damon-paddr"
    return e, cfg


def test_auto_falls_back_to_kswapd_when_the_paddr_demoter_cannot_start(tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    fs.fail[(f"{S}/action", "migrate_cold")] = errno.EINVAL
    e, cfg = engine_for(fs, tmp_path, "auto")

    async def go() -> None:
        await e._start_demoter(cfg)
        assert e.method == "kswapd" and isinstance(e.demoter, KswapdDemotion)
        assert fs.writes[-1] == (DEMOTION_ENABLED, "1")
        await e.demoter.stop()

    asyncio.run(go())
    assert fs.writes[-1] == (DEMOTION_ENABLED, "0")
    assert (f"{K}/nr_kdamonds", "0") in fs.writes  # DAMON left as found


def test_a_paddr_demoter_named_in_the_config_that_cannot_start_is_an_error(
        tmp_path: Path) -> None:
    fs = make_tree(tmp_path)
    fs.fail[(f"{S}/action", "migrate_cold")] = errno.EINVAL
    e, cfg = engine_for(fs, tmp_path, "damon-paddr")
    with pytest.raises(KmigratedError, match="demotion.method damon-paddr: the kernel's DAMON "
                                             "has no migrate_cold action"):
        asyncio.run(e._start_demoter(cfg))
