"""The per-process view (``kmigratedctl top``, the ``processes`` control method and the
top-N process metrics): where each process's memory sits, its hot pages waiting, and
what moved for it.

- :class:`PidMoves`: pages promoted and demoted per pid, counted by the move pipelines
  when a batch settles; bounded (:data:`MAX_PIDS`: past it the least moved half is
  forgotten), so memory does not grow with the pids the machine has seen.
- :func:`snapshot`: the processes to show, the ones pages moved for or wait for plus the
  largest of the scope (by resident set, from /proc/PID/statm, which walks nothing), at
  most :data:`MEASURE_MAX`; each one's pages per node from /proc/PID/numa_maps (the
  kernel walks its page tables to write it: run it off the event loop), ranked by pages
  on the slow tier.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sized
from dataclasses import dataclass

from . import procfs
from .kernelfs import KernelFs

MAX_PIDS = 4096
# Processes whose numa_maps one snapshot reads at most.
MEASURE_MAX = 256


class PidMoves:
    def __init__(self, max_pids: int = MAX_PIDS) -> None:
        self.max_pids = max_pids
        self.moves: dict[int, list[int]] = {}  # pid -> [promoted, demoted]

    def add(self, pid: int, pages: int, demote: bool) -> None:
        entry = self.moves.get(pid)
        if entry is None:
            if len(self.moves) >= self.max_pids:
                self._trim()
            entry = self.moves[pid] = [0, 0]
        entry[1 if demote else 0] += pages

    def _trim(self) -> None:
        keep = heapq.nlargest(self.max_pids // 2, self.moves.items(), key=lambda kv: sum(kv[1]))
        self.moves = dict(keep)

    def forget(self, pid: int) -> None:
        self.moves.pop(pid, None)

    def top(self, n: int) -> list[tuple[int, int, int]]:
        """(pid, promoted, demoted) of the ``n`` pids most pages moved for."""
        best = heapq.nlargest(n, self.moves.items(), key=lambda kv: sum(kv[1]))
        return [(pid, p, d) for pid, (p, d) in best]


@dataclass(frozen=True)
class ProcessView:
    pid: int
    comm: str
    cgroup: str
    pages_by_node: Mapping[int, int]
    slow_pages: int
    waiting_pages: int
    promoted_pages: int
    demoted_pages: int

    def as_json(self) -> dict[str, object]:
        return {"pid": self.pid, "comm": self.comm, "cgroup": self.cgroup,
                "pages_by_node": {str(n): p for n, p in sorted(self.pages_by_node.items())},
                "slow_pages": self.slow_pages, "waiting_pages": self.waiting_pages,
                "promoted_pages": self.promoted_pages, "demoted_pages": self.demoted_pages}


def waiting_by_pid(inboxes: Iterable[Mapping[int, Sized]]) -> dict[int, int]:
    """Hot pages waiting per process, summed over the workers' inboxes (pid -> keys)."""
    out: dict[int, int] = {}
    for keys_by_pid in inboxes:
        for pid, keys in keys_by_pid.items():
            out[pid] = out.get(pid, 0) + len(keys)
    return out


def snapshot(fs: KernelFs, scope_pids: Iterable[int], moves: PidMoves,
             waiting: Mapping[int, int], slow_nodes: Iterable[int], page_size: int,
             limit: int) -> list[ProcessView]:
    """The ``limit`` processes with the most pages on ``slow_nodes`` (then the most moved),
    among those pages moved or wait for and the largest of ``scope_pids``."""
    slow = set(slow_nodes)
    moved = {pid: (p, d) for pid, p, d in moves.top(MEASURE_MAX)}
    chosen = list(dict.fromkeys([*waiting, *moved]))[:MEASURE_MAX]
    room = MEASURE_MAX - len(chosen)
    if room > 0:
        others = [pid for pid in scope_pids if pid not in moved and pid not in waiting]
        chosen += heapq.nlargest(room, others, key=lambda pid: procfs.rss_pages(fs, pid) or 0)
    views = []
    for pid in chosen:
        pages = procfs.numa_pages(fs, pid, page_size)
        if pages is None:
            continue  # gone, or not readable
        comm = (fs.read_optional(f"/proc/{pid}/comm") or "?").strip()
        p, d = moved.get(pid, (0, 0))
        views.append(ProcessView(pid, comm, procfs.cgroup_path(fs, pid) or "", pages,
                                 sum(v for n, v in pages.items() if n in slow),
                                 waiting.get(pid, 0), p, d))
    views.sort(key=lambda v: (-v.slow_pages, -(v.promoted_pages + v.demoted_pages), v.pid))
    return views[:limit]


def by_cgroup(views: Iterable[ProcessView]) -> list[dict[str, object]]:
    """The views summed per cgroup, most slow-tier pages first."""
    sums: dict[str, dict[str, int]] = {}
    for v in views:
        s = sums.setdefault(v.cgroup, {"processes": 0, "slow_pages": 0, "waiting_pages": 0,
                                       "promoted_pages": 0, "demoted_pages": 0})
        s["processes"] += 1
        s["slow_pages"] += v.slow_pages
        s["waiting_pages"] += v.waiting_pages
        s["promoted_pages"] += v.promoted_pages
        s["demoted_pages"] += v.demoted_pages
    order = sorted(sums.items(), key=lambda kv: (-kv[1]["slow_pages"], kv[0]))
    return [{"cgroup": cg, **s} for cg, s in order]


def report(fs: KernelFs, scope_pids: Iterable[int], moves: PidMoves,
           waiting: Mapping[int, int], slow_nodes: Iterable[int], page_size: int,
           limit: int = 50) -> dict[str, object]:
    """The ``processes`` control method's result: the processes and their cgroups."""
    views = snapshot(fs, scope_pids, moves, waiting, slow_nodes, page_size, MEASURE_MAX)
    return {"page_size": page_size, "processes": [v.as_json() for v in views[:limit]],
            "cgroups": by_cgroup(views)}
