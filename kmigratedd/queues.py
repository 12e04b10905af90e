"""Per-CPU candidate queues: the hand-off between samplers and node workers.

One bounded, coalescing :class:`~kmigratedd.shim.NativeQueue` per CPU (Huang
Ying's suggestion in the kmigrated review: record candidates in per-CPU
structures instead of scanning page flags or PFNs). A perf sampler fills the
queue of the CPU whose ring buffer produced the sample; samplers that are not
per-CPU (idle pages, DAMON) shard by the CPU the task last ran on. A page seen
again folds into its candidate (count += weight); a full queue drops its oldest
entry and counts it, so memory never grows past ``cpus * capacity`` entries.

The native queues have no lock, and every cffi call releases the GIL, so only one
thread may touch them: the event loop thread that created them. ``push`` and
``drain`` check it and raise :class:`QueueThreadError` from any other thread;
samplers compute in their executor and push on the loop.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .shim import PAGE_SIZE, CandidateBatch, NativeQueue, QueueStats

# Bytes one queue entry costs in C: the ring entry plus two index slots.
ENTRY_BYTES = 40 + 2 * 4


class QueueThreadError(RuntimeError):
    """The per-CPU queues were used from a thread other than their owner's."""


@dataclass(frozen=True, slots=True)
class QueuesStats:
    pushed: int
    coalesced: int
    dropped: int
    drained: int
    depth: int
    per_cpu_depth: tuple[int, ...]


class CandidateQueues:
    """One bounded candidate queue per CPU."""

    def __init__(self, cpus: Iterable[int], capacity_per_cpu: int,
                 page_size: int = PAGE_SIZE) -> None:
        ids = sorted(set(cpus))
        if not ids:
            raise ValueError("CandidateQueues needs at least one CPU")
        self.capacity_per_cpu = capacity_per_cpu
        self._queues = {cpu: NativeQueue(capacity_per_cpu, page_size) for cpu in ids}
        self._order = ids
        self._next = 0  # round-robin start for drain fairness
        self._listeners: list[Callable[[], None]] = []
        self._owner = threading.get_ident()

    def _check_thread(self) -> None:
        if threading.get_ident() != self._owner:
            raise QueueThreadError("the candidate queues are used only from the thread "
                                   "that created them (the event loop's)")

    def on_push(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every push that offers candidates (on the owner
        thread): how the router sleeps until there is work."""
        self._listeners.append(listener)

    @property
    def cpus(self) -> tuple[int, ...]:
        return tuple(self._order)

    def queue(self, cpu: int) -> NativeQueue:
        """The queue of ``cpu``; an unknown CPU (hot-added) maps onto a known one."""
        q = self._queues.get(cpu)
        if q is None:
            q = self._queues[self._order[cpu % len(self._order)]]
        return q

    def push(self, cpu: int, pids: Any, addrs: Any, nodes: Any = None, times: Any = None,
             weights: Any = None) -> int:
        self._check_thread()
        added = self.queue(cpu).push(pids, addrs, nodes, times, weights)
        if len(addrs):  # coalesced samples count too: they may cross min_samples
            for listener in self._listeners:
                listener()
        return added

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def drain(self, max_entries: int) -> list[CandidateBatch]:
        """Take up to ``max_entries`` candidates, oldest first within each CPU, fairly
        across CPUs (each round starts one CPU further)."""
        self._check_thread()
        batches: list[CandidateBatch] = []
        left = max_entries
        n = len(self._order)
        start = self._next
        self._next = (self._next + 1) % n
        share = max(1, max_entries // n)
        # Two passes: a fair share each, then whatever is left from anyone.
        for quota in (share, max_entries):
            for k in range(n):
                if left <= 0:
                    return batches
                q = self._queues[self._order[(start + k) % n]]
                if len(q):
                    b = q.drain(min(quota, left))
                    left -= len(b)
                    batches.append(b)
        return batches

    def stats(self) -> QueuesStats:
        per = [self._queues[c] for c in self._order]
        s: list[QueueStats] = [q.stats() for q in per]
        return QueuesStats(
            pushed=sum(x.pushed for x in s), coalesced=sum(x.coalesced for x in s),
            dropped=sum(x.dropped for x in s), drained=sum(x.drained for x in s),
            depth=sum(len(q) for q in per), per_cpu_depth=tuple(len(q) for q in per))

    @property
    def memory_bytes(self) -> int:
        """Upper bound of the queues' native memory (fixed at creation)."""
        return len(self._queues) * self.capacity_per_cpu * ENTRY_BYTES


def merge(batches: list[CandidateBatch]) -> CandidateBatch:
    """Concatenate batches (the columns stay flat arrays)."""
    if len(batches) == 1:
        return batches[0]
    out = CandidateBatch(array("i"), array("Q"), array("i"), array("I"), array("Q"), array("Q"))
    for b in batches:
        out.pids.extend(b.pids)
        out.addrs.extend(b.addrs)
        out.nodes.extend(b.nodes)
        out.counts.extend(b.counts)
        out.first_ns.extend(b.first_ns)
        out.last_ns.extend(b.last_ns)
    return out
