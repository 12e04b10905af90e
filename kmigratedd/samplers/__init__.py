"""Hotness samplers: a name → factory table, and ``auto``.

``auto`` probes the factories in :data:`AUTO_ORDER` and takes the first that can
run, logging why each one before it could not. A sampler asked for by name that
cannot run raises :class:`~kmigratedd.errors.SamplerUnavailableError` with one
line saying what is missing.
"""

from __future__ import annotations

import logging

from ..errors import KmigratedError, SamplerUnavailableError
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
# Ranked by measured precision, then by speed (benchmarks/quality.py, dense and sparse hot
# sets, node 0 full and empty).  hint-faults and idle decide page by page and promoted no
# cold page in any case; hint-faults reached the hot set sooner and costs less CPU.
# pebs/ibs sample single accesses too, but no machine here has the PMU to measure them,
# so they come after the measured per-page samplers.  damon decides per region: it is
# last, and offers a region's pages only when its access count says most are hot.
AUTO_ORDER = ("hint-faults", "idle", "pebs", "ibs", "damon")
AUTO_REASON = "ranked by measured precision: per-page samplers first (benchmarks/quality.py)"


def resolve(name: str, ctx: SamplerContext) -> str:
    """The sampler ``name`` stands for: itself, if it can run here, or for ``auto`` the best
    available (the choice and why the others were skipped are logged); raises
    SamplerUnavailableError saying what is missing.  Nothing is built."""
    if name != "auto":
        factory = FACTORIES.get(name)
        if factory is None:
            raise SamplerUnavailableError(f"sampler {name!r} is not known "
                                          f"(known: {', '.join(FACTORIES)})")
        missing = factory.probe(ctx)
        if missing:
            raise SamplerUnavailableError(f"sampler {name!r} cannot run here: {missing}")
        return name
    reasons: list[str] = []
    for candidate in AUTO_ORDER:
        factory = FACTORIES.get(candidate)
        if factory is None:
            continue
        missing = factory.probe(ctx)
        if missing is None:
            log.info("sampler auto: using %s (%s; %s)%s", candidate, factory.description,
                     AUTO_REASON, "; skipped " + "; ".join(reasons) if reasons else "")
            return candidate
        reasons.append(f"{candidate}: {missing}")
    raise SamplerUnavailableError("no sampler can run here: " + "; ".join(reasons))


def create(name: str, ctx: SamplerContext) -> Sampler:
    """Build the sampler ``name`` (or the best available for ``auto``)."""
    return FACTORIES[resolve(name, ctx)].create(ctx)


__all__ = ["AUTO_ORDER", "FACTORIES", "Sampler", "SamplerContext", "create", "resolve"]


# Samplers that learn of a hot page only when the kernel reports an access to it, and the
# samplers (reading accessed bits themselves) that sweep beside them at start, in order.
WAITING_SAMPLERS = ("hint-faults", "pebs", "ibs")
SWEEP_SAMPLERS = ("idle", "damon")


async def start_sweep(ctx: SamplerContext, skip: dict[str, str]) -> tuple[Sampler | None,
                                                                          list[str]]:
    """Start the first of :data:`SWEEP_SAMPLERS` that can run on ``ctx`` (but those in
    ``skip``: name -> why); returns it, or None and why none could."""
    why = []
    for name in SWEEP_SAMPLERS:
        if name in skip:
            why.append(f"{name}: {skip[name]}")
            continue
        missing = FACTORIES[name].probe(ctx)
        if missing is not None:
            why.append(f"{name}: {missing}")
            continue
        sweep = FACTORIES[name].create(ctx)
        try:
            await sweep.start()
        except (KmigratedError, OSError) as exc:
            why.append(f"{name}: {exc}")
            continue
        return sweep, why
    return None, why
