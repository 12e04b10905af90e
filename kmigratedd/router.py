"""The router: one per daemon, between the per-CPU queues and the node workers.

One round (:meth:`Router.route_once`):

1. **drain** up to a few batches of candidates from every CPU's queue, never more than
   the inboxes have room for (what stays in the queues is bounded there and counted if
   dropped);
2. **fold** them in C: sort by (pid, page), add up the counts of a page seen on several
   CPUs, and drop those below the hotness threshold: ``workers.min_samples``, raised by
   :class:`~kmigratedd.policy.AdaptiveThreshold` while the fast tier has less room than
   the candidates want;
3. **locate** every page with one move_pages query per pid (in the executor). The
   router owns page location: it is the only stage that asks where a page is, right
   before the page is routed, so a page the kernel moved meanwhile is not counted as
   promoted by us;
4. **route** each page that sits on a node with a promotion target into the inbox of
   that target's worker, with the source node in the key's low bits. Pages already on
   the fast tier and pages that are gone are counted and dropped; a process that
   exited is forgotten by every inbox.

The queues and the inboxes live on the event loop thread; so does the router, except
for the query, which runs in the executor on arrays the loop no longer touches.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from array import array
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

from . import shim
from .config import WorkersConfig
from .errors import MovePagesError
from .inbox import Inbox
from .pipeline import Mover
from .policy import AdaptiveThreshold
from .queues import CandidateQueues, merge
from .stage import LoopStage
from .topology import Topology

log = logging.getLogger("kmigratedd.router")

# Batches drained per round: the router drains at most this many worker batches.
MAX_BURST = 4
# How often the adaptive threshold is re-computed at most.
THRESHOLD_EVERY_S = 0.25


@dataclass
class RouterStats:
    """Counters of the router (exported as metrics)."""

    rounds: int = 0
    candidates: int = 0            # drained from the queues
    below_threshold: int = 0       # folded count under min_samples
    below_adaptive: int = 0        # at or above min_samples, under the adaptive threshold
    on_fast_tier: int = 0          # already on a node with no target
    gone_before_move: int = 0      # query said -EFAULT/-ENOENT
    routed: Counter[int] = field(default_factory=Counter)  # target node -> pages
    pids_gone: int = 0
    query_errors: Counter[str] = field(default_factory=Counter)  # whole-call, by errno name
    cold_candidates: int = 0       # demotion candidates drained
    cold_not_on_fast: int = 0      # a demotion candidate not on a node with a worker
    cold_gone: int = 0             # a demotion candidate's page is gone
    routed_cold: Counter[int] = field(default_factory=Counter)  # fast node -> pages
    heartbeat: float = 0.0         # time.time() of the last round


@dataclass
class _Routed:
    """What one drain found: pages under the threshold, on a node with no inbox, gone, and
    routed, by node."""

    below: int = 0
    below_adaptive: int = 0
    elsewhere: int = 0
    gone: int = 0
    by_node: Counter[int] = field(default_factory=Counter)


class Router(LoopStage):
    def __init__(self, queues: CandidateQueues, inboxes: Mapping[int, Inbox], topology: Topology,
                 mover: Mover, cfg: WorkersConfig, *, executor: Executor | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 demote_queues: CandidateQueues | None = None,
                 cold_inboxes: Mapping[int, Inbox] | None = None,
                 capacity: Callable[[float], int] | None = None) -> None:
        """``capacity(now)``: the pages the fast tier can take now (the workers know); with
        it, the hotness threshold adapts to it (``workers.adaptive_threshold``)."""
        super().__init__()
        self.queues = queues
        self.inboxes = dict(inboxes)
        # Demotion candidates: cold pages, routed to the inbox of the fast node they are on.
        self.demote_queues = demote_queues if cold_inboxes else None
        self.cold_inboxes = dict(cold_inboxes or {})
        size = max(topology.nodes, default=0) + 1
        self.cold_node = array("i", [-1]) * size  # a node with a cold inbox maps to itself
        for node in self.cold_inboxes:
            if node < size:
                self.cold_node[node] = node
        self.mover = mover
        self.executor = executor
        self.clock = clock
        self.cfg = cfg
        self.stats = RouterStats()
        size = max(topology.nodes, default=0) + 1
        self.target_of_node = array("i", [-1]) * size
        for src, dst in topology.targets.items():
            self.target_of_node[src] = dst
        self.paused = False  # while promotion is paused, candidates wait in the queues
        self.capacity = capacity
        self.threshold = AdaptiveThreshold(cfg.min_samples,
                                           enabled=cfg.adaptive_threshold and capacity is not None)
        self._threshold_at = -1e18

    def configure(self, cfg: WorkersConfig) -> None:
        self.cfg = cfg
        self.threshold.floor = cfg.min_samples
        self.threshold.enabled = cfg.adaptive_threshold and self.capacity is not None
        self._threshold_at = -1e18

    def _update_threshold(self) -> None:
        now = self.clock()
        if now - self._threshold_at < THRESHOLD_EVERY_S:
            return
        self._threshold_at = now
        capacity = self.capacity(now) if self.capacity is not None else 0
        self.threshold.update(capacity, now)

    async def run(self) -> None:
        """Route while there are candidates and room; else sleep until a sampler pushes
        or a worker takes pages."""
        wake = self._event()
        self.queues.on_push(wake.set)
        if self.demote_queues is not None:
            self.demote_queues.on_push(wake.set)
        for inbox in (*self.inboxes.values(), *self.cold_inboxes.values()):
            inbox.on_room(wake.set)
        while not self._stopping:
            wake.clear()
            try:
                routed = await self.route_once()
                if self.demote_queues is not None and not self.paused:
                    await self.route_cold_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the router never dies of one bad round
                self.stats.query_errors["internal"] += 1
                log.exception("router: round failed")
                routed = 0
            if routed and len(self.queues) and self._room():
                continue
            if (self.demote_queues is not None and len(self.demote_queues) and not self.paused
                    and any(i.room for i in self.cold_inboxes.values())):
                continue
            await self._sleep()

    def _room(self) -> int:
        return max((i.room for i in self.inboxes.values()), default=0)

    async def route_once(self) -> int:
        """Drain, fold, locate and route one burst of promotion candidates; returns the
        candidates drained."""
        self.stats.rounds += 1
        self.stats.heartbeat = time.time()
        if self.paused:
            return 0
        want = min(MAX_BURST * self.cfg.batch_pages, self._room())
        self._update_threshold()
        drained, routed = await self._route(self.queues, want, self.cfg.min_samples,
                                            self.target_of_node, self.inboxes, self.threshold)
        self.stats.candidates += drained
        self.stats.below_threshold += routed.below
        self.stats.below_adaptive += routed.below_adaptive
        self.stats.on_fast_tier += routed.elsewhere
        self.stats.gone_before_move += routed.gone
        self.stats.routed.update(routed.by_node)
        return drained

    async def route_cold_once(self) -> int:
        """Drain demotion candidates, locate them, and put each page that sits on a fast
        node into that node's cold inbox; returns the candidates drained."""
        assert self.demote_queues is not None
        want = min(MAX_BURST * self.cfg.batch_pages,
                   max((i.room for i in self.cold_inboxes.values()), default=0))
        drained, routed = await self._route(self.demote_queues, want, 1, self.cold_node,
                                            self.cold_inboxes)
        self.stats.cold_candidates += drained
        self.stats.cold_not_on_fast += routed.elsewhere
        self.stats.cold_gone += routed.gone
        self.stats.routed_cold.update(routed.by_node)
        return drained

    async def _route(self, queues: CandidateQueues, want: int, min_count: int,
                     node_map: array[int], inboxes: Mapping[int, Inbox],
                     threshold: AdaptiveThreshold | None = None) -> tuple[int, _Routed]:
        """Drain up to ``want`` candidates, fold them (dropping those under ``min_count``),
        let ``threshold`` see them and drop those under it, locate each page, and put it
        into ``inboxes[node_map[its node]]``."""
        out = _Routed()
        if want <= 0:
            return 0, out
        batches = queues.drain(want)
        if not batches:
            return 0, out
        b = merge(batches)
        n0 = len(b)
        out.below = shim.cand_prepare(b.pids, b.addrs, b.counts, min_count)
        if threshold is not None and threshold.enabled:
            threshold.observe(b.counts)
            if threshold.value > min_count:
                out.below_adaptive = shim.cand_prepare(b.pids, b.addrs, b.counts,
                                                       threshold.value)
        pids, addrs = b.pids, b.addrs
        if not len(pids):
            return n0, out
        starts = list(shim.runs(pids)) + [len(pids)]
        runs = [(pids[starts[i]], addrs[starts[i]:starts[i + 1]]) for i in range(len(starts) - 1)]
        loop = asyncio.get_running_loop()
        queried = await loop.run_in_executor(self.executor, self._query_runs, runs)
        now = self.clock()
        for pid, run_addrs, status, err in queried:
            if status is None:
                self._count_query_error(pid, err)
                continue
            tgt = array("i", [0]) * len(status)
            shim.cand_targets(status, node_map, tgt)
            # Tally in C: -1 (no inbox for that node) and -2 (gone) land in by_errno.
            counts = shim.count_statuses(tgt)
            out.elsewhere += counts.by_errno.get(1, 0)
            out.gone += counts.by_errno.get(2, 0)
            for node in counts.by_node:
                inbox = inboxes.get(node)
                if inbox is None:
                    continue
                keys = shim.keys_for(run_addrs, status, tgt, node)
                out.by_node[node] += len(keys)
                inbox.accept(pid, keys, now)
        return n0, out

    def _query_runs(self, runs: list[tuple[int, array[int]]]
                    ) -> list[tuple[int, array[int], array[int] | None, MovePagesError | None]]:
        """On the executor: where each run's pages are now."""
        out: list[tuple[int, array[int], array[int] | None, MovePagesError | None]] = []
        for pid, addrs in runs:
            try:
                out.append((pid, addrs, self.mover.query(pid, addrs), None))
            except MovePagesError as exc:
                out.append((pid, addrs, None, exc))
        return out

    def _count_query_error(self, pid: int, exc: MovePagesError | None) -> None:
        code = exc.errno if exc is not None else 0
        self.stats.query_errors[errno.errorcode.get(code or 0, str(code))] += 1
        self.stats.pids_gone += 1
        for inbox in (*self.inboxes.values(), *self.cold_inboxes.values()):
            inbox.forget_pid(pid)
        # A process that exited fails with ESRCH, or EINVAL while its mm is going away.
        if code not in (errno.ESRCH, errno.EINVAL):
            log.warning("router: move_pages query of pid %d: %s", pid, exc)
