"""What the scanning samplers (damon, idle) share to hand their pages on: the cold page
budget of a round, and the builder of one offer per process into the queue of the CPU
it last ran on."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping

from ..kernelfs import KernelFs
from ..procfs import last_cpu
from .base import Offer


def cold_budget(room_bytes: int, page_size: int, min_pages: int, max_pages: int) -> int:
    """Cold pages a round offers while ``room_bytes`` are needed: twice the pages of room
    (the router keeps only those on a fast node), at least ``min_pages`` (a worker
    batch), at most ``max_pages``; none while no room is needed."""
    if room_bytes <= 0:
        return 0
    return min(max_pages, max(min_pages, room_bytes // page_size * 2))


class OfferBuilder:
    """One round's offers: the pages of each process, with their nodes (-1: the router
    asks) and weights, go to the queue of the CPU the process last ran on, looked up once
    a round; a process that exited offers nothing (``gone(pid)`` is called)."""

    def __init__(self, fs: KernelFs, gone: Callable[[int], None]) -> None:
        self.fs = fs
        self.gone = gone
        self._cpus: dict[int, int | None] = {}

    def cpu(self, pid: int) -> int | None:
        if pid not in self._cpus:
            self._cpus[pid] = last_cpu(self.fs, pid)
        return self._cpus[pid]

    def offers(self, per_pid: Mapping[int, tuple[array[int], array[int] | None, array[int]]]
               ) -> list[Offer]:
        """``per_pid``: pid -> (addresses, nodes or None for unknown, weights)."""
        out = []
        for pid, (addrs, nodes, weights) in per_pid.items():
            cpu = self.cpu(pid)
            if cpu is None:
                self.gone(pid)
                continue
            out.append(Offer(pid, cpu, addrs,
                             nodes if nodes is not None else array("i", [-1]) * len(addrs),
                             weights))
        return out
