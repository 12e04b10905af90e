"""Build a real SamplerContext inside the guest and collect what a sampler produces."""

from __future__ import annotations

import dataclasses
import time
from array import array
from collections.abc import Callable

from kmigratedd import config
from kmigratedd.kernelfs import KernelFs
from kmigratedd.queues import CandidateQueues, merge
from kmigratedd.procfs import online_cpus
from kmigratedd.samplers.base import SamplerContext
from kmigratedd.scope import Scope
from kmigratedd.topology import discover


def make_context(pids: tuple[int, ...] = (), interval_ms: int = 200, state_file: str = "",
                 capacity: int = 1 << 18, demote_queues: CandidateQueues | None = None,
                 room_needed: Callable[[], int] | None = None) -> SamplerContext:
    """A context as the daemon builds it; ``demote_queues`` (made on the caller's thread,
    the loop's) and ``room_needed`` turn demotion candidates on."""
    cfg = config.Config()
    sampler = dataclasses.replace(cfg.sampler, interval_ms=interval_ms)
    if state_file:
        sampler = dataclasses.replace(sampler, hint_faults=dataclasses.replace(
            sampler.hint_faults, state_file=state_file))
    cfg = dataclasses.replace(cfg, sampler=sampler,
                              scope=dataclasses.replace(cfg.scope, pids=tuple(pids)))
    fs = KernelFs()
    ctx = SamplerContext(cfg, fs, discover(fs), CandidateQueues(online_cpus(fs), capacity),
                         Scope(cfg.scope, fs), demote_queues=demote_queues)
    if room_needed is not None:
        ctx.room_needed = room_needed
    return ctx


class Collector:
    """Accumulates the distinct (pid, page) candidates drained from the queues."""

    def __init__(self, ctx: SamplerContext, pid: int) -> None:
        self.ctx = ctx
        self.pid = pid
        self.seen: set[int] = set()
        self.first_at: float | None = None
        self.t0 = time.monotonic()

    def drain(self) -> int:
        batches = self.ctx.queues.drain(1 << 22)
        if not batches:
            return 0
        b = merge(batches)
        new = {a for p, a in zip(b.pids, b.addrs) if p == self.pid}
        if new and self.first_at is None:
            self.first_at = time.monotonic() - self.t0
        self.seen |= new
        return len(b)

    def coverage(self, addrs: array[int]) -> float:
        return len(self.seen & set(addrs)) / max(1, len(addrs))

    def cold_fraction(self, cold: array[int]) -> float:
        return len(self.seen & set(cold)) / max(1, len(self.seen))
