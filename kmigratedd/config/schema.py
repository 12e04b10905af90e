"""The config's sections as frozen dataclasses (every key with its type, unit and
bounds; the sampler's in samplers.py), and the checks that need more than one key."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError, brief
from .samplers import SamplerConfig, check_sampler
from .spec import MAX_NODE_ID, MAX_PID, MAX_SOCKET_PATH_BYTES, spec
from .yamlload import one_line

@dataclass(frozen=True)
class TopologyConfig:
    tiers: tuple[tuple[int, ...], ...] = field(default=(), metadata=spec(None, 0, MAX_NODE_ID))
    promotion_targets: Mapping[int, int] = field(
        default_factory=lambda: types.MappingProxyType({}), metadata=spec(None, 0, MAX_NODE_ID))
    refresh_interval_ms: int = field(default=5000, metadata=spec("ms", 100, 3_600_000))


@dataclass(frozen=True)
class ScopeConfig:
    pids: tuple[int, ...] = field(default=(), metadata=spec(None, 1, MAX_PID))
    cgroups: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    exclude_commands: tuple[str, ...] = ()
    exclude_pids: tuple[int, ...] = field(default=(), metadata=spec(None, 1, MAX_PID))
    rank_processes_per_round: int = field(default=16, metadata=spec(None, 1, 100_000))


@dataclass(frozen=True)
class QueuesConfig:
    capacity_per_cpu: int = field(default=65536, metadata=spec(None, 16, 1 << 24))


@dataclass(frozen=True)
class WorkersConfig:
    batch_pages: int = field(default=512, metadata=spec(None, 1, 65536))
    max_batch_ms: int = field(default=10, metadata=spec("ms", 0, 60_000))
    max_wait_ms: int = field(default=100, metadata=spec("ms", 1, 60_000))
    min_samples: int = field(default=1, metadata=spec(None, 1, 1_000_000))
    adaptive_threshold: bool = True
    rate_limit_mb_per_s: float = field(default=256.0, metadata=spec("mb_per_s", 0, 1_000_000))
    min_free_bytes: int = field(default=256 << 20, metadata=spec("bytes", 0, 1 << 50))
    resume_free_bytes: int = field(default=512 << 20, metadata=spec("bytes", 0, 1 << 50))
    free_refresh_ms: int = field(default=1000, metadata=spec("ms", 10, 600_000))
    pingpong_window_ms: int = field(default=60_000, metadata=spec("ms", 0, 86_400_000))
    pingpong_holdoff_ms: int = field(default=300_000, metadata=spec("ms", 0, 86_400_000))
    busy_retry_ms: int = field(default=1000, metadata=spec("ms", 1, 600_000))
    enomem_backoff_ms: int = field(default=1000, metadata=spec("ms", 1, 600_000))
    copy_threads: int | Literal["auto"] = field(default="auto", metadata=spec(None, 1, 64))
    parallel_min_pages: int = field(default=2048, metadata=spec(None, 2, 1 << 24))
    move_all: bool = False
    dry_run: bool = False
    pressure_hold_percent: float = field(default=20.0, metadata=spec(None, 0, 100))


DemotionMethod = Literal["auto", "off", "sampler", "damon", "damon-paddr", "kswapd"]


@dataclass(frozen=True)
class DemotionConfig:
    method: DemotionMethod = "auto"
    rate_limit_mb_per_s: float = field(default=256.0, metadata=spec("mb_per_s", 0, 1_000_000))
    cold_age_ms: int = field(default=5000, metadata=spec("ms", 100, 86_400_000))


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    listen_address: str = "127.0.0.1"
    port: int = field(default=9477, metadata=spec(None, 0, 65535))


@dataclass(frozen=True)
class ControlConfig:
    socket_path: str = "/run/kmigratedd/control.sock"
    group: str = ""


@dataclass(frozen=True)
class DaemonConfig:
    shutdown_timeout_ms: int = field(default=5000, metadata=spec("ms", 0, 600_000))
    nice: int = field(default=10, metadata=spec(None, -20, 19))


@dataclass(frozen=True)
class Config:
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    scope: ScopeConfig = field(default_factory=ScopeConfig)
    queues: QueuesConfig = field(default_factory=QueuesConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    demotion: DemotionConfig = field(default_factory=DemotionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists and dicts), for printing and the control socket."""
        return typing.cast(dict[str, Any], plain(self))


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def check(config: Config, source: str) -> Config:
    """Cross-field checks that need more than one key."""
    seen: dict[int, int] = {}
    for rank, tier in enumerate(config.topology.tiers):
        if not tier:
            raise ConfigError(source, f"topology.tiers[{rank}]", "a tier needs at least one node")
        for node in tier:
            if node < 0:
                raise ConfigError(source, f"topology.tiers[{rank}]", f"node {node} is negative")
            if node in seen:
                raise ConfigError(source, f"topology.tiers[{rank}]",
                                  f"node {node} is already in tier {seen[node]}")
            seen[node] = rank
    if len(config.topology.tiers) == 1:
        raise ConfigError(source, "topology.tiers",
                          "one tier gives nothing to promote; list at least two or leave it empty")
    for src, dst in config.topology.promotion_targets.items():
        path = f"topology.promotion_targets.{src}"
        if src < 0 or dst < 0:
            raise ConfigError(source, path, "node ids are >= 0")
        if src == dst:
            raise ConfigError(source, path, "a node cannot promote to itself")
        if seen and src in seen and dst in seen and seen[dst] >= seen[src]:
            raise ConfigError(source, path,
                              f"target node {dst} is not in a faster tier than node {src}")
    workers = config.workers
    if workers.resume_free_bytes < workers.min_free_bytes:
        raise ConfigError(source, "workers.resume_free_bytes",
                          f"must be >= min_free_bytes ({workers.min_free_bytes})")
    check_sampler(config.sampler, lambda key, problem: ConfigError(source, key, problem))
    for i, pattern in enumerate(config.scope.commands + config.scope.exclude_commands):
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:  # "((((...", "a{10**11}"
            which = "commands" if i < len(config.scope.commands) else "exclude_commands"
            problem = str(exc) if not isinstance(exc, RecursionError) else "nested too deep"
            raise ConfigError(source, f"scope.{which}",
                              f"bad pattern {brief(pattern)}: {one_line(problem, 80)}"
                              ) from None
    if not config.control.socket_path.startswith("/"):
        raise ConfigError(source, "control.socket_path",
                          f"must be an absolute path, got {brief(config.control.socket_path)}")
    if len(config.control.socket_path.encode()) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(source, "control.socket_path",
                          f"longer than {MAX_SOCKET_PATH_BYTES} bytes, the most a unix socket "
                          f"path can be (unix(7)), got {brief(config.control.socket_path)}")
    if not config.metrics.listen_address:
        raise ConfigError(source, "metrics.listen_address", "must not be empty")
    for cg in config.scope.cgroups:
        if not cg.startswith("/"):
            raise ConfigError(source, "scope.cgroups",
                              f"cgroup paths start with '/' (relative to the cgroup2 "
                              f"mount), got {brief(cg)}")
    return config
