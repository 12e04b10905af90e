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

Modules: schema.py (the sections and the cross-key checks; the sampler's in
samplers.py), yamlload.py (bounded read, strict YAML), decode.py (types, units,
bounds), environment.py (what the config names on this machine); this module is the
API the daemon and kmigratedctl use.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from ..errors import ConfigError
from ..kernelfs import KernelFs
from ..topology import Topology
from .decode import Decoder
from .environment import check_environment
from .samplers import (DamonConfig, HintFaultsConfig, IdleConfig, PmuConfig, SamplerConfig,
                       SamplerName)
from .schema import (Config, ControlConfig, DaemonConfig, DemotionConfig, DemotionMethod,
                     MetricsConfig, QueuesConfig, ScopeConfig, TopologyConfig, WorkersConfig,
                     check)
from .spec import MAX_NODE_ID, MAX_PID, MAX_SOCKET_PATH_BYTES
from .yamlload import MAX_BYTES, MAX_DEPTH, MAX_NODES, load_yaml, read_file

__all__ = ["DEFAULT_SOURCE", "MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "MAX_NODE_ID", "MAX_PID",
           "MAX_SOCKET_PATH_BYTES", "RESTART_SECTIONS", "Config", "ConfigError",
           "ControlConfig", "DaemonConfig", "DamonConfig", "DemotionConfig", "DemotionMethod",
           "HintFaultsConfig", "IdleConfig", "MetricsConfig", "PmuConfig", "QueuesConfig",
           "SamplerConfig", "SamplerName", "ScopeConfig", "TopologyConfig", "WorkersConfig",
           "changed_keys", "check_environment", "default_text", "dump", "from_json", "load",
           "load_checked", "parse", "source_name"]

DEFAULT_SOURCE = "<embedded default>"


def parse(text: str, source: str) -> Config:
    """Parse and validate YAML text; ``source`` names it in error messages."""
    return check(Decoder(source).dataclass(Config, load_yaml(text, source), ""), source)


def from_json(data: Any, source: str) -> Config:
    """Validate plain data that went through JSON (the control socket's ``config``), where
    the node ids that key ``topology.promotion_targets`` became strings."""
    return check(Decoder(source, json_keys=True).dataclass(Config, data, ""), source)


def default_text() -> str:
    """The embedded default config (deploy/kmigratedd.yaml links to it)."""
    return resources.files("kmigratedd").joinpath("default.yaml").read_text(encoding="utf-8")


def source_name(path: str | None) -> str:
    """How errors name the config at ``path`` (None: the embedded default)."""
    return DEFAULT_SOURCE if path is None else path


def load(path: str | None) -> Config:
    """Load a config file, or the embedded default when ``path`` is None."""
    if path is None:
        return parse(default_text(), DEFAULT_SOURCE)
    data = read_file(path)
    if len(data) > MAX_BYTES:
        raise ConfigError(path, "", f"larger than {MAX_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text") from None
    return parse(text, path)


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
