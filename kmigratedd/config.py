"""Strict YAML configuration, loaded once into frozen dataclasses.

Every key is declared here, with its type, unit and bounds, and documented once
in ``kmigratedd/default.yaml`` (shipped as ``deploy/kmigratedd.yaml``), which is
also the embedded default used when no file is given.  Unknown keys, duplicate
keys, wrong types, bad units and impossible values raise
:class:`~kmigratedd.errors.ConfigError` — one line ``FILE: key.path: problem`` —
before the daemon has any side effect.  A bad reload keeps the running config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .units import UnitError, in_unit

DEFAULT_SOURCE = "<embedded default>"


def _spec(unit: str | None = None, lo: float | None = None, hi: float | None = None) -> dict[str,
                                                                                          Any]:
    return {"unit": unit, "lo": lo, "hi": hi}


@dataclass(frozen=True)
class TopologyConfig:
    tiers: tuple[tuple[int, ...], ...] = ()
    promotion_targets: Mapping[int, int] = field(default_factory=lambda: types.MappingProxyType({}))
    refresh_interval_ms: int = field(default=5000, metadata=_spec("ms", 100, 3_600_000))


SamplerName = Literal["auto", "pebs", "ibs", "idle", "damon", "hint-faults"]


@dataclass(frozen=True)
class HintFaultsConfig:
    state_file: str = "/var/lib/kmigratedd/sysctl-state.json"
    ring_pages: int = field(default=64, metadata=_spec(None, 1, 4096))


@dataclass(frozen=True)
class PmuConfig:
    sample_period: int = field(default=997, metadata=_spec(None, 1, 1 << 30))
    latency_threshold_cycles: int = field(default=64, metadata=_spec(None, 3, 65535))
    ring_pages: int = field(default=64, metadata=_spec(None, 1, 4096))


@dataclass(frozen=True)
class IdleConfig:
    history_rounds: int = field(default=4, metadata=_spec(None, 1, 8))
    hot_rounds: int = field(default=2, metadata=_spec(None, 1, 8))
    scan_budget_pages_per_s: int = field(default=1 << 20, metadata=_spec(None, 1024, 1 << 32))


@dataclass(frozen=True)
class DamonConfig:
    sample_interval_ms: int = field(default=5, metadata=_spec("ms", 1, 10_000))
    aggregate_interval_ms: int = field(default=100, metadata=_spec("ms", 1, 60_000))
    min_regions: int = field(default=10, metadata=_spec(None, 3, 100_000))
    max_regions: int = field(default=1000, metadata=_spec(None, 3, 100_000))
    hot_min_accesses: int = field(default=1, metadata=_spec(None, 1, 1_000_000))
    quiet_after_rounds: int = field(default=10, metadata=_spec(None, 0, 1_000_000))
    quiet_slowdown: int = field(default=10, metadata=_spec(None, 1, 100))


@dataclass(frozen=True)
class SamplerConfig:
    name: SamplerName = "auto"
    interval_ms: int = field(default=1000, metadata=_spec("ms", 10, 3_600_000))
    hint_faults: HintFaultsConfig = field(default_factory=HintFaultsConfig)
    pmu: PmuConfig = field(default_factory=PmuConfig)
    idle: IdleConfig = field(default_factory=IdleConfig)
    damon: DamonConfig = field(default_factory=DamonConfig)


@dataclass(frozen=True)
class ScopeConfig:
    pids: tuple[int, ...] = ()
    cgroups: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    exclude_commands: tuple[str, ...] = ()
    exclude_pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class QueuesConfig:
    capacity_per_cpu: int = field(default=65536, metadata=_spec(None, 16, 1 << 24))


@dataclass(frozen=True)
class WorkersConfig:
    batch_pages: int = field(default=512, metadata=_spec(None, 1, 65536))
    max_wait_ms: int = field(default=100, metadata=_spec("ms", 1, 60_000))
    min_samples: int = field(default=1, metadata=_spec(None, 1, 1_000_000))
    rate_limit_mb_per_s: float = field(default=256.0, metadata=_spec("mb_per_s", 0, 1_000_000))
    min_free_bytes: int = field(default=256 << 20, metadata=_spec("bytes", 0, 1 << 50))
    resume_free_bytes: int = field(default=512 << 20, metadata=_spec("bytes", 0, 1 << 50))
    free_refresh_ms: int = field(default=1000, metadata=_spec("ms", 10, 600_000))
    pingpong_window_ms: int = field(default=60_000, metadata=_spec("ms", 0, 86_400_000))
    pingpong_holdoff_ms: int = field(default=300_000, metadata=_spec("ms", 0, 86_400_000))
    busy_retry_ms: int = field(default=1000, metadata=_spec("ms", 1, 600_000))
    enomem_backoff_ms: int = field(default=1000, metadata=_spec("ms", 1, 600_000))
    copy_threads: int | Literal["auto"] = field(default="auto", metadata=_spec(None, 1, 64))
    parallel_min_pages: int = field(default=2048, metadata=_spec(None, 2, 1 << 24))
    move_all: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    listen_address: str = "127.0.0.1"
    port: int = field(default=9477, metadata=_spec(None, 0, 65535))


@dataclass(frozen=True)
class ControlConfig:
    socket_path: str = "/run/kmigratedd/control.sock"
    group: str = ""


@dataclass(frozen=True)
class DaemonConfig:
    shutdown_timeout_ms: int = field(default=5000, metadata=_spec("ms", 0, 600_000))


@dataclass(frozen=True)
class Config:
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    scope: ScopeConfig = field(default_factory=ScopeConfig)
    queues: QueuesConfig = field(default_factory=QueuesConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists and dicts), for printing and the control socket."""
        return typing.cast(dict[str, Any], _plain(self))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(str, typing.get_args(tp)))
    if tp in (int, float):
        kind = "a whole number" if tp is int else "a number"
        lo, hi = meta.get("lo"), meta.get("hi")
        return f"{kind} from {lo:g} to {hi:g}" if lo is not None and hi is not None else kind
    return getattr(tp, "__name__", str(tp))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in out:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value),
                                                                           type(value).__name__)


