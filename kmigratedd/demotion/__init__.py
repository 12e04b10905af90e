"""How room is made on a full fast tier: the :class:`Demoter` protocol, the methods'
name → factory table, and the method chosen for a sampler (``demotion.method``).

- ``sampler`` (:mod:`.lane`): the sampler's own cold pages (damon, idle), moved by each
  worker's :class:`~kmigratedd.demotion.lane.ColdLane` through its move pipeline;
- ``damon-paddr`` (:mod:`.paddr`, Linux 6.11+): a DAMON kdamond per fast node whose
  ``migrate_cold`` scheme demotes, its quota following the room needed;
- ``kswapd`` (:mod:`.kswapd`): demotion_enabled=1, and promotion takes the node below its
  low watermarks, which wakes kswapd;
- ``off``.

One room signal drives them all: the bytes each fast node's worker needs before the hot
pages waiting fit (:class:`~kmigratedd.capacity.NodeCapacity`): a cold lane demotes up
to it, a paddr scheme's quota follows it, and with kswapd promotion itself takes the node
to where kswapd wakes.  ``memory.reclaim`` is not a method: before Linux 6.17
(per-node /sys/devices/system/node/nodeN/reclaim) it cannot be held to one node, so it
reclaims from every node of the cgroup, swaps anonymous pages when swap exists and drops
clean page cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from ..config import Config
from ..errors import KmigratedError
from ..kernelfs import KernelFs
from ..topology import Topology
from .kswapd import KswapdDemotion, kswapd_unavailable, node_demoted_pages, state_path
from .paddr import PaddrDemoter, owner_path, paddr_unavailable

log = logging.getLogger("kmigratedd.demotion")

# Samplers that see accesses on the fast tier and offer its cold pages for demotion.
DEMOTING_SAMPLERS = ("damon", "idle")


class Demoter(Protocol):
    """A way of making room, started and stopped with the daemon."""

    method: str

    async def start(self) -> None:
        """Acquire what it needs (sysctls, kdamonds); raise SamplerUnavailableError."""

    async def stop(self) -> None:
        """Give back everything start() took (idempotent)."""

    async def run(self) -> None:
        """Its periodic part, as a task, until cancelled."""

    def demoted(self, node: int) -> Mapping[tuple[int, int], int]:
        """Pages the kernel demoted from ``node`` for it, by (node, target)."""

    def kernel_floor(self, node: int) -> bool:
        """Whether promotion to ``node`` goes down to its watermarks (kswapd) rather than
        keeping workers.min_free_bytes."""

    def stats(self) -> dict[str, object]:
        """What ``kmigratedctl status`` shows."""


@dataclass
class LaneDemoter:
    """``sampler``: the workers' cold lanes demote, so nothing runs beside them."""

    method: str = "sampler"

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def run(self) -> None:
        return None

    def demoted(self, node: int) -> Mapping[tuple[int, int], int]:
        return {}  # the pipelines count what the lanes moved

    def kernel_floor(self, node: int) -> bool:
        return False

    def stats(self) -> dict[str, object]:
        return {"method": self.method}


@dataclass
class DemoterContext:
    """What a demoter is built from (the daemon's engine fills it in)."""

    config: Config
    fs: KernelFs
    topology: Topology
    room_for: Callable[[int], int]          # bytes a fast node's worker needs
    on_short: Callable[[int], None]         # a node's headroom rule changed
    executor: Callable[[], Executor]        # a thread for rounds off the event loop
    targets: dict[int, int] = field(default_factory=dict)  # fast node -> demotion target

    def __post_init__(self) -> None:
        if not self.targets:
            self.targets = {n: down for n in self.topology.fast_nodes
                            if (down := self.topology.demotion_target(n)) is not None}


@dataclass(frozen=True)
class DemoterFactory:
    name: str
    unavailable: Callable[[KernelFs], str | None]
    create: Callable[[DemoterContext], Demoter]


def _paddr(ctx: DemoterContext) -> Demoter:
    cfg = ctx.config
    return PaddrDemoter(ctx.fs, {n: ctx.topology.physical_ranges(n) for n in ctx.targets},
                        ctx.targets, cfg.demotion, cfg.sampler.damon,
                        page_size=ctx.topology.page_size, room_for=ctx.room_for,
                        executor=ctx.executor(),
                        owner_file=owner_path(cfg.sampler.hint_faults.state_file))


def _kswapd(ctx: DemoterContext) -> Demoter:
    return KswapdDemotion(ctx.fs, state_path(ctx.config.sampler.hint_faults.state_file),
                          ctx.targets, target_floor_bytes=ctx.config.workers.min_free_bytes,
                          on_short=ctx.on_short)


FACTORIES: dict[str, DemoterFactory] = {f.name: f for f in (
    DemoterFactory("sampler", lambda fs: None, lambda ctx: LaneDemoter()),
    DemoterFactory("damon-paddr", paddr_unavailable, _paddr),
    DemoterFactory("kswapd", kswapd_unavailable, _kswapd),
)}


def choose(method: str, sampler: str, fs: KernelFs) -> str:
    """The method for this sampler: off, sampler, damon-paddr or kswapd.

    auto takes the sampler's cold pages where it sees the fast tier, else kswapd where
    demotion_enabled is writable, else a DAMON paddr scheme where the kernel has one.
    kswapd comes before damon-paddr because it makes room at once: its LRU already tells
    cold from hot, where a paddr scheme first waits a cold age for DAMON's regions, and
    then again for the pages whose accessed bit it finds set (benchmarks/quality.py, full
    fast tier).  A method named in the config that cannot run here raises
    KmigratedError."""
    if method == "off":
        return "off"
    own = sampler in DEMOTING_SAMPLERS
    if method in ("sampler", "damon") or (method == "auto" and own):
        if own:
            return "sampler"
        log.warning("demotion.method %s needs a sampler that sees the fast tier (%s), "
                    "not %s: no demotion", method, ", ".join(DEMOTING_SAMPLERS), sampler)
        return "off"
    if method == "damon-paddr" and sampler == "damon":
        raise KmigratedError("demotion.method damon-paddr: the damon sampler runs DAMON "
                             "already: use demotion.method damon (or auto)")
    why_kswapd = None
    if method in ("auto", "kswapd"):
        why_kswapd = kswapd_unavailable(fs)
        if why_kswapd is None:
            return "kswapd"
        if method == "kswapd":
            raise KmigratedError(f"demotion.method kswapd: {why_kswapd}")
        log.info("demotion: kswapd cannot demote (%s)", why_kswapd)
    why = paddr_unavailable(fs)
    if why is None:
        return "damon-paddr"
    if method == "damon-paddr":
        raise KmigratedError(f"demotion.method damon-paddr: {why}")
    log.warning("demotion: the %s sampler does not see the fast tier, %s and %s: "
                "no demotion", sampler, why_kswapd, why)
    return "off"


__all__ = ["DEMOTING_SAMPLERS", "FACTORIES", "Demoter", "DemoterContext", "KswapdDemotion",
           "LaneDemoter", "PaddrDemoter", "choose", "kswapd_unavailable",
           "node_demoted_pages", "owner_path", "paddr_unavailable", "state_path"]
