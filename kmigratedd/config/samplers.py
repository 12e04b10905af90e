"""The ``sampler`` section: which sampler, how often, and each sampler's own keys
(kmigratedd/samplers/), with the checks that need more than one of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError, brief
from .spec import spec

SamplerName = Literal["auto", "pebs", "ibs", "idle", "damon", "hint-faults"]


@dataclass(frozen=True)
class HintFaultsConfig:
    state_file: str = "/var/lib/kmigratedd/sysctl-state.json"
    ring_pages: int = field(default=64, metadata=spec(None, 1, 4096))


@dataclass(frozen=True)
class PmuConfig:
    sample_period: int = field(default=997, metadata=spec(None, 1, 1 << 30))
    latency_threshold_cycles: int = field(default=64, metadata=spec(None, 3, 65535))
    ring_pages: int = field(default=64, metadata=spec(None, 1, 4096))


@dataclass(frozen=True)
class IdleConfig:
    history_rounds: int = field(default=4, metadata=spec(None, 1, 8))
    hot_rounds: int = field(default=2, metadata=spec(None, 1, 8))
    scan_budget_pages_per_s: int = field(default=1 << 20, metadata=spec(None, 1024, 1 << 32))


@dataclass(frozen=True)
class DamonConfig:
    sample_interval_ms: int = field(default=5, metadata=spec("ms", 1, 10_000))
    aggregate_interval_ms: int = field(default=100, metadata=spec("ms", 1, 60_000))
    min_regions: int = field(default=10, metadata=spec(None, 3, 100_000))
    max_regions: int = field(default=1000, metadata=spec(None, 3, 100_000))
    hot_min_accesses: int = field(default=1, metadata=spec(None, 1, 1_000_000))
    min_density: float = field(default=0.5, metadata=spec(None, 0, 1))
    quiet_after_rounds: int = field(default=10, metadata=spec(None, 0, 1_000_000))
    quiet_slowdown: int = field(default=10, metadata=spec(None, 1, 100))


@dataclass(frozen=True)
class SamplerConfig:
    name: SamplerName = "auto"
    interval_ms: int = field(default=1000, metadata=spec("ms", 10, 3_600_000))
    startup_sweep_ms: int = field(default=30_000, metadata=spec("ms", 0, 3_600_000))
    hint_faults: HintFaultsConfig = field(default_factory=HintFaultsConfig)
    pmu: PmuConfig = field(default_factory=PmuConfig)
    idle: IdleConfig = field(default_factory=IdleConfig)
    damon: DamonConfig = field(default_factory=DamonConfig)


def check_sampler(sampler: SamplerConfig, fail: Callable[[str, str], ConfigError]) -> None:
    """Cross-field checks of the sampler section (``fail(key, problem)`` builds the error)."""
    idle = sampler.idle
    if idle.hot_rounds > idle.history_rounds:
        raise fail("sampler.idle.hot_rounds",
                   f"must be <= history_rounds ({idle.history_rounds}), got {idle.hot_rounds}")
    damon = sampler.damon
    if damon.aggregate_interval_ms < damon.sample_interval_ms:
        raise fail("sampler.damon.aggregate_interval_ms",
                   f"must be >= sample_interval_ms ({damon.sample_interval_ms})")
    if damon.hot_min_accesses > damon.aggregate_interval_ms // damon.sample_interval_ms:
        raise fail("sampler.damon.hot_min_accesses",
                   f"must be <= aggregate_interval_ms / sample_interval_ms "
                   f"({damon.aggregate_interval_ms // damon.sample_interval_ms}), the most "
                   "accesses DAMON counts per aggregation interval")
    if damon.max_regions < damon.min_regions:
        raise fail("sampler.damon.max_regions", f"must be >= min_regions ({damon.min_regions})")
    for name, section in (("hint_faults", sampler.hint_faults), ("pmu", sampler.pmu)):
        if section.ring_pages & (section.ring_pages - 1):
            raise fail(f"sampler.{name}.ring_pages",
                       f"must be a power of two, got {section.ring_pages}")
    if not sampler.hint_faults.state_file.startswith("/"):
        raise fail("sampler.hint_faults.state_file",
                   f"must be an absolute path, got {brief(sampler.hint_faults.state_file)}")
