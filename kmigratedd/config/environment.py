"""What a config names on this machine: the control socket's group, the metrics listen
address, the NUMA nodes of the topology section."""

from __future__ import annotations

import grp
import socket

from ..errors import ConfigError, TopologyError, brief
from ..kernelfs import KernelFs
from ..topology import Topology, discover
from .schema import Config
from .yamlload import one_line

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
                              f"cannot listen on {brief(address)}: {one_line(why, 80)}"
                              ) from None
    try:
        return discover(fs, tiers=cfg.topology.tiers,
                        promotion_targets=cfg.topology.promotion_targets)
    except TopologyError as exc:
        key, sep, problem = str(exc).partition(": ")
        if sep and key in ("topology.tiers", "topology.promotion_targets"):
            raise ConfigError(source, key, problem) from None
        raise
