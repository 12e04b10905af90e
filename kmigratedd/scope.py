"""Which processes kmigratedd watches (config ``scope``).

Empty lists watch every user process. Otherwise a process is in scope when it
matches any of ``pids``, ``cgroups`` (cgroup v2 paths, children included) or
``commands`` (regular expressions matched against the whole /proc/PID/comm), and
matches none of ``exclude_pids`` / ``exclude_commands``. kmigratedd itself and
kernel threads (PF_KTHREAD) are always excluded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from . import procfs
from .config import ScopeConfig
from .kernelfs import KernelFs

# Whether a pid is a kernel thread or a user process is remembered (a server has
# hundreds of kernel threads, and reading each one's /proc/PID/stat every round would be
# most of an idle daemon's CPU); a pid that leaves the listing is forgotten, and the memory
# is rebuilt every this many listings in case a pid was reused between two of them.
KTHREAD_CACHE_LISTINGS = 60


class Scope:
    def __init__(self, cfg: ScopeConfig, fs: KernelFs, self_pid: int | None = None) -> None:
        self.cfg = cfg
        self.fs = fs
        self.self_pid = os.getpid() if self_pid is None else self_pid
        self._commands = [re.compile(p) for p in cfg.commands]
        self._exclude = [re.compile(p) for p in cfg.exclude_commands]
        self._pids = frozenset(cfg.pids)
        self._exclude_pids = frozenset(cfg.exclude_pids) | {self.self_pid}
        self._all = not (cfg.pids or cfg.cgroups or cfg.commands)
        self._kthreads: set[int] = set()
        self._users: set[int] = set()  # pids known not to be kernel threads
        self._listings = 0

    def _comm(self, pid: int) -> str | None:
        text = self.fs.read_optional(f"/proc/{pid}/comm")
        return None if text is None else text.rstrip("\n")

    def is_kernel_thread(self, pid: int) -> bool | None:
        """True for kernel threads, None if the process is gone."""
        return procfs.is_kernel_thread(self.fs, pid)

    def _cgroup(self, pid: int) -> str | None:
        return procfs.cgroup_path(self.fs, pid)

    def contains(self, pid: int, listed: bool = False) -> bool:
        """Whether ``pid`` is watched now (False if it is gone; with ``listed``, a pid
        of this round's /proc listing, a user process known from an earlier listing
        is taken as one without reading its stat again)."""
        if pid <= 0 or pid in self._exclude_pids or pid in self._kthreads:
            return False
        if not (listed and pid in self._users):
            kthread = self.is_kernel_thread(pid)
            if kthread is None:
                return False
            (self._kthreads if kthread else self._users).add(pid)
            if kthread:
                return False
        comm: str | None = None
        if self._exclude:
            comm = self._comm(pid)
            if comm is None or any(p.fullmatch(comm) for p in self._exclude):
                return False
        if self._all or pid in self._pids:
            return True
        if self._commands:
            comm = comm if comm is not None else self._comm(pid)
            if comm is not None and any(p.fullmatch(comm) for p in self._commands):
                return True
        if self.cfg.cgroups:
            cg = self._cgroup(pid)
            if cg is not None and any(cg == c or cg.startswith(c.rstrip("/") + "/")
                                      for c in self.cfg.cgroups):
                return True
        return False

    def pids(self) -> Iterator[int]:
        """Processes in scope now, in pid order."""
        listed = self._all or bool(self.cfg.cgroups or self.cfg.commands)
        if not listed:
            candidates = sorted(self._pids)
        else:
            candidates = self.fs.proc_pids()
            self._listings += 1
            if self._listings % KTHREAD_CACHE_LISTINGS == 0:
                self._kthreads.clear()
                self._users.clear()
            else:
                self._kthreads.intersection_update(candidates)
                self._users.intersection_update(candidates)
        for pid in candidates:
            if self.contains(pid, listed):
                yield pid
