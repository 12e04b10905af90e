"""Strict YAML configuration, loaded once into frozen dataclasses.

Every key is declared here, with its type, unit and bounds, and documented once
in ``kmigratedd/default.yaml`` (shipped as ``deploy/kmigratedd.yaml``), which is
also the embedded default used when no file is given.  Unknown keys, duplicate
keys, wrong types, bad units and impossible values raise
:class:`~kmigratedd.errors.ConfigError` — one line ``FILE: key.path: problem`` —
before the daemon has any side effect.  A bad reload keeps the running config.

Loading is bounded and total: only a regular file (or the caller's own stdin pipe) of at
most :data:`MAX_BYTES` is read, YAML nesting (aliases followed) is at most
:data:`MAX_DEPTH` deep and at most :data:`MAX_NODES` nodes once aliases are expanded,
every number is finite and in range, every key of a section is a string, and any input
gives either a :class:`Config` or a one-line ``ConfigError`` naming the key.
:func:`check_environment` checks what the config names on this machine (group, listen
address, NUMA nodes); ``--check-config``, start and reload all call it.
"""

from __future__ import annotations

import dataclasses
import grp
import math
import os
import re
import socket
import stat
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

from .errors import ConfigError, TopologyError, brief
from .kernelfs import KernelFs
from .topology import Topology, discover
from .units import UnitError, in_unit

DEFAULT_SOURCE = "<embedded default>"

MAX_BYTES = 1 << 20  # the shipped, fully commented file is about 10 KiB
MAX_DEPTH = 64  # nested nodes, aliases followed; the schema needs 4
MAX_NODES = 100_000  # nodes once aliases are expanded; the shipped file has about 80
# MAX_NUMNODES is 1 << CONFIG_NODES_SHIFT, and NODES_SHIFT is at most 10 (x86, arm64).
MAX_NODE_ID = (1 << 10) - 1
# PID_MAX_LIMIT on 64-bit kernels (include/linux/threads.h).
MAX_PID = 4 * 1024 * 1024
# sizeof(sun_path) is 108 (unix(7)), NUL included.
MAX_SOCKET_PATH_BYTES = 107


def _spec(unit: str | None = None, lo: float | None = None, hi: float | None = None) -> dict[str,
                                                                                          Any]:
    return {"unit": unit, "lo": lo, "hi": hi}


@dataclass(frozen=True)
class TopologyConfig:
    tiers: tuple[tuple[int, ...], ...] = field(default=(), metadata=_spec(None, 0, MAX_NODE_ID))
    promotion_targets: Mapping[int, int] = field(
        default_factory=lambda: types.MappingProxyType({}), metadata=_spec(None, 0, MAX_NODE_ID))
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
    min_density: float = field(default=0.5, metadata=_spec(None, 0, 1))
    quiet_after_rounds: int = field(default=10, metadata=_spec(None, 0, 1_000_000))
    quiet_slowdown: int = field(default=10, metadata=_spec(None, 1, 100))


@dataclass(frozen=True)
class SamplerConfig:
    name: SamplerName = "auto"
    interval_ms: int = field(default=1000, metadata=_spec("ms", 10, 3_600_000))
    startup_sweep_ms: int = field(default=30_000, metadata=_spec("ms", 0, 3_600_000))
    hint_faults: HintFaultsConfig = field(default_factory=HintFaultsConfig)
    pmu: PmuConfig = field(default_factory=PmuConfig)
    idle: IdleConfig = field(default_factory=IdleConfig)
    damon: DamonConfig = field(default_factory=DamonConfig)


@dataclass(frozen=True)
class ScopeConfig:
    pids: tuple[int, ...] = field(default=(), metadata=_spec(None, 1, MAX_PID))
    cgroups: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    exclude_commands: tuple[str, ...] = ()
    exclude_pids: tuple[int, ...] = field(default=(), metadata=_spec(None, 1, MAX_PID))
    rank_processes_per_round: int = field(default=16, metadata=_spec(None, 1, 100_000))


@dataclass(frozen=True)
class QueuesConfig:
    capacity_per_cpu: int = field(default=65536, metadata=_spec(None, 16, 1 << 24))


