"""Hotness samplers: a name → factory table, and ``auto``.

``auto`` probes the factories in :data:`AUTO_ORDER` and takes the first that can
run, logging why each one before it could not. A sampler asked for by name that
cannot run raises :class:`~kmigratedd.errors.SamplerUnavailableError` with one
line saying what is missing.
"""

from __future__ import annotations

import logging

from ..errors import SamplerUnavailableError
from .base import Sampler, SamplerContext, SamplerFactory
from .damon import DamonSampler
from .idle import IdleSampler
from .perf import HintFaultSampler, PmuSampler

log = logging.getLogger("kmigratedd.sampler")


def _factories() -> dict[str, SamplerFactory]:
    table = [
        SamplerFactory("pebs", lambda c: PmuSampler.probe_kind(c, "pebs"),
                       lambda c: PmuSampler(c, "pebs"), "Intel PEBS load-latency samples"),
        SamplerFactory("ibs", lambda c: PmuSampler.probe_kind(c, "ibs"),
                       lambda c: PmuSampler(c, "ibs"), "AMD IBS op samples"),
        SamplerFactory("idle", IdleSampler.probe, IdleSampler,
                       "idle page tracking (page_idle bitmap) with an aging history"),
        SamplerFactory("damon", DamonSampler.probe, DamonSampler,
                       "DAMON vaddr access monitoring (kernel-side sampling)"),
        SamplerFactory("hint-faults", HintFaultSampler.probe, HintFaultSampler,
                       "NUMA hinting faults (numa_balancing=2) via a software perf event"),
    ]
    return {f.name: f for f in table}


FACTORIES: dict[str, SamplerFactory] = _factories()
# Best first: precise PMU samples, then access-bit scanners, then hinting faults,
# which change a sysctl and fault the workload.
AUTO_ORDER = ("pebs", "ibs", "idle", "damon", "hint-faults")


def create(name: str, ctx: SamplerContext) -> Sampler:
    """Build the sampler ``name`` (or the best available for ``auto``)."""
    if name != "auto":
        factory = FACTORIES.get(name)
        if factory is None:
            raise SamplerUnavailableError(f"sampler {name!r} is not known "
                                          f"(known: {', '.join(FACTORIES)})")
        missing = factory.probe(ctx)
        if missing:
            raise SamplerUnavailableError(f"sampler {name!r} cannot run here: {missing}")
        return factory.create(ctx)
    reasons: list[str] = []
    for candidate in AUTO_ORDER:
        factory = FACTORIES.get(candidate)
        if factory is None:
            continue
        missing = factory.probe(ctx)
        if missing is None:
            log.info("sampler auto: using %s (%s)%s", candidate, factory.description,
                     "; skipped " + "; ".join(reasons) if reasons else "")
            return factory.create(ctx)
        reasons.append(f"{candidate}: {missing}")
    raise SamplerUnavailableError("no sampler can run here: " + "; ".join(reasons))


__all__ = ["AUTO_ORDER", "FACTORIES", "Sampler", "SamplerContext", "create"]
