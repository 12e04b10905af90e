"""What a config names on this machine: the control socket's group, the metrics listen
address, the NUMA nodes of the topology section."""

from __future__ import annotations

import grp
import os
import socket
import stat

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
    state_file = cfg.sampler.hint_faults.state_file
    for key, problem in (("sampler.hint_faults.state_file", state_dir_problem(state_file)),
                         ("control.socket_path", runtime_dir_problem(cfg.control.socket_path))):
        if problem:
            raise ConfigError(source, key, problem)
    try:
        return discover(fs, tiers=cfg.topology.tiers,
                        promotion_targets=cfg.topology.promotion_targets)
    except TopologyError as exc:
        key, sep, problem = str(exc).partition(": ")
        if sep and key in ("topology.tiers", "topology.promotion_targets"):
            raise ConfigError(source, key, problem) from None
        raise


VIRTUAL_FS = ("/proc", "/sys", "/dev")


def state_dir_problem(state_file: str) -> str | None:
    """Recovery files live in a directory only root can enter, which the daemon creates
    (0700) if it is missing: a file there is the daemon's, so it may set one aside."""
    d = os.path.dirname(os.path.realpath(state_file))
    if d.startswith(tuple(v + "/" for v in VIRTUAL_FS)) or d in VIRTUAL_FS:
        return f"{brief(state_file)} is in {d}, a kernel filesystem: use /var/lib/kmigratedd"
    try:
        st = os.stat(d)
    except FileNotFoundError:
        return None  # created 0700 at start
    except OSError as exc:
        return f"cannot check its directory {d}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{d} is not a directory"
    if st.st_uid not in (0, os.geteuid()):
        return (f"its directory {d} is owned by uid {st.st_uid}: the state directory must be "
                "root's alone, mode 0700 (for example /var/lib/kmigratedd)")
    if st.st_mode & 0o077:
        return (f"its directory {d} has mode {stat.S_IMODE(st.st_mode):04o}: the state "
                "directory must be root's alone, mode 0700 (for example /var/lib/kmigratedd)")
    return None


def runtime_dir_problem(socket_path: str) -> str | None:
    """The control socket (and the instance lock beside it) go in a runtime directory,
    not in a kernel filesystem."""
    d = os.path.dirname(os.path.realpath(socket_path))
    if d in VIRTUAL_FS or d.startswith(tuple(v + "/" for v in VIRTUAL_FS)):
        return (f"{brief(socket_path)} is in {d}, a kernel filesystem: use a runtime "
                "directory such as /run/kmigratedd")
    return None