@dataclass(frozen=True)
class WorkersConfig:
    batch_pages: int = field(default=512, metadata=_spec(None, 1, 65536))
    max_batch_ms: int = field(default=10, metadata=_spec("ms", 0, 60_000))
    max_wait_ms: int = field(default=100, metadata=_spec("ms", 1, 60_000))
    min_samples: int = field(default=1, metadata=_spec(None, 1, 1_000_000))
    adaptive_threshold: bool = True
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
    pressure_hold_percent: float = field(default=20.0, metadata=_spec(None, 0, 100))


DemotionMethod = Literal["auto", "off", "sampler", "damon", "damon-paddr", "kswapd"]


@dataclass(frozen=True)
class DemotionConfig:
    method: DemotionMethod = "auto"
    rate_limit_mb_per_s: float = field(default=256.0, metadata=_spec("mb_per_s", 0, 1_000_000))
    cold_age_ms: int = field(default=5000, metadata=_spec("ms", 100, 86_400_000))


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
    nice: int = field(default=10, metadata=_spec(None, -20, 19))


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
        return typing.cast(dict[str, Any], _plain(self))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _num(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(str, typing.get_args(tp)))
    if tp in (int, float):
        kind = "a whole number" if tp is int else "a number"
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is None or hi is None:
            return kind
        return f"{kind} from {_num(lo)} to {_num(hi)}"
    return getattr(tp, "__name__", str(tp))


