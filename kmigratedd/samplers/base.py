"""What every sampler is: a producer of candidates, never a migrator.

A sampler is built by its factory from a :class:`SamplerContext` (nothing else:
no globals), probed, started, and stopped. It pushes candidates into the
per-CPU queues: perf samplers into the queue of the CPU whose ring produced the
sample; scanners (idle, DAMON) into the queue of the CPU the task last ran on.
Failures at run time (a pid that vanished, a mapping it may not read) are
counted in ``stats()`` and never raised out of the sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..config import Config
from ..kernelfs import KernelFs
from ..queues import CandidateQueues
from ..scope import Scope
from ..topology import Topology


@dataclass
class SamplerContext:
    config: Config
    fs: KernelFs
    topology: Topology
    queues: CandidateQueues
    scope: Scope


class Sampler(Protocol):
    name: str

    async def start(self) -> None:
        """Acquire kernel resources and begin producing candidates."""

    async def stop(self) -> None:
        """Release everything start() acquired (idempotent; restores any sysctl)."""

    def stats(self) -> dict[str, int]:
        """Counters since start: candidates produced, samples lost, errors by kind..."""


@dataclass(frozen=True)
class SamplerFactory:
    name: str
    # Returns None when the sampler can run here, else what is missing.
    probe: Callable[[SamplerContext], str | None]
    create: Callable[[SamplerContext], Sampler]
    description: str