class _Decoder:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(self.source, path, problem)

    def dataclass(self, cls: type[Any], data: Any, path: str) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.fail(path or "<document>", f"expected a mapping, got {_type_name(data)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in fields:
                where = f"{path}.{key}" if path else str(key)
                known = ", ".join(fields)
                raise self.fail(where, f"unknown key (known here: {known})")
        values = {}
        for name, f in fields.items():
            if name in data:
                where = f"{path}.{name}" if path else name
                values[name] = self.value(hints[name], data[name], where, f.metadata)
        return cls(**values)

    def value(self, tp: Any, raw: Any, path: str, meta: Mapping[str, Any]) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            wants = []
            for arm in typing.get_args(tp):
                try:
                    return self.value(arm, raw, path, meta)
                except ConfigError:
                    wants.append(_describe(arm, meta))
            raise self.fail(path, f"must be {' or '.join(wants)}, got {raw!r}")
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(tp, raw, path)
        if origin is Literal:
            choices = typing.get_args(tp)
            if raw not in choices:
                raise self.fail(path, f"must be one of {', '.join(map(str, choices))}, "
                                      f"got {raw!r}")
            return raw
        if tp is bool:
            if not isinstance(raw, bool):
                raise self.fail(path, f"expected true or false, got {_type_name(raw)}")
            return raw
        if tp in (int, float):
            return self.number(tp, raw, path, meta)
        if tp is str:
            if not isinstance(raw, str):
                raise self.fail(path, f"expected a string, got {_type_name(raw)}")
            return raw
        if origin is tuple:
            args = typing.get_args(tp)
            if not isinstance(raw, list):
                raise self.fail(path, f"expected a list, got {_type_name(raw)}")
            return tuple(self.value(args[0], item, f"{path}[{i}]", {})
                         for i, item in enumerate(raw))
        if origin is Mapping:
            ktp, vtp = typing.get_args(tp)
            if not isinstance(raw, dict):
                raise self.fail(path, f"expected a mapping, got {_type_name(raw)}")
            out = {self.value(ktp, k, f"{path}.{k}", {}): self.value(vtp, v, f"{path}.{k}", {})
                   for k, v in raw.items()}
            return types.MappingProxyType(out)
        raise TypeError(f"config type {tp!r} at {path} is not supported")  # a bug, not input

    def number(self, tp: type, raw: Any, path: str, meta: Mapping[str, Any]) -> int | float:
        unit = meta.get("unit")
        try:
            if unit is not None:
                value: float = in_unit(raw, unit)
            elif isinstance(raw, bool) or not isinstance(raw, int | float):
                raise UnitError(f"expected a number, got {_type_name(raw)}")
            else:
                value = float(raw)
        except UnitError as exc:
            raise self.fail(path, str(exc)) from None
        if tp is int:
            if value != int(value):
                raise self.fail(path, f"must be a whole number{' of ' + unit if unit else ''}, "
                                      f"got {raw!r}")
            value = int(value)
        lo, hi = meta.get("lo"), meta.get("hi")
        suffix = f" {unit}" if unit else ""
        if lo is not None and value < lo:
            raise self.fail(path, f"must be >= {lo:g}{suffix}, got {raw!r}")
        if hi is not None and value > hi:
            raise self.fail(path, f"must be <= {hi:g}{suffix}, got {raw!r}")
        return value


def _check(config: Config, source: str) -> Config:
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
    idle = config.sampler.idle
    if idle.hot_rounds > idle.history_rounds:
        raise ConfigError(source, "sampler.idle.hot_rounds",
                          f"must be <= history_rounds ({idle.history_rounds}), "
                          f"got {idle.hot_rounds}")
    damon = config.sampler.damon
    if damon.aggregate_interval_ms < damon.sample_interval_ms:
        raise ConfigError(source, "sampler.damon.aggregate_interval_ms",
                          f"must be >= sample_interval_ms ({damon.sample_interval_ms})")
    if damon.hot_min_accesses > damon.aggregate_interval_ms // damon.sample_interval_ms:
        raise ConfigError(source, "sampler.damon.hot_min_accesses",
                          f"must be <= aggregate_interval_ms / sample_interval_ms "
                          f"({damon.aggregate_interval_ms // damon.sample_interval_ms}), the most "
                          "accesses DAMON counts per aggregation interval")
    if damon.max_regions < damon.min_regions:
        raise ConfigError(source, "sampler.damon.max_regions",
                          f"must be >= min_regions ({damon.min_regions})")
    for key in ("ring_pages",):
        for section in (config.sampler.hint_faults, config.sampler.pmu):
            pages = getattr(section, key)
            if pages & (pages - 1):
                name = "hint_faults" if section is config.sampler.hint_faults else "pmu"
                raise ConfigError(source, f"sampler.{name}.{key}",
                                  f"must be a power of two, got {pages}")
    import re

    for i, pattern in enumerate(config.scope.commands + config.scope.exclude_commands):
        try:
            re.compile(pattern)
        except re.error as exc:
            which = "commands" if i < len(config.scope.commands) else "exclude_commands"
            raise ConfigError(source, f"scope.{which}",
                              f"bad pattern {pattern!r}: {exc}") from None
    for where, value in (("sampler.hint_faults.state_file", config.sampler.hint_faults.state_file),
                         ("control.socket_path", config.control.socket_path)):
        if not value.startswith("/"):
            raise ConfigError(source, where, f"must be an absolute path, got {value!r}")
    if not config.metrics.listen_address:
        raise ConfigError(source, "metrics.listen_address", "must not be empty")
    for cg in config.scope.cgroups:
        if not cg.startswith("/"):
            raise ConfigError(source, "scope.cgroups",
                              f"cgroup paths start with '/' (relative to the cgroup2 "
                              f"mount), got {cg!r}")
    return config


def parse(text: str, source: str) -> Config:
    """Parse and validate YAML text; ``source`` names it in error messages."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "?"
        raise ConfigError(source, "", f"invalid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"invalid YAML: {exc}") from None
    return _check(_Decoder(source).dataclass(Config, data, ""), source)


def default_text() -> str:
    """The embedded default config (deploy/kmigratedd.yaml links to it)."""
    return resources.files("kmigratedd").joinpath("default.yaml").read_text(encoding="utf-8")


def load(path: str | None) -> Config:
    """Load a config file, or the embedded default when ``path`` is None."""
    if path is None:
        return parse(default_text(), DEFAULT_SOURCE)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text") from None
    return parse(text, path)


# Sections a running daemon cannot change: they size the queues and hold the listening
# sockets, built once at start.
RESTART_SECTIONS = ("queues", "metrics", "control")


def changed_keys(old: Config, new: Config, sections: tuple[str, ...] = RESTART_SECTIONS
                 ) -> list[str]:
    """The dotted keys of ``sections`` whose values differ between two configs."""
    out: list[str] = []
    a, b = old.to_dict(), new.to_dict()
    for section in sections:
        for key in sorted(set(a[section]) | set(b[section])):
            if a[section].get(key) != b[section].get(key):
                out.append(f"{section}.{key}")
    return out


def dump(config: Config) -> str:
    """The effective config as YAML (every key, defaults included)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