class _BadKey:
    """A list or mapping used as a mapping key (unhashable in Python): kept so that the
    decoder can name the key path of the mapping it is in."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return brief(self.value)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML keeps the last silently),
    and bounds nesting and alias expansion while composing, before anything is built.

    Aliases share one node, so a few lines can stand for 10**9 nodes ("billion laughs");
    every node is counted as many times as aliases make it appear, and its height is
    remembered so an alias deepens the document by the height of what it names.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0  # nodes so far, aliases expanded
        self._heights: list[int] = [0]  # per open node: the height of its tallest child
        self._height: dict[int, int] = {}  # id(node) -> height, once composed
        self._size: dict[int, int] = {}  # id(node) -> nodes it expands to, once composed

    def _grow(self, nodes: int, height: int, mark: Any) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_NODES} nodes once aliases are expanded", mark)
        if len(self._heights) - 1 + height > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_DEPTH} deep", mark)
        self._heights[-1] = max(self._heights[-1], height)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            node = typing.cast(yaml.Node, super().compose_node(parent, index))
            if id(node) not in self._size:  # the alias is inside its own anchor
                raise yaml.composer.ComposerError(None, None, "recursive alias "
                                                  f"{brief(event.anchor, 40)}", mark)
            self._grow(self._size[id(node)], self._height[id(node)], mark)
            return node
        before = self._nodes
        self._grow(1, 1, mark)
        self._heights.append(0)
        node = typing.cast(yaml.Node, super().compose_node(parent, index))
        height = 1 + self._heights.pop()
        self._height[id(node)] = height
        self._size[id(node)] = self._nodes - before
        self._heights[-1] = max(self._heights[-1], height)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # Scalars can still fail to build, with whatever PyYAML's code for them hits: int()
        # of more than 4300 digits, a date such as 2024-13-45, "!!int" with no digits
        # (IndexError).
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            what = brief(node.value, 40) if isinstance(node, yaml.ScalarNode) else node.tag
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {what}: {exc}", node.start_mark) from None


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            key = _BadKey(key)
        if key in out:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {brief(key, 40)} (line {mark.line + 1})", mark)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _type_name(value: Any) -> str:
    if isinstance(value, _BadKey):
        value = value.value
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value),
                                                                           type(value).__name__)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _key(key: Any) -> str:
    """A mapping key as a part of a key path: as is if it is a short plain word."""
    text = str(key) if isinstance(key, str | int) and not isinstance(key, bool) else ""
    return text if _PLAIN_KEY.fullmatch(text) else brief(key, 40)


def _join(path: str, key: Any) -> str:
    return f"{path}.{_key(key)}" if path else _key(key)


class _Decoder:
    def __init__(self, source: str, *, json_keys: bool = False) -> None:
        self.source = source
        self.json_keys = json_keys  # JSON object keys are strings: "1" is node 1

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
            if not isinstance(key, str):
                raise self.fail(path or "<document>", f"keys must be strings, got "
                                                      f"{_type_name(key)} {brief(key, 40)}")
            if key not in fields:
                known = ", ".join(fields)
                raise self.fail(_join(path, key), f"unknown key (known here: {known})")
        values = {}
        for name, f in fields.items():
            if name in data:
                values[name] = self.value(hints[name], data[name], _join(path, name), f.metadata)
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
            raise self.fail(path, f"must be {' or '.join(wants)}, got {brief(raw)}")
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(tp, raw, path)
        if origin is Literal:
            choices = typing.get_args(tp)
            if raw is False and "off" in choices:
                return "off"  # YAML reads a bare `off` as false
            if not isinstance(raw, str | int | float | type(None)) or raw not in choices:
                raise self.fail(path, f"must be one of {', '.join(map(str, choices))}, "
                                      f"got {brief(raw)}")
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
            if "\0" in raw:
                raise self.fail(path, "must not contain a NUL character")
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError:  # "\ud800" is a valid YAML escape
                raise self.fail(path, f"not UTF-8 text: {brief(raw)}") from None
            return raw
        if origin is tuple:
            args = typing.get_args(tp)
            if not isinstance(raw, list):
                raise self.fail(path, f"expected a list, got {_type_name(raw)}")
            return tuple(self.value(args[0], item, f"{path}[{i}]", meta)
                         for i, item in enumerate(raw))
        if origin is Mapping:
            ktp, vtp = typing.get_args(tp)
            if not isinstance(raw, dict):
                raise self.fail(path, f"expected a mapping, got {_type_name(raw)}")
            out = {}
            for k, v in raw.items():
                if isinstance(k, _BadKey):
                    raise self.fail(path, f"keys must be {_describe(ktp, meta)}, "
                                          f"got {_type_name(k)} {brief(k, 40)}")
                if self.json_keys and isinstance(k, str) and re.fullmatch(r"-?[0-9]{1,9}", k):
                    k = int(k)
                where = _join(path, k)
                out[self.value(ktp, k, where, meta)] = self.value(vtp, v, where, meta)
            return types.MappingProxyType(out)
        raise TypeError(f"config type {tp!r} at {path} is not supported")  # a bug, not input

    def number(self, tp: type, raw: Any, path: str, meta: Mapping[str, Any]) -> int | float:
        unit = meta.get("unit")
        try:
            if unit is not None:
                value: int | float = in_unit(raw, unit)
            elif isinstance(raw, bool) or not isinstance(raw, int | float):
                raise UnitError(f"expected a number, got {_type_name(raw)}")
            else:
                value = raw
        except UnitError as exc:
            raise self.fail(path, str(exc)) from None
        # Ints are compared exactly, never through float(): float(10**400) overflows.
        if isinstance(value, float):
            if math.isnan(value):
                raise self.fail(path, f"must be a number, got {brief(raw)}")
            if tp is int and math.isfinite(value) and not value.is_integer():
                raise self.fail(path, f"must be a whole number{' of ' + unit if unit else ''}, "
                                      f"got {brief(raw)}")
        lo, hi = meta.get("lo"), meta.get("hi")
        suffix = f" {unit}" if unit else ""
        if lo is not None and value < lo:
            raise self.fail(path, f"must be >= {_num(lo)}{suffix}, got {brief(raw)}")
        if hi is not None and value > hi:
            raise self.fail(path, f"must be <= {_num(hi)}{suffix}, got {brief(raw)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(path, f"must be a finite number, got {brief(raw)}")
        return int(value) if tp is int else float(value)


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
    for i, pattern in enumerate(config.scope.commands + config.scope.exclude_commands):
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:  # "((((...", "a{10**11}"
            which = "commands" if i < len(config.scope.commands) else "exclude_commands"
            problem = str(exc) if not isinstance(exc, RecursionError) else "nested too deep"
            raise ConfigError(source, f"scope.{which}",
                              f"bad pattern {brief(pattern)}: {_one_line(problem, 80)}"
                              ) from None
    for where, value in (("sampler.hint_faults.state_file", config.sampler.hint_faults.state_file),
                         ("control.socket_path", config.control.socket_path)):
        if not value.startswith("/"):
            raise ConfigError(source, where, f"must be an absolute path, got {brief(value)}")
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


def _one_line(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _yaml(text: str, source: str) -> Any:
    if len(text) > MAX_BYTES:
        raise ConfigError(source, "", f"larger than {MAX_BYTES >> 20} MiB")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "?"
        raise ConfigError(source, "", f"invalid YAML at {where}: "
                                      f"{_one_line(exc.problem or '')}") from None
    # ReaderError: a character YAML does not allow; ValueError, OverflowError: the scanner's
    # chr() of a "\U" escape past the code points.
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        raise ConfigError(source, "", f"invalid YAML: {_one_line(str(exc))}") from None


def parse(text: str, source: str) -> Config:
    """Parse and validate YAML text; ``source`` names it in error messages."""
    return _check(_Decoder(source).dataclass(Config, _yaml(text, source), ""), source)


def from_json(data: Any, source: str) -> Config:
    """Validate plain data that went through JSON (the control socket's ``config``), where
    the node ids that key ``topology.promotion_targets`` became strings."""
    return _check(_Decoder(source, json_keys=True).dataclass(Config, data, ""), source)


def default_text() -> str:
    """The embedded default config (deploy/kmigratedd.yaml links to it)."""
    return resources.files("kmigratedd").joinpath("default.yaml").read_text(encoding="utf-8")


def source_name(path: str | None) -> str:
    """How errors name the config at ``path`` (None: the embedded default)."""
    return DEFAULT_SOURCE if path is None else path


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR,
          "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _is_our_stdin(st: os.stat_result) -> bool:
    """``--check-config /dev/stdin`` with a pipe: the caller feeds it, reading may wait."""
    try:
        st0 = os.fstat(0)
    except OSError:
        return False
    return stat.S_ISFIFO(st.st_mode) and (st.st_dev, st.st_ino) == (st0.st_dev, st0.st_ino)


def _read(path: str) -> bytes:
    """At most MAX_BYTES + 1 bytes of a regular file, never blocking on anything else."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) and not _is_our_stdin(st):
            raise ConfigError(path, "", f"not a regular file ({_kind(st.st_mode)})")
        # O_NONBLOCK: the path may have been replaced by a FIFO since the stat; fstat says.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            if not _is_our_stdin(st):
                raise ConfigError(path, "", f"not a regular file ({_kind(st.st_mode)})")
            os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BYTES and (chunk := os.read(fd, MAX_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def load(path: str | None) -> Config:
    """Load a config file, or the embedded default when ``path`` is None."""
    if path is None:
        return parse(default_text(), DEFAULT_SOURCE)
    data = _read(path)
    if len(data) > MAX_BYTES:
        raise ConfigError(path, "", f"larger than {MAX_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text") from None
    return parse(text, path)


def check_environment(cfg: Config, source: str, fs: KernelFs) -> Topology:
    """Check what ``cfg`` names on this machine, the way start uses it: the control
    socket's group, the metrics listen address, and the NUMA nodes of
    ``topology.tiers``/``promotion_targets`` (the topology below ``fs`` is returned).

    ``--check-config``, start and reload all call this, so a config that passes
    ``--check-config`` does not fail at start on what it names.  A problem is a
    :class:`ConfigError` naming the key (exit 2); an unreadable topology stays a
    :class:`TopologyError`.
    """
    if cfg.control.group:
        try:
            grp.getgrnam(cfg.control.group)
        except KeyError:
            raise ConfigError(source, "control.group",
                              f"no group named {brief(cfg.control.group)}") from None
    if cfg.metrics.enabled:
        address = cfg.metrics.listen_address
        try:  # as asyncio.start_server resolves it
            socket.getaddrinfo(address, cfg.metrics.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(source, "metrics.listen_address",
                              f"cannot listen on {brief(address)}: {_one_line(why, 80)}"
                              ) from None
    try:
        return discover(fs, tiers=cfg.topology.tiers,
                        promotion_targets=cfg.topology.promotion_targets)
    except TopologyError as exc:
        key, sep, problem = str(exc).partition(": ")
        if sep and key in ("topology.tiers", "topology.promotion_targets"):
            raise ConfigError(source, key, problem) from None
        raise


def load_checked(path: str | None, fs: KernelFs) -> tuple[Config, Topology]:
    """:func:`load` then :func:`check_environment`: what ``--check-config``, start and
    reload accept."""
    cfg = load(path)
    return cfg, check_environment(cfg, source_name(path), fs)


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
